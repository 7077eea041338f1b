//! Prometheus counters for SIP traffic.

use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rsipstack::sip::{Method, SipMessage};
use rsipstack::transaction::endpoint::MessageInspector;
use rsipstack::transport::SipAddr;

/// Two label pairs: `direction` (`sent`/`received`) and `method` or `status`.
pub type SipLabels = [(&'static str, &'static str); 2];

/// `method` label values of `sip_requests` exported before they are seen.
const PRECREATED_METHODS: [&str; 10] = [
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO", "REFER",
];

/// `status` label values of `sip_responses` exported before they are seen.
const PRECREATED_STATUSES: [&str; 9] = [
    "100", "180", "183", "200", "401", "407", "486", "487", "503",
];

/// SIP message counters. Clones share the same counters.
///
/// Every message handed to or received from the network by the stack is
/// counted, retransmissions included. Locally generated timeouts (a 408 the
/// transaction layer makes up) are not counted as received.
#[derive(Clone, Default, Debug)]
pub struct SipMetrics {
    /// Requests by `direction` and `method` (`INVITE`, `BYE`, …).
    pub requests: Family<SipLabels, Counter>,
    /// Responses by `direction` and `status` (`"200"`, `"486"`, …).
    pub responses: Family<SipLabels, Counter>,
    /// Dialog-creating INVITEs refused before anyone was asked, by `reason`
    /// (`forbidden_source`, `no_user`, `banned`: dropped unanswered,
    /// `overloaded`: 503 while the inbound queue is full).
    pub inbound_rejected: Family<[(&'static str, &'static str); 1], Counter>,
    /// 1 while the trunk is up, 0 while the OPTIONS keepalive has it down
    /// (see [`crate::SipService::start_keepalive`]); 1 without a keepalive.
    pub trunk_up: Gauge,
    /// OPTIONS keepalive probes by `result` (`answered`: any final
    /// response from the trunk; `failed`: no response in time, or a
    /// transport error).
    pub trunk_probes: Family<[(&'static str, &'static str); 1], Counter>,
    /// RFC 4028 session refreshes that succeeded, by `direction`: `sent`
    /// (our UPDATE or re-INVITE, answered 2xx) and `received` (the far
    /// end's, which we answered 2xx).
    pub session_refreshes: Family<[(&'static str, &'static str); 1], Counter>,
    /// Calls the session timer ended with BYE, by `cause`:
    /// `refresh_failed` (our refresh got 408/481, no response, or kept
    /// failing until the session expired) and `not_refreshed` (the far end
    /// did not refresh in time).
    pub session_timer_ended: Family<[(&'static str, &'static str); 1], Counter>,
    /// Call events an owner missed because its queue was full (progress,
    /// DTMF; never an end): see `SipEventTx`.
    pub events_dropped: Counter,
    /// SIP over TCP connections open (both directions).
    pub tcp_connections: Gauge,
    /// SIP over TCP connections closed at once because a cap was reached,
    /// by `limit` (`connections`, `connections_per_address`).
    pub tcp_refused: Family<[(&'static str, &'static str); 1], Counter>,
    /// Requests dropped or answered 400 because they lacked a mandatory
    /// header, by `header`.
    pub malformed: Family<[(&'static str, &'static str); 1], Counter>,
}

