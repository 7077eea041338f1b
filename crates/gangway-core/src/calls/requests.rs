//! A front end's requests: checked against the calls' state, then turned
//! into events for the call or orders for its legs.

use std::hash::Hash;
use std::time::Instant;

use super::entry::{Entry, PendingAccept};
use super::{Calls, Claim, DtmfRoute, MediaCommand, Output, Problem, Request, SipCommand};
use crate::{Call, Event, HoldRefusal, Route};

/// Most digits one DTMF request may carry.
pub const MAX_DTMF_DIGITS: usize = 32;

/// Whether `digits` may be sent: 1-32 of `0-9 * # A-D`.
pub fn valid_dtmf(digits: &str) -> bool {
    (1..=MAX_DTMF_DIGITS).contains(&digits.len())
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
}

impl<K: Clone + Eq + Hash + std::fmt::Debug> Calls<K> {
    pub(super) fn on_request(&mut self, now: Instant, request: Request<K>) {
        match request {
            Request::Call {
                call,
                to,
                offer,
                caller,
            } => self.start_call(now, call, to, offer, caller),
            Request::Candidate { call, candidate } => self.candidate(call, candidate),
            Request::Dtmf { call, digits } => self.send_dtmf(call, digits),
            Request::Hold { call, hold } => self.hold(call, hold),
            Request::Transfer { call, to, replaces } => self.transfer(now, call, to, replaces),
            Request::Accept { call, offer } => self.accept(call, offer),
            Request::Reject { call, code } => self.reject_incoming(call, code),
            Request::Hangup { call } if self.ringing.contains_key(&call) => {
                self.reject_incoming(call, 486)
            }
            Request::Hangup { call } => {
                if !self.calls.contains_key(&call) {
                    return self.unknown_call(call);
                }
                self.feed(now, &call, Event::Hangup);
            }
            Request::Renegotiate { call, offer } => {
                let Some(entry) = self.calls.get(&call) else {
                    return self.unknown_call(call);
                };
                if !entry.call.can_renegotiate() {
                    return self.refuse(
                        Some(call),
                        Problem::InvalidState,
                        "renegotiate needs a call whose answer has been sent",
                    );
                }
                let leg = entry.leg;
                self.media(MediaCommand::Renegotiate { leg, offer });
            }
        }
    }

    fn start_call(
        &mut self,
        now: Instant,
        id: K,
        to: String,
        offer: String,
        caller: Option<super::Caller>,
    ) {
        if !self.accepting_new {
            return self.refuse(
                Some(id),
                Problem::ShuttingDown,
                "the gateway is shutting down; try another instance",
            );
        }
        if self.calls.contains_key(&id) || self.ringing.contains_key(&id) {
            return self.refuse(
                Some(id),
                Problem::DuplicateCall,
                "a call with this id is already active on this connection",
            );
        }
        let max = self.settings.max_calls;
        if self.calls.len() >= max {
            return self.refuse(
                Some(id),
                Problem::TooManyCalls,
                format!("at most {max} concurrent calls per connection"),
            );
        }
        let leg = self.ids.leg();
        let log_id = format!("{}-{}", self.settings.log_prefix, leg.0);
        let call = Call::new(self.settings.router.clone(), self.settings.timers);
        let mut entry = Entry::new(call, leg, now, log_id);
        entry.record.from = caller.as_ref().map(|c| c.user.clone());
        entry.record.to = to.clone();
        entry.caller = caller;
        self.insert(id.clone(), entry);
        self.observe_call(&id, super::Observation::Requested { to: to.clone() });
        self.feed(now, &id, Event::Start { to, offer });
    }

