//! Caps on SIP over TCP connections, per source address and in all.
//!
//! rsipstack accepts every connection and serves it until it goes idle;
//! the transport inspector ([`crate::screen`]) asks [`TcpCaps::admit`]
//! about each new stream connection and closes the ones over a cap at
//! once, so idle or abusive connections cannot pile up (each holds a
//! socket, buffers and a task) until the process runs out of descriptors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use rsipstack::transport::SipConnection;

/// Limits on SIP over TCP.
#[derive(Clone, Debug)]
pub struct TcpLimits {
    /// Open connections in all, both directions.
    pub max_connections: usize,
    /// Open connections from one address.
    pub max_per_address: usize,
    /// A connection that receives nothing this long is closed (the PBX's
    /// keepalives count); zero keeps idle connections.
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 1024,
            max_per_address: 32,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Which cap a connection went past: the `limit` label of
/// `gangway_sip_tcp_refused_total`.
pub(crate) const LIMITS: [&str; 2] = ["connections", "connections_per_address"];

/// The open stream connections, by source address: each named by its
/// local and remote address, which an open TCP connection has to itself.
pub(crate) struct TcpCaps {
    limits: TcpLimits,
    open: Mutex<HashMap<IpAddr, Vec<String>>>,
}

fn remote_ip(connection: &SipConnection) -> Option<IpAddr> {
    let addr = connection.get_remote_addr()?;
    addr.get_socketaddr().ok().map(|a| a.ip())
}

fn name(connection: &SipConnection) -> String {
    let remote = connection.get_remote_addr().map(|a| a.to_string());
    format!("{} {}", connection.get_addr(), remote.unwrap_or_default())
}

impl TcpCaps {
    pub(crate) fn new(limits: TcpLimits) -> TcpCaps {
        TcpCaps {
            limits,
            open: Mutex::default(),
        }
    }

    /// A new stream connection: kept and counted, or the cap it is over.
    pub(crate) fn admit(&self, connection: &SipConnection) -> Result<usize, &'static str> {
        let Some(ip) = remote_ip(connection) else {
            return Ok(self.open_count());
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = open.values().map(Vec::len).sum();
        if total >= self.limits.max_connections {
            return Err(LIMITS[0]);
        }
        let from_ip = open.entry(ip).or_default();
        if from_ip.len() >= self.limits.max_per_address {
            if from_ip.is_empty() {
                open.remove(&ip);
            }
            return Err(LIMITS[1]);
        }
        from_ip.push(name(connection));
        Ok(total + 1)
    }

    /// A stream connection ended; the count of open ones after it.
    pub(crate) fn closed(&self, connection: &SipConnection) -> usize {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = remote_ip(connection) {
            if let Some(list) = open.get_mut(&ip) {
                let name = name(connection);
                list.retain(|c| *c != name);
                if list.is_empty() {
                    open.remove(&ip);
                }
            }
        }
        open.values().map(Vec::len).sum()
    }

    fn open_count(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values().map(Vec::len).sum()
    }
}
