//! The reorder (jitter) buffer in front of the Opus encoder, fed as the
//! media bridge feeds it: RTP from the far end parsed, its timestamps
//! mapped onto the continuous 8 kHz timeline (`InTimeline`, across SSRC
//! changes and jumps), pushed with arrival times, and pulled until empty
//! at each arrival and at each deadline the buffer asks to be woken for.
//!
//! Input: records of `[milliseconds since the last][length: u16 BE][datagram]`.
#![no_main]

use std::time::{Duration, Instant};

use gangway_media::jitter::{JitterBuffer, Out};
use gangway_media::rtp::{self, InTimeline};
use libfuzzer_sys::fuzz_target;

fn drain(buffer: &mut JitterBuffer, now: Instant, released_up_to: &mut Option<u64>) {
    // Each 20 ms frame is released once, in time order; a bound in case
    // the buffer would loop.
    for _ in 0..1000 {
        let Some(out) = buffer.poll(now) else {
            return;
        };
        let (time, samples) = match out {
            Out::Frame { time, payload } => {
                assert!(!payload.is_empty() && payload.len() <= 160);
                (time, payload.len() as u64)
            }
            Out::Lost { time, samples, .. } => {
                assert!(samples > 0 && samples <= 160);
                (time, samples)
            }
        };
        if let Some(end) = *released_up_to {
            assert!(time >= end, "released {time} after {end}");
        }
        *released_up_to = Some(time + samples);
    }
    panic!("poll released more than 1000 frames at once");
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut timeline = InTimeline::default();
    let mut buffer = JitterBuffer::default();
    let mut released_up_to = None;
    let mut rest = data;
    while let [delta, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        let arrival = now + Duration::from_millis(u64::from(*delta));
        // The shard wakes the bridge at the buffer's deadline before later input.
        if let Some(deadline) = buffer.next_deadline().filter(|d| *d <= arrival) {
            drain(&mut buffer, deadline.max(now), &mut released_up_to);
        }
        now = arrival;
        if let Some(packet) = rtp::parse(datagram) {
            let samples = packet.payload.len() as u32;
            let time = timeline.map(packet.ssrc, packet.ts, samples);
            buffer.push(time, packet.payload, packet.marker, now);
        }
        drain(&mut buffer, now, &mut released_up_to);
    }
    let _ = (buffer.stats(), buffer.depth());
});
