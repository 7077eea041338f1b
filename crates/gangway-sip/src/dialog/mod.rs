//! What outbound and inbound calls share once a dialog exists: reporting
//! events to the call's owner, and the mid-call side of the dialog
//! ([`MidCall`]), which answers the far end's in-dialog requests and sends
//! ours. By concern: re-offers both ways (`offer.rs`), REFER and its
//! NOTIFYs (`refer.rs`), DTMF in INFO (`info.rs`), our SDP (`gangway_core::sdp::DialogSdp`)
//! and the session timer at run time (`refresh.rs`).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rsipstack::dialog::dialog::DialogState;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCode};

mod events;
mod info;
mod offer;
mod refer;
mod refresh;

/// Our side of the SDP in a dialog: the RFC 3264 rules live in the core.
pub(crate) use crate::sdp::DialogSdp;
pub(crate) use events::Events;
pub(crate) use refresh::{answer_headers, Expired, TimerConfig};
// `pub` for the fuzz targets too (`gangway_sip::fuzzing`).
pub use events::{SipEventTx, RESERVED as RESERVED_EVENTS};
pub use info::info_dtmf_digit;
pub use refer::{refer_target, sipfrag_status, ReferError};
pub use refresh::timer_headers;

/// Methods we answer (for `Allow`). PRACK: the stack answers the far end's
/// PRACKs within a dialog, and sends ours for reliable provisionals.
pub(crate) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK";

/// Requests the call's owner makes inside an established dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MidCallCommand {
    /// DTMF digits as SIP INFO.
    Dtmf(String),
    /// Hold (true) or resume (false) with a re-INVITE.
    Hold(bool),
    /// Blind transfer: REFER the far end to this SIP URI.
    Transfer(String),
    /// How the call the far end REFERred us to is going (a NOTIFY with a
    /// `message/sipfrag` status line); `done` ends the subscription.
    ReferProgress {
        status: u16,
        reason: String,
        done: bool,
    },
}

/// An established dialog's mid-call side, shared by outbound and inbound
/// calls: answers the far end's in-dialog requests (re-INVITE/UPDATE,
/// INFO DTMF, OPTIONS, NOTIFY, REFER, MESSAGE) and sends ours, one at a
/// time, in order.
#[derive(Clone)]
pub(crate) struct MidCall {
    dialog: InviteDialog,
    events: Events,
    local: Arc<Mutex<DialogSdp>>,
    /// Keeps our own requests of one call in order (CSeq, and digits).
    queue: Arc<tokio::sync::Mutex<()>>,
    /// An offer of ours is out (RFC 3261 §14.2: a re-offer meanwhile gets 491).
    offering: Arc<AtomicBool>,
    /// The RFC 4028 session timer (see `dialog/refresh.rs`).
    timer: Arc<refresh::TimerCell>,
}

impl MidCall {
    pub(crate) fn new(dialog: InviteDialog, events: Events, local: DialogSdp) -> MidCall {
        MidCall {
            dialog,
            events,
            local: Arc::new(Mutex::new(local)),
            queue: Arc::new(tokio::sync::Mutex::new(())),
            offering: Arc::new(AtomicBool::new(false)),
            timer: Arc::default(),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, DialogSdp> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The far end's SDP that completed the initial offer/answer.
    pub(crate) fn settle(&self, remote: &str) {
        self.local().settle(remote);
    }

    pub(crate) fn command(&self, command: MidCallCommand) {
        match command {
            MidCallCommand::Dtmf(digits) => self.send_dtmf_info(digits),
            MidCallCommand::Hold(hold) => self.reoffer(hold),
            MidCallCommand::Transfer(target) => self.refer(target),
            MidCallCommand::ReferProgress {
                status,
                reason,
                done,
            } => self.notify_refer(status, reason, done),
        }
    }

    /// Answers one request the far end sent inside the dialog. Other
    /// dialog states are ignored.
    pub(crate) async fn on_request(&self, state: DialogState) {
        match state {
            DialogState::Updated(_, req, handle) => self.answer_reoffer(&req, handle).await,
            DialogState::Info(_, req, handle) => self.on_info(&req, handle).await,
            DialogState::Options(_, _, handle) => {
                let _ = handle
                    .respond(
                        StatusCode::OK,
                        Some(vec![Header::Allow(ALLOW.into())]),
                        None,
                    )
                    .await;
            }
            DialogState::Notify(_, req, handle) => self.on_notify(&req, handle).await,
            DialogState::Refer(_, req, handle) => self.on_refer(&req, handle).await,
            DialogState::Message(_, _, handle) | DialogState::Publish(_, _, handle) => {
                let _ = handle.reply(StatusCode::MethodNotAllowed).await;
            }
            _ => {}
        }
    }
}

/// Sleeps until `deadline`, forever without one.
pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn body_text(body: &[u8]) -> Option<String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return None;
    }
    Some(String::from_utf8_lossy(body).into_owned())
}
