//! Channel and membership records as stored, and the visibility rule read from them.
//!
//! A channel's record sits under `(ws, W, chan, C)`, its head seq under `(ws, W, head, C)`,
//! and each membership in both directions, `(ws, W, member, C, U)` and `(ws, W, joined, U, C)`,
//! written in one transaction with its feed event. Every write of a channel record or a
//! membership moves the workspace's gates counter, which is how the sequencer learns its cached
//! [`Gate`]s are stale. This is the part of channels the rest of the origin builds on: creating
//! a workspace or a user writes through it, and the sequencer, message changes and snapshots
//! read through it (ARCHITECTURE §2).

use selvage_shared::{Channel, ChannelId, Event, Seq, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{
    caller::Caller,
    feed::{le_i64, Appender},
    store::{decode, keys, KvTxn, StoreError},
};

/// What a membership record holds, in both directions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Membership {
    /// When the user joined (ms since the epoch).
    pub joined_at: i64,
}

/// Reads a channel record.
pub async fn load(tx: &mut dyn KvTxn, w: &WorkspaceId, c: &ChannelId) -> Result<Option<Channel>, StoreError> {
    load_as(tx, w, c).await
}

/// Reads a channel record as `T` (the whole [`Channel`], or part of it).
async fn load_as<T: serde::de::DeserializeOwned>(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    c: &ChannelId,
) -> Result<Option<T>, StoreError> {
    match tx.get(&keys::channel(w, c)).await? {
        None => Ok(None),
        Some(raw) => decode("channel", &raw).map(Some),
    }
}

/// What posting in a channel depends on: the two flags of its record, decoded without its
/// strings (the sequencer reads it once per channel in every group).
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Gate {
    /// Whether the channel is invisible to non-members.
    #[serde(default)]
    pub private: bool,
    /// Whether it is read-only.
    #[serde(default)]
    pub archived: bool,
}

impl Gate {
    /// Whether a caller who is (or is not) a member may see the channel at all.
    pub fn visible(&self, member: bool) -> bool {
        member || !self.private
    }
}

/// The [`Gate`] of a channel, `None` if there is no such channel.
pub async fn load_gate(tx: &mut dyn KvTxn, w: &WorkspaceId, c: &ChannelId) -> Result<Option<Gate>, StoreError> {
    load_as(tx, w, c).await
}

/// Whether `u` is a member of `c`.
pub async fn is_member(tx: &mut dyn KvTxn, w: &WorkspaceId, c: &ChannelId, u: &UserId) -> Result<bool, StoreError> {
    Ok(tx.get(&keys::member(w, c, u)).await?.is_some())
}

/// The last assigned seq of a channel.
pub async fn last_seq(tx: &mut dyn KvTxn, w: &WorkspaceId, c: &ChannelId) -> Result<Seq, StoreError> {
    Ok(tx.get(&keys::head(w, c)).await?.as_deref().map(le_i64).unwrap_or(0) as Seq)
}

/// Whether a caller who is (or is not) a member may see the channel at all.
pub fn visible(channel: &Channel, member: bool) -> bool {
    member || !channel.private
}

/// The channel, if the caller may see it, and whether they are a member.
pub async fn visible_channel(
    tx: &mut dyn KvTxn,
    caller: &Caller,
    c: &ChannelId,
) -> Result<Option<(Channel, bool)>, StoreError> {
    let Some(channel) = load(tx, &caller.workspace, c).await? else { return Ok(None) };
    let member = is_member(tx, &caller.workspace, c, &caller.user.id).await?;
    Ok(visible(&channel, member).then_some((channel, member)))
}

/// Moves W's gates counter ([`keys::gates`]): every write of a channel record or a membership
/// must, so that the sequencer drops what it cached of them.
pub fn bump_gates(tx: &mut dyn KvTxn, w: &WorkspaceId) -> Result<(), StoreError> {
    tx.atomic_add(&keys::gates(w), 1)
}

/// Writes a new channel record (and its name index) with a `channel_created` event.
pub fn write_channel(
    tx: &mut dyn KvTxn,
    log: &mut Appender,
    w: &WorkspaceId,
    channel: &Channel,
    now: i64,
) -> Result<(), StoreError> {
    tx.set(&keys::channel(w, &channel.id), &selvage_shared::to_msgpack(channel))?;
    bump_gates(tx, w)?;
    if !channel.is_conversation() {
        tx.set(&keys::channel_name(w, &channel.name), channel.id.as_str().as_bytes())?;
    }
    log.append(tx, w, now, Event::ChannelCreated { channel: channel.clone() })?;
    Ok(())
}

/// Adds a member (both directions) with a `member_joined` event.
pub fn write_member(
    tx: &mut dyn KvTxn,
    log: &mut Appender,
    w: &WorkspaceId,
    c: &ChannelId,
    u: &UserId,
    now: i64,
) -> Result<(), StoreError> {
    let record = selvage_shared::to_msgpack(&Membership { joined_at: now });
    tx.set(&keys::member(w, c, u), &record)?;
    tx.set(&keys::joined(w, u, c), &record)?;
    bump_gates(tx, w)?;
    log.append(tx, w, now, Event::MemberJoined { channel: c.clone(), user: u.clone() })?;
    Ok(())
}
