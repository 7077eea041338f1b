//! Why a call failed: the far end's final response, or a cause of our
//! own. [`SipFailure::status`] and [`SipFailure::reason`] are the one place
//! where a local cause becomes the status and reason phrase that
//! [`SipEvent::Failed`] reports (the table is in
//! the crate docs).

use std::fmt;

use crate::SipEvent;

/// A SIP response status code, 100 to 699.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(u16);

impl StatusCode {
    pub const OK: StatusCode = StatusCode(200);
    pub const REQUEST_TIMEOUT: StatusCode = StatusCode(408);
    pub const SESSION_INTERVAL_TOO_SMALL: StatusCode = StatusCode(422);
    pub const TEMPORARILY_UNAVAILABLE: StatusCode = StatusCode(480);
    pub const REQUEST_TERMINATED: StatusCode = StatusCode(487);
    pub const NOT_ACCEPTABLE_HERE: StatusCode = StatusCode(488);
    pub const SERVER_INTERNAL_ERROR: StatusCode = StatusCode(500);
    pub const SERVICE_UNAVAILABLE: StatusCode = StatusCode(503);

    /// `None` outside 100 to 699.
    pub const fn new(code: u16) -> Option<StatusCode> {
        match code {
            100..=699 => Some(StatusCode(code)),
            _ => None,
        }
    }

    pub const fn code(self) -> u16 {
        self.0
    }

    /// 1xx.
    pub const fn is_provisional(self) -> bool {
        self.0 < 200
    }

    /// 2xx.
    pub const fn is_success(self) -> bool {
        self.0 >= 200 && self.0 < 300
    }

    /// The RFC 3261 reason phrase (or its class's name for a code it does
    /// not list), for when a response carries none.
    pub fn reason_phrase(self) -> String {
        match rsipstack::sip::StatusCode::from(self.0) {
            rsipstack::sip::StatusCode::Other(..) => match self.0 / 100 {
                1 => "Provisional",
                2 => "Successful",
                3 => "Redirection",
                4 => "Request Failure",
                5 => "Server Failure",
                _ => "Global Failure",
            }
            .to_string(),
            known => known.text().to_string(),
        }
    }
}

impl From<StatusCode> for u16 {
    fn from(status: StatusCode) -> u16 {
        status.0
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a call ended without being answered, or was ended after a broken
/// answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SipFailure {
    /// The far end's final response (after one digest retry), with its
    /// reason phrase.
    Response { status: StatusCode, reason: String },
    /// A 401/407 to a call placed with the caller's identity
    /// ([`crate::CallAuth::Caller`]): `challenge` is the
    /// `WWW-Authenticate`/`Proxy-Authenticate` value for the caller to answer.
    Challenged {
        status: StatusCode,
        reason: String,
        challenge: String,
    },
    /// Outbound: no final response in time. Timer B (32 s without any
    /// response, which is also how an unreachable trunk, a failed DNS
    /// lookup or a refused TCP connect ends) or Timer C (180 s after a
    /// provisional).
    NoFinalResponse,
    /// Inbound: our 200 OK was not ACKed in time.
    NoAck,
    /// Inbound: the caller cancelled the call before it was answered.
    CallerCancelled,
    /// A send on an established connection failed (transport, DNS or I/O
    /// error); the stack's words.
    Transport(String),
    /// The call's trunk is down by the OPTIONS keepalive: no INVITE was
    /// sent.
    TrunkDown,
    /// More calls per second than `SipConfig::max_calls_per_second`: no
    /// INVITE was sent.
    RateLimited,
    /// The service is stopping or stopped.
    Stopping,
    /// Outbound: the far end answered 2xx without an SDP answer (we end
    /// the call with BYE).
    AnswerWithoutSdp,
    /// Inbound: the ACK of an offerless INVITE did not carry the SDP
    /// answer to our offer (we end the call with BYE).
    AckWithoutSdp,
    /// The call could not be built: a bad request URI, From user, domain
    /// or host.
    InvalidCall(String),
    /// The stack failed, or the dialog ended for a reason none of the
    /// above names.
    Stack(String),
}

impl SipFailure {
    /// The far end's response, with the phrase it sent (or the standard
    /// one).
    pub fn response(status: StatusCode, reason: Option<String>) -> SipFailure {
        let reason = reason.unwrap_or_else(|| status.reason_phrase());
        SipFailure::Response { status, reason }
    }

    /// Whether the far end said so, rather than a cause of our own.
    pub fn is_response(&self) -> bool {
        matches!(
            self,
            SipFailure::Response { .. } | SipFailure::Challenged { .. }
        )
    }

