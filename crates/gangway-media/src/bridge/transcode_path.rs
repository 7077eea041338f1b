//! A transcoded call's codec path: the browser's Opus decoded to G.711 for
//! the far end (its losses concealed), and the far end's G.711 reordered and
//! gathered into 20 ms Opus frames for the browser.

use std::time::Instant;

use tracing::debug;

use crate::dtmf_relay::DtmfRelay;
use crate::jitter::{JitterBuffer, Out};
use crate::transcode::{OpusBandwidthCount, OpusSettings, SipAudio, Transcoder, FRAME_SAMPLES};
use crate::types::Law;

/// See the module documentation.
pub(super) struct TranscodePath {
    transcoder: Transcoder,
    /// The far end's audio, reordered before the Opus encoder.
    jitter: JitterBuffer,
    /// The reorder buffer deadline the shard was last asked to wake for.
    wake: Option<Instant>,
    /// Where the next browser Opus frame should start (8 kHz), to spot losses.
    opus_next: Option<u64>,
    /// Browser frames filled in by FEC or concealment.
    pub(super) concealed_frames: u64,
    /// The browser's Opus packets by audio bandwidth (TOC byte): did it
    /// honour our request for narrowband?
    pub(super) opus_bandwidth: OpusBandwidthCount,
}

impl TranscodePath {
    pub(super) fn new(settings: OpusSettings) -> Result<Self, opus::Error> {
        Ok(TranscodePath {
            transcoder: Transcoder::new(settings)?,
            jitter: JitterBuffer::default(),
            wake: None,
            opus_next: None,
            concealed_frames: 0,
            opus_bandwidth: OpusBandwidthCount::default(),
        })
    }

    /// Sending to the far end stopped (a hold): the Opus decoder's timeline
    /// starts afresh at resume, not as a loss the length of the hold.
    pub(super) fn restart_from_browser(&mut self) {
        self.opus_next = None;
    }

    /// Decodes one browser Opus packet at 8 kHz time `time` to G.711 in
    /// `law`, with the frames lost just before it filled in first. Returns
    /// where the G.711 starts and the G.711; `None` for a packet libopus
    /// rejects.
    pub(super) fn decode_browser(
        &mut self,
        time: u64,
        packet: &[u8],
        law: Law,
    ) -> Option<(u64, &[u8])> {
        self.opus_bandwidth.count(packet);
        // A gap in the browser's timeline is lost packets (str0m delivers
        // audio in order): conceal it before this packet.
        let lost = match self.opus_next {
            Some(next) if time > next => ((time - next) / FRAME_SAMPLES as u64) as usize,
            _ => 0,
        };
        match self.transcoder.opus_to_g711_after_loss(packet, law, lost) {
            Ok((concealed, g711)) => {
                self.concealed_frames += concealed as u64;
                let start = time.saturating_sub((concealed * FRAME_SAMPLES) as u64);
                self.opus_next = Some(start + g711.len() as u64);
                Some((start, g711))
            }
            Err(e) => {
                debug!("undecodable Opus packet dropped: {e}");
                None
            }
        }
    }

    /// The far end's audio goes through the reorder buffer first.
    pub(super) fn buffer(&mut self, time: u64, payload: &[u8], marker: bool, now: Instant) {
        self.jitter.push(time, payload, marker, now);
    }

    /// The next 20 ms Opus frame for the browser, in order, with its 8 kHz
    /// time, gathered from what the reorder buffer releases at `now`
    /// (received G.711 of any packet time, or lost samples concealed by
    /// pitch-period repetition, `plc.rs`). Audio a DTMF event towards the
    /// browser covers is left out: the browser plays the event.
    pub(super) fn next_for_browser(
        &mut self,
        now: Instant,
        law: Law,
        relay: &mut DtmfRelay,
    ) -> Option<(u64, Result<&[u8], opus::Error>)> {
        loop {
            // What the last call left (more than 20 ms gathered) goes first.
            if self.transcoder.frame_ready() {
                return Some(self.transcoder.encode_for_browser());
            }
            let (time, audio) = match self.jitter.poll(now)? {
                Out::Frame { time, payload } => (time, SipAudio::G711(payload, law)),
                Out::Lost { time, samples, nth } => (
                    time,
                    SipAudio::Lost {
                        samples: samples as usize,
                        nth,
                    },
                ),
            };
            if relay.on_sip_audio(time, audio.samples() as u32) {
                continue;
            }
            if self.transcoder.push_for_browser(time, audio) {
                return Some(self.transcoder.encode_for_browser());
            }
        }
    }

    /// The reorder buffer's deadline when it changed since the last call
    /// (the shard is asked to wake then).
    pub(super) fn new_wake(&mut self) -> Option<Instant> {
        let at = self.jitter.next_deadline()?;
        (self.wake != Some(at)).then(|| {
            self.wake = Some(at);
            at
        })
    }

    /// True (once) when the wake asked for has come.
    pub(super) fn wake_due(&mut self, now: Instant) -> bool {
        if self.wake.is_some_and(|at| at <= now) {
            self.wake = None;
            return true;
        }
        false
    }

    pub(super) fn jitter(&self) -> &JitterBuffer {
        &self.jitter
    }
}
