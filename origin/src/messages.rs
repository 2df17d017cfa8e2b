//! Messages after they are posted: edits, deletes and reactions, and the parts of a message that
//! live beside its record — its reactions and, for a thread's root, the thread's summary.
//!
//! A message record `(ws, W, msg, C, seq)` is written by the sequencer and afterwards only by an
//! edit or a delete. Reactions are one key each, `(ws, W, react, C, seq, emoji, U)`, so adding and
//! removing one is a write of that key alone: two people reacting at once never conflict, and the
//! same reaction twice is the same key (idempotent). A thread root's summary sits under
//! `(ws, W, replies, C, root)` and is moved by the sequencer's commit of each reply, so a reply
//! never rewrites (and never conflicts with an edit of) the root's record. Every read of messages
//! goes through [`decorate`], which merges both back in with two range reads per page.
//!
//! Only the author or a workspace admin may edit or delete; reacting needs membership; nothing
//! may change in an archived channel. A delete keeps the `seq` as a tombstone (empty text,
//! `deleted: true`, reactions cleared), so histories have no gaps and a thread's page still
//! lists the deleted reply; the root's `reply_count` counts the replies that are not deleted.
//! Every change appends its event (`message_changed`, `message_deleted`, `reaction_added`,
//! `reaction_removed`) in the transaction that makes it; a change that changes nothing (the same
//! reaction again, deleting a tombstone) writes nothing and logs nothing.

use std::collections::HashMap;

use selvage_shared::{mentions, ChannelId, Event, Message, Reaction, Seq, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{
    caller::Caller,
    channels,
    error::{OriginError, Result},
    feed::Appender,
    presence::Tracker,
    sequencer,
    store::{decode, keys, tuple, KvTxn, RangeRead, Store, StoreError},
    transact,
};

/// Most distinct emoji on one message (Slack's limit).
pub const MAX_EMOJI_PER_MESSAGE: usize = 50;

/// Longest emoji name, in bytes.
pub const MAX_EMOJI_BYTES: usize = 64;

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
            if channels::records::is_member(tx, w, &message.channel, u).await? {
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

/// Checks an emoji name: 1 to [`MAX_EMOJI_BYTES`] of `a-z 0-9 _ + - '` and `:` (for skin tones,
/// `thumbsup::skin-tone-2`).
pub fn validate_emoji(emoji: &str) -> Result<()> {
    let ok = (1..=MAX_EMOJI_BYTES).contains(&emoji.len())
        && emoji.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_+-':".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(OriginError::BadRequest(format!(
            "emoji name must be 1 to {MAX_EMOJI_BYTES} of a-z, 0-9, '_', '+', '-', ''' and ':'"
        )))
    }
}

/// Finds message `seq` of a channel the caller may see and checks the rules every change shares:
/// the channel exists and is visible, is not archived, and the message exists. `author_only`
/// adds the edit/delete rule (the author, or a workspace admin); otherwise the caller must be a
/// member (reactions). The outer error is storage's, the inner the refusal.
async fn access(
    tx: &mut dyn KvTxn,
    caller: &Caller,
    c: &ChannelId,
    seq: Seq,
    author_only: bool,
) -> Result<Result<Message>, StoreError> {
    let w = &caller.workspace;
    let Some((channel, member)) = channels::records::visible_channel(tx, caller, c).await? else {
        return Ok(Err(OriginError::no_channel(c.as_str())));
    };
    if channel.archived {
        return Ok(Err(OriginError::Archived(format!("channel {c} is archived"))));
    }
    let Some(message) = load(tx, w, c, seq).await? else {
        return Ok(Err(OriginError::NotFound(format!("message {seq} not found in channel {c}"))));
    };
    if author_only {
        if message.user != caller.user.id && !caller.user.admin {
            return Ok(Err(OriginError::Forbidden("only the author or a workspace admin may change a message".into())));
        }
    } else if !member {
        return Ok(Err(OriginError::NotMember(format!("join {c} to react or follow threads in it"))));
    }
    Ok(Ok(message))
}

