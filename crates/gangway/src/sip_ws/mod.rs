//! One SIP over WebSocket connection (`/sip`, RFC 7118): a flow. The
//! browser-side SIP is `gangway_signal::sip_ws::SipWsFront`'s, every call
//! decision the core's (a [`CallDriver`], as for the JSON API); this loop
//! only moves frames, legs' events, relayed REGISTERs and ringing calls
//! between them.
//!
//! - `flow.rs`: the front end's outputs carried out, the core's
//!   notifications handed to it, REGISTERs relayed;
//! - `sign_in.rs`: REGISTER with a bearer token, and the user table's news.
//!
//! A flow whose socket is lost while it has calls is *parked* for
//! `calls.resume_grace_secs`: JsSIP keeps its calls across a reconnect, and
//! when the same browser registers again on a new socket (the same flow
//! token), that socket moves to the parked flow, which goes on with its
//! calls; in-dialog requests then go over the newest socket.

mod flow;
mod sign_in;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use gangway_core::calls::Input;
use gangway_signal::sip_ws::{Binding, FrontSettings, RegisterAnswer, SipWsFront};
use gangway_sip::RelayedRegister;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, Instrument};

use crate::drive::CallDriver;
use crate::wait::{idle_deadline, recv, sleep_until, CLOSE_IDLE};
use crate::{Phase, Shared};

/// Server pings keep NATs and proxies from dropping an idle flow.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// WebSocket close code for a frame over the size limit (RFC 6455).
const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code for a client that breaks a limit (RFC 6455 1008).
const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code when the gateway goes away.
const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code of a normal closure: the browser is done.
const CLOSE_NORMAL: u16 = 1000;
/// Messages a parked flow keeps for its browser before it gives up.
const PARKED_QUEUE: usize = 256;

/// A socket moving to the parked flow its browser came back to.
pub(crate) struct Moved {
    socket: WebSocket,
    peer: SocketAddr,
    /// What the new connection's REGISTER bound.
    bindings: Vec<Binding>,
}

/// Where a parked flow takes a socket over.
/// Boxed, as `crate::resume::Handover` is: a channel's first block of 32
/// slots would hold 32 WebSockets.
pub(crate) type Handover = mpsc::Sender<Box<Moved>>;

pub async fn run(socket: WebSocket, shared: Arc<Shared>, peer: SocketAddr, host: String) {
    shared.metrics.sip_ws_total.inc();
    start(socket, shared, peer, host, Vec::new()).await;
}

/// A flow on `socket`, with `adopted` bindings from a hand-over that came
/// too late (the parked flow had ended).
fn start(
    socket: WebSocket,
    shared: Arc<Shared>,
    peer: SocketAddr,
    host: String,
    adopted: Vec<Binding>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        let (number, id) = shared.next_session_id();
        let span = info_span!("sip_ws", flow = %id);
        serve(socket, shared, number, peer, host, adopted)
            .instrument(span)
            .await;
    })
}

struct Flow {
    front: SipWsFront,
    driver: CallDriver,
    inbox: crate::users::InboxTx,
    register_tx: mpsc::Sender<(u64, RegisterAnswer)>,
    /// This flow's hand-over address, recorded with its bindings.
    handover: Handover,
    outbox: Vec<Message>,
    /// Set when the front end asks to close the socket.
    close: Option<CloseFrame>,
    peer: SocketAddr,
    host: String,
    /// A REGISTER signed in with a token, until the user table answers.
    signing_in: Option<u64>,
    /// The socket is lost; the calls wait for the browser until then.
    parked_until: Option<Instant>,
    /// The browser came back on this connection to a parked flow: the
    /// socket moves there once what is queued for it is sent.
    moving_to: Option<Handover>,
    /// The last REGISTER relayed for each flow token.
    relayed: HashMap<String, RelayedRegister>,
    /// Messages per second from the browser.
    rate: gangway_core::rate::TokenBucket,
}

/// What ended a flow's wait for input.
enum Wake {
    Frame(Option<Result<Message, axum::Error>>),
    Moved(Box<Moved>),
    Other,
}

