//! The SIP endpoint: transports, the dialog layer and out-of-dialog requests.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::platform::CancellationToken;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{
    Auth, Header, Host, HostWithPort, Method, Scheme, StatusCode, StatusCodeKind, Uri,
};
use rsipstack::transaction::endpoint::EndpointOption;
use rsipstack::transaction::{CallIdFormat, Endpoint, Transaction, TransactionReceiver};
use rsipstack::transport::udp::{UdpConnection, UdpInner};
use rsipstack::transport::{SipAddr, TcpListenerConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tracing::{debug, info, warn, Instrument};

use crate::call::run_call;
use crate::dialog::{timer_headers, Events, ALLOW};
use crate::inbound::{request_source, source_allowed, start_inbound};
use crate::metrics::MetricsInspector;
use crate::session_timer::{self, Answer};
use crate::trunk::TrunkHealth;
use crate::{
    CallControl, IncomingCall, OutboundCall, SipCall, SipConfig, SipError, SipEvent, SipMetrics,
};

/// How long [`SipService::stop`] lets calls hang up cleanly before it drops them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The SIP endpoint. Create with [`SipService::start`]; stop with
/// [`SipService::stop`] (dropping it also shuts the endpoint down, abruptly).
pub struct SipService {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) dialog_layer: Arc<DialogLayer>,
    endpoint: Endpoint,
    pub(crate) local_addr: SocketAddr,
    pub(crate) advertised_ip: IpAddr,
    /// Cancels the endpoint, transports and the incoming-request loop.
    root: CancellationToken,
    /// Asks every call to hang up (graceful stop).
    pub(crate) hangup_all: CancellationToken,
    /// Ends every call at once (stop after the grace period, or drop).
    pub(crate) kill: CancellationToken,
    pub(crate) stopping: AtomicBool,
    active: AtomicUsize,
    idle: Notify,
    /// Set once by [`SipService::accept_inbound`].
    inbound: OnceLock<Inbound>,
    /// Set once by [`SipService::start_keepalive`].
    pub(crate) trunk_health: OnceLock<Arc<TrunkHealth>>,
    /// `SipConfig::prack`.
    pub(crate) prack: bool,
    /// `SipConfig::session_expires` (0, or at least 90).
    pub(crate) session_expires: u32,
    pub(crate) metrics: SipMetrics,
    /// Established dialogs by id, for an INVITE with Replaces (RFC 3891):
    /// the events of the call it would replace.
    replaceable: std::sync::Mutex<std::collections::HashMap<rsipstack::dialog::DialogId, Events>>,
}

/// Who may call in, and who gets the calls.
struct Inbound {
    allowed_sources: Vec<ipnet::IpNet>,
    handler: UnboundedSender<IncomingCall>,
}

impl Shared {
    /// An established dialog an INVITE with Replaces may take over.
    pub(crate) fn register_replaceable(&self, id: rsipstack::dialog::DialogId, events: Events) {
        let mut map = self.replaceable.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(id, events);
    }

    pub(crate) fn unregister_replaceable(&self, id: &rsipstack::dialog::DialogId) {
        let mut map = self.replaceable.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }

    fn replaceable(&self, id: &rsipstack::dialog::DialogId) -> Option<Events> {
        let map = self.replaceable.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).cloned()
    }
}

