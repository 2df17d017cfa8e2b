//! Channels, DMs and group DMs, and who is in them.
//!
//! Visibility is decided here and only here: a public channel is visible to everyone in its
//! workspace; a private channel, DM or group DM only to its members. Anything invisible answers
//! exactly like something that does not exist, so private channels do not leak through ids.
//! Membership is stored in both directions (`member` by channel, `joined` by user) in the same
//! transaction, with a feed event for each change.
//!
//! This module is the channels service (create, list, join, leave, open a DM, change); the
//! `records` it reads and writes, which the rest of the origin builds on too, and each user's
//! `read_markers` sit beside it.

pub(crate) mod read_markers;
pub(crate) mod records;

use selvage_shared::{Channel, ChannelId, ChannelKind, Event, Seq, UserId};

use crate::{
    caller::{get_user, Caller},
    error::{OriginError, Result},
    feed::Appender,
    ids,
    store::{decode, keys, tuple, tuple::last_str, KvTxn, RangeRead, Store, StoreError},
    transact,
};

use self::records::{bump_gates, is_member, last_seq, load, visible, visible_channel, write_channel, write_member};

/// Most people in a group DM, the caller included (Slack's limit).
pub const MAX_CONVERSATION_MEMBERS: usize = 9;

pub use selvage_shared::ChannelView;

/// The channel as `caller` sees it, with their unread and mention counts when a member.
pub async fn view(
    tx: &mut dyn KvTxn,
    caller: &Caller,
    channel: Channel,
    is_member: bool,
) -> Result<ChannelView, StoreError> {
    let w = &caller.workspace;
    let last_seq = last_seq(tx, w, &channel.id).await?;
    let (mut read_seq, mut unread, mut mentions) = (0, 0, 0);
    if is_member {
        read_seq = read_markers::load(tx, caller, &channel.id).await?;
        unread = last_seq.saturating_sub(read_seq);
        if unread > 0 {
            mentions = unread_mentions(tx, caller, &channel.id, read_seq).await?;
        }
    }
    Ok(ChannelView { channel, is_member, last_seq, read_seq, unread, mentions })
}

/// How many messages after `read_seq` mention the caller: by name or `@here` (their index) or
/// `@channel` (the channel's, minus their own messages), each message once.
async fn unread_mentions(tx: &mut dyn KvTxn, caller: &Caller, c: &ChannelId, read_seq: Seq) -> Result<u64, StoreError> {
    let (w, u) = (&caller.workspace, &caller.user.id);
    let mut seqs = std::collections::BTreeSet::new();
    let (_, end) = crate::store::prefix_range(&keys::mentions_in(w, u, c));
    for (key, _) in tx.get_range(&RangeRead::between(keys::mention(w, u, c, read_seq + 1), end)).await? {
        if let Some(seq) = tuple::last_u64(&key) {
            seqs.insert(seq);
        }
    }
    let (_, end) = crate::store::prefix_range(&keys::channel_mentions_in(w, c));
    for (key, author) in tx.get_range(&RangeRead::between(keys::channel_mention(w, c, read_seq + 1), end)).await? {
        if author.as_slice() == u.as_str().as_bytes() {
            continue;
        }
        if let Some(seq) = tuple::last_u64(&key) {
            seqs.insert(seq);
        }
    }
    Ok(seqs.len() as u64)
}

/// Checks a channel name the way Slack does: 1–80 of `a-z 0-9 - _`.
pub fn validate_channel_name(name: &str) -> Result<()> {
    let ok = (1..=selvage_shared::MAX_NAME_CHARS).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(OriginError::BadRequest(format!("channel name {name:?} is invalid: use 1 to 80 of a-z, 0-9, '-' and '_'")))
    }
}

