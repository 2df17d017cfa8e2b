//! The relay of ephemeral events between edges: typing now, presence changes too.
//!
//! Ephemeral events are never written to the log (ARCHITECTURE §2): they matter for seconds and cost
//! nothing to lose. An edge hands one to the origin with a `relay` call; the origin puts it on
//! one bounded broadcast channel that every edge's feed stream listens to, and each stream sends
//! it on as a `FeedFrame::Ephemeral` to its edge — except to the edge it came from, which
//! delivered it to its own sessions already. A feed stream that falls behind (a slow edge, a
//! burst) skips what it missed instead of buffering it: ephemeral events are the first thing to
//! shed, here as at the edge's outboxes.

use std::sync::Arc;

use selvage_shared::{Event, WorkspaceId};
use tokio::sync::broadcast;

/// Ephemeral events a feed stream may lag behind by before it skips some.
pub const RELAY_CAPACITY: usize = 4096;

/// One relayed event.
#[derive(Clone, Debug)]
pub struct Relayed {
    /// The edge it came from (its `edge_id`), which must not get it back; `None` when the
    /// origin itself made it (presence), so every edge gets it.
    pub from_edge: Option<Arc<str>>,
    /// The workspace it happened in.
    pub workspace: WorkspaceId,
    /// The event.
    pub event: Event,
}

/// The broadcast channel of ephemeral events, one per origin.
pub struct Relay {
    tx: broadcast::Sender<Relayed>,
}

impl Default for Relay {
    fn default() -> Self {
        Relay::new()
    }
}

impl Relay {
    /// An empty relay.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(RELAY_CAPACITY);
        Relay { tx }
    }

    /// Hands an event to every listening feed stream (none listening is fine: no edge wants it).
    pub fn publish(&self, relayed: Relayed) {
        let _ = self.tx.send(relayed);
    }

    /// A feed stream's subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Relayed> {
        self.tx.subscribe()
    }
}