async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    number: u64,
    peer: SocketAddr,
    host: String,
    adopted: Vec<Binding>,
) {
    debug!(%peer, "SIP over WebSocket flow open");
    shared.metrics.sip_ws_active.inc();
    let (inbox, mut inbox_rx) = mpsc::channel(crate::queues::INBOX);
    let (register_tx, mut registers) = mpsc::channel(crate::queues::REGISTER_ANSWERS);
    let (handover, mut handover_rx) = mpsc::channel(crate::queues::HANDOVER);
    let mut settings = shared.call_settings.clone();
    // The core's own grace is the JSON API's resume; a parked flow keeps
    // its calls itself (see the module docs).
    settings.resume_grace = None;
    let (driver, mut legs) = CallDriver::new(shared.clone(), number, settings, "sip_ws", peer.ip());
    let front_settings = FrontSettings {
        host: host.clone(),
        ..shared.sip_ws.clone()
    };
    let mut flow = Flow {
        front: SipWsFront::new(front_settings, peer),
        driver,
        inbox,
        register_tx,
        handover,
        outbox: Vec::new(),
        close: None,
        peer,
        host,
        signing_in: None,
        parked_until: None,
        moving_to: None,
        relayed: HashMap::new(),
        rate: gangway_core::rate::TokenBucket::new(
            shared.config.http.max_messages_per_second,
            Instant::now(),
        ),
    };
    flow.adopt(adopted);
    let mut socket = Some(socket);
    let idle = Duration::from_secs(shared.config.http.idle_timeout_secs);
    let write_limit = Duration::from_secs(shared.config.http.write_timeout_secs);
    let mut last_heard = Instant::now();
    let mut phase = shared.phase.subscribe();
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        if let Some(ws) = socket.as_mut() {
            if !flush(ws, &mut flow.outbox, write_limit).await {
                debug!("sending failed: the socket is lost");
                socket = None;
                shared.metrics.sip_ws_active.dec();
                if !flow.park() {
                    break;
                }
            } else if let Some(frame) = flow.close.take() {
                let _ = crate::wait::close_within(ws, Some(frame)).await;
                break;
            } else if let Some(target) = flow.moving_to.take() {
                let moved = Box::new(Moved {
                    socket: socket.take().expect("the socket is here"),
                    peer: flow.peer,
                    bindings: flow.front.bindings().to_vec(),
                });
                match target.try_send(moved) {
                    Ok(()) => {
                        info!("the browser came back: its socket moves to its parked flow");
                        shared.metrics.sip_ws_active.dec();
                        return flow.moved_away();
                    }
                    // The parked flow ended just now, or other sockets are
                    // already queued for it: this one binds.
                    Err(refused) => {
                        if matches!(refused, mpsc::error::TrySendError::Full(_)) {
                            shared.metrics.queue_full("handover");
                        }
                        let moved = refused.into_inner();
                        socket = Some(moved.socket);
                        flow.adopt(moved.bindings);
                    }
                }
            }
        } else if flow.parked_until.is_none()
            || flow.driver.calls.is_empty()
            || flow.outbox.len() > PARKED_QUEUE
        {
            break;
        }
        let now_phase = *phase.borrow_and_update();
        match now_phase {
            Phase::Running => {}
            Phase::Draining => flow.driver.feed(Input::StopAccepting),
            Phase::Terminating => {
                flow.driver.feed(Input::Shutdown);
                flow.pump();
                if let Some(mut ws) = socket.take() {
                    flush(&mut ws, &mut flow.outbox, write_limit).await;
                    let _ = crate::wait::close_within(
                        &mut ws,
                        Some(CloseFrame {
                            code: CLOSE_GOING_AWAY,
                            reason: "gateway shutting down".into(),
                        }),
                    )
                    .await;
                    shared.metrics.sip_ws_active.dec();
                }
                break;
            }
        }
        let deadline = [
            flow.driver.calls.poll_timeout(),
            flow.front.poll_timeout(),
            flow.parked_until,
        ]
        .into_iter()
        .flatten()
        .min();
        let idle_at = idle_deadline(
            last_heard,
            idle,
            flow.driver.calls.is_empty()
                && flow.front.bindings().is_empty()
                && flow.driver.account.is_none(),
        );
        let wake = tokio::select! {
            message = recv(&mut socket) => {
                last_heard = Instant::now();
                Wake::Frame(message)
            }
            _ = sleep_until(idle_at), if socket.is_some() => {
                debug!("idle flow: no registration, no call, nothing sent");
                flow.close = Some(CloseFrame {
                    code: CLOSE_IDLE,
                    reason: "idle".into(),
                });
                Wake::Other
            }
            Some(moved) = handover_rx.recv() => Wake::Moved(moved),
            Some((peer, event)) = legs.media.recv() => {
                flow.driver.on_leg(peer, event);
                flow.pump();
                Wake::Other
            }
            Some((key, event)) = legs.sip.recv() => {
                flow.driver.on_sip(key, event);
                flow.pump();
                Wake::Other
            }
            Some((id, answer)) = registers.recv() => {
                flow.front.handle_register_answer(id, answer);
                flow.pump();
                Wake::Other
            }
            Some(message) = inbox_rx.recv() => {
                flow.inbox_message(message);
                flow.pump();
                Wake::Other
            }
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                if flow.parked_until.is_some_and(|t| t <= now) {
                    info!("the browser did not come back: its calls end");
                    break;
                }
                if flow.driver.calls.poll_timeout().is_some_and(|t| t <= now) {
                    flow.driver.handle_timeout(now);
                }
                flow.front.handle_timeout(now);
                flow.pump();
                Wake::Other
            }
            _ = ping.tick(), if socket.is_some() => {
                flow.outbox.push(Message::Ping(Default::default()));
                Wake::Other
            }
            _ = phase.changed() => Wake::Other,
        };
        match wake {
            Wake::Other => {}
            Wake::Moved(moved) => {
                let Moved {
                    socket: ws,
                    peer,
                    bindings,
                } = *moved;
                if socket.replace(ws).is_none() {
                    shared.metrics.sip_ws_active.inc();
                }
                flow.resumed(peer, bindings);
            }
            Wake::Frame(message) => {
                let lost = match message {
                    Some(Ok(Message::Text(text))) => {
                        flow.frame(&shared, text.as_str());
                        continue;
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        match std::str::from_utf8(&bytes) {
                            Ok(text) => flow.frame(&shared, text),
                            Err(_) => flow.refuse(&shared, "not_utf8", 1007, "SIP must be UTF-8"),
                        }
                        continue;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map(|f| f.code);
                        debug!(?code, "browser closed the socket");
                        !matches!(code, None | Some(CLOSE_NORMAL))
                    }
                    None => true,
                    Some(Err(e)) => {
                        debug!("socket failed: {e}");
                        flow.refuse(
                            &shared,
                            "too_large",
                            CLOSE_TOO_BIG,
                            "frame too large or malformed",
                        );
                        continue;
                    }
                };
                socket = None;
                shared.metrics.sip_ws_active.dec();
                if !(lost && flow.park()) {
                    break;
                }
            }
        }
    }
    if socket.is_some() {
        shared.metrics.sip_ws_active.dec();
    }
    flow.end(&shared);
    // A browser that came back just as this flow ended: its socket goes
    // on as a flow of its own with what it registered.
    handover_rx.close();
    while let Ok(moved) = handover_rx.try_recv() {
        tokio::spawn(start(
            moved.socket,
            shared.clone(),
            moved.peer,
            flow.host.clone(),
            moved.bindings,
        ));
    }
}

/// Sends what is queued; false when the socket failed or stopped taking
/// frames for `limit`.
async fn flush(ws: &mut WebSocket, outbox: &mut Vec<Message>, limit: Duration) -> bool {
    for message in std::mem::take(outbox) {
        if !crate::wait::send_within(ws, message, limit).await {
            return false;
        }
    }
    true
}
