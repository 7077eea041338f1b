//! Signing in as a SIP user (registration on the user's behalf) and what
//! the user table tells the session: registration news and ringing calls.

use std::time::Instant;

use gangway_core::valid_sip_user;
use gangway_signal::{ApiError, ErrorCode, ServerMessage};
use tracing::info;

use super::Session;
use crate::auth;
use crate::users::Inbox;

impl Session {
    /// `register`: sign in as a SIP user with a password (checked by the
    /// registrar) or a token (checked here, credentials from the config).
    pub(super) fn register(
        &mut self,
        user: Option<String>,
        password: Option<String>,
        token: Option<String>,
    ) {
        let Some(users) = self.shared.users.clone() else {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                None,
                "registration needs the SIP leg (sip.enabled)",
            ));
        };
        let now = Instant::now();
        if self.shared.sign_in_failures.is_blocked(&self.peer_ip, now) {
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
        if self.sign_in_pending.is_none() {
            let shared = &self.shared;
            if !shared.sign_in_failures.begin(&self.peer_ip, now) {
                return self.reject(ApiError::new(
                    ErrorCode::RateLimited,
                    None,
                    "too many sign-ins from this address in flight or failed; try again later",
                ));
            }
            // Guessing one user's password from many addresses: counted per
            // user too, so the registrar never sees a brute force.
            if !shared.sign_in_failures_by_user.begin(&user, now) {
                shared.sign_in_failures.end(&self.peer_ip, false, now);
                return self.reject(ApiError::new(
                    ErrorCode::RateLimited,
                    None,
                    "too many sign-ins for this user in flight or failed; try again later",
                ));
            }
            self.sign_in_pending = Some(user.clone());
        }
        info!(%user, by_token, "sign-in requested");
        self.user = Some(user.clone());
        users.sign_in(self.number, self.inbox.clone(), user, password, by_token);
    }

    /// The pending sign-in's outcome is known (`failed`: the registrar
    /// refused the credentials).
    fn sign_in_settled(&mut self, failed: bool) {
        if let Some(user) = self.sign_in_pending.take() {
            let now = Instant::now();
            self.shared.sign_in_failures.end(&self.peer_ip, failed, now);
            self.shared.sign_in_failures_by_user.end(&user, failed, now);
        }
    }

    fn sign_in_refused(&mut self, user: String, code: Option<u16>, reason: String) {
        info!(%user, ?code, %reason, "sign-in refused");
        self.shared
            .sign_in_failures
            .record_failure(&self.peer_ip, Instant::now());
        self.shared.metrics.registration_failed(code);
        self.outbox
            .push(ServerMessage::RegistrationFailed { user, code, reason });
    }

    pub(super) fn unregister(&mut self) {
        let Some(user) = self.user.take() else {
            return self.reject(ApiError::new(
                ErrorCode::InvalidState,
                None,
                "not signed in",
            ));
        };
        self.sign_in_settled(false);
        if let Some(users) = &self.shared.users {
            users.sign_out(self.number);
        }
        self.outbox.push(ServerMessage::Unregistered { user });
    }

    /// The session is over: leave the user's registration.
    pub(super) fn sign_out(&mut self) {
        self.sign_in_settled(false);
        if let Some(users) = &self.shared.users {
            if self.user.take().is_some() {
                users.sign_out(self.number);
            }
        }
    }

    pub(super) fn on_inbox(&mut self, message: Inbox) {
        match message {
            Inbox::Registered { user, expires } => {
                if self.user.as_ref() == Some(&user) {
                    self.sign_in_settled(false);
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
                    let refused = matches!(code, Some(401 | 403 | 407));
                    if self.sign_in_pending.is_some() {
                        self.sign_in_settled(refused);
                    } else if refused {
                        self.shared
                            .sign_in_failures
                            .record_failure(&self.peer_ip, Instant::now());
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
                self.driver.ring(ringing);
                self.deliver();
            }
            Inbox::Withdrawn { call, reason, code } => {
                self.driver.withdraw(call, reason, code);
                self.deliver();
            }
        }
    }
}
