//! The JS client keeps a call through a lost WebSocket: headless Chromium
//! calls the echo line through a TCP relay, the test cuts the relay (no
//! close frame, new connections refused for a while), and `/client.js`
//! reconnects on its own, resumes the session with its token (retrying
//! while refused) and then restarts ICE with `call.restartIce()`. The 1000 Hz
//! fake microphone must come back before the cut, during the gap and after
//! the ICE restart.
//!
//! Needs Debian's `chromium` and `chromium-driver` (never skipped).

use std::time::Duration;

use gangway_tests::audio::tone_coverage;
use gangway_tests::browser_call::{
    launch_browser, pretty, run_script, Recording, BROWSER_TONE_HZ, CALL_SCRIPT,
};
use gangway_tests::gateway::{metric_or_zero, scrape_metric, start_gateway, wait_metric};
use gangway_tests::tcp_proxy::TcpProxy;
use serde_json::json;

const CONTROL_HZ: f64 = 440.0;
/// How long the relay refuses new connections after the cut: the client's
/// first attempts fail and it must retry.
const BLOCKED: Duration = Duration::from_millis(1200);

/// Listens for the client's resume events and ICE changes; returns at once.
const WATCH_SCRIPT: &str = r#"
const done = arguments[arguments.length - 1];
S.resumed = new Promise((resolve) => S.gw.addEventListener('resumed', (e) => {
  mark('resumed');
  log(`resumed, session ${e.detail.sessionId}`);
  resolve();
}));
S.gw.addEventListener('reconnecting', (e) => { mark('reconnecting'); log(`reconnecting after close ${e.detail.code}`); });
S.gw.addEventListener('close', (e) => log(`client close ${e.detail.code}`));
S.call.addEventListener('renegotiated', () => { mark('renegotiated'); log('renegotiated'); });
const pc = S.call.peerConnection;
pc.addEventListener('iceconnectionstatechange', () => log(`ice ${pc.iceConnectionState}`));
done({ sessionId: S.gw.sessionId });
"#;

/// After the cut: waits for the resume, restarts ICE, keeps the call up
/// for `holdMs`, hangs up and returns the recording.
const RESUME_SCRIPT: &str = r#"
const [opts] = arguments;
const done = arguments[arguments.length - 1];
(async () => {
  const endedEarly = S.ended.then((d) => { throw new Error(`call ended: ${JSON.stringify(d)}`); });
  await withTimeout(Promise.race([S.resumed, endedEarly]), 10000, "'resumed'");
  if (S.gw.sessionId !== opts.sessionId) throw new Error(`resumed as ${S.gw.sessionId}, not ${opts.sessionId}`);
  await Promise.race([sleep(opts.afterResumeMs), endedEarly]);
  mark('restart');
  const pc = S.call.peerConnection;
  const ufrag = () => pc.localDescription.sdp.match(/a=ice-ufrag:(\S+)/)[1];
  const before = ufrag();
  await withTimeout(Promise.race([S.call.restartIce(), endedEarly]), 5000, 'the ICE restart');
  if (ufrag() === before) throw new Error('restartIce() kept the ICE credentials');
  log(`ICE credentials ${before} -> ${ufrag()}`);
  await Promise.race([sleep(opts.holdMs), endedEarly]);
  S.stopRecording();
  S.lastStats = await stats();
  mark('hangup');
  S.call.hangup();
  await withTimeout(S.ended, 5000, "'ended' after hangup");
  return await S.finish();
})().then(done, (e) => S.fail(e).then(done));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_resumes_its_session_and_restarts_ice() {
    let gw = start_gateway().await;
    let proxy = std::sync::Arc::new(TcpProxy::start(gw.http_addr()).await);
    let page = format!("http://{}/", proxy.addr());
    let relay = proxy.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let (browser, _wav) = launch_browser(&page)?;
        run_script(
            &browser,
            CALL_SCRIPT,
            json!({ "to": "echo", "codec": "opus", "hangup": false }),
        )?;
        let watch = run_script(&browser, WATCH_SCRIPT, json!(null))?;
        std::thread::sleep(Duration::from_millis(1500));
        relay.cut(BLOCKED);
        run_script(
            &browser,
            RESUME_SCRIPT,
            json!({ "sessionId": watch["sessionId"], "afterResumeMs": 1000, "holdMs": 2000 }),
        )
    })
    .await
    .expect("browser task panicked");
    let rec = match outcome {
        Ok(v) => Recording::parse(v),
        Err(e) => panic!("browser side failed: {e}"),
    };
    println!("events: {}", rec.events());
    println!("peer connection: {}", pretty(&rec.result["stats"]));

    let (answered, reconnecting, resumed) = (
        rec.mark("answered"),
        rec.mark("reconnecting"),
        rec.mark("resumed"),
    );
    let (renegotiated, stop) = (rec.mark("renegotiated"), rec.mark("stop"));
    let settle = rec.ms(500);
    let check = |what: &str, from: usize, to: usize| {
        let heard = rec.window(from, to);
        let tone = tone_coverage(heard, rec.rate, BROWSER_TONE_HZ);
        let control = tone_coverage(heard, rec.rate, CONTROL_HZ);
        println!(
            "{what}: {:.2} s, {BROWSER_TONE_HZ} Hz in {tone:.3} of frames, {CONTROL_HZ} Hz {control:.3}",
            rec.seconds(heard.len())
        );
        assert!(
            rec.seconds(heard.len()) >= 0.4,
            "{what}: too short to judge"
        );
        assert!(tone >= 0.9, "{what}: the echoed tone: {tone:.3}");
        assert!(control < 0.1, "{what}: negative control: {control:.3}");
    };
    check("before the cut", answered + settle, reconnecting);
    check("without a socket", reconnecting, resumed);
    check("after the ICE restart", renegotiated + rec.ms(200), stop);

    // The client needed more than one attempt (the relay refused the first).
    assert!(
        proxy.accepted() >= 2,
        "the page's socket and the resuming one"
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_session_resumes_total{outcome=\"resumed\"}").await,
        1.0
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_session_resumes_total{outcome=\"refused\"}").await,
        0.0
    );
    assert_eq!(
        rec.result["endReason"]["reason"], "hangup",
        "hung up on the resumed socket"
    );
    assert_eq!(
        wait_metric(&gw, "gangway_calls_active", 0.0, Duration::from_secs(5)).await,
        0.0
    );
    assert_eq!(
        metric_or_zero(&gw, "gangway_calls_ended_total{reason=\"socket_closed\"}").await,
        0.0
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_calls_ended_total{reason=\"hangup\"}").await,
        1.0
    );
    gw.shutdown(Duration::from_secs(1)).await;
}
