//! One API WebSocket: decodes messages, drives the calls it owns, and
//! carries out their actions. The call logic itself lives in `gangway-core`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use gangway_core::{
    Action, Call, CallState, CallTimers, EndReason, Event, LegSetupError, MediaPlan, Notify, Route,
    Router,
};
use gangway_media::{Law, LegEvent, MediaRoute};
use gangway_rtc::{PeerId, SetupError};
use gangway_signal::{
    decode, encode, valid_dtmf, ApiError, CallId, ClientMessage, ErrorCode, ServerMessage,
    MAX_DTMF_DIGITS, PROTOCOL_VERSION,
};
use gangway_sip::sdp::{self as sip_sdp, G711};
use gangway_sip::{OutboundCall, SipCall, SipEvent};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::{Phase, Shared};

/// WebSocket close code for a frame over the hard limit (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code when the gateway goes away.
const CLOSE_GOING_AWAY: u16 = 1001;

/// Codecs offered to the SIP leg; the bridge converts between them if the
/// browser and the PBX chose differently.
const SIP_CODECS: [G711; 2] = [G711::Pcmu, G711::Pcma];
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
    sip: Option<SipCall>,
    /// The media shard holding the call's legs.
    shard: usize,
}

struct Session {
    shared: Arc<Shared>,
    router: Router,
    calls: HashMap<CallId, CallEntry>,
    by_peer: HashMap<PeerId, CallId>,
    legs: mpsc::UnboundedSender<(PeerId, LegEvent)>,
    sip_events: mpsc::UnboundedSender<(u64, SipEvent)>,
    outbox: Vec<ServerMessage>,
}

pub async fn run(socket: WebSocket, shared: Arc<Shared>) {
    let id = shared.next_session_id();
    shared.metrics.ws_total.inc();
    shared.metrics.ws_active.inc();
    let span = info_span!("session", session = %id);
    async {
        debug!("connected");
        serve(socket, shared.clone(), id).await;
        debug!("disconnected");
    }
    .instrument(span)
    .await;
    shared.metrics.ws_active.dec();
}

async fn serve(mut socket: WebSocket, shared: Arc<Shared>, id: String) {
    let (legs, mut leg_events) = mpsc::unbounded_channel();
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
        calls: HashMap::new(),
        by_peer: HashMap::new(),
        legs,
        sip_events,
        outbox: vec![hello],
    };

    let mut close: Option<CloseFrame> = None;
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
                Some(Ok(Message::Close(_))) | None => break,
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
            _ = sleep_until(deadline) => s.on_timeout(Instant::now()),
            _ = phase.changed() => {}
        }
    }
    // Whatever the reason we left, the calls go with the socket.
    s.end_all(EndReason::SocketClosed);
    if let Some(frame) = close {
        let _ = socket.send(Message::Close(Some(frame))).await;
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
        self.shared.shards[entry.shard].send_dtmf(entry.peer, digits);
    }

    fn start_call(&mut self, id: CallId, to: String, sdp: String) {
        if *self.shared.phase.borrow() != Phase::Running {
            return self.reject(ApiError::new(
                ErrorCode::ShuttingDown,
                Some(id),
                "the gateway is shutting down; try another instance",
            ));
        }
        if self.calls.contains_key(&id) {
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
        let config = &self.shared.config;
        let timers = CallTimers {
            media_setup: config.setup_timeout(),
            answer: config.answer_timeout(),
            max_duration: config.max_call_duration(),
        };
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
                shard: self.shared.pick_shard(),
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
                let early_media =
                    sdp.is_some_and(|sdp| self.connect_sip_media(peer, &id, &sdp, false));
                Event::SipProgress {
                    status,
                    early_media,
                }
            }
            SipEvent::Answered { sdp } => {
                if self.connect_sip_media(peer, &id, &sdp, true) {
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
            SipEvent::Dtmf { digit } => {
                info!(call = %id, %digit, "DTMF received (SIP INFO)");
                self.outbox.push(ServerMessage::Dtmf {
                    call: id,
                    digit: digit.to_string(),
                });
                return;
            }
            SipEvent::Ended => return,
        };
        self.feed(&id, core_event);
    }

    /// Points the bridge at the media the far end's SDP describes. False
    /// when the SDP is unusable (no common codec, no address).
    fn connect_sip_media(&mut self, peer: PeerId, id: &CallId, sdp: &str, answered: bool) -> bool {
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
                Action::PlaceSipCall { uri } => {
                    entry.sip = place_sip_call(&self.shared, entry, uri, &self.sip_events);
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
