//! RFC 4733 telephone events on the SIP leg: digits the browser asks to send
//! (paced by the outgoing audio, one packet per 20 ms frame) and digits the
//! far end sends (reported once per event).

use std::collections::VecDeque;

/// Packets per digit before the end packets: 5 × 20 ms = 100 ms of tone.
const TONE_PACKETS: u32 = 5;
/// End packets are sent three times (RFC 4733 §2.5.1.4).
const END_REPEATS: u32 = 3;
/// Silent frames between two digits (60 ms).
const GAP_FRAMES: u32 = 3;
/// 20 ms at 8 kHz.
const FRAME: u32 = 160;
/// Volume field: -10 dBm0, what phones send.
const VOLUME: u8 = 10;

/// The RFC 4733 event code for a DTMF character.
pub fn event_code(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(12 + (digit as u8 - b'A')),
        'a'..='d' => Some(12 + (digit as u8 - b'a')),
        _ => None,
    }
}

/// The DTMF character of an RFC 4733 event code.
pub fn digit(code: u8) -> Option<char> {
    match code {
        0..=9 => Some((b'0' + code) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + code - 12) as char),
        _ => None,
    }
}

/// One event packet to send: its payload and whether it starts the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    pub payload: [u8; 4],
    /// The first packet of an event carries the RTP marker bit.
    pub marker: bool,
    /// The RTP timestamp of the event's start.
    pub start_ts: u32,
}

#[derive(Debug)]
struct Active {
    code: u8,
    start_ts: u32,
    sent: u32,
}

/// Queued digits becoming event packets, one per outgoing audio frame.
#[derive(Debug, Default)]
pub struct DtmfSender {
    queue: VecDeque<u8>,
    active: Option<Active>,
    gap: u32,
}

impl DtmfSender {
    /// Queues digits; returns how many were valid and queued.
    pub fn push(&mut self, digits: &str) -> usize {
        let before = self.queue.len();
        self.queue.extend(digits.chars().filter_map(event_code));
        self.queue.len() - before
    }

    pub fn is_idle(&self) -> bool {
        self.active.is_none() && self.queue.is_empty()
    }

    /// Called once per outgoing 20 ms frame with the stream's current
    /// timestamp; returns the event packet to send alongside it, if any.
    pub fn next(&mut self, stream_ts: u32) -> Option<EventPacket> {
        if self.active.is_none() {
            if self.gap > 0 {
                self.gap -= 1;
                return None;
            }
            let code = self.queue.pop_front()?;
            self.active = Some(Active {
                code,
                start_ts: stream_ts,
                sent: 0,
            });
        }
        let a = self.active.as_mut()?;
        let end = a.sent >= TONE_PACKETS;
        let duration = FRAME * (a.sent + 1).min(TONE_PACKETS);
        let packet = EventPacket {
            payload: payload(a.code, end, duration as u16),
            marker: a.sent == 0,
            start_ts: a.start_ts,
        };
        a.sent += 1;
        if a.sent >= TONE_PACKETS + END_REPEATS {
            self.active = None;
            self.gap = GAP_FRAMES;
        }
        Some(packet)
    }
}

fn payload(code: u8, end: bool, duration: u16) -> [u8; 4] {
    let d = duration.to_be_bytes();
    [code, if end { 0x80 } else { 0 } | VOLUME, d[0], d[1]]
}

/// Reports each incoming event once, however many packets repeat it.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    last: Option<(u32, u32)>,
}

impl DtmfReceiver {
    /// Returns the digit when this packet starts a new event.
    pub fn on_packet(&mut self, ssrc: u32, ts: u32, payload: &[u8]) -> Option<char> {
        let code = *payload.first()?;
        if payload.len() < 4 || self.last == Some((ssrc, ts)) {
            return None;
        }
        self.last = Some((ssrc, ts));
        digit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in "0123456789*#ABCD".chars() {
            assert_eq!(digit(event_code(c).unwrap()), Some(c));
        }
        assert_eq!(event_code('x'), None);
        assert_eq!(digit(16), None, "not a DTMF event");
    }

    #[test]
    fn a_digit_is_100_ms_then_three_end_packets_then_a_gap() {
        let mut s = DtmfSender::default();
        assert_eq!(s.push("5#x"), 2, "invalid characters are skipped");
        let mut ts = 1000;
        let mut packets = Vec::new();
        for _ in 0..30 {
            packets.push(s.next(ts));
            ts += FRAME;
        }
        let first: Vec<_> = packets[..8].iter().map(|p| p.unwrap()).collect();
        assert!(first[0].marker && first[1..].iter().all(|p| !p.marker));
        assert!(first
            .iter()
            .all(|p| p.start_ts == 1000 && p.payload[0] == 5));
        let durations: Vec<u16> = first
            .iter()
            .map(|p| u16::from_be_bytes([p.payload[2], p.payload[3]]))
            .collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800, 800]);
        let ends: Vec<bool> = first.iter().map(|p| p.payload[1] & 0x80 != 0).collect();
        assert_eq!(ends, [false, false, false, false, false, true, true, true]);
        assert!(packets[8..11].iter().all(Option::is_none), "60 ms gap");
        let hash = packets[11].unwrap();
        assert!(hash.marker && hash.payload[0] == 11);
        assert_eq!(hash.start_ts, 1000 + 11 * FRAME);
        assert!(packets[19..].iter().all(Option::is_none));
        assert!(s.is_idle());
    }

    #[test]
    fn the_receiver_reports_each_event_once() {
        let mut r = DtmfReceiver::default();
        let p = |code: u8, end: bool| [code, if end { 0x8a } else { 0x0a }, 0, 160];
        assert_eq!(r.on_packet(1, 500, &p(1, false)), Some('1'));
        assert_eq!(r.on_packet(1, 500, &p(1, false)), None);
        assert_eq!(r.on_packet(1, 500, &p(1, true)), None, "end repeats");
        assert_eq!(
            r.on_packet(1, 900, &p(1, false)),
            Some('1'),
            "same digit again"
        );
        assert_eq!(
            r.on_packet(1, 1300, &p(11, true)),
            Some('#'),
            "lost start, end seen"
        );
        assert_eq!(r.on_packet(1, 1700, &[3]), None, "truncated");
        assert_eq!(r.on_packet(1, 2100, &p(20, false)), None, "not DTMF");
    }
}
