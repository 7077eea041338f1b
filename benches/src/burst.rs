//! Setup burst (issue 15): 500 calls released at one instant must all
//! connect (ICE + DTLS) with no loss. Prepares every str0m peer first
//! (socket, offer, API WebSocket), releases all `call`s together, and
//! reports how many connected, the time from the release to the first,
//! median, 95th percentile and last connected, failures by reason, then
//! the loss over a few seconds of PCMU media on every call, and the CPU
//! and memory of the gateway and of this generator (if the generator
//! were at its two cores' limit, it would be the bottleneck).
//!
//! cargo build --release -p gangway -p gangway-benches
//! target/release/burst --calls 500 --target echo --media-seconds 5
//! target/release/burst --calls 500 --target sip --media-seconds 5

use std::path::PathBuf;

use clap::Parser;
use gangway_benches::setup_burst::{self, Target};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/gangway")]
    gateway: PathBuf,
    #[arg(long, default_value_t = 500)]
    calls: usize,
    #[arg(long, value_enum, default_value_t = Target::Echo)]
    target: Target,
    #[arg(long, default_value_t = 5)]
    media_seconds: u64,
}

fn main() {
    let args = Args::parse();
    // One UDP socket and one WebSocket per peer: 1000 descriptors for 500
    // calls, past a soft limit of 1024 with the runtime's own. Raised to
    // the hard limit, as the gateway does for itself.
    let fds = gangway::fd_limit::raise().unwrap_or(0);
    assert!(
        fds as usize > args.calls * 2 + 64,
        "open-file limit {fds} is too low for {} calls: raise `ulimit -Hn`",
        args.calls
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let r = runtime.block_on(setup_burst::run(
        &args.gateway,
        args.target,
        args.calls,
        args.media_seconds,
    ));
    let ms = |p: f64| {
        let v = &r.connected;
        if v.is_empty() {
            return "-".to_string();
        }
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        format!("{:.0} ms", v[i] * 1e3)
    };
    let pct = |cpu: f64, secs: f64| 100.0 * cpu / secs.max(1e-9);
    println!(
        "burst of {} calls to {:?} (PCMU str0m peers, open-file limit {fds})",
        r.calls, args.target
    );
    println!(
        "connected (ICE + DTLS)    {} of {}",
        r.connected.len(),
        r.calls
    );
    println!(
        "from the release          first {}  median {}  p95 {}  last {}",
        ms(0.0),
        ms(0.5),
        ms(0.95),
        ms(1.0)
    );
    if r.failures.is_empty() {
        println!("failures                  none");
    }
    for (why, n) in &r.failures {
        println!("failures                  {n} × {why}");
    }
    println!("limit refusals            {}", r.limit_refusals);
    println!(
        "setup phase               {:.2} s: gateway CPU {:.0} % of one core, generator {:.0} %",
        r.setup_seconds,
        pct(r.setup_gateway_cpu, r.setup_seconds),
        pct(r.setup_generator_cpu, r.setup_seconds)
    );
    let loss = 100.0 * r.sent.saturating_sub(r.received) as f64 / r.sent.max(1) as f64;
    println!(
        "media phase               {:.1} s: frames sent / returned {} / {} (loss {loss:.3} %), \
         foreign {}",
        r.media_seconds, r.sent, r.received, r.foreign
    );
    println!(
        "media phase datagrams     gateway WebRTC received {} / sent {}; dropped by the kernel \
         (receive buffer full): gateway {}, generator {}",
        r.media_webrtc_received,
        r.media_webrtc_sent,
        r.media_gateway_drops,
        r.media_generator_drops
    );
    if args.target == Target::Sip {
        println!(
            "media phase RTP           to sipp {} / back from sipp {}",
            r.media_rtp_sent, r.media_rtp_received
        );
    }
    println!(
        "media phase CPU           gateway {:.0} % of one core ({:.3} % per call), generator {:.0} %",
        pct(r.media_gateway_cpu, r.media_seconds),
        pct(r.media_gateway_cpu, r.media_seconds) / r.connected.len().max(1) as f64,
        pct(r.media_generator_cpu, r.media_seconds)
    );
    println!(
        "gateway RSS idle / busy   {:.0} KiB / {:.0} KiB ({:.1} KiB per call)",
        r.idle_rss_kib,
        r.busy_rss_kib,
        (r.busy_rss_kib - r.idle_rss_kib) / r.calls as f64
    );
}
