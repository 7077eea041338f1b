//! The far end holds and resumes: the browser gets re-INVITEs of ours.

use super::*;

/// An answered call placed by the browser, our answer `sdp`.
fn answered(sdp: &str) -> SipWsFront {
    let mut f = front();
    f.handle_frame(Instant::now(), &invite(1, None));
    f.handle_core(
        Instant::now(),
        call1(),
        Notification::Answer { sdp: sdp.into() },
    );
    f.handle_core(Instant::now(), call1(), Notification::Answered);
    f.handle_frame(Instant::now(), &ack(1));
    drain(&mut f);
    f
}

const ANSWER: &str = "v=0\r\no=str0m 7 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=setup:active\r\na=sendrecv\r\n";

fn ack(cseq: u32) -> String {
    format!(
        "ACK sip:gangway@gw.test:8080;transport=ws SIP/2.0\r\n\
         Via: SIP/2.0/WS abc.invalid;branch=z9hG4bKack{cseq}\r\n\
         Max-Forwards: 69\r\nTo: <sip:bob@pbx.test>;tag=x\r\n\
         From: \"Alice\" <sip:alice@pbx.test>;tag=ft2\r\nCall-ID: call1\r\n\
         CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
    )
}

fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {name} in {msg}"))
}

/// The browser's response to a request of ours.
fn response_to(request: &str, status: u16, body: Option<&str>) -> String {
    let body = body.unwrap_or("");
    let content_type = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".into()
    };
    format!(
        "SIP/2.0 {status} Whatever\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\n\
         CSeq: {}\r\nContact: <sip:new@abc.invalid;transport=ws>\r\n{content_type}\
         Content-Length: {}\r\n\r\n{body}",
        header(request, "Via"),
        header(request, "From"),
        header(request, "To"),
        header(request, "Call-ID"),
        header(request, "CSeq"),
        body.len()
    )
}

fn reoffer(cseq: u32) -> String {
    invite(cseq, None).replace("To: <sip:bob@pbx.test>", "To: <sip:bob@pbx.test>;tag=x")
}

