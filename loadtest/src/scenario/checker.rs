//! The checker: from what every simulated client received and what every sender had
//! acknowledged, decides whether the deployment kept its promise (ARCHITECTURE §2 ordering, §3
//! resume): per channel one order for all members, no gaps in `seq`, no duplicates, and every
//! acknowledged message delivered to every member that was connected or resumed. When the
//! scenario changed messages (edits, deletes, reactions), it also holds every client's view of
//! each message against the origin's final history: after the change events it received, a
//! client must see every message of its window as the origin finally shows it.
//!
//! Pure functions over recorded data, so they can be tested with crafted inputs. Membership
//! is fixed once the workspace is seeded, so a client's window in a channel is simply from
//! the channel's `last_seq` in its first `hello` to the highest acknowledged `seq`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use selvage_shared::{Event, Message};
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
    /// For every message of its channels that a change event (`message_changed`,
    /// `message_deleted`, `reaction_added`, `reaction_removed`) reached it for: the state those
    /// events leave, folded in the order received ([`MessageState::fold`]).
    pub changes: HashMap<(ChannelIx, u64), MessageState>,
    /// Why its session ended for good before the run did (a resume that failed), if it did.
    pub lost: Option<String>,
}

/// What a message looks like after its changes, as far as the checker compares it: a client
/// folds it from the change events it received, the runner reads it from the origin's final
/// history. A message nobody changed is [`MessageState::POSTED`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageState {
    /// A tombstone.
    pub deleted: bool,
    /// Edited at least once (`edited_at` is set; a tombstone keeps it).
    pub edited: bool,
    /// A hash of the text once it is no longer the text as posted (edited or deleted); 0 while
    /// it is.
    pub text: u64,
    /// Reactions as (emoji, count), sorted by emoji.
    pub reactions: Vec<(String, u32)>,
}

impl MessageState {
    /// A message as posted: never edited, deleted or reacted to.
    pub const POSTED: MessageState = MessageState { deleted: false, edited: false, text: 0, reactions: Vec::new() };

    /// The state a whole message shows (the one in `message_changed`, or one read from history).
    pub fn of(m: &Message) -> MessageState {
        let edited = m.edited_at.is_some();
        let text = if edited || m.deleted { text_hash(&m.text) } else { 0 };
        let mut reactions: Vec<(String, u32)> =
            m.reactions.iter().filter(|r| r.count > 0).map(|r| (r.emoji.clone(), r.count)).collect();
        reactions.sort_unstable();
        MessageState { deleted: m.deleted, edited, text, reactions }
    }

    /// Whether the message reads as posted.
    pub fn is_posted(&self) -> bool {
        *self == MessageState::POSTED
    }

    /// Folds in one change event for this message; other events change nothing. A
    /// `message_changed` carries the whole new state; a delete leaves the tombstone
    /// [`Message::make_tombstone`] does; a reaction event moves one emoji's count by one (the
    /// origin logs one only when something changed, so a repeated event shows as a wrong count).
    pub fn fold(&mut self, event: &Event) {
        match event {
            Event::MessageChanged { message, .. } => *self = MessageState::of(message),
            Event::MessageDeleted { .. } => {
                self.deleted = true;
                self.text = text_hash("");
                self.reactions.clear();
            }
            Event::ReactionAdded { emoji, .. } => self.react(emoji, true),
            Event::ReactionRemoved { emoji, .. } => self.react(emoji, false),
            _ => {}
        }
    }

    fn react(&mut self, emoji: &str, add: bool) {
        match (self.reactions.binary_search_by(|(e, _)| e.as_str().cmp(emoji)), add) {
            (Ok(i), true) => self.reactions[i].1 += 1,
            (Err(i), true) => self.reactions.insert(i, (emoji.to_string(), 1)),
            (Ok(i), false) => {
                self.reactions[i].1 -= 1;
                if self.reactions[i].1 == 0 {
                    self.reactions.remove(i);
                }
            }
            (Err(_), false) => {}
        }
    }

