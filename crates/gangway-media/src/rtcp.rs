//! RTCP for the SIP leg (RFC 3550 §6): what we send (sender reports with a
//! reception report block and a CNAME) and the receive statistics behind the
//! block (loss, extended highest sequence, interarrival jitter, LSR/DLSR).
//! The WebRTC leg's RTCP is str0m's.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds between 1900 (NTP epoch) and 1970 (UNIX epoch).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// 64-bit NTP timestamp (seconds, fraction) for a wall-clock time.
pub fn ntp_time(t: SystemTime) -> (u32, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs as u32, frac as u32)
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// 24-bit signed, clamped.
    pub cumulative_lost: i32,
    pub extended_highest_seq: u32,
    pub jitter: u32,
    pub last_sr: u32,
    /// Units of 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// Receive statistics for the far end's stream (RFC 3550 A.1, A.3, A.8).
#[derive(Debug, Default)]
pub struct ReceiveStats {
    ssrc: Option<u32>,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Interarrival jitter in timestamp units, scaled by 16 as in A.8.
    jitter_q4: u32,
    last_transit: Option<u32>,
    /// Middle 32 bits of the far end's last SR NTP time, and when it came.
    last_sr: Option<(u32, Instant)>,
}

impl ReceiveStats {
    /// Records one packet. `arrival` is the arrival time in the stream's
    /// clock units (8 kHz), from any fixed origin.
    pub fn on_packet(&mut self, ssrc: u32, seq: u16, ts: u32, arrival: u64) {
        if self.ssrc != Some(ssrc) {
            // A new source (e.g. the answer's stream after early media): start over.
            *self = ReceiveStats {
                ssrc: Some(ssrc),
                base_seq: u32::from(seq),
                max_seq: seq,
                last_sr: self.last_sr,
                ..ReceiveStats::default()
            };
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta != 0 && delta < 0x8000 {
                if seq < self.max_seq {
                    self.cycles += 1 << 16;
                }
                self.max_seq = seq;
            }
        }
        self.received += 1;
        // In 32 bits, as in A.8: the difference of two transit times is
        // then right across a wrap of the timestamps.
        let transit = (arrival as u32).wrapping_sub(ts);
        if let Some(last) = self.last_transit {
            let d = u64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            // J += (|D| - J) / 16, kept scaled by 16; in 64 bits, so that a
            // jump of the far end's timestamps cannot overflow it.
            let j = u64::from(self.jitter_q4);
            self.jitter_q4 = u32::try_from(j + d - ((j + 8) >> 4)).unwrap_or(u32::MAX);
        }
        self.last_transit = Some(transit);
    }

    /// The far end's sender report: remembered for LSR/DLSR.
    pub fn on_sender_report(&mut self, ntp_secs: u32, ntp_frac: u32, now: Instant) {
        self.last_sr = Some(((ntp_secs << 16) | (ntp_frac >> 16), now));
    }

    pub fn packets_received(&self) -> u32 {
        self.received
    }

    /// Cumulative packets lost so far (negative with duplicates).
    pub fn lost(&self) -> i64 {
        i64::from(self.extended_max()) - i64::from(self.base_seq) + 1 - i64::from(self.received)
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    fn extended_max(&self) -> u32 {
        self.cycles + u32::from(self.max_seq)
    }

    /// The report block for the next RTCP packet; advances the interval counters.
    pub fn report_block(&mut self, now: Instant) -> Option<ReportBlock> {
        let ssrc = self.ssrc?;
        let expected = self.extended_max() - self.base_seq + 1;
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at);
                (lsr, (d.as_secs_f64() * 65536.0) as u32)
            }
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            extended_highest_seq: self.extended_max(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        })
    }
}

/// What our side sent, for the sender info.
#[derive(Debug, Clone, Copy)]
pub struct SenderInfo {
    pub ssrc: u32,
    pub ntp: (u32, u32),
    pub rtp_ts: u32,
    pub packets: u32,
    pub octets: u32,
}