#[test]
fn the_far_ends_hold_and_resume_are_offered_to_the_browser() {
    let mut f = answered(ANSWER);
    let held = gangway_core::HoldParty::Remote;
    f.handle_core(Instant::now(), call1(), Notification::Held { by: held });
    let out = drain(&mut f);
    let [FrontOutput::Send(hold)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert!(
        hold.starts_with("INVITE sip:xyz@abc.invalid;transport=ws;ob SIP/2.0\r\n"),
        "{hold}"
    );
    assert!(hold.contains("CSeq: 1 INVITE\r\n"), "{hold}");
    assert!(
        hold.contains("a=sendonly\r\n") && !hold.contains("a=sendrecv"),
        "{hold}"
    );
    assert!(hold.contains("o=str0m 7 3 IN IP4"), "a new version: {hold}");
    assert!(
        hold.contains("a=setup:active\r\n"),
        "the DTLS role is kept: {hold}"
    );

    // While it is out, the browser's own offer crosses it (glare).
    f.handle_frame(Instant::now(), &reoffer(2));
    let out = drain(&mut f);
    assert!(
        sent(&out)[0].starts_with("SIP/2.0 491 Request Pending\r\n"),
        "{out:?}"
    );

    // The far end resumes before the browser answered: one at a time.
    f.handle_core(Instant::now(), call1(), Notification::Resumed { by: held });
    assert!(drain(&mut f).is_empty());

    // The 200 is ACKed (a new transaction, to the new Contact) and the
    // resume follows.
    f.handle_frame(
        Instant::now(),
        &response_to(hold, 200, Some("browser-answer")),
    );
    let out = drain(&mut f);
    let msgs = sent(&out);
    assert_eq!(msgs.len(), 2, "{out:?}");
    assert!(
        msgs[0].starts_with("ACK sip:new@abc.invalid;transport=ws SIP/2.0\r\n"),
        "{}",
        msgs[0]
    );
    assert!(msgs[0].contains("CSeq: 1 ACK\r\n"), "{}", msgs[0]);
    assert_ne!(
        header(msgs[0], "Via"),
        header(hold, "Via"),
        "a 2xx ACK has its own branch"
    );
    let resume = msgs[1];
    assert!(resume.contains("CSeq: 2 INVITE\r\n"), "{resume}");
    assert!(
        resume.contains("a=sendrecv\r\n") && !resume.contains("a=sendonly"),
        "{resume}"
    );
    assert!(resume.contains("o=str0m 7 4 IN IP4"), "{resume}");

    // The browser refuses it with 491: ACK in the transaction, and the
    // same offer again after the glare delay.
    let t0 = Instant::now();
    f.handle_frame(t0, &response_to(resume, 491, None));
    let out = drain(&mut f);
    let msgs = sent(&out);
    assert!(msgs[0].starts_with("ACK "), "{}", msgs[0]);
    assert_eq!(
        header(msgs[0], "Via"),
        header(resume, "Via"),
        "a non-2xx ACK shares the branch"
    );
    assert_eq!(msgs.len(), 1);
    let due = f.poll_timeout().expect("a retry");
    assert!(due >= t0 + Duration::from_secs(2), "{:?}", due - t0);
    f.handle_timeout(due);
    let out = drain(&mut f);
    let again = sent(&out)[0];
    assert!(
        again.contains("CSeq: 3 INVITE\r\n") && again.contains("a=sendrecv\r\n"),
        "{again}"
    );
    f.handle_frame(
        Instant::now(),
        &response_to(again, 200, Some("browser-answer")),
    );
    assert_eq!(sent(&drain(&mut f)).len(), 1, "the ACK and nothing more");

    // Already told: a repeated resume sends nothing.
    f.handle_core(Instant::now(), call1(), Notification::Resumed { by: held });
    assert!(drain(&mut f).is_empty());
}

#[test]
fn a_refused_far_hold_is_not_retried_and_the_browsers_own_offer_waits_for_nothing() {
    let mut f = answered(ANSWER);
    let held = gangway_core::HoldParty::Remote;
    f.handle_core(Instant::now(), call1(), Notification::Held { by: held });
    let out = drain(&mut f);
    let hold = sent(&out)[0].to_string();
    f.handle_frame(Instant::now(), &response_to(&hold, 488, None));
    let out = drain(&mut f);
    assert!(sent(&out)[0].starts_with("ACK "), "{out:?}");
    assert!(
        out.contains(&FrontOutput::Rejected("far_hold_refused")),
        "{out:?}"
    );
    assert_eq!(
        f.poll_timeout(),
        f.dialogs[&call1()].expires_at,
        "no retry timer"
    );

    // The browser's re-offer goes to the core as usual.
    f.handle_frame(Instant::now(), &reoffer(2));
    let out = drain(&mut f);
    assert!(
        out.iter()
            .any(|o| matches!(o, FrontOutput::Core(Request::Renegotiate { .. }))),
        "{out:?}"
    );
    // Its answer carries a version above the one the browser saw.
    f.handle_core(
        Instant::now(),
        call1(),
        Notification::Answer { sdp: ANSWER.into() },
    );
    let out = drain(&mut f);
    let ok = sent(&out)[0];
    assert!(
        ok.starts_with("SIP/2.0 200 OK\r\n") && ok.contains("o=str0m 7 4 IN IP4"),
        "{ok}"
    );
}

#[test]
fn a_hold_during_the_browsers_own_offer_waits_for_its_answer() {
    let mut f = answered(ANSWER);
    f.handle_frame(Instant::now(), &reoffer(2));
    drain(&mut f);
    let held = gangway_core::HoldParty::Remote;
    f.handle_core(Instant::now(), call1(), Notification::Held { by: held });
    assert!(
        drain(&mut f).is_empty(),
        "nothing while the browser's offer is open"
    );
    f.handle_core(
        Instant::now(),
        call1(),
        Notification::Answer { sdp: ANSWER.into() },
    );
    let out = drain(&mut f);
    let msgs = sent(&out);
    assert!(msgs[0].starts_with("SIP/2.0 200 OK\r\n"), "{}", msgs[0]);
    assert!(
        msgs[1].starts_with("INVITE ") && msgs[1].contains("a=sendonly\r\n"),
        "{}",
        msgs[1]
    );
}