    /// The challenge for the caller to answer, if this is one.
    pub fn challenge(&self) -> Option<&str> {
        match self {
            SipFailure::Challenged { challenge, .. } => Some(challenge),
            _ => None,
        }
    }

    /// The status [`SipEvent::Failed`] reports:
    /// the far end's, or the local code of the crate docs' table.
    pub fn status(&self) -> StatusCode {
        match self {
            SipFailure::Response { status, .. } | SipFailure::Challenged { status, .. } => *status,
            SipFailure::NoFinalResponse | SipFailure::NoAck => StatusCode::REQUEST_TIMEOUT,
            SipFailure::CallerCancelled => StatusCode::REQUEST_TERMINATED,
            SipFailure::AnswerWithoutSdp | SipFailure::AckWithoutSdp => {
                StatusCode::NOT_ACCEPTABLE_HERE
            }
            SipFailure::InvalidCall(_) | SipFailure::Stack(_) => StatusCode::SERVER_INTERNAL_ERROR,
            SipFailure::Transport(_)
            | SipFailure::TrunkDown
            | SipFailure::RateLimited
            | SipFailure::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The reason [`SipEvent::Failed`] reports.
    pub fn reason(&self) -> String {
        match self {
            SipFailure::Response { reason, .. } | SipFailure::Challenged { reason, .. } => {
                reason.clone()
            }
            SipFailure::NoFinalResponse => "no final response".into(),
            SipFailure::NoAck => "no ACK for our answer".into(),
            SipFailure::CallerCancelled => "cancelled by the caller".into(),
            SipFailure::Transport(detail) => format!("transport error: {detail}"),
            SipFailure::TrunkDown => "trunk down (no response to OPTIONS keepalive)".into(),
            SipFailure::RateLimited => "too many calls per second towards the trunk".into(),
            SipFailure::Stopping => "SIP service stopped".into(),
            SipFailure::AnswerWithoutSdp => "2xx without SDP answer".into(),
            SipFailure::AckWithoutSdp => "ACK without SDP answer".into(),
            SipFailure::InvalidCall(detail) | SipFailure::Stack(detail) => detail.clone(),
        }
    }
}

impl SipFailure {
    /// The [`SipEvent::Failed`] that reports this failure.
    pub(crate) fn event(&self) -> SipEvent {
        SipEvent::Failed {
            status: self.status().code(),
            reason: self.reason(),
        }
    }
}

impl fmt::Display for SipFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for SipFailure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_bounded_and_know_their_phrase() {
        assert_eq!(StatusCode::new(99), None);
        assert_eq!(StatusCode::new(700), None);
        let busy = StatusCode::new(486).unwrap();
        assert_eq!(busy.reason_phrase(), "Busy Here");
        assert_eq!(
            StatusCode::new(499).unwrap().reason_phrase(),
            "Request Failure"
        );
        assert!(StatusCode::new(183).unwrap().is_provisional());
        assert!(StatusCode::new(202).unwrap().is_success());
        assert!(!busy.is_success() && !busy.is_provisional());
    }

    #[test]
    fn local_causes_keep_the_statuses_owners_rely_on() {
        let cases = [
            (SipFailure::NoFinalResponse, 408, "no final response"),
            (SipFailure::NoAck, 408, "no ACK for our answer"),
            (SipFailure::CallerCancelled, 487, "cancelled by the caller"),
            (SipFailure::AnswerWithoutSdp, 488, "2xx without SDP answer"),
            (SipFailure::AckWithoutSdp, 488, "ACK without SDP answer"),
            (SipFailure::InvalidCall("bad URI".into()), 500, "bad URI"),
            (
                SipFailure::Stack("cannot answer".into()),
                500,
                "cannot answer",
            ),
            (
                SipFailure::Transport("refused".into()),
                503,
                "transport error: refused",
            ),
            (
                SipFailure::TrunkDown,
                503,
                "trunk down (no response to OPTIONS keepalive)",
            ),
            (
                SipFailure::RateLimited,
                503,
                "too many calls per second towards the trunk",
            ),
            (SipFailure::Stopping, 503, "SIP service stopped"),
        ];
        for (failure, status, reason) in cases {
            assert_eq!(failure.status().code(), status, "{failure:?}");
            assert_eq!(failure.reason(), reason);
            assert!(!failure.is_response());
        }
        let busy = SipFailure::response(StatusCode::new(486).unwrap(), None);
        assert_eq!(
            (busy.status().code(), busy.reason()),
            (486, "Busy Here".into())
        );
        let nope = SipFailure::response(StatusCode::new(603).unwrap(), Some("Nope".into()));
        assert_eq!(nope.reason(), "Nope");
        assert!(nope.is_response());
    }
}
