//! What one source address may hold. WebSocket connections, per address
//! and in all: a slot is taken before the upgrade and given back when the
//! connection's task ends, so one address cannot hold thousands of idle
//! sockets (each costs memory and a task). Calls, per address across all
//! its sockets: one client cannot take every RTP port.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub(crate) struct Connections {
    per_ip: usize,
    total: usize,
    open: Mutex<(HashMap<IpAddr, usize>, usize)>,
}

/// Which limit refused a connection (the `limit` label of the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    PerAddress,
    Total,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::PerAddress => "connections_per_address",
            Refused::Total => "connections",
        }
    }
}

/// One open connection's place; given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    owner: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    pub fn new(per_ip: usize, total: usize) -> Arc<Self> {
        Arc::new(Connections {
            per_ip,
            total,
            open: Mutex::new((HashMap::new(), 0)),
        })
    }

    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut guard = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *guard;
        if *total >= self.total {
            return Err(Refused::Total);
        }
        let mine = per_ip.entry(ip).or_default();
        if *mine >= self.per_ip {
            return Err(Refused::PerAddress);
        }
        *mine += 1;
        *total += 1;
        Ok(Slot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Calls per source address, across its sockets.
#[derive(Debug)]
pub(crate) struct CallsPerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl CallsPerAddress {
    pub fn new(max: usize) -> Self {
        CallsPerAddress {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may start one more call (counted by [`Self::started`]).
    pub fn has_room(&self, ip: IpAddr) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0) < self.max
    }

    pub fn started(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open.entry(ip).or_default() += 1;
    }

    pub fn ended(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_per_address_and_in_all_come_back_when_dropped() {
        let c = Connections::new(2, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = c.try_open(a).unwrap();
        let _a2 = c.try_open(a).unwrap();
        assert_eq!(c.try_open(a).unwrap_err(), Refused::PerAddress);
        let _b1 = c.try_open(b).unwrap();
        assert_eq!(c.try_open(b).unwrap_err(), Refused::Total);
        drop(a1);
        let _b2 = c.try_open(b).unwrap();
        assert_eq!(c.try_open(a).unwrap_err(), Refused::Total);
    }

    #[test]
    fn calls_per_address_count_across_sockets() {
        let calls = CallsPerAddress::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        calls.started(a);
        assert!(calls.has_room(a));
        calls.started(a);
        assert!(!calls.has_room(a));
        assert!(calls.has_room("192.0.2.2".parse().unwrap()));
        calls.ended(a);
        assert!(calls.has_room(a));
    }
}
