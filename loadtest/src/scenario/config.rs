//! The scenario file: a TOML document in `loadtest/scenarios/` saying what workspace to seed,
//! how many clients to hold, what load to offer and which disturbance (storm, slow readers) to
//! add. Unknown keys are errors, so a typo cannot silently fall back to a default; every value
//! is validated before anything connects.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};

use crate::lean::WireFormat;
use crate::sends::parse_duration;

/// The lowest rate (operations/s) `--scale` shrinks a scenario's rate to.
pub const MIN_RATE: f64 = 20.0;
/// The shortest load `--scale` shrinks a scenario's duration to.
pub const MIN_DURATION: Duration = Duration::from_secs(1);

/// A whole scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// What the scenario exercises, for people reading reports.
    #[serde(default)]
    pub description: String,
    /// The workspace seeded through the origin before the run.
    #[serde(default)]
    pub workspace: WorkspaceConfig,
    /// The simulated clients.
    #[serde(default)]
    pub clients: ClientsConfig,
    /// The offered load.
    #[serde(default)]
    pub load: LoadConfig,
    /// Slow consumers, if any.
    #[serde(default)]
    pub slow: Option<SlowConfig>,
    /// A boot or reconnect storm, if any.
    #[serde(default)]
    pub storm: Option<StormConfig>,
}

/// `[workspace]`: what to seed. Every simulated client is one user; every user is also in
/// `#general` (the origin adds them), where nobody sends.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkspaceConfig {
    /// Ordinary channels, each with `channel_members` members.
    pub channels: usize,
    /// Members of each ordinary channel, assigned round-robin over the clients.
    pub channel_members: usize,
    /// Channels every client is a member of (the "hot" channels).
    pub big_channels: usize,
    /// Direct-message pairs between neighbouring clients (client 2k with 2k+1).
    pub dms: usize,
}

impl Default for WorkspaceConfig {
    fn default() -> Self {
        WorkspaceConfig { channels: 10, channel_members: 10, big_channels: 0, dms: 0 }
    }
}

/// `[clients]`: the simulated sessions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsConfig {
    /// Sessions held on the edge (one user each).
    pub count: usize,
    /// Wire format of every session.
    #[serde(deserialize_with = "wire_format")]
    pub format: WireFormat,
    /// Connections are opened evenly over this time before the load starts.
    #[serde(deserialize_with = "duration")]
    pub ramp_up: Duration,
    /// Loopback source addresses to spread connections over (127.0.0.1, 127.0.0.2, …): one
    /// address reaches ~28,000 connections to one edge port, so 4 are needed for 100,000.
    /// Only for an edge on a loopback address; 1 leaves the choice to the kernel.
    pub source_ips: usize,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig { count: 100, format: WireFormat::Msgpack, ramp_up: Duration::from_secs(2), source_ips: 1 }
    }
}

/// How a send picks its channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelPick {
    /// Every channel (ordinary, big and DM) equally likely.
    Uniform,
    /// `hot_share` of the sends go to the first big channel, the rest uniformly elsewhere.
    Hot,
}

/// `[load]`: open-loop senders.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// How long to send for, after the ramp-up.
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    /// Operations per second over all senders, as Poisson arrivals: new messages, and the
    /// `changes` share of changes. Each is made by a random connected member of its channel at
    /// its scheduled time, whether or not earlier ones were acknowledged, and latency counts
    /// from that scheduled time.
    pub rate: f64,
    /// How sends pick their channel.
    pub channel_pick: ChannelPick,
    /// With `channel_pick = "hot"`: the share of sends that go to the hot channel.
    pub hot_share: f64,
    /// Bytes of text per message (at least what the send time takes).
    pub text_bytes: usize,
    /// The share (0 to 1) of the scheduled operations that change a message instead of sending
    /// a new one: the sender of a recent send in the channel edits one of its own acknowledged
    /// messages there (new text), reacts to it (a new emoji every time), takes back one of its
    /// reactions to it, or deletes it (then never touches it again), through the origin's HTTP
    /// API with its own token. A sender with no message there free to change sends a new one
    /// instead. Every client must end with the origin's final state of every message in its
    /// window. 0 (the default) only sends.
    pub changes: f64,
    /// How long to wait after sending for every client to receive every acked message.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            duration: Duration::from_secs(30),
            rate: 200.0,
            channel_pick: ChannelPick::Uniform,
            hot_share: 0.9,
            text_bytes: 64,
            changes: 0.0,
            drain_timeout: Duration::from_secs(15),
        }
    }
}

