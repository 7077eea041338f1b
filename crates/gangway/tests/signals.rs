//! The gateway process and its signals: the first SIGTERM drains (exit 0
//! once no call is left), a second one during the drain ends every call at
//! once and exits with status 3. Call records the webhook still holds when
//! the shutdown's flush runs out are counted and logged, not lost silently.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// An offer as Chromium makes it (audio only): the call it starts stays
/// up, connecting, for the whole test.
const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n\
c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Hx8q\r\n\
a=ice-pwd:3Yy0kq9ZqBkWJ7W2QOZz2T9A\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 9B:4E:8A:6E:AF:BC:9F:4D:0A:34:6E:1D:9C:1F:43:3A:7A:2B:5C:7D:6E:8F:90:A1:B2:C3:D4:E5:F6:07:18:29\r\n\
a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\na=ssrc:1001 cname:abcdefgh\r\n";

/// Starts the binary on free loopback ports; returns it and its HTTP address.
fn start() -> (Child, String) {
    let (child, addr, _) = start_with(&[]);
    (child, addr)
}

/// Every line the process has logged so far.
type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// [`start`] with more environment (later keys win); also returns its log.
fn start_with(env: &[(&str, &str)]) -> (Child, String, Lines) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gangway"));
    command
        .env("GANGWAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("GANGWAY_WEBRTC__LISTEN", "127.0.0.1:0")
        .env("GANGWAY_SHUTDOWN__DRAIN_TIMEOUT_SECS", "60")
        .env("GANGWAY_LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the gateway binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = Lines::default();
    let log = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Not any URL: with records on, the webhook's is logged first.
            if let Some(i) = line.find("demo page: http://") {
                let addr: String = line[i + 18..].chars().take_while(|c| *c != '/').collect();
                let _ = tx.send(addr);
            }
            log.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway logs its address");
    (child, addr, lines)
}

fn signal(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "SIGTERM sent");
}

fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[test]
fn sigterm_without_calls_exits_zero() {
    let (mut child, _) = start();
    signal(&child);
    assert_eq!(exit_within(&mut child, Duration::from_secs(20)), Some(0));
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON message, or `None` once the socket closes.
async fn next(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time");
        match m {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_second_sigterm_ends_the_calls_now_and_exits_non_zero() {
    let (mut child, addr) = start();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("the API connects");
    assert_eq!(next(&mut ws).await.unwrap()["type"], "hello");
    let call = serde_json::json!({"type": "call", "call": "c1", "to": "echo", "sdp": OFFER});
    ws.send(Message::text(call.to_string())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap()["type"], "answer");

    // The drain waits for the call.
    signal(&child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the drain waits for the call"
    );

    signal(&child);
    let ended = loop {
        match next(&mut ws).await {
            Some(m) if m["type"] == "ended" => break m,
            Some(_) => continue,
            None => panic!("the socket closed before `ended`"),
        }
    };
    assert_eq!(ended["reason"], "shutdown", "{ended}");
    assert_eq!(exit_within(&mut child, Duration::from_secs(20)), Some(3));
}

/// Call records on, with a webhook that takes the connection and never
/// answers. A SIGTERM with no drain time ends the echo call; the flush
/// waits up to `cdr.flush_timeout_secs` for the webhook, then the record it
/// still holds is dropped with one warning giving the count, and the
/// process exits 0.
#[tokio::test]
async fn records_the_webhook_still_holds_at_exit_are_counted_and_logged() {
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cdr", hook.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in hook.incoming() {
            held.push(stream);
        }
    });
    let (mut child, addr, lines) = start_with(&[
        ("GANGWAY_SHUTDOWN__DRAIN_TIMEOUT_SECS", "0"),
        ("GANGWAY_CDR__WEBHOOK_URL", &url),
        ("GANGWAY_CDR__WEBHOOK_SECRET", "signals-test"),
        ("GANGWAY_CDR__WEBHOOK_TIMEOUT_MS", "60000"),
        ("GANGWAY_CDR__FLUSH_TIMEOUT_SECS", "3"),
    ]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("the API connects");
    assert_eq!(next(&mut ws).await.unwrap()["type"], "hello");
    let call = serde_json::json!({"type": "call", "call": "c1", "to": "echo", "sdp": OFFER});
    ws.send(Message::text(call.to_string())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap()["type"], "answer");

    signal(&child);
    assert_eq!(exit_within(&mut child, Duration::from_secs(30)), Some(0));
    let lines = lines.lock().unwrap();
    let dropped: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.contains("call records not delivered to the webhook are dropped"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dropped.len(), 1, "one warning: {lines:#?}");
    assert_eq!(dropped[0]["level"], "WARN", "{}", dropped[0]);
    assert_eq!(
        dropped[0]["records"], 1,
        "the call's record: {}",
        dropped[0]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("call records not flushed in time")),
        "{lines:#?}"
    );
}
