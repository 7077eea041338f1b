//! Gangway against a real PBX stand-in: kamailio 5.6 as registrar and
//! authenticating proxy (users in an htable, no database), with a baresip
//! phone registered to it. The gateway's trunk is kamailio; a str0m WebRTC
//! client calls the registered user by name through the gateway's API.
//! kamailio challenges the INVITE with 407, the gateway answers with its
//! trunk credentials, kamailio finds the phone in its location table and
//! relays the call there. Audio is checked both ways by tone (Goertzel,
//! per 20 ms frame, with negative controls).
//!
//! kamailio and baresip must be installed (`scripts/deps.sh test`); a
//! missing one fails the test, it is never skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gangway_tests::api_client::ApiClient;
use gangway_tests::audio::tone_coverage;
use gangway_tests::gateway::{assert_no_leftovers, metric_or_zero, start_sip_gateway};
use gangway_tests::kamailio::{start_kamailio, Kamailio};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::{registered_baresip, Baresip};
use serde_json::Value;

const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
/// The domain kamailio serves and the gateway puts in its From and
/// Request-URIs: a name, not an address (the gateway reaches kamailio by
/// its preloaded Route to the trunk host).
const DOMAIN: &str = "pbx.test";
const USERS: &[(&str, &str)] = &[("alice", "pw"), ("gangway", "gwpw"), ("bob", "bobpw")];
/// What the browser side sends, and what bob (baresip) sends.
const CLIENT_TONE_HZ: f64 = 1000.0;
const BOB_TONE_HZ: f64 = 440.0;
const TALK_SECONDS: f64 = 3.0;

/// bob, registered at kamailio with his password, auto-answering with a tone.
async fn start_bob(kam: &Kamailio) -> Arc<Baresip> {
    registered_baresip(
        kam.registrar_uri(),
        "bob",
        "bobpw",
        BOB_TONE_HZ,
        SIGNALING_TIMEOUT,
    )
    .await
}

/// A gateway whose trunk is kamailio over `transport` (`udp`, `tcp`), with
/// these digest credentials.
async fn gateway_to(
    kam: &Kamailio,
    transport: &str,
    username: &str,
    password: &str,
) -> gangway::Gateway {
    start_sip_gateway(kam.port(), DOMAIN, |c| {
        c.sip.trunk.transport = transport.to_string();
        c.sip.trunk.username = Some(username.to_string());
        c.sip.trunk.password = Some(password.to_string());
    })
    .await
}

/// Runs a blocking baresip wait off the async runtime.
async fn bob_event(bob: &Arc<Baresip>, kind: &'static str) -> Result<Value, String> {
    let bob = bob.clone();
    tokio::task::spawn_blocking(move || bob.wait_for_event(kind, SIGNALING_TIMEOUT))
        .await
        .expect("baresip wait task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_baresip_reached_through_kamailio_with_proxy_auth() {
    call_registered_bob("udp").await;
}

/// The same over a TCP trunk: kamailio bridges TCP (gateway) and UDP (bob)
/// and record-routes both sides, so the ACK and BYE find their way back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_baresip_reached_over_a_tcp_trunk() {
    call_registered_bob("tcp").await;
}

