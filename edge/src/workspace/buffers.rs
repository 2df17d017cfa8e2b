//! The bounded tails of recent events and messages a workspace keeps for replays and
//! `history`, each saying what it is complete for (see the [module](super) on coverage markers).

use std::collections::VecDeque;

use selvage_shared::{Cursor, Event, Message, Seq};

use super::weigh::{event_entry_bytes, message_entry_bytes, Delta};

/// A bounded tail of events in cursor order, complete after `covered_after`.
#[derive(Clone, Debug)]
pub(super) struct EventBuffer {
    pub(super) entries: VecDeque<(Cursor, Event)>,
    /// Every event of this buffer's kind with a cursor after this one is in `entries`.
    pub(super) covered_after: Cursor,
}

/// A bounded tail of a channel's messages in seq order, complete after `covered_from_seq`:
/// `messages[i].seq == covered_from_seq + 1 + i`.
#[derive(Clone, Debug)]
pub(super) struct MessageBuffer {
    pub(super) messages: VecDeque<Message>,
    pub(super) covered_from_seq: Seq,
}

impl EventBuffer {
    pub(super) fn new(covered_after: Cursor) -> Self {
        EventBuffer { entries: VecDeque::new(), covered_after }
    }

    /// Appends an event (cursors only grow: `apply` checks) and evicts beyond `cap`.
    pub(super) fn push(&mut self, cursor: Cursor, event: Event, cap: usize) -> Delta {
        let mut delta = Delta::default();
        delta.add(event_entry_bytes(&event));
        self.entries.push_back((cursor, event));
        while self.entries.len() > cap {
            match self.entries.pop_front() {
                Some((cursor, event)) => {
                    delta.sub(event_entry_bytes(&event));
                    self.covered_after = cursor;
                }
                None => break,
            }
        }
        delta
    }

    /// Whether the buffer holds every event of its kind after `after`.
    pub(super) fn covers(&self, after: &Cursor) -> bool {
        self.covered_after <= *after
    }

    /// The buffered events after `after`, oldest first.
    pub(super) fn after<'a>(&'a self, after: &Cursor) -> impl Iterator<Item = &'a (Cursor, Event)> + 'a {
        let start = self.entries.partition_point(|(c, _)| c <= after);
        self.entries.range(start..)
    }
}

impl MessageBuffer {
    pub(super) fn new(covered_from_seq: Seq) -> Self {
        MessageBuffer { messages: VecDeque::new(), covered_from_seq }
    }

    /// The seq the next message must have to extend the buffer.
    pub(super) fn next_seq(&self) -> Seq {
        self.covered_from_seq.saturating_add(self.messages.len() as u64).saturating_add(1)
    }

    pub(super) fn index(&self, seq: Seq) -> Option<usize> {
        let offset = seq.checked_sub(self.covered_from_seq)?.checked_sub(1)?;
        usize::try_from(offset).ok().filter(|&i| i < self.messages.len())
    }

    pub(super) fn get_mut(&mut self, seq: Seq) -> Option<&mut Message> {
        let i = self.index(seq)?;
        self.messages.get_mut(i)
    }

    /// Adds a new message, or replaces a buffered copy of the same seq.
    pub(super) fn insert(&mut self, message: Message, cap: usize) -> Delta {
        let mut delta = Delta::default();
        let next = self.next_seq();
        if message.seq < next {
            if let Some(slot) = self.get_mut(message.seq) {
                delta.sub(message_entry_bytes(slot));
                delta.add(message_entry_bytes(&message));
                *slot = message;
            }
            return delta;
        }
        if message.seq > next {
            // A gap (never in log order): what the buffer holds no longer reaches the newest
            // message, so it restarts just below this one.
            for old in self.messages.drain(..) {
                delta.sub(message_entry_bytes(&old));
            }
            self.covered_from_seq = message.seq - 1;
        }
        delta.add(message_entry_bytes(&message));
        self.messages.push_back(message);
        while self.messages.len() > cap {
            match self.messages.pop_front() {
                Some(old) => {
                    delta.sub(message_entry_bytes(&old));
                    self.covered_from_seq = old.seq;
                }
                None => break,
            }
        }
        delta
    }

    /// Messages `first..=last`, if all of them are buffered.
    pub(super) fn range(&self, first: Seq, last: Seq) -> Option<Vec<Message>> {
        let (i, j) = (self.index(first)?, self.index(last)?);
        Some(self.messages.range(i..=j).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use selvage_shared::{ChannelKind, Event, Message};

    use super::super::fixtures::*;
    use super::super::QueryAnswer;

    #[test]
    fn edits_and_deletes_update_buffered_messages() {
        let mut s = state();
        s.apply(&item(101, Event::Message(msg("C1", 11, "U1")))).expect("applied");
        s.apply(&item(102, Event::Message(msg("C1", 12, "U1")))).expect("applied");
        let edited = Message { text: "fixed".into(), edited_at: Some(5), ..msg("C1", 11, "U1") };
        let changed = Event::MessageChanged { channel: cid("C1"), seq: 11, message: edited.clone() };
        s.apply(&item(103, changed)).expect("applied");
        s.apply(&item(104, Event::MessageDeleted { channel: cid("C1"), seq: 12 })).expect("applied");
        // Edits to messages older than the buffer change nothing cached.
        s.apply(&item(105, Event::MessageDeleted { channel: cid("C1"), seq: 3 })).expect("applied");
        let page = answer(history(&s, "C1", Some(10), None, 50));
        assert_eq!(page.messages[0], edited);
        let tombstone = &page.messages[1];
        assert!(tombstone.deleted && tombstone.text.is_empty() && tombstone.seq == 12);
        // The replay still carries the original events, in order.
        let replay = s.replay_after(&uid("U1"), &cur(100)).expect("covered");
        let kinds: Vec<&str> = replay.iter().map(|f| f.event.kind()).collect();
        assert_eq!(kinds, ["message", "message", "message_changed", "message_deleted", "message_deleted"]);
        check_invariants(&s);
    }

    #[test]
    fn unknown_channels_created_late_do_not_claim_coverage() {
        let mut s = state();
        s.apply(&item(101, Event::Message(msg("C9", 1, "U1")))).expect("applied");
        s.apply(&item(102, Event::ChannelCreated { channel: chan("C9", ChannelKind::Channel, false) }))
            .expect("applied");
        s.apply(&item(103, Event::Message(msg("C9", 2, "U1")))).expect("applied");
        assert_eq!(s.last_seq(&cid("C9")), Some(2));
        // Nobody is in C9, so nobody missed its first message: the creation is all there is.
        let replayed = |after| s.replay_after(&uid("U1"), &cur(after)).map(|r| frame_cursors(&r));
        assert_eq!(replayed(100), Some(vec![cur(102)]));
        assert_eq!(seqs(history(&s, "C9", None, None, 1)), (vec![2], Some("2".into())));
        assert_eq!(history(&s, "C9", None, None, 2), QueryAnswer::NeedsOrigin);
        s.apply(&item(104, Event::MemberJoined { channel: cid("C9"), user: uid("U1") })).expect("applied");
        s.apply(&item(105, Event::Message(msg("C9", 3, "U1")))).expect("applied");
        let replayed = |after| s.replay_after(&uid("U1"), &cur(after)).map(|r| frame_cursors(&r));
        assert_eq!(replayed(100), None, "a member's replay cannot vouch for the dropped message");
        // 103 came before U1 joined.
        assert_eq!(replayed(101), Some(vec![cur(102), cur(104), cur(105)]));
        check_invariants(&s);
    }
}
