//! One API WebSocket: decodes messages, drives the calls it owns, and
//! carries out their actions. The call logic itself lives in `gangway-core`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use gangway_core::{
    Action, Call, CallState, EndReason, Event, HoldChange, HoldParty, HoldRefusal, HoldState,
    LegSetupError, MediaPlan, Notify, RemoteDirection, Route, Router,
};
use gangway_media::{Flow, Law, LegEvent, MediaRoute};
use gangway_rtc::{PeerId, SetupError};
use gangway_signal::{
    decode, encode, valid_dtmf, ApiError, CallId, ClientMessage, ErrorCode, ResumedCall,
    ResumedCallState, ServerMessage, MAX_DTMF_DIGITS, MAX_RESUME_TOKEN_LEN, PROTOCOL_VERSION,
    REJECT_CODES,
};
use gangway_sip::sdp::{self as sip_sdp, G711};
use gangway_sip::{InboundSipCall, IncomingCall, OutboundCall, SipCall, SipEvent};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::DtmfMode;
use crate::inbound::Ringing;
use crate::resume::{Handover, Moved, Refused};
use crate::users::Inbox;
use crate::{auth, Phase, Shared, SIP_CODECS};

/// WebSocket close code for a frame over the hard limit (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code of a normal closure.
const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code when the gateway goes away.
const CLOSE_GOING_AWAY: u16 = 1001;

/// RFC 4733 telephone-event payload type offered to the SIP leg.
const SIP_DTMF_PT: u8 = 101;

struct CallEntry {
    call: Call,
    peer: PeerId,
    started: Instant,
    /// Gangway's own id for the call: logs and the SIP `X-Gangway-Call-ID`
    /// header. The browser's id stays on the WebSocket.
    log_id: String,
    /// The local RTP port of a bridged call, for the SIP offer.
    rtp_port: Option<u16>,
    sip: Option<SipLeg>,
    /// An incoming call's INVITE offer (`None` also for offerless INVITEs).
    sip_offer: Option<String>,
    /// The media shard holding the call's legs.
    shard: usize,
    /// Who holds the SIP leg, and so which ways its audio goes.
    hold: HoldState,
    /// The key the current SIP leg's events carry (the peer's at first; a
    /// transfer replaces the leg and its key).
    sip_key: u64,
    /// The call the far end REFERred us to, until it answers or fails.
    transfer_leg: Option<TransferLeg>,
    /// The far end accepted our REFER and has not reported its outcome (for
    /// the other call of an attended transfer: its far end is to replace us).
    transfer_accepted: bool,
    /// Our attended transfer's other call, until the outcome is known.
    attended_with: Option<CallId>,
}

impl CallEntry {
    /// The SIP leg of an answered call: what mid-call requests act on.
    fn answered_sip(&self) -> Option<&SipLeg> {
        self.sip
            .as_ref()
            .filter(|_| self.call.state() == CallState::Answered)
    }
}

/// A SIP leg that replaces the current one once it is answered.
struct TransferLeg {
    key: u64,
    sip: SipLeg,
    /// Who the browser will be talking to.
    target: String,
    kind: TransferKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferKind {
    /// We called the target of the far end's REFER.
    Refer,
    /// An INVITE with Replaces took over the call.
    Replaces,
}

/// The SIP side of a call, whichever side placed it.
enum SipLeg {
    Outbound(SipCall),
    Inbound(InboundSipCall),
}

impl SipLeg {
    fn hangup(&self) {
        match self {
            SipLeg::Outbound(call) => call.hangup(),
            SipLeg::Inbound(call) => call.hangup(),
        }
    }

    fn hold(&self, hold: bool) {
        match self {
            SipLeg::Outbound(call) => call.hold(hold),
            SipLeg::Inbound(call) => call.hold(hold),
        }
    }

    fn transfer(&self, target: &str) {
        match self {
            SipLeg::Outbound(call) => call.transfer(target),
            SipLeg::Inbound(call) => call.transfer(target),
        }
    }

    fn dialog(&self) -> Option<gangway_sip::DialogRef> {
        match self {
            SipLeg::Outbound(call) => call.dialog(),
            SipLeg::Inbound(call) => call.dialog(),
        }
    }

