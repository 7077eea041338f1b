//! The first look at every message the transports receive, before the
//! transaction layer makes anything of it (rsipstack's
//! `TransportEventInspector`):
//! - a request from outside `sip.inbound_allow` that is over its source's
//!   rate is dropped unanswered ([`crate::bans`]); dropping it here, not in
//!   the router, means no transaction, no retransmitted answer and no
//!   stateless 481 to a CANCEL: a banned flood costs a parse and a lookup;
//! - a request missing a header a transaction needs (Via, From, To,
//!   Call-ID, CSeq) gets one stateless `400` naming it (RFC 3261 §8.2.2.1
//!   asks for none retransmitted), or is dropped when it has no Via to
//!   answer along or is an ACK;
//! - a new TCP connection over a cap ([`crate::tcp_caps`]) is closed at once.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use rsipstack::sip::{
    Header, Headers, Method, Request, Response, SipMessage, StatusCode, Version, Warning,
};
use rsipstack::transaction::endpoint::TransportEventInspector;
use rsipstack::transport::{SipAddr, SipConnection, TransportEvent};
use tracing::{debug, warn};

use crate::bans::Bans;
use crate::inbound::source_allowed;
use crate::shared::Inbound;
use crate::tcp_caps::TcpCaps;
use crate::SipMetrics;

/// See the module documentation.
pub(crate) struct Screen {
    /// Set once inbound calls are accepted; until then nobody is screened
    /// by address.
    pub(crate) inbound: Arc<OnceLock<Inbound>>,
    /// Sources outside the allow-list that flood are dropped for a while.
    pub(crate) bans: Bans,
    pub(crate) metrics: SipMetrics,
    pub(crate) tcp: TcpCaps,
    /// When a refused TCP connection was last logged: a connection flood
    /// gets a warning every few seconds, not one per connection.
    pub(crate) last_tcp_warning: std::sync::Mutex<Option<Instant>>,
}

/// The first mandatory header a request lacks (RFC 3261 §8.1.1; a missing
/// Max-Forwards is tolerated, as most stacks do).
pub(crate) fn missing_header(request: &Request) -> Option<&'static str> {
    let has = |name: &str| {
        request
            .headers
            .iter()
            .any(|h| h.name().eq_ignore_ascii_case(name))
    };
    ["Via", "From", "To", "Call-ID", "CSeq"]
        .into_iter()
        .find(|name| !has(name))
}

/// A 400 for `request`, carrying what it had of the headers a response
/// copies, and why in a `Warning`.
fn bad_request(request: &Request, missing: &str) -> Response {
    let mut headers = Headers(
        request
            .headers
            .iter()
            .filter(|h| {
                matches!(
                    h,
                    Header::Via(_)
                        | Header::From(_)
                        | Header::To(_)
                        | Header::CallId(_)
                        | Header::CSeq(_)
                )
            })
            .cloned()
            .collect(),
    );
    headers.push(Header::Warning(Warning::new(format!(
        "399 gangway \"Missing {missing} header\""
    ))));
    headers.push(Header::ContentLength("0".into()));
    Response {
        status_code: StatusCode::BadRequest,
        wire_reason: None,
        version: Version::V2,
        headers,
        body: Vec::new(),
    }
}

impl Screen {
    fn refused_tcp(&self, connection: &SipConnection, limit: &'static str) {
        self.metrics
            .tcp_refused
            .get_or_create(&[("limit", limit)])
            .inc();
        let remote = connection.get_remote_addr().map(|a| a.to_string());
        let now = Instant::now();
        let mut last = self
            .last_tcp_warning
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(10)) {
            *last = Some(now);
            warn!(
                ?remote,
                limit,
                "SIP TCP connection over the cap closed (further ones for 10 s only counted)"
            );
        } else {
            debug!(?remote, limit, "SIP TCP connection over the cap closed");
        }
    }

    /// False: the request goes no further.
    async fn admit(&self, request: &Request, connection: &SipConnection, from: &SipAddr) -> bool {
        let source = from.get_socketaddr().ok();
        if let (Some(inbound), Some(source)) = (self.inbound.get(), source) {
            let outside = !source_allowed(&inbound.allowed_sources, source.ip());
            if outside && !self.bans.admit(source.ip(), Instant::now()) {
                // Dropped unanswered: an answer is what a flood wants.
                debug!(method = %request.method, src = %source, "request from a banned source dropped");
                self.metrics.inbound_rejected("banned");
                return false;
            }
        }
        if let Some(missing) = missing_header(request) {
            self.metrics.malformed(missing);
            debug!(method = %request.method, src = ?source, missing, "request without a mandatory header");
            let has_via = missing != "Via";
            if has_via && request.method != Method::Ack {
                let answer = SipMessage::Response(bad_request(request, missing));
                if let Err(e) = connection.send(answer, Some(from)).await {
                    debug!(error = %e, "400 not sent");
                }
            }
            return false;
        }
        true
    }
}

#[async_trait]
impl TransportEventInspector for Screen {
    async fn handle(&self, event: TransportEvent) -> Option<TransportEvent> {
        if let TransportEvent::Incoming(SipMessage::Request(request), connection, from) = &event {
            if !self.admit(request, connection, from).await {
                return None;
            }
        }
        match &event {
            TransportEvent::New(connection) if connection.is_reliable() => {
                match self.tcp.admit(connection) {
                    Ok(open) => {
                        self.metrics.tcp_connections.set(open as i64);
                    }
                    Err(limit) => {
                        self.refused_tcp(connection, limit);
                        let _ = connection.close().await;
                        return None;
                    }
                }
            }
            TransportEvent::Closed(connection) if connection.is_reliable() => {
                let open = self.tcp.closed(connection);
                self.metrics.tcp_connections.set(open as i64);
            }
            _ => {}
        }
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        match SipMessage::try_from(text.replace('\n', "\r\n").as_str()).unwrap() {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => panic!("a request"),
        }
    }

    #[test]
    fn a_request_without_call_id_gets_a_400_that_says_so() {
        let r = request(
            "OPTIONS sip:gw@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\n\
             From: <sip:a@127.0.0.1>;tag=1\nTo: <sip:gw@127.0.0.1>\nCSeq: 1 OPTIONS\n\
             Content-Length: 0\n\n",
        );
        assert_eq!(missing_header(&r), Some("Call-ID"));
        let answer = bad_request(&r, "Call-ID").to_string();
        assert!(answer.starts_with("SIP/2.0 400"), "{answer}");
        assert!(
            answer.contains("branch=z9hG4bK-1"),
            "the Via is copied: {answer}"
        );
        assert!(answer.contains("CSeq: 1 OPTIONS"), "{answer}");
        assert!(answer.contains("Missing Call-ID header"), "{answer}");
    }

    #[test]
    fn a_complete_request_lacks_nothing_even_without_max_forwards() {
        let r = request(
            "OPTIONS sip:gw@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-2\n\
             From: <sip:a@127.0.0.1>;tag=1\nTo: <sip:gw@127.0.0.1>\nCall-ID: x\n\
             CSeq: 1 OPTIONS\nContent-Length: 0\n\n",
        );
        assert_eq!(missing_header(&r), None);
    }
}
