//! A dialog's life, sans IO, in the manner of `session_timer.rs`: one
//! enum per side ([`uac::Phase`] for the calls we place, [`uas::Phase`]
//! for those we take), advanced by `on(now, input)`, which returns the
//! [`Effect`]s the call's task carries out (send CANCEL or BYE, report an
//! event, settle the answer...). The task only selects among the stack's
//! dialog states, the owner's commands, the service's stop signals and
//! [`poll_timeout`](uac::Uac::poll_timeout), turns what came into an input
//! and carries out the effects. Time is an input.

use std::time::Duration;

use crate::dialog::MidCallCommand;
use crate::session_timer::TimerHeaders;
use crate::{SipEvent, SipFailure, StatusCode};

pub(crate) mod uac;
pub(crate) mod uas;

/// How long a call we are ending may take: CANCEL or BYE and its
/// retransmissions (64*T1), or our 200 waiting for the ACK, plus slack.
/// Past it the dialog is dropped.
pub(crate) const ENDING_DEADLINE: Duration = Duration::from_secs(40);

/// How the stack ended a dialog, from our side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Termination {
    /// The far end sent BYE.
    FarEndBye,
    /// The far end (the caller) sent CANCEL.
    FarEndCancel,
    /// A timer of the stack ran out.
    Timeout,
    /// Anything else (our own CANCEL or BYE, a failure response, ...),
    /// named for the logs.
    Other(String),
}

/// What the call's task does for the dialog's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Tell the owner.
    Report(SipEvent),
    /// Record the failure on the handle, then report it as
    /// [`SipEvent::Failed`].
    Fail(SipFailure),
    /// The answer settles the session: fix the codec from the far end's
    /// `sdp`, make the dialog known to its handle and to an INVITE with
    /// Replaces. Outbound, `far_end` holds the 2xx's timer headers, which
    /// start the session timer (inbound, our 200 started it).
    Establish {
        sdp: String,
        far_end: Option<TimerHeaders>,
    },
    /// Outbound: CANCEL before a final response (deferred by the stack
    /// until a provisional came), BYE after a 2xx, also one that raced the
    /// CANCEL.
    Hangup,
    /// Outbound: the task stops caring for a dialog that may still be
    /// alive at the stack (a forced stop, or an INVITE that failed locally
    /// while the far end may be ringing): hang it up in the background
    /// unless the stack has ended it.
    Abandon,
    /// Inbound: 180 Ringing.
    Ring,
    /// Inbound: 200 OK with our SDP. If the stack cannot send it, the task
    /// feeds [`uas::Input::AnswerFailed`].
    Accept { sdp: String },
    /// Inbound: a final failure response to the INVITE.
    Reject(StatusCode),
    /// Inbound: BYE (also valid while our 200 awaits its ACK).
    Bye,
    /// Carry out a mid-call request of the owner.
    Mid(MidCallCommand),
}
