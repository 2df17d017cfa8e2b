//! The checker: from what every simulated client received and what every sender had
//! acknowledged, decides whether the deployment kept its promise (DESIGN §2 ordering, §3
//! resume): per channel one order for all members, no gaps in `seq`, no duplicates, and every
//! acknowledged message delivered to every member that was connected or resumed.
//!
//! Pure functions over recorded data, so they can be tested with crafted inputs. Membership
//! is fixed once the workspace is seeded, so a client's window in a channel is simply from
//! the channel's `last_seq` in its first `hello` to the highest acknowledged `seq`.

use std::collections::HashMap;

use serde::Serialize;

/// Channels and clients are numbered by the runner; names come back for the report.
pub type ChannelIx = u32;

/// One message event a client received, in the order received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The channel.
    pub channel: ChannelIx,
    /// The message's `seq`.
    pub seq: u64,
    /// A hash of the message's `client_msg_id` (identifies the message across clients; 32
    /// bits keep a delivery at 16 bytes, and a collision can only hide a conflict at one seq).
    pub msg: u32,
}

/// What one client recorded over the run (across its reconnects).
#[derive(Clone, Debug, Default)]
pub struct ClientLog {
    /// The channels it is a member of with their `last_seq` in its first `hello`: it is owed
    /// every message after that.
    pub channels: Vec<(ChannelIx, u64)>,
    /// Message events, in the order received.
    pub deliveries: Vec<Delivery>,
    /// Why its session ended for good before the run did (a resume that failed), if it did.
    pub lost: Option<String>,
}

/// An acknowledged send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The channel.
    pub channel: ChannelIx,
    /// The `seq` the ack carried.
    pub seq: u64,
    /// A hash of the send's `client_msg_id`.
    pub msg: u32,
}

/// What kind of promise was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A seq received again.
    Duplicate,
    /// A seq received after a higher one.
    OutOfOrder,
    /// A seq in the client's window never received, and nobody had it acknowledged.
    Gap,
    /// An acknowledged seq in the client's window never received.
    Missing,
    /// Two clients (or a client and the ack) saw different messages at one seq: the members'
    /// orders differ.
    Conflict,
    /// A seq from before the client's boot point, which it should never have been sent.
    BeforeBoot,
    /// The client's session ended for good (it could not resume).
    SessionLost,
}

/// One broken promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// What went wrong.
    pub kind: Kind,
    /// The channel (its index until the runner names it).
    pub channel: String,
    /// The seq concerned (0 for a lost session).
    pub seq: u64,
    /// The client (its index until the runner names it).
    pub client: String,
    /// Anything else worth knowing.
    pub detail: String,
}

/// The checker's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Channels with at least one member checked.
    pub channels_checked: usize,
    /// Clients checked.
    pub clients_checked: usize,
    /// Every violation found, up to `cap`.
    pub violations: Vec<Violation>,
    /// How many there were in all.
    pub violation_count: u64,
}

impl Verdict {
    fn push(&mut self, cap: usize, v: Violation) {
        self.violation_count += 1;
        if self.violations.len() < cap {
            self.violations.push(v);
        }
    }

    /// One violation standing for `n` messages.
    fn push_many(&mut self, cap: usize, n: u64, v: Violation) {
        self.push(cap, v);
        self.violation_count += n.saturating_sub(1);
    }

    /// Whether the promise held.
    pub fn passed(&self) -> bool {
        self.violation_count == 0
    }
}

