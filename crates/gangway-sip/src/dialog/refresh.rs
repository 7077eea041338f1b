//! The SIP leg's RFC 4028 session timer at run time: one task per
//! dialog that sends our refreshes (UPDATE without a body when the far end
//! allows it, else a re-INVITE with our SDP unchanged) and notices when the
//! session expires. The rules are in [`crate::session_timer`].
//!
//! Our refreshes go through the mid-call request queue, so they never
//! overlap a hold re-INVITE (which carries the timer headers itself and
//! counts as a refresh when answered 2xx).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rsipstack::platform::CancellationToken;
use rsipstack::sip::{Header, Request, Response, StatusCodeKind};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{sleep_until, MidCall};
use crate::session_timer::{self, parse_min_se, Answer, Due, Session, SessionTimer, TimerHeaders};
use crate::SipMetrics;

/// What a call's session timer works with.
#[derive(Clone)]
pub(crate) struct TimerConfig {
    /// `SipConfig::session_expires` (0: we do not ask for timers).
    pub(crate) ours: u32,
    /// The `Min-SE` of our requests (a 422 to the INVITE may have raised it).
    pub(crate) min_se: u32,
    pub(crate) metrics: SipMetrics,
}

/// Why the session timer ended the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The far end was the refresher and did not refresh in time.
    NotRefreshed,
    /// Our refresh failed: 408/481, no response, or failures until the
    /// session expired (the last status).
    RefreshFailed(u16),
}

impl Expired {
    /// The status reported in `SipEvent::SessionExpired`.
    pub(crate) fn status(self) -> Option<u16> {
        match self {
            Expired::NotRefreshed => None,
            Expired::RefreshFailed(status) => Some(status),
        }
    }
}

/// A session timer's shared state (one per [`MidCall`]).
pub(super) struct TimerCell {
    state: Mutex<TimerState>,
    /// The state changed: the task recomputes its deadline.
    changed: Notify,
    expired: watch::Sender<Option<Expired>>,
    stop: CancellationToken,
    /// A refresh re-INVITE of ours is out (the far end's re-offers get 491).
    pub(super) refreshing: AtomicBool,
}

#[derive(Default)]
struct TimerState {
    /// Set by [`MidCall::configure_session_timer`]; without it there is
    /// no timer at all.
    config: Option<TimerConfig>,
    timer: Option<SessionTimer>,
    /// Refresh with UPDATE (the far end's `Allow` has it).
    use_update: bool,
    /// The last failure of our refresh, for the report.
    last_failure: Option<u16>,
    started: bool,
}

impl TimerState {
    /// A refresh (ours or the far end's) set the session's new terms;
    /// `None` turns the timer off. Returns whether a timer was running.
    fn rearm(&mut self, now: std::time::Instant, session: Option<Session>, min_se: u32) -> bool {
        let was_on = self.timer.is_some();
        match (session, self.timer.as_mut()) {
            (Some(session), Some(timer)) => timer.refreshed(now, session),
            (Some(session), None) => self.timer = Some(SessionTimer::new(now, session, min_se)),
            (None, _) => self.timer = None,
        }
        was_on
    }
}

impl Default for TimerCell {
    fn default() -> Self {
        TimerCell {
            state: Mutex::new(TimerState::default()),
            changed: Notify::new(),
            expired: watch::Sender::new(None),
            stop: CancellationToken::new(),
            refreshing: AtomicBool::new(false),
        }
    }
}

/// The timer headers of a message.
pub fn timer_headers<'a>(headers: impl IntoIterator<Item = &'a Header>) -> TimerHeaders {
    TimerHeaders::from_pairs(headers.into_iter().map(|h| (h.name(), h.value())))
}

/// The headers of a 2xx that accepts `answer`.
pub(crate) fn answer_headers(answer: &Answer) -> Vec<Header> {
    let mut headers = vec![Header::Supported("timer".into())];
    if let Answer::Accept {
        header: Some(se),
        require,
        ..
    } = answer
    {
        headers.push(Header::SessionExpires(se.value().into()));
        if *require {
            headers.push(Header::Require("timer".into()));
        }
    }
    headers
}

/// Back-off after a 491: 2.1 to 4 s, RFC 3261 §14.1's range for the
/// Call-ID's owner (the other side's range is 0 to 2 s; waiting the longer
/// one either way only delays a refresh that has half an interval to go).
fn glare_delay() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(2100 + u64::from(nanos % 1900))
}

/// After another failure of our refresh, before the session expires.
const RETRY_DELAY: Duration = Duration::from_secs(5);

