//! New calls per second per source address, across its sockets (`/ws` and
//! `/sip` alike): a client that places and drops calls in a loop is
//! refused past `calls.max_new_per_second_per_address` before the call
//! costs a port or an INVITE.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gangway_core::rate::TokenBucket;

/// Addresses kept before idle ones are forgotten: a bucket untouched for
/// two seconds is full again, so forgetting it changes nothing.
const REMEMBERED: usize = 10_000;

pub(crate) struct NewCallRate {
    per_second: u32,
    by_address: Mutex<HashMap<IpAddr, (TokenBucket, Instant)>>,
}

impl NewCallRate {
    pub fn new(per_second: u32) -> Self {
        NewCallRate {
            per_second,
            by_address: Mutex::default(),
        }
    }

    /// Whether `ip` may start one more call now.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let mut map = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= REMEMBERED && !map.contains_key(&ip) {
            map.retain(|_, (_, last)| {
                now.saturating_duration_since(*last) < Duration::from_secs(2)
            });
        }
        let (bucket, last) = map
            .entry(ip)
            .or_insert_with(|| (TokenBucket::new(self.per_second, now), now));
        *last = now;
        bucket.allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_burst_and_rate() {
        let t0 = Instant::now();
        let rate = NewCallRate::new(5);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(
            (0..20).filter(|_| rate.allow(a, t0)).count(),
            10,
            "two seconds' worth"
        );
        assert!(rate.allow(b, t0), "another address is not affected");
        assert!(
            rate.allow(a, t0 + Duration::from_millis(200)),
            "one more after 1/5 s"
        );
        let off = NewCallRate::new(0);
        assert!((0..1000).all(|_| off.allow(a, t0)));
    }
}
