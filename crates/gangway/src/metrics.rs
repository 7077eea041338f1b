//! Prometheus metrics (OpenMetrics text at `/metrics`).

use gangway_core::EndReason;
use gangway_media::ShardMetrics;
use gangway_signal::ErrorCode;
use gangway_sip::SipMetrics;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

/// `event` label values of `gangway_mid_call_events_total`.
pub const MID_CALL_EVENTS: [&str; 9] = [
    "held_local",
    "held_remote",
    "resumed_local",
    "resumed_remote",
    "hold_refused",
    "transfer_out_completed",
    "transfer_out_failed",
    "transfer_in_completed",
    "transfer_in_failed",
];

/// `outcome` label values of `gangway_inbound_calls_total`.
const INBOUND_OUTCOMES: [&str; 9] = [
    "answered",
    "rejected",
    "cancelled",
    "no_answer",
    "not_found",
    "unavailable",
    "incompatible",
    "failed",
    "shutting_down",
];

/// `outcome` label values of `gangway_session_resumes_total`.
pub const RESUME_OUTCOMES: [&str; 3] = ["resumed", "refused", "expired"];

/// `code` label values of `gangway_registrations_failed_total`.
const REGISTRATION_FAILURE_CODES: [&str; 8] =
    ["401", "403", "404", "407", "408", "503", "other", "none"];

/// `why` label values of `gangway_sip_ws_rejected_total`: the front end's
/// and the endpoint's own (`origin`, `subprotocol`, `not_utf8`, `too_large`).
const SIP_WS_REJECTS: [&str; 20] = [
    "unparseable",
    "missing_header",
    "version",
    "malformed",
    "method",
    "bad_register",
    "bad_invite",
    "no_offer",
    "no_dialog",
    "offerless_reinvite",
    "info",
    "refer",
    "answer_without_offer",
    "not_utf8",
    "too_large",
    "origin",
    "subprotocol",
    "session_expired",
    "too_many",
    "far_hold_refused",
];

/// `limit` label values of `gangway_limit_refusals_total`.
const LIMITS: [&str; 6] = [
    "candidates",
    "calls_per_address",
    "new_calls_per_address",
    "connections_per_address",
    "connections",
    "messages",
];

/// `class` label values of `gangway_sip_ws_registers_total`.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

pub struct Metrics {
    pub(crate) registry: Registry,
    pub calls_active: Gauge,
    pub calls_started: Family<Labels, Counter>,
    pub calls_ended: Family<Labels, Counter>,
    pub ws_active: Gauge,
    pub ws_total: Counter,
    pub api_errors: Family<Labels, Counter>,
    /// From the API `call` to ICE+DTLS connected on the WebRTC leg.
    pub webrtc_connect_seconds: Histogram,
    /// From the API `call` to the far end's answer (SIP 2xx).
    pub call_answer_seconds: Histogram,
    /// From the API `call` to the INVITE handed to the SIP stack.
    pub sip_invite_seconds: Histogram,
    pub shard: ShardMetrics,
    pub sip: SipMetrics,
    /// SIP users this instance holds a registration for.
    pub registrations_active: Gauge,
    /// Failed REGISTERs and refused sign-ins, by SIP status (`none` for tokens).
    pub registrations_failed: Family<Labels, Counter>,
    /// Inbound INVITEs by outcome.
    pub inbound_calls: Family<Labels, Counter>,
    /// Sessions whose socket was lost, holding their calls for a resume.
    pub sessions_parked: Gauge,
    /// `resume_session` outcomes, and parked sessions that expired.
    pub session_resumes: Family<Labels, Counter>,
    /// Holds, resumes and transfers, by `MID_CALL_EVENTS`.
    pub mid_call: Family<Labels, Counter>,
    /// SIP over WebSocket (`/sip`) connections open, and accepted.
    pub sip_ws_active: Gauge,
    pub sip_ws_total: Counter,
    /// SIP over WebSocket messages refused, by why.
    pub sip_ws_rejected: Family<Labels, Counter>,
    /// Relayed REGISTERs, by the registrar's status class (`2xx`...).
    pub sip_ws_registers: Family<Labels, Counter>,
    /// SIP over WebSocket bindings whose flow is open.
    pub sip_ws_bindings: Gauge,
    /// Calls placed or taken, by front end (`json`, `sip_ws`).
    pub front_end_calls: Family<Labels, Counter>,
    /// Requests refused because a client went past a limit, by limit.
    pub limit_refusals: Family<Labels, Counter>,
    /// Messages that found a queue between tasks full, by queue (see
    /// `queues`): dropped, refused or left waiting in a task.
    pub queue_full: Family<Labels, Counter>,
}

