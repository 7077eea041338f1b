//! An adaptive reorder buffer for the SIP leg's G.711 on transcoded calls,
//! in front of the Opus encoder (which keeps state, so it must see audio in
//! order and exactly once).
//!
//! Sans-IO: the bridge pushes each packet with its arrival time, then pulls
//! with [`JitterBuffer::poll`] until it returns `None`, and wakes at
//! [`JitterBuffer::next_deadline`] to pull again.
//!
//! - In order costs nothing: a packet that continues the timeline is released
//!   by the very next `poll`, so there is no fixed playout delay.
//! - A hole holds the packets behind it for `depth`; if the missing packet
//!   arrives it is released in order, otherwise each missing 20 ms comes out
//!   as [`Out::Lost`] (the bridge conceals it), at most 100 ms of them; a
//!   longer gap is a silence or a restart and is skipped, not concealed.
//! - `depth` adapts: a packet that arrives after its slot was given up was
//!   late, not lost, and the depth grows to what would have waited for it
//!   (in 10 ms steps, 20–120 ms). Ten seconds without a late packet take
//!   10 ms off again.
//! - Storage is a fixed set of slots allocated once; nothing is allocated per
//!   packet.
//!
//! Times are 8 kHz media time from [`crate::rtp::InTimeline`], so they stay
//! continuous across the far end's SSRC changes (early media → answer, a
//! transfer).

use std::time::{Duration, Instant};

use crate::transcode::FRAME_SAMPLES;

/// Longest packet stored: 60 ms of G.711.
pub const MAX_PACKET: usize = 480;
/// Packets held at most (320 ms of 20 ms packets, well beyond the deadline).
const SLOTS: usize = 16;
pub(crate) const MIN_DEPTH: Duration = Duration::from_millis(20);
const MAX_DEPTH: Duration = Duration::from_millis(120);
const DEPTH_STEP: Duration = Duration::from_millis(10);
const DECAY_AFTER: Duration = Duration::from_secs(10);
/// Longest run of missing frames concealed (100 ms); a longer gap is skipped.
const MAX_CONCEALED: u64 = 5;
/// A jump forward this large (1 s) with nothing buffered is a restart.
const RESYNC: u64 = 8000;
const FRAME: u64 = FRAME_SAMPLES as u64;
/// Given-up slots remembered, to recognise their packets arriving late.
const RECENT_LOST: usize = 8;

/// What the buffer releases, in time order.
#[derive(Debug, PartialEq, Eq)]
pub enum Out<'a> {
    /// Up to 20 ms of G.711 starting at `time`.
    Frame { time: u64, payload: &'a [u8] },
    /// The 20 ms (or less, up to the next packet) at `time` never came;
    /// `nth` counts consecutive losses from 0 (the concealment starts anew at 0).
    Lost { time: u64, samples: u64, nth: usize },
}

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Stored,
    /// Its time was already released or given up: dropped.
    Late,
    Duplicate,
    /// Empty, larger than [`MAX_PACKET`], or no slot free: dropped.
    Dropped,
}

/// Counters for the call summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets released whole.
    pub released: u64,
    /// 20 ms frames given up and concealed.
    pub concealed: u64,
    /// Packets that arrived after their time was released or given up.
    pub late: u64,
    pub duplicates: u64,
    /// Gaps skipped as silence or a restart.
    pub skipped: u64,
    pub dropped: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    used: bool,
    time: u64,
    len: u16,
    data: [u8; MAX_PACKET],
}

const EMPTY: Slot = Slot {
    used: false,
    time: 0,
    len: 0,
    data: [0; MAX_PACKET],
};

pub struct JitterBuffer {
    slots: Box<[Slot; SLOTS]>,
    /// The media time of the next sample to release.
    next: Option<u64>,
    /// Since when the packet at `next` has been missing with others waiting.
    hole_since: Option<Instant>,
    depth: Duration,
    /// The last time the depth changed (grew, or decayed a step).
    depth_changed: Option<Instant>,
    lost_run: usize,
    /// (time, given up at) of recently concealed frames.
    recent_lost: [(u64, Option<Instant>); RECENT_LOST],
    recent_at: usize,
    stats: JitterStats,
}

impl Default for JitterBuffer {
    fn default() -> Self {
        JitterBuffer {
            slots: Box::new([EMPTY; SLOTS]),
            next: None,
            hole_since: None,
            depth: MIN_DEPTH,
            depth_changed: None,
            lost_run: 0,
            recent_lost: [(0, None); RECENT_LOST],
            recent_at: 0,
            stats: JitterStats::default(),
        }
    }
}

impl JitterBuffer {
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// How long a hole is waited for, now.
    pub fn depth(&self) -> Duration {
        self.depth
    }