/// Creates a channel with the caller as its first member.
pub async fn create(
    store: &Store,
    caller: &Caller,
    name: &str,
    private: bool,
    topic: &str,
    purpose: &str,
) -> Result<ChannelView> {
    validate_channel_name(name)?;
    for (what, text) in [("topic", topic), ("purpose", purpose)] {
        if text.chars().count() > 250 {
            return Err(OriginError::BadRequest(format!("{what} must be at most 250 characters")));
        }
    }
    let w = &caller.workspace;
    let (created, _) = transact!(store, |tx| {
        if tx.get(&keys::channel_name(w, name)).await?.is_some() {
            None
        } else {
            let now = crate::now_ms();
            let channel = Channel {
                id: ChannelId::new_unchecked(ids::new_id('C')),
                name: name.to_string(),
                kind: ChannelKind::Channel,
                private,
                archived: false,
                topic: topic.to_string(),
                purpose: purpose.to_string(),
                created_by: caller.user.id.clone(),
                created_at: now,
            };
            let mut log = Appender::new();
            write_channel(tx, &mut log, w, &channel, now)?;
            write_member(tx, &mut log, w, &channel.id, &caller.user.id, now)?;
            log.finish(tx)?;
            Some(channel)
        }
    })?;
    let channel = created.ok_or_else(|| OriginError::Conflict(format!("a channel named {name:?} already exists")))?;
    tracing::info!(ws.id = %w, channel.id = %channel.id, private, "channel created");
    Ok(ChannelView { channel, is_member: true, last_seq: 0, read_seq: 0, unread: 0, mentions: 0 })
}

/// One channel as the caller sees it; not found if invisible.
pub async fn get(store: &Store, caller: &Caller, c: &ChannelId) -> Result<ChannelView> {
    let (view, _) = transact!(store, |tx| {
        match visible_channel(tx, caller, c).await? {
            None => None,
            Some((channel, is_member)) => Some(view(tx, caller, channel, is_member).await?),
        }
    })?;
    view.ok_or_else(|| OriginError::no_channel(c.as_str()))
}

/// Every channel the caller may see: the workspace's public channels and everything the caller
/// is a member of, by name.
pub async fn list(store: &Store, caller: &Caller) -> Result<Vec<ChannelView>> {
    let w = &caller.workspace;
    let (views, _) = transact!(store, |tx| {
        let mut joined = std::collections::HashSet::new();
        let prefix = keys::joined_by(w, &caller.user.id);
        for (key, _) in tx.get_range(&RangeRead::prefix(&prefix)).await? {
            if let Some(c) = last_str(&key).and_then(|s| ChannelId::parse(&s)) {
                joined.insert(c);
            }
        }
        let mut views = Vec::new();
        for (_, raw) in tx.get_range(&RangeRead::prefix(&keys::channels(w))).await? {
            let channel: Channel = decode("channel", &raw)?;
            let is_member = joined.contains(&channel.id);
            if visible(&channel, is_member) {
                views.push(view(tx, caller, channel, is_member).await?);
            }
        }
        views.sort_by(|a, b| a.channel.name.cmp(&b.channel.name));
        views
    })?;
    Ok(views)
}

/// Adds `user` to a channel: joining a public channel yourself, or inviting someone into a
/// channel you are in. DMs and group DMs have fixed membership. Joining twice is a no-op.
pub async fn add_member(store: &Store, caller: &Caller, c: &ChannelId, user: &UserId) -> Result<()> {
    let w = &caller.workspace;
    let (outcome, _) = transact!(store, |tx| {
        match visible_channel(tx, caller, c).await? {
            None => Err(OriginError::no_channel(c.as_str())),
            Some((channel, caller_is_member)) => {
                if channel.is_conversation() {
                    Err(OriginError::Forbidden("DMs and group DMs have fixed membership".into()))
                } else if channel.archived {
                    Err(OriginError::Archived(format!("channel {} is archived", c)))
                } else if *user != caller.user.id && !caller_is_member {
                    Err(OriginError::NotMember("only members can invite others to a channel".into()))
                } else if let Some(why) = match get_user(tx, w, user).await? {
                    None => Some(OriginError::NotFound(format!("user {user} not found"))),
                    Some(u) if u.deactivated => {
                        Some(OriginError::BadRequest(format!("user {user} is deactivated; reactivate them first")))
                    }
                    Some(_) => None,
                } {
                    Err(why)
                } else if is_member(tx, w, c, user).await? {
                    Ok(())
                } else {
                    let mut log = Appender::new();
                    write_member(tx, &mut log, w, c, user, crate::now_ms())?;
                    log.finish(tx)?;
                    Ok(())
                }
            }
        }
    })?;
    outcome
}