/// Writes a compound RTCP packet: SR (with at most one report block), then
/// SDES with our CNAME (RFC 3550 §6.1 requires both).
pub fn write_sender_report(
    out: &mut Vec<u8>,
    info: &SenderInfo,
    block: Option<&ReportBlock>,
    cname: &str,
) {
    out.clear();
    let count = u8::from(block.is_some());
    let words = 6 + 6 * u16::from(count); // length in 32-bit words minus one
    out.extend_from_slice(&[0x80 | count, 200]);
    out.extend_from_slice(&words.to_be_bytes());
    out.extend_from_slice(&info.ssrc.to_be_bytes());
    out.extend_from_slice(&info.ntp.0.to_be_bytes());
    out.extend_from_slice(&info.ntp.1.to_be_bytes());
    out.extend_from_slice(&info.rtp_ts.to_be_bytes());
    out.extend_from_slice(&info.packets.to_be_bytes());
    out.extend_from_slice(&info.octets.to_be_bytes());
    if let Some(b) = block {
        out.extend_from_slice(&b.ssrc.to_be_bytes());
        let lost = (b.cumulative_lost as u32) & 0x00ff_ffff;
        out.push(b.fraction_lost);
        out.extend_from_slice(&lost.to_be_bytes()[1..]);
        out.extend_from_slice(&b.extended_highest_seq.to_be_bytes());
        out.extend_from_slice(&b.jitter.to_be_bytes());
        out.extend_from_slice(&b.last_sr.to_be_bytes());
        out.extend_from_slice(&b.delay_since_last_sr.to_be_bytes());
    }
    // SDES: one chunk, CNAME item, END, padded to a word boundary.
    let cname = &cname.as_bytes()[..cname.len().min(255)];
    let chunk = 4 + 2 + cname.len() + 1;
    let padded = chunk.div_ceil(4) * 4;
    out.extend_from_slice(&[0x81, 202]);
    out.extend_from_slice(&((padded / 4) as u16).to_be_bytes());
    out.extend_from_slice(&info.ssrc.to_be_bytes());
    out.extend_from_slice(&[1, cname.len() as u8]);
    out.extend_from_slice(cname);
    out.resize(out.len() + (padded - chunk) + 1, 0);
}

/// The middle 32 bits of the NTP timestamp for a wall-clock time (units
/// of 1/65536 s), the form LSR and RTT computations use.
pub fn ntp_middle(t: SystemTime) -> u32 {
    let (secs, frac) = ntp_time(t);
    (secs << 16) | (frac >> 16)
}

/// What a compound RTCP packet from the far end told us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportsSeen {
    /// Its sender report: (sender SSRC, NTP seconds, NTP fraction).
    pub sender: Option<(u32, u32, u32)>,
    /// The reception report block (in an SR or an RR) about `our_ssrc`.
    pub about_us: Option<ReportBlock>,
}

const RTCP_SR: u8 = 200;
const RTCP_RR: u8 = 201;
const REPORT_BLOCK_LEN: usize = 24;

/// Reads a compound RTCP packet (RFC 3550 §6.1): the first SR's sender
/// info, and the report block about `our_ssrc` from any SR or RR in it.
/// `None` when the datagram is not RTCP at all; a packet cut short or
/// with a report count that does not fit is not read further (what came
/// before it is kept). Never panics.
pub fn parse_reports(data: &[u8], our_ssrc: u32) -> Option<ReportsSeen> {
    let mut seen = ReportsSeen::default();
    let mut rest = data;
    let mut any = false;
    while rest.len() >= 4 {
        if rest[0] >> 6 != 2 {
            break;
        }
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        let Some(packet) = rest.get(..len) else {
            break;
        };
        rest = &rest[len..];
        any = true;
        let count = usize::from(packet[0] & 0x1f);
        // Where the report blocks start (after the header and, for an SR, the sender info).
        let blocks_at = match packet[1] {
            RTCP_SR if packet.len() >= 28 => {
                if seen.sender.is_none() {
                    seen.sender = Some((word(packet, 4), word(packet, 8), word(packet, 12)));
                }
                28
            }
            RTCP_RR if packet.len() >= 8 => 8,
            _ => continue,
        };
        let Some(blocks) = packet.get(blocks_at..blocks_at + count * REPORT_BLOCK_LEN) else {
            continue; // a count that overruns its own packet: ignore its blocks
        };
        for b in blocks.chunks_exact(REPORT_BLOCK_LEN) {
            if word(b, 0) != our_ssrc {
                continue;
            }
            // 24-bit two's complement cumulative loss.
            let lost = (word(b, 4) << 8) as i32 >> 8;
            seen.about_us = Some(ReportBlock {
                ssrc: our_ssrc,
                fraction_lost: b[4],
                cumulative_lost: lost,
                extended_highest_seq: word(b, 8),
                jitter: word(b, 12),
                last_sr: word(b, 16),
                delay_since_last_sr: word(b, 20),
            });
        }
    }
    any.then_some(seen)
}

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// RTTs above this are taken for a confused clock or a stale LSR, not a path.
const MAX_RTT_UNITS: u32 = 60 << 16;
/// How far below zero an RTT may come out from the far end's rounding
/// (5 ms, in 1/65536 s units) and still count, as zero.
const ROUNDING_UNITS: u32 = 5 * 65536 / 1000;

