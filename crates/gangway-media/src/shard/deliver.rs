//! Leg events to the call's owner, without ever waiting.
//!
//! Each owner (a session) gives the shard the sending end of a bounded
//! queue ([`LegEventTx`]). The shard loop must not block on it, so it uses
//! `try_send`, and the last [`RESERVED`] places are kept for the events
//! that settle a call (its answer or failure, connected, disconnected,
//! media timeout): an owner that stops reading loses DTMF digits and
//! candidate complaints first, counted in `ShardMetrics::events_dropped`,
//! and still learns how its calls ended. A settling event that finds even
//! the reserve full is dropped too, counted and logged as an error.

use gangway_rtc::PeerId;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{error, warn};

use crate::LegEvent;

/// The sending end of a call owner's queue of leg events.
pub type LegEventTx = tokio::sync::mpsc::Sender<(PeerId, LegEvent)>;

/// Places at the end of an owner's queue that only settling events take.
pub const RESERVED: usize = 16;

/// What can be lost without leaving a call undecided.
fn is_informational(event: &LegEvent) -> bool {
    matches!(
        event,
        LegEvent::Dtmf(_) | LegEvent::DtmfRefused | LegEvent::CandidateRejected(_)
    )
}

/// Queues `event` for the owner of `id`; false when it was dropped (the
/// owner's queue was full). A closed queue (the owner has gone) is not a drop.
pub(crate) fn tell(events: &LegEventTx, id: PeerId, event: LegEvent, dropped: &Counter) -> bool {
    if is_informational(&event) && events.capacity() <= RESERVED {
        dropped.inc();
        warn!(
            peer = id.0,
            ?event,
            "owner's event queue is full: event dropped"
        );
        return false;
    }
    match events.try_send((id, event)) {
        Ok(()) | Err(TrySendError::Closed(_)) => true,
        Err(TrySendError::Full((_, event))) => {
            dropped.inc();
            error!(
                peer = id.0,
                ?event,
                "owner's event queue is full, reserve included: event dropped"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn informational_events_leave_the_reserve_to_settling_ones() {
        let (tx, mut rx) = mpsc::channel(RESERVED + 2);
        let dropped = Counter::default();
        let id = PeerId(1);
        assert!(tell(&tx, id, LegEvent::Dtmf('1'), &dropped));
        assert!(tell(&tx, id, LegEvent::Dtmf('2'), &dropped));
        // Only the reserve is left: digits go, settling events still fit.
        assert!(!tell(&tx, id, LegEvent::Dtmf('3'), &dropped));
        for _ in 0..RESERVED {
            assert!(tell(&tx, id, LegEvent::Connected, &dropped));
        }
        assert!(!tell(&tx, id, LegEvent::MediaTimeout, &dropped), "all full");
        assert_eq!(dropped.get(), 2);
        assert_eq!(rx.try_recv().unwrap().1, LegEvent::Dtmf('1'));
        drop(rx);
        assert!(
            tell(&tx, id, LegEvent::Disconnected, &dropped),
            "owner gone"
        );
        assert_eq!(dropped.get(), 2, "an owner that left is not a drop");
    }
}
