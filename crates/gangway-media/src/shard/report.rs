//! The end-of-call media summary of a bridged call: one log line with both
//! legs' quality, and the per-call histograms.

use gangway_rtc::{LegStats, PeerId};
use tracing::{info, warn};

use super::metrics::{DirectionLabel, LegLabel, ShardMetrics};
use crate::bridge::LegSummary;
use crate::quality::{estimated_mos, Impairments};

/// A call's media when it ended, for its detail record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MediaReport {
    pub peer: PeerId,
    /// The browser leg, as of str0m's last statistics (every 2 s).
    pub webrtc: LegStats,
    /// The SIP leg; `None` for the echo line.
    pub sip: Option<LegSummary>,
    /// The call's estimated MOS (bridged calls).
    pub mos: Option<f64>,
}

/// Where shards send [`MediaReport`]s: the gateway's call records.
pub type MediaReportTx = tokio::sync::mpsc::Sender<MediaReport>;

/// Hands `report` on without waiting; a full queue loses it (the record
/// then goes without its media part), with a warning.
pub(super) fn send(reports: Option<&MediaReportTx>, report: MediaReport) {
    if let Some(tx) = reports {
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(r)) = tx.try_send(report) {
            warn!(
                peer = r.peer.0,
                "call records' queue full: media report dropped"
            );
        }
    }
}

/// Logs a bridged call's media quality when it ends and feeds the
/// histograms; returns the call's estimated MOS.
pub(super) fn report(m: &ShardMetrics, id: PeerId, s: &LegSummary, webrtc: &LegStats) -> f64 {
    // The worse of the two legs decides what the user heard.
    let mos = estimated_mos(Impairments {
        loss: s
            .loss_ratio
            .max(f64::from(webrtc.loss_from_browser.unwrap_or(0.0)))
            .max(f64::from(webrtc.loss_to_browser.unwrap_or(0.0))),
        // End to end: browser ↔ gateway plus gateway ↔ far end.
        rtt_ms: webrtc.rtt_ms.unwrap_or(0.0) + s.rtt_ms.unwrap_or(0.0),
        jitter_ms: s.jitter_ms.max(webrtc.jitter_ms.unwrap_or(0.0)),
    });
    if webrtc.packets_received > 0 {
        for (direction, loss) in [
            ("from_browser", webrtc.loss_from_browser),
            ("to_browser", webrtc.loss_to_browser),
        ] {
            if let Some(loss) = loss {
                m.webrtc_leg_loss_ratio
                    .get_or_create(&DirectionLabel { direction })
                    .observe(f64::from(loss));
            }
        }
        if let Some(jitter) = webrtc.jitter_ms {
            m.webrtc_leg_jitter_seconds.observe(jitter / 1000.0);
        }
        if let Some(rtt) = webrtc.rtt_ms {
            m.webrtc_leg_rtt_seconds.observe(rtt / 1000.0);
        }
    }
    for (leg, frames) in [
        ("webrtc", s.concealed_frames),
        ("sip", s.concealed_from_sip),
    ] {
        if frames > 0 {
            m.concealed_frames
                .get_or_create(&LegLabel { leg })
                .inc_by(frames);
        }
    }
    if s.packets_received > 0 {
        m.sip_leg_loss_ratio.observe(s.loss_ratio);
        m.sip_leg_jitter_seconds.observe(s.jitter_ms / 1000.0);
        m.call_mos.observe(mos);
    }
    if let Some(rtt) = s.rtt_ms {
        m.sip_leg_rtt_seconds.observe(rtt / 1000.0);
    }
    for (bandwidth, n) in [
        ("narrow", s.browser_opus_narrowband),
        ("wide", s.browser_opus_wider),
    ] {
        if n > 0 {
            m.browser_opus_packets
                .get_or_create(&[("bandwidth", bandwidth)])
                .inc_by(n);
        }
    }
    info!(
        peer = id.0,
        sip_packets_received = s.packets_received,
        sip_packets_lost = s.packets_lost,
        sip_loss_percent = format!("{:.2}", s.loss_ratio * 100.0),
        sip_jitter_ms = format!("{:.1}", s.jitter_ms),
        sip_packets_sent = s.packets_sent,
        sip_rtt_ms = s.rtt_ms.map(|r| format!("{r:.1}")),
        sip_far_end_loss_percent = s.far_end_fraction_lost.map(|l| format!("{:.2}", l * 100.0)),
        sip_far_end_packets_lost = s.far_end_cumulative_lost,
        transcoded = s.transcoded,
        browser_frames_concealed = s.concealed_frames,
        browser_opus_narrowband = s.browser_opus_narrowband,
        browser_opus_wider = s.browser_opus_wider,
        sip_frames_concealed = s.concealed_from_sip,
        sip_late_packets = s.sip_late_packets,
        jitter_buffer_ms = s.jitter_buffer_ms,
        webrtc_packets_received = webrtc.packets_received,
        webrtc_packets_sent = webrtc.packets_sent,
        webrtc_loss_from_browser = webrtc
            .loss_from_browser
            .map(|l| format!("{:.2}", l * 100.0)),
        webrtc_loss_to_browser = webrtc.loss_to_browser.map(|l| format!("{:.2}", l * 100.0)),
        webrtc_rtt_ms = webrtc.rtt_ms.map(|r| format!("{r:.1}")),
        estimated_mos = format!("{mos:.2}"),
        "call media summary"
    );
    mos
}
