//! Signed-in SIP users: one registration per user for this instance, shared
//! by every session (browser tab) signed in as that user. One task owns
//! the table; sessions and the inbound-call coordinator talk to it by
//! channel, so there is no lock to hold across an await.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gangway_core::EndReason;
use gangway_signal::CallId;
use gangway_sip::{RegEvent, RegistrationHandle, RegistrationRequest, SipService, Trunk};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::inbound::Ringing;
use crate::metrics::Metrics;

/// What a session hears about its user's registration and calls.
#[derive(Debug)]
pub(crate) enum Inbox {
    Registered {
        user: String,
        expires: u32,
    },
    /// `still_signed_in`: a failed refresh (the registration is retried);
    /// otherwise the session is no longer signed in.
    RegistrationFailed {
        user: String,
        code: Option<u16>,
        reason: String,
        still_signed_in: bool,
    },
    /// The registration ended without the session asking (gateway stopping).
    Unregistered {
        user: String,
    },
    Incoming(Arc<Ringing>),
    /// A ringing call stopped ringing here.
    Withdrawn {
        call: CallId,
        reason: EndReason,
        code: Option<u16>,
    },
}

pub(crate) type InboxTx = mpsc::Sender<Inbox>;

/// Who an inbound call for a user should ring.
pub(crate) enum Lookup {
    /// Nobody signed in as this user here (404).
    Unknown,
    /// Registered, but every session has gone (within the grace period) (480).
    NoSessions,
    Sessions(Vec<(u64, InboxTx)>),
}

enum Command {
    SignIn {
        session: u64,
        inbox: InboxTx,
        user: String,
        password: String,
        /// Signed in with a token: the password is the gateway's own.
        by_token: bool,
    },
    SignOut {
        session: u64,
    },
    Lookup {
        user: String,
        reply: oneshot::Sender<Lookup>,
    },
    Registration(u64, RegEvent),
    GraceOver {
        user: String,
        epoch: u64,
    },
}

/// Cheap handle to the user table.
#[derive(Clone)]
pub(crate) struct Users {
    commands: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
}

impl Users {
    pub(crate) fn sign_in(
        &self,
        session: u64,
        inbox: InboxTx,
        user: String,
        password: String,
        by_token: bool,
    ) {
        let sign_in = Command::SignIn {
            session,
            inbox,
            user,
            password,
            by_token,
        };
        // Sign-ins in flight are limited per address (`auth`), so the
        // few that wait for room are bounded too.
        crate::queues::deliver(&self.commands, sign_in, "user_commands", &self.metrics);
    }

    pub(crate) fn sign_out(&self, session: u64) {
        let sign_out = Command::SignOut { session };
        crate::queues::deliver(&self.commands, sign_out, "user_commands", &self.metrics);
    }

    pub(crate) async fn lookup(&self, user: &str) -> Lookup {
        let (reply, rx) = oneshot::channel();
        let lookup = Command::Lookup {
            user: user.to_string(),
            reply,
        };
        match self.commands.try_send(lookup) {
            Ok(()) => {}
            // Far behind: the inbound call is shed (480) rather than queued.
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.queue_full("user_commands");
                warn!(user, "user table's queue full: inbound call not rung");
                return Lookup::NoSessions;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Lookup::Unknown,
        }
        rx.await.unwrap_or(Lookup::Unknown)
    }
}

