//! Plain RTP for the SIP leg: parsing what the PBX sends, writing what we
//! send, and keeping each direction's timeline continuous across source
//! changes (early media → answer, re-answers) and gaps.

/// A parsed RTP packet, borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// Parses an RTP packet (RFC 3550 §5.1); `None` for anything else, RTCP included.
pub fn parse(data: &[u8]) -> Option<RtpPacket<'_>> {
    if data.len() < 12 || data[0] >> 6 != 2 {
        return None;
    }
    let pt = data[1] & 0x7f;
    // 72–76 are RTCP packet types colliding with the marker bit (RFC 5761 §4).
    if (72..=76).contains(&pt) {
        return None;
    }
    let csrc = usize::from(data[0] & 0x0f);
    let mut start = 12 + 4 * csrc;
    if data[0] & 0x10 != 0 {
        let ext = data.get(start..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let mut end = data.len();
    if data[0] & 0x20 != 0 {
        let pad = usize::from(*data.last()?);
        end = end.checked_sub(pad)?;
    }
    let payload = data.get(start..end)?;
    Some(RtpPacket {
        pt,
        marker: data[1] & 0x80 != 0,
        seq: u16::from_be_bytes([data[2], data[3]]),
        ts: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
        payload,
    })
}

/// Our outgoing stream towards the PBX: one SSRC, contiguous sequence
/// numbers, timestamps that follow the source's timing.
#[derive(Debug)]
pub struct OutStream {
    ssrc: u32,
    seq: u16,
    ts: u32,
    last_source_time: Option<u64>,
}

/// Largest jump in source time (8 kHz units) treated as a gap rather than a restart.
const MAX_GAP: u64 = 8000 * 10;
/// Largest step back (8 kHz units, 1 s) taken for a late packet; further
/// back, the source restarted its clock on the same SSRC, and treating its
/// packets as late would drop them until the clock caught up.
const MAX_LATE: u64 = 8000;

impl OutStream {
    pub fn new(ssrc: u32, initial_seq: u16, initial_ts: u32) -> Self {
        OutStream {
            ssrc,
            seq: initial_seq,
            ts: initial_ts,
            last_source_time: None,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The timestamp of the last packet written.
    pub fn last_timestamp(&self) -> u32 {
        self.ts
    }

    /// Writes a telephone-event packet (RFC 4733): next sequence number, but
    /// the event's own start timestamp; the audio timeline is not moved.
    pub fn write_event(
        &mut self,
        pt: u8,
        ts: u32,
        marker: bool,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(&[0x80, pt | if marker { 0x80 } else { 0 }]);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&ts.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
    }

    /// A pause in our sending (hold) of `elapsed` samples: the next packet
    /// starts a new talkspurt (marker bit) that much later, on the same SSRC
    /// and sequence, so the receiver sees a silence rather than a new stream.
    pub fn pause(&mut self, elapsed: u64) {
        self.ts = self.ts.wrapping_add(elapsed as u32);
        self.last_source_time = None;
    }

    /// Writes the next packet into `out` (cleared first). `source_time` is the
    /// frame's media time in 8 kHz units; `samples` its length.
    pub fn write(
        &mut self,
        pt: u8,
        source_time: u64,
        samples: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
        let advance = match self.last_source_time {
            None => 0,
            Some(last) => match source_time.checked_sub(last) {
                Some(d) if d > 0 && d <= MAX_GAP => d as u32,
                // Reordered, duplicate or a restarted source: keep the timeline moving.
                _ => samples,
            },
        };
        let marker = self.last_source_time.is_none();
        self.last_source_time = Some(source_time);
        self.ts = self.ts.wrapping_add(advance);
        out.clear();
        out.extend_from_slice(&[0x80, pt | if marker { 0x80 } else { 0 }]);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
    }
}

/// Maps the PBX's timestamps (which restart whenever its SSRC changes) onto
/// one continuous 64-bit timeline for the browser leg.
#[derive(Debug, Default)]
pub struct InTimeline {
    ssrc: Option<u32>,
    last_in: u32,
    out: u64,
}

impl InTimeline {
    /// Where a timestamp of the current source falls on the output
    /// timeline, without moving it (a telephone event's start, which lies
    /// between audio packets); `None` for another source or a far jump.
    pub fn place(&self, ssrc: u32, ts: u32) -> Option<u64> {
        if self.ssrc != Some(ssrc) {
            return None;
        }
        let diff = ts.wrapping_sub(self.last_in) as i32;
        if u64::from(diff.unsigned_abs()) > MAX_GAP {
            return None;
        }
        if diff >= 0 {
            Some(self.out + diff as u64)
        } else {
            self.out.checked_sub(u64::from(diff.unsigned_abs()))
        }
    }

    /// Returns the output time for a packet. `samples` is how far a new
    /// source starts after the last packet of the old one.
    pub fn map(&mut self, ssrc: u32, ts: u32, samples: u32) -> u64 {
        if self.ssrc != Some(ssrc) {
            if self.ssrc.is_some() {
                self.out += u64::from(samples);
            }
            self.ssrc = Some(ssrc);
            self.last_in = ts;
            return self.out;
        }
        let diff = ts.wrapping_sub(self.last_in) as i32;
        if diff >= 0 && u64::from(diff as u32) <= MAX_GAP {
            self.out += diff as u64;
            self.last_in = ts;
            self.out
        } else if diff < 0 && u64::from(diff.unsigned_abs()) <= MAX_LATE {
            // A late packet: place it in the past without moving the timeline.
            self.out.saturating_sub(u64::from(diff.unsigned_abs()))
        } else {
            // A jump too large to be a gap: the source restarted its clock.
            self.out += u64::from(samples);
            self.last_in = ts;
            self.out
        }
    }
}

/// Unpredictable values for SSRCs, initial sequence numbers and timestamps
/// (RFC 3550 §5.1 wants them random). Not for cryptography.
pub(crate) fn random_u32() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn parses_plain_packets() {
        let p = packet(0, 7, 160, 0xdead_beef, &[1, 2, 3]);
        let r = parse(&p).unwrap();
        assert_eq!(
            (r.pt, r.seq, r.ts, r.ssrc, r.payload),
            (0, 7, 160, 0xdead_beef, &[1u8, 2, 3][..])
        );
    }

    #[test]
    fn handles_csrc_extension_and_padding() {
        let mut p = vec![0xb1, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]; // pad, ext, 1 CSRC
        p.extend_from_slice(&[0, 0, 0, 9]); // CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // one-word extension
        p.extend_from_slice(&[7, 7, 0, 2]); // payload 7 7, then 2 bytes of padding
        let r = parse(&p).unwrap();
        assert_eq!(r.pt, 8);
        assert_eq!(r.payload, &[7, 7]);
    }

    #[test]
    fn rejects_garbage_rtcp_and_truncation() {
        assert!(parse(&[]).is_none());
        assert!(parse(&[0x80; 11]).is_none());
        assert!(parse(&packet(0, 1, 1, 1, &[])[..]).is_some());
        let mut v1 = packet(0, 1, 1, 1, &[1]);
        v1[0] = 0x40;
        assert!(parse(&v1).is_none(), "version 1");
        let rtcp_sr = packet(72 | 0x80, 1, 1, 1, &[0; 20]);
        assert!(parse(&rtcp_sr).is_none(), "RTCP sender report");
        let mut bad_ext = packet(0, 1, 1, 1, &[]);
        bad_ext[0] |= 0x10;
        assert!(parse(&bad_ext).is_none(), "extension header missing");
        let mut bad_pad = packet(0, 1, 1, 1, &[5]);
        bad_pad[0] |= 0x20;
        assert!(parse(&bad_pad).is_none(), "padding longer than the packet");
    }

    #[test]
    fn outgoing_stream_is_contiguous_and_follows_source_timing() {
        let mut s = OutStream::new(42, 65535, 1000);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for (time, samples) in [
            (0u64, 160u32),
            (160, 160),
            (480, 160),
            (320, 160),
            (800_000, 160),
        ] {
            s.write(0, time, samples, &[0xff; 160], &mut out);
            let p = parse(&out).unwrap();
            assert_eq!(p.ssrc, 42);
            seen.push((p.seq, p.ts, p.marker));
        }
        assert_eq!(
            seen,
            vec![
                (65535, 1000, true),
                (0, 1160, false),
                (1, 1480, false), // a lost frame leaves a gap in time, not in sequence
                (2, 1640, false), // a late frame moves on by its length
                (3, 1800, false), // a restarted source continues the timeline
            ]
        );
    }

    #[test]
    fn incoming_timeline_is_continuous_across_ssrc_changes() {
        let mut t = InTimeline::default();
        assert_eq!(t.map(1, 5000, 160), 0);
        assert_eq!(t.map(1, 5160, 160), 160);
        assert_eq!(t.map(1, 5000, 160), 0, "late packet placed in the past");
        assert_eq!(t.map(1, 5480, 160), 480, "gap kept");
        // Early media ends, the answer's stream starts with a new SSRC and clock.
        assert_eq!(t.map(2, 90, 160), 640);
        assert_eq!(t.map(2, 250, 160), 800);
        assert_eq!(t.place(2, 250), Some(800), "placing does not move it");
        assert_eq!(t.place(2, 90), Some(640));
        assert_eq!(t.place(2, 410), Some(960), "ahead of the audio");
        assert_eq!(t.place(3, 250), None, "another source");
        assert_eq!(t.place(2, 250 + 200_000), None, "a far jump");
        assert_eq!(t.map(2, 410, 160), 960);
        // The same SSRC's clock stepping back 5 s is a restart, not 5 s late.
        assert_eq!(t.map(2, 570u32.wrapping_sub(40_000), 160), 1120);
        assert_eq!(t.map(2, 730u32.wrapping_sub(40_000), 160), 1280);
        // Timestamp wrap-around within one source.
        let mut w = InTimeline::default();
        assert_eq!(w.map(3, u32::MAX - 79, 160), 0);
        assert_eq!(w.map(3, 80, 160), 160);
    }
}