/// Replaces a message's text; it keeps its `seq` and gets `edited_at`. Answers the message as
/// it now reads.
/// `presence` says who `@here` reaches, for a text that newly says it.
pub async fn edit(
    store: &Store,
    caller: &Caller,
    c: &ChannelId,
    seq: Seq,
    text: &str,
    presence: &Tracker,
) -> Result<Message> {
    sequencer::validate_text(text)?;
    let mentioned = Mentioned::of(text, presence, &caller.workspace);
    let w = &caller.workspace;
    let (outcome, _) = transact!(store, |tx| {
        match access(tx, caller, c, seq, true).await? {
            Err(e) => Err(e),
            Ok(message) if message.deleted => {
                Err(OriginError::NotFound(format!("message {seq} of channel {c} was deleted")))
            }
            Ok(mut message) => {
                let now = crate::now_ms();
                unindex_mentions(tx, w, &message)?;
                let reached_here = std::mem::take(&mut message.mentions_here_users);
                message.text = text.to_string();
                message.edited_at = Some(now);
                set_mentions(tx, w, &mut message, &mentioned).await?;
                // Whoever `@here` reached when it was posted stays reached: an edit does not
                // re-notify by who is active now.
                if message.mentions_here && !reached_here.is_empty() {
                    message.mentions_here_users = reached_here;
                }
                index_mentions(tx, w, &message)?;
                tx.set(&keys::message(w, c, seq), &selvage_shared::to_msgpack(&message))?;
                decorate(tx, w, c, std::slice::from_mut(&mut message)).await?;
                let mut log = Appender::new();
                let event = Event::MessageChanged { channel: c.clone(), seq, message: message.clone() };
                log.append(tx, w, now, event)?;
                log.finish(tx)?;
                Ok(message)
            }
        }
    })?;
    let message = outcome?;
    tracing::info!(ws.id = %w, channel.id = %c, seq, "message edited");
    Ok(message)
}

/// Deletes a message, leaving a tombstone in its `seq`. Deleting it again changes nothing.
/// Deleting a thread reply takes it out of the root's `reply_count` (the root's new state goes
/// out as `message_changed`).
pub async fn delete(store: &Store, caller: &Caller, c: &ChannelId, seq: Seq) -> Result<Message> {
    let w = &caller.workspace;
    let (outcome, _) = transact!(store, |tx| {
        match access(tx, caller, c, seq, true).await? {
            Err(e) => Err(e),
            Ok(message) if message.deleted => Ok((message, false)),
            Ok(mut message) => {
                let now = crate::now_ms();
                unindex_mentions(tx, w, &message)?;
                message.make_tombstone();
                tx.set(&keys::message(w, c, seq), &selvage_shared::to_msgpack(&message))?;
                let (begin, end) = crate::store::prefix_range(&keys::reactions_of(w, c, seq));
                tx.clear_range(&begin, &end)?;
                let mut log = Appender::new();
                log.append(tx, w, now, Event::MessageDeleted { channel: c.clone(), seq })?;
                if let Some(root) = message.thread_root {
                    let mut summary = load_summary(tx, w, c, root).await?;
                    summary.reply_count = summary.reply_count.saturating_sub(1);
                    write_summary(tx, w, c, root, &summary)?;
                    if let Some(root_message) = load_decorated(tx, w, c, root).await? {
                        log.append(
                            tx,
                            w,
                            now,
                            Event::MessageChanged { channel: c.clone(), seq: root, message: root_message },
                        )?;
                    }
                }
                log.finish(tx)?;
                // The thread summary of a deleted root stays: its replies are still there.
                decorate(tx, w, c, std::slice::from_mut(&mut message)).await?;
                Ok((message, true))
            }
        }
    })?;
    let (message, changed) = outcome?;
    if changed {
        tracing::info!(ws.id = %w, channel.id = %c, seq, "message deleted");
    }
    Ok(message)
}

