//! Call detail records end to end: calls that end in each way (the
//! browser's hangup, the far end's BYE, no answer, rejected, failed,
//! media timeout, transferred; the JSON API and SIP over WebSocket) each
//! give one complete record, in the JSON-lines file and at a webhook that
//! fails every record's first two attempts (500, then a dropped
//! connection): each arrives exactly once after the retries, signed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gangway_tests::api_client::ApiClient;
use gangway_tests::gateway::start_sip_gateway;
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
