//! What a client is answered from a workspace's state: the cache's part of its `hello`, and its
//! queries (`users`, `members`, `channels`, `history`, `thread`) — or that the origin must answer
//! (older history, threads, and every `search`).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;

use selvage_shared::{ChannelBoot, ChannelId, ErrorCode, Query, QueryKind, QueryResult, User, UserId, MAX_QUERY_LIMIT};

use super::{ChannelEntry, WorkspaceState};

/// Default page size of `members`, `channels` and `users` queries.
pub const DEFAULT_PAGE_LIMIT: usize = 100;

/// Default page size of `history` queries.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

/// How a query can be answered from the cache.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryAnswer {
    /// The answer, from the cache.
    Answer(QueryResult),
    /// The cache cannot answer completely (history older than the buffer, threads): ask the
    /// origin. Any visibility check has already passed.
    NeedsOrigin,
    /// The query is refused; send an `error` frame with this code.
    Refused {
        /// Stable error code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

/// The cache's part of a `hello`: the user, their channels and only the users those need.
#[derive(Clone, Debug, PartialEq)]
pub struct Boot {
    /// The connecting user.
    pub self_user: User,
    /// Every channel, DM and group DM the user is a member of, by channel id.
    pub channels: Vec<ChannelBoot>,
    /// The other members of the user's DMs and group DMs, by user id, each once.
    pub users: Vec<User>,
}

impl WorkspaceState {
    /// The boot payload for `user`, or `None` if they are unknown or deactivated.
    pub fn boot(&self, user: &UserId) -> Option<Boot> {
        let self_user = self.users.get(user).filter(|u| !u.deactivated)?;
        let joined = self.channels_of(user);
        let mut channels = Vec::with_capacity(joined.len());
        let mut needed: Vec<&UserId> = Vec::new();
        for id in joined {
            let Some(entry) = self.channels.get(id) else { continue };
            channels.push(self.channel_boot(user, entry, true));
            if entry.channel.is_conversation() {
                needed.extend(entry.members.iter().filter(|m| *m != user));
            }
        }
        needed.sort_unstable();
        needed.dedup();
        let users = needed.into_iter().filter_map(|id| self.users.get(id).cloned()).collect();
        Some(Boot { self_user: self_user.clone(), channels, users })
    }

    /// A channel as `user` sees it in `hello` or a `channels` page. Unread counts only mean
    /// something in channels the user follows, so a public channel they are not in shows none.
    fn channel_boot(&self, user: &UserId, entry: &ChannelEntry, member: bool) -> ChannelBoot {
        let read_seq = self.read_seq(user, &entry.channel.id);
        let unread = if member { entry.last_seq.saturating_sub(read_seq) } else { 0 };
        let mentions = if member { self.mention_count(user, &entry.channel.id) } else { 0 };
        ChannelBoot { channel: entry.channel.clone(), last_seq: entry.last_seq, read_seq, unread, mentions }
    }

    /// The channels `user` may see with an id after `after`, in id order: their own channels
    /// merged with the public ones.
    fn visible_channel_ids<'a>(
        &'a self,
        user: &UserId,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = &'a ChannelId> + 'a {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mine = self.channels_of(user).range::<str, _>((from, Bound::Unbounded));
        let public = self.public.range::<str, _>((from, Bound::Unbounded));
        merge_sorted(mine, public)
    }

    /// Answers a client `query` for `user` from the cache, or says it cannot.
    pub fn query(&self, user: &UserId, q: &Query) -> QueryAnswer {
        let answer = if self.users.get(user).is_none_or(|u| u.deactivated) {
            Err(Refusal::new(ErrorCode::Unauthorized, "the user is unknown or deactivated"))
        } else {
            match q.q {
                QueryKind::Users => self.query_users(q),
                QueryKind::Members => self.query_members(user, q),
                QueryKind::Channels => self.query_channels(user, q),
                QueryKind::History => self.query_history(user, q),
                QueryKind::Thread => self.query_thread(user, q),
                // The search index is the origin's (ARCHITECTURE §8 "Search"), and so are
                // notification preferences, which no other user's session may read.
                QueryKind::Search | QueryKind::NotifyPrefs => Ok(QueryAnswer::NeedsOrigin),
            }
        };
        answer.unwrap_or_else(|Refusal { code, message }| QueryAnswer::Refused { code, message })
    }

    /// The query's channel, if it names one the user may see.
    fn visible_entry(&self, user: &UserId, q: &Query) -> Result<&ChannelEntry, Refusal> {
        let Some(id) = &q.channel else {
            return Err(Refusal::new(ErrorCode::BadRequest, "this query needs a channel"));
        };
        match self.channels.get(id) {
            Some(entry) if self.can_see_channel(user, id) => Ok(entry),
            // Private channels answer exactly like missing ones.
            _ => Err(Refusal::new(ErrorCode::NotFound, format!("channel {id} not found"))),
        }
    }

    /// `users`: the named users that exist, in the order asked (each once); without names, a
    /// page of the workspace's users by id.
    fn query_users(&self, q: &Query) -> Result<QueryAnswer, Refusal> {
        let mut result = empty_result(q);
        if q.users.is_empty() {
            let limit = page_limit(q.limit, DEFAULT_PAGE_LIMIT)?;
            let after = page_after(q, UserId::parse)?;
            let from = after.as_ref().map_or(Bound::Unbounded, |a| Bound::Excluded(a.as_str()));
            let (page, next) = paginate(self.users.range::<str, _>((from, Bound::Unbounded)).map(|(_, u)| u), limit);
            result.next = next.map(|u| u.id.to_string());
            result.users = page.into_iter().cloned().collect();
        } else {
            let mut seen = BTreeSet::new();
            result.users = q
                .users
                .iter()
                .take(MAX_QUERY_LIMIT)
                .filter(|id| seen.insert(*id))
                .filter_map(|id| self.users.get(id).cloned())
                .collect();
        }
        Ok(QueryAnswer::Answer(result))
    }

    /// `members`: a page of a visible channel's members by user id.
    fn query_members(&self, user: &UserId, q: &Query) -> Result<QueryAnswer, Refusal> {
        let entry = self.visible_entry(user, q)?;
        let limit = page_limit(q.limit, DEFAULT_PAGE_LIMIT)?;
        let after = page_after(q, UserId::parse)?;
        let from = after.as_ref().map_or(Bound::Unbounded, |a| Bound::Excluded(a.as_str()));
        let (page, next) = paginate(entry.members.range::<str, _>((from, Bound::Unbounded)), limit);
        let mut result = empty_result(q);
        result.next = next.map(UserId::to_string);
        result.members = page.into_iter().cloned().collect();
        Ok(QueryAnswer::Answer(result))
    }

    /// `channels`: a page, by channel id, of every channel the user may see — their own
    /// channels and every public one (archived included).
    fn query_channels(&self, user: &UserId, q: &Query) -> Result<QueryAnswer, Refusal> {
        let limit = page_limit(q.limit, DEFAULT_PAGE_LIMIT)?;
        let after = page_after(q, ChannelId::parse)?;
        let ids = self.visible_channel_ids(user, after.as_ref().map(ChannelId::as_str));
        let (page, next) = paginate(ids.filter_map(|id| self.channels.get(id)), limit);
        let mut result = empty_result(q);
        result.next = next.map(|entry| entry.channel.id.to_string());
        result.channels =
            page.into_iter().map(|entry| self.channel_boot(user, entry, entry.members.contains(user))).collect();
        Ok(QueryAnswer::Answer(result))
    }

    /// `history`, with the origin's paging: seqs in (`after`, `before`); with `after`, the
    /// oldest `limit` of them, otherwise the newest; oldest first. Answered only when the
    /// message buffer holds the whole page. `next` is set when more messages lie beyond the page
    /// in the direction read, to the seq to continue from (the page's first seq as `before`
    /// when reading back, its last seq as `after` when reading forward).
    fn query_history(&self, user: &UserId, q: &Query) -> Result<QueryAnswer, Refusal> {
        let entry = self.visible_entry(user, q)?;
        let limit = page_limit(q.limit, DEFAULT_HISTORY_LIMIT)? as u64;
        let mut result = empty_result(q);
        // Seqs are 1..=last_seq with no gaps (deleted messages keep theirs).
        let below = q.after.unwrap_or(0);
        let top = q.before.map_or(entry.last_seq, |before| before.saturating_sub(1).min(entry.last_seq));
        if top <= below {
            return Ok(QueryAnswer::Answer(result));
        }
        let (first, last, more, forward) = if q.after.is_some() {
            let last = top.min(below.saturating_add(limit));
            (below + 1, last, last < top, true)
        } else {
            let first = (below + 1).max(top.saturating_sub(limit - 1));
            (first, top, first > below + 1, false)
        };
        if first <= entry.messages.covered_from_seq {
            return Ok(QueryAnswer::NeedsOrigin);
        }
        let Some(messages) = entry.messages.range(first, last) else { return Ok(QueryAnswer::NeedsOrigin) };
        result.messages = messages;
        if more {
            result.next = Some(if forward { last } else { first }.to_string());
        }
        Ok(QueryAnswer::Answer(result))
    }

    /// `thread`: the cache keeps no thread index, so the origin answers once the channel is
    /// known to be visible and the query is well formed.
    fn query_thread(&self, user: &UserId, q: &Query) -> Result<QueryAnswer, Refusal> {
        self.visible_entry(user, q)?;
        page_limit(q.limit, DEFAULT_HISTORY_LIMIT)?;
        match q.root {
            None | Some(0) => Err(Refusal::new(ErrorCode::BadRequest, "a thread query needs a root seq (1 or more)")),
            Some(_) => Ok(QueryAnswer::NeedsOrigin),
        }
    }
}

/// A refused query, before it becomes a [`QueryAnswer::Refused`].
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }
}