/// The far end's reports about our stream: round-trip time (RFC 3550
/// §6.4.1) and how much of our audio it lost.
#[derive(Debug, Default, Clone, Copy)]
pub struct FarEndReports {
    /// Latest RTT sample and an exponentially smoothed one (gain 1/8, as TCP's SRTT), seconds.
    latest_rtt: Option<f64>,
    smoothed_rtt: Option<f64>,
    samples: u32,
    fraction_lost: Option<u8>,
    cumulative_lost: Option<i32>,
}

impl FarEndReports {
    /// One report block about our stream, received when the NTP clock's
    /// middle 32 bits read `arrival`.
    pub fn on_block(&mut self, block: &ReportBlock, arrival: u32) {
        self.fraction_lost = Some(block.fraction_lost);
        self.cumulative_lost = Some(block.cumulative_lost);
        // No SR of ours had reached the far end yet: no RTT in this block.
        if block.last_sr == 0 {
            return;
        }
        let rtt = arrival
            .wrapping_sub(block.last_sr)
            .wrapping_sub(block.delay_since_last_sr);
        // A slightly "negative" result is a near-zero path measured with the
        // far end rounding its DLSR up (baresip on loopback does): zero.
        let rtt = if rtt.wrapping_neg() <= ROUNDING_UNITS {
            0
        } else {
            rtt
        };
        // A more negative one wraps to a huge value: a bad DLSR or a clock step.
        if rtt > MAX_RTT_UNITS {
            return;
        }
        let rtt = f64::from(rtt) / 65536.0;
        self.latest_rtt = Some(rtt);
        self.smoothed_rtt = Some(match self.smoothed_rtt {
            Some(s) => s + (rtt - s) / 8.0,
            None => rtt,
        });
        self.samples += 1;
    }

    /// The smoothed RTT, ms.
    pub fn rtt_ms(&self) -> Option<f64> {
        self.smoothed_rtt.map(|s| s * 1000.0)
    }

    pub fn latest_rtt_ms(&self) -> Option<f64> {
        self.latest_rtt.map(|s| s * 1000.0)
    }

    /// How many reports carried an RTT.
    pub fn rtt_samples(&self) -> u32 {
        self.samples
    }

    /// The far end's latest fraction lost of our stream, 0–1.
    pub fn fraction_lost(&self) -> Option<f64> {
        self.fraction_lost.map(|f| f64::from(f) / 256.0)
    }

    pub fn cumulative_lost(&self) -> Option<i32> {
        self.cumulative_lost
    }
}

