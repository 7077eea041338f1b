//! The configuration parsed: [`Settings`] holds what the gateway is wired
//! with, in the types it is wired with (durations, transports, codecs,
//! compiled patterns, networks). [`Config::settings`] makes it once, section
//! by section; every configuration error is found there and names its key,
//! and nothing downstream parses a configuration string again.
//!
//! Plain numbers and flags that sessions read per call
//! (`calls.max_per_session`, `http.max_message_bytes`, `sip.dtmf_mode`,
//! `auth.*`, the timers below) are still read from [`Config`]: they need no
//! parsing, and a `Config` only reaches a running gateway after its
//! settings were made.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use gangway_rtc::AudioCodec;
use tracing_subscriber::filter::EnvFilter;

use super::sections::{
    CallsSection, CodecPolicySetting, Config, HttpSection, LogSection, MediaSection,
    ShutdownSection, WebRtcSection,
};
use super::sip::{sip, SipSettings};
use super::{problem, ConfigError, MAX_WS_FRAME_BYTES};

/// The configuration, parsed. Made by [`Config::settings`] (or
/// `Settings::try_from(&config)`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `webrtc.codecs`: accepted from browsers, in the configured order.
    pub codecs: Vec<AudioCodec>,
    /// `calls.echo_destination`; `None` when empty (no echo line).
    pub echo_destination: Option<String>,
    /// `[media]`, and the WebRTC address of each media shard.
    pub media: MediaSettings,
    /// `[sip]`; `None` when `sip.enabled` is false.
    pub sip: Option<SipSettings>,
}

/// `[media]`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaSettings {
    pub codec_policy: CodecPolicySetting,
    pub opus_complexity: u8,
    pub opus_bitrate: u32,
    /// `media.timeout_secs`; `None` when 0 (no media timeout).
    pub timeout: Option<Duration>,
    /// One address per media shard (`media.shards`, 0: one per core up to
    /// 8): `webrtc.listen`, then its port + 1, … (port 0: each picks one).
    pub shard_binds: Vec<SocketAddr>,
}

impl TryFrom<&Config> for Settings {
    type Error = ConfigError;

    /// Sections in a fixed order, so that of several mistakes the same one
    /// is always reported first.
    fn try_from(c: &Config) -> Result<Settings, ConfigError> {
        check_http(&c.http)?;
        check_log(&c.log)?;
        let codecs = webrtc(&c.webrtc)?;
        let echo_destination = calls(&c.calls)?;
        // `[auth]` is checked with the SIP leg: sign-in needs it.
        let sip = if c.sip.enabled {
            Some(sip(&c.sip, &c.auth)?)
        } else {
            None
        };
        let media = media(&c.media, c.webrtc.listen)?;
        check_shutdown(&c.shutdown)?;
        super::cdr::check_cdr(&c.cdr)?;
        Ok(Settings {
            codecs,
            echo_destination,
            media,
            sip,
        })
    }
}

/// Durations sessions read per call and at shutdown, from values
/// [`Config::settings`] has checked.
impl Config {
    /// The configuration parsed, or the first key that is wrong.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        Settings::try_from(self)
    }

    /// The timers of every call.
    pub fn call_timers(&self) -> gangway_core::CallTimers {
        gangway_core::CallTimers {
            media_setup: self.setup_timeout(),
            answer: self.answer_timeout(),
            max_duration: self.max_call_duration(),
        }
    }

    pub fn setup_timeout(&self) -> Duration {
        Duration::from_secs(self.calls.setup_timeout_secs)
    }

    pub fn ring_timeout(&self) -> Duration {
        Duration::from_secs(self.sip.ring_timeout_secs)
    }

    pub fn answer_timeout(&self) -> Duration {
        Duration::from_secs(self.sip.answer_timeout_secs)
    }

    pub fn max_call_duration(&self) -> Option<Duration> {
        nonzero_secs(self.sip.max_call_duration_secs)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown.drain_timeout_secs)
    }
}

