//! Transfers: ours (blind and attended REFER) and the far end's (its
//! REFER, an INVITE with Replaces).

use super::*;

fn notify_transfer(sip_leg: SipLegId, status: u16, reason: &str, done: bool) -> Out {
    sip(SipCommand::NotifyTransfer {
        sip: sip_leg,
        status,
        reason: reason.into(),
        done,
    })
}

fn progress(call: &str, status: u16, done: bool) -> Out {
    notify(call, Notification::TransferProgress { status, done })
}

/// Our blind transfer of `call` to 2000, as the client asks for it.
fn blind_transfer(h: &mut Harness, call: &str) -> Vec<Out> {
    h.request(Request::Transfer {
        call: id(call),
        to: Some("2000".into()),
        replaces: None,
    })
}

/// The far end's answer to our REFER, or one of its NOTIFYs.
fn refer_news(status: u16, done: bool) -> SipInput {
    SipInput::TransferProgress { status, done }
}

#[test]
fn our_blind_transfer_succeeds() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    let out = blind_transfer(&mut h, "c1");
    let target = "sip:2000@pbx.test".to_string();
    assert_eq!(
        out,
        vec![sip(SipCommand::Transfer {
            sip: sip_leg,
            target
        })]
    );
    let accepted = refer_news(202, false);
    assert_eq!(h.sip(sip_leg, accepted), vec![progress("c1", 202, false)]);
    let trying = refer_news(100, false);
    assert_eq!(h.sip(sip_leg, trying), vec![progress("c1", 100, false)]);
    let out = h.sip(sip_leg, refer_news(200, true));
    assert_eq!(
        out,
        vec![
            progress("c1", 200, true),
            hangup(sip_leg),
            release(leg),
            ended("c1", EndReason::Transferred, None),
        ]
    );
}

#[test]
fn a_transferee_that_leaves_after_202_completed_our_transfer() {
    let mut h = Harness::new();
    let (leg, sip_leg) = h.answered_call("c1", "10.0.0.5");
    blind_transfer(&mut h, "c1");
    h.sip(sip_leg, refer_news(202, false));
    let out = h.sip(sip_leg, SipInput::RemoteHangup);
    assert_eq!(
        out,
        vec![
            hangup(sip_leg),
            release(leg),
            ended("c1", EndReason::Transferred, None)
        ]
    );
}

#[test]
fn a_failed_transfer_leaves_the_call_up() {
    let mut h = Harness::new();
    let (_, sip_leg) = h.answered_call("c1", "10.0.0.5");
    blind_transfer(&mut h, "c1");
    h.sip(sip_leg, refer_news(202, false));
    let out = h.sip(sip_leg, refer_news(486, true));
    assert_eq!(out, vec![progress("c1", 486, true)]);
    // The far end hanging up now is a plain hangup, not a transfer.
    let out = h.sip(sip_leg, SipInput::RemoteHangup);
    assert_eq!(out[1], ended("c1", EndReason::RemoteHangup, None));
}

#[test]
fn transfer_targets_are_routed_like_calls() {
    let mut h = Harness::new();
    h.answered_call("c1", "10.0.0.5");
    let transfer = |to: &str| Request::Transfer {
        call: id("c1"),
        to: Some(to.into()),
        replaces: None,
    };
    let out = h.request(transfer("sip:1@elsewhere.test"));
    let message = "the transfer target is not allowed";
    assert_eq!(
        out,
        vec![refuse(Some("c1"), Problem::InvalidMessage, message)]
    );
    let out = h.request(transfer("echo"));
    let message = "the transfer target is not a SIP destination";
    assert_eq!(
        out,
        vec![refuse(Some("c1"), Problem::InvalidMessage, message)]
    );
    let out = h.request(Request::Transfer {
        call: id("c1"),
        to: None,
        replaces: None,
    });
    let message = "transfer needs `to` or `replaces` (one of them)";
    assert_eq!(
        out,
        vec![refuse(Some("c1"), Problem::InvalidMessage, message)]
    );
}

#[test]
fn attended_transfer_replaces_our_dialog_with_the_other_call() {
    let mut h = Harness::new();
    let (leg_a, sip_a) = h.answered_call("a", "10.0.0.5");
    let (leg_b, sip_b) = h.answered_call("b", "10.0.0.6");
    // REFER a's far end to b's, with Replaces naming b's dialog.
    let out = h.request(Request::Transfer {
        call: id("a"),
        to: None,
        replaces: Some(id("b")),
    });
    let target = "sip:b@10.0.0.6?Replaces=x".to_string();
    assert_eq!(out, vec![sip(SipCommand::Transfer { sip: sip_a, target })]);
    // b's far end is replaced: its BYE completes the transfer there.
    let out = h.sip(sip_b, SipInput::RemoteHangup);
    assert_eq!(
        out,
        vec![
            hangup(sip_b),
            release(leg_b),
            ended("b", EndReason::Transferred, None)
        ]
    );
    h.sip(sip_a, refer_news(202, false));
    let out = h.sip(sip_a, refer_news(200, true));
    assert_eq!(
        out,
        vec![
            progress("a", 200, true),
            hangup(sip_a),
            release(leg_a),
            ended("a", EndReason::Transferred, None),
        ]
    );
}

