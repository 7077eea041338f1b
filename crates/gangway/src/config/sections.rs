//! The configuration as written: one serde struct per TOML section, key for
//! key, with the built-in defaults. Values here are raw (strings for
//! transports, codecs, patterns and networks); [`super::Settings`] is the
//! parsed form.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The whole file, one field per `[section]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpSection,
    pub log: LogSection,
    pub webrtc: WebRtcSection,
    pub calls: CallsSection,
    pub sip: SipSection,
    pub media: MediaSection,
    pub shutdown: ShutdownSection,
    pub auth: AuthSection,
    pub cdr: super::CdrSection,
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address of the demo page, `/ws`, `/metrics` and health endpoints.
    pub listen: SocketAddr,
    /// Largest accepted API text frame; larger ones get `message_too_large`.
    pub max_message_bytes: usize,
    /// Origins allowed to open `/ws` besides the gateway's own (e.g. `https://app.example.com`).
    /// Requests without an `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Host names the gateway answers to for `/ws` and `/sip` when a browser's
    /// `Origin` names the same host (IP literals and `localhost` always do):
    /// closes DNS rebinding, where an attacker's name points at the gateway.
    pub allowed_hosts: Vec<String>,
    /// Open WebSockets (`/ws` and `/sip`) one source address may hold.
    pub max_connections_per_address: usize,
    /// Open WebSockets in all.
    pub max_connections: usize,
    /// A WebSocket with no call and no sign-in that sends nothing this long
    /// is closed (4002); 0 keeps idle sockets.
    pub idle_timeout_secs: u64,
    /// A WebSocket that does not take a frame the gateway sends within
    /// this long (a client that stopped reading) is treated as lost.
    pub write_timeout_secs: u64,
    /// An HTTP request whose headers have not all arrived this long after
    /// its first byte ends its connection (slow clients hold no socket).
    pub header_read_timeout_secs: u64,
    /// Messages one WebSocket may send per second (twice that in a burst);
    /// 0 turns the limit off.
    pub max_messages_per_second: u32,
    /// Reverse proxies (addresses or CIDR networks) whose `X-Forwarded-For`
    /// names the client for the per-address limits.
    pub trusted_proxies: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "127.0.0.1:8080".parse().expect("valid literal"),
            max_message_bytes: 64 * 1024,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_connections_per_address: 500,
            max_connections: 10_000,
            idle_timeout_secs: 120,
            write_timeout_secs: 10,
            header_read_timeout_secs: 10,
            max_messages_per_second: 100,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,gangway_rtc=debug`. `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// `[webrtc]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcSection {
    /// The one UDP address all browsers send media to. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address put in the ICE candidate instead of the listen address (behind NAT,
    /// or when listening on 0.0.0.0).
    pub public_ip: Option<IpAddr>,
    /// Audio codecs accepted from browsers: `opus`, `pcmu`, `pcma` (any case).
    pub codecs: Vec<String>,
}

impl Default for WebRtcSection {
    fn default() -> Self {
        WebRtcSection {
            listen: "127.0.0.1:40000".parse().expect("valid literal"),
            public_ip: None,
            codecs: vec!["opus".into(), "pcmu".into(), "pcma".into()],
        }
    }
}

/// `[calls]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsSection {
    /// Destination name of the built-in echo line; empty disables it.
    pub echo_destination: String,
    /// How long a call may take to get media connected before it is ended.
    pub setup_timeout_secs: u64,
    /// Concurrent calls one WebSocket may hold.
    pub max_per_session: usize,
    /// Concurrent calls one source address may hold, across its sockets.
    pub max_per_address: usize,
    /// New calls one source address may start per second (twice that in a
    /// burst), across its sockets; 0 turns the limit off.
    pub max_new_per_second_per_address: u32,
    /// Remote ICE candidates one call may add (each costs the media shard
    /// work for every check it runs).
    pub max_candidates: usize,
    /// How long a session with calls waits for `resume_session` after its
    /// socket is lost before the calls end; 0 disables resumption.
    pub resume_grace_secs: u64,
}

