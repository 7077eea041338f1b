//! A flow's pump: the front end's outputs carried out, the core's
//! notifications handed back to it, REGISTERs relayed, bindings recorded,
//! and the socket parked and taken back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};
use gangway_core::calls::Input;
use gangway_signal::sip_ws::{Binding, FrontOutput, RegisterAnswer, RegisterRelay};
use gangway_sip::RelayedRegister;
use tracing::{debug, info, warn, Instrument};

use super::{Flow, CLOSE_POLICY, CLOSE_TOO_BIG};
use crate::drive::ToClient;
use crate::flows::FlowRef;
use crate::Shared;

impl Flow {
    pub(super) fn frame(&mut self, shared: &Shared, text: &str) {
        if !self.rate.allow(Instant::now()) {
            // No SIP app sends this much: a flood, which a close answers.
            shared.metrics.limit_refused("messages");
            return self.refuse(shared, "too_many", CLOSE_POLICY, "too many messages");
        }
        let limit = shared.config.http.max_message_bytes;
        if text.len() > limit {
            return self.refuse(shared, "too_large", CLOSE_TOO_BIG, "SIP message too large");
        }
        self.front.handle_frame(Instant::now(), text);
        self.pump();
    }

    pub(super) fn refuse(&mut self, shared: &Shared, why: &'static str, code: u16, reason: &str) {
        shared.metrics.sip_ws_rejected(why);
        self.close = Some(CloseFrame {
            code,
            reason: reason.to_string().into(),
        });
    }

    /// Carries out what the front end and the core ask for, until both
    /// are quiet (a request to the core may bring notifications back).
    pub(super) fn pump(&mut self) {
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
                    self.bind(binding);
                }
                FrontOutput::Unbind { token } => {
                    info!("unregistered");
                    self.driver.shared.flows.unbind(&token, self.driver.number);
                    self.bindings_changed();
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
    pub(super) fn deliver(&mut self) {
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

    pub(super) fn relay(&mut self, relay: RegisterRelay) {
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
        // Kept for removing the binding upstream if the flow dies.
        self.relayed
            .insert(register.contact_user.clone(), register.clone());
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
                // Only this relay waits; REGISTERs are rate-limited per socket.
                let _ = answers.send((id, answer)).await;
            }
            .in_current_span(),
        );
    }

    /// Routes a binding's calls here, unless the browser came back to a
    /// parked flow of its own: then the socket moves there.
    fn bind(&mut self, binding: Binding) {
        let shared = self.driver.shared.clone();
        let me = FlowRef {
            number: self.driver.number,
            inbox: self.inbox.clone(),
            handover: self.handover.clone(),
        };
        let last = self.relayed.get(&binding.token).cloned();
        let parked = shared.flows.bind(binding.token, me, binding.expires, last);
        if let Some(handover) = parked {
            // A connection with calls of its own stays (it cannot be
            // two flows); the binding stays with the parked one.
            if self.driver.calls.is_empty() && self.signing_in.is_none() {
                self.moving_to = Some(handover);
            }
        }
        self.bindings_changed();
    }

    /// Bindings a hand-over brought, made this flow's own.
    pub(super) fn adopt(&mut self, bindings: Vec<Binding>) {
        for binding in bindings {
            self.front.adopt(binding.clone());
            self.bind(binding);
        }
    }

    /// The socket is lost: keeps the calls for the browser to come back,
    /// when there are any and a grace period is configured. False: the
    /// flow ends now.
    pub(super) fn park(&mut self) -> bool {
        let grace = self.driver.shared.config.calls.resume_grace_secs;
        if grace == 0 || self.driver.calls.is_empty() || self.driver.account.is_some() {
            return false;
        }
        info!(
            grace_secs = grace,
            "socket lost: the calls wait for the browser"
        );
        self.parked_until = Some(Instant::now() + Duration::from_secs(grace));
        self.driver
            .shared
            .flows
            .flow_parked(self.driver.number, true);
        self.bindings_changed();
        true
    }

    /// The browser came back on a new socket (its REGISTER named this
    /// flow's token): what waited for it goes out now.
    pub(super) fn resumed(&mut self, peer: SocketAddr, bindings: Vec<Binding>) {
        info!(%peer, queued = self.outbox.len(), "the browser is back");
        self.parked_until = None;
        self.peer = peer;
        self.front.set_peer(peer);
        self.driver
            .shared
            .flows
            .flow_parked(self.driver.number, false);
        for binding in bindings {
            self.front.adopt(binding);
        }
        self.bindings_changed();
    }

    /// This connection's socket moved to the flow its browser came back to.
    pub(super) fn moved_away(&mut self) {
        let shared = self.driver.shared.clone();
        self.end(&shared);
    }

    pub(super) fn end(&mut self, shared: &Shared) {
        self.sign_out();
        self.driver.feed(Input::ConnectionClosed);
        self.driver.take_to_client();
        for token in shared.flows.flow_closed(self.driver.number) {
            tokio::spawn(
                remove_upstream_later(self.driver.shared.clone(), token).in_current_span(),
            );
        }
        self.bindings_changed();
        debug!("SIP over WebSocket flow closed");
    }

    fn bindings_changed(&self) {
        let shared = &self.driver.shared;
        shared
            .metrics
            .sip_ws_bindings
            .set(shared.flows.live() as i64);
    }
}

/// How long a binding whose flow died waits for its browser to register
/// again (JsSIP retries within seconds) before it is removed upstream.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// Removes a dead flow's binding at the registrar, unless the browser came
/// back. The un-REGISTER is the browser's last REGISTER with `Expires: 0`
/// and the next CSeq, carrying its last digest answer (the gateway knows
/// no password): registrars that accept a nonce again (kamailio without
/// `nonce_count`) remove the binding now; the others refuse, and it
/// expires on its own (calls to it get 480 meanwhile).
async fn remove_upstream_later(shared: std::sync::Arc<Shared>, token: String) {
    tokio::time::sleep(ORPHAN_GRACE).await;
    let Some(mut register) = shared.flows.orphan(&token) else {
        return;
    };
    let Some(leg) = shared.sip.as_ref() else {
        return;
    };
    register.expires = 0;
    register.cseq = register.cseq.wrapping_add(1);
    let answer = leg.service.relay_register(register).await;
    shared.metrics.sip_ws_register(answer.status);
    if (200..300).contains(&answer.status) {
        info!("a dead flow's binding was removed at the registrar");
    } else {
        info!(
            status = answer.status,
            "the registrar kept a dead flow's binding; it expires on its own"
        );
    }
}
