//! Opus (browser leg) ↔ G.711 (SIP leg), run natively at 8 kHz: libopus
//! decodes any Opus bandwidth straight to 8 kHz and encodes from it, so no
//! resampler sits in the path.

use opus::{Application, Bitrate, Channels, Decoder, Encoder};

use crate::g711;
use crate::plc::Concealer;
use crate::types::Law;
pub use crate::types::OpusSettings;

/// 20 ms at 8 kHz: one G.711 packet and one Opus frame towards the browser.
pub const FRAME_SAMPLES: usize = 160;
/// The longest Opus packet (120 ms) decoded at 8 kHz.
const MAX_DECODED: usize = 960;
/// Longest gap filled in (100 ms); beyond it the far end's own concealment is better
/// than a long synthetic tail.
const MAX_CONCEALED: usize = 5;
/// Larger than any Opus packet the encoder makes at our bitrates.
const MAX_OPUS_PACKET: usize = 400;

/// Counts Opus packets by the audio bandwidth their TOC byte announces
/// (RFC 6716 §3.1): configurations 0–3 (SILK) and 16–19 (CELT) are
/// narrowband; everything else codes audio above 4 kHz, which the 8 kHz
/// SIP leg throws away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpusBandwidthCount {
    pub narrowband: u64,
    pub wider: u64,
}

impl OpusBandwidthCount {
    pub fn count(&mut self, packet: &[u8]) {
        match packet.first().map(|toc| toc >> 3) {
            Some(0..=3 | 16..=19) => self.narrowband += 1,
            Some(_) => self.wider += 1,
            None => {}
        }
    }
}

/// One call's codec state. Buffers are allocated once, here.
pub struct Transcoder {
    decoder: Decoder,
    encoder: Encoder,
    pcm: Vec<i16>,
    decoded: usize,
    opus: Vec<u8>,
    g711: Vec<u8>,
    /// Fills the SIP leg's losses by pitch-period repetition.
    plc: Concealer,
    /// Towards the browser: SIP audio gathered into 20 ms Opus frames (a PBX
    /// may send 10 or 30 ms packets), and the 8 kHz time of its first sample.
    frame: Vec<i16>,
    frame_start: u64,
}

/// Audio from the SIP leg on its way to the browser, in time order.
#[derive(Debug, Clone, Copy)]
pub enum SipAudio<'a> {
    /// G.711 as received (any length up to 20 ms).
    G711(&'a [u8], Law),
    /// `samples` that never came; `nth` counts consecutive losses from 0.
    Lost { samples: usize, nth: usize },
}

impl SipAudio<'_> {
    /// How many 8 kHz samples it covers.
    pub fn samples(&self) -> usize {
        match self {
            SipAudio::G711(payload, _) => payload.len(),
            SipAudio::Lost { samples, .. } => *samples,
        }
    }
}

/// The encoder of the Opus sent to browsers: 8 kHz mono, VoIP, `settings`,
/// in-band FEC. One place, so benchmarks measure what the gateway runs.
pub fn browser_encoder(settings: OpusSettings) -> Result<Encoder, opus::Error> {
    let mut encoder = Encoder::new(8000, Channels::Mono, Application::Voip)?;
    encoder.set_complexity(i32::from(settings.complexity.min(10)))?;
    encoder.set_bitrate(Bitrate::Bits(settings.bitrate as i32))?;
    // Browsers ask for in-band FEC; it lets them recover a lost packet from the next.
    encoder.set_inband_fec(true)?;
    encoder.set_packet_loss_perc(5)?;
    Ok(encoder)
}

impl Transcoder {
    pub fn new(settings: OpusSettings) -> Result<Self, opus::Error> {
        let decoder = Decoder::new(8000, Channels::Mono)?;
        let encoder = browser_encoder(settings)?;
        Ok(Transcoder {
            decoder,
            encoder,
            pcm: vec![0; MAX_DECODED],
            decoded: 0,
            opus: vec![0; MAX_OPUS_PACKET],
            g711: Vec::with_capacity(MAX_DECODED),
            plc: Concealer::default(),
            // Up to a frame waiting plus one more packet's 20 ms.
            frame: Vec::with_capacity(2 * FRAME_SAMPLES),
            frame_start: 0,
        })
    }

    /// Decodes one browser Opus packet to G.711 in `law`. Returns the G.711
    /// bytes (one per 8 kHz sample; any multiple of 20 ms), or an error for a
    /// packet libopus rejects.
    pub fn opus_to_g711(&mut self, packet: &[u8], law: Law) -> Result<&[u8], opus::Error> {
        Ok(self.opus_to_g711_after_loss(packet, law, 0)?.1)
    }