impl Default for CallsSection {
    fn default() -> Self {
        CallsSection {
            echo_destination: "echo".into(),
            setup_timeout_secs: 30,
            max_per_session: 8,
            max_per_address: 250,
            max_new_per_second_per_address: 10,
            max_candidates: 32,
            resume_grace_secs: 30,
        }
    }
}

/// How the gateway sends DTMF to the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DtmfMode {
    /// RFC 4733 telephone-events in the RTP stream (the PBX must accept them).
    Rfc4733,
    /// SIP INFO with `application/dtmf-relay` (`Signal=5`), one per digit.
    Info,
}

/// `[sip]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipSection {
    /// Off by default: the gateway then serves only the echo line.
    pub enabled: bool,
    /// SIP over UDP and TCP.
    pub listen: SocketAddr,
    /// Address written in Via, Contact and SDP instead of the listen address (NAT).
    pub public_ip: Option<IpAddr>,
    pub user_agent: String,
    /// RTP ports for the SIP leg (one per call), inclusive.
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Seconds the far end has to answer before the call ends with `no_answer`.
    pub answer_timeout_secs: u64,
    /// Answered calls are ended after this many seconds; 0 for no limit.
    pub max_call_duration_secs: u64,
    /// How digits from the API `dtmf` request reach the PBX.
    pub dtmf_mode: DtmfMode,
    /// Seconds an incoming call rings the browsers before it is refused (480).
    pub ring_timeout_secs: u64,
    /// Addresses (IPs or CIDR networks) allowed to send INVITEs; others get
    /// 403. Empty: the trunk's and the registrar's addresses.
    pub inbound_allow: Vec<String>,
    /// Seconds between OPTIONS probes to the trunk (each waits this long for
    /// its response); 0 turns the keepalive off.
    pub keepalive_interval_secs: u64,
    /// Consecutive failed probes after which the trunk is down: `/readyz`
    /// answers 503 and new calls end at once with `failed`/503. One answered
    /// probe brings it back up.
    pub keepalive_failures: u32,
    /// 100rel/PRACK (RFC 3262) on outbound calls: `Supported: 100rel` in the
    /// INVITE and PRACK for reliable provisional responses.
    pub prack: bool,
    /// RFC 4028 session timers on the SIP leg: the `Session-Expires`
    /// outbound INVITEs ask for, and the longest interval accepted from
    /// callers (at least 90). 0: do not ask for timers, but still honour
    /// the far end's.
    pub session_expires_secs: u32,
    /// SIP over TCP connections open at once, in all (both directions).
    pub max_tcp_connections: usize,
    /// SIP over TCP connections one address may hold; more are closed at once.
    pub max_tcp_connections_per_address: usize,
    /// A SIP over TCP connection that receives nothing this long is closed;
    /// 0 keeps idle connections.
    pub tcp_idle_timeout_secs: u64,
    /// INVITEs the gateway may send towards the trunk per second (twice
    /// that in a burst), for every front end together; more calls fail
    /// with 503 before any INVITE. 0 turns the limit off.
    pub max_calls_per_second: u32,
    pub trunk: TrunkSection,
    pub registrar: RegistrarSection,
}

impl Default for SipSection {
    fn default() -> Self {
        SipSection {
            enabled: false,
            listen: "127.0.0.1:5060".parse().expect("valid literal"),
            public_ip: None,
            // No version: it tells scanners which flaws to try.
            user_agent: "Gangway".into(),
            rtp_port_min: 30000,
            rtp_port_max: 31999,
            answer_timeout_secs: 60,
            max_call_duration_secs: 4 * 3600,
            dtmf_mode: DtmfMode::Rfc4733,
            ring_timeout_secs: 60,
            inbound_allow: Vec::new(),
            keepalive_interval_secs: 30,
            keepalive_failures: 2,
            prack: true,
            session_expires_secs: 1800,
            max_tcp_connections: 1024,
            max_tcp_connections_per_address: 32,
            tcp_idle_timeout_secs: 120,
            max_calls_per_second: 50,
            trunk: TrunkSection::default(),
            registrar: RegistrarSection::default(),
        }
    }
}