/// `value`, if `range` holds it; otherwise `key` and the `rule` it breaks.
pub(super) fn within<T: PartialOrd>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
    rule: &str,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(problem(key, rule))
    }
}

/// Seconds where 0 means "off".
pub(super) fn nonzero_secs(secs: u64) -> Option<Duration> {
    Some(secs).filter(|s| *s > 0).map(Duration::from_secs)
}

fn check_http(h: &HttpSection) -> Result<(), ConfigError> {
    super::sip::networks("http.trusted_proxies", &h.trusted_proxies)?;
    within(
        "http.max_message_bytes",
        h.max_message_bytes,
        1024..=MAX_WS_FRAME_BYTES,
        &format!("must be between 1024 and {MAX_WS_FRAME_BYTES}"),
    )?;
    within(
        "http.max_connections_per_address",
        h.max_connections_per_address,
        1..=1_000_000,
        "must be between 1 and 1000000",
    )?;
    within(
        "http.max_messages_per_second",
        h.max_messages_per_second,
        0..=100_000,
        "must be between 0 and 100000",
    )?;
    within(
        "http.idle_timeout_secs",
        h.idle_timeout_secs,
        0..=86_400,
        "must be between 0 and 86400",
    )?;
    within(
        "http.header_read_timeout_secs",
        h.header_read_timeout_secs,
        1..=600,
        "must be between 1 and 600",
    )?;
    within(
        "http.write_timeout_secs",
        h.write_timeout_secs,
        1..=600,
        "must be between 1 and 600",
    )?;
    within(
        "http.max_connections",
        h.max_connections,
        1..=1_000_000,
        "must be between 1 and 1000000",
    )?;
    if let Some(origin) = h
        .allowed_origins
        .iter()
        .find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
    {
        return Err(problem(
            "http.allowed_origins",
            format!("`{origin}` must look like https://host[:port]"),
        ));
    }
    match h.allowed_hosts.iter().find(|n| {
        n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
    }) {
        Some(name) => Err(problem(
            "http.allowed_hosts",
            format!("`{name}` must be a host name, without scheme or port"),
        )),
        None => Ok(()),
    }
}

/// A `log.level` (or `RUST_LOG`) filter. Both guards were found by the
/// config fuzz target. Field values in its directives are matched
/// literally, not as regular expressions: the automaton of a pattern can
/// take minutes and gigabytes to build, and no log filter of the gateway
/// needs one. Only ASCII is taken: tracing-subscriber 0.3.23 panics on a
/// directive with leading space and a multi-byte character (it slices the
/// untrimmed text at the trimmed text's offsets), and targets, span and
/// field names are ASCII anyway.
pub fn log_filter(directives: &str) -> Result<EnvFilter, String> {
    if !directives.is_ascii() {
        return Err("only ASCII characters are allowed".into());
    }
    EnvFilter::builder()
        .with_regex(false)
        .parse(directives)
        .map_err(|e| e.to_string())
}

fn check_log(l: &LogSection) -> Result<(), ConfigError> {
    log_filter(&l.level)
        .map(drop)
        .map_err(|e| problem("log.level", format!("not a valid filter: {e}")))
}

/// `[webrtc]`: its addresses checked, its codecs parsed.
fn webrtc(w: &WebRtcSection) -> Result<Vec<AudioCodec>, ConfigError> {
    if w.listen.ip().is_unspecified() && w.public_ip.is_none() {
        return Err(problem(
            "webrtc.public_ip",
            "required when webrtc.listen binds all interfaces: browsers need a concrete address to send media to",
        ));
    }
    if w.public_ip.is_some_and(|ip| ip.is_unspecified()) {
        return Err(problem(
            "webrtc.public_ip",
            "must be a concrete address, not 0.0.0.0 or ::",
        ));
    }
    codecs(&w.codecs)
}

