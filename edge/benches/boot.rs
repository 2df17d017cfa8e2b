//! Boot payloads from a warm cache: the lazy `hello` (ARCHITECTURE §3) against a full-snapshot boot
//! (every user, and every channel the user may see with its whole member list — what Slack's
//! old `rtm.start` sent), for a user in 50 conversations of a 10,000-user workspace.
//!
//! `cargo bench -p selvage-edge --bench boot` times, per format:
//! - `lazy/…`: `WorkspaceState::boot` → `Hello` → one encoded frame, what the edge does per
//!   session;
//! - `full/…`: cloning the visible part of the snapshot → one encoded frame;
//!
//! and prints both payload sizes once. The workspace has the same shape as the one
//! `selvage loadtest hello` seeds through the API (see loadtest/src/hello.rs): the measured user
//! in `#general`, three big channels (5,000, 2,500 and 1,000 members), 5 medium (100–500) and
//! 28 small (3–50) channels, a third private, 9 DMs and 4 group DMs; 450 more channels without
//! them, one in twenty with 200–2,000 members.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use selvage_edge::workspace::{CacheLimits, WorkspaceState};
use selvage_shared::link::{ChannelState, WorkspaceSnapshot};
use selvage_shared::{
    encode_server, Channel, ChannelId, ChannelKind, Cursor, Format, Hello, ServerFrame, User, UserId, Workspace,
    WorkspaceId, PROTOCOL_VERSION,
};

const USERS: usize = 10_000;
const CREATED_AT: i64 = 1_763_800_000_000;

fn user_id(i: usize) -> UserId {
    UserId::new_unchecked(format!("U{i:012}"))
}

fn user(i: usize) -> User {
    const FIRST: [&str; 8] = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Dennis"];
    const LAST: [&str; 8] = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Ritchie"];
    User {
        id: user_id(i),
        handle: format!("u{i:05}"),
        name: format!("{} {} {i}", FIRST[i % 8], LAST[(i / 8) % 8]),
        admin: i == 1,
        deactivated: false,
        tokens_valid_from: 0,
        bot: None,
        created_at: CREATED_AT + i as i64,
    }
}

/// A conversation with the admin (user 1, who creates channels) and `me` (user 0) when asked,
/// plus `others` random users from 2 on.
fn conversation(rng: &mut StdRng, n: usize, kind: ChannelKind, private: bool, others: usize, me: bool) -> ChannelState {
    let mut members: Vec<usize> = sample(rng, USERS - 2, others.min(USERS - 2)).into_iter().map(|u| u + 2).collect();
    if kind == ChannelKind::Channel {
        members.push(1);
    }
    if me {
        members.push(0);
    }
    members.sort_unstable();
    members.dedup();
    let prefix = match kind {
        ChannelKind::Channel => 'C',
        ChannelKind::Dm => 'D',
        ChannelKind::GroupDm => 'G',
    };
    let name = match kind {
        ChannelKind::Channel => format!("project-{n:04}"),
        _ => members.iter().map(|&u| format!("u{u:05}")).collect::<Vec<_>>().join(","),
    };
    ChannelState {
        channel: Channel {
            id: ChannelId::new_unchecked(format!("{prefix}{n:012}")),
            name,
            kind,
            private,
            archived: false,
            topic: String::new(),
            purpose: String::new(),
            created_by: user_id(if kind == ChannelKind::Channel { 1 } else { 0 }),
            created_at: CREATED_AT,
        },
        last_seq: 0,
        members: members.into_iter().map(user_id).collect(),
    }
}

