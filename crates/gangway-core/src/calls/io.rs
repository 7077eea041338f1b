//! What goes into a [`Calls`](super::Calls) table and what comes out.
//!
//! These are the core's own words, not a wire format: a front end (the JSON
//! API today, SIP over WebSocket next) maps its messages to [`Request`]s and
//! [`Notification`]s in one place. The media and SIP shells map their
//! events to [`MediaEvent`] and [`SipInput`], and carry out [`MediaCommand`]
//! and [`SipCommand`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sdp::G711;
use crate::{AudioFlow, EndReason, HoldParty, LegId, MediaPlan, SipLegId};

/// A front end's request about a call, keyed by the front end's call id `K`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<K> {
    /// Place a call to `to` with the browser's SDP offer; `caller` when
    /// the client places it as its own SIP identity (SIP over WebSocket),
    /// `None` for the gateway's configured identity.
    Call {
        call: K,
        to: String,
        offer: String,
        caller: Option<Caller>,
    },
    /// A trickled ICE candidate for the call's WebRTC leg (`None`: the
    /// end of candidates, which ICE-lite needs no action for).
    Candidate { call: K, candidate: Option<String> },
    /// Send DTMF digits (already checked to be 1-32 of `0-9*#A-D`).
    Dtmf { call: K, digits: String },
    /// Hold (`true`) or resume the SIP leg.
    Hold { call: K, hold: bool },
    /// Blind transfer to `to`, or attended: replace our dialog with the far
    /// end of the call `replaces` (exactly one of them is set).
    Transfer {
        call: K,
        to: Option<String>,
        replaces: Option<K>,
    },
    /// Answer a ringing incoming call with the browser's offer.
    Accept { call: K, offer: String },
    /// Refuse a ringing incoming call (486, 480 or 603; checked by the front end).
    Reject { call: K, code: u16 },
    /// End a call (a ringing one is rejected with 486).
    Hangup { call: K },
    /// A new offer for the WebRTC leg only (an ICE restart).
    Renegotiate { call: K, offer: String },
}

/// Who places a call when it is the client's own SIP identity, with the
/// client's answer to the far end's digest challenge when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The From user part (checked by the front end).
    pub user: String,
    pub display: Option<String>,
    pub credentials: Option<Credentials>,
}

/// A digest answer computed by the client, passed on unchanged: the
/// gateway never knows the client's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `Proxy-Authorization` (answering a 407) or `Authorization` (a 401).
    pub proxy: bool,
    /// The header's value.
    pub value: String,
}

/// An incoming call offered to this table (forked ringing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingOffer {
    pub from: String,
    pub display: Option<String>,
    pub to: String,
    /// The INVITE's SDP offer (`None`: an offerless INVITE).
    pub sip_offer: Option<String>,
    /// Gangway's own id for the call (logs, the SIP correlation header).
    pub log_id: String,
}

/// What the media shard reports about a call's WebRTC leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The offer was accepted; `rtp_port` is the SIP side's local RTP port.
    Ready {
        answer: String,
        rtp_port: Option<u16>,
    },
    /// The offer could not be accepted.
    Failed(LegFailure),
    CandidateRejected(String),
    Connected,
    /// ICE consent lost.
    Disconnected,
    /// An answered bridged call received no media on one leg for too long.
    MediaTimeout,
    /// The browser sent a DTMF digit.
    Dtmf(char),
    /// Digits could not be sent: the far end took no telephone-event.
    DtmfRefused,
    Renegotiated {
        answer: String,
    },
    RenegotiationFailed(String),
}

/// Why a WebRTC leg could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegFailure {
    /// The offer is not usable SDP (the message says why).
    InvalidSdp(String),
    /// The offer has no codec we accept.
    IncompatibleCodecs,
    /// The gateway has no capacity left for the call (no RTP port or
    /// socket for the SIP side, or its media shard is overloaded).
    NoCapacity(String),
}

/// What the SIP shell reports about one SIP dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipInput {
    /// 180/181/182/183; `sdp` when it carried a body (early media).
    Provisional {
        status: u16,
        sdp: Option<String>,
    },
    /// The 2xx (outbound) or the ACK of our 2xx (inbound). `replacing_target`
    /// names the dialog for an attended transfer's `Refer-To`.
    Answered {
        sdp: String,
        replacing_target: Option<String>,
    },
    /// A final failure (or a local timeout/transport failure as a status).
    /// `challenge`: a 401/407's `WWW-`/`Proxy-Authenticate` value, when the
    /// call was placed with the client's identity ([`Caller`]) and the
    /// client may answer it.
    Failed {
        status: u16,
        reason: String,
        challenge: Option<String>,
    },
    RemoteHangup,
    /// A digit in a SIP INFO.
    Dtmf {
        digit: char,
    },
    /// The far end's re-offer (re-INVITE/UPDATE), already answered.
    RemoteOffer {
        sdp: String,
    },
    /// The far end accepted our hold/resume offer with `sdp`.
    OfferAccepted {
        sdp: String,
        hold: bool,
    },
    OfferRefused {
        status: u16,
        hold: bool,
    },
    /// Our REFER: its response, then the far end's NOTIFYs.
    TransferProgress {
        status: u16,
        done: bool,
    },
    /// The far end REFERred us to `target` (already accepted with 202).
    Referred {
        target: String,
    },
    SessionExpired {
        status: Option<u16>,
    },
    /// An INVITE with Replaces names this dialog. The shell holds the new
    /// dialog until [`SipCommand::AnswerReplacement`] or
    /// [`SipCommand::RejectReplacement`] says what to do with it.
    ReplacedBy {
        from: String,
        offer: Option<String>,
    },
    /// The dialog is gone (always its last event).
    Ended,
}

