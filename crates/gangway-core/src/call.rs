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
    /// The browser has its answer; the far end has not answered yet (for
    /// an incoming call: our 200 OK waits for the PBX's ACK).
    Dialing,
    /// The far end is ringing (or playing early media).
    Ringing,
    /// The far end answered (the echo line answers at once).
    Answered,
    Ended(EndReason),
}

/// Why the WebRTC leg could not be set up from the browser's offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegSetupError {
    InvalidSdp(String),
    IncompatibleCodecs,
    /// The gateway had no RTP port (or socket) left for the SIP side.
    NoCapacity(String),
}

/// Where the WebRTC leg's media goes once it is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPlan {
    /// Back to the browser (the built-in echo line).
    Echo,
    /// Bridged to the SIP leg's RTP (G.711, passed through or transcoded).
    Bridge,
}

/// Timers of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimers {
    /// ICE/DTLS must connect within this.
    pub media_setup: Duration,
    /// The far end must answer within this (SIP routes).
    pub answer: Duration,
    /// An answered call is ended after this; `None` for no limit.
    pub max_duration: Option<Duration>,
}

impl CallTimers {
    pub fn new(media_setup: Duration) -> Self {
        CallTimers {
            media_setup,
            answer: Duration::from_secs(60),
            max_duration: None,
        }
    }
}

/// Things that happen to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The browser asked for a call (`call` message).
    Start {
        to: String,
        offer: String,
    },
    /// The browser answered an incoming call (`accept` message).
    Accept {
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
    /// A provisional SIP response (180/181/182/183); `early_media` when it carried usable SDP.
    SipProgress {
        status: u16,
        early_media: bool,
    },
    /// A 2xx with usable SDP.
    SipAnswered,
    /// The far end's answer SDP could not be used (no common codec, bad address).
    SipMediaUnusable,
    /// A final failure response (or a timeout/transport failure mapped to a status).
    SipFailed {
        status: u16,
    },
    /// BYE from the far end.
    SipRemoteHangup,
    /// The far end reported our transfer (REFER) succeeded.
    SipTransferred,
    /// The SIP leg's session timer expired (the far end did not refresh,
    /// or refused our refresh with `status`); the SIP leg sent BYE itself.
    SipSessionExpired {
        status: Option<u16>,
    },
    /// The browser sent `hangup`.
    Hangup,
    SocketClosed,
    /// The socket was lost and not resumed within the grace period.
    SessionExpired,
    Shutdown,
}

/// What the browser should be told, in API terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    Answer {
        sdp: String,
    },
    Ringing,
    /// Early media is playing (a 183 with SDP).
    Progress,
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
    /// Send the INVITE for the SIP leg.
    PlaceSipCall { uri: String },
    /// Answer the incoming INVITE (200 OK with the SIP leg's SDP).
    AnswerSip,
    /// End the SIP leg: CANCEL before a final response, BYE after 2xx (for
    /// an incoming call: a failure response before our 200, BYE after).
    HangupSip,
    /// Tear down the WebRTC leg (and the RTP port bridged to it).
    ReleaseLeg,
    /// Tell the browser.
    Notify(Notify),
    /// The call is over; the shell may drop it. Always the last action.
    Finished(EndReason),
}

/// One call's state machine (a B2BUA joining the WebRTC leg and, for SIP
/// routes, the SIP leg). Feed it events with [`Call::handle`] and the clock
/// with [`Call::handle_timeout`]; drain [`Call::poll_action`] after each.
#[derive(Debug)]
pub struct Call {
    state: CallState,
    router: Router,
    timers: CallTimers,
    route: Option<Route>,
    media_connected: bool,
    /// Until ICE/DTLS connects.
    media_deadline: Option<Instant>,
    /// Until the far end answers, then until the maximum duration.
    call_deadline: Option<Instant>,
    leg_exists: bool,
    sip_exists: bool,
    /// The PBX called us (the SIP leg exists from the start).
    incoming: bool,
    actions: VecDeque<Action>,
}

