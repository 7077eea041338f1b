use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub use gangway_core::{EndReason, HoldParty};

/// Version announced in `hello`; bumped only on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

const MAX_CALL_ID_LEN: usize = 64;

/// A client-chosen call identifier, unique among one socket's active calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CallId(String);

impl CallId {
    /// Validates a call id: 1–64 visible ASCII characters, so it is safe to
    /// log and to echo back without escaping surprises.
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if s.is_empty() || s.len() > MAX_CALL_ID_LEN {
            return Err(format!("call id must be 1-{MAX_CALL_ID_LEN} characters"));
        }
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err("call id must be visible ASCII (no spaces or control characters)".into());
        }
        Ok(CallId(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CallId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CallId::new(s).map_err(serde::de::Error::custom)
    }
}

/// A trickled ICE candidate, as `RTCIceCandidateInit` serializes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u32>,
    #[serde(rename = "usernameFragment", default)]
    pub username_fragment: Option<String>,
}

/// Messages a browser sends to the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Call {
        call: CallId,
        to: String,
        sdp: String,
    },
    Candidate {
        call: CallId,
        /// `null` marks the end of candidates; the field itself is required.
        #[serde(deserialize_with = "required_nullable")]
        candidate: Option<IceCandidate>,
    },
    Hangup {
        call: CallId,
    },
    /// Send DTMF digits to the far end (0-9, *, #, A-D).
    Dtmf {
        call: CallId,
        digits: String,
    },
    Ping,
    /// Sign in as a SIP user: `user` + `password` (digest credentials the
    /// gateway passes to the registrar), or a `token` (JWT) naming the user.
    Register {
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        token: Option<String>,
    },
    Unregister,
    /// Answer an `incoming` call with the browser's SDP offer.
    Accept {
        call: CallId,
        sdp: String,
    },
    /// Refuse an `incoming` call: 486 (default), 480 or 603.
    Reject {
        call: CallId,
        #[serde(default)]
        code: Option<u16>,
    },
    /// Put an answered call on hold (re-INVITE `sendonly` to the PBX).
    Hold {
        call: CallId,
    },
    /// Take a call we hold off hold (re-INVITE `sendrecv`).
    Resume {
        call: CallId,
    },
    /// Transfer the far end: blind, to `to` (routed like a `call`
    /// destination), or attended, to the far end of this socket's call
    /// `replaces` (REFER with Replaces). Exactly one of the two.
    Transfer {
        call: CallId,
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        replaces: Option<CallId>,
    },
    /// Take over a session whose socket was lost, with its resume token
    /// (from `hello` or the last `session_resumed`).
    ResumeSession {
        token: String,
    },
    /// A new offer for an established call's WebRTC leg (an ICE restart);
    /// answered with `answer`. The SIP leg is not involved.
    Renegotiate {
        call: CallId,
        sdp: String,
    },
}

const CLIENT_TYPES: &[&str] = &[
    "call",
    "candidate",
    "hangup",
    "dtmf",
    "ping",
    "register",
    "unregister",
    "accept",
    "reject",
    "hold",
    "resume",
    "transfer",
    "resume_session",
    "renegotiate",
];

/// Longest `resume_session.token` looked at; real tokens are 64 characters.
pub const MAX_RESUME_TOKEN_LEN: usize = 128;

/// Status codes a browser may reject an incoming call with.
pub const REJECT_CODES: [u16; 3] = [486, 480, 603];

pub use gangway_core::{valid_dtmf, MAX_DTMF_DIGITS};