/// When the next report is due: 5 s apart, jittered ±50 % (RFC 3550 §6.3.1)
/// so calls set up together do not report in lockstep.
pub fn next_report(now: Instant, random: u32) -> Instant {
    let factor = 0.5 + f64::from(random % 1000) / 1000.0;
    now + Duration::from_secs_f64(5.0 * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::rtp::rtcp::Rtcp;

    #[test]
    fn loss_sequence_wrap_and_jitter() {
        let mut s = ReceiveStats::default();
        // 20 ms packets, seq wrapping, one lost (65535 missing), steady arrival.
        let seqs = [65530u16, 65531, 65532, 65533, 65534, 0, 1, 2];
        for (i, seq) in seqs.iter().enumerate() {
            let n = if i >= 5 { i + 1 } else { i } as u32;
            s.on_packet(7, *seq, 1000 + n * 160, 50_000 + u64::from(n) * 160);
        }
        assert_eq!(s.packets_received(), 8);
        assert_eq!(s.lost(), 1);
        assert_eq!(s.jitter(), 0, "perfectly paced arrival has no jitter");
        let b = s.report_block(Instant::now()).unwrap();
        assert_eq!(b.extended_highest_seq, 65536 + 2);
        assert_eq!(b.cumulative_lost, 1);
        assert_eq!(b.fraction_lost, (256 / 9) as u8, "1 of 9 expected");
        // The next interval had no new packets: nothing lost in it.
        assert_eq!(s.report_block(Instant::now()).unwrap().fraction_lost, 0);
    }

    #[test]
    fn jitter_grows_with_uneven_arrival() {
        let mut s = ReceiveStats::default();
        for i in 0..50u32 {
            let wobble = if i % 2 == 0 { 0 } else { 40 }; // 5 ms of 8 kHz
            s.on_packet(1, i as u16, i * 160, u64::from(i * 160 + wobble));
        }
        assert!((30..=40).contains(&s.jitter()), "jitter {}", s.jitter());
    }

    #[test]
    fn jitter_stays_small_across_a_timestamp_wrap() {
        // Found by fuzz/rtp_rtcp: the wrap made |D| about 2^32, which
        // overflowed (a panic with overflow checks, garbage without).
        let mut s = ReceiveStats::default();
        let ts = [4_294_967_000u32, 4_294_967_089, 24, 184, 344, 504];
        for (i, ts) in ts.into_iter().enumerate() {
            s.on_packet(
                0x1122_3344,
                65533u16.wrapping_add(i as u16),
                ts,
                160 * (i as u64 + 1),
            );
        }
        assert!(s.jitter() < 20, "jitter {}", s.jitter());
    }

    #[test]
    fn sender_report_is_valid_rtcp_for_an_independent_parser() {
        let info = SenderInfo {
            ssrc: 0x1234_5678,
            ntp: ntp_time(SystemTime::now()),
            rtp_ts: 987_654,
            packets: 250,
            octets: 40_000,
        };
        let block = ReportBlock {
            ssrc: 0xdead_beef,
            fraction_lost: 12,
            cumulative_lost: 3,
            extended_highest_seq: 70_000,
            jitter: 17,
            last_sr: 0xabcd_ef01,
            delay_since_last_sr: 65536,
        };
        let mut out = Vec::new();
        write_sender_report(&mut out, &info, Some(&block), "gangway@example");
        assert_eq!(out.len() % 4, 0);
        let Ok(Rtcp::SenderReport(sr)) = Rtcp::try_from(&out[..]) else {
            panic!("str0m does not read our SR: {out:02x?}");
        };
        assert_eq!(*sr.sender_info.ssrc, 0x1234_5678);
        assert_eq!(sr.sender_info.sender_packet_count, 250);
        assert_eq!(sr.sender_info.sender_octet_count, 40_000);
        let report = sr.reports.iter().next().expect("one report block");
        assert_eq!(*report.ssrc, 0xdead_beef);
        assert_eq!(report.fraction_lost, 12);
        assert_eq!(report.packets_lost, 3);
        assert_eq!(report.max_seq, 70_000);
        assert_eq!(report.jitter, 17);
        assert_eq!(report.last_sr_time, 0xabcd_ef01);
        // The SDES that follows the SR.
        let sr_len = (usize::from(u16::from_be_bytes([out[2], out[3]])) + 1) * 4;
        let Ok(Rtcp::SourceDescription(d)) = Rtcp::try_from(&out[sr_len..]) else {
            panic!("str0m does not read our SDES");
        };
        let sdes = d.reports.iter().next().unwrap();
        assert_eq!(sdes.values.iter().next().unwrap().1, "gangway@example");
        // And we read our own back.
        let seen = parse_reports(&out, 0xdead_beef).unwrap();
        assert_eq!(seen.sender, Some((0x1234_5678, info.ntp.0, info.ntp.1)));
        assert_eq!(seen.about_us, Some(block));
        let sdes_only = parse_reports(&out[sr_len..], 0xdead_beef).unwrap();
        assert_eq!(sdes_only, ReportsSeen::default());
        assert_eq!(
            parse_reports(&[0x80, 200, 0xff, 0xff], 1),
            None,
            "truncated"
        );
    }

    /// An RR (PT 201) with the given blocks, as a far end would send it.
    fn receiver_report(sender: u32, blocks: &[ReportBlock]) -> Vec<u8> {
        let mut out = vec![0x80 | blocks.len() as u8, 201];
        out.extend_from_slice(&(1 + 6 * blocks.len() as u16).to_be_bytes());
        out.extend_from_slice(&sender.to_be_bytes());
        for b in blocks {
            out.extend_from_slice(&b.ssrc.to_be_bytes());
            out.push(b.fraction_lost);
            out.extend_from_slice(&((b.cumulative_lost as u32) & 0xff_ffff).to_be_bytes()[1..]);
            for w in [
                b.extended_highest_seq,
                b.jitter,
                b.last_sr,
                b.delay_since_last_sr,
            ] {
                out.extend_from_slice(&w.to_be_bytes());
            }
        }
        out
    }

    fn block(ssrc: u32, last_sr: u32, dlsr: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 64,
            cumulative_lost: -3,
            extended_highest_seq: 1000,
            jitter: 8,
            last_sr,
            delay_since_last_sr: dlsr,
        }
    }

    #[test]
    fn finds_the_block_about_us_in_compound_srs_and_rrs() {
        const US: u32 = 0x0bad_cafe;
        // Their SR reporting on someone else, then an RR with two blocks, one ours.
        let mut compound = Vec::new();
        let info = SenderInfo {
            ssrc: 0x1111,
            ntp: (5, 6),
            rtp_ts: 0,
            packets: 1,
            octets: 160,
        };
        write_sender_report(&mut compound, &info, Some(&block(0x2222, 1, 1)), "far");
        let ours = block(US, 0x1234_0000, 0x0001_0000);
        compound.extend(receiver_report(0x1111, &[block(0x3333, 9, 9), ours]));
        let seen = parse_reports(&compound, US).unwrap();
        assert_eq!(seen.sender, Some((0x1111, 5, 6)));
        assert_eq!(
            seen.about_us,
            Some(ours),
            "negative cumulative loss survives"
        );
        assert_eq!(parse_reports(&compound, 0x4444).unwrap().about_us, None);
    }

    #[test]
    fn hostile_and_truncated_reports_are_read_safely() {
        const US: u32 = 7;
        let rr = receiver_report(1, &[block(US, 100, 1)]);
        assert!(parse_reports(&rr, US).unwrap().about_us.is_some());
        // Every truncation: never a panic, never a block from a cut packet.
        for n in 0..rr.len() {
            let seen = parse_reports(&rr[..n], US);
            assert!(seen.is_none_or(|s| s.about_us.is_none()), "cut at {n}");
        }
        // A report count larger than the packet holds.
        let mut lying = rr.clone();
        lying[0] = 0x80 | 31;
        assert_eq!(parse_reports(&lying, US).unwrap().about_us, None);
        // A length that runs past the datagram.
        let mut long = rr.clone();
        long[3] = 0xff;
        assert_eq!(parse_reports(&long, US), None);
        // Not RTCP, empty, version 0, and an SR too short for its sender info.
        assert_eq!(parse_reports(&[], US), None);
        assert_eq!(parse_reports(&[0x00, 201, 0, 1, 0, 0, 0, 1], US), None);
        let short_sr = [0x81, 200, 0, 1, 0, 0, 0, 1];
        assert_eq!(parse_reports(&short_sr, US), Some(ReportsSeen::default()));
        // Garbage after a good packet leaves the good part.
        let mut tail = rr.clone();
        tail.extend_from_slice(&[0xde, 0xad]);
        assert!(parse_reports(&tail, US).unwrap().about_us.is_some());
        // Arbitrary bytes.
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let len = (x % 80) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse_reports(&data, US);
        }
    }

    #[test]
    fn round_trip_time_per_rfc_3550() {
        let mut r = FarEndReports::default();
        assert_eq!(r.rtt_ms(), None);
        // The RFC's own example (§6.4.1): A = 0xb710:8000 (46864.500 s),
        // DLSR = 0x0005:4000 (5.250 s), LSR = 0xb705:2000 (46853.125 s):
        // RTT = 6.125 s.
        r.on_block(&block(1, 0xb705_2000, 0x0005_4000), 0xb710_8000);
        assert_eq!(r.latest_rtt_ms(), Some(6125.0));
        assert_eq!(r.rtt_ms(), Some(6125.0));
        assert_eq!(r.fraction_lost(), Some(0.25));
        assert_eq!(r.cumulative_lost(), Some(-3));
        // Smoothed with gain 1/8: 6125 + (125 - 6125) / 8 = 5375 ms.
        r.on_block(&block(1, 0xb705_2000, 0x0005_4000), 0xb70a_8000);
        assert_eq!(r.latest_rtt_ms(), Some(125.0));
        assert_eq!(r.rtt_ms(), Some(5375.0));
        assert_eq!(r.rtt_samples(), 2);
        // LSR 0 (none of our SRs arrived), a DLSR beyond the arrival
        // ("negative" RTT) and a stale LSR carry no RTT, but do carry loss.
        let mut r = FarEndReports::default();
        r.on_block(&block(1, 0, 0), 0xb710_8000);
        r.on_block(&block(1, 0xb710_0000, 0x0001_0000), 0xb710_8000);
        r.on_block(&block(1, 0x0001_0000, 0), 0xb710_8000);
        assert_eq!((r.rtt_ms(), r.rtt_samples()), (None, 0));
        assert_eq!(r.fraction_lost(), Some(0.25));
        // Across the wrap of the 32-bit middle NTP word.
        r.on_block(&block(1, 0xffff_f000, 0x0000_0800), 0x0000_0800);
        assert_eq!(r.latest_rtt_ms(), Some(4096.0 / 65536.0 * 1000.0));
        // A DLSR rounded up past the arrival by 1 ms (a loopback path): zero.
        let mut r = FarEndReports::default();
        r.on_block(&block(1, 0xb710_0000, 0x0000_8042), 0xb710_8000);
        assert_eq!(r.latest_rtt_ms(), Some(0.0));
    }
}
