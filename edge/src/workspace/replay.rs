//! What a resuming client missed, answered from the buffers (ARCHITECTURE §4, resume): exactly
//! the events live fan-out sent it, with each channel's membership as it was at each event.

use std::collections::{BTreeSet, HashMap};

use selvage_shared::{ChannelId, Cursor, Event, EventFrame, UserId};

use super::state::{reply_audience, restricted};
use super::{Recipients, WorkspaceState};

/// Walking the feed backwards: before `user`'s own join they were not a member, before their
/// departure they were.
fn roll_back_membership<'a>(member: &mut HashMap<&'a ChannelId, bool>, user: &UserId, event: &'a Event) {
    match event {
        Event::MemberJoined { channel, user: subject } if subject == user => {
            member.insert(channel, false);
        }
        Event::MemberLeft { channel, user: subject } if subject == user => {
            member.insert(channel, true);
        }
        _ => {}
    }
}

impl WorkspaceState {
    /// The events after `after` that live fan-out sent `user` (see
    /// [`delivered_to`](Self::delivered_to)), in cursor order, if the buffers hold them all;
    /// `None` when they do not (older than the snapshot, or evicted): the caller asks the origin
    /// or tells the client to `resync`. Empty when `after` is at or past
    /// [`cursor`](Self::cursor).
    ///
    /// The buffers consulted are the workspace's (events for everyone), the user's own, and those
    /// of every channel the user is in now or joined or left since `after`.
    pub fn replay_after(&self, user: &UserId, after: &Cursor) -> Option<Vec<EventFrame>> {
        if *after >= self.cursor {
            return Some(Vec::new());
        }
        if !self.workspace_events.covers(after) {
            return None;
        }
        let personal = self.personal.get(user);
        if personal.is_some_and(|buffer| !buffer.covers(after)) {
            return None;
        }
        let mut channels: BTreeSet<&ChannelId> = self.channels_of(user).iter().collect();
        let mut picked: Vec<&(Cursor, Event)> = Vec::new();
        if let Some(buffer) = personal {
            for pair in buffer.after(after) {
                if let Event::MemberJoined { channel, .. } | Event::MemberLeft { channel, .. } = &pair.1 {
                    channels.insert(channel);
                }
                picked.push(pair);
            }
        }
        for id in channels {
            // A channel the state does not know has only the user's own joins and departures,
            // which their personal buffer holds.
            let Some(entry) = self.channels.get(id) else { continue };
            if !entry.events.covers(after) {
                return None;
            }
            picked.extend(entry.events.after(after));
        }
        picked.extend(self.workspace_events.after(after));
        // An event can sit in several buffers (a user's own join in theirs and the channel's).
        picked.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        picked.dedup_by(|a, b| a.0 == b.0);
        let events: Vec<&Event> = picked.iter().map(|(_, event)| event).collect();
        let keep = self.delivered_to(user, &events, &self.cursor);
        Some(
            picked
                .into_iter()
                .zip(keep)
                .filter(|(_, keep)| *keep)
                .map(|((cursor, event), _)| EventFrame { event: event.clone(), cursor: cursor.clone() })
                .collect(),
        )
    }