fn required_nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// Machine-readable error codes of `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    UnknownType,
    BinaryNotSupported,
    MessageTooLarge,
    UnknownCall,
    DuplicateCall,
    TooManyCalls,
    InvalidSdp,
    InvalidCandidate,
    /// The request does not fit the call's state (e.g. DTMF before the answer).
    InvalidState,
    /// The far end did not accept telephone-event, so digits cannot be sent.
    DtmfUnavailable,
    ShuttingDown,
    /// Too many failed sign-in attempts from this address; try again later.
    RateLimited,
    /// The PBX refused or did not answer our hold/resume re-INVITE; the
    /// call stays as it was.
    HoldFailed,
    /// The gateway has no capacity left for the call (it ran out of RTP
    /// ports); another instance, or later, may take it.
    NoCapacity,
    /// `resume_session` named no session that can be resumed (unknown,
    /// already used, or its grace period is over).
    UnknownSession,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::UnknownCall => "unknown_call",
            ErrorCode::DuplicateCall => "duplicate_call",
            ErrorCode::TooManyCalls => "too_many_calls",
            ErrorCode::InvalidSdp => "invalid_sdp",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::InvalidCandidate => "invalid_candidate",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::DtmfUnavailable => "dtmf_unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::HoldFailed => "hold_failed",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, for pre-registering metric labels.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJson,
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownType,
        ErrorCode::BinaryNotSupported,
        ErrorCode::MessageTooLarge,
        ErrorCode::UnknownCall,
        ErrorCode::DuplicateCall,
        ErrorCode::TooManyCalls,
        ErrorCode::InvalidSdp,
        ErrorCode::InvalidCandidate,
        ErrorCode::InvalidState,
        ErrorCode::DtmfUnavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::RateLimited,
        ErrorCode::HoldFailed,
        ErrorCode::NoCapacity,
        ErrorCode::UnknownSession,
        ErrorCode::Internal,
    ];
}

/// A rejected request: becomes an `error` message on the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub call: Option<CallId>,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, call: Option<CallId>, message: impl Into<String>) -> Self {
        ApiError {
            call,
            code,
            message: message.into(),
        }
    }

    pub fn into_message(self) -> ServerMessage {
        ServerMessage::Error {
            call: self.call,
            code: self.code,
            message: self.message,
        }
    }
}

/// Something a gateway may offer, listed in `hello.features`. New names
/// may be added in later versions; clients ignore those they do not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// The built-in echo line (`calls.echo_destination`).
    Echo,
    /// Calls to SIP destinations through the trunk.
    Sip,
    /// `register` with a SIP user and password (incoming calls).
    Register,
    /// `register` with a signed token (`auth.token_secret`).
    RegisterToken,
    /// `dtmf` on answered SIP calls.
    Dtmf,
    /// `hold` / `resume` on answered SIP calls.
    Hold,
    /// `transfer`, blind (`to`) and attended (`replaces`).
    Transfer,
}

impl Feature {
    /// What a gateway with this configuration offers, in a stable order.
    pub fn offered(echo: bool, sip: bool, register: bool, token: bool) -> Vec<Feature> {
        let mut out = Vec::new();
        if echo {
            out.push(Feature::Echo);
        }
        if sip {
            out.extend([
                Feature::Sip,
                Feature::Dtmf,
                Feature::Hold,
                Feature::Transfer,
            ]);
        }
        if register {
            out.push(Feature::Register);
            if token {
                out.push(Feature::RegisterToken);
            }
        }
        out
    }
}

/// Messages the gateway sends to a browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Hello {
        version: u32,
        session: String,
        max_message_bytes: usize,
        /// Secret for `resume_session` after a lost socket; `null` when the
        /// operator disabled resumption.
        resume_token: Option<String>,
        /// How long a session with calls waits for `resume_session` after
        /// its socket is lost (0: it does not).
        resume_grace_secs: u64,
        /// What this gateway offers beyond the echo line's basics, by name
        /// (see [`Feature`]); clients show only what is listed.
        features: Vec<Feature>,
    },
    /// Reply to `resume_session`: this socket now carries that session.
    /// Messages queued while it had no socket follow.
    SessionResumed {
        session: String,
        /// The next resume token; the one just used is no longer valid.
        /// `null` only if the gateway could not make one (OS RNG failure).
        resume_token: Option<String>,
        calls: Vec<ResumedCall>,
    },
    Answer {
        call: CallId,
        sdp: String,
    },
    Ringing {
        call: CallId,
    },
    /// Early media from the far end is playing (SIP 183 with SDP).
    Progress {
        call: CallId,
    },
    Answered {
        call: CallId,
    },
    /// The far end sent a DTMF digit.
    Dtmf {
        call: CallId,
        digit: String,
    },
    Ended {
        call: CallId,
        reason: EndReason,
        code: Option<u16>,
    },
    Error {
        call: Option<CallId>,
        code: ErrorCode,
        message: String,
    },
    Pong,
    /// The user is registered at the PBX (reply to `register`, and again
    /// after a failed refresh recovered).
    Registered {
        user: String,
        expires: u32,
    },
    /// Sign-in refused, or an established registration failed to refresh.
    /// `code` is the registrar's SIP status, `null` when none applies.
    RegistrationFailed {
        user: String,
        code: Option<u16>,
        reason: String,
    },
    /// Reply to `unregister`, or the registration ended (gateway stopping).
    Unregistered {
        user: String,
    },
    /// The call is on hold: audio stops both ways until `resumed`.
    Held {
        call: CallId,
        by: HoldParty,
    },
    /// The hold by `by` ended; audio flows again (unless the other side
    /// still holds).
    Resumed {
        call: CallId,
        by: HoldParty,
    },
    /// How our `transfer` is going: the far end's answer to the REFER
    /// (202), then the status of its call to the target (100, 180, 200,
    /// 486...). `done` marks the last; a 2xx there ends this call with
    /// `transferred`, anything else leaves it as it was.
    TransferProgress {
        call: CallId,
        status: u16,
        done: bool,
    },
    /// The far end transferred this call (REFER): the gateway called `to`,
    /// it answered, and its audio now replaces the old party's.
    Transferred {
        call: CallId,
        to: String,
    },
    /// A call for the signed-in user is ringing; answer with `accept`.
    Incoming {
        call: CallId,
        from: String,
        display: Option<String>,
        to: String,
    },
}

