//! The front end fed what JsSIP sends, checked for what it answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gangway_core::calls::{Caller, Credentials, Notification, Problem, Refusal, Request};
use gangway_core::EndReason;

use super::*;

const PEER: &str = "127.0.0.1:50000";

fn front() -> SipWsFront {
    let settings = FrontSettings::new("gw.test:8080".into(), "Gangway".into());
    SipWsFront::new(settings, PEER.parse::<SocketAddr>().unwrap())
}

fn drain(f: &mut SipWsFront) -> Vec<FrontOutput> {
    std::iter::from_fn(|| f.poll_output()).collect()
}

fn sent(out: &[FrontOutput]) -> Vec<&str> {
    out.iter()
        .filter_map(|o| match o {
            FrontOutput::Send(m) => Some(m.as_str()),
            _ => None,
        })
        .collect()
}

fn register(auth: Option<&str>, expires: u32) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:pbx.test SIP/2.0\r\n\
         Via: SIP/2.0/WS abc.invalid;branch=z9hG4bK1;rport\r\n\
         Max-Forwards: 69\r\n\
         To: <sip:alice@pbx.test>\r\n\
         From: <sip:alice@pbx.test>;tag=ft1\r\n\
         Call-ID: reg1\r\n\
         CSeq: 2 REGISTER\r\n\
         {auth}\
         Contact: <sip:xyz@abc.invalid;transport=ws>;+sip.ice;reg-id=1;+sip.instance=\"<urn:uuid:1>\";expires={expires}\r\n\
         Expires: {expires}\r\n\
         Supported: path,gruu,outbound\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\n";

