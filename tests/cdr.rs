//! Call detail records end to end: calls that end in each way (the
//! browser's hangup, the far end's BYE, no answer, rejected, failed,
//! media timeout, transferred; the JSON API and SIP over WebSocket) each
//! give one complete record, in the JSON-lines file and at a webhook that
//! fails every record's first two attempts (500, then a dropped
//! connection): each arrives exactly once after the retries, signed.
//! Incoming calls no browser took (nobody signed in, the caller cancels,
//! the browser rejects) each give one missed-call record, and the one a
//! browser took only its own; a call cut by a graceful shutdown has its
//! record at the webhook and in the file when `shutdown` returns.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gangway_tests::api_client::ApiClient;
use gangway_tests::gateway::start_sip_gateway;
use gangway_tests::kamailio::start_kamailio;
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use gangway_tests::sip_peers::Sipp;
use gangway_tests::webhook::Receiver;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "cdr-test-secret";
const WAIT: Duration = Duration::from_secs(15);

/// What a call's record must say.
struct Expect {
    call: String,
    front_end: &'static str,
    reason: &'static str,
    code: Option<u64>,
    answered: bool,
    /// The far end sent media (false: the media timeout's silent far end).
    sip_media: bool,
}

/// `media_timeout`: seconds without media that end a call (the audio
/// stops after 2 s and the records wait for the statistics: only the
/// media timeout's call sets it low).
async fn gateway(trunk: u16, file: &Path, hook: &Receiver, media_timeout: u64) -> gangway::Gateway {
    let (file, url) = (file.display().to_string(), hook.url());
    start_sip_gateway(trunk, "pbx.test", move |c| {
        c.cdr.file = file;
        c.cdr.webhook_url = url;
        c.cdr.webhook_secret = SECRET.into();
        c.cdr.webhook_timeout_ms = 2_000;
        c.cdr.webhook_max_attempts = 5;
        c.cdr.webhook_backoff_initial_ms = 100;
        c.cdr.webhook_backoff_max_ms = 400;
        c.media.timeout_secs = media_timeout;
        c.sip.answer_timeout_secs = 2;
    })
    .await
}

/// The next message of `kind`, skipping ringing, early media and a
/// transfer's progress.
async fn until(api: &mut ApiClient, kind: &str) -> Value {
    loop {
        let m = api.recv().await;
        if m["type"] == kind {
            return m;
        }
        assert!(
            matches!(
                m["type"].as_str(),
                Some("ringing" | "progress" | "transfer_progress")
            ),
            "expected `{kind}`, got {m}"
        );
    }
}

/// Places `call` through the JSON API; with `media`, connects the WebRTC
/// leg, waits for `answered` and sends audio for 2 s (and waits for the
/// legs' statistics to be taken).
async fn call(api: &mut ApiClient, call: &str, media: bool) -> RtcClient {
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    api.call(call, "1000", &offer).await;
    let answer = api.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    if media {
        assert!(client.connect(WAIT).await, "WebRTC leg connects");
        until(api, "answered").await;
        client
            .echo_exchange(1, 100, Duration::from_millis(300))
            .await;
        tokio::time::sleep(Duration::from_millis(2_200)).await;
    }
    client
}

async fn ended(api: &mut ApiClient, reason: &str) {
    let m = until(api, "ended").await;
    assert_eq!(m["reason"], reason, "{m}");
}

/// Waits for the webhook to accept the record of `call`.
async fn record_of(hook: &Receiver, call: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = hook.accepted().into_iter().find(|r| r["call_id"] == call) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no record of {call} at the webhook"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const FIELDS: [&str; 20] = [
    "id",
    "call_id",
    "gangway_call_id",
    "sip_call_id",
    "sip_call_ids",
    "front_end",
    "direction",
    "from",
    "to",
    "start_time",
    "answer_time",
    "end_time",
    "duration_secs",
    "total_secs",
    "end_reason",
    "sip_code",
    "transcoded",
    "mos",
    "webrtc",
    "sip",
];