/// bob registers at kamailio; the client calls "bob" through the gateway,
/// whose trunk (kamailio, over `transport`) demands proxy authentication;
/// tones go both ways; the client hangs up.
async fn call_registered_bob(transport: &str) {
    let kam = start_kamailio(USERS, DOMAIN).await;
    let bob = start_bob(&kam).await;

    // kamailio holds bob's binding, pointing at baresip's own listener.
    let bindings = kam
        .wait_registered("bob", SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("kamailio location for bob: {bindings:?}");
    let port = format!(":{}", bob.sip_addr().port());
    assert!(
        bindings.iter().any(|b| b.contact.contains(&port)),
        "bob's contact is baresip's listener ({port}): {bindings:?}"
    );
    assert!(
        kam.challenges(401, "REGISTER") >= 1,
        "REGISTER was challenged with 401: {:?}",
        kam.markers()
    );

    let gw = gateway_to(&kam, transport, "gangway", "gwpw").await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    let t0 = Instant::now();
    api.call("kam-call-1", "bob", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        client.connect(Duration::from_secs(10)).await,
        "WebRTC leg connects"
    );
    let mut m = api.recv().await;
    while m["type"] == "ringing" {
        m = api.recv().await;
    }
    assert_eq!(m["type"], "answered", "{m}\n{}", kam.log());
    assert_eq!(m["call"], "kam-call-1");
    println!("call -> answered in {:?}", t0.elapsed());

    // kamailio challenged the INVITE, the gateway authenticated as gangway.
    let markers = kam.markers();
    println!("kamailio: {markers:#?}");
    assert!(
        kam.challenges(407, "INVITE") >= 1,
        "the INVITE was challenged with 407: {markers:?}"
    );
    assert!(
        markers
            .iter()
            .any(|m| m == "GWKAM-AUTHOK INVITE user=gangway"),
        "{markers:?}"
    );
    assert!(
        markers
            .iter()
            .any(|m| m.starts_with("GWKAM-RELAY INVITE to=sip:bob")),
        "INVITE relayed to bob's contact: {markers:?}"
    );
    assert!(
        metric_or_zero(
            &gw,
            "gangway_sip_responses_total{direction=\"received\",status=\"407\"}"
        )
        .await
            >= 1.0
    );
    let incoming = bob_event(&bob, "CALL_ESTABLISHED")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(incoming["direction"], "incoming", "{incoming}");

    // Media both ways: our 1000 Hz to bob, bob's 440 Hz to us.
    let tones = client
        .send_pcmu_tone(CLIENT_TONE_HZ, TALK_SECONDS, Duration::from_millis(200))
        .await;
    let heard_440 = tone_coverage(&tones.received, 8000, BOB_TONE_HZ);
    let heard_1000 = tone_coverage(&tones.received, 8000, CLIENT_TONE_HZ);
    println!(
        "client sent {} frames, received {} ({:.2} s): 440 Hz {heard_440:.3}, 1000 Hz {heard_1000:.3}",
        tones.sent_frames,
        tones.received_frames,
        tones.received.len() as f64 / 8000.0
    );
    assert!(
        tones.received_frames > 100,
        "frames from baresip reached the client: {}",
        tones.received_frames
    );
    assert!(
        heard_440 >= 0.9,
        "the client heard bob's 440 Hz in {heard_440:.3} of frames"
    );
    assert!(
        heard_1000 < 0.1,
        "the client heard 1000 Hz in {heard_1000:.3} of frames"
    );

    api.hangup("kam-call-1").await;
    let ended = api.expect("ended").await;
    assert_eq!(
        (ended["reason"].as_str(), ended["code"].clone()),
        (Some("hangup"), Value::Null),
        "{ended}"
    );
    let closed = bob_event(&bob, "CALL_CLOSED")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // baresip (libre) reports a BYE it received as ECONNRESET.
    assert_eq!(closed["param"], "Connection reset by peer", "{closed}");
    // kamailio logs the relayed 200 a moment after baresip reports the call closed.
    kam.wait_for_marker("GWKAM-REPLY 200 BYE", SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("bob answered the BYE with 200: {e}"));
    assert!(
        kam.relayed("BYE") >= 1,
        "BYE went through kamailio: {:?}",
        kam.markers()
    );

    let (bob_heard, rate) = bob.recorded_audio();
    let bob_s = bob_heard.len() as f64 / f64::from(rate);
    let bob_1000 = tone_coverage(&bob_heard, rate, CLIENT_TONE_HZ);
    let bob_440 = tone_coverage(&bob_heard, rate, BOB_TONE_HZ);
    println!("bob recorded {bob_s:.2} s at {rate} Hz: 1000 Hz {bob_1000:.3}, 440 Hz {bob_440:.3}");
    assert!(
        (TALK_SECONDS - 0.5..=TALK_SECONDS + 2.0).contains(&bob_s),
        "bob's recording lasts about the talk time ({TALK_SECONDS} s): {bob_s:.2} s"
    );
    assert!(
        bob_1000 >= 0.9,
        "bob heard the client's 1000 Hz in {bob_1000:.3} of frames"
    );
    assert!(bob_440 < 0.1, "bob heard 440 Hz in {bob_440:.3} of frames");

    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_trunk_password_fails_cleanly() {
    let kam = start_kamailio(USERS, DOMAIN).await;
    let bob = start_bob(&kam).await;
    kam.wait_registered("bob", SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));

    let gw = gateway_to(&kam, "udp", "gangway", "not-the-password").await;
    let mut api = ApiClient::connect(&gw).await;
    let (_client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("kam-call-2", "bob", &offer).await;
    api.expect("answer").await;
    let ended = api.expect("ended").await;
    assert_eq!(
        (ended["reason"].as_str(), ended["code"].as_u64()),
        (Some("auth_failed"), Some(407)),
        "{ended}\n{:?}",
        kam.markers()
    );

    // Challenged twice (without, then with wrong credentials), relayed never.
    let markers = kam.markers();
    println!("kamailio: {markers:#?}");
    assert!(kam.challenges(407, "INVITE") >= 2, "{markers:?}");
    assert_eq!(kam.relayed("INVITE"), 0, "{markers:?}");
    assert!(
        !markers.iter().any(|m| m.starts_with("GWKAM-AUTHOK INVITE")),
        "{markers:?}"
    );
    assert!(
        metric_or_zero(
            &gw,
            "gangway_sip_responses_total{direction=\"received\",status=\"407\"}"
        )
        .await
            >= 2.0
    );
    // Nothing reached bob.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: Vec<String> = bob
        .events()
        .iter()
        .filter_map(|e| e["type"].as_str().map(String::from))
        .filter(|t| t.starts_with("CALL_"))
        .collect();
    assert!(events.is_empty(), "bob saw call events: {events:?}");
    assert!(bob.recordings().is_empty(), "bob recorded something");

    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}
