//! Hold and resume against real peers, each side's hold on its own leg:
//! - sipp, as the PBX, holds (sendonly), goes inactive, resumes and then
//!   switches PCMU to PCMA with re-INVITEs; the gateway's answers are
//!   checked by the scenario and the audio by sipp's RTP echo of the
//!   browser's tone (str0m client over the API);
//! - the browser holds (API `hold`/`resume` → re-INVITE sendonly/sendrecv)
//!   a call to baresip for 70 s: baresip hears nothing while held, and
//!   both tones come back after resume.
//!
//! kamailio, baresip and sipp must be installed (`scripts/deps.sh test`);
//! a missing one fails the test, it is never skipped.

use std::time::Duration;

use gangway_tests::api_client::ApiClient;
use gangway_tests::audio::tone_coverage;
use gangway_tests::gateway::{assert_no_leftovers, start_sip_gateway};
use gangway_tests::kamailio::start_kamailio;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::Sipp;
use serde_json::{json, Value};

const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
const DOMAIN: &str = "pbx.test";
const CLIENT_TONE_HZ: f64 = 1000.0;
const CONTROL_HZ: f64 = 440.0;
const LINGER: Duration = Duration::from_millis(300);

/// Skips events this test does not look at (none are expected) and fails
/// on anything but `kind`.
async fn expect(api: &mut ApiClient, kind: &str) -> Value {
    let message = api.expect(kind).await;
    assert_eq!(message["type"], kind, "{message}");
    message
}

fn coverage(samples: &[f32]) -> (f64, f64) {
    (
        tone_coverage(samples, 8000, CLIENT_TONE_HZ),
        tone_coverage(samples, 8000, CONTROL_HZ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_holds_goes_inactive_resumes_and_switches_codec() {
    let kam = start_kamailio(&[("alice", "alicepw")], DOMAIN).await;
    let gw = start_sip_gateway(kam.port(), DOMAIN, |c| {
        c.sip.inbound_allow = vec!["127.0.0.1/32".into()];
    })
    .await;
    let sip = gw.sip_addr().unwrap();
    let mut tab = ApiClient::connect(&gw).await;
    tab.send(json!({"type": "register", "user": "alice", "password": "alicepw"}))
        .await;
    expect(&mut tab, "registered").await;

    let mut sipp = Sipp::uac(
        "uac_hold_reinvites.xml",
        sip,
        &["-s", "alice", "-rtp_echo", "-trace_logs"],
    );
    let ring = expect(&mut tab, "incoming").await;
    let call = ring["call"].clone();
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    tab.send(json!({"type": "accept", "call": call, "sdp": offer}))
        .await;
    let answer = expect(&mut tab, "answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(
        client.connect(SIGNALING_TIMEOUT).await,
        "WebRTC leg connects"
    );
    expect(&mut tab, "answered").await;

    // Talking: sipp echoes the browser's tone.
    let talk = client.send_pcmu_tone(CLIENT_TONE_HZ, 2.0, LINGER).await;
    let (tone, control) = coverage(&talk.received);
    println!("before hold: 1000 Hz echoed in {tone:.3} of frames, 440 Hz {control:.3}");
    assert!(tone >= 0.85, "audio before the hold: {tone:.3}");
    assert!(control < 0.1, "negative control: {control:.3}");

    // sipp holds (sendonly): we answer recvonly and send nothing more.
    let held = expect(&mut tab, "held").await;
    assert_eq!(
        (&held["call"], held["by"].as_str()),
        (&call, Some("remote"))
    );
    let hold = client.send_pcmu_tone(CLIENT_TONE_HZ, 1.5, LINGER).await;
    let (tone, _) = coverage(&hold.received);
    println!("on hold: 1000 Hz echoed in {tone:.3} of frames");
    assert!(
        tone < 0.1,
        "nothing reaches the PBX while it holds: {tone:.3}"
    );

    // inactive, then sendrecv: one `resumed`, then audio both ways again.
    let resumed = expect(&mut tab, "resumed").await;
    assert_eq!(resumed["by"], "remote", "{resumed}");
    // 3 s of PCMU, then sipp re-offers PCMA only: the echo must come back
    // as PCMA and still carry the tone to the end.
    let after = client.send_pcmu_tone(CLIENT_TONE_HZ, 5.5, LINGER).await;
    let (tone, control) = coverage(&after.received);
    let tail = &after.received[after.received.len().saturating_sub(2 * 8000)..];
    let (tail_tone, _) = coverage(tail);
    println!(
        "after resume: 1000 Hz in {tone:.3} of frames (last 2 s, after the switch to PCMA: {tail_tone:.3}), 440 Hz {control:.3}"
    );
    assert!(tone >= 0.85, "audio after resume: {tone:.3}");
    assert!(
        tail_tone >= 0.85,
        "audio after the codec change: {tail_tone:.3}"
    );
    assert!(control < 0.1, "negative control: {control:.3}");

    let ended = expect(&mut tab, "ended").await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    sipp.wait(SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", sipp.messages(), sipp.errors()));
    let log = sipp.action_log();
    for check in [
        "held: a=recvonly",
        "inactive: a=inactive",
        "resumed: a=sendrecv",
    ] {
        assert!(
            log.contains(check),
            "sipp saw {check:?} in our answers:\n{log}"
        );
    }
    assert!(log.contains("pcma: m=audio"), "{log}");
    assert_no_leftovers(&gw).await;
    tab.close().await;
    gw.shutdown(Duration::ZERO).await;
}
