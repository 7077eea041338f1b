use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{EndReason, Route, Router};

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Created, no event handled yet.
    Idle,
    /// Waiting for the WebRTC leg to accept the browser's offer.
    SettingUp,
    /// The browser has its answer; ICE/DTLS has not connected yet.
    AwaitingMedia,
    /// Media flows on the WebRTC leg.
    Connected,
    Ended(EndReason),
}

/// Why the WebRTC leg could not be set up from the browser's offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegSetupError {
    InvalidSdp(String),
    IncompatibleCodecs,
}

/// Where the WebRTC leg's media goes once it is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPlan {
    /// Back to the browser (the built-in echo line).
    Echo,
}

/// Things that happen to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The browser asked for a call (`call` message).
    Start {
        to: String,
        offer: String,
    },
    /// The WebRTC leg accepted the offer.
    LegReady {
        answer: String,
    },
    LegFailed(LegSetupError),
    /// ICE and DTLS completed on the WebRTC leg.
    MediaConnected,
    /// The WebRTC leg lost connectivity (ICE consent expired).
    MediaLost,
    /// The browser sent `hangup`.
    Hangup,
    SocketClosed,
    Shutdown,
}

/// What the browser should be told, in API terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    Answer {
        sdp: String,
    },
    Ringing,
    Answered,
    Ended {
        reason: EndReason,
        code: Option<u16>,
    },
}

/// What the shell must do for the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the WebRTC leg from the browser's offer; its media goes where `media` says.
    CreateLeg { offer: String, media: MediaPlan },
    /// Tear down the WebRTC leg and free its resources.
    ReleaseLeg,
    /// Tell the browser.
    Notify(Notify),
    /// The call is over; the shell may drop it. Always the last action.
    Finished(EndReason),
}

/// One call's state machine. Feed it events with [`Call::handle`] and the
/// clock with [`Call::handle_timeout`]; drain [`Call::poll_action`] after each.
#[derive(Debug)]
pub struct Call {
    state: CallState,
    router: Router,
    setup_timeout: Duration,
    /// When the call gives up waiting for media to connect.
    deadline: Option<Instant>,
    leg_exists: bool,
    actions: VecDeque<Action>,
}

impl Call {
    pub fn new(router: Router, setup_timeout: Duration) -> Self {
        Call {
            state: CallState::Idle,
            router,
            setup_timeout,
            deadline: None,
            leg_exists: false,
            actions: VecDeque::new(),
        }
    }