    /// How this state (a client's) differs from `origin`'s, in words.
    pub fn difference(&self, origin: &MessageState) -> String {
        let mut out = Vec::new();
        let here_not_there = |here: bool, what: &str| {
            if here {
                format!("{what} here, not at the origin")
            } else {
                format!("{what} at the origin, not here")
            }
        };
        if self.deleted != origin.deleted {
            out.push(here_not_there(self.deleted, "deleted"));
        }
        if self.edited != origin.edited {
            out.push(here_not_there(self.edited, "edited"));
        }
        if self.text != origin.text && self.deleted == origin.deleted {
            out.push("a different text than the origin's".to_string());
        }
        if self.reactions != origin.reactions {
            let list = |r: &[(String, u32)]| {
                if r.is_empty() {
                    "none".to_string()
                } else {
                    r.iter().map(|(e, n)| format!("{e}×{n}")).collect::<Vec<_>>().join(" ")
                }
            };
            out.push(format!("reactions {} here, {} at the origin", list(&self.reactions), list(&origin.reactions)));
        }
        out.join("; ")
    }
}

/// The message a change event is about: its channel's id and its `seq`.
pub fn changed_message(event: &Event) -> Option<(&selvage_shared::ChannelId, u64)> {
    match event {
        Event::MessageChanged { channel, seq, .. }
        | Event::MessageDeleted { channel, seq }
        | Event::ReactionAdded { channel, seq, .. }
        | Event::ReactionRemoved { channel, seq, .. } => Some((channel, *seq)),
        _ => None,
    }
}

/// A stable (within a run) hash of a message's text.
fn text_hash(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// The origin's final state of every message it shows changed, by channel and seq; a message
/// left out reads as posted.
pub type Finals = HashMap<(ChannelIx, u64), MessageState>;

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
    /// A message in the client's window that, after every change event the client received,
    /// does not look as the origin's final history shows it (deleted, edited, text, reaction
    /// counts): a change event missed, repeated or applied out of order — or a change record
    /// for a message the origin shows as posted.
    StaleState,
    /// An acknowledged send the origin's history does not hold at its seq, or holds another
    /// message there: an acknowledged message lost (checked with `--check-stored`).
    NotStored,
}

/// What the origin's history holds: (channel, seq) → the hash of the message's `client_msg_id`.
pub type Stored = HashMap<(ChannelIx, u64), u32>;

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
    /// Whether the clients' views of changed messages were held against the origin's final
    /// history (only when the runner read it).
    pub states_checked: bool,
    /// Messages the origin's final history shows changed (edited, deleted or reacted to).
    pub changed_messages: usize,
    /// Whether every acknowledged send was looked for in the origin's history
    /// ([`Verdict::check_stored`]).
    pub stored_checked: bool,
}

