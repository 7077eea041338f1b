//! A burst of call setups: N str0m peers are prepared first (a UDP socket,
//! an offer and an API WebSocket each), then all their `call`s are released
//! at one instant by a barrier, to the echo line or through the SIP leg to
//! sipp. Each peer records when ICE and DTLS connected (from the release),
//! or why it did not; then every connected call streams PCMU for a few
//! seconds and the loss is counted (on the echo line frame by frame, byte
//! for byte; through sipp by count).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{cpu_seconds, measure_media_phase, pcmu_tone_frames, rss_kib, sip_leg, GatewayProcess};
use gangway_tests::api_client::ApiClient;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::free_udp_port;

/// Where the calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The gateway's echo line (WebRTC leg only).
    Echo,
    /// Through the SIP leg to sipp, which answers and echoes RTP.
    Sip,
}

/// What one burst measured.
pub struct BurstRun {
    pub calls: usize,
    /// Seconds from the release to each connected call's ICE + DTLS, sorted.
    pub connected: Vec<f64>,
    /// Calls that did not connect (or were not answered), by reason.
    pub failures: BTreeMap<String, usize>,
    /// From the release until every call had connected or failed: seconds,
    /// and the CPU seconds of the gateway and of this generator meanwhile.
    pub setup_seconds: f64,
    pub setup_gateway_cpu: f64,
    pub setup_generator_cpu: f64,
    /// The media phase that followed.
    pub media_seconds: f64,
    pub media_gateway_cpu: f64,
    pub media_generator_cpu: f64,
    pub sent: usize,
    pub received: usize,
    /// Echo line only: frames that came back but were never sent.
    pub foreign: usize,
    pub idle_rss_kib: f64,
    pub busy_rss_kib: f64,
    /// `gangway_limit_refusals_total` at the end (must be 0).
    pub limit_refusals: f64,
    /// Over the media phase: datagrams the gateway received and sent on
    /// its WebRTC port(s), and those the kernel dropped because a socket's
    /// receive buffer was full: the gateway's sockets, this generator's.
    pub media_webrtc_received: f64,
    pub media_webrtc_sent: f64,
    /// The same on the SIP leg (RTP to and from sipp).
    pub media_rtp_sent: f64,
    pub media_rtp_received: f64,
    pub media_gateway_drops: f64,
    pub media_generator_drops: f64,
}

/// Datagrams the kernel dropped because a UDP socket's receive buffer
/// was full, summed over the sockets process `pid` (`self` for this one)
/// holds: the `drops` column of /proc/net/udp for their inodes.
pub fn udp_drops(pid: &str) -> f64 {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 13 && inodes.contains(f[9]))
        .filter_map(|f| f[12].parse::<f64>().ok())
        .sum()
}

/// The gateway of a run: alone (echo line) or with sipp as its trunk.
enum Held {
    Echo(GatewayProcess),
    Sip(sip_leg::SipLeg),
}

impl Held {
    fn gateway(&self) -> &GatewayProcess {
        match self {
            Held::Echo(g) => g,
            Held::Sip(leg) => &leg.gateway,
        }
    }
}

/// One peer's outcome: when it connected (or why not), and its media.
type Outcome = (Result<Instant, String>, usize, usize, usize);

