//! The JSON API against a running gateway: every malformed input gets its
//! typed error and leaves the connection usable; calls and their resources
//! are released on hangup, socket close, timeout and shutdown.

use std::time::Duration;

use gangway_tests::api_client::{ApiClient, Closed};
use gangway_tests::gateway::{
    readyz, scrape_metric, start_gateway, start_gateway_with, wait_metric,
};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SETTLE: Duration = Duration::from_secs(3);

async fn offer() -> String {
    RtcClient::new(ClientCodec::Opus).await.1
}

/// Sends `ping` and expects `pong`: proves the connection is still usable.
async fn still_alive(api: &mut ApiClient) {
    api.send(json!({"type": "ping"})).await;
    api.expect("pong").await;
}

async fn expect_error(api: &mut ApiClient, code: &str) -> Value {
    let m = api.expect("error").await;
    assert_eq!(m["code"], code, "{m}");
    assert!(m["message"].as_str().is_some_and(|s| !s.is_empty()), "{m}");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_announces_version_and_limits() {
    let gw = start_gateway().await;
    let api = ApiClient::connect(&gw).await;
    assert_eq!(api.hello["version"], 1);
    assert_eq!(api.hello["max_message_bytes"], 65536);
    assert!(api.hello["session"].as_str().is_some_and(|s| !s.is_empty()));
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_typed_errors_and_the_socket_stays_up() {
    let gw = start_gateway().await;
    let mut api = ApiClient::connect(&gw).await;
    let cases: &[(&str, &str)] = &[
        ("{not json", "invalid_json"),
        ("[1,2,3]", "invalid_json"),
        ("\"call\"", "invalid_json"),
        (r#"{"call":"a"}"#, "invalid_message"),
        (r#"{"type":7}"#, "invalid_message"),
        (r#"{"type":"teleport","call":"a"}"#, "unknown_type"),
        (
            r#"{"type":"call","call":"a","to":"echo"}"#,
            "invalid_message",
        ),
        (
            r#"{"type":"call","call":"a","to":5,"sdp":"v=0"}"#,
            "invalid_message",
        ),
        (
            r#"{"type":"call","call":"","to":"echo","sdp":"v=0"}"#,
            "invalid_message",
        ),
        (
            r#"{"type":"call","call":"with space","to":"echo","sdp":"v=0"}"#,
            "invalid_message",
        ),
        (r#"{"type":"candidate","call":"a"}"#, "invalid_message"),
        (r#"{"type":"hangup"}"#, "invalid_message"),
        (r#"{"type":"hangup","call":"nope"}"#, "unknown_call"),
        (
            r#"{"type":"candidate","call":"nope","candidate":null}"#,
            "unknown_call",
        ),
    ];
    for (input, code) in cases {
        api.send_text(*input).await;
        let m = expect_error(&mut api, code).await;
        println!("{input} -> {m}");
        still_alive(&mut api).await;
    }
    // The call id is echoed back when it could be read, so the client can match it.
    api.send_text(r#"{"type":"call","call":"c9","to":"echo"}"#)
        .await;
    assert_eq!(
        expect_error(&mut api, "invalid_message").await["call"],
        "c9"
    );
    api.send_text(r#"{"type":"hangup","call":"nope"}"#).await;
    assert_eq!(expect_error(&mut api, "unknown_call").await["call"], "nope");

    api.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    expect_error(&mut api, "binary_not_supported").await;
    still_alive(&mut api).await;

    // Over the API limit but under the transport limit: an error, socket stays up.
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70_000));
    api.send_text(big).await;
    expect_error(&mut api, "message_too_large").await;
    still_alive(&mut api).await;

    // Nothing above created a call.
    assert_eq!(scrape_metric(&gw, "gangway_calls_active").await, 0.0);
    assert!(scrape_metric(&gw, "gangway_api_errors_total{code=\"invalid_json\"}").await >= 3.0);
    assert!(scrape_metric(&gw, "gangway_api_errors_total{code=\"unknown_call\"}").await >= 3.0);

    // Over the transport limit: the gateway closes the connection with 1009.
    // It stops reading mid-frame, so the kernel may reset the connection
    // before the client reads the close frame; either way it must be closed.
    let oversize = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(1_100_000));
    let end = match api.try_send_text(oversize).await {
        Ok(()) => api.try_recv(Duration::from_secs(5)).await,
        Err(_) => Err(Closed::Gone),
    };
    assert!(
        matches!(
            end,
            Err(Closed::Close(Some(CloseCode::Size))) | Err(Closed::Gone)
        ),
        "oversize frame must close the connection: {end:?}"
    );
    // Other connections are unaffected.
    let mut other = ApiClient::connect(&gw).await;
    still_alive(&mut other).await;
    other.close().await;
    gw.shutdown(Duration::ZERO).await;
}

/// Offers that could never connect (a 3-character ice-pwd, a one-byte
/// fingerprint) end the call at once as `invalid_sdp`, instead of holding
/// it and a media peer until the setup timeout (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_that_cannot_connect_are_refused_at_once() {
    let gw = start_gateway().await;
    let mut api = ApiClient::connect(&gw).await;
    let good = offer().await;
    let attr = |name: &str| {
        good.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {good}"))
            .to_string()
    };
    let (pwd, fingerprint) = (attr("a=ice-pwd:"), attr("a=fingerprint:"));
    let (hash, _) = fingerprint.split_once(' ').unwrap();
    for (id, bad) in [
        ("short-pwd", good.replace(&pwd, "abc")),
        (
            "one-byte-fingerprint",
            good.replace(&fingerprint, &format!("{hash} 4F")),
        ),
    ] {
        api.call(id, "echo", &bad).await;
        let e = expect_error(&mut api, "invalid_sdp").await;
        assert_eq!(e["call"], id, "{e}");
        let ended = api.expect("ended").await;
        assert_eq!(ended["reason"], "invalid_sdp", "{ended}");
    }
    assert_eq!(scrape_metric(&gw, "gangway_webrtc_peers_active").await, 0.0);
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_failures_end_with_the_right_reason() {
    let gw = start_gateway().await;
    let mut api = ApiClient::connect(&gw).await;

    api.call("bad-sdp", "echo", "this is not sdp").await;
    let e = expect_error(&mut api, "invalid_sdp").await;
    assert_eq!(e["call"], "bad-sdp");
    let ended = api.expect("ended").await;
    assert_eq!(
        (ended["call"].as_str(), ended["reason"].as_str()),
        (Some("bad-sdp"), Some("invalid_sdp"))
    );

    // An audio m-line whose only codec the gateway does not speak.
    let g729_only = offer()
        .await
        .replace("opus/48000/2", "G729/8000")
        .replace("a=fmtp:111 ", "a=fmtp:111 annexb=no;");
    api.call("g729", "echo", &g729_only).await;
    let ended = api.expect("ended").await;
    assert_eq!(ended["reason"], "incompatible_codecs", "{ended}");

    api.call("nowhere", "+15550100", &offer().await).await;
    let ended = api.expect("ended").await;
    assert_eq!(ended["reason"], "not_found", "{ended}");
    assert_eq!(ended["code"], Value::Null);

    // Ended calls are gone: their ids are unknown now and may be reused.
    api.hangup("nowhere").await;
    expect_error(&mut api, "unknown_call").await;
    assert_eq!(
        wait_metric(&gw, "gangway_calls_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        wait_metric(&gw, "gangway_webrtc_peers_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_calls_ended_total{reason=\"invalid_sdp\"}").await,
        1.0
    );
    assert_eq!(
        scrape_metric(
            &gw,
            "gangway_calls_ended_total{reason=\"incompatible_codecs\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_calls_ended_total{reason=\"not_found\"}").await,
        1.0
    );
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_limits_and_candidates() {
    let gw = start_gateway_with(|c| c.calls.max_per_session = 2).await;
    let mut api = ApiClient::connect(&gw).await;
    api.call("one", "echo", &offer().await).await;
    api.expect("answer").await;
    api.expect("answered").await;

    api.call("one", "echo", &offer().await).await;
    assert_eq!(
        expect_error(&mut api, "duplicate_call").await["call"],
        "one"
    );

    api.call("two", "echo", &offer().await).await;
    api.expect("answer").await;
    api.expect("answered").await;
    api.call("three", "echo", &offer().await).await;
    assert_eq!(
        expect_error(&mut api, "too_many_calls").await["call"],
        "three"
    );

    // Valid, end-of-candidates and mDNS candidates are accepted silently.
    for candidate in [
        json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}),
        json!({"candidate": "candidate:2 1 udp 2122260223 3b1f.local 50001 typ host", "sdpMid": "0", "sdpMLineIndex": 0}),
        json!({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}),
        Value::Null,
    ] {
        api.send(json!({"type": "candidate", "call": "one", "candidate": candidate}))
            .await;
    }
    still_alive(&mut api).await;
    api.send(json!({"type": "candidate", "call": "one", "candidate": {"candidate": "candidate:garbage"}})).await;
    assert_eq!(
        expect_error(&mut api, "invalid_candidate").await["call"],
        "one"
    );

    assert_eq!(scrape_metric(&gw, "gangway_calls_active").await, 2.0);
    // Closing the socket ends its calls and frees their peers.
    api.close().await;
    assert_eq!(
        wait_metric(&gw, "gangway_calls_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        wait_metric(&gw, "gangway_webrtc_peers_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        wait_metric(&gw, "gangway_ws_connections_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_calls_ended_total{reason=\"socket_closed\"}").await,
        2.0
    );
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_calls_leave_no_calls_peers_or_tasks_behind() {
    // A hundred in a row from one address: past the new-call rate.
    let gw = start_gateway_with(|c| c.calls.max_new_per_second_per_address = 0).await;
    let runtime = tokio::runtime::Handle::current().metrics();
    // Baseline once the server has run: axum spawns its shutdown-signal task
    // lazily, and counting before that would report it as a leak.
    ApiClient::connect(&gw).await.close().await;
    assert_eq!(
        wait_metric(&gw, "gangway_ws_connections_active", 0.0, SETTLE).await,
        0.0
    );
    let tasks_before = runtime.num_alive_tasks();
    let mut api = ApiClient::connect(&gw).await;
    for i in 0..100 {
        let id = format!("call-{i}");
        api.call(&id, "echo", &offer().await).await;
        assert_eq!(api.expect("answer").await["call"], id.as_str());
        api.expect("answered").await;
        api.hangup(&id).await;
        let ended = api.expect("ended").await;
        assert_eq!(ended["reason"], "hangup");
    }
    assert_eq!(
        wait_metric(&gw, "gangway_calls_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        wait_metric(&gw, "gangway_webrtc_peers_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_calls_started_total{route=\"echo\"}").await,
        100.0
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_calls_ended_total{reason=\"hangup\"}").await,
        100.0
    );
    api.close().await;
    assert_eq!(
        wait_metric(&gw, "gangway_ws_connections_active", 0.0, SETTLE).await,
        0.0
    );
    // The session task is gone too: the runtime holds no more tasks than before.
    let deadline = tokio::time::Instant::now() + SETTLE;
    while runtime.num_alive_tasks() > tasks_before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        runtime.num_alive_tasks() <= tasks_before,
        "tasks leaked: {} before, {} after",
        tasks_before,
        runtime.num_alive_tasks()
    );
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_that_never_connects_ends_with_media_timeout() {
    let gw = start_gateway_with(|c| c.calls.setup_timeout_secs = 1).await;
    let mut api = ApiClient::connect(&gw).await;
    api.call("silent", "echo", &offer().await).await;
    api.expect("answer").await;
    api.expect("answered").await;
    // The offer's peer never sends a STUN check, so ICE cannot complete.
    let ended = api.expect("ended").await;
    assert_eq!(ended["reason"], "media_timeout", "{ended}");
    assert_eq!(
        wait_metric(&gw, "gangway_webrtc_peers_active", 0.0, SETTLE).await,
        0.0
    );
    api.close().await;
    gw.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_ends_calls_and_closes_sockets() {
    let gw = start_gateway().await;
    let mut api = ApiClient::connect(&gw).await;
    api.call("up", "echo", &offer().await).await;
    api.expect("answer").await;
    api.expect("answered").await;

    gw.begin_drain();
    let ready = ureq_status(&gw, "/readyz").await;
    assert_eq!(ready, 503, "draining instances are not ready");
    api.call("late", "echo", &offer().await).await;
    assert_eq!(
        expect_error(&mut api, "shutting_down").await["call"],
        "late"
    );

    let addr = gw.http_addr();
    let stopper = tokio::spawn(gw.shutdown(Duration::from_millis(300)));
    let ended = api.expect("ended").await;
    assert_eq!(
        (ended["call"].as_str(), ended["reason"].as_str()),
        (Some("up"), Some("shutdown"))
    );
    let close = api.try_recv(Duration::from_secs(5)).await;
    assert_eq!(close, Err(Closed::Close(Some(CloseCode::Away))));
    stopper.await.unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "HTTP port released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_origin_check() {
    let gw = start_gateway().await;
    assert_eq!(ureq_status(&gw, "/healthz").await, 200);
    assert_eq!(ureq_status(&gw, "/readyz").await, 200);
    let (status, ctype, body) = ureq_get(&gw, "/client.js", None).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/javascript"), "{ctype}");
    assert!(body.contains("export class GangwayClient"));
    let (_, ctype, body) = ureq_get(&gw, "/", None).await;
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(body.contains("/client.js"));
    let (_, _, body) = ureq_get(&gw, "/client.d.ts", None).await;
    assert!(body.contains("GangwayClient"));
    let (_, ctype, _) = ureq_get(&gw, "/metrics", None).await;
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");

    // A page from another site may not open the API with the visitor's browser.
    let (status, _, _) = ureq_get(&gw, "/ws", Some("https://evil.example")).await;
    assert_eq!(status, 403);
    // DNS rebinding: the attacker's name resolves to the gateway, so Host
    // and Origin agree; a name that is not ours is still refused, while
    // the gateway's own address is its own origin.
    assert_eq!(
        upgrade_status(&gw, "evil.example", "http://evil.example").await,
        403
    );
    let own = gw.http_addr().to_string();
    assert_eq!(
        upgrade_status(&gw, &own, &format!("http://{own}")).await,
        101
    );
    gw.shutdown(Duration::ZERO).await;
}

/// The status line's code of a WebSocket upgrade to `/ws` sent with these
/// `Host` and `Origin` headers.
async fn upgrade_status(gw: &gangway::Gateway, host: &str, origin: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(gw.http_addr())
        .await
        .unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

async fn ureq_status(gw: &gangway::Gateway, path: &str) -> u16 {
    ureq_get(gw, path, None).await.0
}

async fn ureq_get(
    gw: &gangway::Gateway,
    path: &str,
    origin: Option<&str>,
) -> (u16, String, String) {
    let url = format!("http://{}{path}", gw.http_addr());
    let origin = origin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent.get(&url);
        if let Some(o) = origin {
            req = req
                .header("Origin", o)
                .header("Connection", "Upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Version", "13")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        let mut resp = req.call().expect("request");
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        (status, ctype, body)
    })
    .await
    .unwrap()
}

/// One address may hold `http.max_connections_per_address` WebSockets: the
/// next is refused with 429 before the upgrade and counted, while another
/// address still connects and gets its call answered, and a closed socket
/// frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_per_address_are_limited() {
    let gw = start_gateway_with(|c| c.http.max_connections_per_address = 5).await;
    let url = format!("ws://{}/ws", gw.http_addr());
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(ApiClient::connect(&gw).await);
    }
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        other => panic!("the sixth socket from one address is refused: {other:?}"),
    }
    assert_eq!(
        scrape_metric(
            &gw,
            "gangway_limit_refusals_total{limit=\"connections_per_address\"}"
        )
        .await,
        1.0
    );

    // Another address is not held up: it connects and calls.
    let mut other = connect_from(&gw, "127.0.0.2").await;
    call_from(&mut other, "o1").await;

    // A socket that closes gives its place back.
    held.pop().unwrap().close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok(_) => break,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the freed place is taken again: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.shutdown(Duration::ZERO).await;
}

/// A `/ws` socket with no call and no sign-in that sends nothing is closed
/// after `http.idle_timeout_secs` with 4002; one that pings stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_are_closed_and_busy_ones_stay() {
    let gw = start_gateway_with(|c| c.http.idle_timeout_secs = 1).await;
    let mut idle = ApiClient::connect(&gw).await;
    let mut busy = ApiClient::connect(&gw).await;
    for _ in 0..6 {
        busy.send(json!({"type": "ping"})).await;
        assert_eq!(busy.expect("pong").await["type"], "pong");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    match idle.try_recv(Duration::from_secs(3)).await {
        Err(Closed::Close(code)) => assert_eq!(code, Some(CloseCode::from(4002))),
        other => panic!("the idle socket is closed with 4002: {other:?}"),
    }
    busy.send(json!({"type": "ping"})).await;
    busy.expect("pong").await;
    gw.shutdown(Duration::ZERO).await;
}

/// One socket sending far more than `http.max_messages_per_second` gets
/// `rate_limited` for the excess (counted), keeps its connection, and is
/// served again once it slows down; another socket is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_flooding_messages_is_slowed_down() {
    let gw = start_gateway_with(|c| c.http.max_messages_per_second = 20).await;
    let mut flooder = ApiClient::connect(&gw).await;
    for _ in 0..500 {
        flooder.send(json!({"type": "ping"})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..500 {
        let m = flooder.recv().await;
        match (m["type"].as_str(), m["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("unexpected {m}"),
        }
    }
    assert!(
        limited >= 400,
        "most of the flood is refused: {pongs} pongs, {limited} refused"
    );
    assert_eq!(
        scrape_metric(&gw, "gangway_limit_refusals_total{limit=\"messages\"}").await,
        limited as f64
    );
    let mut other = ApiClient::connect(&gw).await;
    other.call("o1", "echo", &offer().await).await;
    other.expect("answer").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    flooder.send(json!({"type": "ping"})).await;
    flooder.expect("pong").await;
    gw.shutdown(Duration::ZERO).await;
}

type RawWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A `/ws` connection from another loopback address, past its `hello`.
async fn connect_from(gw: &gangway::Gateway, ip: &str) -> RawWs {
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let stream = tcp.connect(gw.http_addr()).await.unwrap();
    let url = format!("ws://{}/ws", gw.http_addr());
    let (mut ws, _) = tokio_tungstenite::client_async(&url, stream)
        .await
        .expect("another address connects");
    assert_eq!(raw_next(&mut ws).await["type"], "hello");
    ws
}

async fn raw_next(ws: &mut RawWs) -> Value {
    use futures_util::StreamExt;
    loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// An echo call on a raw connection; returns the reply to `call`.
async fn call_from(ws: &mut RawWs, id: &str) -> Value {
    let call = json!({"type": "call", "call": id, "to": "echo", "sdp": offer().await});
    futures_util::SinkExt::send(ws, Message::text(call.to_string()))
        .await
        .unwrap();
    let reply = raw_next(ws).await;
    assert_eq!(reply["type"], "answer", "{reply}");
    reply
}

/// Calls count per source address across its sockets: past
/// `calls.max_per_address` a call gets `too_many_calls` (counted), another
/// address still calls, and an ended call frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_address_are_limited_across_sockets() {
    let gw = start_gateway_with(|c| c.calls.max_per_address = 2).await;
    let mut a = ApiClient::connect(&gw).await;
    let mut b = ApiClient::connect(&gw).await;
    a.call("a1", "echo", &offer().await).await;
    a.expect("answer").await;
    a.expect("answered").await;
    b.call("b1", "echo", &offer().await).await;
    b.expect("answer").await;
    b.expect("answered").await;
    b.call("b2", "echo", &offer().await).await;
    let e = expect_error(&mut b, "too_many_calls").await;
    assert!(
        e["message"].as_str().unwrap().contains("per address"),
        "{e}"
    );
    assert_eq!(
        scrape_metric(
            &gw,
            "gangway_limit_refusals_total{limit=\"calls_per_address\"}"
        )
        .await,
        1.0
    );
    let mut other = connect_from(&gw, "127.0.0.2").await;
    call_from(&mut other, "o1").await;
    a.hangup("a1").await;
    loop {
        if a.recv().await["type"] == "ended" {
            break;
        }
    }
    b.call("b3", "echo", &offer().await).await;
    loop {
        let m = b.recv().await;
        if m["type"] == "answer" {
            break;
        }
        assert_ne!(m["type"], "error", "{m}");
    }
    gw.shutdown(Duration::ZERO).await;
}

/// A client that sends its request headers too slowly (slowloris) loses
/// its connection after `http.header_read_timeout_secs`, and a prompt one
/// on another connection is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_headers_lose_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = start_gateway_with(|c| c.http.header_read_timeout_secs = 1).await;
    let mut slow = tokio::net::TcpStream::connect(gw.http_addr())
        .await
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let (status, _) = readyz(&gw).await;
    assert_eq!(status, 200, "a prompt client is served meanwhile");
    let mut buf = [0u8; 512];
    let closed = loop {
        // A byte every 300 ms keeps the headers coming, never finishing.
        match tokio::time::timeout(Duration::from_millis(300), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
            Err(_) if t0.elapsed() > Duration::from_secs(10) => break false,
            Err(_) => {
                if slow.write_all(b"X").await.is_err() {
                    break true;
                }
            }
        }
    };
    let took = t0.elapsed();
    println!("slow headers: closed {closed} after {took:?}");
    assert!(closed, "the slow connection was closed");
    assert!(
        took < Duration::from_secs(5),
        "within the timeout's reach: {took:?}"
    );
    gw.shutdown(Duration::ZERO).await;
}

/// Past `calls.max_new_per_second_per_address` (two seconds' worth in a
/// burst) a new call gets `too_many_calls` (counted), across the address's
/// sockets, while another address still calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_calls_per_second_per_address_are_limited() {
    let gw = start_gateway_with(|c| c.calls.max_new_per_second_per_address = 1).await;
    let mut a = ApiClient::connect(&gw).await;
    let mut b = ApiClient::connect(&gw).await;
    a.call("a1", "echo", &offer().await).await;
    a.expect("answer").await;
    b.call("b1", "echo", &offer().await).await;
    b.expect("answer").await;
    b.call("b2", "echo", &offer().await).await;
    let e = loop {
        let m = b.recv().await;
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(e["code"], "too_many_calls", "{e}");
    assert!(e["message"].as_str().unwrap().contains("per second"), "{e}");
    assert_eq!(
        scrape_metric(
            &gw,
            "gangway_limit_refusals_total{limit=\"new_calls_per_address\"}"
        )
        .await,
        1.0
    );
    let mut other = connect_from(&gw, "127.0.0.2").await;
    call_from(&mut other, "o1").await;
    // A second later the address has a new token.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    b.call("b3", "echo", &offer().await).await;
    b.expect("answer").await;
    gw.shutdown(Duration::ZERO).await;
}

/// Behind a trusted proxy (`http.trusted_proxies`) the per-address limits
/// count the client `X-Forwarded-For` names; from any other peer the
/// header is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limits_see_the_client_behind_a_trusted_proxy() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let gw = start_gateway_with(|c| {
        c.http.max_connections_per_address = 2;
        c.http.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let url = format!("ws://{}/ws", gw.http_addr());
    let connect = |forwarded: &'static str| {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("X-Forwarded-For", forwarded.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let status = |r: &Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    // Through the proxy (127.0.0.1): two clients of one address, then a third.
    let a1 = connect("198.51.100.1").await;
    let a2 = connect("198.51.100.1").await;
    assert_eq!((status(&a1), status(&a2)), (101, 101));
    assert_eq!(status(&connect("198.51.100.1").await), 429);
    assert_eq!(status(&connect("198.51.100.2").await), 101);

    // A peer that is not a trusted proxy is counted as itself.
    let mut held: Vec<RawWs> = Vec::new();
    for (n, forwarded) in ["198.51.100.3", "198.51.100.4", "198.51.100.5"]
        .iter()
        .enumerate()
    {
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        tcp.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = tcp.connect(gw.http_addr()).await.unwrap();
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("X-Forwarded-For", forwarded.parse().unwrap());
        let r = tokio_tungstenite::client_async(req, stream).await;
        let code = match &r {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            code,
            if n < 2 { 101 } else { 429 },
            "connection {n} from 127.0.0.2"
        );
        held.extend(r.ok().map(|(ws, _)| ws));
    }
    drop((a1, a2, held));
    gw.shutdown(Duration::ZERO).await;
}
