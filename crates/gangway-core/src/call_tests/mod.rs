//! Every path of the call ladder, driven by scripted events and a fake clock.

use std::time::{Duration, Instant};

use regex::Regex;

use super::*;
use crate::SipRouting;

const MEDIA: Duration = Duration::from_secs(10);
const ANSWER: Duration = Duration::from_secs(30);
const MAX: Duration = Duration::from_secs(3600);

fn router() -> Router {
    Router::new(
        Some("echo".into()),
        Some(SipRouting {
            domain: "pbx.example".into(),
            allow: vec![Regex::new(r"^sip:[0-9]+@pbx\.example$").unwrap()],
        }),
    )
}

fn call() -> (Call, Instant) {
    let timers = CallTimers {
        media_setup: MEDIA,
        answer: ANSWER,
        max_duration: Some(MAX),
    };
    (Call::new(router(), timers), Instant::now())
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

fn ended(reason: EndReason, code: Option<u16>) -> Action {
    Action::Notify(Notify::Ended { reason, code })
}

fn answer() -> Action {
    Action::Notify(Notify::Answer { sdp: "ans".into() })
}

/// Starts a SIP call and brings it to the point where the INVITE is out.
fn dialing() -> (Call, Instant) {
    let (mut c, t0) = call();
    assert_eq!(
        start(&mut c, t0, "1000"),
        vec![Action::CreateLeg {
            offer: "offer".into(),
            media: MediaPlan::Bridge
        }]
    );
    c.handle(
        t0,
        Event::LegReady {
            answer: "ans".into(),
        },
    );
    assert_eq!(
        drain(&mut c),
        vec![
            answer(),
            Action::PlaceSipCall {
                uri: "sip:1000@pbx.example".into()
            }
        ]
    );
    c.handle(t0, Event::MediaConnected);
    assert_eq!(c.state(), CallState::Dialing);
    (c, t0)
}

fn answered() -> (Call, Instant) {
    let (mut c, t0) = dialing();
    c.handle(
        t0,
        Event::SipProgress {
            status: 180,
            early_media: false,
        },
    );
    c.handle(t0, Event::SipAnswered);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::Notify(Notify::Ringing),
            Action::Notify(Notify::Answered)
        ]
    );
    (c, t0)
}

#[test]
fn echo_call_answers_at_once_and_hangs_up() {
    let (mut c, t0) = call();
    assert_eq!(
        start(&mut c, t0, "echo"),
        vec![Action::CreateLeg {
            offer: "offer".into(),
            media: MediaPlan::Echo
        }]
    );
    assert_eq!(c.poll_timeout(), Some(t0 + MEDIA));
    c.handle(
        t0,
        Event::LegReady {
            answer: "ans".into(),
        },
    );
    assert_eq!(
        drain(&mut c),
        vec![answer(), Action::Notify(Notify::Answered)]
    );
    c.handle(t0, Event::MediaConnected);
    assert_eq!(c.state(), CallState::Answered);
    assert_eq!(
        c.poll_timeout(),
        Some(t0 + MAX),
        "only the duration limit remains"
    );
    c.handle(t0, Event::Hangup);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::ReleaseLeg,
            ended(EndReason::Hangup, None),
            Action::Finished(EndReason::Hangup)
        ]
    );
    c.handle(t0, Event::Hangup);
    c.handle(t0, Event::MediaLost);
    assert!(drain(&mut c).is_empty(), "nothing happens after the end");
}

#[test]
fn sip_call_rings_answers_and_the_browser_hangs_up_with_bye() {
    let (mut c, t0) = answered();
    assert_eq!(c.state(), CallState::Answered);
    c.handle(t0, Event::Hangup);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            Action::ReleaseLeg,
            ended(EndReason::Hangup, None),
            Action::Finished(EndReason::Hangup)
        ]
    );
}

#[test]
fn remote_bye_ends_without_hanging_up_sip_again() {
    let (mut c, t0) = answered();
    c.handle(t0, Event::SipRemoteHangup);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::ReleaseLeg,
            ended(EndReason::RemoteHangup, None),
            Action::Finished(EndReason::RemoteHangup)
        ]
    );
}

#[test]
fn a_completed_transfer_ends_the_call_with_bye() {
    let (mut c, t0) = answered();
    c.handle(t0, Event::SipTransferred);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            Action::ReleaseLeg,
            ended(EndReason::Transferred, None),
            Action::Finished(EndReason::Transferred)
        ]
    );
}

#[test]
fn session_timer_expiry_ends_an_answered_call_and_releases_the_leg() {
    // The far end never refreshed: no code. The SIP leg sent its own BYE,
    // so there is nothing to hang up there.
    for status in [None, Some(408), Some(481)] {
        let (mut c, t0) = answered();
        c.handle(
            t0 + Duration::from_secs(60),
            Event::SipSessionExpired { status },
        );
        assert_eq!(
            drain(&mut c),
            vec![
                Action::ReleaseLeg,
                ended(EndReason::SessionRefreshFailed, status),
                Action::Finished(EndReason::SessionRefreshFailed)
            ],
            "{status:?}"
        );
        assert_eq!(c.state(), CallState::Ended(EndReason::SessionRefreshFailed));
        assert_eq!(c.poll_timeout(), None, "no timer left");
        c.handle(t0, Event::SipRemoteHangup);
        assert!(drain(&mut c).is_empty(), "nothing after the end");
    }
    assert_eq!(
        EndReason::SessionRefreshFailed.as_str(),
        "session_refresh_failed"
    );
    assert!(EndReason::ALL.contains(&EndReason::SessionRefreshFailed));
}

