//! What the scenarios that run an origin in this process share: starting and stopping it,
//! waiting for a counter, and the median of runs.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use selvage_origin::OriginConfig;
use serde::Serialize;
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

/// Whether a service on the feed kept up with sequencer runs: per run, the work the run asked
/// of it, how much was done before the run ended, and how long after its end the last was
/// (ms). The services run at a lower CPU priority than the sequencer (`consumers.nice`): while
/// senders keep both cores busy they may fall behind, and catch up after.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeptUp {
    pub asked: Vec<u64>,
    pub in_run: Vec<u64>,
    pub catch_up_ms: Vec<f64>,
}

impl KeptUp {
    /// Right after a run, with `count` at `before` when it began: records what was done during
    /// it, waits until `count` reaches `target`, and records how long that took.
    pub async fn wait(&mut self, what: &str, before: u64, target: u64, count: impl Fn() -> u64) -> Result<()> {
        let ended = Instant::now();
        let during = count() - before;
        wait_for(what, target, &count).await?;
        self.asked.push(target - before);
        self.in_run.push(during);
        self.catch_up_ms.push(ended.elapsed().as_secs_f64() * 1000.0);
        Ok(())
    }

    /// One line per run: "a run asked for N `things`: M `done` during it, …".
    pub fn print(&self, things: &str, done: &str) {
        for ((asked, in_run), catch_up) in self.asked.iter().zip(&self.in_run).zip(&self.catch_up_ms) {
            println!(
                "                   a run asked for {asked} {things}: {in_run} {done} during it, the last {catch_up:.0} ms after it"
            );
        }
    }
}
