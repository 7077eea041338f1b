//! One SIP over WebSocket connection (`/sip`, RFC 7118): a flow. The
//! browser-side SIP is `gangway_signal::sip_ws::SipWsFront`'s, every call
//! decision the core's (a [`CallDriver`], as for the JSON API); this loop
//! only moves frames, legs' events, relayed REGISTERs and ringing calls
//! between them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use gangway_core::calls::Input;
use gangway_signal::sip_ws::{FrontOutput, FrontSettings, RegisterAnswer, SipWsFront};
use gangway_sip::RelayedRegister;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::drive::{CallDriver, ToClient};
use crate::users::Inbox;
use crate::{Phase, Shared};

/// Server pings keep NATs and proxies from dropping an idle flow.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// WebSocket close code for a frame over the size limit (RFC 6455).
const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code when the gateway goes away.
const CLOSE_GOING_AWAY: u16 = 1001;

pub async fn run(socket: WebSocket, shared: Arc<Shared>, peer: SocketAddr, host: String) {
    let (number, id) = shared.next_session_id();
    shared.metrics.sip_ws_total.inc();
    shared.metrics.sip_ws_active.inc();
    let span = info_span!("sip_ws", flow = %id, peer = %peer);
    serve(socket, shared.clone(), number, peer, host)
        .instrument(span)
        .await;
    shared.metrics.sip_ws_active.dec();
}

struct Flow {
    front: SipWsFront,
    driver: CallDriver,
    inbox: crate::users::InboxTx,
    register_tx: mpsc::UnboundedSender<(u64, RegisterAnswer)>,
    outbox: Vec<Message>,
    /// Set when the front end asks to close the socket.
    close: Option<CloseFrame>,
}

