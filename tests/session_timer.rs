//! RFC 4028 session timers on the SIP leg, against sipp, with a str0m
//! client as the browser (over the JSON API):
//! - outbound calls: the INVITE offers timers, sipp's 200 makes the
//!   gateway the refresher of a 90 s session; the gateway refreshes about
//!   45 s later with UPDATE (sipp allows it) or a re-INVITE with its SDP
//!   unchanged (sipp does not), and audio still flows through sipp's RTP
//!   echo afterwards; when sipp never answers the refresh, the gateway
//!   gives up after Timer B, sends BYE and the browser gets `ended` with
//!   `session_refresh_failed`;
//! - inbound calls: sipp calls a browser user with Session-Expires:
//!   90;refresher=uac, refreshes once with UPDATE and then never again; the
//!   gateway answers both with Session-Expires and Require: timer, and
//!   sends BYE 60 s (90 - 30) after that refresh.
//!
//! Each test lasts one to one and a half minutes of real time (the RFC's
//! smallest interval is 90 s); they run in parallel. kamailio and sipp
//! must be installed (`scripts/deps.sh test`); a missing one fails the
//! test, it is never skipped.

use std::time::{Duration, Instant};

use gangway_tests::api_client::ApiClient;
use gangway_tests::audio::tone_coverage;
use gangway_tests::gateway::{assert_no_leftovers, metric_or_zero, start_sip_gateway};
use gangway_tests::kamailio::start_kamailio;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::Sipp;
use serde_json::{json, Value};

const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_TONE_HZ: f64 = 1000.0;
const CONTROL_HZ: f64 = 440.0;
const LINGER: Duration = Duration::from_millis(300);
/// Audio is sent in chunks this long; between them the test looks at the
/// API socket and the metrics.
const CHUNK_S: f64 = 1.0;

const REFRESHES_SENT: &str = "gangway_sip_session_refreshes_total{direction=\"sent\"}";
const REFRESHES_RECEIVED: &str = "gangway_sip_session_refreshes_total{direction=\"received\"}";
const ENDED_REFRESH_FAILED: &str =
    "gangway_sip_session_timer_ended_total{cause=\"refresh_failed\"}";
const ENDED_NOT_REFRESHED: &str = "gangway_sip_session_timer_ended_total{cause=\"not_refreshed\"}";
const CALLS_ENDED_TIMER: &str = "gangway_calls_ended_total{reason=\"session_refresh_failed\"}";

fn coverage(samples: &[f32]) -> (f64, f64) {
    (
        tone_coverage(samples, 8000, CLIENT_TONE_HZ),
        tone_coverage(samples, 8000, CONTROL_HZ),
    )
}

/// A call from the str0m client through the gateway to sipp running
/// `scenario` as the trunk (with `-rtp_echo`), up to the answer.
async fn outbound_call(scenario: &str) -> (Sipp, gangway::Gateway, ApiClient, RtcClient, Instant) {
    let sipp = Sipp::uas(scenario, 0, &["-rtp_echo"]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |_| {}).await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call("st", "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        client.connect(SIGNALING_TIMEOUT).await,
        "WebRTC leg connects"
    );
    api.expect("answered").await;
    (sipp, gw, api, client, Instant::now())
}

/// One chunk of the browser's tone, and whatever the API said meanwhile.
async fn talk(client: &mut RtcClient, api: &mut ApiClient, heard: &mut Vec<f32>) -> Option<Value> {
    let chunk = client
        .send_pcmu_tone(CLIENT_TONE_HZ, CHUNK_S, Duration::ZERO)
        .await;
    heard.extend(chunk.received);
    api.recv_within(Duration::from_millis(1)).await
}