fn invite(cseq: u32, auth: Option<&str>) -> String {
    let auth = auth
        .map(|a| format!("Proxy-Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "INVITE sip:bob@pbx.test SIP/2.0\r\n\
         Via: SIP/2.0/WS abc.invalid;branch=z9hG4bK{cseq}\r\n\
         Max-Forwards: 69\r\n\
         To: <sip:bob@pbx.test>\r\n\
         From: \"Alice\" <sip:alice@pbx.test>;tag=ft2\r\n\
         Call-ID: call1\r\n\
         CSeq: {cseq} INVITE\r\n\
         {auth}\
         Contact: <sip:xyz@abc.invalid;transport=ws;ob>\r\n\
         Session-Expires: 90\r\n\
         Supported: timer,ice,replaces,outbound\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    )
}

/// A front end whose browser registered (the registrar said 200).
fn registered_front() -> SipWsFront {
    let mut f = front();
    f.handle_frame(Instant::now(), &register(None, 600));
    let id = match drain(&mut f).as_slice() {
        [FrontOutput::Register(r)] => r.id,
        out => panic!("{out:?}"),
    };
    f.handle_register_answer(
        id,
        RegisterAnswer {
            status: 200,
            ..Default::default()
        },
    );
    drain(&mut f);
    f
}

fn call1() -> CallId {
    CallId::new("call1").unwrap()
}

#[test]
fn register_is_relayed_and_the_browser_gets_its_own_contact_back() {
    let mut f = front();
    f.handle_frame(Instant::now(), &register(None, 600));
    let out = drain(&mut f);
    let [FrontOutput::Register(relay)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!(relay.request_uri, "sip:pbx.test");
    assert_eq!((relay.cseq, relay.expires), (2, 600));
    assert!(relay.token.starts_with("gw"), "{}", relay.token);
    let (id, token) = (relay.id, relay.token.clone());

    // The registrar's challenge goes back to the browser as is.
    f.handle_register_answer(
        id,
        RegisterAnswer {
            status: 401,
            reason: "Unauthorized".into(),
            challenge: Some("Digest realm=\"pbx.test\", nonce=\"n1\", qop=\"auth\"".into()),
            ..Default::default()
        },
    );
    let out = drain(&mut f);
    let msg = sent(&out)[0];
    assert!(msg.starts_with("SIP/2.0 401 Unauthorized\r\n"), "{msg}");
    assert!(
        msg.contains("WWW-Authenticate: Digest realm=\"pbx.test\", nonce=\"n1\""),
        "{msg}"
    );
    assert_eq!(msg.matches("Via:").count(), 1, "{msg}");
    assert!(msg.contains("received=127.0.0.1;rport=50000"), "{msg}");

    // Its answer carries the credentials; the same browser keeps its token.
    f.handle_frame(
        Instant::now(),
        &register(Some("Digest username=\"alice\""), 600),
    );
    let out = drain(&mut f);
    let [FrontOutput::Register(relay)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!(relay.token, token);
    assert_eq!(
        relay.credentials,
        Some(Credentials {
            proxy: false,
            value: "Digest username=\"alice\"".into()
        })
    );
    let id = relay.id;
    f.handle_register_answer(
        id,
        RegisterAnswer {
            status: 200,
            reason: "OK".into(),
            expires: Some(300),
            ..Default::default()
        },
    );
    let out = drain(&mut f);
    let binding = Binding {
        token: token.clone(),
        aor: "sip:alice@pbx.test".into(),
        user: "alice".into(),
        contact: "sip:xyz@abc.invalid;transport=ws".into(),
        expires: 300,
    };
    assert_eq!(out[0], FrontOutput::Bind(binding));
    let msg = sent(&out)[0];
    assert!(msg.starts_with("SIP/2.0 200 OK\r\n"), "{msg}");
    assert!(
        msg.contains("Contact: <sip:xyz@abc.invalid;transport=ws>;+sip.ice;reg-id=1;+sip.instance=\"<urn:uuid:1>\";expires=300\r\n"),
        "{msg}"
    );

    // Unregistering drops the binding.
    f.handle_frame(
        Instant::now(),
        &register(Some("Digest username=\"alice\""), 0),
    );
    let id = match drain(&mut f).as_slice() {
        [FrontOutput::Register(r)] => r.id,
        out => panic!("{out:?}"),
    };
    f.handle_register_answer(
        id,
        RegisterAnswer {
            status: 200,
            ..Default::default()
        },
    );
    assert_eq!(drain(&mut f)[0], FrontOutput::Unbind { token });
    assert!(f.bindings().is_empty());
}

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
fn what_cannot_be_answered_closes_and_the_rest_gets_a_status() {
    let mut f = front();
    f.handle_frame(Instant::now(), "hello there");
    let out = drain(&mut f);
    assert!(
        matches!(
            out[1],
            FrontOutput::Close {
                code: CLOSE_PROTOCOL_ERROR,
                ..
            }
        ),
        "{out:?}"
    );

    let mut f = front();
    f.handle_frame(Instant::now(), "OPTIONS sip:gw SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:gw>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n");
    assert!(matches!(drain(&mut f)[1], FrontOutput::Close { .. }));

    let mut f = front();
    let options = "OPTIONS sip:gw SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bKo\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:gw>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    f.handle_frame(Instant::now(), options);
    let msg = sent(&drain(&mut f))[0].to_string();
    assert!(
        msg.starts_with("SIP/2.0 200 OK\r\n") && msg.contains("Allow: INVITE"),
        "{msg}"
    );

    f.handle_frame(Instant::now(), &options.replace("OPTIONS", "MESSAGE"));
    let msg = sent(&drain(&mut f))[0].to_string();
    assert!(msg.starts_with("SIP/2.0 405 "), "{msg}");
    f.handle_frame(Instant::now(), &options.replace("OPTIONS", "FROB"));
    let msg = sent(&drain(&mut f))[0].to_string();
    assert!(
        msg.starts_with("SIP/2.0 501 ") && msg.contains("Allow: "),
        "{msg}"
    );
    f.handle_frame(
        Instant::now(),
        &options.replace("OPTIONS sip:gw SIP/2.0", "OPTIONS sip:gw SIP/3.0"),
    );
    let msg = sent(&drain(&mut f)).first().map(|s| s.to_string());
    // Either a 505 or a refusal to parse: never an answer in SIP/3.0.
    assert!(
        msg.as_ref().is_none_or(|m| m.starts_with("SIP/2.0 505 ")),
        "{msg:?}"
    );

    f.handle_frame(Instant::now(), "\r\n\r\n");
    assert_eq!(drain(&mut f), vec![FrontOutput::Send("\r\n".into())]);

    // A BYE for no call.
    f.handle_frame(Instant::now(), &options.replace("OPTIONS", "BYE"));
    let msg = sent(&drain(&mut f))[0].to_string();
    assert!(msg.starts_with("SIP/2.0 481 "), "{msg}");
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
fn a_bearer_token_signs_in_through_the_shell_not_the_registrar() {
    let mut f = front();
    f.handle_frame(Instant::now(), &register(Some("Bearer eyJ.x.y"), 600));
    let out = drain(&mut f);
    let [FrontOutput::SignIn { id, user, token }] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!((user.as_str(), token.as_str()), ("alice", "eyJ.x.y"));
    f.handle_register_answer(
        *id,
        RegisterAnswer {
            status: 200,
            expires: Some(300),
            ..Default::default()
        },
    );
    let out = drain(&mut f);
    // No binding of ours: the shell routes the user's calls by user.
    assert!(
        !out.iter().any(|o| matches!(o, FrontOutput::Bind(_))),
        "{out:?}"
    );
    assert!(sent(&out)[0].contains(";expires=300\r\n"));
    assert_eq!(f.bindings().len(), 1);

    // Its calls carry the token, which is not passed on as credentials.
    f.handle_frame(
        Instant::now(),
        &invite(1, None).replace(
            "Content-Type",
            "Authorization: Bearer eyJ.x.y\r\nContent-Type",
        ),
    );
    let out = drain(&mut f);
    let FrontOutput::Core(Request::Call { caller, .. }) = &out[1] else {
        panic!("{out:?}");
    };
    assert_eq!(caller.as_ref().unwrap().credentials, None);

    f.handle_frame(Instant::now(), &register(Some("Bearer eyJ.x.y"), 0));
    let out = drain(&mut f);
    assert_eq!(
        out[0],
        FrontOutput::SignOut {
            user: "alice".into()
        }
    );
    assert!(sent(&out)[0].starts_with("SIP/2.0 200 OK\r\n"));
    assert!(f.bindings().is_empty());
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
