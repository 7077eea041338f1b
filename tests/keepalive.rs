//! The trunk's health and reliable provisionals, against sipp as the trunk:
//!
//! - OPTIONS keepalive: while sipp answers the probes the trunk is up
//!   (`gangway_sip_trunk_up` 1, `/readyz` 200); once sipp is gone it goes
//!   down after the configured failures (gauge 0, `/readyz` 503) and a
//!   browser call ends at once with `failed`/503 without any INVITE; a sipp
//!   answering OPTIONS (405) on the same port brings it back up.
//! - 100rel/PRACK: sipp sends a reliable 183 with SDP and insists on the
//!   PRACK; the browser gets `progress`, hears its own tone echoed through
//!   the early media, then `answered`, and a second tone both ways.

use std::time::{Duration, Instant};

use gangway_tests::api_client::ApiClient;
use gangway_tests::audio::tone_coverage;
use gangway_tests::gateway::{
    assert_no_leftovers, metric_or_zero, readyz, start_sip_gateway, wait_metric,
};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::Sipp;

const TRUNK_UP: &str = "gangway_sip_trunk_up";
const PROBES_ANSWERED: &str = "gangway_sip_trunk_probes_total{result=\"answered\"}";
const PROBES_FAILED: &str = "gangway_sip_trunk_probes_total{result=\"failed\"}";
const INVITES_SENT: &str = "gangway_sip_requests_total{direction=\"sent\",method=\"INVITE\"}";
/// The test's keepalive: a probe a second, down after two failures.
const INTERVAL_SECS: u64 = 1;
const FAILURES: u32 = 2;
/// Generous bound for what takes a few probe intervals.
const STATE_CHANGE: Duration = Duration::from_secs(10);

