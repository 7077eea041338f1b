//! The call-level half of a call's detail record, as the table ends it.

use super::*;

fn summary(out: &[Out]) -> CallSummary {
    let found = out.iter().find_map(|o| match o {
        Output::Observe {
            what: Observation::Summary(s),
            ..
        } => Some((**s).clone()),
        _ => None,
    });
    found.expect("a summary when the call ends")
}

#[test]
fn an_answered_call_is_summed_up_when_it_ends() {
    let mut h = Harness::new();
    let started = h.now;
    let leg = h.start_sip_call("c1", "1000");
    let sip_leg = h.leg_ready("c1", leg, "sip:1000@pbx.test");
    h.media(leg, MediaEvent::Connected);
    h.advance(Duration::from_secs(2));
    let answered = h.now;
    h.sip(
        sip_leg,
        SipInput::Answered {
            sdp: pbx_sdp("10.0.0.5", 20_000, 0, "sendrecv"),
            replacing_target: None,
        },
    );
    h.advance(Duration::from_secs(30));
    h.calls
        .handle(h.now, Input::Sip(sip_leg, SipInput::RemoteHangup));
    let s = summary(&h.drain_all());
    assert_eq!(s.leg, leg);
    assert!(!s.inbound);
    assert_eq!((s.from, s.to.as_str()), (None, "1000"));
    assert_eq!(s.started, started);
    assert_eq!(s.answered, Some(answered));
    assert_eq!(s.ended, answered + Duration::from_secs(30));
    assert_eq!(s.reason, EndReason::RemoteHangup);
    assert!(s.media_leg);
    assert_eq!(s.sip_legs, vec![sip_leg]);
}

#[test]
fn a_failed_call_keeps_its_status_and_no_answer_time() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    let sip_leg = h.leg_ready("c1", leg, "sip:1000@pbx.test");
    h.advance(Duration::from_secs(1));
    let failed = SipInput::Failed {
        status: 603,
        reason: "Decline".into(),
        challenge: None,
    };
    h.calls.handle(h.now, Input::Sip(sip_leg, failed));
    let s = summary(&h.drain_all());
    assert_eq!(
        (s.reason, s.code, s.answered),
        (EndReason::Rejected, Some(603), None)
    );
}

#[test]
fn a_call_that_never_routed_has_no_media_leg() {
    let mut h = Harness::new();
    let call = Request::Call {
        call: id("c1"),
        to: "no such place".into(),
        offer: "v=0".into(),
        caller: None,
    };
    h.calls.handle(h.now, Input::Request(call));
    let s = summary(&h.drain_all());
    assert_eq!(s.reason, EndReason::NotFound);
    assert!(!s.media_leg);
    assert!(s.sip_legs.is_empty());
}

#[test]
fn an_incoming_call_is_summed_up_with_its_caller() {
    let mut h = Harness::new();
    let (leg, sip_leg) = super::inbound::accepted(&mut h, "in1", None);
    h.advance(Duration::from_secs(1));
    h.calls
        .handle(h.now, Input::Request(Request::Hangup { call: id("in1") }));
    let s = summary(&h.drain_all());
    assert!(s.inbound);
    assert_eq!(s.from.as_deref(), Some("sip:alice@pbx.test"));
    assert_eq!(s.to, "sip:bob@gw.test");
    assert_eq!((s.leg, s.sip_legs), (leg, vec![sip_leg]));
    assert_eq!((s.reason, s.answered), (EndReason::Hangup, None));
}