    fn notify_transfer(&self, status: u16, reason: &str, done: bool) {
        match self {
            SipLeg::Outbound(call) => call.notify_transfer(status, reason, done),
            SipLeg::Inbound(call) => call.notify_transfer(status, reason, done),
        }
    }
}

/// After a transfer the old leg gets this long to be ended by the party
/// that transferred us (RFC 5589: the transferor sends the BYE); then we do.
const REPLACED_LEG_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

struct Session {
    shared: Arc<Shared>,
    /// This session's number, for the user table and ringing decisions.
    number: u64,
    /// The id sent in `hello` (and again in `session_resumed`).
    id: String,
    peer_ip: IpAddr,
    inbox: mpsc::UnboundedSender<Inbox>,
    /// The SIP user this session signed in as (or is signing in as).
    user: Option<String>,
    /// Incoming calls ringing here, not yet accepted or withdrawn.
    ringing: HashMap<CallId, Arc<Ringing>>,
    router: Router,
    calls: HashMap<CallId, CallEntry>,
    by_peer: HashMap<PeerId, CallId>,
    /// SIP legs placed for transfers, by their event key.
    transfer_keys: HashMap<u64, CallId>,
    legs: mpsc::UnboundedSender<(PeerId, LegEvent)>,
    sip_events: mpsc::UnboundedSender<(u64, SipEvent)>,
    outbox: Vec<ServerMessage>,
    /// The current resume token (`None`: resumption is off).
    token: Option<String>,
    /// Where a `resume_session` elsewhere hands this session a new socket.
    handover: Handover,
    /// Set when this connection claimed another session's token: the
    /// socket (and what it still owes its client) moves there at once.
    moving_to: Option<Handover>,
    /// The socket was lost and the calls wait for a resume.
    parked: Option<Parked>,
}

/// A session without a socket.
struct Parked {
    /// The calls end unless a resume comes before this.
    until: Instant,
    /// Messages for the client, sent after `session_resumed`.
    queue: Vec<ServerMessage>,
}

/// Most messages a parked session keeps for its client; one more ends its calls.
const PARKED_QUEUE_MAX: usize = 256;

/// Close code for a socket whose session was resumed on another connection.
const CLOSE_RESUMED_ELSEWHERE: u16 = 4001;

pub async fn run(socket: WebSocket, shared: Arc<Shared>, peer_ip: IpAddr) {
    shared.metrics.ws_total.inc();
    shared.metrics.ws_active.inc();
    serve_new(socket, shared, peer_ip, Vec::new()).await;
}

/// `serve_new` behind a concrete type, so that a session can start one
/// (the recursion would otherwise keep the compiler from proving `Send`).
fn serve_new_boxed(
    socket: WebSocket,
    shared: Arc<Shared>,
    peer_ip: IpAddr,
    preface: Vec<ServerMessage>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(serve_new(socket, shared, peer_ip, preface))
}

/// A new session on `socket`: `hello`, then `preface`, then requests.
async fn serve_new(
    socket: WebSocket,
    shared: Arc<Shared>,
    peer_ip: IpAddr,
    preface: Vec<ServerMessage>,
) {
    let (number, id) = shared.next_session_id();
    let span = info_span!("session", session = %id);
    async {
        debug!("connected");
        serve(socket, shared, number, id, peer_ip, preface).await;
        debug!("session over");
    }
    .instrument(span)
    .await;
}

/// What woke the session loop up about its socket.
enum Wake {
    Socket(Option<Result<Message, axum::Error>>),
    Handover(Box<Moved>),
    Other,
}

/// How the socket went away.
enum Gone {
    /// The client closed it with 1000 (or no code): the session ends.
    Normal,
    /// Lost (no close frame, another close code, a failed send): a session
    /// with calls waits for a resume.
    Lost,
    /// The gateway closed it (1001 at shutdown, 1009 on a bad frame).
    Closed,
}

async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    number: u64,
    id: String,
    peer_ip: IpAddr,
    preface: Vec<ServerMessage>,
) {
    let (legs, mut leg_events) = mpsc::unbounded_channel();
    let (inbox, mut inbox_rx) = mpsc::unbounded_channel();
    let (sip_events, mut sip_rx) = mpsc::unbounded_channel();
    let (handover, mut handover_rx) = mpsc::unbounded_channel();
    let mut phase = shared.phase.subscribe();
    let grace = shared.config.calls.resume_grace_secs;
    let token = if grace > 0 {
        shared.tokens.issue(number, handover.clone())
    } else {
        None
    };
    let hello = ServerMessage::Hello {
        version: PROTOCOL_VERSION,
        session: id.clone(),
        max_message_bytes: shared.config.http.max_message_bytes,
        resume_token: token.clone(),
        resume_grace_secs: if token.is_some() { grace } else { 0 },
    };
    let mut s = Session {
        router: shared.router.clone(),
        shared,
        number,
        id,
        peer_ip,
        inbox,
        user: None,
        ringing: HashMap::new(),
        calls: HashMap::new(),
        by_peer: HashMap::new(),
        transfer_keys: HashMap::new(),
        legs,
        sip_events,
        outbox: std::iter::once(hello).chain(preface).collect(),
        token,
        handover,
        moving_to: None,
        parked: None,
    };

    let mut socket = Some(socket);
    loop {
        if let Some(ws) = socket.as_mut() {
            if !s.flush(ws).await {
                debug!("sending failed: the socket is lost");
                socket = None;
                s.shared.metrics.ws_active.dec();
                if !s.park() {
                    break;
                }
            }
        } else if !s.queue_while_parked() {
            break;
        }
        if *phase.borrow() == Phase::Terminating {
            s.end_all(EndReason::Shutdown);
            if let Some(mut ws) = socket.take() {
                s.flush(&mut ws).await;
                let _ = ws
                    .send(Message::Close(Some(CloseFrame {
                        code: CLOSE_GOING_AWAY,
                        reason: "gateway shutting down".into(),
                    })))
                    .await;
                s.shared.metrics.ws_active.dec();
            }
            break;
        }
        let deadline = s.calls.values().filter_map(|c| c.call.poll_timeout()).min();
        let parked_until = s.parked.as_ref().map(|p| p.until);
        let wake = tokio::select! {
            message = recv(&mut socket) => Wake::Socket(message),
            Some(moved) = handover_rx.recv() => Wake::Handover(Box::new(moved)),
            Some((peer, event)) = leg_events.recv() => {
                s.on_leg(peer, event);
                Wake::Other
            }
            Some((key, event)) = sip_rx.recv() => {
                s.on_sip(key, event);
                Wake::Other
            }
            Some(message) = inbox_rx.recv() => {
                s.on_inbox(message);
                Wake::Other
            }
            _ = sleep_until(deadline) => {
                s.on_timeout(Instant::now());
                Wake::Other
            }
            _ = sleep_until(parked_until) => {
                // A resume that claimed the token just now still wins.
                s.revoke_token();
                match handover_rx.try_recv() {
                    Ok(moved) => Wake::Handover(Box::new(moved)),
                    Err(_) => {
                        s.expire("no resume within the grace period");
                        break;
                    }
                }
            }
            _ = phase.changed() => Wake::Other,
        };
        match wake {
            Wake::Other => {}
            Wake::Handover(moved) => {
                let Moved {
                    socket: ws,
                    outbox,
                    peer_ip,
                } = *moved;
                s.peer_ip = peer_ip;
                if let Some(old) = socket.replace(ws) {
                    // The old connection is still open (half-open after a
                    // network change, say): the new one wins. Closing a
                    // dead connection must not hold the session up.
                    tokio::spawn(close_superseded(old));
                } else {
                    s.shared.metrics.ws_active.inc();
                }
                s.resumed(outbox);
            }
            Wake::Socket(message) => {
                let Some(ws) = socket.as_mut() else {
                    continue;
                };
                let gone = match message {
                    Some(Ok(Message::Text(text))) => {
                        s.on_text(text.as_str());
                        if let Some(target) = s.moving_to.take() {
                            // Claim and hand-over with no await between:
                            // the other session either gets the socket or
                            // is already gone (see the end of `serve`).
                            let Some(ws) = socket.take() else { continue };
                            let moved = Moved {
                                socket: ws,
                                outbox: std::mem::take(&mut s.outbox),
                                peer_ip: s.peer_ip,
                            };
                            match target.send(moved) {
                                Ok(()) => {
                                    debug!("connection handed to the resumed session");
                                    s.shared.metrics.ws_active.dec();
                                    break;
                                }
                                Err(mpsc::error::SendError(moved)) => {
                                    socket = Some(moved.socket);
                                    s.outbox = moved.outbox;
                                    s.resume_refused();
                                }
                            }
                        }
                        continue;
                    }
                    Some(Ok(Message::Binary(_))) => {
                        s.reject(ApiError::new(
                            ErrorCode::BinaryNotSupported,
                            None,
                            "binary frames are not supported; send JSON text frames",
                        ));
                        continue;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        // Complete the closing handshake: tungstenite has queued
                        // the echo of the client's code (RFC 6455 §5.5.1);
                        // flushing it out completes it, else the browser sees 1006.
                        let code = frame.as_ref().map(|f| f.code);
                        debug!(?code, "client closed the socket");
                        let _ = SinkExt::close(ws).await;
                        match code {
                            None | Some(CLOSE_NORMAL) => Gone::Normal,
                            Some(_) => Gone::Lost,
                        }
                    }
                    None => Gone::Lost,
                    Some(Err(e)) if connection_lost(&e) => {
                        debug!("connection lost: {e}");
                        Gone::Lost
                    }
                    Some(Err(e)) => {
                        debug!("websocket error: {e}");
                        // The transport refused the frame (over the hard size
                        // limit, or broken framing): a misbehaving client.
                        s.shared.metrics.api_error(ErrorCode::MessageTooLarge);
                        let _ = ws
                            .send(Message::Close(Some(CloseFrame {
                                code: CLOSE_TOO_BIG,
                                reason: "frame too large or malformed".into(),
                            })))
                            .await;
                        Gone::Closed
                    }
                };
                socket = None;
                s.shared.metrics.ws_active.dec();
                if matches!(gone, Gone::Lost) && s.park() {
                    continue;
                }
                break;
            }
        }
    }
    // Whatever the reason we left, the calls go with the session.
    s.end_all(EndReason::SocketClosed);
    s.leave();
    if s.parked.take().is_some() {
        s.shared.metrics.sessions_parked.dec();
    }
    s.revoke_token();
    if socket.is_some() {
        s.shared.metrics.ws_active.dec();
    }
    // A connection that claimed the token as this session ended: it is
    // refused after all, and goes on as a new session.
    handover_rx.close();
    while let Ok(moved) = handover_rx.try_recv() {
        s.shared.metrics.session_resume("refused");
        s.shared.metrics.api_error(ErrorCode::UnknownSession);
        let mut preface = moved.outbox;
        preface.push(unknown_session().into_message());
        s.shared.metrics.ws_active.inc();
        tokio::spawn(serve_new_boxed(
            moved.socket,
            s.shared.clone(),
            moved.peer_ip,
            preface,
        ));
    }
}

