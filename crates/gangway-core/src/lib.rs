//! The B2BUA, sans IO: inputs in, outputs out, time as an input.
//!
//! Nothing here touches sockets, tasks or clocks. A front end owns one
//! [`Calls`] table per connection and feeds it requests, WebRTC-leg and
//! SIP-leg events and the clock; it carries out the outputs (notifications,
//! media and SIP commands). Each call's ladder is a [`Call`]; the table adds
//! what spans legs and calls (SIP-side SDP, hold, DTMF, transfers, ringing,
//! resume). [`fork`] settles an incoming call rung on several tables. That
//! keeps every path of a call testable deterministically, with scripted
//! events and a fake clock.

pub mod calls;
pub mod fork;
pub mod rate;
pub mod sdp;

mod call;
mod hold;
mod ids;
mod route;
mod sip_user;

pub use call::{
    reason_for_status, Action, Call, CallState, CallTimers, Event, LegSetupError, MediaPlan, Notify,
};
pub use calls::{valid_dtmf, Calls, MAX_DTMF_DIGITS};
pub use hold::{AudioFlow, HoldChange, HoldParty, HoldRefusal, HoldState, RemoteDirection};
pub use ids::{IdSpace, LegId, SipLegId};
pub use route::{Route, Router, SipRouting};
pub use sip_user::{is_sip_user_char, valid_sip_user, MAX_SIP_USER_LEN};

use serde::{Deserialize, Serialize};

/// Why a call ended. Shared by the API (`ended.reason`), metrics labels and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The browser sent `hangup`.
    Hangup,
    /// The browser's socket closed; nothing is sent, there is no one to tell.
    SocketClosed,
    /// The browser's SDP offer could not be parsed or accepted.
    InvalidSdp,
    /// The offer has no audio codec the gateway accepts.
    IncompatibleCodecs,
    /// No route for the destination.
    NotFound,
    /// ICE/DTLS did not connect within the setup timeout, or connectivity was lost.
    MediaTimeout,
    /// The gateway is shutting down.
    Shutdown,
    /// The destination is valid but the allow-list refuses it.
    Forbidden,
    /// The far end was busy (486, 600).
    Busy,
    /// The far end refused (403, 603).
    Rejected,
    /// Nobody answered in time (408, 480, or the answer timeout).
    NoAnswer,
    /// The far end cancelled (487 not caused by us).
    Cancelled,
    /// The trunk refused our credentials (401/407 after one authenticated retry).
    AuthFailed,
    /// The far end hung up (BYE).
    RemoteHangup,
    /// The call reached its maximum duration.
    MaxDuration,
    /// Any other SIP failure; `code` has the status.
    Failed,
    /// An incoming call was answered by another session of the same user.
    AnsweredElsewhere,
    /// The browser's blind transfer succeeded: the far end now talks to the
    /// transfer target and this call is over.
    Transferred,
    /// The browser's socket was lost and not resumed within the grace
    /// period (or too many messages piled up meanwhile); nothing is sent.
    SessionExpired,
    /// The SIP session timer (RFC 4028) ended the call: the far end did not
    /// refresh the session in time, or did not accept our refresh.
    SessionRefreshFailed,
}

impl EndReason {
    pub const ALL: &'static [EndReason] = &[
        EndReason::Hangup,
        EndReason::SocketClosed,
        EndReason::InvalidSdp,
        EndReason::IncompatibleCodecs,
        EndReason::NotFound,
        EndReason::MediaTimeout,
        EndReason::Shutdown,
        EndReason::Forbidden,
        EndReason::Busy,
        EndReason::Rejected,
        EndReason::NoAnswer,
        EndReason::Cancelled,
        EndReason::AuthFailed,
        EndReason::RemoteHangup,
        EndReason::MaxDuration,
        EndReason::Failed,
        EndReason::AnsweredElsewhere,
        EndReason::Transferred,
        EndReason::SessionExpired,
        EndReason::SessionRefreshFailed,
    ];

    /// Reasons nobody is told about: the socket is gone.
    pub fn is_silent(self) -> bool {
        matches!(self, EndReason::SocketClosed | EndReason::SessionExpired)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Hangup => "hangup",
            EndReason::SocketClosed => "socket_closed",
            EndReason::InvalidSdp => "invalid_sdp",
            EndReason::IncompatibleCodecs => "incompatible_codecs",
            EndReason::NotFound => "not_found",
            EndReason::MediaTimeout => "media_timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::Forbidden => "forbidden",
            EndReason::Busy => "busy",
            EndReason::Rejected => "rejected",
            EndReason::NoAnswer => "no_answer",
            EndReason::Cancelled => "cancelled",
            EndReason::AuthFailed => "auth_failed",
            EndReason::RemoteHangup => "remote_hangup",
            EndReason::MaxDuration => "max_duration",
            EndReason::Failed => "failed",
            EndReason::AnsweredElsewhere => "answered_elsewhere",
            EndReason::Transferred => "transferred",
            EndReason::SessionExpired => "session_expired",
            EndReason::SessionRefreshFailed => "session_refresh_failed",
        }
    }
}
