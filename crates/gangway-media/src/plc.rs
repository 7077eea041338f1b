//! Concealment of lost G.711 audio on the SIP leg, by pitch-period
//! waveform substitution: the method of ITU-T G.711 Appendix I, written
//! here from its description and adapted to a gateway that cannot hold
//! audio back (the last received frame was already encoded and sent when a
//! loss is noticed).
//!
//! - Every sample passed on (received or made up) goes into a short history.
//! - On the first lost sample, the pitch period is estimated from the
//!   history by normalized cross-correlation over the speech pitch range,
//!   and the history is frozen as the material to repeat.
//! - The made-up signal repeats the last pitch period; after 20 ms the last
//!   two, after 30 ms the last three (less buzzy on long losses), with a
//!   quarter-period cross-fade wherever the repeated material changes.
//!   Each wrap from the end of the repeated periods back to their start is
//!   smoothed by blending their last quarter period into what preceded
//!   their start (Appendix I does this on the history itself, delaying the
//!   output; here only the copy is changed, so nothing already sent moves).
//! - The first made-up sample continues from the last one sent: the
//!   mismatch at that junction is carried as an offset that dies away over
//!   a quarter period.
//! - The level holds for 5 ms, then falls linearly to silence at 40 ms.
//! - The first received audio after a loss is cross-faded with the made-up
//!   signal continued under it: 1.5 ms, 1 ms more per further 10 ms of
//!   loss, at most 5 ms (spread over several packets when they are short).
//!
//! Appendix I holds 10 ms, reaches silence at 60 ms, adds periods at 10
//! and 20 ms and cross-fades the recovery over 4–10 ms; the values here
//! scored better with P.862 through the Opus leg (docs/performance.md,
//! "Loss concealment on the SIP leg").
//!
//! All buffers are fixed arrays in [`Concealer`]; nothing allocates.

/// Pitch range searched: 40 samples (200 Hz) to 120 (66.7 Hz) at 8 kHz.
/// Voices above 200 Hz are found at twice their period, which repeats as well.
const MIN_PITCH: usize = 40;
const MAX_PITCH: usize = 120;
/// The last 20 ms are compared with earlier audio to find the period.
const CORR_WINDOW: usize = 160;
/// Three periods at the longest pitch, plus the quarter period blended
/// into the wrap: enough for every read the concealment makes.
const HISTORY: usize = 3 * MAX_PITCH + MAX_PITCH / 4;
/// Full level for the first 5 ms of a loss, silence from 40 ms on.
const HOLD: usize = 40;
const SILENT_AFTER: usize = 320;
/// Concealed samples after which one more period is repeated (20 ms, 30 ms).
const MORE_PERIODS_AT: [usize; 2] = [160, 240];
/// Recovery cross-fade: 1.5 ms plus 1 ms per further 10 ms lost, at most 5 ms.
const RECOVERY_BASE: usize = 12;
const RECOVERY_STEP: usize = 8;
const RECOVERY_MAX: usize = 40;
/// A history quieter than this (mean square, about -70 dBov) is silence:
/// nothing is searched and silence is made up.
const SILENCE_MEAN_SQUARE: f32 = 10.0;

/// One call's concealment state for audio towards the browser.
pub struct Concealer {
    /// The most recent samples passed on, oldest first.
    history: [i16; HISTORY],
    /// The history as it was when the current loss began.
    frozen: [f32; HISTORY],
    /// Pitch period of the current loss (0: silence is made up).
    pitch: usize,
    /// What the first made-up sample lacks to continue the last one sent.
    offset: f32,
    /// Samples made up in the current loss (also while recovering from it).
    lost_for: usize,
    /// Recovery cross-fade: its length and how far into it we are.
    recovery: usize,
    recovered: usize,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Receiving,
    Concealing,
    Recovering,
}

impl Default for Concealer {
    fn default() -> Self {
        Concealer {
            history: [0; HISTORY],
            frozen: [0.0; HISTORY],
            pitch: 0,
            offset: 0.0,
            lost_for: 0,
            recovery: 0,
            recovered: 0,
            state: State::Receiving,
        }
    }
}

