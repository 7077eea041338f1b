//! End to end from a real browser to real SIP peers: headless Chromium
//! (a 1000 Hz tone as its fake microphone, PCMU only) calls through the
//! gateway's SIP leg
//! - baresip, which auto-answers playing 440 Hz and records what it gets:
//!   both directions carry their tone, and either side can hang up;
//! - a sipp UAS that plays 700 Hz as early media (183 with SDP), then
//!   answers and plays 1200 Hz: the browser hears each at the right time.
//!
//! The page records the remote audio in WebAudio from the first remote
//! track on, and marks where in that recording the call's events arrived,
//! so the Rust side can cut the recording by event.
//!
//! Needs Debian's `chromium`, `chromium-driver`, `baresip` and
//! `sip-tester`; without them the tests fail (they never skip). They run
//! one at a time (three Chromiums and their audio on a small CI machine
//! would starve each other).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gangway_tests::audio::tone_coverage;
use gangway_tests::browser_call::{
    launch_browser, level_dbfs, pretty, recording_or_panic, run_script, serial, Recording,
    BROWSER_TONE_HZ, CALL_SCRIPT, WAIT_END_SCRIPT,
};
use gangway_tests::gateway::{
    assert_no_leftovers, metric_value, scrape, scrape_metric, start_sip_gateway,
};
use gangway_tests::impair::LossyProxy;
use gangway_tests::kamailio::{Kamailio, KamailioOptions};
use gangway_tests::sip_flood::{alive_tasks, flood, open_fds, KINDS};
use gangway_tests::sip_peers::{
    Baresip, BaresipOptions, Sipp, ANSWER_MEDIA_TONE_HZ, EARLY_MEDIA_TONE_HZ, PCMA_TONE_HZ,
};
use serde_json::json;

/// baresip's tone.
const BARESIP_TONE_HZ: f64 = 440.0;
/// Audio left to settle (jitter buffers, codec start-up) after `answered`
/// before the analysed part of a recording starts.
const SETTLE_MS: u64 = 1_000;
/// Length of the analysed part of the browser's recording.
const RECORD_MS: u64 = 5_000;
/// What baresip's recording loses at its start before the analysis.
const BARESIP_TRIM_S: f64 = 0.5;
/// Least baresip must have recorded after the trim.
const BARESIP_MIN_S: f64 = 4.0;
/// How long sipp's early media plays before its 200 (its scenario's pause).
const EARLY_MEDIA_MS: u64 = 3_000;
/// How long the early-media test stays in the call after `answered`.
const AFTER_ANSWER_MS: u64 = 4_000;
/// Margin around event marks when cutting the early-media recording: the
/// audio of a phase reaches the recording after the signalling that starts
/// it (jitter buffer, WebAudio buffering), and marks are only as precise as
/// the recorder's buffer (2048 samples, 43 ms).
const EDGE_MS: u64 = 300;
const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer the call that measures the SIP leg's RTT lasts: baresip
/// reports every ~5 s (randomised), and only a report sent after one of our
/// sender reports reached it carries an RTT.
const RTT_EXTRA_HOLD_MS: u64 = 8_000;

/// A gateway whose trunk is the SIP peer at 127.0.0.1:`trunk_port`.
async fn gateway_to(trunk_port: u16, domain: &str) -> gangway::Gateway {
    start_sip_gateway(trunk_port, domain, |_| {}).await
}

/// The gateway's packet counters, for the log and failure messages.
async fn media_counters(gw: &gangway::Gateway) -> String {
    let text = scrape(gw).await;
    [
        "gangway_rtp_packets_received_total",
        "gangway_rtp_dropped_total",
        "gangway_rtp_packets_sent_total",
        "gangway_webrtc_packets_received_total",
        "gangway_webrtc_packets_sent_total",
    ]
    .iter()
    .map(|series| {
        let v = metric_value(&text, series).map_or("-".to_string(), |v| v.to_string());
        format!("{} {v}", series.trim_start_matches("gangway_"))
    })
    .collect::<Vec<_>>()
    .join(", ")
}

fn start_bob() -> Baresip {
    Baresip::start(BaresipOptions {
        user: "bob",
        tone_hz: BARESIP_TONE_HZ,
        codecs: &["PCMU"],
        ..Default::default()
    })
}

