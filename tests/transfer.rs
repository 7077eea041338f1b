//! Transfers against real peers: kamailio as registrar and proxy, baresip
//! phones bob (440 Hz) and carol (700 Hz) registered with it, and the str0m
//! client over the JSON API (1000 Hz) calling bob through the gateway.
//! - bob transfers the browser to carol (REFER to the gateway): the gateway
//!   calls carol, swaps the SIP leg when she answers, and the browser, whose
//!   WebRTC leg never changes, hears carol instead of bob;
//! - the browser transfers bob to carol (API `transfer` → REFER to bob):
//!   bob calls carol, the NOTIFYs come back as `transfer_progress`, and the
//!   browser's call ends `transferred` while bob and carol talk.
//!
//! kamailio and baresip must be installed (`scripts/deps.sh test`); a
//! missing one fails the test, it is never skipped.

use std::sync::Arc;
use std::time::Duration;

use gangway_tests::api_client::ApiClient;
use gangway_tests::audio::tone_coverage;
use gangway_tests::gateway::{assert_no_leftovers, metric_or_zero, start_sip_gateway};
use gangway_tests::kamailio::{start_kamailio, Kamailio};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::{registered_baresip, Baresip, Sipp};
use serde_json::{json, Value};

const DOMAIN: &str = "pbx.test";
const USERS: &[(&str, &str)] = &[("gangway", "gwpw"), ("bob", "bobpw"), ("carol", "carolpw")];
const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_TONE_HZ: f64 = 1000.0;
const BOB_TONE_HZ: f64 = 440.0;
const CAROL_TONE_HZ: f64 = 700.0;
const LINGER: Duration = Duration::from_millis(300);

async fn setup() -> (Kamailio, gangway::Gateway, Arc<Baresip>, Arc<Baresip>) {
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = start_sip_gateway(kam.port(), DOMAIN, |c| {
        c.sip.trunk.username = Some("gangway".into());
        c.sip.trunk.password = Some("gwpw".into());
        // Our domain, and kamailio by address (a transfer target bob can reach).
        c.sip.trunk.allow = vec![
            format!(r"^sip:[a-z0-9]+@{}$", DOMAIN.replace('.', r"\.")),
            r"^sip:[a-z0-9]+@127\.0\.0\.1:[0-9]+$".into(),
        ];
    })
    .await;
    let bob = registered_baresip(
        kam.registrar_uri(),
        "bob",
        "bobpw",
        BOB_TONE_HZ,
        SIGNALING_TIMEOUT,
    )
    .await;
    let carol = registered_baresip(
        kam.registrar_uri(),
        "carol",
        "carolpw",
        CAROL_TONE_HZ,
        SIGNALING_TIMEOUT,
    )
    .await;
    (kam, gw, bob, carol)
}