impl Concealer {
    /// Received audio, in place: passed on as is, except the start of what
    /// follows a loss, which is cross-faded with the made-up signal.
    pub fn received(&mut self, pcm: &mut [i16]) {
        if self.state == State::Concealing {
            self.state = State::Recovering;
            let further = self.lost_for.saturating_sub(1) / 80;
            self.recovery = (RECOVERY_BASE + RECOVERY_STEP * further).min(RECOVERY_MAX);
            self.recovered = 0;
        }
        if self.state == State::Recovering {
            let n = pcm.len().min(self.recovery - self.recovered);
            for s in pcm[..n].iter_mut() {
                let w = (self.recovered + 1) as f32 / (self.recovery + 1) as f32;
                let made_up = self.synthesize(self.lost_for);
                *s = to_i16(w * f32::from(*s) + (1.0 - w) * made_up);
                self.recovered += 1;
                self.lost_for += 1;
            }
            if self.recovered == self.recovery {
                self.state = State::Receiving;
            }
        }
        self.remember(pcm);
    }

    /// Fills `out` with made-up audio for samples that never came, going
    /// on from the last sample passed on. `first` starts a new loss even
    /// if the previous call concealed too.
    pub fn lost(&mut self, out: &mut [i16], first: bool) {
        if first || self.state != State::Concealing {
            self.begin_loss();
        }
        for s in out.iter_mut() {
            *s = to_i16(self.synthesize(self.lost_for));
            self.lost_for += 1;
        }
        self.remember(out);
    }

    /// The timeline jumped (a gap skipped, audio left out for DTMF): what
    /// comes next does not follow what was passed on, so no loss is
    /// ended by a cross-fade.
    pub fn restart(&mut self) {
        self.state = State::Receiving;
    }

    fn remember(&mut self, pcm: &[i16]) {
        let n = pcm.len().min(HISTORY);
        self.history.copy_within(n.., 0);
        self.history[HISTORY - n..].copy_from_slice(&pcm[pcm.len() - n..]);
    }

    fn begin_loss(&mut self) {
        self.state = State::Concealing;
        self.lost_for = 0;
        for (f, &h) in self.frozen.iter_mut().zip(self.history.iter()) {
            *f = f32::from(h);
        }
        self.pitch = find_pitch(&self.frozen);
        self.offset = match self.pitch {
            0 => 0.0,
            p => self.frozen[HISTORY - 1] - self.frozen[HISTORY - p - 1],
        };
    }

    /// The made-up sample `k` samples into the loss.
    fn synthesize(&self, k: usize) -> f32 {
        let p = self.pitch;
        if p == 0 || k >= SILENT_AFTER {
            return 0.0;
        }
        let quarter = (p / 4).max(1);
        let periods = 1 + MORE_PERIODS_AT.iter().filter(|&&at| k >= at).count();
        let mut v = self.repeat(periods, k);
        // Cross-fade from fewer periods to more where their number grows.
        if periods > 1 {
            let since = k - MORE_PERIODS_AT[periods - 2];
            if since < quarter {
                let w = (since + 1) as f32 / (quarter + 1) as f32;
                v = w * v + (1.0 - w) * self.repeat(periods - 1, k);
            }
        }
        if k < quarter {
            v += self.offset * (1.0 - (k + 1) as f32 / (quarter + 1) as f32);
        }
        let gain = if k < HOLD {
            1.0
        } else {
            1.0 - (k - HOLD) as f32 / (SILENT_AFTER - HOLD) as f32
        };
        v * gain
    }

    /// Sample `k` of the last `periods` pitch periods repeated, with the
    /// last quarter period of each pass blended into what came before the
    /// pass's start, so that the wrap back to the start is smooth.
    fn repeat(&self, periods: usize, k: usize) -> f32 {
        let span = periods * self.pitch;
        let quarter = (self.pitch / 4).max(1);
        let start = HISTORY - span;
        let pos = k % span;
        let v = self.frozen[start + pos];
        let into_tail = pos + quarter;
        if into_tail < span {
            return v;
        }
        // 0 at the tail's start .. 1 at its end, where the value equals the
        // sample just before `start`, whose successor is `start` itself.
        let j = into_tail - span;
        let w = (j + 1) as f32 / quarter as f32;
        let before = self.frozen[start - quarter + j];
        w * before + (1.0 - w) * v
    }
}

/// The pitch period (in samples) that best explains the end of `history`:
/// the lag whose earlier audio correlates best with the last 20 ms,
/// normalized by that earlier audio's energy. 0 for silence or when no lag
/// correlates positively.
fn find_pitch(history: &[f32; HISTORY]) -> usize {
    let target = &history[HISTORY - CORR_WINDOW..];
    let energy = dot(target, target);
    if energy < SILENCE_MEAN_SQUARE * CORR_WINDOW as f32 {
        return 0;
    }
    let lagged = |lag: usize| &history[HISTORY - CORR_WINDOW - lag..HISTORY - lag];
    let mut lag_energy = dot(lagged(MIN_PITCH), lagged(MIN_PITCH));
    let (mut best, mut best_score) = (0, 0.0f32);
    for lag in MIN_PITCH..=MAX_PITCH {
        if lag > MIN_PITCH {
            // Slide the lagged window one sample back.
            let entering = history[HISTORY - CORR_WINDOW - lag];
            let leaving = history[HISTORY - lag];
            lag_energy += entering * entering - leaving * leaving;
        }
        let corr = dot(target, lagged(lag));
        if corr > 0.0 && lag_energy > 0.0 {
            let score = corr / lag_energy.sqrt();
            if score > best_score {
                (best, best_score) = (lag, score);
            }
        }
    }
    best
}