/// Removes `user` from a channel: leaving yourself, or an admin removing someone.
pub async fn remove_member(store: &Store, caller: &Caller, c: &ChannelId, user: &UserId) -> Result<()> {
    let w = &caller.workspace;
    let (outcome, _) = transact!(store, |tx| {
        match visible_channel(tx, caller, c).await? {
            None => Err(OriginError::no_channel(c.as_str())),
            Some((channel, _)) => {
                if channel.is_conversation() {
                    Err(OriginError::Forbidden("DMs and group DMs have fixed membership".into()))
                } else if *user != caller.user.id && !caller.user.admin {
                    Err(OriginError::Forbidden("only admins can remove other members".into()))
                } else if !is_member(tx, w, c, user).await? {
                    Err(OriginError::NotFound(format!("user {user} is not a member of {c}")))
                } else {
                    tx.clear(&keys::member(w, c, user))?;
                    tx.clear(&keys::joined(w, user, c))?;
                    bump_gates(tx, w)?;
                    let mut log = Appender::new();
                    log.append(tx, w, crate::now_ms(), Event::MemberLeft { channel: c.clone(), user: user.clone() })?;
                    log.finish(tx)?;
                    Ok(())
                }
            }
        }
    })?;
    outcome
}

/// Opens the DM (two people, or one: a note to self) or group DM (up to nine) between the
/// caller and `others`; the same set of people always gets the same channel.
pub async fn open_conversation(store: &Store, caller: &Caller, others: &[UserId]) -> Result<ChannelView> {
    let mut people: Vec<UserId> = others.to_vec();
    people.push(caller.user.id.clone());
    people.sort();
    people.dedup();
    if people.len() > MAX_CONVERSATION_MEMBERS {
        return Err(OriginError::BadRequest(format!("a group DM has at most {MAX_CONVERSATION_MEMBERS} people")));
    }
    let w = &caller.workspace;
    let set_key = people.iter().map(UserId::as_str).collect::<Vec<_>>().join(",");
    let (outcome, _) = transact!(store, |tx| {
        let existing = tx.get(&keys::conversation(w, &set_key)).await?;
        match existing.as_deref().and_then(|v| std::str::from_utf8(v).ok()).and_then(ChannelId::parse) {
            Some(c) => match load(tx, w, &c).await? {
                Some(channel) => Ok(view(tx, caller, channel, true).await?),
                None => Err(OriginError::Internal(format!("conversation index points at missing channel {c}"))),
            },
            None => {
                let mut handles = Vec::with_capacity(people.len());
                let mut missing = None;
                let mut deactivated = None;
                for u in &people {
                    match get_user(tx, w, u).await? {
                        Some(user) if user.deactivated && user.id != caller.user.id => deactivated = Some(u.clone()),
                        Some(user) => handles.push(user.handle),
                        None => missing = Some(u.clone()),
                    }
                }
                if let Some(u) = missing {
                    Err(OriginError::NotFound(format!("user {u} not found")))
                } else if let Some(u) = deactivated {
                    Err(OriginError::BadRequest(format!("user {u} is deactivated")))
                } else {
                    let now = crate::now_ms();
                    let kind = if people.len() <= 2 { ChannelKind::Dm } else { ChannelKind::GroupDm };
                    let channel = Channel {
                        id: ChannelId::new_unchecked(ids::new_id(if kind == ChannelKind::Dm { 'D' } else { 'G' })),
                        name: handles.join(","),
                        kind,
                        private: true,
                        archived: false,
                        topic: String::new(),
                        purpose: String::new(),
                        created_by: caller.user.id.clone(),
                        created_at: now,
                    };
                    tx.set(&keys::conversation(w, &set_key), channel.id.as_str().as_bytes())?;
                    let mut log = Appender::new();
                    write_channel(tx, &mut log, w, &channel, now)?;
                    for u in &people {
                        write_member(tx, &mut log, w, &channel.id, u, now)?;
                    }
                    log.finish(tx)?;
                    Ok(ChannelView { channel, is_member: true, last_seq: 0, read_seq: 0, unread: 0, mentions: 0 })
                }
            }
        }
    })?;
    outcome
}

/// A page of a channel's members, by user id, after `after`.
pub async fn members(
    store: &Store,
    caller: &Caller,
    c: &ChannelId,
    after: Option<&UserId>,
    limit: usize,
) -> Result<Vec<UserId>> {
    let w = &caller.workspace;
    let (page, _) = transact!(store, |tx| {
        match visible_channel(tx, caller, c).await? {
            None => None,
            Some(_) => {
                let prefix = keys::members(w, c);
                let (mut begin, end) = crate::store::prefix_range(&prefix);
                if let Some(after) = after {
                    begin = keys::member(w, c, after);
                    begin.push(0x00);
                }
                let rows = tx.get_range(&RangeRead::between(begin, end).limit(limit)).await?;
                Some(rows.iter().filter_map(|(k, _)| last_str(k).and_then(|s| UserId::parse(&s))).collect::<Vec<_>>())
            }
        }
    })?;
    page.ok_or_else(|| OriginError::no_channel(c.as_str()))
}