async fn recv(socket: &mut Option<WebSocket>) -> Option<Result<Message, axum::Error>> {
    match socket {
        Some(ws) => ws.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether a transport error means the connection is gone (rather than
/// that the client sent something unreadable).
fn connection_lost(e: &axum::Error) -> bool {
    use tungstenite::error::ProtocolError;
    use tungstenite::Error as WsError;
    let inner = std::error::Error::source(e).and_then(|s| s.downcast_ref::<WsError>());
    matches!(
        inner,
        Some(
            WsError::Io(_)
                | WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        )
    )
}

/// Closes a connection whose session moved to a newer one.
async fn close_superseded(mut ws: WebSocket) {
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: CLOSE_RESUMED_ELSEWHERE,
            reason: "session resumed on another connection".into(),
        })))
        .await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Sends queued messages. Returns false when the socket is gone; the
    /// unsent messages stay queued (for a resume).
    async fn flush(&mut self, socket: &mut WebSocket) -> bool {
        let mut sent = 0;
        let mut ok = true;
        for message in &self.outbox {
            if socket
                .send(Message::Text(encode(message).into()))
                .await
                .is_err()
            {
                ok = false;
                break;
            }
            sent += 1;
        }
        self.outbox.drain(..sent);
        ok
    }

    /// The socket is lost: keeps the session (and its calls) waiting for a
    /// resume if it has calls and resumption is on. False: it ends now.
    fn park(&mut self) -> bool {
        let grace = self.shared.config.calls.resume_grace_secs;
        let terminating = *self.shared.phase.borrow() == Phase::Terminating;
        if self.calls.is_empty() || self.token.is_none() || grace == 0 || terminating {
            return false;
        }
        info!(
            calls = self.calls.len(),
            grace_secs = grace,
            "socket lost: calls held for a resume"
        );
        self.shared.metrics.sessions_parked.inc();
        self.parked = Some(Parked {
            until: Instant::now() + Duration::from_secs(grace),
            queue: Vec::new(),
        });
        true
    }

    /// Moves the outbox into a parked session's queue. False when the queue
    /// overflowed and the session ended.
    fn queue_while_parked(&mut self) -> bool {
        let Some(parked) = self.parked.as_mut() else {
            return true;
        };
        parked.queue.append(&mut self.outbox);
        if parked.queue.len() > PARKED_QUEUE_MAX {
            self.expire("too many messages waiting for a resume");
            return false;
        }
        true
    }

    /// A parked session gives up: its calls end (BYE to the PBX).
    fn expire(&mut self, why: &str) {
        info!(calls = self.calls.len(), "session expired: {why}");
        self.shared.metrics.session_resume("expired");
        self.end_all(EndReason::SessionExpired);
        self.outbox.clear();
        if self.parked.take().is_some() {
            self.shared.metrics.sessions_parked.dec();
        }
    }

    fn revoke_token(&mut self) {
        if let Some(token) = self.token.take() {
            self.shared.tokens.revoke(&token);
        }
    }

    /// A new socket took over this session: what that connection still
    /// owed its client, a new token and `session_resumed` with where each
    /// call stands, then what was queued.
    fn resumed(&mut self, owed: Vec<ServerMessage>) {
        let queue = match self.parked.take() {
            Some(parked) => {
                self.shared.metrics.sessions_parked.dec();
                parked.queue
            }
            None => Vec::new(),
        };
        self.shared.metrics.session_resume("resumed");
        self.revoke_token();
        self.token = self.shared.tokens.issue(self.number, self.handover.clone());
        let mut calls: Vec<ResumedCall> = self
            .calls
            .iter()
            .map(|(id, entry)| ResumedCall {
                call: id.clone(),
                state: match entry.call.state() {
                    CallState::Ringing => ResumedCallState::Ringing,
                    CallState::Answered => ResumedCallState::Answered,
                    CallState::Ended(_) => ResumedCallState::Ended,
                    _ => ResumedCallState::Connecting,
                },
            })
            .chain(self.ringing.keys().map(|id| ResumedCall {
                call: id.clone(),
                state: ResumedCallState::Ringing,
            }))
            .collect();
        for message in &queue {
            if let ServerMessage::Ended { call, .. } = message {
                if !calls.iter().any(|c| c.call == *call) {
                    calls.push(ResumedCall {
                        call: call.clone(),
                        state: ResumedCallState::Ended,
                    });
                }
            }
        }
        calls.sort_by(|a, b| a.call.as_str().cmp(b.call.as_str()));
        info!(calls = calls.len(), queued = queue.len(), "session resumed");
        let mut outbox = owed;
        outbox.push(ServerMessage::SessionResumed {
            session: self.id.clone(),
            resume_token: self.token.clone(),
            calls,
        });
        outbox.extend(queue);
        outbox.append(&mut self.outbox);
        self.outbox = outbox;
    }

    /// `resume_session` on this connection: hand it to the session the
    /// token belongs to.
    fn resume_session(&mut self, token: &str) {
        if !self.calls.is_empty() || !self.ringing.is_empty() || self.user.is_some() {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                None,
                "this connection already has calls or a sign-in; resume on a new connection",
            ));
        }
        if token.len() > MAX_RESUME_TOKEN_LEN {
            return self.resume_refused();
        }
        match self.shared.tokens.claim(token, self.number) {
            Ok(target) => self.moving_to = Some(target),
            Err(Refused::Own) => self.reject(ApiError::new(
                ErrorCode::InvalidState,
                None,
                "this connection already is that session",
            )),
            Err(Refused::Unknown) => self.resume_refused(),
        }
    }

    fn resume_refused(&mut self) {
        self.shared.metrics.session_resume("refused");
        self.reject(unknown_session());
    }

    fn reject(&mut self, error: ApiError) {
        debug!(code = error.code.as_str(), "{}", error.message);
        self.shared.metrics.api_error(error.code);
        self.outbox.push(error.into_message());
    }

    fn on_text(&mut self, text: &str) {
        let limit = self.shared.config.http.max_message_bytes;
        if text.len() > limit {
            return self.reject(ApiError::new(
                ErrorCode::MessageTooLarge,
                None,
                format!("message is {} bytes; the limit is {limit}", text.len()),
            ));
        }
        let message = match decode(text) {
            Ok(m) => m,
            Err(e) => return self.reject(e),
        };
        match message {
            ClientMessage::Ping => self.outbox.push(ServerMessage::Pong),
            ClientMessage::Call { call, to, sdp } => self.start_call(call, to, sdp),
            ClientMessage::Candidate { call, candidate } => {
                let Some(entry) = self.calls.get(&call) else {
                    return self.reject(unknown_call(call));
                };
                // `null` (end of candidates) needs no action: ICE-lite waits for the browser's checks.
                if let Some(c) = candidate {
                    self.shared.shards[entry.shard].add_candidate(entry.peer, c.candidate);
                }
            }
            ClientMessage::Dtmf { call, digits } => self.send_dtmf(call, digits),
            ClientMessage::Transfer { call, to, replaces } => self.transfer(call, to, replaces),
            ClientMessage::Hold { call } => self.hold(call, true),
            ClientMessage::Resume { call } => self.hold(call, false),
            ClientMessage::Register {
                user,
                password,
                token,
            } => self.register(user, password, token),
            ClientMessage::Unregister => self.unregister(),
            ClientMessage::Accept { call, sdp } => self.accept(call, sdp),
            ClientMessage::Reject { call, code } => self.reject_incoming(call, code),
            ClientMessage::Hangup { call } if self.ringing.contains_key(&call) => {
                self.reject_incoming(call, None)
            }
            ClientMessage::Hangup { call } => {
                if !self.calls.contains_key(&call) {
                    return self.reject(unknown_call(call));
                }
                self.feed(&call, Event::Hangup);
            }
            ClientMessage::ResumeSession { token } => self.resume_session(&token),
            ClientMessage::Renegotiate { call, sdp } => self.renegotiate(call, sdp),
        }
    }

    /// `renegotiate`: a new offer for the WebRTC leg only (an ICE restart).
    /// The answer comes back as `answer`; the SIP leg never hears of it.
    fn renegotiate(&mut self, id: CallId, sdp: String) {
        let Some(entry) = self.calls.get(&id) else {
            return self.reject(unknown_call(id));
        };
        if !entry.call.can_renegotiate() {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                Some(id),
                "renegotiate needs a call whose answer has been sent",
            ));
        }
        info!(call = %id, "WebRTC leg renegotiation requested");
        self.shared.shards[entry.shard].renegotiate(entry.peer, sdp);
    }

    fn send_dtmf(&mut self, id: CallId, digits: String) {
        let Some(entry) = self.calls.get(&id) else {
            return self.reject(unknown_call(id));
        };
        if !valid_dtmf(&digits) {
            return self.reject(ApiError::new(
                ErrorCode::InvalidMessage,
                Some(id),
                format!("digits must be 1-{MAX_DTMF_DIGITS} of 0-9 * # A-D"),
            ));
        }
        let answered_sip = entry.call.state() == CallState::Answered
            && matches!(entry.call.route(), Some(Route::Sip { .. }));
        if !answered_sip {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                Some(id),
                "DTMF can be sent on answered SIP calls only",
            ));
        }
        debug!(call = %id, %digits, "sending DTMF");
        match (self.shared.config.sip.dtmf_mode, &entry.sip) {
            (DtmfMode::Info, Some(SipLeg::Outbound(sip))) => sip.send_dtmf_info(&digits),
            (DtmfMode::Info, Some(SipLeg::Inbound(sip))) => sip.send_dtmf_info(&digits),
            _ => self.shared.shards[entry.shard].send_dtmf(entry.peer, digits),
        }
    }

    /// `hold`/`resume`: a re-INVITE to the PBX; `held`/`resumed` follow
    /// once it accepts, an error if it refuses.
    fn hold(&mut self, id: CallId, hold: bool) {
        let Some(entry) = self.calls.get_mut(&id) else {
            return self.reject(unknown_call(id));
        };
        if entry.answered_sip().is_none() {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                Some(id),
                "hold and resume need an answered SIP call",
            ));
        }
        if let Err(refusal) = entry.hold.request(hold) {
            let message = match refusal {
                HoldRefusal::AlreadyHeld => "the call is already on hold",
                HoldRefusal::NotHeld => "the call is not on hold here",
                HoldRefusal::Pending => "a hold or resume is already in progress",
            };
            return self.reject(ApiError::new(ErrorCode::InvalidState, Some(id), message));
        }
        info!(call = %id, hold, "hold requested");
        if let Some(sip) = entry.answered_sip() {
            sip.hold(hold);
        }
    }

    /// `transfer`: REFER the far end to `to` (routed like a `call`);
    /// `transfer_progress` events follow.
    fn transfer(&mut self, id: CallId, to: Option<String>, replaces: Option<CallId>) {
        let Some(entry) = self.calls.get(&id) else {
            return self.reject(unknown_call(id));
        };
        let Some(sip) = entry.answered_sip() else {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                Some(id),
                "transfer needs an answered SIP call",
            ));
        };
        let invalid =
            |message: &str| ApiError::new(ErrorCode::InvalidMessage, Some(id.clone()), message);
        let mut replaced = None;
        let target = match (to, replaces) {
            (Some(to), None) => match self.router.route(&to) {
                Route::Sip { uri } => uri,
                Route::NotAllowed => {
                    return self.reject(invalid("the transfer target is not allowed"))
                }
                _ => return self.reject(invalid("the transfer target is not a SIP destination")),
            },
            (None, Some(other)) => {
                // Attended: the far end of our other call, told to replace
                // our dialog with it (it then hangs up on us there).
                let dialog = self
                    .calls
                    .get(&other)
                    .filter(|_| other != id)
                    .and_then(CallEntry::answered_sip)
                    .and_then(SipLeg::dialog);
                let Some(dialog) = dialog else {
                    return self.reject(ApiError::new(
                        ErrorCode::InvalidState,
                        Some(id),
                        "`replaces` must name another answered SIP call on this connection",
                    ));
                };
                replaced = Some(other);
                dialog.replacing_target()
            }
            _ => return self.reject(invalid("transfer needs `to` or `replaces` (one of them)")),
        };
        info!(call = %id, %target, "transfer requested");
        sip.transfer(&target);
        if let Some(other) = replaced {
            if let Some(o) = self.calls.get_mut(&other) {
                // Its far end leaving now is the transfer completing.
                o.transfer_accepted = true;
            }
            if let Some(entry) = self.calls.get_mut(&id) {
                entry.attended_with = Some(other);
            }
        }
    }

    /// The far end REFERred us to `target`: call it on the same RTP port;
    /// the old leg stays until the new one answers.
    fn start_transfer_leg(&mut self, id: &CallId, target: String) {
        let Some(entry) = self.calls.get_mut(id) else {
            return;
        };
        let Some(old) = entry.sip.as_ref() else {
            return;
        };
        if entry.transfer_leg.is_some() {
            return old.notify_transfer(491, "Request Pending", true);
        }
        let uri = match self.router.route(&target) {
            Route::Sip { uri } => uri,
            _ => {
                info!(call = %id, %target, "transfer target refused by the routing rules");
                return old.notify_transfer(403, "Forbidden", true);
            }
        };
        let key = self.shared.next_peer.fetch_add(1, Ordering::Relaxed);
        let Some(sip) = place_sip_call(&self.shared, entry, key, uri.clone(), &self.sip_events)
        else {
            return old.notify_transfer(500, "Server Internal Error", true);
        };
        info!(call = %id, %uri, "transferred by the far end: calling the target");
        entry.transfer_leg = Some(TransferLeg {
            key,
            sip: SipLeg::Outbound(sip),
            target: uri,
            kind: TransferKind::Refer,
        });
        self.transfer_keys.insert(key, id.clone());
    }

    /// An INVITE with Replaces named this call's dialog: answer it on the
    /// same RTP port; it becomes the SIP leg once its ACK arrives, and the
    /// old dialog gets BYE (RFC 3891).
    fn start_replacing_leg(&mut self, id: &CallId, incoming: IncomingCall) {
        let Some(entry) = self.calls.get_mut(id) else {
            return incoming.handle.reject(481);
        };
        let sdp = entry
            .answered_sip()
            .and_then(|_| answer_sdp_for(&self.shared, entry, incoming.sdp_offer.as_deref()));
        let Some(sdp) = sdp.filter(|_| entry.transfer_leg.is_none()) else {
            info!(call = %id, "INVITE with Replaces for a call that cannot take it (486)");
            return incoming.handle.reject(486);
        };
        let key = self.shared.next_peer.fetch_add(1, Ordering::Relaxed);
        incoming.handle.route_events(key, self.sip_events.clone());
        incoming.handle.answer(sdp);
        info!(call = %id, from = %incoming.from_uri, "replacing the SIP leg (INVITE with Replaces)");
        entry.transfer_leg = Some(TransferLeg {
            key,
            sip: SipLeg::Inbound(incoming.handle),
            target: incoming.from_uri,
            kind: TransferKind::Replaces,
        });
        self.transfer_keys.insert(key, id.clone());
        if let Some(offer) = incoming.sdp_offer {
            let peer = entry.peer;
            self.connect_sip_media(peer, id, &offer, true, Flow::BOTH);
        }
    }

    /// Events of a transfer leg: progress goes to the old leg's NOTIFYs
    /// (REFER); the answer swaps the legs.
    fn on_transfer_leg(&mut self, id: CallId, event: SipEvent) {
        let Some(entry) = self.calls.get_mut(&id) else {
            return;
        };
        let (Some(old), Some(leg)) = (entry.sip.as_ref(), entry.transfer_leg.as_ref()) else {
            return;
        };
        let referred = leg.kind == TransferKind::Refer;
        match event {
            SipEvent::Provisional { status, .. } if referred => {
                old.notify_transfer(status, reason_phrase(status), false)
            }
            SipEvent::Answered { sdp } => {
                let (peer, key, target) = (entry.peer, leg.key, leg.target.clone());
                if !self.connect_sip_media(peer, &id, &sdp, true, Flow::BOTH) {
                    let Some(entry) = self.calls.get_mut(&id) else {
                        return;
                    };
                    if let (Some(old), Some(leg)) = (&entry.sip, entry.transfer_leg.take()) {
                        leg.sip.hangup();
                        if referred {
                            old.notify_transfer(488, "Not Acceptable Here", true);
                        }
                    }
                    return;
                }
                let Some(entry) = self.calls.get_mut(&id) else {
                    return;
                };
                let Some(leg) = entry.transfer_leg.take() else {
                    return;
                };
                let old = entry.sip.replace(leg.sip);
                entry.sip_key = key;
                entry.hold = HoldState::default();
                match old {
                    Some(old) if referred => {
                        old.notify_transfer(200, "OK", true);
                        tokio::spawn(async move {
                            tokio::time::sleep(REPLACED_LEG_GRACE).await;
                            old.hangup();
                        });
                    }
                    // RFC 3891: the replaced dialog ends at once.
                    Some(old) => old.hangup(),
                    None => {}
                }
                info!(call = %id, to = %target, "transfer complete: talking to the new far end");
                self.shared.metrics.mid_call("transfer_in_completed");
                self.outbox.push(ServerMessage::Transferred {
                    call: id,
                    to: target,
                });
            }
            SipEvent::Failed { status, reason } => {
                info!(call = %id, status, %reason, "the new far end did not answer");
                self.shared.metrics.mid_call("transfer_in_failed");
                if referred {
                    old.notify_transfer(status, &reason, true);
                }
                entry.transfer_leg = None;
            }
            SipEvent::Ended => {
                let key = leg.key;
                entry.transfer_leg = None;
                self.transfer_keys.remove(&key);
            }
            _ => {}
        }
    }

    /// The far end's new SDP (its re-offer, or its answer to our hold or
    /// resume): the media follows its address, codec and direction.
    fn on_sip_renegotiated(&mut self, peer: PeerId, id: CallId, event: SipEvent) {
        let Some(entry) = self.calls.get_mut(&id) else {
            return;
        };
        let (sdp, change) = match event {
            SipEvent::RemoteOffer { sdp } => {
                let Ok(media) = sip_sdp::parse_answer(&sdp, &SIP_CODECS) else {
                    // The SIP leg answered it; it cannot be unusable here.
                    return warn!(call = %id, "re-offer unusable");
                };
                let change = entry.hold.remote_offer(remote_direction(media.direction));
                (sdp, change)
            }
            SipEvent::OfferAccepted { sdp, hold } => {
                let Ok(media) = sip_sdp::parse_answer(&sdp, &SIP_CODECS) else {
                    return warn!(call = %id, "answer to our re-offer unusable");
                };
                let change = entry.hold.accepted(hold, remote_direction(media.direction));
                (sdp, change)
            }
            SipEvent::OfferRefused { status, hold } => {
                entry.hold.refused();
                self.shared.metrics.mid_call("hold_refused");
                let what = if hold { "hold" } else { "resume" };
                info!(call = %id, status, what, "the far end refused");
                return self.reject(ApiError::new(
                    ErrorCode::HoldFailed,
                    Some(id),
                    format!("the far end refused the {what} ({status})"),
                ));
            }
            _ => return,
        };
        let flow = entry.hold.flow();
        self.connect_sip_media(
            peer,
            &id,
            &sdp,
            true,
            Flow {
                to_sip: flow.to_sip,
                from_sip: flow.from_sip,
            },
        );
        match change {
            Some(HoldChange::Held(by)) => {
                info!(call = %id, ?by, "on hold");
                self.shared.metrics.mid_call(match by {
                    HoldParty::Local => "held_local",
                    HoldParty::Remote => "held_remote",
                });
                self.outbox.push(ServerMessage::Held { call: id, by });
            }
            Some(HoldChange::Resumed(by)) => {
                info!(call = %id, ?by, "off hold");
                self.shared.metrics.mid_call(match by {
                    HoldParty::Local => "resumed_local",
                    HoldParty::Remote => "resumed_remote",
                });
                self.outbox.push(ServerMessage::Resumed { call: id, by });
            }
            None => {}
        }
    }

    /// `register`: sign in as a SIP user with a password (checked by the
    /// registrar) or a token (checked here, credentials from the config).
    fn register(&mut self, user: Option<String>, password: Option<String>, token: Option<String>) {
        let Some(users) = self.shared.users.clone() else {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                None,
                "registration needs the SIP leg (sip.enabled)",
            ));
        };
        let now = Instant::now();
        if self.shared.sign_in_failures.is_blocked(self.peer_ip, now) {
            return self.reject(ApiError::new(
                ErrorCode::RateLimited,
                None,
                "too many failed sign-ins from this address; try again later",
            ));
        }
        let (user, password, by_token) = match (user, password, token) {
            (Some(user), Some(password), None) => (user, password, false),
            (None, None, Some(token)) => {
                let Some(secret) = self.shared.config.auth.token_secret.as_deref() else {
                    return self.reject(ApiError::new(
                        ErrorCode::InvalidMessage,
                        None,
                        "token sign-in is not enabled (auth.token_secret)",
                    ));
                };
                let user = match auth::verify_token(secret, &token) {
                    Ok(user) => user,
                    Err(reason) => return self.sign_in_refused(String::new(), None, reason),
                };
                let Some(password) = self.shared.config.auth.users.get(&user).cloned() else {
                    let reason = "no SIP credentials configured for this user".to_string();
                    return self.sign_in_refused(user, None, reason);
                };
                (user, password, true)
            }
            _ => {
                return self.reject(ApiError::new(
                    ErrorCode::InvalidMessage,
                    None,
                    "register needs `user` and `password`, or `token` alone",
                ))
            }
        };
        if !valid_sip_user(&user) || password.is_empty() || password.len() > 256 {
            return self.reject(ApiError::new(
                ErrorCode::InvalidMessage,
                None,
                "`user` must be 1-64 characters valid in a SIP URI user part, `password` 1-256",
            ));
        }
        if self.user.as_ref().is_some_and(|u| *u != user) {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                None,
                "this connection is signed in as another user; unregister first",
            ));
        }
        info!(%user, by_token, "sign-in requested");
        self.user = Some(user.clone());
        users.sign_in(self.number, self.inbox.clone(), user, password, by_token);
    }

    fn sign_in_refused(&mut self, user: String, code: Option<u16>, reason: String) {
        info!(%user, ?code, %reason, "sign-in refused");
        self.shared
            .sign_in_failures
            .record_failure(self.peer_ip, Instant::now());
        self.shared.metrics.registration_failed(code);
        self.outbox
            .push(ServerMessage::RegistrationFailed { user, code, reason });
    }

    fn unregister(&mut self) {
        let Some(user) = self.user.take() else {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                None,
                "not signed in",
            ));
        };
        if let Some(users) = &self.shared.users {
            users.sign_out(self.number);
        }
        self.outbox.push(ServerMessage::Unregistered { user });
    }

    fn on_inbox(&mut self, message: Inbox) {
        match message {
            Inbox::Registered { user, expires } => {
                if self.user.as_ref() == Some(&user) {
                    self.outbox
                        .push(ServerMessage::Registered { user, expires });
                }
            }
            Inbox::RegistrationFailed {
                user,
                code,
                reason,
                still_signed_in,
            } => {
                if self.user.as_ref() != Some(&user) {
                    return;
                }
                if !still_signed_in {
                    self.user = None;
                    if matches!(code, Some(401 | 403 | 407)) {
                        self.shared
                            .sign_in_failures
                            .record_failure(self.peer_ip, Instant::now());
                    }
                }
                self.outbox
                    .push(ServerMessage::RegistrationFailed { user, code, reason });
            }
            Inbox::Unregistered { user } => {
                if self.user.as_ref() == Some(&user) {
                    self.user = None;
                    self.outbox.push(ServerMessage::Unregistered { user });
                }
            }
            Inbox::Incoming(ringing) => {
                let full = self.calls.len() + self.ringing.len()
                    >= self.shared.config.calls.max_per_session;
                if full || self.calls.contains_key(&ringing.id) {
                    debug!(call = %ringing.id, "no room for another call here");
                    return ringing.gone(self.number);
                }
                self.outbox.push(ServerMessage::Incoming {
                    call: ringing.id.clone(),
                    from: ringing.from.clone(),
                    display: ringing.display.clone(),
                    to: ringing.to.clone(),
                });
                self.ringing.insert(ringing.id.clone(), ringing);
            }
            Inbox::Withdrawn { call, reason, code } => {
                if self.ringing.remove(&call).is_some() {
                    self.outbox
                        .push(ServerMessage::Ended { call, reason, code });
                }
            }
        }
    }

    /// `accept`: take a ringing call; the browser's offer sets up its leg,
    /// then the PBX gets our 200 OK.
    fn accept(&mut self, id: CallId, sdp: String) {
        let Some(ringing) = self.ringing.get(&id).cloned() else {
            return self.reject(not_ringing(id));
        };
        if *self.shared.phase.borrow() != Phase::Running {
            return self.reject(ApiError::new(
                ErrorCode::ShuttingDown,
                Some(id),
                "the gateway is shutting down",
            ));
        }
        if !ringing.claim() {
            // Answered elsewhere, cancelled or timed out just now: the
            // `ended` is on its way.
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                Some(id),
                "the call is no longer ringing",
            ));
        }
        self.ringing.remove(&id);
        let peer = PeerId(self.shared.next_peer.fetch_add(1, Ordering::Relaxed));
        ringing.sip.route_events(peer.0, self.sip_events.clone());
        ringing.accepted(self.number);
        info!(call = %id, gangway_call = %ringing.log_id, from = %ringing.from, "incoming call accepted");
        let timers = self.shared.config.call_timers();
        self.shared.metrics.calls_active.inc();
        self.calls.insert(
            id.clone(),
            CallEntry {
                call: Call::incoming(self.router.clone(), timers, ringing.from.clone()),
                peer,
                started: Instant::now(),
                log_id: ringing.log_id.clone(),
                rtp_port: None,
                sip: Some(SipLeg::Inbound(ringing.sip.clone())),
                sip_offer: ringing.sdp_offer.clone(),
                shard: self.shared.pick_shard(),
                hold: HoldState::default(),
                sip_key: peer.0,
                transfer_leg: None,
                transfer_accepted: false,
                attended_with: None,
            },
        );
        self.by_peer.insert(peer, id.clone());
        self.feed(&id, Event::Accept { offer: sdp });
    }

    /// `reject` (or `hangup` of a ringing call): refuse it for every session.
    fn reject_incoming(&mut self, id: CallId, code: Option<u16>) {
        let code = code.unwrap_or(486);
        if !REJECT_CODES.contains(&code) {
            return self.reject(ApiError::new(
                ErrorCode::InvalidMessage,
                Some(id),
                "code must be 486, 480 or 603",
            ));
        }
        let Some(ringing) = self.ringing.get(&id).cloned() else {
            return self.reject(not_ringing(id));
        };
        // Whoever claimed first decides; the `ended` reaches us either way.
        if ringing.claim() {
            ringing.rejected(code);
        }
    }

    /// The socket is gone: leave the user's registration and ringing calls.
    fn leave(&mut self) {
        if let Some(users) = &self.shared.users {
            if self.user.take().is_some() {
                users.sign_out(self.number);
            }
        }
        for (_, ringing) in self.ringing.drain() {
            ringing.gone(self.number);
        }
    }

    fn start_call(&mut self, id: CallId, to: String, sdp: String) {
        if *self.shared.phase.borrow() != Phase::Running {
            return self.reject(ApiError::new(
                ErrorCode::ShuttingDown,
                Some(id),
                "the gateway is shutting down; try another instance",
            ));
        }
        if self.calls.contains_key(&id) || self.ringing.contains_key(&id) {
            return self.reject(ApiError::new(
                ErrorCode::DuplicateCall,
                Some(id),
                "a call with this id is already active on this connection",
            ));
        }
        let max = self.shared.config.calls.max_per_session;
        if self.calls.len() >= max {
            return self.reject(ApiError::new(
                ErrorCode::TooManyCalls,
                Some(id),
                format!("at most {max} concurrent calls per connection"),
            ));
        }
        let peer = PeerId(self.shared.next_peer.fetch_add(1, Ordering::Relaxed));
        let log_id = format!("{:x}-{}", self.shared.started_ms, peer.0);
        info!(call = %id, gangway_call = %log_id, to = %to, "call requested");
        let timers = self.shared.config.call_timers();
        self.shared.metrics.calls_active.inc();
        self.calls.insert(
            id.clone(),
            CallEntry {
                call: Call::new(self.router.clone(), timers),
                peer,
                started: Instant::now(),
                log_id: log_id.clone(),
                rtp_port: None,
                sip: None,
                sip_offer: None,
                shard: self.shared.pick_shard(),
                hold: HoldState::default(),
                sip_key: peer.0,
                transfer_leg: None,
                transfer_accepted: false,
                attended_with: None,
            },
        );
        self.by_peer.insert(peer, id.clone());
        self.feed(&id, Event::Start { to, offer: sdp });
    }

    fn on_leg(&mut self, peer: PeerId, event: LegEvent) {
        // Events for calls that already ended are stale; drop them.
        let Some(id) = self.by_peer.get(&peer).cloned() else {
            return;
        };
        let core_event = match event {
            LegEvent::Ready { answer, rtp_port } => {
                if let Some(entry) = self.calls.get_mut(&id) {
                    entry.rtp_port = rtp_port;
                }
                Event::LegReady { answer }
            }
            LegEvent::Failed(SetupError::IncompatibleCodecs) => {
                Event::LegFailed(LegSetupError::IncompatibleCodecs)
            }
            LegEvent::Failed(e) => {
                let message = e.to_string();
                self.reject(ApiError::new(
                    ErrorCode::InvalidSdp,
                    Some(id.clone()),
                    &message,
                ));
                Event::LegFailed(LegSetupError::InvalidSdp(message))
            }
            LegEvent::CandidateRejected(message) => {
                return self.reject(ApiError::new(
                    ErrorCode::InvalidCandidate,
                    Some(id),
                    message,
                ));
            }
            LegEvent::Connected => {
                if let Some(entry) = self.calls.get(&id) {
                    let elapsed = entry.started.elapsed();
                    self.shared
                        .metrics
                        .webrtc_connect_seconds
                        .observe(elapsed.as_secs_f64());
                    info!(call = %id, ms = elapsed.as_millis() as u64, "media connected");
                }
                Event::MediaConnected
            }
            LegEvent::Disconnected => Event::MediaLost,
            LegEvent::Dtmf(digit) => {
                info!(call = %id, %digit, "DTMF received");
                self.outbox.push(ServerMessage::Dtmf {
                    call: id,
                    digit: digit.to_string(),
                });
                return;
            }
            LegEvent::DtmfRefused => {
                return self.reject(ApiError::new(
                    ErrorCode::DtmfUnavailable,
                    Some(id),
                    "the far end did not accept telephone-event (RFC 4733)",
                ));
            }
            LegEvent::MediaTimeout => {
                info!(call = %id, "no media from one leg: ending the call");
                Event::MediaLost
            }
            LegEvent::Renegotiated { answer } => {
                info!(call = %id, "WebRTC leg renegotiated");
                self.outbox.push(ServerMessage::Answer {
                    call: id,
                    sdp: answer,
                });
                return;
            }
            LegEvent::RenegotiationFailed(e) => {
                return self.reject(ApiError::new(
                    ErrorCode::InvalidSdp,
                    Some(id),
                    format!("{e}; the call carries on with its current session"),
                ));
            }
        };
        self.feed(&id, core_event);
    }

    fn on_sip(&mut self, key: u64, event: SipEvent) {
        let id = match self.by_peer.get(&PeerId(key)) {
            Some(id) => id.clone(),
            None => match self.transfer_keys.get(&key) {
                Some(id) => id.clone(),
                None => return,
            },
        };
        let Some(entry) = self.calls.get(&id) else {
            return;
        };
        let peer = entry.peer;
        if entry.transfer_leg.as_ref().is_some_and(|t| t.key == key) {
            return self.on_transfer_leg(id, event);
        }
        if entry.sip_key != key {
            // A leg a transfer replaced: it ends on its own.
            match event {
                SipEvent::Ended => {
                    self.transfer_keys.remove(&key);
                }
                SipEvent::ReplacedBy(late) => late.0.handle.reject(481),
                _ => {}
            }
            return;
        }
        let core_event = match event {
            SipEvent::Provisional { status, sdp } => {
                let early_media = sdp
                    .is_some_and(|sdp| self.connect_sip_media(peer, &id, &sdp, false, Flow::BOTH));
                Event::SipProgress {
                    status,
                    early_media,
                }
            }
            SipEvent::Answered { sdp } => {
                // An incoming call's media was connected from the INVITE's
                // offer when we answered; the ACK only confirms it.
                let connected = self.calls.get(&id).is_some_and(|e| e.sip_offer.is_some());
                if connected || self.connect_sip_media(peer, &id, &sdp, true, Flow::BOTH) {
                    if let Some(entry) = self.calls.get(&id) {
                        let elapsed = entry.started.elapsed();
                        self.shared
                            .metrics
                            .call_answer_seconds
                            .observe(elapsed.as_secs_f64());
                        info!(call = %id, ms = elapsed.as_millis() as u64, "answered");
                    }
                    Event::SipAnswered
                } else {
                    Event::SipMediaUnusable
                }
            }
            SipEvent::Failed { status, reason } => {
                info!(call = %id, status, %reason, "SIP leg failed");
                Event::SipFailed { status }
            }
            // A transferee that accepted our REFER often hangs up at once
            // rather than reporting the outcome (RFC 5589 §6.1 allows it).
            SipEvent::RemoteHangup if self.calls.get(&id).is_some_and(|e| e.transfer_accepted) => {
                info!(call = %id, "far end left after accepting our transfer");
                self.shared.metrics.mid_call("transfer_out_completed");
                Event::SipTransferred
            }
            SipEvent::RemoteHangup => Event::SipRemoteHangup,
            SipEvent::SessionExpired { status } => {
                info!(call = %id, ?status, "SIP session timer expired");
                Event::SipSessionExpired { status }
            }
            SipEvent::Dtmf { digit } => {
                info!(call = %id, %digit, "DTMF received (SIP INFO)");
                // The browser hears it too, as RFC 4733 on its stream.
                if let Some(entry) = self.calls.get(&id) {
                    self.shared.shards[entry.shard].play_dtmf(peer, digit);
                }
                self.outbox.push(ServerMessage::Dtmf {
                    call: id,
                    digit: digit.to_string(),
                });
                return;
            }
            event @ (SipEvent::RemoteOffer { .. }
            | SipEvent::OfferAccepted { .. }
            | SipEvent::OfferRefused { .. }) => return self.on_sip_renegotiated(peer, id, event),
            SipEvent::TransferProgress { status, done } => {
                if let Some(entry) = self.calls.get_mut(&id) {
                    entry.transfer_accepted =
                        !done && (entry.transfer_accepted || (200..300).contains(&status));
                }
                self.outbox.push(ServerMessage::TransferProgress {
                    call: id.clone(),
                    status,
                    done,
                });
                if !done {
                    return;
                }
                if !(200..300).contains(&status) {
                    self.shared.metrics.mid_call("transfer_out_failed");
                    let other = self.calls.get_mut(&id).and_then(|e| e.attended_with.take());
                    if let Some(o) = other.and_then(|other| self.calls.get_mut(&other)) {
                        o.transfer_accepted = false;
                    }
                    return;
                }
                info!(call = %id, "transfer complete");
                self.shared.metrics.mid_call("transfer_out_completed");
                Event::SipTransferred
            }
            SipEvent::Referred { target } => return self.start_transfer_leg(&id, target),
            SipEvent::ReplacedBy(replacement) => {
                return self.start_replacing_leg(&id, *replacement.0)
            }
            SipEvent::Ended => return,
        };
        self.feed(&id, core_event);
    }

    /// Points the bridge at the media the far end's SDP describes. False
    /// when the SDP is unusable (no common codec, no address).
    fn connect_sip_media(
        &mut self,
        peer: PeerId,
        id: &CallId,
        sdp: &str,
        answered: bool,
        flow: Flow,
    ) -> bool {
        match sip_sdp::parse_answer(sdp, &SIP_CODECS) {
            Ok(media) => {
                let law = match media.codec {
                    G711::Pcmu => Law::Pcmu,
                    G711::Pcma => Law::Pcma,
                };
                if let Some(entry) = self.calls.get(id) {
                    self.shared.shards[entry.shard].connect_remote(
                        peer,
                        media.addr,
                        law,
                        media.dtmf_pt,
                        answered,
                        flow,
                    );
                }
                true
            }
            Err(e) => {
                warn!(call = %id, "far end SDP unusable: {e}");
                false
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        let due: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| c.call.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(entry) = self.calls.get_mut(&id) {
                entry.call.handle_timeout(now);
            }
            self.pump(&id);
        }
    }

    fn end_all(&mut self, reason: EndReason) {
        let event = match reason {
            EndReason::Shutdown => Event::Shutdown,
            EndReason::SessionExpired => Event::SessionExpired,
            _ => Event::SocketClosed,
        };
        let ids: Vec<CallId> = self.calls.keys().cloned().collect();
        for id in ids {
            self.feed(&id, event.clone());
        }
    }

    fn feed(&mut self, id: &CallId, event: Event) {
        if let Some(entry) = self.calls.get_mut(id) {
            entry.call.handle(Instant::now(), event);
        }
        self.pump(id);
    }

    /// Carries out a call's actions.
    fn pump(&mut self, id: &CallId) {
        let Some(entry) = self.calls.get_mut(id) else {
            return;
        };
        let (peer, shard) = (entry.peer, entry.shard);
        let mut finished = None;
        let mut connect_offer = None;
        while let Some(action) = entry.call.poll_action() {
            match action {
                Action::CreateLeg { offer, media } => {
                    let (route, label) = match media {
                        MediaPlan::Echo => (MediaRoute::Echo, "echo"),
                        MediaPlan::Bridge => (MediaRoute::Bridge, "sip"),
                    };
                    self.shared
                        .metrics
                        .calls_started
                        .get_or_create(&[("route", label)])
                        .inc();
                    self.shared.shards[shard].add_peer(peer, offer, route, self.legs.clone());
                }
                Action::ReleaseLeg => self.shared.shards[shard].remove_peer(peer),
                Action::AnswerSip => {
                    let Some(sdp) = answer_sdp(&self.shared, entry) else {
                        entry.call.handle(Instant::now(), Event::SipMediaUnusable);
                        continue;
                    };
                    if let Some(SipLeg::Inbound(sip)) = &entry.sip {
                        sip.answer(sdp);
                    }
                    if let Some(offer) = entry.sip_offer.clone() {
                        connect_offer = Some(offer);
                    }
                }
                Action::PlaceSipCall { uri } => {
                    entry.sip = place_sip_call(&self.shared, entry, peer.0, uri, &self.sip_events)
                        .map(SipLeg::Outbound);
                    if entry.sip.is_none() {
                        // Cannot happen with a consistent config; fail the call visibly.
                        entry
                            .call
                            .handle(Instant::now(), Event::SipFailed { status: 500 });
                    }
                }
                Action::HangupSip => {
                    if let Some(sip) = &entry.sip {
                        sip.hangup();
                    }
                    if let Some(leg) = entry.transfer_leg.take() {
                        leg.sip.hangup();
                    }
                }
                Action::Notify(n) => self.outbox.push(to_message(id.clone(), n)),
                Action::Finished(reason) => finished = Some(reason),
            }
        }
        if let Some(offer) = connect_offer {
            self.connect_sip_media(peer, id, &offer, true, Flow::BOTH);
        }
        if let Some(reason) = finished {
            info!(call = %id, reason = reason.as_str(), "call ended");
            self.shared.metrics.call_ended(reason);
            if let Some(entry) = self.calls.remove(id) {
                if let Some(leg) = entry.transfer_leg {
                    leg.sip.hangup();
                }
            }
            self.by_peer.remove(&peer);
            self.transfer_keys.retain(|_, call| call != id);
        }
    }
}

