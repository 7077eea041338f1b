//! One API WebSocket: decodes messages, drives the calls it owns, and
//! carries out their actions. The call logic itself lives in `gangway-core`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use gangway_core::{
    Action, Call, CallTimers, EndReason, Event, LegSetupError, MediaPlan, Notify, Router,
};
use gangway_media::{LegEvent, MediaRoute};
use gangway_rtc::{PeerId, SetupError};
use gangway_signal::{
    decode, encode, ApiError, CallId, ClientMessage, ErrorCode, ServerMessage, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, Instrument};

use crate::{Phase, Shared};

/// WebSocket close code for a frame over the hard limit (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code when the gateway goes away.
const CLOSE_GOING_AWAY: u16 = 1001;

struct CallEntry {
    call: Call,
    peer: PeerId,
    started: Instant,
}

struct Session {
    shared: Arc<Shared>,
    router: Router,
    calls: HashMap<CallId, CallEntry>,
    by_peer: HashMap<PeerId, CallId>,
    legs: mpsc::UnboundedSender<(PeerId, LegEvent)>,
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
    let mut phase = shared.phase.subscribe();
    let hello = ServerMessage::Hello {
        version: PROTOCOL_VERSION,
        session: id,
        max_message_bytes: shared.config.http.max_message_bytes,
    };
    let mut s = Session {
        router: Router::new(shared.config.echo_destination(), None),
        shared,
        calls: HashMap::new(),
        by_peer: HashMap::new(),
        legs,
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
                    self.shared.shard.add_candidate(entry.peer, c.candidate);
                }
            }
            ClientMessage::Hangup { call } => {
                if !self.calls.contains_key(&call) {
                    return self.reject(unknown_call(call));
                }
                self.feed(&call, Event::Hangup);
            }
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
        info!(call = %id, to = %to, "call requested");
        self.shared.metrics.calls_active.inc();
        self.calls.insert(
            id.clone(),
            CallEntry {
                call: Call::new(
                    self.router.clone(),
                    CallTimers::new(self.shared.config.setup_timeout()),
                ),
                peer,
                started: Instant::now(),
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
            LegEvent::Ready { answer } => Event::LegReady { answer },
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
        };
        self.feed(&id, core_event);
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
        let peer = entry.peer;
        let mut finished = None;
        while let Some(action) = entry.call.poll_action() {
            match action {
                Action::CreateLeg { offer, media } => {
                    let (route, label) = match media {
                        MediaPlan::Echo => (MediaRoute::Echo, "echo"),
                        MediaPlan::Bridge => (MediaRoute::Echo, "sip"),
                    };
                    self.shared
                        .metrics
                        .calls_started
                        .get_or_create(&[("route", label)])
                        .inc();
                    self.shared
                        .shard
                        .add_peer(peer, offer, route, self.legs.clone());
                }
                Action::ReleaseLeg => self.shared.shard.remove_peer(peer),
                // The router has no SIP destinations until the SIP leg is wired.
                Action::PlaceSipCall { .. } | Action::HangupSip => {}
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
