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
use crate::{auth, Phase, Shared};

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
    peer: SocketAddr,
    /// A REGISTER signed in with a token, until the user table answers.
    signing_in: Option<u64>,
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
    let (driver, mut legs) = CallDriver::new(shared.clone(), number, settings, "sip_ws");
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
        peer,
        signing_in: None,
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
        let deadline = match (flow.driver.calls.poll_timeout(), flow.front.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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
                flow.inbox_message(message);
                flow.pump();
            }
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                if flow.driver.calls.poll_timeout().is_some_and(|t| t <= now) {
                    flow.driver.handle_timeout(now);
                }
                flow.front.handle_timeout(now);
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
        self.front.handle_frame(Instant::now(), text);
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
                FrontOutput::SignIn { id, user, token } => self.sign_in(id, user, &token),
                FrontOutput::SignOut { user } => {
                    info!(%user, "signed out");
                    self.sign_out();
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
                ToClient::Notify(call, n) => self.front.handle_core(Instant::now(), call, n),
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

    /// A REGISTER with a bearer token (JsSIP's `authorization_jwt`): the
    /// same check and the same registration on the user's behalf as the
    /// JSON API's token sign-in.
    fn sign_in(&mut self, id: u64, user: String, token: &str) {
        let shared = self.driver.shared.clone();
        let now = Instant::now();
        let refused = |why: &str| RegisterAnswer {
            status: 403,
            reason: why.to_string(),
            ..Default::default()
        };
        let checked = (|| {
            let users = shared
                .users
                .clone()
                .ok_or("registration needs the SIP leg")?;
            if shared.sign_in_failures.is_blocked(self.peer.ip(), now) {
                return Err("too many failed sign-ins from this address");
            }
            let secret = shared
                .config
                .auth
                .token_secret
                .as_deref()
                .ok_or("token sign-in is not enabled")?;
            let subject = auth::verify_token(secret, token).map_err(|_| "invalid token")?;
            if subject != user {
                return Err("the token is for another user");
            }
            let password = shared
                .config
                .auth
                .users
                .get(&user)
                .cloned()
                .ok_or("no SIP credentials configured for this user")?;
            Ok((users, password))
        })();
        match checked {
            Ok(_)
                if self
                    .driver
                    .account
                    .as_ref()
                    .is_some_and(|(u, _)| *u == user) =>
            {
                // A refresh: the gateway keeps the registration up itself.
                let answer = RegisterAnswer {
                    status: 200,
                    reason: "OK".into(),
                    ..Default::default()
                };
                self.front.handle_register_answer(id, answer);
            }
            Ok((users, password)) => {
                info!(%user, "sign-in with a token");
                self.sign_out();
                users.sign_in(
                    self.driver.number,
                    self.inbox.clone(),
                    user.clone(),
                    password.clone(),
                    true,
                );
                self.driver.account = Some((user, password));
                self.signing_in = Some(id);
            }
            Err(why) => {
                info!(%user, why, "token sign-in refused");
                shared.sign_in_failures.record_failure(self.peer.ip(), now);
                shared.metrics.registration_failed(None);
                self.front.handle_register_answer(id, refused(why));
            }
        }
    }

    fn sign_out(&mut self) {
        if self.driver.account.take().is_some() {
            if let Some(users) = &self.driver.shared.users {
                users.sign_out(self.driver.number);
            }
        }
    }

    fn inbox_message(&mut self, message: Inbox) {
        match message {
            Inbox::Incoming(ringing) => self.driver.ring(ringing),
            Inbox::Withdrawn { call, reason, code } => self.driver.withdraw(call, reason, code),
            Inbox::Registered { expires, .. } => {
                if let Some(id) = self.signing_in.take() {
                    let answer = RegisterAnswer {
                        status: 200,
                        reason: "OK".into(),
                        expires: Some(expires),
                        ..Default::default()
                    };
                    self.front.handle_register_answer(id, answer);
                }
            }
            Inbox::RegistrationFailed {
                reason,
                still_signed_in,
                ..
            } => {
                if !still_signed_in {
                    self.driver.account = None;
                }
                if let Some(id) = self.signing_in.take() {
                    // The registrar refused the gateway's credentials for
                    // the user: nothing the browser can answer.
                    let answer = RegisterAnswer {
                        status: 403,
                        reason,
                        ..Default::default()
                    };
                    self.front.handle_register_answer(id, answer);
                }
            }
            Inbox::Unregistered { .. } => self.driver.account = None,
        }
    }

    fn end(mut self, shared: &Shared) {
        self.sign_out();
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
