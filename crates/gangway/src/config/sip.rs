//! `[sip]`, `[sip.trunk]`, `[sip.registrar]` and `[auth]` parsed into
//! [`SipSettings`]: the SIP endpoint, the trunk and registrar with their
//! transports, the compiled allow-list, the inbound networks and the
//! keepalive. Checked only when `sip.enabled` (sign-in needs the SIP leg,
//! so `[auth]` is checked with it).

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use gangway_sip::ipnet::IpNet;
use gangway_sip::{SipConfig, Transport, Trunk, TrunkKeepalive};
use regex::Regex;

use super::sections::{AuthSection, RegistrarSection, SipSection, TrunkSection};
use super::settings::{nonzero_secs, within};
use super::{problem, ConfigError};

/// `[sip]` with `[sip.trunk]` and `[sip.registrar]`, parsed.
#[derive(Debug, Clone)]
pub struct SipSettings {
    /// How the SIP endpoint listens (`sip.listen`, `public_ip`,
    /// `user_agent`, `prack`, `session_expires_secs`).
    pub endpoint: SipConfig,
    /// `sip.rtp_port_min..=sip.rtp_port_max`.
    pub rtp_ports: RangeInclusive<u16>,
    /// Where calls go; its domain is `sip.trunk.domain`, else the host.
    pub trunk: Trunk,
    /// From user part of outbound calls: `from_user`, else `username`, else `gangway`.
    pub from_user: String,
    /// `sip.trunk.allow`, compiled.
    pub allow: Vec<Regex>,
    /// `sip.inbound_allow`; empty when not configured (the wiring then
    /// allows what the trunk and registrar hosts resolve to).
    pub inbound_allow: Vec<IpNet>,
    /// The OPTIONS keepalive to the trunk; `None` when
    /// `sip.keepalive_interval_secs` is 0.
    pub keepalive: Option<TrunkKeepalive>,
    pub registrar: RegistrarSettings,
}

/// `[sip.registrar]`, parsed.
#[derive(Debug, Clone)]
pub struct RegistrarSettings {
    /// Where users are registered: each empty (or 0) field is the trunk's.
    pub at: Trunk,
    pub expires_secs: u32,
    pub unregister_grace: Duration,
}

/// `[sip]` when enabled, and `[auth]` with it.
pub(super) fn sip(s: &SipSection, auth: &AuthSection) -> Result<SipSettings, ConfigError> {
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
    within(
        "sip.answer_timeout_secs",
        s.answer_timeout_secs,
        1..=600,
        "must be between 1 and 600",
    )?;
    let trunk = trunk(&s.trunk)?;
    let allow = allow_patterns(&s.trunk.allow)?;
    let inbound_allow = networks("sip.inbound_allow", &s.inbound_allow)?;
    within(
        "sip.ring_timeout_secs",
        s.ring_timeout_secs,
        1..=600,
        "must be between 1 and 600",
    )?;
    let t = &s.trunk;
    let from_user = t
        .from_user
        .clone()
        .or_else(|| t.username.clone())
        .unwrap_or_else(|| "gangway".into());
    let keepalive = keepalive(s)?.map(|(interval, failures)| TrunkKeepalive {
        trunk: trunk.clone(),
        from_user: from_user.clone(),
        interval,
        failures,
    });
    if s.session_expires_secs != 0 && !(90..=86_400).contains(&s.session_expires_secs) {
        return Err(problem(
            "sip.session_expires_secs",
            "must be between 90 and 86400 (0 does not ask for session timers)",
        ));
    }
    let registrar = registrar(&s.registrar, &trunk)?;
    check_auth(auth)?;
    let tcp = tcp_limits(s)?;
    Ok(SipSettings {
        endpoint: SipConfig {
            listen: s.listen,
            public_ip: s.public_ip,
            user_agent: s.user_agent.clone(),
            prack: s.prack,
            session_expires: s.session_expires_secs,
            max_calls_per_second: s.max_calls_per_second,
            tcp,
        },
        rtp_ports: s.rtp_port_min..=s.rtp_port_max,
        trunk,
        from_user,
        allow,
        inbound_allow,
        keepalive,
        registrar,
    })
}