#[test]
fn busy_and_other_failures_carry_the_sip_status() {
    for (status, reason) in [
        (486, EndReason::Busy),
        (404, EndReason::NotFound),
        (480, EndReason::NoAnswer),
        (603, EndReason::Rejected),
        (401, EndReason::AuthFailed),
        (407, EndReason::AuthFailed),
        (488, EndReason::IncompatibleCodecs),
        (503, EndReason::Failed),
    ] {
        let (mut c, t0) = dialing();
        c.handle(t0, Event::SipFailed { status });
        assert_eq!(
            drain(&mut c),
            vec![
                Action::ReleaseLeg,
                ended(reason, Some(status)),
                Action::Finished(reason)
            ],
            "status {status}"
        );
    }
}

#[test]
fn browser_hangup_while_ringing_cancels_the_sip_leg() {
    let (mut c, t0) = dialing();
    c.handle(
        t0,
        Event::SipProgress {
            status: 180,
            early_media: false,
        },
    );
    assert_eq!(drain(&mut c), vec![Action::Notify(Notify::Ringing)]);
    c.handle(t0, Event::Hangup);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            Action::ReleaseLeg,
            ended(EndReason::Hangup, None),
            Action::Finished(EndReason::Hangup)
        ]
    );
    // The 487 that follows the CANCEL changes nothing.
    c.handle(t0, Event::SipFailed { status: 487 });
    assert!(drain(&mut c).is_empty());
}

#[test]
fn no_answer_in_time_cancels_and_ends_no_answer() {
    let (mut c, t0) = dialing();
    c.handle(
        t0,
        Event::SipProgress {
            status: 180,
            early_media: false,
        },
    );
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(t0 + ANSWER));
    c.handle_timeout(t0 + ANSWER - Duration::from_millis(1));
    assert!(drain(&mut c).is_empty(), "not yet");
    c.handle_timeout(t0 + ANSWER);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            Action::ReleaseLeg,
            ended(EndReason::NoAnswer, None),
            Action::Finished(EndReason::NoAnswer)
        ]
    );
}

#[test]
fn early_media_reports_progress_then_answer() {
    let (mut c, t0) = dialing();
    c.handle(
        t0,
        Event::SipProgress {
            status: 183,
            early_media: true,
        },
    );
    assert_eq!(
        drain(&mut c),
        vec![
            Action::Notify(Notify::Ringing),
            Action::Notify(Notify::Progress)
        ]
    );
    // A plain 180 after early media does not repeat `ringing`.
    c.handle(
        t0,
        Event::SipProgress {
            status: 180,
            early_media: false,
        },
    );
    assert!(drain(&mut c).is_empty());
    c.handle(t0, Event::SipAnswered);
    assert_eq!(drain(&mut c), vec![Action::Notify(Notify::Answered)]);
}

#[test]
fn maximum_duration_ends_an_answered_call() {
    let (mut c, t0) = answered();
    c.handle_timeout(t0 + MAX);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            Action::ReleaseLeg,
            ended(EndReason::MaxDuration, None),
            Action::Finished(EndReason::MaxDuration)
        ]
    );
}

#[test]
fn media_that_never_connects_ends_both_legs() {
    let (mut c, t0) = call();
    start(&mut c, t0, "1000");
    c.handle(
        t0,
        Event::LegReady {
            answer: "ans".into(),
        },
    );
    drain(&mut c);
    c.handle_timeout(t0 + MEDIA);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            Action::ReleaseLeg,
            ended(EndReason::MediaTimeout, None),
            Action::Finished(EndReason::MediaTimeout)
        ]
    );
}

#[test]
fn unusable_answer_sdp_ends_both_legs() {
    let (mut c, t0) = dialing();
    c.handle(t0, Event::SipMediaUnusable);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            Action::ReleaseLeg,
            ended(EndReason::IncompatibleCodecs, None),
            Action::Finished(EndReason::IncompatibleCodecs)
        ]
    );
}

#[test]
fn refused_destinations_never_create_legs() {
    let (mut c, t0) = call();
    assert_eq!(
        start(&mut c, t0, "alice"),
        vec![
            ended(EndReason::Forbidden, None),
            Action::Finished(EndReason::Forbidden)
        ]
    );
    let (mut c, t0) = call();
    assert_eq!(
        start(&mut c, t0, "bad dest"),
        vec![
            ended(EndReason::NotFound, None),
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
        start(&mut c, t0, "1000");
        c.handle(t0, Event::LegFailed(err));
        assert_eq!(
            drain(&mut c),
            vec![ended(reason, None), Action::Finished(reason)]
        );
    }
}

#[test]
fn socket_close_releases_silently_and_shutdown_tells() {
    let (mut c, t0) = answered();
    c.handle(t0, Event::SocketClosed);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            Action::ReleaseLeg,
            Action::Finished(EndReason::SocketClosed)
        ]
    );
    let (mut c, t0) = answered();
    c.handle(t0, Event::SessionExpired);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            Action::ReleaseLeg,
            Action::Finished(EndReason::SessionExpired)
        ],
        "a session never resumed hangs up the SIP leg, telling no one"
    );
    let (mut c, t0) = answered();
    c.handle(t0, Event::Shutdown);
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            Action::ReleaseLeg,
            ended(EndReason::Shutdown, None),
            Action::Finished(EndReason::Shutdown)
        ]
    );
}

#[test]
fn hangup_while_setting_up_ignores_the_late_leg_result() {
    let (mut c, t0) = call();
    start(&mut c, t0, "1000");
    c.handle(t0, Event::Hangup);
    assert_eq!(drain(&mut c).first(), Some(&Action::ReleaseLeg));
    c.handle(
        t0,
        Event::LegReady {
            answer: "late".into(),
        },
    );
    c.handle(t0, Event::SipAnswered);
    assert!(drain(&mut c).is_empty());
}

mod incoming;
