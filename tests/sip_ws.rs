//! SIP over WebSocket (RFC 7118) at the gateway's `/sip`, driven by the
//! unmodified libraries web phones are built on: JsSIP 3.13 and SIP.js
//! 0.21 in headless Chromium (a 1000 Hz tone as microphone), signed in as
//! alice at kamailio (`pbx.test`) through the gateway; baresip bob (440 Hz)
//! registered at the same kamailio. kamailio challenges the library's
//! REGISTER (401) and INVITE (407) and the library answers: the gateway
//! carries the browser's own credentials. Audio is checked both ways by
//! tone (Goertzel per 20 ms frame, ≥ 90%) with negative controls.
//!
//! Needs chromium, chromium-driver, kamailio, baresip, node and npm
//! (`scripts/deps.sh test`); the bundles come from `tests/sipws/`. A
//! missing one fails the tests, it never skips them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gangway_tests::audio::tone_coverage;
use gangway_tests::browser_call::{serial, BROWSER_TONE_HZ};
use gangway_tests::gateway::{assert_no_leftovers, scrape, start_sip_gateway, token};
use gangway_tests::kamailio::{start_kamailio, Kamailio};
use gangway_tests::sip_peers::{registered_baresip, Baresip};
use gangway_tests::sipws_page::SipPhone;
use gangway_tests::sipws_rig::{
    assert_bob_heard_browser, assert_browser_heard_bob, bob_heard, page, page_context,
    take_recording, timeline, Rig, ALICE, BARESIP_TRIM_S, BOB, DOMAIN, SIGNALING_TIMEOUT, USERS,
};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// How long both sides talk before the analysis ends.
const TALK: Duration = Duration::from_millis(3_500);