/// Everything that can happen to a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<K> {
    Request(Request<K>),
    Media(LegId, MediaEvent),
    Sip(SipLegId, SipInput),
    /// A call is ringing for this table's user.
    Incoming {
        call: K,
        offer: IncomingOffer,
    },
    /// It stopped ringing here (answered elsewhere, cancelled, timed out).
    Withdrawn {
        call: K,
        reason: EndReason,
        code: Option<u16>,
    },
    /// The answer to [`Output::Claim`]: whether this table won the call.
    Claimed {
        call: K,
        won: bool,
    },
    /// New calls are refused from now on (the gateway drains).
    StopAccepting,
    /// The front end's connection is gone. The calls wait for a resume
    /// when they may ([`Settings::resume_grace`](super::Settings)); else they end.
    ConnectionLost,
    /// The connection ended for good (the client said goodbye, or a resume
    /// is impossible): every call ends silently.
    ConnectionClosed,
    /// A new connection took over within the grace period.
    ConnectionResumed,
    /// Too much piled up for a parked connection: give up now.
    ParkedOverflow,
    /// The gateway stops: every call ends with `shutdown`.
    Shutdown,
}

/// Why the table refuses a request (mapped to the front end's error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    UnknownCall,
    /// `accept`/`reject` of a call that is not ringing here.
    NotRinging,
    DuplicateCall,
    TooManyCalls,
    InvalidState,
    InvalidMessage,
    ShuttingDown,
    InvalidSdp,
    InvalidCandidate,
    DtmfUnavailable,
    HoldFailed,
    /// The gateway has no capacity left for the call (no RTP port).
    NoCapacity,
}

/// A refused request or a failure the front end must report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal<K> {
    pub call: Option<K>,
    pub problem: Problem,
    pub message: String,
}

/// What a front end tells its client about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// The WebRTC leg's SDP answer (also after a renegotiation).
    Answer {
        sdp: String,
    },
    Ringing,
    /// Early media is playing.
    Progress,
    Answered,
    Ended {
        reason: EndReason,
        code: Option<u16>,
    },
    Held {
        by: HoldParty,
    },
    Resumed {
        by: HoldParty,
    },
    TransferProgress {
        status: u16,
        done: bool,
    },
    /// The far end transferred us: we now talk to `to`.
    Transferred {
        to: String,
    },
    Dtmf {
        digit: char,
    },
    Incoming {
        from: String,
        display: Option<String>,
        to: String,
    },
    /// The far end challenged the call with `status` (401/407); the
    /// client may place it again with [`Credentials`]. `Ended` follows.
    Challenged {
        status: u16,
        challenge: String,
    },
}

/// Orders for the media shard holding a call's WebRTC leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCommand {
    /// Set up the leg from the browser's offer.
    Create {
        leg: LegId,
        offer: String,
        plan: MediaPlan,
    },
    Candidate {
        leg: LegId,
        candidate: String,
    },
    /// Point the SIP side's RTP at the far end (`answered`: final, not early media).
    ConnectRemote {
        leg: LegId,
        addr: SocketAddr,
        codec: G711,
        dtmf_pt: Option<u8>,
        answered: bool,
        flow: AudioFlow,
    },
    /// Send digits towards the PBX as RFC 4733.
    SendDtmf {
        leg: LegId,
        digits: String,
    },
    /// Play a digit the PBX sent by INFO to the browser (RFC 4733).
    PlayDtmf {
        leg: LegId,
        digit: char,
    },
    Renegotiate {
        leg: LegId,
        offer: String,
    },
    Release {
        leg: LegId,
    },
}

