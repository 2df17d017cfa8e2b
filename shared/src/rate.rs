//! Rate limits per token: one token bucket per token and class of request (ARCHITECTURE §7).
//!
//! The origin limits HTTP requests by class (`read`, `write`, and incoming webhooks by their
//! secret); an edge limits client frames the same way (`read`: queries; `write`: sends, read
//! markers, preferences). A bucket holds `burst` requests and refills at `per_second`; a
//! request finding it empty is refused with how long until one fits, which HTTP answers as
//! `429` with `Retry-After` and a session as a `rate_limited` error with `retry_after_ms`.
//!
//! The buckets are [`governor`]'s GCRA, keyed: a bucket is a single atomic per key, checked
//! without a lock, and buckets of keys idle long enough to be full again are dropped by
//! [`Bucket::sweep`].

use std::{hash::Hash, num::NonZeroU32, time::Duration};

use governor::{
    clock::{Clock, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
    Quota, RateLimiter,
};
use serde::{Deserialize, Serialize};

/// How fast one token may make requests of one class: `burst` at once, then `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: u32,
    /// Requests at once, after a quiet spell.
    pub burst: u32,
}

impl Rate {
    /// The default for reads of one token: 100 a second, bursts of 1,000.
    pub const READS: Rate = Rate { per_second: 100, burst: 1000 };
    /// The default for writes of one token: 20 a second, bursts of 400.
    pub const WRITES: Rate = Rate { per_second: 20, burst: 400 };

    /// Checks the rate can be a bucket: both at least 1.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        if self.per_second == 0 || self.burst == 0 {
            return Err(format!("{name}: per_second and burst must be at least 1"));
        }
        Ok(())
    }
}

/// One class's token buckets, one per key (a token's hash, an incoming webhook's).
pub struct Bucket<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    /// Buckets that hold `rate.burst` and refill at `rate.per_second` (a zero is taken as 1).
    pub fn new(rate: Rate) -> Self {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_second(NonZeroU32::new(rate.per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(rate.burst).unwrap_or(one));
        let clock = DefaultClock::default();
        Bucket { limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()), clock }
    }

    /// Takes one request from `key`'s bucket, or answers how long until one fits.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops the buckets that are full again (their keys idle): memory stays that of the keys
    /// active lately.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys with a bucket.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key has a bucket.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_the_wait_and_keys_are_apart() {
        let bucket = Bucket::new(Rate { per_second: 2, burst: 3 });
        for _ in 0..3 {
            assert_eq!(bucket.check(&"a"), Ok(()));
        }
        let wait = bucket.check(&"a").expect_err("the fourth at once is refused");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(bucket.check(&"b"), Ok(()), "another key has its own bucket");
        std::thread::sleep(wait + Duration::from_millis(20));
        assert_eq!(bucket.check(&"a"), Ok(()), "refilled");
        assert_eq!(bucket.len(), 2);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
