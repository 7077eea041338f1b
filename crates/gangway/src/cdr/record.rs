//! The call detail record and how it is put together, sans IO: the call's
//! table reports the call-level facts when it ends ([`CallFacts`]), its
//! media shard reports the media when the leg is released
//! ([`MediaReport`]); the [`Assembler`] joins the two by the WebRTC leg and
//! gives a [`Record`] once both are in, or once the media report is
//! [`MEDIA_WAIT`] late (the record then has no media part). Time is an
//! input: tests drive it with a fake clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gangway_core::calls::CallSummary;
use gangway_media::MediaReport;
use serde::Serialize;

/// How long a record waits for its call's media report.
pub const MEDIA_WAIT: Duration = Duration::from_secs(2);

/// Most calls or media reports waiting to be joined; more are dropped.
pub const MAX_PENDING: usize = 10_000;

/// What the shell adds to the core's summary of an ended call.
#[derive(Debug, Clone)]
pub struct CallFacts {
    /// The record's own id (unique; receivers deduplicate on it).
    pub id: String,
    pub summary: CallSummary,
    /// The front end's call id and Gangway's own.
    pub call_id: String,
    pub gangway_call_id: String,
    /// `json` or `sip_ws`.
    pub front_end: &'static str,
    /// The SIP Call-IDs of the call's SIP legs, first first.
    pub sip_call_ids: Vec<String>,
    /// The caller when the summary has none (the gateway's own identity).
    pub default_from: String,
    /// A wallclock reading and the instant it was taken, to date the
    /// summary's instants.
    pub wall: SystemTime,
    pub at: Instant,
}

/// One call detail record, as written and sent (JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub id: String,
    pub call_id: String,
    pub gangway_call_id: String,
    pub sip_call_id: Option<String>,
    pub sip_call_ids: Vec<String>,
    /// `json` or `sip_ws` (`None`: an incoming call that rang nobody).
    pub front_end: Option<&'static str>,
    pub direction: &'static str,
    pub from: String,
    pub to: String,
    pub start_time: String,
    pub answer_time: Option<String>,
    pub end_time: String,
    /// Seconds from answer to end (0 when never answered).
    pub duration_secs: f64,
    /// Seconds from start to end.
    pub total_secs: f64,
    pub end_reason: &'static str,
    pub sip_code: Option<u16>,
    pub transcoded: Option<bool>,
    pub mos: Option<f64>,
    /// The browser leg (`None`: no WebRTC leg, or its report was lost).
    pub webrtc: Option<LegRecord>,
    /// The SIP leg (`None`: no SIP media, or the report was lost).
    pub sip: Option<LegRecord>,
}

/// One leg's media in a record. `received` is what the gateway received
/// on that leg, `sent` what it sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LegRecord {
    pub codec: Option<&'static str>,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Share of the packets towards the gateway that were lost (0–1).
    pub loss_received: Option<f64>,
    /// Share of the gateway's packets the far side reported lost (0–1).
    pub loss_sent: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
}

