//! Gangway and rtpengine side by side, in one sitting, on the same
//! transcoding workload (Opus caller ⇄ PCMU callee that echoes, every packet
//! transcoded twice; by default the Opus Chromium sends after the gateway
//! answers, narrowband), alternating `--rounds` times so drift on a shared
//! machine hits both; plus libopus's own cost at the gateway's settings
//! (the floor). Prints CPU per call for each, their ratio, loss and memory.
//! Installs `rtpengine-daemon` when missing (root; not part of CI).
//!
//! cargo build --release -p gangway -p gangway-benches
//! target/release/side-by-side --calls 50 --seconds 20 --rounds 2

use clap::Parser;
use gangway_benches::LoadArgs;
use gangway_benches::{codec_floor, plain_calls, rtpengine, transcode, BrowserOpus};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    load: LoadArgs,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// rtpengine's worker threads (the gateway runs one media shard per
    /// core: 2 here).
    #[arg(long, default_value_t = 2)]
    rtpengine_threads: usize,
    /// The gateway's Opus settings (`media.opus_complexity`,
    /// `media.opus_bitrate`), for the codec floor.
    #[arg(long, default_value_t = 1)]
    complexity: i32,
    #[arg(long, default_value_t = 24_000)]
    bitrate: i32,
    /// What the callers send (narrowband: as Chromium after our answer).
    #[arg(long, value_enum, default_value_t = BrowserOpus::Narrowband)]
    browser_opus: BrowserOpus,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    rtpengine::ensure_installed();
    let mut rows = Vec::new();
    let (mut gw_sum, mut rtpe_sum) = (0.0, 0.0);
    for round in 1..=args.rounds {
        let e = plain_calls::run(
            args.load.calls,
            args.load.seconds,
            args.rtpengine_threads,
            args.browser_opus,
        )
        .await;
        rows.push(format!(
            "| {round} | rtpengine | {:.3} | {:.3} | {:.1} | {:.1} |",
            e.cpu_per_call_pct(),
            e.loss_pct(),
            e.rss_per_call_kib(),
            100.0 * e.generator_cpu / e.seconds
        ));
        rtpe_sum += e.cpu_per_call_pct();
        let g = transcode::run(
            &args.load.gateway,
            args.load.calls,
            args.load.seconds,
            args.browser_opus,
            &[],
        )
        .await;
        rows.push(format!(
            "| {round} | Gangway | {:.3} | {:.3} | {:.1} | {:.1} |",
            g.cpu_per_call_pct(),
            g.loss_pct(),
            g.rss_per_call_kib(),
            100.0 * g.generator_cpu / g.seconds
        ));
        gw_sum += g.cpu_per_call_pct();
        if g.failed > 0 {
            rows.push(format!(
                "|   | ({} Gangway calls did not connect) | | | | |",
                g.failed
            ));
        }
    }
    let (floor, wall) =
        codec_floor::opus_floor(args.browser_opus, args.complexity, args.bitrate, 400);
    let floor_pct = 100.0 * floor;
    let (gw, rtpe) = (gw_sum / args.rounds as f64, rtpe_sum / args.rounds as f64);
    println!(
        "{} transcoded calls, {} s of media each, {} rounds ({:?} Opus in, PCMU echoed \
         back)\n",
        args.load.calls, args.load.seconds, args.rounds, args.browser_opus
    );
    println!("| round | system | CPU per call (% of a core) | round-trip loss % | RSS per call KiB | generator CPU % |");
    println!("|---|---|---:|---:|---:|---:|");
    rows.iter().for_each(|r| println!("{r}"));
    println!();
    println!("mean CPU per call: rtpengine {rtpe:.3} %, Gangway {gw:.3} %");
    println!("rtpengine / Gangway: {:.2}x", rtpe / gw);
    println!(
        "codec floor (libopus decode to 8 kHz + encode at complexity {}, {} b/s, G.711 both ways): \
         {floor_pct:.3} % per call ({wall:.2} s wall for 400 call-seconds)",
        args.complexity, args.bitrate
    );
    println!("Gangway / floor: {:.2}x", gw / floor_pct);
}
