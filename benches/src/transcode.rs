//! The transcoded-call workload through the gateway, as `transcode-load`
//! and `side-by-side` run it: N concurrent calls from Opus-only str0m peers
//! through the release gateway's SIP leg to sipp, which echoes the RTP, so
//! every packet is transcoded twice (Opus -> PCMU towards sipp, PCMU ->
//! Opus on the way back). The generator replays pre-encoded Opus frames
//! instead of encoding live, so it costs far less than the gateway.
//! [`run_calls`] is the same workload with any codec: with PCMU peers the
//! gateway passes G.711 through (`passthrough`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{measure_media_phase, rss_kib, sip_leg, BrowserOpus};
use gangway_tests::api_client::ApiClient;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};

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
    /// The codecs the gateway answered the browsers with, deduplicated.
    pub answered_codecs: Vec<String>,
    /// The gateway's whole `/metrics` text once every call had connected
    /// (before the media phase) and at the end.
    pub metrics_connected: String,
    pub metrics: String,
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
    let frames = Arc::new(opus.frames());
    run_calls(gateway, calls, seconds, ClientCodec::Opus, frames, settings).await
}

/// Runs `calls` calls for `seconds` through `gateway`'s SIP leg to sipp
/// echoing RTP, from peers offering only `codec` and sending `frames`
/// round-robin (one per 20 ms).
pub async fn run_calls(
    gateway: &Path,
    calls: usize,
    seconds: u64,
    codec: ClientCodec,
    frames: Arc<Vec<Vec<u8>>>,
    settings: &[(&str, String)],
) -> TranscodeRun {
    let browser = Browser {
        codec,
        number: "1000",
        frames,
    };
    run_with(gateway, calls, seconds, browser, settings).await
}

/// What the peers standing in for browsers send, and whom they call.
pub struct Browser {
    pub codec: ClientCodec,
    /// `1000` reaches sipp (which echoes) through the SIP leg; `echo` is
    /// the gateway's own echo line.
    pub number: &'static str,
    pub frames: Arc<Vec<Vec<u8>>>,
}

/// [`run_calls`] with a number to call: calls to `echo` never reach the
/// SIP leg (sipp is started all the same).
pub async fn run_with(
    gateway: &Path,
    calls: usize,
    seconds: u64,
    browser: Browser,
    settings: &[(&str, String)],
) -> TranscodeRun {
    let Browser {
        codec,
        number,
        frames,
    } = browser;
    let leg = sip_leg::start(gateway, calls, settings);
    let (gateway, http) = (&leg.gateway, leg.http);
    let pid = gateway.pid();
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
            let sdp = answer["sdp"].as_str().unwrap();
            let answered = sip_leg::answered_codec(sdp);
            client.accept_answer(sdp);
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
            (ok, sent, received, answered)
        }));
    }
    connected.wait().await;
    let all_connected = start.elapsed();
    let metrics_connected = sip_leg::metrics(http);
    let (phase, results) = measure_media_phase(&pid, Duration::from_secs(seconds) / 2, tasks).await;
    let counters = sip_leg::counters(http);
    let metrics = sip_leg::metrics(http);
    let mut answered_codecs: Vec<String> = results.iter().map(|r| r.3.clone()).collect();
    answered_codecs.sort();
    answered_codecs.dedup();
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
        answered_codecs,
        metrics_connected,
        metrics,
    }
}
