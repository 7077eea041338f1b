//! Inbound calls while they ring: one task per INVITE offers the call to
//! every session of the called user (forked ringing) and settles who gets
//! it. The session that accepts takes the call over; the others, and every
//! session when the call is cancelled, rejected or times out, are told.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use gangway_core::fork::{self, Fork, ForkInput, Missed, Presence};
use gangway_signal::CallId;
use gangway_sip::{InboundSipCall, IncomingCall, SipEvent};
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

use crate::cdr::missed::MissedFacts;
use crate::users::{Inbox, InboxTx, Lookup};
use crate::{Phase, Shared, SIP_CODECS};

/// An incoming call offered to sessions.
#[derive(Debug)]
pub(crate) struct Ringing {
    pub id: CallId,
    /// Gangway's id for logs (as for outbound calls).
    pub log_id: String,
    pub from: String,
    pub display: Option<String>,
    pub to: String,
    /// The INVITE's SDP offer (`None`: offerless INVITE).
    pub sdp_offer: Option<String>,
    pub sip: InboundSipCall,
    claimed: AtomicBool,
    decisions: mpsc::Sender<Decision>,
}

#[derive(Debug)]
enum Decision {
    Accepted {
        session: u64,
    },
    Rejected {
        code: u16,
    },
    /// The session closed, or had no room for another call.
    Gone {
        session: u64,
    },
}

impl Ringing {
    /// Takes the decision on this call; true for exactly one caller (a
    /// session accepting or rejecting, or the coordinator giving up).
    pub fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::SeqCst)
    }

    /// After a successful [`Ringing::claim`]: the session now owns the call
    /// (it has routed the SIP events to itself).
    pub fn accepted(&self, session: u64) {
        let _ = self.decisions.try_send(Decision::Accepted { session });
    }

    /// After a successful [`Ringing::claim`]: refuse the INVITE with `code`.
    pub fn rejected(&self, code: u16) {
        let _ = self.decisions.try_send(Decision::Rejected { code });
    }

    /// The session will not answer (closed, or full).
    pub fn gone(&self, session: u64) {
        let _ = self.decisions.try_send(Decision::Gone { session });
    }
}

/// What the call record of an incoming call nobody took needs besides
/// the core's [`Missed`].
struct Names {
    id: CallId,
    log_id: String,
    sip_call_id: String,
    from: String,
    to: String,
    /// The front end whose connections were looked up.
    front_end: Option<&'static str>,
}

impl Names {
    fn record(&self, shared: &Shared, missed: Missed) {
        if !shared.cdr.enabled() {
            return;
        }
        shared.cdr.missed(MissedFacts {
            id: crate::cdr::record_id(),
            front_end: self.front_end.filter(|_| missed.rang),
            missed,
            call_id: self.id.to_string(),
            gangway_call_id: self.log_id.clone(),
            sip_call_id: self.sip_call_id.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            wall: SystemTime::now(),
            at: Instant::now(),
        });
    }
}

/// Refuses an INVITE before it rings anyone.
fn refuse(
    shared: &Shared,
    call: &IncomingCall,
    refused: fork::Refused,
    names: &Names,
    started: Instant,
) {
    info!(status = refused.status, "{}: refusing", refused.why);
    call.handle.reject(refused.status);
    shared.metrics.inbound_call(refused.outcome);
    names.record(shared, refused.missed(started, Instant::now()));
}

/// Takes every inbound INVITE the SIP service accepted.
pub(crate) async fn run(shared: Arc<Shared>, mut calls: mpsc::Receiver<IncomingCall>) {
    while let Some(call) = calls.recv().await {
        let span = info_span!("inbound", sip_call_id = %call.sip_call_id, user = %call.user);
        tokio::spawn(ring(shared.clone(), call).instrument(span));
    }
}

