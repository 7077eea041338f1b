//! DTMF through the gateway with a real SIP phone (baresip): digits the API
//! client asks for reach baresip as RFC 4733 events, and digits baresip
//! sends come back as API `dtmf` events; so do digits a PBX sends in SIP INFO.

use std::sync::Arc;
use std::time::Duration;

use gangway_tests::api_client::ApiClient;
use gangway_tests::gateway::{assert_no_leftovers, start_sip_gateway};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::{Baresip, BaresipOptions, Sipp};
use serde_json::json;

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// bob (baresip, PCMU, auto-answer) and a gateway whose trunk is bob.
async fn bob_and_gateway() -> (Arc<Baresip>, gangway::Gateway) {
    let bob = tokio::task::spawn_blocking(|| {
        Arc::new(Baresip::start(BaresipOptions {
            user: "bob",
            tone_hz: 440.0,
            codecs: &["PCMU"],
            ..Default::default()
        }))
    })
    .await
    .unwrap();
    let gw = start_sip_gateway(bob.sip_addr().port(), "127.0.0.1", |_| {}).await;
    (bob, gw)
}

/// The next `n` digits baresip reports hearing (its CALL_DTMF_START events).
async fn digits_heard_by(bob: &Arc<Baresip>, n: usize) -> String {
    let mut heard = String::new();
    while heard.len() < n {
        let b = bob.clone();
        let event =
            tokio::task::spawn_blocking(move || b.wait_for_event("CALL_DTMF_START", EVENT_TIMEOUT))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("baresip heard only {heard:?}: {e}"));
        heard.push_str(event["param"].as_str().unwrap_or("?"));
    }
    heard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_go_both_ways_as_rfc_4733() {
    let (bob, gw) = bob_and_gateway().await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;

    // Digits before the answer are refused: there is no far end to hear them.
    api.call("d1", "bob", &offer).await;
    api.send(json!({"type": "dtmf", "call": "d1", "digits": "1"}))
        .await;
    let mut answer = None;
    let mut refused = false;
    while answer.is_none() || !refused {
        let m = api.recv().await;
        match m["type"].as_str() {
            Some("answer") => answer = m["sdp"].as_str().map(str::to_owned),
            Some("error") => {
                assert_eq!(m["code"], "invalid_state", "{m}");
                refused = true;
            }
            _ => {}
        }
    }
    client.accept_answer(&answer.unwrap());
    assert!(client.connect(Duration::from_secs(10)).await);
    loop {
        let m = api.recv().await;
        if m["type"] == "answered" {
            break;
        }
        assert_eq!(m["type"], "ringing", "{m}");
    }

    // Browser -> phone: the events go out paced by our audio frames.
    api.send(json!({"type": "dtmf", "call": "d1", "digits": "123#"}))
        .await;
    api.send(json!({"type": "dtmf", "call": "d1", "digits": "12x"}))
        .await;
    assert_eq!(api.expect("error").await["code"], "invalid_message");
    client
        .send_pcmu_tone(1000.0, 1.5, Duration::from_millis(200))
        .await;
    let heard = digits_heard_by(&bob, 4).await;
    assert_eq!(heard, "123#", "baresip's CALL_DTMF_START events");

    // Phone -> browser: baresip sends 5 and 9; the API reports each once.
    for d in ["5", "9"] {
        let b = bob.clone();
        let d = d.to_string();
        tokio::task::spawn_blocking(move || b.command("sndcode", &d))
            .await
            .unwrap()
            .expect("baresip sends a digit");
        // Let baresip's event finish before the next one.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut got = String::new();
    while got.len() < 2 {
        let m = api.recv().await;
        if m["type"] == "dtmf" {
            assert_eq!(m["call"], "d1");
            got.push_str(m["digit"].as_str().unwrap());
        }
    }
    assert_eq!(got, "59");
    api.expect_silence(Duration::from_millis(500)).await;

    api.hangup("d1").await;
    assert_eq!(api.expect("ended").await["reason"], "hangup");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_in_sip_info_reach_the_api() {
    // sipp answers, then sends Signal=7 and Signal=# in application/dtmf-relay INFOs.
    let mut sipp = Sipp::uas("uas_answer_info_dtmf.xml", 0, &[]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |_| {}).await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("info", "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(client.connect(Duration::from_secs(10)).await);
    let mut digits = String::new();
    while digits.len() < 2 {
        let m = api.recv().await;
        match m["type"].as_str() {
            Some("dtmf") => digits.push_str(m["digit"].as_str().unwrap()),
            Some("ringing" | "answered") => {}
            _ => panic!("unexpected {m}"),
        }
    }
    assert_eq!(digits, "7#");
    api.hangup("info").await;
    assert_eq!(api.expect("ended").await["reason"], "hangup");
    sipp.wait(Duration::from_secs(10))
        .expect("sipp got 200 for both INFOs and our BYE");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

/// With `sip.dtmf_mode = "info"` the API's digits go out as SIP INFO
/// (application/dtmf-relay), one per digit and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_digits_go_out_as_sip_info_when_configured() {
    let mut sipp = Sipp::uas("uas_answer_expect_info.xml", 0, &[]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |c| {
        c.sip.dtmf_mode = gangway::config::DtmfMode::Info;
    })
    .await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("info-out", "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(client.connect(Duration::from_secs(10)).await);
    loop {
        let m = api.recv().await;
        match m["type"].as_str() {
            Some("answered") => break,
            Some("ringing") => {}
            _ => panic!("unexpected {m}"),
        }
    }
    api.send(serde_json::json!({"type": "dtmf", "call": "info-out", "digits": "5#"}))
        .await;
    // Both INFOs answered before the BYE, or sipp's scenario fails.
    tokio::time::sleep(Duration::from_millis(800)).await;
    api.hangup("info-out").await;
    assert_eq!(api.expect("ended").await["reason"], "hangup");
    sipp.wait(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("sipp got both INFOs and our BYE: {e}"));
    let log = sipp.action_log();
    let first = log.find("INFO digit 5");
    let second = log.find("INFO digit #");
    assert!(
        matches!((first, second), (Some(a), Some(b)) if a < b),
        "digits 5 then # in sipp's log:\n{log}"
    );
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browsers_own_rfc_4733_digits_reach_the_phone() {
    // What RTCDTMFSender.insertDTMF sends, from str0m's RFC 4733 writer.
    let (bob, gw) = bob_and_gateway().await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("b1", "bob", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(client.connect(Duration::from_secs(10)).await);
    loop {
        let m = api.recv().await;
        if m["type"] == "answered" {
            break;
        }
    }
    for code in [4u8, 6] {
        client.send_rfc4733(code);
        client.send_pcmu_tone(1000.0, 0.6, Duration::ZERO).await;
    }
    let heard = digits_heard_by(&bob, 2).await;
    assert_eq!(heard, "46");
    api.hangup("b1").await;
    assert_eq!(api.expect("ended").await["reason"], "hangup");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}
