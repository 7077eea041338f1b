//! Audio helpers for the end-to-end tests: a WAV tone writer (for
//! Chromium's fake microphone) and Goertzel-based tone detection to check
//! that what came back is the tone that was sent.

use std::f64::consts::PI;
use std::io::{self, Write};
use std::path::Path;

/// Peak amplitude of generated tones, relative to full scale.
const TONE_AMPLITUDE: f64 = 0.5;

/// Analysis frame length used by [`tone_coverage`].
const FRAME_MS: u32 = 20;

/// The target must beat every probe frequency by this power ratio (10 dB).
const DOMINANCE_FACTOR: f64 = 10.0;

/// Frames quieter than this RMS (-40 dBFS) count as silence, never as tone.
const SILENCE_RMS: f64 = 0.01;

/// Frequencies compared against the target; those within 15% of it are skipped.
const PROBES_HZ: [f64; 8] = [300.0, 440.0, 700.0, 1000.0, 1400.0, 2000.0, 2600.0, 3200.0];

/// Writes a sine tone as a 16-bit mono PCM WAV file (amplitude 0.5 FS).
///
/// Chromium's `--use-file-for-fake-audio-capture` loops the file, so for a
/// click-free loop choose a duration holding a whole number of periods
/// (any whole number of milliseconds does for 1000 Hz at 48 kHz).
pub fn write_tone_wav(
    path: impl AsRef<Path>,
    freq_hz: f64,
    seconds: f64,
    sample_rate: u32,
) -> io::Result<()> {
    let n = (seconds * f64::from(sample_rate)).round() as usize;
    let samples: Vec<i16> = (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(sample_rate);
            let v = TONE_AMPLITUDE * (2.0 * PI * freq_hz * t).sin();
            (v * f64::from(i16::MAX)).round() as i16
        })
        .collect();
    write_wav_i16(path, &samples, sample_rate)
}

/// Writes 16-bit mono PCM samples as a canonical 44-byte-header WAV file.
pub fn write_wav_i16(path: impl AsRef<Path>, samples: &[i16], sample_rate: u32) -> io::Result<()> {
    let data_len = u32::try_from(samples.len() * 2)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "WAV data too large"))?;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(&out)?;
    f.sync_all()
}

