//! Message changes in a scenario (`load.changes`): instead of a new message, some scheduled
//! operations have their sender change one of its own acknowledged messages in the channel — an
//! edit, a reaction (a new emoji name every time), taking back one of its reactions, or a delete
//! — through the origin's HTTP API with its own token. The edges then owe every member the
//! change events, and the checker holds each member's view against the origin's final history.
//!
//! At most one change per message is in flight, so changes reach the origin in the order they
//! were made (an edit cannot overtake the delete before it); a deleted message is never touched
//! again. Which change to make is decided here without I/O ([`Authored::pick`]); [`perform`]
//! makes the call and [`error_code`] names a failure for the report.

use std::collections::HashMap;

use anyhow::Result;
use selvage_shared::{ChannelId, Message};

use super::checker::ChannelIx;
use crate::seed::{Api, Refused};

/// The origin's limit of different emoji on one message.
const MAX_EMOJI: usize = 50;

/// What to do to a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Replace its text.
    Edit(String),
    /// Add the sender's reaction with this emoji.
    React(String),
    /// Take back the sender's reaction with this emoji.
    Unreact(String),
    /// Leave a tombstone.
    Delete,
}

/// One change to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The message's channel.
    pub channel: ChannelIx,
    /// The message's `seq`.
    pub seq: u64,
    /// What to do to it.
    pub change: Change,
}

/// A message of the client's own it may still change.
#[derive(Debug)]
struct Own {
    seq: u64,
    /// The client's reactions to it that the origin accepted.
    reactions: Vec<String>,
    /// A change to it is in flight.
    busy: bool,
}

/// A client's own acknowledged messages, per channel, with what it did to them so far.
#[derive(Debug, Default)]
pub struct Authored {
    by_channel: HashMap<ChannelIx, Vec<Own>>,
}

impl Authored {
    /// A send of the client's was acknowledged with `seq`: the message may be changed from now.
    pub fn acked(&mut self, channel: ChannelIx, seq: u64) {
        self.by_channel.entry(channel).or_default().push(Own { seq, reactions: Vec::new(), busy: false });
    }

    /// Picks a change for operation `n` (unique in the run) in `channel` and marks its message
    /// busy until [`finished`](Self::finished); `None` when no message of the client's there is
    /// free. `roll` (random) picks the message and the change: 30% edits, 40% reactions, 20%
    /// reactions taken back (a reaction instead while the message has none), 10% deletes.
    /// Edited texts are `text_bytes` long.
    pub fn pick(&mut self, channel: ChannelIx, n: u64, roll: u64, text_bytes: usize) -> Option<Planned> {
        let mine = self.by_channel.get_mut(&channel)?;
        let free: Vec<usize> = (0..mine.len()).filter(|&i| !mine[i].busy).collect();
        if free.is_empty() {
            return None;
        }
        let own = &mut mine[free[(roll >> 8) as usize % free.len()]];
        let change = match roll % 10 {
            0..=2 => {
                let mut text = format!("edit n{n} of seq {} ", own.seq);
                while text.len() < text_bytes {
                    text.push('y');
                }
                Change::Edit(text)
            }
            7 | 8 if !own.reactions.is_empty() => {
                Change::Unreact(own.reactions[(roll >> 40) as usize % own.reactions.len()].clone())
            }
            9 => Change::Delete,
            _ if own.reactions.len() >= MAX_EMOJI => Change::Unreact(own.reactions[0].clone()),
            _ => Change::React(emoji_name(n)),
        };
        own.busy = true;
        Some(Planned { channel, seq: own.seq, change })
    }

    /// The change `planned` ended: `applied` when the origin answered that it was made. A
    /// deleted message is forgotten even when the delete failed, so it is never changed twice
    /// or after its delete.
    pub fn finished(&mut self, planned: &Planned, applied: bool) {
        let Some(mine) = self.by_channel.get_mut(&planned.channel) else { return };
        let Some(i) = mine.iter().position(|o| o.seq == planned.seq) else { return };
        let own = &mut mine[i];
        own.busy = false;
        match (&planned.change, applied) {
            (Change::Delete, _) => {
                mine.swap_remove(i);
            }
            (Change::React(emoji), true) => own.reactions.push(emoji.clone()),
            (Change::Unreact(emoji), true) => own.reactions.retain(|e| e != emoji),
            _ => {}
        }
    }
}

