//! Registration and inbound calls against real peers: kamailio 5.6 as
//! registrar (digest auth), baresip calling a browser user through it, and
//! sipp sending the awkward INVITEs straight to the gateway. The browser
//! side is the str0m client over the JSON API; audio is checked both ways
//! by tone (Goertzel per 20 ms frame, with negative controls).
//!
//! kamailio, baresip and sipp must be installed (`scripts/deps.sh test`);
//! a missing one fails the test, it is never skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gangway_tests::api_client::ApiClient;
use gangway_tests::audio::tone_coverage;
use gangway_tests::gateway::{
    assert_no_leftovers, metric_or_zero, start_sip_gateway, token, wait_metric,
};
use gangway_tests::kamailio::{start_kamailio, Kamailio};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::{registered_baresip, Baresip, Sipp};
use serde_json::{json, Value};

const SETTLE: Duration = Duration::from_secs(5);
const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
const DOMAIN: &str = "pbx.test";
const USERS: &[(&str, &str)] = &[("alice", "alicepw"), ("bob", "bobpw")];
const CLIENT_TONE_HZ: f64 = 1000.0;
const BOB_TONE_HZ: f64 = 440.0;
const TALK_SECONDS: f64 = 3.0;
/// Short, so the test sees the un-REGISTER; production default is 10 s.
const GRACE_SECS: u64 = 2;

/// A gateway whose trunk and registrar is kamailio.
async fn gateway_to(kam: &Kamailio, f: impl FnOnce(&mut gangway::Config)) -> gangway::Gateway {
    start_sip_gateway(kam.port(), DOMAIN, |c| {
        c.sip.registrar.unregister_grace_secs = GRACE_SECS;
        c.sip.registrar.expires_secs = 60;
        f(c);
    })
    .await
}

/// Sends `register` and returns the reply (`registered` or `registration_failed`).
async fn register(api: &mut ApiClient, user: &str, password: &str) -> Value {
    api.send(json!({"type": "register", "user": user, "password": password}))
        .await;
    api.recv().await
}

async fn signed_in_alice(gw: &gangway::Gateway) -> ApiClient {
    let mut api = ApiClient::connect(gw).await;
    let reply = register(&mut api, "alice", "alicepw").await;
    assert_eq!(reply["type"], "registered", "{reply}");
    assert_eq!(reply["user"], "alice");
    assert!(reply["expires"].as_u64().unwrap() > 0, "{reply}");
    api
}

async fn baresip_event(peer: &Arc<Baresip>, kind: &'static str) -> Result<Value, String> {
    let peer = peer.clone();
    tokio::task::spawn_blocking(move || peer.wait_for_event(kind, SIGNALING_TIMEOUT))
        .await
        .expect("baresip wait task")
}

