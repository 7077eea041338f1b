//! The transcoded-call workload through the gateway, as `transcode-load`
//! and `side-by-side` run it: N concurrent calls from Opus-only str0m peers
//! through the release gateway's SIP leg to sipp, which echoes the RTP, so
//! every packet is transcoded twice (Opus -> PCMU towards sipp, PCMU ->
//! Opus on the way back). The generator replays pre-encoded Opus frames
//! instead of encoding live, so it costs far less than the gateway.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{measure_media_phase, rss_kib, BrowserOpus, GatewayProcess};
use gangway_tests::api_client::ApiClient;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::{free_udp_port, free_udp_range, Sipp};

/// What one run measured.
pub struct TranscodeRun {
    pub calls: usize,
    pub failed: usize,
    pub all_connected: Duration,
    /// The media phase: seconds, CPU seconds of the gateway and of this
    /// generator.
    pub seconds: f64,
    pub gateway_cpu: f64,
    pub generator_cpu: f64,
    pub sent: usize,
    pub received: usize,
    pub idle_rss_kib: f64,
    pub busy_rss_kib: f64,
    /// The gateway's packet counters at the end (where loss happened).
    pub counters: String,
}

impl TranscodeRun {
    /// Gateway CPU per call, in % of one core.
    pub fn cpu_per_call_pct(&self) -> f64 {
        100.0 * self.gateway_cpu / self.seconds / self.calls as f64
    }

    pub fn loss_pct(&self) -> f64 {
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent.max(1) as f64
    }

    pub fn rss_per_call_kib(&self) -> f64 {
        (self.busy_rss_kib - self.idle_rss_kib) / self.calls as f64
    }
}

/// Runs `calls` transcoded calls for `seconds` through `gateway`, the
/// browsers sending `opus`; `settings` are more `GANGWAY_*` variables for
/// the gateway (e.g. its Opus complexity).
pub async fn run(
    gateway: &Path,
    calls: usize,
    seconds: u64,
    opus: BrowserOpus,
    settings: &[(&str, String)],
) -> TranscodeRun {
    let browser = Browser {
        codec: ClientCodec::Opus,
        number: "1000",
        frames: opus.frames(),
    };
    run_with(gateway, calls, seconds, browser, settings).await
}

/// What the peers standing in for browsers send, and whom they call.
pub struct Browser {
    pub codec: ClientCodec,
    /// `1000` reaches sipp (which echoes) through the SIP leg; `echo` is
    /// the gateway's own echo line.
    pub number: &'static str,
    pub frames: Vec<Vec<u8>>,
}

/// [`run`] with other browsers: G.711 ones make passthrough calls,
/// calls to `echo` never reach the SIP leg.
pub async fn run_with(
    gateway: &Path,
    calls: usize,
    seconds: u64,
    browser: Browser,
    settings: &[(&str, String)],
) -> TranscodeRun {
    let calls_text = calls.to_string();
    let sipp = Sipp::uas(
        "uas_answer_wait_bye.xml",
        0,
        &["-rtp_echo", "-m", &calls_text],
    );
    let http: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let ports = (calls * 2 + 8) as u16;
    let rtp = free_udp_range(ports);
    let mut env = vec![
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
    ];
    env.extend_from_slice(settings);
    let gateway = GatewayProcess::start(gateway, http, &env);
    let pid = gateway.pid();
    let frames = Arc::new(browser.frames);
    let (codec, number) = (browser.codec, browser.number);
    let idle_rss_kib = rss_kib(&pid);
    let per_call = (seconds * 50) as usize;
    let connected = Arc::new(tokio::sync::Barrier::new(calls + 1));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for tag in 0..calls {
        let (connected, frames) = (connected.clone(), frames.clone());
        tasks.push(tokio::spawn(async move {
            let mut api = ApiClient::connect_to(http).await;
            let (mut client, offer) = RtcClient::new(codec).await;
            let id = format!("tc{tag}");
            api.call(&id, number, &offer).await;
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
    let (phase, results) = measure_media_phase(&pid, Duration::from_secs(seconds) / 2, tasks).await;
    let counters = gateway_counters(http);
    TranscodeRun {
        calls,
        failed: results.iter().filter(|r| !r.0).count(),
        all_connected,
        seconds: phase.seconds,
        gateway_cpu: phase.gateway_cpu,
        generator_cpu: phase.generator_cpu,
        sent: results.iter().map(|r| r.1).sum(),
        received: results.iter().map(|r| r.2).sum(),
        idle_rss_kib,
        busy_rss_kib: phase.busy_rss_kib,
        counters,
    }
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
