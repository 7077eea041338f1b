//! Calls through the front end: placed by the browser, offered to it,
//! refused, ended by the session timer.

use super::*;

#[test]
fn a_browser_call_is_challenged_then_answered() {
    let mut f = front();
    f.handle_frame(Instant::now(), &invite(1, None));
    let out = drain(&mut f);
    assert!(sent(&out)[0].starts_with("SIP/2.0 100 Trying\r\n"));
    assert_eq!(
        out[1],
        FrontOutput::Core(Request::Call {
            call: call1(),
            to: "sip:bob@pbx.test".into(),
            offer: OFFER.into(),
            caller: Some(Caller {
                user: "alice".into(),
                display: Some("Alice".into()),
                credentials: None,
            }),
        })
    );
    let challenge = "Digest realm=\"pbx.test\", nonce=\"n2\", qop=\"auth\"";
    f.handle_core(
        Instant::now(),
        call1(),
        Notification::Challenged {
            status: 407,
            challenge: challenge.into(),
        },
    );
    f.handle_core(
        Instant::now(),
        call1(),
        Notification::Ended {
            reason: EndReason::AuthFailed,
            code: Some(407),
        },
    );
    let out = drain(&mut f);
    let msg = sent(&out)[0];
    assert!(
        msg.starts_with("SIP/2.0 407 Proxy Authentication Required\r\n"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("Proxy-Authenticate: {challenge}\r\n")),
        "{msg}"
    );

    // The retry carries the browser's answer to it.
    f.handle_frame(
        Instant::now(),
        &invite(2, Some("Digest username=\"alice\"")),
    );
    let out = drain(&mut f);
    let FrontOutput::Core(Request::Call { caller, .. }) = &out[1] else {
        panic!("{out:?}");
    };
    assert_eq!(
        caller.as_ref().unwrap().credentials,
        Some(Credentials {
            proxy: true,
            value: "Digest username=\"alice\"".into()
        })
    );
    f.handle_core(
        Instant::now(),
        call1(),
        Notification::Answer {
            sdp: "answer-sdp".into(),
        },
    );
    f.handle_core(Instant::now(), call1(), Notification::Ringing);
    f.handle_core(Instant::now(), call1(), Notification::Answered);
    let out = drain(&mut f);
    let msgs = sent(&out);
    assert!(
        msgs[0].starts_with("SIP/2.0 180 Ringing\r\n"),
        "{}",
        msgs[0]
    );
    assert!(msgs[1].starts_with("SIP/2.0 200 OK\r\n"), "{}", msgs[1]);
    assert!(msgs[1].ends_with("\r\n\r\nanswer-sdp"), "{}", msgs[1]);
    assert!(
        msgs[1].contains("Session-Expires: 90;refresher=uac\r\n"),
        "{}",
        msgs[1]
    );
    assert!(msgs[1].contains("CSeq: 2 INVITE\r\n"), "{}", msgs[1]);

    // The far end hangs up: BYE to the browser, to its Contact.
    f.handle_core(
        Instant::now(),
        call1(),
        Notification::Ended {
            reason: EndReason::RemoteHangup,
            code: None,
        },
    );
    let out = drain(&mut f);
    let msg = sent(&out)[0];
    assert!(
        msg.starts_with("BYE sip:xyz@abc.invalid;transport=ws;ob SIP/2.0\r\n"),
        "{msg}"
    );
    assert!(!f.has_call(&call1()));
}