    /// Which of `events` — consecutive feed events in cursor order, the last at or before
    /// `upto` — live fan-out sent (or would have sent) to `user`: the rule of
    /// [`apply`](Self::apply), with each channel's membership *as it was* at each event.
    ///
    /// Membership at an event is found by walking back from `upto`: the user's membership now,
    /// rolled back to `upto` through their own joins and departures since (from their personal
    /// buffer), then, going back through `events`, the opposite of what each of their own joins
    /// and departures made it (the origin never logs a join of a member or a departure of a
    /// non-member). Resume thus replays exactly what a session that never left would have got.
    pub fn delivered_to(&self, user: &UserId, events: &[&Event], upto: &Cursor) -> Vec<bool> {
        let mut member: HashMap<&ChannelId, bool> = HashMap::new();
        if *upto < self.cursor {
            if let Some(buffer) = self.personal.get(user).filter(|buffer| buffer.covers(upto)) {
                let since: Vec<&(Cursor, Event)> = buffer.after(upto).collect();
                for (_, event) in since.into_iter().rev() {
                    roll_back_membership(&mut member, user, event);
                }
            }
        }
        let mut out = vec![false; events.len()];
        for (i, event) in events.iter().enumerate().rev() {
            out[i] = match event {
                event if event.is_internal() || event.is_ephemeral() => false,
                Event::ReadMarker { user: owner, .. } => owner == user,
                Event::MemberJoined { user: subject, .. } | Event::MemberLeft { user: subject, .. }
                    if subject == user =>
                {
                    true
                }
                Event::UserUpdated { .. } => true,
                Event::ChannelCreated { channel } | Event::ChannelUpdated { channel } if !restricted(channel) => true,
                Event::Message(message) => {
                    let is_member =
                        *member.entry(&message.channel).or_insert_with(|| self.is_member(&message.channel, user));
                    is_member && reply_audience(message).is_none_or(|audience| audience.contains(user))
                }
                event => match event.channel() {
                    None => true,
                    Some(channel) => *member.entry(channel).or_insert_with(|| self.is_member(channel, user)),
                },
            };
            roll_back_membership(&mut member, user, event);
        }
        out
    }

