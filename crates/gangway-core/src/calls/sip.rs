//! The SIP leg's reports: progress and answer, the far end leaving, its
//! DTMF, and renegotiation (hold and resume either way, RFC 3264).

use std::hash::Hash;
use std::time::Instant;

use super::{Calls, MediaCommand, Notification, Observation, Problem, SipCommand, SipInput};
use crate::sdp::{self, Direction};
use crate::{AudioFlow, Event, HoldChange, HoldParty, RemoteDirection, SipLegId};

impl<K: Clone + Eq + Hash + std::fmt::Debug> Calls<K> {
    pub(super) fn on_sip(&mut self, now: Instant, sip: SipLegId, event: SipInput) {
        let Some(id) = self.by_sip.get(&sip).cloned() else {
            return;
        };
        let Some(entry) = self.calls.get(&id) else {
            return;
        };
        if entry.transfer.as_ref().is_some_and(|t| t.sip == sip) {
            return self.on_transfer_leg(id, event);
        }
        if entry.sip != Some(sip) {
            // A leg a transfer replaced: it ends on its own.
            match event {
                SipInput::Ended => {
                    self.by_sip.remove(&sip);
                }
                SipInput::ReplacedBy { .. } => {
                    let status = 481;
                    self.sip(SipCommand::RejectReplacement { old: sip, status });
                }
                _ => {}
            }
            return;
        }
        let (transfer_accepted, leg) = (entry.transfer_accepted, entry.leg);
        let event = match event {
            SipInput::Provisional { status, sdp } => {
                let early_media = sdp
                    .is_some_and(|sdp| self.connect_sip_media(&id, &sdp, false, AudioFlow::BOTH));
                Event::SipProgress {
                    status,
                    early_media,
                }
            }
            SipInput::Answered {
                sdp,
                replacing_target,
            } => {
                let Some(entry) = self.calls.get_mut(&id) else {
                    return;
                };
                entry.replacing_target = replacing_target;
                // An incoming call's media was connected from the INVITE's
                // offer when we answered; the ACK only confirms it.
                let connected = entry.sip_offer.is_some();
                let after = now.saturating_duration_since(entry.started);
                if connected || self.connect_sip_media(&id, &sdp, true, AudioFlow::BOTH) {
                    self.observe_call(&id, Observation::Answered { after });
                    Event::SipAnswered
                } else {
                    Event::SipMediaUnusable
                }
            }
            SipInput::Failed {
                status,
                reason,
                challenge,
            } => {
                if let Some(challenge) = challenge {
                    self.notify(id.clone(), Notification::Challenged { status, challenge });
                }
                self.observe_call(&id, Observation::SipFailed { status, reason });
                Event::SipFailed { status }
            }
            // A transferee that accepted our REFER often hangs up at once
            // rather than reporting the outcome (RFC 5589 §6.1 allows it).
            SipInput::RemoteHangup if transfer_accepted => {
                self.observe_call(&id, Observation::MidCall("transfer_out_completed"));
                Event::SipTransferred
            }
            SipInput::RemoteHangup => Event::SipRemoteHangup,
            SipInput::SessionExpired { status } => {
                self.observe_call(&id, Observation::SessionExpired { status });
                Event::SipSessionExpired { status }
            }
            SipInput::Dtmf { digit } => {
                // The browser hears it too, as RFC 4733 on its stream.
                self.media(MediaCommand::PlayDtmf { leg, digit });
                return self.notify(id, Notification::Dtmf { digit });
            }
            SipInput::RemoteOffer { sdp } => return self.on_remote_offer(&id, &sdp),
            SipInput::OfferAccepted { sdp, hold } => {
                return self.on_offer_accepted(&id, &sdp, hold)
            }
            SipInput::OfferRefused { status, hold } => {
                if let Some(entry) = self.calls.get_mut(&id) {
                    entry.hold.refused();
                }
                self.observe_call(&id, Observation::MidCall("hold_refused"));
                let what = if hold { "hold" } else { "resume" };
                let message = format!("the far end refused the {what} ({status})");
                return self.refuse(Some(id), Problem::HoldFailed, message);
            }
            SipInput::TransferProgress { status, done } => {
                match self.on_transfer_progress(now, &id, status, done) {
                    Some(event) => event,
                    None => return,
                }
            }
            SipInput::Referred { target } => return self.start_transfer_leg(&id, target),
            SipInput::ReplacedBy { from, offer } => {
                return self.start_replacing_leg(&id, sip, from, offer)
            }
            SipInput::Ended => return,
        };
        self.feed(now, &id, event);
    }

    /// The far end's own offer (re-INVITE or UPDATE), already answered by
    /// the SIP leg: the media follows its address, codec and direction.
    fn on_remote_offer(&mut self, id: &K, offer: &str) {
        let Some(direction) = self.direction_of(offer) else {
            // The SIP leg answered it; it cannot be unusable here.
            return self.observe_call(id, Observation::SdpUnusable("re-offer".into()));
        };
        let Some(entry) = self.calls.get_mut(id) else {
            return;
        };
        let change = entry.hold.remote_offer(direction);
        self.follow_renegotiation(id, offer, change);
    }

    /// The far end answered our hold or resume offer.
    fn on_offer_accepted(&mut self, id: &K, answer: &str, hold: bool) {
        let Some(direction) = self.direction_of(answer) else {
            let what = "answer to our re-offer".to_string();
            return self.observe_call(id, Observation::SdpUnusable(what));
        };
        let Some(entry) = self.calls.get_mut(id) else {
            return;
        };
        let change = entry.hold.accepted(hold, direction);
        self.follow_renegotiation(id, answer, change);
    }

    fn follow_renegotiation(&mut self, id: &K, sdp: &str, change: Option<HoldChange>) {
        let Some(flow) = self.calls.get(id).map(|e| e.hold.flow()) else {
            return;
        };
        self.connect_sip_media(id, sdp, true, flow);
        let (note, event) = match change {
            Some(HoldChange::Held(by)) => (
                Notification::Held { by },
                match by {
                    HoldParty::Local => "held_local",
                    HoldParty::Remote => "held_remote",
                },
            ),
            Some(HoldChange::Resumed(by)) => (
                Notification::Resumed { by },
                match by {
                    HoldParty::Local => "resumed_local",
                    HoldParty::Remote => "resumed_remote",
                },
            ),
            None => return,
        };
        self.observe_call(id, Observation::MidCall(event));
        self.notify(id.clone(), note);
    }

    /// The far end's direction in its SDP, if we can use the SDP at all.
    fn direction_of(&self, sdp_text: &str) -> Option<RemoteDirection> {
        let media = sdp::parse_answer(sdp_text, &self.settings.sip_codecs).ok()?;
        Some(remote_direction(media.direction))
    }
}

fn remote_direction(direction: Direction) -> RemoteDirection {
    RemoteDirection {
        sends: direction.sends(),
        receives: direction.receives(),
    }
}
