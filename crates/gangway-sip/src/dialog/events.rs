//! Where a call's events go.
//!
//! The owner's queue is bounded and the call's task never waits on it:
//! events go with `try_send`. The last [`RESERVED`] places are kept for the
//! events that decide the call (answered, failed, hung up, a new offer,
//! ended); an owner that stops reading loses provisional responses, DTMF
//! digits and transfer progress first, counted in
//! `SipMetrics::events_dropped`. A deciding event that finds the queue full
//! even so waits in the call's own backlog, which one task delivers in
//! order as room appears: it is never lost, and a call has only a handful.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;
use tracing::{debug, warn};

use crate::{SipEvent, SipFailure};

/// The sending end of a call owner's event queue.
pub type SipEventTx = Sender<(u64, SipEvent)>;

/// Places at the end of an owner's queue that only deciding events take.
pub const RESERVED: usize = 16;

/// Where a call's events go. An inbound call changes owner once (from the
/// ringing coordinator to the session that accepts it), so the target can
/// be replaced; events sent while there is no target wait for one.
#[derive(Clone)]
pub(crate) struct Events {
    route: Arc<Mutex<Route>>,
    dropped: Counter,
}

struct Route {
    target: Option<(u64, SipEventTx)>,
    /// Deciding events not yet queued to the owner, in order.
    backlog: VecDeque<SipEvent>,
    /// A task is delivering the backlog.
    delivering: bool,
}

/// What an owner can miss without the call being left undecided.
fn is_informational(event: &SipEvent) -> bool {
    matches!(
        event,
        SipEvent::Provisional { .. }
            | SipEvent::Dtmf { .. }
            | SipEvent::TransferProgress { done: false, .. }
    )
}

impl Events {
    pub(crate) fn to(key: u64, tx: SipEventTx, dropped: Counter) -> Events {
        Events::with_target(Some((key, tx)), dropped)
    }

    /// Events are held until [`Events::retarget`] names an owner.
    pub(crate) fn unrouted(dropped: Counter) -> Events {
        Events::with_target(None, dropped)
    }

    fn with_target(target: Option<(u64, SipEventTx)>, dropped: Counter) -> Events {
        Events {
            route: Arc::new(Mutex::new(Route {
                target,
                backlog: VecDeque::new(),
                delivering: false,
            })),
            dropped,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Route> {
        self.route.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends every later event (and any held one) to `tx` as `(key, event)`.
    pub(crate) fn retarget(&self, key: u64, tx: SipEventTx) {
        let mut route = self.lock();
        route.target = Some((key, tx));
        self.deliver_backlog(&mut route);
    }

    pub(crate) fn send(&self, event: SipEvent) {
        debug!(?event, "sip event");
        let mut route = self.lock();
        let Some((key, tx)) = route.target.clone() else {
            // Held for the owner to come; a ringing call has few events.
            if !is_informational(&event) {
                route.backlog.push_back(event);
            }
            return;
        };
        let informational = is_informational(&event);
        if informational && (tx.capacity() <= RESERVED || !route.backlog.is_empty()) {
            self.dropped.inc();
            warn!(?event, "owner's event queue is full: event dropped");
            return;
        }
        if !route.backlog.is_empty() {
            // Keep the order behind what is already waiting.
            route.backlog.push_back(event);
            return;
        }
        match tx.try_send((key, event)) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full((_, event))) if informational => {
                self.dropped.inc();
                warn!(?event, "owner's event queue is full: event dropped");
            }
            Err(TrySendError::Full((_, event))) => {
                warn!(
                    ?event,
                    "owner's event queue is full: event waits in the backlog"
                );
                route.backlog.push_back(event);
                self.deliver_backlog(&mut route);
            }
        }
    }

    /// Starts the task that queues the backlog in order, if there is a
    /// backlog, an owner and no such task yet.
    fn deliver_backlog(&self, route: &mut Route) {
        if route.backlog.is_empty() || route.target.is_none() || route.delivering {
            return;
        }
        route.delivering = true;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let (target, event) = {
                    let mut route = this.lock();
                    match (route.target.clone(), route.backlog.pop_front()) {
                        (Some(target), Some(event)) => (target, event),
                        _ => {
                            route.delivering = false;
                            return;
                        }
                    }
                };
                let (key, tx) = target;
                // The owner has gone: nothing will read the rest either.
                if tx.send((key, event)).await.is_err() {
                    let mut route = this.lock();
                    route.backlog.clear();
                    route.delivering = false;
                    return;
                }
            }
        });
    }

    /// Reports `failure` as [`SipEvent::Failed`].
    pub(crate) fn fail(&self, failure: &SipFailure) {
        self.send(failure.event());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn a_full_queue_drops_progress_but_delivers_the_end_in_order() {
        let (tx, mut rx) = mpsc::channel(RESERVED + 1);
        let dropped = Counter::default();
        let events = Events::to(7, tx, dropped.clone());
        events.send(SipEvent::Dtmf { digit: '1' });
        // Only the reserve is left now.
        events.send(SipEvent::Dtmf { digit: '2' });
        assert_eq!(dropped.get(), 1);
        for _ in 0..RESERVED {
            events.send(SipEvent::RemoteOffer { sdp: "v=0".into() });
        }
        // Full: these wait, in order, and a digit behind them is dropped.
        events.send(SipEvent::RemoteHangup);
        events.send(SipEvent::Dtmf { digit: '3' });
        events.send(SipEvent::Ended);
        assert_eq!(dropped.get(), 2);
        let mut seen = Vec::new();
        while seen.last() != Some(&SipEvent::Ended) {
            let (key, event) = rx.recv().await.expect("the end arrives");
            assert_eq!(key, 7);
            seen.push(event);
        }
        assert_eq!(seen[0], SipEvent::Dtmf { digit: '1' });
        assert_eq!(seen.len(), 1 + RESERVED + 2);
        assert_eq!(seen[seen.len() - 2], SipEvent::RemoteHangup);
    }

    #[tokio::test]
    async fn held_events_reach_the_owner_named_later() {
        let events = Events::unrouted(Counter::default());
        events.send(SipEvent::Provisional {
            status: 180,
            sdp: None,
        });
        events.send(SipEvent::Failed {
            status: 487,
            reason: "Request Terminated".into(),
        });
        events.send(SipEvent::Ended);
        let (tx, mut rx) = mpsc::channel(4);
        events.retarget(3, tx);
        assert!(matches!(
            rx.recv().await,
            Some((3, SipEvent::Failed { .. }))
        ));
        assert_eq!(rx.recv().await, Some((3, SipEvent::Ended)));
    }
}
