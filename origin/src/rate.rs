//! Rate limits per token on the HTTP API (ARCHITECTURE §7; `[rate_limits]`): one token bucket
//! per token and class, checked by the `Caller` extractor once the token is known, so no route
//! can forget it. Incoming webhooks and `response_url`s, which take no token, have buckets of
//! their own by their secret's hash. The buckets are [`selvage_shared::rate::Bucket`]s, swept
//! every minute of the keys idle long enough to be full again.

use std::{sync::Arc, time::Duration};

use axum::http::Method;
use selvage_shared::rate::{retry_after_secs, Bucket};
use tokio_util::sync::CancellationToken;

use crate::{config::RateLimitsConfig, error::OriginError, metrics::Metrics};

/// A class of requests, with a bucket per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `GET` and `HEAD`.
    Read,
    /// Everything else a token does.
    Write,
    /// Posts to one incoming webhook or `response_url`, by its secret.
    Incoming,
}

impl Class {
    /// The class of an HTTP method.
    pub fn of(method: &Method) -> Class {
        match *method {
            Method::GET | Method::HEAD => Class::Read,
            _ => Class::Write,
        }
    }

    /// Its label on `selvage_rate_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Incoming => "incoming",
        }
    }
}

/// The origin's buckets.
pub struct RateLimits {
    config: RateLimitsConfig,
    read: Bucket<[u8; 32]>,
    write: Bucket<[u8; 32]>,
    incoming: Bucket<[u8; 32]>,
    metrics: Arc<Metrics>,
}

impl RateLimits {
    /// Buckets as `config` sets them.
    pub fn new(config: &RateLimitsConfig, metrics: Arc<Metrics>) -> Self {
        RateLimits {
            config: config.clone(),
            read: Bucket::new(config.read),
            write: Bucket::new(config.write),
            incoming: Bucket::new(config.incoming),
            metrics,
        }
    }

    /// Takes one request of `class` from `key`'s bucket (a token's hash, a secret's), or refuses
    /// it as `rate_limited` with the seconds to wait.
    pub fn check(&self, class: Class, key: &[u8; 32]) -> Result<(), OriginError> {
        if !self.config.enabled {
            return Ok(());
        }
        let (bucket, rate) = match class {
            Class::Read => (&self.read, self.config.read),
            Class::Write => (&self.write, self.config.write),
            Class::Incoming => (&self.incoming, self.config.incoming),
        };
        bucket.check(key).map_err(|wait| {
            self.metrics.rate_limited.with_label_values(&[class.label()]).inc();
            let secs = retry_after_secs(wait);
            OriginError::RateLimited(
                format!(
                    "over the {} rate of {} requests a second (bursts of {}); retry in {secs} s",
                    class.label(),
                    rate.per_second,
                    rate.burst
                ),
                secs,
            )
        })
    }

    /// Sweeps idle buckets every minute until `shutdown`.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.read.sweep();
                    self.write.sweep();
                    self.incoming.sweep();
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