/// Polls until `series` reaches at least `min`; returns the last value.
async fn wait_at_least(gw: &gangway::Gateway, series: &str, min: f64, timeout: Duration) -> f64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let v = metric_or_zero(gw, series).await;
        if v >= min || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunk_that_stops_answering_options_is_down_and_calls_fail_fast() {
    // The trunk answers OPTIONS (and nothing else) until it is killed.
    let trunk = Sipp::uas("uas_options.xml", 0, &["-m", "100000"]);
    let port = trunk.port();
    let gw = start_sip_gateway(port, "pbx.test", |c| {
        c.sip.keepalive_interval_secs = INTERVAL_SECS;
        c.sip.keepalive_failures = FAILURES;
    })
    .await;

    // Up, and known to be up: probes were answered.
    assert!(
        wait_at_least(&gw, PROBES_ANSWERED, 2.0, STATE_CHANGE).await >= 2.0,
        "two probes answered"
    );
    assert_eq!(metric_or_zero(&gw, TRUNK_UP).await, 1.0);
    assert_eq!(metric_or_zero(&gw, PROBES_FAILED).await, 0.0);
    assert_eq!(readyz(&gw).await, (200, "ready\n".to_string()));
    let seen = trunk.messages();
    assert!(
        seen.contains(&format!("OPTIONS sip:127.0.0.1:{port} SIP/2.0")),
        "sipp received our OPTIONS:\n{seen}"
    );

    // The trunk goes away: after FAILURES probes without an answer it is down.
    drop(trunk);
    let gone = Instant::now();
    assert_eq!(wait_metric(&gw, TRUNK_UP, 0.0, STATE_CHANGE).await, 0.0);
    let detected = gone.elapsed();
    println!("trunk down {detected:?} after sipp was killed");
    assert!(
        metric_or_zero(&gw, PROBES_FAILED).await >= f64::from(FAILURES),
        "down only after {FAILURES} failed probes"
    );
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("trunk down"), "{body}");

    // A call now fails at once with 503, and no INVITE leaves the gateway.
    let mut api = ApiClient::connect(&gw).await;
    let (_client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    let t0 = Instant::now();
    api.call("while-down", "1000", &offer).await;
    api.expect("answer").await;
    let ended = api.expect("ended").await;
    let took = t0.elapsed();
    println!("call -> ended in {took:?}: {ended}");
    assert_eq!(ended["call"], "while-down");
    assert_eq!(ended["reason"], "failed", "{ended}");
    assert_eq!(ended["code"], 503, "{ended}");
    assert!(
        took < Duration::from_secs(2),
        "fails fast, not after an INVITE timeout: {took:?}"
    );
    assert_eq!(
        metric_or_zero(&gw, INVITES_SENT).await,
        0.0,
        "no INVITE sent"
    );
    assert_no_leftovers(&gw).await;

    // The trunk is back on the same port: one answered probe brings it up,
    // even answered 405 (a PBX that does not do OPTIONS is still alive).
    // This sipp answers three OPTIONS and fails on anything else, so it
    // would also catch an INVITE (or its retransmissions) from the call.
    let answered_before = metric_or_zero(&gw, PROBES_ANSWERED).await;
    let mut back = Sipp::uas("uas_options_405.xml", port, &["-m", "3"]);
    assert_eq!(wait_metric(&gw, TRUNK_UP, 1.0, STATE_CHANGE).await, 1.0);
    assert_eq!(readyz(&gw).await, (200, "ready\n".to_string()));
    assert!(metric_or_zero(&gw, PROBES_ANSWERED).await > answered_before);
    assert!(
        metric_or_zero(
            &gw,
            "gangway_sip_responses_total{direction=\"received\",status=\"405\"}"
        )
        .await
            >= 1.0,
        "the probe that brought it up was answered 405"
    );
    back.wait(STATE_CHANGE)
        .unwrap_or_else(|e| panic!("the returning trunk saw only OPTIONS: {e}"));
    let seen = back.messages();
    assert!(
        !seen.contains("INVITE sip:"),
        "no INVITE reached the trunk:\n{seen}"
    );
    assert_eq!(metric_or_zero(&gw, INVITES_SENT).await, 0.0);
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

/// The browser's tone during early media, then after the answer.
const EARLY_HZ: f64 = 700.0;
const ANSWERED_HZ: f64 = 1000.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_183_is_pracked_and_early_media_and_answer_carry_audio() {
    // sipp echoes all RTP; its scenario fails without our PRACK.
    let mut sipp = Sipp::uas("uas_prack_early_media.xml", 0, &["-rtp_echo"]);
    let gw = start_sip_gateway(sipp.port(), "pbx.test", |_| {}).await;
    let mut api = ApiClient::connect(&gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    let t0 = Instant::now();
    api.call("prack", "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        client.connect(Duration::from_secs(10)).await,
        "WebRTC leg connects"
    );
    // The 183 (once PRACKed) rings and starts early media.
    assert_eq!(api.expect("ringing").await["call"], "prack");
    assert_eq!(api.expect("progress").await["call"], "prack");
    println!("call -> progress in {:?}", t0.elapsed());

    // Early media both ways: our tone goes to sipp and comes back.
    let early = client
        .send_pcmu_tone(EARLY_HZ, 1.5, Duration::from_millis(300))
        .await;
    let early_tone = tone_coverage(&early.received, 8000, EARLY_HZ);
    let early_control = tone_coverage(&early.received, 8000, ANSWERED_HZ);
    println!(
        "early media: {} frames back, {EARLY_HZ} Hz in {early_tone:.3}, {ANSWERED_HZ} Hz in {early_control:.3} ({:?})",
        early.received_frames,
        t0.elapsed()
    );
    assert!(early_tone >= 0.85, "early media echoed: {early_tone:.3}");
    assert!(early_control < 0.1, "negative control: {early_control:.3}");

    // sipp answers 4 s after the PRACK.
    assert_eq!(api.expect("answered").await["call"], "prack");
    let talk = client
        .send_pcmu_tone(ANSWERED_HZ, 2.0, Duration::from_millis(300))
        .await;
    let talk_tone = tone_coverage(&talk.received, 8000, ANSWERED_HZ);
    let talk_control = tone_coverage(&talk.received, 8000, EARLY_HZ);
    println!(
        "answered: {} frames back, {ANSWERED_HZ} Hz in {talk_tone:.3}, {EARLY_HZ} Hz in {talk_control:.3}",
        talk.received_frames
    );
    assert!(talk_tone >= 0.85, "answered call echoed: {talk_tone:.3}");
    assert!(talk_control < 0.1, "negative control: {talk_control:.3}");

    api.hangup("prack").await;
    assert_eq!(api.expect("ended").await["reason"], "hangup");
    sipp.wait(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("sipp: 183, PRACK, 200, ACK, BYE: {e}"));
    let messages = sipp.messages();
    assert!(
        messages.contains("PRACK sip:"),
        "a PRACK was sent:\n{messages}"
    );
    assert!(
        messages.contains("Supported: 100rel"),
        "the INVITE offered 100rel:\n{messages}"
    );
    assert_eq!(
        metric_or_zero(
            &gw,
            "gangway_sip_requests_total{direction=\"sent\",method=\"PRACK\"}"
        )
        .await,
        1.0
    );
    assert_no_leftovers(&gw).await;
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}
