//! Who a message may notify: the feed consumer `notify` (ARCHITECTURE §8 "Notifications").
//!
//! For each `message` event it finds the candidates — the members of a DM or group DM, the
//! users the message mentions by name, every member for `@channel`, those `@here` reached, the
//! followers of a thread for its replies, the members whose highlight keywords it contains and
//! those who asked for every message of the channel — never the author, and only current
//! members. Each candidate's preferences for the conversation decide (`prefs::notifies`); a
//! message that notifies is written as *pending* for that user, due `notify.delay_ms` after it
//! was posted. That write happens in [`Consumer::apply`], the transaction that moves the
//! consumer's cursor: **exactly once** per (user, message), whatever crashes and retries
//! happen, and its keys are the same every time, so there is nothing to deduplicate later.
//! Whether the message is still unread, the user away and not in do-not-disturb is decided
//! when it is due, by the dispatcher (`deliver`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use async_trait::async_trait;
use selvage_shared::{Channel, ChannelId, Event, Message, NotifyPrefs, Seq, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};

use super::prefs::{self, Reason};
use crate::{
    channels::records as channels,
    feed::consumer::{Batch, Consumer, ConsumerError, StartFrom},
    messages::records as messages,
    metrics::Metrics,
    store::{keys, tuple::last_str, KvTxn, RangeRead, StoreError},
};

/// The consumer's name: the key of its cursor and lease. Never renamed.
pub const NAME: &str = "notify";

/// What a pending message records for its user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    /// When it is due (ms).
    pub due: i64,
    /// Why it notifies.
    pub reason: Reason,
}

/// What a message waiting for a user's email digest records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MailPending {
    /// When it was posted (ms).
    pub ts: i64,
    /// Why it notifies.
    pub reason: Reason,
}

/// The consumer `notify` (see the module's documentation).
pub struct Decider {
    /// How long after a message is posted it is due (ms).
    pub delay_ms: i64,
    /// How long after a message is posted its email digest is due (ms); `None`: no email.
    pub email_after_ms: Option<i64>,
    /// Members beyond which an `@channel` is expanded by the dispatcher ([`INLINE_MEMBERS`]).
    pub inline_members: usize,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl Consumer for Decider {
    fn name(&self) -> &str {
        NAME
    }

    /// Only messages from now on: a first start does not notify about history.
    fn start_from(&self) -> StartFrom {
        StartFrom::Head
    }

    async fn apply(&self, tx: &mut dyn KvTxn, batch: &Batch) -> Result<(), ConsumerError> {
        let mut pending = 0u64;
        let mut read = Reads::default();
        for item in &batch.items {
            let Event::Message(m) = &item.event.event else { continue };
            if m.deleted {
                continue;
            }
            let w = &item.event.workspace;
            pending += decide(tx, &mut read, w, m, self.delay_ms, self.email_after_ms, self.inline_members).await?;
        }
        self.metrics.notify_pending.inc_by(pending);
        Ok(())
    }
}

/// Members beyond which an `@channel` message is not decided at once but left to the
/// dispatcher to expand, [`EXPAND_CHUNK`] members per transaction (see [`expand`]).
pub const INLINE_MEMBERS: usize = 256;
/// Members decided per expansion transaction.
pub const EXPAND_CHUNK: usize = 512;

/// An `@channel` message of a large channel still being expanded into pending entries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FanOut {
    /// When its notifications are due (ms).
    pub due: i64,
    /// The last member decided so far.
    pub after: Option<UserId>,
}

/// What one batch's decisions read once and share: channels, each workspace's highlight
/// keywords, each channel's members who want every message. Most messages notify nobody, and
/// reading these once per message cost the sequencer a third of its rate (BENCHMARKS.md
/// "Notifications"); a batch reads them in one snapshot, so sharing them changes nothing.
#[derive(Default)]
pub struct Reads {
    channels: HashMap<WorkspaceId, HashMap<ChannelId, Option<Arc<Channel>>>>,
    keywords: HashMap<WorkspaceId, Vec<(UserId, Vec<String>)>>,
    all: HashMap<WorkspaceId, HashMap<ChannelId, Vec<UserId>>>,
}

