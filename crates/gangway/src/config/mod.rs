//! Configuration: `config/gangway.toml` (or `--config`), then `GANGWAY_*`
//! environment overrides, then parsing with errors that name the key.
//!
//! - `sections.rs`: [`Config`], the file as written, one serde struct per
//!   `[section]` (`HttpSection`, `SipSection`, …) with the defaults.
//! - `settings.rs` and `sip.rs`: [`Settings`], the same values parsed once,
//!   one function per section, into the types the gateway is wired with.
//!   [`Config::validate`] is "[`Config::settings`] succeeds".

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

mod cdr;
mod redact;
mod sections;
mod settings;
mod sip;
pub(crate) use sip::networks;

pub use cdr::{CdrRotation, CdrSection, WebhookUrl};
pub use redact::{redacted, REDACTED};
pub use sections::{
    AuthSection, CallsSection, CodecPolicySetting, Config, DtmfMode, HttpSection, LogFormat,
    LogSection, MediaSection, RegistrarSection, ShutdownSection, SipSection, TrunkSection,
    WebRtcSection,
};
pub use settings::{log_filter, MediaSettings, Settings};
pub use sip::{RegistrarSettings, SipSettings};

/// The hard WebSocket frame limit; beyond it the socket is closed with 1009.
pub const MAX_WS_FRAME_BYTES: usize = 1024 * 1024;

/// A configuration problem, naming the key, where its value came from and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
    /// The file (path) or environment variable the value came from; `None`
    /// for a default.
    pub origin: Option<String>,
}

impl ConfigError {
    pub fn new(key: &str, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
            origin: None,
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.key.is_empty(), &self.origin) {
            (true, None) => write!(f, "configuration: {}", self.problem),
            (true, Some(origin)) => write!(f, "configuration ({origin}): {}", self.problem),
            (false, None) => write!(f, "configuration key `{}`: {}", self.key, self.problem),
            (false, Some(origin)) => write!(
                f,
                "configuration key `{}` ({origin}): {}",
                self.key, self.problem
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

fn problem(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(key, problem)
}

/// Where a value came from, in words an operator can act on: the file, or
/// the exact environment variable (`key` with its dots as `__`).
fn origin(metadata: &figment::Metadata, key: &str) -> Option<String> {
    match &metadata.source {
        Some(figment::Source::File(path)) => Some(format!("in {}", path.display())),
        _ if metadata.name.contains("environment") && !key.is_empty() => Some(format!(
            "from GANGWAY_{}",
            key.replace('.', "__").to_ascii_uppercase()
        )),
        _ if metadata.name.contains("environment") => Some("from GANGWAY_* variables".into()),
        _ => None,
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
        Self::extract(figment.merge(env))
    }

    /// The defaults, then `text` as the file, validated: [`Config::load`]
    /// without the environment. For the fuzz targets in `fuzz/`.
    #[doc(hidden)]
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::extract(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|mut e| {
            let key = e.path.join(".");
            // Keep figment's text but drop its path and source: we print
            // the key and where it came from ourselves.
            e.path.clear();
            let source = e.metadata.take();
            let mut error = problem(&key, e.to_string().trim_end().to_string());
            error.origin = source.and_then(|m| origin(&m, &key));
            error
        })?;
        config.validate().map_err(|mut e| {
            if let Some(m) = figment.find_metadata(&e.key) {
                e.origin = origin(m, &e.key);
            }
            e
        })?;
        Ok(config)
    }

    /// Whether [`Config::settings`] succeeds; the first key that is wrong if not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.settings().map(drop)
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
    fn errors_say_where_the_value_came_from() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"[calls]\nsetup_timeout_secs = 0\n").unwrap();
        let path = f.path().display().to_string();
        let e = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(e.origin, Some(format!("in {path}")), "{e}");
        assert_eq!(
            e.to_string(),
            format!("configuration key `calls.setup_timeout_secs` (in {path}): must be between 1 and 300")
        );

        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"[http\nlisten = 1\n").unwrap();
        let e = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "configuration (in {}): TOML parse error at line 1",
                f.path().display()
            )),
            "{text}"
        );

        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"[http]\nlisten = \"nonsense\"\n").unwrap();
        let e = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(e.key, "http.listen");
        assert_eq!(e.origin, Some(format!("in {}", f.path().display())), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn an_environment_error_names_the_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("GANGWAY_CALLS__SETUP_TIMEOUT_SECS", "0");
            let e = Config::load(None).unwrap_err();
            assert_eq!(
                e.origin.as_deref(),
                Some("from GANGWAY_CALLS__SETUP_TIMEOUT_SECS"),
                "{e}"
            );
            jail.set_env("GANGWAY_CALLS__SETUP_TIMEOUT_SECS", "30");
            jail.set_env("GANGWAY_HTTP__LISTEN", "zz");
            let e = Config::load(None).unwrap_err();
            assert_eq!(
                e.origin.as_deref(),
                Some("from GANGWAY_HTTP__LISTEN"),
                "{e}"
            );
            Ok(())
        });
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
