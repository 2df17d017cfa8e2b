//! Proptest strategies for every type of the wire contract, shared by the integration tests.
//! Client frames are generated valid (within every limit), so they survive `decode_client`.

#![allow(dead_code)]

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use selvage_shared::*;

pub fn id_string() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,32}"
}

pub fn workspace_id() -> impl Strategy<Value = WorkspaceId> {
    id_string().prop_map(WorkspaceId::new_unchecked)
}

pub fn user_id() -> impl Strategy<Value = UserId> {
    id_string().prop_map(UserId::new_unchecked)
}

pub fn channel_id() -> impl Strategy<Value = ChannelId> {
    id_string().prop_map(ChannelId::new_unchecked)
}

pub fn cursor() -> impl Strategy<Value = Cursor> {
    any::<[u8; 12]>().prop_map(|pos| Cursor::from_position(&pos))
}

/// Any Unicode text, including the empty string.
pub fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

/// A request id or `client_msg_id`: 1 to 64 bytes.
pub fn request_id() -> impl Strategy<Value = String> {
    "[ -~]{1,64}"
}

pub fn user() -> impl Strategy<Value = User> {
    (user_id(), text(), text(), any::<bool>(), any::<bool>(), any::<i64>()).prop_map(
        |(id, handle, name, admin, deactivated, created_at)| User {
            id,
            handle,
            name,
            admin,
            deactivated,
            created_at,
            tokens_valid_from: 0,
            bot: None,
        },
    )
}

pub fn channel_kind() -> impl Strategy<Value = ChannelKind> {
    prop_oneof![Just(ChannelKind::Channel), Just(ChannelKind::Dm), Just(ChannelKind::GroupDm)]
}

pub fn channel() -> impl Strategy<Value = Channel> {
    (channel_id(), text(), channel_kind(), any::<bool>(), any::<bool>(), text(), text(), user_id(), any::<i64>())
        .prop_map(|(id, name, kind, private, archived, topic, purpose, created_by, created_at)| Channel {
            id,
            name,
            kind,
            private,
            archived,
            topic,
            purpose,
            created_by,
            created_at,
        })
}

pub fn reaction() -> impl Strategy<Value = Reaction> {
    (text(), proptest::collection::vec(user_id(), 0..4)).prop_map(|(emoji, users)| Reaction {
        emoji,
        count: users.len() as u32,
        users,
    })
}

pub fn message() -> impl Strategy<Value = Message> {
    let base = (
        channel_id(),
        any::<u64>(),
        any::<i64>(),
        user_id(),
        text(),
        text(),
        option::of(any::<u64>()),
        option::of(any::<i64>()),
        any::<bool>(),
    );
    let extra = (
        proptest::collection::vec(user_id(), 0..3),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(reaction(), 0..3),
        any::<u32>(),
        option::of(any::<i64>()),
        option::of(any::<u64>()),
        proptest::collection::vec(user_id(), 0..3),
    );
    (base, extra).prop_map(
        |(
            (channel, seq, ts, user, text, client_msg_id, thread_root, edited_at, deleted),
            (
                mentions,
                mentions_channel,
                mentions_here,
                reactions,
                reply_count,
                latest_reply,
                latest_reply_seq,
                reply_users,
            ),
        )| Message {
            channel,
            seq,
            ts,
            user,
            text,
            client_msg_id,
            thread_root,
            edited_at,
            deleted,
            mentions,
            mentions_channel,
            mentions_here,
            mentions_here_users: Vec::new(),
            reactions,
            reply_count,
            latest_reply,
            latest_reply_seq,
            reply_users,
            thread_followers: Vec::new(),
            files: Vec::new(),
        },
    )
}

pub fn presence() -> impl Strategy<Value = Presence> {
    prop_oneof![Just(Presence::Active), Just(Presence::Away), Just(Presence::Dnd), Just(Presence::Offline)]
}

