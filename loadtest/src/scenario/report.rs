//! `report.json` (schema `selvage-loadtest-report/1`) and the text summary on the terminal.
//! The HTML report is rendered from the same JSON, so this shape is the contract: fields may
//! be added, never renamed or removed.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::checker::Violation;
use crate::report::Latency;

/// The schema name and version written into every report.
pub const SCHEMA: &str = "selvage-loadtest-report/1";

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// What ran.
    pub scenario: ScenarioInfo,
    /// Against what.
    pub target: Target,
    /// When the run started, RFC 3339 (UTC).
    pub started_at: String,
    /// The same instant, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// Seconds from the first connection to the end of the drain.
    pub duration_s: f64,
    /// The checker found nothing and every client stayed (or came back), something was
    /// acknowledged, the run was not interrupted, and (when it changed messages) the origin's
    /// final history could be read for the check.
    pub passed: bool,
    /// Why it did not pass, one sentence each (empty when it passed).
    pub failures: Vec<String>,
    /// Ctrl-C ended the load early.
    pub interrupted: bool,
    /// Latency summaries.
    pub latency: Latencies,
    /// Per second since the start of the run.
    pub timeline: Vec<Second>,
    /// Totals over the run.
    pub totals: Totals,
    /// Errors by code (send errors from the edge, connection failures, skipped sends).
    pub errors: BTreeMap<String, u64>,
    /// The checker's verdict.
    pub checker: CheckerReport,
}

/// `scenario`.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioInfo {
    /// Its `name`.
    pub name: String,
    /// The file it came from (or `builtin:NAME`).
    pub file: String,
    /// `--scale`.
    pub scale: f64,
    /// Its `description`.
    pub description: String,
    /// Simulated clients (after scaling).
    pub clients: usize,
    /// Offered sends per second (after scaling).
    pub rate: f64,
}

/// `target`.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The edge clients connected to (`host:port`; several separated by ", ").
    pub edge: String,
    /// The origin the workspace was seeded through.
    pub origin: String,
}

/// `latency`.
#[derive(Clone, Debug, Serialize)]
pub struct Latencies {
    /// Scheduled send → ack at the sender.
    pub send_ack: LatencyJson,
    /// Scheduled send → delivered, per recipient.
    pub send_delivered: LatencyJson,
    /// Scheduled change → the origin's answer (the HTTP round trip, plus any wait for it to
    /// start), for changes the origin made.
    pub change_ack: LatencyJson,
    /// Connect → `hello`, first sessions.
    pub boot: LatencyJson,
    /// Close → `hello` of the resumed session.
    pub reconnect: LatencyJson,
}

/// One latency distribution: the summary, plus its points for plotting.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyJson {
    /// Count and percentiles.
    #[serde(flatten)]
    pub summary: Latency,
    /// (quantile, ms) pairs for plotting.
    pub percentiles: Vec<(f64, f64)>,
}

impl LatencyJson {
    /// Summarises a histogram of microseconds (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> LatencyJson {
        let summary = Latency::of(h);
        let s = &summary;
        let percentiles = vec![(0.5, s.p50_ms), (0.9, s.p90_ms), (0.99, s.p99_ms), (0.999, s.p999_ms), (1.0, s.max_ms)];
        LatencyJson { summary, percentiles }
    }
}

impl std::ops::Deref for LatencyJson {
    type Target = Latency;

    fn deref(&self) -> &Latency {
        &self.summary
    }
}

impl std::fmt::Display for LatencyJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 0 {
            return write!(f, "—");
        }
        write!(
            f,
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  ({} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// One second of the timeline (counts during that second; `connections` at its end).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the start of the run, at the end of this second.
    pub t_s: f64,
    /// Sends written.
    pub sends: u64,
    /// Acks received.
    pub acks: u64,
    /// Message events received by all clients.
    pub deliveries: u64,
    /// Sessions open.
    pub connections: i64,
    /// Errors.
    pub errors: u64,
    /// Changes requested.
    pub changes: u64,
}

/// `totals`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Sends written.
    pub sends: u64,
    /// Acks received.
    pub acks: u64,
    /// Message events received by all clients.
    pub deliveries: u64,
    /// Sessions opened (boots and resumes).
    pub connections_opened: u64,
    /// Sessions resumed.
    pub reconnects: u64,
    /// Times a client moved to the next of several edges (`--target A --target B`) because
    /// its edge said `goodbye` or refused it.
    pub moved: u64,
    /// Sessions the edge closed as slow consumers.
    pub sessions_shed: u64,
    /// Changes (edits, deletes, reactions) requested from the origin.
    pub changes: u64,
    /// Changes the origin answered as made.
    pub changes_acked: u64,
    /// Change events received by all clients.
    pub change_deliveries: u64,
}

