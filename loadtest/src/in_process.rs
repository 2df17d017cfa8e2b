//! What the scenarios that run an origin in this process share: starting and stopping it,
//! waiting for a counter, and the median of runs.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use selvage_origin::OriginConfig;
use tokio_util::sync::CancellationToken;

/// How long nothing may move before a phase gives up.
pub const STALLED: Duration = Duration::from_secs(60);

/// Starts an origin in this process; stop it with [`stop`].
pub async fn start(config: OriginConfig) -> Result<(selvage_origin::Running, CancellationToken)> {
    let shutdown = CancellationToken::new();
    let running = selvage_origin::start(config, shutdown.clone()).await?;
    Ok((running, shutdown))
}

/// Shuts an origin down and waits until it has.
pub async fn stop(running: selvage_origin::Running, shutdown: CancellationToken) {
    shutdown.cancel();
    running.wait().await;
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Waits until `count()` reaches `target`, failing when it stops moving for [`STALLED`].
pub async fn wait_for(what: &str, target: u64, count: impl Fn() -> u64) -> Result<()> {
    let (mut seen, mut moved) = (count(), Instant::now());
    while count() < target {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = count();
        if now != seen {
            (seen, moved) = (now, Instant::now());
        } else if moved.elapsed() > STALLED {
            bail!("{what} stalled at {seen} of {target} for {} s", STALLED.as_secs());
        }
    }
    Ok(())
}
