//! The WebRTC leg's reports, and carrying out a call's actions: the ladder
//! in [`crate::Call`] says what happens, this file says to which leg.

use std::hash::Hash;
use std::time::Instant;

use super::{
    Calls, LegFailure, MediaCommand, MediaEvent, Notification, Observation, Problem, SipCommand,
};
use crate::sdp;
use crate::{Action, Event, LegId, LegSetupError, MediaPlan};

impl<K: Clone + Eq + Hash + std::fmt::Debug> Calls<K> {
    pub(super) fn on_media(&mut self, now: Instant, leg: LegId, event: MediaEvent) {
        // Events for calls that already ended are stale; drop them.
        let Some(id) = self.by_leg.get(&leg).cloned() else {
            return;
        };
        let event = match event {
            MediaEvent::Ready { answer, rtp_port } => {
                if let Some(entry) = self.calls.get_mut(&id) {
                    entry.rtp_port = rtp_port;
                }
                Event::LegReady { answer }
            }
            MediaEvent::Failed(LegFailure::IncompatibleCodecs) => {
                Event::LegFailed(LegSetupError::IncompatibleCodecs)
            }
            MediaEvent::Failed(LegFailure::InvalidSdp(message)) => {
                self.refuse(Some(id.clone()), Problem::InvalidSdp, message.clone());
                Event::LegFailed(LegSetupError::InvalidSdp(message))
            }
            MediaEvent::Failed(LegFailure::NoCapacity(message)) => {
                self.refuse(Some(id.clone()), Problem::NoCapacity, message.clone());
                Event::LegFailed(LegSetupError::NoCapacity(message))
            }
            MediaEvent::CandidateRejected(message) => {
                return self.refuse(Some(id), Problem::InvalidCandidate, message)
            }
            MediaEvent::Connected => {
                if let Some(entry) = self.calls.get(&id) {
                    let after = now.saturating_duration_since(entry.started);
                    self.observe_call(&id, Observation::MediaConnected { after });
                }
                Event::MediaConnected
            }
            MediaEvent::Disconnected => Event::MediaLost,
            MediaEvent::MediaTimeout => {
                self.observe_call(&id, Observation::NoMedia);
                Event::MediaLost
            }
            MediaEvent::Dtmf(digit) => return self.notify(id, Notification::Dtmf { digit }),
            MediaEvent::DtmfRefused => {
                return self.refuse(
                    Some(id),
                    Problem::DtmfUnavailable,
                    "the far end did not accept telephone-event (RFC 4733)",
                )
            }
            MediaEvent::Renegotiated { answer } => {
                return self.notify(id, Notification::Answer { sdp: answer })
            }
            MediaEvent::RenegotiationFailed(e) => {
                return self.refuse(
                    Some(id),
                    Problem::InvalidSdp,
                    format!("{e}; the call carries on with its current session"),
                )
            }
        };
        self.feed(now, &id, event);
    }

    /// Carries a call's actions to its legs.
    pub(super) fn pump(&mut self, now: Instant, id: &K) {
        let mut finished = None;
        let mut connect_offer = None;
        loop {
            let Some(entry) = self.calls.get_mut(id) else {
                return;
            };
            let Some(action) = entry.call.poll_action() else {
                break;
            };
            let (leg, sip) = (entry.leg, entry.sip);
            match action {
                Action::CreateLeg { offer, media } => {
                    let route = match media {
                        MediaPlan::Echo => "echo",
                        MediaPlan::Bridge => "sip",
                    };
                    self.observe_call(id, Observation::Started { route });
                    if let Some(entry) = self.calls.get_mut(id) {
                        entry.record.media_leg = true;
                    }
                    let plan = media;
                    self.media(MediaCommand::Create { leg, offer, plan });
                }
                Action::ReleaseLeg => self.media(MediaCommand::Release { leg }),
                Action::AnswerSip => match (self.sip_answer(id), sip) {
                    (Some(sdp), Some(sip)) => {
                        connect_offer = self.calls.get(id).and_then(|e| e.sip_offer.clone());
                        self.sip(SipCommand::Answer { sip, sdp });
                    }
                    _ => {
                        if let Some(entry) = self.calls.get_mut(id) {
                            entry.call.handle(now, Event::SipMediaUnusable);
                        }
                    }
                },
                Action::PlaceSipCall { uri } => self.place_sip_call(now, id, uri),
                Action::HangupSip => {
                    let transfer = entry.transfer.take();
                    for sip in sip.into_iter().chain(transfer.map(|t| t.sip)) {
                        self.sip(SipCommand::Hangup { sip });
                    }
                }
                Action::Notify(n) => {
                    if let Some(entry) = self.calls.get_mut(id) {
                        entry.record.note(now, &n);
                    }
                    self.notify(id.clone(), n.into())
                }
                Action::Finished(reason) => finished = Some(reason),
            }
        }
        if let Some(offer) = connect_offer {
            self.connect_sip_media(id, &offer, true, crate::AudioFlow::BOTH);
        }
        if let Some(reason) = finished {
            self.observe_call(id, Observation::Ended { reason });
            if let Some(entry) = self.calls.remove(id) {
                let summary = entry.summary(now, reason);
                let log_id = Some(entry.log_id.as_str());
                self.observe(Some(id), log_id, Observation::Summary(Box::new(summary)));
                if let Some(t) = entry.transfer {
                    self.sip(SipCommand::Hangup { sip: t.sip });
                }
                self.by_leg.remove(&entry.leg);
            }
            self.by_sip.retain(|_, call| call != id);
        }
    }

