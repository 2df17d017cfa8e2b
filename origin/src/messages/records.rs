//! A message's records: the message itself, and what lives beside it — its reactions, its
//! mentions in the index, and, for a thread's root, the thread's summary.
//!
//! A message record `(ws, W, msg, C, seq)` is written by the sequencer and afterwards only by an
//! edit or a delete. Reactions are one key each, `(ws, W, react, C, seq, emoji, U)`, so adding and
//! removing one is a write of that key alone: two people reacting at once never conflict, and the
//! same reaction twice is the same key (idempotent). A thread root's summary sits under
//! `(ws, W, replies, C, root)` and is moved by the sequencer's commit of each reply, so a reply
//! never rewrites (and never conflicts with an edit of) the root's record. Every read of messages
//! goes through [`decorate`], which merges both back in with two range reads per page.
//!
//! The rule every text must follow ([`validate_text`]) is here too, shared by a send and an
//! edit.

use std::collections::HashMap;

use selvage_shared::{mentions, ChannelId, Message, Reaction, Seq, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{
    channels::records::is_member,
    error::{OriginError, Result},
    presence::Tracker,
    store::{decode, keys, tuple, KvTxn, RangeRead, StoreError},
};

/// Most bytes of message text (the 100 KB value limit holds the message and its metadata).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Checks a message text: not empty, no U+0000 ([`selvage_shared::frame::TEXT_NUL`] says why),
/// at most [`selvage_shared::MAX_TEXT_CHARS`] characters and [`MAX_TEXT_BYTES`] bytes. Sends and
/// edits share it.
pub fn validate_text(text: &str) -> Result<()> {
    if text.is_empty() {
        return Err(OriginError::BadRequest("text must not be empty".into()));
    }
    if text.contains('\0') {
        return Err(OriginError::BadRequest(selvage_shared::frame::TEXT_NUL.into()));
    }
    if text.chars().count() > selvage_shared::MAX_TEXT_CHARS || text.len() > MAX_TEXT_BYTES {
        return Err(OriginError::TooLarge(format!(
            "text is over {} characters or {MAX_TEXT_BYTES} bytes",
            selvage_shared::MAX_TEXT_CHARS
        )));
    }
    Ok(())
}

/// Most users a thread summary names in `reply_users`; the count goes on past it.
pub const MAX_REPLY_USERS: usize = 50;

/// A thread root's summary as stored under [`keys::thread_summary`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadSummary {
    /// Replies that are not deleted.
    #[serde(default)]
    pub reply_count: u32,
    /// When the newest reply was posted.
    #[serde(default)]
    pub latest_reply: Option<i64>,
    /// The newest reply's seq.
    #[serde(default)]
    pub latest_reply_seq: Option<Seq>,
    /// Who replied, in the order of their first reply (at most [`MAX_REPLY_USERS`]).
    #[serde(default)]
    pub reply_users: Vec<UserId>,
    /// Who chose to follow the thread without taking part (at most [`MAX_REPLY_USERS`]).
    #[serde(default)]
    pub followers: Vec<UserId>,
    /// Participants (the root's author, repliers) who unfollowed it; replying again re-follows.
    #[serde(default)]
    pub unfollowed: Vec<UserId>,
}

impl ThreadSummary {
    /// Who gets the replies of the thread whose root `author` wrote.
    pub fn followers_of(&self, author: &UserId) -> Vec<UserId> {
        let mut out: Vec<UserId> = Vec::new();
        for u in std::iter::once(author).chain(&self.reply_users).chain(&self.followers) {
            if !self.unfollowed.contains(u) && !out.contains(u) {
                out.push(u.clone());
            }
        }
        out
    }

    /// Follows (`true`) or unfollows the thread for `user`, one of whose participants is the
    /// root's `author`; whether anything changed.
    pub fn follow(&mut self, user: &UserId, author: &UserId, follow: bool) -> bool {
        let participant = user == author || self.reply_users.contains(user);
        let before = self.followers_of(author).contains(user);
        if follow {
            self.unfollowed.retain(|u| u != user);
            if !participant && !self.followers.contains(user) && self.followers.len() < MAX_REPLY_USERS {
                self.followers.push(user.clone());
            }
        } else {
            self.followers.retain(|u| u != user);
            if participant && !self.unfollowed.contains(user) {
                self.unfollowed.push(user.clone());
            }
        }
        self.followers_of(author).contains(user) != before
    }

    /// Counts a new reply by `user`.
    pub fn add_reply(&mut self, user: &UserId, seq: Seq, ts: i64) {
        self.reply_count = self.reply_count.saturating_add(1);
        self.latest_reply = Some(ts);
        self.latest_reply_seq = Some(seq);
        if !self.reply_users.contains(user) && self.reply_users.len() < MAX_REPLY_USERS {
            self.reply_users.push(user.clone());
        }
        // Replying follows the thread again.
        self.unfollowed.retain(|u| u != user);
        self.followers.retain(|u| u != user);
    }

