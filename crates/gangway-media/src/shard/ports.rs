//! The SIP legs' RTP ports: a range from the configuration, handed out as
//! bound, non-blocking socket pairs (RTP on the even port, RTCP above it).

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};

use crate::rtp::random_u32;

/// The UDP ports the SIP leg's RTP may use, and the address they bind to.
#[derive(Debug, Clone)]
pub struct RtpPorts {
    pub ip: IpAddr,
    /// Inclusive range; even ports are used (RTCP would take the odd one).
    pub min: u16,
    pub max: u16,
}

/// Hands out ports from an [`RtpPorts`] range, skipping ones in use.
pub(super) struct PortAllocator {
    range: RtpPorts,
    next: u16,
}

impl PortAllocator {
    pub(super) fn new(range: RtpPorts) -> Self {
        // Start at a random even port so instances sharing a range rarely collide.
        let slots = u32::from(range.max.saturating_sub(range.min)) / 2 + 1;
        let first = even(range.min);
        let next = first.saturating_add((random_u32() % slots) as u16 * 2);
        PortAllocator { range, next }
    }

    /// Binds the next free even port and the odd one above it (RTCP).
    pub(super) fn bind(&mut self) -> Option<(u16, StdUdpSocket, StdUdpSocket)> {
        let slots = u32::from(self.range.max.saturating_sub(self.range.min)) / 2 + 1;
        for _ in 0..slots {
            let port = self.next;
            self.next = match port.checked_add(2) {
                Some(p) if p <= self.range.max => p,
                _ => even(self.range.min),
            };
            if port > self.range.max {
                continue;
            }
            let bind = |p: u16| {
                let s = StdUdpSocket::bind(SocketAddr::new(self.range.ip, p)).ok()?;
                s.set_nonblocking(true).ok()?;
                Some(s)
            };
            if let (Some(rtp), Some(rtcp)) = (bind(port), port.checked_add(1).and_then(bind)) {
                return Some((port, rtp, rtcp));
            }
        }
        None
    }
}

fn even(p: u16) -> u16 {
    p.saturating_add(p % 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_stays_in_range_and_skips_busy_ports() {
        let probe = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        let range = RtpPorts {
            ip: "127.0.0.1".parse().unwrap(),
            min: base - base % 2,
            max: base - base % 2 + 5,
        };
        let mut alloc = PortAllocator::new(range.clone());
        let mut held = Vec::new();
        while let Some((port, socket, rtcp)) = alloc.bind() {
            assert_eq!(
                rtcp.local_addr().unwrap().port(),
                port + 1,
                "RTCP on the odd port"
            );
            assert!(
                port % 2 == 0 && port >= range.min && port <= range.max,
                "{port}"
            );
            held.push((socket, rtcp));
            if held.len() > 3 {
                break;
            }
        }
        assert!(held.len() <= 3, "only three even ports in the range");
        assert!(alloc.bind().is_none(), "exhausted while all are held");
        held.pop();
        assert!(alloc.bind().is_some(), "a released port is reused");
    }
}