/// Follows (`follow`) or unfollows a thread for the caller (a member): a follower gets the
/// thread's replies without taking part; a participant who unfollows stops getting them until
/// they reply again. The root's new state goes to the channel as `message_changed`; a follow
/// that changes nothing logs nothing. Answers the root as it now reads.
pub async fn follow(store: &Store, caller: &Caller, c: &ChannelId, root: Seq, follow: bool) -> Result<Message> {
    let w = &caller.workspace;
    let (outcome, _) = transact!(store, |tx| {
        match access(tx, caller, c, root, false).await? {
            Err(e) => Err(e),
            Ok(message) if message.thread_root.is_some() => {
                Err(OriginError::BadRequest(format!("message {root} is a reply; threads start at a top-level message")))
            }
            Ok(mut message) => {
                let mut summary = load_summary(tx, w, c, root).await?;
                if summary.follow(&caller.user.id, &message.user, follow) {
                    write_summary(tx, w, c, root, &summary)?;
                    decorate(tx, w, c, std::slice::from_mut(&mut message)).await?;
                    summary.apply_to(&mut message);
                    let mut log = Appender::new();
                    let event = Event::MessageChanged { channel: c.clone(), seq: root, message: message.clone() };
                    log.append(tx, w, crate::now_ms(), event)?;
                    log.finish(tx)?;
                } else {
                    decorate(tx, w, c, std::slice::from_mut(&mut message)).await?;
                }
                Ok(message)
            }
        }
    })?;
    outcome
}

/// Adds (`add`) or removes the caller's reaction `emoji` on a message. Idempotent: adding a
/// reaction the caller already has, or removing one they do not, changes nothing and logs
/// nothing. Answers the message as it now reads.
pub async fn react(store: &Store, caller: &Caller, c: &ChannelId, seq: Seq, emoji: &str, add: bool) -> Result<Message> {
    validate_emoji(emoji)?;
    let w = &caller.workspace;
    let u = &caller.user.id;
    let (outcome, _) = transact!(store, |tx| {
        match access(tx, caller, c, seq, false).await? {
            Err(e) => Err(e),
            Ok(message) if message.deleted => {
                Err(OriginError::NotFound(format!("message {seq} of channel {c} was deleted")))
            }
            Ok(mut message) => {
                decorate(tx, w, c, std::slice::from_mut(&mut message)).await?;
                let key = keys::reaction(w, c, seq, emoji, u);
                let has = tx.get(&key).await?.is_some();
                let known_emoji = message.reactions.iter().any(|r| r.emoji == emoji);
                if add && !has && !known_emoji && message.reactions.len() >= MAX_EMOJI_PER_MESSAGE {
                    Err(OriginError::BadRequest(format!(
                        "a message takes at most {MAX_EMOJI_PER_MESSAGE} different emoji"
                    )))
                } else if add == has {
                    Ok(message)
                } else {
                    let now = crate::now_ms();
                    let (channel, user, emoji) = (c.clone(), u.clone(), emoji.to_string());
                    message.apply_reaction(&user, &emoji, add);
                    let event = if add {
                        tx.set(&key, &now.to_le_bytes())?;
                        Event::ReactionAdded { channel, seq, user, emoji }
                    } else {
                        tx.clear(&key)?;
                        Event::ReactionRemoved { channel, seq, user, emoji }
                    };
                    let mut log = Appender::new();
                    log.append(tx, w, now, event)?;
                    log.finish(tx)?;
                    Ok(message)
                }
            }
        }
    })?;
    outcome
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
    fn emoji_names_are_checked() {
        for ok in ["thumbsup", "+1", "thumbsup::skin-tone-2", "e_2"] {
            assert!(validate_emoji(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Thumbs", "a b", "<script>", &"x".repeat(65)] {
            assert!(validate_emoji(bad).is_err(), "{bad}");
        }
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

    #[test]
    fn applying_reactions_is_idempotent_and_drops_unused_emoji() {
        let mut m = Message::new(ChannelId::new_unchecked("C1"), 1, 0, uid("U1"), "hi");
        for (u, e, add) in [("U1", "tada", true), ("U2", "tada", true), ("U2", "tada", true), ("U1", "eyes", true)] {
            m.apply_reaction(&uid(u), e, add);
        }
        m.apply_reaction(&uid("U1"), "tada", false);
        m.apply_reaction(&uid("U1"), "tada", false);
        assert_eq!(m.reactions.len(), 2);
        assert_eq!((m.reactions[0].emoji.as_str(), m.reactions[0].count), ("tada", 1));
        m.apply_reaction(&uid("U1"), "eyes", false);
        assert_eq!(m.reactions.len(), 1);
    }
}
