//! Workspace snapshots: what an edge builds its warm cache of one workspace from (ARCHITECTURE §3).
//!
//! An edge keeps a workspace current by applying feed events *after* the snapshot's cursor, so
//! the state and the cursor must agree exactly: every event at or before the cursor reflected,
//! none after. Reading both in **one** transaction gives that for free — the transaction sees
//! one consistent version of the store, and the cursor is the newest log entry in that same
//! version (every change appends its events in the transaction that makes it). Two separate
//! reads would race with commits in between and lose or double-apply an event.
//!
//! The snapshot is read-only, so the store's 10 MB write limit does not apply; it reads every
//! user, channel, membership and read marker of the workspace, and the unread mentions, which
//! is what a cache needs.

use selvage_shared::{
    link::{ChannelState, ReadMarker, UnreadMentions, WorkspaceSnapshot},
    Channel, ChannelId, Seq, User, UserId, Workspace, WorkspaceId,
};
use serde::Deserialize;

use crate::{
    channels,
    error::{OriginError, Result},
    feed::{self, Position},
    store::{decode, keys, tuple, tuple::last_str, KvTxn, RangeRead, Store, StoreError},
    transact,
};

/// Reads a workspace's state and the cursor it is consistent with, in one transaction.
/// An unknown workspace is `not_found`.
pub async fn read(store: &Store, w: &WorkspaceId) -> Result<WorkspaceSnapshot> {
    let (snapshot, _) = transact!(store, |tx| { read_in(tx, w).await? })?;
    snapshot.ok_or_else(|| OriginError::NotFound(format!("workspace {w} not found")))
}

async fn read_in(tx: &mut dyn KvTxn, w: &WorkspaceId) -> Result<Option<WorkspaceSnapshot>, StoreError> {
    let Some(raw) = tx.get(&keys::workspace(w)).await? else { return Ok(None) };
    let workspace: Workspace = decode("workspace", &raw)?;
    let cursor = newest_position(tx).await?;

    let mut users = Vec::new();
    for (_, raw) in tx.get_range(&RangeRead::prefix(&keys::users(w))).await? {
        users.push(decode::<User>("user", &raw)?);
    }

    let mut channel_states = Vec::new();
    for (_, raw) in tx.get_range(&RangeRead::prefix(&keys::channels(w))).await? {
        let channel: Channel = decode("channel", &raw)?;
        let last_seq = channels::records::last_seq(tx, w, &channel.id).await?;
        let mut members = Vec::new();
        for (key, _) in tx.get_range(&RangeRead::prefix(&keys::members(w, &channel.id))).await? {
            if let Some(u) = last_str(&key).and_then(|s| UserId::parse(&s)) {
                members.push(u);
            }
        }
        channel_states.push(ChannelState { channel, last_seq, members });
    }

    let mut read_markers = Vec::new();
    for (key, raw) in tx.get_range(&RangeRead::prefix(&read_markers_prefix(w))).await? {
        let Some((user, channel)) = marker_ids(&key) else { continue };
        match marker_seq(&raw) {
            Some(seq) => read_markers.push(ReadMarker { user, channel, seq }),
            None => {
                tracing::warn!(ws.id = %w, user.id = %user, channel.id = %channel, "undecodable read marker skipped")
            }
        }
    }

    // Unread mentions by name or `@here` (the index holds unread ones only), grouped per user
    // and channel in key order, so seqs ascend.
    let mut mentions: Vec<UnreadMentions> = Vec::new();
    for (key, _) in tx.get_range(&RangeRead::prefix(&keys::mentions(w))).await? {
        let Some((user, channel, seq)) = mention_parts(&key) else { continue };
        match mentions.last_mut() {
            Some(m) if m.user == user && m.channel == channel => m.seqs.push(seq),
            _ => mentions.push(UnreadMentions { user, channel, seqs: vec![seq] }),
        }
    }
    let mut channel_mentions = Vec::new();
    for (key, raw) in tx.get_range(&RangeRead::prefix(&keys::channel_mentions(w))).await? {
        let mut parts = tuple::unpack(&key).ok().unwrap_or_default();
        let seq = parts.pop().and_then(|e| e.as_u64());
        let channel = parts.pop().and_then(|e| e.as_str().and_then(ChannelId::parse));
        let author = std::str::from_utf8(&raw).ok().and_then(UserId::parse);
        if let (Some(channel), Some(seq), Some(author)) = (channel, seq, author) {
            channel_mentions.push((channel, seq, author));
        }
    }

    Ok(Some(WorkspaceSnapshot {
        workspace,
        cursor: feed::cursor(&cursor),
        users,
        channels: channel_states,
        read_markers,
        mentions,
        channel_mentions,
    }))
}