pub fn channel_boot() -> impl Strategy<Value = ChannelBoot> {
    (channel(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(channel, last_seq, read_seq, unread, mentions)| ChannelBoot { channel, last_seq, read_seq, unread, mentions },
    )
}

pub fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        message().prop_map(Event::Message),
        (channel_id(), any::<u64>(), message())
            .prop_map(|(channel, seq, message)| { Event::MessageChanged { channel, seq, message } }),
        (channel_id(), any::<u64>()).prop_map(|(channel, seq)| Event::MessageDeleted { channel, seq }),
        (channel_id(), any::<u64>(), user_id(), text())
            .prop_map(|(channel, seq, user, emoji)| { Event::ReactionAdded { channel, seq, user, emoji } }),
        (channel_id(), any::<u64>(), user_id(), text())
            .prop_map(|(channel, seq, user, emoji)| { Event::ReactionRemoved { channel, seq, user, emoji } }),
        (channel_id(), user_id()).prop_map(|(channel, user)| Event::MemberJoined { channel, user }),
        (channel_id(), user_id()).prop_map(|(channel, user)| Event::MemberLeft { channel, user }),
        channel().prop_map(|channel| Event::ChannelCreated { channel }),
        channel().prop_map(|channel| Event::ChannelUpdated { channel }),
        user().prop_map(|user| Event::UserUpdated { user }),
        (channel_id(), user_id(), any::<u64>()).prop_map(|(channel, user, seq)| Event::ReadMarker {
            channel,
            user,
            seq
        }),
        (channel_id(), user_id()).prop_map(|(channel, user)| Event::Typing { channel, user }),
        (user_id(), presence()).prop_map(|(user, presence)| Event::PresenceChange { user, presence }),
        "[0-9a-f]{64}".prop_map(|token_hash| Event::TokenRevoked { token_hash }),
        (channel_id(), user_id(), user_id(), text(), any::<i64>())
            .prop_map(|(channel, user, from, text, ts)| { Event::EphemeralMessage { channel, user, from, text, ts } }),
    ]
}

pub fn feed_event() -> impl Strategy<Value = FeedEvent> {
    (workspace_id(), any::<i64>(), event()).prop_map(|(workspace, ts, event)| FeedEvent { workspace, ts, event })
}

pub fn feed_item() -> impl Strategy<Value = FeedItem> {
    (cursor(), workspace_id(), event()).prop_map(|(cursor, workspace, event)| FeedItem {
        cursor,
        workspace,
        ts: 0,
        event,
    })
}

pub fn query_kind() -> impl Strategy<Value = QueryKind> {
    prop_oneof![
        Just(QueryKind::Users),
        Just(QueryKind::Members),
        Just(QueryKind::History),
        Just(QueryKind::Channels),
        Just(QueryKind::Thread),
    ]
}

/// A query that passes validation: kinds that need a channel (and root) have one.
pub fn query() -> impl Strategy<Value = Query> {
    (
        request_id(),
        query_kind(),
        channel_id(),
        option::of(channel_id()),
        vec(user_id(), 0..4),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        any::<u64>(),
        option::of(1..=MAX_QUERY_LIMIT as u32),
        option::of(text()),
    )
        .prop_map(|(id, q, needed, maybe, users, before, after, root, limit, page)| {
            let needs_channel = matches!(q, QueryKind::Members | QueryKind::History | QueryKind::Thread);
            let channel = if needs_channel { Some(needed) } else { maybe };
            let root = (q == QueryKind::Thread).then_some(root);
            Query { channel, users, before, after, root, limit, page, ..Query::new(id, q) }
        })
}

pub fn search_sort() -> impl Strategy<Value = SearchSort> {
    prop_oneof![Just(SearchSort::Relevance), Just(SearchSort::Recent)]
}

/// A `search` query that passes validation: a text with something besides spaces, and only
/// the fields a search takes.
pub fn search_query() -> impl Strategy<Value = Query> {
    (
        request_id(),
        "[^\\x00]{0,23}[^\\x00\\s]",
        option::of(search_sort()),
        option::of(1..=MAX_SEARCH_LIMIT as u32),
        option::of(text()),
        option::of(cursor()),
    )
        .prop_map(|(id, text, sort, limit, page, wait_for)| Query {
            text: Some(text),
            sort,
            limit,
            page,
            wait_for,
            ..Query::new(id, QueryKind::Search)
        })
}

/// A client frame that passes validation.
pub fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        // Valid texts: 1 to 24 characters, none of them U+0000 (which `validate` refuses).
        (request_id(), channel_id(), "[^\\x00]{1,24}", request_id(), option::of(1..u64::MAX)).prop_map(
            |(id, channel, text, client_msg_id, thread_root)| {
                ClientFrame::Send { id, channel, text, client_msg_id, thread_root }
            }
        ),
        request_id().prop_map(|id| ClientFrame::Ping { id }),
        channel_id().prop_map(|channel| ClientFrame::Typing { channel }),
        vec(user_id(), 0..6).prop_map(|users| ClientFrame::PresenceSub { users }),
        query().prop_map(ClientFrame::Query),
        search_query().prop_map(ClientFrame::Query),
        (channel_id(), any::<u64>()).prop_map(|(channel, seq)| ClientFrame::MarkRead { channel, seq }),
        any::<bool>().prop_map(|dnd| ClientFrame::SetPresence { dnd }),
        request_id().prop_map(|id| ClientFrame::Query(Query::new(id, QueryKind::NotifyPrefs))),
        (request_id(), vec("[a-z]{1,12}", 0..3), option::of(-(1i64 << 53) + 1..(1i64 << 53)), any::<bool>()).prop_map(
            |(id, keywords, dnd_until, email)| {
                let prefs = NotifyPrefs { keywords, dnd_until, email, ..NotifyPrefs::default() };
                ClientFrame::SetNotifyPrefs { id, prefs: Box::new(prefs) }
            }
        ),
    ]
}

