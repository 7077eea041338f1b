//! The core's observations as log lines and metrics.

use std::time::{Instant, SystemTime};

use gangway_core::calls::{CallSummary, Observation};
use gangway_signal::CallId;
use tracing::{info, warn};

use super::CallDriver;
use crate::cdr::record::CallFacts;
use crate::cdr::record_id;

impl CallDriver {
    /// An ended call's facts to the call records, with what the shell
    /// knows of it (its SIP Call-IDs, the gateway's own identity).
    fn record(&mut self, call: &str, gangway_call: &str, summary: CallSummary) {
        if !self.shared.cdr.enabled() {
            return;
        }
        let handles = &mut self.handles;
        let sip_call_ids = summary
            .sip_legs
            .iter()
            .filter_map(|leg| {
                let live = handles.dialogs.get(leg).and_then(|d| d.call_id());
                live.or_else(|| handles.ended_call_ids.remove(leg))
            })
            .collect();
        let default_from = self.shared.sip.as_ref().map(|l| l.from_user.clone());
        self.shared.cdr.call(CallFacts {
            id: record_id(),
            summary,
            call_id: call.to_string(),
            gangway_call_id: gangway_call.to_string(),
            front_end: self.front_end,
            sip_call_ids,
            default_from: default_from.unwrap_or_default(),
            wall: SystemTime::now(),
            at: Instant::now(),
        });
    }

    pub(crate) fn observe(
        &mut self,
        call: Option<&CallId>,
        log_id: Option<&str>,
        what: Observation,
    ) {
        let metrics = &self.shared.metrics;
        let call = call.map(CallId::as_str).unwrap_or("");
        let gangway_call = log_id.unwrap_or("");
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        match what {
            Observation::Requested { to } => {
                info!(call, gangway_call, %to, front_end = self.front_end, "call requested");
                metrics.calls_active.inc();
                metrics.front_end_call(self.front_end);
                self.shared.calls_per_address.started(self.peer_ip);
            }
            Observation::Accepted { from } => {
                info!(call, gangway_call, %from, front_end = self.front_end, "incoming call taken");
                metrics.calls_active.inc();
                metrics.front_end_call(self.front_end);
                self.shared.calls_per_address.started(self.peer_ip);
            }
            Observation::Started { route } => {
                metrics
                    .calls_started
                    .get_or_create(&[("route", route)])
                    .inc();
            }
            Observation::MediaConnected { after } => {
                metrics.webrtc_connect_seconds.observe(after.as_secs_f64());
                info!(call, ms = ms(after), "media connected");
            }
            Observation::InviteSent { after } => {
                metrics.sip_invite_seconds.observe(after.as_secs_f64());
            }
            Observation::Answered { after } => {
                metrics.call_answer_seconds.observe(after.as_secs_f64());
                info!(call, ms = ms(after), "answered");
            }
            Observation::MidCall(event) => metrics.mid_call(event),
            Observation::LimitReached { limit } => {
                info!(call, limit, "refused: over the limit");
                metrics.limit_refused(limit);
            }
            Observation::Ended { reason } => {
                self.shared.calls_per_address.ended(self.peer_ip);
                info!(call, reason = reason.as_str(), "call ended");
                metrics.call_ended(reason);
            }
            Observation::Parked { calls, grace } => {
                let grace_secs = grace.as_secs();
                info!(calls, grace_secs, "socket lost: calls held for a resume");
            }
            Observation::Expired => info!("no resume: the calls end"),
            Observation::HoldRequested { hold } => info!(call, hold, "hold requested"),
            Observation::NoMedia => info!(call, "no media from one leg: ending the call"),
            Observation::SdpUnusable(why) => warn!(call, "far end SDP unusable: {why}"),
            Observation::SipFailed { status, reason } => {
                info!(call, status, %reason, "SIP leg failed")
            }
            Observation::SessionExpired { status } => {
                info!(call, ?status, "SIP session timer expired")
            }
            Observation::TransferRequested { target } => {
                info!(call, %target, "transfer requested")
            }
            Observation::TransferTargetRefused { target } => {
                info!(call, %target, "transfer target refused by the routing rules")
            }
            Observation::TransferCalling { uri } => {
                info!(call, %uri, "transferred by the far end: calling the target")
            }
            Observation::TransferTargetFailed { status, reason } => {
                info!(call, status, %reason, "the new far end did not answer")
            }
            Observation::TransferTimedOut => info!(
                call,
                silent_secs = gangway_core::calls::TRANSFER_OUTCOME_TIMEOUT.as_secs(),
                "no outcome from the transferee: the transfer failed (408)"
            ),
            Observation::ReplacementRefused => {
                info!(
                    call,
                    "INVITE with Replaces for a call that cannot take it (486)"
                )
            }
            Observation::Replacing { from } => {
                info!(call, %from, "replacing the SIP leg (INVITE with Replaces)")
            }
            Observation::Summary(summary) => self.record(call, gangway_call, *summary),
        }
    }
}