#[test]
fn the_browser_hangs_up_and_holds() {
    let mut f = front();
    f.handle_frame(Instant::now(), &invite(1, None));
    f.handle_core(
        Instant::now(),
        call1(),
        Notification::Answer { sdp: "a1".into() },
    );
    f.handle_core(Instant::now(), call1(), Notification::Answered);
    drain(&mut f);
    let to_tag = |f: &SipWsFront| f.dialogs[&call1()].local_tag.clone();
    let tag = to_tag(&f);
    let in_dialog = |method: &str, cseq: u32, body: &str| {
        let ct = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".into()
        };
        format!(
            "{method} sip:gangway@gw.test:8080;transport=ws SIP/2.0\r\n\
             Via: SIP/2.0/WS abc.invalid;branch=z9hG4bKx{cseq}\r\n\
             To: <sip:bob@pbx.test>;tag={tag}\r\n\
             From: \"Alice\" <sip:alice@pbx.test>;tag=ft2\r\n\
             Call-ID: call1\r\nCSeq: {cseq} {method}\r\n{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let held = OFFER.replace("a=sendrecv", "a=sendonly");
    f.handle_frame(Instant::now(), &in_dialog("INVITE", 3, &held));
    let out = drain(&mut f);
    assert_eq!(
        &out[..],
        &[
            FrontOutput::Core(Request::Hold {
                call: call1(),
                hold: true
            }),
            FrontOutput::Core(Request::Renegotiate {
                call: call1(),
                offer: held.clone()
            }),
        ]
    );
    f.handle_core(
        Instant::now(),
        call1(),
        Notification::Answer { sdp: "a2".into() },
    );
    let out = drain(&mut f);
    let msg = sent(&out)[0];
    assert!(
        msg.starts_with("SIP/2.0 200 OK\r\n") && msg.contains("CSeq: 3 INVITE"),
        "{msg}"
    );
    assert!(msg.ends_with("a2"), "{msg}");

    // A refresh without an offer.
    f.handle_frame(Instant::now(), &in_dialog("UPDATE", 4, ""));
    let msg = sent(&drain(&mut f))[0].to_string();
    assert!(
        msg.starts_with("SIP/2.0 200 OK\r\n") && msg.contains("Session-Expires: 90"),
        "{msg}"
    );

    f.handle_frame(Instant::now(), &in_dialog("BYE", 5, ""));
    let out = drain(&mut f);
    assert!(sent(&out)[0].starts_with("SIP/2.0 200 OK\r\n"));
    assert_eq!(out[1], FrontOutput::Core(Request::Hangup { call: call1() }));
    f.handle_core(
        Instant::now(),
        call1(),
        Notification::Ended {
            reason: EndReason::Hangup,
            code: None,
        },
    );
    assert!(sent(&drain(&mut f)).is_empty(), "no BYE back");
}

#[test]
fn calls_offered_to_the_browser_take_its_offer_and_ack_our_answer() {
    let mut f = registered_front();
    let call = CallId::new("in-1").unwrap();
    f.handle_core(
        Instant::now(),
        call.clone(),
        Notification::Incoming {
            from: "sip:bob@pbx.test".into(),
            display: Some("Bob".into()),
            to: "sip:alice@pbx.test".into(),
        },
    );
    let out = drain(&mut f);
    let invite = sent(&out)[0];
    assert!(
        invite.starts_with("INVITE sip:xyz@abc.invalid;transport=ws SIP/2.0\r\n"),
        "{invite}"
    );
    assert!(invite.contains("To: <sip:alice@pbx.test>\r\n"), "{invite}");
    assert!(invite.contains("Content-Length: 0\r\n\r\n"), "{invite}");
    assert!(!invite.contains("100rel"), "{invite}");
    let via = invite.lines().find(|l| l.starts_with("Via: ")).unwrap();
    let from = invite.lines().find(|l| l.starts_with("From: ")).unwrap();
    let ok = format!(
        "SIP/2.0 200 OK\r\n{via}\r\n{from}\r\nTo: <sip:alice@pbx.test>;tag=b1\r\n\
         Call-ID: in-1\r\nCSeq: 1 INVITE\r\nContact: <sip:xyz@abc.invalid;transport=ws>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    );
    f.handle_frame(Instant::now(), &ok);
    assert_eq!(
        drain(&mut f),
        vec![FrontOutput::Core(Request::Accept {
            call: call.clone(),
            offer: OFFER.into()
        })]
    );
    f.handle_core(
        Instant::now(),
        call.clone(),
        Notification::Answer {
            sdp: "our-answer".into(),
        },
    );
    let out = drain(&mut f);
    let ack = sent(&out)[0];
    assert!(
        ack.starts_with("ACK sip:xyz@abc.invalid;transport=ws SIP/2.0\r\n"),
        "{ack}"
    );
    assert!(ack.contains("To: <sip:alice@pbx.test>;tag=b1\r\n"), "{ack}");
    assert!(ack.ends_with("our-answer"), "{ack}");
}

#[test]
fn a_refused_call_gets_a_final_response() {
    let mut f = front();
    f.handle_frame(Instant::now(), &invite(1, None));
    drain(&mut f);
    f.handle_refusal(Refusal {
        call: Some(call1()),
        problem: Problem::TooManyCalls,
        message: "at most 1".into(),
    });
    let msg = sent(&drain(&mut f))[0].to_string();
    assert!(msg.starts_with("SIP/2.0 486 Busy Here\r\n"), "{msg}");
    assert!(!f.has_call(&call1()));
}

#[test]
fn a_call_the_browser_stops_refreshing_ends() {
    let mut f = front();
    let t0 = Instant::now();
    f.handle_frame(t0, &invite(1, None));
    f.handle_core(t0, call1(), Notification::Answer { sdp: "a1".into() });
    f.handle_core(t0, call1(), Notification::Answered);
    drain(&mut f);
    // 90 s asked for: ends 60 s after the last refresh (RFC 4028 §10).
    assert_eq!(f.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    let tag = f.dialogs[&call1()].local_tag.clone();
    let update = format!(
        "UPDATE sip:gangway@gw.test:8080;transport=ws SIP/2.0\r\n\
         Via: SIP/2.0/WS abc.invalid;branch=z9hG4bKu\r\n\
         To: <sip:bob@pbx.test>;tag={tag}\r\n\
         From: \"Alice\" <sip:alice@pbx.test>;tag=ft2\r\n\
         Call-ID: call1\r\nCSeq: 3 UPDATE\r\nContent-Length: 0\r\n\r\n"
    );
    let t1 = t0 + Duration::from_secs(45);
    f.handle_frame(t1, &update);
    drain(&mut f);
    assert_eq!(f.poll_timeout(), Some(t1 + Duration::from_secs(60)));
    f.handle_timeout(t1 + Duration::from_secs(59));
    assert_eq!(drain(&mut f), vec![]);
    f.handle_timeout(t1 + Duration::from_secs(60));
    assert_eq!(
        drain(&mut f),
        vec![
            FrontOutput::Rejected("session_expired"),
            FrontOutput::Core(Request::Hangup { call: call1() })
        ]
    );
    assert_eq!(f.poll_timeout(), None);
    f.handle_core(
        t1,
        call1(),
        Notification::Ended {
            reason: EndReason::Hangup,
            code: None,
        },
    );
    assert!(sent(&drain(&mut f))[0].starts_with("BYE "));
}

#[test]
fn a_call_withdrawn_while_ringing_is_cancelled_and_its_487_acked() {
    let mut f = registered_front();
    let call = CallId::new("in-2").unwrap();
    let incoming = Notification::Incoming {
        from: "sip:bob@pbx.test".into(),
        display: None,
        to: "sip:alice@pbx.test".into(),
    };
    f.handle_core(Instant::now(), call.clone(), incoming);
    let invite = sent(&drain(&mut f))[0].to_string();
    let ended = Notification::Ended {
        reason: EndReason::AnsweredElsewhere,
        code: None,
    };
    f.handle_core(Instant::now(), call.clone(), ended);
    let cancel = sent(&drain(&mut f))[0].to_string();
    assert!(
        cancel.starts_with("CANCEL sip:xyz@abc.invalid;transport=ws SIP/2.0\r\n"),
        "{cancel}"
    );
    let via = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("Via: "))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        via(&cancel),
        via(&invite),
        "the CANCEL names the INVITE's branch"
    );
    assert!(cancel.contains("CSeq: 1 CANCEL\r\n"), "{cancel}");

    let from = invite.lines().find(|l| l.starts_with("From: ")).unwrap();
    let terminated = format!(
        "SIP/2.0 487 Request Terminated\r\n{}\r\n{from}\r\nTo: <sip:alice@pbx.test>;tag=b2\r\n\
         Call-ID: in-2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        via(&invite)
    );
    f.handle_frame(Instant::now(), &terminated);
    let out = drain(&mut f);
    let ack = sent(&out)[0];
    assert!(
        ack.starts_with("ACK sip:xyz@abc.invalid;transport=ws SIP/2.0\r\n"),
        "{ack}"
    );
    assert!(ack.contains("To: <sip:alice@pbx.test>;tag=b2\r\n"), "{ack}");
    assert_eq!(
        via(ack),
        via(&invite),
        "a non-2xx ACK is in the INVITE's transaction"
    );
    assert!(
        !out.iter().any(|o| matches!(o, FrontOutput::Core(_))),
        "{out:?}"
    );
    assert!(!f.has_call(&call));
}
