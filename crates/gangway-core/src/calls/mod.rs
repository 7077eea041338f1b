//! The B2BUA of one front-end connection, sans IO: every call it owns,
//! the incoming calls ringing on it, and the links between calls that an
//! attended transfer makes.
//!
//! Feed it with [`Calls::handle`] (and the clock with [`Calls::handle_timeout`]
//! when [`Calls::poll_timeout`] says so); after each, drain
//! [`Calls::poll_output`] and carry the outputs out. Each call's own ladder
//! (setup → answer → end) is a [`Call`]; this table adds what spans the two
//! legs: the SIP-side SDP, hold, DTMF routing, transfers, inbound ringing
//! and the grace period after a lost connection.

mod entry;
mod io;
mod media;
mod requests;
mod sip;
mod transfer;

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use io::{
    CallSummary, Caller, Claim, Credentials, IncomingOffer, Input, LegFailure, MediaCommand,
    MediaEvent, Notification, Observation, Output, Problem, Refusal, Request, SipCommand, SipInput,
};
pub use requests::{valid_dtmf, MAX_DTMF_DIGITS};
pub use transfer::{REPLACED_LEG_GRACE, TRANSFER_OUTCOME_TIMEOUT};

use crate::sdp::G711;
use crate::{Call, CallState, CallTimers, Event, IdSpace, LegId, Router, SipLegId};
use entry::{Entry, PendingAccept};

/// How DTMF from the browser reaches the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtmfRoute {
    /// RFC 4733 events in the RTP stream.
    #[default]
    Rfc4733,
    /// SIP INFO (`application/dtmf-relay`).
    Info,
}

/// What a table needs to decide; fixed for its life.
#[derive(Debug, Clone)]
pub struct Settings {
    pub router: Router,
    pub timers: CallTimers,
    /// Most calls at once (ringing ones count when a new one rings).
    pub max_calls: usize,
    /// Most remote candidates one call may trickle.
    pub max_candidates: usize,
    pub dtmf: DtmfRoute,
    /// The address our SIP-side SDP announces (`None`: no SIP leg).
    pub sip_media_ip: Option<IpAddr>,
    /// G.711 codecs offered to and accepted from the PBX, in order.
    pub sip_codecs: Vec<G711>,
    /// The telephone-event payload type we offer the PBX.
    pub sip_dtmf_pt: u8,
    /// How long calls wait for a resume after the connection is lost
    /// (`None`: they end at once).
    pub resume_grace: Option<Duration>,
    /// Prefix of Gangway's own call ids (`<prefix>-<n>`).
    pub log_prefix: String,
}

/// Where a call stands, as a resumed client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPhase {
    Connecting,
    Ringing,
    Answered,
}

/// The calls of one connection. `K` is the front end's call id.
#[derive(Debug)]
pub struct Calls<K> {
    settings: Settings,
    ids: IdSpace,
    calls: HashMap<K, Entry<K>>,
    by_leg: HashMap<LegId, K>,
    /// Every SIP leg of a live call: the current one, a transfer's new one,
    /// and an old one until its last event.
    by_sip: HashMap<SipLegId, K>,
    ringing: HashMap<K, IncomingOffer>,
    /// An `accept` waiting for the shell to claim the call.
    accepting: HashMap<K, PendingAccept>,
    accepting_new: bool,
    /// The connection is lost; the calls end at this instant unless resumed.
    parked_until: Option<Instant>,
    out: VecDeque<Output<K>>,
}

impl<K: Clone + Eq + Hash + std::fmt::Debug> Calls<K> {
    /// `table` makes this table's leg ids unique among all tables.
    pub fn new(settings: Settings, table: u32) -> Self {
        Calls {
            settings,
            ids: IdSpace::new(table),
            calls: HashMap::new(),
            by_leg: HashMap::new(),
            by_sip: HashMap::new(),
            ringing: HashMap::new(),
            accepting: HashMap::new(),
            accepting_new: true,
            parked_until: None,
            out: VecDeque::new(),
        }
    }

    pub fn handle(&mut self, now: Instant, input: Input<K>) {
        match input {
            Input::Request(request) => self.on_request(now, request),
            Input::Media(leg, event) => self.on_media(now, leg, event),
            Input::Sip(sip, event) => self.on_sip(now, sip, event),
            Input::Incoming { call, offer } => self.on_incoming(call, offer),
            Input::Withdrawn { call, reason, code } => {
                if self.ringing.remove(&call).is_some() {
                    self.notify(call, Notification::Ended { reason, code });
                }
            }
            Input::Claimed { call, won } => self.on_claimed(now, call, won),
            Input::StopAccepting => self.accepting_new = false,
            Input::ConnectionLost => self.on_connection_lost(now),
            Input::ConnectionClosed => self.close(now, Event::SocketClosed),
            Input::ConnectionResumed => self.parked_until = None,
            Input::ParkedOverflow => self.expire(now),
            Input::Shutdown => {
                self.accepting_new = false;
                self.end_all(now, Event::Shutdown);
            }
        }
    }