    /// Takes one packet from the SIP leg. `marker` starts a talkspurt: a gap
    /// before it is silence, not loss.
    pub fn push(&mut self, time: u64, payload: &[u8], marker: bool, now: Instant) -> Push {
        if payload.is_empty() || payload.len() > MAX_PACKET {
            self.stats.dropped += 1;
            return Push::Dropped;
        }
        let len = payload.len() as u64;
        let buffered = self.slots.iter().any(|s| s.used);
        match self.next {
            None => self.next = Some(time),
            Some(next) if time + len <= next => {
                if let Some(given_up) = self.given_up_at(time) {
                    self.grow(now.saturating_duration_since(given_up), now);
                    self.stats.late += 1;
                    return Push::Late;
                }
                self.stats.duplicates += 1;
                return Push::Duplicate;
            }
            Some(next) if !buffered && time > next && (marker || time - next >= RESYNC) => {
                self.next = Some(time);
                self.stats.skipped += 1;
            }
            Some(_) => {}
        }
        if self.slots.iter().any(|s| s.used && s.time == time) {
            self.stats.duplicates += 1;
            return Push::Duplicate;
        }
        let Some(slot) = self.slots.iter_mut().find(|s| !s.used) else {
            self.stats.dropped += 1;
            return Push::Dropped;
        };
        slot.used = true;
        slot.time = time;
        slot.len = len as u16;
        slot.data[..payload.len()].copy_from_slice(payload);
        if self.next != Some(time) && self.hole_since.is_none() && self.covering().is_none() {
            self.hole_since = Some(now);
        }
        Push::Stored
    }

