//! Sizes of the queues between the gateway's tasks, and the one policy
//! for a full queue: no sender ever waits on a receiver it does not own
//! (the media shards, the SIP stack and the shared tables must keep going
//! whatever one session does), and nothing grows without bound.
//!
//! - What informs (DTMF, progress, candidate complaints) is dropped when
//!   the receiver is far behind, and counted (`gangway_media_events_dropped_total`,
//!   `gangway_sip_events_dropped_total`, `gangway_queue_full_total`).
//! - What decides a call or a sign-in (answers, ends, withdrawals,
//!   registration results) has a reserve in the queue, or waits in a task
//!   of its own ([`deliver`]); there are at most a few per call.
//! - New work that finds its queue full is refused with a clear answer:
//!   a ringing call skips a session whose inbox is full, an inbound INVITE
//!   gets 503, a sign-in gets `overloaded`, a resume is refused.
//!
//! A session's own socket writes have a deadline (`http.write_timeout_secs`),
//! so a client that stops reading cannot hold its queues full for long.

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;
use tracing::warn;

use crate::metrics::Metrics;

/// `queue` label values of `gangway_queue_full_total`.
pub(crate) const NAMES: [&str; 3] = ["session_inbox", "handover", "user_commands"];

/// Per session: leg events from the media shards.
pub(crate) const LEG_EVENTS: usize = 256;
/// Per session: SIP call events.
pub(crate) const SIP_EVENTS: usize = 256;
/// Per session: messages from the user table and ringing calls.
pub(crate) const INBOX: usize = 64;
/// Per session: sockets handed over by a resume (one at a time).
pub(crate) const HANDOVER: usize = 4;
/// Per SIP-over-WebSocket flow: answers to relayed REGISTERs.
pub(crate) const REGISTER_ANSWERS: usize = 16;
/// The user table's commands, from every session.
pub(crate) const USER_COMMANDS: usize = 1024;
/// Registration events, from every user's registration task.
pub(crate) const REGISTRATION_EVENTS: usize = 256;
/// Inbound INVITEs waiting for the ringing coordinator.
pub(crate) const INBOUND_CALLS: usize = 256;

/// Queues `message` without waiting if there is room; otherwise a task
/// waits for room and delivers it. For the few messages that must not be
/// lost; ordering is kept only when the queue has room.
pub(crate) fn deliver<T: Send + 'static>(
    tx: &Sender<T>,
    message: T,
    queue: &'static str,
    metrics: &Metrics,
) {
    match tx.try_send(message) {
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(message)) => {
            metrics.queue_full(queue);
            warn!(queue, "queue full: a message waits for room");
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(message).await;
            });
        }
    }
}
