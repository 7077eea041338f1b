//! The SIP leg's RTP and RTCP readers as the media bridge uses them: each
//! datagram parsed as RTP (receive statistics: loss, extended sequence,
//! interarrival jitter) or as compound RTCP (the far end's sender report
//! and its report block about us: LSR/DLSR, RTT, loss), with our sender
//! report written from the statistics.
//!
//! Input: records of `[flags][length: u16 BE][datagram]`; bit 0 of
//! `flags` picks RTCP, the other bits are milliseconds since the last one.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use gangway_media::rtcp::{self, FarEndReports, ReceiveStats, SenderInfo};
use gangway_media::rtp;
use libfuzzer_sys::fuzz_target;

const OUR_SSRC: u32 = 0x1234_5678;

fuzz_target!(|data: &[u8]| {
    let epoch = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let mut elapsed = Duration::ZERO;
    let mut stats = ReceiveStats::default();
    let mut far_end = FarEndReports::default();
    let mut scratch = Vec::with_capacity(128);
    let mut rest = data;
    while let [flags, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        elapsed += Duration::from_millis(u64::from(flags >> 1));
        let now = epoch + elapsed;
        if flags & 1 == 0 {
            let Some(packet) = rtp::parse(datagram) else {
                continue;
            };
            let arrival = (elapsed.as_secs_f64() * 8000.0) as u64;
            stats.on_packet(packet.ssrc, packet.seq, packet.ts, arrival);
        } else if let Some(seen) = rtcp::parse_reports(datagram, OUR_SSRC) {
            if let Some((_, secs, frac)) = seen.sender {
                stats.on_sender_report(secs, frac, now);
            }
            if let Some(block) = seen.about_us {
                far_end.on_block(&block, rtcp::ntp_middle(wall + elapsed));
            }
            let _ = (far_end.rtt_ms(), far_end.fraction_lost());
        }
        let _ = (stats.lost(), stats.jitter(), stats.packets_received());
        let block = stats.report_block(now);
        let info = SenderInfo {
            ssrc: OUR_SSRC,
            ntp: rtcp::ntp_time(wall + elapsed),
            rtp_ts: 0,
            packets: 0,
            octets: 0,
        };
        rtcp::write_sender_report(&mut scratch, &info, block.as_ref(), "gangway");
        // What we write, we read back.
        let seen = rtcp::parse_reports(&scratch, block.map_or(0, |b| b.ssrc));
        assert!(seen.is_some_and(|s| s.sender.is_some()));
    }
});