impl Call {
    pub fn new(router: Router, timers: CallTimers) -> Self {
        Call {
            state: CallState::Idle,
            router,
            timers,
            route: None,
            media_connected: false,
            media_deadline: None,
            call_deadline: None,
            leg_exists: false,
            sip_exists: false,
            incoming: false,
            actions: VecDeque::new(),
        }
    }

    /// An incoming call from `caller` (a SIP URI), ringing until the
    /// browser sends [`Event::Accept`]. Ending it before then (any other
    /// event that ends a call) refuses the INVITE.
    pub fn incoming(router: Router, timers: CallTimers, caller: String) -> Self {
        let mut call = Call::new(router, timers);
        call.incoming = true;
        call.sip_exists = true;
        call.route = Some(Route::Sip { uri: caller });
        call
    }

    /// Whether the PBX placed this call.
    pub fn is_incoming(&self) -> bool {
        self.incoming
    }

    pub fn state(&self) -> CallState {
        self.state
    }

    /// Whether the browser may renegotiate the WebRTC leg (an ICE restart):
    /// once the leg has sent its answer and until the call ends.
    pub fn can_renegotiate(&self) -> bool {
        matches!(
            self.state,
            CallState::Dialing | CallState::Ringing | CallState::Answered
        )
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state, CallState::Ended(_))
    }

    /// The route chosen at start, if the call got that far.
    pub fn route(&self) -> Option<&Route> {
        self.route.as_ref()
    }

    /// The next instant at which [`Call::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.media_deadline, self.call_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_ended() {
            return;
        }
        if self.media_deadline.is_some_and(|d| now >= d) {
            self.media_deadline = None;
            return self.end(EndReason::MediaTimeout, None);
        }
        if self.call_deadline.is_some_and(|d| now >= d) {
            self.call_deadline = None;
            let reason = if self.state == CallState::Answered {
                EndReason::MaxDuration
            } else {
                EndReason::NoAnswer
            };
            self.end(reason, None);
        }
    }

    pub fn handle(&mut self, now: Instant, event: Event) {
        use CallState as S;
        match (self.state, event) {
            (S::Ended(_), _) => {}
            (S::Idle, Event::Start { to, offer }) if !self.incoming => self.start(now, &to, offer),
            (S::Idle, Event::Accept { offer }) if self.incoming => {
                self.state = S::SettingUp;
                self.media_deadline = Some(now + self.timers.media_setup);
                self.leg_exists = true;
                self.actions.push_back(Action::CreateLeg {
                    offer,
                    media: MediaPlan::Bridge,
                });
            }
            (S::SettingUp, Event::LegReady { answer }) if self.incoming => {
                self.notify(Notify::Answer { sdp: answer });
                // Waiting for the ACK; the SIP stack gives up on it itself.
                self.state = S::Dialing;
                self.actions.push_back(Action::AnswerSip);
            }
            (S::SettingUp, Event::LegReady { answer }) => {
                self.notify(Notify::Answer { sdp: answer });
                match self.route.clone() {
                    Some(Route::Sip { uri }) => {
                        self.state = S::Dialing;
                        self.sip_exists = true;
                        self.call_deadline = Some(now + self.timers.answer);
                        self.actions.push_back(Action::PlaceSipCall { uri });
                    }
                    _ => self.answered(now),
                }
            }
            (S::SettingUp, Event::LegFailed(err)) => {
                // A leg that failed to set up holds nothing to release.
                self.leg_exists = false;
                let reason = match err {
                    LegSetupError::InvalidSdp(_) => EndReason::InvalidSdp,
                    LegSetupError::IncompatibleCodecs => EndReason::IncompatibleCodecs,
                    LegSetupError::NoCapacity(_) => EndReason::Failed,
                };
                self.end(reason, None);
            }
            (_, Event::MediaConnected) => {
                self.media_connected = true;
                self.media_deadline = None;
            }
            (_, Event::MediaLost) => self.end(EndReason::MediaTimeout, None),
            (S::Dialing | S::Ringing, Event::SipProgress { early_media, .. }) => {
                let first = self.state == S::Dialing;
                self.state = S::Ringing;
                if first || early_media {
                    self.notify(Notify::Ringing);
                }
                if early_media {
                    self.notify(Notify::Progress);
                }
            }
            (S::Dialing | S::Ringing, Event::SipAnswered) => self.answered(now),
            (_, Event::SipMediaUnusable) => self.end(EndReason::IncompatibleCodecs, None),
            (S::SettingUp | S::Dialing | S::Ringing, Event::SipFailed { status }) => {
                // The SIP leg is already gone: nothing to hang up there.
                self.sip_exists = false;
                self.end(reason_for_status(status), Some(status));
            }
            (S::Answered, Event::SipRemoteHangup) => {
                self.sip_exists = false;
                self.end(EndReason::RemoteHangup, None);
            }
            // The transferee reached the target: our part is done (BYE).
            (S::Answered, Event::SipTransferred) => self.end(EndReason::Transferred, None),
            (S::Dialing | S::Answered, Event::SipSessionExpired { status }) => {
                // The SIP leg is ending itself with BYE.
                self.sip_exists = false;
                self.end(EndReason::SessionRefreshFailed, status);
            }
            (_, Event::Hangup) => self.end(EndReason::Hangup, None),
            (_, Event::Shutdown) => self.end(EndReason::Shutdown, None),
            (_, Event::SocketClosed) => self.end(EndReason::SocketClosed, None),
            (_, Event::SessionExpired) => self.end(EndReason::SessionExpired, None),
            // Anything else is stale or out of order (e.g. a 180 after the 200): ignore it.
            _ => {}
        }
    }

    fn start(&mut self, now: Instant, to: &str, offer: String) {
        let route = self.router.route(to);
        let media = match &route {
            Route::NotFound => return self.end(EndReason::NotFound, None),
            Route::NotAllowed => return self.end(EndReason::Forbidden, None),
            Route::Echo => MediaPlan::Echo,
            Route::Sip { .. } => MediaPlan::Bridge,
        };
        self.route = Some(route);
        self.state = CallState::SettingUp;
        self.media_deadline = Some(now + self.timers.media_setup);
        self.leg_exists = true;
        self.actions.push_back(Action::CreateLeg { offer, media });
    }

    fn answered(&mut self, now: Instant) {
        self.state = CallState::Answered;
        self.call_deadline = self.timers.max_duration.map(|d| now + d);
        self.notify(Notify::Answered);
    }

    fn notify(&mut self, n: Notify) {
        self.actions.push_back(Action::Notify(n));
    }

    fn end(&mut self, reason: EndReason, code: Option<u16>) {
        self.state = CallState::Ended(reason);
        self.media_deadline = None;
        self.call_deadline = None;
        if std::mem::take(&mut self.sip_exists) {
            self.actions.push_back(Action::HangupSip);
        }
        if std::mem::take(&mut self.leg_exists) {
            self.actions.push_back(Action::ReleaseLeg);
        }
        // A closed (or never resumed) socket has no one to tell.
        if !reason.is_silent() {
            self.notify(Notify::Ended { reason, code });
        }
        self.actions.push_back(Action::Finished(reason));
    }
}

/// Maps a final SIP failure status to the API's end reason.
pub fn reason_for_status(status: u16) -> EndReason {
    match status {
        486 | 600 => EndReason::Busy,
        404 | 484 | 604 => EndReason::NotFound,
        408 | 480 => EndReason::NoAnswer,
        403 | 603 | 607 | 608 => EndReason::Rejected,
        401 | 407 => EndReason::AuthFailed,
        487 => EndReason::Cancelled,
        488 | 606 | 415 => EndReason::IncompatibleCodecs,
        _ => EndReason::Failed,
    }
}

#[cfg(test)]
#[path = "call_tests/mod.rs"]
mod tests;