/// `webrtc.codecs`: names in any case, at least one, none twice.
fn codecs(names: &[String]) -> Result<Vec<AudioCodec>, ConfigError> {
    let key = "webrtc.codecs";
    if names.is_empty() {
        return Err(problem(key, "at least one codec is required"));
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
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

/// `[calls]`: its limits checked; the echo line's name, if it has one.
fn calls(c: &CallsSection) -> Result<Option<String>, ConfigError> {
    within(
        "calls.setup_timeout_secs",
        c.setup_timeout_secs,
        1..=300,
        "must be between 1 and 300",
    )?;
    within(
        "calls.max_per_session",
        c.max_per_session,
        1..=1000,
        "must be between 1 and 1000",
    )?;
    within(
        "calls.max_per_address",
        c.max_per_address,
        1..=100_000,
        "must be between 1 and 100000",
    )?;
    within(
        "calls.max_new_per_second_per_address",
        c.max_new_per_second_per_address,
        0..=100_000,
        "must be between 0 and 100000",
    )?;
    within(
        "calls.max_candidates",
        c.max_candidates,
        1..=1000,
        "must be between 1 and 1000",
    )?;
    within(
        "calls.resume_grace_secs",
        c.resume_grace_secs,
        0..=600,
        "must be between 0 and 600",
    )?;
    if c.echo_destination.trim() != c.echo_destination {
        return Err(problem(
            "calls.echo_destination",
            "must not have leading or trailing spaces",
        ));
    }
    Ok(Some(c.echo_destination.clone()).filter(|s| !s.is_empty()))
}

/// `[media]`, with one WebRTC address per shard counted up from `listen`.
fn media(m: &MediaSection, listen: SocketAddr) -> Result<MediaSettings, ConfigError> {
    let opus_complexity = within(
        "media.opus_complexity",
        m.opus_complexity,
        0..=10,
        "must be between 0 and 10",
    )?;
    let shards = match within(
        "media.shards",
        m.shards,
        0..=64,
        "must be at most 64 (0: one per core)",
    )? {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8),
        n => n,
    };
    if listen.port() != 0 && usize::from(listen.port()) + shards > 65536 {
        return Err(problem(
            "webrtc.listen",
            "no room above this port for one port per media shard",
        ));
    }
    let shard_binds = (0..shards)
        .map(|i| {
            let mut bind = listen;
            if bind.port() != 0 {
                bind.set_port(bind.port() + i as u16);
            }
            bind
        })
        .collect();
    let timeout = within(
        "media.timeout_secs",
        m.timeout_secs,
        0..=3600,
        "must be at most 3600 (0 disables)",
    )?;
    let opus_bitrate = within(
        "media.opus_bitrate",
        m.opus_bitrate,
        6_000..=64_000,
        "must be between 6000 and 64000",
    )?;
    Ok(MediaSettings {
        codec_policy: m.codec_policy,
        opus_complexity,
        opus_bitrate,
        timeout: nonzero_secs(timeout),
        shard_binds,
    })
}

fn check_shutdown(s: &ShutdownSection) -> Result<(), ConfigError> {
    within(
        "shutdown.drain_timeout_secs",
        s.drain_timeout_secs,
        0..=3600,
        "must be at most 3600",
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(c: &Config) -> ConfigError {
        c.settings().expect_err("configuration must be refused")
    }

    #[test]
    fn defaults_parse() {
        let s = Config::default().settings().unwrap();
        assert_eq!(
            s.codecs,
            [AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma]
        );
        assert_eq!(s.echo_destination.as_deref(), Some("echo"));
        assert!(s.sip.is_none(), "the SIP leg is off by default");
        assert_eq!(s.media.timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.media.codec_policy, CodecPolicySetting::PassthroughFirst);
        assert!((1..=8).contains(&s.media.shard_binds.len()));
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn codecs_in_any_case_in_order_once_each() {
        let mut c = Config::default();
        c.webrtc.codecs = vec!["PCMA".into(), "Opus".into()];
        assert_eq!(
            c.settings().unwrap().codecs,
            [AudioCodec::Pcma, AudioCodec::Opus]
        );

        c.webrtc.codecs = vec!["pcmu".into(), "PCMU".into()];
        let e = err(&c);
        assert_eq!(e.key, "webrtc.codecs");
        assert_eq!(e.problem, "codec `PCMU` is listed twice");

        c.webrtc.codecs.clear();
        assert_eq!(err(&c).problem, "at least one codec is required");
    }

    #[test]
    fn one_address_per_shard_counted_up_from_listen() {
        let mut c = Config::default();
        c.media.shards = 3;
        let binds = c.settings().unwrap().media.shard_binds;
        let ports: Vec<u16> = binds.iter().map(|a| a.port()).collect();
        assert_eq!(ports, [40000, 40001, 40002]);

        c.webrtc.listen = "127.0.0.1:0".parse().unwrap();
        let binds = c.settings().unwrap().media.shard_binds;
        assert_eq!(binds, vec![c.webrtc.listen; 3], "port 0: each picks one");

        c.webrtc.listen = "127.0.0.1:65534".parse().unwrap();
        assert_eq!(err(&c).key, "webrtc.listen");

        c.media.shards = 65;
        assert_eq!(err(&c).key, "media.shards", "checked before the ports");
    }

    #[test]
    fn zero_means_off() {
        let mut c = Config::default();
        c.media.timeout_secs = 0;
        c.calls.echo_destination = String::new();
        c.sip.max_call_duration_secs = 0;
        let s = c.settings().unwrap();
        assert_eq!(s.media.timeout, None);
        assert_eq!(s.echo_destination, None);
        assert_eq!(c.call_timers().max_duration, None);
    }

    #[test]
    fn messages_name_the_key_and_the_rule() {
        let mut c = Config::default();
        c.http.max_message_bytes = 10;
        assert_eq!(
            err(&c).to_string(),
            "configuration key `http.max_message_bytes`: must be between 1024 and 1048576"
        );

        let mut c = Config::default();
        c.http.allowed_origins = vec!["app.example.com".into()];
        assert_eq!(
            err(&c).to_string(),
            "configuration key `http.allowed_origins`: `app.example.com` must look like https://host[:port]"
        );

        let mut c = Config::default();
        c.webrtc.public_ip = Some("0.0.0.0".parse().unwrap());
        assert_eq!(err(&c).key, "webrtc.public_ip");

        let mut c = Config::default();
        c.calls.echo_destination = " echo".into();
        assert_eq!(err(&c).key, "calls.echo_destination");

        let mut c = Config::default();
        c.media.opus_bitrate = 5_999;
        assert_eq!(err(&c).key, "media.opus_bitrate");

        let mut c = Config::default();
        c.shutdown.drain_timeout_secs = 3601;
        assert_eq!(err(&c).key, "shutdown.drain_timeout_secs");

        let mut c = Config::default();
        c.log.level = "info,=".into();
        assert_eq!(err(&c).key, "log.level");
    }

    #[test]
    fn the_first_section_in_file_order_is_reported() {
        let mut c = Config::default();
        c.shutdown.drain_timeout_secs = 3601;
        c.media.opus_complexity = 11;
        c.calls.max_per_session = 0;
        assert_eq!(err(&c).key, "calls.max_per_session");
    }

    #[test]
    fn a_log_filter_is_not_compiled_as_a_regular_expression() {
        // Found by fuzz/config: as a pattern, this field value took minutes
        // and more than 2 GB to build.
        let text = "[log]\nformat = \"human\"\nlevel = \"iRKRRRRRRr}RRRR[{u](f.=..+p.......................trruffffffffffnf;}}})}}}}}}}}}}}}}}}}}}}}};o\"\n";
        let start = std::time::Instant::now();
        let _ = Config::from_toml(text);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // A field value is still a filter, matched literally.
        assert!(log_filter("info,[span{user=alice}]=debug").is_ok());
        // Found next: this one panicked inside tracing-subscriber.
        let text = "[log]\nlevel = \"yR,, \u{669c}[u]\u{669c}t\u{669c}ls]\u{669c}[u]# Ga,,2\"\n";
        let e = Config::from_toml(text).expect_err("non-ASCII filters are refused");
        assert_eq!(e.key, "log.level");
    }
}