/// sipp's 200 makes us the refresher of a 90 s session; we refresh at
/// 45 s with `method` and the call goes on, audio included. Returns
/// sipp's action log.
async fn outbound_refresh_keeps_the_call_up(scenario: &str, method: &str) -> String {
    let (mut sipp, gw, mut api, mut client, answered) = outbound_call(scenario).await;

    // Talk until the refresh has been answered.
    let mut before = Vec::new();
    let refreshed = loop {
        if let Some(m) = talk(&mut client, &mut api, &mut before).await {
            panic!("unexpected message before the refresh: {m}");
        }
        if metric_or_zero(&gw, REFRESHES_SENT).await >= 1.0 {
            break answered.elapsed();
        }
        assert!(
            answered.elapsed() < Duration::from_secs(60),
            "no refresh within 60 s of the answer\n{}",
            sipp.messages()
        );
    };
    println!("refresh answered {refreshed:?} after the answer");
    assert!(
        refreshed >= Duration::from_secs(44) && refreshed <= Duration::from_secs(50),
        "refreshed at half the 90 s interval: {refreshed:?}"
    );
    let after = client
        .send_pcmu_tone(CLIENT_TONE_HZ, 3.0, LINGER)
        .await
        .received;
    let (tone_before, control_before) = coverage(&before);
    let (tone_after, control_after) = coverage(&after);
    println!(
        "1000 Hz echoed in {tone_before:.3} of frames before the refresh, {tone_after:.3} after (440 Hz: {control_before:.3}, {control_after:.3})"
    );
    assert!(
        tone_before >= 0.85,
        "audio before the refresh: {tone_before:.3}"
    );
    assert!(
        tone_after >= 0.85,
        "audio after the refresh: {tone_after:.3}"
    );
    assert!(
        control_before < 0.1 && control_after < 0.1,
        "negative control"
    );

    api.hangup("st").await;
    let ended = api.expect("ended").await;
    assert_eq!(
        (ended["reason"].as_str(), &ended["code"]),
        (Some("hangup"), &Value::Null),
        "{ended}"
    );
    sipp.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", sipp.action_log()));
    let log = sipp.action_log();
    println!("{log}");
    assert!(
        log.contains("invite: Supported: timer | Session-Expires: 1800 | Min-SE: 90"),
        "the INVITE offered timers:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "refresh: {method} | Session-Expires: 90;refresher=uac | Supported: timer"
        )),
        "the refresh:\n{log}"
    );
    assert_eq!(metric_or_zero(&gw, REFRESHES_SENT).await, 1.0);
    assert_eq!(metric_or_zero(&gw, REFRESHES_RECEIVED).await, 0.0);
    assert_eq!(metric_or_zero(&gw, ENDED_REFRESH_FAILED).await, 0.0);
    assert_eq!(metric_or_zero(&gw, CALLS_ENDED_TIMER).await, 0.0);
    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_refreshes_with_update_and_stays_up() {
    let log = outbound_refresh_keeps_the_call_up("uas_timer_refresh_update.xml", "UPDATE").await;
    assert!(
        log.contains("| Content-Length: 0"),
        "the UPDATE has no body:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_refreshes_with_reinvite_and_stays_up() {
    let log =
        outbound_refresh_keeps_the_call_up("uas_timer_refresh_reinvite.xml", "re-INVITE").await;
    // The refresh re-INVITE repeats our SDP as it was: same o= line, so the
    // same version (RFC 3264 §8), and still sendrecv.
    let line = |prefix: &str| {
        log.lines()
            .find_map(|l| {
                l.split_once(prefix)
                    .map(|(_, rest)| rest.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{prefix:?} in\n{log}"))
    };
    let (initial, refresh) = (line("invite sdp: "), line("refresh sdp: "));
    assert!(initial.starts_with("o="), "{initial}");
    assert_eq!(initial, refresh, "SDP unchanged in the refresh");
    assert!(log.contains("| a=sendrecv"), "{log}");
}

/// sipp never answers our refresh re-INVITE: after Timer B (32 s) the
/// gateway sends BYE and the browser learns why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_ends_when_the_refresh_is_not_answered() {
    let (mut sipp, gw, mut api, mut client, answered) =
        outbound_call("uas_timer_refresh_unanswered.xml").await;
    let mut heard = Vec::new();
    let ended = loop {
        if let Some(m) = talk(&mut client, &mut api, &mut heard).await {
            break m;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(100),
            "the call did not end within 100 s\n{}",
            sipp.messages()
        );
    };
    let after = answered.elapsed();
    println!("ended {after:?} after the answer: {ended}");
    assert_eq!(ended["type"], "ended", "{ended}");
    assert_eq!(
        (ended["reason"].as_str(), &ended["code"]),
        (Some("session_refresh_failed"), &json!(408)),
        "{ended}"
    );
    // 45 s to the refresh, 32 s of Timer B.
    assert!(
        after >= Duration::from_secs(75) && after <= Duration::from_secs(85),
        "ended {after:?} after the answer"
    );
    let (tone, _) = coverage(&heard[..heard.len().min(40 * 8000)]);
    assert!(tone >= 0.85, "the call was up until then: {tone:.3}");
    sipp.wait(SIGNALING_TIMEOUT)
        .expect("sipp got the refresh, then our BYE");
    let log = sipp.action_log();
    println!("{log}");
    assert!(
        log.contains("refresh: re-INVITE (not answered) | Session-Expires: 90;refresher=uac"),
        "{log}"
    );
    assert_eq!(metric_or_zero(&gw, ENDED_REFRESH_FAILED).await, 1.0);
    assert_eq!(metric_or_zero(&gw, ENDED_NOT_REFRESHED).await, 0.0);
    assert_eq!(metric_or_zero(&gw, CALLS_ENDED_TIMER).await, 1.0);
    assert_eq!(metric_or_zero(&gw, REFRESHES_SENT).await, 0.0);
    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

/// sipp calls a browser user asking for a 90 s session it refreshes itself,
/// refreshes once with UPDATE 10 s in, then stops: the gateway answers
/// both with Session-Expires and Require: timer, and hangs up 60 s after
/// the refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_ends_when_the_caller_stops_refreshing() {
    const DOMAIN: &str = "pbx.test";
    let kam = start_kamailio(&[("alice", "alicepw")], DOMAIN).await;
    let gw = start_sip_gateway(kam.port(), DOMAIN, |c| {
        c.sip.inbound_allow = vec!["127.0.0.1/32".into()];
    })
    .await;
    let sip = gw.sip_addr().unwrap();
    let mut tab = ApiClient::connect(&gw).await;
    tab.send(json!({"type": "register", "user": "alice", "password": "alicepw"}))
        .await;
    tab.expect("registered").await;

    let mut sipp = Sipp::uac(
        "uac_timer_refresh_once.xml",
        sip,
        &["-s", "alice", "-rtp_echo"],
    );
    let ring = tab.expect("incoming").await;
    let call = ring["call"].clone();
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    tab.send(json!({"type": "accept", "call": call, "sdp": offer}))
        .await;
    let answer = tab.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        client.connect(SIGNALING_TIMEOUT).await,
        "WebRTC leg connects"
    );
    tab.expect("answered").await;
    let answered = Instant::now();

    let mut heard = Vec::new();
    let mut refreshed = None;
    let ended = loop {
        if let Some(m) = talk(&mut client, &mut tab, &mut heard).await {
            break m;
        }
        if refreshed.is_none() && metric_or_zero(&gw, REFRESHES_RECEIVED).await >= 1.0 {
            refreshed = Some(answered.elapsed());
        }
        assert!(
            answered.elapsed() < Duration::from_secs(100),
            "the call did not end within 100 s\n{}",
            sipp.messages()
        );
    };
    let after = answered.elapsed();
    let refreshed = refreshed.expect("sipp's UPDATE counted as a refresh");
    println!("refreshed by sipp {refreshed:?}, ended {after:?} after the answer: {ended}");
    assert_eq!(ended["type"], "ended", "{ended}");
    assert_eq!(
        (ended["reason"].as_str(), &ended["code"]),
        (Some("session_refresh_failed"), &Value::Null),
        "{ended}"
    );
    // 60 s (90 - min(32, 90 / 3)) after the refresh, not after the answer.
    let since_refresh = after.saturating_sub(refreshed);
    assert!(
        since_refresh >= Duration::from_secs(58) && since_refresh <= Duration::from_secs(63),
        "BYE {since_refresh:?} after the refresh"
    );
    assert!(
        after >= Duration::from_secs(68),
        "re-armed by the refresh: {after:?}"
    );
    let (tone, _) = coverage(&heard);
    assert!(tone >= 0.85, "the call was up until then: {tone:.3}");
    sipp.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", sipp.messages(), sipp.errors()));
    let log = sipp.action_log();
    println!("{log}");
    for check in [
        "answer: Session-Expires: 90;refresher=uac | Require: timer",
        "refresh answer: Session-Expires: 90;refresher=uac | Require: timer",
    ] {
        assert!(log.contains(check), "sipp saw {check:?}:\n{log}");
    }
    assert_eq!(metric_or_zero(&gw, REFRESHES_RECEIVED).await, 1.0);
    assert_eq!(metric_or_zero(&gw, ENDED_NOT_REFRESHED).await, 1.0);
    assert_eq!(metric_or_zero(&gw, CALLS_ENDED_TIMER).await, 1.0);
    assert_no_leftovers(&gw).await;
    tab.close().await;
    gw.shutdown(Duration::ZERO).await;
}
