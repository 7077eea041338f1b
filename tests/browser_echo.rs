//! End to end with a real browser: headless Chromium calls the gateway's
//! `echo` line through `/client.js`, with a 1000 Hz tone as its fake
//! microphone, records what comes back and the tests check that the tone
//! survived the round trip (and that a 440 Hz tone, never sent, is absent).
//!
//! Needs Debian's `chromium` and `chromium-driver`; without them the tests
//! fail (they never skip).

use std::time::Duration;

use gangway_tests::audio::tone_coverage;
use gangway_tests::browser_call::{
    launch_browser, level_dbfs, pretty, run_script, Recording, BROWSER_TONE_HZ, CALL_SCRIPT,
};
use gangway_tests::gateway::{scrape_metric, start_gateway, wait_metric};
use serde_json::json;

const CONTROL_HZ: f64 = 440.0;
/// Audio left to settle (jitter buffer, codec start-up) before the analysed part.
const SETTLE_MS: u64 = 1_000;
const RECORD_MS: u64 = 5_000;

async fn browser_echo(codec: &'static str) {
    let started = std::time::Instant::now();
    let gw = start_gateway().await;
    let page = format!("http://{}/", gw.http_addr());

    let outcome = tokio::task::spawn_blocking(move || {
        let (browser, _wav) = launch_browser(&page)?;
        run_script(
            &browser,
            CALL_SCRIPT,
            json!({ "to": "echo", "codec": codec, "holdMs": SETTLE_MS + RECORD_MS + 200, "hangup": true }),
        )
    })
    .await
    .expect("browser task panicked");
    let rec = match outcome {
        Ok(v) => Recording::parse(v),
        Err(e) => panic!("[{codec}] browser side failed: {e}"),
    };
    println!("[{codec}] events: {}", rec.events());
    println!(
        "[{codec}] peer connection: {}",
        pretty(&rec.result["stats"])
    );

    let from = rec.mark("answered") + rec.ms(SETTLE_MS);
    let heard = rec.window(from, from + rec.ms(RECORD_MS));
    let seconds = rec.seconds(heard.len());
    let at_tone = tone_coverage(heard, rec.rate, BROWSER_TONE_HZ);
    let at_control = tone_coverage(heard, rec.rate, CONTROL_HZ);
    let level = level_dbfs(heard);
    println!(
        "[{codec}] recorded {seconds:.2} s at {} Hz, RMS {level:.1} dBFS; \
         coverage at {BROWSER_TONE_HZ} Hz = {at_tone:.3}, at {CONTROL_HZ} Hz = {at_control:.3}",
        rec.rate
    );

    assert!(
        seconds >= RECORD_MS as f64 / 1000.0 * 0.9,
        "[{codec}] only {seconds:.2} s of audio recorded; events: {}",
        rec.events()
    );
    let negotiated = rec.result["codec"].as_str().unwrap_or("");
    assert!(
        negotiated.eq_ignore_ascii_case(&format!("audio/{codec}")),
        "[{codec}] negotiated codec {negotiated:?}, expected audio/{codec}"
    );
    assert!(
        at_tone >= 0.90,
        "[{codec}] the {BROWSER_TONE_HZ} Hz tone dominates only {:.1}% of 20 ms frames \
         (want >= 90%); RMS {level:.1} dBFS; peer connection: {}",
        at_tone * 100.0,
        pretty(&rec.result["stats"])
    );
    assert!(
        at_control < 0.10,
        "[{codec}] negative control: {CONTROL_HZ} Hz dominates {:.1}% of frames",
        at_control * 100.0
    );
    assert_eq!(
        rec.result["endReason"]["reason"], "hangup",
        "[{codec}] end reason"
    );

    // The gateway tears the call down asynchronously after `ended`.
    let calls = wait_metric(&gw, "gangway_calls_active", 0.0, Duration::from_secs(2)).await;
    let peers = wait_metric(
        &gw,
        "gangway_webrtc_peers_active",
        0.0,
        Duration::from_secs(2),
    )
    .await;
    let hangups = scrape_metric(&gw, "gangway_calls_ended_total{reason=\"hangup\"}").await;
    println!("[{codec}] after the call: calls_active {calls}, webrtc_peers_active {peers}, hangups {hangups}");
    assert_eq!(calls, 0.0, "[{codec}] gangway_calls_active after hangup");
    assert_eq!(
        peers, 0.0,
        "[{codec}] gangway_webrtc_peers_active after hangup"
    );
    assert!(
        hangups >= 1.0,
        "[{codec}] gangway_calls_ended_total{{reason=\"hangup\"}} = {hangups}"
    );

    gw.shutdown(Duration::from_secs(1)).await;
    println!("[{codec}] done in {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_echo_opus_only() {
    browser_echo("opus").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_echo_pcmu_only() {
    browser_echo("PCMU").await;
}