impl SipMetrics {
    /// Register the counters as `sip_requests` and `sip_responses`
    /// (exposed with the `_total` suffix).
    pub fn register(&self, registry: &mut Registry) {
        // The common methods and statuses from the start, so both families
        // are exported before the first SIP message; others appear as seen.
        for direction in ["sent", "received"] {
            for method in PRECREATED_METHODS {
                let _ = self
                    .requests
                    .get_or_create(&[("direction", direction), ("method", method)]);
            }
            for status in PRECREATED_STATUSES {
                let _ = self
                    .responses
                    .get_or_create(&[("direction", direction), ("status", status)]);
            }
        }
        registry.register(
            "sip_requests",
            "SIP requests, by direction and method",
            self.requests.clone(),
        );
        registry.register(
            "sip_responses",
            "SIP responses, by direction and status code",
            self.responses.clone(),
        );
        for reason in ["forbidden_source", "no_user", "banned", "overloaded"] {
            let _ = self.inbound_rejected.get_or_create(&[("reason", reason)]);
        }
        registry.register(
            "sip_inbound_rejected",
            "Inbound INVITEs refused by the SIP service itself, by reason",
            self.inbound_rejected.clone(),
        );
        // Up until a keepalive says otherwise.
        self.trunk_up.set(1);
        registry.register(
            "sip_trunk_up",
            "1 while the SIP trunk is up, 0 while the OPTIONS keepalive has it down",
            self.trunk_up.clone(),
        );
        for result in ["answered", "failed"] {
            let _ = self.trunk_probes.get_or_create(&[("result", result)]);
        }
        registry.register(
            "sip_trunk_probes",
            "OPTIONS keepalive probes to the trunk, by result (answered, failed)",
            self.trunk_probes.clone(),
        );
        for direction in ["sent", "received"] {
            let _ = self
                .session_refreshes
                .get_or_create(&[("direction", direction)]);
        }
        registry.register(
            "sip_session_refreshes",
            "Successful RFC 4028 session refreshes, by direction (sent, received)",
            self.session_refreshes.clone(),
        );
        for cause in ["refresh_failed", "not_refreshed"] {
            let _ = self.session_timer_ended.get_or_create(&[("cause", cause)]);
        }
        registry.register(
            "sip_session_timer_ended",
            "Calls ended by the SIP session timer, by cause (refresh_failed, not_refreshed)",
            self.session_timer_ended.clone(),
        );
        for header in ["Via", "From", "To", "Call-ID", "CSeq"] {
            let _ = self.malformed.get_or_create(&[("header", header)]);
        }
        registry.register(
            "sip_malformed",
            "Requests without a mandatory header (400, or dropped without a Via), by header",
            self.malformed.clone(),
        );
        registry.register(
            "sip_tcp_connections",
            "SIP over TCP connections open",
            self.tcp_connections.clone(),
        );
        for limit in crate::tcp_caps::LIMITS {
            let _ = self.tcp_refused.get_or_create(&[("limit", limit)]);
        }
        registry.register(
            "sip_tcp_refused",
            "SIP over TCP connections closed at once because a cap was reached, by limit",
            self.tcp_refused.clone(),
        );
        registry.register(
            "sip_events_dropped",
            "Call events (progress, DTMF) dropped because the owner's queue was full",
            self.events_dropped.clone(),
        );
    }

    pub(crate) fn session_refreshed(&self, direction: &'static str) {
        self.session_refreshes
            .get_or_create(&[("direction", direction)])
            .inc();
    }

    pub(crate) fn session_timer_ended(&self, cause: &'static str) {
        self.session_timer_ended
            .get_or_create(&[("cause", cause)])
            .inc();
    }

    pub(crate) fn trunk_probe(&self, result: &'static str) {
        self.trunk_probes.get_or_create(&[("result", result)]).inc();
    }

    pub(crate) fn malformed(&self, header: &'static str) {
        self.malformed.get_or_create(&[("header", header)]).inc();
    }

    pub(crate) fn inbound_rejected(&self, reason: &'static str) {
        self.inbound_rejected
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub(crate) fn count(&self, direction: &'static str, msg: &SipMessage) {
        match msg {
            SipMessage::Request(req) => {
                self.requests
                    .get_or_create(&[
                        ("direction", direction),
                        ("method", method_label(&req.method)),
                    ])
                    .inc();
            }
            SipMessage::Response(resp) => {
                self.responses
                    .get_or_create(&[
                        ("direction", direction),
                        ("status", status_label(resp.status_code.code())),
                    ])
                    .inc();
            }
        }
    }
}

fn method_label(method: &Method) -> &'static str {
    match method {
        Method::Ack => "ACK",
        Method::Bye => "BYE",
        Method::Cancel => "CANCEL",
        Method::Info => "INFO",
        Method::Invite => "INVITE",
        Method::Message => "MESSAGE",
        Method::Notify => "NOTIFY",
        Method::Options => "OPTIONS",
        Method::PRack => "PRACK",
        Method::Publish => "PUBLISH",
        Method::Refer => "REFER",
        Method::Register => "REGISTER",
        Method::Subscribe => "SUBSCRIBE",
        Method::Update => "UPDATE",
    }
}

/// A `'static` label for a status code: `"100"`..=`"699"`, else `"other"`.
fn status_label(code: u16) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (100u16..700).map(|c| c.to_string()).collect());
    match code {
        100..=699 => labels[usize::from(code - 100)].as_str(),
        _ => "other",
    }
}

/// Counts messages as the stack sends and receives them.
pub(crate) struct MetricsInspector(pub(crate) SipMetrics);

impl MessageInspector for MetricsInspector {
    fn before_send(&self, msg: SipMessage, _dest: Option<&SipAddr>) -> SipMessage {
        self.0.count("sent", &msg);
        msg
    }

    fn after_received(&self, msg: SipMessage, from: Option<&SipAddr>) -> SipMessage {
        // `from` is None for responses the transaction layer makes up itself
        // (timeouts, transport failures): those never crossed the wire.
        if from.is_some() {
            self.0.count("received", &msg);
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels() {
        assert_eq!(status_label(100), "100");
        assert_eq!(status_label(487), "487");
        assert_eq!(status_label(699), "699");
        assert_eq!(status_label(700), "other");
        assert_eq!(status_label(42), "other");
    }
}
