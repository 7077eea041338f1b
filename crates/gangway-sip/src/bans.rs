//! Sources outside `sip.inbound_allow` that keep sending (scanners,
//! floods) are banned for a while: their requests are dropped unanswered,
//! as kamailio's pike/htable do. One that sends a request now and then
//! still gets its single 403; the trunk is never banned (it is allowed).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests per second a source outside the allow-list may send.
const PER_SECOND: u32 = 10;
/// How long a source that sent more stays banned.
const BAN: Duration = Duration::from_secs(60);
/// Sources tracked at most; the oldest go when a scan of many addresses
/// would grow the table without bound.
const MAX_SOURCES: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct Bans {
    sources: Mutex<HashMap<IpAddr, Source>>,
}

#[derive(Debug)]
struct Source {
    window_start: Instant,
    count: u32,
    banned_until: Option<Instant>,
}

impl Bans {
    /// Counts one request from `ip` (outside the allow-list): false when
    /// it is to be dropped unanswered.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&ip) {
            sources.retain(|_, s| {
                s.banned_until.is_some_and(|t| t > now)
                    || now.saturating_duration_since(s.window_start) < Duration::from_secs(1)
            });
        }
        let s = sources.entry(ip).or_insert(Source {
            window_start: now,
            count: 0,
            banned_until: None,
        });
        if s.banned_until.is_some_and(|t| t > now) {
            return false;
        }
        if now.saturating_duration_since(s.window_start) >= Duration::from_secs(1) {
            s.window_start = now;
            s.count = 0;
        }
        s.count += 1;
        if s.count > PER_SECOND {
            s.banned_until = Some(now + BAN);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_source_is_banned_for_a_minute_and_others_are_not() {
        let bans = Bans::default();
        let (flood, other): (IpAddr, IpAddr) =
            ("192.0.2.9".parse().unwrap(), "192.0.2.10".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(
            (0..50).filter(|_| bans.admit(flood, t0)).count(),
            PER_SECOND as usize
        );
        assert!(bans.admit(other, t0));
        // Slowing down does not lift the ban before its minute is over.
        assert!(!bans.admit(flood, t0 + Duration::from_secs(30)));
        assert!(bans.admit(flood, t0 + BAN + Duration::from_secs(1)));
    }
}