    /// Like [`Transcoder::opus_to_g711`], when `lost` 20 ms frames went
    /// missing just before `packet`: they are filled in first, the last one
    /// from the in-band FEC that `packet` carries, earlier ones by libopus's
    /// loss concealment, so the output covers the gap and then the packet.
    /// Returns how many frames were filled in (at most 100 ms) and the G.711.
    pub fn opus_to_g711_after_loss(
        &mut self,
        packet: &[u8],
        law: Law,
        lost: usize,
    ) -> Result<(usize, &[u8]), opus::Error> {
        let encode = match law {
            Law::Pcmu => g711::linear_to_ulaw,
            Law::Pcma => g711::linear_to_alaw,
        };
        self.g711.clear();
        let lost = lost.min(MAX_CONCEALED);
        for i in 0..lost {
            let frame = &mut self.pcm[..FRAME_SAMPLES];
            let n = if i + 1 == lost {
                self.decoder.decode(packet, frame, true)?
            } else {
                self.decoder.decode(&[], frame, false)?
            };
            self.g711.extend(frame[..n].iter().map(|&s| encode(s)));
        }
        self.decoded = self.decoder.decode(packet, &mut self.pcm, false)?;
        self.g711
            .extend(self.pcm[..self.decoded].iter().map(|&s| encode(s)));
        Ok((lost, &self.g711))
    }

    /// Encodes one G.711 packet (20 ms expected) from the SIP leg as an Opus
    /// packet for the browser, on its own: cut or padded to 20 ms (a PBX
    /// sends 10/20/30 ms; the bridge gathers those with
    /// [`Transcoder::push_for_browser`] instead).
    pub fn g711_to_opus(&mut self, payload: &[u8], law: Law) -> Result<&[u8], opus::Error> {
        self.frame.clear();
        let n = payload.len().min(FRAME_SAMPLES);
        self.push_for_browser(self.frame_start, SipAudio::G711(&payload[..n], law));
        self.frame.resize(FRAME_SAMPLES, 0);
        self.encode_for_browser().1
    }
}

impl Transcoder {
    /// Adds SIP audio starting at `time` (8 kHz) to the 20 ms frame being
    /// gathered for the browser; true when a frame is full and
    /// [`Transcoder::encode_for_browser`] should take it. A jump in time (a
    /// gap skipped as silence, frames left out for DTMF) drops the partial
    /// frame rather than close it up.
    pub fn push_for_browser(&mut self, time: u64, audio: SipAudio<'_>) -> bool {
        let follows = time == self.frame_start + self.frame.len() as u64;
        if !follows {
            self.plc.restart();
        }
        if self.frame.is_empty() || !follows {
            self.frame.clear();
            self.frame_start = time;
        }
        // The reorder buffer hands out at most 20 ms at a time and the
        // caller takes each full frame, so this never cuts anything off.
        let room = 2 * FRAME_SAMPLES - self.frame.len();
        let start = self.frame.len();
        match audio {
            SipAudio::G711(payload, law) => {
                let decode = match law {
                    Law::Pcmu => g711::ulaw_to_linear,
                    Law::Pcma => g711::alaw_to_linear,
                };
                let n = payload.len().min(room);
                self.frame.extend(payload[..n].iter().map(|&b| decode(b)));
                self.plc.received(&mut self.frame[start..]);
            }
            SipAudio::Lost { samples, nth } => {
                // Pitch-period repetition going on from the last sample
                // passed on, fading out over 60 ms (`plc.rs`).
                self.frame.resize(start + samples.min(room), 0);
                self.plc.lost(&mut self.frame[start..], nth == 0);
            }
        }
        self.frame_ready()
    }

    /// A full 20 ms frame waits for [`Transcoder::encode_for_browser`].
    pub fn frame_ready(&self) -> bool {
        self.frame.len() >= FRAME_SAMPLES
    }

