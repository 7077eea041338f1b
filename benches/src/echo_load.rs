//! Echo-line load generator.
//!
//! Starts the gateway binary as a child process on free loopback ports, opens
//! N concurrent calls to `echo` from str0m peers (one UDP socket and one
//! WebSocket each), streams 20 ms frames for the given duration and reports:
//! time to connect all calls, echo loss, gateway CPU per call (from
//! /proc/PID/stat over the media phase), gateway memory per call (RSS delta),
//! and the generator's own CPU for comparison (both share the machine).
//!
//! cargo build --release -p gangway -p gangway-benches
//! target/release/echo-load --gateway target/release/gangway --calls 100 --seconds 20

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use gangway_benches::{measure_media_phase, rss_kib, GatewayProcess};
use gangway_tests::api_client::ApiClient;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};

#[derive(Parser)]
struct Args {
    /// Path to the gateway binary (build it with --release).
    #[arg(long, default_value = "target/release/gangway")]
    gateway: PathBuf,
    /// Concurrent calls.
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Seconds of media per call.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// opus, pcmu or pcma.
    #[arg(long, default_value = "opus")]
    codec: String,
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let codec = match args.codec.as_str() {
        "opus" => ClientCodec::Opus,
        "pcmu" => ClientCodec::Pcmu,
        "pcma" => ClientCodec::Pcma,
        other => panic!("unknown codec {other}"),
    };
    let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let udp = free_udp_port();
    let gateway = GatewayProcess::start(
        &args.gateway,
        http,
        &[
            ("GANGWAY_WEBRTC__LISTEN", format!("127.0.0.1:{udp}")),
            ("GANGWAY_CALLS__SETUP_TIMEOUT_SECS", "60".into()),
        ],
    );
    let pid = gateway.pid();
    let idle_rss = rss_kib(&pid);
    let frames = (args.seconds * 50) as usize;
    let connected = Arc::new(tokio::sync::Barrier::new(args.calls + 1));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for tag in 0..args.calls as u32 {
        let connected = connected.clone();
        tasks.push(tokio::spawn(async move {
            let mut api = ApiClient::connect_to(http).await;
            let (mut client, offer) = RtcClient::new(codec).await;
            let id = format!("load{tag}");
            api.call(&id, "echo", &offer).await;
            let answer = api.expect("answer").await;
            client.accept_answer(answer["sdp"].as_str().unwrap());
            api.expect("answered").await;
            let ok = client.connect(Duration::from_secs(60)).await;
            let connect_time = start.elapsed();
            connected.wait().await;
            let report = client
                .echo_exchange(tag, frames, Duration::from_millis(500))
                .await;
            api.hangup(&id).await;
            let _ = api.expect("ended").await;
            api.close().await;
            (ok, connect_time, report)
        }));
    }
    connected.wait().await;
    let all_connected = start.elapsed();
    let (phase, results) =
        measure_media_phase(&pid, Duration::from_secs(args.seconds) / 2, tasks).await;
    let (media_secs, gw_cpu, self_cpu, busy_rss) = (
        phase.seconds,
        phase.gateway_cpu,
        phase.generator_cpu,
        phase.busy_rss_kib,
    );

    let failed = results.iter().filter(|r| !r.0).count();
    let sent: usize = results.iter().map(|r| r.2.sent).sum();
    let echoed: usize = results.iter().map(|r| r.2.echoed).sum();
    let foreign: usize = results.iter().map(|r| r.2.foreign).sum();
    let n = args.calls as f64;
    println!("calls                     {}", args.calls);
    println!("codec                     {:?}", codec);
    println!("connect failures          {failed}");
    println!(
        "all connected after       {:.2} s",
        all_connected.as_secs_f64()
    );
    println!("media phase               {media_secs:.1} s");
    println!(
        "frames sent / echoed      {sent} / {echoed} (loss {:.3} %)",
        100.0 * (sent - echoed.min(sent)) as f64 / sent.max(1) as f64
    );
    println!("foreign frames            {foreign}");
    println!(
        "gateway CPU               {:.1} % of one core ({:.3} % per call)",
        100.0 * gw_cpu / media_secs,
        100.0 * gw_cpu / media_secs / n
    );
    println!(
        "generator CPU             {:.1} % of one core",
        100.0 * self_cpu / media_secs
    );
    println!(
        "gateway RSS idle / busy   {:.0} KiB / {:.0} KiB ({:.1} KiB per call)",
        idle_rss,
        busy_rss,
        (busy_rss - idle_rss) / n
    );
    if failed > 0 || foreign > 0 {
        std::process::exit(1);
    }
}