async fn serve(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    number: u64,
    peer: SocketAddr,
    host: String,
) {
    debug!("SIP over WebSocket flow open");
    let (inbox, mut inbox_rx) = mpsc::unbounded_channel();
    let (register_tx, mut registers) = mpsc::unbounded_channel();
    let mut settings = shared.call_settings.clone();
    // A lost flow ends its calls: JsSIP and SIP.js do not resume a call
    // on a new socket.
    settings.resume_grace = None;
    let (driver, mut legs) = CallDriver::new(shared.clone(), number, settings);
    let front_settings = FrontSettings {
        host,
        ..shared.sip_ws.clone()
    };
    let mut flow = Flow {
        front: SipWsFront::new(front_settings, peer),
        driver,
        inbox,
        register_tx,
        outbox: Vec::new(),
        close: None,
    };
    let mut phase = shared.phase.subscribe();
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        let mut failed = false;
        for message in std::mem::take(&mut flow.outbox) {
            if socket.send(message).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            debug!("sending failed: the flow is gone");
            return flow.end(&shared);
        }
        if let Some(frame) = flow.close.take() {
            let _ = socket.send(Message::Close(Some(frame))).await;
            return flow.end(&shared);
        }
        let now_phase = *phase.borrow_and_update();
        match now_phase {
            Phase::Running => {}
            Phase::Draining => flow.driver.feed(Input::StopAccepting),
            Phase::Terminating => {
                flow.driver.feed(Input::Shutdown);
                flow.pump();
                for message in flow.outbox.drain(..) {
                    let _ = socket.send(message).await;
                }
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: CLOSE_GOING_AWAY,
                        reason: "gateway shutting down".into(),
                    })))
                    .await;
                return flow.end(&shared);
            }
        }
        let deadline = flow.driver.calls.poll_timeout();
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => flow.frame(&shared, text.as_str()),
                Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                    Ok(text) => flow.frame(&shared, text),
                    Err(_) => flow.refuse(&shared, "not_utf8", 1007, "SIP must be UTF-8"),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    debug!("browser closed the flow");
                    return flow.end(&shared);
                }
                Some(Err(e)) => {
                    debug!("flow failed: {e}");
                    flow.refuse(&shared, "too_large", CLOSE_TOO_BIG, "frame too large or malformed");
                }
            },
            Some((peer, event)) = legs.media.recv() => {
                flow.driver.on_leg(peer, event);
                flow.pump();
            }
            Some((key, event)) = legs.sip.recv() => {
                flow.driver.on_sip(key, event);
                flow.pump();
            }
            Some((id, answer)) = registers.recv() => {
                flow.front.handle_register_answer(id, answer);
                flow.pump();
            }
            Some(message) = inbox_rx.recv() => {
                match message {
                    Inbox::Incoming(ringing) => flow.driver.ring(ringing),
                    Inbox::Withdrawn { call, reason, code } => {
                        flow.driver.withdraw(call, reason, code)
                    }
                    _ => {}
                }
                flow.pump();
            }
            _ = sleep_until(deadline) => {
                flow.driver.handle_timeout(Instant::now());
                flow.pump();
            }
            _ = ping.tick() => flow.outbox.push(Message::Ping(Default::default())),
            _ = phase.changed() => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Flow {
    fn frame(&mut self, shared: &Shared, text: &str) {
        let limit = shared.config.http.max_message_bytes;
        if text.len() > limit {
            return self.refuse(shared, "too_large", CLOSE_TOO_BIG, "SIP message too large");
        }
        self.front.handle_frame(text);
        self.pump();
    }

    fn refuse(&mut self, shared: &Shared, why: &'static str, code: u16, reason: &str) {
        shared.metrics.sip_ws_rejected(why);
        self.close = Some(CloseFrame {
            code,
            reason: reason.to_string().into(),
        });
    }

    /// Carries out what the front end and the core ask for, until both
    /// are quiet (a request to the core may bring notifications back).
    fn pump(&mut self) {
        self.deliver();
        while let Some(output) = self.front.poll_output() {
            match output {
                FrontOutput::Send(text) => self.outbox.push(Message::Text(text.into())),
                FrontOutput::Core(request) => {
                    self.driver.feed(Input::Request(request));
                    self.deliver();
                }
                FrontOutput::Register(relay) => self.relay(relay),
                FrontOutput::Bind(binding) => {
                    info!(user = %binding.user, expires = binding.expires, "registered");
                    let shared = &self.driver.shared;
                    shared.flows.bind(
                        binding.token,
                        self.driver.number,
                        self.inbox.clone(),
                        binding.expires,
                    );
                    shared
                        .metrics
                        .sip_ws_bindings
                        .set(shared.flows.live() as i64);
                }
                FrontOutput::Unbind { token } => {
                    info!("unregistered");
                    let shared = &self.driver.shared;
                    shared.flows.unbind(&token, self.driver.number);
                    shared
                        .metrics
                        .sip_ws_bindings
                        .set(shared.flows.live() as i64);
                }
                FrontOutput::Rejected(why) => {
                    debug!(why, "SIP message refused");
                    self.driver.shared.metrics.sip_ws_rejected(why);
                }
                FrontOutput::Close { code, reason } => {
                    self.close = Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    });
                }
            }
        }
    }

    /// What the core has for the browser, handed to the front end.
    fn deliver(&mut self) {
        for item in self.driver.take_to_client() {
            match item {
                ToClient::Notify(call, n) => self.front.handle_core(call, n),
                ToClient::Refuse(refusal) => {
                    debug!(problem = ?refusal.problem, "{}", refusal.message);
                    self.front.handle_refusal(refusal);
                }
            }
        }
    }

    fn relay(&mut self, relay: gangway_signal::sip_ws::RegisterRelay) {
        let shared = self.driver.shared.clone();
        let Some(leg) = shared.sip.as_ref() else {
            return self.front.handle_register_answer(
                relay.id,
                RegisterAnswer {
                    status: 503,
                    reason: "SIP leg disabled".into(),
                    ..Default::default()
                },
            );
        };
        let service = leg.service.clone();
        let register = RelayedRegister {
            trunk: leg.trunk.clone(),
            request_uri: relay.request_uri,
            from: relay.from,
            to: relay.to,
            call_id: relay.call_id,
            cseq: relay.cseq,
            credentials: relay.credentials,
            contact_user: relay.token,
            expires: relay.expires,
        };
        let answers = self.register_tx.clone();
        let id = relay.id;
        tokio::spawn(
            async move {
                let a = service.relay_register(register).await;
                shared.metrics.sip_ws_register(a.status);
                if a.status >= 300 && a.status != 401 && a.status != 407 {
                    warn!(status = a.status, reason = %a.reason, "relayed REGISTER refused");
                }
                let answer = RegisterAnswer {
                    status: a.status,
                    reason: a.reason,
                    challenge: a.challenge,
                    min_expires: a.min_expires,
                    expires: a.expires,
                };
                let _ = answers.send((id, answer));
            }
            .in_current_span(),
        );
    }

    fn end(mut self, shared: &Shared) {
        self.driver.feed(Input::ConnectionClosed);
        self.driver.take_to_client();
        shared.flows.flow_closed(self.driver.number);
        shared
            .metrics
            .sip_ws_bindings
            .set(shared.flows.live() as i64);
        debug!("SIP over WebSocket flow closed");
    }
}