async fn ring(shared: Arc<Shared>, call: IncomingCall) {
    let started = Instant::now();
    let outcome = |label: &'static str| shared.metrics.inbound_call(label);
    info!(from = %call.from_uri, source = %call.source, "incoming call");
    let n = shared.next_peer.fetch_add(1, Ordering::Relaxed);
    let id = CallId::new(format!("in-{:x}-{n}", shared.started_ms))
        .expect("a short ASCII id is a valid call id");
    let mut names = Names {
        id: id.clone(),
        log_id: format!("{:x}-{n}", shared.started_ms),
        sip_call_id: call.sip_call_id.clone(),
        from: call.from_uri.clone(),
        to: call.to_uri.clone(),
        front_end: None,
    };
    let accepting = *shared.phase.borrow() == Phase::Running;
    let offer = call.sdp_offer.as_deref();
    if let Err(refused) = fork::screen_invite(accepting, offer, &SIP_CODECS) {
        return refuse(&shared, &call, refused, &names, started);
    }
    // A SIP over WebSocket binding's token, or a signed-in user.
    let lookup = match (shared.flows.lookup(&call.user), &shared.users) {
        (Some(found), _) => {
            names.front_end = Some("sip_ws");
            found
        }
        (None, Some(users)) => {
            names.front_end = Some("json");
            users.lookup(&call.user).await
        }
        (None, None) => Lookup::Unknown,
    };
    let (presence, sessions) = match lookup {
        Lookup::Unknown => (Presence::Unknown, Vec::new()),
        Lookup::NoSessions => (Presence::NoConnections, Vec::new()),
        Lookup::Sessions(sessions) => (Presence::Connections, sessions),
    };
    if let Err(refused) = fork::screen_presence(presence) {
        return refuse(&shared, &call, refused, &names, started);
    }

    // Until a session takes it, the call's events come here; the SIP
    // side keeps a reserve for the ones that end it.
    let (events_tx, mut events) = mpsc::channel(gangway_sip::RESERVED_EVENTS + 8);
    call.handle.route_events(0, events_tx);
    // Each session rung decides once, and the coordinator needs only the first.
    let (decisions_tx, mut decisions) = mpsc::channel(sessions.len() + 1);
    let ringing = Arc::new(Ringing {
        id: id.clone(),
        log_id: names.log_id.clone(),
        from: call.from_uri,
        display: call.from_display,
        to: call.to_uri,
        sdp_offer: call.sdp_offer,
        sip: call.handle,
        claimed: AtomicBool::new(false),
        decisions: decisions_tx,
    });
    let mut inboxes: Vec<(u64, InboxTx)> = Vec::new();
    for (session, inbox) in sessions {
        // A session whose inbox is full is far behind: it is not rung.
        match inbox.try_send(Inbox::Incoming(ringing.clone())) {
            Ok(()) => inboxes.push((session, inbox)),
            Err(mpsc::error::TrySendError::Full(_)) => {
                shared.metrics.queue_full("session_inbox");
                warn!(session, "session's inbox is full: not rung");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    let mut fork = Fork::new(started, inboxes.iter().map(|(session, _)| *session));
    info!(call = %id, sessions = fork.ringing(), "ringing");
    ringing.sip.ring();

    let timeout = tokio::time::sleep(shared.config.ring_timeout());
    tokio::pin!(timeout);
    let mut timed_out = false;
    loop {
        // The caller's last event, kept for the session that takes the call.
        let mut caller_event = None;
        let input = tokio::select! {
            Some((_, event)) = events.recv() => {
                let status = match &event {
                    SipEvent::Failed { status, .. } => *status,
                    SipEvent::Ended => 500,
                    _ => continue,
                };
                caller_event = Some(event);
                ForkInput::CallerGaveUp { status }
            }
            Some(decision) = decisions.recv() => match decision {
                Decision::Accepted { session } => ForkInput::Accepted(session),
                Decision::Rejected { code } => ForkInput::Rejected(code),
                Decision::Gone { session } => ForkInput::Gone(session),
            },
            _ = &mut timeout, if !timed_out => {
                timed_out = true;
                ForkInput::Timeout
            }
        };
        let Some(settled) = fork.on(Instant::now(), input) else {
            continue;
        };
        if settled.claim && !ringing.claim() {
            // A session took the call just now: its decision is on its
            // way, and a SIP event is its own.
            if let Some(event) = caller_event {
                ringing.sip.redeliver(event);
            }
            continue;
        }
        info!(call = %id, outcome = settled.outcome, code = ?settled.code, "ringing over");
        if let Some(code) = settled.reject {
            ringing.sip.reject(code);
        }
        for (session, inbox) in &inboxes {
            if Some(*session) != settled.except {
                crate::queues::deliver(
                    inbox,
                    Inbox::Withdrawn {
                        call: id.clone(),
                        reason: settled.reason,
                        code: settled.code,
                    },
                    "session_inbox",
                    &shared.metrics,
                );
            }
        }
        outcome(settled.outcome);
        if let Some(missed) = settled.missed {
            names.record(&shared, missed);
        }
        return;
    }
}