/// Builds the record of `facts` with its media, if it came.
pub fn build(facts: &CallFacts, media: Option<&MediaReport>) -> Record {
    let s = &facts.summary;
    let date = |i: Instant| rfc3339(wallclock(facts.wall, facts.at, i));
    let secs = |from: Instant| s.ended.saturating_duration_since(from).as_secs_f64();
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let bridged = media.and_then(|m| m.sip.as_ref());
    Record {
        id: facts.id.clone(),
        call_id: facts.call_id.clone(),
        gangway_call_id: facts.gangway_call_id.clone(),
        sip_call_id: facts.sip_call_ids.first().cloned(),
        sip_call_ids: facts.sip_call_ids.clone(),
        front_end: Some(facts.front_end),
        direction: if s.inbound { "inbound" } else { "outbound" },
        from: s.from.clone().unwrap_or_else(|| facts.default_from.clone()),
        to: s.to.clone(),
        start_time: date(s.started),
        answer_time: s.answered.map(date),
        end_time: date(s.ended),
        duration_secs: round(s.answered.map_or(0.0, secs)),
        total_secs: round(secs(s.started)),
        end_reason: s.reason.as_str(),
        sip_code: s.code,
        transcoded: bridged.map(|b| b.transcoded),
        mos: media
            .and_then(|m| m.mos)
            .map(|m| (m * 100.0).round() / 100.0),
        webrtc: media.map(|m| {
            let w = &m.webrtc;
            LegRecord {
                codec: bridged.map(|b| b.browser_codec),
                packets_received: w.packets_received,
                packets_sent: w.packets_sent,
                bytes_received: w.bytes_received,
                bytes_sent: w.bytes_sent,
                loss_received: w.loss_from_browser.map(f64::from),
                loss_sent: w.loss_to_browser.map(f64::from),
                jitter_ms: w.jitter_ms,
                rtt_ms: w.rtt_ms,
            }
        }),
        sip: bridged.map(|b| LegRecord {
            codec: b.sip_codec,
            packets_received: u64::from(b.packets_received),
            packets_sent: u64::from(b.packets_sent),
            bytes_received: b.bytes_received,
            bytes_sent: b.bytes_sent,
            loss_received: Some(b.loss_ratio),
            loss_sent: b.far_end_fraction_lost,
            jitter_ms: Some(b.jitter_ms),
            rtt_ms: b.rtt_ms,
        }),
    }
}

/// The wallclock time of `i`, given that `at` was `wall`.
pub fn wallclock(wall: SystemTime, at: Instant, i: Instant) -> SystemTime {
    if i <= at {
        wall - at.duration_since(i)
    } else {
        wall + i.duration_since(at)
    }
}

/// `t` as RFC 3339 in UTC with milliseconds: `2026-12-02T23:04:05.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The date (year, month, day) `days` after 1970-01-01, proleptic
/// Gregorian (the usual era-based conversion).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Joins calls and media reports; see the module documentation.
#[derive(Default)]
pub struct Assembler {
    /// Ended calls waiting for their media, by WebRTC leg, with a deadline.
    calls: HashMap<u64, (Instant, CallFacts)>,
    /// Media reports that came before their call's facts.
    media: HashMap<u64, (Instant, MediaReport)>,
    out: VecDeque<Record>,
    /// Calls and reports dropped because too many were waiting.
    pub overflowed: u64,
}

impl Assembler {
    pub fn on_call(&mut self, now: Instant, facts: CallFacts) {
        let leg = facts.summary.leg.0;
        if let Some((_, media)) = self.media.remove(&leg) {
            return self.out.push_back(build(&facts, Some(&media)));
        }
        if !facts.summary.media_leg {
            return self.out.push_back(build(&facts, None));
        }
        if self.calls.len() >= MAX_PENDING {
            self.overflowed += 1;
            return self.out.push_back(build(&facts, None));
        }
        self.calls.insert(leg, (now + MEDIA_WAIT, facts));
    }

    /// A missed incoming call: no media to wait for.
    pub fn on_missed(&mut self, facts: &super::missed::MissedFacts) {
        self.out.push_back(super::missed::build(facts));
    }

    pub fn on_media(&mut self, now: Instant, media: MediaReport) {
        let leg = media.peer.0;
        if let Some((_, facts)) = self.calls.remove(&leg) {
            return self.out.push_back(build(&facts, Some(&media)));
        }
        if self.media.len() >= MAX_PENDING {
            self.overflowed += 1;
            return;
        }
        // A leg released without a call that ended (none today) is forgotten.
        self.media.insert(leg, (now + MEDIA_WAIT, media));
    }

    /// Records whose media did not come in time go without it.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, (t, _))| *t <= now)
            .map(|(k, _)| *k)
            .collect();
        for leg in due {
            if let Some((_, facts)) = self.calls.remove(&leg) {
                self.out.push_back(build(&facts, None));
            }
        }
        self.media.retain(|_, (t, _)| *t > now);
    }

    /// Ended calls still waiting for their media.
    pub fn waiting(&self) -> usize {
        self.calls.len()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.calls.values().map(|(t, _)| *t);
        calls.chain(self.media.values().map(|(t, _)| *t)).min()
    }

    pub fn poll_output(&mut self) -> Option<Record> {
        self.out.pop_front()
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
