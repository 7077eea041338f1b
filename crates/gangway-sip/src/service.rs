//! The SIP endpoint: transports, the dialog layer and out-of-dialog requests.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::platform::CancellationToken;
use rsipstack::sip::Method;
use rsipstack::transaction::endpoint::EndpointOption;
use rsipstack::transaction::CallIdFormat;
use rsipstack::transport::udp::{UdpConnection, UdpInner};
use rsipstack::transport::{SipAddr, TcpListenerConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use tokio::sync::mpsc::Sender;
use tokio::sync::Notify;
use tracing::{info, warn, Instrument};

use crate::call::run_call;
use crate::dialog::{Events, SipEventTx};
use crate::metrics::MetricsInspector;
use crate::router::incoming_loop;
use crate::shared::{ActiveCall, Inbound, Shared};
use crate::{
    DialogHandle, IncomingCall, OutboundCall, SipConfig, SipError, SipEvent, SipFailure, SipMetrics,
};
use gangway_core::rate::TokenBucket;

/// How long [`SipService::stop`] lets calls hang up cleanly before it drops them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The SIP endpoint. Create with [`SipService::start`]; stop with
/// [`SipService::stop`] (dropping it also shuts the endpoint down, abruptly).
pub struct SipService {
    pub(crate) shared: Arc<Shared>,
}

impl SipService {
    /// Bind UDP (and TCP on the same port) and start the SIP endpoint.
    pub async fn start(config: SipConfig, metrics: SipMetrics) -> Result<SipService, SipError> {
        let listen = config.listen;
        if config.public_ip.is_none() && listen.ip().is_unspecified() {
            return Err(SipError::Config(format!(
                "listen address {listen} is unspecified and no public_ip is set: \
                 Via/Contact need a concrete address"
            )));
        }
        if let Some(ip) = config.public_ip {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(SipError::Config(format!("public_ip {ip} is not usable")));
            }
        }

        let udp_socket = bind_udp_and_check_tcp(listen)?;
        let local_addr = udp_socket.local_addr().map_err(|source| SipError::Bind {
            addr: listen,
            source,
        })?;
        let advertised_ip = config.public_ip.unwrap_or(local_addr.ip());
        let external = config
            .public_ip
            .map(|ip| SocketAddr::new(ip, local_addr.port()));

        let root = CancellationToken::new();
        let transport_layer = TransportLayer::new(root.child_token());
        transport_layer.set_stream_idle_timeout(config.tcp.idle_timeout);

        let udp_socket =
            tokio::net::UdpSocket::from_std(udp_socket).map_err(|source| SipError::Bind {
                addr: local_addr,
                source,
            })?;
        let udp_inner = UdpInner {
            conn: Arc::new(udp_socket),
            addr: SipAddr {
                r#type: Some(rsipstack::sip::Transport::Udp),
                addr: local_addr.into(),
            },
        };
        let udp = UdpConnection::attach(udp_inner, external, Some(root.child_token())).await;
        // UDP first: it is the default listener for Via and Contact.
        transport_layer.add_transport(udp.into());
        let tcp = TcpListenerConnection::new(local_addr, external)
            .await
            .map_err(|e| SipError::Stack(e.to_string()))?;
        transport_layer.add_transport(tcp.into());

        let inbound = Arc::new(OnceLock::new());
        let screen = crate::screen::Screen {
            inbound: inbound.clone(),
            bans: Default::default(),
            metrics: metrics.clone(),
            tcp: crate::tcp_caps::TcpCaps::new(config.tcp.clone()),
            last_tcp_warning: Default::default(),
        };
        let endpoint = EndpointBuilder::new()
            // Plain UUID Call-IDs: the default carries the library's domain.
            .with_option(EndpointOption {
                callid_format: CallIdFormat::Uuid,
                ..Default::default()
            })
            .with_cancel_token(root.clone())
            .with_transport_layer(transport_layer)
            .with_user_agent(&config.user_agent)
            .with_inspector(Box::new(MetricsInspector(metrics.clone())))
            .with_transport_inspector(Box::new(screen))
            .with_allows(vec![
                Method::Invite,
                Method::Ack,
                Method::Cancel,
                Method::Bye,
                Method::Options,
                Method::Info,
                Method::Update,
                Method::PRack,
            ])
            .build();
        let incoming = endpoint
            .incoming_transactions()
            .map_err(|e| SipError::Stack(e.to_string()))?;
        let dialog_layer = Arc::new(DialogLayer::new(endpoint.inner.clone()));

        let shared = Arc::new(Shared {
            dialog_layer,
            endpoint,
            local_addr,
            advertised_ip,
            root: root.clone(),
            hangup_all: CancellationToken::new(),
            kill: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            inbound,
            trunk_health: OnceLock::new(),
            prack: config.prack,
            session_expires: match config.session_expires {
                0 => 0,
                secs => secs.max(crate::session_timer::MIN_SE),
            },
            metrics,
            call_rate: (config.max_calls_per_second > 0).then(|| {
                let bucket =
                    TokenBucket::new(config.max_calls_per_second, std::time::Instant::now());
                std::sync::Mutex::new(bucket)
            }),
            replaceable: Default::default(),
        });

        let endpoint_inner = shared.endpoint.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = endpoint_inner.serve().await {
                warn!(error = %e, "SIP endpoint stopped with an error");
            }
        });
        tokio::spawn(incoming_loop(shared.clone(), incoming, root.clone()));

        info!(%local_addr, %advertised_ip, "SIP service listening (UDP and TCP)");
        Ok(SipService { shared })
    }

    /// The bound address (with the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// `public_ip`, or the listen IP: what goes in Contact and SDP `c=`.
    pub fn advertised_ip(&self) -> IpAddr {
        self.shared.advertised_ip
    }

    /// Number of calls that have not yet sent [`SipEvent::Ended`].
    pub fn active_calls(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Dialogs registered in the stack's dialog layer (leak check: 0 once
    /// every call has ended).
    pub fn open_dialogs(&self) -> usize {
        self.shared.dialog_layer.len()
    }

    /// Place an outbound call. Progress goes to `events` as `(call.key, event)`,
    /// ending with [`SipEvent::Ended`]. Must be called within a tokio runtime.
    pub fn place_call(&self, call: OutboundCall, events: SipEventTx) -> DialogHandle {
        let (handle, commands) = DialogHandle::new();
        let refused = if self.shared.stopping.load(Ordering::SeqCst) {
            Some(SipFailure::Stopping)
        } else if !self.shared.admit_call() {
            warn!(call = %call.correlation_id, "calls per second towards the trunk over the limit: call failed with 503, no INVITE sent");
            Some(SipFailure::RateLimited)
        } else if self.shared.trunk_down(&call.trunk) {
            info!(
                call = %call.correlation_id,
                trunk = %format!("{}:{}", call.trunk.host, call.trunk.port),
                "trunk is down (OPTIONS keepalive): call failed with 503, no INVITE sent"
            );
            Some(SipFailure::TrunkDown)
        } else {
            None
        };
        if let Some(failure) = refused {
            handle.failed(failure.clone());
            let events = Events::to(call.key, events, self.shared.metrics.events_dropped.clone());
            events.fail(&failure);
            events.send(SipEvent::Ended);
            return handle;
        }
        self.shared.call_started();
        let active = ActiveCall(self.shared.clone());
        let span = tracing::info_span!("sip_call", call = %call.correlation_id, key = call.key);
        let task = run_call(
            self.shared.clone(),
            call,
            events,
            handle.clone(),
            commands,
            active,
        );
        tokio::spawn(task.instrument(span));
        handle
    }

    /// Take inbound calls: INVITEs that start a dialog, from an address in
    /// `allowed_sources`, go to `handler` (others get 403 and count in
    /// `sip_inbound_rejected{reason="forbidden_source"}`). Without this every
    /// inbound INVITE gets 480. Only the first call has an effect.
    pub fn accept_inbound(
        &self,
        allowed_sources: Vec<ipnet::IpNet>,
        handler: Sender<IncomingCall>,
    ) {
        let _ = self.shared.inbound.set(Inbound {
            allowed_sources,
            handler,
        });
    }

    /// Stop: new calls fail with 503, live calls are hung up (CANCEL/BYE)
    /// and given a few seconds to finish, then the remaining ones are dropped
    /// (each still gets [`SipEvent::Ended`]) and the endpoint shuts down.
    pub async fn stop(&self) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        shared.hangup_all.cancel();
        if tokio::time::timeout(STOP_GRACE, shared.wait_idle())
            .await
            .is_err()
        {
            warn!(
                calls = shared.active.load(Ordering::SeqCst),
                "calls still active after the stop grace period, dropping them"
            );
            shared.kill.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.wait_idle()).await;
        }
        shared.endpoint.shutdown();
        shared.root.cancel();
        info!("SIP service stopped");
    }
}

impl Drop for SipService {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.kill.cancel();
        self.shared.root.cancel();
    }
}

/// Bind the UDP socket; make sure TCP can listen on the same port (with port
/// 0, retry until a port is free for both).
fn bind_udp_and_check_tcp(listen: SocketAddr) -> Result<std::net::UdpSocket, SipError> {
    let bind_err = |source| SipError::Bind {
        addr: listen,
        source,
    };
    let attempts = if listen.port() == 0 { 20 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let udp = std::net::UdpSocket::bind(listen).map_err(bind_err)?;
        let addr = udp.local_addr().map_err(bind_err)?;
        // The TCP listener is bound by rsipstack when the endpoint starts
        // serving; probe the port now so a conflict is an error here rather
        // than a warning in the log later.
        match std::net::TcpListener::bind(addr) {
            Ok(probe) => {
                drop(probe);
                udp.set_nonblocking(true).map_err(bind_err)?;
                return Ok(udp);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(SipError::Bind {
        addr: listen,
        source: last_err.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}
