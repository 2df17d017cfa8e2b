//! Latency and throughput summaries that people can read and machines can parse.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of a latency histogram recorded in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest sample, ms.
    pub max_ms: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  ({} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// A histogram for latencies from 1 µs to 60 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants within hdrhistogram's supported range, so this cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Prints a scenario's report: as pretty JSON with `--json`, else as text by `print`.
pub fn emit<T: Serialize>(report: &T, json: bool, print: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print(report);
    }
    Ok(())
}

/// Prints, once a second on stderr until aborted, how much `count` grew in the last second:
/// in place on a terminal, a line each otherwise.
pub fn progress(
    duration: std::time::Duration,
    unit: &'static str,
    count: impl Fn() -> u64 + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use std::io::IsTerminal;
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let start = std::time::Instant::now();
        let second = std::time::Duration::from_secs(1);
        let mut last = 0u64;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
        loop {
            tick.tick().await;
            let now = count();
            let line = format!(
                "  {:>5.1} of {:.0} s: {:>10} {unit}",
                start.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                now.saturating_sub(last)
            );
            last = now;
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
    })
}

/// The directory a scenario keeps its data in: the one given, or a temporary one (removed when
/// the returned guard drops).
pub fn data_dir(given: &Option<std::path::PathBuf>) -> anyhow::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    Ok(match given {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    })
}