fn empty_result(q: &Query) -> QueryResult {
    QueryResult { reply_to: q.id.clone(), ..QueryResult::default() }
}

/// A page size: the default when absent, at most [`MAX_QUERY_LIMIT`], never 0.
fn page_limit(limit: Option<u32>, default: usize) -> Result<usize, Refusal> {
    match limit {
        None => Ok(default),
        Some(0) => Err(Refusal::new(ErrorCode::BadRequest, format!("limit must be 1 to {MAX_QUERY_LIMIT}"))),
        Some(n) => Ok(usize::try_from(n).unwrap_or(MAX_QUERY_LIMIT).min(MAX_QUERY_LIMIT)),
    }
}

/// The id a page starts after: the `page` token, which is the previous page's last id.
fn page_after<T>(q: &Query, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>, Refusal> {
    match &q.page {
        None => Ok(None),
        Some(token) => parse(token).map(Some).ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "invalid page token")),
    }
}

/// Up to `limit` items, and the last of them when more remain (the next page's token).
fn paginate<T: Copy>(items: impl Iterator<Item = T>, limit: usize) -> (Vec<T>, Option<T>) {
    let mut items = items.peekable();
    let page: Vec<T> = items.by_ref().take(limit).collect();
    let next = if items.peek().is_some() { page.last().copied() } else { None };
    (page, next)
}