fn check(r: &Value, e: &Expect) {
    println!("{}", serde_json::to_string_pretty(r).unwrap());
    for f in FIELDS {
        assert!(r.get(f).is_some(), "{}: field {f} missing", e.call);
    }
    assert_eq!(r["front_end"], e.front_end);
    assert_eq!(r["direction"], "outbound");
    assert!(r["to"].as_str().unwrap().contains("1000"), "{}", r["to"]);
    assert!(
        r["from"].as_str().is_some_and(|f| !f.is_empty()),
        "from set"
    );
    assert_eq!(r["end_reason"], e.reason, "{}", e.call);
    assert_eq!(r["sip_code"].as_u64(), e.code, "{}", e.call);
    assert!(r["gangway_call_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        r["sip_call_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{}: an INVITE went out, so there is a Call-ID",
        e.call
    );
    // RFC 3339 UTC, same width: ordered as strings.
    let (start, end) = (
        r["start_time"].as_str().unwrap(),
        r["end_time"].as_str().unwrap(),
    );
    assert!(start.ends_with('Z') && start.len() == 24, "{start}");
    assert!(start <= end, "{start} <= {end}");
    let total = r["total_secs"].as_f64().unwrap();
    let duration = r["duration_secs"].as_f64().unwrap();
    assert!(
        0.0 <= duration && duration <= total,
        "{duration} <= {total}"
    );
    if !e.answered {
        assert_eq!(r["answer_time"], Value::Null, "{}", e.call);
        assert_eq!(duration, 0.0);
        return;
    }
    let answer = r["answer_time"].as_str().expect("answer time");
    assert!(
        start <= answer && answer <= end,
        "{start} <= {answer} <= {end}"
    );
    assert!(duration >= 2.0, "{}: at least the 2 s of audio", e.call);
    let (webrtc, sip) = (&r["webrtc"], &r["sip"]);
    assert_eq!(webrtc["codec"], "PCMU", "{}", e.call);
    assert_eq!(sip["codec"], "PCMU", "{}", e.call);
    assert_eq!(r["transcoded"], false);
    assert!(r["mos"].as_f64().is_some_and(|m| (1.0..=4.5).contains(&m)));
    for (leg, key) in [
        (webrtc, "packets_received"),
        (webrtc, "bytes_received"),
        (sip, "packets_sent"),
        (sip, "bytes_sent"),
    ] {
        assert!(
            leg[key].as_u64().unwrap() > 0,
            "{}: {key} > 0: {leg}",
            e.call
        );
    }
    if e.sip_media {
        for key in ["packets_received", "bytes_received"] {
            assert!(sip[key].as_u64().unwrap() > 0, "{}: SIP {key}", e.call);
        }
        assert!(webrtc["packets_sent"].as_u64().unwrap() > 0, "{}", e.call);
        assert_eq!(sip["loss_received"], 0.0, "loopback loses nothing");
    } else {
        assert_eq!(sip["packets_received"], 0, "the far end sent nothing");
    }
}

fn temp_file() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("gangway-cdr-{}-{nanos}.jsonl", std::process::id()))
}

