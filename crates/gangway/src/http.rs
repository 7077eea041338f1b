//! HTTP routes. Handlers stay thin: assets, health, metrics, and the
//! WebSocket upgrade that hands the socket to a session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gangway_signal::assets;
use gangway_sip::ipnet::IpNet;
use tracing::debug;

use crate::config::{HttpSection, MAX_WS_FRAME_BYTES};
use crate::connections::{Refused, Slot};
use crate::{session, sip_ws, Phase, Shared};

/// What a WebSocket reads at a time. tungstenite's default (128 KiB) is
/// allocated per socket up front: 148 KiB an idle socket in all, measured;
/// messages here are a few KiB, and larger ones are read in more chunks.
const WS_READ_BUFFER_BYTES: usize = 8 * 1024;
/// Frames waiting to be written when writes fail: bounded, not unlimited.
const WS_MAX_WRITE_BUFFER_BYTES: usize = 2 * MAX_WS_FRAME_BYTES;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(assets::INDEX_HTML) }))
        .route(
            "/client.js",
            get(|| async { javascript(assets::CLIENT_JS) }),
        )
        .route(
            "/client.d.ts",
            get(|| async { typescript(assets::CLIENT_DTS) }),
        )
        .route("/ws", get(websocket))
        .route("/sip", get(sip_websocket))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

fn javascript(body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
        .into_response()
}

fn typescript(body: &'static str) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/typescript; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

/// Ready while accepting new calls; 503 while draining, and while the
/// OPTIONS keepalive has the SIP trunk down, so load balancers move on.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let trunk_down = shared.sip.as_ref().is_some_and(|s| !s.service.trunk_up());
    match *shared.phase.borrow() {
        Phase::Running if trunk_down => (
            StatusCode::SERVICE_UNAVAILABLE,
            "sip trunk down: no response to OPTIONS keepalive\n",
        )
            .into_response(),
        Phase::Running => (StatusCode::OK, "ready\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response(),
    }
}

async fn websocket(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &shared.config.http) {
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let client = client_addr(&headers, peer, &shared.trusted_proxies);
    let slot = match connection_slot(&shared, client) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    upgrade
        .max_message_size(MAX_WS_FRAME_BYTES)
        .max_frame_size(MAX_WS_FRAME_BYTES)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            session::run(socket, shared, client.ip()).await;
            drop(slot);
        })
}

/// The client's address: the socket's peer, or, when that is a trusted
/// proxy, the nearest address in `X-Forwarded-For` that is not one (the
/// rightmost untrusted hop: those before it could be forged).
fn client_addr(headers: &HeaderMap, peer: SocketAddr, trusted: &[IpNet]) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    match hops.iter().rev().find(|ip| !is_trusted(**ip)) {
        Some(ip) => SocketAddr::new(*ip, peer.port()),
        None => peer,
    }
}

/// A connection's place under `http.max_connections(_per_address)`, or the
/// refusal, before the upgrade.
fn connection_slot(shared: &Shared, peer: SocketAddr) -> Result<Slot, (StatusCode, &'static str)> {
    shared.connections.try_open(peer.ip()).map_err(|refused| {
        shared.metrics.limit_refused(refused.label());
        debug!(%peer, limit = refused.label(), "WebSocket refused: too many connections");
        let status = match refused {
            Refused::PerAddress => StatusCode::TOO_MANY_REQUESTS,
            Refused::Total => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, "too many connections\n")
    })
}

