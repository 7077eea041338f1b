//! The SIP endpoint against hand-written messages (UDP datagrams, one TCP
//! connection): what our INVITE looks like (NAT address, topology hiding,
//! correlation header), how out-of-dialog requests and bad input are
//! handled, configuration errors.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use gangway_sip::sdp::{self, G711};
use gangway_sip::{
    OutboundCall, SipConfig, SipError, SipEvent, SipMetrics, SipService, Transport, Trunk,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::channel;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn start(public_ip: Option<IpAddr>) -> SipService {
    SipService::start(
        SipConfig {
            listen: SocketAddr::new(LOCALHOST, 0),
            public_ip,
            user_agent: "Gangway-test/0.1".into(),
            prack: true,
            session_expires: 1800,
            max_calls_per_second: 0,
            tcp: Default::default(),
        },
        SipMetrics::default(),
    )
    .await
    .expect("start SIP service")
}

async fn recv_text(sock: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 65535];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("no datagram within 5 s")
        .expect("recv");
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A response to `req` built from its Via/From/To/Call-ID/CSeq.
fn response_to(req: &str, status: &str, to_tag: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in req.split("\r\n") {
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("Via")
            || name.eq_ignore_ascii_case("From")
            || name.eq_ignore_ascii_case("Call-ID")
            || name.eq_ignore_ascii_case("CSeq")
        {
            out.push_str(line);
            out.push_str("\r\n");
        } else if name.eq_ignore_ascii_case("To") {
            if line.contains(";tag=") {
                out.push_str(&format!("{line}\r\n"));
            } else {
                out.push_str(&format!("{line};tag={to_tag}\r\n"));
            }
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

#[tokio::test]
async fn invite_uses_public_ip_and_only_call_data() {
    let public: IpAddr = "203.0.113.7".parse().unwrap();
    let service = start(Some(public)).await;
    assert_eq!(service.advertised_ip(), public);
    assert_eq!(service.local_addr().ip(), LOCALHOST);
    assert_ne!(service.local_addr().port(), 0);
    let port = service.local_addr().port();

    let trunk_sock = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let trunk_port = trunk_sock.local_addr().unwrap().port();
    let (tx, mut rx) = channel(64);
    let offer = sdp::offer(public, 42000, &[G711::Pcma], 101, 99);
    let _call = service.place_call(
        OutboundCall {
            key: 77,
            trunk: Trunk {
                host: "127.0.0.1".into(),
                port: trunk_port,
                transport: Transport::Udp,
                domain: "carrier.example".into(),
                username: None,
                password: None,
            },
            request_uri: "sip:+15551234@carrier.example".into(),
            from_user: "gw".into(),
            from_display: Some("Evil\"\r\nX-Injected: 1".into()),
            sdp_offer: offer.clone(),
            correlation_id: "abc-123\r\nX-Injected: 2".into(),
            auth: Default::default(),
        },
        tx,
    );

    let (invite, from) = recv_text(&trunk_sock).await;
    assert!(
        invite.starts_with("INVITE sip:+15551234@carrier.example SIP/2.0\r\n"),
        "{invite}"
    );
    let via = header(&invite, "Via").unwrap();
    assert!(
        via.starts_with(&format!("SIP/2.0/UDP 203.0.113.7:{port}")),
        "{via}"
    );
    let contact = header(&invite, "Contact").unwrap();
    assert_eq!(contact, format!("<sip:gw@203.0.113.7:{port}>"));
    let from_hdr = header(&invite, "From").unwrap();
    assert!(from_hdr.contains("<sip:gw@carrier.example>"), "{from_hdr}");
    assert!(!from_hdr.contains('\r'));
    assert_eq!(
        header(&invite, "X-Gangway-Call-ID"),
        Some("abc-123X-Injected:2")
    );
    assert!(
        !invite.split("\r\n").any(|l| l.starts_with("X-Injected")),
        "{invite}"
    );
    assert_eq!(header(&invite, "User-Agent"), Some("Gangway-test/0.1"));
    assert!(!header(&invite, "Call-ID").unwrap().contains('@'));
    assert!(invite.ends_with(&offer), "{invite}");
    // The trunk is a preloaded loose route, so CANCEL follows the INVITE there.
    let route = header(&invite, "Route").expect("Route to the trunk");
    assert!(
        route.starts_with("<sip:127.0.0.1:") && route.ends_with(";lr>"),
        "{route}"
    );
    // `SipConfig::prack`: reliable provisionals are welcome.
    assert_eq!(header(&invite, "Supported"), Some("100rel"));
    // RFC 4028 session timers: `SipConfig::session_expires` and our Min-SE.
    assert!(invite.contains("\r\nSupported: timer\r\n"), "{invite}");
    assert_eq!(header(&invite, "Session-Expires"), Some("1800"));
    assert_eq!(header(&invite, "Min-SE"), Some("90"));
    // Nothing but the headers we expect.
    let names: Vec<String> = invite
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .split("\r\n")
        .skip(1)
        .map(|l| l.split(':').next().unwrap().trim().to_ascii_lowercase())
        .collect();
    for name in &names {
        assert!(
            [
                "via",
                "route",
                "call-id",
                "from",
                "to",
                "cseq",
                "max-forwards",
                "user-agent",
                "contact",
                "content-type",
                "allow",
                "supported",
                "session-expires",
                "min-se",
                "x-gangway-call-id",
                "content-length"
            ]
            .contains(&name.as_str()),
            "unexpected header {name} in {invite}"
        );
    }

    // Ring with early media, then reject: 183 + SDP, then 603.
    let early_sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 8\r\n";
    let mut ringing = response_to(&invite, "183 Session Progress", "t1");
    ringing = ringing.replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Contact: <sip:trunk@127.0.0.1:{trunk_port}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{early_sdp}",
            early_sdp.len()
        ),
    );
    trunk_sock.send_to(ringing.as_bytes(), from).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        (
            77,
            SipEvent::Provisional {
                status: 183,
                sdp: Some(early_sdp.to_string())
            }
        )
    );

    let reject = response_to(&invite, "603 Nope", "t1");
    trunk_sock.send_to(reject.as_bytes(), from).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        (
            77,
            SipEvent::Failed {
                status: 603,
                reason: "Nope".into()
            }
        )
    );
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, (77, SipEvent::Ended));
    // The transaction ACKs the 603.
    let (ack, _) = recv_text(&trunk_sock).await;
    assert!(ack.starts_with("ACK "), "{ack}");
    service.stop().await;
}

