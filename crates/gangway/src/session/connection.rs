//! The socket side of a session: decoding, sending, and what happens when
//! the socket goes (park, expire, resume on a new connection).

use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use gangway_core::calls::{CallPhase, Input};
use gangway_signal::core_map::{self, Routed};
use gangway_signal::{
    decode, encode, ApiError, ErrorCode, ResumedCall, ResumedCallState, ServerMessage,
    MAX_RESUME_TOKEN_LEN,
};
use tracing::info;

use super::Session;
use crate::resume::Refused;
use crate::Phase;

/// Most messages a parked session keeps for its client; one more ends its calls.
const PARKED_QUEUE_MAX: usize = 256;

/// Close code for a socket whose session was resumed on another connection.
const CLOSE_RESUMED_ELSEWHERE: u16 = 4001;

/// How the socket went away.
pub(super) enum Gone {
    /// The client closed it with 1000 (or no code): the session ends.
    Normal,
    /// Lost (no close frame, another close code, a failed send): a session
    /// with calls waits for a resume.
    Lost,
    /// The gateway closed it (1001 at shutdown, 1009 on a bad frame).
    Closed,
}

/// A session without a socket: messages for the client, sent after
/// `session_resumed`. When it gives up is the core's decision.
pub(super) struct Parked {
    queue: Vec<ServerMessage>,
}

/// Whether a transport error means the connection is gone (rather than
/// that the client sent something unreadable).
pub(super) fn connection_lost(e: &axum::Error) -> bool {
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
pub(super) async fn close_superseded(mut ws: WebSocket) {
    let _ = crate::wait::close_within(
        &mut ws,
        Some(CloseFrame {
            code: CLOSE_RESUMED_ELSEWHERE,
            reason: "session resumed on another connection".into(),
        }),
    )
    .await;
}

pub(super) fn unknown_session() -> ApiError {
    ApiError::new(
        ErrorCode::UnknownSession,
        None,
        "no session to resume with this token (unknown, already used, or expired); this connection is a new session",
    )
}

impl Session {
    pub(super) fn on_text(&mut self, text: &str) {
        if !self.rate.allow(std::time::Instant::now()) {
            self.shared.metrics.limit_refused("messages");
            return self.reject(ApiError::new(
                ErrorCode::RateLimited,
                None,
                "too many messages on this socket; slow down",
            ));
        }
        let limit = self.shared.config.http.max_message_bytes;
        if text.len() > limit {
            return self.reject(ApiError::new(
                ErrorCode::MessageTooLarge,
                None,
                format!("message is {} bytes; the limit is {limit}", text.len()),
            ));
        }
        let routed = match decode(text).and_then(core_map::route) {
            Ok(routed) => routed,
            Err(e) => return self.reject(e),
        };
        match routed {
            Routed::Ping => self.outbox.push(ServerMessage::Pong),
            Routed::Register {
                user,
                password,
                token,
            } => self.register(user, password, token),
            Routed::Unregister => self.unregister(),
            Routed::ResumeSession { token } => self.resume_session(&token),
            Routed::Call(request) => {
                self.sync_phase();
                self.feed(Input::Request(request));
            }
        }
    }

    /// A drain that began since the loop last looked refuses new calls
    /// from this request on.
    pub(super) fn sync_phase(&mut self) {
        if *self.shared.phase.borrow() != Phase::Running {
            self.feed(Input::StopAccepting);
        }
    }

    /// Sends queued messages. Returns false when the socket is gone; the
    /// unsent messages stay queued (for a resume).
    pub(super) async fn flush(&mut self, socket: &mut WebSocket) -> bool {
        let mut sent = 0;
        let mut ok = true;
        let limit = std::time::Duration::from_secs(self.shared.config.http.write_timeout_secs);
        for message in &self.outbox {
            let frame = Message::Text(encode(message).into());
            if !crate::wait::send_within(socket, frame, limit).await {
                ok = false;
                break;
            }
            sent += 1;
        }
        self.outbox.drain(..sent);
        ok
    }

    /// The socket is lost: the core keeps the calls waiting for a resume
    /// if they may. False: the session ends now.
    pub(super) fn park(&mut self) -> bool {
        let resumable = self.token.is_some();
        self.feed(if resumable {
            Input::ConnectionLost
        } else {
            Input::ConnectionClosed
        });
        if !self.driver.calls.is_parked() {
            return false;
        }
        self.shared.metrics.sessions_parked.inc();
        self.parked = Some(Parked { queue: Vec::new() });
        true
    }

    /// Moves the outbox into a parked session's queue. False when the queue
    /// overflowed and the session ended.
    pub(super) fn queue_while_parked(&mut self) -> bool {
        let Some(parked) = self.parked.as_mut() else {
            return true;
        };
        parked.queue.append(&mut self.outbox);
        if parked.queue.len() > PARKED_QUEUE_MAX {
            info!("session expired: too many messages waiting for a resume");
            self.feed(Input::ParkedOverflow);
            self.expired();
            return false;
        }
        true
    }

    /// The grace period is over without a resume: the core ends the calls.
    pub(super) fn expire(&mut self, now: Instant) {
        info!("session expired: no resume within the grace period");
        self.driver.handle_timeout(now);
        self.deliver();
        self.expired();
    }

    fn expired(&mut self) {
        self.shared.metrics.session_resume("expired");
        self.outbox.clear();
        if self.parked.take().is_some() {
            self.shared.metrics.sessions_parked.dec();
        }
    }

    pub(super) fn revoke_token(&mut self) {
        if let Some(token) = self.token.take() {
            self.shared.tokens.revoke(&token);
        }
    }

    /// A new socket took over this session: what that connection still
    /// owed its client, a new token and `session_resumed` with where each
    /// call stands, then what was queued.
    pub(super) fn resumed(&mut self, owed: Vec<ServerMessage>) {
        let queue = match self.parked.take() {
            Some(parked) => {
                self.shared.metrics.sessions_parked.dec();
                parked.queue
            }
            None => Vec::new(),
        };
        self.feed(Input::ConnectionResumed);
        self.shared.metrics.session_resume("resumed");
        self.revoke_token();
        self.token = self.shared.tokens.issue(self.number, self.handover.clone());
        let mut calls: Vec<ResumedCall> = self
            .driver
            .calls
            .phases()
            .into_iter()
            .map(|(call, phase)| ResumedCall {
                call,
                state: match phase {
                    CallPhase::Connecting => ResumedCallState::Connecting,
                    CallPhase::Ringing => ResumedCallState::Ringing,
                    CallPhase::Answered => ResumedCallState::Answered,
                },
            })
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
        if !self.driver.calls.is_empty() || self.user.is_some() {
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

    pub(super) fn resume_refused(&mut self) {
        self.shared.metrics.session_resume("refused");
        self.reject(unknown_session());
    }
}
