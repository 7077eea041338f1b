//! The SIP leg of a Gangway call, on rsipstack.
//!
//! [`SipService`] owns one SIP endpoint (UDP, plus TCP on the same port) and
//! places outbound calls to trunks with [`SipService::place_call`]. Each call
//! reports its progress as [`SipEvent`]s on the caller's channel, always
//! ending with [`SipEvent::Ended`]. [`sdp`] builds G.711 offers and parses
//! answers.
//!
//! This crate knows nothing about browsers or WebRTC: what goes into SIP is
//! exactly what the caller puts into [`OutboundCall`] (topology hiding).
//!
//! # Handles
//!
//! Every call, outbound or inbound, is driven through one [`DialogHandle`]:
//! hangup, hold/resume, blind transfer, DTMF as INFO, the NOTIFYs of a
//! transfer the far end asked for, the confirmed [`DialogRef`] and, after
//! `Failed`, its [`SipFailure`]. `place_call` returns it. An inbound call
//! arrives as an [`IncomingCall`] whose [`InboundSipCall`] adds what only an
//! offered call can do (route its events, ring, answer, reject) and gives
//! its handle with [`InboundSipCall::dialog_handle`] (it also derefs to it).
//! Commands are queued in order to the call's task and ignored where they
//! do not apply.
//!
//! # Dialog life
//!
//! Each call's task runs the dialog's life as an enum advanced by a pure
//! function (`life/uac.rs` for calls we place: `Inviting`, `Early`,
//! `Confirmed`, `Ending`, `Done`; `life/uas.rs` for calls we take:
//! `Offered`, `Accepted`, `Confirmed`, `Ending`, `Done`), in the manner of
//! [`session_timer`]: the task selects, feeds what came as an input with
//! the time, and carries out the effects (report, CANCEL/BYE, 180/200/
//! reject, settle the answer, a mid-call request). A call we hang up
//! reports nothing more but `Ended`; a CANCEL that crosses a 2xx is
//! followed by BYE.
//!
//! # Failures
//!
//! [`SipEvent::Failed`] carries the far end's final status when there is one
//! ([`SipFailure::Response`]). A failure of our own is a [`SipFailure`]
//! too, and [`SipFailure::status`] gives the status reported for it; this
//! table is that mapping (`failure.rs` is its only code):
//!
//! | status | [`SipFailure`] | meaning |
//! |---|---|---|
//! | 408 | `NoFinalResponse` | no final response in time: Timer B (32 s without any response, which is also how an unreachable trunk, a failed DNS lookup or a refused TCP connect ends) or Timer C (180 s after a provisional) |
//! | 408 | `NoAck` | inbound: our 200 OK was not ACKed |
//! | 487 | `CallerCancelled` | inbound: the caller cancelled before the answer |
//! | 488 | `AnswerWithoutSdp`, `AckWithoutSdp` | the far end answered 2xx (or ACKed our offer) without an SDP answer (the call is ended with BYE) |
//! | 500 | `InvalidCall`, `Stack` | the call could not be built (bad request URI, From user, domain or host) or the stack failed |
//! | 503 | `Transport`, `Stopping`, `TrunkDown` | a send on an established TCP connection failed, the service is stopping/stopped, or the call's trunk is down by the OPTIONS keepalive ([`SipService::start_keepalive`]; no INVITE is sent) |
//!
//! # Session timers
//!
//! Every dialog runs RFC 4028 session timers ([`session_timer`] has the
//! rules; [`SipConfig::session_expires`] the interval we ask for): as the
//! refresher we send UPDATE (or a re-INVITE with our SDP unchanged) at half
//! the interval; a failed refresh, or none from the far end in time, ends
//! the call with BYE and [`SipEvent::SessionExpired`].
//!
//! A 401/407 challenge is answered once with the trunk's credentials (more
//! only when the server marks the nonce stale); the next challenge, or any
//! challenge when the trunk has no credentials, is reported as
//! `Failed { status: 401 | 407 }`. A call placed with the caller's own
//! identity ([`CallAuth::Caller`]) never uses the trunk's credentials: its
//! challenge ends it as [`SipFailure::Challenged`], whose header value the
//! caller answers in a new call.