/// SIP over WebSocket (RFC 7118): only an upgrade that asks for the `sip`
/// subprotocol, with the same Origin policy and frame limit as `/ws`.
async fn sip_websocket(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &shared.config.http) {
        shared.metrics.sip_ws_rejected("origin");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if shared.sip.is_none() {
        return (
            StatusCode::NOT_FOUND,
            "SIP over WebSocket needs the SIP leg (sip.enabled)\n",
        )
            .into_response();
    }
    let asks_for_sip = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("sip"));
    if !asks_for_sip {
        shared.metrics.sip_ws_rejected("subprotocol");
        return (
            StatusCode::BAD_REQUEST,
            "SIP over WebSocket needs the subprotocol `sip` (RFC 7118)\n",
        )
            .into_response();
    }
    // Our Via and Contact towards the browser name the host it dialled.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| shared.config.http.listen.to_string());
    let client = client_addr(&headers, peer, &shared.trusted_proxies);
    let slot = match connection_slot(&shared, client) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    upgrade
        .protocols(["sip"])
        .max_message_size(MAX_WS_FRAME_BYTES)
        .max_frame_size(MAX_WS_FRAME_BYTES)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            sip_ws::run(socket, shared, client, host).await;
            drop(slot);
        })
}

/// Browsers always send `Origin` on WebSocket requests; refusing foreign
/// origins stops other sites from placing calls with a visitor's session
/// (cross-site WebSocket hijacking). Non-browser clients send none. An
/// origin that merely equals `Host` counts only when the host is ours (an
/// IP literal, `localhost`, or `http.allowed_hosts`): with DNS rebinding
/// an attacker's name resolves to the gateway and both headers carry it.
fn origin_allowed(headers: &HeaderMap, http: &HttpSection) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    if http
        .allowed_origins
        .iter()
        .any(|a| a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => host_is_ours(h, &http.allowed_hosts),
        _ => false,
    }
}

/// Whether `host` (`name[:port]`, `[v6]:port`) is one a rebinding attack
/// cannot forge: an IP literal, `localhost`, or a configured name.
fn host_is_ours(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host
            }
        }),
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    fn http(origins: &[&str], hosts: &[&str]) -> HttpSection {
        HttpSection {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            ..HttpSection::default()
        }
    }

    #[test]
    fn same_origin_and_listed_origins_only() {
        let none = http(&[], &[]);
        assert!(origin_allowed(&headers(None, "gw:8080"), &none));
        for host in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "10.0.0.5"] {
            for scheme in ["http", "https"] {
                let same = format!("{scheme}://{host}");
                assert!(origin_allowed(&headers(Some(&same), host), &none), "{same}");
            }
        }
        assert!(!origin_allowed(
            &headers(Some("https://evil.example"), "gw:8080"),
            &none
        ));
        let allowed = http(&["https://app.example.com"], &[]);
        assert!(origin_allowed(
            &headers(Some("https://app.example.com"), "gw:8080"),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(Some("https://app.example.com.evil"), "gw:8080"),
            &allowed
        ));
    }

    #[test]
    fn a_rebound_name_is_not_same_origin_unless_it_is_ours() {
        // DNS rebinding: the attacker's name now resolves to the gateway.
        let rebound = headers(Some("http://evil.example"), "evil.example");
        assert!(!origin_allowed(&rebound, &http(&[], &[])));
        let ours = headers(Some("https://phone.example.com"), "phone.example.com");
        assert!(!origin_allowed(&ours, &http(&[], &[])));
        assert!(origin_allowed(&ours, &http(&[], &["phone.example.com"])));
        let with_port = headers(
            Some("https://phone.example.com:8443"),
            "phone.example.com:8443",
        );
        assert!(origin_allowed(
            &with_port,
            &http(&[], &["PHONE.example.com"])
        ));
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_behind_a_trusted_proxy() {
        let proxy: SocketAddr = "10.0.0.2:5555".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.66, 198.51.100.7, 10.0.0.9".parse().unwrap(),
        );
        // The leftmost entry is the client's own claim; the nearest hop
        // the trusted proxies did not add is the one they saw.
        assert_eq!(
            client_addr(&h, proxy, &trusted),
            "198.51.100.7:5555".parse().unwrap()
        );
        // A peer that is not a trusted proxy is the client, whatever it says.
        let direct: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        assert_eq!(client_addr(&h, direct, &trusted), direct);
        assert_eq!(client_addr(&HeaderMap::new(), proxy, &trusted), proxy);
    }
}
