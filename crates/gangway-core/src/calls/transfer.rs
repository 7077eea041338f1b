//! Transfers both ways: ours (blind REFER, or attended: REFER with
//! Replaces naming our other call), and the far end's (its REFER makes us
//! call the target; an INVITE with Replaces takes the call over). A new
//! SIP leg shares the call's RTP port and replaces the old one once answered.

use std::hash::Hash;
use std::time::{Duration, Instant};

use super::entry::{TransferKind, TransferLeg};
use super::{Calls, Notification, Observation, Problem, SipCommand, SipInput};
use crate::{AudioFlow, Event, HoldState, Route, SipLegId};

/// After a REFER transfer the old leg gets this long to be ended by the
/// party that transferred us (RFC 5589: the transferor sends the BYE).
pub const REPLACED_LEG_GRACE: Duration = Duration::from_secs(2);

/// A transferee that accepted our REFER and then says nothing more (no
/// final NOTIFY, no BYE) leaves the call waiting. This long after its last
/// news the transfer has failed (408): the client learns it, and the call
/// stops counting the far end's leaving as the transfer's success. Longer
/// than a target usually rings.
pub const TRANSFER_OUTCOME_TIMEOUT: Duration = Duration::from_secs(90);

impl<K: Clone + Eq + Hash + std::fmt::Debug> Calls<K> {
    /// `transfer`: REFER the far end to `to` (routed like a call), or to
    /// the far end of our call `replaces` (attended).
    pub(super) fn transfer(
        &mut self,
        now: Instant,
        id: K,
        to: Option<String>,
        replaces: Option<K>,
    ) {
        let Some(entry) = self.calls.get(&id) else {
            return self.refuse(
                Some(id),
                Problem::UnknownCall,
                "no active call with this id on this connection",
            );
        };
        let Some(sip) = entry.answered_sip() else {
            return self.refuse(
                Some(id),
                Problem::InvalidState,
                "transfer needs an answered SIP call",
            );
        };
        let target = match (to, &replaces) {
            (Some(to), None) => match self.settings.router.route(&to) {
                Route::Sip { uri } => uri,
                Route::NotAllowed => {
                    let message = "the transfer target is not allowed";
                    return self.refuse(Some(id), Problem::InvalidMessage, message);
                }
                _ => {
                    let message = "the transfer target is not a SIP destination";
                    return self.refuse(Some(id), Problem::InvalidMessage, message);
                }
            },
            (None, Some(other)) => {
                // Attended: the far end of our other call, told to replace
                // our dialog with it (it then hangs up on us there).
                let target = self
                    .calls
                    .get(other)
                    .filter(|_| *other != id)
                    .filter(|o| o.answered_sip().is_some())
                    .and_then(|o| o.replacing_target.clone());
                let Some(target) = target else {
                    return self.refuse(
                        Some(id),
                        Problem::InvalidState,
                        "`replaces` must name another answered SIP call on this connection",
                    );
                };
                target
            }
            _ => {
                let message = "transfer needs `to` or `replaces` (one of them)";
                return self.refuse(Some(id), Problem::InvalidMessage, message);
            }
        };
        self.observe_call(
            &id,
            Observation::TransferRequested {
                target: target.clone(),
            },
        );
        self.sip(SipCommand::Transfer { sip, target });
        if let Some(other) = &replaces {
            if let Some(o) = self.calls.get_mut(other) {
                // Its far end leaving now is the transfer completing.
                o.transfer_accepted = true;
            }
        }
        if let Some(entry) = self.calls.get_mut(&id) {
            entry.attended_with = replaces;
            entry.transfer_due = Some(now + TRANSFER_OUTCOME_TIMEOUT);
        }
    }

    /// Our REFER's progress. `Some` when it completed the transfer.
    pub(super) fn on_transfer_progress(
        &mut self,
        now: Instant,
        id: &K,
        status: u16,
        done: bool,
    ) -> Option<Event> {
        let success = (200..300).contains(&status);
        let entry = self.calls.get_mut(id)?;
        entry.transfer_accepted = !done && (entry.transfer_accepted || success);
        entry.transfer_due = (!done).then_some(now + TRANSFER_OUTCOME_TIMEOUT);
        self.notify(id.clone(), Notification::TransferProgress { status, done });
        if !done {
            return None;
        }
        if !success {
            self.observe_call(id, Observation::MidCall("transfer_out_failed"));
            let other = self.calls.get_mut(id).and_then(|e| e.attended_with.take());
            if let Some(o) = other.and_then(|other| self.calls.get_mut(&other)) {
                o.transfer_accepted = false;
            }
            return None;
        }
        self.observe_call(id, Observation::MidCall("transfer_out_completed"));
        Some(Event::SipTransferred)
    }

