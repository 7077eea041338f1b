//! REGISTER with a bearer token (JsSIP's `authorization_jwt`), and what
//! the user table says about such a sign-in and the user's calls.

use std::time::Instant;

use gangway_signal::sip_ws::RegisterAnswer;
use tracing::info;

use super::Flow;
use crate::auth;
use crate::users::Inbox;

impl Flow {
    /// A REGISTER with a bearer token (JsSIP's `authorization_jwt`): the
    /// same check and the same registration on the user's behalf as the
    /// JSON API's token sign-in.
    pub(super) fn sign_in(&mut self, id: u64, user: String, token: &str) {
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
            if shared.sign_in_failures.is_blocked(&self.peer.ip(), now) {
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
                shared.sign_in_failures.record_failure(&self.peer.ip(), now);
                shared.metrics.registration_failed(None);
                self.front.handle_register_answer(id, refused(why));
            }
        }
    }

    pub(super) fn sign_out(&mut self) {
        if self.driver.account.take().is_some() {
            if let Some(users) = &self.driver.shared.users {
                users.sign_out(self.driver.number);
            }
        }
    }

    pub(super) fn inbox_message(&mut self, message: Inbox) {
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
}