/// `[slow]`: clients that read slowly.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowConfig {
    /// Share of the clients (0 to 1) that are slow.
    pub fraction: f64,
    /// A slow client sleeps this long before each read.
    #[serde(deserialize_with = "duration")]
    pub read_delay: Duration,
}

/// Which storm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StormKind {
    /// `fraction` of the clients are not connected during the ramp-up and all connect at `at`.
    Boot,
    /// At `at`, `fraction` of the clients close their session and resume from their last cursor.
    Reconnect,
}

/// `[storm]`: many clients connecting at once.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormConfig {
    /// Boot or reconnect.
    pub kind: StormKind,
    /// When, counted from the start of the load (after the ramp-up).
    #[serde(deserialize_with = "duration")]
    pub at: Duration,
    /// Share of the clients taking part (0 to 1).
    #[serde(default = "one")]
    pub fraction: f64,
    /// Each client starts within this random delay of `at`.
    #[serde(default = "default_jitter", deserialize_with = "duration")]
    pub jitter: Duration,
}

fn one() -> f64 {
    1.0
}

fn default_jitter() -> Duration {
    Duration::from_millis(50)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn wire_format<'de, D: Deserializer<'de>>(d: D) -> Result<WireFormat, D::Error> {
    match String::deserialize(d)?.as_str() {
        "json" => Ok(WireFormat::Json),
        "msgpack" => Ok(WireFormat::Msgpack),
        other => Err(serde::de::Error::custom(format!("unknown format {other:?}: use \"json\" or \"msgpack\""))),
    }
}

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("bad scenario file {}", path.display()))
    }

    /// Parses and validates a scenario document.
    pub fn parse(text: &str) -> Result<Scenario> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks values a type cannot: counts, shares, and what fits together.
    pub fn validate(&self) -> Result<()> {
        let (w, c, l) = (&self.workspace, &self.clients, &self.load);
        if self.name.trim().is_empty() {
            bail!("name must not be empty");
        }
        if c.count < 2 {
            bail!("clients.count must be at least 2 (someone sends, someone receives)");
        }
        if c.source_ips == 0 || c.source_ips > 250 {
            bail!("clients.source_ips must be between 1 and 250");
        }
        if w.channels + w.big_channels + w.dms == 0 {
            bail!("the workspace needs at least one channel, big channel or DM to send to");
        }
        if w.channels > 0 && (w.channel_members < 2 || w.channel_members > c.count) {
            bail!("workspace.channel_members must be between 2 and clients.count ({})", c.count);
        }
        if w.dms > c.count / 2 {
            bail!("workspace.dms must be at most clients.count / 2 ({}): DMs pair neighbouring clients", c.count / 2);
        }
        if !(l.rate.is_finite() && l.rate > 0.0) {
            bail!("load.rate must be a positive number of operations per second");
        }
        if l.duration.is_zero() {
            bail!("load.duration must be more than 0s");
        }
        if l.channel_pick == ChannelPick::Hot && w.big_channels == 0 {
            bail!("load.channel_pick = \"hot\" needs workspace.big_channels of at least 1");
        }
        if !(0.0..=1.0).contains(&l.hot_share) {
            bail!("load.hot_share must be between 0 and 1");
        }
        if l.text_bytes < 24 || l.text_bytes > 4000 {
            bail!("load.text_bytes must be between 24 and 4000");
        }
        if !(0.0..=1.0).contains(&l.changes) {
            bail!("load.changes must be between 0 and 1 (a share of the scheduled operations)");
        }
        if let Some(s) = &self.slow {
            if !(0.0..=1.0).contains(&s.fraction) {
                bail!("slow.fraction must be between 0 and 1");
            }
        }
        if let Some(s) = &self.storm {
            if !(0.0..=1.0).contains(&s.fraction) || s.fraction == 0.0 {
                bail!("storm.fraction must be more than 0 and at most 1");
            }
            if s.at >= l.duration {
                bail!("storm.at ({:?}) must fall within load.duration ({:?})", s.at, l.duration);
            }
        }
        Ok(())
    }

    /// The scenario with client counts, rates and durations multiplied by `factor` (so CI can
    /// run a scenario meant for a big machine in a second or two). Counts stay at least 2 and
    /// within what the workspace needs, rates at least [`MIN_RATE`] and the load at least
    /// [`MIN_DURATION`]; the result is validated again.
    pub fn scaled(&self, factor: f64) -> Result<Scenario> {
        if !(factor.is_finite() && factor > 0.0) {
            bail!("--scale must be a positive number");
        }
        let mut s = self.clone();
        let count = |n: usize, min: usize| ((n as f64 * factor).round() as usize).max(min);
        let time = |d: Duration| d.mul_f64(factor);
        s.clients.count = count(s.clients.count, 2);
        s.clients.ramp_up = time(s.clients.ramp_up);
        s.workspace.channels = count(s.workspace.channels, usize::from(s.workspace.channels > 0));
        s.workspace.channel_members = s.workspace.channel_members.min(s.clients.count).max(2);
        s.workspace.dms = count(s.workspace.dms, usize::from(s.workspace.dms > 0)).min(s.clients.count / 2);
        // Rate and duration both shrink, so a tiny run would send almost nothing: keep at least
        // MIN_RATE operations/s (or the file's own rate if lower) for at least MIN_DURATION.
        s.load.rate = (s.load.rate * factor).max(s.load.rate.min(MIN_RATE));
        s.load.duration = time(s.load.duration).max(MIN_DURATION);
        if let Some(storm) = &mut s.storm {
            storm.at = time(storm.at).min(s.load.duration / 2);
        }
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEADY: &str = r#"
        name = "steady"
        description = "many channels"
        [workspace]
        channels = 50
        channel_members = 20
        [clients]
        count = 1000
        format = "json"
        ramp_up = "5s"
        [load]
        duration = "30s"
        rate = 500.0
    "#;

    #[test]
    fn a_complete_file_parses_with_defaults_for_the_rest() {
        let s = Scenario::parse(STEADY).unwrap();
        assert_eq!(s.name, "steady");
        assert_eq!(s.workspace.channels, 50);
        assert_eq!(s.workspace.big_channels, 0);
        assert_eq!(s.clients.format, WireFormat::Json);
        assert_eq!(s.clients.ramp_up, Duration::from_secs(5));
        assert_eq!(s.clients.source_ips, 1);
        assert_eq!(s.load.channel_pick, ChannelPick::Uniform);
        assert_eq!(s.load.drain_timeout, Duration::from_secs(15));
        assert_eq!(s.load.changes, 0.0, "no changes unless asked for");
        assert!(s.slow.is_none() && s.storm.is_none());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Scenario::parse(&STEADY.replace("rate = 500.0", "rate = 500.0\nrats = 1")).unwrap_err();
        assert!(format!("{err:#}").contains("rats"), "{err:#}");
        let err = Scenario::parse(&format!("{STEADY}\n[storms]\nkind = \"boot\"")).unwrap_err();
        assert!(format!("{err:#}").contains("storms"), "{err:#}");
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let cases = [
            (STEADY.replace("count = 1000", "count = 1"), "clients.count"),
            (STEADY.replace("rate = 500.0", "rate = 0.0"), "load.rate"),
            (STEADY.replace("\"30s\"", "\"30 parsecs\""), "unknown unit"),
            (STEADY.replace("\"json\"", "\"xml\""), "unknown format"),
            (STEADY.replace("channel_members = 20", "channel_members = 2000"), "channel_members"),
            (format!("{STEADY}\nchannel_pick = \"hot\""), "big_channels"),
            (format!("{STEADY}\nchanges = 1.5"), "load.changes"),
            (format!("{STEADY}\nchanges = -0.1"), "load.changes"),
            (format!("{STEADY}\n[storm]\nkind = \"reconnect\"\nat = \"40s\""), "storm.at"),
            (format!("{STEADY}\n[storm]\nkind = \"hurricane\"\nat = \"4s\""), "hurricane"),
            (format!("{STEADY}\n[slow]\nfraction = 2.0\nread_delay = \"5ms\""), "slow.fraction"),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", Scenario::parse(&text).unwrap_err());
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
    }

    #[test]
    fn scaling_shrinks_counts_rates_and_times_but_keeps_them_usable() {
        let s = Scenario::parse(&format!("{STEADY}\n[storm]\nkind = \"reconnect\"\nat = \"10s\"")).unwrap();
        let tiny = s.scaled(0.005).unwrap();
        assert_eq!(tiny.clients.count, 5);
        assert_eq!(tiny.workspace.channels, 1);
        assert_eq!(tiny.workspace.channel_members, 5);
        assert!((tiny.load.rate - MIN_RATE).abs() < 1e-9);
        assert_eq!(tiny.load.duration, MIN_DURATION);
        assert!(tiny.storm.unwrap().at <= MIN_DURATION / 2);
        let half = s.scaled(0.5).unwrap();
        assert_eq!((half.clients.count, half.workspace.channels), (500, 25));
        assert!((half.load.rate - 250.0).abs() < 1e-9);
        assert_eq!(half.load.duration, Duration::from_secs(15));
        assert!(s.scaled(0.0).is_err());
    }

    #[test]
    fn every_shipped_scenario_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap();
                n += 1;
            }
        }
        assert!(n >= 7, "{n} scenario files in {}", dir.display());
    }
}
