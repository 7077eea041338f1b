//! Limits on the SIP side that a peer cannot exceed:
//! - calls per second towards the trunk (`sip.max_calls_per_second`): a
//!   call past the limit ends at once with `failed`/503 and no INVITE
//!   leaves the gateway;
//! - SIP over TCP connections per address (`sip.max_tcp_connections_per_address`):
//!   the ones over the cap are closed at once and counted, while a
//!   connection from another address is served.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gangway_tests::api_client::ApiClient;
use gangway_tests::gateway::{metric_or_zero, start_sip_gateway, wait_metric};
use gangway_tests::rtc_client::{ClientCodec, RtcClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Call-IDs of the INVITEs that reach `trunk` within `window`.
async fn invites_seen(trunk: &UdpSocket, window: Duration) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut buf = vec![0u8; 65_536];
    let end = tokio::time::Instant::now() + window;
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, trunk.recv_from(&mut buf)).await {
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.starts_with("INVITE ") {
            let call_id = text
                .lines()
                .find_map(|l| l.strip_prefix("Call-ID: "))
                .unwrap_or_default();
            seen.insert(call_id.to_string());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_trunk_rate_fail_at_once_without_an_invite() {
    // A trunk that never answers: each INVITE it gets is a call let through.
    let trunk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = trunk.local_addr().unwrap().port();
    let gw = start_sip_gateway(port, "127.0.0.1", |c| c.sip.max_calls_per_second = 1).await;
    let mut api = ApiClient::connect(&gw).await;
    // One a second, two in a burst: the third is over.
    let mut clients = Vec::new();
    for id in ["c1", "c2", "c3"] {
        let (client, offer) = RtcClient::new(ClientCodec::Pcmu).await;
        clients.push(client);
        api.call(id, "1000", &offer).await;
    }
    // Which of the three is over depends on which media leg is ready first:
    // exactly one ends, at once, with 503.
    let t0 = Instant::now();
    let ended = loop {
        let m = api.recv().await;
        if m["type"] == "ended" {
            break m;
        }
    };
    println!("over the rate: {ended} after {:?}", t0.elapsed());
    assert_eq!(
        (ended["reason"].as_str(), ended["code"].as_u64()),
        (Some("failed"), Some(503)),
        "{ended}"
    );
    while let Some(m) = api.recv_within(Duration::from_secs(1)).await {
        assert_ne!(m["type"], "ended", "only one call is over the rate: {m}");
    }
    let invites = invites_seen(&trunk, Duration::from_secs(1)).await;
    assert_eq!(
        invites.len(),
        2,
        "only the calls within the rate were sent: {invites:?}"
    );
    gw.shutdown(Duration::ZERO).await;
}

/// Whether the gateway closed `stream` (EOF or reset) within `wait`.
async fn closed_by_peer(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn connect_from(ip: &str, to: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_tcp_connections_over_the_per_address_cap_are_closed() {
    const CAP: usize = 3;
    let gw = start_sip_gateway(9, "127.0.0.1", |c| {
        c.sip.max_tcp_connections_per_address = CAP;
        c.sip.inbound_allow = vec!["127.0.0.1/32".into()];
        c.sip.tcp_idle_timeout_secs = 4;
    })
    .await;
    let sip = gw.sip_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..CAP + 5 {
        held.push(connect_from("127.0.0.2", sip).await);
        // One at a time, so which ones are over the cap is known.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // All at once: the admitted ones must not reach their idle timeout here.
    let checks = held
        .iter_mut()
        .map(|stream| closed_by_peer(stream, Duration::from_millis(500)));
    let closed = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count();
    assert_eq!(closed, 5, "the connections over the cap were closed");
    let refused = metric_or_zero(
        &gw,
        "gangway_sip_tcp_refused_total{limit=\"connections_per_address\"}",
    )
    .await;
    assert_eq!(refused, 5.0);

    // Another address is served: OPTIONS over TCP gets 200.
    let mut other = connect_from("127.0.0.1", sip).await;
    let local = other.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-tcp1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=t1\r\nTo: <sip:{sip}>\r\n\
         Call-ID: tcp-cap-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    other.write_all(options.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), other.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    assert_eq!(
        metric_or_zero(&gw, "gangway_sip_tcp_connections").await,
        (CAP + 1) as f64,
        "the admitted ones are counted"
    );
    // Silent connections are closed after sip.tcp_idle_timeout_secs, and
    // the count comes back to zero (a closed one frees its place).
    let t0 = Instant::now();
    for stream in held.iter_mut().chain(std::iter::once(&mut other)) {
        assert!(
            closed_by_peer(stream, Duration::from_secs(10)).await,
            "an idle connection is closed"
        );
    }
    println!("idle SIP TCP connections closed after {:?}", t0.elapsed());
    let open = wait_metric(
        &gw,
        "gangway_sip_tcp_connections",
        0.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(open, 0.0, "no connection is counted once closed");
    let mut again = connect_from("127.0.0.2", sip).await;
    assert!(
        !closed_by_peer(&mut again, Duration::from_millis(300)).await,
        "the address has its places back"
    );
    drop(held);
    drop(other);
    gw.shutdown(Duration::ZERO).await;
}
