//! The legs' events in the core's words. Nothing is decided here: each
//! event is translated and handed to the core.

use gangway_core::calls::{Input, LegFailure, MediaEvent, SipInput};
use gangway_core::{LegId, SipLegId};
use gangway_media::LegEvent;
use gangway_rtc::{PeerId, SetupError};
use gangway_sip::SipEvent;

use super::CallDriver;

impl CallDriver {
    pub(crate) fn on_leg(&mut self, peer: PeerId, event: LegEvent) {
        let event = match event {
            LegEvent::Ready { answer, rtp_port } => MediaEvent::Ready { answer, rtp_port },
            LegEvent::Failed(e) => MediaEvent::Failed(leg_failure(e)),
            LegEvent::NoCapacity(why) => MediaEvent::Failed(LegFailure::NoCapacity(why)),
            LegEvent::CandidateRejected(message) => MediaEvent::CandidateRejected(message),
            LegEvent::Connected => MediaEvent::Connected,
            LegEvent::Disconnected => MediaEvent::Disconnected,
            LegEvent::MediaTimeout => MediaEvent::MediaTimeout,
            LegEvent::Dtmf(digit) => MediaEvent::Dtmf(digit),
            LegEvent::DtmfRefused => MediaEvent::DtmfRefused,
            LegEvent::Renegotiated { answer } => MediaEvent::Renegotiated { answer },
            LegEvent::RenegotiationFailed(e) => MediaEvent::RenegotiationFailed(e.to_string()),
        };
        self.feed(Input::Media(LegId(peer.0), event));
    }

    pub(crate) fn on_sip(&mut self, key: u64, event: SipEvent) {
        let sip = SipLegId(key);
        let ended = event == SipEvent::Ended;
        let input = match event {
            SipEvent::Provisional { status, sdp } => SipInput::Provisional { status, sdp },
            SipEvent::Answered { sdp } => SipInput::Answered {
                sdp,
                replacing_target: self.handles.dialog_ref(sip).map(|d| d.replacing_target()),
            },
            SipEvent::Failed { status, reason } => SipInput::Failed {
                status,
                reason,
                challenge: self
                    .handles
                    .dialogs
                    .get(&sip)
                    .and_then(|d| d.failure())
                    .and_then(|f| f.challenge().map(str::to_string)),
            },
            SipEvent::RemoteHangup => SipInput::RemoteHangup,
            SipEvent::Dtmf { digit } => SipInput::Dtmf { digit },
            SipEvent::RemoteOffer { sdp } => SipInput::RemoteOffer { sdp },
            SipEvent::OfferAccepted { sdp, hold } => SipInput::OfferAccepted { sdp, hold },
            SipEvent::OfferRefused { status, hold } => SipInput::OfferRefused { status, hold },
            SipEvent::TransferProgress { status, done } => {
                SipInput::TransferProgress { status, done }
            }
            SipEvent::Referred { target } => SipInput::Referred { target },
            SipEvent::SessionExpired { status } => SipInput::SessionExpired { status },
            SipEvent::ReplacedBy(replacement) => {
                let incoming = *replacement.0;
                // Held until the core says what becomes of it.
                self.handles.replacement = Some(incoming.handle);
                SipInput::ReplacedBy {
                    from: incoming.from_uri,
                    offer: incoming.sdp_offer,
                }
            }
            SipEvent::Ended => SipInput::Ended,
        };
        self.feed(Input::Sip(sip, input));
        if let Some(orphan) = self.handles.replacement.take() {
            // It named a dialog no call holds any more.
            orphan.reject(481);
        }
        if ended {
            let handles = &mut self.handles;
            if let Some(id) = handles.dialogs.get(&sip).and_then(|d| d.call_id()) {
                if handles.ended_call_ids.len() >= 256 {
                    handles.ended_call_ids.clear();
                }
                handles.ended_call_ids.insert(sip, id);
            }
            self.handles.dialogs.remove(&sip);
            self.handles.unanswered.remove(&sip);
        }
    }
}

fn leg_failure(e: SetupError) -> LegFailure {
    match e {
        SetupError::IncompatibleCodecs => LegFailure::IncompatibleCodecs,
        e => LegFailure::InvalidSdp(e.to_string()),
    }
}
