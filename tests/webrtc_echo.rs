//! Real WebRTC peers (str0m clients on their own UDP sockets) call the echo
//! line through the JSON API: ICE, DTLS-SRTP and media must all work, and
//! every frame that comes back must be one the peer sent.

use std::time::{Duration, Instant};

use gangway_tests::api_client::ApiClient;
use gangway_tests::gateway::{scrape_metric, start_gateway, start_gateway_with, wait_metric};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(3);

/// One full echo call; returns the time from `call` to DTLS connected.
async fn echo_call(gw: &gangway::Gateway, codec: ClientCodec, tag: u32, frames: usize) -> Duration {
    let mut api = ApiClient::connect(gw).await;
    let (mut client, offer) = RtcClient::new(codec).await;
    let id = format!("c{tag}");
    let t0 = Instant::now();
    api.call(&id, "echo", &offer).await;
    let answer = api.expect("answer").await;
    assert_eq!(answer["call"], id.as_str());
    client.accept_answer(answer["sdp"].as_str().unwrap());
    assert_eq!(api.expect("answered").await["call"], id.as_str());
    assert!(
        client.connect(Duration::from_secs(10)).await,
        "peer {tag} connects"
    );
    let connect_time = t0.elapsed();
    let report = client
        .echo_exchange(tag, frames, Duration::from_millis(300))
        .await;
    assert_eq!(
        report.foreign, 0,
        "peer {tag} got frames it never sent: {report:?}"
    );
    assert!(
        report.echoed * 10 >= report.sent * 8,
        "peer {tag} got too few frames back: {report:?}"
    );
    api.hangup(&id).await;
    let ended = api.expect("ended").await;
    assert_eq!(ended["reason"], "hangup");
    assert_eq!(ended["code"], serde_json::Value::Null);
    api.close().await;
    connect_time
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_exactly_what_was_sent_for_each_codec() {
    let gw = start_gateway().await;
    for (i, codec) in [ClientCodec::Opus, ClientCodec::Pcmu, ClientCodec::Pcma]
        .into_iter()
        .enumerate()
    {
        let t = echo_call(&gw, codec, i as u32, 50).await;
        println!("{codec:?}: connected in {t:?}");
    }
    assert_eq!(
        wait_metric(&gw, "gangway_calls_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        wait_metric(&gw, "gangway_webrtc_peers_active", 0.0, SETTLE).await,
        0.0
    );
    gw.shutdown(Duration::ZERO).await;
}

/// DTLS under load, the main risk of running every peer in one str0m loop:
/// 200 peers call echo at the same instant; every handshake must complete and
/// every call must echo audio. The time to connect them all is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_peers_connect_at_once_and_all_echo() {
    const PEERS: usize = 200;
    // Two hundred calls from one address in an instant: no new-call rate.
    let gw = start_gateway_with(|c| c.calls.max_new_per_second_per_address = 0).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(PEERS + 1));
    let mut tasks = Vec::new();
    for tag in 0..PEERS as u32 {
        let barrier = barrier.clone();
        let addr = gw.http_addr();
        tasks.push(tokio::spawn(async move {
            let mut api = ApiClient::connect_to(addr).await;
            let (mut client, offer) = RtcClient::new(ClientCodec::Opus).await;
            barrier.wait().await;
            let t0 = Instant::now();
            let id = format!("load{tag}");
            api.call(&id, "echo", &offer).await;
            let answer = api.expect("answer").await;
            client.accept_answer(answer["sdp"].as_str().unwrap());
            api.expect("answered").await;
            let connected = client.connect(Duration::from_secs(30)).await;
            let connect_time = t0.elapsed();
            let report = if connected {
                Some(
                    client
                        .echo_exchange(tag, 25, Duration::from_millis(500))
                        .await,
                )
            } else {
                None
            };
            api.hangup(&id).await;
            let ended = api.expect("ended").await;
            api.close().await;
            (tag, connected, connect_time, report, ended)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    for task in tasks {
        let (tag, connected, connect_time, report, ended) = task.await.expect("peer task");
        slowest = slowest.max(connect_time);
        match report {
            _ if !connected => failures.push(format!("peer {tag}: DTLS/ICE never connected")),
            Some(r) if r.foreign > 0 || r.echoed == 0 => {
                failures.push(format!("peer {tag}: bad echo {r:?}"))
            }
            _ => {}
        }
        if ended["reason"] != "hangup" {
            failures.push(format!("peer {tag}: ended {ended}"));
        }
    }
    println!(
        "{PEERS} peers: all connected within {slowest:?} of the simultaneous start; whole run {:?}",
        start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    assert_eq!(
        wait_metric(&gw, "gangway_calls_active", 0.0, SETTLE).await,
        0.0
    );
    assert_eq!(
        wait_metric(&gw, "gangway_webrtc_peers_active", 0.0, SETTLE).await,
        0.0
    );
    gw.shutdown(Duration::ZERO).await;
}

/// With two media shards, calls spread over both ports and each shard echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_media_shards() {
    let gw = gangway_tests::gateway::start_gateway_with(|c| c.media.shards = 2).await;
    let addrs = gw.webrtc_addrs();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0], addrs[1], "one UDP port per shard");
    let mut used = std::collections::HashSet::new();
    let mut apis = Vec::new();
    let mut clients = Vec::new();
    for tag in 0..4u32 {
        let mut api = ApiClient::connect(&gw).await;
        let (mut client, offer) = RtcClient::new(ClientCodec::Opus).await;
        let id = format!("s{tag}");
        api.call(&id, "echo", &offer).await;
        let answer = api.expect("answer").await;
        let sdp = answer["sdp"].as_str().unwrap();
        // The answer's host candidate names the shard's port.
        let port = addrs
            .iter()
            .find(|a| sdp.contains(&format!(" {} typ host", a.port())))
            .expect("candidate on one of the shards' ports");
        used.insert(*port);
        client.accept_answer(sdp);
        api.expect("answered").await;
        assert!(client.connect(Duration::from_secs(10)).await);
        apis.push((api, id));
        clients.push(client);
    }
    assert_eq!(used.len(), 2, "calls on both shards: {used:?}");
    for (i, client) in clients.iter_mut().enumerate() {
        let report = client
            .echo_exchange(i as u32, 25, Duration::from_millis(300))
            .await;
        assert!(report.echoed >= 20 && report.foreign == 0, "{report:?}");
    }
    for (mut api, id) in apis {
        api.hangup(&id).await;
        assert_eq!(api.expect("ended").await["reason"], "hangup");
        api.close().await;
    }
    assert_eq!(
        wait_metric(&gw, "gangway_webrtc_peers_active", 0.0, SETTLE).await,
        0.0
    );
    gw.shutdown(Duration::ZERO).await;
}

/// Sets up an echo call on its own socket; returns the socket, the peer and
/// how long the `answer` took.
async fn connected_echo(gw: &gangway::Gateway, id: &str) -> (ApiClient, RtcClient, Duration) {
    let mut api = ApiClient::connect(gw).await;
    let (mut client, offer) = RtcClient::new(ClientCodec::Opus).await;
    let t0 = Instant::now();
    api.call(id, "echo", &offer).await;
    let answer = api.expect("answer").await;
    let answer_after = t0.elapsed();
    client.accept_answer(answer["sdp"].as_str().unwrap());
    api.expect("answered").await;
    assert!(
        client.connect(Duration::from_secs(10)).await,
        "{id} connects"
    );
    (api, client, answer_after)
}

/// 20,000 trickled candidates on one call (the flood that used to keep
/// both media shards busy for seconds) are refused past
/// `calls.max_candidates` before they reach a shard: a call on another
/// socket that was up goes on echoing, and a new one is answered and
/// connects. The refusals are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_flood_is_refused_and_other_calls_go_on() {
    const FLOOD: usize = 20_000;
    // The per-socket message limit would refuse most of the flood first;
    // this test is about what candidates cost the shards.
    let gw = start_gateway_with(|c| c.http.max_messages_per_second = 0).await;
    let max = gw.config().calls.max_candidates;
    let (mut live_api, mut live, _) = connected_echo(&gw, "live").await;
    let (mut flooder, _flooder_peer, _) = connected_echo(&gw, "f1").await;
    for n in 0..FLOOD {
        let candidate = format!(
            "candidate:{n} 1 udp 2122260223 10.{}.{}.1 {} typ host",
            n / 250 % 250,
            n % 250,
            1024 + n % 60_000
        );
        flooder
            .send(json!({"type": "candidate", "call": "f1",
                "candidate": {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}}))
            .await;
    }
    // The new call is set up while the flooder's refusals are still on
    // their way back to it.
    let (mut late_api, mut late, answer_after) = connected_echo(&gw, "late").await;
    println!("a new call's answer came {answer_after:?} after its `call`, during the flood");
    let mut refused = 0;
    while refused < FLOOD - max {
        let m = flooder.try_recv(Duration::from_secs(30)).await.unwrap();
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["code"], "invalid_candidate", "{m}");
        refused += 1;
    }
    assert_eq!(
        scrape_metric(&gw, "gangway_limit_refusals_total{limit=\"candidates\"}").await,
        (FLOOD - max) as f64
    );
    for (tag, client) in [(1, &mut live), (2, &mut late)] {
        let report = client
            .echo_exchange(tag, 100, Duration::from_millis(300))
            .await;
        assert!(
            report.echoed * 10 >= report.sent * 8 && report.foreign == 0,
            "call {tag} still echoes after the flood: {report:?}"
        );
    }
    for (api, id) in [
        (&mut live_api, "live"),
        (&mut late_api, "late"),
        (&mut flooder, "f1"),
    ] {
        api.hangup(id).await;
        let ended = loop {
            let m = api.recv().await;
            if m["type"] == "ended" {
                break m;
            }
        };
        assert_eq!(ended["reason"], "hangup");
    }
    gw.shutdown(Duration::ZERO).await;
}
