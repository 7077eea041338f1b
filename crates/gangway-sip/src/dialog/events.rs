//! Where a call's events go.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

use crate::{SipEvent, SipFailure};

/// Where a call's events go. An inbound call changes owner once (from the
/// ringing coordinator to the session that accepts it), so the target can
/// be replaced; events sent while there is no target wait for one.
#[derive(Clone)]
pub(crate) struct Events {
    route: Arc<Mutex<Route>>,
}

struct Route {
    target: Option<(u64, UnboundedSender<(u64, SipEvent)>)>,
    pending: Vec<SipEvent>,
}

impl Events {
    pub(crate) fn to(key: u64, tx: UnboundedSender<(u64, SipEvent)>) -> Events {
        Events {
            route: Arc::new(Mutex::new(Route {
                target: Some((key, tx)),
                pending: Vec::new(),
            })),
        }
    }

    /// Events are held until [`Events::retarget`] names an owner.
    pub(crate) fn unrouted() -> Events {
        Events {
            route: Arc::new(Mutex::new(Route {
                target: None,
                pending: Vec::new(),
            })),
        }
    }

    /// Sends every later event (and any held one) to `tx` as `(key, event)`.
    pub(crate) fn retarget(&self, key: u64, tx: UnboundedSender<(u64, SipEvent)>) {
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        for event in route.pending.drain(..) {
            let _ = tx.send((key, event));
        }
        route.target = Some((key, tx));
    }

    pub(crate) fn send(&self, event: SipEvent) {
        debug!(?event, "sip event");
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        match &route.target {
            // The owner may have gone away; the call still runs to its end.
            Some((key, tx)) => {
                let _ = tx.send((*key, event));
            }
            None => route.pending.push(event),
        }
    }

    /// Reports `failure` as [`SipEvent::Failed`].
    pub(crate) fn fail(&self, failure: &SipFailure) {
        self.send(failure.event());
    }
}