/// One call ending `reason`, on a gateway of its own whose trunk is a
/// sipp playing `scenario`.
async fn scenario(file: &Path, hook: &Receiver, name: &str) -> Expect {
    let (xml, args): (&str, &[&str]) = match name {
        "hangup" | "sip_ws" => ("uas_answer_wait_bye.xml", &["-rtp_echo"]),
        "remote_hangup" => ("uas_answer_then_bye.xml", &["-rtp_echo", "-d", "6000"]),
        "no_answer" => ("uas_no_answer.xml", &[]),
        "rejected" => ("uas_decline.xml", &[]),
        "failed" => ("uas_server_error.xml", &[]),
        "media_timeout" => ("uas_answer_wait_bye.xml", &[]),
        "transferred" => ("uas_blind_transfer.xml", &["-rtp_echo"]),
        _ => unreachable!(),
    };
    let mut sipp = Sipp::uas(xml, 0, args);
    let media_timeout = if name == "media_timeout" { 2 } else { 30 };
    let gw = gateway(sipp.port(), file, hook, media_timeout).await;
    let id = format!("cdr-{name}");
    let mut e = Expect {
        call: id.clone(),
        front_end: "json",
        reason: "hangup",
        code: None,
        answered: true,
        sip_media: true,
    };
    if name == "sip_ws" {
        e.call = sip_ws_call(&gw).await;
        e.front_end = "sip_ws";
    } else {
        let mut api = ApiClient::connect(&gw).await;
        let answered = matches!(
            name,
            "hangup" | "remote_hangup" | "media_timeout" | "transferred"
        );
        let _client = call(&mut api, &id, answered).await;
        e.reason = match name {
            "remote_hangup" => "remote_hangup",
            "hangup" => {
                api.hangup(&id).await;
                "hangup"
            }
            "transferred" => {
                api.send(json!({"type": "transfer", "call": id, "to": "2000"}))
                    .await;
                "transferred"
            }
            "rejected" => "rejected",
            "failed" => "failed",
            "no_answer" => "no_answer",
            _ => "media_timeout",
        };
        e.answered = answered;
        e.sip_media = name != "media_timeout";
        e.code = match name {
            "rejected" => Some(603),
            "failed" => Some(500),
            _ => None,
        };
        ended(&mut api, e.reason).await;
        api.close().await;
    }
    sipp.wait(WAIT)
        .unwrap_or_else(|err| panic!("{name}: {err}\n{}", sipp.messages()));
    let record = record_of(hook, &e.call).await;
    check(&record, &e);
    gw.shutdown(Duration::ZERO).await;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_gives_one_complete_record_in_the_file_and_at_the_webhook() {
    let file = temp_file();
    let hook = Receiver::start(SECRET).await;
    let mut calls = Vec::new();
    for name in [
        "hangup",
        "remote_hangup",
        "no_answer",
        "rejected",
        "failed",
        "media_timeout",
        "transferred",
        "sip_ws",
    ] {
        let t0 = Instant::now();
        calls.push(scenario(&file, &hook, name).await.call);
        println!("{name}: {:?}", t0.elapsed());
    }

    // Every record exactly once at the webhook, each after a 500 and a
    // dropped connection, every request signed.
    let received = hook.received.lock().unwrap();
    assert!(received.bad.is_empty(), "bad requests: {:#?}", received.bad);
    let accepted: Vec<&Value> = received.accepted.iter().collect();
    assert_eq!(accepted.len(), calls.len(), "{accepted:#?}");
    let ids: HashSet<&str> = accepted.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), calls.len(), "record ids are unique");
    for (id, attempts) in &received.attempts {
        assert_eq!(*attempts, 3, "record {id}: 500, dropped, 200");
    }
    let call_ids: HashSet<&str> = accepted
        .iter()
        .map(|r| r["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(call_ids, calls.iter().map(String::as_str).collect());

    // The file holds the same records, one a line.
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), calls.len(), "{text}");
    for line in &lines {
        let at_hook = accepted.iter().find(|r| r["id"] == line["id"]);
        assert_eq!(
            at_hook,
            Some(&line),
            "same record in the file and at the webhook"
        );
    }
    let _ = std::fs::remove_file(&file);
}

/// A call over SIP over WebSocket, as a JsSIP app places it (INVITE with
/// the browser's offer, ACK, audio, BYE); returns its Call-ID.
async fn sip_ws_call(gw: &gangway::Gateway) -> String {
    let url = format!("ws://{}/sip", gw.http_addr());
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    let call_id = "cdr-sipws-1@browser.invalid".to_string();
    let head = |method: &str, cseq: u32, to: &str, branch: &str| {
        format!(
            "{method} sip:1000@pbx.test SIP/2.0\r\n\
             Via: SIP/2.0/WSS browser.invalid;branch=z9hG4bK{branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@pbx.test>;tag=a1\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:alice@browser.invalid;transport=ws>\r\n"
        )
    };
    let invite = format!(
        "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        head("INVITE", 1, "<sip:1000@pbx.test>", "inv1"),
        offer.len()
    );
    ws.send(Message::text(invite)).await.unwrap();
    let ok = loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a response to the INVITE")
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let t = t.to_string();
        if t.starts_with("SIP/2.0 200") {
            break t;
        }
        assert!(t.starts_with("SIP/2.0 1"), "{t}");
    };
    let to = ok
        .lines()
        .find_map(|l| l.strip_prefix("To: "))
        .expect("To in the 200")
        .to_string();
    let sdp = &ok[ok.find("\r\n\r\n").unwrap() + 4..];
    client.accept_answer(sdp);
    let ack = format!("{}Content-Length: 0\r\n\r\n", head("ACK", 1, &to, "ack1"));
    ws.send(Message::text(ack)).await.unwrap();
    assert!(client.connect(WAIT).await, "WebRTC leg connects");
    client
        .echo_exchange(1, 100, Duration::from_millis(300))
        .await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let bye = format!("{}Content-Length: 0\r\n\r\n", head("BYE", 2, &to, "bye1"));
    ws.send(Message::text(bye)).await.unwrap();
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a response to the BYE")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            if t.starts_with("SIP/2.0 200") && t.contains("BYE") {
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    call_id
}

const DOMAIN: &str = "pbx.test";
const USERS: &[(&str, &str)] = &[("alice", "alicepw")];

