//! Messages after they are posted: edits, deletes, reactions and following threads.
//!
//! Only the author or a workspace admin may edit or delete; reacting needs membership; nothing
//! may change in an archived channel. A delete keeps the `seq` as a tombstone (empty text,
//! `deleted: true`, reactions cleared), so histories have no gaps and a thread's page still
//! lists the deleted reply; the root's `reply_count` counts the replies that are not deleted.
//! Every change appends its event (`message_changed`, `message_deleted`, `reaction_added`,
//! `reaction_removed`) in the transaction that makes it; a change that changes nothing (the same
//! reaction again, deleting a tombstone) writes nothing and logs nothing.

use selvage_shared::{ChannelId, Event, Message, Seq};

use super::records::{
    decorate, index_mentions, load, load_decorated, load_summary, set_mentions, unindex_mentions, validate_text,
    write_summary, Mentioned,
};
use crate::{
    caller::Caller,
    channels::records::visible_channel,
    error::{OriginError, Result},
    feed::Appender,
    presence::Tracker,
    store::{keys, KvTxn, Store, StoreError},
    transact,
};

/// Most distinct emoji on one message (Slack's limit).
pub const MAX_EMOJI_PER_MESSAGE: usize = 50;

/// Longest emoji name, in bytes.
pub const MAX_EMOJI_BYTES: usize = 64;

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
    let Some((channel, member)) = visible_channel(tx, caller, c).await? else {
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
    validate_text(text)?;
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
    use selvage_shared::UserId;

    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new_unchecked(s)
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