impl Reads {
    async fn channel(
        &mut self,
        tx: &mut dyn KvTxn,
        w: &WorkspaceId,
        c: &ChannelId,
    ) -> Result<Option<Arc<Channel>>, StoreError> {
        if let Some(known) = self.channels.get(w).and_then(|of| of.get(c)) {
            return Ok(known.clone());
        }
        let loaded = channels::load(tx, w, c).await?.map(Arc::new);
        self.channels.entry(w.clone()).or_default().insert(c.clone(), loaded.clone());
        Ok(loaded)
    }

    async fn keywords(&mut self, tx: &mut dyn KvTxn, w: &WorkspaceId) -> Result<&[(UserId, Vec<String>)], StoreError> {
        if !self.keywords.contains_key(w) {
            let mut owners = Vec::new();
            for (k, raw) in tx.get_range(&RangeRead::prefix(&keys::notify_keywords_of(w))).await? {
                let Some(u) = last_str(&k).and_then(|s| UserId::parse(&s)) else { continue };
                owners.push((u, selvage_shared::from_msgpack(&raw).unwrap_or_default()));
            }
            self.keywords.insert(w.clone(), owners);
        }
        Ok(self.keywords.get(w).map(Vec::as_slice).unwrap_or_default())
    }

    async fn all(&mut self, tx: &mut dyn KvTxn, w: &WorkspaceId, c: &ChannelId) -> Result<&[UserId], StoreError> {
        if self.all.get(w).and_then(|of| of.get(c)).is_none() {
            let rows = tx.get_range(&RangeRead::prefix(&keys::notify_all_in(w, c))).await?;
            let users = rows.iter().filter_map(|(k, _)| last_str(k).and_then(|s| UserId::parse(&s))).collect();
            self.all.entry(w.clone()).or_default().insert(c.clone(), users);
        }
        Ok(self.all.get(w).and_then(|of| of.get(c)).map(Vec::as_slice).unwrap_or_default())
    }
}

/// Writes the pending notifications of message `m` of workspace `w`, and its pending emails
/// when `email_after_ms` is set; answers how many notifications. An `@channel` in a channel of
/// more than `inline_members` members is only recorded as a [`FanOut`] here: one key instead of
/// two per member, so that a consumer's transaction stays small whatever the channel's size.
/// `read` holds what earlier messages of the same transaction read.
#[allow(clippy::too_many_arguments)]
pub async fn decide(
    tx: &mut dyn KvTxn,
    read: &mut Reads,
    w: &WorkspaceId,
    m: &Message,
    delay_ms: i64,
    email_after_ms: Option<i64>,
    inline_members: usize,
) -> Result<u64, StoreError> {
    let Some(channel) = read.channel(tx, w, &m.channel).await? else { return Ok(0) };
    let due = m.ts.saturating_add(delay_ms);
    // Every member, read once if some rule needs them all; no more than `inline_members` + 1 for
    // an `@channel`, which beyond that is a fan-out.
    let members = match (channel.is_conversation(), m.mentions_channel) {
        (true, _) => Some(members(tx, w, &channel.id, 0).await?),
        (false, true) => {
            let some = members(tx, w, &channel.id, inline_members + 1).await?;
            if some.len() > inline_members {
                let job = FanOut { due, after: None };
                tx.set(&keys::notify_fanout(w, &channel.id, m.seq), &selvage_shared::to_msgpack(&job))?;
                return Ok(0);
            }
            Some(some)
        }
        (false, false) => None,
    };
    let (users, reasons): (Vec<UserId>, Vec<Reason>) =
        candidates(tx, read, w, &channel, m, members).await?.into_iter().unzip();
    let mut written = 0;
    for ((user, reason), prefs) in users.iter().zip(reasons).zip(load_prefs_of(tx, w, &users).await?) {
        let key = keys::notify_pending(w, user, &channel.id, m.seq);
        written += u64::from(pend(tx, &prefs, w, &channel, m, user, reason, due, email_after_ms, key).await?);
    }
    Ok(written)
}

