//! Transcoded-call load generator: the workload of [`gangway_benches::transcode`]
//! once, with its report. Reports gateway CPU and memory per call, the round
//! trip's frame loss, and the generator's own CPU.
//!
//! cargo build --release -p gangway -p gangway-benches
//! target/release/transcode-load --calls 50 --seconds 20

use clap::Parser;
use gangway_benches::LoadArgs;
use gangway_benches::{transcode, BrowserOpus};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    load: LoadArgs,
    /// What the browsers send (narrowband: as Chromium after our answer).
    #[arg(long, value_enum, default_value_t = BrowserOpus::Narrowband)]
    browser_opus: BrowserOpus,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let r = transcode::run(
        &args.load.gateway,
        args.load.calls,
        args.load.seconds,
        args.browser_opus,
        &[],
    )
    .await;
    println!(
        "transcoded calls          {} (Opus browser <-> PCMU, echoed by sipp; {:?} Opus)",
        r.calls, args.browser_opus
    );
    println!("connect failures          {}", r.failed);
    println!(
        "all answered + connected  {:.2} s",
        r.all_connected.as_secs_f64()
    );
    println!("media phase               {:.1} s", r.seconds);
    println!("gateway counters:\n{}", r.counters);
    println!(
        "frames sent / returned    {} / {} (round-trip loss {:.3} %)",
        r.sent,
        r.received,
        r.loss_pct()
    );
    println!(
        "gateway CPU               {:.1} % of one core ({:.3} % per call)",
        100.0 * r.gateway_cpu / r.seconds,
        r.cpu_per_call_pct()
    );
    println!(
        "generator CPU             {:.1} % of one core",
        100.0 * r.generator_cpu / r.seconds
    );
    println!(
        "gateway RSS idle / busy   {:.0} KiB / {:.0} KiB ({:.1} KiB per call)",
        r.idle_rss_kib,
        r.busy_rss_kib,
        r.rss_per_call_kib()
    );
}
