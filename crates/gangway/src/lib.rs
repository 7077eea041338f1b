//! The Gangway gateway: configuration, wiring, HTTP/WebSocket server,
//! metrics and graceful drain. Protocol and call logic live in the
//! `gangway-*` crates; this crate only connects them.

mod auth;
mod cdr;
pub mod config;
mod connections;
mod drive;
pub mod fd_limit;
mod flows;
mod http;
mod inbound;
mod metrics;
#[cfg(target_os = "linux")]
mod process_metrics;
mod queues;
mod rate;
mod resume;
mod serve;
mod session;
mod sip_ws;
mod users;
mod wait;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gangway_core::calls::{DtmfRoute, Settings as CallSettings};
use gangway_core::{Router, SipRouting};
use gangway_media::{CodecPolicy, MediaPolicy, OpusSettings, RtpPorts, ShardHandle};
use gangway_rtc::EndpointConfig;
use gangway_sip::sdp::G711;
use gangway_sip::{SipService, Trunk};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::{Config, ConfigError, LogFormat};
pub use metrics::Metrics;

/// Where the gateway is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// New calls are refused; existing ones continue.
    Draining,
    /// Remaining calls are ended and sockets closed.
    Terminating,
}

/// Codecs offered to and accepted from the SIP leg; the bridge converts
/// between them if the browser and the PBX chose differently.
pub(crate) const SIP_CODECS: [G711; 2] = [G711::Pcmu, G711::Pcma];

/// RFC 4733 telephone-event payload type offered to the SIP leg.
const SIP_DTMF_PT: u8 = 101;

/// The SIP service and the trunk calls go to.
pub(crate) struct SipLeg {
    service: Arc<SipService>,
    trunk: Trunk,
    from_user: String,
}

/// State shared by all sessions.
pub(crate) struct Shared {
    config: Config,
    metrics: Arc<Metrics>,
    /// The media shards; each call lives on one (see `Shared::pick_shard`).
    shards: Vec<ShardHandle>,
    next_shard: AtomicUsize,
    /// What every connection's call table decides with.
    call_settings: CallSettings,
    /// The SIP leg, when `sip.enabled`.
    sip: Option<SipLeg>,
    /// Signed-in SIP users (with the SIP leg).
    users: Option<users::Users>,
    /// Failed sign-ins per source address.
    sign_in_failures: auth::FailureLimiter,
    sign_in_failures_by_user: auth::FailureLimiter<String>,
    /// Resume tokens of live sessions.
    tokens: resume::Tokens,
    /// SIP over WebSocket: what every flow shares, and the bindings.
    sip_ws: gangway_signal::sip_ws::FrontSettings,
    flows: flows::Flows,
    /// WebSocket slots per source address and in all.
    connections: Arc<connections::Connections>,
    /// Calls per source address.
    calls_per_address: connections::CallsPerAddress,
    new_call_rate: rate::NewCallRate,
    /// Proxies whose `X-Forwarded-For` names the client (`http.trusted_proxies`).
    trusted_proxies: Vec<gangway_sip::ipnet::IpNet>,
    phase: watch::Sender<Phase>,
    /// A [`StopNow`] came: nothing more is waited for.
    forced: watch::Sender<bool>,
    next_peer: AtomicU64,
    next_session: AtomicU64,
    started_ms: u128,
    /// Call detail records (`[cdr]`).
    cdr: cdr::Cdr,
}

impl Shared {
    /// The least loaded shard for a new call; ties go round-robin so a
    /// burst of calls (loads not yet published) still spreads out.
    fn pick_shard(&self) -> usize {
        let n = self.shards.len();
        let start = self.next_shard.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.shards[i].load())
            .unwrap_or(0)
    }

    /// Session ids only need to be unique for logs and the API; they carry no authority.
    fn next_session_id(&self) -> (u64, String) {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        (n, format!("{:x}-{n}", self.started_ms))
    }
}

