//! The media inactivity watch: an answered call whose legs both should be
//! sending, but one of which has sent nothing for the configured time, is
//! reported once (`LegEvent::MediaTimeout`).

use std::time::{Duration, Instant};

use crate::types::Flow;

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// `None`: no watch.
    timeout: Option<Duration>,
    /// Watched from the answer on (early media may be silent).
    answered_at: Option<Instant>,
    last_from_sip: Option<Instant>,
    last_from_browser: Option<Instant>,
    timed_out: bool,
}

impl Liveness {
    pub(super) fn new(timeout: Option<Duration>) -> Self {
        Liveness {
            timeout,
            ..Liveness::default()
        }
    }

    /// The far end answered: from now on silence on either leg counts.
    pub(super) fn answered(&mut self, now: Instant) {
        self.answered_at.get_or_insert(now);
    }

    pub(super) fn heard_from_sip(&mut self, now: Instant) {
        self.last_from_sip = Some(now);
    }

    pub(super) fn heard_from_browser(&mut self, now: Instant) {
        self.last_from_browser = Some(now);
    }

    /// Hold or resume: silence during a hold does not count, and the watch
    /// starts afresh when audio resumes both ways.
    pub(super) fn flow_changed(&mut self, was: Flow, now_flows: Flow, now: Instant) {
        if now_flows.is_both() && !was.is_both() {
            self.last_from_sip = Some(now);
            self.last_from_browser = Some(now);
        }
    }

    /// True once, when either leg has sent nothing for the timeout since
    /// the answer (or since its last packet) while audio flows both ways.
    pub(super) fn timed_out(&mut self, now: Instant, flow: Flow) -> bool {
        let (Some(timeout), Some(answered)) = (self.timeout, self.answered_at) else {
            return false;
        };
        if self.timed_out || !flow.is_both() {
            return false;
        }
        let silent = |last: Option<Instant>| {
            now.saturating_duration_since(last.unwrap_or(answered).max(answered)) >= timeout
        };
        self.timed_out = silent(self.last_from_sip) || silent(self.last_from_browser);
        self.timed_out
    }
}