/// The PBX's Call-ID of the call sipp placed.
fn sipp_call_id(sipp: &Sipp) -> String {
    let messages = sipp.messages();
    let line = messages
        .lines()
        .find_map(|l| l.trim().strip_prefix("Call-ID:"))
        .unwrap_or_else(|| panic!("a Call-ID in sipp's messages:\n{messages}"));
    line.trim().to_string()
}

/// The webhook's records of the PBX call `sip_call_id`, once it has one.
async fn records_of_sip_call(hook: &Receiver, sip_call_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found: Vec<Value> = hook
            .accepted()
            .into_iter()
            .filter(|r| r["sip_call_id"] == sip_call_id)
            .collect();
        if !found.is_empty() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no record of {sip_call_id} at the webhook"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A missed call's record: inbound, never answered, no media, the PBX's
/// Call-ID and the gateway's final answer.
fn check_missed(r: &Value, sip_call_id: &str, reason: &str, code: u64, front_end: Option<&str>) {
    println!("{}", serde_json::to_string_pretty(r).unwrap());
    for f in FIELDS {
        assert!(r.get(f).is_some(), "{reason}: field {f} missing");
    }
    assert_eq!(r["direction"], "inbound", "{reason}");
    assert_eq!(r["end_reason"], reason);
    assert_eq!(r["sip_code"].as_u64(), Some(code), "{reason}");
    assert_eq!(r["front_end"].as_str(), front_end, "{reason}");
    assert_eq!(r["sip_call_ids"], json!([sip_call_id]));
    assert!(
        r["from"].as_str().unwrap().starts_with("sip:sipp@"),
        "{}",
        r["from"]
    );
    assert!(r["to"].as_str().unwrap().contains("alice"), "{}", r["to"]);
    assert!(r["call_id"].as_str().is_some_and(|c| c.starts_with("in-")));
    assert!(r["gangway_call_id"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(r["answer_time"], Value::Null, "{reason}");
    assert_eq!(r["duration_secs"], 0.0);
    let (start, end) = (
        r["start_time"].as_str().unwrap(),
        r["end_time"].as_str().unwrap(),
    );
    assert!(start.ends_with('Z') && start.len() == 24, "{start}");
    assert!(start <= end, "{start} <= {end}");
    assert!(r["total_secs"].as_f64().unwrap() >= 0.0);
    for none in ["transcoded", "mos", "webrtc", "sip"] {
        assert_eq!(r[none], Value::Null, "{reason}: {none}");
    }
}

/// sipp calls alice straight at the gateway: first while nobody is signed
/// in (404), then she signs in and the caller cancels while she rings
/// (487), she rejects the next (486), and takes the last one (its own
/// record only, answered). Each call has exactly one record at the webhook
/// (after a 500 and a dropped connection) and the same in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_calls_no_browser_took_are_recorded_as_missed() {
    let kam = start_kamailio(USERS, DOMAIN).await;
    let file = temp_file();
    let hook = Receiver::start(SECRET).await;
    let gw = gateway(kam.port(), &file, &hook, 30).await;
    let sip = gw.sip_addr().unwrap();

    // Nobody signed in as alice: 404, nothing rang.
    let mut sipp = Sipp::uac("uac_inbound_refused.xml", sip, &["-s", "alice"]);
    sipp.wait(WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sipp.messages().contains("SIP/2.0 404"),
        "{}",
        sipp.messages()
    );
    let nobody = sipp_call_id(&sipp);
    let r = records_of_sip_call(&hook, &nobody).await;
    check_missed(&r[0], &nobody, "not_found", 404, None);

    let mut tab = ApiClient::connect(&gw).await;
    tab.send(json!({"type": "register", "user": "alice", "password": "alicepw"}))
        .await;
    let reply = tab.recv().await;
    assert_eq!(reply["type"], "registered", "{reply}");

    // The caller gives up while alice's tab rings.
    let mut sipp = Sipp::uac("uac_cancel.xml", sip, &["-s", "alice", "-d", "1000"]);
    let ring = tab.expect("incoming").await;
    let ended = tab.expect("ended").await;
    assert_eq!(ended["reason"], "cancelled", "{ended}");
    sipp.wait(WAIT).unwrap_or_else(|e| panic!("{e}"));
    let cancelled = sipp_call_id(&sipp);
    let r = records_of_sip_call(&hook, &cancelled).await;
    check_missed(&r[0], &cancelled, "cancelled", 487, Some("json"));
    assert_eq!(r[0]["call_id"], ring["call"], "the id the tab was told");

    // The tab rejects: 486 to the caller.
    let mut sipp = Sipp::uac("uac_expect_busy.xml", sip, &["-s", "alice"]);
    let ring = tab.expect("incoming").await;
    tab.send(json!({"type": "reject", "call": ring["call"]}))
        .await;
    let ended = tab.expect("ended").await;
    assert_eq!(ended["reason"], "rejected", "{ended}");
    sipp.wait(WAIT).unwrap_or_else(|e| panic!("{e}"));
    let rejected = sipp_call_id(&sipp);
    let r = records_of_sip_call(&hook, &rejected).await;
    check_missed(&r[0], &rejected, "rejected", 486, Some("json"));

    // The tab takes the last call: sipp hangs up after 2 s of echoed audio.
    let mut sipp = Sipp::uac(
        "uac_simple.xml",
        sip,
        &["-s", "alice", "-d", "2000", "-rtp_echo"],
    );
    let ring = tab.expect("incoming").await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
    tab.send(json!({"type": "accept", "call": ring["call"], "sdp": offer}))
        .await;
    let answer = tab.expect("answer").await;
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert!(client.connect(WAIT).await, "WebRTC leg connects");
    until(&mut tab, "answered").await;
    let ended = until(&mut tab, "ended").await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    sipp.wait(WAIT).unwrap_or_else(|e| panic!("{e}"));
    let taken = sipp_call_id(&sipp);
    let r = records_of_sip_call(&hook, &taken).await;
    println!("{}", serde_json::to_string_pretty(&r[0]).unwrap());
    assert_eq!(
        (r[0]["direction"].as_str(), r[0]["end_reason"].as_str()),
        (Some("inbound"), Some("remote_hangup"))
    );
    assert!(
        r[0]["answer_time"].is_string(),
        "the taken call was answered"
    );
    tab.close().await;
    gw.shutdown(Duration::ZERO).await;

    // Exactly one record per call, each after a 500 and a dropped
    // connection, signed; the file holds the same four.
    let received = hook.received.lock().unwrap();
    assert!(received.bad.is_empty(), "bad requests: {:#?}", received.bad);
    for sip_call_id in [&nobody, &cancelled, &rejected, &taken] {
        let n = received
            .accepted
            .iter()
            .filter(|r| r["sip_call_id"] == sip_call_id.as_str())
            .count();
        assert_eq!(n, 1, "records of {sip_call_id}");
    }
    assert_eq!(received.accepted.len(), 4, "{:#?}", received.accepted);
    for (id, attempts) in &received.attempts {
        assert_eq!(*attempts, 3, "record {id}: 500, dropped, 200");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    for line in &lines {
        let at_hook = received.accepted.iter().find(|r| r["id"] == line["id"]);
        assert_eq!(
            at_hook,
            Some(line),
            "same record in the file and at the webhook"
        );
    }
    let _ = std::fs::remove_file(&file);
}

/// A call still up when a graceful shutdown starts: the drain is over at
/// once (0 s), the call ends with `shutdown`, and when `shutdown` returns
/// its record is in the file and was accepted by the webhook (after the
/// receiver's 500 and dropped connection): the flush waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_flushes_the_last_calls_records() {
    let file = temp_file();
    let hook = Receiver::start(SECRET).await;
    let mut sipp = Sipp::uas("uas_answer_wait_bye.xml", 0, &["-rtp_echo"]);
    let gw = gateway(sipp.port(), &file, &hook, 30).await;
    let mut api = ApiClient::connect(&gw).await;
    let _client = call(&mut api, "cdr-shutdown", true).await;
    assert!(hook.accepted().is_empty(), "no call has ended yet");

    gw.shutdown(Duration::ZERO).await;

    let accepted = hook.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    let r = &accepted[0];
    let e = Expect {
        call: "cdr-shutdown".into(),
        front_end: "json",
        reason: "shutdown",
        code: None,
        answered: true,
        sip_media: true,
    };
    check(r, &e);
    let attempts = hook.received.lock().unwrap().attempts.clone();
    assert_eq!(attempts.get(r["id"].as_str().unwrap()), Some(&3));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, vec![r.clone()], "the same record in the file");
    sipp.wait(WAIT)
        .unwrap_or_else(|err| panic!("the BYE reached the PBX: {err}\n{}", sipp.messages()));
    let _ = std::fs::remove_file(&file);
}