/// baresip's side of a call, read after its CALL_CLOSED.
fn baresip_heard(bob: &Baresip) -> (f64, f64, f64, f64) {
    let (samples, rate) = bob.recorded_audio();
    let trim = ((BARESIP_TRIM_S * f64::from(rate)) as usize).min(samples.len());
    let heard = &samples[trim..];
    let seconds = heard.len() as f64 / f64::from(rate);
    (
        seconds,
        tone_coverage(heard, rate, BROWSER_TONE_HZ),
        tone_coverage(heard, rate, BARESIP_TONE_HZ),
        level_dbfs(heard),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_calls_baresip_audio_both_ways() {
    let _serial = serial().await;
    let bob = tokio::task::spawn_blocking(start_bob).await.unwrap();
    // A bare user becomes sip:bob@127.0.0.1, sent to baresip's port.
    let gw = gateway_to(bob.sip_addr().port(), "127.0.0.1").await;
    let before = scrape_metric(&gw, "gangway_sip_leg_rtt_seconds_count").await;
    call_bob_and_check_tones(
        "browser->baresip",
        &gw,
        bob,
        "PCMU",
        0.90,
        RTT_EXTRA_HOLD_MS,
    )
    .await;
    // baresip's RTCP (a compound SR every ~5 s, with a report block about
    // our stream) gave the SIP leg a round-trip time.
    let text = scrape(&gw).await;
    let count = metric_value(&text, "gangway_sip_leg_rtt_seconds_count").unwrap_or(0.0);
    let rtt = metric_value(&text, "gangway_sip_leg_rtt_seconds_sum").unwrap_or(0.0);
    println!(
        "[browser->baresip] SIP-leg RTT from baresip's RTCP: {:.3} ms ({count} call(s) measured)",
        rtt * 1000.0
    );
    assert_eq!(
        (before, count),
        (0.0, 1.0),
        "the call's SIP-leg RTT was measured from baresip's report blocks"
    );
    assert!(
        (0.0..0.050).contains(&rtt),
        "an RTT on loopback is far below 50 ms: {rtt} s"
    );
    // The browser's RTCP measured the WebRTC leg the same way (str0m's
    // stats every 2 s; this call lasts long enough for several).
    let browser_rtt_calls =
        metric_value(&text, "gangway_webrtc_leg_rtt_seconds_count").unwrap_or(0.0);
    let browser_rtt = metric_value(&text, "gangway_webrtc_leg_rtt_seconds_sum").unwrap_or(0.0);
    println!(
        "[browser->baresip] WebRTC-leg RTT: {:.3} ms",
        browser_rtt * 1000.0
    );
    assert!(
        browser_rtt_calls == 1.0 && browser_rtt < 0.050,
        "the browser's RTT was measured: {browser_rtt} s over {browser_rtt_calls} call(s)"
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

/// A browser that offers only Opus reaches a G.711-only phone: the gateway
/// transcodes Opus ↔ PCMU at 8 kHz, and both tones still come through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_only_browser_calls_baresip_transcoded() {
    let _serial = serial().await;
    let bob = tokio::task::spawn_blocking(start_bob).await.unwrap();
    let gw = gateway_to(bob.sip_addr().port(), "127.0.0.1").await;
    call_bob_and_check_tones("opus browser->baresip", &gw, bob, "opus", 0.90, 0).await;
    // Our answer asked for narrowband Opus (maxplaybackrate=8000): the
    // bandwidth in the TOC byte of what Chromium sent says it listened.
    let text = scrape(&gw).await;
    let series = |b: &str| format!("gangway_browser_opus_packets_total{{bandwidth=\"{b}\"}}");
    let narrow = metric_value(&text, &series("narrow")).unwrap_or(0.0);
    let wide = metric_value(&text, &series("wide")).unwrap_or(0.0);
    let share = narrow / (narrow + wide).max(1.0);
    println!(
        "[opus browser->baresip] browser Opus packets: {narrow} narrowband, {wide} wider \
         ({:.1} % narrowband)",
        share * 100.0
    );
    assert!(
        narrow + wide >= 250.0,
        "the browser's Opus packets were counted"
    );
    assert!(
        share >= 0.90,
        "Chromium coded only {:.1} % of its Opus packets narrowband",
        share * 100.0
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

/// The transcoded call again, with 5 % of the SIP leg's RTP dropped at random
/// in both directions by a loopback impairment proxy: the tones must still
/// cover ≥ 85 % of the frames, and the gateway's statistics report the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_browser_to_baresip_through_5_percent_loss() {
    let _serial = serial().await;
    let bob = tokio::task::spawn_blocking(start_bob).await.unwrap();
    let proxy = LossyProxy::start(bob.sip_addr(), 0.05, 0x5eed).await;
    let gw = gateway_to(proxy.sip_port(), "127.0.0.1").await;
    call_bob_and_check_tones("opus browser->5% loss->baresip", &gw, bob, "opus", 0.85, 0).await;
    let (forwarded, dropped) = (
        proxy.forwarded.load(Ordering::Relaxed),
        proxy.dropped.load(Ordering::Relaxed),
    );
    let share = dropped as f64 / (forwarded + dropped) as f64;
    println!(
        "proxy: {forwarded} RTP packets forwarded, {dropped} dropped ({:.1} %)",
        share * 100.0
    );
    assert!(
        forwarded > 400 && (0.02..0.09).contains(&share),
        "the proxy impaired the media path"
    );
    // The gateway measured the loss on what it received from the SIP leg.
    let reported = scrape_metric(&gw, "gangway_sip_leg_loss_ratio_sum").await;
    println!(
        "gateway's SIP-leg loss for the call: {:.1} %",
        reported * 100.0
    );
    assert!((0.02..0.09).contains(&reported), "reported loss {reported}");
    // The estimate reflects it: a clean call scores about 4.4.
    let mos = scrape_metric(&gw, "gangway_call_mos_sum").await;
    println!("estimated MOS of the call: {mos:.2}");
    assert!(
        (3.0..4.25).contains(&mos),
        "estimated MOS {mos} under ~4 % loss"
    );
    // The PBX's lost packets were filled in before the Opus encoder.
    let concealed = scrape_metric(&gw, "gangway_concealed_frames_total{leg=\"sip\"}").await;
    println!("SIP-leg frames concealed: {concealed}");
    assert!(concealed >= 5.0, "concealed {concealed} of ~15 lost frames");
    gw.shutdown(Duration::from_secs(1)).await;
}

/// The transcoded call with one in ten of baresip's RTP packets arriving
/// 60 ms late, after three later ones: the gateway's reorder buffer gives up
/// on the first one or two (its depth starts at 20 ms), measures how late
/// they came, waits longer from then on, and puts the rest back in order
/// before the Opus encoder instead of concealing them. A fixed 20 ms buffer
/// conceals every one (checked by pinning the depth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_browser_to_baresip_with_reordered_packets() {
    let _serial = serial().await;
    let bob = tokio::task::spawn_blocking(start_bob).await.unwrap();
    let proxy = LossyProxy::start_reordering(bob.sip_addr(), 0.0, 0.10, 3, 0x0dd).await;
    let gw = gateway_to(proxy.sip_port(), "127.0.0.1").await;
    call_bob_and_check_tones("opus browser<-reordered-baresip", &gw, bob, "opus", 0.95, 0).await;
    let reordered = proxy.reordered.load(Ordering::Relaxed);
    let text = scrape(&gw).await;
    // Absent when nothing was concealed.
    let concealed =
        metric_value(&text, "gangway_concealed_frames_total{leg=\"sip\"}").unwrap_or(0.0);
    let lost = metric_value(&text, "gangway_sip_leg_loss_ratio_sum").expect("one call measured");
    println!(
        "proxy held back {reordered} packets towards the gateway by 3 packets; gateway concealed {concealed} frames, measured loss {:.2} %",
        lost * 100.0
    );
    assert!(reordered >= 20, "the proxy reordered the media path");
    assert!(
        concealed <= 3.0,
        "{concealed} frames concealed for {reordered} late packets: the depth did not adapt"
    );
    assert!(lost < 0.01, "reordering is not loss: {lost}");
    gw.shutdown(Duration::from_secs(1)).await;
}

/// The same call through kamailio as registrar and proxy: bob registers with
/// digest auth, kamailio challenges the gateway's INVITE with 407, and the
/// call reaches bob at his registered contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_calls_registered_baresip_through_kamailio() {
    let _serial = serial().await;
    let kam = tokio::task::spawn_blocking(|| {
        Kamailio::start(KamailioOptions {
            users: &[("gangway", "gwpw"), ("bob", "bobpw")],
            domain: "pbx.test",
        })
    })
    .await
    .unwrap();
    let registrar = kam.registrar_uri();
    let bob = tokio::task::spawn_blocking(move || {
        let bob = Baresip::start(BaresipOptions {
            user: "bob",
            tone_hz: BARESIP_TONE_HZ,
            codecs: &["PCMU"],
            register: Some((&registrar, "bobpw")),
            ..Default::default()
        });
        bob.wait_registered(SIGNALING_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        bob
    })
    .await
    .unwrap();
    let gw = start_sip_gateway(kam.port(), "pbx.test", |c| {
        c.sip.trunk.username = Some("gangway".into());
        c.sip.trunk.password = Some("gwpw".into());
    })
    .await;
    call_bob_and_check_tones("browser->kamailio->baresip", &gw, bob, "PCMU", 0.90, 0).await;
    assert!(
        kam.challenges(407, "INVITE") >= 1,
        "kamailio challenged the INVITE with 407: {:?}",
        kam.markers()
    );
    gw.shutdown(Duration::from_secs(1)).await;
}

/// Calls `bob` from Chromium (1000 Hz, PCMU), records 5 s after the answer,
/// stays `extra_hold_ms` longer, hangs up, and checks both directions by
/// tone with negative controls.
async fn call_bob_and_check_tones(
    t: &str,
    gw: &gangway::Gateway,
    bob: Baresip,
    codec: &'static str,
    min_coverage: f64,
    extra_hold_ms: u64,
) {
    let started = Instant::now();
    let page = format!("http://{}/", gw.http_addr());

    let (bob, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = launch_browser(&page).and_then(|(browser, _wav)| {
            run_script(
                &browser,
                CALL_SCRIPT,
                json!({
                    "to": "bob",
                    "codec": codec,
                    "holdMs": SETTLE_MS + RECORD_MS + 200 + extra_hold_ms,
                    "hangup": true,
                }),
            )
        });
        (bob, outcome)
    })
    .await
    .expect("browser task panicked");
    let rec = recording_or_panic(t, outcome, &bob);
    println!("[{t}] browser events: {}", rec.events());
    println!("[{t}] marks: {:?}", rec.marks);

    // The browser heard baresip.
    let from = rec.mark("answered") + rec.ms(SETTLE_MS);
    let heard = rec.window(from, from + rec.ms(RECORD_MS));
    let seconds = rec.seconds(heard.len());
    let b_tone = tone_coverage(heard, rec.rate, BARESIP_TONE_HZ);
    let b_control = tone_coverage(heard, rec.rate, BROWSER_TONE_HZ);
    println!(
        "[{t}] browser recorded {seconds:.2} s at {} Hz ({:.1} dBFS): {BARESIP_TONE_HZ} Hz in \
         {b_tone:.3} of frames, {BROWSER_TONE_HZ} Hz (control) in {b_control:.3}",
        rec.rate,
        level_dbfs(heard)
    );

    // baresip saw the call end and heard the browser.
    let closed = tokio::task::spawn_blocking(move || {
        let closed = bob.wait_for_event("CALL_CLOSED", SIGNALING_TIMEOUT);
        (bob, closed)
    })
    .await
    .unwrap();
    let (bob, closed) = closed;
    let closed = closed.unwrap_or_else(|e| panic!("[{t}] {e}"));
    println!("[{t}] baresip's call closed: {}", closed["param"]);
    let (bob_s, bob_tone, bob_control, bob_db) = baresip_heard(&bob);
    println!(
        "[{t}] baresip recorded {bob_s:.2} s after a {BARESIP_TRIM_S} s trim ({bob_db:.1} dBFS): \
         {BROWSER_TONE_HZ} Hz in {bob_tone:.3} of frames, {BARESIP_TONE_HZ} Hz (control) in \
         {bob_control:.3}"
    );

    let negotiated = rec.result["codec"].as_str().unwrap_or("");
    assert!(
        negotiated.eq_ignore_ascii_case(&format!("audio/{codec}")),
        "[{t}] browser's inbound codec {negotiated:?}, expected audio/{codec}"
    );
    assert!(
        seconds >= RECORD_MS as f64 / 1000.0 * 0.95,
        "[{t}] the browser recorded only {seconds:.2} s after answered + {SETTLE_MS} ms; \
         events: {}",
        rec.events()
    );
    assert!(
        b_tone >= min_coverage,
        "[{t}] the browser heard baresip's {BARESIP_TONE_HZ} Hz in only {:.1}% of frames; \
         peer connection: {}\nevents: {}",
        b_tone * 100.0,
        pretty(&rec.result["stats"]),
        rec.events()
    );
    assert!(
        b_control < 0.10,
        "[{t}] negative control: the browser heard {BROWSER_TONE_HZ} Hz in {:.1}% of frames",
        b_control * 100.0
    );
    assert!(
        bob_s >= BARESIP_MIN_S,
        "[{t}] baresip recorded only {bob_s:.2} s (after the trim)\n{}",
        bob.log()
    );
    assert!(
        bob_tone >= min_coverage,
        "[{t}] baresip heard the browser's {BROWSER_TONE_HZ} Hz in only {:.1}% of frames\n{}",
        bob_tone * 100.0,
        bob.log()
    );
    assert!(
        bob_control < 0.10,
        "[{t}] negative control: baresip heard {BARESIP_TONE_HZ} Hz in {:.1}% of frames",
        bob_control * 100.0
    );
    assert_eq!(
        rec.result["endReason"]["reason"],
        "hangup",
        "[{t}] end reason; events: {}",
        rec.events()
    );

    // RTCP on the SIP leg: our sender reports went out, baresip's came in.
    let rtcp_sent = scrape_metric(gw, "gangway_rtcp_packets_sent_total").await;
    let rtcp_received = scrape_metric(gw, "gangway_rtcp_packets_received_total").await;
    println!("[{t}] RTCP on the SIP leg: {rtcp_sent} sent, {rtcp_received} received");
    assert!(
        rtcp_sent >= 1.0,
        "[{t}] no RTCP report was sent to the SIP leg"
    );

    assert_no_leftovers(gw).await;
    let hangups = scrape_metric(gw, "gangway_calls_ended_total{reason=\"hangup\"}").await;
    assert!(hangups >= 1.0, "[{t}] calls ended by hangup: {hangups}");
    drop(bob);
    println!("[{t}] done in {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_hangs_up_browser_gets_remote_hangup() {
    const T: &str = "baresip hangs up";
    let _serial = serial().await;
    let started = Instant::now();
    let bob = tokio::task::spawn_blocking(start_bob).await.unwrap();
    let gw = gateway_to(bob.sip_addr().port(), "127.0.0.1").await;
    let page = format!("http://{}/", gw.http_addr());

    let (bob, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = launch_browser(&page).and_then(|(browser, _wav)| {
            let in_call = run_script(
                &browser,
                CALL_SCRIPT,
                json!({ "to": "bob", "codec": "PCMU", "holdMs": 0, "hangup": false }),
            )?;
            println!("[{T}] answered: {}", pretty(&in_call["events"]));
            bob.wait_for_event("CALL_ESTABLISHED", SIGNALING_TIMEOUT)?;
            std::thread::sleep(Duration::from_secs(2));
            bob.hangup()?;
            let closed = bob.wait_for_event("CALL_CLOSED", SIGNALING_TIMEOUT)?;
            println!("[{T}] baresip's call closed: {}", closed["param"]);
            run_script(&browser, WAIT_END_SCRIPT, json!(10_000))
        });
        (bob, outcome)
    })
    .await
    .expect("browser task panicked");
    let rec = match outcome {
        Ok(v) => Recording::parse(v),
        Err(e) => panic!(
            "[{T}] failed: {e}\n--- baresip events ---\n{:?}\n--- baresip log ---\n{}",
            bob.events(),
            bob.log()
        ),
    };
    println!("[{T}] browser events: {}", rec.events());
    println!("[{T}] marks: {:?}", rec.marks);
    // Not asserted (the other test covers audio): what the browser heard.
    let from = rec.mark("answered") + rec.ms(500);
    let heard = rec.window(from, rec.mark("ended"));
    println!(
        "[{T}] the browser heard {BARESIP_TONE_HZ} Hz in {:.3} of {:.2} s",
        tone_coverage(heard, rec.rate, BARESIP_TONE_HZ),
        rec.seconds(heard.len())
    );

    assert_eq!(
        rec.result["endReason"],
        json!({ "reason": "remote_hangup", "code": null }),
        "[{T}] the browser's end reason; events: {}",
        rec.events()
    );
    assert_no_leftovers(&gw).await;
    let remote = scrape_metric(&gw, "gangway_calls_ended_total{reason=\"remote_hangup\"}").await;
    assert!(
        remote >= 1.0,
        "[{T}] calls ended by remote hangup: {remote}"
    );
    gw.shutdown(Duration::from_secs(1)).await;
    drop(bob);
    println!("[{T}] done in {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_then_answer_tones() {
    const T: &str = "early media";
    const A: f64 = EARLY_MEDIA_TONE_HZ;
    const B: f64 = ANSWER_MEDIA_TONE_HZ;
    let _serial = serial().await;
    let started = Instant::now();
    let sipp = tokio::task::spawn_blocking(|| Sipp::uas("uas_early_then_answer.xml", 0, &[]))
        .await
        .unwrap();
    let gw = gateway_to(sipp.port(), "pbx.test").await;
    let page = format!("http://{}/", gw.http_addr());

    let outcome = tokio::task::spawn_blocking(move || {
        let (browser, _wav) = launch_browser(&page)?;
        run_script(
            &browser,
            CALL_SCRIPT,
            json!({ "to": "1000", "codec": "PCMU", "holdMs": AFTER_ANSWER_MS, "hangup": true }),
        )
    })
    .await
    .expect("browser task panicked");
    let mut sipp = sipp;
    let rec = match outcome {
        Ok(v) => Recording::parse(v),
        Err(e) => {
            let _ = sipp.wait(Duration::ZERO);
            panic!(
                "[{T}] browser side failed: {e}\n--- sipp messages ---\n{}\n--- sipp errors ---\n{}",
                sipp.messages(),
                sipp.errors()
            )
        }
    };
    println!("[{T}] browser events: {}", rec.events());
    println!("[{T}] marks: {:?}", rec.marks);
    let sipp_result = tokio::task::spawn_blocking(move || {
        let r = sipp.wait(SIGNALING_TIMEOUT);
        (sipp, r)
    })
    .await
    .unwrap();
    let (sipp, sipp_result) = sipp_result;

    let counters = media_counters(&gw).await;
    println!("[{T}] gateway media counters: {counters}");
    // Early media that beats the 183's SDP to the bridge is held and played, not dropped.
    let dropped = scrape_metric(&gw, "gangway_rtp_dropped_total").await;
    assert_eq!(dropped, 0.0, "[{T}] RTP dropped by the bridge: {counters}");
    println!(
        "[{T}] browser inbound: {}",
        rec.result["stats"]["reports"]["inbound"]
    );
    let (progress, answered, stop) = (rec.mark("progress"), rec.mark("answered"), rec.mark("stop"));
    let connected = rec.mark("connected");
    let tones = [('A', A), ('B', B)];
    let start = progress.min(connected);
    let timeline = rec.timeline(start, &tones);
    let at = |mark: usize| (mark.saturating_sub(start)) / rec.ms(100);
    println!(
        "[{T}] per 100 ms from {} (A = {A} Hz, B = {B} Hz; progress at block {}, connected {}, \
         answered {}, hangup {}):\n{timeline}",
        if progress <= connected {
            "progress"
        } else {
            "connected"
        },
        at(progress),
        at(connected),
        at(answered),
        at(stop)
    );

    // Early media: from when it can be heard (signalled and media
    // connected) until the answer.
    let a_from = progress.max(connected) + rec.ms(EDGE_MS);
    let a_to = answered;
    let early = rec.window(a_from, a_to);
    let early_s = rec.seconds(early.len());
    let a_in_a = tone_coverage(early, rec.rate, A);
    let b_in_a = tone_coverage(early, rec.rate, B);
    // After the answer.
    let b_from = answered + rec.ms(EDGE_MS);
    let talk = rec.window(b_from, stop);
    let talk_s = rec.seconds(talk.len());
    let b_in_b = tone_coverage(talk, rec.rate, B);
    let a_in_b = tone_coverage(talk, rec.rate, A);
    println!(
        "[{T}] early media window {early_s:.2} s ({:.1} dBFS): {A} Hz in {a_in_a:.3} of frames, \
         {B} Hz in {b_in_a:.3}; after answered {talk_s:.2} s ({:.1} dBFS): {B} Hz in \
         {b_in_b:.3}, {A} Hz in {a_in_b:.3}",
        level_dbfs(early),
        level_dbfs(talk)
    );

    let context = || {
        format!(
            "timeline (A = {A} Hz, B = {B} Hz, per 100 ms): {timeline}\nbrowser events: {}\n\
             peer connection: {}\ngateway: {counters}\n--- sipp errors ---\n{}",
            rec.events(),
            pretty(&rec.result["stats"]),
            sipp.errors()
        )
    };
    assert!(
        progress < answered,
        "[{T}] 'progress' must come before 'answered'\n{}",
        context()
    );
    assert!(
        early_s >= 1.5,
        "[{T}] only {early_s:.2} s of early media could be heard (sipp plays {EARLY_MEDIA_MS} ms \
         of it): media connected too late?\n{}",
        context()
    );
    assert!(
        a_in_a >= 0.90,
        "[{T}] early media: {A} Hz in only {:.1}% of frames between progress and answered\n{}",
        a_in_a * 100.0,
        context()
    );
    assert!(
        b_in_a < 0.10,
        "[{T}] early media: the answer's {B} Hz already in {:.1}% of frames\n{}",
        b_in_a * 100.0,
        context()
    );
    assert!(
        talk_s >= (AFTER_ANSWER_MS - EDGE_MS) as f64 / 1000.0 * 0.9,
        "[{T}] only {talk_s:.2} s recorded after answered\n{}",
        context()
    );
    assert!(
        b_in_b >= 0.90,
        "[{T}] after answered: {B} Hz in only {:.1}% of frames\n{}",
        b_in_b * 100.0,
        context()
    );
    assert!(
        a_in_b < 0.10,
        "[{T}] after answered: early media's {A} Hz still in {:.1}% of frames\n{}",
        a_in_b * 100.0,
        context()
    );
    assert_eq!(
        rec.result["endReason"]["reason"], "hangup",
        "[{T}] end reason"
    );
    sipp_result.unwrap_or_else(|e| panic!("[{T}] sipp: {e}"));
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::from_secs(1)).await;
    drop(sipp);
    println!("[{T}] done in {:.1} s", started.elapsed().as_secs_f64());
}

/// Chromium offering only Opus calls a PBX that speaks only PCMA (sipp
/// playing a PCMA tone): the gateway transcodes Opus <-> PCMA; the browser
/// must hear the tone, and PCMA must flow to sipp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_browser_hears_a_pcma_only_pbx() {
    opus_browser_hears_pcma("opus browser <-> PCMA sipp", "uas_answer_play_pcma.xml").await;
}

/// The same with the PBX sending 30 ms packets: the gateway gathers them
/// into 20 ms Opus frames (one and a half per packet), so the tone plays
/// without holes or overlaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_browser_hears_a_pcma_pbx_sending_30_ms_packets() {
    opus_browser_hears_pcma(
        "opus browser <-> PCMA sipp, 30 ms",
        "uas_answer_play_pcma_30ms.xml",
    )
    .await;
}