    /// Transfers whose outcome is overdue failed: 408, as if the far end
    /// had said so.
    pub(super) fn expire_transfers(&mut self, now: Instant) {
        let overdue: Vec<K> = self
            .calls
            .iter()
            .filter(|(_, e)| e.transfer_due.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for id in overdue {
            self.observe_call(&id, Observation::TransferTimedOut);
            self.on_transfer_progress(now, &id, 408, true);
        }
    }

    /// The far end REFERred us to `target`: call it on the same RTP port;
    /// the old leg stays until the new one answers.
    pub(super) fn start_transfer_leg(&mut self, id: &K, target: String) {
        let Some(entry) = self.calls.get(id) else {
            return;
        };
        let Some(old) = entry.sip else {
            return;
        };
        let refuse = |status, reason: &str| SipCommand::NotifyTransfer {
            sip: old,
            status,
            reason: reason.to_string(),
            done: true,
        };
        if entry.transfer.is_some() {
            return self.sip(refuse(491, "Request Pending"));
        }
        let uri = match self.settings.router.route(&target) {
            Route::Sip { uri } => uri,
            _ => {
                self.observe_call(id, Observation::TransferTargetRefused { target });
                return self.sip(refuse(403, "Forbidden"));
            }
        };
        let Some(offer) = self.sip_offer_sdp(id) else {
            return self.sip(refuse(500, "Server Internal Error"));
        };
        let sip = self.ids.sip_leg();
        let Some(entry) = self.calls.get_mut(id) else {
            return;
        };
        entry.transfer = Some(TransferLeg {
            sip,
            target: uri.clone(),
            kind: TransferKind::Refer,
        });
        let correlation_id = entry.log_id.clone();
        // The client's answer to a challenge was for its own INVITE only.
        let caller = entry.caller.clone().map(|c| super::Caller {
            credentials: None,
            ..c
        });
        self.by_sip.insert(sip, id.clone());
        self.observe_call(id, Observation::TransferCalling { uri: uri.clone() });
        self.sip(SipCommand::Place {
            sip,
            uri,
            offer,
            correlation_id,
            caller,
        });
    }

    /// An INVITE with Replaces named this call's dialog: answer it on the
    /// same RTP port; it becomes the SIP leg once its ACK arrives, and the
    /// old dialog gets BYE (RFC 3891).
    pub(super) fn start_replacing_leg(
        &mut self,
        id: &K,
        old: SipLegId,
        from: String,
        offer: Option<String>,
    ) {
        let sdp = self
            .calls
            .get(id)
            .filter(|e| e.answered_sip().is_some() && e.transfer.is_none())
            .and_then(|_| self.sip_answer_to(id, offer.as_deref()));
        let Some(sdp) = sdp else {
            self.observe_call(id, Observation::ReplacementRefused);
            let status = 486;
            return self.sip(SipCommand::RejectReplacement { old, status });
        };
        let new = self.ids.sip_leg();
        self.sip(SipCommand::AnswerReplacement { old, new, sdp });
        self.observe_call(id, Observation::Replacing { from: from.clone() });
        if let Some(entry) = self.calls.get_mut(id) {
            entry.transfer = Some(TransferLeg {
                sip: new,
                target: from,
                kind: TransferKind::Replaces,
            });
        }
        self.by_sip.insert(new, id.clone());
        if let Some(offer) = offer {
            self.connect_sip_media(id, &offer, true, AudioFlow::BOTH);
        }
    }

    /// Events of a transfer's new leg: progress goes to the old leg's
    /// NOTIFYs (REFER); the answer swaps the legs.
    pub(super) fn on_transfer_leg(&mut self, id: K, event: SipInput) {
        let Some(entry) = self.calls.get(&id) else {
            return;
        };
        let (Some(old), Some(leg)) = (entry.sip, entry.transfer.as_ref()) else {
            return;
        };
        let referred = leg.kind == TransferKind::Refer;
        let notify = |status, reason: &str, done| SipCommand::NotifyTransfer {
            sip: old,
            status,
            reason: reason.to_string(),
            done,
        };
        match event {
            SipInput::Provisional { status, .. } if referred => {
                self.sip(notify(status, provisional_reason(status), false))
            }
            SipInput::Answered {
                sdp,
                replacing_target,
            } => {
                if !self.connect_sip_media(&id, &sdp, true, AudioFlow::BOTH) {
                    let Some(leg) = self.calls.get_mut(&id).and_then(|e| e.transfer.take()) else {
                        return;
                    };
                    self.sip(SipCommand::Hangup { sip: leg.sip });
                    if referred {
                        self.sip(notify(488, "Not Acceptable Here", true));
                    }
                    return;
                }
                let Some(entry) = self.calls.get_mut(&id) else {
                    return;
                };
                let Some(leg) = entry.transfer.take() else {
                    return;
                };
                entry.set_sip(leg.sip);
                entry.replacing_target = replacing_target;
                entry.hold = HoldState::default();
                if referred {
                    self.sip(notify(200, "OK", true));
                    let delay = REPLACED_LEG_GRACE;
                    self.sip(SipCommand::HangupAfter { sip: old, delay });
                } else {
                    // RFC 3891: the replaced dialog ends at once.
                    self.sip(SipCommand::Hangup { sip: old });
                }
                self.observe_call(&id, Observation::MidCall("transfer_in_completed"));
                self.notify(id, Notification::Transferred { to: leg.target });
            }
            SipInput::Failed { status, reason, .. } => {
                if referred {
                    self.sip(notify(status, &reason, true));
                }
                self.observe_call(&id, Observation::TransferTargetFailed { status, reason });
                self.observe_call(&id, Observation::MidCall("transfer_in_failed"));
                if let Some(entry) = self.calls.get_mut(&id) {
                    entry.transfer = None;
                }
            }
            SipInput::Ended => {
                if let Some(leg) = self.calls.get_mut(&id).and_then(|e| e.transfer.take()) {
                    self.by_sip.remove(&leg.sip);
                }
            }
            _ => {}
        }
    }
}

/// The usual reason phrase of a provisional status, for transfer NOTIFYs.
fn provisional_reason(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        _ => "Progress",
    }
}