pub use gangway_core::calls::Credentials;
pub use gangway_core::sdp;
pub mod session_timer;

/// The readers of the far end's SIP messages that sit above rsipstack's
/// parser, for the fuzz targets in `fuzz/`. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::dialog::{
        info_dtmf_digit, refer_target, sipfrag_status, timer_headers, ReferError,
    };
    pub use crate::router::parse_replaces;
}

mod bans;
mod call;
mod dialog;
mod failure;
mod handle;
mod inbound;
mod keepalive;
mod life;
mod metrics;
mod register;
mod relay;
mod router;
mod screen;
mod service;
mod shared;
mod tcp_caps;
mod trunk;

use std::net::{IpAddr, SocketAddr};

pub use dialog::{SipEventTx, RESERVED_EVENTS};
pub use failure::{SipFailure, StatusCode};
pub use handle::{DialogHandle, DialogRef, InboundSipCall, IncomingCall, SipCall};
pub use ipnet;
pub use keepalive::TrunkKeepalive;
pub use metrics::{SipLabels, SipMetrics};
pub use register::{RegEvent, RegEventTx, RegistrationHandle, RegistrationRequest};
pub use relay::{RelayedAnswer, RelayedRegister};
pub use service::SipService;
pub use tcp_caps::TcpLimits;

/// How the SIP endpoint listens.
#[derive(Clone, Debug)]
pub struct SipConfig {
    /// UDP listen address; TCP listens on the same address and port. Port 0
    /// picks a free port (the same for UDP and TCP).
    pub listen: SocketAddr,
    /// Public address written in Via, Contact and (by the caller) SDP instead
    /// of the listen IP, for NAT. When `None`, `listen` must have a concrete
    /// (not unspecified) IP.
    pub public_ip: Option<IpAddr>,
    /// `User-Agent` header value, e.g. `"Gangway"`.
    pub user_agent: String,
    /// Reliable provisional responses (RFC 3262) on outbound calls: INVITEs
    /// carry `Supported: 100rel` and a provisional response with
    /// `Require: 100rel` is acknowledged with PRACK.
    pub prack: bool,
    /// RFC 4028 session timers: the `Session-Expires` (seconds, at least
    /// [`session_timer::MIN_SE`]) outbound INVITEs ask for, and the longest
    /// interval we accept on inbound calls. 0: outbound INVITEs only say
    /// `Supported: timer`; a far end that asks for a timer is still
    /// honoured either way.
    pub session_expires: u32,
    /// INVITEs that may go out per second (twice that in a burst), calls
    /// and transfers together; more fail with 503 before any INVITE
    /// ([`SipFailure::RateLimited`]). 0: no limit.
    pub max_calls_per_second: u32,
    /// Caps on SIP over TCP connections.
    pub tcp: TcpLimits,
}