/// A call of a resumed session, as it stands when the session is resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResumedCall {
    pub call: CallId,
    pub state: ResumedCallState,
}

/// Where a call of a resumed session is. `ended`: its `ended` message is
/// among the queued messages that follow `session_resumed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumedCallState {
    /// Waiting for the WebRTC leg or the far end's first response.
    Connecting,
    /// The far end rings (or an incoming call rings here).
    Ringing,
    Answered,
    Ended,
}

/// Decodes one text frame. Errors say exactly what is wrong and carry the
/// call id when one could be read, so the client can tie them to its call.
pub fn decode(text: &str) -> Result<ClientMessage, ApiError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, None, format!("not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            None,
            "a message must be a JSON object",
        ));
    };
    let call = object
        .get("call")
        .and_then(|c| c.as_str())
        .and_then(|c| CallId::new(c).ok());
    let kind = match object.get("type") {
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidMessage,
                call,
                "field `type` must be a string",
            ))
        }
        None => {
            return Err(ApiError::new(
                ErrorCode::InvalidMessage,
                call,
                "missing field `type`",
            ))
        }
    };
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        let shown: String = kind.chars().take(40).collect();
        return Err(ApiError::new(
            ErrorCode::UnknownType,
            call,
            format!("unknown message type `{shown}`"),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::new(ErrorCode::InvalidMessage, call, e.to_string()))
}

