//! One API WebSocket: decodes messages, drives the calls it owns, and
//! carries out their actions. The call logic itself lives in `gangway-core`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use gangway_core::{
    Action, Call, CallState, EndReason, Event, HoldChange, HoldRefusal, HoldState, LegSetupError,
    MediaPlan, Notify, RemoteDirection, Route, Router,
};
use gangway_media::{Flow, Law, LegEvent, MediaRoute};
use gangway_rtc::{PeerId, SetupError};
use gangway_signal::{
    decode, encode, valid_dtmf, ApiError, CallId, ClientMessage, ErrorCode, ServerMessage,
    MAX_DTMF_DIGITS, PROTOCOL_VERSION, REJECT_CODES,
};
use gangway_sip::sdp::{self as sip_sdp, G711};
use gangway_sip::{InboundSipCall, OutboundCall, SipCall, SipEvent};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::DtmfMode;
use crate::inbound::Ringing;
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
}

struct Session {
    shared: Arc<Shared>,
    /// This session's number, for the user table and ringing decisions.
    number: u64,
    peer_ip: IpAddr,
    inbox: mpsc::UnboundedSender<Inbox>,
    /// The SIP user this session signed in as (or is signing in as).
    user: Option<String>,
    /// Incoming calls ringing here, not yet accepted or withdrawn.
    ringing: HashMap<CallId, Arc<Ringing>>,
    router: Router,
    calls: HashMap<CallId, CallEntry>,
    by_peer: HashMap<PeerId, CallId>,
    legs: mpsc::UnboundedSender<(PeerId, LegEvent)>,
    sip_events: mpsc::UnboundedSender<(u64, SipEvent)>,
    outbox: Vec<ServerMessage>,
}

pub async fn run(socket: WebSocket, shared: Arc<Shared>, peer_ip: IpAddr) {
    let (number, id) = shared.next_session_id();
    shared.metrics.ws_total.inc();
    shared.metrics.ws_active.inc();
    let span = info_span!("session", session = %id);
    async {
        debug!("connected");
        serve(socket, shared.clone(), number, id, peer_ip).await;
        debug!("disconnected");
    }
    .instrument(span)
    .await;
    shared.metrics.ws_active.dec();
}

