//! Fixtures of the workspace state's unit tests: one small workspace, feed events for it, and
//! the state's invariants.

use selvage_shared::link::{ChannelState, ReadMarker, WorkspaceSnapshot};
use selvage_shared::{
    Channel, ChannelBoot, ChannelId, ChannelKind, Cursor, ErrorCode, Event, EventFrame, FeedItem, Message, Query,
    QueryKind, QueryResult, Seq, User, UserId, Workspace, WorkspaceId, POSITION_LEN,
};

use super::state::restricted;
use super::{CacheLimits, QueryAnswer, Recipients, WorkspaceState};

pub(crate) fn cur(n: u64) -> Cursor {
    let mut pos = [0u8; POSITION_LEN];
    pos[2..10].copy_from_slice(&n.to_be_bytes());
    Cursor::from_position(&pos)
}

pub(crate) fn uid(s: &str) -> UserId {
    UserId::new_unchecked(s)
}

pub(crate) fn cid(s: &str) -> ChannelId {
    ChannelId::new_unchecked(s)
}

pub(super) fn uids(ids: &[&str]) -> Vec<UserId> {
    ids.iter().map(|s| uid(s)).collect()
}

pub(super) fn ws_id() -> WorkspaceId {
    WorkspaceId::new_unchecked("W1")
}

pub(crate) fn user(id: &str) -> User {
    User {
        id: uid(id),
        handle: id.to_lowercase(),
        name: format!("User {id}"),
        admin: false,
        deactivated: false,
        tokens_valid_from: 0,
        bot: None,
        created_at: 1,
    }
}

pub(crate) fn chan(id: &str, kind: ChannelKind, private: bool) -> Channel {
    Channel {
        id: cid(id),
        name: id.to_lowercase(),
        kind,
        private,
        archived: false,
        topic: String::new(),
        purpose: String::new(),
        created_by: uid("U1"),
        created_at: 1,
    }
}

pub(super) fn msg(channel: &str, seq: Seq, author: &str) -> Message {
    Message {
        client_msg_id: format!("m{seq}"),
        ..Message::new(cid(channel), seq, 1000 + seq as i64, uid(author), format!("message {seq} in {channel}"))
    }
}

pub(super) fn item(n: u64, event: Event) -> FeedItem {
    FeedItem { cursor: cur(n), workspace: ws_id(), ts: 0, event }
}

pub(super) fn channel_state(channel: Channel, last_seq: Seq, members: &[&str]) -> ChannelState {
    ChannelState { channel, last_seq, members: uids(members) }
}

/// U1..U5 (U5 deactivated); C1 public, C2 private, C3 public, D1 = U1+U4, G1 = U1+U2+U5,
/// D2 = U2+U3; consistent with cursor 100.
pub(super) fn snapshot() -> WorkspaceSnapshot {
    let mut u5 = user("U5");
    u5.deactivated = true;
    WorkspaceSnapshot {
        workspace: Workspace { id: ws_id(), name: "Acme".into(), created_at: 1 },
        cursor: cur(100),
        users: vec![user("U1"), user("U2"), user("U3"), user("U4"), u5],
        channels: vec![
            channel_state(chan("C1", ChannelKind::Channel, false), 10, &["U1", "U2", "U3"]),
            channel_state(chan("C2", ChannelKind::Channel, true), 3, &["U1", "U2"]),
            channel_state(chan("C3", ChannelKind::Channel, false), 0, &["U2"]),
            channel_state(chan("D1", ChannelKind::Dm, true), 2, &["U1", "U4"]),
            channel_state(chan("G1", ChannelKind::GroupDm, true), 0, &["U1", "U2", "U5"]),
            channel_state(chan("D2", ChannelKind::Dm, true), 0, &["U2", "U3"]),
        ],
        read_markers: vec![
            ReadMarker { user: uid("U1"), channel: cid("C1"), seq: 7 },
            ReadMarker { user: uid("U1"), channel: cid("D1"), seq: 2 },
        ],
        mentions: Vec::new(),
        channel_mentions: Vec::new(),
    }
}

pub(super) fn state() -> WorkspaceState {
    WorkspaceState::from_snapshot(snapshot(), CacheLimits::default())
}

pub(super) fn state_with(limits: CacheLimits) -> WorkspaceState {
    WorkspaceState::from_snapshot(snapshot(), limits)
}

pub(super) fn query(kind: QueryKind) -> Query {
    Query::new("q1", kind)
}

pub(super) fn in_channel(kind: QueryKind, channel: &str) -> Query {
    Query { channel: Some(cid(channel)), ..query(kind) }
}

pub(super) fn answer(a: QueryAnswer) -> QueryResult {
    match a {
        QueryAnswer::Answer(result) => result,
        other => panic!("expected an answer, got {other:?}"),
    }
}

pub(super) fn refusal_code(a: QueryAnswer) -> ErrorCode {
    match a {
        QueryAnswer::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Recipients spelled out, for comparing.
#[derive(Debug, PartialEq)]
pub(super) enum Got {
    Nobody,
    Users(Vec<UserId>),
    Everyone,
}

pub(super) fn recipients(s: &mut WorkspaceState, n: u64, event: Event) -> Got {
    let recipients = s.apply(&item(n, event)).map(|a| a.recipients).expect("applied");
    let mut users: Vec<UserId> = match recipients {
        Recipients::Nobody => return Got::Nobody,
        Recipients::Everyone => return Got::Everyone,
        Recipients::User(user) => vec![user],
        Recipients::Members(c) => s.members(&c).into_iter().flatten().cloned().collect(),
        Recipients::MembersAnd(c, user) => s.members(&c).into_iter().flatten().cloned().chain([user]).collect(),
        Recipients::Followers(c, followers) => followers.into_iter().filter(|u| s.is_member(&c, u)).collect(),
    };
    users.sort();
    users.dedup();
    if users.is_empty() {
        Got::Nobody
    } else {
        Got::Users(users)
    }
}

pub(super) fn ids<T: AsRef<str>>(items: &[T]) -> Vec<&str> {
    items.iter().map(AsRef::as_ref).collect()
}

pub(super) fn channel_ids(boots: &[ChannelBoot]) -> Vec<&str> {
    boots.iter().map(|b| b.channel.id.as_str()).collect()
}

pub(super) fn frame_cursors(frames: &[EventFrame]) -> Vec<Cursor> {
    frames.iter().map(|f| f.cursor.clone()).collect()
}

/// Both membership indexes agree, and the running weight matches a recount.
pub(super) fn check_invariants(s: &WorkspaceState) {
    for (id, entry) in &s.channels {
        for member in &entry.members {
            assert!(s.channels_of(member).contains(id), "{member} in {id} but not in joined");
        }
        assert_eq!(s.public.contains(id), !restricted(&entry.channel), "public index of {id}");
    }
    for (user, joined) in &s.joined {
        for c in joined {
            assert!(s.is_member(c, user), "{user} joined {c} but is not a member");
        }
    }
    assert_eq!(s.bytes, s.recompute_bytes(), "running weight drifted");
}

pub(super) fn history(
    s: &WorkspaceState,
    channel: &str,
    after: Option<Seq>,
    before: Option<Seq>,
    limit: u32,
) -> QueryAnswer {
    let q = Query { after, before, limit: Some(limit), ..in_channel(QueryKind::History, channel) };
    s.query(&uid("U1"), &q)
}

pub(super) fn seqs(a: QueryAnswer) -> (Vec<Seq>, Option<String>) {
    let result = answer(a);
    (result.messages.iter().map(|m| m.seq).collect(), result.next)
}