    /// Writes the summary's fields onto the root message.
    pub fn apply_to(&self, root: &mut Message) {
        root.reply_count = self.reply_count;
        root.latest_reply = self.latest_reply;
        root.latest_reply_seq = self.latest_reply_seq;
        root.reply_users = self.reply_users.clone();
        root.thread_followers = self.followers_of(&root.user);
    }
}

/// Reads a message record as stored (without reactions or thread summary).
pub async fn load(tx: &mut dyn KvTxn, w: &WorkspaceId, c: &ChannelId, seq: Seq) -> Result<Option<Message>, StoreError> {
    match tx.get(&keys::message(w, c, seq)).await? {
        None => Ok(None),
        Some(raw) => decode("message", &raw).map(Some),
    }
}

/// Reads a thread root's summary (empty when it has no replies).
pub async fn load_summary(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    c: &ChannelId,
    root: Seq,
) -> Result<ThreadSummary, StoreError> {
    match tx.get(&keys::thread_summary(w, c, root)).await? {
        None => Ok(ThreadSummary::default()),
        Some(raw) => decode("thread summary", &raw),
    }
}

/// Stores a thread root's summary.
pub fn write_summary(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    c: &ChannelId,
    root: Seq,
    summary: &ThreadSummary,
) -> Result<(), StoreError> {
    tx.set(&keys::thread_summary(w, c, root), &selvage_shared::to_msgpack(summary))
}

/// Merges reactions and thread summaries into messages of one channel, as every read shows
/// them: one range read of the reactions and one of the summaries over the messages' seqs.
pub async fn decorate(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    c: &ChannelId,
    messages: &mut [Message],
) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (messages.iter().map(|m| m.seq).min(), messages.iter().map(|m| m.seq).max()) else {
        return Ok(());
    };
    let by_seq: HashMap<Seq, usize> = messages.iter().enumerate().map(|(i, m)| (m.seq, i)).collect();

    let begin = keys::reactions_of(w, c, first);
    let end = keys::reactions_of(w, c, last.saturating_add(1));
    // Per message: (emoji, users with when they reacted).
    let mut reactions: HashMap<usize, EmojiUsers> = HashMap::new();
    for (key, raw) in tx.get_range(&RangeRead::between(begin, end)).await? {
        let Some((seq, emoji, user)) = reaction_parts(&key) else { continue };
        let Some(&i) = by_seq.get(&seq) else { continue };
        let at = crate::feed::le_i64(&raw);
        let list = reactions.entry(i).or_default();
        match list.iter_mut().find(|(e, _)| *e == emoji) {
            Some((_, users)) => users.push((at, user)),
            None => list.push((emoji, vec![(at, user)])),
        }
    }
    for (i, list) in reactions {
        messages[i].reactions = to_reactions(list);
    }

    let begin = keys::thread_summary(w, c, first);
    let mut end = keys::thread_summary(w, c, last);
    end.push(0x00);
    for (key, raw) in tx.get_range(&RangeRead::between(begin, end)).await? {
        let Some(seq) = tuple::last_u64(&key) else { continue };
        let Some(&i) = by_seq.get(&seq) else { continue };
        decode::<ThreadSummary>("thread summary", &raw)?.apply_to(&mut messages[i]);
    }
    Ok(())
}

/// One message's reactions as read: each emoji with its users and when they reacted.
type EmojiUsers = Vec<(String, Vec<(i64, UserId)>)>;

/// Reactions by the time each emoji was first used, users in the order they reacted.
fn to_reactions(list: EmojiUsers) -> Vec<Reaction> {
    let mut out: Vec<(i64, Reaction)> = list
        .into_iter()
        .map(|(emoji, mut users)| {
            users.sort();
            let first = users.first().map_or(0, |(at, _)| *at);
            let users: Vec<UserId> = users.into_iter().map(|(_, u)| u).collect();
            (first, Reaction { emoji, count: users.len() as u32, users })
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.emoji.cmp(&b.1.emoji)));
    out.into_iter().map(|(_, r)| r).collect()
}

/// The seq, emoji and user of a `(ws, W, react, C, seq, emoji, U)` key.
fn reaction_parts(key: &[u8]) -> Option<(Seq, String, UserId)> {
    let mut parts = tuple::unpack(key).ok()?;
    let user = parts.pop()?.as_str().and_then(UserId::parse)?;
    let emoji = parts.pop()?.as_str()?.to_string();
    let seq = parts.pop()?.as_u64()?;
    Some((seq, emoji, user))
}

/// Reads one message as every read shows it.
pub async fn load_decorated(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    c: &ChannelId,
    seq: Seq,
) -> Result<Option<Message>, StoreError> {
    let Some(message) = load(tx, w, c, seq).await? else { return Ok(None) };
    let mut one = [message];
    decorate(tx, w, c, &mut one).await?;
    let [message] = one;
    Ok(Some(message))
}