/// `checker`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckerReport {
    /// Channels with members checked.
    pub channels_checked: usize,
    /// Clients checked.
    pub clients_checked: usize,
    /// Violations found in all.
    pub violation_count: u64,
    /// Whether every client's view of the changed messages was held against the origin's
    /// final history (runs that change messages).
    pub states_checked: bool,
    /// Messages the origin's final history shows changed.
    pub changed_messages: usize,
    /// Whether every acknowledged send was looked for in the origin's history after the run
    /// (`--check-stored`).
    pub stored_checked: bool,
    /// The first of them (at most [`super::VIOLATIONS_KEPT`]).
    pub violations: Vec<Violation>,
}

/// RFC 3339 (UTC, ms) of a time in ms since the Unix epoch.
pub fn rfc3339(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Prints the text summary.
pub fn print(r: &Report) {
    println!(
        "selvage loadtest run — {} (scale {}), {} clients, {:.0} sends/s offered",
        r.scenario.name, r.scenario.scale, r.scenario.clients, r.scenario.rate
    );
    println!("  target            edge {}, origin {}", r.target.edge, r.target.origin);
    let t = &r.totals;
    println!("  ran               {:.1} s from {}", r.duration_s, r.started_at);
    println!("  sends             {} written, {} acked", t.sends, t.acks);
    if t.changes > 0 {
        println!(
            "  changes           {} requested, {} acked, {} change events delivered",
            t.changes, t.changes_acked, t.change_deliveries
        );
    }
    println!("  deliveries        {}", t.deliveries);
    println!(
        "  sessions          {} opened, {} resumed, {} shed as slow",
        t.connections_opened, t.reconnects, t.sessions_shed
    );
    if t.moved > 0 {
        println!("  moved             {} times to another edge (goodbye or refused)", t.moved);
    }
    println!("  send → ack        {}", r.latency.send_ack);
    println!("  send → delivered  {}", r.latency.send_delivered);
    if t.changes > 0 {
        println!("  change → ack      {}", r.latency.change_ack);
    }
    println!("  boot              {}", r.latency.boot);
    println!("  reconnect         {}", r.latency.reconnect);
    if !r.errors.is_empty() {
        let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  errors            {}", list.join(", "));
    }
    let c = &r.checker;
    if c.violation_count == 0 {
        println!(
            "  check             ok: {} clients in {} channels got every acked message once, in one order, without gaps",
            c.clients_checked, c.channels_checked
        );
        if c.states_checked {
            println!(
                "                    and each shows every message of its window as the origin's final history does \
                 ({} changed)",
                c.changed_messages
            );
        }
        if c.stored_checked {
            println!("                    and the origin's history holds every acknowledged send at its seq");
        }
    } else {
        println!("  check             FAILED: {} violations; the first:", c.violation_count);
        for v in c.violations.iter().take(10) {
            println!("    {:?} channel {} seq {} client {} {}", v.kind, v.channel, v.seq, v.client, v.detail);
        }
    }
    if r.passed {
        println!("  result            PASSED");
    } else {
        println!("  result            FAILED: {}", r.failures.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates_are_right() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_359_685_000), "2026-11-22T15:01:25.000Z");
    }

    #[test]
    fn empty_histograms_summarise_to_zero() {
        let l = LatencyJson::of(&crate::report::latency_histogram());
        assert_eq!((l.count, l.p99_ms, l.percentiles.len()), (0, 0.0, 5));
    }
}
