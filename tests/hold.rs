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

use std::sync::atomic::Ordering;
use std::time::Duration;

use gangway_tests::api_client::ApiClient;
use gangway_tests::audio::tone_coverage;
use gangway_tests::browser_call::{
    launch_browser, run_script, Recording, BROWSER_TONE_HZ, CALL_SCRIPT,
};
use gangway_tests::gateway::{assert_no_leftovers, metric_or_zero, start_sip_gateway};
use gangway_tests::impair::LossyProxy;
use gangway_tests::kamailio::start_kamailio;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::{Baresip, BaresipOptions, Sipp};
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
    for (event, n) in [
        ("held_remote", 1.0),
        ("resumed_remote", 1.0),
        ("held_local", 0.0),
    ] {
        let series = format!("gangway_mid_call_events_total{{event=\"{event}\"}}");
        assert_eq!(metric_or_zero(&gw, &series).await, n, "{series}");
    }
    assert_no_leftovers(&gw).await;
    tab.close().await;
    gw.shutdown(Duration::ZERO).await;
}

/// baresip's tone.
const BARESIP_TONE_HZ: f64 = 440.0;
/// The hold the acceptance asks for: longer than any media timeout.
const HOLD_S: u64 = 70;
/// Talk before the hold and after the resume.
const TALK_MS: u64 = 4_000;
/// Audio left to settle after an event before its phase is analysed.
const SETTLE_MS: u64 = 1_000;
/// How much of the hold the browser records (the rest is not kept).
const HOLD_RECORD_MS: u64 = 3_000;

/// Holds the call placed by CALL_SCRIPT, waits for `held`, records
/// `recordMs` of the hold and pauses the recorder. Returns `held`'s detail.
const HOLD_SCRIPT: &str = r#"
const [opts] = arguments;
const done = arguments[arguments.length - 1];
(async () => {
  const call = S.call;
  if (!call) throw new Error('no call in progress');
  const endedEarly = S.ended.then((d) => { throw new Error(`call ended: ${JSON.stringify(d)}`); });
  call.addEventListener('error', (e) => log(`error ${JSON.stringify(e.detail)}`));
  const held = new Promise((resolve) => call.addEventListener('held', (e) => {
    mark('held');
    log(`held ${JSON.stringify(e.detail)}`);
    resolve(e.detail);
  }, { once: true }));
  mark('hold');
  call.hold();
  const detail = await withTimeout(Promise.race([held, endedEarly]), 10000, "'held'");
  await Promise.race([sleep(opts.recordMs), endedEarly]);
  S.recording = false;
  log('recorder paused for the rest of the hold');
  return { by: detail.by, events: S.events };
})().then(done, (e) => S.fail(e).then(done));
"#;

/// Resumes the held call, records `afterMs` more, hangs up and returns the
/// outcome of `S.finish`.
const RESUME_SCRIPT: &str = r#"
const [opts] = arguments;
const done = arguments[arguments.length - 1];
(async () => {
  const call = S.call;
  const endedEarly = S.ended.then((d) => { throw new Error(`call ended: ${JSON.stringify(d)}`); });
  const resumed = new Promise((resolve) => call.addEventListener('resumed', (e) => {
    mark('resumed');
    log(`resumed ${JSON.stringify(e.detail)}`);
    resolve(e.detail);
  }, { once: true }));
  S.recording = true;
  mark('resume');
  call.resume();
  await withTimeout(Promise.race([resumed, endedEarly]), 10000, "'resumed'");
  await Promise.race([sleep(opts.afterMs), endedEarly]);
  S.stopRecording();
  S.lastStats = await stats();
  mark('hangup');
  call.hangup();
  await withTimeout(S.ended, 5000, "'ended' after hangup");
  return await S.finish();
})().then(done, (e) => S.fail(e).then(done));
"#;

