//! The codec's own cost per transcoded call-second, at the gateway's
//! settings: libopus decoding the browser's 50 frames to 8 kHz and encoding
//! 50 frames of 8 kHz audio back (VoIP, the configured complexity and
//! bitrate, in-band FEC at 5 % expected loss), plus G.711 both ways. What a
//! transcoding gateway cannot go below without changing codec settings.

use std::time::Instant;

use crate::{cpu_seconds, BrowserOpus};

/// CPU seconds per call-second with the browser sending `opus`, over
/// `call_seconds` of audio (a few
/// hundred for the 10 ms clock to be precise); also the wall seconds it
/// took.
pub fn opus_floor(
    opus: BrowserOpus,
    complexity: i32,
    bitrate: i32,
    call_seconds: usize,
) -> (f64, f64) {
    use opus::{Channels, Decoder};
    let frames = opus.frames();
    let mut decoder = Decoder::new(8000, Channels::Mono).unwrap();
    let settings = gangway_media::OpusSettings {
        complexity: complexity.clamp(0, 10) as u8,
        bitrate: bitrate as u32,
    };
    let mut encoder = gangway_media::transcode::browser_encoder(settings).unwrap();
    let mut pcm = vec![0i16; 960];
    let mut out = vec![0u8; 1500];
    let mut ulaw = vec![0u8; 160];
    let mut sink = 0usize;
    let (cpu0, wall0) = (cpu_seconds("thread-self"), Instant::now());
    for n in 0..call_seconds * 50 {
        let got = decoder
            .decode(&frames[n % frames.len()], &mut pcm, false)
            .unwrap();
        for (u, s) in ulaw.iter_mut().zip(&pcm[..got]) {
            *u = gangway_media::g711::linear_to_ulaw(*s);
        }
        for (s, u) in pcm.iter_mut().zip(&ulaw) {
            *s = gangway_media::g711::ulaw_to_linear(*u);
        }
        sink += encoder.encode(&pcm[..160], &mut out).unwrap();
    }
    std::hint::black_box(sink);
    let cpu = cpu_seconds("thread-self") - cpu0;
    (cpu / call_seconds as f64, wall0.elapsed().as_secs_f64())
}
