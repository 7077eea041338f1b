//! Calls the browser places: setup, early media, answer, the ways they end.

use super::*;

#[test]
fn early_media_then_answer() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    let sip_leg = h.leg_ready("c1", leg, "sip:1000@pbx.test");
    // 183 with SDP: the bridge plays the far end's early media.
    let out = h.sip(
        sip_leg,
        SipInput::Provisional {
            status: 183,
            sdp: Some(pbx_sdp("10.0.0.5", 20_000, 0, "sendrecv")),
        },
    );
    assert_eq!(
        out,
        vec![
            connect(leg, "10.0.0.5", 20_000, G711::Pcmu, false, AudioFlow::BOTH),
            notify("c1", Notification::Ringing),
            notify("c1", Notification::Progress),
        ]
    );
    // A 180 afterwards says nothing new.
    let out = h.sip(
        sip_leg,
        SipInput::Provisional {
            status: 180,
            sdp: None,
        },
    );
    assert_eq!(out, vec![]);
    // The 200 may move the media (here: another port, A-law).
    let out = h.sip(
        sip_leg,
        SipInput::Answered {
            sdp: pbx_sdp("10.0.0.5", 20_002, 8, "sendrecv"),
            replacing_target: None,
        },
    );
    assert_eq!(
        out,
        vec![
            connect(leg, "10.0.0.5", 20_002, G711::Pcma, true, AudioFlow::BOTH),
            notify("c1", Notification::Answered),
        ]
    );
    // The browser hangs up: BYE, the leg released, `ended`.
    let out = h.request(Request::Hangup { call: id("c1") });
    assert_eq!(
        out,
        vec![
            hangup(sip_leg),
            release(leg),
            ended("c1", EndReason::Hangup, None)
        ]
    );
    assert!(h.calls.is_empty());
}

#[test]
fn hangup_racing_the_200_ends_the_call_once() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    let sip_leg = h.leg_ready("c1", leg, "sip:1000@pbx.test");
    h.sip(
        sip_leg,
        SipInput::Provisional {
            status: 180,
            sdp: None,
        },
    );
    // The browser hangs up while ringing: the SIP leg is told (CANCEL).
    let out = h.request(Request::Hangup { call: id("c1") });
    assert_eq!(
        out,
        vec![
            hangup(sip_leg),
            release(leg),
            ended("c1", EndReason::Hangup, None)
        ]
    );
    // The 200 crossed the CANCEL: the SIP leg BYEs it on its own; the
    // table has nothing more to say about a call it ended.
    let late = SipInput::Answered {
        sdp: pbx_sdp("10.0.0.5", 20_000, 0, "sendrecv"),
        replacing_target: None,
    };
    assert_eq!(h.sip(sip_leg, late), vec![]);
    assert_eq!(h.sip(sip_leg, SipInput::Ended), vec![]);
    assert_eq!(
        h.request(Request::Hangup { call: id("c1") }),
        vec![refuse(
            Some("c1"),
            Problem::UnknownCall,
            "no active call with this id on this connection"
        )]
    );
}

#[test]
fn a_busy_far_end_ends_the_call_with_its_status() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    let sip_leg = h.leg_ready("c1", leg, "sip:1000@pbx.test");
    let out = h.sip(
        sip_leg,
        SipInput::Failed {
            status: 486,
            reason: "Busy Here".into(),
            challenge: None,
        },
    );
    // The SIP leg is already over: nothing to hang up there.
    assert_eq!(
        out,
        vec![release(leg), ended("c1", EndReason::Busy, Some(486))]
    );
}

#[test]
fn the_far_ends_unusable_answer_ends_the_call() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    let sip_leg = h.leg_ready("c1", leg, "sip:1000@pbx.test");
    let out = h.sip(
        sip_leg,
        SipInput::Answered {
            sdp: pbx_sdp("10.0.0.5", 20_000, 9, "sendrecv"),
            replacing_target: None,
        },
    );
    assert_eq!(
        out,
        vec![
            hangup(sip_leg),
            release(leg),
            ended("c1", EndReason::IncompatibleCodecs, None),
        ]
    );
}

