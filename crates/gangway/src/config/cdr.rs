//! `[cdr]`: call detail records, to a JSON-lines file and/or a webhook.

use serde::{Deserialize, Serialize};

use super::{problem, ConfigError};

/// When the records file is renamed and a new one started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CdrRotation {
    /// At the first record of a new UTC day.
    Daily,
    /// When the next record would take it past `max_file_bytes`.
    Size,
    Never,
}

/// `[cdr]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdrSection {
    /// The JSON-lines file (one record a line); empty: no file.
    pub file: String,
    pub rotate: CdrRotation,
    /// With `rotate = "size"`.
    pub max_file_bytes: u64,
    /// `http://host:port/path` the records are POSTed to; empty: no webhook.
    pub webhook_url: String,
    /// HMAC-SHA256 key of `X-Gangway-Signature` (required with a webhook).
    pub webhook_secret: String,
    /// One attempt's limit (connect, send, response headers).
    pub webhook_timeout_ms: u64,
    /// Attempts per record, the first included.
    pub webhook_max_attempts: u32,
    /// Back-off before the second attempt, doubled each time up to the maximum.
    pub webhook_backoff_initial_ms: u64,
    pub webhook_backoff_max_ms: u64,
    /// Records waiting for the webhook; more are dropped (counted, logged).
    pub webhook_queue: usize,
    /// At a graceful shutdown, how long the records of the last calls may
    /// take to reach the file and the webhook before the process exits.
    pub flush_timeout_secs: u64,
}

impl Default for CdrSection {
    fn default() -> Self {
        CdrSection {
            file: String::new(),
            rotate: CdrRotation::Daily,
            max_file_bytes: 100 * 1024 * 1024,
            webhook_url: String::new(),
            webhook_secret: String::new(),
            webhook_timeout_ms: 5_000,
            webhook_max_attempts: 6,
            webhook_backoff_initial_ms: 500,
            webhook_backoff_max_ms: 60_000,
            webhook_queue: 10_000,
            flush_timeout_secs: 5,
        }
    }
}

/// A webhook target: `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, `/` at least.
    pub path: String,
}

impl WebhookUrl {
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let uri: axum::http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// is supported (put a TLS proxy in front for https)".into());
        }
        let host = uri.host().ok_or("no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(WebhookUrl {
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(80),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        })
    }
}

pub(super) fn check_cdr(c: &CdrSection) -> Result<(), ConfigError> {
    if c.rotate == CdrRotation::Size && c.max_file_bytes < 1024 {
        return Err(problem("cdr.max_file_bytes", "must be at least 1024"));
    }
    if c.flush_timeout_secs > 600 {
        return Err(problem("cdr.flush_timeout_secs", "at most 600"));
    }
    if c.webhook_url.is_empty() {
        return Ok(());
    }
    WebhookUrl::parse(&c.webhook_url).map_err(|e| problem("cdr.webhook_url", e))?;
    if c.webhook_secret.is_empty() {
        return Err(problem(
            "cdr.webhook_secret",
            "required with cdr.webhook_url",
        ));
    }
    if c.webhook_max_attempts == 0 {
        return Err(problem("cdr.webhook_max_attempts", "must be at least 1"));
    }
    if c.webhook_timeout_ms == 0 || c.webhook_queue == 0 {
        return Err(problem(
            "cdr.webhook_timeout_ms",
            "webhook_timeout_ms and webhook_queue must be above 0",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        let u = WebhookUrl::parse("http://127.0.0.1:9000/cdr?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9000, "/cdr?x=1")
        );
        let u = WebhookUrl::parse("http://hooks.example").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert!(WebhookUrl::parse("https://hooks.example/").is_err());
        assert!(WebhookUrl::parse("not a url").is_err());
    }

    #[test]
    fn a_webhook_needs_a_secret() {
        let mut c = CdrSection {
            webhook_url: "http://127.0.0.1:9/".into(),
            ..CdrSection::default()
        };
        assert_eq!(check_cdr(&c).unwrap_err().key, "cdr.webhook_secret");
        c.webhook_secret = "s".into();
        assert!(check_cdr(&c).is_ok());
    }

    #[test]
    fn the_shutdown_flush_is_bounded() {
        let mut c = CdrSection {
            flush_timeout_secs: 601,
            ..CdrSection::default()
        };
        assert_eq!(check_cdr(&c).unwrap_err().key, "cdr.flush_timeout_secs");
        c.flush_timeout_secs = 0;
        assert!(check_cdr(&c).is_ok(), "0: no wait");
    }
}