/// Decodes little-endian 16-bit PCM bytes into samples in [-1, 1).
pub fn i16le_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// Power of `freq` in `samples` by the (generalised, non-integer bin)
/// Goertzel algorithm, normalised by the frame length so that a full-scale
/// sine at `freq` gives about 0.25 whatever the frame length.
pub fn goertzel_power(samples: &[f32], sample_rate: u32, freq: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let w = 2.0 * PI * freq / f64::from(sample_rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len() as f64;
    power.max(0.0) / (n * n)
}

/// Root mean square of `samples`.
pub fn rms(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// Fraction (0..=1) of the 20 ms frames of `samples` in which `target_hz`
/// clearly dominates: the frame is not silence (RMS above -40 dBFS) and the
/// target's Goertzel power is at least 10x the power at each probe frequency
/// (300, 440, 700, 1000, 1400, 2000, 2600, 3200 Hz, skipping those within 15%
/// of the target). A Hann window keeps spectral leakage from a strong tone
/// out of the probes. A trailing partial frame is ignored.
pub fn tone_coverage(samples: &[f32], sample_rate: u32, target_hz: f64) -> f64 {
    let frame_len = (sample_rate * FRAME_MS / 1000) as usize;
    if frame_len == 0 || samples.len() < frame_len {
        return 0.0;
    }
    let probes: Vec<f64> = PROBES_HZ
        .iter()
        .copied()
        .filter(|p| (p - target_hz).abs() > 0.15 * target_hz)
        .filter(|p| *p < f64::from(sample_rate) / 2.0)
        .collect();
    let window: Vec<f32> = (0..frame_len)
        .map(|i| (0.5 - 0.5 * (2.0 * PI * i as f64 / frame_len as f64).cos()) as f32)
        .collect();

    let mut frames = 0usize;
    let mut hits = 0usize;
    let mut windowed = vec![0f32; frame_len];
    for frame in samples.chunks_exact(frame_len) {
        frames += 1;
        if rms(frame) < SILENCE_RMS {
            continue;
        }
        for ((w, &x), &h) in windowed.iter_mut().zip(frame).zip(&window) {
            *w = x * h;
        }
        let target = goertzel_power(&windowed, sample_rate, target_hz);
        let dominant = probes
            .iter()
            .all(|&p| target > DOMINANCE_FACTOR * goertzel_power(&windowed, sample_rate, p));
        if dominant {
            hits += 1;
        }
    }
    hits as f64 / frames as f64
}

/// The DTMF keypad's row and column frequencies (ITU-T Q.23).
const DTMF_ROWS_HZ: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
const DTMF_COLS_HZ: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];

/// The (row, column) frequencies of a DTMF key.
pub fn dtmf_pair(digit: char) -> Option<(f64, f64)> {
    let (r, c) = match digit {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return None,
    };
    Some((DTMF_ROWS_HZ[r], DTMF_COLS_HZ[c]))
}

/// Per 20 ms frame of `samples`: whether the DTMF pair of `digit` sounds
/// in it. Both of its tones must beat the other rows (for the row tone) or
/// columns (for the column tone), and the probe tones outside the keypad
/// (300, 440, 2000, 2600, 3200 Hz), by 10 dB each, in a frame that is not
/// silence; a Hann window keeps leakage out. Another digit, a single tone
/// or speech-like noise does not count.
pub fn dtmf_frames(samples: &[f32], sample_rate: u32, digit: char) -> Vec<bool> {
    let Some((row, col)) = dtmf_pair(digit) else {
        return Vec::new();
    };
    let frame_len = (sample_rate * FRAME_MS / 1000) as usize;
    if frame_len == 0 {
        return Vec::new();
    }
    let outside = [300.0, 440.0, 2000.0, 2600.0, 3200.0];
    let window: Vec<f32> = (0..frame_len)
        .map(|i| (0.5 - 0.5 * (2.0 * PI * i as f64 / frame_len as f64).cos()) as f32)
        .collect();
    let mut windowed = vec![0f32; frame_len];
    samples
        .chunks_exact(frame_len)
        .map(|frame| {
            if rms(frame) < SILENCE_RMS {
                return false;
            }
            for ((w, &x), &h) in windowed.iter_mut().zip(frame).zip(&window) {
                *w = x * h;
            }
            let power = |hz: f64| goertzel_power(&windowed, sample_rate, hz);
            let (p_row, p_col) = (power(row), power(col));
            let beats = |target: f64, same_group: &[f64; 4], own: f64| {
                same_group
                    .iter()
                    .filter(|&&f| f != own)
                    .chain(&outside)
                    .all(|&hz| target > DOMINANCE_FACTOR * power(hz))
            };
            beats(p_row, &DTMF_ROWS_HZ, row) && beats(p_col, &DTMF_COLS_HZ, col)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SR: u32 = 48_000;

    fn tone(freq: f64, seconds: f64, amplitude: f64) -> Vec<f32> {
        let n = (seconds * f64::from(SR)) as usize;
        (0..n)
            .map(|i| (amplitude * (2.0 * PI * freq * i as f64 / f64::from(SR)).sin()) as f32)
            .collect()
    }

    /// Uniform white-ish noise from a 32-bit LCG (Numerical Recipes constants).
    fn noise(seconds: f64, amplitude: f32, mut seed: u32) -> Vec<f32> {
        let n = (seconds * f64::from(SR)) as usize;
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let u = (seed >> 8) as f32 / (1u32 << 24) as f32; // [0, 1)
                (u * 2.0 - 1.0) * amplitude
            })
            .collect()
    }

    #[test]
    fn goertzel_power_peaks_at_the_tone() {
        let s = tone(1000.0, 0.02, 1.0);
        let at = goertzel_power(&s, SR, 1000.0);
        assert!((at - 0.25).abs() < 0.01, "full-scale sine power {at}");
        assert!(goertzel_power(&s, SR, 2000.0) < at / 1000.0);
        assert_eq!(goertzel_power(&[], SR, 1000.0), 0.0);
    }

    #[test]
    fn tone_is_covered_and_negative_control_is_not() {
        let s = tone(1000.0, 3.0, 0.5);
        let at_1000 = tone_coverage(&s, SR, 1000.0);
        let at_440 = tone_coverage(&s, SR, 440.0);
        assert!(at_1000 >= 0.95, "coverage at 1000 Hz {at_1000}");
        assert!(at_440 <= 0.01, "coverage at 440 Hz {at_440}");
    }

    #[test]
    fn quiet_tone_still_counts_but_near_silence_does_not() {
        // -20 dBFS peak is well above the -40 dBFS RMS floor.
        assert!(tone_coverage(&tone(1000.0, 1.0, 0.1), SR, 1000.0) >= 0.95);
        // -60 dBFS peak is below it.
        assert_eq!(tone_coverage(&tone(1000.0, 1.0, 0.001), SR, 1000.0), 0.0);
    }

    #[test]
    fn silence_has_no_coverage() {
        let s = vec![0f32; SR as usize * 2];
        assert_eq!(tone_coverage(&s, SR, 1000.0), 0.0);
        assert_eq!(tone_coverage(&s, SR, 440.0), 0.0);
        assert_eq!(tone_coverage(&[], SR, 1000.0), 0.0);
    }

    #[test]
    fn noise_has_no_coverage() {
        let s = noise(3.0, 0.5, 12345);
        for f in [440.0, 1000.0, 2000.0] {
            let c = tone_coverage(&s, SR, f);
            assert!(c < 0.02, "noise coverage at {f} Hz: {c}");
        }
    }

    #[test]
    fn tone_in_mild_noise_is_still_covered() {
        let mut s = tone(1000.0, 2.0, 0.5);
        for (x, n) in s.iter_mut().zip(noise(2.0, 0.05, 7)) {
            *x += n;
        }
        let c = tone_coverage(&s, SR, 1000.0);
        assert!(c >= 0.95, "coverage {c}");
    }

    #[test]
    fn switching_tone_is_half_covered_by_each() {
        let mut s = tone(440.0, 2.0, 0.5);
        s.extend(tone(1000.0, 2.0, 0.5));
        let at_440 = tone_coverage(&s, SR, 440.0);
        let at_1000 = tone_coverage(&s, SR, 1000.0);
        assert!((at_440 - 0.5).abs() <= 0.03, "coverage at 440 Hz {at_440}");
        assert!(
            (at_1000 - 0.5).abs() <= 0.03,
            "coverage at 1000 Hz {at_1000}"
        );
    }

    #[test]
    fn narrowband_coverage_at_8khz() {
        // What a PCMU leg carries before the browser resamples it.
        let n = 8000 * 2;
        let s: Vec<f32> = (0..n)
            .map(|i| (0.5 * (2.0 * PI * 1000.0 * i as f64 / 8000.0).sin()) as f32)
            .collect();
        assert!(tone_coverage(&s, 8000, 1000.0) >= 0.95);
        assert!(tone_coverage(&s, 8000, 440.0) <= 0.01);
    }

    #[test]
    fn dtmf_pairs_are_told_apart() {
        let pair = |digit: char| {
            let (r, c) = dtmf_pair(digit).unwrap();
            let (a, b) = (tone(r, 0.2, 0.25), tone(c, 0.2, 0.25));
            a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<f32>>()
        };
        let five = pair('5');
        let hits = |s: &[f32], d| dtmf_frames(s, SR, d).iter().filter(|h| **h).count();
        assert_eq!(hits(&five, '5'), 10, "every frame of a 200 ms '5'");
        for other in ['1', '2', '4', '6', '8', '9', '0'] {
            assert_eq!(hits(&five, other), 0, "'5' is not '{other}'");
        }
        assert_eq!(hits(&pair('9'), '9'), 10);
        assert_eq!(hits(&tone(770.0, 0.2, 0.5), '5'), 0, "one tone of the pair");
        assert_eq!(hits(&tone(440.0, 0.2, 0.5), '5'), 0);
        assert_eq!(hits(&noise(0.2, 0.5, 3), '5'), 0);
        assert_eq!(hits(&vec![0.0; 9600], '5'), 0);
        assert!(dtmf_frames(&five, SR, 'x').is_empty());
    }

    #[test]
    fn wav_round_trip() {
        let dir = std::env::temp_dir().join(format!("gangway-audio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tone.wav");
        write_tone_wav(&path, 1000.0, 0.5, SR).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(&bytes[8..16], b"WAVEfmt ");
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), SR);
        assert_eq!(u16::from_le_bytes(bytes[34..36].try_into().unwrap()), 16);
        assert_eq!(bytes.len(), 44 + 24_000 * 2);
        let samples = i16le_to_f32(&bytes[44..]);
        let peak = samples.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!((peak - 0.5).abs() < 0.01, "peak {peak}");
        assert!(tone_coverage(&samples, SR, 1000.0) >= 0.95);
    }
}
