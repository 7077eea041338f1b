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

mod calls;
mod far_hold;

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