/// A change to a channel's record (`PATCH /v1/channels/{id}`); absent fields stay as they are.
#[derive(Clone, Debug, Default)]
pub struct ChannelChange {
    /// A new name (named channels only; creator or admin).
    pub name: Option<String>,
    /// A new topic (members).
    pub topic: Option<String>,
    /// A new purpose (members).
    pub purpose: Option<String>,
    /// Archive (read-only afterwards) or unarchive (named channels only; creator or admin).
    pub archived: Option<bool>,
}

/// Longest topic or purpose, in characters.
pub const MAX_TOPIC_CHARS: usize = 250;

/// Renames, re-topics, archives or unarchives a channel, with a `channel_updated` event; a change
/// that changes nothing logs nothing. Members may set topic and purpose; renaming and
/// (un)archiving a named channel is for its creator and workspace admins; DMs and group DMs
/// keep their names and cannot be archived. An archived channel takes no change but being
/// unarchived.
pub async fn update(store: &Store, caller: &Caller, c: &ChannelId, change: &ChannelChange) -> Result<ChannelView> {
    if let Some(name) = &change.name {
        validate_channel_name(name)?;
    }
    for (what, text) in [("topic", &change.topic), ("purpose", &change.purpose)] {
        if text.as_ref().is_some_and(|t| t.chars().count() > MAX_TOPIC_CHARS) {
            return Err(OriginError::BadRequest(format!("{what} must be at most {MAX_TOPIC_CHARS} characters")));
        }
    }
    let w = &caller.workspace;
    let (outcome, _) = transact!(store, |tx| {
        match visible_channel(tx, caller, c).await? {
            None => Err(OriginError::no_channel(c.as_str())),
            Some((channel, member)) => match check_change(&channel, member, caller, change) {
                Err(e) => Err(e),
                Ok(updated) if updated == channel => Ok(view(tx, caller, channel, member).await?),
                Ok(updated) => {
                    let renamed = updated.name != channel.name;
                    if renamed && tx.get(&keys::channel_name(w, &updated.name)).await?.is_some() {
                        Err(OriginError::Conflict(format!("a channel named {:?} already exists", updated.name)))
                    } else {
                        if renamed {
                            tx.clear(&keys::channel_name(w, &channel.name))?;
                            tx.set(&keys::channel_name(w, &updated.name), c.as_str().as_bytes())?;
                        }
                        tx.set(&keys::channel(w, c), &selvage_shared::to_msgpack(&updated))?;
                        bump_gates(tx, w)?;
                        let mut log = Appender::new();
                        log.append(tx, w, crate::now_ms(), Event::ChannelUpdated { channel: updated.clone() })?;
                        log.finish(tx)?;
                        Ok(view(tx, caller, updated, member).await?)
                    }
                }
            },
        }
    })?;
    let view = outcome?;
    tracing::info!(ws.id = %w, channel.id = %c, archived = view.channel.archived, "channel updated");
    Ok(view)
}

/// The channel after `change`, if the caller may make it.
fn check_change(channel: &Channel, member: bool, caller: &Caller, change: &ChannelChange) -> Result<Channel> {
    let manager = caller.user.admin || channel.created_by == caller.user.id;
    let mut updated = channel.clone();
    if let Some(archived) = change.archived {
        if channel.is_conversation() {
            return Err(OriginError::Forbidden("DMs and group DMs cannot be archived".into()));
        }
        if archived != channel.archived && !manager {
            return Err(OriginError::Forbidden("only the channel's creator or an admin may (un)archive it".into()));
        }
        updated.archived = archived;
    }
    if updated.archived && (change.name.is_some() || change.topic.is_some() || change.purpose.is_some()) {
        return Err(OriginError::Archived(format!("channel {} is archived", channel.id)));
    }
    if let Some(name) = &change.name {
        if channel.is_conversation() {
            return Err(OriginError::Forbidden("DMs and group DMs cannot be renamed".into()));
        }
        if *name != channel.name && !manager {
            return Err(OriginError::Forbidden("only the channel's creator or an admin may rename it".into()));
        }
        updated.name = name.clone();
    }
    if change.topic.is_some() || change.purpose.is_some() {
        if !member && !caller.user.admin {
            return Err(OriginError::NotMember("only members may set a channel's topic or purpose".into()));
        }
        updated.topic = change.topic.clone().unwrap_or(updated.topic);
        updated.purpose = change.purpose.clone().unwrap_or(updated.purpose);
    }
    Ok(updated)
}