impl Verdict {
    /// Holds every ack against what the origin's history holds (read after the run): each
    /// acknowledged send must be there, at the seq its ack carried.
    pub fn check_stored(&mut self, acks: &[Ack], stored: &Stored, cap: usize) {
        self.stored_checked = true;
        for a in acks {
            let detail = match stored.get(&(a.channel, a.seq)) {
                Some(msg) if *msg == a.msg => continue,
                Some(_) => "the origin's history holds another message at the acknowledged seq",
                None => "acknowledged, but the origin's history does not hold it",
            };
            let v = Violation {
                kind: Kind::NotStored,
                channel: a.channel.to_string(),
                seq: a.seq,
                client: "acks".into(),
                detail: detail.into(),
            };
            self.push(cap, v);
        }
    }

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

/// Checks every client's log against the acks and, given the origin's `finals`, every client's
/// view of the messages in its windows against them; keeps the first `cap` violations in
/// detail. Channel and client names in violations are their indexes (`channel` as in the logs,
/// `client` as the position in `clients`).
pub fn check(clients: &[ClientLog], acks: &[Ack], finals: Option<&Finals>, cap: usize) -> Verdict {
    let mut verdict = Verdict {
        clients_checked: clients.len(),
        states_checked: finals.is_some(),
        changed_messages: finals.map_or(0, HashMap::len),
        ..Verdict::default()
    };
    let changed_at_origin = by_channel(finals.into_iter().flat_map(HashMap::keys));
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
        let changed_here = by_channel(log.changes.keys());
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
            let Some(finals) = finals else { continue };
            // Every message of the window changed at the origin or here must look the same in
            // both; one never received is a violation of its own already.
            let mut seqs: Vec<u64> = [&changed_at_origin, &changed_here]
                .into_iter()
                .filter_map(|index| index.get(&channel))
                .flatten()
                .copied()
                .filter(|&seq| seq > boot_seq && seq <= end && seen.binary_search(&seq).is_ok())
                .collect();
            seqs.sort_unstable();
            seqs.dedup();
            let posted = MessageState::POSTED;
            for seq in seqs {
                let origin = finals.get(&(channel, seq)).unwrap_or(&posted);
                let here = log.changes.get(&(channel, seq)).unwrap_or(&posted);
                if here != origin {
                    verdict.push(
                        cap,
                        Violation {
                            kind: Kind::StaleState,
                            channel: channel.to_string(),
                            seq,
                            client: client.clone(),
                            detail: here.difference(origin),
                        },
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

/// The seqs of (channel, seq) keys, by channel.
fn by_channel<'a>(keys: impl Iterator<Item = &'a (ChannelIx, u64)>) -> HashMap<ChannelIx, Vec<u64>> {
    let mut out: HashMap<ChannelIx, Vec<u64>> = HashMap::new();
    for &(channel, seq) in keys {
        out.entry(channel).or_default().push(seq);
    }
    out
}

#[cfg(test)]
mod tests {
    use selvage_shared::{ChannelId, UserId};

    use super::*;

    fn d(channel: ChannelIx, seq: u64) -> Delivery {
        Delivery { channel, seq, msg: seq as u32 * 100 + channel }
    }

    fn ack(channel: ChannelIx, seq: u64) -> Ack {
        Ack { channel, seq, msg: seq as u32 * 100 + channel }
    }

    fn log(channels: &[(ChannelIx, u64)], seqs: &[(ChannelIx, u64)]) -> ClientLog {
        ClientLog {
            channels: channels.to_vec(),
            deliveries: seqs.iter().map(|&(c, s)| d(c, s)).collect(),
            ..ClientLog::default()
        }
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
        let v = check(&clients, &acks, None, 100);
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
        let v = check(&clients, &acks, None, 100);
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
        let v = check(&clients, &acks, None, 100);
        assert_eq!(kinds(&v), vec![(Kind::Conflict, 3), (Kind::Gap, 2)]);
    }

    #[test]
    fn corrupted_recordings_fail_the_check() {
        // A passing run, then the same recordings with one delivery dropped, one repeated and
        // two swapped: each corruption alone must fail it.
        let acks: Vec<_> = (1..=50).map(|s| ack(7, s)).collect();
        let good: Vec<_> = (0..4).map(|_| log(&[(7, 0)], &(1..=50).map(|s| (7, s)).collect::<Vec<_>>())).collect();
        assert!(check(&good, &acks, None, 100).passed());
        let mut dropped = good.clone();
        dropped[2].deliveries.remove(20);
        assert_eq!(kinds(&check(&dropped, &acks, None, 100)), vec![(Kind::Missing, 21)]);
        let mut repeated = good.clone();
        let again = repeated[1].deliveries[10];
        repeated[1].deliveries.push(again);
        assert_eq!(kinds(&check(&repeated, &acks, None, 100)), vec![(Kind::Duplicate, 11)]);
        let mut swapped = good.clone();
        swapped[3].deliveries.swap(5, 6);
        assert_eq!(kinds(&check(&swapped, &acks, None, 100)), vec![(Kind::OutOfOrder, 6)]);
        let mut lost = good;
        lost[0].lost = Some("resume refused".into());
        lost[0].deliveries.truncate(10);
        assert_eq!(kinds(&check(&lost, &acks, None, 100)), vec![(Kind::SessionLost, 0)]);
    }

    #[test]
    fn a_recorded_delivery_is_sixteen_bytes() {
        // Every client keeps one per message it receives: millions per run.
        assert_eq!(std::mem::size_of::<Delivery>(), 16);
    }

    /// Channel 0's id in the events of the tests below.
    fn c0() -> ChannelId {
        ChannelId::new_unchecked("C0")
    }

    fn author() -> UserId {
        UserId::new_unchecked("U1")
    }

    fn edit(seq: u64, text: &str) -> Event {
        let message = Message { edited_at: Some(1_000), ..Message::new(c0(), seq, 5, author(), text) };
        Event::MessageChanged { channel: c0(), seq, message }
    }

    fn delete(seq: u64) -> Event {
        Event::MessageDeleted { channel: c0(), seq }
    }

    fn react(seq: u64, emoji: &str, add: bool) -> Event {
        let (channel, user, emoji) = (c0(), author(), emoji.to_string());
        if add {
            Event::ReactionAdded { channel, seq, user, emoji }
        } else {
            Event::ReactionRemoved { channel, seq, user, emoji }
        }
    }

    /// Folds change events in order into per-message states, as a client does.
    fn fold(events: &[Event]) -> HashMap<(ChannelIx, u64), MessageState> {
        let mut states: HashMap<(ChannelIx, u64), MessageState> = HashMap::new();
        for e in events {
            let (_, seq) = changed_message(e).unwrap();
            states.entry((0, seq)).or_default().fold(e);
        }
        states
    }

    /// Seqs 1..=6 of channel 0, all acknowledged, and these changes: 2 edited twice, 3 edited
    /// then deleted, 4 reacted to by two emoji (one twice over the run), 5 reacted to and taken
    /// back (so it reads as posted again); 1 and 6 untouched.
    fn changes() -> Vec<Event> {
        vec![
            edit(2, "first edit"),
            react(4, "r1", true),
            edit(3, "soon gone"),
            react(5, "r2", true),
            edit(2, "second edit"),
            react(4, "r3", true),
            delete(3),
            react(5, "r2", false),
        ]
    }

    /// The origin's final history after [`changes`], as the runner would read it.
    fn finals() -> Finals {
        let posted = |seq: u64| Message::new(c0(), seq, 5, author(), format!("{seq} n{seq} xxx"));
        let mut second = posted(2);
        second.text = "second edit".into();
        second.edited_at = Some(2_000);
        let mut gone = posted(3);
        gone.edited_at = Some(1_500);
        gone.make_tombstone();
        let mut reacted = posted(4);
        reacted.apply_reaction(&author(), "r3", true);
        reacted.apply_reaction(&author(), "r1", true);
        let history = [posted(1), second, gone, reacted, posted(5), posted(6)];
        history.iter().map(|m| ((0, m.seq), MessageState::of(m))).filter(|(_, state)| !state.is_posted()).collect()
    }

    fn run_with(states: &[HashMap<(ChannelIx, u64), MessageState>]) -> Verdict {
        let acks: Vec<_> = (1..=6).map(|s| ack(0, s)).collect();
        let all: Vec<(ChannelIx, u64)> = (1..=6).map(|s| (0, s)).collect();
        let clients: Vec<ClientLog> =
            states.iter().map(|changes| ClientLog { changes: changes.clone(), ..log(&[(0, 0)], &all) }).collect();
        check(&clients, &acks, Some(&finals()), 100)
    }

    fn stale(v: &Verdict) -> Vec<(u64, String, String)> {
        v.violations.iter().map(|v| (v.seq, v.client.clone(), v.detail.clone())).collect()
    }

    #[test]
    fn clients_that_saw_every_change_pass() {
        let v = run_with(&[fold(&changes()), fold(&changes())]);
        assert!(v.passed(), "{v:?}");
        assert!(v.states_checked);
        assert_eq!(v.changed_messages, 3, "seqs 2, 3 and 4; 5 reads as posted again");
        let recorded = fold(&changes());
        assert!(recorded[&(0, 5)].is_posted(), "a reaction taken back leaves the message as posted");
    }

    #[test]
    fn a_missed_edit_is_a_stale_state() {
        let mut missed = changes();
        missed.remove(4); // the second edit of seq 2
        let v = run_with(&[fold(&changes()), fold(&missed)]);
        assert_eq!(kinds(&v), vec![(Kind::StaleState, 2)]);
        assert_eq!(stale(&v), vec![(2, "1".into(), "a different text than the origin's".into())]);
        let mut never = changes();
        never.retain(|e| !matches!(e, Event::MessageChanged { seq: 2, .. }));
        let v = run_with(&[fold(&never)]);
        assert_eq!(stale(&v)[0].2, "edited at the origin, not here; a different text than the origin's");
    }

    #[test]
    fn a_missed_delete_is_a_stale_state() {
        let mut missed = changes();
        missed.retain(|e| !matches!(e, Event::MessageDeleted { .. }));
        let v = run_with(&[fold(&missed), fold(&changes())]);
        assert_eq!(stale(&v), vec![(3, "0".into(), "deleted at the origin, not here".into())]);
        assert!(!v.passed());
    }

    #[test]
    fn a_wrong_reaction_count_is_a_stale_state() {
        // The same reaction event delivered twice counts the reaction twice.
        let mut repeated = changes();
        repeated.insert(2, react(4, "r1", true));
        let v = run_with(&[fold(&changes()), fold(&repeated)]);
        assert_eq!(stale(&v), vec![(4, "1".into(), "reactions r1×2 r3×1 here, r1×1 r3×1 at the origin".into())]);
        // A missed removal leaves a reaction the origin no longer has.
        let mut kept = changes();
        kept.pop();
        let v = run_with(&[fold(&kept)]);
        assert_eq!(stale(&v), vec![(5, "0".into(), "reactions r2×1 here, none at the origin".into())]);
    }

    #[test]
    fn a_change_the_origin_does_not_show_is_a_stale_state() {
        let mut extra = changes();
        extra.push(edit(6, "an edit the origin never made"));
        let v = run_with(&[fold(&extra)]);
        assert_eq!(kinds(&v), vec![(Kind::StaleState, 6)]);
    }

    #[test]
    fn states_are_checked_only_in_the_window_and_for_messages_received() {
        let acks: Vec<_> = (1..=6).map(|s| ack(0, s)).collect();
        // Booted after seq 3 (it owes 4..=6), never got 4: one `missing`, no stale state for
        // 2, 3 (before its boot) or 4 (never received).
        let late = ClientLog { changes: fold(&changes()[5..]), ..log(&[(0, 3)], &[(0, 5), (0, 6)]) };
        let v = check(std::slice::from_ref(&late), &acks, Some(&finals()), 100);
        assert_eq!(kinds(&v), vec![(Kind::Missing, 4)]);
        // Without the origin's history nothing is said about states.
        let v = check(&[ClientLog { changes: HashMap::new(), ..late }], &acks, None, 100);
        assert!(!v.states_checked);
        assert_eq!(kinds(&v), vec![(Kind::Missing, 4)]);
    }

    #[test]
    fn violations_are_capped_but_all_counted() {
        let acks: Vec<_> = (1..=30).map(|s| ack(0, s)).collect();
        let every_other: Vec<_> = (1..=30).step_by(2).map(|s| (0, s)).collect();
        let v = check(&[log(&[(0, 0)], &every_other)], &acks, None, 5);
        assert_eq!(v.violations.len(), 5);
        assert_eq!(v.violation_count, 15);
        let v = check(&[log(&[(0, 0)], &[])], &acks, None, 5);
        assert_eq!((v.violations.len(), v.violation_count), (1, 30), "one run of 30 missing messages");
    }

    #[test]
    fn acknowledged_sends_must_be_in_the_origin_s_history_at_their_seq() {
        let acks = [
            Ack { channel: 0, seq: 1, msg: 11 },
            Ack { channel: 0, seq: 2, msg: 12 },
            Ack { channel: 1, seq: 1, msg: 21 },
        ];
        let mut all: Stored = [((0, 1), 11), ((0, 2), 12), ((1, 1), 21), ((1, 2), 22)].into_iter().collect();
        let mut v = Verdict::default();
        v.check_stored(&acks, &all, 10);
        assert!(v.passed() && v.stored_checked, "{v:?}");

        // One lost, one replaced by another message.
        all.remove(&(0, 2));
        all.insert((1, 1), 99);
        let mut v = Verdict::default();
        v.check_stored(&acks, &all, 10);
        assert_eq!(v.violation_count, 2);
        assert!(v.violations.iter().all(|x| x.kind == Kind::NotStored));
        assert_eq!(
            v.violations.iter().map(|x| (x.channel.as_str(), x.seq)).collect::<Vec<_>>(),
            vec![("0", 2), ("1", 1)]
        );
    }
}