/// The acceptance ladder: alice signs in twice (two tabs), baresip calls
/// her through kamailio, both tabs ring, the first to accept talks (tones
/// both ways), the other hears `answered_elsewhere`; bob hangs up; when
/// both tabs close, kamailio drops the binding after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_calls_alice_through_kamailio_and_the_first_tab_to_accept_wins() {
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = gateway_to(&kam, |_| {}).await;

    // A wrong password is refused by the registrar itself.
    let mut wrong = ApiClient::connect(&gw).await;
    let reply = register(&mut wrong, "alice", "nope").await;
    assert_eq!(reply["type"], "registration_failed", "{reply}");
    assert!(
        matches!(reply["code"].as_u64(), Some(401 | 403)),
        "the registrar's status: {reply}"
    );
    assert!(
        kam.location().unwrap().iter().all(|r| r.aor != "alice"),
        "no binding for a refused sign-in"
    );
    wrong.close().await;

    let mut tab1 = signed_in_alice(&gw).await;
    let mut tab2 = signed_in_alice(&gw).await;
    let bindings = kam
        .wait_registered("alice", SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let sip_port = format!(":{}", gw.sip_addr().unwrap().port());
    println!("kamailio location for alice: {bindings:?}");
    assert_eq!(bindings.len(), 1, "one Contact per user per instance");
    assert!(
        bindings[0].contact.contains(&sip_port),
        "alice's contact is the gateway ({sip_port}): {bindings:?}"
    );
    assert_eq!(
        metric_or_zero(&gw, "gangway_registrations_active").await,
        1.0
    );

    let bob = registered_baresip(
        kam.registrar_uri(),
        "bob",
        "bobpw",
        BOB_TONE_HZ,
        SIGNALING_TIMEOUT,
    )
    .await;
    bob.dial(&format!("sip:alice@127.0.0.1:{}", kam.port()))
        .unwrap();

    let ring1 = tab1.expect("incoming").await;
    let ring2 = tab2.expect("incoming").await;
    println!("tab1: {ring1}\ntab2: {ring2}");
    let call = ring1["call"].as_str().unwrap().to_string();
    assert_eq!(ring2["call"], ring1["call"], "one call, rung on both tabs");
    assert!(
        ring1["from"].as_str().unwrap().starts_with("sip:bob@"),
        "{ring1}"
    );
    assert!(ring1["to"].as_str().unwrap().contains("alice"), "{ring1}");
    baresip_event(&bob, "CALL_RINGING")
        .await
        .unwrap_or_else(|e| panic!("bob hears ringing (180): {e}"));

    // tab1 answers; tab2 is told someone else did.
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    tab1.send(json!({"type": "accept", "call": call, "sdp": offer}))
        .await;
    let answer = tab1.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    let gone = tab2.expect("ended").await;
    assert_eq!(gone["reason"], "answered_elsewhere", "{gone}");
    assert_eq!(gone["call"], ring1["call"]);
    assert!(
        client.connect(SIGNALING_TIMEOUT).await,
        "WebRTC leg connects"
    );
    let answered = tab1.expect("answered").await;
    assert_eq!(answered["call"], ring1["call"]);
    baresip_event(&bob, "CALL_ESTABLISHED")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // A late accept from tab2 is refused, typed.
    let (_late, late_offer) = RtcClient::new(ClientCodec::Pcmu).await;
    tab2.send(json!({"type": "accept", "call": call, "sdp": late_offer}))
        .await;
    let refused = tab2.expect("error").await;
    assert_eq!(refused["code"], "unknown_call", "{refused}");

    let tones = client
        .send_pcmu_tone(CLIENT_TONE_HZ, TALK_SECONDS, Duration::from_millis(200))
        .await;
    let heard_440 = tone_coverage(&tones.received, 8000, BOB_TONE_HZ);
    let heard_1000 = tone_coverage(&tones.received, 8000, CLIENT_TONE_HZ);
    println!(
        "alice received {} frames: 440 Hz {heard_440:.3}, 1000 Hz {heard_1000:.3}",
        tones.received_frames
    );
    assert!(heard_440 >= 0.9, "alice heard bob: {heard_440:.3}");
    assert!(heard_1000 < 0.1, "negative control: {heard_1000:.3}");

    // bob hangs up.
    bob.hangup().unwrap();
    let ended = tab1.expect("ended").await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    let (bob_heard, rate) = bob.recorded_audio();
    let bob_1000 = tone_coverage(&bob_heard, rate, CLIENT_TONE_HZ);
    let bob_440 = tone_coverage(&bob_heard, rate, BOB_TONE_HZ);
    println!("bob heard 1000 Hz {bob_1000:.3}, 440 Hz {bob_440:.3}");
    assert!(bob_1000 >= 0.9, "bob heard alice: {bob_1000:.3}");
    assert!(bob_440 < 0.1, "negative control: {bob_440:.3}");
    assert_eq!(
        metric_or_zero(&gw, "gangway_inbound_calls_total{outcome=\"answered\"}").await,
        1.0
    );
    assert_no_leftovers(&gw).await;

    // Both tabs close: the binding stays through the grace period, then goes.
    tab1.close().await;
    tab2.close().await;
    let closed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        kam.location().unwrap().iter().any(|r| r.aor == "alice"),
        "still registered within the grace period (a page reload keeps it)"
    );
    let deadline = closed_at + Duration::from_secs(GRACE_SECS + 5);
    while kam.location().unwrap().iter().any(|r| r.aor == "alice") {
        assert!(
            Instant::now() < deadline,
            "alice unregistered within the grace period: {:?}",
            kam.location()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "unregistered {:?} after the last tab closed",
        closed_at.elapsed()
    );
    assert_eq!(
        wait_metric(&gw, "gangway_registrations_active", 0.0, SETTLE).await,
        0.0
    );
    gw.shutdown(Duration::ZERO).await;
}

