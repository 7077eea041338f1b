//! One API WebSocket. The call decisions are the core's
//! ([`gangway_core::Calls`]); this module only moves things:
//! - `mod.rs`: the driver loop, which waits on the socket, the legs' events,
//!   the user table's inbox and the core's timer, and hands each to the core;
//! - `connection.rs`: the socket, park and resume;
//! - `sign_in.rs`: registration on behalf of the user.
//!
//! The core and the I/O it commands are a [`CallDriver`] (`crate::drive`),
//! shared with the SIP over WebSocket front end; this session maps what
//! it tells the client to JSON (`core_map`).

mod connection;
mod sign_in;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use gangway_core::calls::Input;
use gangway_signal::{core_map, ApiError, ErrorCode, Feature, ServerMessage, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tracing::{debug, info_span, Instrument};

use crate::drive::{CallDriver, ToClient};
use crate::resume::{Handover, Moved};
use crate::users::InboxTx;
use crate::wait::{idle_deadline, recv, sleep_until, CLOSE_IDLE};
use crate::{Phase, Shared};
use connection::{connection_lost, Gone, Parked};

/// WebSocket close code for a frame over the hard limit (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code of a normal closure.
const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code when the gateway goes away.
const CLOSE_GOING_AWAY: u16 = 1001;

struct Session {
    shared: Arc<Shared>,
    /// This session's number, for the user table and ringing decisions.
    number: u64,
    /// The id sent in `hello` (and again in `session_resumed`).
    id: String,
    peer_ip: IpAddr,
    inbox: InboxTx,
    /// The SIP user this session signed in as (or is signing in as).
    user: Option<String>,
    /// A sign-in whose REGISTER is out: it counts against the address's
    /// failure limit until its outcome is known.
    /// The user whose sign-in is out (counted in the failure limits).
    sign_in_pending: Option<String>,
    /// Messages per second from the client.
    rate: gangway_core::rate::TokenBucket,
    /// The calls: the core and the I/O it commands.
    driver: CallDriver,
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

async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    number: u64,
    id: String,
    peer_ip: IpAddr,
    preface: Vec<ServerMessage>,
) {
    let (inbox, mut inbox_rx) = mpsc::channel(crate::queues::INBOX);
    let (handover, mut handover_rx) = mpsc::channel(crate::queues::HANDOVER);
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
        features: Feature::offered(
            !shared.config.calls.echo_destination.is_empty(),
            shared.sip.is_some(),
            shared.users.is_some(),
            shared.config.auth.token_secret.is_some(),
        ),
    };
    let mut settings = shared.call_settings.clone();
    if token.is_none() {
        settings.resume_grace = None;
    }
    let (driver, mut legs) = CallDriver::new(shared.clone(), number, settings, "json", peer_ip);
    let rate = gangway_core::rate::TokenBucket::new(
        shared.config.http.max_messages_per_second,
        Instant::now(),
    );
    let mut s = Session {
        driver,
        shared,
        number,
        id,
        peer_ip,
        inbox,
        user: None,
        sign_in_pending: None,
        rate,
        outbox: std::iter::once(hello).chain(preface).collect(),
        token,
        handover,
        moving_to: None,
        parked: None,
    };
    let mut socket = Some(socket);
    let idle = Duration::from_secs(s.shared.config.http.idle_timeout_secs);
    let mut last_heard = Instant::now();
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
        let now_phase = *phase.borrow_and_update();
        match now_phase {
            // A drain reaches the core with the next request (`sync_phase`).
            Phase::Running | Phase::Draining => {}
            Phase::Terminating => {
                s.feed(Input::Shutdown);
                if let Some(mut ws) = socket.take() {
                    s.flush(&mut ws).await;
                    let _ = crate::wait::close_within(
                        &mut ws,
                        Some(CloseFrame {
                            code: CLOSE_GOING_AWAY,
                            reason: "gateway shutting down".into(),
                        }),
                    )
                    .await;
                    s.shared.metrics.ws_active.dec();
                }
                break;
            }
        }
        let deadline = s.driver.calls.poll_timeout();
        let idle_at = idle_deadline(
            last_heard,
            idle,
            s.driver.calls.is_empty() && s.user.is_none(),
        );
        let wake = tokio::select! {
            message = recv(&mut socket) => {
                last_heard = Instant::now();
                Wake::Socket(message)
            }
            _ = sleep_until(idle_at), if socket.is_some() => {
                debug!("idle socket: no call, no sign-in, nothing sent");
                if let Some(mut ws) = socket.take() {
                    let _ = crate::wait::close_within(&mut ws, Some(CloseFrame {
                            code: CLOSE_IDLE,
                            reason: "idle".into(),
                        })).await;
                    s.shared.metrics.ws_active.dec();
                }
                break;
            }
            Some(moved) = handover_rx.recv() => Wake::Handover(moved),
            Some((peer, event)) = legs.media.recv() => {
                s.driver.on_leg(peer, event);
                s.deliver();
                Wake::Other
            }
            Some((key, event)) = legs.sip.recv() => {
                s.driver.on_sip(key, event);
                s.deliver();
                Wake::Other
            }
            Some(message) = inbox_rx.recv() => {
                s.on_inbox(message);
                Wake::Other
            }
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                if s.driver.calls.parked_until().is_some_and(|t| now >= t) {
                    // A resume that claimed the token just now still wins.
                    s.revoke_token();
                    if let Ok(moved) = handover_rx.try_recv() {
                        Wake::Handover(moved)
                    } else {
                        s.expire(now);
                        break;
                    }
                } else {
                    s.driver.handle_timeout(now);
                    s.deliver();
                    Wake::Other
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
                    tokio::spawn(connection::close_superseded(old));
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
                            let moved = Box::new(Moved {
                                socket: ws,
                                outbox: std::mem::take(&mut s.outbox),
                                peer_ip: s.peer_ip,
                            });
                            match target.try_send(moved) {
                                Ok(()) => {
                                    debug!("connection handed to the resumed session");
                                    s.shared.metrics.ws_active.dec();
                                    break;
                                }
                                // Gone, or other sockets are already queued
                                // for it: this resume is refused.
                                Err(refused) => {
                                    if matches!(refused, mpsc::error::TrySendError::Full(_)) {
                                        s.shared.metrics.queue_full("handover");
                                    }
                                    let moved = refused.into_inner();
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
                        let _ = crate::wait::close_within(
                            ws,
                            Some(CloseFrame {
                                code: CLOSE_TOO_BIG,
                                reason: "frame too large or malformed".into(),
                            }),
                        )
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
    s.feed(Input::ConnectionClosed);
    s.sign_out();
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
        preface.push(connection::unknown_session().into_message());
        s.shared.metrics.ws_active.inc();
        tokio::spawn(serve_new_boxed(
            moved.socket,
            s.shared.clone(),
            moved.peer_ip,
            preface,
        ));
    }
}

impl Session {
    /// Hands one input to the core and carries out what it asks for.
    fn feed(&mut self, input: Input<gangway_signal::CallId>) {
        self.driver.feed(input);
        self.deliver();
    }

    /// What the core has for the client, as JSON messages.
    fn deliver(&mut self) {
        for item in self.driver.take_to_client() {
            match item {
                ToClient::Notify(call, n) => {
                    self.outbox.extend(core_map::notification(call, n));
                }
                ToClient::Refuse(refusal) => self.reject(core_map::refusal(refusal)),
            }
        }
    }

    fn reject(&mut self, error: ApiError) {
        debug!(code = error.code.as_str(), "{}", error.message);
        self.shared.metrics.api_error(error.code);
        self.outbox.push(error.into_message());
    }
}
