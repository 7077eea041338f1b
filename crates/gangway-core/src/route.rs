use regex::Regex;

use crate::sip_user::valid_sip_user;

/// Where a call's `to` leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The built-in line that returns the browser's audio to it.
    Echo,
    /// A SIP destination reached through the trunk.
    Sip { uri: String },
    /// Nothing is configured for this destination, or it is not a valid one.
    NotFound,
    /// A valid destination the allow-list refuses (the gateway is no open relay).
    NotAllowed,
}

/// How bare destinations become SIP URIs and which URIs may be called.
#[derive(Debug, Clone)]
pub struct SipRouting {
    /// `to = "1000"` becomes `sip:1000@<domain>`.
    pub domain: String,
    /// Patterns the full SIP URI must match. Empty: only URIs at `domain`.
    pub allow: Vec<Regex>,
}

/// Maps API destinations to routes.
#[derive(Debug, Clone)]
pub struct Router {
    echo_destination: Option<String>,
    sip: Option<SipRouting>,
}

/// Longest destination accepted; SIP URIs for phone calls are far shorter.
const MAX_DESTINATION_LEN: usize = 256;

impl Router {
    /// `echo_destination` names the echo line (`None` disables it); `sip`
    /// enables SIP destinations.
    pub fn new(echo_destination: Option<String>, sip: Option<SipRouting>) -> Self {
        Router {
            echo_destination,
            sip,
        }
    }

    pub fn route(&self, to: &str) -> Route {
        let to = to.trim();
        if self.echo_destination.as_deref() == Some(to) {
            return Route::Echo;
        }
        let Some(sip) = &self.sip else {
            return Route::NotFound;
        };
        let uri = if to.len() > MAX_DESTINATION_LEN {
            return Route::NotFound;
        } else if let Some(rest) = to.strip_prefix("sip:") {
            if !valid_sip_uri_rest(rest) {
                return Route::NotFound;
            }
            to.to_string()
        } else if valid_sip_user(to) {
            format!("sip:{to}@{}", sip.domain)
        } else {
            return Route::NotFound;
        };
        let allowed = if sip.allow.is_empty() {
            uri_host(&uri).is_some_and(|h| h.eq_ignore_ascii_case(&sip.domain))
        } else {
            sip.allow.iter().any(|re| re.is_match(&uri))
        };
        if allowed {
            Route::Sip { uri }
        } else {
            Route::NotAllowed
        }
    }
}

/// `user@host[:port][;params]` with no characters that could inject headers.
fn valid_sip_uri_rest(rest: &str) -> bool {
    let Some((user, host)) = rest.split_once('@') else {
        return false;
    };
    valid_sip_user(user)
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:;=[]_".contains(&b))
}

fn uri_host(uri: &str) -> Option<&str> {
    let after_at = uri.split_once('@')?.1;
    let host = after_at.split([';', '?']).next()?;
    // Strip a port, but not from a bracketed IPv6 literal.
    Some(match host.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') || host.starts_with('[') => {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        }
        _ => host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(allow: &[&str]) -> Router {
        Router::new(
            Some("echo".into()),
            Some(SipRouting {
                domain: "pbx.example".into(),
                allow: allow.iter().map(|p| Regex::new(p).unwrap()).collect(),
            }),
        )
    }

    #[test]
    fn routes_echo_by_configured_name() {
        let r = Router::new(Some("echo".into()), None);
        assert_eq!(r.route("echo"), Route::Echo);
        assert_eq!(r.route(" echo "), Route::Echo);
        assert_eq!(r.route("1000"), Route::NotFound);
        let renamed = Router::new(Some("*43".into()), None);
        assert_eq!(renamed.route("*43"), Route::Echo);
        assert_eq!(renamed.route("echo"), Route::NotFound);
        assert_eq!(Router::new(None, None).route("echo"), Route::NotFound);
    }

    #[test]
    fn bare_numbers_go_to_the_trunk_domain() {
        let r = sip(&[]);
        assert_eq!(
            r.route("+15550100"),
            Route::Sip {
                uri: "sip:+15550100@pbx.example".into()
            }
        );
        assert_eq!(
            r.route("sip:alice@pbx.example:5060"),
            Route::Sip {
                uri: "sip:alice@pbx.example:5060".into()
            }
        );
        assert_eq!(r.route("echo"), Route::Echo, "echo still wins");
    }

    #[test]
    fn without_an_allow_list_only_the_trunk_domain_is_allowed() {
        let r = sip(&[]);
        assert_eq!(r.route("sip:bob@elsewhere.example"), Route::NotAllowed);
    }

    #[test]
    fn allow_list_patterns_decide() {
        let r = sip(&[r"^sip:\+?[0-9]{3,15}@pbx\.example$"]);
        assert!(matches!(r.route("5550100"), Route::Sip { .. }));
        assert_eq!(r.route("alice"), Route::NotAllowed);
        assert_eq!(r.route("sip:5550100@evil.example"), Route::NotAllowed);
    }

    #[test]
    fn injection_attempts_are_not_destinations() {
        let r = sip(&[".*"]);
        for bad in [
            "1000\r\nX-Evil: 1",
            "a b",
            "sip:bob@pbx.example>;evil",
            "sip:bob",
            "sip:@pbx.example",
            "<sip:bob@pbx.example>",
            "",
            &"9".repeat(300),
        ] {
            assert_eq!(r.route(bad), Route::NotFound, "{bad:?}");
        }
    }
}
