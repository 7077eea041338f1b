//! RFC 4733 towards the browser: the far end's telephone events, read on
//! the SIP leg (8 kHz), rewritten for the browser leg's stream, and digits
//! the far end sent in SIP INFO, synthesized as events there.
//!
//! Sans IO: the bridge feeds it the SIP leg's event packets and audio
//! frames, placed on the continuous 8 kHz timeline the browser stream is
//! built from (`InTimeline`), and drains the packets to write.
//!
//! - Clock: the browser leg's telephone-event runs at its audio's clock,
//!   48 kHz when it speaks Opus (timestamps and durations ×6), 8 kHz when
//!   G.711 passes through. The event's timestamp is its start on that
//!   stream's audio timeline, so the browser's jitter buffer plays it where
//!   the far end put it.
//! - One start per event: the far end's repeated packets (same SSRC and
//!   timestamp) only update the duration; the marker bit goes on the first
//!   packet we send for it, whatever the far end marked.
//! - End: three end packets (RFC 4733 §2.5.1.4) whatever the far end sent,
//!   one at its first end packet and one with each later SIP packet, so they
//!   are spread like the far end's own. An event whose end never comes is
//!   closed when a new one starts or its updates stop for 200 ms of audio.
//! - Audio meanwhile: the SIP leg's audio frames that overlap an event are
//!   not sent to the browser, so the digit is heard as the clean tone the
//!   browser generates. Chromium's NetEq plays an event alone (`kDtmf`)
//!   when no audio packet covers the time being played, and otherwise adds
//!   the tone on top of the decoded audio (`DtmfOverdub`): the far end's
//!   sound during the key press (its own in-band copy of the tone, noise)
//!   would be mixed in. The digit is heard either way (measured with
//!   Chromium 156); holding the audio back gives what a phone plays.
//! - Durations longer than 16 bits at 48 kHz (1.36 s) go on in contiguous
//!   segments (RFC 4733 §2.5.1.3).

use std::collections::VecDeque;

use crate::dtmf::event_code;

/// End packets per event (RFC 4733 §2.5.1.4).
const END_PACKETS: u8 = 3;
/// An open event whose updates stopped this long (8 kHz) while audio goes on is over.
const STALE: u64 = 1600;
/// A synthesized digit lasts 160 ms (the `Duration=` of SIP INFO digits).
const SYNTH_DURATION: u32 = 1280;
/// Silence between two synthesized digits (RFC 4733 wants ≥ 50 ms): 60 ms.
const SYNTH_GAP: u64 = 480;
/// Volume of synthesized digits: -10 dBm0, what phones send.
const SYNTH_VOLUME: u8 = 10;
/// Largest duration one report carries.
const MAX_SEGMENT: u64 = u16::MAX as u64;
/// Digits waiting to be synthesized; more are dropped (INFO floods).
const MAX_QUEUED: usize = 32;

/// One telephone-event packet for the browser leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrowserEvent {
    /// RTP clock of the browser leg's telephone-event (48000 or 8000).
    pub clock_hz: u32,
    /// Timestamp on that clock (the stream's timeline, before wrapping).
    pub time: u64,
    pub marker: bool,
    pub payload: [u8; 4],
    /// How long the event has lasted so far, at 8 kHz: its start is that
    /// long before now (for the packet's wallclock).
    pub elapsed_8k: u32,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    /// The far end's (SSRC, timestamp); `None` for a synthesized digit.
    key: Option<(u32, u32)>,
    code: u8,
    volume: u8,
    /// Start on the 8 kHz timeline.
    start: u64,
    /// Longest duration reported (8 kHz).
    duration: u32,
    ended: bool,
    ends_sent: u8,
    /// Where on the timeline the last update arrived (for staleness).
    updated: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct DtmfRelay {
    /// Browser clock units per 8 kHz sample: 6 (Opus) or 1 (G.711).
    factor: u32,
    current: Option<Current>,
    /// The event before `current`, so its late repeats do not restart it.
    previous: Option<(u32, u32)>,
    queued: VecDeque<u8>,
    out: VecDeque<BrowserEvent>,
}

impl Default for DtmfRelay {
    fn default() -> Self {
        DtmfRelay {
            factor: 1,
            current: None,
            previous: None,
            queued: VecDeque::with_capacity(MAX_QUEUED),
            // At most a few packets per input; never grows on the media path.
            out: VecDeque::with_capacity(8),
        }
    }
}

impl DtmfRelay {
    /// The browser leg speaks Opus: events on a 48 kHz clock.
    pub fn set_opus(&mut self, opus: bool) {
        self.factor = if opus { 6 } else { 1 };
    }