/// `max_tcp_connections`, `max_tcp_connections_per_address`,
/// `tcp_idle_timeout_secs`.
fn tcp_limits(s: &SipSection) -> Result<gangway_sip::TcpLimits, ConfigError> {
    within(
        "sip.max_tcp_connections",
        s.max_tcp_connections,
        1..=1_000_000,
        "must be between 1 and 1000000",
    )?;
    within(
        "sip.max_tcp_connections_per_address",
        s.max_tcp_connections_per_address,
        1..=s.max_tcp_connections,
        "must be between 1 and sip.max_tcp_connections",
    )?;
    within(
        "sip.max_calls_per_second",
        s.max_calls_per_second,
        0..=100_000,
        "must be between 0 and 100000",
    )?;
    within(
        "sip.tcp_idle_timeout_secs",
        s.tcp_idle_timeout_secs,
        0..=86_400,
        "must be between 0 and 86400",
    )?;
    Ok(gangway_sip::TcpLimits {
        max_connections: s.max_tcp_connections,
        max_per_address: s.max_tcp_connections_per_address,
        idle_timeout: std::time::Duration::from_secs(s.tcp_idle_timeout_secs),
    })
}

/// `udp` or `tcp`, in any case.
fn transport(key: &str, name: &str, rule: &str) -> Result<Transport, ConfigError> {
    match name.to_ascii_lowercase().as_str() {
        "udp" => Ok(Transport::Udp),
        "tcp" => Ok(Transport::Tcp),
        _ => Err(problem(key, rule)),
    }
}

/// `value`, or `default` when `value` is empty.
fn or_default(value: &str, default: &str) -> String {
    if value.is_empty() { default } else { value }.to_string()
}

/// `[sip.trunk]` without its allow-list.
fn trunk(t: &TrunkSection) -> Result<Trunk, ConfigError> {
    if t.host.trim().is_empty() {
        return Err(problem(
            "sip.trunk.host",
            "required when sip.enabled is true",
        ));
    }
    if t.port == 0 {
        return Err(problem("sip.trunk.port", "must not be 0"));
    }
    let transport = transport(
        "sip.trunk.transport",
        &t.transport,
        "must be `udp` or `tcp`",
    )?;
    if t.username.is_some() != t.password.is_some() {
        return Err(problem(
            "sip.trunk.password",
            "username and password must be set together",
        ));
    }
    Ok(Trunk {
        host: t.host.clone(),
        port: t.port,
        transport,
        domain: or_default(&t.domain, &t.host),
        username: t.username.clone(),
        password: t.password.clone(),
    })
}

/// `sip.trunk.allow`, compiled.
fn allow_patterns(patterns: &[String]) -> Result<Vec<Regex>, ConfigError> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p).map_err(|e| {
                problem(
                    "sip.trunk.allow",
                    format!("`{p}` is not a valid pattern: {e}"),
                )
            })
        })
        .collect()
}

/// CIDR networks, or addresses (each a one-host network), under `key`.
pub(crate) fn networks(key: &'static str, entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    problem(
                        key,
                        format!("`{entry}` is neither an IP address nor a CIDR network"),
                    )
                })
        })
        .collect()
}

/// The keepalive's interval and failure count; `None` when it is off.
fn keepalive(s: &SipSection) -> Result<Option<(Duration, u32)>, ConfigError> {
    let interval = within(
        "sip.keepalive_interval_secs",
        s.keepalive_interval_secs,
        0..=3600,
        "must be at most 3600 (0 disables the keepalive)",
    )?;
    let failures = within(
        "sip.keepalive_failures",
        s.keepalive_failures,
        1..=100,
        "must be between 1 and 100",
    )?;
    Ok(nonzero_secs(interval).map(|interval| (interval, failures)))
}