impl MidCall {
    fn timer_state(&self) -> std::sync::MutexGuard<'_, TimerState> {
        self.timer.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets this dialog use session timers (ours, and the far end's
    /// refreshes). Call before [`MidCall::start_session_timer`].
    pub(crate) fn configure_session_timer(&self, config: TimerConfig) {
        self.timer_state().config = Some(config);
    }

    /// The session is established: `session` is what the INVITE's 2xx
    /// negotiated (`None`: no timer, until a refresh asks for one), and
    /// `far_end` the far end's headers (its `Allow`). Starts the task that
    /// refreshes or watches, until [`MidCall::stop_session_timer`].
    pub(crate) fn start_session_timer(&self, session: Option<Session>, far_end: &TimerHeaders) {
        {
            let mut state = self.timer_state();
            if state.config.is_none() || state.started {
                return;
            }
            state.started = true;
            state.use_update = far_end.allows_update == Some(true);
            let (now, min_se) = (
                Instant::now().into_std(),
                state.config.as_ref().map_or(0, |c| c.min_se),
            );
            state.timer = session.map(|s| SessionTimer::new(now, s, min_se));
            match session {
                Some(s) => info!(
                    interval = s.interval,
                    we_refresh = s.we_refresh,
                    refresh_with = if state.use_update {
                        "UPDATE"
                    } else {
                        "re-INVITE"
                    },
                    "session timer on"
                ),
                None => debug!("no session timer"),
            }
        }
        let this = self.clone();
        tokio::spawn(async move { this.run_session_timer().await });
    }

    /// Ends the timer task (the call is over).
    pub(crate) fn stop_session_timer(&self) {
        self.timer.stop.cancel();
    }

    /// Resolves once the session timer has ended the session; the call
    /// must then send BYE. Cancel-safe.
    pub(crate) async fn session_expired(&self) -> Expired {
        let mut rx = self.timer.expired.subscribe();
        let expired = match rx.wait_for(|e| e.is_some()).await {
            Ok(expired) => *expired,
            Err(_) => None,
        };
        match expired {
            Some(expired) => expired,
            None => std::future::pending().await,
        }
    }

    fn expire(&self, expired: Expired) {
        let metrics = self
            .timer_state()
            .config
            .as_ref()
            .map(|c| c.metrics.clone());
        let cause = match expired {
            Expired::NotRefreshed => "not_refreshed",
            Expired::RefreshFailed(_) => "refresh_failed",
        };
        warn!(?expired, "session timer expired, ending the call");
        if let Some(metrics) = metrics {
            metrics.session_timer_ended(cause);
        }
        self.timer.expired.send_replace(Some(expired));
    }

    async fn run_session_timer(self) {
        loop {
            let deadline = self.timer_state().timer.as_ref().and_then(|t| t.deadline());
            tokio::select! {
                _ = self.timer.stop.cancelled() => return,
                _ = self.timer.changed.notified() => continue,
                _ = sleep_until(deadline) => {}
            }
            let due = {
                let now = Instant::now().into_std();
                self.timer_state().timer.as_ref().and_then(|t| t.poll(now))
            };
            match due {
                Some(Due::Refresh) => {
                    tokio::select! {
                        _ = self.timer.stop.cancelled() => return,
                        _ = self.send_refresh() => {}
                    }
                }
                Some(Due::Expired) => {
                    let expired = {
                        let mut state = self.timer_state();
                        let ours = state.timer.take().is_some_and(|t| t.session().we_refresh);
                        if ours {
                            Expired::RefreshFailed(state.last_failure.unwrap_or(408))
                        } else {
                            Expired::NotRefreshed
                        }
                    };
                    return self.expire(expired);
                }
                None => {}
            }
        }
    }

    /// One refresh of ours, in turn with our other in-dialog requests.
    async fn send_refresh(&self) {
        let _turn = self.queue.lock().await;
        let (header, min_se, use_update) = {
            let mut state = self.timer_state();
            let use_update = state.use_update;
            let now = Instant::now().into_std();
            // A hold re-INVITE may have refreshed the session meanwhile.
            let Some(timer) = state
                .timer
                .as_mut()
                .filter(|t| t.poll(now) == Some(Due::Refresh))
            else {
                return;
            };
            timer.sending();
            (timer.request_header(), timer.min_se(), use_update)
        };
        let mut headers = vec![
            Header::Supported("timer".into()),
            Header::SessionExpires(header.value().into()),
            Header::MinSE(min_se.to_string().into()),
        ];
        let result = if use_update {
            info!(session_expires = %header.value(), "session refresh (UPDATE)");
            self.dialog.update(Some(headers), None).await
        } else {
            info!(session_expires = %header.value(), "session refresh (re-INVITE)");
            headers.push(Header::ContentType("application/sdp".into()));
            let body = self.local().body().to_string();
            self.timer.refreshing.store(true, Ordering::SeqCst);
            let result = self
                .dialog
                .reinvite(Some(headers), Some(body.into_bytes()))
                .await;
            self.timer.refreshing.store(false, Ordering::SeqCst);
            result
        };
        let response = match result {
            Ok(Some(resp)) => resp,
            Ok(None) => return self.refresh_failed(481),
            Err(e) => {
                info!(error = %e, "session refresh not answered");
                return self.refresh_failed(408);
            }
        };
        let status = response.status_code.code();
        if response.status_code.kind() == StatusCodeKind::Successful {
            return self.refreshed_by_response(&response);
        }
        let now = Instant::now().into_std();
        let mut state = self.timer_state();
        let use_update = state.use_update;
        let Some(timer) = state.timer.as_mut() else {
            return;
        };
        match status {
            408 | 481 => {
                drop(state);
                self.refresh_failed(status)
            }
            422 => {
                let min_se = response
                    .headers
                    .iter()
                    .find(|h| matches!(h, Header::MinSE(_)))
                    .and_then(|h| parse_min_se(h.value()));
                info!(
                    status,
                    ?min_se,
                    "session refresh: interval too small, retrying"
                );
                match min_se {
                    Some(min_se) => timer.raise(now, min_se),
                    None => timer.retry_after(now, RETRY_DELAY),
                }
            }
            491 => {
                info!(
                    status,
                    "session refresh crossed a request of the far end, retrying"
                );
                timer.retry_after(now, glare_delay());
            }
            405 | 501 if use_update => {
                info!(status, "UPDATE refused, refreshing with re-INVITE");
                timer.retry_after(now, Duration::ZERO);
                state.use_update = false;
            }
            _ => {
                info!(
                    status,
                    "session refresh refused, retrying until the session expires"
                );
                timer.retry_after(now, RETRY_DELAY);
                state.last_failure = Some(status);
            }
        }
    }

    fn refresh_failed(&self, status: u16) {
        info!(status, "session refresh failed");
        self.timer_state().timer = None;
        self.expire(Expired::RefreshFailed(status));
    }

    /// The `Session-Expires` headers of a re-INVITE of ours (hold or
    /// resume): it refreshes the session too. Empty without a timer.
    pub(super) fn refresh_request_headers(&self) -> Vec<Header> {
        let state = self.timer_state();
        let Some(timer) = state.timer.as_ref() else {
            return if state.config.is_some() {
                vec![Header::Supported("timer".into())]
            } else {
                Vec::new()
            };
        };
        vec![
            Header::Supported("timer".into()),
            Header::SessionExpires(timer.request_header().value().into()),
            Header::MinSE(timer.min_se().to_string().into()),
        ]
    }

    /// A 2xx to a request of ours: the session is refreshed on its terms
    /// (no `Session-Expires`: no timer any more).
    pub(super) fn refreshed_by_response(&self, response: &Response) {
        let session = session_timer::on_response(&timer_headers(response.headers.iter()));
        let now = Instant::now().into_std();
        let mut state = self.timer_state();
        let Some(config) = state.config.clone() else {
            return;
        };
        state.last_failure = None;
        let was_on = state.rearm(now, session, config.min_se);
        drop(state);
        match session {
            Some(s) => {
                info!(
                    interval = s.interval,
                    we_refresh = s.we_refresh,
                    "session refreshed"
                );
                if was_on {
                    config.metrics.session_refreshed("sent");
                }
            }
            None if was_on => info!("the far end's 2xx has no Session-Expires: session timer off"),
            None => {}
        }
        self.timer.changed.notify_one();
    }

    /// How to answer the far end's re-INVITE or UPDATE as far as session
    /// timers go. `Err(min_se)`: refuse it with 422.
    pub(super) fn refresh_answer(&self, request: &Request) -> Result<Option<Answer>, u32> {
        let state = self.timer_state();
        let Some(config) = state.config.as_ref() else {
            return Ok(None);
        };
        match session_timer::answer_request(&timer_headers(request.headers.iter()), config.ours) {
            Answer::TooSmall { min_se } => Err(min_se),
            answer => Ok(Some(answer)),
        }
    }

    /// We answered the far end's request 2xx with `answer`: the session is
    /// refreshed on those terms.
    pub(super) fn refreshed_by_request(&self, answer: Option<Answer>) {
        let Some(Answer::Accept { session, .. }) = answer else {
            return;
        };
        let now = Instant::now().into_std();
        let mut state = self.timer_state();
        let Some(config) = state.config.clone() else {
            return;
        };
        let was_on = state.rearm(now, session, config.min_se);
        drop(state);
        match session {
            Some(s) => {
                info!(
                    interval = s.interval,
                    we_refresh = s.we_refresh,
                    "session refreshed by the far end"
                );
                config.metrics.session_refreshed("received");
            }
            None if was_on => info!("the far end's request has no session timer: timer off"),
            None => {}
        }
        self.timer.changed.notify_one();
    }
}
