//! An inbound call answered in a real browser: headless Chromium (a 1000 Hz
//! tone as its fake microphone) signs in as SIP user alice through the
//! gateway's own JS client (`/client.js`), with kamailio as the registrar;
//! baresip bob, registered at the same kamailio, calls alice; the page
//! accepts the `incoming` call with the client's default codecs and records
//! what it hears. Audio is checked both ways by tone (Goertzel per 20 ms
//! frame) with negative controls, then the browser hangs up.
//!
//! Needs Debian's `chromium`, `chromium-driver`, `kamailio` and `baresip`
//! (`scripts/deps.sh test`); without them the test fails, it never skips.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gangway_tests::audio::tone_coverage;
use gangway_tests::browser_call::{
    launch_browser, level_dbfs, pretty, run_script, Recording, BROWSER_TONE_HZ,
};
use gangway_tests::gateway::{assert_no_leftovers, metric_or_zero, start_sip_gateway, wait_metric};
use gangway_tests::kamailio::{start_kamailio, Kamailio};
use gangway_tests::sip_peers::{registered_baresip, Baresip};
use gangway_tests::webdriver::{Browser, TempDir};
use serde_json::{json, Value};

const DOMAIN: &str = "pbx.test";
const USERS: &[(&str, &str)] = &[("alice", "alicepw"), ("bob", "bobpw")];
/// bob's tone.
const BOB_TONE_HZ: f64 = 440.0;
/// Audio left to settle (jitter buffers, codec start-up) after `answered`
/// before the analysed part of the browser's recording starts.
const SETTLE_MS: u64 = 500;
/// Length of the analysed part of the browser's recording.
const RECORD_MS: u64 = 3_000;
/// What baresip's recording loses at its start before the analysis.
const BARESIP_TRIM_S: f64 = 0.5;
/// Least baresip must have recorded after the trim.
const BARESIP_MIN_S: f64 = 2.5;
/// Short, so the test sees the un-REGISTER once the page is gone.
const GRACE_SECS: u64 = 2;
const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(5);

/// Connects the client, listens for `incoming` (from now on, so a call that
/// rings before the next script runs is not missed), signs in with a wrong
/// password (must be refused) and then the right one. Argument: `{user,
/// password, wrongPassword}`.
const REGISTER_SCRIPT: &str = r#"
const [opts] = arguments;
const done = arguments[arguments.length - 1];
(async () => {
  const { GangwayClient } = await import(new URL('/client.js', location.href).href);
  const gw = S.gw = await withTimeout(GangwayClient.connect(), 5000, 'hello');
  log(`connected, session ${gw.sessionId}`);
  gw.addEventListener('error', (e) => log(`client error ${JSON.stringify(e.detail)}`));
  for (const type of ['registered', 'registration_failed', 'unregistered']) {
    gw.addEventListener(type, (e) => log(`${type} ${JSON.stringify(e.detail)}`));
  }
  S.incoming = new Promise((resolve) => gw.addEventListener('incoming', (e) => {
    const c = e.detail.call;
    log(`incoming ${c.id} from ${c.from} (${JSON.stringify(c.display)}) to ${c.to}, ${c.direction}, ${c.state}`);
    resolve(c);
  }, { once: true }));

  let refused = null;
  try {
    const r = await withTimeout(gw.register({ user: opts.user, password: opts.wrongPassword }), 10000,
      'the wrong-password register');
    throw new Error(`register with a wrong password resolved: ${JSON.stringify(r)}`);
  } catch (e) {
    if (!('code' in e)) throw e;
    refused = { code: e.code, reason: e.reason, message: e.message, user: gw.user };
    log(`wrong password refused: ${JSON.stringify(refused)}`);
  }
  const registered = await withTimeout(gw.register({ user: opts.user, password: opts.password }), 10000,
    'the register');
  log(`register() resolved ${JSON.stringify(registered)}`);
  return { refused, registered, user: gw.user, events: S.events };
})().then(done, (e) => S.fail(e).then(done));
"#;