    /// Encodes the full 20 ms frame [`Transcoder::push_for_browser`]
    /// gathered: its 8 kHz start time and the Opus packet. What came beyond
    /// 20 ms starts the next frame.
    pub fn encode_for_browser(&mut self) -> (u64, Result<&[u8], opus::Error>) {
        let time = self.frame_start;
        let n = self.frame.len().min(FRAME_SAMPLES);
        let encoded = self.encoder.encode(&self.frame[..n], &mut self.opus);
        self.frame.drain(..n);
        self.frame_start += n as u64;
        let opus = encoded.map(|len| &self.opus[..len]);
        (time, opus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, samples: usize, start: usize) -> Vec<i16> {
        (start..start + samples)
            .map(|i| {
                (0.5 * 32767.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin())
                    as i16
            })
            .collect()
    }

    /// Power of `freq` relative to the signal's total power (Goertzel).
    fn share(samples: &[i16], freq: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        let mut total = 0.0;
        for &x in samples {
            let x = f64::from(x);
            total += x * x;
            let s = x + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        power / (total * samples.len() as f64 / 2.0).max(1.0)
    }

    #[test]
    fn a_tone_survives_g711_to_opus_to_g711() {
        let mut gw = Transcoder::new(OpusSettings::default()).unwrap();
        let mut browser = Transcoder::new(OpusSettings::default()).unwrap();
        let mut out = Vec::new();
        for frame in 0..50 {
            let pcm = tone(1000.0, FRAME_SAMPLES, frame * FRAME_SAMPLES);
            let ulaw: Vec<u8> = pcm.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
            let opus = gw.g711_to_opus(&ulaw, Law::Pcmu).unwrap().to_vec();
            assert!(opus.len() < 100, "a 20 ms frame at 24 kbit/s is ~60 bytes");
            // The "browser" decodes and sends it straight back.
            let back = browser.opus_to_g711(&opus, Law::Pcma).unwrap();
            assert_eq!(back.len(), FRAME_SAMPLES);
            out.extend(back.iter().map(|&b| g711::alaw_to_linear(b)));
        }
        // Skip the codec's start-up, then the tone must dominate.
        let settled = &out[FRAME_SAMPLES * 5..];
        assert!(
            share(settled, 1000.0) > 0.8,
            "1000 Hz share {}",
            share(settled, 1000.0)
        );
        assert!(share(settled, 440.0) < 0.05, "negative control");
    }

    #[test]
    fn a_lost_packet_is_recovered_from_the_next_ones_fec() {
        // A browser-side encoder with in-band FEC, as Chrome sends it.
        let mut enc = Encoder::new(8000, Channels::Mono, Application::Voip).unwrap();
        enc.set_inband_fec(true).unwrap();
        enc.set_packet_loss_perc(20).unwrap();
        enc.set_bitrate(Bitrate::Bits(24_000)).unwrap();
        let packets: Vec<Vec<u8>> = (0..30)
            .map(|f| {
                enc.encode_vec(&tone(1000.0, FRAME_SAMPLES, f * FRAME_SAMPLES), 400)
                    .unwrap()
            })
            .collect();
        let mut t = Transcoder::new(OpusSettings::default()).unwrap();
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            match i {
                20 => continue, // lost
                21 => {
                    let (filled, g) = t.opus_to_g711_after_loss(p, Law::Pcmu, 1).unwrap();
                    assert_eq!(filled, 1);
                    assert_eq!(g.len(), 2 * FRAME_SAMPLES, "the lost frame, then this one");
                    out.extend(g.iter().map(|&b| g711::ulaw_to_linear(b)));
                }
                _ => out.extend(
                    t.opus_to_g711(p, Law::Pcmu)
                        .unwrap()
                        .iter()
                        .map(|&b| g711::ulaw_to_linear(b)),
                ),
            }
        }
        assert_eq!(out.len(), 30 * FRAME_SAMPLES, "the timeline has no hole");
        let recovered = &out[20 * FRAME_SAMPLES..21 * FRAME_SAMPLES];
        assert!(
            share(recovered, 1000.0) > 0.5,
            "FEC frame carries the tone: {}",
            share(recovered, 1000.0)
        );
        // Several lost: concealment fills them all.
        let (filled, g) = t
            .opus_to_g711_after_loss(&packets[29], Law::Pcmu, 3)
            .unwrap();
        assert_eq!((filled, g.len()), (3, 4 * FRAME_SAMPLES));
    }

    #[test]
    fn sip_losses_are_concealed_by_pitch_repetition_that_fades() {
        let mut gw = Transcoder::new(OpusSettings::default()).unwrap();
        let mut browser = Decoder::new(8000, Channels::Mono).unwrap();
        let mut pcm = vec![0i16; MAX_DECODED];
        let mut level = |opus: &[u8]| {
            let n = browser.decode(opus, &mut pcm, false).unwrap();
            (pcm[..n].iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / n as f64).sqrt()
        };
        let mut last = 0.0;
        for f in 0..20 {
            let ulaw: Vec<u8> = tone(1000.0, FRAME_SAMPLES, f * FRAME_SAMPLES)
                .iter()
                .map(|&s| g711::linear_to_ulaw(s))
                .collect();
            last = level(gw.g711_to_opus(&ulaw, Law::Pcmu).unwrap());
        }
        // The last frame went through `g711_to_opus`; gather the losses
        // after it the way the bridge does.
        let mut at = 20 * FRAME_SAMPLES as u64;
        let concealed: Vec<f64> = (0..4)
            .map(|nth| {
                let lost = SipAudio::Lost {
                    samples: FRAME_SAMPLES,
                    nth,
                };
                assert!(gw.push_for_browser(at, lost), "a whole frame");
                let (time, opus) = gw.encode_for_browser();
                assert_eq!(time, at);
                at += FRAME_SAMPLES as u64;
                level(opus.unwrap())
            })
            .collect();
        assert!(
            concealed[0] > last * 0.6,
            "the first concealed frame carries the signal: {concealed:?} vs {last}"
        );
        assert!(
            concealed.windows(2).all(|w| w[1] < w[0]),
            "and it fades: {concealed:?}"
        );
        assert!(
            concealed[3] < last * 0.05,
            "to silence by 60 ms: {concealed:?}"
        );
    }

    #[test]
    fn ten_and_thirty_ms_packets_are_gathered_into_20_ms_frames() {
        for ptime in [80usize, 240] {
            let mut gw = Transcoder::new(OpusSettings::default()).unwrap();
            let mut browser = Decoder::new(8000, Channels::Mono).unwrap();
            let mut times = Vec::new();
            let mut heard = Vec::new();
            let mut pcm = vec![0i16; MAX_DECODED];
            for p in 0..60 {
                let start = p * ptime;
                let g: Vec<u8> = tone(1000.0, ptime, start)
                    .iter()
                    .map(|&s| g711::linear_to_alaw(s))
                    .collect();
                gw.push_for_browser(start as u64, SipAudio::G711(&g, Law::Pcma));
                while gw.frame_ready() {
                    let (time, opus) = gw.encode_for_browser();
                    times.push(time);
                    let n = browser.decode(opus.unwrap(), &mut pcm, false).unwrap();
                    assert_eq!(n, FRAME_SAMPLES);
                    heard.extend_from_slice(&pcm[..n]);
                }
            }
            let expected: Vec<u64> = (0..times.len() as u64).map(|f| f * 160).collect();
            assert_eq!(times, expected, "{ptime}: one 20 ms frame after another");
            assert_eq!(times.len(), 60 * ptime / FRAME_SAMPLES);
            let settled = &heard[5 * FRAME_SAMPLES..];
            assert!(share(settled, 1000.0) > 0.8, "{ptime}: the tone, unbroken");
        }
        // A jump in time drops the partial frame instead of closing it up.
        let mut gw = Transcoder::new(OpusSettings::default()).unwrap();
        assert!(!gw.push_for_browser(0, SipAudio::G711(&[0xd5; 80], Law::Pcma)));
        assert!(!gw.push_for_browser(8000, SipAudio::G711(&[0xd5; 80], Law::Pcma)));
        assert!(gw.push_for_browser(8080, SipAudio::G711(&[0xd5; 80], Law::Pcma)));
        assert_eq!(gw.encode_for_browser().0, 8000);
    }

    #[test]
    fn garbage_opus_is_an_error_not_a_panic() {
        let mut t = Transcoder::new(OpusSettings::default()).unwrap();
        // A TOC announcing a frame count code 3 packet with no count byte.
        assert!(t.opus_to_g711(&[0x03], Law::Pcmu).is_err());
        // Odd-sized G.711 is padded to 20 ms.
        assert!(t.g711_to_opus(&[0xff; 80], Law::Pcmu).is_ok());
        assert!(t.g711_to_opus(&[0xff; 400], Law::Pcmu).is_ok());
    }

    #[test]
    fn opus_bandwidth_is_read_from_the_toc_byte() {
        let mut c = OpusBandwidthCount::default();
        // SILK NB 20 ms (config 1), CELT NB 20 ms (19), hybrid FB (15),
        // SILK WB (9), CELT FB (31); an empty packet counts as neither.
        for config in [1u8, 19, 15, 9, 31] {
            c.count(&[config << 3 | 0b001, 0xaa]);
        }
        c.count(&[]);
        assert_eq!((c.narrowband, c.wider), (2, 3));
        // What libopus makes when told to stay narrowband.
        let mut enc = Encoder::new(48_000, Channels::Mono, Application::Voip).unwrap();
        enc.set_max_bandwidth(opus::Bandwidth::Narrowband).unwrap();
        let tone: Vec<i16> = (0..960)
            .map(|i| {
                ((i as f64 * 2.0 * std::f64::consts::PI * 1000.0 / 48_000.0).sin() * 8000.0) as i16
            })
            .collect();
        let mut c = OpusBandwidthCount::default();
        for _ in 0..10 {
            c.count(&enc.encode_vec(&tone, 400).unwrap());
        }
        assert_eq!((c.narrowband, c.wider), (10, 0));
        let mut enc = Encoder::new(48_000, Channels::Mono, Application::Voip).unwrap();
        enc.set_bitrate(Bitrate::Bits(64_000)).unwrap();
        let mut c = OpusBandwidthCount::default();
        for _ in 0..10 {
            c.count(&enc.encode_vec(&tone, 400).unwrap());
        }
        assert!(c.wider >= 9, "fullband by default: {c:?}");
    }
}