/// sipp straight at the gateway: an unknown user (404), a source outside
/// `sip.inbound_allow` (403), a caller who cancels while alice's tab rings
/// (`ended`/`cancelled`), a tab that rejects (486), and an offerless INVITE
/// that is answered with our offer and carries audio both ways, with a
/// second call ringing (call waiting) while it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_inbound_edge_cases() {
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = gateway_to(&kam, |c| c.sip.inbound_allow = vec!["127.0.0.1/32".into()]).await;
    let sip = gw.sip_addr().unwrap();
    let mut tab = signed_in_alice(&gw).await;

    // Unknown user: 404, nothing rings.
    let mut sipp = Sipp::uac("uac_inbound_refused.xml", sip, &["-s", "nobody"]);
    sipp.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sipp.messages().contains("SIP/2.0 404"),
        "{}",
        sipp.messages()
    );

    // From 127.0.0.2, which is not allowed: 403 and a metric.
    let mut sipp = Sipp::uac(
        "uac_inbound_refused.xml",
        sip,
        &["-s", "alice", "-i", "127.0.0.2", "-mi", "127.0.0.2"],
    );
    sipp.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sipp.messages().contains("SIP/2.0 403"),
        "{}",
        sipp.messages()
    );
    assert_eq!(
        metric_or_zero(
            &gw,
            "gangway_sip_inbound_rejected_total{reason=\"forbidden_source\"}"
        )
        .await,
        1.0
    );
    // Its INVITE, never ACKed, draws one 403: no retransmissions towards
    // an address that may be spoofed (Timer G would send ~11).
    assert_eq!(responses_to_unacked_invite(sip, "127.0.0.2:0").await, 1);
    tab.expect_silence(Duration::from_millis(300)).await;

    // The caller gives up while alice's tab rings.
    let mut sipp = Sipp::uac("uac_cancel.xml", sip, &["-s", "alice", "-d", "1000"]);
    let ring = tab.expect("incoming").await;
    assert!(
        ring["from"].as_str().unwrap().starts_with("sip:sipp@"),
        "{ring}"
    );
    let ended = tab.expect("ended").await;
    assert_eq!(
        (ended["reason"].as_str(), ended["code"].as_u64()),
        (Some("cancelled"), Some(487)),
        "{ended}"
    );
    sipp.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));

    // The tab rejects: 486 to the caller.
    let mut sipp = Sipp::uac("uac_expect_busy.xml", sip, &["-s", "alice"]);
    let ring = tab.expect("incoming").await;
    tab.send(json!({"type": "reject", "call": ring["call"]}))
        .await;
    let ended = tab.expect("ended").await;
    assert_eq!(
        (ended["reason"].as_str(), ended["code"].as_u64()),
        (Some("rejected"), Some(486)),
        "{ended}"
    );
    sipp.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));

    // Offerless INVITE: our 200 carries the offer, sipp's ACK the answer;
    // sipp echoes our RTP, so the tone coming back proves both directions.
    let mut sipp = Sipp::uac(
        "uac_offerless.xml",
        sip,
        &["-s", "alice", "-d", "6000", "-rtp_echo"],
    );
    let ring = match tab.try_recv(SIGNALING_TIMEOUT).await {
        Ok(m) if m["type"] == "incoming" => m,
        other => panic!(
            "expected `incoming` for the offerless INVITE, got {other:?}\n{}\n{}",
            sipp.messages(),
            sipp.errors()
        ),
    };
    assert_eq!(ring["display"], "Offerless", "{ring}");
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    tab.send(json!({"type": "accept", "call": ring["call"], "sdp": offer}))
        .await;
    let answer = tab.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        client.connect(SIGNALING_TIMEOUT).await,
        "WebRTC leg connects"
    );
    tab.expect("answered").await;

    // Call waiting: a second call rings the same tab while this one is up;
    // the tab turns it down and the first call carries on.
    let mut waiting = Sipp::uac("uac_expect_busy.xml", sip, &["-s", "alice"]);
    let second = tab.expect("incoming").await;
    assert_ne!(second["call"], ring["call"], "{second}");
    tab.send(json!({"type": "reject", "call": second["call"]}))
        .await;
    let ended = tab.expect("ended").await;
    assert_eq!(
        (ended["call"].clone(), ended["reason"].as_str()),
        (second["call"].clone(), Some("rejected")),
        "{ended}"
    );
    waiting
        .wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));

    let tones = client
        .send_pcmu_tone(CLIENT_TONE_HZ, 2.0, Duration::from_millis(300))
        .await;
    let echoed = tone_coverage(&tones.received, 8000, CLIENT_TONE_HZ);
    let control = tone_coverage(&tones.received, 8000, BOB_TONE_HZ);
    println!("offerless call: 1000 Hz echoed in {echoed:.3} of frames, 440 Hz {control:.3}");
    assert!(
        echoed >= 0.85,
        "our tone came back through sipp: {echoed:.3}"
    );
    assert!(control < 0.1, "negative control: {control:.3}");
    let ended = tab.expect("ended").await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    sipp.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));

    for (outcome, n) in [
        ("not_found", 1.0),
        ("cancelled", 1.0),
        ("rejected", 2.0),
        ("answered", 1.0),
    ] {
        let series = format!("gangway_inbound_calls_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric_or_zero(&gw, &series).await, n, "{series}");
    }
    assert_no_leftovers(&gw).await;
    tab.close().await;
    gw.shutdown(Duration::ZERO).await;
}