/// Writes message `m`'s pending notification for `user` under `key` (and its pending email) if
/// their preferences `prefs` let `reason` notify them; answers whether it did.
#[allow(clippy::too_many_arguments)]
async fn pend(
    tx: &mut dyn KvTxn,
    prefs: &NotifyPrefs,
    w: &WorkspaceId,
    channel: &Channel,
    m: &Message,
    user: &UserId,
    reason: Reason,
    due: i64,
    email_after_ms: Option<i64>,
    key: Vec<u8>,
) -> Result<bool, StoreError> {
    if !prefs::notifies(prefs, &channel.id, channel.kind, reason) {
        return Ok(false);
    }
    let value = selvage_shared::to_msgpack(&Pending { due, reason });
    tx.set_owned(key, value)?;
    tx.set_owned(keys::notify_due(due, w, user, &channel.id, m.seq), Vec::new())?;
    if let Some(after) = email_after_ms.filter(|_| prefs::emails(prefs, reason)) {
        let value = selvage_shared::to_msgpack(&MailPending { ts: m.ts, reason });
        tx.set(&keys::notify_mail_pending(w, user, &channel.id, m.seq), &value)?;
        // One queue entry per digest: the first message sets when it is due.
        let queued = keys::notify_mail_queued(w, user);
        if tx.get(&queued).await?.is_none() {
            let due = m.ts.saturating_add(after);
            tx.set(&queued, &selvage_shared::to_msgpack(&due))?;
            tx.set(&keys::notify_mail_due(due, w, user), &[])?;
        }
    }
    Ok(true)
}

/// Expands the next `chunk` members of one [`FanOut`] into pending entries, in the transaction
/// that moves its `after`: each member is decided exactly once, however many nodes expand it
/// and whatever crashes. Every member but the author is a candidate — named (`mention`) or by
/// `@channel` (`broadcast`), the two strongest reasons an `@channel` message can give. The
/// entries are the message's own ([`keys::notify_broadcast_pending`], side by side), and the
/// message is marked as having some ([`keys::notify_broadcast`]) so that claims find them.
/// Answers the entries written and whether the fan-out is finished (its key is then gone).
pub async fn expand(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    c: &ChannelId,
    seq: Seq,
    chunk: usize,
    email_after_ms: Option<i64>,
) -> Result<(u64, bool), StoreError> {
    let key = keys::notify_fanout(w, c, seq);
    let Some(raw) = tx.get(&key).await? else { return Ok((0, true)) };
    let Ok(mut job) = selvage_shared::from_msgpack::<FanOut>(&raw) else {
        tx.clear(&key)?;
        return Ok((0, true));
    };
    let channel = channels::load(tx, w, c).await?;
    let message = messages::load(tx, w, c, seq).await?.filter(|m| !m.deleted);
    let (Some(channel), Some(m)) = (channel, message) else {
        tx.clear(&key)?;
        return Ok((0, true));
    };
    let (mut begin, end) = crate::store::prefix_range(&keys::members(w, c));
    if let Some(after) = &job.after {
        begin = keys::member(w, c, after);
        begin.push(0x00);
    }
    let rows = tx.get_range(&RangeRead::between(begin, end).limit(chunk)).await?;
    let users: Vec<UserId> = rows.iter().filter_map(|(k, _)| last_str(k).and_then(|s| UserId::parse(&s))).collect();
    let prefs_of = load_prefs_of(tx, w, &users).await?;
    let mut written = 0;
    for (user, prefs) in users.into_iter().zip(prefs_of) {
        if user != m.user {
            let reason = if m.mentions.contains(&user) { Reason::Mention } else { Reason::Broadcast };
            let key = keys::notify_broadcast_pending(w, c, seq, &user);
            written += u64::from(pend(tx, &prefs, w, &channel, &m, &user, reason, job.due, email_after_ms, key).await?);
        }
        job.after = Some(user);
    }
    if written > 0 {
        tx.set(&keys::notify_broadcast(w, c, seq), &[])?;
    }
    let done = rows.len() < chunk;
    match done {
        true => tx.clear(&key)?,
        false => tx.set(&key, &selvage_shared::to_msgpack(&job))?,
    }
    Ok((written, done))
}