/// `[sip.registrar]`, each empty field taken from `trunk`.
fn registrar(r: &RegistrarSection, trunk: &Trunk) -> Result<RegistrarSettings, ConfigError> {
    let transport = if r.transport.is_empty() {
        trunk.transport.clone()
    } else {
        transport(
            "sip.registrar.transport",
            &r.transport,
            "must be `udp`, `tcp` or empty (the trunk's)",
        )?
    };
    let expires_secs = within(
        "sip.registrar.expires_secs",
        r.expires_secs,
        30..=86_400,
        "must be between 30 and 86400",
    )?;
    let grace = within(
        "sip.registrar.unregister_grace_secs",
        r.unregister_grace_secs,
        0..=3600,
        "must be at most 3600",
    )?;
    Ok(RegistrarSettings {
        at: Trunk {
            host: or_default(&r.host, &trunk.host),
            port: if r.port == 0 { trunk.port } else { r.port },
            transport,
            domain: or_default(&r.domain, &trunk.domain),
            username: None,
            password: None,
        },
        expires_secs,
        unregister_grace: Duration::from_secs(grace),
    })
}

fn check_auth(a: &AuthSection) -> Result<(), ConfigError> {
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
    if a.max_failures_per_user < a.max_failures {
        return Err(problem(
            "auth.max_failures_per_user",
            "must be at least auth.max_failures (one address alone must not lock a user out first)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    /// SIP on, towards `pbx.example`; everything else as shipped.
    fn enabled() -> Config {
        let mut c = Config::default();
        c.sip.enabled = true;
        c.sip.trunk.host = "pbx.example".into();
        c
    }

    fn settings(c: &Config) -> SipSettings {
        c.settings().unwrap().sip.expect("sip.enabled")
    }

    fn err(c: &Config) -> ConfigError {
        c.settings().expect_err("configuration must be refused")
    }

    #[test]
    fn transports_in_any_case_and_the_registrar_defaults_to_the_trunk() {
        let mut c = enabled();
        c.sip.trunk.transport = "TCP".into();
        c.sip.trunk.port = 5080;
        let s = settings(&c);
        assert_eq!(s.trunk.transport, Transport::Tcp);
        assert_eq!(
            s.trunk.domain, "pbx.example",
            "the domain defaults to the host"
        );
        let r = &s.registrar.at;
        assert_eq!((r.host.as_str(), r.port), ("pbx.example", 5080));
        assert_eq!(r.transport, Transport::Tcp);
        assert_eq!(r.domain, "pbx.example");
        assert_eq!((r.username.as_ref(), r.password.as_ref()), (None, None));
        assert_eq!(s.registrar.expires_secs, 300);
        assert_eq!(s.registrar.unregister_grace, Duration::from_secs(10));

        c.sip.trunk.domain = "example.com".into();
        c.sip.registrar.host = "reg.example".into();
        c.sip.registrar.port = 5070;
        c.sip.registrar.transport = "Udp".into();
        let s = settings(&c);
        assert_eq!(s.trunk.domain, "example.com");
        let r = &s.registrar.at;
        assert_eq!((r.host.as_str(), r.port), ("reg.example", 5070));
        assert_eq!(r.transport, Transport::Udp);
        assert_eq!(r.domain, "example.com");

        c.sip.registrar.transport = "sctp".into();
        let e = err(&c);
        assert_eq!(e.key, "sip.registrar.transport");
        assert_eq!(e.problem, "must be `udp`, `tcp` or empty (the trunk's)");
    }

    #[test]
    fn from_user_is_from_user_else_username_else_gangway() {
        let mut c = enabled();
        assert_eq!(settings(&c).from_user, "gangway");
        c.sip.trunk.username = Some("gw".into());
        c.sip.trunk.password = Some("pw".into());
        assert_eq!(settings(&c).from_user, "gw");
        c.sip.trunk.from_user = Some("+4930123".into());
        assert_eq!(settings(&c).from_user, "+4930123");
    }

    #[test]
    fn keepalive_probes_the_trunk_unless_off() {
        let mut c = enabled();
        c.sip.keepalive_interval_secs = 15;
        c.sip.keepalive_failures = 3;
        let k = settings(&c).keepalive.expect("on");
        assert_eq!(k.interval, Duration::from_secs(15));
        assert_eq!(k.failures, 3);
        assert_eq!(k.trunk.host, "pbx.example");
        assert_eq!(k.from_user, "gangway");

        c.sip.keepalive_interval_secs = 0;
        assert!(settings(&c).keepalive.is_none());
    }

    #[test]
    fn inbound_allow_takes_networks_and_addresses() {
        let mut c = enabled();
        assert!(settings(&c).inbound_allow.is_empty());
        c.sip.inbound_allow = vec!["10.0.0.0/8".into(), " 192.0.2.7 ".into(), "::1".into()];
        let nets: Vec<String> = settings(&c)
            .inbound_allow
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);

        c.sip.inbound_allow.push("pbx.example".into());
        let e = err(&c);
        assert_eq!(e.key, "sip.inbound_allow");
        assert_eq!(
            e.problem,
            "`pbx.example` is neither an IP address nor a CIDR network"
        );
    }

    #[test]
    fn allow_list_is_compiled() {
        let mut c = enabled();
        c.sip.trunk.allow = vec![r"^sip:[0-9]{4}@pbx\.example$".into()];
        let allow = settings(&c).allow;
        assert!(allow[0].is_match("sip:1000@pbx.example"));
        assert!(!allow[0].is_match("sip:100@pbx.example"));
    }

    #[test]
    fn endpoint_is_the_sip_section() {
        let mut c = enabled();
        c.sip.public_ip = Some("203.0.113.10".parse().unwrap());
        c.sip.prack = false;
        c.sip.session_expires_secs = 0;
        let s = settings(&c);
        assert_eq!(s.endpoint.listen, c.sip.listen);
        assert_eq!(s.endpoint.public_ip, c.sip.public_ip);
        assert_eq!(s.endpoint.user_agent, c.sip.user_agent);
        assert!(!s.endpoint.prack);
        assert_eq!(s.endpoint.session_expires, 0);
        assert_eq!(s.rtp_ports, 30000..=31999);
    }

    /// Makes one key of a valid configuration wrong.
    type Breaks = fn(&mut Config);

    #[test]
    fn errors_name_the_key() {
        let cases: [(Breaks, &str); 8] = [
            (
                |c| c.sip.listen = "0.0.0.0:5060".parse().unwrap(),
                "sip.public_ip",
            ),
            (|c| c.sip.rtp_port_max = 1000, "sip.rtp_port_min"),
            (|c| c.sip.answer_timeout_secs = 0, "sip.answer_timeout_secs"),
            (|c| c.sip.trunk.port = 0, "sip.trunk.port"),
            (
                |c| c.sip.trunk.username = Some("u".into()),
                "sip.trunk.password",
            ),
            (|c| c.sip.ring_timeout_secs = 601, "sip.ring_timeout_secs"),
            (
                |c| c.sip.registrar.expires_secs = 29,
                "sip.registrar.expires_secs",
            ),
            (
                |c| c.sip.registrar.unregister_grace_secs = 3601,
                "sip.registrar.unregister_grace_secs",
            ),
        ];
        for (break_it, key) in cases {
            let mut c = enabled();
            break_it(&mut c);
            assert_eq!(err(&c).key, key);
        }
    }

    #[test]
    fn auth_is_checked_with_the_sip_leg_only() {
        let mut c = Config::default();
        c.auth.token_secret = Some("short".into());
        c.auth.max_failures = 0;
        assert!(
            c.settings().is_ok(),
            "SIP off: no sign-in, nothing to check"
        );

        c.sip.enabled = true;
        c.sip.trunk.host = "pbx.example".into();
        assert_eq!(err(&c).key, "auth.token_secret");
        c.auth.token_secret = Some("k".repeat(32));
        assert_eq!(err(&c).key, "auth.max_failures");
    }
}
