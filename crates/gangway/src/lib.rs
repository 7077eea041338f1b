//! The Gangway gateway: configuration, wiring, HTTP/WebSocket server,
//! metrics and graceful drain. Protocol and call logic live in the
//! `gangway-*` crates; this crate only connects them.

pub mod config;
mod http;
mod metrics;
mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gangway_media::ShardHandle;
use gangway_rtc::EndpointConfig;
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

/// State shared by all sessions.
pub(crate) struct Shared {
    config: Config,
    metrics: Arc<Metrics>,
    shard: ShardHandle,
    phase: watch::Sender<Phase>,
    next_peer: AtomicU64,
    next_session: AtomicU64,
    started_ms: u128,
}

impl Shared {
    /// Session ids only need to be unique for logs and the API; they carry no authority.
    fn next_session_id(&self) -> String {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        format!("{:x}-{n}", self.started_ms)
    }
}

#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Http(SocketAddr, std::io::Error),
    Media(gangway_media::ShardStartError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Http(a, e) => write!(f, "cannot listen on {a} (http.listen): {e}"),
            StartError::Media(e) => write!(f, "{e} (webrtc.listen)"),
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
        config.validate().map_err(StartError::Config)?;
        let codecs = config.audio_codecs().map_err(StartError::Config)?;
        let metrics = Arc::new(Metrics::new());
        let shard = ShardHandle::start(
            config.webrtc.listen,
            config.webrtc.public_ip,
            EndpointConfig {
                // Replaced by the shard with the bound address (or public_ip).
                candidate_addr: config.webrtc.listen,
                codecs,
            },
            metrics.shard.clone(),
        )
        .map_err(StartError::Media)?;
        let listener = TcpListener::bind(config.http.listen)
            .await
            .map_err(|e| StartError::Http(config.http.listen, e))?;
        let http_addr = listener
            .local_addr()
            .map_err(|e| StartError::Http(config.http.listen, e))?;
        let (phase, _) = watch::channel(Phase::Running);
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            config,
            metrics,
            shard,
            phase,
            next_peer: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            started_ms,
        });
        let app = http::router(shared.clone());
        let mut phase_rx = shared.phase.subscribe();
        let server = tokio::spawn(async move {
            let stop = async move {
                let _ = phase_rx.wait_for(|p| *p == Phase::Terminating).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                warn!("http server failed: {e}");
            }
        });
        info!(http = %http_addr, webrtc = %shared.shard.local_addr(), "gangway started");
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
        self.shared.shard.local_addr()
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

    /// Drains for up to `drain` (until no calls remain), then ends every call,
    /// closes every socket and stops the media shard.
    pub async fn shutdown(self, drain: Duration) {
        self.begin_drain();
        let deadline = tokio::time::Instant::now() + drain;
        while self.shared.metrics.calls_active.get() > 0 && tokio::time::Instant::now() < deadline {
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
            while self.shared.metrics.ws_active.get() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), sessions_gone).await;
        self.shared.shard.stop().await;
        info!("gangway stopped");
    }
}
