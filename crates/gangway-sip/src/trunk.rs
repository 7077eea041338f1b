//! Where a trunk is and whether it answers: its destination for the
//! stack, the characters we allow in the parts of its URIs, and the
//! OPTIONS keepalive's verdict that `place_call` consults.

use std::sync::atomic::{AtomicBool, Ordering};

use rsipstack::sip::{Host, HostWithPort};
use rsipstack::transport::SipAddr;

use crate::{Transport, Trunk};

/// Where requests to `trunk` are sent (its host and port, with the SIP
/// transport), after checking the host is something we can put in a URI.
pub(crate) fn trunk_destination(
    trunk: &Trunk,
) -> Result<(SipAddr, rsipstack::sip::Transport), String> {
    let host = trunk.host.trim();
    if host.is_empty() || !host.chars().all(is_host_char) {
        return Err(format!("invalid trunk host {:?}", trunk.host));
    }
    let host_addr: Host = match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) => Host::IpAddr(ip),
        Err(_) => Host::Domain(host.to_string().into()),
    };
    let transport = match trunk.transport {
        Transport::Udp => rsipstack::sip::Transport::Udp,
        Transport::Tcp => rsipstack::sip::Transport::Tcp,
    };
    let destination = SipAddr {
        r#type: Some(transport),
        addr: HostWithPort {
            host: host_addr,
            port: Some(trunk.port.into()),
        },
    };
    Ok((destination, transport))
}

/// The one SIP user-part rule, shared with routing and sign-in.
pub(crate) use gangway_core::is_sip_user_char as is_user_char;

pub(crate) fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.:[]".contains(c)
}

/// The OPTIONS keepalive's verdict on one trunk, shared with `place_call`.
pub(crate) struct TrunkHealth {
    host: String,
    port: u16,
    transport: Transport,
    up: AtomicBool,
}

impl TrunkHealth {
    /// A watched trunk, up until probes say otherwise.
    pub(crate) fn new(trunk: &Trunk) -> TrunkHealth {
        TrunkHealth {
            host: trunk.host.trim().to_string(),
            port: trunk.port,
            transport: trunk.transport.clone(),
            up: AtomicBool::new(true),
        }
    }

    /// Whether `trunk` is this one (same host, port and transport).
    pub(crate) fn watches(&self, trunk: &Trunk) -> bool {
        trunk.host.trim() == self.host
            && trunk.port == self.port
            && trunk.transport == self.transport
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Records the latest verdict; returns the previous one.
    pub(crate) fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_host_chars() {
        assert!("gangway+1".chars().all(is_user_char));
        assert!(!"a@b".chars().all(is_user_char));
        assert!(!"a;b".chars().all(is_user_char));
        assert!(!"a b".chars().all(is_user_char));
        assert!("pbx.example:5060".chars().all(is_host_char));
        assert!("[::1]".chars().all(is_host_char));
        assert!(!"pbx>evil".chars().all(is_host_char));
    }
}
