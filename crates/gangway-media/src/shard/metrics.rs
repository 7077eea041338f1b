//! The shards' Prometheus metrics, and the plain counters a shard bumps per
//! packet ([`Tally`]) and publishes to them now and then: a datagram costs
//! an integer increment on the shard's own memory, not an atomic shared by
//! every shard.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// What the media shards report. Cloning shares the underlying atomics, so
/// all shards feed one set; per-packet counts reach it from each shard's
/// [`Tally`] every RTCP tick (250 ms), when a call ends and when the shard
/// stops, never per packet.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    pub peers: Gauge,
    pub packets_in: Counter,
    pub packets_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Datagrams no peer accepted (stray, late or hostile traffic).
    pub unmatched: Counter,
    /// Datagrams a socket refused to send (buffer full).
    pub send_drops: Counter,
    /// RTP ports held for SIP legs.
    pub rtp_ports: Gauge,
    pub rtp_packets_in: Counter,
    pub rtp_packets_out: Counter,
    pub rtp_bytes_in: Counter,
    pub rtp_bytes_out: Counter,
    /// RTP datagrams not passed on: not RTP, a payload type not bridged, or an unexpected source.
    pub rtp_dropped: Counter,
    /// Bridged calls refused because no RTP port was free.
    pub rtp_port_exhausted: Counter,
    pub rtcp_packets_in: Counter,
    pub rtcp_packets_out: Counter,
    /// Bridged calls ended because a leg went silent.
    pub media_timeouts: Counter,
    /// Commands refused because a shard's queue was full (calls refused
    /// included); see the `shard` module for the policy.
    pub commands_dropped: Counter,
    /// Leg events dropped because the call owner's queue was full (see
    /// the `shard` module).
    pub events_dropped: Counter,
    /// Per bridged call, at its end: packet loss from the SIP leg.
    pub sip_leg_loss_ratio: Histogram,
    /// Per bridged call, at its end: interarrival jitter from the SIP leg.
    pub sip_leg_jitter_seconds: Histogram,
    /// Per bridged call, at its end: WebRTC-leg loss, one observation per
    /// direction that RTCP reported.
    pub webrtc_leg_loss_ratio: Family<DirectionLabel, Histogram>,
    pub webrtc_leg_jitter_seconds: Histogram,
    pub webrtc_leg_rtt_seconds: Histogram,
    /// Frames the transcoder filled in, by the leg that lost them.
    pub concealed_frames: Family<LegLabel, Counter>,
    /// Per bridged call, at its end: estimated MOS (E-model) over both legs.
    pub call_mos: Histogram,
    /// Per bridged call, at its end: round-trip time to the SIP far end (its RTCP), when measured.
    pub sip_leg_rtt_seconds: Histogram,
    /// Transcoded calls' browser Opus packets by coded bandwidth (`bandwidth` = narrow | wide).
    pub browser_opus_packets: Family<[(&'static str, &'static str); 1], Counter>,
}

/// Which way media went on the WebRTC leg.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

/// Which leg of a call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LegLabel {
    pub leg: &'static str,
}

fn loss_histogram() -> Histogram {
    Histogram::new([0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2])
}

impl Default for ShardMetrics {
    fn default() -> Self {
        let m = ShardMetrics {
            peers: Gauge::default(),
            packets_in: Counter::default(),
            packets_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            unmatched: Counter::default(),
            send_drops: Counter::default(),
            rtp_ports: Gauge::default(),
            rtp_packets_in: Counter::default(),
            rtp_packets_out: Counter::default(),
            rtp_bytes_in: Counter::default(),
            rtp_bytes_out: Counter::default(),
            rtp_dropped: Counter::default(),
            rtp_port_exhausted: Counter::default(),
            rtcp_packets_in: Counter::default(),
            rtcp_packets_out: Counter::default(),
            media_timeouts: Counter::default(),
            commands_dropped: Counter::default(),
            events_dropped: Counter::default(),
            sip_leg_loss_ratio: loss_histogram(),
            webrtc_leg_loss_ratio: Family::new_with_constructor(loss_histogram),
            webrtc_leg_jitter_seconds: Histogram::new([0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16]),
            webrtc_leg_rtt_seconds: Histogram::new([0.001, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8]),
            concealed_frames: Family::default(),
            sip_leg_jitter_seconds: Histogram::new([0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16]),
            call_mos: Histogram::new([1.0, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4]),
            sip_leg_rtt_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8,
            ]),
            browser_opus_packets: Family::default(),
        };
        // Every label value from the start, so each family is exported
        // (with zeros) before the first call.
        for direction in ["from_browser", "to_browser"] {
            let _ = m
                .webrtc_leg_loss_ratio
                .get_or_create(&DirectionLabel { direction });
        }
        for leg in ["webrtc", "sip"] {
            let _ = m.concealed_frames.get_or_create(&LegLabel { leg });
        }
        for bandwidth in ["narrow", "wide"] {
            let _ = m
                .browser_opus_packets
                .get_or_create(&[("bandwidth", bandwidth)]);
        }
        m
    }
}

/// One shard's per-packet counts since they were last published.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub unmatched: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub send_drops: u64,
    pub rtp_packets_in: u64,
    pub rtp_bytes_in: u64,
    pub rtp_packets_out: u64,
    pub rtp_bytes_out: u64,
    pub rtp_dropped: u64,
    pub rtcp_packets_in: u64,
    pub rtcp_packets_out: u64,
}

impl Tally {
    /// Adds the counts to `metrics` and starts again from zero.
    pub(super) fn publish(&mut self, metrics: &ShardMetrics) {
        let Tally {
            packets_in,
            bytes_in,
            unmatched,
            packets_out,
            bytes_out,
            send_drops,
            rtp_packets_in,
            rtp_bytes_in,
            rtp_packets_out,
            rtp_bytes_out,
            rtp_dropped,
            rtcp_packets_in,
            rtcp_packets_out,
        } = std::mem::take(self);
        for (counter, n) in [
            (&metrics.packets_in, packets_in),
            (&metrics.bytes_in, bytes_in),
            (&metrics.unmatched, unmatched),
            (&metrics.packets_out, packets_out),
            (&metrics.bytes_out, bytes_out),
            (&metrics.send_drops, send_drops),
            (&metrics.rtp_packets_in, rtp_packets_in),
            (&metrics.rtp_bytes_in, rtp_bytes_in),
            (&metrics.rtp_packets_out, rtp_packets_out),
            (&metrics.rtp_bytes_out, rtp_bytes_out),
            (&metrics.rtp_dropped, rtp_dropped),
            (&metrics.rtcp_packets_in, rtcp_packets_in),
            (&metrics.rtcp_packets_out, rtcp_packets_out),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_is_published_once_and_starts_again_from_zero() {
        let metrics = ShardMetrics::default();
        let mut tally = Tally {
            packets_in: 3,
            rtp_bytes_out: 480,
            ..Tally::default()
        };
        tally.publish(&metrics);
        tally.publish(&metrics);
        assert_eq!(metrics.packets_in.get(), 3);
        assert_eq!(metrics.rtp_bytes_out.get(), 480);
        assert_eq!(metrics.packets_out.get(), 0);
        tally.rtp_dropped += 1;
        tally.publish(&metrics);
        assert_eq!(metrics.rtp_dropped.get(), 1);
        assert_eq!(metrics.packets_in.get(), 3);
    }
}
