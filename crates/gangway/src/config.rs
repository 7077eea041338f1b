//! Configuration: `config/gangway.toml` (or `--config`), then `GANGWAY_*`
//! environment overrides, then validation with errors that name the key.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use gangway_rtc::AudioCodec;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub log: LogConfig,
    pub webrtc: WebRtcConfig,
    pub calls: CallsConfig,
    pub sip: SipSection,
    pub media: MediaSection,
    pub shutdown: ShutdownConfig,
    pub auth: AuthSection,
}

/// Sign-in of browsers as SIP users (API `register`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// HS256 key for `register` with a `token` (a JWT whose `sub` names the
    /// SIP user and whose `exp` is required). Unset: tokens are refused.
    pub token_secret: Option<String>,
    /// SIP digest passwords for users who sign in with a token, by user.
    pub users: std::collections::BTreeMap<String, String>,
    /// Failed sign-ins from one address within `failure_window_secs` after
    /// which that address gets `rate_limited` until the window passes.
    pub max_failures: u32,
    pub failure_window_secs: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            token_secret: None,
            users: Default::default(),
            max_failures: 5,
            failure_window_secs: 300,
        }
    }
}

/// Where users are registered; every field defaults to the trunk's.
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

/// How the gateway sends DTMF to the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DtmfMode {
    /// RFC 4733 telephone-events in the RTP stream (the PBX must accept them).
    Rfc4733,
    /// SIP INFO with `application/dtmf-relay` (`Signal=5`), one per digit.
    Info,
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
            opus_complexity: 5,
            opus_bitrate: 24_000,
            timeout_secs: 30,
            shards: 0,
        }
    }
}

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
    pub trunk: TrunkSection,
    pub registrar: RegistrarSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkSection {
    /// Where INVITEs go: the PBX, trunk or outbound proxy.
    pub host: String,
    pub port: u16,
    /// `udp` or `tcp`.
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

impl Default for SipSection {
    fn default() -> Self {
        SipSection {
            enabled: false,
            listen: "127.0.0.1:5060".parse().expect("valid literal"),
            public_ip: None,
            user_agent: format!("Gangway/{}", env!("CARGO_PKG_VERSION")),
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
            trunk: TrunkSection::default(),
            registrar: RegistrarSection::default(),
        }
    }
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the demo page, `/ws`, `/metrics` and health endpoints.
    pub listen: SocketAddr,
    /// Largest accepted API text frame; larger ones get `message_too_large`.
    pub max_message_bytes: usize,
    /// Origins allowed to open `/ws` besides the gateway's own (e.g. `https://app.example.com`).
    /// Requests without an `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,gangway_rtc=debug`. `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcConfig {
    /// The one UDP address all browsers send media to. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address put in the ICE candidate instead of the listen address (behind NAT,
    /// or when listening on 0.0.0.0).
    pub public_ip: Option<IpAddr>,
    /// Audio codecs accepted from browsers: `opus`, `pcmu`, `pcma`.
    pub codecs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// Destination name of the built-in echo line; empty disables it.
    pub echo_destination: String,
    /// How long a call may take to get media connected before it is ended.
    pub setup_timeout_secs: u64,
    /// Concurrent calls one WebSocket may hold.
    pub max_per_session: usize,
    /// How long a session with calls waits for `resume_session` after its
    /// socket is lost before the calls end; 0 disables resumption.
    pub resume_grace_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT, how long existing calls may continue before they are ended.
    pub drain_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().expect("valid literal"),
            max_message_bytes: 64 * 1024,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            listen: "127.0.0.1:40000".parse().expect("valid literal"),
            public_ip: None,
            codecs: vec!["opus".into(), "pcmu".into(), "pcma".into()],
        }
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            echo_destination: "echo".into(),
            setup_timeout_secs: 30,
            max_per_session: 8,
            resume_grace_secs: 30,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_secs: 10,
        }
    }
}

/// The hard WebSocket frame limit; beyond it the socket is closed with 1009.
pub const MAX_WS_FRAME_BYTES: usize = 1024 * 1024;

