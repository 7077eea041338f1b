//! One 20 ms frame through each direction of the transcoding path, next to
//! bare libopus at the same settings (8 kHz mono, VoIP, complexity 5,
//! 24 kbit/s, in-band FEC): what the path adds on top of the codec.
//!
//! The SIP -> browser path is also measured through the reorder buffer,
//! with every 20th packet lost (concealed, `plc.rs`); and the concealer on
//! its own: one lost 20 ms frame (pitch search and synthesis).
//!
//! cargo bench -p gangway-benches --bench transcode

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};

use gangway_media::g711;
use gangway_media::jitter::{JitterBuffer, Out};
use gangway_media::plc::Concealer;
use gangway_media::transcode::{OpusSettings, SipAudio, Transcoder};
use gangway_media::Law;
use opus::{Application, Bitrate, Channels, Decoder, Encoder};

const FRAME: usize = 160;

fn speech_like(frames: usize) -> Vec<i16> {
    // Two tones with a slow envelope: enough structure for the encoder to work on.
    (0..frames * FRAME)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let env = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            let s = (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + 0.5 * (2.0 * std::f64::consts::PI * 1250.0 * t).sin();
            (env * s * 9000.0) as i16
        })
        .collect()
}

fn bare_encoder() -> Encoder {
    let mut e = Encoder::new(8000, Channels::Mono, Application::Voip).unwrap();
    e.set_complexity(5).unwrap();
    e.set_bitrate(Bitrate::Bits(24_000)).unwrap();
    e.set_inband_fec(true).unwrap();
    e.set_packet_loss_perc(5).unwrap();
    e
}

fn benches(c: &mut Criterion) {
    let pcm = speech_like(50);
    let ulaw: Vec<Vec<u8>> = pcm
        .chunks(FRAME)
        .map(|f| f.iter().map(|&s| g711::linear_to_ulaw(s)).collect())
        .collect();
    let mut enc = bare_encoder();
    let opus: Vec<Vec<u8>> = pcm
        .chunks(FRAME)
        .map(|f| enc.encode_vec(f, 400).unwrap())
        .collect();

    let mut group = c.benchmark_group("20 ms frame");
    // SIP -> browser: G.711 in, Opus out.
    let mut t = Transcoder::new(OpusSettings::default()).unwrap();
    let mut i = 0;
    group.bench_function("path: PCMU -> Opus", |b| {
        b.iter(|| {
            i = (i + 1) % ulaw.len();
            black_box(
                t.g711_to_opus(black_box(&ulaw[i]), Law::Pcmu)
                    .unwrap()
                    .len(),
            )
        })
    });
    // The same through the reorder buffer (push, then pull what is due),
    // in order and with every 20th packet swapped with the next.
    for (name, swap_every) in [
        ("path: reorder buffer + PCMU -> Opus", usize::MAX),
        ("path: reorder buffer (5 % swapped) + PCMU -> Opus", 20),
    ] {
        let mut t = Transcoder::new(OpusSettings::default()).unwrap();
        let mut jb = JitterBuffer::default();
        let start = Instant::now();
        let mut n = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                // Packet n, or n+1 and n swapped.
                let seq = match n as usize % swap_every {
                    x if x == swap_every - 2 => n + 1,
                    x if x == swap_every - 1 => n - 1,
                    _ => n,
                };
                let now = start + Duration::from_millis(20 * n);
                let payload = &ulaw[seq as usize % ulaw.len()];
                jb.push(seq * FRAME as u64, black_box(payload), false, now);
                let mut bytes = 0;
                while let Some(out) = jb.poll(now) {
                    if let Out::Frame { payload, .. } = out {
                        bytes += t.g711_to_opus(payload, Law::Pcmu).unwrap().len();
                    }
                }
                n += 1;
                black_box(bytes)
            })
        });
    }
    // Every 20th packet lost: the reorder buffer reports it once its wait
    // is over and the transcoder conceals it.
    let mut t = Transcoder::new(OpusSettings::default()).unwrap();
    let mut jb = JitterBuffer::default();
    let start = Instant::now();
    let mut n = 0u64;
    group.bench_function(
        "path: reorder buffer (5 % lost, concealed) + PCMU -> Opus",
        |b| {
            b.iter(|| {
                let now = start + Duration::from_millis(20 * n);
                if n % 20 != 19 {
                    let payload = &ulaw[n as usize % ulaw.len()];
                    jb.push(n * FRAME as u64, black_box(payload), false, now);
                }
                let mut bytes = 0;
                while let Some(out) = jb.poll(now) {
                    let (time, audio) = match out {
                        Out::Frame { time, payload } => (time, SipAudio::G711(payload, Law::Pcmu)),
                        Out::Lost { time, samples, nth } => (
                            time,
                            SipAudio::Lost {
                                samples: samples as usize,
                                nth,
                            },
                        ),
                    };
                    if t.push_for_browser(time, audio) {
                        bytes += t.encode_for_browser().1.unwrap().len();
                    }
                }
                n += 1;
                black_box(bytes)
            })
        },
    );
    // The concealer alone: 200 ms received, then one 20 ms frame lost.
    let mut plc = Concealer::default();
    let mut frame = [0i16; FRAME];
    let mut f = 0;
    group.bench_function("concealer: 20 ms received + 20 ms lost", |b| {
        b.iter(|| {
            f = (f + 1) % 50;
            frame.copy_from_slice(&pcm[f * FRAME..(f + 1) * FRAME]);
            plc.received(black_box(&mut frame));
            plc.lost(black_box(&mut frame), true);
            black_box(frame[0])
        })
    });
    let mut e = bare_encoder();
    let mut out = vec![0u8; 400];
    let mut j = 0;
    group.bench_function("bare libopus encode", |b| {
        b.iter(|| {
            j = (j + 1) % 50;
            black_box(
                e.encode(black_box(&pcm[j * FRAME..(j + 1) * FRAME]), &mut out)
                    .unwrap(),
            )
        })
    });
    // Browser -> SIP: Opus in, G.711 out.
    let mut t = Transcoder::new(OpusSettings::default()).unwrap();
    let mut k = 0;
    group.bench_function("path: Opus -> PCMU", |b| {
        b.iter(|| {
            k = (k + 1) % opus.len();
            black_box(
                t.opus_to_g711(black_box(&opus[k]), Law::Pcmu)
                    .unwrap()
                    .len(),
            )
        })
    });
    let mut d = Decoder::new(8000, Channels::Mono).unwrap();
    let mut pcm_out = vec![0i16; 960];
    let mut m = 0;
    group.bench_function("bare libopus decode", |b| {
        b.iter(|| {
            m = (m + 1) % opus.len();
            black_box(d.decode(black_box(&opus[m]), &mut pcm_out, false).unwrap())
        })
    });
    group.finish();
}

criterion_group!(transcode, benches);
criterion_main!(transcode);
