//! What the service and its call, registration and keepalive tasks share:
//! the stack's endpoint and dialog layer, our address, the stop signals,
//! the count of live calls and the dialogs an INVITE with Replaces may
//! take over. Tasks depend on this, never on `service.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::platform::CancellationToken;
use rsipstack::sip::{Auth, Host, HostWithPort, Scheme, Uri};
use rsipstack::transaction::Endpoint;
use tokio::sync::mpsc::Sender;
use tokio::sync::Notify;

use crate::dialog::Events;
use crate::handle::IncomingCall;
use crate::trunk::TrunkHealth;
use crate::SipMetrics;

pub(crate) struct Shared {
    pub(crate) dialog_layer: Arc<DialogLayer>,
    pub(crate) endpoint: Endpoint,
    pub(crate) local_addr: SocketAddr,
    pub(crate) advertised_ip: IpAddr,
    /// Cancels the endpoint, transports and the incoming-request loop.
    pub(crate) root: CancellationToken,
    /// Asks every call to hang up (graceful stop).
    pub(crate) hangup_all: CancellationToken,
    /// Ends every call at once (stop after the grace period, or drop).
    pub(crate) kill: CancellationToken,
    pub(crate) stopping: AtomicBool,
    pub(crate) active: AtomicUsize,
    pub(crate) idle: Notify,
    /// Set once by [`crate::SipService::accept_inbound`].
    pub(crate) inbound: Arc<OnceLock<Inbound>>,
    /// Set once by [`crate::SipService::start_keepalive`].
    pub(crate) trunk_health: OnceLock<Arc<TrunkHealth>>,
    /// `SipConfig::prack`.
    pub(crate) prack: bool,
    /// `SipConfig::session_expires` (0, or at least 90).
    pub(crate) session_expires: u32,
    pub(crate) metrics: SipMetrics,
    /// `SipConfig::max_calls_per_second`; `None` without a limit.
    pub(crate) call_rate: Option<std::sync::Mutex<gangway_core::rate::TokenBucket>>,
    /// Established dialogs by id, for an INVITE with Replaces (RFC 3891):
    /// the events of the call it would replace.
    pub(crate) replaceable:
        std::sync::Mutex<std::collections::HashMap<rsipstack::dialog::DialogId, Events>>,
}

/// Who may call in, and who gets the calls.
pub(crate) struct Inbound {
    pub(crate) allowed_sources: Vec<ipnet::IpNet>,
    pub(crate) handler: Sender<IncomingCall>,
}

impl Shared {
    /// Takes one INVITE from `call_rate`: false when over the limit.
    pub(crate) fn admit_call(&self) -> bool {
        self.call_rate.as_ref().is_none_or(|rate| {
            let mut rate = rate.lock().unwrap_or_else(|e| e.into_inner());
            rate.allow(std::time::Instant::now())
        })
    }

    /// An established dialog an INVITE with Replaces may take over.
    pub(crate) fn register_replaceable(&self, id: rsipstack::dialog::DialogId, events: Events) {
        let mut map = self.replaceable.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(id, events);
    }

    pub(crate) fn unregister_replaceable(&self, id: &rsipstack::dialog::DialogId) {
        let mut map = self.replaceable.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }

    pub(crate) fn replaceable(&self, id: &rsipstack::dialog::DialogId) -> Option<Events> {
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

    pub(crate) async fn wait_idle(&self) {
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