fn request(method: &str, port: u16, to_tag: Option<&str>, cseq: u32) -> String {
    let to = match to_tag {
        Some(tag) => format!("<sip:gw@127.0.0.1>;tag={tag}"),
        None => "<sip:gw@127.0.0.1>".to_string(),
    };
    format!(
        "{method} sip:gw@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{method}-{cseq}\r\n\
         From: <sip:probe@127.0.0.1>;tag=probe{cseq}\r\n\
         To: {to}\r\n\
         Call-ID: probe-{method}-{cseq}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:probe@127.0.0.1:{port}>\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[tokio::test]
async fn out_of_dialog_requests() {
    let service = start(None).await;
    let target = service.local_addr();
    let sock = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let port = sock.local_addr().unwrap().port();

    // Garbage first: ignored, no crash.
    for junk in [
        &b"\x00\x01\x02garbage"[..],
        b"INVITE\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nCSeq: nope\r\n\r\n",
        &[0xff; 1500][..],
    ] {
        sock.send_to(junk, target).await.unwrap();
    }

    let cases = [
        ("OPTIONS", None, "SIP/2.0 200"),
        ("INVITE", None, "SIP/2.0 480"),
        ("BYE", Some("nope"), "SIP/2.0 481"),
        ("INFO", Some("nope"), "SIP/2.0 481"),
        ("INVITE", Some("nope"), "SIP/2.0 481"),
        ("REGISTER", None, "SIP/2.0 405"),
        ("SUBSCRIBE", None, "SIP/2.0 405"),
    ];
    for (i, (method, tag, expected)) in cases.into_iter().enumerate() {
        let req = request(method, port, tag, i as u32 + 1);
        sock.send_to(req.as_bytes(), target).await.unwrap();
        let (resp, _) = recv_text(&sock).await;
        assert!(resp.starts_with(expected), "{method}: {resp}");
        if method == "OPTIONS" {
            assert!(header(&resp, "Allow").unwrap().contains("INVITE"), "{resp}");
        }
        if method == "INVITE" && tag.is_none() {
            // Acknowledge the 480 so the server transaction completes.
            let to = header(&resp, "To").unwrap();
            let ack = req
                .replacen("INVITE sip:", "ACK sip:", 1)
                .replace(
                    &format!("CSeq: {} INVITE", i + 1),
                    &format!("CSeq: {} ACK", i + 1),
                )
                .replace("To: <sip:gw@127.0.0.1>", &format!("To: {to}"));
            sock.send_to(ack.as_bytes(), target).await.unwrap();
        }
    }

    // Another SIP version gets 505 in ours, not an answer in its own.
    let req = request("OPTIONS", port, None, 99).replacen(" SIP/2.0\r\n", " SIP/3.0\r\n", 1);
    sock.send_to(req.as_bytes(), target).await.unwrap();
    let (resp, _) = recv_text(&sock).await;
    assert!(resp.starts_with("SIP/2.0 505"), "{resp}");
    service.stop().await;
}

#[tokio::test]
async fn config_errors() {
    let err = SipService::start(
        SipConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            public_ip: None,
            user_agent: "x".into(),
            prack: true,
            session_expires: 1800,
            max_calls_per_second: 0,
            tcp: Default::default(),
        },
        SipMetrics::default(),
    )
    .await
    .err()
    .expect("unspecified listen without public_ip must fail");
    assert!(matches!(err, SipError::Config(_)), "{err}");

    // Port already taken.
    let taken = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let err = SipService::start(
        SipConfig {
            listen: taken.local_addr().unwrap(),
            public_ip: None,
            user_agent: "x".into(),
            prack: true,
            session_expires: 1800,
            max_calls_per_second: 0,
            tcp: Default::default(),
        },
        SipMetrics::default(),
    )
    .await
    .err()
    .expect("busy port must fail");
    assert!(matches!(err, SipError::Bind { .. }), "{err}");
}

#[tokio::test]
async fn invalid_call_data_fails_locally() {
    let service = start(None).await;
    let (tx, mut rx) = channel(64);
    let _call = service.place_call(
        OutboundCall {
            key: 9,
            trunk: Trunk {
                host: "127.0.0.1".into(),
                port: 5060,
                transport: Transport::Udp,
                domain: "pbx.test".into(),
                username: None,
                password: None,
            },
            request_uri: "not a uri".into(),
            from_user: "gw".into(),
            from_display: None,
            sdp_offer: sdp::offer(LOCALHOST, 4000, &[G711::Pcmu], 101, 1),
            correlation_id: "bad".into(),
            auth: Default::default(),
        },
        tx,
    );
    match rx.recv().await.unwrap() {
        (9, SipEvent::Failed { status: 500, .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(rx.recv().await.unwrap(), (9, SipEvent::Ended));

    // After stop, calls fail at once with 503.
    service.stop().await;
    let (tx, mut rx) = channel(64);
    let _call = service.place_call(
        OutboundCall {
            key: 10,
            trunk: Trunk {
                host: "127.0.0.1".into(),
                port: 5060,
                transport: Transport::Udp,
                domain: "pbx.test".into(),
                username: None,
                password: None,
            },
            request_uri: "sip:1@127.0.0.1".into(),
            from_user: "gw".into(),
            from_display: None,
            sdp_offer: String::new(),
            correlation_id: "late".into(),
            auth: Default::default(),
        },
        tx,
    );
    match rx.recv().await.unwrap() {
        (10, SipEvent::Failed { status: 503, .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(rx.recv().await.unwrap(), (10, SipEvent::Ended));
}

#[tokio::test]
async fn answer_without_sdp_is_refused_with_bye() {
    let service = start(None).await;
    let trunk_sock = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let trunk_port = trunk_sock.local_addr().unwrap().port();
    let (tx, mut rx) = channel(64);
    let _call = service.place_call(
        OutboundCall {
            key: 5,
            trunk: Trunk {
                host: "127.0.0.1".into(),
                port: trunk_port,
                transport: Transport::Udp,
                domain: "pbx.test".into(),
                username: None,
                password: None,
            },
            request_uri: format!("sip:200@127.0.0.1:{trunk_port}"),
            from_user: "gw".into(),
            from_display: None,
            sdp_offer: sdp::offer(LOCALHOST, 4000, &[G711::Pcmu], 101, 1),
            correlation_id: "nosdp".into(),
            auth: Default::default(),
        },
        tx,
    );
    let (invite, from) = recv_text(&trunk_sock).await;
    let ok = response_to(&invite, "200 OK", "t9").replace(
        "Content-Length: 0",
        &format!("Contact: <sip:trunk@127.0.0.1:{trunk_port}>\r\nContent-Length: 0"),
    );
    trunk_sock.send_to(ok.as_bytes(), from).await.unwrap();

    assert_eq!(
        next(&mut rx).await,
        (
            5,
            SipEvent::Failed {
                status: 488,
                reason: "2xx without SDP answer".into()
            }
        )
    );
    // ACK for the 2xx, then our BYE.
    let mut got_bye = false;
    for _ in 0..4 {
        let (msg, from) = recv_text(&trunk_sock).await;
        if msg.starts_with("BYE ") {
            let ok = response_to(&msg, "200 OK", "t9");
            trunk_sock.send_to(ok.as_bytes(), from).await.unwrap();
            got_bye = true;
            break;
        }
        assert!(
            msg.starts_with("ACK ") || msg.starts_with("SIP/2.0 200"),
            "{msg}"
        );
    }
    assert!(got_bye, "no BYE after a 2xx without SDP");
    assert_eq!(next(&mut rx).await, (5, SipEvent::Ended));
    assert_eq!(service.open_dialogs(), 0);
    service.stop().await;
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<(u64, SipEvent)>) -> (u64, SipEvent) {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("event in time")
        .expect("channel open")
}

#[tokio::test]
async fn tcp_listener_answers_options() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let service = start(None).await;
    // The TCP listener starts with the endpoint; give it a moment.
    let mut stream = None;
    for _ in 0..50 {
        match tokio::net::TcpStream::connect(service.local_addr()).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut stream = stream.expect("TCP listener on the SIP port");
    let port = stream.local_addr().unwrap().port();
    let req = request("OPTIONS", port, None, 1).replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    service.stop().await;
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SipService>();
    check::<gangway_sip::SipCall>();
    check::<SipEvent>();
}

/// RFC 4028 §7.4: a 422 with `Min-SE` is answered once with a new INVITE
/// asking for that interval; the caller only sees how that one ends.
#[tokio::test]
async fn session_interval_too_small_is_retried_once_with_its_min_se() {
    let service = start(None).await;
    let trunk_sock = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let trunk_port = trunk_sock.local_addr().unwrap().port();
    let (tx, mut rx) = channel(64);
    let _call = service.place_call(
        OutboundCall {
            key: 6,
            trunk: Trunk {
                host: "127.0.0.1".into(),
                port: trunk_port,
                transport: Transport::Udp,
                domain: "pbx.test".into(),
                username: None,
                password: None,
            },
            request_uri: format!("sip:422@127.0.0.1:{trunk_port}"),
            from_user: "gw".into(),
            from_display: None,
            sdp_offer: sdp::offer(LOCALHOST, 4000, &[G711::Pcmu], 101, 1),
            correlation_id: "min-se".into(),
            auth: Default::default(),
        },
        tx,
    );
    let (invite, from) = recv_text(&trunk_sock).await;
    assert_eq!(header(&invite, "Session-Expires"), Some("1800"));
    assert_eq!(header(&invite, "Min-SE"), Some("90"));
    let too_small = response_to(&invite, "422 Session Interval Too Small", "t1")
        .replace("Content-Length: 0", "Min-SE: 3600\r\nContent-Length: 0");
    trunk_sock
        .send_to(too_small.as_bytes(), from)
        .await
        .unwrap();

    // The 422 is ACKed, then a second INVITE (a new call) asks for 3600 s.
    let mut second = None;
    for _ in 0..4 {
        let (msg, from) = recv_text(&trunk_sock).await;
        if msg.starts_with("INVITE ") {
            second = Some((msg, from));
            break;
        }
        assert!(msg.starts_with("ACK "), "{msg}");
    }
    let (retry, from) = second.expect("the INVITE is sent again");
    assert_eq!(header(&retry, "Session-Expires"), Some("3600"), "{retry}");
    assert_eq!(header(&retry, "Min-SE"), Some("3600"), "{retry}");
    assert_ne!(header(&retry, "Call-ID"), header(&invite, "Call-ID"));

    // A second 422 is not retried: it ends the call.
    let again = response_to(&retry, "422 Session Interval Too Small", "t2")
        .replace("Content-Length: 0", "Min-SE: 7200\r\nContent-Length: 0");
    trunk_sock.send_to(again.as_bytes(), from).await.unwrap();
    assert_eq!(
        next(&mut rx).await,
        (
            6,
            SipEvent::Failed {
                status: 422,
                reason: "Session Interval Too Small".into()
            }
        )
    );
    assert_eq!(next(&mut rx).await, (6, SipEvent::Ended));
    assert_eq!(service.open_dialogs(), 0);
    service.stop().await;
}

/// RFC 4028 §9: an inbound INVITE asking for less than our 90 s minimum
/// gets 422 with `Min-SE: 90`, before anyone is asked to take the call.
#[tokio::test]
async fn inbound_session_interval_below_90_s_gets_422() {
    let service = start(None).await;
    let (calls, mut incoming) = channel(64);
    service.accept_inbound(vec!["127.0.0.1/32".parse().unwrap()], calls);
    let target = service.local_addr();
    let sock = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let invite = request("INVITE", port, None, 1).replace(
        "Content-Length: 0",
        "Supported: timer\r\nSession-Expires: 60;refresher=uac\r\nContent-Length: 0",
    );
    sock.send_to(invite.as_bytes(), target).await.unwrap();
    let mut answer = None;
    for _ in 0..3 {
        let (resp, _) = recv_text(&sock).await;
        if !resp.starts_with("SIP/2.0 100") {
            answer = Some(resp);
            break;
        }
    }
    let answer = answer.expect("a final response");
    assert!(answer.starts_with("SIP/2.0 422"), "{answer}");
    assert_eq!(header(&answer, "Min-SE"), Some("90"), "{answer}");
    assert!(incoming.try_recv().is_err(), "no call was offered");
    service.stop().await;
}

/// A request inside a live inbound dialog from an address outside the
/// allow-list is refused (403, the call goes on); the same request from
/// the caller's address is served.
#[tokio::test]
async fn in_dialog_requests_are_screened_by_source() {
    let service = start(None).await;
    let (calls, mut incoming) = channel(64);
    service.accept_inbound(vec!["127.0.0.1/32".parse().unwrap()], calls);
    let target = service.local_addr();
    let sock = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";
    let invite = request("INVITE", port, None, 1).replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
            offer.len()
        ),
    );
    sock.send_to(invite.as_bytes(), target).await.unwrap();
    let call = tokio::time::timeout(Duration::from_secs(5), incoming.recv())
        .await
        .expect("the INVITE is offered")
        .unwrap();
    let (events, mut rx) = channel(64);
    call.handle.route_events(9, events);
    let answer = offer.replace("40000", "40002");
    call.handle.answer(answer);
    let ok = loop {
        let (resp, _) = recv_text(&sock).await;
        if resp.starts_with("SIP/2.0 200") {
            break resp;
        }
    };
    let to = header(&ok, "To").unwrap().to_string();
    let ack = request("ACK", port, None, 1).replace("To: <sip:gw@127.0.0.1>", &format!("To: {to}"));
    let ack = ack.replace("Call-ID: probe-ACK-1", "Call-ID: probe-INVITE-1");
    sock.send_to(ack.as_bytes(), target).await.unwrap();
    let (_, answered) = next(&mut rx).await;
    assert!(
        matches!(answered, SipEvent::Answered { .. }),
        "{answered:?}"
    );

    let bye = request("BYE", port, None, 2)
        .replace("To: <sip:gw@127.0.0.1>", &format!("To: {to}"))
        .replace("Call-ID: probe-BYE-2", "Call-ID: probe-INVITE-1")
        .replace("tag=probe2", "tag=probe1");
    let forger = UdpSocket::bind(("127.0.0.2", 0)).await.unwrap();
    let forged = bye
        .replace(
            &format!("127.0.0.1:{port};branch"),
            &format!("{};branch", forger.local_addr().unwrap()),
        )
        .replace("z9hG4bK-BYE-2", "z9hG4bK-forged");
    forger.send_to(forged.as_bytes(), target).await.unwrap();
    let (resp, _) = recv_text(&forger).await;
    assert!(resp.starts_with("SIP/2.0 403"), "{resp}");
    assert!(rx.try_recv().is_err(), "the call goes on");

    sock.send_to(bye.as_bytes(), target).await.unwrap();
    let (resp, _) = recv_text(&sock).await;
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    assert_eq!(next(&mut rx).await, (9, SipEvent::RemoteHangup));
    service.stop().await;
}

/// A source outside the allow-list that floods is answered for its first
/// ten requests in a second and then dropped unanswered (banned), while
/// the allowed address is served as ever.
#[tokio::test]
async fn a_flooding_outside_source_is_banned() {
    let service = start(None).await;
    let (calls, _incoming) = channel(64);
    service.accept_inbound(vec!["127.0.0.1/32".parse().unwrap()], calls);
    let target = service.local_addr();
    let flood = UdpSocket::bind(("127.0.0.2", 0)).await.unwrap();
    let flood_port = flood.local_addr().unwrap().port();
    for i in 0..40 {
        let req = request("OPTIONS", flood_port, None, i + 1).replace("127.0.0.1:", "127.0.0.2:");
        flood.send_to(req.as_bytes(), target).await.unwrap();
    }
    let mut answered = 0;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_500);
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, flood.recv_from(&mut buf)).await {
        answered += 1;
    }
    assert!(
        (1..=10).contains(&answered),
        "the flood got at most ten answers: {answered}"
    );

    let sock = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let port = sock.local_addr().unwrap().port();
    for i in 0..20 {
        let req = request("OPTIONS", port, None, 100 + i);
        sock.send_to(req.as_bytes(), target).await.unwrap();
        let (resp, _) = recv_text(&sock).await;
        assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    }
    service.stop().await;
}
