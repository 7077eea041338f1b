//! Calls the PBX places to a signed-in user, and a lost connection.

use super::*;

fn offer(sip_offer: Option<String>) -> IncomingOffer {
    IncomingOffer {
        from: "sip:alice@pbx.test".into(),
        display: Some("Alice".into()),
        to: "sip:bob@gw.test".into(),
        sip_offer,
        log_id: "t-in-1".into(),
    }
}

fn incoming(call: &str) -> Out {
    notify(
        call,
        Notification::Incoming {
            from: "sip:alice@pbx.test".into(),
            display: Some("Alice".into()),
            to: "sip:bob@gw.test".into(),
        },
    )
}

/// Rings `call`, accepts it and wins the claim; returns the legs.
pub(super) fn accepted(
    h: &mut Harness,
    call: &str,
    sip_offer: Option<String>,
) -> (LegId, SipLegId) {
    let out = h.input(Input::Incoming {
        call: id(call),
        offer: offer(sip_offer),
    });
    assert_eq!(out, vec![incoming(call)]);
    let out = h.request(Request::Accept {
        call: id(call),
        offer: "browser-offer".into(),
    });
    assert_eq!(out, vec![Output::Claim(id(call), Claim::Accept)]);
    let out = h.input(Input::Claimed {
        call: id(call),
        won: true,
    });
    let [Output::Sip(SipCommand::Adopt { sip: sip_leg }), Output::Media(MediaCommand::Create {
        leg,
        offer,
        plan: MediaPlan::Bridge,
    })] = out.as_slice()
    else {
        panic!("{out:?}");
    };
    assert_eq!(offer, "browser-offer");
    (*leg, *sip_leg)
}

#[test]
fn an_accepted_call_answers_the_invites_offer_on_our_rtp_port() {
    let mut h = Harness::new();
    let invite_offer = pbx_sdp("10.0.0.5", 20_000, 8, "sendrecv");
    let (leg, sip_leg) = accepted(&mut h, "in1", Some(invite_offer.clone()));
    let out = h.media(
        leg,
        MediaEvent::Ready {
            answer: "webrtc-answer".into(),
            rtp_port: Some(RTP_PORT),
        },
    );
    let parsed = sdp::parse_answer(&invite_offer, &[G711::Pcmu, G711::Pcma]).unwrap();
    let answer = sdp::answer(GATEWAY_IP, RTP_PORT, &parsed, leg.0);
    assert!(
        answer.contains("a=sendrecv") && answer.contains("PCMA"),
        "{answer}"
    );
    assert_eq!(
        out,
        vec![
            notify(
                "in1",
                Notification::Answer {
                    sdp: "webrtc-answer".into()
                }
            ),
            sip(SipCommand::Answer {
                sip: sip_leg,
                sdp: answer
            }),
            connect(leg, "10.0.0.5", 20_000, G711::Pcma, true, AudioFlow::BOTH),
        ]
    );
    // The ACK: answered; the media is already connected.
    let out = h.sip(
        sip_leg,
        SipInput::Answered {
            sdp: invite_offer,
            replacing_target: None,
        },
    );
    assert_eq!(out, vec![notify("in1", Notification::Answered)]);
    // The caller hangs up.
    let out = h.sip(sip_leg, SipInput::RemoteHangup);
    assert_eq!(
        out,
        vec![release(leg), ended("in1", EndReason::RemoteHangup, None)]
    );
}

#[test]
fn an_offerless_invite_gets_our_offer_and_the_ack_carries_the_answer() {
    let mut h = Harness::new();
    let (leg, sip_leg) = accepted(&mut h, "in1", None);
    let out = h.media(
        leg,
        MediaEvent::Ready {
            answer: "a".into(),
            rtp_port: Some(RTP_PORT),
        },
    );
    let ours = sdp::offer(GATEWAY_IP, RTP_PORT, &[G711::Pcmu, G711::Pcma], 101, leg.0);
    assert_eq!(
        out[1],
        sip(SipCommand::Answer {
            sip: sip_leg,
            sdp: ours
        })
    );
    assert_eq!(out.len(), 2);
    let ack = SipInput::Answered {
        sdp: pbx_sdp("10.0.0.5", 20_000, 0, "sendrecv"),
        replacing_target: None,
    };
    assert_eq!(
        h.sip(sip_leg, ack),
        vec![
            connect(leg, "10.0.0.5", 20_000, G711::Pcmu, true, AudioFlow::BOTH),
            notify("in1", Notification::Answered),
        ]
    );
}

