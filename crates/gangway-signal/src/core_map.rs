//! The JSON API in the core's words, in one place: client messages become
//! core [`Request`]s, core [`Notification`]s and [`Refusal`]s become server
//! messages. Messages about the connection itself (ping, sign-in, resume)
//! stay with the front end.

use gangway_core::calls::{Notification, Problem, Refusal, Request};

use crate::{ApiError, CallId, ClientMessage, ErrorCode, ServerMessage, REJECT_CODES};

/// A decoded client message, sorted by who handles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// About a call: for the core's call table.
    Call(Request<CallId>),
    Ping,
    Register {
        user: Option<String>,
        password: Option<String>,
        token: Option<String>,
    },
    Unregister,
    ResumeSession {
        token: String,
    },
}

/// Sorts a client message; `Err` for field combinations the API forbids.
pub fn route(message: ClientMessage) -> Result<Routed, ApiError> {
    use ClientMessage as M;
    let call = |request| Ok(Routed::Call(request));
    match message {
        M::Ping => Ok(Routed::Ping),
        M::Register {
            user,
            password,
            token,
        } => Ok(Routed::Register {
            user,
            password,
            token,
        }),
        M::Unregister => Ok(Routed::Unregister),
        M::ResumeSession { token } => Ok(Routed::ResumeSession { token }),
        M::Call { call: id, to, sdp } => call(Request::Call {
            call: id,
            to,
            offer: sdp,
            // The gateway's own identity: API clients never see SIP auth.
            caller: None,
        }),
        M::Candidate {
            call: id,
            candidate,
        } => call(Request::Candidate {
            call: id,
            candidate: candidate.map(|c| c.candidate),
        }),
        M::Hangup { call: id } => call(Request::Hangup { call: id }),
        M::Dtmf { call: id, digits } => call(Request::Dtmf { call: id, digits }),
        M::Hold { call: id } => call(Request::Hold {
            call: id,
            hold: true,
        }),
        M::Resume { call: id } => call(Request::Hold {
            call: id,
            hold: false,
        }),
        M::Transfer {
            call: id,
            to,
            replaces,
        } => call(Request::Transfer {
            call: id,
            to,
            replaces,
        }),
        M::Accept { call: id, sdp } => call(Request::Accept {
            call: id,
            offer: sdp,
        }),
        M::Reject { call: id, code } => {
            let code = code.unwrap_or(486);
            if !REJECT_CODES.contains(&code) {
                let message = "code must be 486, 480 or 603";
                return Err(ApiError::new(ErrorCode::InvalidMessage, Some(id), message));
            }
            call(Request::Reject { call: id, code })
        }
        M::Renegotiate { call: id, sdp } => call(Request::Renegotiate {
            call: id,
            offer: sdp,
        }),
    }
}

/// The server message telling the client about `call`.
/// The API message for a notification; `None` for what the JSON API
/// does not carry (a digest challenge: its calls use the gateway's own
/// credentials, so none reaches it).
pub fn notification(call: CallId, n: Notification) -> Option<ServerMessage> {
    use Notification as N;
    Some(match n {
        N::Answer { sdp } => ServerMessage::Answer { call, sdp },
        N::Ringing => ServerMessage::Ringing { call },
        N::Progress => ServerMessage::Progress { call },
        N::Answered => ServerMessage::Answered { call },
        N::Ended { reason, code } => ServerMessage::Ended { call, reason, code },
        N::Held { by } => ServerMessage::Held { call, by },
        N::Resumed { by } => ServerMessage::Resumed { call, by },
        N::TransferProgress { status, done } => {
            ServerMessage::TransferProgress { call, status, done }
        }
        N::Transferred { to } => ServerMessage::Transferred { call, to },
        N::Dtmf { digit } => ServerMessage::Dtmf {
            call,
            digit: digit.to_string(),
        },
        N::Incoming { from, display, to } => ServerMessage::Incoming {
            call,
            from,
            display,
            to,
        },
        N::Challenged { .. } => return None,
    })
}

/// The API error for a refused request.
pub fn refusal(r: Refusal<CallId>) -> ApiError {
    ApiError::new(error_code(r.problem), r.call, r.message)
}

pub fn error_code(problem: Problem) -> ErrorCode {
    match problem {
        Problem::UnknownCall | Problem::NotRinging => ErrorCode::UnknownCall,
        Problem::DuplicateCall => ErrorCode::DuplicateCall,
        Problem::TooManyCalls => ErrorCode::TooManyCalls,
        Problem::InvalidState => ErrorCode::InvalidState,
        Problem::InvalidMessage => ErrorCode::InvalidMessage,
        Problem::ShuttingDown => ErrorCode::ShuttingDown,
        Problem::InvalidSdp => ErrorCode::InvalidSdp,
        Problem::InvalidCandidate => ErrorCode::InvalidCandidate,
        Problem::DtmfUnavailable => ErrorCode::DtmfUnavailable,
        Problem::HoldFailed => ErrorCode::HoldFailed,
        Problem::NoCapacity => ErrorCode::NoCapacity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode;

    fn routed(json: &str) -> Result<Routed, ApiError> {
        route(decode(json).unwrap())
    }

    #[test]
    fn resume_is_hold_false_and_reject_defaults_to_486() {
        let id = CallId::new("c1").unwrap();
        assert_eq!(
            routed(r#"{"type":"resume","call":"c1"}"#),
            Ok(Routed::Call(Request::Hold {
                call: id.clone(),
                hold: false
            }))
        );
        assert_eq!(
            routed(r#"{"type":"reject","call":"c1"}"#),
            Ok(Routed::Call(Request::Reject {
                call: id,
                code: 486
            }))
        );
    }

    #[test]
    fn reject_with_another_code_is_refused_with_the_call_id() {
        let e = routed(r#"{"type":"reject","call":"c1","code":404}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert_eq!(e.call.as_ref().map(CallId::as_str), Some("c1"));
    }

    #[test]
    fn running_out_of_ports_is_not_invalid_sdp() {
        assert_eq!(error_code(Problem::NoCapacity), ErrorCode::NoCapacity);
        assert_eq!(error_code(Problem::NotRinging), ErrorCode::UnknownCall);
    }
}