    pub fn state(&self) -> CallState {
        self.state
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state, CallState::Ended(_))
    }

    /// The next instant at which [`Call::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            if matches!(self.state, CallState::SettingUp | CallState::AwaitingMedia) {
                self.end(EndReason::MediaTimeout, true);
            }
        }
    }

    pub fn handle(&mut self, now: Instant, event: Event) {
        use CallState as S;
        match (self.state, event) {
            (S::Ended(_), _) => {}
            (S::Idle, Event::Start { to, offer }) => match self.router.route(&to) {
                Route::NotFound => self.end(EndReason::NotFound, true),
                Route::Echo => {
                    self.state = S::SettingUp;
                    self.deadline = Some(now + self.setup_timeout);
                    self.leg_exists = true;
                    self.actions.push_back(Action::CreateLeg {
                        offer,
                        media: MediaPlan::Echo,
                    });
                }
            },
            (S::SettingUp, Event::LegReady { answer }) => {
                self.state = S::AwaitingMedia;
                self.notify(Notify::Answer { sdp: answer });
                // The echo line answers at once; later routes will wait for the far end.
                self.notify(Notify::Answered);
            }
            (S::SettingUp, Event::LegFailed(err)) => {
                // A leg that failed to set up holds nothing to release.
                self.leg_exists = false;
                let reason = match err {
                    LegSetupError::InvalidSdp(_) => EndReason::InvalidSdp,
                    LegSetupError::IncompatibleCodecs => EndReason::IncompatibleCodecs,
                };
                self.end(reason, true);
            }
            (S::AwaitingMedia, Event::MediaConnected) => {
                self.state = S::Connected;
                self.deadline = None;
            }
            (S::AwaitingMedia | S::Connected, Event::MediaLost) => {
                self.end(EndReason::MediaTimeout, true);
            }
            (_, Event::Hangup) => self.end(EndReason::Hangup, true),
            (_, Event::Shutdown) => self.end(EndReason::Shutdown, true),
            (_, Event::SocketClosed) => self.end(EndReason::SocketClosed, false),
            // Anything else is stale (e.g. a leg result after hangup): ignore it.
            _ => {}
        }
    }

    fn notify(&mut self, n: Notify) {
        self.actions.push_back(Action::Notify(n));
    }

    fn end(&mut self, reason: EndReason, tell_browser: bool) {
        self.state = CallState::Ended(reason);
        self.deadline = None;
        if std::mem::take(&mut self.leg_exists) {
            self.actions.push_back(Action::ReleaseLeg);
        }
        if tell_browser {
            self.notify(Notify::Ended { reason, code: None });
        }
        self.actions.push_back(Action::Finished(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETUP: Duration = Duration::from_secs(10);

    fn call() -> (Call, Instant) {
        (
            Call::new(Router::new(Some("echo".into())), SETUP),
            Instant::now(),
        )
    }

    fn drain(c: &mut Call) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    fn start(c: &mut Call, now: Instant, to: &str) -> Vec<Action> {
        c.handle(
            now,
            Event::Start {
                to: to.into(),
                offer: "offer".into(),
            },
        );
        drain(c)
    }

    fn ended(reason: EndReason) -> Action {
        Action::Notify(Notify::Ended { reason, code: None })
    }

    #[test]
    fn echo_call_answers_connects_and_hangs_up() {
        let (mut c, t0) = call();
        assert_eq!(
            start(&mut c, t0, "echo"),
            vec![Action::CreateLeg {
                offer: "offer".into(),
                media: MediaPlan::Echo
            }]
        );
        assert_eq!(c.poll_timeout(), Some(t0 + SETUP));
        c.handle(
            t0,
            Event::LegReady {
                answer: "ans".into(),
            },
        );
        assert_eq!(
            drain(&mut c),
            vec![
                Action::Notify(Notify::Answer { sdp: "ans".into() }),
                Action::Notify(Notify::Answered)
            ]
        );
        c.handle(t0, Event::MediaConnected);
        assert_eq!(c.state(), CallState::Connected);
        assert_eq!(c.poll_timeout(), None, "no setup timer once connected");
        c.handle(t0, Event::Hangup);
        assert_eq!(
            drain(&mut c),
            vec![
                Action::ReleaseLeg,
                ended(EndReason::Hangup),
                Action::Finished(EndReason::Hangup)
            ]
        );
        // Once ended, nothing more happens.
        c.handle(t0, Event::Hangup);
        c.handle(t0, Event::MediaLost);
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn unknown_destination_is_not_found_without_a_leg() {
        let (mut c, t0) = call();
        assert_eq!(
            start(&mut c, t0, "+15551234"),
            vec![
                ended(EndReason::NotFound),
                Action::Finished(EndReason::NotFound)
            ]
        );
    }

    #[test]
    fn leg_failures_end_without_release() {
        for (err, reason) in [
            (LegSetupError::InvalidSdp("x".into()), EndReason::InvalidSdp),
            (
                LegSetupError::IncompatibleCodecs,
                EndReason::IncompatibleCodecs,
            ),
        ] {
            let (mut c, t0) = call();
            start(&mut c, t0, "echo");
            c.handle(t0, Event::LegFailed(err));
            assert_eq!(drain(&mut c), vec![ended(reason), Action::Finished(reason)]);
        }
    }

    #[test]
    fn media_that_never_connects_times_out() {
        let (mut c, t0) = call();
        start(&mut c, t0, "echo");
        c.handle(t0, Event::LegReady { answer: "a".into() });
        drain(&mut c);
        c.handle_timeout(t0 + SETUP - Duration::from_millis(1));
        assert!(drain(&mut c).is_empty(), "not yet");
        c.handle_timeout(t0 + SETUP);
        assert_eq!(
            drain(&mut c),
            vec![
                Action::ReleaseLeg,
                ended(EndReason::MediaTimeout),
                Action::Finished(EndReason::MediaTimeout)
            ]
        );
    }

    #[test]
    fn lost_media_ends_the_call() {
        let (mut c, t0) = call();
        start(&mut c, t0, "echo");
        c.handle(t0, Event::LegReady { answer: "a".into() });
        c.handle(t0, Event::MediaConnected);
        drain(&mut c);
        c.handle(t0, Event::MediaLost);
        assert_eq!(
            drain(&mut c),
            vec![
                Action::ReleaseLeg,
                ended(EndReason::MediaTimeout),
                Action::Finished(EndReason::MediaTimeout)
            ]
        );
    }

    #[test]
    fn socket_close_releases_silently_and_shutdown_tells() {
        let (mut c, t0) = call();
        start(&mut c, t0, "echo");
        c.handle(t0, Event::SocketClosed);
        assert_eq!(
            drain(&mut c),
            vec![
                Action::ReleaseLeg,
                Action::Finished(EndReason::SocketClosed)
            ]
        );
        let (mut c, t0) = call();
        start(&mut c, t0, "echo");
        c.handle(t0, Event::Shutdown);
        assert_eq!(
            drain(&mut c),
            vec![
                Action::ReleaseLeg,
                ended(EndReason::Shutdown),
                Action::Finished(EndReason::Shutdown)
            ]
        );
    }

    #[test]
    fn hangup_while_setting_up_releases_and_ignores_late_leg_result() {
        let (mut c, t0) = call();
        start(&mut c, t0, "echo");
        c.handle(t0, Event::Hangup);
        assert_eq!(drain(&mut c).first(), Some(&Action::ReleaseLeg));
        c.handle(
            t0,
            Event::LegReady {
                answer: "late".into(),
            },
        );
        assert!(drain(&mut c).is_empty());
    }
}