/// Dot product in eight independent sums, which the compiler turns into
/// vector instructions (one running sum cannot be reordered).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

fn to_i16(v: f32) -> i16 {
    v.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: usize = 160;

    /// A voiced-like signal: the first eight harmonics of `f0`, falling
    /// off as 1/h² like a glottal pulse train's.
    fn voiced(f0: f64, samples: std::ops::Range<usize>) -> Vec<i16> {
        samples
            .map(|i| {
                let t = i as f64 / 8000.0;
                let v: f64 = (1..=8)
                    .map(|h| {
                        let h = f64::from(h);
                        (2.0 * std::f64::consts::PI * f0 * h * t + 0.3 * h).sin() / (h * h)
                    })
                    .sum();
                (v * 6000.0) as i16
            })
            .collect()
    }

    /// SNR (dB) of `got` as an estimate of `want`.
    fn snr(want: &[i16], got: &[i16]) -> f64 {
        let signal: f64 = want.iter().map(|&x| f64::from(x).powi(2)).sum();
        let noise: f64 = want
            .iter()
            .zip(got)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        10.0 * (signal / noise.max(1.0)).log10()
    }

    fn max_step(x: &[i16]) -> i32 {
        x.windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap_or(0)
    }

    /// What the gateway did before: the last received frame again, at half
    /// the level for the first loss.
    fn old_scheme(last_frame: &[i16]) -> Vec<i16> {
        last_frame.iter().map(|&s| s >> 1).collect()
    }

    /// Received frames `0..frames` of `signal` (20 ms each) through `plc`.
    fn receive(plc: &mut Concealer, signal: &[i16], frames: std::ops::Range<usize>) -> Vec<i16> {
        let mut out = Vec::new();
        for f in frames {
            let mut frame = signal[f * FRAME..(f + 1) * FRAME].to_vec();
            plc.received(&mut frame);
            out.extend_from_slice(&frame);
        }
        out
    }

    #[test]
    fn a_voiced_signal_goes_on_across_a_lost_frame() {
        // Periods of 69.6, 57.1 and 45.7 samples, 2.3, 2.8 and 3.5 periods
        // a frame: neither a whole period nor the frame repeats the signal
        // exactly.
        for f0 in [115.0, 140.0, 175.0] {
            let signal = voiced(f0, 0..30 * FRAME);
            let mut plc = Concealer::default();
            receive(&mut plc, &signal, 0..20);
            let mut lost = [0i16; FRAME];
            plc.lost(&mut lost, true);
            let truth = &signal[20 * FRAME..21 * FRAME];
            let ours = snr(truth, &lost);
            let old = snr(truth, &old_scheme(&signal[19 * FRAME..20 * FRAME]));
            eprintln!("{f0} Hz: {ours:.1} dB, the old repeat {old:.1} dB");
            assert!(ours > 10.0, "{f0} Hz: {ours:.1} dB");
            assert!(old < 3.0, "{f0} Hz: the old repeat fails this: {old:.1} dB");
        }
    }

    #[test]
    fn no_jump_where_a_loss_starts_or_ends() {
        let mut old_jumps = Vec::new();
        for f0 in [140.0, 103.0, 190.0] {
            let signal = voiced(f0, 0..30 * FRAME);
            let natural = max_step(&signal);
            let mut plc = Concealer::default();
            let mut out = receive(&mut plc, &signal, 0..20);
            let mut lost = [0i16; FRAME];
            plc.lost(&mut lost, true);
            out.extend_from_slice(&lost);
            out.extend(receive(&mut plc, &signal, 21..23));
            // From the last sample sent into the loss, through it, and on
            // into the received audio after it.
            let around = &out[20 * FRAME - 10..22 * FRAME];
            assert!(
                max_step(around) <= natural * 11 / 10,
                "{f0} Hz: {} vs the signal's own {natural}",
                max_step(around)
            );
            // After the cross-fade, the received audio passes untouched.
            assert_eq!(
                &out[21 * FRAME + 40..],
                &signal[21 * FRAME + 40..23 * FRAME]
            );
            // The old repeat, for comparison: last frame, lost, next frame.
            let mut old = signal[19 * FRAME..20 * FRAME].to_vec();
            old.extend(old_scheme(&signal[19 * FRAME..20 * FRAME]));
            old.extend_from_slice(&signal[21 * FRAME..22 * FRAME]);
            old_jumps.push(max_step(&old) as f64 / natural as f64);
        }
        // Negative control: the old repeat jumps beyond the signal's steps.
        assert!(
            old_jumps.iter().any(|&j| j > 1.5),
            "the old repeat's steps vs the signal's: {old_jumps:?}"
        );
    }

    #[test]
    fn the_recovery_cross_fade_spans_short_packets() {
        let signal = voiced(140.0, 0..30 * FRAME);
        let natural = max_step(&signal);
        let mut plc = Concealer::default();
        let mut out = receive(&mut plc, &signal, 0..20);
        let mut lost = [0i16; FRAME];
        plc.lost(&mut lost, true);
        out.extend_from_slice(&lost);
        // 1-sample and 7-sample packets, then the rest of the frame.
        let mut at = 21 * FRAME;
        for len in [1, 7, FRAME - 8] {
            let mut p = signal[at..at + len].to_vec();
            plc.received(&mut p);
            out.extend_from_slice(&p);
            at += len;
        }
        assert!(max_step(&out[20 * FRAME - 1..]) <= natural * 11 / 10);
        assert_eq!(
            &out[21 * FRAME + 40..],
            &signal[21 * FRAME + 40..22 * FRAME]
        );
    }

    #[test]
    fn a_long_loss_fades_to_silence() {
        let signal = voiced(120.0, 0..20 * FRAME);
        let mut plc = Concealer::default();
        receive(&mut plc, &signal, 0..20);
        let level = |x: &[i16]| x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
        let before = level(&signal[19 * FRAME..]);
        let mut frames = Vec::new();
        for nth in 0..5 {
            let mut lost = [0i16; FRAME];
            plc.lost(&mut lost, nth == 0);
            frames.push(lost);
        }
        let levels: Vec<f64> = frames.iter().map(|f| level(f)).collect();
        assert!(levels[0] > 0.4 * before, "{levels:?} vs {before}");
        assert!(levels[1] < 0.2 * levels[0], "{levels:?}");
        // Silent from 40 ms on: the end of the third frame and after.
        assert!(frames[2][FRAME / 2..].iter().all(|&s| s == 0));
        assert!(frames[3..].iter().all(|f| f.iter().all(|&s| s == 0)));
        // The received audio after it fades in from that silence.
        let mut next = signal[..FRAME].to_vec();
        plc.received(&mut next);
        assert!(
            next[0].abs() <= signal[0].abs() / 10,
            "{} {}",
            next[0],
            signal[0]
        );
        assert!(max_step(&next) <= max_step(&signal) * 11 / 10);
    }

    #[test]
    fn silence_in_silence_out() {
        let mut plc = Concealer::default();
        let mut lost = [7i16; FRAME];
        plc.lost(&mut lost, true);
        assert!(lost.iter().all(|&s| s == 0), "nothing received yet");
        let mut quiet = [0i16; FRAME];
        for _ in 0..10 {
            plc.received(&mut quiet);
        }
        for nth in 0..5 {
            plc.lost(&mut lost, nth == 0);
            assert!(lost.iter().all(|&s| s == 0));
        }
        plc.received(&mut quiet);
        assert!(quiet.iter().all(|&s| s == 0));
    }

    #[test]
    fn odd_lengths_full_scale_and_long_runs_do_not_panic() {
        let mut plc = Concealer::default();
        // Full-scale square waves of changing period and odd lengths.
        let mut random = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random
        };
        let mut t = 0usize;
        for _ in 0..2000 {
            let len = [0, 1, 3, 40, 80, 159, 160, 240, 1000][next() as usize % 9];
            let mut buf: Vec<i16> = (t..t + len)
                .map(|i| {
                    if (i / 23) % 2 == 0 {
                        i16::MAX
                    } else {
                        i16::MIN
                    }
                })
                .collect();
            t += len;
            match next() % 3 {
                0 => plc.lost(&mut buf, next() % 4 == 0),
                1 => plc.received(&mut buf),
                _ => {
                    plc.restart();
                    plc.received(&mut buf);
                }
            }
        }
        // A loss of a second and more ends in silence.
        let mut long = vec![1i16; 9000];
        plc.lost(&mut long, true);
        assert!(long[SILENT_AFTER..].iter().all(|&s| s == 0));
    }
}