/// SIP transport towards a trunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Where and as whom outbound calls are sent.
#[derive(Clone)]
pub struct Trunk {
    /// Host name or IP of the trunk/PBX (A/AAAA lookup; no SRV).
    pub host: String,
    pub port: u16,
    pub transport: Transport,
    /// Domain used in the From URI (`sip:<from_user>@<domain>`).
    pub domain: String,
    /// Digest username; credentials are used only when both are set.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Trunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trunk")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("domain", &self.domain)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One outbound call to place.
#[derive(Clone, Debug)]
pub struct OutboundCall {
    /// The caller's id for this call, echoed in every event.
    pub key: u64,
    pub trunk: Trunk,
    /// Request-URI, e.g. `sip:1000@pbx.example` (already mapped and
    /// allow-listed by the caller); also used as the To URI.
    pub request_uri: String,
    /// From user part, e.g. `gangway` or the trunk username.
    pub from_user: String,
    pub from_display: Option<String>,
    /// The SDP offer, built with [`sdp::offer`].
    pub sdp_offer: String,
    /// Sent as `X-Gangway-Call-ID: <id>` and used as the `call` log field.
    pub correlation_id: String,
    /// Whose credentials answer the far end's digest challenge.
    pub auth: CallAuth,
}

/// Whose credentials answer a digest challenge to an outbound INVITE.
#[derive(Clone, Default)]
pub enum CallAuth {
    /// The trunk's (once; see the crate docs).
    #[default]
    Trunk,
    /// The caller's own, computed by the caller (who alone knows the
    /// password): the INVITE carries them when given, and a challenge is
    /// not answered here but ends the call as [`SipFailure::Challenged`],
    /// for the caller to answer with a new call.
    Caller(Option<Credentials>),
    /// The caller's account, whose password the gateway holds (a client
    /// signed in with a token): a challenge is answered with it once.
    Account { username: String, password: String },
}

impl std::fmt::Debug for CallAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallAuth::Trunk => f.write_str("Trunk"),
            CallAuth::Caller(c) => f.debug_tuple("Caller").field(&c.is_some()).finish(),
            CallAuth::Account { username, .. } => f
                .debug_struct("Account")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// Progress of an outbound call.
///
/// Order: any number of `Provisional`, then either `Answered` (possibly
/// followed by `RemoteHangup`) or `Failed`, then `Ended`, which is always the
/// last event and is sent exactly once. After [`DialogHandle::hangup`] no
/// `Failed`/`RemoteHangup`/`Answered` is reported any more: only `Ended`
/// follows (events already queued may precede it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipEvent {
    /// 180/181/182/183 (and other non-100 1xx). `100 Trying` is not reported.
    /// `sdp` is the body of the response, if it has one (early media).
    Provisional { status: u16, sdp: Option<String> },
    /// A 2xx with an SDP body; the stack already sent the ACK.
    Answered { sdp: String },
    /// A final non-2xx response (after one digest retry), or a locally
    /// generated code (see the crate docs).
    Failed { status: u16, reason: String },
    /// The far end sent BYE (answered with 200).
    RemoteHangup,
    /// The far end sent a DTMF digit in a SIP INFO (`application/dtmf-relay`
    /// or `application/dtmf`), answered with 200.
    Dtmf { digit: char },
    /// The far end changed the session with a new offer (re-INVITE or
    /// UPDATE) that we answered; `sdp` is its offer. Its direction tells
    /// whether it holds the call (`sendonly`, `inactive`, `c=0.0.0.0`), and
    /// its address and codec may have changed.
    RemoteOffer { sdp: String },
    /// Our re-offer for hold (`hold`) or resume was answered 2xx; `sdp` is
    /// the far end's answer.
    OfferAccepted { sdp: String, hold: bool },
    /// Our re-offer was refused with `status` (491 when another offer was
    /// in progress, 408 when unanswered, 488 when the answer was unusable);
    /// the session stays as it was.
    OfferRefused { status: u16, hold: bool },
    /// Our blind transfer (REFER): its response (202: accepted), then the
    /// far end's NOTIFYs about the new call (100, 180, 200, 486...); `done`
    /// on the last one. A refused REFER is one event with `done`.
    TransferProgress { status: u16, done: bool },
    /// The far end REFERred us to `target` (a `sip:` URI), and we accepted
    /// (202, NOTIFY 100). Place that call and report its progress with
    /// `notify_transfer`.
    Referred { target: String },
    /// The session timer (RFC 4028) ended the call and we sent BYE: the far
    /// end, as the refresher, did not refresh in time (`status` is `None`),
    /// or our refresh failed (`status`: the far end's 408 or 481, or 408
    /// when it never answered). `Ended` follows.
    SessionExpired { status: Option<u16> },
    /// An INVITE with Replaces (RFC 3891) names this call's dialog: answer
    /// the new call (it has not been answered) and end this one, which it
    /// replaces. Nothing was sent for it yet.
    ReplacedBy(Replacement),
    /// The dialog is gone. Always the last event for a call.
    Ended,
}

/// The call that replaces another (see [`SipEvent::ReplacedBy`]). Compared by
/// its SIP Call-ID.
#[derive(Debug, Clone)]
pub struct Replacement(pub Box<IncomingCall>);

impl PartialEq for Replacement {
    fn eq(&self, other: &Self) -> bool {
        self.0.sip_call_id == other.0.sip_call_id
    }
}

impl Eq for Replacement {}

/// Errors starting the SIP service.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("invalid SIP configuration: {0}")]
    Config(String),
    #[error("cannot bind SIP listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("SIP stack error: {0}")]
    Stack(String),
}