/// Two ascending iterators merged into one, each item once.
fn merge_sorted<'a, T: Ord + 'a>(
    a: impl Iterator<Item = &'a T> + 'a,
    b: impl Iterator<Item = &'a T> + 'a,
) -> impl Iterator<Item = &'a T> + 'a {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) => match x.cmp(y) {
            Ordering::Less => a.next(),
            Ordering::Greater => b.next(),
            Ordering::Equal => {
                b.next();
                a.next()
            }
        },
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

#[cfg(test)]
mod tests {
    use selvage_shared::{ChannelKind, Event, EventFrame};

    use super::super::fixtures::*;
    use super::super::CacheLimits;
    use super::*;

    #[test]
    fn snapshot_boot_lists_member_channels_and_only_needed_users() {
        let s = state();
        check_invariants(&s);
        assert_eq!(s.id(), &ws_id());
        assert_eq!(s.cursor(), &cur(100));
        let boot = s.boot(&uid("U1")).expect("U1 boots");
        assert_eq!(boot.self_user, user("U1"));
        assert_eq!(channel_ids(&boot.channels), ["C1", "C2", "D1", "G1"]);
        let c1 = &boot.channels[0];
        assert_eq!((c1.last_seq, c1.read_seq, c1.unread, c1.mentions), (10, 7, 3, 0));
        let c2 = &boot.channels[1];
        assert_eq!((c2.last_seq, c2.read_seq, c2.unread), (3, 0, 3));
        let d1 = &boot.channels[2];
        assert_eq!((d1.last_seq, d1.read_seq, d1.unread), (2, 2, 0));
        // DM and group DM partners only (the deactivated one too), not C1's other members.
        let users: Vec<&str> = boot.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(users, ["U2", "U4", "U5"]);
        assert!(boot.users[2].deactivated);

        let boot = s.boot(&uid("U4")).expect("U4 boots");
        assert_eq!(channel_ids(&boot.channels), ["D1"]);
        assert_eq!(boot.users, [user("U1")]);

        assert_eq!(s.boot(&uid("U5")), None, "deactivated");
        assert_eq!(s.boot(&uid("U9")), None, "unknown");
    }