    /// Sends the INVITE for a bridged call, offering the call's RTP port.
    fn place_sip_call(&mut self, now: Instant, id: &K, uri: String) {
        let Some(offer) = self.sip_offer_sdp(id) else {
            // Cannot happen with a consistent config; fail the call visibly.
            return self.feed(now, id, Event::SipFailed { status: 500 });
        };
        let sip = self.ids.sip_leg();
        let Some(entry) = self.calls.get_mut(id) else {
            return;
        };
        entry.set_sip(sip);
        let correlation_id = entry.log_id.clone();
        let caller = entry.caller.clone();
        let after = now.saturating_duration_since(entry.started);
        self.by_sip.insert(sip, id.clone());
        self.sip(SipCommand::Place {
            sip,
            uri,
            offer,
            correlation_id,
            caller,
        });
        self.observe_call(id, Observation::InviteSent { after });
    }

    /// Our SIP-side offer on the call's RTP port.
    pub(super) fn sip_offer_sdp(&self, id: &K) -> Option<String> {
        let entry = self.calls.get(id)?;
        Some(sdp::offer(
            self.settings.sip_media_ip?,
            entry.rtp_port?,
            &self.settings.sip_codecs,
            self.settings.sip_dtmf_pt,
            entry.sdp_session_id(),
        ))
    }

    /// Our SDP for an incoming call's 200 OK: the answer to the INVITE's
    /// offer, or our offer when the INVITE had none.
    fn sip_answer(&self, id: &K) -> Option<String> {
        let offer = self.calls.get(id)?.sip_offer.clone();
        self.sip_answer_to(id, offer.as_deref())
    }

    /// Our SDP answering `offer` (our own offer without one) on the call's port.
    pub(super) fn sip_answer_to(&self, id: &K, offer: Option<&str>) -> Option<String> {
        let Some(offer) = offer else {
            return self.sip_offer_sdp(id);
        };
        let entry = self.calls.get(id)?;
        let media = sdp::parse_answer(offer, &self.settings.sip_codecs).ok()?;
        Some(sdp::answer(
            self.settings.sip_media_ip?,
            entry.rtp_port?,
            &media,
            entry.sdp_session_id(),
        ))
    }

    /// Points the bridge at the media the far end's SDP describes. False
    /// when the SDP is unusable (no common codec, no address).
    pub(super) fn connect_sip_media(
        &mut self,
        id: &K,
        sdp_text: &str,
        answered: bool,
        flow: crate::AudioFlow,
    ) -> bool {
        let Some(leg) = self.calls.get(id).map(|e| e.leg) else {
            return false;
        };
        match sdp::parse_answer(sdp_text, &self.settings.sip_codecs) {
            Ok(media) => {
                self.media(MediaCommand::ConnectRemote {
                    leg,
                    addr: media.addr,
                    codec: media.codec,
                    dtmf_pt: media.dtmf_pt,
                    answered,
                    flow,
                });
                true
            }
            Err(e) => {
                self.observe_call(id, Observation::SdpUnusable(e.to_string()));
                false
            }
        }
    }
}