    /// A trickled candidate goes to the shard, up to the limit: each one
    /// is a pair the shard checks, and a flood of them would stall it.
    fn candidate(&mut self, id: K, candidate: Option<String>) {
        let max = self.settings.max_candidates;
        let Some(entry) = self.calls.get_mut(&id) else {
            return self.unknown_call(id);
        };
        let Some(candidate) = candidate else { return };
        if entry.candidates >= max {
            self.observe_call(
                &id,
                super::Observation::LimitReached {
                    limit: "candidates",
                },
            );
            return self.refuse(
                Some(id),
                Problem::InvalidCandidate,
                format!("at most {max} candidates per call"),
            );
        }
        entry.candidates += 1;
        let leg = entry.leg;
        self.media(MediaCommand::Candidate { leg, candidate });
    }

    fn send_dtmf(&mut self, id: K, digits: String) {
        let Some(entry) = self.calls.get(&id) else {
            return self.unknown_call(id);
        };
        if !valid_dtmf(&digits) {
            return self.refuse(
                Some(id),
                Problem::InvalidMessage,
                format!("digits must be 1-{MAX_DTMF_DIGITS} of 0-9 * # A-D"),
            );
        }
        let answered_sip = matches!(entry.call.route(), Some(Route::Sip { .. }));
        let Some(sip) = entry.answered_sip().filter(|_| answered_sip) else {
            return self.refuse(
                Some(id),
                Problem::InvalidState,
                "DTMF can be sent on answered SIP calls only",
            );
        };
        let leg = entry.leg;
        match self.settings.dtmf {
            DtmfRoute::Info => self.sip(SipCommand::DtmfInfo { sip, digits }),
            DtmfRoute::Rfc4733 => self.media(MediaCommand::SendDtmf { leg, digits }),
        }
    }

    /// `hold`/`resume`: a re-INVITE to the PBX; `held`/`resumed` follow
    /// once it accepts, a refusal if it does not.
    fn hold(&mut self, id: K, hold: bool) {
        let Some(entry) = self.calls.get_mut(&id) else {
            return self.unknown_call(id);
        };
        let Some(sip) = entry.answered_sip() else {
            return self.refuse(
                Some(id),
                Problem::InvalidState,
                "hold and resume need an answered SIP call",
            );
        };
        if let Err(refusal) = entry.hold.request(hold) {
            let message = match refusal {
                HoldRefusal::AlreadyHeld => "the call is already on hold",
                HoldRefusal::NotHeld => "the call is not on hold here",
                HoldRefusal::Pending => "a hold or resume is already in progress",
            };
            return self.refuse(Some(id), Problem::InvalidState, message);
        }
        self.observe_call(&id, super::Observation::HoldRequested { hold });
        self.sip(SipCommand::Hold { sip, hold });
    }

    fn accept(&mut self, id: K, offer: String) {
        if !self.ringing.contains_key(&id) || self.accepting.contains_key(&id) {
            return self.not_ringing(id);
        }
        if !self.accepting_new {
            return self.refuse(
                Some(id),
                Problem::ShuttingDown,
                "the gateway is shutting down",
            );
        }
        let (leg, sip) = (self.ids.leg(), self.ids.sip_leg());
        self.accepting
            .insert(id.clone(), PendingAccept { offer, leg, sip });
        self.out.push_back(Output::Claim(id, Claim::Accept));
    }

    /// `reject` (or `hangup` of a ringing call): refused for every table
    /// it rings on; the `ended` comes back as [`super::Input::Withdrawn`].
    fn reject_incoming(&mut self, id: K, code: u16) {
        if !self.ringing.contains_key(&id) {
            return self.not_ringing(id);
        }
        self.out.push_back(Output::Claim(id, Claim::Reject(code)));
    }

    pub(super) fn media(&mut self, command: MediaCommand) {
        self.out.push_back(Output::Media(command));
    }

    pub(super) fn sip(&mut self, command: SipCommand) {
        self.out.push_back(Output::Sip(command));
    }

    fn unknown_call(&mut self, id: K) {
        self.refuse(
            Some(id),
            Problem::UnknownCall,
            "no active call with this id on this connection",
        );
    }

    fn not_ringing(&mut self, id: K) {
        self.refuse(
            Some(id),
            Problem::NotRinging,
            "no incoming call with this id is ringing on this connection",
        );
    }
}