async fn baresip_event(peer: &Arc<Baresip>, kind: &'static str) -> Value {
    let peer = peer.clone();
    tokio::task::spawn_blocking(move || peer.wait_for_event(kind, SIGNALING_TIMEOUT))
        .await
        .expect("baresip wait task")
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn baresip_command(peer: &Arc<Baresip>, command: &'static str, params: String) {
    let peer = peer.clone();
    tokio::task::spawn_blocking(move || peer.command(command, &params))
        .await
        .expect("baresip command task")
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The str0m client calls bob and checks it hears him.
async fn call_bob(gw: &gangway::Gateway, api: &mut ApiClient) -> RtcClient {
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("t1", "bob", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        client.connect(SIGNALING_TIMEOUT).await,
        "WebRTC leg connects"
    );
    loop {
        let m = api.recv().await;
        if m["type"] == "answered" {
            break;
        }
        assert_eq!(m["type"], "ringing", "{m}");
    }
    let talk = client.send_pcmu_tone(CLIENT_TONE_HZ, 2.0, LINGER).await;
    let bob = tone_coverage(&talk.received, 8000, BOB_TONE_HZ);
    println!("talking to bob: 440 Hz in {bob:.3} of frames");
    assert!(bob >= 0.85, "the browser hears bob: {bob:.3}");
    let _ = gw;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_transfers_the_browser_to_carol() {
    let (_kam, gw, bob, carol) = setup().await;
    let mut api = ApiClient::connect(&gw).await;
    let mut client = call_bob(&gw, &mut api).await;
    baresip_event(&bob, "CALL_ESTABLISHED").await;

    // bob REFERs the gateway to carol.
    baresip_command(&bob, "transfer", format!("sip:carol@{DOMAIN}")).await;
    let moved = api.expect("transferred").await;
    assert_eq!(moved["call"], "t1", "{moved}");
    assert_eq!(moved["to"], format!("sip:carol@{DOMAIN}"), "{moved}");
    baresip_event(&carol, "CALL_ESTABLISHED").await;
    // bob's part is over: he or the gateway ends his dialog.
    baresip_event(&bob, "CALL_CLOSED").await;

    // Same WebRTC leg, new far end: the browser now hears carol.
    let talk = client.send_pcmu_tone(CLIENT_TONE_HZ, 3.0, LINGER).await;
    let (heard_carol, heard_bob) = (
        tone_coverage(&talk.received, 8000, CAROL_TONE_HZ),
        tone_coverage(&talk.received, 8000, BOB_TONE_HZ),
    );
    println!("after the transfer: 700 Hz in {heard_carol:.3} of frames, 440 Hz {heard_bob:.3}");
    if heard_carol < 0.85 {
        println!("--- bob ---\n{}\n--- carol ---\n{}", bob.log(), carol.log());
    }
    assert!(
        heard_carol >= 0.85,
        "the browser hears carol: {heard_carol:.3}"
    );
    assert!(heard_bob < 0.1, "and no longer bob: {heard_bob:.3}");

    api.hangup("t1").await;
    assert_eq!(api.expect("ended").await["reason"], "hangup");
    baresip_event(&carol, "CALL_CLOSED").await;
    let (samples, rate) = carol.recorded_audio();
    let (tone, control) = (
        tone_coverage(&samples, rate, CLIENT_TONE_HZ),
        tone_coverage(&samples, rate, CAROL_TONE_HZ),
    );
    println!("carol heard 1000 Hz in {tone:.3} of frames, 700 Hz {control:.3}");
    assert!(tone >= 0.85, "carol hears the browser: {tone:.3}");
    assert!(control < 0.1, "negative control: {control:.3}");
    let series = "gangway_mid_call_events_total{event=\"transfer_in_completed\"}";
    assert_eq!(metric_or_zero(&gw, series).await, 1.0, "{series}");
    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_blind_transfers_bob_to_carol() {
    let (kam, gw, bob, carol) = setup().await;
    let mut api = ApiClient::connect(&gw).await;
    let _client = call_bob(&gw, &mut api).await;
    baresip_event(&bob, "CALL_ESTABLISHED").await;

    // Refused before anything goes out: not a destination we route.
    api.send(json!({"type": "transfer", "call": "t1", "to": "sip:carol@elsewhere.test"}))
        .await;
    assert_eq!(api.expect("error").await["code"], "invalid_message");

    // bob has no outbound proxy: the target must name kamailio itself.
    let target = format!("sip:carol@127.0.0.1:{}", kam.port());
    api.send(json!({"type": "transfer", "call": "t1", "to": target}))
        .await;
    let mut statuses = Vec::new();
    let ended = loop {
        let m = match api.try_recv(Duration::from_secs(15)).await {
            Ok(m) => m,
            Err(e) => panic!(
                "transfer stalled after {statuses:?}: {e:?}\n--- bob ---\n{}\n--- carol ---\n{}",
                bob.log(),
                carol.log()
            ),
        };
        match m["type"].as_str() {
            Some("transfer_progress") => {
                statuses.push((m["status"].as_u64().unwrap(), m["done"] == true))
            }
            Some("ended") => break m,
            _ => panic!("unexpected {m}"),
        }
    };
    println!("transfer progress: {statuses:?}");
    assert_eq!(
        statuses.first(),
        Some(&(202, false)),
        "bob accepted the REFER"
    );
    assert!(
        statuses
            .iter()
            .all(|(s, done)| !done || (200..300).contains(s)),
        "no failure reported: {statuses:?}"
    );
    // baresip hangs up on us once it accepted, without waiting for carol.
    if ended["reason"] != "transferred" {
        println!("--- bob ---\n{}\n--- carol ---\n{}", bob.log(), carol.log());
    }
    assert_eq!(ended["reason"], "transferred", "{ended}");

    // bob and carol talk: carol hears bob.
    baresip_event(&carol, "CALL_ESTABLISHED").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    baresip_command(&carol, "hangup", String::new()).await;
    baresip_event(&carol, "CALL_CLOSED").await;
    let (samples, rate) = carol.recorded_audio();
    let (tone, control) = (
        tone_coverage(&samples, rate, BOB_TONE_HZ),
        tone_coverage(&samples, rate, CLIENT_TONE_HZ),
    );
    println!("carol heard 440 Hz in {tone:.3} of frames, 1000 Hz {control:.3}");
    assert!(tone >= 0.85, "carol hears bob: {tone:.3}");
    assert!(control < 0.1, "and not the browser: {control:.3}");
    let series = "gangway_mid_call_events_total{event=\"transfer_out_completed\"}";
    assert_eq!(metric_or_zero(&gw, series).await, 1.0, "{series}");
    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

/// An INVITE with Replaces (RFC 3891) naming the browser's call to sipp A
/// takes it over: sipp B's INVITE is answered at once (no ringing), A gets
/// BYE, the browser gets `transferred` and its same WebRTC leg now talks
/// to B (B's RTP echo returns its tone). Replaces for a dialog we do not
/// have gets 481.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_with_replaces_takes_over_the_call() {
    let mut a = Sipp::uas(
        "uas_answer_log_dialog.xml",
        0,
        &["-rtp_echo", "-trace_logs"],
    );
    let gw = start_sip_gateway(a.port(), "127.0.0.1", |c| {
        c.sip.inbound_allow = vec!["127.0.0.1/32".into()];
    })
    .await;
    let sip = gw.sip_addr().unwrap();
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("r1", "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        client.connect(SIGNALING_TIMEOUT).await,
        "WebRTC leg connects"
    );
    api.expect("answered").await;
    let talk = client.send_pcmu_tone(CLIENT_TONE_HZ, 1.5, LINGER).await;
    let echoed = tone_coverage(&talk.received, 8000, CLIENT_TONE_HZ);
    println!("A echoes the browser's tone in {echoed:.3} of frames");
    assert!(echoed >= 0.85, "talking to A first: {echoed:.3}");

    // A's view of the dialog: call-id, our tag, its tag.
    let log = a.action_log();
    let line = log
        .lines()
        .find_map(|l| l.split("DIALOG ").nth(1))
        .unwrap_or_else(|| panic!("sipp A logged no dialog id:\n{log}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (call_id, ours, theirs) = (fields[0], fields[1], fields[2]);

    // Naming a dialog we do not have: 481, nothing changes.
    let bogus = format!("{call_id};to-tag=not-ours;from-tag={theirs}");
    let mut stray = Sipp::uac(
        "uac_replaces.xml",
        sip,
        &["-s", "gangway", "-set", "replaces", &bogus],
    );
    assert!(
        stray.wait(SIGNALING_TIMEOUT).is_err(),
        "sipp's INVITE was refused"
    );
    assert!(
        stray.messages().contains("SIP/2.0 481"),
        "{}\n{}",
        stray.messages(),
        stray.errors()
    );

    let replaces = format!("{call_id};to-tag={ours};from-tag={theirs}");
    let mut b = Sipp::uac(
        "uac_replaces.xml",
        sip,
        &[
            "-s",
            "gangway",
            "-set",
            "replaces",
            &replaces,
            "-rtp_echo",
            "-d",
            "4000",
        ],
    );
    let moved = match api.try_recv(SIGNALING_TIMEOUT).await {
        Ok(m) if m["type"] == "transferred" => m,
        other => panic!(
            "expected `transferred`, got {other:?}\n{}\n{}",
            b.messages(),
            b.errors()
        ),
    };
    assert!(
        moved["to"].as_str().unwrap().starts_with("sip:sipp@"),
        "{moved}"
    );
    a.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("A gets its BYE: {e}"));

    // Only B is left to echo the tone.
    let talk = client.send_pcmu_tone(CLIENT_TONE_HZ, 2.0, LINGER).await;
    let echoed = tone_coverage(&talk.received, 8000, CLIENT_TONE_HZ);
    println!("B echoes the browser's tone in {echoed:.3} of frames");
    assert!(echoed >= 0.85, "the browser talks to B: {echoed:.3}");
    let ended = api.expect("ended").await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    b.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", b.messages()));
    for (series, n) in [
        (
            "gangway_mid_call_events_total{event=\"transfer_in_completed\"}",
            1.0,
        ),
        (
            "gangway_sip_inbound_rejected_total{reason=\"replaces_no_dialog\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric_or_zero(&gw, series).await, n, "{series}");
    }
    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

/// Attended transfer between two of the browser's calls: alice (signed in
/// through kamailio) talks to sipp A (her outbound call) and takes a call
/// from sipp B; `transfer {call: A, replaces: B}` REFERs A to B's Contact
/// with a Replaces naming B's dialog from B's side. A's NOTIFY 200 ends A
/// as `transferred`; B's BYE (its dialog replaced) ends B the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attended_transfer_refers_one_call_to_the_other() {
    let kam = start_kamailio(&[("alice", "alicepw")], DOMAIN).await;
    let mut a = Sipp::uas("uas_attended_transfer.xml", 0, &["-trace_logs"]);
    let gw = start_sip_gateway(a.port(), "127.0.0.1", |c| {
        c.sip.inbound_allow = vec!["127.0.0.1/32".into()];
        c.sip.registrar.host = "127.0.0.1".into();
        c.sip.registrar.port = kam.port();
        c.sip.registrar.domain = DOMAIN.into();
    })
    .await;
    let sip = gw.sip_addr().unwrap();
    let mut api = ApiClient::connect(&gw).await;
    api.send(json!({"type": "register", "user": "alice", "password": "alicepw"}))
        .await;
    assert_eq!(api.expect("registered").await["user"], "alice");

    let (mut to_a, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("a", "1000", &offer).await;
    let answer = api.expect("answer").await;
    to_a.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(to_a.connect(SIGNALING_TIMEOUT).await, "WebRTC leg to A");
    api.expect("answered").await;

    let mut b = Sipp::uac("uac_simple.xml", sip, &["-s", "alice", "-d", "3000"]);
    let ring = api.expect("incoming").await;
    let (mut from_b, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.send(json!({"type": "accept", "call": ring["call"], "sdp": offer}))
        .await;
    let answer = api.expect("answer").await;
    from_b.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(from_b.connect(SIGNALING_TIMEOUT).await, "WebRTC leg from B");
    api.expect("answered").await;

    // Not a call of this socket: refused, nothing sent.
    api.send(json!({"type": "transfer", "call": "a", "replaces": "nope"}))
        .await;
    assert_eq!(api.expect("error").await["code"], "invalid_state");

    api.send(json!({"type": "transfer", "call": "a", "replaces": ring["call"]}))
        .await;
    let mut statuses = Vec::new();
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let m = api.recv().await;
        match m["type"].as_str() {
            Some("transfer_progress") => {
                assert_eq!(m["call"], "a", "{m}");
                statuses.push((m["status"].as_u64().unwrap(), m["done"] == true));
            }
            Some("ended") => ended.push((m["call"].clone(), m["reason"].clone())),
            _ => panic!("unexpected {m}"),
        }
    }
    println!("transfer progress {statuses:?}, ended {ended:?}");
    assert_eq!(statuses, vec![(202, false), (200, true)]);
    assert!(
        ended.contains(&(json!("a"), json!("transferred"))),
        "{ended:?}"
    );
    assert!(
        ended.contains(&(ring["call"].clone(), json!("transferred"))),
        "{ended:?}"
    );
    a.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", a.messages()));
    b.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", b.messages()));

    // The Refer-To named B's dialog as B sees it: B's Call-ID, B's tag as
    // the to-tag.
    let refer_to = a.action_log();
    let b_messages = b.messages();
    let b_call_id = b_messages
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .expect("B's Call-ID")
        .trim()
        .replace('@', "%40");
    let b_tag = b_messages
        .lines()
        .find_map(|l| {
            l.strip_prefix("From: sipp <")
                .and_then(|f| f.split(";tag=").nth(1))
        })
        .expect("B's tag")
        .trim()
        .to_string();
    println!("A's Refer-To: {refer_to}");
    assert!(
        refer_to.contains(&format!(
            "Replaces={b_call_id}%3Bto-tag%3D{b_tag}%3Bfrom-tag%3D"
        )),
        "B's dialog {b_call_id} / {b_tag}"
    );
    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}
