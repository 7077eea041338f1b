//! A rate limit as a token bucket that holds two seconds' worth, so a
//! burst passes and a flood does not: messages per socket, new calls per
//! address, INVITEs towards the trunk. Sans-IO: the caller says when.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second; 0 turns the limit off.
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: u32, now: Instant) -> Self {
        TokenBucket {
            per_second: f64::from(per_second),
            tokens: 2.0 * f64::from(per_second),
            last: now,
        }
    }

    /// Whether one more message may be taken now.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(2.0 * self.per_second);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_two_seconds_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut rate = TokenBucket::new(10, t0);
        assert_eq!((0..30).filter(|_| rate.allow(t0)).count(), 20);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..30).filter(|_| rate.allow(t1)).count(), 5);
        let mut off = TokenBucket::new(0, t0);
        assert!((0..10_000).all(|_| off.allow(t0)));
    }
}