/// Settings of the user table.
pub(crate) struct UsersConfig {
    /// Registrar address and domain (credentials are filled in per user).
    pub registrar: Trunk,
    pub expires: u32,
    pub grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegState {
    Pending,
    Registered {
        expires: u32,
    },
    /// A refresh failed; retrying with back-off.
    Retrying,
}

struct User {
    key: u64,
    password: String,
    handle: RegistrationHandle,
    state: RegState,
    sessions: HashMap<u64, InboxTx>,
    /// Bumped whenever the session set changes, so a stale grace timer does nothing.
    epoch: u64,
    /// The un-REGISTER is under way; a new sign-in waits for it to finish.
    unregistering: bool,
}

struct Table {
    sip: Arc<SipService>,
    config: UsersConfig,
    metrics: Arc<Metrics>,
    users: HashMap<String, User>,
    /// Registration key → user, until the registration's last event.
    keys: HashMap<u64, String>,
    next_key: u64,
    reg_events: gangway_sip::RegEventTx,
    /// For the grace timers; weak, so the task ends with the last `Users`.
    commands: mpsc::WeakSender<Command>,
}

/// Starts the user table's task.
pub(crate) fn start(sip: Arc<SipService>, config: UsersConfig, metrics: Arc<Metrics>) -> Users {
    let (commands, mut rx) = mpsc::channel(crate::queues::USER_COMMANDS);
    let (reg_events, mut reg_rx) = mpsc::channel(crate::queues::REGISTRATION_EVENTS);
    let mut table = Table {
        sip,
        config,
        metrics: metrics.clone(),
        users: HashMap::new(),
        keys: HashMap::new(),
        next_key: 1,
        reg_events,
        commands: commands.downgrade(),
    };
    tokio::spawn(async move {
        loop {
            let command = tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => command,
                    // The gateway is gone.
                    None => break,
                },
                Some((key, event)) = reg_rx.recv() => Command::Registration(key, event),
            };
            table.handle(command);
        }
    });
    Users { commands, metrics }
}

impl Table {
    fn handle(&mut self, command: Command) {
        match command {
            Command::SignIn {
                session,
                inbox,
                user,
                password,
                by_token,
            } => self.sign_in(session, inbox, user, password, by_token),
            Command::SignOut { session } => self.sign_out(session),
            Command::Lookup { user, reply } => {
                let answer = match self.users.get(&user) {
                    Some(u)
                        if matches!(u.state, RegState::Registered { .. } | RegState::Retrying) =>
                    {
                        if u.sessions.is_empty() {
                            Lookup::NoSessions
                        } else {
                            Lookup::Sessions(
                                u.sessions.iter().map(|(s, tx)| (*s, tx.clone())).collect(),
                            )
                        }
                    }
                    _ => Lookup::Unknown,
                };
                let _ = reply.send(answer);
            }
            Command::Registration(key, event) => self.on_registration(key, event),
            Command::GraceOver { user, epoch } => {
                if let Some(u) = self.users.get_mut(&user) {
                    if u.epoch == epoch && u.sessions.is_empty() && !u.unregistering {
                        info!(%user, "last session gone for the grace period, unregistering");
                        u.unregistering = true;
                        u.handle.unregister();
                    }
                }
            }
        }
    }