    #[test]
    fn private_channel_is_invisible_to_non_members() {
        let mut s = state();
        let outsider = uid("U3");
        let boot = s.boot(&outsider).expect("boots");
        assert_eq!(channel_ids(&boot.channels), ["C1", "D2"]);

        // Refused exactly like a channel that does not exist.
        for kind in [QueryKind::Members, QueryKind::History, QueryKind::Thread] {
            let q = Query { root: Some(1), ..in_channel(kind, "C2") };
            assert_eq!(refusal_code(s.query(&outsider, &q)), ErrorCode::NotFound, "{kind:?}");
            let missing = Query { root: Some(1), ..in_channel(kind, "C404") };
            assert_eq!(refusal_code(s.query(&outsider, &missing)), ErrorCode::NotFound, "{kind:?}");
            let dm = Query { root: Some(1), ..in_channel(kind, "D1") };
            assert_eq!(refusal_code(s.query(&outsider, &dm)), ErrorCode::NotFound, "{kind:?}");
        }
        let members = answer(s.query(&uid("U1"), &in_channel(QueryKind::Members, "C2")));
        assert_eq!(ids(&members.members), ["U1", "U2"]);
        let thread = Query { root: Some(1), ..in_channel(QueryKind::Thread, "C2") };
        assert_eq!(s.query(&uid("U1"), &thread), QueryAnswer::NeedsOrigin);
        // A public channel is readable by non-members.
        let c3 = answer(s.query(&outsider, &in_channel(QueryKind::Members, "C3")));
        assert_eq!(ids(&c3.members), ["U2"]);

        let channels = answer(s.query(&outsider, &query(QueryKind::Channels)));
        assert_eq!(channel_ids(&channels.channels), ["C1", "C3", "D2"]);
        // Not a member of C3: no unread count there.
        assert_eq!(channels.channels[1].unread, 0);
        let channels = answer(s.query(&uid("U1"), &query(QueryKind::Channels)));
        assert_eq!(channel_ids(&channels.channels), ["C1", "C2", "C3", "D1", "G1"]);

        let secret = Event::Message(msg("C2", 4, "U1"));
        let open = Event::Message(msg("C1", 11, "U1"));
        assert_eq!(s.delivered_to(&outsider, &[&secret, &open], &cur(100)), [false, true]);
        assert_eq!(s.delivered_to(&uid("U2"), &[&secret, &open], &cur(100)), [true, true]);
        s.apply(&item(101, secret)).expect("applied");
        s.apply(&item(102, open.clone())).expect("applied");
        let replay = s.replay_after(&outsider, &cur(100)).expect("covered");
        assert_eq!(replay, [EventFrame { event: open, cursor: cur(102) }]);
        assert_eq!(s.replay_after(&uid("U2"), &cur(100)).map(|r| r.len()), Some(2));
    }