#[test]
fn no_media_on_an_answered_call_ends_it() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    let out = h.media(leg, MediaEvent::MediaTimeout);
    assert_eq!(
        out,
        vec![
            hangup(sip_leg),
            release(leg),
            ended("c1", EndReason::MediaTimeout, None)
        ]
    );
}

#[test]
fn ice_that_never_connects_times_the_call_out() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    let sip_leg = h.leg_ready("c1", leg, "sip:1000@pbx.test");
    assert_eq!(h.advance(Duration::from_secs(9)), vec![]);
    let out = h.advance(Duration::from_secs(1));
    assert_eq!(
        out,
        vec![
            hangup(sip_leg),
            release(leg),
            ended("c1", EndReason::MediaTimeout, None)
        ]
    );
    assert_eq!(h.calls.poll_timeout(), None);
}

#[test]
fn the_session_timer_expiring_ends_the_call_with_its_status() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    h.media(leg, MediaEvent::Connected);
    let out = h.sip(sip_leg, SipInput::SessionExpired { status: Some(408) });
    // The SIP leg sent its own BYE.
    assert_eq!(
        out,
        vec![
            release(leg),
            ended("c1", EndReason::SessionRefreshFailed, Some(408)),
        ]
    );
}

#[test]
fn echo_calls_answer_at_once_and_never_touch_sip() {
    let mut h = Harness::new();
    let out = h.request(Request::Call {
        call: id("e"),
        to: "echo".into(),
        offer: "o".into(),
        caller: None,
    });
    let [Output::Media(MediaCommand::Create {
        leg,
        plan: MediaPlan::Echo,
        ..
    })] = out.as_slice()
    else {
        panic!("{out:?}");
    };
    let leg = *leg;
    let out = h.media(
        leg,
        MediaEvent::Ready {
            answer: "a".into(),
            rtp_port: None,
        },
    );
    assert_eq!(
        out,
        vec![
            notify("e", Notification::Answer { sdp: "a".into() }),
            notify("e", Notification::Answered),
        ]
    );
    let out = h.request(Request::Dtmf {
        call: id("e"),
        digits: "1".into(),
    });
    let message = "DTMF can be sent on answered SIP calls only";
    assert_eq!(out, vec![refuse(Some("e"), Problem::InvalidState, message)]);
}

#[test]
fn requests_the_table_refuses() {
    let mut h = Harness::new();
    let call = |to: &str| Request::Call {
        call: id("x"),
        to: to.into(),
        offer: "o".into(),
        caller: None,
    };
    // Routing and the allow-list end the call before any leg exists.
    assert_eq!(
        h.request(call("bad user")),
        vec![ended("x", EndReason::NotFound, None)]
    );
    assert_eq!(
        h.request(call("sip:1000@elsewhere.test")),
        vec![ended("x", EndReason::Forbidden, None)]
    );
    h.start_sip_call("c1", "1000");
    let out = h.request(Request::Call {
        call: id("c1"),
        to: "1000".into(),
        offer: "o".into(),
        caller: None,
    });
    let message = "a call with this id is already active on this connection";
    assert_eq!(
        out,
        vec![refuse(Some("c1"), Problem::DuplicateCall, message)]
    );
    for n in 2..=4 {
        h.start_sip_call(&format!("c{n}"), "1000");
    }
    let out = h.request(call("1000"));
    let message = "at most 4 concurrent calls per connection";
    assert_eq!(out, vec![refuse(Some("x"), Problem::TooManyCalls, message)]);
    h.input(Input::StopAccepting);
    let out = h.request(call("1000"));
    let message = "the gateway is shutting down; try another instance";
    assert_eq!(out, vec![refuse(Some("x"), Problem::ShuttingDown, message)]);
}