/// Closing the only tab while a call rings refuses it (480): nobody is
/// left to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringing_call_is_refused_when_the_last_tab_closes() {
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = gateway_to(&kam, |_| {}).await;
    let sip = gw.sip_addr().unwrap();
    let mut tab = signed_in_alice(&gw).await;
    let mut sipp = Sipp::uac("uac_inbound_refused.xml", sip, &["-s", "alice"]);
    tab.expect("incoming").await;
    tab.close().await;
    sipp.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sipp.messages().contains("SIP/2.0 480"),
        "{}",
        sipp.messages()
    );
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

const TOKEN_SECRET: &str = "gangway-test-token-secret-0123456789";

/// A token names the user and the gateway brings the password; bad tokens
/// and wrong passwords count as failures, and past the limit `register` is
/// refused without anything reaching the PBX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_sign_in_and_failed_attempts_are_rate_limited() {
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = gateway_to(&kam, |c| {
        c.auth.token_secret = Some(TOKEN_SECRET.into());
        c.auth.users.insert("alice".into(), "alicepw".into());
        c.auth.max_failures = 2;
    })
    .await;

    let mut api = ApiClient::connect(&gw).await;
    api.send(json!({"type": "register", "token": token("alice", TOKEN_SECRET)}))
        .await;
    let reply = api.recv().await;
    assert_eq!(reply["type"], "registered", "{reply}");
    assert_eq!(reply["user"], "alice");
    kam.wait_registered("alice", SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));

    // Failure 1: a token signed with another key.
    let mut other = ApiClient::connect(&gw).await;
    other
        .send(json!({"type": "register", "token": token("alice", "not-the-gateway-secret-0123456789")}))
        .await;
    let reply = other.recv().await;
    assert_eq!(reply["type"], "registration_failed", "{reply}");
    assert_eq!(
        reply["code"],
        Value::Null,
        "no SIP request was made: {reply}"
    );
    // Failure 2: a password that does not match alice's live registration.
    let reply = register(&mut other, "alice", "guess").await;
    assert_eq!(reply["type"], "registration_failed", "{reply}");
    assert_eq!(reply["code"], 403, "{reply}");
    // Now even the right password is refused until the window passes.
    let registers_before = kam.challenges(401, "REGISTER");
    let reply = register(&mut other, "alice", "alicepw").await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "{reply}"
    );
    assert_eq!(kam.challenges(401, "REGISTER"), registers_before);
    assert_eq!(
        metric_or_zero(&gw, "gangway_api_errors_total{code=\"rate_limited\"}").await,
        1.0
    );

    // The signed-in socket is unaffected; unregister signs it out.
    api.send(json!({"type": "unregister"})).await;
    let reply = api.expect("unregistered").await;
    assert_eq!(reply["user"], "alice");
    other.close().await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