    #[test]
    fn pagination_covers_every_member_and_channel_exactly_once() {
        let mut s = state();
        let mut n = 100;
        let mut expected: BTreeSet<UserId> = uids(&["U1", "U2", "U3"]).into_iter().collect();
        for i in 0..250 {
            n += 1;
            let u = uid(&format!("M{i:03}"));
            expected.insert(u.clone());
            s.apply(&item(n, Event::MemberJoined { channel: cid("C1"), user: u })).expect("applied");
        }
        for limit in [1, 7, 100, 1000] {
            let mut seen = Vec::new();
            let mut page = None;
            for round in 0.. {
                assert!(round <= 300, "pagination does not end");
                let q = Query { limit: Some(limit), page: page.take(), ..in_channel(QueryKind::Members, "C1") };
                let result = answer(s.query(&uid("U3"), &q));
                assert!(result.members.len() <= limit as usize);
                seen.extend(result.members);
                match result.next {
                    Some(next) => page = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, expected.iter().cloned().collect::<Vec<_>>(), "limit {limit}");
        }
        let first = answer(s.query(&uid("U3"), &in_channel(QueryKind::Members, "C1")));
        assert_eq!(first.members.len(), DEFAULT_PAGE_LIMIT);
        assert_eq!(first.next.as_deref(), first.members.last().map(UserId::as_str));

        // Channels: U1's own (public and private) merged with every public one, once each.
        for i in 0..30 {
            n += 1;
            let private = i % 3 == 0;
            let c = chan(&format!("K{i:02}"), ChannelKind::Channel, private);
            s.apply(&item(n, Event::ChannelCreated { channel: c })).expect("applied");
            if i % 2 == 0 {
                n += 1;
                let joined = Event::MemberJoined { channel: cid(&format!("K{i:02}")), user: uid("U1") };
                s.apply(&item(n, joined)).expect("applied");
            }
        }
        let mut archived = chan("K01", ChannelKind::Channel, false);
        archived.archived = true;
        n += 1;
        s.apply(&item(n, Event::ChannelUpdated { channel: archived })).expect("applied");
        let visible: Vec<String> = s
            .channels
            .keys()
            .filter(|c| s.can_see_channel(&uid("U1"), c))
            .map(|c| c.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(visible.contains(&"K01".to_string()), "archived public channels are listed");
        assert!(!visible.contains(&"K03".to_string()), "private channels U1 is not in are not");
        for limit in [1, 4, 1000] {
            let mut seen = Vec::new();
            let mut page = None;
            loop {
                let q = Query { limit: Some(limit), page: page.take(), ..query(QueryKind::Channels) };
                let result = answer(s.query(&uid("U1"), &q));
                seen.extend(result.channels.iter().map(|b| b.channel.id.to_string()));
                match result.next {
                    Some(next) => page = Some(next),
                    None => break,
                }
            }
            assert_eq!(seen, visible, "limit {limit}");
        }
        check_invariants(&s);
    }

    #[test]
    fn bad_page_tokens_and_limits_are_refused() {
        let s = state();
        let bad_page = Query { page: Some("not an id!".into()), ..in_channel(QueryKind::Members, "C1") };
        assert_eq!(refusal_code(s.query(&uid("U1"), &bad_page)), ErrorCode::BadRequest);
        let bad_page = Query { page: Some(String::new()), ..query(QueryKind::Channels) };
        assert_eq!(refusal_code(s.query(&uid("U1"), &bad_page)), ErrorCode::BadRequest);
        let zero = Query { limit: Some(0), ..in_channel(QueryKind::History, "C1") };
        assert_eq!(refusal_code(s.query(&uid("U1"), &zero)), ErrorCode::BadRequest);
        let no_channel = query(QueryKind::Members);
        assert_eq!(refusal_code(s.query(&uid("U1"), &no_channel)), ErrorCode::BadRequest);
        let no_root = in_channel(QueryKind::Thread, "C1");
        assert_eq!(refusal_code(s.query(&uid("U1"), &no_root)), ErrorCode::BadRequest);
        assert_eq!(refusal_code(s.query(&uid("U5"), &query(QueryKind::Channels))), ErrorCode::Unauthorized);
        assert_eq!(refusal_code(s.query(&uid("U9"), &query(QueryKind::Channels))), ErrorCode::Unauthorized);
        let huge = Query { limit: Some(1_000_000), ..in_channel(QueryKind::Members, "C1") };
        assert_eq!(answer(s.query(&uid("U1"), &huge)).members.len(), 3, "limits above the maximum are capped");
    }

    #[test]
    fn users_query_returns_existing_users_or_pages() {
        let s = state();
        let q = Query { users: uids(&["U4", "U9", "U5", "U4"]), ..query(QueryKind::Users) };
        let result = answer(s.query(&uid("U1"), &q));
        assert_eq!(result.reply_to, "q1");
        let got: Vec<&str> = result.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(got, ["U4", "U5"], "unknown ids omitted, duplicates once, deactivated included");
        let page = Query { limit: Some(2), ..query(QueryKind::Users) };
        let result = answer(s.query(&uid("U1"), &page));
        let got: Vec<&str> = result.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!((got, result.next.as_deref()), (vec!["U1", "U2"], Some("U2")));
        let page = Query { limit: Some(2), page: Some("U4".into()), ..query(QueryKind::Users) };
        let result = answer(s.query(&uid("U1"), &page));
        assert_eq!((result.users.len(), result.next), (1, None));
    }

    #[test]
    fn history_is_answered_from_the_buffer_only_where_it_is_covered() {
        let limits = CacheLimits { recent_events_per_channel: 5, ..CacheLimits::default() };
        let mut s = state_with(limits);
        // C1 had 10 messages at the snapshot; none of them are cached.
        let newest = Query { limit: None, ..in_channel(QueryKind::History, "C1") };
        assert_eq!(s.query(&uid("U1"), &newest), QueryAnswer::NeedsOrigin);
        assert_eq!(
            history(&s, "C1", Some(10), None, 5),
            QueryAnswer::Answer(QueryResult { reply_to: "q1".into(), ..QueryResult::default() })
        );
        for (n, seq) in (101..).zip(11..=14) {
            s.apply(&item(n, Event::Message(msg("C1", seq, "U2")))).expect("applied");
        }
        assert_eq!(seqs(history(&s, "C1", None, None, 4)), (vec![11, 12, 13, 14], Some("11".into())));
        assert_eq!(history(&s, "C1", None, None, 5), QueryAnswer::NeedsOrigin, "seq 10 is not cached");
        assert_eq!(seqs(history(&s, "C1", Some(10), None, 50)), (vec![11, 12, 13, 14], None));
        assert_eq!(seqs(history(&s, "C1", Some(12), None, 1)), (vec![13], Some("13".into())));
        assert_eq!(seqs(history(&s, "C1", None, Some(13), 2)), (vec![11, 12], Some("11".into())));
        assert_eq!(history(&s, "C1", None, Some(12), 2), QueryAnswer::NeedsOrigin);
        assert_eq!(seqs(history(&s, "C1", Some(11), Some(14), 50)), (vec![12, 13], None));
        assert_eq!(seqs(history(&s, "C1", Some(11), Some(14), 1)), (vec![12], Some("12".into())));
        // Three more evict 11 and 12.
        for (n, seq) in (105..).zip(15..=17) {
            s.apply(&item(n, Event::Message(msg("C1", seq, "U2")))).expect("applied");
        }
        assert_eq!(seqs(history(&s, "C1", Some(12), None, 50)), (vec![13, 14, 15, 16, 17], None));
        assert_eq!(history(&s, "C1", Some(11), None, 50), QueryAnswer::NeedsOrigin);
        assert_eq!(seqs(history(&s, "C1", None, None, 5)).0, vec![13, 14, 15, 16, 17]);
        assert_eq!(history(&s, "C1", None, None, 6), QueryAnswer::NeedsOrigin);
        // Ranges with nothing in them need nothing cached.
        assert_eq!(seqs(history(&s, "C1", Some(17), None, 5)), (vec![], None));
        assert_eq!(seqs(history(&s, "C1", None, Some(1), 5)), (vec![], None));
        assert_eq!(seqs(history(&s, "C3", None, None, 5)), (vec![], None), "an empty channel");
        // A channel created after the snapshot is cached from its first message.
        s.apply(&item(200, Event::ChannelCreated { channel: chan("C9", ChannelKind::Channel, false) }))
            .expect("applied");
        s.apply(&item(201, Event::Message(msg("C9", 1, "U1")))).expect("applied");
        assert_eq!(seqs(history(&s, "C9", None, None, 50)), (vec![1], None));
        check_invariants(&s);
    }
}