    /// When `poll` may have something to release that it has not now.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.hole_since.map(|since| since + self.depth)
    }

    /// The next frame or loss due at `now`, in time order.
    pub fn poll(&mut self, now: Instant) -> Option<Out<'_>> {
        loop {
            let next = self.next?;
            if let Some(i) = self.covering() {
                return Some(self.release(i, next, now));
            }
            // Slots wholly before `next` can no longer play.
            for slot in self.slots.iter_mut() {
                if slot.used && slot.time + u64::from(slot.len) <= next {
                    slot.used = false;
                    self.stats.late += 1;
                }
            }
            let earliest = self.slots.iter().filter(|s| s.used).map(|s| s.time).min()?;
            let since = *self.hole_since.get_or_insert(now);
            if self.lost_run == 0 && now < since + self.depth {
                return None;
            }
            let gap = earliest - next;
            if gap > MAX_CONCEALED * FRAME || self.lost_run as u64 >= MAX_CONCEALED {
                // Silence (DTX), a restart, or a loss too long to paper over.
                self.next = Some(earliest);
                self.stats.skipped += 1;
                continue;
            }
            let samples = gap.min(FRAME);
            self.next = Some(next + samples);
            self.recent_lost[self.recent_at] = (next, Some(now));
            self.recent_at = (self.recent_at + 1) % RECENT_LOST;
            self.stats.concealed += 1;
            self.lost_run += 1;
            return Some(Out::Lost {
                time: next,
                samples,
                nth: self.lost_run - 1,
            });
        }
    }

    /// The stored packet that holds the sample at `next`.
    fn covering(&self) -> Option<usize> {
        let next = self.next?;
        self.slots
            .iter()
            .position(|s| s.used && s.time <= next && next < s.time + u64::from(s.len))
    }

    fn release(&mut self, i: usize, next: u64, now: Instant) -> Out<'_> {
        let (time, len) = (self.slots[i].time, u64::from(self.slots[i].len));
        let start = next - time;
        let end = (start + FRAME).min(len);
        self.next = Some(time + end);
        if end == len {
            self.slots[i].used = false;
            self.stats.released += 1;
        }
        self.lost_run = 0;
        self.hole_since = None;
        if self.slots.iter().any(|s| s.used) && self.covering().is_none() {
            self.hole_since = Some(now);
        }
        self.decay(now);
        Out::Frame {
            time: next,
            payload: &self.slots[i].data[start as usize..end as usize],
        }
    }

    fn given_up_at(&self, time: u64) -> Option<Instant> {
        self.recent_lost
            .iter()
            .find(|(t, at)| at.is_some() && *t <= time && time < t + FRAME)
            .and_then(|(_, at)| *at)
    }

    /// A packet came `lateness` after its slot was given up: wait that much
    /// longer for the next hole.
    fn grow(&mut self, lateness: Duration, now: Instant) {
        let wanted = self.depth + lateness;
        let steps = wanted.as_millis().div_ceil(DEPTH_STEP.as_millis()) as u32;
        self.depth = (DEPTH_STEP * steps).clamp(MIN_DEPTH, MAX_DEPTH);
        self.depth_changed = Some(now);
    }

    fn decay(&mut self, now: Instant) {
        if self.depth <= MIN_DEPTH {
            return;
        }
        let since = *self.depth_changed.get_or_insert(now);
        if now.saturating_duration_since(since) >= DECAY_AFTER {
            self.depth = (self.depth - DEPTH_STEP).max(MIN_DEPTH);
            self.depth_changed = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn frame(n: u64) -> [u8; 160] {
        [n as u8; 160]
    }

    /// Everything `poll` releases at `now`, as (time, Some(first byte)) for
    /// frames and (time, None) for losses.
    fn drain(jb: &mut JitterBuffer, now: Instant) -> Vec<(u64, Option<u8>)> {
        let mut out = Vec::new();
        while let Some(o) = jb.poll(now) {
            out.push(match o {
                Out::Frame { time, payload } => (time, Some(payload[0])),
                Out::Lost { time, .. } => (time, None),
            });
        }
        out
    }

    #[test]
    fn in_order_packets_come_straight_out() {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        for n in 0..50u64 {
            let now = t0 + MS * (20 * n as u32);
            assert_eq!(jb.push(1000 + n * 160, &frame(n), false, now), Push::Stored);
            assert_eq!(drain(&mut jb, now), vec![(1000 + n * 160, Some(n as u8))]);
            assert_eq!(jb.next_deadline(), None, "nothing to wait for");
        }
        assert_eq!(jb.stats().released, 50);
        assert_eq!(jb.depth(), MIN_DEPTH);
    }

    #[test]
    fn a_swapped_pair_is_held_and_released_in_order() {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        jb.push(0, &frame(0), false, t0);
        assert_eq!(drain(&mut jb, t0).len(), 1);
        jb.push(320, &frame(2), false, t0 + 20 * MS);
        assert_eq!(drain(&mut jb, t0 + 20 * MS), vec![], "held behind the hole");
        assert_eq!(jb.next_deadline(), Some(t0 + 40 * MS));
        jb.push(160, &frame(1), false, t0 + 25 * MS);
        assert_eq!(
            drain(&mut jb, t0 + 25 * MS),
            vec![(160, Some(1)), (320, Some(2))]
        );
        assert_eq!(jb.stats().concealed, 0);
        assert_eq!(jb.next_deadline(), None);
    }

    #[test]
    fn a_lost_packet_is_given_up_at_the_deadline_then_late_arrival_grows_the_depth() {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        jb.push(0, &frame(0), false, t0);
        drain(&mut jb, t0);
        jb.push(320, &frame(2), false, t0 + 40 * MS);
        assert_eq!(drain(&mut jb, t0 + 59 * MS), vec![]);
        assert_eq!(
            drain(&mut jb, t0 + 60 * MS),
            vec![(160, None), (320, Some(2))]
        );
        assert_eq!(jb.stats().concealed, 1);
        // The "lost" packet turns up 35 ms after it was given up.
        assert_eq!(jb.push(160, &frame(1), false, t0 + 95 * MS), Push::Late);
        assert_eq!(jb.stats().late, 1);
        assert_eq!(jb.depth(), 60 * MS, "20 ms + 35 ms, in 10 ms steps");
        // The next hole is waited for that long.
        jb.push(640, &frame(4), false, t0 + 100 * MS);
        assert_eq!(jb.next_deadline(), Some(t0 + 160 * MS));
    }

    #[test]
    fn the_depth_decays_after_quiet_seconds_and_stays_bounded() {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        jb.push(0, &frame(0), false, t0);
        drain(&mut jb, t0);
        jb.push(320, &frame(2), false, t0);
        drain(&mut jb, t0 + 20 * MS);
        jb.push(160, &frame(1), false, t0 + 1000 * MS);
        assert_eq!(jb.depth(), MAX_DEPTH, "a second late is capped");
        let mut time = 480;
        let mut now = t0 + 1000 * MS;
        for _ in 0..600 {
            now += 20 * MS;
            jb.push(time, &frame(0), false, now);
            drain(&mut jb, now);
            time += 160;
        }
        assert_eq!(jb.depth(), MAX_DEPTH - DEPTH_STEP, "one step per 10 s");
    }

    #[test]
    fn duplicates_and_stale_packets_are_dropped_once() {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        jb.push(0, &frame(0), false, t0);
        jb.push(160, &frame(1), false, t0);
        assert_eq!(jb.push(160, &frame(1), false, t0), Push::Duplicate);
        assert_eq!(drain(&mut jb, t0).len(), 2);
        assert_eq!(jb.push(0, &frame(0), false, t0), Push::Duplicate);
        assert_eq!(jb.stats().duplicates, 2);
        assert_eq!(jb.push(320, &[], false, t0), Push::Dropped);
        assert_eq!(jb.push(320, &[0; 2000], false, t0), Push::Dropped);
    }

    #[test]
    fn long_gaps_are_skipped_not_concealed() {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        jb.push(0, &frame(0), false, t0);
        drain(&mut jb, t0);
        // A talkspurt after 2 s of DTX, marked: released at once.
        jb.push(16_160, &frame(1), true, t0 + 2000 * MS);
        assert_eq!(drain(&mut jb, t0 + 2000 * MS), vec![(16_160, Some(1))]);
        // 300 ms missing, unmarked, with a packet behind: skipped at the deadline.
        jb.push(16_320 + 2400, &frame(2), false, t0 + 2300 * MS);
        assert_eq!(drain(&mut jb, t0 + 2320 * MS), vec![(18_720, Some(2))]);
        // 4 frames missing: concealed, each as its own 20 ms.
        jb.push(18_880 + 4 * 160, &frame(3), false, t0 + 2500 * MS);
        let out = drain(&mut jb, t0 + 2520 * MS);
        assert_eq!(out.iter().filter(|o| o.1.is_none()).count(), 4);
        assert_eq!(out.last(), Some(&(19_520, Some(3))));
        // 8 missing (160 ms) is more than concealment should paper over:
        // skipped, and the browser's own jitter buffer sees the gap.
        jb.push(19_680 + 8 * 160, &frame(4), false, t0 + 2700 * MS);
        assert_eq!(drain(&mut jb, t0 + 2720 * MS), vec![(20_960, Some(4))]);
        assert_eq!(jb.stats().concealed, 4);
        assert_eq!(jb.stats().skipped, 3);
    }

    #[test]
    fn longer_packets_come_out_in_20_ms_frames_and_shorter_ones_whole() {
        let mut jb = JitterBuffer::default();
        let t0 = Instant::now();
        let mut forty = [1u8; 320];
        forty[160..].fill(2);
        jb.push(0, &forty, false, t0);
        assert_eq!(drain(&mut jb, t0), vec![(0, Some(1)), (160, Some(2))]);
        jb.push(320, &[3; 80], false, t0);
        jb.push(400, &[4; 240], false, t0);
        assert_eq!(
            drain(&mut jb, t0),
            vec![(320, Some(3)), (400, Some(4)), (560, Some(4))]
        );
        // A lost 10 ms packet is concealed as 10 ms.
        jb.push(720, &[5; 80], false, t0);
        drain(&mut jb, t0);
        jb.push(880, &[6; 80], false, t0);
        let mut lost = None;
        while let Some(o) = jb.poll(t0 + 100 * MS) {
            if let Out::Lost { samples, .. } = o {
                lost = Some(samples);
            }
        }
        assert_eq!(lost, Some(80));
    }

    #[test]
    fn shuffled_arrivals_come_out_continuous_and_in_order() {
        // Seeded xorshift: each packet delayed 0–60 ms, 3 % lost.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let t0 = Instant::now();
        let mut arrivals = Vec::new();
        for n in 0..1000u64 {
            if n == 0 || rand() % 100 >= 3 {
                arrivals.push((MS * (20 * n as u32 + (rand() % 60) as u32), n));
            }
        }
        arrivals.sort();
        let mut jb = JitterBuffer::default();
        let mut expected = 0u64;
        let mut frames = 0;
        let mut step = |jb: &mut JitterBuffer, now: Instant, expected: &mut u64| {
            while let Some(o) = jb.poll(now) {
                let (time, samples) = match o {
                    Out::Frame { time, payload } => {
                        frames += 1;
                        (time, payload.len() as u64)
                    }
                    Out::Lost { time, samples, .. } => (time, samples),
                };
                assert_eq!(time, *expected, "continuous, in order");
                *expected += samples;
            }
        };
        for (at, n) in arrivals {
            let now = t0 + at;
            // Wake at every deadline that passed before this arrival.
            while let Some(d) = jb.next_deadline().filter(|d| *d <= now) {
                step(&mut jb, d, &mut expected);
            }
            jb.push(n * 160, &frame(n), false, now);
            step(&mut jb, now, &mut expected);
        }
        let s = jb.stats();
        println!("{s:?}, depth {:?}", jb.depth());
        assert!(expected >= 999 * 160, "reached the end: {expected}");
        assert!(frames >= 900, "most frames played: {frames}");
        assert!(s.late < 20, "the depth adapted to the 60 ms spread: {s:?}");
        assert!(jb.depth() >= 40 * MS);
    }
}