    fn sign_in(
        &mut self,
        session: u64,
        inbox: InboxTx,
        user: String,
        password: String,
        by_token: bool,
    ) {
        // A session holds at most one user: signing in again replaces it.
        self.sign_out(session);
        if let Some(u) = self.users.get_mut(&user) {
            // Joining a live registration needs the same proof it was made
            // with: the password that the registrar accepted, or a token.
            if !by_token && !constant_time_eq(u.password.as_bytes(), password.as_bytes()) {
                crate::queues::deliver(
                    &inbox,
                    Inbox::RegistrationFailed {
                        user,
                        code: Some(403),
                        reason: "credentials do not match this user's registration".into(),
                        still_signed_in: false,
                    },
                    "session_inbox",
                    &self.metrics,
                );
                self.metrics.registration_failed(Some(403));
                return;
            }
            u.epoch += 1;
            if let RegState::Registered { expires } = u.state {
                crate::queues::deliver(
                    &inbox,
                    Inbox::Registered {
                        user: user.clone(),
                        expires,
                    },
                    "session_inbox",
                    &self.metrics,
                );
            }
            u.sessions.insert(session, inbox);
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        let mut registrar = self.config.registrar.clone();
        registrar.username = Some(user.clone());
        registrar.password = Some(password.clone());
        let handle = self.sip.register(
            RegistrationRequest {
                key,
                registrar,
                user: user.clone(),
                expires: self.config.expires,
            },
            self.reg_events.clone(),
        );
        self.keys.insert(key, user.clone());
        self.users.insert(
            user,
            User {
                key,
                password,
                handle,
                state: RegState::Pending,
                sessions: HashMap::from([(session, inbox)]),
                epoch: 0,
                unregistering: false,
            },
        );
    }

    fn sign_out(&mut self, session: u64) {
        let grace = self.config.grace;
        for (name, u) in self.users.iter_mut() {
            if u.sessions.remove(&session).is_none() {
                continue;
            }
            u.epoch += 1;
            if u.sessions.is_empty() && !u.unregistering {
                debug!(user = %name, ?grace, "last session gone, unregistering after the grace period");
                let commands = self.commands.clone();
                let (user, epoch) = (name.clone(), u.epoch);
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    if let Some(commands) = commands.upgrade() {
                        let _ = commands.send(Command::GraceOver { user, epoch }).await;
                    }
                });
            }
        }
    }

    fn on_registration(&mut self, key: u64, event: RegEvent) {
        let Some(name) = self.keys.get(&key).cloned() else {
            return;
        };
        let current = self.users.get(&name).is_some_and(|u| u.key == key);
        match event {
            RegEvent::Registered { expires } if current => {
                let Some(u) = self.users.get_mut(&name) else {
                    return;
                };
                if !matches!(u.state, RegState::Registered { .. }) {
                    self.metrics.registrations_active.inc();
                }
                u.state = RegState::Registered { expires };
                for inbox in u.sessions.values() {
                    crate::queues::deliver(
                        inbox,
                        Inbox::Registered {
                            user: name.clone(),
                            expires,
                        },
                        "session_inbox",
                        &self.metrics,
                    );
                }
            }
            RegEvent::Failed {
                status,
                reason,
                retrying,
            } if current => {
                self.metrics.registration_failed(Some(status));
                let Some(u) = self.users.get_mut(&name) else {
                    return;
                };
                for inbox in u.sessions.values() {
                    crate::queues::deliver(
                        inbox,
                        Inbox::RegistrationFailed {
                            user: name.clone(),
                            code: Some(status),
                            reason: reason.clone(),
                            still_signed_in: retrying,
                        },
                        "session_inbox",
                        &self.metrics,
                    );
                }
                if retrying {
                    if matches!(u.state, RegState::Registered { .. }) {
                        self.metrics.registrations_active.dec();
                    }
                    u.state = RegState::Retrying;
                } else {
                    // The first REGISTER failed: nobody is signed in as this user.
                    u.sessions.clear();
                    u.unregistering = true;
                }
            }
            RegEvent::Unregistered => {
                self.keys.remove(&key);
                if !current {
                    return;
                }
                let Some(u) = self.users.remove(&name) else {
                    return;
                };
                if matches!(u.state, RegState::Registered { .. }) {
                    self.metrics.registrations_active.dec();
                }
                if u.sessions.is_empty() {
                    return;
                }
                if u.unregistering {
                    // Signed in again while the un-REGISTER was under way:
                    // register afresh now that the old binding is gone.
                    let mut sessions = u.sessions.into_iter();
                    if let Some((session, inbox)) = sessions.next() {
                        self.sign_in(session, inbox, name.clone(), u.password.clone(), false);
                        if let Some(fresh) = self.users.get_mut(&name) {
                            fresh.sessions.extend(sessions);
                        }
                    }
                } else {
                    // Ended without being asked to (the SIP service is stopping).
                    warn!(user = %name, "registration ended");
                    for inbox in u.sessions.values() {
                        crate::queues::deliver(
                            inbox,
                            Inbox::Unregistered { user: name.clone() },
                            "session_inbox",
                            &self.metrics,
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