/// Fifty sign-ins with wrong passwords at once from one address: only as
/// many reach the registrar as the failure limit allows, because attempts
/// in flight count; the others are refused at once with `rate_limited`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bad_sign_ins_is_held_to_the_failure_limit() {
    const BURST: usize = 50;
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = gateway_to(&kam, |c| c.auth.max_failures = 3).await;
    let mut sockets = Vec::new();
    for _ in 0..BURST {
        sockets.push(ApiClient::connect(&gw).await);
    }
    for (i, api) in sockets.iter_mut().enumerate() {
        api.send(json!({"type": "register", "user": format!("u{i}"), "password": "wrong"}))
            .await;
    }
    let (mut failed, mut limited) = (0, 0);
    for api in sockets.iter_mut() {
        let reply = api.recv().await;
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("registration_failed"), _) => failed += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("unexpected reply {reply}"),
        }
    }
    println!("{failed} sign-ins reached the registrar, {limited} were rate limited");
    assert!(
        failed <= 3,
        "at most max_failures attempts went out: {failed}"
    );
    assert_eq!(failed + limited, BURST);
    // Each attempt is a REGISTER and its digest retry, both refused.
    assert!(
        kam.challenges(401, "REGISTER") <= 2 * 3,
        "kamailio saw {} challenges",
        kam.challenges(401, "REGISTER")
    );
    for api in sockets {
        api.close().await;
    }
    gw.shutdown(Duration::ZERO).await;
}

/// Bad passwords for one user from many addresses at once, each address
/// within its own limit: the per-user count (`auth.max_failures_per_user`)
/// holds what reaches the registrar to that limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sign_ins_for_one_user_from_many_addresses_are_held_per_user() {
    const ADDRESSES: usize = 5;
    const EACH: usize = 3;
    const PER_USER: usize = 4;
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = gateway_to(&kam, |c| {
        c.auth.max_failures = EACH as u32;
        c.auth.max_failures_per_user = PER_USER as u32;
    })
    .await;
    let mut sockets = Vec::new();
    for a in 0..ADDRESSES {
        for _ in 0..EACH {
            sockets.push(ApiClient::connect_from(&gw, &format!("127.0.0.{}", a + 2)).await);
        }
    }
    for api in sockets.iter_mut() {
        api.send(json!({"type": "register", "user": "alice", "password": "wrong"}))
            .await;
    }
    let (mut failed, mut limited) = (0, 0);
    for api in sockets.iter_mut() {
        let reply = api.recv().await;
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("registration_failed"), _) => failed += 1,
            (Some("error"), Some("rate_limited")) => {
                assert!(
                    reply["message"].as_str().unwrap().contains("this user"),
                    "{reply}"
                );
                limited += 1
            }
            _ => panic!("unexpected reply {reply}"),
        }
    }
    println!("{failed} sign-ins for alice reached the registrar, {limited} were rate limited");
    assert!(
        failed <= PER_USER,
        "at most the per-user limit went out: {failed}"
    );
    assert_eq!(failed + limited, ADDRESSES * EACH);
    assert!(
        kam.challenges(401, "REGISTER") <= 2 * PER_USER,
        "kamailio saw {} challenges",
        kam.challenges(401, "REGISTER")
    );
    // Another user is not held by alice's failures.
    let mut bob = ApiClient::connect_from(&gw, "127.0.0.9").await;
    bob.send(json!({"type": "register", "user": "bob", "password": "wrong"}))
        .await;
    assert_eq!(bob.recv().await["type"], "registration_failed");
    for api in sockets {
        api.close().await;
    }
    gw.shutdown(Duration::ZERO).await;
}

/// Sends one INVITE from `from` to `gateway` and never ACKs; counts the
/// final responses that arrive within 2.5 s (Timer G would have
/// retransmitted a kept 403 at 0.5, 1.5 s).
async fn responses_to_unacked_invite(gateway: std::net::SocketAddr, from: &str) -> usize {
    let sock = tokio::net::UdpSocket::bind(from).await.unwrap();
    let local = sock.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:alice@{gateway} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bKreflect1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:scan@{local}>;tag=s1\r\n\
         To: <sip:alice@{gateway}>\r\nCall-ID: reflect-1@{local}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:scan@{local}>\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(invite.as_bytes(), gateway).await.unwrap();
    let mut finals = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2_500);
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.starts_with("SIP/2.0 4") || text.starts_with("SIP/2.0 5") {
            finals += 1;
        }
    }
    finals
}
