//! The demo page (`/`) driven as a user would: WebDriver clicks on its own
//! buttons and typing into its own fields, never the client API. Headless
//! Chromium's microphone plays 1000 Hz.
//! - Echo line, SIP off: only what the gateway offers is shown (no Register
//!   box, no keypad, hold or transfer); the media state reads connected only
//!   once ICE and DTLS are, then "audio flowing"; the level meters move; the
//!   statistics are non-zero and agree with getStats.
//! - baresip (440 Hz, PCMU) behind a counting relay: digits clicked on the
//!   keypad (and one typed on the keyboard) reach baresip (its
//!   CALL_DTMF_START events); Hold stops the RTP
//!   on the SIP leg both ways and the browser's received packets, Resume
//!   brings them back, and baresip hears the browser's tone afterwards.
//!
//! - Sign-in with kamailio as the registrar: the page's Register form
//!   signs alice in; a call from baresip bob rings the page, whose Reject
//!   ends it; the next one is taken with Answer and its audio flows.
//! - Blind transfer: the page calls bob through kamailio, types carol's
//!   address into "Transfer to" and clicks Transfer; the page's call ends
//!   `transferred` and carol, called by bob, hears bob.
//!
//! Needs Debian's `chromium`, `chromium-driver`, `kamailio` and `baresip`; without them
//! the tests fail (they never skip). They run one at a time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gangway_tests::audio::tone_coverage;
use gangway_tests::browser_call::{launch_browser, pretty, serial, BROWSER_TONE_HZ};
use gangway_tests::gateway::{assert_no_leftovers, start_gateway, start_sip_gateway};
use gangway_tests::impair::LossyProxy;
use gangway_tests::kamailio::start_kamailio;
use gangway_tests::sip_peers::{registered_baresip, Baresip, BaresipOptions};
use gangway_tests::webdriver::Browser;
use serde_json::{json, Value};

const BARESIP_TONE_HZ: f64 = 440.0;
const WAIT: Duration = Duration::from_secs(15);
/// How long the statistics and packet counts are watched in each phase.
const PHASE: Duration = Duration::from_secs(3);

/// Runs a synchronous page script (`return …`) and returns its value.
fn eval(browser: &Browser, script: &str) -> Result<Value, String> {
    browser
        .execute_script(script, Vec::new())
        .map_err(|e| format!("{script}: {e}"))
}