/// The 10,000-user workspace; user 0 is in 50 conversations.
fn workspace() -> WorkspaceSnapshot {
    let mut rng = StdRng::seed_from_u64(1);
    let mut channels = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    let mut general = conversation(&mut rng, next(), ChannelKind::Channel, false, 0, true);
    general.channel.name = "general".into();
    general.members = (0..USERS).map(user_id).collect();
    channels.push(general);
    for size in [USERS / 2, USERS / 4, USERS / 10] {
        channels.push(conversation(&mut rng, next(), ChannelKind::Channel, false, size - 2, true));
    }
    for i in 0..5 {
        let size = rng.random_range(100..=500);
        channels.push(conversation(&mut rng, next(), ChannelKind::Channel, i % 3 == 2, size - 2, true));
    }
    for i in 0..28 {
        let size = rng.random_range(3..=50);
        channels.push(conversation(&mut rng, next(), ChannelKind::Channel, i % 3 == 2, size - 2, true));
    }
    for _ in 0..9 {
        channels.push(conversation(&mut rng, next(), ChannelKind::Dm, true, 1, true));
    }
    for _ in 0..4 {
        let others = rng.random_range(2..=7);
        channels.push(conversation(&mut rng, next(), ChannelKind::GroupDm, true, others, true));
    }
    for i in 0..450 {
        let size = if i % 20 == 19 { rng.random_range(200..=2000) } else { rng.random_range(3..=60) };
        channels.push(conversation(&mut rng, next(), ChannelKind::Channel, i % 4 == 3, size - 1, false));
    }
    WorkspaceSnapshot {
        workspace: Workspace {
            id: WorkspaceId::new_unchecked("W000000000001"),
            name: "Bench".into(),
            created_at: CREATED_AT,
        },
        cursor: Cursor::zero(),
        users: (0..USERS).map(user).collect(),
        channels,
        read_markers: Vec::new(),
        mentions: Vec::new(),
        channel_mentions: Vec::new(),
    }
}

/// What a full-snapshot boot sends `me`: every user, every public channel, and the private
/// channels, DMs and group DMs `me` is in, each with its members.
fn visible_to(snapshot: &WorkspaceSnapshot, me: &UserId) -> WorkspaceSnapshot {
    WorkspaceSnapshot {
        channels: snapshot.channels.iter().filter(|c| !c.channel.private || c.members.contains(me)).cloned().collect(),
        ..snapshot.clone()
    }
}

fn lazy_hello(state: &WorkspaceState, me: &UserId, format: Format) -> Vec<u8> {
    // The benchmark's own workspace always has the measured user.
    #[allow(clippy::expect_used)]
    let boot = state.boot(me).expect("the measured user boots");
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        session_id: "edge-1-123456".into(),
        cursor: state.cursor().clone(),
        self_user: boot.self_user,
        channels: boot.channels,
        users: boot.users,
        heartbeat_ms: 30_000,
        resumed: false,
    };
    encode_server(&ServerFrame::Hello(hello), format)
}

fn full_snapshot(visible: &WorkspaceSnapshot, format: Format) -> Vec<u8> {
    let frame = visible.clone();
    // Encoding plain derived data into a Vec cannot fail.
    #[allow(clippy::expect_used)]
    match format {
        Format::Json => serde_json::to_vec(&frame).expect("encodes"),
        Format::MsgPack => selvage_shared::try_to_msgpack(&frame).expect("encodes"),
    }
}

fn boot(c: &mut Criterion) {
    let snapshot = workspace();
    let me = user_id(0);
    let visible = visible_to(&snapshot, &me);
    let state = WorkspaceState::from_snapshot(snapshot, CacheLimits::default());
    let mine = state.channels_of(&me).len();
    assert_eq!(mine, 50, "the measured user is in 50 conversations");
    for format in [Format::Json, Format::MsgPack] {
        let lazy = lazy_hello(&state, &me, format).len();
        let full = full_snapshot(&visible, format).len();
        eprintln!(
            "{format}: lazy hello {lazy} bytes; full snapshot {full} bytes ({} users, {} channels, {} memberships) \
             = {:.1}× the hello",
            visible.users.len(),
            visible.channels.len(),
            visible.channels.iter().map(|c| c.members.len()).sum::<usize>(),
            full as f64 / lazy as f64
        );
    }
    c.bench_function("lazy/boot", |b| b.iter(|| black_box(state.boot(black_box(&me)))));
    c.bench_function("lazy/json", |b| b.iter(|| black_box(lazy_hello(&state, black_box(&me), Format::Json))));
    c.bench_function("lazy/msgpack", |b| b.iter(|| black_box(lazy_hello(&state, black_box(&me), Format::MsgPack))));
    c.bench_function("full/json", |b| b.iter(|| black_box(full_snapshot(black_box(&visible), Format::Json))));
    c.bench_function("full/msgpack", |b| b.iter(|| black_box(full_snapshot(black_box(&visible), Format::MsgPack))));
}

criterion_group!(benches, boot);
criterion_main!(benches);