/// Checks every client's log against the acks; keeps the first `cap` violations in detail.
/// Channel and client names in violations are their indexes (`channel` as in the logs,
/// `client` as the position in `clients`).
pub fn check(clients: &[ClientLog], acks: &[Ack], cap: usize) -> Verdict {
    let mut verdict = Verdict { clients_checked: clients.len(), ..Verdict::default() };
    // The message at each (channel, seq): first from the acks, then from whoever saw it first.
    let mut at: HashMap<(ChannelIx, u64), (u32, String)> = HashMap::new();
    let mut highest_acked: HashMap<ChannelIx, u64> = HashMap::new();
    for a in acks {
        let key = (a.channel, a.seq);
        match at.get(&key) {
            Some((msg, _)) if *msg != a.msg => verdict.push(
                cap,
                Violation {
                    kind: Kind::Conflict,
                    channel: a.channel.to_string(),
                    seq: a.seq,
                    client: "acks".into(),
                    detail: "two sends were acknowledged with the same seq".into(),
                },
            ),
            Some(_) => {}
            None => {
                at.insert(key, (a.msg, "the sender's ack".into()));
            }
        }
        let h = highest_acked.entry(a.channel).or_default();
        *h = (*h).max(a.seq);
    }
    let acked: std::collections::HashSet<(ChannelIx, u64)> = acks.iter().map(|a| (a.channel, a.seq)).collect();
    let mut channels = std::collections::HashSet::new();
    for (ix, log) in clients.iter().enumerate() {
        let client = ix.to_string();
        if let Some(why) = &log.lost {
            verdict.push(
                cap,
                Violation {
                    kind: Kind::SessionLost,
                    channel: String::new(),
                    seq: 0,
                    client: client.clone(),
                    detail: why.clone(),
                },
            );
        }
        let mut per_channel: HashMap<ChannelIx, Vec<Delivery>> = HashMap::new();
        for d in &log.deliveries {
            per_channel.entry(d.channel).or_default().push(*d);
        }
        for &(channel, boot_seq) in &log.channels {
            channels.insert(channel);
            let got = per_channel.remove(&channel).unwrap_or_default();
            let mut v = |kind, seq, detail: String| {
                verdict.push(cap, Violation { kind, channel: channel.to_string(), seq, client: client.clone(), detail })
            };
            // Seqs received, kept sorted: in a healthy stream every seq is above the last, so
            // this is a push per delivery and the search below is for the rare late one.
            let mut seen: Vec<u64> = Vec::with_capacity(got.len());
            for d in &got {
                if d.seq <= boot_seq {
                    v(Kind::BeforeBoot, d.seq, format!("the client booted at seq {boot_seq}"));
                    continue;
                }
                match seen.last() {
                    Some(&last) if d.seq <= last => match seen.binary_search(&d.seq) {
                        Ok(_) => {
                            v(Kind::Duplicate, d.seq, String::new());
                            continue;
                        }
                        Err(pos) => {
                            v(Kind::OutOfOrder, d.seq, format!("received after seq {last}"));
                            seen.insert(pos, d.seq);
                        }
                    },
                    _ => seen.push(d.seq),
                }
                match at.get(&(channel, d.seq)) {
                    Some((msg, from)) if *msg != d.msg => {
                        v(Kind::Conflict, d.seq, format!("a different message than {from} had at this seq"))
                    }
                    Some(_) => {}
                    None => {
                        at.insert((channel, d.seq), (d.msg, format!("client {client}")));
                    }
                }
            }
            if log.lost.is_some() {
                continue; // what it missed after it was lost is already one violation
            }
            // Runs of consecutive seqs never received: one violation per run (kind `missing` if
            // any of it was acknowledged), counting every message in it.
            let end = highest_acked.get(&channel).copied().unwrap_or(0);
            let mut next = seen.iter().peekable();
            let mut run: Option<(u64, u64, bool)> = None;
            for seq in boot_seq + 1..=end + 1 {
                while next.next_if(|&&s| s < seq).is_some() {}
                let absent = seq <= end && next.next_if_eq(&&seq).is_none();
                if absent {
                    let was_acked = acked.contains(&(channel, seq));
                    run = Some(match run {
                        Some((first, _, a)) => (first, seq, a || was_acked),
                        None => (seq, seq, was_acked),
                    });
                } else if let Some((first, last, any_acked)) = run.take() {
                    let n = last - first + 1;
                    let (kind, what) = if any_acked {
                        (Kind::Missing, "acknowledged but never delivered")
                    } else {
                        (Kind::Gap, "never delivered, though later seqs were acknowledged")
                    };
                    let detail = if n == 1 { what.to_string() } else { format!("seqs {first}..={last}: {what}") };
                    verdict.push_many(
                        cap,
                        n,
                        Violation { kind, channel: channel.to_string(), seq: first, client: client.clone(), detail },
                    );
                }
            }
        }
        for (channel, got) in per_channel {
            if let Some(d) = got.first() {
                verdict.push(
                    cap,
                    Violation {
                        kind: Kind::BeforeBoot,
                        channel: channel.to_string(),
                        seq: d.seq,
                        client: client.clone(),
                        detail: "a message in a channel the client's hello did not list".into(),
                    },
                );
            }
        }
    }
    verdict.channels_checked = channels.len();
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(channel: ChannelIx, seq: u64) -> Delivery {
        Delivery { channel, seq, msg: seq as u32 * 100 + channel }
    }

    fn ack(channel: ChannelIx, seq: u64) -> Ack {
        Ack { channel, seq, msg: seq as u32 * 100 + channel }
    }

    fn log(channels: &[(ChannelIx, u64)], seqs: &[(ChannelIx, u64)]) -> ClientLog {
        ClientLog { channels: channels.to_vec(), deliveries: seqs.iter().map(|&(c, s)| d(c, s)).collect(), lost: None }
    }

    fn kinds(v: &Verdict) -> Vec<(Kind, u64)> {
        v.violations.iter().map(|v| (v.kind, v.seq)).collect()
    }

    #[test]
    fn complete_histories_pass() {
        let acks: Vec<_> = (1..=4).map(|s| ack(0, s)).chain([ack(1, 1)]).collect();
        let clients = vec![
            log(&[(0, 0), (1, 0)], &[(0, 1), (1, 1), (0, 2), (0, 3), (0, 4)]),
            // Booted after seq 2: owes 3 and 4 only; an unacked 5 that arrived is fine.
            log(&[(0, 2)], &[(0, 3), (0, 4), (0, 5)]),
        ];
        let v = check(&clients, &acks, 100);
        assert!(v.passed(), "{v:?}");
        assert_eq!((v.channels_checked, v.clients_checked), (2, 2));
    }

    #[test]
    fn each_broken_promise_is_named_with_channel_seq_and_client() {
        let acks: Vec<_> = (1..=5).map(|s| ack(0, s)).collect();
        let clients = vec![
            log(&[(0, 0)], &[(0, 1), (0, 2), (0, 2), (0, 4), (0, 3), (0, 5)]),
            log(&[(0, 0)], &[(0, 1), (0, 2), (0, 5)]),
            log(&[(0, 3)], &[(0, 1), (0, 4), (0, 5)]),
        ];
        let v = check(&clients, &acks, 100);
        assert_eq!(
            kinds(&v),
            vec![(Kind::Duplicate, 2), (Kind::OutOfOrder, 3), (Kind::Missing, 3), (Kind::BeforeBoot, 1)]
        );
        assert_eq!(v.violations[2].detail, "seqs 3..=4: acknowledged but never delivered");
        assert_eq!(v.violation_count, 5, "the run of two missing messages counts as two");
        assert_eq!(v.violations[2].client, "1");
        assert_eq!(v.violations[2].channel, "0");
        assert!(!v.passed());
    }

    #[test]
    fn unacked_holes_are_gaps_and_different_messages_at_one_seq_are_conflicts() {
        let acks = vec![ack(0, 1), ack(0, 3)];
        let mut odd = log(&[(0, 0)], &[(0, 1), (0, 3)]);
        odd.deliveries[1].msg = 999;
        let clients = vec![log(&[(0, 0)], &[(0, 1), (0, 2), (0, 3)]), odd];
        let v = check(&clients, &acks, 100);
        assert_eq!(kinds(&v), vec![(Kind::Conflict, 3), (Kind::Gap, 2)]);
    }

    #[test]
    fn corrupted_recordings_fail_the_check() {
        // A passing run, then the same recordings with one delivery dropped, one repeated and
        // two swapped: each corruption alone must fail it.
        let acks: Vec<_> = (1..=50).map(|s| ack(7, s)).collect();
        let good: Vec<_> = (0..4).map(|_| log(&[(7, 0)], &(1..=50).map(|s| (7, s)).collect::<Vec<_>>())).collect();
        assert!(check(&good, &acks, 100).passed());
        let mut dropped = good.clone();
        dropped[2].deliveries.remove(20);
        assert_eq!(kinds(&check(&dropped, &acks, 100)), vec![(Kind::Missing, 21)]);
        let mut repeated = good.clone();
        let again = repeated[1].deliveries[10];
        repeated[1].deliveries.push(again);
        assert_eq!(kinds(&check(&repeated, &acks, 100)), vec![(Kind::Duplicate, 11)]);
        let mut swapped = good.clone();
        swapped[3].deliveries.swap(5, 6);
        assert_eq!(kinds(&check(&swapped, &acks, 100)), vec![(Kind::OutOfOrder, 6)]);
        let mut lost = good;
        lost[0].lost = Some("resume refused".into());
        lost[0].deliveries.truncate(10);
        assert_eq!(kinds(&check(&lost, &acks, 100)), vec![(Kind::SessionLost, 0)]);
    }

    #[test]
    fn a_recorded_delivery_is_sixteen_bytes() {
        // Every client keeps one per message it receives: millions per run.
        assert_eq!(std::mem::size_of::<Delivery>(), 16);
    }

    #[test]
    fn violations_are_capped_but_all_counted() {
        let acks: Vec<_> = (1..=30).map(|s| ack(0, s)).collect();
        let every_other: Vec<_> = (1..=30).step_by(2).map(|s| (0, s)).collect();
        let v = check(&[log(&[(0, 0)], &every_other)], &acks, 5);
        assert_eq!(v.violations.len(), 5);
        assert_eq!(v.violation_count, 15);
        let v = check(&[log(&[(0, 0)], &[])], &acks, 5);
        assert_eq!((v.violations.len(), v.violation_count), (1, 30), "one run of 30 missing messages");
    }
}