/// Runs a burst of `calls` calls to `target`, then `media_seconds` of
/// media on every connected call.
pub async fn run(binary: &Path, target: Target, calls: usize, media_seconds: u64) -> BurstRun {
    // The per-address limits are for browsers; a load generator is one
    // address holding every call: calls.max_per_address (250 by default)
    // would refuse half of 500 calls with `too_many_calls`, and
    // http.max_connections_per_address (500) would refuse WebSockets past
    // it with 429. calls.max_new_per_second_per_address and
    // sip.max_calls_per_second are lifted by GatewayProcess already.
    let limit = (calls * 2 + 16).to_string();
    let settings = [
        ("GANGWAY_CALLS__MAX_PER_ADDRESS", limit.clone()),
        ("GANGWAY_HTTP__MAX_CONNECTIONS_PER_ADDRESS", limit),
        ("GANGWAY_CALLS__SETUP_TIMEOUT_SECS", "60".to_string()),
    ];
    let held = match target {
        Target::Sip => Held::Sip(sip_leg::start(binary, calls, &settings)),
        Target::Echo => {
            let http: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
            let mut env = settings.to_vec();
            env.push(("GANGWAY_WEBRTC__LISTEN", "127.0.0.1:0".into()));
            Held::Echo(GatewayProcess::start(binary, http, &env))
        }
    };
    let (pid, http) = (held.gateway().pid(), held.gateway().http);
    let to = match target {
        Target::Echo => "echo",
        Target::Sip => "1000",
    };
    // Prepared before the release: sockets, offers and WebSockets.
    let mut peers = Vec::new();
    for _ in 0..calls {
        let api = ApiClient::connect_to(http).await;
        let (client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
        peers.push((api, client, offer));
    }
    let idle_rss_kib = rss_kib(&pid);
    let frames = Arc::new(pcmu_tone_frames());
    let release = Arc::new(tokio::sync::Barrier::new(calls + 1));
    let settled = Arc::new(tokio::sync::Barrier::new(calls + 1));
    let per_call = (media_seconds * 50) as usize;
    let mut tasks = Vec::new();
    for (tag, (mut api, mut client, offer)) in peers.into_iter().enumerate() {
        let (release, settled, frames) = (release.clone(), settled.clone(), frames.clone());
        tasks.push(tokio::spawn(async move {
            release.wait().await;
            let id = format!("burst{tag}");
            api.call(&id, to, &offer).await;
            let connected = set_up(&mut api, &mut client).await;
            settled.wait().await;
            if connected.is_err() {
                return (connected, 0, 0, 0);
            }
            let linger = Duration::from_millis(500);
            let (sent, received, foreign) = match target {
                Target::Echo => {
                    let r = client.echo_exchange(tag as u32, per_call, linger).await;
                    (r.sent, r.echoed, r.foreign)
                }
                Target::Sip => {
                    let (s, r) = client.stream_frames(&frames, per_call, linger).await;
                    (s, r, 0)
                }
            };
            api.hangup(&id).await;
            api.close().await;
            (connected, sent, received, foreign) as Outcome
        }));
    }
    let (gw0, self0) = (cpu_seconds(&pid), cpu_seconds("self"));
    release.wait().await;
    let released = Instant::now();
    settled.wait().await;
    let setup_seconds = released.elapsed().as_secs_f64();
    let (setup_gateway_cpu, setup_generator_cpu) =
        (cpu_seconds(&pid) - gw0, cpu_seconds("self") - self0);
    let (before, gw_drops0, own_drops0) =
        (sip_leg::metrics(http), udp_drops(&pid), udp_drops("self"));
    let (phase, results) =
        measure_media_phase(&pid, Duration::from_secs(media_seconds) / 2, tasks).await;
    let media_gateway_drops = udp_drops(&pid) - gw_drops0;
    let media_generator_drops = udp_drops("self") - own_drops0;
    let metrics = sip_leg::metrics(http);
    let delta =
        |name: &str| sip_leg::metric_sum(&metrics, name) - sip_leg::metric_sum(&before, name);
    let mut connected = Vec::new();
    let mut failures = BTreeMap::new();
    for r in &results {
        match &r.0 {
            Ok(at) => connected.push(at.saturating_duration_since(released).as_secs_f64()),
            Err(why) => *failures.entry(why.clone()).or_insert(0) += 1,
        }
    }
    connected.sort_by(|a, b| a.total_cmp(b));
    BurstRun {
        calls,
        connected,
        failures,
        setup_seconds,
        setup_gateway_cpu,
        setup_generator_cpu,
        media_seconds: phase.seconds,
        media_gateway_cpu: phase.gateway_cpu,
        media_generator_cpu: phase.generator_cpu,
        sent: results.iter().map(|r| r.1).sum(),
        received: results.iter().map(|r| r.2).sum(),
        foreign: results.iter().map(|r| r.3).sum(),
        idle_rss_kib,
        busy_rss_kib: phase.busy_rss_kib,
        limit_refusals: sip_leg::metric_sum(&metrics, "gangway_limit_refusals_total"),
        media_webrtc_received: delta("gangway_webrtc_packets_received_total"),
        media_webrtc_sent: delta("gangway_webrtc_packets_sent_total"),
        media_rtp_sent: delta("gangway_rtp_packets_sent_total"),
        media_rtp_received: delta("gangway_rtp_packets_received_total"),
        media_gateway_drops,
        media_generator_drops,
    }
}

/// From `call` sent: the answer, ICE + DTLS, then `answered`. The instant
/// ICE + DTLS connected, or why the call did not get that far.
async fn set_up(api: &mut ApiClient, client: &mut RtcClient) -> Result<Instant, String> {
    let deadline = Duration::from_secs(60);
    let mut at = None;
    loop {
        let m = match tokio::time::timeout(deadline, api.try_recv(deadline * 2)).await {
            Ok(Ok(m)) => m,
            Ok(Err(closed)) => return Err(format!("socket closed ({closed:?})")),
            Err(_) => return Err("no answer within 60 s".into()),
        };
        match (m["type"].as_str(), at) {
            (Some("answer"), None) => {
                client.accept_answer(m["sdp"].as_str().unwrap_or_default());
                if !client.connect(deadline).await {
                    return Err("ICE + DTLS not connected within 60 s".into());
                }
                at = Some(Instant::now());
            }
            (Some("answered"), Some(at)) => return Ok(at),
            (Some("error"), _) => return Err(format!("error {}", m["code"])),
            (Some("ended"), _) => return Err(format!("ended {}", m["reason"])),
            _ => {}
        }
    }
}
