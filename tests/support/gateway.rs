//! An in-process gateway on free loopback ports, and metric scraping over HTTP.

use std::sync::Once;

use gangway::{Config, Gateway};

/// Starts a gateway with default config, HTTP and WebRTC on 127.0.0.1 port 0
/// (the OS picks free ports, so parallel tests never collide).
pub async fn start_gateway() -> Gateway {
    start_gateway_with(|_| {}).await
}

pub async fn start_gateway_with(f: impl FnOnce(&mut Config)) -> Gateway {
    init_tracing();
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.webrtc.listen = "127.0.0.1:0".parse().unwrap();
    f(&mut config);
    Gateway::start(config).await.expect("gateway starts")
}

/// Logs go to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// Fetches `/metrics` over HTTP, as Prometheus would. The connection is
/// closed after each scrape so no server connection task outlives it (the
/// leak checks count tasks).
pub async fn scrape(gw: &Gateway) -> String {
    let url = format!("http://{}/metrics", gw.http_addr());
    tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .header("Connection", "close")
            .call()
            .expect("GET /metrics")
            .body_mut()
            .read_to_string()
            .expect("metrics body")
    })
    .await
    .expect("scrape task")
}

/// The value of one series, e.g. `gangway_calls_active` or
/// `gangway_calls_ended_total{reason="hangup"}`. Panics if absent.
pub async fn scrape_metric(gw: &Gateway, series: &str) -> f64 {
    let text = scrape(gw).await;
    metric_value(&text, series)
        .unwrap_or_else(|| panic!("series {series} not in /metrics:\n{text}"))
}

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Polls a metric until it equals `want` or `timeout` passes; returns the last value.
pub async fn wait_metric(
    gw: &Gateway,
    series: &str,
    want: f64,
    timeout: std::time::Duration,
) -> f64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let v = scrape_metric(gw, series).await;
        if v == want || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A gateway with the SIP leg on: SIP on a free loopback port, RTP from a
/// free range, and the trunk at `127.0.0.1:trunk_port` with `domain`.
/// The OPTIONS keepalive is off (the sipp scenarios that play the trunk
/// would take a probe for an unexpected call); `f` adjusts anything else
/// (credentials, allow-list, `sip.keepalive_interval_secs`).
pub async fn start_sip_gateway(
    trunk_port: u16,
    domain: &str,
    f: impl FnOnce(&mut Config),
) -> Gateway {
    let rtp = crate::sip_peers::free_udp_range(40);
    let domain = domain.to_string();
    start_gateway_with(move |c| {
        c.sip.enabled = true;
        c.sip.listen = "127.0.0.1:0".parse().unwrap();
        c.sip.rtp_port_min = rtp;
        c.sip.rtp_port_max = rtp + 39;
        c.sip.trunk.host = "127.0.0.1".into();
        c.sip.trunk.port = trunk_port;
        c.sip.trunk.domain = domain;
        c.sip.keepalive_interval_secs = 0;
        f(c);
    })
    .await
}

/// `GET /readyz`: its status and body. The connection is closed after it.
pub async fn readyz(gw: &Gateway) -> (u16, String) {
    let url = format!("http://{}/readyz", gw.http_addr());
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .get(&url)
            .header("Connection", "close")
            .call()
            .expect("GET /readyz");
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().expect("readyz body");
        (status, body)
    })
    .await
    .expect("readyz task")
}

/// A metric's value, 0 when the series is not exported (yet).
pub async fn metric_or_zero(gw: &Gateway, series: &str) -> f64 {
    metric_value(&scrape(gw).await, series).unwrap_or(0.0)
}

/// Waits until no call, WebRTC peer or RTP port is left, and fails if any is.
pub async fn assert_no_leftovers(gw: &Gateway) {
    let settle = std::time::Duration::from_secs(5);
    for series in [
        "gangway_calls_active",
        "gangway_webrtc_peers_active",
        "gangway_rtp_ports_active",
    ] {
        assert_eq!(wait_metric(gw, series, 0.0, settle).await, 0.0, "{series}");
    }
}

/// An HS256 sign-in token for `sub` (what `auth.token_secret` checks),
/// valid for ten minutes.
pub fn token(sub: &str, secret: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