#[test]
fn attended_transfer_needs_another_answered_call() {
    let mut h = Harness::new();
    h.answered_call("a", "10.0.0.5");
    h.start_sip_call("b", "1001");
    let message = "`replaces` must name another answered SIP call on this connection";
    for other in ["a", "b", "nope"] {
        let out = h.request(Request::Transfer {
            call: id("a"),
            to: None,
            replaces: Some(id(other)),
        });
        assert_eq!(
            out,
            vec![refuse(Some("a"), Problem::InvalidState, message)],
            "{other}"
        );
    }
}

#[test]
fn the_far_end_transfers_us_and_the_target_answers() {
    let mut h = Harness::new();
    let (leg, old) = h.answered_call("c1", "10.0.0.5");
    let out = h.sip(
        old,
        SipInput::Referred {
            target: "sip:3000@pbx.test".into(),
        },
    );
    let [Output::Sip(SipCommand::Place {
        sip: new,
        uri,
        offer,
        ..
    })] = out.as_slice()
    else {
        panic!("expected a call to the target: {out:?}");
    };
    let new = *new;
    assert_eq!(uri, "sip:3000@pbx.test");
    // On the same RTP port as the call it replaces.
    assert_eq!(
        offer,
        &sdp::offer(GATEWAY_IP, RTP_PORT, &[G711::Pcmu, G711::Pcma], 101, leg.0)
    );
    // A second REFER meanwhile is refused.
    let out = h.sip(
        old,
        SipInput::Referred {
            target: "sip:4000@pbx.test".into(),
        },
    );
    assert_eq!(
        out,
        vec![notify_transfer(old, 491, "Request Pending", true)]
    );
    let out = h.sip(
        new,
        SipInput::Provisional {
            status: 180,
            sdp: None,
        },
    );
    assert_eq!(out, vec![notify_transfer(old, 180, "Ringing", false)]);
    let out = h.sip(
        new,
        SipInput::Answered {
            sdp: pbx_sdp("10.0.0.7", 22_000, 8, "sendrecv"),
            replacing_target: None,
        },
    );
    assert_eq!(
        out,
        vec![
            connect(leg, "10.0.0.7", 22_000, G711::Pcma, true, AudioFlow::BOTH),
            notify_transfer(old, 200, "OK", true),
            sip(SipCommand::HangupAfter {
                sip: old,
                delay: REPLACED_LEG_GRACE
            }),
            notify(
                "c1",
                Notification::Transferred {
                    to: "sip:3000@pbx.test".into()
                }
            ),
        ]
    );
    // The old leg leaving is no news; the new one is the call now.
    assert_eq!(h.sip(old, SipInput::RemoteHangup), vec![]);
    assert_eq!(h.sip(old, SipInput::Ended), vec![]);
    let out = h.request(Request::Hangup { call: id("c1") });
    assert_eq!(
        out,
        vec![
            hangup(new),
            release(leg),
            ended("c1", EndReason::Hangup, None)
        ]
    );
}

#[test]
fn the_far_ends_transfer_to_a_refused_or_failing_target() {
    let mut h = Harness::new();
    let (_, old) = h.answered_call("c1", "10.0.0.5");
    let out = h.sip(
        old,
        SipInput::Referred {
            target: "sip:1@elsewhere.test".into(),
        },
    );
    assert_eq!(out, vec![notify_transfer(old, 403, "Forbidden", true)]);
    let out = h.sip(
        old,
        SipInput::Referred {
            target: "sip:3000@pbx.test".into(),
        },
    );
    let [Output::Sip(SipCommand::Place { sip: new, .. })] = out.as_slice() else {
        panic!("{out:?}");
    };
    let new = *new;
    let failed = SipInput::Failed {
        status: 486,
        reason: "Busy Here".into(),
        challenge: None,
    };
    assert_eq!(
        h.sip(new, failed),
        vec![notify_transfer(old, 486, "Busy Here", true)]
    );
    assert_eq!(h.sip(new, SipInput::Ended), vec![]);
    // The call goes on with the old leg.
    let out = h.request(Request::Hold {
        call: id("c1"),
        hold: true,
    });
    assert_eq!(
        out,
        vec![sip(SipCommand::Hold {
            sip: old,
            hold: true
        })]
    );
}

