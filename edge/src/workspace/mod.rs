//! A workspace as an edge holds it: users, channels, memberships, read markers and the recent
//! events and messages of each channel, kept current by the origin's feed (ARCHITECTURE §3).
//!
//! [`WorkspaceState`] is pure, synchronous logic with no I/O: the edge wraps it in its caches,
//! locks and sessions elsewhere ([`crate::fanout`]), and everything here can be tested alone.
//!
//! - `state`: building the state from a snapshot and applying feed events to it,
//!   saying who should get each one.
//! - `buffers`: the bounded tails of recent events and messages, and what each
//!   is complete for.
//! - `queries`: what a client is answered from the state: its `hello` and its
//!   queries.
//! - `replay`: what a resuming client missed, from the buffers, with fan-out's
//!   rule applied to membership as it was.
//! - `weigh`: the estimate of the memory the state holds, which the cache of
//!   workspaces is bounded by.
//!
//! # Consistency with the cursor
//!
//! A state is built from a [`WorkspaceSnapshot`], which the origin reads in one transaction
//! together with the cursor of the newest feed event it reflects. From then on the state moves
//! only by [`WorkspaceState::apply`]ing feed items in log order; [`WorkspaceState::cursor`] is
//! the newest event reflected. Everything answered from the state — `hello`, queries, replays —
//! is therefore exactly "the workspace as of that cursor", and a session that starts from a boot
//! built here and then receives every event after its cursor never misses or doubles one. Items
//! at or before the cursor are ignored, so re-delivery after a feed reconnect is harmless.
//! Ephemeral events (typing, presence) are not log entries: they are routed but never move the
//! cursor, so they cannot make a later real event look stale.
//!
//! # Why buffers carry coverage markers
//!
//! The edge keeps only a bounded tail of events and messages. A bounded tail alone cannot tell
//! "nothing happened" from "it happened and was evicted", and answering a resume or a history
//! page from an incomplete tail would silently lose data. So every buffer states what it is
//! complete for:
//!
//! - an event buffer holds *every* event of its kind with a cursor after `covered_after`
//!   (initially the snapshot cursor; on eviction, the evicted entry's cursor);
//! - a message buffer holds *every* message with a `seq` after `covered_from_seq` (initially
//!   the channel's `last_seq` at snapshot time; on eviction, the evicted message's `seq`).
//!
//! [`WorkspaceState::replay_after`] answers only when every buffer that could hold an event the
//! user may see covers the client's cursor, and a `history` query is answered only when the
//! requested range is covered; otherwise the caller is told to go to the origin (or `resync`).
//!
//! Events are buffered by who may see them: channel events in their channel's buffer; events
//! without a channel (`user_updated`) in the workspace buffer; and the events a user sees
//! whatever the channel's visibility — their own read markers and their own `member_joined` /
//! `member_left` — in that user's personal buffer. The last kind matters because the origin
//! shows a user their own departure from a private channel they can no longer see; without a
//! personal buffer a replay would have to either miss it or consult every channel.

mod buffers;
#[cfg(test)]
pub(crate) mod fixtures;
mod queries;
mod replay;
mod state;
mod weigh;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use selvage_shared::{Channel, ChannelId, Cursor, Seq, User, UserId, Workspace};

use self::buffers::{EventBuffer, MessageBuffer};
pub use self::queries::{Boot, QueryAnswer, DEFAULT_HISTORY_LIMIT, DEFAULT_PAGE_LIMIT};

/// How much recent data a [`WorkspaceState`] keeps for replays and history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// Events kept per channel for replays, and messages kept per channel for `history`.
    pub recent_events_per_channel: usize,
    /// Events without a channel (`user_updated`) kept for replays.
    pub recent_workspace_events: usize,
    /// A user's own read markers and membership changes kept for replays.
    pub recent_events_per_user: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits { recent_events_per_channel: 256, recent_workspace_events: 1024, recent_events_per_user: 16 }
    }
}

/// Who among the workspace's connected users should get an event, read against the state
/// right after the event was applied. Naming the channel instead of listing its members keeps
/// the cost of an event in a large channel in the sessions it reaches, not in its membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipients {
    /// No client gets it (internal events, channels nobody is in).
    Nobody,
    /// One user (their own joins and departures in channels the edge does not know, their read
    /// markers).
    User(UserId),
    /// The channel's members.
    Members(ChannelId),
    /// The channel's members and one more user: the one who just left it.
    MembersAnd(ChannelId, UserId),
    /// Those of the channel's members who follow a thread: a reply goes to the root's author,
    /// everyone who replied, and whoever the reply mentions.
    Followers(ChannelId, Vec<UserId>),
    /// Every connected user of the workspace.
    Everyone,
}

/// What applying one feed item did, for fan-out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Who should get the event.
    pub recipients: Recipients,
}

/// A workspace's state as an edge holds it, consistent with [`WorkspaceState::cursor`].
#[derive(Clone, Debug)]
pub struct WorkspaceState {
    workspace: Workspace,
    limits: CacheLimits,
    /// The cursor of the snapshot the state was built from.
    snapshot_cursor: Cursor,
    /// The newest event reflected.
    cursor: Cursor,
    /// Every user, by id (ordered: `users` queries page through it).
    users: BTreeMap<UserId, User>,
    channels: HashMap<ChannelId, ChannelEntry>,
    /// Channels visible to everyone (not private, not DMs), ordered for `channels` pages.
    public: BTreeSet<ChannelId>,
    /// Channels per user: the other direction of each channel's `members`.
    joined: HashMap<UserId, BTreeSet<ChannelId>>,
    /// Read markers: user → channel → last seq read.
    read_markers: HashMap<UserId, HashMap<ChannelId, Seq>>,
    /// Recent events without a channel.
    workspace_events: EventBuffer,
    /// Recent events each user sees whatever the channel: own read markers and memberships.
    personal: HashMap<UserId, EventBuffer>,
    /// Channels the feed mentioned before (or without) creating them; see [`Orphan`].
    orphans: HashMap<ChannelId, Orphan>,
    /// Unread mentions by name or `@here`: channel → user → seqs after the user's marker.
    mentions: HashMap<ChannelId, HashMap<UserId, BTreeSet<Seq>>>,
    /// `@channel` messages: channel → seq → author (each mentions every other member).
    channel_mentions: HashMap<ChannelId, BTreeMap<Seq, UserId>>,
    /// Approximate bytes held, maintained on every change.
    bytes: usize,
    /// Moves whenever any channel's members change (or a channel appears), so that what was
    /// worked out from members can tell it is stale.
    members_version: u64,
}

/// One channel: its record, head, members and recent events and messages.
#[derive(Clone, Debug)]
struct ChannelEntry {
    channel: Channel,
    last_seq: Seq,
    /// Ordered: `members` queries page through it by user id.
    members: BTreeSet<UserId>,
    events: EventBuffer,
    messages: MessageBuffer,
}

/// Events of a channel the state did not know when they arrived (never in log order, but the
/// state must stay exact even then): a later creation of that channel must not claim coverage
/// of what was dropped.
#[derive(Clone, Debug)]
struct Orphan {
    /// The newest dropped event.
    cursor: Cursor,
    /// The highest message seq dropped.
    max_seq: Seq,
}
