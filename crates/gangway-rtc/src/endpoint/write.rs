//! Writing media to a connected peer: audio frames and RFC 4733
//! telephone-events, all through one funnel (`write_with`).

use std::sync::Arc;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::{Frequency, MediaTime, Mid, Pt, Writer};
use str0m::RtcError;
use tracing::warn;

use super::peer::{drain, translate};
use super::{AudioCodec, Endpoint, PeerId};

impl Endpoint {
    /// Sends one audio frame to a peer with the given payload type.
    pub fn write_media(
        &mut self,
        id: PeerId,
        mid: Mid,
        pt: Pt,
        time: MediaTime,
        wallclock: Instant,
        data: Arc<[u8]>,
    ) -> bool {
        self.write_with(id, Some(mid), |writer| {
            Some(writer.write(pt, wallclock, time, data))
        })
    }

    /// Whether the peer's answer includes `codec`.
    pub fn supports(&mut self, id: PeerId, codec: AudioCodec) -> bool {
        self.audio_pt(id, codec).is_some()
    }

    fn audio_pt(&mut self, id: PeerId, codec: AudioCodec) -> Option<(Mid, Pt)> {
        let peer = self.peers.get_mut(&id)?;
        let mid = peer.audio_mid;
        let writer = peer.rtc.writer(mid)?;
        let pt = writer
            .payload_params()
            .find(|p| AudioCodec::from_str0m(p.spec().codec) == Some(codec))
            .map(|p| p.pt());
        pt.map(|pt| (mid, pt))
    }

    /// Sends one RFC 4733 telephone-event packet as it is: `payload` (one
    /// report), the RTP timestamp `time` on the `clock_hz` clock (the
    /// event's start, on the same timeline as the audio written with that
    /// clock) and the marker bit. str0m's own `Writer::telephone_event`
    /// wants the whole event's duration up front, which a relayed event
    /// does not have; a plain write on the negotiated telephone-event
    /// payload type passes each report through unchanged, on the audio's
    /// SSRC and sequence numbers. False when the peer is not connected or
    /// did not negotiate telephone-event at that clock.
    pub fn write_telephone_event(
        &mut self,
        id: PeerId,
        clock_hz: u32,
        time: u64,
        marker: bool,
        wallclock: Instant,
        payload: &[u8],
    ) -> bool {
        let clock = match clock_hz {
            48_000 => Frequency::FORTY_EIGHT_KHZ,
            8_000 => Frequency::EIGHT_KHZ,
            _ => return false,
        };
        self.write_with(id, None, |writer| {
            let pt = writer
                .payload_params()
                .find(|p| p.spec().codec == Codec::Tele && p.spec().clock_rate == clock)
                .map(|p| p.pt())?;
            Some(writer.start_of_talkspurt(marker).write(
                pt,
                wallclock,
                MediaTime::new(time, clock),
                payload,
            ))
        })
    }

    /// Hands a connected peer's writer for `mid` (its audio media when
    /// `None`) to `write` and sends what that produced. False when there is
    /// no such peer or media, `write` declines (`None`), or str0m refuses.
    fn write_with(
        &mut self,
        id: PeerId,
        mid: Option<Mid>,
        write: impl FnOnce(Writer<'_>) -> Option<Result<(), RtcError>>,
    ) -> bool {
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        if !peer.connected {
            return false;
        }
        let Some(writer) = peer.rtc.writer(mid.unwrap_or(peer.audio_mid)) else {
            return false;
        };
        match write(writer) {
            None => return false,
            Some(Err(e)) => {
                warn!(peer = id.0, "write failed: {e}");
                return false;
            }
            Some(Ok(())) => {}
        }
        let events = &mut self.events;
        drain(id, peer, &mut self.transmits, &mut |ev| {
            events.extend(translate(id, ev))
        });
        true
    }

    /// Sends one audio frame in `codec` on the peer's audio media.
    pub fn write_audio(
        &mut self,
        id: PeerId,
        codec: AudioCodec,
        time: MediaTime,
        wallclock: Instant,
        data: &[u8],
    ) -> bool {
        match self.audio_pt(id, codec) {
            Some((mid, pt)) => self.write_media(id, mid, pt, time, wallclock, data.into()),
            None => false,
        }
    }
}
