//! Read markers: the last `seq` each user has read in each channel, `(ws, W, read, U, C)`.
//!
//! A marker only moves forward, so marking from two devices in any order ends at the furthest
//! point, and a retried or stale `mark_read` changes nothing. It never passes the channel's
//! head (a client cannot read what does not exist yet). Each move appends a `read_marker`
//! event, which reaches only that user's sessions — on every edge — so a second device clears
//! its badge live. Unread counts derive from the marker and the channel's head.

use selvage_shared::{ChannelId, Event, Seq};

use crate::{
    caller::Caller,
    channels::records::{last_seq, visible_channel},
    error::{OriginError, Result},
    feed::Appender,
    store::{keys, KvTxn, Store, StoreError},
    transact,
};

/// Reads a user's marker in a channel (0 when they have read nothing).
pub async fn load(tx: &mut dyn KvTxn, caller: &Caller, c: &ChannelId) -> Result<Seq, StoreError> {
    let raw = tx.get(&keys::read_marker(&caller.workspace, &caller.user.id, c)).await?;
    Ok(raw.and_then(|raw| selvage_shared::from_msgpack::<Seq>(&raw).ok()).unwrap_or(0))
}

/// Moves the caller's marker in a channel they are a member of to `seq` (capped at the head),
/// if that is forward. Answers the marker as it now stands.
pub async fn mark(store: &Store, caller: &Caller, c: &ChannelId, seq: Seq) -> Result<Seq> {
    let w = &caller.workspace;
    let (outcome, _) = transact!(store, |tx| {
        match visible_channel(tx, caller, c).await? {
            None => Err(OriginError::no_channel(c.as_str())),
            Some((_, false)) => Err(OriginError::NotMember(format!("join {c} to keep a read marker in it"))),
            Some(_) => {
                let head = last_seq(tx, w, c).await?;
                let current = load(tx, caller, c).await?;
                let target = seq.min(head);
                if target <= current {
                    Ok(current)
                } else {
                    tx.set(&keys::read_marker(w, &caller.user.id, c), &selvage_shared::to_msgpack(&target))?;
                    // Mentions up to the marker are read: the index keeps unread ones only.
                    let u = &caller.user.id;
                    tx.clear_range(&keys::mentions_in(w, u, c), &keys::mention(w, u, c, target.saturating_add(1)))?;
                    let mut log = Appender::new();
                    let event = Event::ReadMarker { channel: c.clone(), user: caller.user.id.clone(), seq: target };
                    log.append(tx, w, crate::now_ms(), event)?;
                    log.finish(tx)?;
                    Ok(target)
                }
            }
        }
    })?;
    outcome
}