impl Metrics {
    /// Where families owned elsewhere register: under the `gangway_` prefix.
    pub(crate) fn gangway_registry(&mut self) -> &mut Registry {
        self.registry.sub_registry_with_prefix("gangway")
    }

    pub fn new() -> Self {
        let mut m = Metrics {
            calls_active: Gauge::default(),
            calls_started: Family::default(),
            calls_ended: Family::default(),
            ws_active: Gauge::default(),
            ws_total: Counter::default(),
            api_errors: Family::default(),
            webrtc_connect_seconds: Histogram::new([
                0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
            ]),
            call_answer_seconds: Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
            sip_invite_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            shard: ShardMetrics::default(),
            sip: SipMetrics::default(),
            registrations_active: Gauge::default(),
            registrations_failed: Family::default(),
            inbound_calls: Family::default(),
            sessions_parked: Gauge::default(),
            session_resumes: Family::default(),
            mid_call: Family::default(),
            sip_ws_active: Gauge::default(),
            sip_ws_total: Counter::default(),
            sip_ws_rejected: Family::default(),
            sip_ws_registers: Family::default(),
            sip_ws_bindings: Gauge::default(),
            front_end_calls: Family::default(),
            limit_refusals: Family::default(),
            queue_full: Family::default(),
            registry: Registry::default(),
        };
        // The process's own families keep the names client libraries give
        // them (`process_*`); the gateway's get the `gangway_` prefix.
        #[cfg(target_os = "linux")]
        m.registry
            .register_collector(Box::new(crate::process_metrics::ProcessCollector));
        let r = m.registry.sub_registry_with_prefix("gangway");
        let build_info = Family::<[(&'static str, &'static str); 2], Gauge>::default();
        build_info
            .get_or_create(&[
                ("version", env!("CARGO_PKG_VERSION")),
                // Set by build.rs: git, BUILD_GIT_REVISION, or `unknown`.
                ("revision", env!("BUILD_GIT_REVISION")),
            ])
            .set(1);
        r.register(
            "build_info",
            "Always 1; the labels say which build runs",
            build_info,
        );
        r.register("calls_active", "Calls in progress", m.calls_active.clone());
        r.register(
            "calls_started",
            "Calls whose media leg was set up, by route",
            m.calls_started.clone(),
        );
        r.register(
            "calls_ended",
            "Calls ended, by reason",
            m.calls_ended.clone(),
        );
        r.register(
            "ws_connections_active",
            "Open API WebSocket connections",
            m.ws_active.clone(),
        );
        r.register(
            "ws_connections",
            "API WebSocket connections accepted",
            m.ws_total.clone(),
        );
        r.register(
            "sip_ws_connections_active",
            "Open SIP over WebSocket (/sip) connections",
            m.sip_ws_active.clone(),
        );
        r.register(
            "sip_ws_connections",
            "SIP over WebSocket (/sip) connections accepted",
            m.sip_ws_total.clone(),
        );
        r.register(
            "sip_ws_rejected",
            "SIP over WebSocket messages refused (answered 4xx/5xx or closed), by why",
            m.sip_ws_rejected.clone(),
        );
        r.register(
            "sip_ws_registers",
            "REGISTERs relayed for SIP over WebSocket clients, by the registrar's status class",
            m.sip_ws_registers.clone(),
        );
        r.register(
            "sip_ws_bindings_active",
            "SIP over WebSocket registrations whose flow (WebSocket) is open",
            m.sip_ws_bindings.clone(),
        );
        for front_end in ["json", "sip_ws"] {
            let _ = m.front_end_calls.get_or_create(&[("front_end", front_end)]);
        }
        r.register(
            "front_end_calls",
            "Calls placed or taken, by front end (json: /ws, sip_ws: /sip)",
            m.front_end_calls.clone(),
        );
        for limit in LIMITS {
            let _ = m.limit_refusals.get_or_create(&[("limit", limit)]);
        }
        for queue in crate::queues::NAMES {
            let _ = m.queue_full.get_or_create(&[("queue", queue)]);
        }
        r.register(
            "queue_full",
            "Messages that found a queue between the gateway's tasks full, by queue",
            m.queue_full.clone(),
        );
        r.register(
            "limit_refusals",
            "Requests refused because a client went past a limit, by limit",
            m.limit_refusals.clone(),
        );
        for why in SIP_WS_REJECTS {
            let _ = m.sip_ws_rejected.get_or_create(&[("why", why)]);
        }
        for class in STATUS_CLASSES {
            let _ = m.sip_ws_registers.get_or_create(&[("class", class)]);
        }
        r.register(
            "api_errors",
            "API error messages sent, by code",
            m.api_errors.clone(),
        );
        r.register(
            "sessions_parked",
            "Sessions whose socket was lost and whose calls wait for resume_session",
            m.sessions_parked.clone(),
        );
        for outcome in RESUME_OUTCOMES {
            let _ = m.session_resumes.get_or_create(&[("outcome", outcome)]);
        }
        r.register(
            "session_resumes",
            "Session resumption by outcome (resumed; refused: unknown or used token; expired: grace period over)",
            m.session_resumes.clone(),
        );
        r.register(
            "webrtc_connect_seconds",
            "Time from the API call request to ICE and DTLS connected",
            m.webrtc_connect_seconds.clone(),
        );
        r.register(
            "call_answer_seconds",
            "Time from the API call request to the far end's answer",
            m.call_answer_seconds.clone(),
        );
        r.register(
            "sip_invite_seconds",
            "Time from the API call request to the INVITE being sent",
            m.sip_invite_seconds.clone(),
        );
        m.sip.register(r);
        r.register(
            "registrations_active",
            "SIP users registered by this instance",
            m.registrations_active.clone(),
        );
        r.register(
            "registrations_failed",
            "Failed registrations and refused sign-ins, by SIP status",
            m.registrations_failed.clone(),
        );
        for outcome in INBOUND_OUTCOMES {
            let _ = m.inbound_calls.get_or_create(&[("outcome", outcome)]);
        }
        for code in REGISTRATION_FAILURE_CODES {
            let _ = m.registrations_failed.get_or_create(&[("code", code)]);
        }
        r.register(
            "inbound_calls",
            "Inbound calls by outcome (answered, rejected, cancelled, no_answer, not_found, unavailable, incompatible, failed, shutting_down)",
            m.inbound_calls.clone(),
        );
        for event in MID_CALL_EVENTS {
            let _ = m.mid_call.get_or_create(&[("event", event)]);
        }
        r.register(
            "mid_call_events",
            "Holds and resumes by side, refused holds, and transfers by direction (out: the browser's REFER; in: the PBX's) and outcome",
            m.mid_call.clone(),
        );
        let s = &m.shard;
        r.register(
            "webrtc_peers_active",
            "WebRTC peers held by media shards",
            s.peers.clone(),
        );
        r.register(
            "webrtc_packets_received",
            "UDP datagrams received on the WebRTC port",
            s.packets_in.clone(),
        );
        r.register(
            "webrtc_packets_sent",
            "UDP datagrams sent from the WebRTC port",
            s.packets_out.clone(),
        );
        r.register(
            "webrtc_bytes_received",
            "Bytes received on the WebRTC port",
            s.bytes_in.clone(),
        );
        r.register(
            "webrtc_bytes_sent",
            "Bytes sent from the WebRTC port",
            s.bytes_out.clone(),
        );
        r.register(
            "webrtc_unmatched_datagrams",
            "Datagrams on the WebRTC port that belonged to no peer",
            s.unmatched.clone(),
        );
        r.register(
            "webrtc_send_drops",
            "Datagrams the WebRTC socket could not send",
            s.send_drops.clone(),
        );
        r.register(
            "rtp_ports_active",
            "RTP ports held by SIP legs",
            s.rtp_ports.clone(),
        );
        r.register(
            "rtp_packets_received",
            "RTP datagrams received from SIP legs",
            s.rtp_packets_in.clone(),
        );
        r.register(
            "rtp_packets_sent",
            "RTP datagrams sent to SIP legs",
            s.rtp_packets_out.clone(),
        );
        r.register(
            "rtp_bytes_received",
            "RTP bytes received from SIP legs",
            s.rtp_bytes_in.clone(),
        );
        r.register(
            "rtp_bytes_sent",
            "RTP bytes sent to SIP legs",
            s.rtp_bytes_out.clone(),
        );
        r.register(
            "rtp_dropped",
            "RTP datagrams not passed on (not RTP, payload type not bridged, unexpected source)",
            s.rtp_dropped.clone(),
        );
        r.register(
            "sip_leg_loss_ratio",
            "Per SIP call at its end: share of the far end's RTP packets lost",
            s.sip_leg_loss_ratio.clone(),
        );
        r.register(
            "sip_leg_jitter_seconds",
            "Per SIP call at its end: interarrival jitter of the far end's RTP",
            s.sip_leg_jitter_seconds.clone(),
        );
        r.register(
            "webrtc_leg_loss_ratio",
            "Per SIP call at its end: share of packets lost on the WebRTC leg (from RTCP), by direction",
            s.webrtc_leg_loss_ratio.clone(),
        );
        r.register(
            "webrtc_leg_jitter_seconds",
            "Per SIP call at its end: interarrival jitter of the browser's RTP",
            s.webrtc_leg_jitter_seconds.clone(),
        );
        r.register(
            "webrtc_leg_rtt_seconds",
            "Per SIP call at its end: round-trip time to the browser (RTCP)",
            s.webrtc_leg_rtt_seconds.clone(),
        );
        r.register(
            "concealed_frames",
            "20 ms frames lost and filled in by the transcoder (FEC, PLC or fading repeat), by the leg that lost them",
            s.concealed_frames.clone(),
        );
        r.register(
            "sip_leg_rtt_seconds",
            "Per SIP call at its end: round-trip time to the far end from its RTCP reports (RFC 3550), when measured",
            s.sip_leg_rtt_seconds.clone(),
        );
        r.register(
            "browser_opus_packets",
            "Opus packets from browsers on transcoded calls, by coded audio bandwidth (narrow: 4 kHz, as asked for; wide: anything more)",
            s.browser_opus_packets.clone(),
        );
        r.register(
            "call_mos",
            "Per SIP call at its end: estimated MOS (E-model) over both legs' loss, delay and jitter",
            s.call_mos.clone(),
        );
        r.register(
            "media_timeouts",
            "Answered SIP calls ended because a leg sent no media for media.timeout_secs",
            s.media_timeouts.clone(),
        );
        r.register(
            "rtcp_packets_received",
            "RTCP packets received from SIP legs",
            s.rtcp_packets_in.clone(),
        );
        r.register(
            "rtcp_packets_sent",
            "RTCP reports sent to SIP legs",
            s.rtcp_packets_out.clone(),
        );
        r.register(
            "rtp_port_exhausted",
            "Bridged calls refused because no RTP port was free",
            s.rtp_port_exhausted.clone(),
        );
        r.register(
            "media_commands_dropped",
            "Shard commands refused or dropped because the shard's queue was full",
            s.commands_dropped.clone(),
        );
        r.register(
            "media_events_dropped",
            "Leg events (DTMF, candidate complaints) dropped because the session's queue was full",
            s.events_dropped.clone(),
        );
        // Pre-create every label so dashboards and alerts see zeros, not gaps.
        for reason in EndReason::ALL {
            let _ = m.calls_ended.get_or_create(&[("reason", reason.as_str())]);
        }
        for code in ErrorCode::ALL {
            let _ = m.api_errors.get_or_create(&[("code", code.as_str())]);
        }
        let _ = m.calls_started.get_or_create(&[("route", "echo")]);
        let _ = m.calls_started.get_or_create(&[("route", "sip")]);
        m
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn call_ended(&self, reason: EndReason) {
        self.calls_ended
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
        self.calls_active.dec();
    }

    pub fn registration_failed(&self, status: Option<u16>) {
        let label = match status {
            Some(401) => "401",
            Some(403) => "403",
            Some(404) => "404",
            Some(407) => "407",
            Some(408) => "408",
            Some(503) => "503",
            Some(_) => "other",
            None => "none",
        };
        self.registrations_failed
            .get_or_create(&[("code", label)])
            .inc();
    }

    /// Counts one of `MID_CALL_EVENTS`.
    pub fn mid_call(&self, event: &'static str) {
        self.mid_call.get_or_create(&[("event", event)]).inc();
    }

    pub fn inbound_call(&self, outcome: &'static str) {
        self.inbound_calls
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// Counts one `outcome` of `RESUME_OUTCOMES`.
    pub fn session_resume(&self, outcome: &'static str) {
        self.session_resumes
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    pub fn queue_full(&self, queue: &'static str) {
        self.queue_full.get_or_create(&[("queue", queue)]).inc();
    }

    pub fn limit_refused(&self, limit: &'static str) {
        self.limit_refusals.get_or_create(&[("limit", limit)]).inc();
    }

    pub fn front_end_call(&self, front_end: &'static str) {
        self.front_end_calls
            .get_or_create(&[("front_end", front_end)])
            .inc();
    }

    pub fn sip_ws_rejected(&self, why: &'static str) {
        self.sip_ws_rejected.get_or_create(&[("why", why)]).inc();
    }

    pub fn sip_ws_register(&self, status: u16) {
        let class = STATUS_CLASSES[usize::from(status / 100).clamp(1, 6) - 1];
        self.sip_ws_registers
            .get_or_create(&[("class", class)])
            .inc();
    }

    pub fn api_error(&self, code: ErrorCode) {
        self.api_errors
            .get_or_create(&[("code", code.as_str())])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