async fn serve(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    number: u64,
    id: String,
    peer_ip: IpAddr,
) {
    let (legs, mut leg_events) = mpsc::unbounded_channel();
    let (inbox, mut inbox_rx) = mpsc::unbounded_channel();
    let (sip_events, mut sip_rx) = mpsc::unbounded_channel();
    let mut phase = shared.phase.subscribe();
    let hello = ServerMessage::Hello {
        version: PROTOCOL_VERSION,
        session: id,
        max_message_bytes: shared.config.http.max_message_bytes,
    };
    let mut s = Session {
        router: shared.router.clone(),
        shared,
        number,
        peer_ip,
        inbox,
        user: None,
        ringing: HashMap::new(),
        calls: HashMap::new(),
        by_peer: HashMap::new(),
        legs,
        sip_events,
        outbox: vec![hello],
    };

    let mut close: Option<CloseFrame> = None;
    let mut peer_closed = false;
    loop {
        if !s.flush(&mut socket).await {
            break;
        }
        if *phase.borrow() == Phase::Terminating {
            s.end_all(EndReason::Shutdown);
            s.flush(&mut socket).await;
            close = Some(CloseFrame {
                code: CLOSE_GOING_AWAY,
                reason: "gateway shutting down".into(),
            });
            break;
        }
        let deadline = s.calls.values().filter_map(|c| c.call.poll_timeout()).min();
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => s.on_text(text.as_str()),
                Some(Ok(Message::Binary(_))) => s.reject(ApiError::new(
                    ErrorCode::BinaryNotSupported,
                    None,
                    "binary frames are not supported; send JSON text frames",
                )),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    // Complete the closing handshake: echo the client's code
                    // (RFC 6455 §5.5.1), else the browser sees 1006.
                    close = Some(frame.unwrap_or(CloseFrame {
                        code: CLOSE_NORMAL,
                        reason: "".into(),
                    }));
                    peer_closed = true;
                    break;
                }
                None => break,
                Some(Err(e)) => {
                    // The transport refused the frame (over the hard size limit, or broken framing).
                    debug!("websocket error: {e}");
                    s.shared.metrics.api_error(ErrorCode::MessageTooLarge);
                    close = Some(CloseFrame {
                        code: CLOSE_TOO_BIG,
                        reason: "frame too large or malformed".into(),
                    });
                    break;
                }
            },
            Some((peer, event)) = leg_events.recv() => s.on_leg(peer, event),
            Some((key, event)) = sip_rx.recv() => s.on_sip(PeerId(key), event),
            Some(message) = inbox_rx.recv() => s.on_inbox(message),
            _ = sleep_until(deadline) => s.on_timeout(Instant::now()),
            _ = phase.changed() => {}
        }
    }
    // Whatever the reason we left, the calls go with the socket.
    s.end_all(EndReason::SocketClosed);
    s.leave();
    match close {
        // The peer started the closing handshake: tungstenite has queued
        // the reply already; flushing it out completes the handshake.
        Some(frame) if peer_closed => {
            debug!(code = frame.code, "client closed the socket");
            let _ = SinkExt::close(&mut socket).await;
        }
        Some(frame) => {
            let _ = socket.send(Message::Close(Some(frame))).await;
        }
        None => {}
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Sends queued messages. Returns false when the socket is gone.
    async fn flush(&mut self, socket: &mut WebSocket) -> bool {
        for message in self.outbox.drain(..) {
            if socket
                .send(Message::Text(encode(&message).into()))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
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
        }
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
        let Some(sip) = entry
            .sip
            .as_ref()
            .filter(|_| entry.call.state() == CallState::Answered)
        else {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                Some(id),
                "hold and resume need an answered SIP call",
            ));
        };
        if let Err(refusal) = entry.hold.request(hold) {
            let message = match refusal {
                HoldRefusal::AlreadyHeld => "the call is already on hold",
                HoldRefusal::NotHeld => "the call is not on hold here",
                HoldRefusal::Pending => "a hold or resume is already in progress",
            };
            return self.reject(ApiError::new(ErrorCode::InvalidState, Some(id), message));
        }
        info!(call = %id, hold, "hold requested");
        sip.hold(hold);
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
                self.outbox.push(ServerMessage::Held { call: id, by });
            }
            Some(HoldChange::Resumed(by)) => {
                info!(call = %id, ?by, "off hold");
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
        };
        self.feed(&id, core_event);
    }

    fn on_sip(&mut self, peer: PeerId, event: SipEvent) {
        let Some(id) = self.by_peer.get(&peer).cloned() else {
            return;
        };
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
            SipEvent::RemoteHangup => Event::SipRemoteHangup,
            SipEvent::SessionExpired { status } => {
                info!(call = %id, ?status, "SIP session timer expired");
                Event::SipSessionExpired { status }
            }
            SipEvent::Dtmf { digit } => {
                info!(call = %id, %digit, "DTMF received (SIP INFO)");
                self.outbox.push(ServerMessage::Dtmf {
                    call: id,
                    digit: digit.to_string(),
                });
                return;
            }
            event @ (SipEvent::RemoteOffer { .. }
            | SipEvent::OfferAccepted { .. }
            | SipEvent::OfferRefused { .. }) => return self.on_sip_renegotiated(peer, id, event),
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
                    entry.sip = place_sip_call(&self.shared, entry, uri, &self.sip_events)
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
            self.calls.remove(id);
            self.by_peer.remove(&peer);
        }
    }
}

/// Sends the INVITE for a bridged call. `None` if the SIP leg is not
/// configured or the media leg has no RTP port (neither happens when the
/// router produced a SIP route).
fn place_sip_call(
    shared: &Shared,
    entry: &CallEntry,
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
            key: entry.peer.0,
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
    let sip = shared.sip.as_ref()?;
    let rtp_port = entry.rtp_port?;
    let ip = sip.service.advertised_ip();
    match &entry.sip_offer {
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