#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Http(SocketAddr, std::io::Error),
    Media(gangway_media::ShardStartError),
    Sip(gangway_sip::SipError),
    Cdr(String, std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Http(a, e) => write!(f, "cannot listen on {a} (http.listen): {e}"),
            StartError::Media(e) => write!(f, "{e} (webrtc.listen)"),
            StartError::Sip(e) => write!(f, "{e} (sip.listen)"),
            StartError::Cdr(path, e) => write!(f, "cannot open {path} (cdr.file): {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Gateway {
    /// Binds the HTTP and WebRTC ports and starts serving. Must be called
    /// within a tokio runtime.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        // Every configuration error is found here, once; below only binding can fail.
        let settings = config.settings().map_err(StartError::Config)?;
        let mut metrics = Metrics::new();
        let cdr_metrics = Arc::new(cdr::metrics::CdrMetrics::register(
            metrics.gangway_registry(),
        ));
        let metrics = Arc::new(metrics);
        let (cdr, media_reports) = cdr::start(&config.cdr, cdr_metrics)
            .map_err(|e| StartError::Cdr(config.cdr.file.clone(), e))?;
        let sip = match &settings.sip {
            Some(s) => Some(start_sip(s, &metrics).await?),
            None => None,
        };
        let rtp_ports = sip
            .as_ref()
            .zip(settings.sip.as_ref())
            .map(|(leg, s)| RtpPorts {
                ip: leg.service.local_addr().ip(),
                min: *s.rtp_ports.start(),
                max: *s.rtp_ports.end(),
            });
        let router = Router::new(
            settings.echo_destination.clone(),
            settings.sip.as_ref().map(|s| SipRouting {
                domain: s.trunk.domain.clone(),
                allow: s.allow.clone(),
            }),
        );
        // One shard per configured core, each on its own port: listen, listen + 1, …
        // (port 0: each picks a free one).
        let mut shards = Vec::new();
        for &bind in &settings.media.shard_binds {
            let shard = ShardHandle::start(
                bind,
                config.webrtc.public_ip,
                EndpointConfig {
                    // Replaced by the shard with the bound address (or public_ip).
                    candidate_addr: bind,
                    codecs: settings.codecs.clone(),
                },
                rtp_ports.clone(),
                media_policy(&settings.media),
                metrics.shard.clone(),
                media_reports.clone(),
            )
            .map_err(StartError::Media)?;
            shards.push(shard);
        }
        let listener = TcpListener::bind(config.http.listen)
            .await
            .map_err(|e| StartError::Http(config.http.listen, e))?;
        let http_addr = listener
            .local_addr()
            .map_err(|e| StartError::Http(config.http.listen, e))?;
        let (inbound_tx, inbound_rx) = tokio::sync::mpsc::channel(queues::INBOUND_CALLS);
        let users = match sip.as_ref().zip(settings.sip.as_ref()) {
            Some((leg, s)) => {
                let allowed = inbound_sources(s).await.map_err(StartError::Config)?;
                info!(allowed = ?allowed, "inbound SIP accepted from these sources");
                leg.service.accept_inbound(allowed, inbound_tx);
                Some(users::start(
                    leg.service.clone(),
                    users::UsersConfig {
                        registrar: s.registrar.at.clone(),
                        expires: s.registrar.expires_secs,
                        grace: s.registrar.unregister_grace,
                    },
                    metrics.clone(),
                ))
            }
            None => None,
        };
        let failure_window = Duration::from_secs(config.auth.failure_window_secs);
        let sign_in_failures = auth::FailureLimiter::new(config.auth.max_failures, failure_window);
        let sign_in_failures_by_user =
            auth::FailureLimiter::new(config.auth.max_failures_per_user, failure_window);
        let (phase, _) = watch::channel(Phase::Running);
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let call_settings = CallSettings {
            router,
            timers: config.call_timers(),
            max_calls: config.calls.max_per_session,
            max_candidates: config.calls.max_candidates,
            dtmf: match config.sip.dtmf_mode {
                config::DtmfMode::Info => DtmfRoute::Info,
                config::DtmfMode::Rfc4733 => DtmfRoute::Rfc4733,
            },
            sip_media_ip: sip.as_ref().map(|leg| leg.service.advertised_ip()),
            sip_codecs: SIP_CODECS.to_vec(),
            sip_dtmf_pt: SIP_DTMF_PT,
            resume_grace: Some(config.calls.resume_grace_secs)
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            log_prefix: format!("{started_ms:x}"),
        };
        let calls_max_per_address = config.calls.max_per_address;
        let new_calls_per_second = config.calls.max_new_per_second_per_address;
        // Checked with the rest of the configuration.
        let trusted_proxies =
            config::networks("http.trusted_proxies", &config.http.trusted_proxies)
                .unwrap_or_default();
        let connections = connections::Connections::new(
            config.http.max_connections_per_address,
            config.http.max_connections,
        );
        let sip_ws = gangway_signal::sip_ws::FrontSettings::new(
            String::new(),
            config.sip.user_agent.clone(),
        );
        let shared = Arc::new(Shared {
            config,
            metrics,
            shards,
            next_shard: AtomicUsize::new(0),
            call_settings,
            sip,
            users,
            sign_in_failures,
            sign_in_failures_by_user,
            tokens: resume::Tokens::default(),
            sip_ws,
            flows: flows::Flows::default(),
            connections,
            calls_per_address: connections::CallsPerAddress::new(calls_max_per_address),
            new_call_rate: rate::NewCallRate::new(new_calls_per_second),
            trusted_proxies,
            phase,
            forced: watch::channel(false).0,
            next_peer: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            started_ms,
            cdr,
        });
        tokio::spawn(inbound::run(shared.clone(), inbound_rx));
        let app = http::router(shared.clone());
        let header_timeout = Duration::from_secs(shared.config.http.header_read_timeout_secs);
        let mut phase_rx = shared.phase.subscribe();
        let server = tokio::spawn(async move {
            let stop = async move {
                let _ = phase_rx.wait_for(|p| *p == Phase::Terminating).await;
            };
            serve::serve(listener, app, header_timeout, stop).await;
        });
        let webrtc: Vec<String> = shared
            .shards
            .iter()
            .map(|s| s.local_addr().to_string())
            .collect();
        info!(http = %http_addr, webrtc = %webrtc.join(","), "gangway started");
        Ok(Gateway {
            shared,
            http_addr,
            server,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn webrtc_addr(&self) -> SocketAddr {
        self.shared.shards[0].local_addr()
    }

    /// Every media shard's WebRTC address.
    pub fn webrtc_addrs(&self) -> Vec<SocketAddr> {
        self.shared.shards.iter().map(|s| s.local_addr()).collect()
    }

    /// The SIP listen address, when the SIP leg is enabled.
    pub fn sip_addr(&self) -> Option<SocketAddr> {
        self.shared.sip.as_ref().map(|s| s.service.local_addr())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Stops taking new calls (readiness goes 503) but keeps existing ones.
    pub fn begin_drain(&self) {
        self.shared.phase.send_if_modified(|p| {
            let changed = *p == Phase::Running;
            if changed {
                *p = Phase::Draining;
            }
            changed
        });
    }

    /// What cuts a running [`Gateway::shutdown`]'s drain short.
    pub fn stop_now_handle(&self) -> StopNow {
        StopNow(self.shared.clone())
    }

    /// Drains for up to `drain` (until no calls remain, or [`StopNow`]),
    /// then ends every call, closes every socket and stops the media shard.
    pub async fn shutdown(self, drain: Duration) {
        self.begin_drain();
        let deadline = tokio::time::Instant::now() + drain;
        while self.shared.metrics.calls_active.get() > 0
            && tokio::time::Instant::now() < deadline
            && *self.shared.phase.borrow() != Phase::Terminating
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let remaining = self.shared.metrics.calls_active.get();
        if remaining > 0 {
            info!(remaining, "drain period over, ending remaining calls");
        }
        self.shared.phase.send_replace(Phase::Terminating);
        // Sessions notice the phase change, end their calls and close; give them a moment.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        let sessions_gone = async {
            let m = &self.shared.metrics;
            while m.ws_active.get() + m.sip_ws_active.get() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), sessions_gone).await;
        for shard in &self.shared.shards {
            shard.stop().await;
        }
        if let Some(sip) = &self.shared.sip {
            sip.service.stop().await;
        }
        // The records of the calls that just ended, unless told not to wait.
        let mut forced = self.shared.forced.subscribe();
        let forced_already = *forced.borrow();
        if forced_already {
            self.shared.cdr.abandon().await;
        } else {
            let forced_later = tokio::select! {
                () = self.shared.cdr.flush() => false,
                _ = forced.wait_for(|f| *f) => true,
            };
            if forced_later {
                self.shared.cdr.abandon().await;
            }
        }
        info!("gangway stopped");
    }
}

/// Ends the drain of a [`Gateway::shutdown`] in progress: every call ends
/// now (BYE/CANCEL towards the PBX), then the shutdown goes on.
pub struct StopNow(Arc<Shared>);

impl StopNow {
    pub fn now(&self) {
        self.0.forced.send_replace(true);
        self.0.phase.send_replace(Phase::Terminating);
    }
}

fn media_policy(media: &config::MediaSettings) -> MediaPolicy {
    use config::CodecPolicySetting as Setting;
    MediaPolicy {
        codecs: match media.codec_policy {
            Setting::PassthroughFirst => CodecPolicy::PassthroughFirst,
            Setting::OpusToBrowser => CodecPolicy::OpusToBrowser,
            Setting::PassthroughOnly => CodecPolicy::PassthroughOnly,
        },
        opus: OpusSettings {
            complexity: media.opus_complexity,
            bitrate: media.opus_bitrate,
        },
        media_timeout: media.timeout,
    }
}

async fn start_sip(s: &config::SipSettings, metrics: &Metrics) -> Result<SipLeg, StartError> {
    let service = SipService::start(s.endpoint.clone(), metrics.sip.clone())
        .await
        .map_err(StartError::Sip)?;
    let t = &s.trunk;
    info!(sip = %service.local_addr(), trunk = %format!("{}:{}", t.host, t.port), "SIP leg enabled");
    if let Some(keepalive) = &s.keepalive {
        service
            .start_keepalive(keepalive.clone())
            // Only the trunk's host, domain or From user can be refused here.
            .map_err(|e| {
                StartError::Config(ConfigError::new(
                    "sip.trunk",
                    format!("{e} (needed for the OPTIONS keepalive)"),
                ))
            })?;
    }
    Ok(SipLeg {
        service: Arc::new(service),
        trunk: t.clone(),
        from_user: s.from_user.clone(),
    })
}

/// `sip.inbound_allow`, or by default the addresses the trunk and the
/// registrar resolve to (each as a single-host network).
async fn inbound_sources(
    s: &config::SipSettings,
) -> Result<Vec<gangway_sip::ipnet::IpNet>, ConfigError> {
    if !s.inbound_allow.is_empty() {
        return Ok(s.inbound_allow.clone());
    }
    let mut nets = Vec::new();
    let (trunk, registrar) = (&s.trunk, &s.registrar.at);
    for (host, port) in [
        (trunk.host.as_str(), trunk.port),
        (registrar.host.as_str(), registrar.port),
    ] {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => nets.extend(addrs.map(|a| gangway_sip::ipnet::IpNet::from(a.ip()))),
            Err(e) => warn!(%host, "cannot resolve for the inbound allow-list: {e}"),
        }
    }
    nets.sort();
    nets.dedup();
    if nets.is_empty() {
        return Err(ConfigError::new(
            "sip.inbound_allow",
            "empty, and neither the trunk nor the registrar host resolves",
        ));
    }
    Ok(nets)
}
