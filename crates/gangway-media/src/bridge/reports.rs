//! RTCP on the SIP leg (RFC 3550): what we received (for our report
//! blocks), when our next sender report is due, and what the far end's
//! reports say about our stream (RTT, its loss).

use std::time::{Duration, Instant, SystemTime};

use super::output::Outputs;
use super::sip_stream::SipStream;
use crate::rtcp::{self, FarEndReports, ReceiveStats};
use crate::rtp::{random_u32, RtpPacket};

/// RTCP CNAME of our SIP-side streams; nothing about the browser.
const CNAME: &str = "gangway";

/// See the module documentation.
pub(super) struct Rtcp {
    stats: ReceiveStats,
    /// `None` until the far end's SDP says where reports go.
    next_report: Option<Instant>,
    /// Origin of arrival times for the jitter estimate, and the wallclock
    /// then: NTP times are derived from the `now` the shard passes in.
    epoch: Instant,
    epoch_wallclock: SystemTime,
    far_end: FarEndReports,
    scratch: Vec<u8>,
    /// Payload bytes of the far end's audio packets.
    octets_received: u64,
}

impl Rtcp {
    pub(super) fn new(now: Instant, wallclock: SystemTime) -> Self {
        Rtcp {
            stats: ReceiveStats::default(),
            next_report: None,
            epoch: now,
            epoch_wallclock: wallclock,
            far_end: FarEndReports::default(),
            scratch: Vec::new(),
            octets_received: 0,
        }
    }

    /// The wallclock at `now`.
    fn wallclock(&self, now: Instant) -> SystemTime {
        self.epoch_wallclock + now.saturating_duration_since(self.epoch)
    }

    /// The far end is known: the first report goes soon after media starts,
    /// then every ~5 s.
    pub(super) fn start(&mut self, now: Instant) {
        self.next_report
            .get_or_insert_with(|| now + Duration::from_secs(1));
    }

    /// An audio packet from the far end, for loss and jitter.
    pub(super) fn on_rtp(&mut self, now: Instant, packet: &RtpPacket<'_>) {
        self.octets_received += packet.payload.len() as u64;
        let arrival = (now.saturating_duration_since(self.epoch).as_secs_f64() * 8000.0) as u64;
        self.stats
            .on_packet(packet.ssrc, packet.seq, packet.ts, arrival);
    }

    pub(super) fn octets_received(&self) -> u64 {
        self.octets_received
    }

    /// RTCP from the far end: its sender report feeds our LSR/DLSR, its
    /// report block about `our_ssrc` the RTT and the far end's loss. False
    /// when it is not RTCP.
    pub(super) fn on_packet(&mut self, now: Instant, data: &[u8], our_ssrc: u32) -> bool {
        let Some(seen) = rtcp::parse_reports(data, our_ssrc) else {
            return false;
        };
        if let Some((_, secs, frac)) = seen.sender {
            self.stats.on_sender_report(secs, frac, now);
        }
        if let Some(block) = seen.about_us {
            self.far_end
                .on_block(&block, rtcp::ntp_middle(self.wallclock(now)));
        }
        true
    }

    /// Queues our sender report when one is due; it goes to the far end's
    /// RTP port + 1 (RFC 3550 §11).
    pub(super) fn send_due(&mut self, now: Instant, stream: &SipStream, out: &mut Outputs) {
        let Some(remote) = stream.remote() else {
            return;
        };
        if self.next_report.is_none_or(|t| now < t) {
            return;
        }
        self.next_report = Some(rtcp::next_report(now, random_u32()));
        let info = stream.sender_info(now, rtcp::ntp_time(self.wallclock(now)));
        let block = self.stats.report_block(now);
        rtcp::write_sender_report(&mut self.scratch, &info, block.as_ref(), CNAME);
        let dest = std::net::SocketAddr::new(remote.ip(), remote.port().wrapping_add(1));
        out.rtcp(dest, &self.scratch);
    }

    pub(super) fn received(&self) -> &ReceiveStats {
        &self.stats
    }

    pub(super) fn far_end(&self) -> &FarEndReports {
        &self.far_end
    }
}