async fn opus_browser_hears_pcma(t: &'static str, scenario: &'static str) {
    let _serial = serial().await;
    let sipp = tokio::task::spawn_blocking(move || Sipp::uas(scenario, 0, &[]))
        .await
        .unwrap();
    let gw = gateway_to(sipp.port(), "pbx.test").await;
    let page = format!("http://{}/", gw.http_addr());
    let outcome = tokio::task::spawn_blocking(move || {
        let (browser, _wav) = launch_browser(&page)?;
        run_script(
            &browser,
            CALL_SCRIPT,
            json!({ "to": "1000", "codec": "opus", "holdMs": SETTLE_MS + 3_000, "hangup": true }),
        )
    })
    .await
    .expect("browser task panicked");
    let mut sipp = sipp;
    let rec = match outcome {
        Ok(v) => Recording::parse(v),
        Err(e) => {
            let _ = sipp.wait(Duration::ZERO);
            panic!(
                "[{t}] browser side failed: {e}\n--- sipp errors ---\n{}",
                sipp.errors()
            )
        }
    };
    let from = rec.mark("answered") + rec.ms(SETTLE_MS);
    let heard = rec.window(from, from + rec.ms(3_000));
    let tone = tone_coverage(heard, rec.rate, PCMA_TONE_HZ);
    let control = tone_coverage(heard, rec.rate, BROWSER_TONE_HZ);
    println!(
        "[{t}] browser heard {PCMA_TONE_HZ} Hz in {tone:.3} of frames over {:.2} s, \
         {BROWSER_TONE_HZ} Hz (control) in {control:.3}; codec {}",
        rec.seconds(heard.len()),
        rec.result["codec"]
    );
    assert!(
        rec.result["codec"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("audio/opus")),
        "[{t}] the browser leg is Opus: {}",
        rec.result["codec"]
    );
    assert!(
        tone >= 0.90,
        "[{t}] PCMA tone in only {:.1}% of frames",
        tone * 100.0
    );
    assert!(
        control < 0.10,
        "[{t}] negative control {:.1}%",
        control * 100.0
    );
    // The browser's audio went out to sipp as PCMA.
    let sent = scrape_metric(&gw, "gangway_rtp_packets_sent_total").await;
    assert!(sent >= 100.0, "[{t}] RTP packets sent to sipp: {sent}");
    let sipp = tokio::task::spawn_blocking(move || {
        let r = sipp.wait(SIGNALING_TIMEOUT);
        (sipp, r)
    })
    .await
    .unwrap();
    sipp.1.unwrap_or_else(|e| panic!("[{t}] sipp: {e}"));
    assert!(
        sipp.0.messages().contains("PCMU/8000") && !sipp.0.messages().contains("opus"),
        "the SIP leg never offers Opus"
    );
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::from_secs(1)).await;
}