    /// The next packet to write to the browser.
    pub fn pop(&mut self) -> Option<BrowserEvent> {
        self.out.pop_front()
    }

    /// Queues a digit to synthesize (from SIP INFO); false if not a DTMF character.
    pub fn queue_digit(&mut self, digit: char) -> bool {
        match event_code(digit) {
            Some(code) if self.queued.len() < MAX_QUEUED => {
                self.queued.push_back(code);
                true
            }
            _ => false,
        }
    }

    /// A telephone-event packet from the SIP leg. `start` is where its
    /// timestamp falls on the 8 kHz timeline (used when it starts an event).
    pub fn on_sip_event(&mut self, ssrc: u32, ts: u32, start: u64, payload: &[u8]) {
        let [code, flags, d0, d1, ..] = *payload else {
            return;
        };
        // DTMF only: the browser's negotiated range is 0-15 (and 16, flash, is not a tone).
        if code > 15 {
            return;
        }
        let end = flags & 0x80 != 0;
        let duration = u32::from(u16::from_be_bytes([d0, d1]));
        let key = Some((ssrc, ts));
        if self.previous == key {
            return;
        }
        if let Some(c) = self.current.as_mut().filter(|c| c.key == key) {
            if c.ended {
                // The far end's end repeats pace ours.
                if c.ends_sent < END_PACKETS {
                    let c = *c;
                    self.emit(c, false);
                }
                return;
            }
            if duration < c.duration || (duration == c.duration && !end) {
                return; // a repeat or a reordered older update
            }
            c.duration = duration;
            c.ended = end;
            c.updated = start + u64::from(duration);
            let c = *c;
            self.emit(c, false);
            return;
        }
        self.close_open();
        self.previous = self.current.and_then(|c| c.key);
        let c = Current {
            key,
            code,
            volume: flags & 0x3f,
            start,
            duration,
            ended: end,
            ends_sent: 0,
            updated: start + u64::from(duration),
        };
        self.current = Some(c);
        self.emit(c, true);
    }

    /// An audio frame from the SIP leg at `time` (8 kHz timeline) of
    /// `samples`; returns true when it must not go to the browser (an
    /// event covers it). Advances end repeats and synthesized digits.
    pub fn on_sip_audio(&mut self, time: u64, samples: u32) -> bool {
        if let Some(c) = self.current.filter(|c| !c.ended && c.key.is_some()) {
            if time > c.updated + STALE {
                self.close_open();
            }
        }
        match self.current {
            Some(c) if c.ended && c.ends_sent < END_PACKETS => self.emit(c, false),
            Some(c) if c.ended => {}
            Some(mut c) if c.key.is_none() => {
                let lasted = (time + u64::from(samples)).saturating_sub(c.start);
                let lasted = lasted.min(u64::from(SYNTH_DURATION)) as u32;
                c.duration = c.duration.max(lasted);
                c.ended = c.duration >= SYNTH_DURATION;
                self.current = Some(c);
                self.emit(c, false);
            }
            _ => {}
        }
        let free = self.current.is_none_or(|c| {
            c.ended
                && c.ends_sent >= END_PACKETS
                && time >= c.start + u64::from(c.duration) + SYNTH_GAP
        });
        if free {
            if let Some(code) = self.queued.pop_front() {
                self.previous = self.current.and_then(|c| c.key);
                let c = Current {
                    key: None,
                    code,
                    volume: SYNTH_VOLUME,
                    start: time,
                    duration: samples.min(SYNTH_DURATION),
                    ended: false,
                    ends_sent: 0,
                    updated: time,
                };
                self.current = Some(c);
                self.emit(c, true);
            }
        }
        self.covers(time, samples)
    }

    /// Whether an event's span overlaps the frame `time..time + samples`.
    fn covers(&self, time: u64, samples: u32) -> bool {
        let Some(c) = self.current else {
            return false;
        };
        let end = if c.ended {
            c.start + u64::from(c.duration)
        } else {
            u64::MAX
        };
        time < end && time + u64::from(samples) > c.start
    }

    /// Ends the current event if it is still open (its end was lost, or a
    /// synthesized digit is cut short by the far end's own event).
    fn close_open(&mut self) {
        if let Some(c) = self.current.as_mut().filter(|c| !c.ended) {
            c.ended = true;
            let c = *c;
            self.emit(c, false);
        }
    }