#[test]
fn answered_elsewhere_and_rejected_calls_end_with_the_coordinators_reason() {
    let mut h = Harness::new();
    h.input(Input::Incoming {
        call: id("in1"),
        offer: offer(None),
    });
    h.input(Input::Incoming {
        call: id("in2"),
        offer: offer(None),
    });
    // Another tab took in1.
    let out = h.input(Input::Withdrawn {
        call: id("in1"),
        reason: EndReason::AnsweredElsewhere,
        code: None,
    });
    assert_eq!(out, vec![ended("in1", EndReason::AnsweredElsewhere, None)]);
    // We reject in2 (hangup of a ringing call is a 486).
    let out = h.request(Request::Hangup { call: id("in2") });
    assert_eq!(out, vec![Output::Claim(id("in2"), Claim::Reject(486))]);
    let out = h.input(Input::Withdrawn {
        call: id("in2"),
        reason: EndReason::Rejected,
        code: Some(486),
    });
    assert_eq!(out, vec![ended("in2", EndReason::Rejected, Some(486))]);
    let out = h.request(Request::Accept {
        call: id("in2"),
        offer: "o".into(),
    });
    let message = "no incoming call with this id is ringing on this connection";
    assert_eq!(out, vec![refuse(Some("in2"), Problem::NotRinging, message)]);
}

#[test]
fn accepting_a_call_another_tab_won_is_refused_and_its_end_still_reported() {
    let mut h = Harness::new();
    h.input(Input::Incoming {
        call: id("in1"),
        offer: offer(None),
    });
    h.request(Request::Accept {
        call: id("in1"),
        offer: "o".into(),
    });
    let out = h.input(Input::Claimed {
        call: id("in1"),
        won: false,
    });
    let message = "the call is no longer ringing";
    assert_eq!(
        out,
        vec![refuse(Some("in1"), Problem::InvalidState, message)]
    );
    let out = h.input(Input::Withdrawn {
        call: id("in1"),
        reason: EndReason::AnsweredElsewhere,
        code: None,
    });
    assert_eq!(out, vec![ended("in1", EndReason::AnsweredElsewhere, None)]);
}

#[test]
fn a_full_table_declines_to_ring_and_a_closing_one_declines_what_rings() {
    let mut h = Harness::with(Settings {
        max_calls: 1,
        ..settings()
    });
    h.input(Input::Incoming {
        call: id("in1"),
        offer: offer(None),
    });
    let out = h.input(Input::Incoming {
        call: id("in2"),
        offer: offer(None),
    });
    assert_eq!(out, vec![Output::Claim(id("in2"), Claim::Decline)]);
    let out = h.input(Input::ConnectionClosed);
    assert_eq!(out, vec![Output::Claim(id("in1"), Claim::Decline)]);
}

#[test]
fn a_lost_connection_is_resumed_within_the_grace_period() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    assert_eq!(h.input(Input::ConnectionLost), vec![]);
    assert_eq!(h.calls.parked_until(), Some(h.now + GRACE));
    assert_eq!(h.advance(GRACE - Duration::from_secs(1)), vec![]);
    h.input(Input::ConnectionResumed);
    assert_eq!(h.calls.phases(), vec![(id("c1"), CallPhase::Answered)]);
    // Long after the grace period the call is still up.
    assert_eq!(h.advance(GRACE * 2), vec![]);
    let out = h.request(Request::Hangup { call: id("c1") });
    assert_eq!(
        out,
        vec![
            hangup(sip_leg),
            release(leg),
            ended("c1", EndReason::Hangup, None)
        ]
    );
}

#[test]
fn a_lost_connection_not_resumed_ends_its_calls_silently() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    h.input(Input::ConnectionLost);
    assert_eq!(h.advance(GRACE - Duration::from_millis(1)), vec![]);
    let out = h.advance(Duration::from_millis(1));
    // BYE to the PBX; no one to tell on the browser side.
    assert_eq!(out, vec![hangup(sip_leg), release(leg)]);
    assert!(h.calls.is_empty() && !h.calls.is_parked());
}

#[test]
fn without_calls_or_resumption_a_lost_connection_just_ends() {
    let mut h = Harness::new();
    h.input(Input::ConnectionLost);
    assert!(!h.calls.is_parked());
    let mut h = Harness::with(Settings {
        resume_grace: None,
        ..settings()
    });
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    let out = h.input(Input::ConnectionLost);
    assert_eq!(out, vec![hangup(sip_leg), release(leg)]);
    assert!(!h.calls.is_parked());
}