/// Encodes a message as one text frame.
pub fn encode(msg: &ServerMessage) -> String {
    // Serializing these plain types cannot fail; a failure would be a bug in
    // this file, so fall back to a valid `internal` error rather than panic.
    serde_json::to_string(msg).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","call":null,"code":"internal","message":"encode: {e}"}}"#)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ApiError {
        decode(text).expect_err("should be rejected")
    }

    #[test]
    fn decodes_call() {
        let m = decode(r#"{"type":"call","call":"c1","to":"echo","sdp":"v=0"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Call {
                call: CallId::new("c1").unwrap(),
                to: "echo".into(),
                sdp: "v=0".into()
            }
        );
    }

    #[test]
    fn null_candidate_is_end_of_candidates_but_field_is_required() {
        let m = decode(r#"{"type":"candidate","call":"c1","candidate":null}"#).unwrap();
        assert!(matches!(
            m,
            ClientMessage::Candidate {
                candidate: None,
                ..
            }
        ));
        let e = err(r#"{"type":"candidate","call":"c1"}"#);
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.message.contains("candidate"), "{}", e.message);
        assert_eq!(e.call.unwrap().as_str(), "c1");
    }

    #[test]
    fn decodes_full_candidate() {
        let m = decode(
            r#"{"type":"candidate","call":"c1","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
        )
        .unwrap();
        let ClientMessage::Candidate {
            candidate: Some(c), ..
        } = m
        else {
            panic!("wrong message: {m:?}");
        };
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.sdp_mline_index, Some(0));
    }

    #[test]
    fn malformed_inputs_get_typed_errors() {
        assert_eq!(err("{nope").code, ErrorCode::InvalidJson);
        assert_eq!(err("[1,2]").code, ErrorCode::InvalidJson);
        assert_eq!(err(r#"{"call":"x"}"#).code, ErrorCode::InvalidMessage);
        assert_eq!(err(r#"{"type":5}"#).code, ErrorCode::InvalidMessage);
        assert_eq!(err(r#"{"type":"dance"}"#).code, ErrorCode::UnknownType);
        let e = err(r#"{"type":"call","call":"c1","to":"echo"}"#);
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.message.contains("sdp"), "{}", e.message);
        let e = err(r#"{"type":"hangup","call":""}"#);
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        let e = err(r#"{"type":"hangup","call":"has space"}"#);
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        let long = "x".repeat(65);
        let e = err(&format!(r#"{{"type":"hangup","call":"{long}"}}"#));
        assert_eq!(e.code, ErrorCode::InvalidMessage);
    }

    #[test]
    fn dtmf_requests_and_digit_validation() {
        let m = decode(r#"{"type":"dtmf","call":"c1","digits":"123#"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Dtmf { ref digits, .. } if digits == "123#"));
        assert!(valid_dtmf("0123456789*#ABCD"));
        assert!(!valid_dtmf(""));
        assert!(!valid_dtmf("12x"));
        assert!(!valid_dtmf(&"1".repeat(33)));
        assert_eq!(
            err(r#"{"type":"dtmf","call":"c1"}"#).code,
            ErrorCode::InvalidMessage
        );
        let event = ServerMessage::Dtmf {
            call: CallId::new("c1").unwrap(),
            digit: "5".into(),
        };
        assert_eq!(encode(&event), r#"{"type":"dtmf","call":"c1","digit":"5"}"#);
    }

    #[test]
    fn registration_and_inbound_messages() {
        let m = decode(r#"{"type":"register","user":"alice","password":"pw"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Register {
                user: Some("alice".into()),
                password: Some("pw".into()),
                token: None
            }
        );
        let m = decode(r#"{"type":"register","token":"a.b.c"}"#).unwrap();
        assert!(matches!(
            m,
            ClientMessage::Register {
                token: Some(_),
                user: None,
                ..
            }
        ));
        assert_eq!(
            decode(r#"{"type":"unregister"}"#).unwrap(),
            ClientMessage::Unregister
        );
        let m = decode(r#"{"type":"reject","call":"in-1"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Reject { code: None, .. }));
        let e = err(r#"{"type":"accept","call":"in-1"}"#);
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert_eq!(e.call.unwrap().as_str(), "in-1");
        let e = err(r#"{"type":"reject","call":"in-1","code":"busy"}"#);
        assert_eq!(e.code, ErrorCode::InvalidMessage);

        let incoming = ServerMessage::Incoming {
            call: CallId::new("in-1").unwrap(),
            from: "sip:bob@pbx".into(),
            display: None,
            to: "sip:alice@pbx".into(),
        };
        assert_eq!(
            encode(&incoming),
            r#"{"type":"incoming","call":"in-1","from":"sip:bob@pbx","display":null,"to":"sip:alice@pbx"}"#
        );
        let failed = ServerMessage::RegistrationFailed {
            user: "alice".into(),
            code: Some(401),
            reason: "Unauthorized".into(),
        };
        assert_eq!(
            encode(&failed),
            r#"{"type":"registration_failed","user":"alice","code":401,"reason":"Unauthorized"}"#
        );
    }

    #[test]
    fn hold_messages() {
        let c1 = CallId::new("c1").unwrap();
        assert_eq!(
            decode(r#"{"type":"hold","call":"c1"}"#).unwrap(),
            ClientMessage::Hold { call: c1.clone() }
        );
        assert_eq!(
            decode(r#"{"type":"resume","call":"c1"}"#).unwrap(),
            ClientMessage::Resume { call: c1.clone() }
        );
        assert_eq!(err(r#"{"type":"hold"}"#).code, ErrorCode::InvalidMessage);
        let held = ServerMessage::Held {
            call: c1.clone(),
            by: HoldParty::Remote,
        };
        assert_eq!(
            encode(&held),
            r#"{"type":"held","call":"c1","by":"remote"}"#
        );
        let resumed = ServerMessage::Resumed {
            call: c1,
            by: HoldParty::Local,
        };
        assert_eq!(
            encode(&resumed),
            r#"{"type":"resumed","call":"c1","by":"local"}"#
        );
    }

    #[test]
    fn transfer_messages() {
        let m = decode(r#"{"type":"transfer","call":"c1","to":"1002"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Transfer {
                call: CallId::new("c1").unwrap(),
                to: Some("1002".into()),
                replaces: None,
            }
        );
        let m = decode(r#"{"type":"transfer","call":"c1","replaces":"c2"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Transfer {
                call: CallId::new("c1").unwrap(),
                to: None,
                replaces: Some(CallId::new("c2").unwrap()),
            }
        );
        assert_eq!(
            err(r#"{"type":"transfer","call":"c1","replaces":7}"#).code,
            ErrorCode::InvalidMessage
        );
        let progress = ServerMessage::TransferProgress {
            call: CallId::new("c1").unwrap(),
            status: 180,
            done: false,
        };
        assert_eq!(
            encode(&progress),
            r#"{"type":"transfer_progress","call":"c1","status":180,"done":false}"#
        );
        let moved = ServerMessage::Transferred {
            call: CallId::new("c1").unwrap(),
            to: "sip:carol@pbx".into(),
        };
        assert_eq!(
            encode(&moved),
            r#"{"type":"transferred","call":"c1","to":"sip:carol@pbx"}"#
        );
    }

    #[test]
    fn resume_and_renegotiate_messages() {
        assert_eq!(
            decode(r#"{"type":"resume_session","token":"ab12"}"#).unwrap(),
            ClientMessage::ResumeSession {
                token: "ab12".into()
            }
        );
        assert_eq!(
            err(r#"{"type":"resume_session"}"#).code,
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            decode(r#"{"type":"renegotiate","call":"c1","sdp":"v=0"}"#).unwrap(),
            ClientMessage::Renegotiate {
                call: CallId::new("c1").unwrap(),
                sdp: "v=0".into()
            }
        );
        let e = err(r#"{"type":"renegotiate","call":"c1"}"#);
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert_eq!(e.call.unwrap().as_str(), "c1");

        let hello = ServerMessage::Hello {
            version: 1,
            session: "s-1".into(),
            max_message_bytes: 65536,
            resume_token: Some("00ff".into()),
            resume_grace_secs: 30,
            features: Feature::offered(true, true, true, false),
        };
        assert_eq!(
            encode(&hello),
            r#"{"type":"hello","version":1,"session":"s-1","max_message_bytes":65536,"resume_token":"00ff","resume_grace_secs":30,"features":["echo","sip","dtmf","hold","transfer","register"]}"#
        );
        assert_eq!(Feature::offered(false, false, false, true), vec![]);
        assert_eq!(
            Feature::offered(true, false, false, false),
            vec![Feature::Echo]
        );
        let resumed = ServerMessage::SessionResumed {
            session: "s-1".into(),
            resume_token: Some("11ee".into()),
            calls: vec![
                ResumedCall {
                    call: CallId::new("c1").unwrap(),
                    state: ResumedCallState::Answered,
                },
                ResumedCall {
                    call: CallId::new("c2").unwrap(),
                    state: ResumedCallState::Ended,
                },
            ],
        };
        assert_eq!(
            encode(&resumed),
            r#"{"type":"session_resumed","session":"s-1","resume_token":"11ee","calls":[{"call":"c1","state":"answered"},{"call":"c2","state":"ended"}]}"#
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let m = decode(r#"{"type":"hangup","call":"c1","extra":true}"#).unwrap();
        assert!(matches!(m, ClientMessage::Hangup { .. }));
    }

    #[test]
    fn encodes_exact_wire_format() {
        let id = CallId::new("c1").unwrap();
        let ended = ServerMessage::Ended {
            call: id.clone(),
            reason: EndReason::Hangup,
            code: None,
        };
        assert_eq!(
            encode(&ended),
            r#"{"type":"ended","call":"c1","reason":"hangup","code":null}"#
        );
        let e = ApiError::new(ErrorCode::UnknownCall, None, "no such call").into_message();
        assert_eq!(
            encode(&e),
            r#"{"type":"error","call":null,"code":"unknown_call","message":"no such call"}"#
        );
        assert_eq!(encode(&ServerMessage::Pong), r#"{"type":"pong"}"#);
    }

    #[test]
    fn reason_and_code_strings_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