#[test]
fn an_invite_with_replaces_takes_the_call_over() {
    let mut h = Harness::new();
    let (leg, old) = h.answered_call("c1", "10.0.0.5");
    let offer = pbx_sdp("10.0.0.8", 24_000, 0, "sendrecv");
    let out = h.sip(
        old,
        SipInput::ReplacedBy {
            from: "sip:carol@pbx.test".into(),
            offer: Some(offer.clone()),
        },
    );
    let [Output::Sip(SipCommand::AnswerReplacement {
        old: o,
        new,
        sdp: answer,
    }), connect_out] = out.as_slice()
    else {
        panic!("{out:?}");
    };
    let new = *new;
    assert_eq!(*o, old);
    // The RFC 3264 answer: our port, its codec, sendrecv for sendrecv.
    let parsed = sdp::parse_answer(&offer, &[G711::Pcmu, G711::Pcma]).unwrap();
    assert_eq!(answer, &sdp::answer(GATEWAY_IP, RTP_PORT, &parsed, leg.0));
    assert!(answer.contains("a=sendrecv"), "{answer}");
    assert_eq!(
        connect_out,
        &connect(leg, "10.0.0.8", 24_000, G711::Pcmu, true, AudioFlow::BOTH)
    );
    // Its ACK makes it the call's leg; the replaced dialog ends at once.
    let out = h.sip(
        new,
        SipInput::Answered {
            sdp: offer,
            replacing_target: None,
        },
    );
    assert_eq!(
        out,
        vec![
            connect(leg, "10.0.0.8", 24_000, G711::Pcmu, true, AudioFlow::BOTH),
            hangup(old),
            notify(
                "c1",
                Notification::Transferred {
                    to: "sip:carol@pbx.test".into()
                }
            ),
        ]
    );
    // A late INVITE with Replaces for the old dialog is refused (481).
    let late = SipInput::ReplacedBy {
        from: "x".into(),
        offer: None,
    };
    let status = 481;
    assert_eq!(
        h.sip(old, late),
        vec![sip(SipCommand::RejectReplacement { old, status })]
    );
}

#[test]
fn an_invite_with_replaces_for_a_call_that_cannot_take_it_gets_486() {
    let mut h = Harness::new();
    let leg = h.start_sip_call("c1", "1000");
    let sip_leg = h.leg_ready("c1", leg, "sip:1000@pbx.test");
    let out = h.sip(
        sip_leg,
        SipInput::ReplacedBy {
            from: "x".into(),
            offer: None,
        },
    );
    let status = 486;
    assert_eq!(
        out,
        vec![sip(SipCommand::RejectReplacement {
            old: sip_leg,
            status
        })]
    );
}

/// The transfer's own outputs among what `advance` gave (session timers
/// may refresh the dialog meanwhile).
fn transfer_news(out: Vec<Out>) -> Vec<Out> {
    out.into_iter()
        .filter(|o| {
            matches!(
                o,
                Output::Notify(_, Notification::TransferProgress { .. })
                    | Output::Notify(_, Notification::Ended { .. })
            )
        })
        .collect()
}

#[test]
fn a_transferee_that_goes_quiet_after_202_fails_our_transfer_with_408() {
    let mut h = Harness::new();
    let (_, sip_leg) = h.answered_call("c1", "10.0.0.5");
    blind_transfer(&mut h, "c1");
    let step = TRANSFER_OUTCOME_TIMEOUT / 3;
    h.advance(step);
    let accepted = refer_news(202, false);
    h.sip(sip_leg, accepted);
    // Each piece of news restarts the wait: nothing at the first deadline.
    let out = h.advance(TRANSFER_OUTCOME_TIMEOUT - step);
    assert_eq!(transfer_news(out), vec![]);
    let out = h.advance(step - Duration::from_millis(1));
    assert_eq!(transfer_news(out), vec![]);
    let out = h.advance(Duration::from_millis(1));
    assert_eq!(transfer_news(out), vec![progress("c1", 408, true)]);
    assert_eq!(transfer_news(h.advance(TRANSFER_OUTCOME_TIMEOUT)), vec![]);
    // The far end leaving now is a plain hangup, not our transfer's end.
    let out = h.sip(sip_leg, SipInput::RemoteHangup);
    assert_eq!(out[1], ended("c1", EndReason::RemoteHangup, None));
}

#[test]
fn a_final_notify_in_time_leaves_nothing_to_expire() {
    let mut h = Harness::new();
    let (_, sip_leg) = h.answered_call("c1", "10.0.0.5");
    blind_transfer(&mut h, "c1");
    let refused = refer_news(603, true);
    assert_eq!(h.sip(sip_leg, refused), vec![progress("c1", 603, true)]);
    assert_eq!(
        transfer_news(h.advance(TRANSFER_OUTCOME_TIMEOUT * 2)),
        vec![]
    );
}

#[test]
fn an_overdue_attended_transfer_frees_the_other_call_too() {
    let mut h = Harness::new();
    let (_, sip_a) = h.answered_call("a", "10.0.0.5");
    let (_, sip_b) = h.answered_call("b", "10.0.0.6");
    h.request(Request::Transfer {
        call: id("a"),
        to: None,
        replaces: Some(id("b")),
    });
    let accepted = refer_news(202, false);
    h.sip(sip_a, accepted);
    let out = h.advance(TRANSFER_OUTCOME_TIMEOUT);
    assert_eq!(transfer_news(out), vec![progress("a", 408, true)]);
    // b's far end leaving is no longer the transfer completing.
    let out = h.sip(sip_b, SipInput::RemoteHangup);
    assert_eq!(out[1], ended("b", EndReason::RemoteHangup, None), "{out:?}");
}
