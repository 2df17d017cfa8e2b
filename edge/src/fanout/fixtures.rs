//! Fixtures of the fan-out unit tests: small workspaces, sessions without sockets (an outbox
//! each, read directly), and feed events.

use std::sync::Arc;

use selvage_shared::link::{ChannelState, WorkspaceSnapshot};
use selvage_shared::{ChannelKind, Cursor, Event, FeedItem, Format, Message, Workspace, WorkspaceId};

use super::{LiveInner, Out, Outbox};
use crate::workspace::{CacheLimits, WorkspaceState};

use crate::workspace::fixtures::{chan, user};
pub(super) use crate::workspace::fixtures::{cid, cur, uid};

pub(super) fn wid(s: &str) -> WorkspaceId {
    WorkspaceId::new_unchecked(s)
}

fn channel(id: &str, private: bool, members: &[&str]) -> ChannelState {
    let channel = chan(id, ChannelKind::Channel, private);
    ChannelState { channel, last_seq: 0, members: members.iter().map(|m| uid(m)).collect() }
}

/// Workspace `id` at cursor 100: U1, U2, U3; C1 public with U1 and U2, C2 private with U1
/// only; U3 in no channel.
pub(super) fn snapshot(id: &str) -> WorkspaceSnapshot {
    WorkspaceSnapshot {
        workspace: Workspace { id: wid(id), name: id.into(), created_at: 1 },
        cursor: cur(100),
        users: vec![user("U1"), user("U2"), user("U3")],
        channels: vec![channel("C1", false, &["U1", "U2"]), channel("C2", true, &["U1"])],
        read_markers: Vec::new(),
        mentions: Vec::new(),
        channel_mentions: Vec::new(),
    }
}

/// Workspace W1 of [`snapshot`], loaded, with no session.
pub(super) fn live() -> LiveInner {
    LiveInner::new(WorkspaceState::from_snapshot(snapshot("W1"), CacheLimits::default()), false)
}

/// A session of `user` whose outbox holds `capacity` frames (not registered).
pub(super) fn outbox(id: u64, user: &str, capacity: usize) -> Arc<Outbox> {
    Outbox::new(id, uid(user), format!("token-of-{id}"), Format::Json, capacity)
}

/// Registers a session of `user` whose outbox holds `capacity` frames.
pub(super) fn session(inner: &mut LiveInner, id: u64, user: &str, capacity: usize) -> Arc<Outbox> {
    let outbox = outbox(id, user, capacity);
    inner.register(outbox.clone());
    outbox
}

/// The feed item at cursor `n` of workspace W1.
pub(super) fn item(n: u64, event: Event) -> FeedItem {
    FeedItem { cursor: cur(n), workspace: wid("W1"), ts: 0, event }
}

/// Message `seq` of `channel` by `author`, at cursor `n` of workspace W1.
pub(super) fn post(n: u64, channel: &str, seq: u64, author: &str) -> FeedItem {
    item(n, Event::Message(Message::new(cid(channel), seq, 1000, uid(author), format!("message {seq}"))))
}

/// The cursors of the events queued for a session, oldest first (taking them).
pub(super) fn queued(outbox: &Outbox) -> Vec<Cursor> {
    outbox
        .take(usize::MAX)
        .into_iter()
        .map(|out| match out {
            Out::Event(encoded) => encoded.cursor.clone(),
            Out::Reply(_) => panic!("a reply among fanned-out events"),
        })
        .collect()
}