/// What a text mentions, parsed once when a write is accepted, with — for `@here` — who was
/// active at that moment (the candidates; membership is checked in the write's transaction).
#[derive(Clone, Debug, Default)]
pub struct Mentioned {
    found: mentions::Mentions,
    active: Vec<UserId>,
}

impl Mentioned {
    /// Parses `text`; asks `presence` who is active only when it says `@here`.
    pub fn of(text: &str, presence: &Tracker, workspace: &WorkspaceId) -> Mentioned {
        let found = mentions::parse(text);
        let active = if found.here { presence.active(workspace, tokio::time::Instant::now()) } else { Vec::new() };
        Mentioned { found, active }
    }

    /// The most users the message can name in its mention index: those it mentions plus those
    /// `@here` may reach.
    pub fn reach(&self) -> usize {
        self.found.users.len() + self.active.len().min(mentions::MAX_HERE)
    }
}

/// Fills in a message's mentions: `@here` reaches those of the active users who are members of
/// the channel, other than the author, at most [`mentions::MAX_HERE`] of them.
pub async fn set_mentions(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    message: &mut Message,
    mentioned: &Mentioned,
) -> Result<(), StoreError> {
    let found = &mentioned.found;
    message.mentions = found.users.clone();
    message.mentions_channel = found.channel;
    message.mentions_here = found.here;
    message.mentions_here_users.clear();
    if found.here {
        for u in mentioned.active.iter().filter(|u| **u != message.user) {
            if message.mentions_here_users.len() >= mentions::MAX_HERE {
                break;
            }
            if is_member(tx, w, &message.channel, u).await? {
                message.mentions_here_users.push(u.clone());
            }
        }
    }
    Ok(())
}

/// Writes the mention index entries of a message (see [`keys::mention`]).
pub fn index_mentions(tx: &mut dyn KvTxn, w: &WorkspaceId, m: &Message) -> Result<(), StoreError> {
    if m.deleted {
        return Ok(());
    }
    for u in m.mentions.iter().chain(&m.mentions_here_users).filter(|u| **u != m.user) {
        tx.set(&keys::mention(w, u, &m.channel, m.seq), &[])?;
    }
    if m.mentions_channel {
        tx.set(&keys::channel_mention(w, &m.channel, m.seq), m.user.as_str().as_bytes())?;
    }
    Ok(())
}

/// Clears the mention index entries of a message as it was.
pub fn unindex_mentions(tx: &mut dyn KvTxn, w: &WorkspaceId, m: &Message) -> Result<(), StoreError> {
    for u in m.mentions.iter().chain(&m.mentions_here_users) {
        tx.clear(&keys::mention(w, u, &m.channel, m.seq))?;
    }
    tx.clear(&keys::channel_mention(w, &m.channel, m.seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new_unchecked(s)
    }

    #[test]
    fn reactions_order_by_first_use_and_users_by_time() {
        let list = vec![
            ("tada".to_string(), vec![(30, uid("U3")), (10, uid("U1"))]),
            ("eyes".to_string(), vec![(20, uid("U2"))]),
        ];
        let out = to_reactions(list);
        assert_eq!(out.iter().map(|r| r.emoji.as_str()).collect::<Vec<_>>(), ["tada", "eyes"]);
        assert_eq!(out[0].users, [uid("U1"), uid("U3")]);
        assert_eq!(out[0].count, 2);
    }

    #[test]
    fn following_unfollowing_and_replying_again() {
        let (author, bob, carol) = (uid("U1"), uid("U2"), uid("U3"));
        let mut s = ThreadSummary::default();
        s.add_reply(&bob, 2, 10);
        assert_eq!(s.followers_of(&author), [author.clone(), bob.clone()]);
        assert!(s.follow(&carol, &author, true));
        assert!(!s.follow(&carol, &author, true), "following twice changes nothing");
        assert!(s.follow(&bob, &author, false));
        assert!(s.follow(&author, &author, false));
        assert_eq!(s.followers_of(&author), std::slice::from_ref(&carol));
        s.add_reply(&bob, 3, 20);
        assert_eq!(s.followers_of(&author), [bob.clone(), carol.clone()], "replying follows again");
        assert!(s.follow(&carol, &author, false));
        assert_eq!(s.followers_of(&author), [bob]);
    }

    #[test]
    fn summary_counts_replies_and_names_repliers_once() {
        let mut s = ThreadSummary::default();
        s.add_reply(&uid("U2"), 5, 100);
        s.add_reply(&uid("U3"), 6, 200);
        s.add_reply(&uid("U2"), 9, 300);
        assert_eq!((s.reply_count, s.latest_reply, s.latest_reply_seq), (3, Some(300), Some(9)));
        assert_eq!(s.reply_users, [uid("U2"), uid("U3")]);
    }
}