    fn emit(&mut self, c: Current, marker: bool) {
        if c.ended {
            if let Some(cur) = self.current.as_mut().filter(|cur| cur.key == c.key) {
                cur.ends_sent = cur.ends_sent.saturating_add(1);
            }
        }
        let factor = u64::from(self.factor);
        let total = u64::from(c.duration) * factor;
        // Long events: contiguous segments of at most 0xFFFF each.
        let segment = total.saturating_sub(1) / MAX_SEGMENT * MAX_SEGMENT;
        let duration = (total - segment) as u16;
        let [d0, d1] = duration.to_be_bytes();
        let flags = if c.ended { 0x80 } else { 0 } | (c.volume & 0x3f);
        if self.out.len() == self.out.capacity() {
            // The shard drains after every input; this only guards against misuse.
            self.out.pop_front();
        }
        self.out.push_back(BrowserEvent {
            clock_hz: 8000 * self.factor,
            time: c.start * factor + segment,
            marker,
            payload: [c.code, flags, d0, d1],
            elapsed_8k: c.duration,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(code: u8, end: bool, duration: u16) -> [u8; 4] {
        let d = duration.to_be_bytes();
        [code, if end { 0x80 } else { 0 } | 10, d[0], d[1]]
    }

    fn drain(r: &mut DtmfRelay) -> Vec<BrowserEvent> {
        std::iter::from_fn(|| r.pop()).collect()
    }

    fn duration(p: &BrowserEvent) -> u16 {
        u16::from_be_bytes([p.payload[2], p.payload[3]])
    }

    fn is_end(p: &BrowserEvent) -> bool {
        p.payload[1] & 0x80 != 0
    }

    /// What baresip sends for one digit (9 updates of 20 ms, then 3 ends),
    /// with audio frames in between, towards an Opus browser.
    #[test]
    fn a_far_end_event_becomes_one_48_khz_event_with_three_ends() {
        let mut r = DtmfRelay::default();
        r.set_opus(true);
        let (ssrc, ts, start) = (7, 90_000, 16_000);
        let mut sent = Vec::new();
        let mut suppressed = 0;
        // Audio before the event passes.
        assert!(!r.on_sip_audio(start - 160, 160));
        for n in 1..=9u16 {
            // A phone may repeat its first packet, marker and all.
            let repeats = if n == 1 { 3 } else { 1 };
            for _ in 0..repeats {
                r.on_sip_event(ssrc, ts, start, &ev(5, false, 160 * n));
            }
            if r.on_sip_audio(start + 160 * u64::from(n - 1), 160) {
                suppressed += 1;
            }
            sent.extend(drain(&mut r));
        }
        for _ in 0..3 {
            r.on_sip_event(ssrc, ts, start, &ev(5, true, 1440));
            sent.extend(drain(&mut r));
        }
        // Audio after the event passes again and releases nothing more.
        assert!(!r.on_sip_audio(start + 1440, 160));
        assert!(!r.on_sip_audio(start + 1600, 160));
        sent.extend(drain(&mut r));

        assert_eq!(suppressed, 9, "audio under the event is held back");
        assert_eq!(sent.len(), 12, "{sent:?}");
        assert!(sent[0].marker && sent[1..].iter().all(|p| !p.marker));
        assert!(sent
            .iter()
            .all(|p| p.clock_hz == 48_000 && p.time == start * 6 && p.payload[0] == 5));
        let durations: Vec<u16> = sent.iter().map(duration).collect();
        assert_eq!(
            durations,
            [960, 1920, 2880, 3840, 4800, 5760, 6720, 7680, 8640, 8640, 8640, 8640]
        );
        let ends = sent.iter().filter(|p| is_end(p)).count();
        assert_eq!(ends, 3);
        assert!(sent[9..].iter().all(is_end));
        assert_eq!(sent[0].payload[1] & 0x3f, 10, "volume kept");
    }

    #[test]
    fn g711_browsers_get_the_8_khz_clock_unchanged() {
        let mut r = DtmfRelay::default();
        r.on_sip_event(1, 500, 4000, &ev(11, false, 400));
        let p = r.pop().unwrap();
        assert_eq!(
            (p.clock_hz, p.time, duration(&p), p.marker),
            (8000, 4000, 400, true)
        );
    }

    /// A far end that sends one end packet still yields three, one per
    /// following SIP packet; a lost start still gives a marked event.
    #[test]
    fn missing_end_repeats_are_made_up_and_a_lost_start_is_a_start() {
        let mut r = DtmfRelay::default();
        r.set_opus(true);
        r.on_sip_event(1, 100, 800, &ev(1, true, 800));
        let first = drain(&mut r);
        assert_eq!(first.len(), 1);
        assert!(first[0].marker && is_end(&first[0]));
        assert!(!r.on_sip_audio(1600, 160), "after the event");
        assert!(!r.on_sip_audio(1760, 160));
        assert!(!r.on_sip_audio(1920, 160));
        let later = drain(&mut r);
        assert_eq!(later.len(), 2, "{later:?}");
        assert!(later
            .iter()
            .all(|p| is_end(p) && !p.marker && duration(p) == 4800));
    }

    #[test]
    fn a_new_event_closes_one_whose_end_was_lost_and_late_repeats_are_ignored() {
        let mut r = DtmfRelay::default();
        r.on_sip_event(1, 100, 800, &ev(1, false, 320));
        r.on_sip_event(1, 900, 1600, &ev(2, false, 160));
        let p = drain(&mut r);
        assert_eq!(p.len(), 3);
        assert!(is_end(&p[1]) && p[1].payload[0] == 1 && duration(&p[1]) == 320);
        assert!(p[2].marker && p[2].payload[0] == 2 && p[2].time == 1600);
        r.on_sip_event(1, 100, 800, &ev(1, true, 480));
        assert!(drain(&mut r).is_empty(), "the old event's late end");
        r.on_sip_event(1, 900, 1600, &ev(2, false, 160));
        assert!(drain(&mut r).is_empty(), "an exact repeat");
    }

    #[test]
    fn an_event_whose_updates_stop_ends_and_lets_audio_through() {
        let mut r = DtmfRelay::default();
        r.on_sip_event(1, 100, 800, &ev(3, false, 160));
        drain(&mut r);
        assert!(r.on_sip_audio(960, 160), "still open");
        assert!(r.on_sip_audio(1120, 160));
        assert!(!r.on_sip_audio(2720, 160), "200 ms without updates");
        let p = drain(&mut r);
        assert!(is_end(&p[0]) && duration(&p[0]) == 160);
    }

    #[test]
    fn long_events_are_segmented_at_48_khz() {
        let mut r = DtmfRelay::default();
        r.set_opus(true);
        // 1.5 s at 8 kHz = 72000 at 48 kHz > 65535.
        r.on_sip_event(1, 0, 1000, &ev(9, false, 12_000));
        let p = r.pop().unwrap();
        assert_eq!(p.time, 6000 + 65_535);
        assert_eq!(u64::from(duration(&p)), 72_000 - 65_535);
        r.on_sip_event(1, 0, 1000, &ev(9, false, 10_922));
        assert!(r.pop().is_none(), "older update ignored");
    }

    #[test]
    fn info_digits_are_synthesized_on_the_audio_frames() {
        let mut r = DtmfRelay::default();
        r.set_opus(true);
        assert!(r.queue_digit('7') && r.queue_digit('#'));
        assert!(!r.queue_digit('x'));
        let mut sent = Vec::new();
        let mut suppressed = Vec::new();
        for n in 0..30u64 {
            suppressed.push(r.on_sip_audio(8000 + n * 160, 160));
            sent.extend(drain(&mut r));
        }
        let seven: Vec<_> = sent.iter().filter(|p| p.payload[0] == 7).collect();
        let hash: Vec<_> = sent.iter().filter(|p| p.payload[0] == 11).collect();
        assert_eq!(seven.len(), 8 + 2, "8 updates (160 ms), 3 ends in all");
        assert!(seven[0].marker && seven[0].time == 8000 * 6);
        assert_eq!(seven.iter().filter(|p| is_end(p)).count(), 3);
        assert_eq!(duration(seven.last().unwrap()), 1280 * 6);
        assert!(hash[0].marker, "the second digit starts afresh");
        // 8 frames of '7', then 3 frames (60 ms, carrying its end repeats) pass, then '#'.
        let first_hash = (hash[0].time / 6 - 8000) / 160;
        assert_eq!(first_hash, 8 + 3);
        assert!(suppressed[..8].iter().all(|s| *s));
        assert!(suppressed[8..11].iter().all(|s| !s));
        assert!(suppressed[11..19].iter().all(|s| *s));
    }

    #[test]
    fn garbage_and_other_events_are_ignored() {
        let mut r = DtmfRelay::default();
        r.on_sip_event(1, 0, 0, &[5, 0, 1]);
        r.on_sip_event(1, 0, 0, &ev(16, false, 160));
        r.on_sip_event(1, 0, 0, &[]);
        assert!(r.pop().is_none());
        assert!(!r.on_sip_audio(0, 160));
    }
}