/// alice (`lib`) calls bob offering only `codec` (`opus`, `pcmu`; null:
/// the library's own offer); returns once bob's call is established.
async fn alice_calls_bob(rig: &Rig, phone: &Arc<SipPhone>, t: &str, codec: Value) {
    page(phone, "dial", json!([{ "target": BOB, "codec": codec }]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] calling bob: {e}{}", rig.context()));
    rig.assert_invite_authenticated(t);
    let est = rig.bob_event("CALL_ESTABLISHED").await;
    assert_eq!(est["direction"], "incoming", "[{t}] {est}");
}

/// alice calls bob, both talk, `hangup_by_bob` or the browser ends it;
/// tones checked both ways; nothing left in the gateway.
async fn call_bob(lib: &str, codec: Value, hangup_by_bob: bool) {
    let _serial = serial().await;
    let t = format!("{lib} -> bob ({codec})");
    let rig = Rig::start().await;
    let phone = rig.alice(lib).await;
    alice_calls_bob(&rig, &phone, &t, codec.clone()).await;
    tokio::time::sleep(TALK).await;

    let ended = if hangup_by_bob {
        rig.bob.hangup().unwrap_or_else(|e| panic!("{e}"));
        page(&phone, "waitEnded", json!([10_000]))
            .await
            .unwrap_or_else(|e| panic!("[{t}] the BYE from bob: {e}{}", rig.context()))
    } else {
        page(&phone, "hangup", json!([]))
            .await
            .unwrap_or_else(|e| panic!("[{t}] hanging up: {e}{}", rig.context()))
    };
    println!("[{t}] ended: {ended}");
    assert_eq!(
        ended["by"],
        if hangup_by_bob { "remote" } else { "local" },
        "[{t}] {ended}"
    );
    let closed = rig.bob_event("CALL_CLOSED").await;
    println!("[{t}] bob's call closed: {}", closed["param"]);

    let rec = take_recording(&phone, &rig, &t).await;
    assert_browser_heard_bob(&t, &rec, "established", "ended");
    if let Some(want) = codec.as_str() {
        let got = rec.result["codec"]
            .as_str()
            .unwrap_or("")
            .to_ascii_lowercase();
        assert_eq!(got, format!("audio/{want}"), "[{t}] the negotiated codec");
    }
    assert_bob_heard_browser(&t, &rig, 2.5);
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jssip_registers_and_calls_baresip_opus() {
    call_bob("jssip", json!("opus"), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jssip_registers_and_calls_baresip_pcmu() {
    call_bob("jssip", json!("pcmu"), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jssip_call_ended_by_baresip() {
    call_bob("jssip", json!("opus"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipjs_registers_and_calls_baresip() {
    call_bob("sipjs", Value::Null, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipjs_calls_baresip_opus_and_baresip_hangs_up() {
    call_bob("sipjs", json!("opus"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipjs_calls_baresip_pcmu() {
    call_bob("sipjs", json!("pcmu"), false).await;
}

/// bob calls alice through kamailio; the page auto-answers (the gateway
/// may send the INVITE without SDP: the library then offers in its 200).
async fn bob_calls(lib: &str) {
    let _serial = serial().await;
    let t = format!("bob -> {lib}");
    let rig = Rig::start().await;
    let phone = rig.alice(lib).await;
    answer_bobs_call(&rig, &phone, &t).await;
    tokio::time::sleep(TALK).await;
    let ended = page(&phone, "hangup", json!([]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] hanging up: {e}{}", rig.context()));
    assert_eq!(ended["by"], "local", "[{t}] {ended}");
    rig.bob_event("CALL_CLOSED").await;
    let rec = take_recording(&phone, &rig, &t).await;
    assert_browser_heard_bob(&t, &rec, "established", "ended");
    assert_bob_heard_browser(&t, &rig, 2.5);
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

/// bob dials alice at kamailio; the page answers; bob's call is up.
async fn answer_bobs_call(rig: &Rig, phone: &Arc<SipPhone>, t: &str) {
    rig.bob
        .dial(&format!("sip:alice@127.0.0.1:{}", rig.kam.port()))
        .unwrap_or_else(|e| panic!("{e}"));
    let got = page(phone, "waitIncoming", json!([15_000]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] answering bob: {e}{}", rig.context()));
    println!(
        "[{t}] incoming from {}, INVITE with SDP: {}",
        got["from"], got["inviteHadSdp"]
    );
    assert!(
        got["from"]
            .as_str()
            .is_some_and(|f| f.starts_with("sip:bob@")),
        "[{t}] the caller: {got}"
    );
    let est = rig.bob_event("CALL_ESTABLISHED").await;
    assert_eq!(est["direction"], "outgoing", "[{t}] {est}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_calls_the_jssip_user() {
    bob_calls("jssip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipjs_answers_baresip() {
    bob_calls("sipjs").await;
}

/// alice is signed in from two browsers: two flows, two bindings at
/// kamailio, which forks bob's call to both through the gateway. The
/// browser that answers gets the call with audio both ways; the other is
/// cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bobs_call_rings_both_of_alices_browsers_and_the_answer_wins() {
    let _serial = serial().await;
    let t = "fork";
    let rig = Rig::start().await;
    let first = rig.alice("jssip").await;
    let second = rig.alice("jssip").await;
    let deadline = Instant::now() + SIGNALING_TIMEOUT;
    loop {
        let bindings = rig.kam.location().unwrap_or_default();
        let alice = bindings.iter().filter(|r| r.aor == "alice").count();
        if alice == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "[{t}] two bindings for alice: {bindings:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for phone in [&first, &second] {
        page(phone, "setAutoAnswer", json!([false])).await.unwrap();
    }
    rig.bob
        .dial(&format!("sip:alice@127.0.0.1:{}", rig.kam.port()))
        .unwrap_or_else(|e| panic!("{e}"));
    for phone in [&first, &second] {
        let ringing = page(phone, "waitRinging", json!([15_000]))
            .await
            .unwrap_or_else(|e| panic!("[{t}] ringing: {e}{}", rig.context()));
        assert!(
            ringing["from"]
                .as_str()
                .is_some_and(|f| f.starts_with("sip:bob@")),
            "[{t}] {ringing}"
        );
    }
    page(&second, "answer", json!([15_000]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] answering: {e}{}", rig.context()));
    let other = page(&first, "waitEnded", json!([10_000]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] the other browser: {e}{}", rig.context()));
    println!("[{t}] the browser that did not answer: {other}");
    assert_eq!(other["by"], "remote", "[{t}] {other}");
    assert_eq!(other["cause"], "Canceled", "[{t}] {other}");
    let est = rig.bob_event("CALL_ESTABLISHED").await;
    assert_eq!(est["direction"], "outgoing", "[{t}] {est}");

    tokio::time::sleep(TALK).await;
    page(&second, "hangup", json!([]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] hanging up: {e}{}", rig.context()));
    rig.bob_event("CALL_CLOSED").await;
    let rec = take_recording(&second, &rig, t).await;
    assert_browser_heard_bob(t, &rec, "established", "ended");
    assert_bob_heard_browser(t, &rig, 2.5);
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

const TOKEN_SECRET: &str = "gangway-sip-ws-token-secret-0123456789";

/// JsSIP's `authorization_jwt`: the page holds a token, not a password.
/// The gateway checks it like the JSON API's token sign-in, registers
/// alice with the password it holds, and answers kamailio's 407 to her
/// calls with it; calls both ways carry tones. A token for another user is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jssip_signs_in_with_a_token() {
    let _serial = serial().await;
    let t = "jssip token";
    let rig = Rig::start_with(|c| {
        c.auth.token_secret = Some(TOKEN_SECRET.into());
        c.auth.users.insert("alice".into(), "pw".into());
    })
    .await;

    let intruder = rig.browser().await;
    let arg = json!([{ "lib": "jssip", "wsUrl": rig.ws_url(), "uri": ALICE, "user": "alice",
        "jwt": format!("Bearer {}", token("bob", TOKEN_SECRET)), "timeoutMs": 5_000 }]);
    let refused = page(&intruder, "register", arg).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("403")),
        "[{t}] a token for bob does not sign in alice: {refused:?}"
    );
    drop(intruder);

    let phone = rig.browser().await;
    let arg = json!([{ "lib": "jssip", "wsUrl": rig.ws_url(), "uri": ALICE, "user": "alice",
        "jwt": format!("Bearer {}", token("alice", TOKEN_SECRET)) }]);
    page(&phone, "register", arg)
        .await
        .unwrap_or_else(|e| panic!("[{t}] registering with a token: {e}{}", rig.context()));
    let bindings = rig
        .kam
        .wait_registered("alice", SIGNALING_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let gw_sip = rig
        .gw
        .sip_addr()
        .expect("the gateway's SIP address")
        .to_string();
    assert!(
        bindings.iter().all(|b| b.contact.contains(&gw_sip)),
        "[{t}] alice registered by the gateway: {bindings:?}"
    );

    alice_calls_bob(&rig, &phone, t, json!("opus")).await;
    tokio::time::sleep(TALK).await;
    page(&phone, "hangup", json!([]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] hanging up: {e}{}", rig.context()));
    rig.bob_event("CALL_CLOSED").await;
    let rec = take_recording(&phone, &rig, t).await;
    assert_browser_heard_bob(t, &rec, "established", "ended");
    assert_bob_heard_browser(t, &rig, 2.5);

    answer_bobs_call(&rig, &phone, &format!("bob -> {t}")).await;
    tokio::time::sleep(TALK).await;
    page(&phone, "hangup", json!([]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] hanging up bob's call: {e}{}", rig.context()));
    rig.bob_event("CALL_CLOSED").await;
    let rec = take_recording(&phone, &rig, t).await;
    assert_browser_heard_bob(&format!("bob -> {t}"), &rec, "established", "ended");
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

/// Hold silences the browser at bob and unhold brings it back, both ways;
/// DTMF from JsSIP, sent as RFC 4733 and as SIP INFO (JsSIP's default),
/// reaches bob as RFC 4733: what the gateway is configured to send the PBX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jssip_hold_resume_and_dtmf() {
    const HOLD: Duration = Duration::from_secs(4);
    let _serial = serial().await;
    let t = "jssip hold/dtmf";
    let rig = Rig::start().await;
    let phone = rig.alice("jssip").await;
    alice_calls_bob(&rig, &phone, t, json!("opus")).await;
    let established = Instant::now();
    tokio::time::sleep(Duration::from_millis(2_000)).await;

    for (digit, transport) in [("5", "RFC2833"), ("7", "INFO")] {
        page(&phone, "dtmf", json!([digit, transport]))
            .await
            .unwrap_or_else(|e| panic!("[{t}] DTMF {digit}: {e}"));
        let ev = rig.bob_event("CALL_DTMF_START").await;
        assert_eq!(
            ev["param"], digit,
            "[{t}] bob heard {digit} ({transport}): {ev}"
        );
        rig.bob_event("CALL_DTMF_END").await;
    }
    assert_eq!(
        rig.kam.relayed("INFO"),
        0,
        "[{t}] the INFO digit was converted to RFC 4733, not relayed: {:?}",
        rig.kam.markers()
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    page(&phone, "hold", json!([]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] hold: {e}{}", rig.context()));
    tokio::time::sleep(HOLD).await;
    page(&phone, "unhold", json!([]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] unhold: {e}{}", rig.context()));
    tokio::time::sleep(TALK).await;
    let call_s = established.elapsed().as_secs_f64();
    page(&phone, "hangup", json!([]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] hanging up: {e}{}", rig.context()));
    rig.bob_event("CALL_CLOSED").await;

    // The browser hears bob before the hold and again after it.
    let rec = take_recording(&phone, &rig, t).await;
    assert_browser_heard_bob(&format!("{t}, before hold"), &rec, "established", "hold");
    assert_browser_heard_bob(&format!("{t}, after unhold"), &rec, "resumed", "hangup");

    // bob: the tone before and after, and none for about the held time
    // (silent frames or no packets at all: both leave the tone out).
    let (heard, rate) = bob_heard(&rig);
    let line = timeline(&heard, rate, BROWSER_TONE_HZ);
    let tone_s = line.chars().filter(|c| *c == 'T').count() as f64 / 10.0;
    let missing_s = call_s - BARESIP_TRIM_S - tone_s;
    println!(
        "[{t}] bob: {tone_s:.1} s of tone in a {call_s:.1} s call, {missing_s:.1} s without\n  {line}"
    );
    let head = &heard[..(rate as usize * 3 / 2).min(heard.len())];
    let tail = &heard[heard.len().saturating_sub(rate as usize * 2)..];
    assert!(
        tone_coverage(head, rate, BROWSER_TONE_HZ) >= 0.9,
        "[{t}] bob heard the browser before the hold: {line}{}",
        rig.context()
    );
    assert!(
        tone_coverage(tail, rate, BROWSER_TONE_HZ) >= 0.9,
        "[{t}] bob heard the browser again after unhold: {line}{}",
        rig.context()
    );
    assert!(
        missing_s >= HOLD.as_secs_f64() * 0.75,
        "[{t}] bob heard the browser's tone during the hold ({missing_s:.1} s without tone in \
         a {call_s:.1} s call, the hold lasted {HOLD:?}): {line}"
    );
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

/// bob (the PBX side) holds the call and resumes it. JsSIP learns it from
/// the gateway's re-INVITEs (`hold`/`unhold` by the remote party), its
/// transceiver goes `recvonly` and it stops sending; after the resume,
/// audio flows both ways again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_holds_and_resumes_the_jssip_call() {
    let _serial = serial().await;
    let t = "bob holds";
    let rig = Rig::start().await;
    let phone = rig.alice("jssip").await;
    alice_calls_bob(&rig, &phone, t, json!("pcmu")).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let sending = |s: &Value| s["stats"]["outbound"]["packetsSent"].as_u64().unwrap_or(0);

    bob_command(&rig, "hold").await;
    let held = wait_page_event(&phone, &rig, t, "hold (remote)").await;
    assert_eq!(
        held["stats"]["direction"], "recvonly",
        "[{t}] {}",
        held["stats"]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sending(&snapshot(&phone).await);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let during = sending(&snapshot(&phone).await) - before;

    bob_command(&rig, "resume").await;
    let resumed = wait_page_event(&phone, &rig, t, "unhold (remote)").await;
    let _ = page(&phone, "mark", json!(["resumed"])).await;
    assert_eq!(
        resumed["stats"]["direction"], "sendrecv",
        "[{t}] {}",
        resumed["stats"]
    );
    let before = sending(&snapshot(&phone).await);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let after = sending(&snapshot(&phone).await) - before;
    println!("[{t}] packets the browser sent in 2 s: {during} held, {after} resumed");
    assert!(
        during <= 5,
        "[{t}] the browser kept sending while held: {during} packets in 2 s"
    );
    assert!(
        after >= 50,
        "[{t}] the browser sent only {after} packets in 2 s after the resume"
    );

    tokio::time::sleep(TALK).await;
    page(&phone, "hangup", json!([]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] hanging up: {e}{}", rig.context()));
    rig.bob_event("CALL_CLOSED").await;
    let rec = take_recording(&phone, &rig, t).await;
    assert_browser_heard_bob(&format!("{t}, after the resume"), &rec, "resumed", "hangup");
    let (heard, rate) = bob_heard(&rig);
    let tail = &heard[heard.len().saturating_sub(rate as usize * 2)..];
    assert!(
        tone_coverage(tail, rate, BROWSER_TONE_HZ) >= 0.9,
        "[{t}] bob heard the browser after the resume: {}{}",
        timeline(&heard, rate, BROWSER_TONE_HZ),
        rig.context()
    );
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

/// A baresip menu command for bob, off the async runtime.
async fn bob_command(rig: &Rig, command: &'static str) {
    let bob = rig.bob.clone();
    tokio::task::spawn_blocking(move || bob.command(command, ""))
        .await
        .expect("baresip command task")
        .unwrap_or_else(|e| panic!("bob {command}: {e}"));
}

async fn snapshot(phone: &Arc<SipPhone>) -> Value {
    page(phone, "snapshot", json!([]))
        .await
        .unwrap_or_else(|e| panic!("the page's snapshot: {e}"))
}

/// Waits (up to the signaling timeout) for the page to log `event` and
/// its connection to be stable again (the library logs a re-INVITE's hold
/// before it has answered it); returns that snapshot.
async fn wait_page_event(phone: &Arc<SipPhone>, rig: &Rig, t: &str, event: &str) -> Value {
    let deadline = Instant::now() + SIGNALING_TIMEOUT;
    loop {
        let snap = snapshot(phone).await;
        let seen = snap["events"].as_array().is_some_and(|evs| {
            evs.iter()
                .any(|e| e.as_str().is_some_and(|e| e.ends_with(event)))
        });
        if seen && snap["stats"]["signalingState"] == "stable" {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "[{t}] the page never logged {event:?}: {}{}",
            page_context(phone).await,
            rig.context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The page's WebSocket is cut; JsSIP reconnects and registers again
/// through the gateway, and bob's next call reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jssip_reconnects_and_still_receives_calls() {
    let _serial = serial().await;
    let t = "jssip reconnect";
    let rig = Rig::start().await;
    let phone = rig.alice("jssip").await;
    let registered = |kam: &Kamailio| {
        kam.markers()
            .iter()
            .filter(|m| m.starts_with("GWKAM-REGISTERED sip:alice@"))
            .count()
    };
    let before = registered(&rig.kam);
    let cut = page(&phone, "cut", json!([])).await.unwrap();
    assert_eq!(cut["cut"], 1, "[{t}] one socket was open: {cut}");
    page(&phone, "waitRegistrations", json!([2, 15_000]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] registering again: {e}{}", rig.context()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while registered(&rig.kam) <= before {
        assert!(
            Instant::now() < deadline,
            "[{t}] the new REGISTER reached kamailio: {:#?}",
            rig.kam.markers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ctx = page_context(&phone).await;
    assert!(ctx.contains("ws#2 open"), "[{t}] a second socket: {ctx}");
    println!(
        "[{t}] kamailio location for alice: {:?}",
        rig.kam.location()
    );

    answer_bobs_call(&rig, &phone, t).await;
    tokio::time::sleep(TALK).await;
    page(&phone, "hangup", json!([]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] hanging up: {e}{}", rig.context()));
    rig.bob_event("CALL_CLOSED").await;
    let rec = take_recording(&phone, &rig, t).await;
    assert_browser_heard_bob(t, &rec, "established", "ended");
    assert_bob_heard_browser(t, &rig, 2.5);
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A fresh `/sip` connection with subprotocol `sip`, as the libraries open it.
async fn sip_ws(url: &str) -> Ws {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url} with subprotocol sip: {e}"));
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("sip"),
        "the gateway selects subprotocol sip"
    );
    ws
}

/// The next text frame, or why there is none (`close`, `end`, `timeout`).
async fn next_text(ws: &mut Ws, within: Duration) -> Result<String, String> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return Err("timeout".into()),
            Ok(None) => return Err("end".into()),
            Ok(Some(Err(e))) => return Err(format!("end ({e})")),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(Message::Close(c)))) => return Err(format!("close {c:?}")),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn request(method: &str, headers: &[&str]) -> String {
    let mut s = format!("{method} sip:{DOMAIN} SIP/2.0\r\n");
    for h in headers {
        s += h;
        s += "\r\n";
    }
    s + "Content-Length: 0\r\n\r\n"
}

fn options(branch: &str) -> String {
    request(
        "OPTIONS",
        &[
            &format!("Via: SIP/2.0/WS probe.invalid;branch=z9hG4bK{branch}"),
            "Max-Forwards: 70",
            "From: <sip:probe@pbx.test>;tag=p1",
            "To: <sip:pbx.test>",
            &format!("Call-ID: probe-{branch}"),
            "CSeq: 1 OPTIONS",
        ],
    )
}

/// The WebSocket is cut during a call: JsSIP keeps the call and
/// reconnects, the gateway keeps it for the grace period, and the new
/// socket takes it over. Audio goes on both ways, a digit sent by INFO
/// after the reconnect reaches bob (the browser's in-dialog request on the
/// new socket), and bob's BYE reaches the browser on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jssip_call_survives_a_reconnect() {
    let _serial = serial().await;
    let t = "jssip call across a reconnect";
    let rig = Rig::start().await;
    let phone = rig.alice("jssip").await;
    alice_calls_bob(&rig, &phone, t, json!("opus")).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let cut = page(&phone, "cut", json!([])).await.unwrap();
    assert_eq!(cut["cut"], 1, "[{t}] one socket was open: {cut}");
    page(&phone, "waitRegistrations", json!([2, 15_000]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] registering again: {e}{}", rig.context()));
    page(&phone, "mark", json!(["back"])).await.unwrap();
    tokio::time::sleep(TALK).await;

    page(&phone, "dtmf", json!(["7", "INFO"]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] DTMF after the reconnect: {e}"));
    let ev = rig.bob_event("CALL_DTMF_START").await;
    assert_eq!(ev["param"], "7", "[{t}] bob heard the digit: {ev}");

    rig.bob.hangup().unwrap_or_else(|e| panic!("{e}"));
    let ended = page(&phone, "waitEnded", json!([10_000]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] bob's BYE on the new socket: {e}{}", rig.context()));
    assert_eq!(ended["by"], "remote", "[{t}] {ended}");
    let ctx = page_context(&phone).await;
    assert!(ctx.contains("ws#2 open"), "[{t}] a second socket: {ctx}");

    let rec = take_recording(&phone, &rig, t).await;
    assert_browser_heard_bob(&format!("{t}, after the reconnect"), &rec, "back", "ended");
    assert_bob_heard_browser(t, &rig, 4.0);
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

/// A browser that goes away for good (Chromium quits) leaves no binding
/// behind: after the grace period the gateway un-REGISTERs it at kamailio
/// with the browser's last credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_browsers_binding_is_removed_upstream() {
    let _serial = serial().await;
    let t = "vanished browser";
    let rig = Rig::start().await;
    let phone = rig.alice("jssip").await;
    assert!(!rig
        .kam
        .wait_registered("alice", SIGNALING_TIMEOUT)
        .unwrap()
        .is_empty());
    tokio::task::spawn_blocking(move || drop(phone))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let alice: Vec<_> = rig
            .kam
            .location()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .filter(|r| r.aor == "alice")
            .collect();
        if alice.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "[{t}] alice's binding is still at kamailio: {alice:?}\n{:#?}",
            rig.kam.markers()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = scrape(&rig.gw).await;
    assert!(
        metrics.contains("gangway_sip_ws_bindings_active 0"),
        "[{t}] no live binding left"
    );
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

/// JsSIP transfers bob to carol (REFER from the browser): the gateway
/// REFERs bob, bob calls carol, the NOTIFYs reach the library, and the
/// browser's call ends while bob and carol talk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jssip_transfers_bob_to_carol() {
    let _serial = serial().await;
    let t = "jssip blind transfer";
    let rig = Rig::start_with(|c| {
        // Our domain, and kamailio by address: bob has no outbound proxy,
        // so the target he calls must name kamailio itself.
        c.sip.trunk.allow = vec![
            format!(r"^sip:[a-z0-9]+@{}$", DOMAIN.replace('.', r"\.")),
            r"^sip:[a-z0-9]+@127\.0\.0\.1:[0-9]+$".into(),
        ];
    })
    .await;
    let carol = registered_baresip(
        rig.kam.registrar_uri(),
        "carol",
        "carolpw",
        700.0,
        SIGNALING_TIMEOUT,
    )
    .await;
    let phone = rig.alice("jssip").await;
    alice_calls_bob(&rig, &phone, t, json!("opus")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let target = format!("sip:carol@127.0.0.1:{}", rig.kam.port());
    let done = page(&phone, "refer", json!([target]))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "[{t}] REFER: {e}{}\ncarol: {:?}",
                rig.context(),
                carol.events()
            )
        });
    assert_eq!(done["status"], 200, "[{t}] {done}");
    let est = carol_event(&carol, "CALL_ESTABLISHED").await;
    assert_eq!(est["direction"], "incoming", "[{t}] carol: {est}");
    let ended = page(&phone, "waitEnded", json!([10_000]))
        .await
        .unwrap_or_else(|e| panic!("[{t}] the browser's call ends: {e}{}", rig.context()));
    assert_eq!(ended["by"], "remote", "[{t}] {ended}");
    assert!(
        rig.kam.relayed("REFER") >= 1,
        "[{t}] the REFER went to bob: {:?}",
        rig.kam.markers()
    );
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

async fn carol_event(carol: &Arc<Baresip>, kind: &'static str) -> Value {
    let carol = carol.clone();
    tokio::task::spawn_blocking(move || carol.wait_for_event(kind, SIGNALING_TIMEOUT))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("carol's {kind}: {e}"))
}

/// Runs `script` on the example page (its argument: `arg`).
async fn on_example(phone: &Arc<SipPhone>, script: &'static str, arg: Value) -> Value {
    let phone = phone.clone();
    tokio::task::spawn_blocking(move || phone.browser.execute_script(script, vec![arg]))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("example page script: {e}"))
}

/// Waits until the example page's status line starts with `want`.
async fn example_status(phone: &Arc<SipPhone>, want: &str, rig: &Rig) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = on_example(
            phone,
            "return document.getElementById('log').textContent;",
            Value::Null,
        )
        .await;
        let status = on_example(
            phone,
            "return document.getElementById('status').textContent;",
            Value::Null,
        )
        .await;
        if status.as_str().is_some_and(|s| s.starts_with(want)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the example page never showed {want:?}; its log:\n{}{}",
            log.as_str().unwrap_or(""),
            rig.context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The page the docs give users (`docs/examples/jssip.html`), driven by
/// its own inputs and buttons: it registers alice, calls bob, sends a
/// digit that reaches bob, and hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_jssip_page_works() {
    let _serial = serial().await;
    let rig = Rig::start().await;
    let phone = rig.example_page().await;
    let fill = "const [ws, uri, password, target] = arguments[0];
        document.getElementById('ws').value = ws;
        document.getElementById('uri').value = uri;
        document.getElementById('password').value = password;
        document.getElementById('target').value = target;
        document.getElementById('register').click();
        return true;";
    on_example(&phone, fill, json!([rig.ws_url(), ALICE, "pw", BOB])).await;
    example_status(&phone, "registered", &rig).await;
    let click = "document.getElementById(arguments[0]).click(); return true;";
    on_example(&phone, click, json!("call")).await;
    example_status(&phone, "confirmed", &rig).await;
    rig.assert_invite_authenticated("example page");
    let est = rig.bob_event("CALL_ESTABLISHED").await;
    assert_eq!(est["direction"], "incoming", "{est}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    on_example(&phone, click, json!("dtmf")).await;
    let ev = rig.bob_event("CALL_DTMF_START").await;
    assert_eq!(ev["param"], "5", "bob heard the page's digit: {ev}");
    on_example(&phone, click, json!("hangup")).await;
    example_status(&phone, "ended", &rig).await;
    rig.bob_event("CALL_CLOSED").await;
    assert_no_leftovers(&rig.gw).await;
    rig.gw.shutdown(Duration::ZERO).await;
}

/// Malformed input on `/sip` is refused (400 or close), keepalives and
/// OPTIONS are answered, the refusals are counted, nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_sip_ws_gets_400_or_close_and_leaks_nothing() {
    let _serial = serial().await;
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = start_sip_gateway(kam.port(), DOMAIN, |c| c.sip.trunk.transport = "udp".into()).await;
    let url = format!("ws://{}/sip", gw.http_addr());
    let short = Duration::from_secs(3);

    // Without the subprotocol the upgrade is refused.
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_ne!(resp.status().as_u16(), 101, "{resp:?}");
            println!("no subprotocol: HTTP {}", resp.status());
        }
        Err(e) => println!("no subprotocol: refused ({e})"),
        Ok((_, resp)) => panic!("an upgrade without subprotocol sip was accepted: {resp:?}"),
    }

    // A CRLFCRLF ping gets a CRLF pong (RFC 5626 §4.4.1); OPTIONS gets 200.
    let mut ws = sip_ws(&url).await;
    ws.send(Message::text("\r\n\r\n")).await.unwrap();
    assert_eq!(
        next_text(&mut ws, short).await.as_deref(),
        Ok("\r\n"),
        "the pong"
    );
    ws.send(Message::text(options("opt1"))).await.unwrap();
    let ok = next_text(&mut ws, short)
        .await
        .unwrap_or_else(|e| panic!("OPTIONS: {e}"));
    println!("OPTIONS answered:\n{ok}");
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert!(
        ok.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("allow:")),
        "200 to OPTIONS lists Allow: {ok}"
    );

    // Requests the parser refuses but that can be answered: an unknown
    // method gets 501 with Allow, another SIP version 505, MESSAGE 405.
    for (text, status) in [
        (
            options("frob").replacen("OPTIONS", "FROB", 2),
            "SIP/2.0 501 ",
        ),
        (
            options("v3").replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1),
            "SIP/2.0 505 ",
        ),
        (
            options("msg").replacen("OPTIONS", "MESSAGE", 2),
            "SIP/2.0 405 ",
        ),
    ] {
        ws.send(Message::text(text.clone())).await.unwrap();
        let r = next_text(&mut ws, short).await;
        assert!(
            r.as_ref().is_ok_and(|r| r.starts_with(status)),
            "{text:?} answered {r:?}, want {status}"
        );
        if status != "SIP/2.0 505 " {
            assert!(r.unwrap().contains("\r\nAllow: "), "{status} lists Allow");
        }
    }

    // Garbage: nothing to answer, the socket closes.
    ws.send(Message::text("hello, this is not SIP\r\n\r\n"))
        .await
        .unwrap();
    let r = next_text(&mut ws, short).await;
    assert!(
        r.as_ref().is_err_and(|e| e != "timeout"),
        "garbage closes the connection: {r:?}"
    );

    drop(ws);

    // A request without Via, Call-ID and CSeq.
    let mut ws = sip_ws(&url).await;
    let bare = request(
        "INVITE",
        &[
            "Max-Forwards: 70",
            "From: <sip:x@pbx.test>;tag=1",
            "To: <sip:bob@pbx.test>",
        ],
    );
    ws.send(Message::text(bare)).await.unwrap();
    match next_text(&mut ws, short).await {
        Ok(r) => assert!(r.starts_with("SIP/2.0 400"), "a request without Via: {r:?}"),
        Err(e) => assert_ne!(
            e, "timeout",
            "a request without Via/Call-ID/CSeq got no answer"
        ),
    }

    drop(ws);

    // A frame over http.max_message_bytes closes the connection.
    let mut ws = sip_ws(&url).await;
    let limit = gw_max_message_bytes();
    let big = options("big").replace(
        "CSeq",
        &format!("X-Pad: {}\r\nCSeq", "a".repeat(limit + 1024)),
    );
    let _ = ws.send(Message::text(big)).await;
    let r = next_text(&mut ws, short).await;
    assert!(
        r.as_ref().is_err_and(|e| e != "timeout"),
        "a {} byte frame closes the connection: {r:?}",
        limit + 1024
    );

    let metrics = scrape(&gw).await;
    let sip_ws: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("sip_ws"))
        .collect();
    println!("sip_ws series:\n{}", sip_ws.join("\n"));
    let rejected: f64 = sip_ws
        .iter()
        .filter(|l| l.contains("reject"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(rejected > 0.0, "refusals are counted: {sip_ws:#?}");
    drop(ws);

    // Every connection is gone from the gauges, if the gateway has any.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(&gw).await;
        let open: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("sip_ws") && l.contains("active"))
            .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) != Some(0.0))
            .map(String::from)
            .collect();
        if open.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "connections left open: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_no_leftovers(&gw).await;
    gw.shutdown(Duration::ZERO).await;
}

/// The gateway's default frame limit (the tests do not change it).
fn gw_max_message_bytes() -> usize {
    gangway::Config::default().http.max_message_bytes
}

/// A `/sip` socket that neither registers nor calls nor sends anything is
/// closed after `http.idle_timeout_secs` (4002); one that keeps sending
/// CRLF keepalives stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sip_ws_socket_is_closed() {
    let _serial = serial().await;
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = start_sip_gateway(kam.port(), DOMAIN, |c| c.http.idle_timeout_secs = 1).await;
    let url = format!("ws://{}/sip", gw.http_addr());
    let mut idle = sip_ws(&url).await;
    let mut busy = sip_ws(&url).await;
    for _ in 0..6 {
        busy.send(Message::text("\r\n\r\n")).await.unwrap();
        assert_eq!(
            next_text(&mut busy, Duration::from_secs(2)).await,
            Ok("\r\n".into())
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let closed = next_text(&mut idle, Duration::from_secs(3)).await;
    assert!(
        closed
            .as_ref()
            .is_err_and(|e| e.contains("4002") || e.contains("Library(4002)")),
        "the idle socket was closed with 4002: {closed:?}"
    );
    busy.send(Message::text("\r\n\r\n")).await.unwrap();
    assert_eq!(
        next_text(&mut busy, Duration::from_secs(2)).await,
        Ok("\r\n".into())
    );
    gw.shutdown(Duration::ZERO).await;
}

/// A `/sip` socket sending far more than `http.max_messages_per_second`
/// is closed with 1008 and counted; no SIP app sends like that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sip_ws_socket_is_closed() {
    let _serial = serial().await;
    let kam = start_kamailio(USERS, DOMAIN).await;
    let gw = start_sip_gateway(kam.port(), DOMAIN, |c| c.http.max_messages_per_second = 5).await;
    let url = format!("ws://{}/sip", gw.http_addr());
    let mut ws = sip_ws(&url).await;
    for _ in 0..40 {
        if ws.send(Message::text("\r\n\r\n")).await.is_err() {
            break;
        }
    }
    let mut pongs = 0;
    let closed = loop {
        match next_text(&mut ws, Duration::from_secs(3)).await {
            Ok(_) => pongs += 1,
            Err(e) => break e,
        }
    };
    assert!(
        closed.contains("1008") || closed.contains("Policy"),
        "closed: {closed}"
    );
    assert!(
        pongs <= 10,
        "the burst allowance, then the close: {pongs} pongs"
    );
    assert!(
        scrape(&gw)
            .await
            .lines()
            .any(|l| l.starts_with("gangway_limit_refusals_total{limit=\"messages\"} 1")),
        "the refusal is counted"
    );
    gw.shutdown(Duration::ZERO).await;
}