/// Sends the INVITE for a bridged call. `None` if the SIP leg is not
/// configured or the media leg has no RTP port (neither happens when the
/// router produced a SIP route).
fn place_sip_call(
    shared: &Shared,
    entry: &CallEntry,
    key: u64,
    uri: String,
    events: &mpsc::UnboundedSender<(u64, SipEvent)>,
) -> Option<SipCall> {
    let sip = shared.sip.as_ref()?;
    let rtp_port = entry.rtp_port?;
    let offer = sip_sdp::offer(
        sip.service.advertised_ip(),
        rtp_port,
        &SIP_CODECS,
        SIP_DTMF_PT,
        entry.peer.0,
    );
    let call = sip.service.place_call(
        OutboundCall {
            key,
            trunk: sip.trunk.clone(),
            request_uri: uri,
            from_user: sip.from_user.clone(),
            from_display: None,
            sdp_offer: offer,
            correlation_id: entry.log_id.clone(),
        },
        events.clone(),
    );
    shared
        .metrics
        .sip_invite_seconds
        .observe(entry.started.elapsed().as_secs_f64());
    Some(call)
}

/// Our SDP for an incoming call's 200 OK: the answer to the INVITE's
/// offer, or our offer when the INVITE had none. `None` if the leg has no
/// RTP port or the offer is unusable (checked before ringing, so not expected).
fn answer_sdp(shared: &Shared, entry: &CallEntry) -> Option<String> {
    answer_sdp_for(shared, entry, entry.sip_offer.as_deref())
}