/// The newest log position, as [`crate::feed::Feed::head`] finds it, but inside `tx`.
async fn newest_position(tx: &mut dyn KvTxn) -> Result<Position, StoreError> {
    let last = tx.get_range(&RangeRead::prefix(&keys::log()).limit(1).reverse(true)).await?;
    if let Some(pos) = last.first().and_then(|(k, _)| keys::log_position(k)) {
        return Ok(pos);
    }
    // An empty log: everything up to the trim point is reflected (the feed's own fallback).
    // The key is the one `feed` keeps its trim point under.
    let trim = tx.get(&keys::meta("log_trim_point")).await?;
    Ok(trim.and_then(|v| v.as_slice().try_into().ok()).unwrap_or(feed::START))
}

/// Prefix of every read marker of a workspace: `(ws, W, read)`, the workspace part of
/// [`keys::read_marker`]'s `(ws, W, read, U, C)`.
fn read_markers_prefix(w: &WorkspaceId) -> Vec<u8> {
    tuple::Key::new().str("ws").str(w.as_str()).str("read").finish()
}

/// The user, channel and seq of a `(ws, W, mention, U, C, seq)` key.
fn mention_parts(key: &[u8]) -> Option<(UserId, ChannelId, Seq)> {
    let mut parts = tuple::unpack(key).ok()?;
    let seq = parts.pop()?.as_u64()?;
    let c = parts.pop()?.as_str().and_then(ChannelId::parse)?;
    let u = parts.pop()?.as_str().and_then(UserId::parse)?;
    Some((u, c, seq))
}

/// The user and channel of a `(ws, W, read, U, C)` key.
fn marker_ids(key: &[u8]) -> Option<(UserId, ChannelId)> {
    let mut parts = tuple::unpack(key).ok()?;
    let c = parts.pop()?.as_str().and_then(ChannelId::parse)?;
    let u = parts.pop()?.as_str().and_then(UserId::parse)?;
    Some((u, c))
}

/// The seq of a stored read marker: MessagePack (a bare seq, or a record with a `seq` field, as
/// named fields let it grow), or a little-endian counter as atomic adds keep them. One bad
/// marker must not make the whole workspace unloadable, so anything else is `None`.
fn marker_seq(raw: &[u8]) -> Option<Seq> {
    match selvage_shared::from_msgpack::<StoredMarker>(raw) {
        Ok(marker) => Some(marker.seq()),
        Err(_) if raw.len() <= 8 => u64::try_from(feed::le_i64(raw)).ok(),
        Err(_) => None,
    }
}

/// A read marker as MessagePack.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredMarker {
    Seq(Seq),
    Record { seq: Seq },
}

impl StoredMarker {
    fn seq(&self) -> Seq {
        match self {
            StoredMarker::Seq(seq) | StoredMarker::Record { seq } => *seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_keys_and_values_decode() {
        let w = WorkspaceId::new_unchecked("W1");
        let u = UserId::new_unchecked("U1");
        let c = ChannelId::new_unchecked("C1");
        let key = keys::read_marker(&w, &u, &c);
        assert!(key.starts_with(&read_markers_prefix(&w)));
        assert_eq!(marker_ids(&key), Some((u, c)));
        assert_eq!(marker_seq(&selvage_shared::to_msgpack(&7u64)), Some(7));
        assert_eq!(marker_seq(&selvage_shared::to_msgpack(&70_000u64)), Some(70_000));
        assert_eq!(marker_seq(&70_000i64.to_le_bytes()), Some(70_000), "an atomic-add counter");
        assert_eq!(marker_seq(&[0xc1; 20]), None);
        #[derive(serde::Serialize)]
        struct Rec {
            seq: u64,
            at: i64,
        }
        assert_eq!(marker_seq(&selvage_shared::to_msgpack(&Rec { seq: 9, at: 1 })), Some(9));
    }
}