/// Waits until the page expression `expr` is true.
fn wait_until(browser: &Browser, expr: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if eval(browser, &format!("return !!({expr});"))? == json!(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let page = eval(browser, PAGE_STATE)?;
            return Err(format!(
                "timed out after {timeout:?} waiting for {expr}; page: {}",
                pretty(&page)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the page shows: states, visibility, meters, statistics and its log.
const PAGE_STATE: &str = r#"
const $ = (id) => document.getElementById(id);
const text = (id) => $(id).textContent.trim();
return {
  state: $('state').dataset.state, stateText: text('state'),
  media: $('media').dataset.state, mediaText: text('media'),
  features: $('features').dataset.features,
  hidden: Object.fromEntries(['sign-in-card', 'hold-controls', 'dtmf-controls', 'transfer-form']
    .map((id) => [id, $(id).hidden])),
  mic: $('mic-level').value, remote: $('remote-level').value,
  stats: Object.fromEntries(['codec', 'sent', 'received', 'lost', 'jitter', 'rtt']
    .map((k) => [k, text(`stat-${k}`)])),
  log: [...document.querySelectorAll('#log li')].map((li) => li.textContent),
};
"#;

/// Records every change of the media state with the peer connection's and
/// the DTLS transport's states at that moment.
const WATCH_MEDIA: &str = r#"
window.__mediaChanges = [];
const media = document.getElementById('media');
new MutationObserver(() => {
  const pc = window.gangwayDemo.call?.peerConnection;
  const transport = pc?.getSenders()[0]?.transport;
  window.__mediaChanges.push({
    media: media.dataset.state,
    connection: pc?.connectionState ?? null,
    ice: transport?.iceTransport?.state ?? null,
    dtls: transport?.state ?? null,
  });
}).observe(media, { attributes: true, childList: true, characterData: true, subtree: true });
return true;
"#;

/// The page's statistics and, right after, the call's own getStats.
const STATS_NOW: &str = r#"
const done = arguments[arguments.length - 1];
(async () => {
  const text = (id) => document.getElementById(id).textContent.trim();
  const page = Object.fromEntries(['codec', 'sent', 'received', 'lost', 'jitter', 'rtt']
    .map((k) => [k, text(`stat-${k}`)]));
  const out = { page, mic: document.getElementById('mic-level').value,
    remote: document.getElementById('remote-level').value };
  const report = await window.gangwayDemo.call.peerConnection.getStats();
  const codecs = new Map();
  report.forEach((r) => { if (r.type === 'codec') codecs.set(r.id, r); });
  report.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      out.received = r.packetsReceived; out.lost = r.packetsLost; out.jitter = r.jitter;
      out.codec = codecs.get(r.codecId)?.mimeType ?? null;
    } else if (r.type === 'outbound-rtp' && r.kind === 'audio') {
      out.sent = r.packetsSent;
    } else if (r.type === 'remote-inbound-rtp' && r.roundTripTime != null) {
      out.rtcpRtt = r.roundTripTime;
    } else if (r.type === 'candidate-pair' && r.nominated && r.currentRoundTripTime != null) {
      out.iceRtt = r.currentRoundTripTime;
    }
  });
  return out;
})().then(done, (e) => done({ failure: String(e) }));
"#;

/// The leading number of a statistic as the page shows it ("12.5 ms" → 12.5).
fn number(s: &Value) -> f64 {
    s.as_str()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Checks the page's statistics against getStats read right after them:
/// the page polls every 250 ms, so it may lag by a few packets, never lead.
fn check_stats(t: &str, browser: &Browser) -> Result<Value, String> {
    let s = browser
        .execute_async_script(STATS_NOW, Vec::new())
        .map_err(|e| e.to_string())?;
    println!("[{t}] page vs getStats: {}", pretty(&s));
    let page = &s["page"];
    for (name, key) in [("sent", "sent"), ("received", "received")] {
        let shown = number(&page[key]);
        let actual = s[key].as_f64().unwrap_or(f64::NAN);
        if !(shown > 0.0 && shown <= actual && actual - shown <= 50.0) {
            return Err(format!(
                "[{t}] packets {name}: page {shown}, getStats {actual}"
            ));
        }
    }
    let lost = number(&page["lost"]);
    if !(lost >= 0.0 && lost <= s["lost"].as_f64().unwrap_or(0.0).max(0.0) + 5.0) {
        return Err(format!("[{t}] packets lost: page {lost}, {s}"));
    }
    let jitter_ms = number(&page["jitter"]);
    let actual_ms = s["jitter"].as_f64().unwrap_or(f64::NAN) * 1000.0;
    if !(jitter_ms >= 0.0 && (jitter_ms - actual_ms).abs() <= 20.0) {
        return Err(format!(
            "[{t}] jitter: page {jitter_ms} ms, getStats {actual_ms} ms"
        ));
    }
    let codec = s["codec"]
        .as_str()
        .unwrap_or("?")
        .trim_start_matches("audio/");
    let shown_codec = page["codec"].as_str().unwrap_or("");
    if !shown_codec
        .to_ascii_lowercase()
        .starts_with(&codec.to_ascii_lowercase())
    {
        return Err(format!(
            "[{t}] codec: page {shown_codec:?}, getStats {codec:?}"
        ));
    }
    // A round trip is shown whenever getStats has one (RTCP's, else ICE's).
    if s["rtcpRtt"].is_number() || s["iceRtt"].is_number() {
        let rtt = number(&page["rtt"]);
        // Loopback round trips may round to 0.0 ms.
        if !(0.0..1000.0).contains(&rtt) {
            return Err(format!("[{t}] round trip: page {:?}, {s}", page["rtt"]));
        }
    }
    Ok(s)
}

/// The page's media state changes: never connected before ICE and DTLS are.
fn check_media_changes(t: &str, browser: &Browser) -> Result<(), String> {
    let changes = eval(browser, "return window.__mediaChanges;")?;
    println!("[{t}] media state changes: {changes}");
    let list = changes.as_array().cloned().unwrap_or_default();
    let first_up = list
        .iter()
        .position(|c| c["media"] == "connected" || c["media"] == "flowing")
        .ok_or_else(|| format!("[{t}] the media state never read connected: {changes}"))?;
    if !list[..first_up].iter().any(|c| c["media"] == "connecting") {
        return Err(format!("[{t}] no `connecting` before connected: {changes}"));
    }
    for c in list
        .iter()
        .filter(|c| c["media"] == "connected" || c["media"] == "flowing")
    {
        let ice_up = c["ice"] == "connected" || c["ice"] == "completed";
        if c["connection"] != "connected" || !ice_up || c["dtls"] != "connected" {
            return Err(format!(
                "[{t}] media read {} before ICE/DTLS: {c}",
                c["media"]
            ));
        }
    }
    Ok(())
}

fn click(browser: &Browser, selector: &str) -> Result<(), String> {
    browser
        .click(selector)
        .map_err(|e| format!("clicking {selector}: {e}"))
}

/// Opens the page, waits for its session and places a call to `to` with
/// its own field and button; returns once the media state reads flowing.
fn call_from_the_page(t: &str, browser: &Browser, to: &str) -> Result<(), String> {
    wait_until(
        browser,
        "document.getElementById('session').textContent.startsWith('session ')",
        WAIT,
    )?;
    eval(browser, WATCH_MEDIA)?;
    browser
        .type_into("#to", to)
        .map_err(|e| format!("typing into #to: {e}"))?;
    click(browser, "#call")?;
    wait_until(
        browser,
        "document.getElementById('media').dataset.state === 'flowing'",
        WAIT,
    )?;
    check_media_changes(t, browser)
}

fn hang_up_from_the_page(browser: &Browser) -> Result<(), String> {
    click(browser, "#hangup")?;
    wait_until(
        browser,
        "document.getElementById('state').dataset.state === 'ended' && document.getElementById('media').dataset.state === 'idle'",
        WAIT,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_call_from_the_page_with_sip_off() {
    let t = "echo";
    let _serial = serial().await;
    let gw = start_gateway().await;
    let page = format!("http://{}/", gw.http_addr());
    let outcome = tokio::task::spawn_blocking(move || -> Result<Value, String> {
        let (browser, _wav) = launch_browser(&page)?;
        wait_until(
            &browser,
            "document.getElementById('features').dataset.features !== ''",
            WAIT,
        )?;
        let before = eval(&browser, PAGE_STATE)?;
        call_from_the_page(t, &browser, "echo")?;
        std::thread::sleep(PHASE);
        let stats = check_stats(t, &browser)?;
        let during = eval(&browser, PAGE_STATE)?;
        hang_up_from_the_page(&browser)?;
        Ok(json!({ "before": before, "stats": stats, "during": during }))
    })
    .await
    .unwrap();
    let out = outcome.unwrap_or_else(|e| panic!("{e}"));
    println!("[{t}] page: {}", pretty(&out));
    let before = &out["before"];
    assert_eq!(before["features"], "echo", "hello.features with SIP off");
    for id in [
        "sign-in-card",
        "hold-controls",
        "dtmf-controls",
        "transfer-form",
    ] {
        assert_eq!(before["hidden"][id], true, "#{id} is hidden with SIP off");
    }
    // The microphone's tone, and its echo, move the meters.
    let (mic, remote) = (
        out["stats"]["mic"].as_f64().unwrap(),
        out["stats"]["remote"].as_f64().unwrap(),
    );
    assert!(
        mic > 0.01 && remote > 0.01,
        "meters: mic {mic}, remote {remote}"
    );
    assert_eq!(out["during"]["state"], "answered");
    assert_eq!(out["during"]["media"], "flowing");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

/// Packets on the SIP leg (both ways) and received by the browser over `PHASE`.
fn count_phase(
    browser: &Browser,
    wire: &std::sync::atomic::AtomicU64,
) -> Result<(u64, f64, Value), String> {
    let received = || -> Result<f64, String> {
        let s = browser
            .execute_async_script(STATS_NOW, Vec::new())
            .map_err(|e| e.to_string())?;
        Ok(s["received"].as_f64().unwrap_or(f64::NAN))
    };
    let (w0, r0) = (wire.load(Ordering::Relaxed), received()?);
    std::thread::sleep(PHASE);
    let (w1, r1) = (wire.load(Ordering::Relaxed), received()?);
    Ok((w1 - w0, r1 - r0, eval(browser, PAGE_STATE)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_call_from_the_page_keypad_hold_and_stats() {
    let t = "baresip";
    let _serial = serial().await;
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
    // A plain relay on the SIP leg counts the RTP on the wire, both ways.
    let wire = LossyProxy::start(bob.sip_addr(), 0.0, 1).await;
    let gw = start_sip_gateway(wire.sip_port(), "127.0.0.1", |_| {}).await;
    let page = format!("http://{}/", gw.http_addr());
    let rtp = wire.forwarded.clone();

    let (bob, outcome) = tokio::task::spawn_blocking(move || {
        let run = || -> Result<Value, String> {
            let (browser, _wav) = launch_browser(&page)?;
            wait_until(
                &browser,
                "document.getElementById('features').dataset.features !== ''",
                WAIT,
            )?;
            let before = eval(&browser, PAGE_STATE)?;
            call_from_the_page(t, &browser, "bob")?;
            bob.wait_for_event("CALL_ESTABLISHED", WAIT)?;

            // The keypad: each click is one digit to baresip.
            for key in ["#key-1", "#key-5", "#key-hash"] {
                click(&browser, key)?;
                std::thread::sleep(Duration::from_millis(400));
            }
            // Digits typed on the keyboard press the keypad too.
            browser
                .send_keys("#key-1", "7")
                .map_err(|e| format!("typing 7: {e}"))?;
            let mut heard = String::new();
            for _ in 0..4 {
                let event = bob.wait_for_event("CALL_DTMF_START", WAIT)?;
                heard.push_str(event["param"].as_str().unwrap_or("?"));
            }

            let stats = check_stats(t, &browser)?;
            let talking = count_phase(&browser, &rtp)?;

            click(&browser, "#hold")?;
            wait_until(
                &browser,
                "document.getElementById('state').dataset.state === 'held'",
                WAIT,
            )?;
            // Let the packets in flight and the page's flow window pass.
            std::thread::sleep(Duration::from_millis(1_500));
            let held = count_phase(&browser, &rtp)?;

            click(&browser, "#hold")?; // now reads "Resume"
            wait_until(
                &browser,
                "document.getElementById('state').dataset.state === 'answered'",
                WAIT,
            )?;
            wait_until(
                &browser,
                "document.getElementById('media').dataset.state === 'flowing'",
                WAIT,
            )?;
            let resumed = count_phase(&browser, &rtp)?;
            let stats_after = check_stats(t, &browser)?;
            hang_up_from_the_page(&browser)?;
            Ok(json!({
                "before": before, "heard": heard, "stats": stats, "statsAfter": stats_after,
                "talking": [talking.0, talking.1, talking.2],
                "held": [held.0, held.1, held.2],
                "resumed": [resumed.0, resumed.1, resumed.2],
            }))
        };
        let outcome = run();
        (bob, outcome)
    })
    .await
    .expect("browser task panicked");
    let out = outcome.unwrap_or_else(|e| {
        panic!(
            "[{t}] {e}\n--- baresip events ---\n{:?}\n--- baresip log ---\n{}",
            bob.events(),
            bob.log()
        )
    });
    let before = &out["before"];
    println!(
        "[{t}] features {}, hidden {}",
        before["features"], before["hidden"]
    );
    for f in ["sip", "dtmf", "hold", "transfer", "register"] {
        let listed = before["features"]
            .as_str()
            .unwrap_or("")
            .split(' ')
            .any(|x| x == f);
        assert!(listed, "hello.features lists {f}: {}", before["features"]);
    }
    for id in [
        "sign-in-card",
        "hold-controls",
        "dtmf-controls",
        "transfer-form",
    ] {
        assert_eq!(before["hidden"][id], false, "#{id} is shown with SIP on");
    }
    assert_eq!(out["heard"], "15#7", "baresip's CALL_DTMF_START events");

    let phase = |name: &str| {
        let p = &out[name];
        let (wire, received) = (p[0].as_u64().unwrap(), p[1].as_f64().unwrap());
        println!(
            "[{t}] {name}: {wire} RTP packets on the SIP leg, {received} received by the browser in {PHASE:?}; media {:?}, remote meter {}",
            p[2]["mediaText"], p[2]["remote"]
        );
        (wire, received, p[2].clone())
    };
    let talking = phase("talking");
    let held = phase("held");
    let resumed = phase("resumed");
    // 3 s of 20 ms packets is 150 each way.
    assert!(
        talking.0 > 200 && talking.1 > 100.0,
        "audio flows before the hold"
    );
    assert_eq!(held.0, 0, "no RTP either way on the SIP leg while held");
    assert!(
        held.1 <= 2.0,
        "the browser receives nothing while held: {}",
        held.1
    );
    assert_eq!(held.2["state"], "held");
    assert_eq!(held.2["media"], "connected", "held: connected, not flowing");
    assert!(
        resumed.0 > 200 && resumed.1 > 100.0,
        "audio flows after resume"
    );
    assert!(
        resumed.2["remote"].as_f64().unwrap() > 0.01,
        "far end meter after resume"
    );

    // baresip starts a new recording when the resume restarts its stream:
    // the browser's tone, and not baresip's own.
    let (bob, closed) = tokio::task::spawn_blocking(move || {
        let closed = bob.wait_for_event("CALL_CLOSED", WAIT);
        (bob, closed)
    })
    .await
    .unwrap();
    closed.unwrap_or_else(|e| panic!("{e}"));
    let (samples, rate) = bob.recorded_audio();
    let (tone, control) = (
        tone_coverage(&samples, rate, BROWSER_TONE_HZ),
        tone_coverage(&samples, rate, BARESIP_TONE_HZ),
    );
    println!(
        "[{t}] baresip recorded {:.2} s after the resume: {BROWSER_TONE_HZ} Hz in {tone:.3} of frames, {BARESIP_TONE_HZ} Hz {control:.3}",
        samples.len() as f64 / f64::from(rate)
    );
    assert!(tone >= 0.8, "baresip hears the browser after the resume");
    assert!(control < 0.1, "negative control");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

const USERS: &[(&str, &str)] = &[
    ("alice", "alicepw"),
    ("bob", "bobpw"),
    ("carol", "carolpw"),
    ("gangway", "gwpw"),
];
const CAROL_TONE_HZ: f64 = 700.0;
const DOMAIN: &str = "pbx.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_reject_and_answer_from_the_page() {
    let t = "inbound";
    let _serial = serial().await;
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = start_sip_gateway(kam.port(), DOMAIN, |_| {}).await;
    let bob = registered_baresip(kam.registrar_uri(), "bob", "bobpw", BARESIP_TONE_HZ, WAIT).await;
    let alice = format!("sip:alice@127.0.0.1:{}", kam.port());
    let page = format!("http://{}/", gw.http_addr());

    let b = bob.clone();
    let outcome = tokio::task::spawn_blocking(move || -> Result<Value, String> {
        let (browser, _wav) = launch_browser(&page)?;
        wait_until(&browser, "!document.getElementById('sign-in-card').hidden", WAIT)?;
        for (field, text) in [("#sip-user", "alice"), ("#sip-password", "alicepw")] {
            browser
                .type_into(field, text)
                .map_err(|e| format!("typing into {field}: {e}"))?;
        }
        click(&browser, "#register")?;
        wait_until(
            &browser,
            "document.getElementById('registration').dataset.state === 'registered'",
            WAIT,
        )?;
        let incoming_shown = "!document.getElementById('incoming').hidden";

        // The first call is rejected.
        b.dial(&alice)?;
        wait_until(&browser, incoming_shown, WAIT)?;
        let caller = eval(&browser, "return document.getElementById('caller').textContent;")?;
        click(&browser, "#reject")?;
        b.wait_for_event("CALL_CLOSED", WAIT)?;
        wait_until(&browser, &format!("!({incoming_shown})"), WAIT)?;
        let after_reject = eval(&browser, PAGE_STATE)?;

        // The second one is answered.
        b.dial(&alice)?;
        wait_until(&browser, incoming_shown, WAIT)?;
        eval(&browser, WATCH_MEDIA)?;
        click(&browser, "#answer")?;
        wait_until(&browser, "document.getElementById('media').dataset.state === 'flowing'", WAIT)?;
        check_media_changes(t, &browser)?;
        b.wait_for_event("CALL_ESTABLISHED", WAIT)?;
        std::thread::sleep(Duration::from_secs(2));
        let stats = check_stats(t, &browser)?;
        let during = eval(&browser, PAGE_STATE)?;
        hang_up_from_the_page(&browser)?;
        b.wait_for_event("CALL_CLOSED", WAIT)?;
        Ok(json!({ "caller": caller, "afterReject": after_reject, "stats": stats, "during": during }))
    })
    .await
    .unwrap();
    let out = outcome.unwrap_or_else(|e| {
        panic!(
            "[{t}] {e}\n--- baresip events ---\n{:?}\n--- baresip log ---\n{}",
            bob.events(),
            bob.log()
        )
    });
    println!(
        "[{t}] caller {}, after reject {}",
        out["caller"], out["afterReject"]["log"]
    );
    assert!(
        out["caller"]
            .as_str()
            .is_some_and(|c| c.contains("sip:bob@")),
        "the page names the caller: {}",
        out["caller"]
    );
    let rejected = out["afterReject"]["log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l.as_str().is_some_and(|l| l.contains("ended: rejected")));
    assert!(
        rejected,
        "the page logged the rejection: {}",
        out["afterReject"]["log"]
    );
    assert_eq!(out["during"]["state"], "answered");
    assert!(
        out["stats"]["remote"].as_f64().unwrap() > 0.01,
        "far end meter"
    );
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_transfer_from_the_page() {
    let t = "transfer";
    let _serial = serial().await;
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = start_sip_gateway(kam.port(), DOMAIN, |c| {
        c.sip.trunk.username = Some("gangway".into());
        c.sip.trunk.password = Some("gwpw".into());
        // Our domain, and kamailio by address (a transfer target bob can reach).
        c.sip.trunk.allow = vec![
            format!(r"^sip:[a-z0-9]+@{}$", DOMAIN.replace('.', r"\.")),
            r"^sip:[a-z0-9]+@127\.0\.0\.1:[0-9]+$".into(),
        ];
    })
    .await;
    let bob = registered_baresip(kam.registrar_uri(), "bob", "bobpw", BARESIP_TONE_HZ, WAIT).await;
    let carol =
        registered_baresip(kam.registrar_uri(), "carol", "carolpw", CAROL_TONE_HZ, WAIT).await;
    // bob has no outbound proxy: the target names kamailio itself.
    let target = format!("sip:carol@127.0.0.1:{}", kam.port());
    let page = format!("http://{}/", gw.http_addr());

    let (b, c) = (bob.clone(), carol.clone());
    let outcome = tokio::task::spawn_blocking(move || -> Result<Value, String> {
        let (browser, _wav) = launch_browser(&page)?;
        call_from_the_page(t, &browser, "bob")?;
        b.wait_for_event("CALL_ESTABLISHED", WAIT)?;
        browser
            .type_into("#transfer-to", &target)
            .map_err(|e| format!("typing into #transfer-to: {e}"))?;
        click(&browser, "#transfer")?;
        wait_until(
            &browser,
            "document.getElementById('state').dataset.state === 'ended'",
            WAIT,
        )?;
        let after = eval(&browser, PAGE_STATE)?;
        c.wait_for_event("CALL_ESTABLISHED", WAIT)?;
        std::thread::sleep(PHASE);
        c.command("hangup", "")?;
        c.wait_for_event("CALL_CLOSED", WAIT)?;
        Ok(after)
    })
    .await
    .unwrap();
    let after = outcome.unwrap_or_else(|e| {
        panic!(
            "[{t}] {e}\n--- bob ---\n{}\n--- carol ---\n{}",
            bob.log(),
            carol.log()
        )
    });
    let log: Vec<&str> = after["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    println!("[{t}] page log: {log:#?}");
    assert!(
        log.iter().any(|l| l.contains("transfer progress: 202")),
        "the page showed bob accepting the REFER"
    );
    assert!(
        log.iter().any(|l| l.contains("ended: transferred")),
        "ended transferred"
    );
    let (samples, rate) = carol.recorded_audio();
    let (tone, control) = (
        tone_coverage(&samples, rate, BARESIP_TONE_HZ),
        tone_coverage(&samples, rate, BROWSER_TONE_HZ),
    );
    println!("[{t}] carol heard 440 Hz in {tone:.3} of frames, 1000 Hz {control:.3}");
    assert!(tone >= 0.85, "carol hears bob");
    assert!(control < 0.1, "and not the browser");
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}