#[test]
fn a_leg_without_an_rtp_port_is_not_an_sdp_problem() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    let why = "no free RTP port in 40000-40010";
    let out = h.media(leg, MediaEvent::Failed(LegFailure::NoCapacity(why.into())));
    assert_eq!(
        out,
        vec![
            refuse(Some("c1"), Problem::NoCapacity, why),
            ended("c1", EndReason::Failed, None),
        ]
    );
}

#[test]
fn shutdown_ends_every_call_with_bye() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    let out = h.input(Input::Shutdown);
    assert_eq!(
        out,
        vec![
            hangup(sip_leg),
            release(leg),
            ended("c1", EndReason::Shutdown, None)
        ]
    );
}

#[test]
fn a_client_identity_goes_to_the_invite_and_its_challenge_comes_back() {
    let mut h = Harness::new();
    let caller = Caller {
        user: "alice".into(),
        display: Some("Alice".into()),
        credentials: Some(Credentials {
            proxy: true,
            value: "Digest username=\"alice\"".into(),
        }),
    };
    let out = h.request(Request::Call {
        call: id("c1"),
        to: "1000".into(),
        offer: "browser-offer".into(),
        caller: Some(caller.clone()),
    });
    let [Output::Media(MediaCommand::Create { leg, .. })] = out.as_slice() else {
        panic!("expected the leg to be created: {out:?}");
    };
    let leg = *leg;
    let out = h.media(
        leg,
        MediaEvent::Ready {
            answer: "webrtc-answer".into(),
            rtp_port: Some(RTP_PORT),
        },
    );
    let Some(Output::Sip(SipCommand::Place {
        sip, caller: sent, ..
    })) = out.get(1)
    else {
        panic!("expected an INVITE: {out:?}");
    };
    assert_eq!(sent.as_ref(), Some(&caller));
    let challenge = "Digest realm=\"pbx.test\", nonce=\"n\", qop=\"auth\"";
    let out = h.sip(
        *sip,
        SipInput::Failed {
            status: 407,
            reason: "Proxy Authentication Required".into(),
            challenge: Some(challenge.into()),
        },
    );
    assert_eq!(
        out,
        vec![
            notify(
                "c1",
                Notification::Challenged {
                    status: 407,
                    challenge: challenge.into()
                }
            ),
            release(leg),
            ended("c1", EndReason::AuthFailed, Some(407)),
        ]
    );
}

#[test]
fn a_call_takes_so_many_candidates_and_refuses_the_rest() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    let candidate = |n: u32| Request::Candidate {
        call: id("c1"),
        candidate: Some(format!("candidate:{n} 1 udp 1 10.0.0.1 {n} typ host")),
    };
    for n in 0..3 {
        assert_eq!(
            h.request(candidate(n)),
            vec![Output::Media(MediaCommand::Candidate {
                leg,
                candidate: format!("candidate:{n} 1 udp 1 10.0.0.1 {n} typ host"),
            })]
        );
    }
    // The end of candidates costs nothing and counts for nothing.
    let end = Request::Candidate {
        call: id("c1"),
        candidate: None,
    };
    assert_eq!(h.request(end), vec![]);
    h.calls.handle(h.now, Input::Request(candidate(3)));
    let out = h.drain_all();
    assert!(
        out.contains(&Output::Observe {
            call: Some(id("c1")),
            log_id: Some(format!("t-{}", leg.0)),
            what: Observation::LimitReached {
                limit: "candidates"
            },
        }),
        "{out:?}"
    );
    assert!(
        out.contains(&Output::Refuse(Refusal {
            call: Some(id("c1")),
            problem: Problem::InvalidCandidate,
            message: "at most 3 candidates per call".into(),
        })),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|o| matches!(o, Output::Media(_))),
        "{out:?}"
    );
}