/// Chromium calls baresip, holds for 70 s and resumes. While held, the
/// PBX side hears nothing (baresip's recording has no hold in it) and the
/// browser hears nothing (baresip answered recvonly); after resume both
/// tones come back, on the same RTP streams (SRTP and baresip's jitter
/// buffer take them as they are).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_holds_baresip_for_70_s_and_resumes_with_audio_both_ways() {
    let bob = tokio::task::spawn_blocking(|| {
        Baresip::start(BaresipOptions {
            user: "bob",
            tone_hz: BARESIP_TONE_HZ,
            codecs: &["PCMU"],
            ..Default::default()
        })
    })
    .await
    .unwrap();
    // A plain relay on the SIP leg (no loss) counts the RTP on the wire.
    let wire = LossyProxy::start(bob.sip_addr(), 0.0, 1).await;
    let gw = start_sip_gateway(wire.sip_port(), "127.0.0.1", |c| {
        // A hold must not count as silence, even at a short media timeout.
        c.media.timeout_secs = 20;
    })
    .await;
    let page = format!("http://{}/", gw.http_addr());

    let rtp = wire.forwarded.clone();
    let (bob, outcome) = tokio::task::spawn_blocking(move || {
        let run = || -> Result<(Value, Value, u64), String> {
            let (browser, _wav) = launch_browser(&page)?;
            let placed = run_script(
                &browser,
                CALL_SCRIPT,
                json!({"to": "bob", "codec": "PCMU", "hangup": false}),
            )?;
            assert_eq!(placed["inCall"], true, "{placed}");
            std::thread::sleep(Duration::from_millis(TALK_MS));
            let held = run_script(&browser, HOLD_SCRIPT, json!({"recordMs": HOLD_RECORD_MS}))?;
            let on_hold = rtp.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(HOLD_S) - Duration::from_millis(HOLD_RECORD_MS));
            let during_hold = rtp.load(Ordering::Relaxed) - on_hold;
            let finished = run_script(&browser, RESUME_SCRIPT, json!({"afterMs": TALK_MS}))?;
            Ok((held, finished, during_hold))
        };
        let outcome = run();
        (bob, outcome)
    })
    .await
    .expect("browser task panicked");
    let (held, finished, during_hold) = outcome.unwrap_or_else(|e| {
        panic!(
            "browser side failed: {e}\n--- baresip log ---\n{}",
            bob.log()
        )
    });
    assert_eq!(held["by"], "local", "{held}");
    let rec = Recording::parse(finished);
    println!("browser events: {}", rec.events());
    println!("marks: {:?}", rec.marks);

    let phase = |from: usize, to: usize| {
        let w = rec.window(from, to);
        (
            rec.seconds(w.len()),
            tone_coverage(w, rec.rate, BARESIP_TONE_HZ),
            tone_coverage(w, rec.rate, BROWSER_TONE_HZ),
        )
    };
    let settle = rec.ms(SETTLE_MS);
    let before = phase(rec.mark("answered") + settle, rec.mark("hold"));
    let during = phase(rec.mark("held") + rec.ms(300), rec.mark("resume"));
    let after = phase(rec.mark("resumed") + settle, rec.mark("hangup"));
    for (name, (secs, tone, control)) in [
        ("before hold", before),
        ("on hold", during),
        ("after resume", after),
    ] {
        println!(
            "browser, {name}: {secs:.2} s, {BARESIP_TONE_HZ} Hz in {tone:.3} of frames, {BROWSER_TONE_HZ} Hz {control:.3}"
        );
    }
    assert!(
        before.0 >= 2.0 && before.1 >= 0.9,
        "the browser heard baresip before the hold: {before:?}"
    );
    assert!(
        during.0 >= 2.0 && during.1 < 0.1,
        "the browser heard nothing on hold: {during:?}"
    );
    assert!(
        after.0 >= 2.5 && after.1 >= 0.9,
        "the browser hears baresip after {HOLD_S} s on hold: {after:?}"
    );
    assert!(before.2 < 0.1 && after.2 < 0.1, "negative control");

    // Nothing crossed the SIP leg either way for the rest of the hold.
    let total = wire.forwarded.load(Ordering::Relaxed);
    println!(
        "RTP on the SIP leg: {total} packets in all, {during_hold} in the last {} s of the hold",
        HOLD_S - HOLD_RECORD_MS / 1000
    );
    assert_eq!(during_hold, 0, "no RTP either way while held");
    assert!(
        total > 600,
        "talk before and after the hold went over the wire: {total}"
    );

    // baresip hears the browser again after the resume (it starts a new
    // recording when the re-INVITE restarts its stream).
    let closed = tokio::task::spawn_blocking(move || {
        let closed = bob.wait_for_event("CALL_CLOSED", SIGNALING_TIMEOUT);
        (bob, closed)
    })
    .await
    .unwrap();
    let (bob, closed) = closed;
    closed.unwrap_or_else(|e| panic!("{e}"));
    let (samples, rate) = bob.recorded_audio();
    let recorded = samples.len() as f64 / f64::from(rate);
    let (tone, control) = (
        tone_coverage(&samples, rate, BROWSER_TONE_HZ),
        tone_coverage(&samples, rate, BARESIP_TONE_HZ),
    );
    println!(
        "baresip recorded {recorded:.2} s after the resume: {BROWSER_TONE_HZ} Hz in {tone:.3} of frames, {BARESIP_TONE_HZ} Hz {control:.3}"
    );
    assert!(
        recorded >= 3.0,
        "baresip's recording after the resume: {recorded:.2} s"
    );
    assert!(
        tone >= 0.9,
        "baresip hears the browser after the resume: {tone:.3}"
    );
    assert!(control < 0.1, "negative control: {control:.3}");
    for event in ["held_local", "resumed_local"] {
        let series = format!("gangway_mid_call_events_total{{event=\"{event}\"}}");
        assert_eq!(metric_or_zero(&gw, &series).await, 1.0, "{series}");
    }
    assert_eq!(
        metric_or_zero(&gw, "gangway_media_timeouts_total").await,
        0.0
    );
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}