/// Our SDP answering `offer` (or our offer, without one) on the call's RTP port.
fn answer_sdp_for(shared: &Shared, entry: &CallEntry, offer: Option<&str>) -> Option<String> {
    let sip = shared.sip.as_ref()?;
    let rtp_port = entry.rtp_port?;
    let ip = sip.service.advertised_ip();
    match offer {
        Some(offer) => {
            let media = sip_sdp::parse_answer(offer, &SIP_CODECS).ok()?;
            Some(sip_sdp::answer(ip, rtp_port, &media, entry.peer.0))
        }
        None => Some(sip_sdp::offer(
            ip,
            rtp_port,
            &SIP_CODECS,
            SIP_DTMF_PT,
            entry.peer.0,
        )),
    }
}

fn remote_direction(direction: sip_sdp::Direction) -> RemoteDirection {
    RemoteDirection {
        sends: direction.sends(),
        receives: direction.receives(),
    }
}

/// The usual reason phrase of a provisional status, for transfer NOTIFYs.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        _ => "Progress",
    }
}

/// A SIP user part we are willing to put in a URI.
fn valid_sip_user(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()+".contains(c))
}

fn not_ringing(call: CallId) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownCall,
        Some(call),
        "no incoming call with this id is ringing on this connection",
    )
}

fn unknown_session() -> ApiError {
    ApiError::new(
        ErrorCode::UnknownSession,
        None,
        "no session to resume with this token (unknown, already used, or expired); this connection is a new session",
    )
}

fn unknown_call(call: CallId) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownCall,
        Some(call),
        "no active call with this id on this connection",
    )
}

fn to_message(call: CallId, n: Notify) -> ServerMessage {
    match n {
        Notify::Answer { sdp } => ServerMessage::Answer { call, sdp },
        Notify::Ringing => ServerMessage::Ringing { call },
        Notify::Progress => ServerMessage::Progress { call },
        Notify::Answered => ServerMessage::Answered { call },
        Notify::Ended { reason, code } => ServerMessage::Ended { call, reason, code },
    }
}