/// Everyone `m` may notify, each with the strongest reason: current members other than the
/// author. `members` are every member of the channel when a rule needs them all (a DM, a group
/// DM, `@channel`), sorted.
async fn candidates(
    tx: &mut dyn KvTxn,
    read: &mut Reads,
    w: &WorkspaceId,
    channel: &Channel,
    m: &Message,
    members: Option<Vec<UserId>>,
) -> Result<BTreeMap<UserId, Reason>, StoreError> {
    let mut found: BTreeMap<UserId, Reason> = BTreeMap::new();
    let mut add = |u: &UserId, r: Reason| {
        found.entry(u.clone()).and_modify(|old| *old = (*old).min(r)).or_insert(r);
    };
    let c = &channel.id;
    if let Some(members) = &members {
        let r = if channel.is_conversation() { Reason::Direct } else { Reason::Broadcast };
        members.iter().for_each(|u| add(u, r));
    }
    m.mentions.iter().for_each(|u| add(u, Reason::Mention));
    m.mentions_here_users.iter().for_each(|u| add(u, Reason::Broadcast));
    if m.thread_root.is_some() {
        m.thread_followers.iter().for_each(|u| add(u, Reason::Thread));
    }
    for (u, words) in read.keywords(tx, w).await? {
        if prefs::has_keyword(&m.text, words) {
            add(u, Reason::Keyword);
        }
    }
    read.all(tx, w, c).await?.iter().for_each(|u| add(u, Reason::All));
    found.remove(&m.user);
    // Only members: a mention of someone outside a channel notifies nobody (as in Slack, the
    // author is offered to invite them instead).
    match &members {
        Some(members) => found.retain(|u, _| members.binary_search(u).is_ok()),
        None => {
            let mut kept = BTreeMap::new();
            for (u, r) in found {
                if channels::is_member(tx, w, c, &u).await? {
                    kept.insert(u, r);
                }
            }
            found = kept;
        }
    }
    Ok(found)
}

/// The members of `c`, sorted; at most `limit` of them (0: all).
async fn members(tx: &mut dyn KvTxn, w: &WorkspaceId, c: &ChannelId, limit: usize) -> Result<Vec<UserId>, StoreError> {
    let rows = tx.get_range(&RangeRead::prefix(&keys::members(w, c)).limit(limit)).await?;
    Ok(rows.iter().filter_map(|(k, _)| last_str(k).and_then(|s| UserId::parse(&s))).collect())
}

/// A user's preferences, or the defaults.
pub async fn load_prefs(tx: &mut dyn KvTxn, w: &WorkspaceId, u: &UserId) -> Result<NotifyPrefs, StoreError> {
    Ok(prefs_from(tx.get(&keys::notify_prefs(w, u)).await?))
}

/// The preferences of each of `users`, in order, in one read.
async fn load_prefs_of(tx: &mut dyn KvTxn, w: &WorkspaceId, users: &[UserId]) -> Result<Vec<NotifyPrefs>, StoreError> {
    let keys: Vec<Vec<u8>> = users.iter().map(|u| keys::notify_prefs(w, u)).collect();
    let raw = tx.get_many(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>()).await?;
    Ok(raw.into_iter().map(prefs_from).collect())
}

/// A stored preferences record, or the defaults (none, or one that does not decode).
fn prefs_from(raw: Option<Vec<u8>>) -> NotifyPrefs {
    raw.and_then(|raw| selvage_shared::from_msgpack(&raw).ok()).unwrap_or_default()
}