/// Thousands of SIP requests a second, garbage and valid-looking, from an
/// address in `sip.inbound_allow` and one outside it, while a browser
/// calls baresip: the call connects with audio both ways, the allowed
/// source's requests are answered, the forbidden one is banned after a
/// handful, and afterwards the process's fds and tasks and the gateway's
/// RTP ports are back where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_flood_while_a_browser_calls_baresip() {
    const T: &str = "flood";
    const PER_SECOND: u32 = 1_000;
    const FLOOD: Duration = Duration::from_secs(10);
    let _serial = serial().await;
    let bob = tokio::task::spawn_blocking(start_bob).await.unwrap();
    let gw = start_sip_gateway(bob.sip_addr().port(), "127.0.0.1", |c| {
        c.sip.inbound_allow = vec!["127.0.0.1/32".into()];
    })
    .await;
    let sip = gw.sip_addr().expect("the SIP leg listens");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds_before, tasks_before) = (open_fds(), alive_tasks());

    let allowed = tokio::spawn(flood("127.0.0.1".parse().unwrap(), sip, PER_SECOND, FLOOD));
    let forbidden = tokio::spawn(flood("127.0.0.2".parse().unwrap(), sip, PER_SECOND, FLOOD));
    call_bob_and_check_tones(T, &gw, bob, "PCMU", 0.90, 0).await;
    let (allowed, forbidden) = (allowed.await.unwrap(), forbidden.await.unwrap());
    println!("[{T}] allowed source: {allowed:?}");
    println!("[{T}] forbidden source: {forbidden:?}");

    let expected = u64::from(PER_SECOND) * FLOOD.as_secs() * 9 / 10;
    assert!(
        allowed.sent >= expected && forbidden.sent >= expected,
        "[{T}] the flood ran at its rate: {} and {} sent",
        allowed.sent,
        forbidden.sent
    );
    // One request in ten is each of: OPTIONS (200), a request without
    // Call-ID and CSeq (400), an INVITE to a user nobody has (404), a BYE
    // outside a dialog (481), an INVITE with Max-Forwards 0 (483), SIP/3.0
    // (505).
    for status in [200, 400, 404, 481, 483, 505] {
        assert!(
            allowed.count(status) >= allowed.sent / KINDS / 2,
            "[{T}] the allowed source got {status} for half its such requests at least: {allowed:?}"
        );
    }
    // The first second's ten requests are answered (one 403 per INVITE,
    // never retransmitted), then nothing at all, CANCELs included.
    assert!(
        forbidden.answered() <= 20,
        "[{T}] the forbidden source was banned after a handful: {forbidden:?}"
    );
    let banned = scrape_metric(&gw, "gangway_sip_inbound_rejected_total{reason=\"banned\"}").await;
    assert!(
        banned as u64 >= forbidden.sent / 2,
        "[{T}] the ban dropped the forbidden flood: {banned}"
    );

    // Transactions the flood opened end within 32 s (RFC 3261 timer H/J).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut fds, mut tasks) = (open_fds(), alive_tasks());
    while (fds > fds_before || tasks > tasks_before) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (fds, tasks) = (open_fds(), alive_tasks());
    }
    println!("[{T}] fds {fds_before} -> {fds}, tasks {tasks_before} -> {tasks}");
    assert!(
        fds <= fds_before,
        "[{T}] file descriptors left: {fds_before} -> {fds}"
    );
    assert!(
        tasks <= tasks_before,
        "[{T}] tasks left: {tasks_before} -> {tasks}"
    );
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::from_secs(1)).await;
}