/// Waits for the `incoming` call, accepts it (default codecs, the fake
/// microphone unprocessed), records from its remote track on and returns
/// `holdMs` after `answered` with the recording; the call goes on.
/// Argument: `{holdMs}`.
const ANSWER_SCRIPT: &str = r#"
const [opts] = arguments;
const done = arguments[arguments.length - 1];
(async () => {
  const call = S.call = await withTimeout(S.incoming, 10000, "'incoming'");
  const ringing = { id: call.id, from: call.from, to: call.to, display: call.display,
    direction: call.direction, state: call.state, peerConnection: call.peerConnection !== null };
  call.addEventListener('answer', () => { mark('answer'); log('answer'); });
  call.addEventListener('answered', () => { mark('answered'); log('answered'); });
  call.addEventListener('statechange', (e) => log(`state ${e.detail.state}`));
  call.addEventListener('error', (e) => log(`error ${JSON.stringify(e.detail)}`));
  S.ended = new Promise((resolve) => call.addEventListener('ended', (e) => {
    mark('ended');
    log(`ended ${JSON.stringify(e.detail)}`);
    resolve(e.detail);
  }));
  const endedEarly = S.ended.then((d) => { throw new Error(`call ended early: ${JSON.stringify(d)}`); });
  const recorder = new Promise((resolve, reject) => call.addEventListener('track', (e) => {
    log(`track (${e.detail.stream.getAudioTracks().length} audio tracks)`);
    startRecorder(e.detail.stream).then(resolve, reject);
  }));
  const answered = new Promise((resolve) => call.addEventListener('answered', resolve));

  call.accept({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  log('accept()');
  const pc = call.peerConnection;
  pc.addEventListener('connectionstatechange', () => {
    if (pc.connectionState === 'connected') mark('connected');
    log(`connectionState ${pc.connectionState}`);
  });

  await withTimeout(Promise.race([recorder, endedEarly]), 10000, 'the remote track');
  await withTimeout(Promise.race([answered, endedEarly]), 10000, "'answered'");
  await Promise.race([sleep(opts.holdMs), endedEarly]);
  S.stopRecording();
  const st = S.lastStats = await stats();
  return {
    samples: toBase64Int16(S.chunks),
    sampleRate: S.sampleRate,
    marks: S.marks,
    codec: st?.inboundCodec ?? null,
    outboundCodec: st?.outboundCodec ?? null,
    state: call.state,
    ringing,
    events: S.events,
    stats: st,
  };
})().then(done, (e) => S.fail(e).then(done));
"#;

/// Hangs the call up and waits for its `ended`; returns the end reason.
const HANGUP_SCRIPT: &str = r#"
const done = arguments[arguments.length - 1];
(async () => {
  if (!S.call || !S.ended) throw new Error('no call in progress');
  mark('hangup');
  log('hangup()');
  S.call.hangup();
  const reason = await withTimeout(S.ended, 5000, "'ended' after hangup()");
  return { endReason: reason, callEndReason: S.call.endReason, state: S.call.state,
    calls: S.gw.calls.size, events: S.events };
})().then(done, (e) => S.fail(e).then(done));
"#;

/// Closes the audio context and the client's socket (the page's sign-in ends).
const CLOSE_SCRIPT: &str = r#"
const done = arguments[arguments.length - 1];
(async () => {
  try { await S.ctx?.close(); } catch (_) {}
  const closed = new Promise((resolve) => S.gw.addEventListener('close', (e) => resolve(e.detail)));
  S.gw.close();
  const detail = await withTimeout(closed, 5000, "the client's 'close'");
  log(`socket closed ${JSON.stringify(detail)}`);
  return { close: detail, user: S.gw.user, events: S.events };
})().then(done, (e) => S.fail(e).then(done));
"#;

/// Runs a page script on a blocking thread; gives the browser back with its outcome.
async fn page(
    browser: Browser,
    script: &'static str,
    arg: Value,
) -> (Browser, Result<Value, String>) {
    tokio::task::spawn_blocking(move || {
        let outcome = run_script(&browser, script, arg);
        (browser, outcome)
    })
    .await
    .expect("browser task panicked")
}

async fn baresip_event(bob: &Arc<Baresip>, kind: &'static str) -> Result<Value, String> {
    let bob = bob.clone();
    tokio::task::spawn_blocking(move || bob.wait_for_event(kind, SIGNALING_TIMEOUT))
        .await
        .expect("baresip wait task")
}

/// bob's events and log, kamailio's log: what a failure message needs.
fn peers_context(bob: Option<&Baresip>, kam: &Kamailio) -> String {
    let bob = bob.map_or(String::new(), |b| {
        format!(
            "\n--- baresip events ---\n{:?}\n--- baresip log ---\n{}",
            b.events(),
            b.log()
        )
    });
    let log = kam.log();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    format!("{bob}\n--- kamailio log (last lines) ---\n{tail}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_signs_in_as_alice_and_answers_baresip_through_kamailio() {
    let started = Instant::now();
    let kam = start_kamailio(USERS, DOMAIN).await;
    // The registrar defaults to the trunk: kamailio.
    let gw = start_sip_gateway(kam.port(), DOMAIN, |c| {
        c.sip.registrar.unregister_grace_secs = GRACE_SECS;
    })
    .await;
    let url = format!("http://{}/", gw.http_addr());

    // The page signs in: a wrong password is refused by kamailio, the right one works.
    let launched = tokio::task::spawn_blocking(move || {
        launch_browser(&url).map(|(browser, wav)| {
            let outcome = run_script(
                &browser,
                REGISTER_SCRIPT,
                json!({ "user": "alice", "password": "alicepw", "wrongPassword": "nope" }),
            );
            (browser, wav, outcome)
        })
    })
    .await
    .expect("browser task panicked");
    let (browser, _wav, signed_in): (Browser, TempDir, _) =
        launched.unwrap_or_else(|e| panic!("launching Chromium: {e}"));
    let signed_in =
        signed_in.unwrap_or_else(|e| panic!("signing in: {e}{}", peers_context(None, &kam)));
    println!("sign-in: {}", pretty(&signed_in));
    assert!(
        matches!(signed_in["refused"]["code"].as_u64(), Some(401 | 403)),
        "the wrong password is refused with the registrar's status: {}",
        signed_in["refused"]
    );
    assert_eq!(signed_in["registered"]["user"], "alice", "{signed_in}");
    assert!(
        signed_in["registered"]["expires"].as_u64().unwrap_or(0) > 0,
        "{signed_in}"
    );
    assert_eq!(signed_in["user"], "alice", "client.user after register()");
    let bindings = kam
        .wait_registered("alice", SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let sip_port = format!(":{}", gw.sip_addr().unwrap().port());
    println!("kamailio location for alice: {bindings:?}");
    assert_eq!(bindings.len(), 1, "one binding for alice: {bindings:?}");
    assert!(
        bindings[0].contact.contains(&sip_port),
        "alice's contact is the gateway ({sip_port}): {bindings:?}"
    );
    assert_eq!(
        metric_or_zero(&gw, "gangway_registrations_active").await,
        1.0
    );

    // bob registers and calls alice through kamailio.
    let bob = registered_baresip(
        kam.registrar_uri(),
        "bob",
        "bobpw",
        BOB_TONE_HZ,
        SIGNALING_TIMEOUT,
    )
    .await;
    bob.dial(&format!("sip:alice@127.0.0.1:{}", kam.port()))
        .unwrap_or_else(|e| panic!("{e}"));

    // The page answers and records.
    let (browser, answered) = page(
        browser,
        ANSWER_SCRIPT,
        json!({ "holdMs": SETTLE_MS + RECORD_MS + 200 }),
    )
    .await;
    let rec = Recording::parse(answered.unwrap_or_else(|e| {
        panic!(
            "answering in the browser: {e}{}",
            peers_context(Some(&bob), &kam)
        )
    }));
    println!(
        "incoming call as the page saw it: {}",
        rec.result["ringing"]
    );
    println!("browser events: {}", rec.events());
    println!("marks: {:?}", rec.marks);
    let ringing = &rec.result["ringing"];
    assert!(
        ringing["from"]
            .as_str()
            .is_some_and(|f| f.starts_with("sip:bob@")),
        "the caller: {ringing}"
    );
    assert!(
        ringing["to"].as_str().is_some_and(|t| t.contains("alice")),
        "the callee: {ringing}"
    );
    assert_eq!(ringing["direction"], "incoming", "{ringing}");
    assert_eq!(ringing["state"], "ringing", "{ringing}");
    assert_eq!(
        ringing["peerConnection"], false,
        "no peer connection while ringing"
    );
    assert_eq!(rec.result["state"], "answered", "{}", rec.events());
    baresip_event(&bob, "CALL_ESTABLISHED")
        .await
        .unwrap_or_else(|e| panic!("bob's call is established: {e}"));

    // The browser heard bob.
    let from = rec.mark("answered") + rec.ms(SETTLE_MS);
    let heard = rec.window(from, from + rec.ms(RECORD_MS));
    let seconds = rec.seconds(heard.len());
    let heard_bob = tone_coverage(heard, rec.rate, BOB_TONE_HZ);
    let heard_self = tone_coverage(heard, rec.rate, BROWSER_TONE_HZ);
    println!(
        "browser recorded {seconds:.2} s at {} Hz ({:.1} dBFS) from answered + {SETTLE_MS} ms, \
         codecs in {} / out {}: {BOB_TONE_HZ} Hz in {heard_bob:.3} of frames, \
         {BROWSER_TONE_HZ} Hz (control) in {heard_self:.3}",
        rec.rate,
        level_dbfs(heard),
        rec.result["codec"],
        rec.result["outboundCodec"],
    );
    assert!(
        seconds >= RECORD_MS as f64 / 1000.0 * 0.95,
        "the browser recorded only {seconds:.2} s after answered + {SETTLE_MS} ms; events: {}",
        rec.events()
    );
    assert!(
        heard_bob >= 0.9,
        "the browser heard bob's {BOB_TONE_HZ} Hz in only {:.1}% of frames; peer connection: \
         {}\nevents: {}",
        heard_bob * 100.0,
        pretty(&rec.result["stats"]),
        rec.events()
    );
    assert!(
        heard_self < 0.1,
        "negative control: the browser heard {BROWSER_TONE_HZ} Hz in {:.1}% of frames",
        heard_self * 100.0
    );

    // The browser hangs up.
    let (browser, hung_up) = page(browser, HANGUP_SCRIPT, json!(null)).await;
    let hung_up = hung_up.unwrap_or_else(|e| {
        panic!(
            "hanging up in the browser: {e}{}",
            peers_context(Some(&bob), &kam)
        )
    });
    println!("after hangup(): {}", pretty(&hung_up["endReason"]));
    assert_eq!(
        hung_up["endReason"],
        json!({ "reason": "hangup", "code": null }),
        "the page's end reason; events: {}",
        pretty(&hung_up["events"])
    );
    assert_eq!(hung_up["state"], "ended");
    assert_eq!(hung_up["calls"], 0, "the call left client.calls");
    let closed = baresip_event(&bob, "CALL_CLOSED")
        .await
        .unwrap_or_else(|e| panic!("bob's call closes: {e}"));
    println!("bob's call closed: {}", closed["param"]);

    // bob heard the browser.
    let (samples, rate) = bob.recorded_audio();
    let trim = ((BARESIP_TRIM_S * f64::from(rate)) as usize).min(samples.len());
    let bob_heard = &samples[trim..];
    let bob_s = bob_heard.len() as f64 / f64::from(rate);
    let bob_browser = tone_coverage(bob_heard, rate, BROWSER_TONE_HZ);
    let bob_self = tone_coverage(bob_heard, rate, BOB_TONE_HZ);
    println!(
        "bob recorded {bob_s:.2} s after a {BARESIP_TRIM_S} s trim ({:.1} dBFS): \
         {BROWSER_TONE_HZ} Hz in {bob_browser:.3} of frames, {BOB_TONE_HZ} Hz (control) in \
         {bob_self:.3}",
        level_dbfs(bob_heard)
    );
    assert!(
        bob_s >= BARESIP_MIN_S,
        "bob recorded only {bob_s:.2} s (after the trim)\n{}",
        bob.log()
    );
    assert!(
        bob_browser >= 0.9,
        "bob heard the browser's {BROWSER_TONE_HZ} Hz in only {:.1}% of frames\n{}",
        bob_browser * 100.0,
        bob.log()
    );
    assert!(
        bob_self < 0.1,
        "negative control: bob heard {BOB_TONE_HZ} Hz in {:.1}% of frames",
        bob_self * 100.0
    );

    assert_no_leftovers(&gw).await;
    assert_eq!(
        metric_or_zero(&gw, "gangway_inbound_calls_total{outcome=\"answered\"}").await,
        1.0
    );

    // The page closes its client, then the browser goes: after the grace
    // period the gateway takes alice's binding back from kamailio.
    let (browser, closed) = page(browser, CLOSE_SCRIPT, json!(null)).await;
    let closed = closed.unwrap_or_else(|e| panic!("closing the client: {e}"));
    println!("the client's socket closed: {}", closed["close"]);
    assert_eq!(
        closed["close"]["code"], 1000,
        "the gateway completes the closing handshake: {}",
        closed["close"]
    );
    assert_eq!(closed["user"], Value::Null, "{closed}");
    tokio::task::spawn_blocking(move || {
        let mut browser = browser;
        browser.quit()
    })
    .await
    .expect("browser quit task")
    .unwrap_or_else(|e| panic!("closing Chromium: {e}"));
    let closed_at = Instant::now();
    let deadline = closed_at + Duration::from_secs(GRACE_SECS + 5);
    while kam.location().unwrap().iter().any(|r| r.aor == "alice") {
        assert!(
            Instant::now() < deadline,
            "alice unregistered after the page closed: {:?}",
            kam.location()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "alice unregistered {:.1} s after the page closed",
        closed_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        wait_metric(&gw, "gangway_registrations_active", 0.0, SETTLE).await,
        0.0
    );
    gw.shutdown(Duration::ZERO).await;
    drop(bob);
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
}
