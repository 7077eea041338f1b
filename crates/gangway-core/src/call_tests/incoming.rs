//! The ladder of calls the PBX places: accept, answer, refuse.

use super::*;

fn incoming() -> (Call, Instant) {
    let timers = CallTimers {
        media_setup: MEDIA,
        answer: ANSWER,
        max_duration: Some(MAX),
    };
    let c = Call::incoming(router(), timers, "sip:1001@pbx.example".into());
    (c, Instant::now())
}

fn accept(c: &mut Call, now: Instant) -> Vec<Action> {
    c.handle(
        now,
        Event::Accept {
            offer: "offer".into(),
        },
    );
    drain(c)
}

#[test]
fn incoming_call_is_answered_after_the_browser_leg_is_ready() {
    let (mut c, t0) = incoming();
    assert!(c.is_incoming());
    assert_eq!(
        accept(&mut c, t0),
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
    assert_eq!(drain(&mut c), vec![answer(), Action::AnswerSip]);
    assert_eq!(c.state(), CallState::Dialing);
    c.handle(t0, Event::MediaConnected);
    c.handle(t0, Event::SipAnswered);
    assert_eq!(drain(&mut c), vec![Action::Notify(Notify::Answered)]);
    assert_eq!(c.state(), CallState::Answered);
    // DTMF and hold logic key on the SIP route, which an incoming call has.
    assert!(matches!(c.route(), Some(Route::Sip { .. })));

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
fn incoming_call_ignores_start_and_outgoing_ignores_accept() {
    let (mut c, t0) = incoming();
    assert!(start(&mut c, t0, "1000").is_empty());
    let (mut out, t0) = call();
    assert!(accept(&mut out, t0).is_empty());
    assert_eq!(out.state(), CallState::Idle);
}

#[test]
fn caller_cancelling_during_setup_ends_with_cancelled_and_no_sip_hangup() {
    let (mut c, t0) = incoming();
    accept(&mut c, t0);
    c.handle(t0, Event::SipFailed { status: 487 });
    assert_eq!(
        drain(&mut c),
        vec![
            Action::ReleaseLeg,
            ended(EndReason::Cancelled, Some(487)),
            Action::Finished(EndReason::Cancelled)
        ]
    );
}

#[test]
fn browser_failure_before_the_answer_refuses_the_invite() {
    let (mut c, t0) = incoming();
    accept(&mut c, t0);
    c.handle(
        t0,
        Event::LegFailed(LegSetupError::InvalidSdp("bad".into())),
    );
    assert_eq!(
        drain(&mut c),
        vec![
            Action::HangupSip,
            ended(EndReason::InvalidSdp, None),
            Action::Finished(EndReason::InvalidSdp)
        ]
    );
}

#[test]
fn hangup_of_an_answered_incoming_call_ends_both_legs() {
    let (mut c, t0) = incoming();
    accept(&mut c, t0);
    c.handle(
        t0,
        Event::LegReady {
            answer: "ans".into(),
        },
    );
    c.handle(t0, Event::SipAnswered);
    drain(&mut c);
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
fn renegotiation_needs_the_legs_answer_and_a_live_call() {
    let (mut c, t0) = call();
    assert!(!c.can_renegotiate(), "idle");
    start(&mut c, t0, "1000");
    assert!(!c.can_renegotiate(), "the leg has no answer yet");
    let (c, _) = dialing();
    assert!(c.can_renegotiate(), "dialing");
    let (mut c, t0) = answered();
    assert!(c.can_renegotiate(), "answered");
    c.handle(t0, Event::Hangup);
    assert!(!c.can_renegotiate(), "ended");
}