    /// The clock reached [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.parked_until.is_some_and(|t| now >= t) {
            return self.expire(now);
        }
        self.expire_transfers(now);
        let due: Vec<K> = self
            .calls
            .iter()
            .filter(|(_, e)| e.call.poll_timeout().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            if let Some(entry) = self.calls.get_mut(&id) {
                entry.call.handle_timeout(now);
            }
            self.pump(now, &id);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.calls.values().filter_map(|e| e.call.poll_timeout());
        let transfers = self.calls.values().filter_map(|e| e.transfer_due);
        calls.chain(transfers).chain(self.parked_until).min()
    }

    pub fn poll_output(&mut self) -> Option<Output<K>> {
        self.out.pop_front()
    }

    /// No calls, nothing ringing.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.ringing.is_empty()
    }

    /// Whether the table waits for a resume.
    pub fn is_parked(&self) -> bool {
        self.parked_until.is_some()
    }

    /// When the calls of a lost connection end unless it is resumed.
    pub fn parked_until(&self) -> Option<Instant> {
        self.parked_until
    }

    /// Where each call and each ringing call stands, for a resumed client.
    pub fn phases(&self) -> Vec<(K, CallPhase)> {
        let calls = self.calls.iter().map(|(k, e)| {
            let phase = match e.call.state() {
                CallState::Ringing => CallPhase::Ringing,
                CallState::Answered => CallPhase::Answered,
                _ => CallPhase::Connecting,
            };
            (k.clone(), phase)
        });
        let ringing = self.ringing.keys().map(|k| (k.clone(), CallPhase::Ringing));
        calls.chain(ringing).collect()
    }

    fn on_incoming(&mut self, call: K, offer: IncomingOffer) {
        let full = self.calls.len() + self.ringing.len() >= self.settings.max_calls;
        if full || self.calls.contains_key(&call) {
            return self.out.push_back(Output::Claim(call, Claim::Decline));
        }
        let note = Notification::Incoming {
            from: offer.from.clone(),
            display: offer.display.clone(),
            to: offer.to.clone(),
        };
        self.notify(call.clone(), note);
        self.ringing.insert(call, offer);
    }

    fn on_claimed(&mut self, now: Instant, call: K, won: bool) {
        let Some(pending) = self.accepting.remove(&call) else {
            return;
        };
        let offer = if won {
            self.ringing.remove(&call)
        } else {
            None
        };
        let Some(offer) = offer else {
            // Answered elsewhere, cancelled or timed out just now: the
            // `ended` is on its way.
            return self.refuse(
                Some(call),
                Problem::InvalidState,
                "the call is no longer ringing",
            );
        };
        let call_model = Call::incoming(
            self.settings.router.clone(),
            self.settings.timers,
            offer.from.clone(),
        );
        let from = offer.from.clone();
        let mut entry = Entry::new(call_model, pending.leg, now, offer.log_id);
        entry.set_sip(pending.sip);
        entry.record.inbound = true;
        entry.record.from = Some(offer.from.clone());
        entry.record.to = offer.to.clone();
        entry.sip_offer = offer.sip_offer;
        self.out
            .push_back(Output::Sip(SipCommand::Adopt { sip: pending.sip }));
        self.insert(call.clone(), entry);
        self.observe_call(&call, Observation::Accepted { from });
        self.feed(
            now,
            &call,
            Event::Accept {
                offer: pending.offer,
            },
        );
    }

    fn on_connection_lost(&mut self, now: Instant) {
        match self.settings.resume_grace {
            Some(grace) if !self.calls.is_empty() => {
                let calls = self.calls.len();
                self.parked_until = Some(now + grace);
                self.observe(None, None, Observation::Parked { calls, grace });
            }
            _ => self.close(now, Event::SocketClosed),
        }
    }

    /// Nobody resumed in time: the calls end (BYE to the PBX), silently.
    fn expire(&mut self, now: Instant) {
        self.parked_until = None;
        self.observe(None, None, Observation::Expired);
        self.close(now, Event::SessionExpired);
    }

    /// Every call ends with `event`, and ringing calls are declined.
    fn close(&mut self, now: Instant, event: Event) {
        self.end_all(now, event);
        for (call, _) in std::mem::take(&mut self.ringing) {
            self.out.push_back(Output::Claim(call, Claim::Decline));
        }
        self.accepting.clear();
    }

    fn end_all(&mut self, now: Instant, event: Event) {
        let ids: Vec<K> = self.calls.keys().cloned().collect();
        for id in ids {
            self.feed(now, &id, event.clone());
        }
    }

    fn insert(&mut self, id: K, entry: Entry<K>) {
        self.by_leg.insert(entry.leg, id.clone());
        if let Some(sip) = entry.sip {
            self.by_sip.insert(sip, id.clone());
        }
        self.calls.insert(id, entry);
    }

    fn feed(&mut self, now: Instant, id: &K, event: Event) {
        if let Some(entry) = self.calls.get_mut(id) {
            entry.call.handle(now, event);
        }
        self.pump(now, id);
    }

    fn notify(&mut self, call: K, note: Notification) {
        self.out.push_back(Output::Notify(call, note));
    }

    fn refuse(&mut self, call: Option<K>, problem: Problem, message: impl Into<String>) {
        self.out.push_back(Output::Refuse(Refusal {
            call,
            problem,
            message: message.into(),
        }));
    }

    fn observe(&mut self, call: Option<&K>, log_id: Option<&str>, what: Observation) {
        self.out.push_back(Output::Observe {
            call: call.cloned(),
            log_id: log_id.map(str::to_string),
            what,
        });
    }

    fn observe_call(&mut self, id: &K, what: Observation) {
        let log_id = self.calls.get(id).map(|e| e.log_id.clone());
        self.observe(Some(id), log_id.as_deref(), what);
    }
}

impl From<crate::Notify> for Notification {
    fn from(n: crate::Notify) -> Self {
        use crate::Notify as N;
        match n {
            N::Answer { sdp } => Notification::Answer { sdp },
            N::Ringing => Notification::Ringing,
            N::Progress => Notification::Progress,
            N::Answered => Notification::Answered,
            N::Ended { reason, code } => Notification::Ended { reason, code },
        }
    }
}

#[cfg(test)]
mod tests;