/// `[sip.trunk]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkSection {
    /// Where INVITEs go: the PBX, trunk or outbound proxy.
    pub host: String,
    pub port: u16,
    /// `udp` or `tcp` (any case).
    pub transport: String,
    /// Bare destinations become `sip:<to>@<domain>`; also the From domain. Defaults to `host`.
    pub domain: String,
    /// Digest credentials, used when the trunk challenges (401/407).
    pub username: Option<String>,
    pub password: Option<String>,
    /// From user part of outbound calls (defaults to `username`, else `gangway`).
    pub from_user: Option<String>,
    /// Regular expressions the full destination URI must match. Empty: only
    /// URIs at `domain` may be called (the gateway is never an open relay).
    pub allow: Vec<String>,
}

impl Default for TrunkSection {
    fn default() -> Self {
        TrunkSection {
            host: String::new(),
            port: 5060,
            transport: "udp".into(),
            domain: String::new(),
            username: None,
            password: None,
            from_user: None,
            allow: Vec::new(),
        }
    }
}

/// `[sip.registrar]`: where users are registered; every field defaults to the trunk's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarSection {
    pub host: String,
    /// 0: the trunk's port.
    pub port: u16,
    /// `udp` or `tcp`; empty: the trunk's transport.
    pub transport: String,
    /// Domain of the users' addresses-of-record; empty: the trunk's domain.
    pub domain: String,
    /// Registration lifetime asked for; refreshed at 75 % of what is granted.
    pub expires_secs: u32,
    /// After a user's last session closes, keep the registration this long
    /// (a page reload must not make the user unreachable).
    pub unregister_grace_secs: u64,
}

impl Default for RegistrarSection {
    fn default() -> Self {
        RegistrarSection {
            host: String::new(),
            port: 0,
            transport: String::new(),
            domain: String::new(),
            expires_secs: 300,
            unregister_grace_secs: 10,
        }
    }
}

/// Which codec the browser leg of a SIP call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodecPolicySetting {
    /// G.711 passthrough when the browser offers it, Opus (transcoded) otherwise.
    PassthroughFirst,
    /// Opus towards browsers that offer it, transcoded to G.711 for SIP.
    OpusToBrowser,
    /// Never transcode.
    PassthroughOnly,
}

/// `[media]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSection {
    pub codec_policy: CodecPolicySetting,
    /// Opus encoder complexity towards browsers, 0–10.
    pub opus_complexity: u8,
    /// Opus bitrate towards browsers, bits per second.
    pub opus_bitrate: u32,
    /// An answered SIP call ends (`media_timeout`) when either leg sends no
    /// media for this many seconds; 0 disables.
    pub timeout_secs: u64,
    /// Media shards (threads, each with its own WebRTC port); 0: one per core, up to 8.
    pub shards: usize,
}

impl Default for MediaSection {
    fn default() -> Self {
        MediaSection {
            codec_policy: CodecPolicySetting::PassthroughFirst,
            opus_complexity: 1,
            opus_bitrate: 24_000,
            timeout_secs: 30,
            shards: 0,
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// On SIGTERM/SIGINT, how long existing calls may continue before they are ended.
    pub drain_timeout_secs: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            drain_timeout_secs: 10,
        }
    }
}

/// `[auth]`: sign-in of browsers as SIP users (API `register`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// HS256 key for `register` with a `token` (a JWT whose `sub` names the
    /// SIP user and whose `exp` is required). Unset: tokens are refused.
    pub token_secret: Option<String>,
    /// SIP digest passwords for users who sign in with a token, by user.
    pub users: BTreeMap<String, String>,
    /// Failed sign-ins from one address within `failure_window_secs` after
    /// which that address gets `rate_limited` until the window passes.
    pub max_failures: u32,
    /// The same for one user, from any addresses (a password guessed from
    /// many places), with the same window.
    pub max_failures_per_user: u32,
    pub failure_window_secs: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            token_secret: None,
            users: Default::default(),
            max_failures: 5,
            max_failures_per_user: 20,
            failure_window_secs: 300,
        }
    }
}