/// Orders for the SIP shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipCommand {
    /// Send an INVITE to `uri` with `offer`.
    Place {
        sip: SipLegId,
        uri: String,
        offer: String,
        correlation_id: String,
        /// `None`: the gateway's configured identity and trunk credentials.
        caller: Option<Caller>,
    },
    /// Take an accepted incoming call's dialog: its events now carry `sip`.
    Adopt {
        sip: SipLegId,
    },
    /// Answer the incoming INVITE with `sdp` (200 OK).
    Answer {
        sip: SipLegId,
        sdp: String,
    },
    /// CANCEL before a final response, BYE after; refuse an unanswered INVITE.
    Hangup {
        sip: SipLegId,
    },
    /// Hang up after `delay` unless the far end does first.
    HangupAfter {
        sip: SipLegId,
        delay: Duration,
    },
    Hold {
        sip: SipLegId,
        hold: bool,
    },
    /// REFER the far end to `target`.
    Transfer {
        sip: SipLegId,
        target: String,
    },
    /// NOTIFY the far end about the call its REFER asked for.
    NotifyTransfer {
        sip: SipLegId,
        status: u16,
        reason: String,
        done: bool,
    },
    /// Send digits as SIP INFO.
    DtmfInfo {
        sip: SipLegId,
        digits: String,
    },
    /// Answer the INVITE with Replaces that arrived on `old`; its events
    /// now carry `new`.
    AnswerReplacement {
        old: SipLegId,
        new: SipLegId,
        sdp: String,
    },
    /// Refuse the INVITE with Replaces that arrived on `old`.
    RejectReplacement {
        old: SipLegId,
        status: u16,
    },
}

/// What the shell does about a call ringing here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The client accepts it: take it (answer with [`Input::Claimed`]).
    Accept,
    /// The client rejects it with this status.
    Reject(u16),
    /// This table will not answer it (full, or closing).
    Decline,
}

/// Things worth a log line or a metric, reported when they happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A call was set up towards `route` ("echo" or "sip").
    Started {
        route: &'static str,
    },
    /// The WebRTC leg connected this long after the call started.
    MediaConnected {
        after: Duration,
    },
    /// The INVITE went out this long after the call started.
    InviteSent {
        after: Duration,
    },
    /// The far end answered this long after the call started.
    Answered {
        after: Duration,
    },
    /// A mid-call event, for `gangway_mid_call_total{event}`.
    MidCall(&'static str),
    /// A client went past a limit (`limit`: what it is) and was refused.
    LimitReached {
        limit: &'static str,
    },
    /// The call is over.
    Ended {
        reason: EndReason,
    },
    /// A call was asked for, to `to`.
    Requested {
        to: String,
    },
    /// An incoming call from `from` was taken by this table.
    Accepted {
        from: String,
    },
    HoldRequested {
        hold: bool,
    },
    /// An answered call got no media on one leg for too long.
    NoMedia,
    /// The far end's SDP could not be used (why).
    SdpUnusable(String),
    /// The SIP leg failed with `status`.
    SipFailed {
        status: u16,
        reason: String,
    },
    SessionExpired {
        status: Option<u16>,
    },
    TransferRequested {
        target: String,
    },
    /// The far end's REFER named a target the routing rules refuse.
    TransferTargetRefused {
        target: String,
    },
    /// Calling the target of the far end's REFER.
    TransferCalling {
        uri: String,
    },
    TransferTargetFailed {
        status: u16,
        reason: String,
    },
    /// The transferee said nothing for `TRANSFER_OUTCOME_TIMEOUT` after
    /// our REFER or its last news: failed (408).
    TransferTimedOut,
    /// An INVITE with Replaces for a call that cannot take it (486).
    ReplacementRefused,
    /// An INVITE with Replaces from `from` takes the call over.
    Replacing {
        from: String,
    },
    /// The connection is parked waiting for a resume.
    Parked {
        calls: usize,
        grace: Duration,
    },
    /// Nobody resumed in time.
    Expired,
    /// The call is over (after `Ended`): its call-level facts, for the
    /// call detail record.
    Summary(Box<CallSummary>),
}

/// What a table knows about a call when it ends: the call-level half of
/// its detail record (the media half comes from the shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSummary {
    /// The call's WebRTC leg (the media report names it).
    pub leg: LegId,
    /// The PBX called the browser.
    pub inbound: bool,
    /// The caller: the far end (inbound) or the client's own SIP user;
    /// `None` when the gateway's own identity placed the call.
    pub from: Option<String>,
    /// What the client dialled, or whom the far end called (inbound).
    pub to: String,
    pub started: Instant,
    pub answered: Option<Instant>,
    pub ended: Instant,
    pub reason: EndReason,
    /// The SIP status that ended it, when there was one.
    pub code: Option<u16>,
    /// A WebRTC leg was created, so the shard reports its media.
    pub media_leg: bool,
    /// Every SIP leg that was the call's current one, first first.
    pub sip_legs: Vec<SipLegId>,
}

/// What the table wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<K> {
    Notify(K, Notification),
    Refuse(Refusal<K>),
    Media(MediaCommand),
    Sip(SipCommand),
    /// Settle a ringing call with the other tables it rings on.
    Claim(K, Claim),
    /// For logs and metrics; `call` is the front end's id, `log_id` Gangway's.
    Observe {
        call: Option<K>,
        log_id: Option<String>,
        what: Observation,
    },
}