    /// Whether `user` is among `recipients` (of the event applied last).
    pub fn receives(&self, recipients: &Recipients, user: &UserId) -> bool {
        match recipients {
            Recipients::Nobody => false,
            Recipients::User(u) => u == user,
            Recipients::Members(channel) => self.is_member(channel, user),
            Recipients::MembersAnd(channel, extra) => extra == user || self.is_member(channel, user),
            Recipients::Followers(channel, followers) => followers.contains(user) && self.is_member(channel, user),
            Recipients::Everyone => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use selvage_shared::{ChannelKind, ErrorCode, FeedItem, Message, Query, QueryKind, Seq, User};

    use super::super::fixtures::*;
    use super::super::{CacheLimits, QueryAnswer};
    use super::*;

    #[test]
    fn internal_events_and_other_users_markers_are_never_delivered() {
        let s = state();
        let revoked = Event::TokenRevoked { token_hash: "ab".into() };
        let marker = Event::ReadMarker { channel: cid("C1"), user: uid("U2"), seq: 1 };
        // Someone else joining a private channel is as invisible as the channel.
        let joined = Event::MemberJoined { channel: cid("C2"), user: uid("U4") };
        let renamed = Event::UserUpdated { user: user("U1") };
        let public = Event::ChannelUpdated { channel: chan("C3", ChannelKind::Channel, false) };
        let in_public = Event::Message(msg("C3", 1, "U2"));
        let events = [&revoked, &marker, &joined, &renamed, &public, &in_public];
        let upto = s.cursor().clone();
        assert_eq!(s.delivered_to(&uid("U1"), &events, &upto), [false, false, true, true, true, false]);
        assert_eq!(s.delivered_to(&uid("U2"), &events, &upto), [false, true, true, true, true, true]);
        assert_eq!(s.delivered_to(&uid("U3"), &events, &upto), [false, false, false, true, true, false]);
        assert_eq!(s.delivered_to(&uid("U4"), &events, &upto), [false, false, true, true, true, false]);
    }

    #[test]
    fn replay_follows_membership_as_it_was_at_each_event() {
        let mut s = state();
        let u3 = uid("U3");
        let in_c2 = |seq| Event::Message(msg("C2", seq, "U1"));
        s.apply(&item(101, in_c2(4))).expect("applied");
        s.apply(&item(102, Event::MemberJoined { channel: cid("C2"), user: u3.clone() })).expect("applied");
        s.apply(&item(103, in_c2(5))).expect("applied");
        s.apply(&item(104, Event::MemberLeft { channel: cid("C2"), user: u3.clone() })).expect("applied");
        s.apply(&item(105, in_c2(6))).expect("applied");
        let replayed = |after| s.replay_after(&u3, &cur(after)).map(|frames| frame_cursors(&frames));
        assert_eq!(replayed(100), Some(vec![cur(102), cur(103), cur(104)]));
        assert_eq!(replayed(102), Some(vec![cur(103), cur(104)]));
        assert_eq!(replayed(104), Some(vec![]));
        // Events read from the origin up to an earlier point: membership is rolled back to it.
        let five = in_c2(5);
        assert_eq!(s.delivered_to(&u3, &[&five], &cur(103)), [true]);
        assert_eq!(s.delivered_to(&u3, &[&five], &cur(105)), [false], "past their departure");
    }

    #[test]
    fn replay_is_exact_while_covered_and_none_once_evicted() {
        let limits =
            CacheLimits { recent_events_per_channel: 3, recent_workspace_events: 2, recent_events_per_user: 16 };
        let mut s = state_with(limits);
        let events = [
            Event::Message(msg("C1", 11, "U1")),
            Event::Message(msg("C2", 4, "U2")),
            Event::UserUpdated { user: user("U4") },
            Event::Message(msg("C1", 12, "U1")),
            Event::Message(msg("D2", 1, "U2")),
            Event::Message(msg("C1", 13, "U1")),
        ];
        for (n, e) in (101..).zip(events.iter()) {
            s.apply(&item(n, e.clone())).expect("applied");
        }
        let frames = |ns: &[u64]| -> Vec<EventFrame> {
            ns.iter().map(|&n| EventFrame { event: events[(n - 101) as usize].clone(), cursor: cur(n) }).collect()
        };
        assert_eq!(s.replay_after(&uid("U1"), &cur(100)), Some(frames(&[101, 102, 103, 104, 106])));
        assert_eq!(s.replay_after(&uid("U1"), &cur(103)), Some(frames(&[104, 106])));
        assert_eq!(s.replay_after(&uid("U3"), &cur(100)), Some(frames(&[101, 103, 104, 105, 106])));
        assert_eq!(s.replay_after(&uid("U1"), &cur(106)), Some(Vec::new()));
        assert_eq!(s.replay_after(&uid("U1"), &cur(900)), Some(Vec::new()));
        assert_eq!(s.replay_after(&uid("U1"), &cur(99)), None, "before the snapshot");
        // C1 now evicts 101: whoever can see C1 cannot replay from before 101 any more.
        s.apply(&item(107, Event::Message(msg("C1", 14, "U1")))).expect("applied");
        assert_eq!(s.replay_after(&uid("U1"), &cur(100)), None);
        // U4 is not in C1, so its eviction does not matter to them.
        assert_eq!(s.replay_after(&uid("U4"), &cur(100)), Some(frames(&[103])));
        assert_eq!(
            s.replay_after(&uid("U1"), &cur(101)).map(|r| frame_cursors(&r)),
            Some(vec![cur(102), cur(103), cur(104), cur(106), cur(107)])
        );
        // A busy private channel does not hurt those who cannot see it.
        for (n, seq) in (108..).zip(5..=9) {
            s.apply(&item(n, Event::Message(msg("C2", seq, "U1")))).expect("applied");
        }
        assert_eq!(s.replay_after(&uid("U1"), &cur(101)), None);
        assert_eq!(
            s.replay_after(&uid("U3"), &cur(104)).map(|r| frame_cursors(&r)),
            Some(vec![cur(105), cur(106), cur(107)])
        );
        // The workspace buffer (2 events) evicts too: 103 goes.
        assert!(s.replay_after(&uid("U3"), &cur(102)).is_some());
        s.apply(&item(113, Event::UserUpdated { user: user("U1") })).expect("applied");
        s.apply(&item(114, Event::UserUpdated { user: user("U2") })).expect("applied");
        assert_eq!(s.replay_after(&uid("U3"), &cur(102)), None);
        let tail = s.replay_after(&uid("U3"), &cur(103)).map(|r| frame_cursors(&r));
        assert_eq!(tail, Some(vec![cur(104), cur(105), cur(106), cur(107), cur(113), cur(114)]));
        check_invariants(&s);
    }

    #[test]
    fn replay_includes_own_departure_from_a_private_channel() {
        let limits = CacheLimits { recent_events_per_user: 2, ..CacheLimits::default() };
        let mut s = state_with(limits);
        s.apply(&item(101, Event::Message(msg("C2", 4, "U1")))).expect("applied");
        s.apply(&item(102, Event::ReadMarker { channel: cid("C2"), user: uid("U2"), seq: 4 })).expect("applied");
        s.apply(&item(103, Event::MemberLeft { channel: cid("C2"), user: uid("U2") })).expect("applied");
        s.apply(&item(104, Event::Message(msg("C2", 5, "U1")))).expect("applied");
        let replay = s.replay_after(&uid("U2"), &cur(100)).expect("covered");
        // The message came while U2 was still a member; the one after their departure did not.
        let kinds: Vec<&str> = replay.iter().map(|f| f.event.kind()).collect();
        assert_eq!(kinds, ["message", "read_marker", "member_left"]);
        assert_eq!(frame_cursors(&replay), [cur(101), cur(102), cur(103)]);
        // U1 sees the departure once, though it sits in two buffers.
        let replay = s.replay_after(&uid("U1"), &cur(100)).expect("covered");
        assert_eq!(frame_cursors(&replay), [cur(101), cur(103), cur(104)]);
        // U2's own buffer holds 2 events: a third evicts 102.
        s.apply(&item(105, Event::ReadMarker { channel: cid("C1"), user: uid("U2"), seq: 1 })).expect("applied");
        assert_eq!(s.replay_after(&uid("U2"), &cur(101)), None);
        assert_eq!(s.replay_after(&uid("U2"), &cur(102)).map(|r| frame_cursors(&r)), Some(vec![cur(103), cur(105)]));
        check_invariants(&s);
    }

    /// Interprets generated numbers as feed events against the current state, so every event
    /// is meaningful (posts in order, joins of existing users...).
    fn event_for(
        s: &WorkspaceState,
        op: (u8, usize, usize, u64),
        channels: &[ChannelId],
        seq_of: &mut HashMap<ChannelId, Seq>,
        fresh: &mut usize,
    ) -> Event {
        let (kind, a, b, n) = op;
        let users = ["U1", "U2", "U3", "U4"];
        let u = uid(users[b % users.len()]);
        let c = channels[a % channels.len()].clone();
        match kind % 10 {
            // Like the origin: a join only of a non-member, a departure only of a member.
            0..=2 if s.is_member(&c, &u) => Event::MemberLeft { channel: c, user: u },
            0..=2 => Event::MemberJoined { channel: c, user: u },
            3 | 4 => {
                let seq = seq_of.entry(c.clone()).or_insert(0);
                *seq += 1;
                Event::Message(Message { channel: c.clone(), ..msg(c.as_str(), *seq, u.as_str()) })
            }
            5 => Event::ReadMarker { channel: c, user: u, seq: n % 8 },
            6 => Event::UserUpdated { user: User { name: format!("renamed {n}"), ..user(u.as_str()) } },
            7 => {
                let mut channel =
                    s.channel(&c).cloned().unwrap_or_else(|| chan(c.as_str(), ChannelKind::Channel, false));
                if channel.kind == ChannelKind::Channel {
                    channel.private = n % 2 == 0;
                }
                Event::ChannelUpdated { channel }
            }
            8 => {
                let seq = seq_of.get(&c).copied().unwrap_or(0);
                if n % 2 == 0 {
                    Event::MessageDeleted { channel: c, seq: seq.saturating_sub(n % 3) }
                } else {
                    Event::ReactionAdded { channel: c, seq, user: u, emoji: "ok".into() }
                }
            }
            _ => {
                *fresh += 1;
                Event::ChannelCreated { channel: chan(&format!("N{fresh}"), ChannelKind::Channel, n % 2 == 0) }
            }
        }
    }

    fn limits_strategy() -> impl Strategy<Value = CacheLimits> {
        prop_oneof![
            Just(CacheLimits {
                recent_events_per_channel: 10_000,
                recent_workspace_events: 10_000,
                recent_events_per_user: 10_000
            }),
            (0usize..5, 0usize..5, 0usize..5).prop_map(|(c, w, u)| CacheLimits {
                recent_events_per_channel: c,
                recent_workspace_events: w,
                recent_events_per_user: u,
            }),
        ]
    }

    /// The users the property test follows (U9 is in no snapshot).
    const WHO: [&str; 5] = ["U1", "U2", "U3", "U4", "U9"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// After any sequence of membership, message and other events, a replay from any earlier
        /// cursor is either refused or exactly the events live fan-out sent the user after it,
        /// in order; with buffers large enough it is never refused. History pages answered from the cache
        /// equal the messages as applied.
        #[test]
        fn replay_equals_what_live_fan_out_sent(
            limits in limits_strategy(),
            ops in prop::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), any::<u64>()), 0..60),
        ) {
            let unbounded = limits.recent_events_per_channel == 10_000;
            let mut base = snapshot();
            // All channels start empty, so the message buffers can hold all of history.
            for cs in &mut base.channels {
                cs.last_seq = 0;
            }
            let mut s = WorkspaceState::from_snapshot(base, limits);
            let mut channels: Vec<ChannelId> = ["C1", "C2", "C3", "D1", "G1", "D2"].into_iter().map(cid).collect();
            let mut seq_of = HashMap::new();
            let mut fresh = 0;
            let mut applied: Vec<(Cursor, Event, Vec<UserId>)> = Vec::new();
            let mut history: HashMap<ChannelId, Vec<Message>> = HashMap::new();
            for (i, op) in ops.into_iter().enumerate() {
                let mut events = vec![event_for(&s, op, &channels, &mut seq_of, &mut fresh)];
                // Some messages are thread replies to their channel's first message: the origin
                // logs the root's new summary, naming the thread's followers, right before each.
                if let Event::Message(m) = &mut events[0] {
                    if m.seq > 1 && op.3 % 3 == 0 {
                        m.thread_root = Some(1);
                        let followers: Vec<UserId> =
                            WHO.iter().enumerate().filter(|(k, _)| op.3 >> (k + 2) & 1 == 1).map(|(_, w)| uid(w)).collect();
                        m.thread_followers = followers.clone();
                        let root = Message {
                            latest_reply_seq: Some(m.seq),
                            reply_count: 1,
                            thread_followers: followers,
                            ..msg(m.channel.as_str(), 1, "U1")
                        };
                        let changed = Event::MessageChanged { channel: m.channel.clone(), seq: 1, message: root };
                        events.insert(0, changed);
                    }
                }
                for event in events {
                let cursor = cur(101 + applied.len() as u64);
                if let Event::ChannelCreated { channel } = &event {
                    channels.push(channel.id.clone());
                }
                match &event {
                    Event::Message(m) => history.entry(m.channel.clone()).or_default().push(m.clone()),
                    Event::MessageChanged { channel, seq, message } => {
                        if let Some(m) = history.get_mut(channel).and_then(|h| h.iter_mut().find(|m| m.seq == *seq)) {
                            *m = Message { seq: *seq, channel: channel.clone(), ..message.clone() };
                        }
                    }
                    Event::MessageDeleted { channel, seq } => {
                        if let Some(m) = history.get_mut(channel).and_then(|h| h.iter_mut().find(|m| m.seq == *seq)) {
                            m.deleted = true;
                            m.text.clear();
                            m.reactions.clear();
                        }
                    }
                    Event::ReactionAdded { channel, seq, user, emoji } => {
                        if let Some(m) = history.get_mut(channel).and_then(|h| h.iter_mut().find(|m| m.seq == *seq)) {
                            if !m.reactions.iter().any(|r| r.emoji == *emoji && r.users.contains(user)) {
                                match m.reactions.iter_mut().find(|r| r.emoji == *emoji) {
                                    Some(r) => r.users.push(user.clone()),
                                    None => m.reactions.push(selvage_shared::Reaction { emoji: emoji.clone(), count: 0, users: vec![user.clone()] }),
                                }
                                for r in &mut m.reactions {
                                    r.count = r.users.len() as u32;
                                }
                            }
                        }
                    }
                    _ => {}
                }
                let applied_now = s.apply(&FeedItem { cursor: cursor.clone(), workspace: ws_id(), ts: 0, event: event.clone() });
                let Some(applied_now) = applied_now else { return Err(TestCaseError::fail("not applied")) };
                // Ephemeral noise in between changes nothing.
                let typing = Event::Typing { channel: channels[i % channels.len()].clone(), user: uid("U1") };
                let typing = FeedItem { cursor: cur(1), workspace: ws_id(), ts: 0, event: typing };
                prop_assert!(s.apply(&typing).is_some());
                let got: Vec<UserId> = WHO.iter().map(|w| uid(w)).filter(|w| s.receives(&applied_now.recipients, w)).collect();
                applied.push((cursor, event, got));
                }
            }
            check_invariants(&s);
            let newest = applied.last().map_or(cur(100), |(c, _, _)| c.clone());
            prop_assert_eq!(s.cursor(), &newest);

            for who in WHO {
                let who = uid(who);
                for k in 0..=applied.len() {
                    let after = cur(100 + k as u64);
                    let expected: Vec<EventFrame> = applied[k..]
                        .iter()
                        .filter(|(_, _, got)| got.contains(&who))
                        .map(|(c, e, _)| EventFrame { event: e.clone(), cursor: c.clone() })
                        .collect();
                    match s.replay_after(&who, &after) {
                        Some(frames) => prop_assert_eq!(frames, expected, "user {} after {}", who, k),
                        None => prop_assert!(!unbounded, "unbounded buffers refused a replay"),
                    }
                }
                prop_assert_eq!(s.replay_after(&who, &cur(99)), None);
            }

            for c in &channels {
                let all = history.get(c).cloned().unwrap_or_default();
                let last = all.len() as u64;
                let pages = [(None, None, 50), (Some(0), None, 3), (None, Some(last), 2), (Some(last / 2), Some(last), 1000)];
                for (after, before, limit) in pages {
                    let q = Query { after, before, limit: Some(limit), ..query(QueryKind::History) };
                    let q = Query { channel: Some(c.clone()), ..q };
                    match s.query(&uid("U1"), &q) {
                        QueryAnswer::Answer(result) => {
                            let lo = after.unwrap_or(0);
                            let hi = before.map_or(last, |b| b.saturating_sub(1).min(last));
                            let range: Vec<&Message> = all.iter().filter(|m| m.seq > lo && m.seq <= hi).collect();
                            let want: Vec<Message> = if after.is_some() {
                                range.iter().take(limit as usize).map(|m| (*m).clone()).collect()
                            } else {
                                range.iter().skip(range.len().saturating_sub(limit as usize)).map(|m| (*m).clone()).collect()
                            };
                            prop_assert_eq!(result.messages, want);
                        }
                        QueryAnswer::NeedsOrigin => prop_assert!(!unbounded, "unbounded buffers sent history to the origin"),
                        QueryAnswer::Refused { code, .. } => {
                            prop_assert_eq!(code, ErrorCode::NotFound);
                            prop_assert!(!s.can_see_channel(&uid("U1"), c));
                        }
                    }
                }
            }
        }
    }
}
