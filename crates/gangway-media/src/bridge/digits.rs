//! DTMF on a bridged call, both ways. Towards the far end: digits from the
//! API or the browser's own telephone-events, sent as RFC 4733 events with
//! our audio. Towards the browser: the far end's events (and SIP INFO
//! digits) through the [`DtmfRelay`].

use crate::dtmf::{DtmfReceiver, DtmfSender, EventPacket};
use crate::dtmf_relay::DtmfRelay;
use crate::rtp::RtpPacket;

/// See the module documentation.
#[derive(Default)]
pub(super) struct Dtmf {
    /// The far end's telephone-event payload type, when it accepted it.
    pt: Option<u8>,
    to_sip: DtmfSender,
    from_sip: DtmfReceiver,
    /// The browser's own events (RTCDTMFSender), one digit per event.
    from_browser: DtmfReceiver,
    /// The far end's digits (RFC 4733 and SIP INFO) as events for the browser.
    pub(super) relay: DtmfRelay,
}

impl Dtmf {
    /// From the far end's latest SDP.
    pub(super) fn set_pt(&mut self, pt: Option<u8>) {
        self.pt = pt;
    }

    pub(super) fn pt(&self) -> Option<u8> {
        self.pt
    }

    /// The browser leg speaks Opus: its events run on a 48 kHz clock.
    pub(super) fn set_opus(&mut self) {
        self.relay.set_opus(true);
    }

    /// Queues digits for the far end; false when it did not accept
    /// telephone-event.
    pub(super) fn send(&mut self, digits: &str) -> bool {
        self.pt.is_some() && self.to_sip.push(digits) > 0
    }

    /// A telephone-event frame from the browser: each new event is sent on
    /// as one of ours, with the SIP leg's clock and pacing.
    pub(super) fn on_browser_event(&mut self, event_start: u64, code: u8) -> bool {
        let payload = [code, 0, 0, 0];
        match self.from_browser.on_packet(0, event_start as u32, &payload) {
            Some(digit) => self.send(&digit.to_string()),
            None => false,
        }
    }

    /// The event packet to send with the audio frame just written (whose
    /// timestamp is `stream_ts`), and its payload type.
    pub(super) fn next_for_sip(&mut self, stream_ts: u32) -> Option<(u8, EventPacket)> {
        let pt = self.pt?;
        self.to_sip.next(stream_ts).map(|event| (pt, event))
    }

    /// A telephone-event packet from the far end, `start` being where it
    /// falls on the browser's timeline: relayed to the browser, and the
    /// digit when it starts an event.
    pub(super) fn on_sip_event(&mut self, packet: &RtpPacket<'_>, start: u64) -> Option<char> {
        let digit = self
            .from_sip
            .on_packet(packet.ssrc, packet.ts, packet.payload);
        self.relay
            .on_sip_event(packet.ssrc, packet.ts, start, packet.payload);
        digit
    }

    /// A digit the far end sent in SIP INFO, to play to the browser.
    pub(super) fn play(&mut self, digit: char) -> bool {
        self.relay.queue_digit(digit)
    }
}
