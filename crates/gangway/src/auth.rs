//! Sign-in checks that happen before anything reaches the PBX: token
//! verification and the per-address limit on failed attempts.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Verifies an HS256 JWT and returns the SIP user its `sub` names. `exp`
/// is required and checked (with jsonwebtoken's default 60 s leeway).
pub(crate) fn verify_token(secret: &str, token: &str) -> Result<String, String> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| format!("invalid token: {e}"))?;
    Ok(data.claims.sub)
}

/// Counts failed sign-ins per key (a source address, or a user) in a
/// sliding window, and the attempts still in flight: a burst of parallel
/// sign-ins could otherwise all pass the check before the first failure is
/// known.
pub(crate) struct FailureLimiter<K = IpAddr> {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<K, VecDeque<Instant>>>,
    in_flight: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        FailureLimiter {
            max: max as usize,
            window,
            failures: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Starts an attempt whose outcome comes later (a REGISTER): false
    /// when the failures so far and the attempts in flight reach the
    /// limit. Every `true` is followed by one [`Self::end`].
    pub(crate) fn begin(&self, key: &K, now: Instant) -> bool {
        let failures = self.failures_in_window(key, now);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let pending = in_flight.entry(key.clone()).or_default();
        if failures + *pending >= self.max {
            if *pending == 0 {
                in_flight.remove(key);
            }
            return false;
        }
        *pending += 1;
        true
    }

    /// The attempt [`Self::begin`] started is over; `failed` counts it.
    pub(crate) fn end(&self, key: &K, failed: bool, now: Instant) {
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pending) = in_flight.get_mut(key) {
                *pending = pending.saturating_sub(1);
                if *pending == 0 {
                    in_flight.remove(key);
                }
            }
        }
        if failed {
            self.record_failure(key, now);
        }
    }

    fn failures_in_window(&self, key: &K, now: Instant) -> usize {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(times) = map.get_mut(key) else {
            return 0;
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.is_empty() {
            map.remove(key);
        }
        map.get(key).map_or(0, VecDeque::len)
    }

    /// Whether `key` has used up its failed attempts.
    pub(crate) fn is_blocked(&self, key: &K, now: Instant) -> bool {
        self.failures_in_window(key, now) >= self.max
    }

    pub(crate) fn record_failure(&self, key: &K, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Old entries of other addresses go when the map grows, so a scan of
        // many addresses cannot grow it without bound.
        if map.len() >= 10_000 {
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        let times = map.entry(key.clone()).or_default();
        times.push_back(now);
        if times.len() > self.max {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn token(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    }

    #[test]
    fn valid_token_names_the_user() {
        let t = token(
            SECRET,
            serde_json::json!({"sub": "alice", "exp": in_an_hour()}),
        );
        assert_eq!(verify_token(SECRET, &t).unwrap(), "alice");
    }

    #[test]
    fn bad_tokens_are_refused() {
        let wrong_key = token(
            "another-secret-another-secret-xx",
            serde_json::json!({"sub": "alice", "exp": in_an_hour()}),
        );
        assert!(verify_token(SECRET, &wrong_key).is_err());
        let expired = token(
            SECRET,
            serde_json::json!({"sub": "alice", "exp": 1_000_000}),
        );
        assert!(verify_token(SECRET, &expired)
            .unwrap_err()
            .contains("xpired"));
        let no_exp = token(SECRET, serde_json::json!({"sub": "alice"}));
        assert!(verify_token(SECRET, &no_exp).is_err());
        assert!(verify_token(SECRET, "not.a.token").is_err());
    }

    #[test]
    fn limiter_blocks_after_max_failures_until_the_window_passes() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..2 {
            limiter.record_failure(&ip, t0);
        }
        assert!(!limiter.is_blocked(&ip, t0));
        limiter.record_failure(&ip, t0);
        assert!(limiter.is_blocked(&ip, t0));
        assert!(!limiter.is_blocked(&other, t0), "limits are per address");
        assert!(limiter.is_blocked(&ip, t0 + Duration::from_secs(59)));
        assert!(!limiter.is_blocked(&ip, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn attempts_in_flight_count_against_the_limit() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(300));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let now = Instant::now();
        // A burst: three may go out, the fourth waits for their outcome.
        assert!(limiter.begin(&ip, now));
        assert!(limiter.begin(&ip, now));
        assert!(limiter.begin(&ip, now));
        assert!(!limiter.begin(&ip, now));
        // One succeeds: its slot is free again; two fail and stay counted.
        limiter.end(&ip, false, now);
        limiter.end(&ip, true, now);
        limiter.end(&ip, true, now);
        assert!(limiter.begin(&ip, now));
        assert!(!limiter.begin(&ip, now));
        limiter.end(&ip, true, now);
        assert!(limiter.is_blocked(&ip, now));
        // Other addresses are not held up, and the window forgets.
        assert!(limiter.begin(&"192.0.2.8".parse().unwrap(), now));
        assert!(limiter.begin(&ip, now + Duration::from_secs(301)));
    }
}