/// A configuration problem, naming the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "configuration: {}", self.problem)
        } else {
            write!(f, "configuration key `{}`: {}", self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

fn problem(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// Loads defaults, then the file (if given or if the default path exists),
    /// then `GANGWAY_SECTION__KEY` environment variables, and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, Env::prefixed("GANGWAY_").split("__"))
    }

    fn load_with_env(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(p) if !p.exists() => {
                return Err(problem("", format!("file {} does not exist", p.display())))
            }
            Some(p) => figment = figment.merge(Toml::file_exact(p)),
            None => {
                let default = Path::new("config/gangway.toml");
                if default.exists() {
                    figment = figment.merge(Toml::file_exact(default));
                }
            }
        }
        let config: Config = figment.merge(env).extract().map_err(|e| {
            let key = e.path.join(".");
            let mut e = e;
            // Keep figment's text but drop its path prefix: we print the key ourselves.
            e.path.clear();
            let text = e.to_string();
            problem(&key, text)
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        if !(1024..=MAX_WS_FRAME_BYTES).contains(&h.max_message_bytes) {
            return Err(problem(
                "http.max_message_bytes",
                format!("must be between 1024 and {MAX_WS_FRAME_BYTES}"),
            ));
        }
        for origin in &h.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(problem(
                    "http.allowed_origins",
                    format!("`{origin}` must look like https://host[:port]"),
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| problem("log.level", format!("not a valid filter: {e}")))?;
        let w = &self.webrtc;
        if w.listen.ip().is_unspecified() && w.public_ip.is_none() {
            return Err(problem(
                "webrtc.public_ip",
                "required when webrtc.listen binds all interfaces: browsers need a concrete address to send media to",
            ));
        }
        if let Some(ip) = w.public_ip {
            if ip.is_unspecified() {
                return Err(problem(
                    "webrtc.public_ip",
                    "must be a concrete address, not 0.0.0.0 or ::",
                ));
            }
        }
        self.audio_codecs()?;
        let c = &self.calls;
        if !(1..=300).contains(&c.setup_timeout_secs) {
            return Err(problem(
                "calls.setup_timeout_secs",
                "must be between 1 and 300",
            ));
        }
        if !(1..=1000).contains(&c.max_per_session) {
            return Err(problem(
                "calls.max_per_session",
                "must be between 1 and 1000",
            ));
        }
        if c.resume_grace_secs > 600 {
            return Err(problem(
                "calls.resume_grace_secs",
                "must be between 0 and 600",
            ));
        }
        if c.echo_destination.trim() != c.echo_destination {
            return Err(problem(
                "calls.echo_destination",
                "must not have leading or trailing spaces",
            ));
        }
        self.validate_sip()?;
        if self.media.opus_complexity > 10 {
            return Err(problem("media.opus_complexity", "must be between 0 and 10"));
        }
        if self.media.shards > 64 {
            return Err(problem(
                "media.shards",
                "must be at most 64 (0: one per core)",
            ));
        }
        if self.webrtc.listen.port() != 0
            && usize::from(self.webrtc.listen.port()) + self.media_shards() > 65536
        {
            return Err(problem(
                "webrtc.listen",
                "no room above this port for one port per media shard",
            ));
        }
        if self.media.timeout_secs > 3600 {
            return Err(problem(
                "media.timeout_secs",
                "must be at most 3600 (0 disables)",
            ));
        }
        if !(6_000..=64_000).contains(&self.media.opus_bitrate) {
            return Err(problem(
                "media.opus_bitrate",
                "must be between 6000 and 64000",
            ));
        }
        if self.shutdown.drain_timeout_secs > 3600 {
            return Err(problem(
                "shutdown.drain_timeout_secs",
                "must be at most 3600",
            ));
        }
        Ok(())
    }

    fn validate_sip(&self) -> Result<(), ConfigError> {
        let s = &self.sip;
        if !s.enabled {
            return Ok(());
        }
        if s.listen.ip().is_unspecified() && s.public_ip.is_none() {
            return Err(problem(
                "sip.public_ip",
                "required when sip.listen binds all interfaces: Via, Contact and SDP need a concrete address",
            ));
        }
        if s.rtp_port_min < 1024 || s.rtp_port_min > s.rtp_port_max {
            return Err(problem(
                "sip.rtp_port_min",
                "must be at least 1024 and not above sip.rtp_port_max",
            ));
        }
        if !(1..=600).contains(&s.answer_timeout_secs) {
            return Err(problem(
                "sip.answer_timeout_secs",
                "must be between 1 and 600",
            ));
        }
        let t = &s.trunk;
        if t.host.trim().is_empty() {
            return Err(problem(
                "sip.trunk.host",
                "required when sip.enabled is true",
            ));
        }
        if t.port == 0 {
            return Err(problem("sip.trunk.port", "must not be 0"));
        }
        if !matches!(t.transport.to_ascii_lowercase().as_str(), "udp" | "tcp") {
            return Err(problem("sip.trunk.transport", "must be `udp` or `tcp`"));
        }
        if t.username.is_some() != t.password.is_some() {
            return Err(problem(
                "sip.trunk.password",
                "username and password must be set together",
            ));
        }
        self.sip_allow_patterns()?;
        self.inbound_allow()?;
        if !(1..=600).contains(&s.ring_timeout_secs) {
            return Err(problem(
                "sip.ring_timeout_secs",
                "must be between 1 and 600",
            ));
        }
        if s.keepalive_interval_secs > 3600 {
            return Err(problem(
                "sip.keepalive_interval_secs",
                "must be at most 3600 (0 disables the keepalive)",
            ));
        }
        if !(1..=100).contains(&s.keepalive_failures) {
            return Err(problem(
                "sip.keepalive_failures",
                "must be between 1 and 100",
            ));
        }
        if s.session_expires_secs != 0 && !(90..=86_400).contains(&s.session_expires_secs) {
            return Err(problem(
                "sip.session_expires_secs",
                "must be between 90 and 86400 (0 does not ask for session timers)",
            ));
        }
        let r = &s.registrar;
        if !(r.transport.is_empty()
            || matches!(r.transport.to_ascii_lowercase().as_str(), "udp" | "tcp"))
        {
            return Err(problem(
                "sip.registrar.transport",
                "must be `udp`, `tcp` or empty (the trunk's)",
            ));
        }
        if !(30..=86_400).contains(&r.expires_secs) {
            return Err(problem(
                "sip.registrar.expires_secs",
                "must be between 30 and 86400",
            ));
        }
        if r.unregister_grace_secs > 3600 {
            return Err(problem(
                "sip.registrar.unregister_grace_secs",
                "must be at most 3600",
            ));
        }
        let a = &self.auth;
        if a.token_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(problem(
                "auth.token_secret",
                "must be at least 32 bytes (HS256 keys shorter than the hash are weak)",
            ));
        }
        if a.max_failures == 0 || a.failure_window_secs == 0 {
            return Err(problem(
                "auth.max_failures",
                "max_failures and failure_window_secs must be positive",
            ));
        }
        Ok(())
    }

    /// `sip.inbound_allow`, parsed; empty when not configured.
    pub fn inbound_allow(&self) -> Result<Vec<gangway_sip::ipnet::IpNet>, ConfigError> {
        self.sip
            .inbound_allow
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<gangway_sip::ipnet::IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(gangway_sip::ipnet::IpNet::from))
                    .map_err(|_| {
                        problem(
                            "sip.inbound_allow",
                            format!("`{entry}` is neither an IP address nor a CIDR network"),
                        )
                    })
            })
            .collect()
    }

    /// The trunk allow-list, compiled.
    pub fn sip_allow_patterns(&self) -> Result<Vec<regex::Regex>, ConfigError> {
        self.sip
            .trunk
            .allow
            .iter()
            .map(|p| {
                regex::Regex::new(p).map_err(|e| {
                    problem(
                        "sip.trunk.allow",
                        format!("`{p}` is not a valid pattern: {e}"),
                    )
                })
            })
            .collect()
    }

    /// How many media shards to run.
    pub fn media_shards(&self) -> usize {
        match self.media.shards {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(8),
            n => n,
        }
    }

    /// The domain bare destinations are sent to.
    pub fn sip_domain(&self) -> String {
        let t = &self.sip.trunk;
        if t.domain.is_empty() {
            t.host.clone()
        } else {
            t.domain.clone()
        }
    }

    /// The timers of every call.
    pub fn call_timers(&self) -> gangway_core::CallTimers {
        gangway_core::CallTimers {
            media_setup: self.setup_timeout(),
            answer: self.answer_timeout(),
            max_duration: self.max_call_duration(),
        }
    }

    /// The OPTIONS keepalive interval; `None` when it is off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        Some(self.sip.keepalive_interval_secs)
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    pub fn ring_timeout(&self) -> Duration {
        Duration::from_secs(self.sip.ring_timeout_secs)
    }

    pub fn answer_timeout(&self) -> Duration {
        Duration::from_secs(self.sip.answer_timeout_secs)
    }

    pub fn max_call_duration(&self) -> Option<Duration> {
        Some(self.sip.max_call_duration_secs)
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// The configured audio codecs, parsed.
    pub fn audio_codecs(&self) -> Result<Vec<AudioCodec>, ConfigError> {
        let key = "webrtc.codecs";
        if self.webrtc.codecs.is_empty() {
            return Err(problem(key, "at least one codec is required"));
        }
        let mut out = Vec::new();
        for name in &self.webrtc.codecs {
            let codec = match name.to_ascii_lowercase().as_str() {
                "opus" => AudioCodec::Opus,
                "pcmu" => AudioCodec::Pcmu,
                "pcma" => AudioCodec::Pcma,
                _ => {
                    return Err(problem(
                        key,
                        format!("unknown codec `{name}`; expected opus, pcmu or pcma"),
                    ))
                }
            };
            if out.contains(&codec) {
                return Err(problem(key, format!("codec `{name}` is listed twice")));
            }
            out.push(codec);
        }
        Ok(out)
    }

    pub fn echo_destination(&self) -> Option<String> {
        Some(self.calls.echo_destination.clone()).filter(|s| !s.is_empty())
    }

    pub fn setup_timeout(&self) -> Duration {
        Duration::from_secs(self.calls.setup_timeout_secs)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown.drain_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn no_env() -> Env {
        Env::prefixed("GANGWAY_TEST_UNUSED_").split("__")
    }

    fn load_str(toml: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        Config::load_with_env(Some(f.path()), no_env())
    }

    #[test]
    fn shipped_config_is_valid_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/gangway.toml");
        let c = Config::load_with_env(Some(&path), no_env()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_str("[webrtc]\ncodecs = [\"g729\"]\n").unwrap_err();
        assert_eq!(e.key, "webrtc.codecs");
        assert!(e.problem.contains("g729"), "{e}");

        let e = load_str("[http]\nlisten = \"nonsense\"\n").unwrap_err();
        assert_eq!(e.key, "http.listen", "{e}");

        let e = load_str("[calls]\nsetup_timeout_secs = 0\n").unwrap_err();
        assert_eq!(e.key, "calls.setup_timeout_secs");

        let e = load_str("[calls]\nresume_grace_secs = 601\n").unwrap_err();
        assert_eq!(e.key, "calls.resume_grace_secs");
        assert_eq!(
            load_str("[calls]\nresume_grace_secs = 0\n")
                .unwrap()
                .calls
                .resume_grace_secs,
            0,
            "0 turns resumption off"
        );

        let e = load_str("[webrtc]\nlisten = \"0.0.0.0:40000\"\n").unwrap_err();
        assert_eq!(e.key, "webrtc.public_ip");

        let e = load_str("[sip]\nenabled = true\n").unwrap_err();
        assert_eq!(e.key, "sip.trunk.host", "{e}");

        let e = load_str("[sip]\nenabled = true\n[sip.trunk]\nhost = \"pbx\"\nallow = [\"(\"]\n")
            .unwrap_err();
        assert_eq!(e.key, "sip.trunk.allow", "{e}");

        let e =
            load_str("[sip]\nenabled = true\n[sip.trunk]\nhost = \"pbx\"\ntransport = \"sctp\"\n")
                .unwrap_err();
        assert_eq!(e.key, "sip.trunk.transport", "{e}");

        let e = load_str(
            "[sip]\nenabled = true\nkeepalive_failures = 0\n[sip.trunk]\nhost = \"pbx\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "sip.keepalive_failures", "{e}");

        let e = load_str(
            "[sip]\nenabled = true\nkeepalive_interval_secs = 7200\n[sip.trunk]\nhost = \"pbx\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "sip.keepalive_interval_secs", "{e}");

        for bad in [1, 89, 86_401] {
            let e = load_str(&format!(
                "[sip]\nenabled = true\nsession_expires_secs = {bad}\n[sip.trunk]\nhost = \"pbx\"\n"
            ))
            .unwrap_err();
            assert_eq!(e.key, "sip.session_expires_secs", "{e}");
        }
        for good in [0, 90, 1800] {
            let c = load_str(&format!(
                "[sip]\nenabled = true\nsession_expires_secs = {good}\n[sip.trunk]\nhost = \"pbx\"\n"
            ))
            .unwrap();
            assert_eq!(c.sip.session_expires_secs, good);
        }

        let e = load_str("[media]\ncodec_policy = \"always\"\n").unwrap_err();
        assert_eq!(e.key, "media.codec_policy", "{e}");

        let e = load_str("[media]\nopus_complexity = 11\n").unwrap_err();
        assert_eq!(e.key, "media.opus_complexity", "{e}");

        let e = load_str("[calls]\nunknown_key = 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown_key"), "{e}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = Config::load_with_env(Some(Path::new("/nonexistent/gangway.toml")), no_env())
            .unwrap_err();
        assert!(e.problem.contains("does not exist"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn environment_overrides_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"[calls]\necho_destination = \"*43\"\n")
            .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("GANGWAY_CALLS__ECHO_DESTINATION", "test-echo");
            jail.set_env("GANGWAY_WEBRTC__PUBLIC_IP", "192.0.2.7");
            jail.set_env("GANGWAY_WEBRTC__LISTEN", "0.0.0.0:0");
            let c = Config::load(Some(f.path())).map_err(|e| e.to_string())?;
            assert_eq!(c.calls.echo_destination, "test-echo");
            assert_eq!(c.webrtc.public_ip, Some("192.0.2.7".parse().unwrap()));
            Ok(())
        });
    }
}
