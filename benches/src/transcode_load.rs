//! Transcoded-call load generator.
//!
//! N concurrent calls from Opus-only str0m peers through the release gateway's
//! SIP leg to sipp, which echoes the RTP: every packet is transcoded twice
//! (Opus -> PCMU towards sipp, PCMU -> Opus on the way back). The generator
//! replays pre-encoded Opus frames instead of encoding live, so it costs far
//! less than the gateway. Reports gateway CPU and memory per call, the round
//! trip's frame loss, and the generator's own CPU.
//!
//! cargo build --release -p gangway -p gangway-benches
//! target/release/transcode-load --calls 50 --seconds 20

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use gangway_benches::{measure_media_phase, opus_frames, rss_kib, GatewayProcess};
use gangway_tests::api_client::ApiClient;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::{free_udp_port, free_udp_range, Sipp};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/gangway")]
    gateway: PathBuf,
    #[arg(long, default_value_t = 50)]
    calls: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let calls = args.calls.to_string();
    let sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &["-rtp_echo", "-m", &calls]);
    let http: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let ports = (args.calls * 2 + 8) as u16;
    let rtp = free_udp_range(ports);
    let gateway = GatewayProcess::start(
        &args.gateway,
        http,
        &[
            ("GANGWAY_WEBRTC__LISTEN", "127.0.0.1:0".into()),
            ("GANGWAY_CALLS__SETUP_TIMEOUT_SECS", "60".into()),
            ("GANGWAY_SIP__ENABLED", "true".into()),
            ("GANGWAY_SIP__LISTEN", "127.0.0.1:0".into()),
            ("GANGWAY_SIP__RTP_PORT_MIN", rtp.to_string()),
            ("GANGWAY_SIP__RTP_PORT_MAX", (rtp + ports - 1).to_string()),
            ("GANGWAY_SIP__TRUNK__HOST", "127.0.0.1".into()),
            ("GANGWAY_SIP__TRUNK__PORT", sipp.port().to_string()),
            ("GANGWAY_SIP__TRUNK__DOMAIN", "pbx.test".into()),
            // sipp's UAS would take an OPTIONS probe for a failed call.
            ("GANGWAY_SIP__KEEPALIVE_INTERVAL_SECS", "0".into()),
        ],
    );
    let pid = gateway.pid();
    let frames = Arc::new(opus_frames());
    let idle_rss = rss_kib(&pid);
    let per_call = (args.seconds * 50) as usize;
    let connected = Arc::new(tokio::sync::Barrier::new(args.calls + 1));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for tag in 0..args.calls {
        let (connected, frames) = (connected.clone(), frames.clone());
        tasks.push(tokio::spawn(async move {
            let mut api = ApiClient::connect_to(http).await;
            let (mut client, offer) = RtcClient::new(ClientCodec::Opus).await;
            let id = format!("tc{tag}");
            api.call(&id, "1000", &offer).await;
            let answer = api.expect("answer").await;
            client.accept_answer(answer["sdp"].as_str().unwrap());
            let ok = client.connect(Duration::from_secs(60)).await;
            loop {
                let m = api.recv().await;
                match m["type"].as_str() {
                    Some("answered") => break,
                    Some("ended") | Some("error") => panic!("call {tag}: {m}"),
                    _ => {}
                }
            }
            connected.wait().await;
            let (sent, received) = client
                .stream_frames(&frames, per_call, Duration::from_millis(500))
                .await;
            api.hangup(&id).await;
            let _ = api.expect("ended").await;
            api.close().await;
            (ok, sent, received)
        }));
    }
    connected.wait().await;
    let all_connected = start.elapsed();
    let (phase, results) =
        measure_media_phase(&pid, Duration::from_secs(args.seconds) / 2, tasks).await;
    let (secs, gw_cpu, self_cpu, busy_rss) = (
        phase.seconds,
        phase.gateway_cpu,
        phase.generator_cpu,
        phase.busy_rss_kib,
    );
    // Where packets went, by the gateway's own count (before the calls end).
    let counters = gateway_counters(http);
    let failed = results.iter().filter(|r| !r.0).count();
    let sent: usize = results.iter().map(|r| r.1).sum();
    let received: usize = results.iter().map(|r| r.2).sum();
    let n = args.calls as f64;
    println!(
        "transcoded calls          {} (Opus browser <-> PCMU, echoed by sipp)",
        args.calls
    );
    println!("connect failures          {failed}");
    println!(
        "all answered + connected  {:.2} s",
        all_connected.as_secs_f64()
    );
    println!("media phase               {secs:.1} s");
    println!("gateway counters:\n{counters}");
    println!(
        "frames sent / returned    {sent} / {received} (round-trip loss {:.3} %)",
        100.0 * (sent.saturating_sub(received)) as f64 / sent.max(1) as f64
    );
    println!(
        "gateway CPU               {:.1} % of one core ({:.3} % per call)",
        100.0 * gw_cpu / secs,
        100.0 * gw_cpu / secs / n
    );
    println!(
        "generator CPU             {:.1} % of one core",
        100.0 * self_cpu / secs
    );
    println!(
        "gateway RSS idle / busy   {idle_rss:.0} KiB / {busy_rss:.0} KiB ({:.1} KiB per call)",
        (busy_rss - idle_rss) / n
    );
}

/// The gateway's packet counters, to tell where loss happened.
fn gateway_counters(http: SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(http) else {
        return "metrics unavailable".into();
    };
    let _ = conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: gangway\r\n\r\n");
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text.lines()
        .filter(|l| {
            [
                "gangway_webrtc_packets_",
                "gangway_webrtc_send_drops",
                "gangway_webrtc_unmatched",
                "gangway_rtp_packets_",
                "gangway_rtp_dropped",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