/// The emoji name of operation `n`: `r` and `n` in lowercase base 36, unique in the run and a
/// valid name (`a-z 0-9`).
pub fn emoji_name(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::new();
    loop {
        digits.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.push(b'r');
    digits.iter().rev().map(|&b| char::from(b)).collect()
}

/// Makes the change through the origin's API as `token`; answers the message as it now reads.
pub async fn perform(api: &Api, token: &str, channel: &ChannelId, planned: &Planned) -> Result<Message> {
    let seq = planned.seq;
    match &planned.change {
        Change::Edit(text) => api.edit_message(token, channel, seq, text).await,
        Change::React(emoji) => api.react(token, channel, seq, emoji, true).await,
        Change::Unreact(emoji) => api.react(token, channel, seq, emoji, false).await,
        Change::Delete => api.delete_message(token, channel, seq).await,
    }
}

/// The code a failed change is counted under in the report's errors: `change_` and the API's
/// error code (`change_not_found`), or its HTTP status when the answer had no code, or
/// `change_failed` when there was no answer.
pub fn error_code(e: &anyhow::Error) -> String {
    match e.downcast_ref::<Refused>() {
        Some(r) if !r.code.is_empty() => format!("change_{}", r.code),
        Some(r) => format!("change_http_{}", r.status),
        None => "change_failed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_names_are_unique_lowercase_base_36() {
        assert_eq!(emoji_name(0), "r0");
        assert_eq!(emoji_name(35), "rz");
        assert_eq!(emoji_name(36), "r10");
        assert_eq!(emoji_name(u64::MAX), "r3w5e11264sgsf");
        let names: std::collections::HashSet<String> = (0..5000).map(emoji_name).collect();
        assert_eq!(names.len(), 5000);
    }

    #[test]
    fn only_free_messages_of_the_channel_are_picked() {
        let mut a = Authored::default();
        assert_eq!(a.pick(0, 1, 0, 32), None, "nothing acknowledged yet");
        a.acked(0, 7);
        let first = a.pick(0, 1, 3, 32).unwrap();
        assert_eq!((first.channel, first.seq, &first.change), (0, 7, &Change::React("r1".into())));
        assert_eq!(a.pick(0, 2, 3, 32), None, "its only message is busy");
        assert_eq!(a.pick(1, 2, 3, 32), None, "nothing of its own in channel 1");
        a.finished(&first, true);
        match a.pick(0, 3, 0, 32).unwrap().change {
            Change::Edit(text) => assert_eq!((text.len(), &text[..16]), (32, "edit n3 of seq 7")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reactions_taken_back_are_ones_the_origin_accepted() {
        let mut a = Authored::default();
        a.acked(0, 1);
        // Nothing to take back yet: a reaction instead.
        let p = a.pick(0, 10, 7, 32).unwrap();
        assert_eq!(p.change, Change::React("ra".into()));
        a.finished(&p, false);
        let p = a.pick(0, 11, 7, 32).unwrap();
        assert_eq!(p.change, Change::React("rb".into()), "the refused one is not there to take back");
        a.finished(&p, true);
        let p = a.pick(0, 12, 8, 32).unwrap();
        assert_eq!(p.change, Change::Unreact("rb".into()));
        a.finished(&p, true);
        assert_eq!(a.pick(0, 13, 8, 32).unwrap().change, Change::React("rd".into()));
    }

    #[test]
    fn a_deleted_message_is_never_changed_again() {
        let mut a = Authored::default();
        a.acked(0, 1);
        let p = a.pick(0, 1, 9, 32).unwrap();
        assert_eq!(p.change, Change::Delete);
        a.finished(&p, false);
        assert_eq!(a.pick(0, 2, 0, 32), None);
    }

    #[test]
    fn no_message_gets_more_emoji_than_the_origin_takes() {
        let mut a = Authored::default();
        a.acked(0, 1);
        let mut most = 0;
        for n in 0..200 {
            let p = a.pick(0, n, 3, 32).unwrap();
            a.finished(&p, true);
            most = most.max(a.by_channel[&0][0].reactions.len());
        }
        assert_eq!(most, MAX_EMOJI);
    }
}