pub fn hello() -> impl Strategy<Value = Hello> {
    (any::<u32>(), text(), cursor(), user(), vec(channel_boot(), 0..4), vec(user(), 0..4), any::<u64>(), any::<bool>())
        .prop_map(|(protocol, session_id, cursor, self_user, channels, users, heartbeat_ms, resumed)| Hello {
            protocol,
            session_id,
            cursor,
            self_user,
            channels,
            users,
            heartbeat_ms,
            resumed,
        })
}

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadFrame),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::Forbidden),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::NotMember),
        Just(ErrorCode::Archived),
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::Overloaded),
        Just(ErrorCode::Unavailable),
        Just(ErrorCode::Conflict),
        Just(ErrorCode::UnknownCommand),
        Just(ErrorCode::CommandFailed),
        Just(ErrorCode::Internal),
    ]
}

pub fn search_result() -> impl Strategy<Value = SearchResult> {
    let snippet = (text(), text(), any::<u64>(), vec(any::<[u64; 2]>(), 0..3))
        .prop_map(|(field, fragment, offset, highlights)| SearchSnippet { field, fragment, offset, highlights });
    (channel(), message(), vec(snippet, 0..3)).prop_map(|(channel, message, snippets)| SearchResult {
        channel,
        message,
        snippets,
    })
}

pub fn query_result() -> impl Strategy<Value = QueryResult> {
    (
        text(),
        vec(user(), 0..3),
        vec(channel_boot(), 0..3),
        vec(user_id(), 0..3),
        vec(message(), 0..3),
        vec(search_result(), 0..2),
        option::of(any::<bool>()),
        option::of(text()),
        option::of((vec("[a-z]{1,12}", 0..3), option::of("[A-Z][a-z]{2,8}/[A-Z][a-z]{2,8}"))),
    )
        .prop_map(|(reply_to, users, channels, members, messages, results, caught_up, next, prefs)| QueryResult {
            reply_to,
            users,
            channels,
            members,
            messages,
            results,
            caught_up,
            next,
            notify_prefs: prefs
                .map(|(keywords, timezone)| Box::new(NotifyPrefs { keywords, timezone, ..NotifyPrefs::default() })),
        })
}

pub fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        1 => hello().prop_map(ServerFrame::Hello),
        1 => (text(), channel_id(), any::<u64>(), any::<i64>(), option::of(cursor())).prop_map(
            |(reply_to, channel, seq, ts, cursor)| ServerFrame::Ack {
                reply_to,
                channel,
                seq,
                ts,
                cursor
            }
        ),
        1 => (option::of(text()), error_code(), text(), option::of(any::<u64>())).prop_map(
            |(reply_to, code, message, retry_after_ms)| ServerFrame::Error { reply_to, code, message, retry_after_ms }
        ),
        1 => (text(), text(), prop_oneof![
            Just(CommandAnswer::InChannel),
            Just(CommandAnswer::Ephemeral),
            Just(CommandAnswer::Deferred)
        ])
            .prop_map(|(reply_to, command, answer)| ServerFrame::Command { reply_to, command, answer }),
        1 => text().prop_map(|reply_to| ServerFrame::Pong { reply_to }),
        1 => query_result().prop_map(ServerFrame::Result),
        1 => any::<u64>().prop_map(|reconnect_in_ms| ServerFrame::Goodbye { reconnect_in_ms }),
        1 => text().prop_map(|reason| ServerFrame::Resync { reason }),
        // Event frames weigh as much as all the rest: they are most of the traffic.
        6 => (cursor(), event()).prop_map(|(cursor, event)| ServerFrame::event(cursor, event)),
    ]
}

pub fn feed_request() -> impl Strategy<Value = FeedRequest> {
    prop_oneof![
        option::of(cursor()).prop_map(|cursor| FeedRequest::Subscribe { cursor }),
        cursor().prop_map(|cursor| FeedRequest::Ack { cursor }),
    ]
}

pub fn feed_frame() -> impl Strategy<Value = FeedFrame> {
    prop_oneof![
        (vec(feed_item(), 0..5), cursor()).prop_map(|(items, cursor)| FeedFrame::Events { items, cursor }),
        cursor().prop_map(|cursor| FeedFrame::Heartbeat { cursor }),
        (text(), cursor()).prop_map(|(reason, cursor)| FeedFrame::Resync { reason, cursor }),
    ]
}