/// Decrements the active call count when a call task ends.
pub(crate) struct ActiveCall(pub(crate) Arc<Shared>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
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
            inbound: OnceLock::new(),
            trunk_health: OnceLock::new(),
            prack: config.prack,
            session_expires: match config.session_expires {
                0 => 0,
                secs => secs.max(crate::session_timer::MIN_SE),
            },
            metrics,
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
    pub fn place_call(
        &self,
        call: OutboundCall,
        events: UnboundedSender<(u64, SipEvent)>,
    ) -> SipCall {
        let (mid, mid_rx) = tokio::sync::mpsc::unbounded_channel();
        let control = Arc::new(CallControl {
            hangup_requested: Default::default(),
            hangup: Notify::new(),
            mid,
            dialog: Default::default(),
        });
        let handle = SipCall {
            key: call.key,
            control: control.clone(),
        };
        if self.shared.stopping.load(Ordering::SeqCst) {
            let _ = events.send((
                call.key,
                SipEvent::Failed {
                    status: 503,
                    reason: "SIP service stopped".to_string(),
                },
            ));
            let _ = events.send((call.key, SipEvent::Ended));
            return handle;
        }
        if self.shared.trunk_down(&call.trunk) {
            info!(
                call = %call.correlation_id,
                trunk = %format!("{}:{}", call.trunk.host, call.trunk.port),
                "trunk is down (OPTIONS keepalive): call failed with 503, no INVITE sent"
            );
            let _ = events.send((
                call.key,
                SipEvent::Failed {
                    status: 503,
                    reason: "trunk down (no response to OPTIONS keepalive)".to_string(),
                },
            ));
            let _ = events.send((call.key, SipEvent::Ended));
            return handle;
        }
        self.shared.call_started();
        let active = ActiveCall(self.shared.clone());
        let span = tracing::info_span!("sip_call", call = %call.correlation_id, key = call.key);
        tokio::spawn(
            run_call(self.shared.clone(), call, events, control, mid_rx, active).instrument(span),
        );
        handle
    }

    /// Take inbound calls: INVITEs that start a dialog, from an address in
    /// `allowed_sources`, go to `handler` (others get 403 and count in
    /// `sip_inbound_rejected{reason="forbidden_source"}`). Without this every
    /// inbound INVITE gets 480. Only the first call has an effect.
    pub fn accept_inbound(
        &self,
        allowed_sources: Vec<ipnet::IpNet>,
        handler: UnboundedSender<IncomingCall>,
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

impl Shared {
    pub(crate) fn endpoint_inner(&self) -> rsipstack::transaction::endpoint::EndpointInnerRef {
        self.endpoint.inner.clone()
    }

    /// Our Contact for `user`: `sip:<user>@<advertised ip>:<port>`, with
    /// `params` (e.g. `transport=tcp`).
    pub(crate) fn contact(&self, user: &str, params: Vec<rsipstack::sip::uri::Param>) -> Uri {
        Uri {
            scheme: Some(Scheme::Sip),
            auth: Some(Auth {
                user: user.to_string(),
                password: None,
            }),
            host_with_port: HostWithPort {
                host: Host::IpAddr(self.advertised_ip),
                port: Some(self.local_addr.port().into()),
            },
            params,
            headers: vec![],
        }
    }

    /// Whether `trunk` is the one the keepalive watches and it is down.
    pub(crate) fn trunk_down(&self, trunk: &crate::Trunk) -> bool {
        self.trunk_health
            .get()
            .is_some_and(|h| h.watches(trunk) && !h.is_up())
    }

    pub(crate) fn call_started(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
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

/// Requests that are not responses to our own transactions.
async fn incoming_loop(
    shared: Arc<Shared>,
    mut incoming: TransactionReceiver,
    cancel: CancellationToken,
) {
    loop {
        let tx = tokio::select! {
            _ = cancel.cancelled() => break,
            tx = incoming.recv() => match tx {
                Some(tx) => tx,
                None => break,
            },
        };
        tokio::spawn(handle_incoming(shared.clone(), tx));
    }
    debug!("incoming request loop ended");
}

async fn handle_incoming(shared: Arc<Shared>, mut tx: Transaction) {
    let method = tx.original.method;
    if let Some(mut dialog) = shared.dialog_layer.match_dialog(&tx) {
        if let Err(e) = dialog.handle(&mut tx).await {
            debug!(%method, error = %e, "in-dialog request failed");
        }
        // rsipstack leaves some requests unanswered (e.g. INFO/UPDATE while
        // the dialog is still early): never leave the far end hanging.
        let answered = tx
            .last_response
            .as_ref()
            .is_some_and(|r| r.status_code.kind() != StatusCodeKind::Provisional);
        if !answered && method != Method::Ack {
            let status = match method {
                Method::Update if !tx.original.body.is_empty() => StatusCode::NotAcceptableHere,
                Method::Info | Method::Update | Method::Options | Method::Notify => StatusCode::OK,
                _ => StatusCode::CallTransactionDoesNotExist,
            };
            debug!(%method, status = status.code(), "answering request the dialog left open");
            if let Err(e) = tx.reply(status).await {
                debug!(%method, error = %e, "failed to answer in-dialog request");
            }
        }
        return;
    }

    let has_to_tag = tx
        .original
        .to_header()
        .ok()
        .and_then(|to| to.tag().ok().flatten())
        .is_some();
    if method == Method::Invite && !has_to_tag {
        return new_invite(&shared, tx).await;
    }
    let (status, allow) = match method {
        Method::Options => (StatusCode::OK, true),
        // Endpoint answers CANCEL itself; ACK never reaches here.
        Method::Ack => return,
        Method::Invite
        | Method::Bye
        | Method::Cancel
        | Method::Info
        | Method::Update
        | Method::PRack
        | Method::Notify
        | Method::Refer
        | Method::Message
            if has_to_tag =>
        {
            (StatusCode::CallTransactionDoesNotExist, false)
        }
        Method::Bye | Method::Cancel | Method::Info | Method::Update | Method::PRack => {
            (StatusCode::CallTransactionDoesNotExist, false)
        }
        _ => (StatusCode::MethodNotAllowed, true),
    };
    debug!(%method, status = status.code(), src = ?request_source(&tx), "out-of-dialog request");
    let mut headers = Vec::new();
    if allow {
        headers.push(Header::Allow(ALLOW.into()));
    }
    if method == Method::Options {
        headers.push(Header::Accept("application/sdp".into()));
    }
    if let Err(e) = tx.reply_with(status, headers, None).await {
        debug!(%method, error = %e, "failed to answer request");
    }
}

/// An INVITE that starts a dialog: screened, then handed to the inbound
/// handler, or refused.
async fn new_invite(shared: &Arc<Shared>, tx: Transaction) {
    let Some(inbound) = shared.inbound.get() else {
        // Inbound calls are not enabled.
        return refuse_invite(tx, StatusCode::TemporarilyUnavailable).await;
    };
    let source = request_source(&tx);
    let Some(source) = source.filter(|s| source_allowed(&inbound.allowed_sources, s.ip())) else {
        warn!(src = ?source, "INVITE from an address not in sip.inbound_allow, refused (403)");
        shared.metrics.inbound_rejected("forbidden_source");
        return refuse_invite(tx, StatusCode::Forbidden).await;
    };
    if shared.stopping.load(Ordering::SeqCst) {
        return refuse_invite(tx, StatusCode::ServiceUnavailable).await;
    }
    let user = tx
        .original
        .uri
        .auth
        .as_ref()
        .map(|a| a.user.clone())
        .filter(|u| !u.is_empty());
    if let Some(replaces) = tx.original.header_value("Replaces") {
        return replacing_invite(shared, tx, user.unwrap_or_default(), source, &replaces).await;
    }
    let Some(user) = user else {
        shared.metrics.inbound_rejected("no_user");
        return refuse_invite(tx, StatusCode::NotFound).await;
    };
    // RFC 4028 §9: a session interval below our minimum gets 422.
    let timer = timer_headers(tx.original.headers.iter());
    if let Answer::TooSmall { min_se } = session_timer::answer_request(&timer, 0) {
        info!(src = %source, "INVITE's Session-Expires below our Min-SE, refused (422)");
        let headers = vec![Header::MinSE(min_se.to_string().into())];
        return refuse_invite_with(tx, StatusCode::SessionIntervalTooSmall, headers).await;
    }
    match start_inbound(shared, tx, user, source) {
        Ok(call) => {
            if let Err(refused) = inbound.handler.send(call) {
                refused.0.handle.reject(480);
            }
        }
        Err(refused) => {
            let (tx, status) = *refused;
            refuse_invite(tx, status).await
        }
    }
}

/// An INVITE with Replaces (RFC 3891): it takes over one of our established
/// dialogs, whose owner gets it as [`SipEvent::ReplacedBy`] instead of a
/// ringing call. No such dialog: 481.
async fn replacing_invite(
    shared: &Arc<Shared>,
    tx: Transaction,
    user: String,
    source: SocketAddr,
    replaces: &str,
) {
    let Some(target) = parse_replaces(replaces) else {
        info!(%replaces, "unreadable Replaces header (400)");
        return refuse_invite(tx, StatusCode::BadRequest).await;
    };
    let Some(events) = shared.replaceable(&target) else {
        info!(call_id = %target.call_id, "INVITE with Replaces for no dialog of ours (481)");
        shared.metrics.inbound_rejected("replaces_no_dialog");
        return refuse_invite(tx, StatusCode::CallTransactionDoesNotExist).await;
    };
    match start_inbound(shared, tx, user, source) {
        Ok(call) => {
            info!(call_id = %target.call_id, "INVITE with Replaces: handing it to the call it replaces");
            events.send(SipEvent::ReplacedBy(crate::Replacement(Box::new(call))));
        }
        Err(refused) => {
            let (tx, status) = *refused;
            refuse_invite(tx, status).await
        }
    }
}

/// `call-id;to-tag=…;from-tag=…` as the dialog id on our side: the to-tag
/// is our tag, the from-tag the far end's.
fn parse_replaces(value: &str) -> Option<rsipstack::dialog::DialogId> {
    let mut parts = value.split(';').map(str::trim);
    let call_id = parts.next().filter(|c| !c.is_empty())?.to_string();
    let (mut to_tag, mut from_tag) = (None, None);
    for part in parts {
        match part.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("to-tag") => to_tag = Some(v.trim()),
            Some((k, v)) if k.trim().eq_ignore_ascii_case("from-tag") => from_tag = Some(v.trim()),
            _ => {}
        }
    }
    Some(rsipstack::dialog::DialogId {
        call_id,
        local_tag: to_tag.filter(|t| !t.is_empty())?.to_string(),
        remote_tag: from_tag.filter(|t| !t.is_empty())?.to_string(),
    })
}

/// Answers an INVITE we will not take, and keeps its server transaction
/// until the ACK (or Timer H): it retransmits the response over UDP.
async fn refuse_invite(tx: Transaction, status: StatusCode) {
    refuse_invite_with(tx, status, Vec::new()).await
}

async fn refuse_invite_with(mut tx: Transaction, status: StatusCode, headers: Vec<Header>) {
    debug!(status = status.code(), src = ?request_source(&tx), "INVITE refused");
    if let Err(e) = tx.reply_with(status, headers, None).await {
        debug!(error = %e, "failed to answer INVITE");
        return;
    }
    let drain = async { while tx.receive().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(40), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_names_our_tag_as_the_to_tag() {
        let id = parse_replaces("abc@10.0.0.1;to-tag=ours;from-tag=theirs;early-only").unwrap();
        assert_eq!(id.call_id, "abc@10.0.0.1");
        assert_eq!(id.local_tag, "ours");
        assert_eq!(id.remote_tag, "theirs");
        let id = parse_replaces(" x ; From-Tag=b ; TO-TAG=a").unwrap();
        assert_eq!((id.local_tag.as_str(), id.remote_tag.as_str()), ("a", "b"));
        assert!(parse_replaces("abc;to-tag=a").is_none(), "both tags needed");
        assert!(parse_replaces(";to-tag=a;from-tag=b").is_none());
        assert!(parse_replaces("abc;to-tag=;from-tag=b").is_none());
    }
}
