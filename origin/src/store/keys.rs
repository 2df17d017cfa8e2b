//! The origin's keyspace (ARCHITECTURE §2): every key the origin writes, tuple-encoded.
//!
//! All workspace data lives under `("ws", W, …)`, so every read and write is scoped by workspace
//! by construction; the feed log lives under `("log", versionstamp)` and tokens under
//! `("tok", sha256)`. Keeping the builders in one place keeps the layout reviewable.

use selvage_shared::{AppId, ChannelId, Seq, UserId, WorkspaceId};

use super::tuple::Key;

fn ws(w: &WorkspaceId) -> Key {
    Key::new().str("ws").str(w.as_str())
}

/// Prefix of every workspace's keys; the workspace record `(ws, W)` is the first key of each
/// workspace's range (how a rebuild of the search index finds every workspace).
pub fn workspaces() -> Vec<u8> {
    Key::new().str("ws").finish()
}

/// `(ws, W)` → workspace record.
pub fn workspace(w: &WorkspaceId) -> Vec<u8> {
    ws(w).finish()
}

/// `(ws, W, general)` → id of the channel every new user joins.
pub fn meta_general(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("general").finish()
}

/// `(ws, W, user, U)` → user record.
pub fn user(w: &WorkspaceId, u: &UserId) -> Vec<u8> {
    ws(w).str("user").str(u.as_str()).finish()
}

/// Prefix of every user record of a workspace.
pub fn users(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("user").finish()
}

/// `(ws, W, handle, h)` → user id, the handle index.
pub fn handle(w: &WorkspaceId, handle: &str) -> Vec<u8> {
    ws(w).str("handle").str(handle).finish()
}

/// `(ws, W, chan, C)` → channel record.
pub fn channel(w: &WorkspaceId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("chan").str(c.as_str()).finish()
}

/// Prefix of every channel record of a workspace.
pub fn channels(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("chan").finish()
}

/// `(ws, W, chname, name)` → channel id: channel names are unique in a workspace.
pub fn channel_name(w: &WorkspaceId, name: &str) -> Vec<u8> {
    ws(w).str("chname").str(name).finish()
}

/// `(ws, W, dm, members)` → channel id: one DM or group DM per set of people.
pub fn conversation(w: &WorkspaceId, sorted_members: &str) -> Vec<u8> {
    ws(w).str("dm").str(sorted_members).finish()
}

/// `(ws, W, member, C, U)` → membership record.
pub fn member(w: &WorkspaceId, c: &ChannelId, u: &UserId) -> Vec<u8> {
    ws(w).str("member").str(c.as_str()).str(u.as_str()).finish()
}

/// Prefix of a channel's members.
pub fn members(w: &WorkspaceId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("member").str(c.as_str()).finish()
}

/// `(ws, W, joined, U, C)` → membership record, the other direction.
pub fn joined(w: &WorkspaceId, u: &UserId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("joined").str(u.as_str()).str(c.as_str()).finish()
}

/// Prefix of the channels a user is in.
pub fn joined_by(w: &WorkspaceId, u: &UserId) -> Vec<u8> {
    ws(w).str("joined").str(u.as_str()).finish()
}

/// `(ws, W, gates)` → a counter (little-endian i64) every transaction that writes a channel
/// record or a membership of W adds 1 to: while it reads the same, what the sequencer cached
/// of W's channels and memberships is current.
pub fn gates(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("gates").finish()
}

/// `(ws, W, head, C)` → last assigned seq of C.
pub fn head(w: &WorkspaceId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("head").str(c.as_str()).finish()
}

/// `(ws, W, msg, C, seq)` → message.
pub fn message(w: &WorkspaceId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    ws(w).str("msg").str(c.as_str()).uint(seq).finish()
}

/// Prefix of a channel's messages; the seq follows it.
pub fn messages(w: &WorkspaceId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("msg").str(c.as_str()).finish()
}

/// [`message`] from the channel's [`messages`] prefix, for callers that write many.
pub fn message_in(messages: &[u8], seq: Seq) -> Vec<u8> {
    Key::from_prefix(messages).uint(seq).finish()
}

/// `(ws, W, nonce, C, U, client_msg_id)` → the seq given to user U's message with that id in
/// channel C, and what it held (see `sequencer::Dedup`). Per sender, so that no member can
/// claim another's id.
pub fn nonce(w: &WorkspaceId, c: &ChannelId, user: &UserId, client_msg_id: &str) -> Vec<u8> {
    ws(w).str("nonce").str(c.as_str()).str(user.as_str()).str(client_msg_id).finish()
}

/// Prefix of a channel's dedup entries; the sender and the client_msg_id follow it.
pub fn nonces(w: &WorkspaceId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("nonce").str(c.as_str()).finish()
}

/// [`nonce`] from the channel's [`nonces`] prefix, for callers that write many.
pub fn nonce_in(nonces: &[u8], user: &UserId, client_msg_id: &str) -> Vec<u8> {
    Key::from_prefix(nonces).str(user.as_str()).str(client_msg_id).finish()
}

/// `(ws, W, thread, C, root, reply)` → empty: the thread index.
pub fn thread_reply(w: &WorkspaceId, c: &ChannelId, root: Seq, reply: Seq) -> Vec<u8> {
    ws(w).str("thread").str(c.as_str()).uint(root).uint(reply).finish()
}

/// Prefix of one thread's replies.
pub fn thread(w: &WorkspaceId, c: &ChannelId, root: Seq) -> Vec<u8> {
    ws(w).str("thread").str(c.as_str()).uint(root).finish()
}

/// `(ws, W, react, C, seq, emoji, U)` → when the user reacted (ms, little-endian): one key per
/// reaction, so adding and removing are blind, idempotent writes.
pub fn reaction(w: &WorkspaceId, c: &ChannelId, seq: Seq, emoji: &str, u: &UserId) -> Vec<u8> {
    ws(w).str("react").str(c.as_str()).uint(seq).str(emoji).str(u.as_str()).finish()
}

/// `(ws, W, react, C, seq)`: prefix of one message's reactions.
pub fn reactions_of(w: &WorkspaceId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    ws(w).str("react").str(c.as_str()).uint(seq).finish()
}

/// `(ws, W, replies, C, root)` → a thread root's summary (reply count, latest reply, who replied).
pub fn thread_summary(w: &WorkspaceId, c: &ChannelId, root: Seq) -> Vec<u8> {
    ws(w).str("replies").str(c.as_str()).uint(root).finish()
}

/// `(ws, W, mention, U, C, seq)` → empty: message `seq` of C mentions U by name or through
/// `@here`. Entries at or below U's read marker in C are cleared when it moves, so the index
/// holds unread mentions only.
pub fn mention(w: &WorkspaceId, u: &UserId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    ws(w).str("mention").str(u.as_str()).str(c.as_str()).uint(seq).finish()
}

/// `(ws, W, mention, U, C)`: prefix of U's unread mentions in C.
pub fn mentions_in(w: &WorkspaceId, u: &UserId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("mention").str(u.as_str()).str(c.as_str()).finish()
}

/// `(ws, W, mention)`: prefix of every unread mention of a workspace.
pub fn mentions(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("mention").finish()
}

/// `(ws, W, chmention, C, seq)` → author id: message `seq` of C says `@channel`.
pub fn channel_mention(w: &WorkspaceId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    ws(w).str("chmention").str(c.as_str()).uint(seq).finish()
}

/// `(ws, W, chmention, C)`: prefix of C's `@channel` messages.
pub fn channel_mentions_in(w: &WorkspaceId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("chmention").str(c.as_str()).finish()
}

/// `(ws, W, chmention)`: prefix of every `@channel` message of a workspace.
pub fn channel_mentions(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("chmention").finish()
}

/// `(ws, W, file, F)` → file record: name, size, type, object key, uploader, state, and the
/// channel and `seq` of the message that shared it (ARCHITECTURE §8 "Files").
pub fn file(w: &WorkspaceId, f: &str) -> Vec<u8> {
    ws(w).str("file").str(f).finish()
}

/// `(ws, W, chfile, C, seq, F)` → empty: file F was shared in C by message `seq` — a channel's
/// files, newest first by a reverse range read.
pub fn channel_file(w: &WorkspaceId, c: &ChannelId, seq: Seq, f: &str) -> Vec<u8> {
    ws(w).str("chfile").str(c.as_str()).uint(seq).str(f).finish()
}

/// Prefix of a channel's [`channel_file`] entries.
pub fn channel_files(w: &WorkspaceId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("chfile").str(c.as_str()).finish()
}

/// Prefix of a channel's [`channel_file`] entries of message `seq`.
pub fn channel_files_at(w: &WorkspaceId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    ws(w).str("chfile").str(c.as_str()).uint(seq).finish()
}

/// `(ws, W, filebytes)` → bytes of the workspace's files that are pending or stored
/// (little-endian i64, moved by atomic adds): what its quota is checked against.
pub fn file_bytes(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("filebytes").finish()
}

/// `(files, pending, created_at, W, F)` → empty: file F of W was declared at `created_at` (ms)
/// and is still pending — the sweeper's index of uploads never completed, oldest first. Written
/// with the pending record, cleared when the file leaves that state.
pub fn file_pending(created_at: i64, w: &WorkspaceId, f: &str) -> Vec<u8> {
    Key::new().str("files").str("pending").int(created_at).str(w.as_str()).str(f).finish()
}

/// Prefix of every [`file_pending`] entry.
pub fn files_pending() -> Vec<u8> {
    Key::new().str("files").str("pending").finish()
}

/// Where the [`file_pending`] entries of files declared at `created_at` (ms) begin: the end of
/// a range of those declared before.
pub fn files_pending_at(created_at: i64) -> Vec<u8> {
    Key::new().str("files").str("pending").int(created_at).finish()
}

/// `(files, gc, due, W, F, object_key)` → empty: the object must be deleted from the bucket at
/// or after `due` (ms) — a deleted, failed or expired file's bytes or thumbnails. The sweeper
/// deletes it and clears the entry; deleting what is already gone is harmless, so a repeat is.
pub fn file_gc(due: i64, w: &WorkspaceId, f: &str, object_key: &str) -> Vec<u8> {
    Key::new().str("files").str("gc").int(due).str(w.as_str()).str(f).str(object_key).finish()
}

/// Prefix of every [`file_gc`] entry.
pub fn files_gc() -> Vec<u8> {
    Key::new().str("files").str("gc").finish()
}

/// Where the [`file_gc`] entries due at `due` (ms) begin: the end of a range of those due
/// before.
pub fn files_gc_at(due: i64) -> Vec<u8> {
    Key::new().str("files").str("gc").int(due).finish()
}

/// `(ws, W, read, U, C)` → the user's read marker in C.
pub fn read_marker(w: &WorkspaceId, u: &UserId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("read").str(u.as_str()).str(c.as_str()).finish()
}

/// `(tok, sha256(token))` → token record.
pub fn token(hash: &[u8; 32]) -> Vec<u8> {
    Key::new().str("tok").bytes(hash).finish()
}

/// Prefix of the feed log.
pub fn log() -> Vec<u8> {
    Key::new().str("log").finish()
}

/// Tuple type code of a 96-bit versionstamp.
const VERSIONSTAMP_CODE: u8 = 0x33;

/// `(log, versionstamp)` with the versionstamp still to be filled in at commit: the key and the
/// offset of its 10 placeholder bytes, for `set_versionstamped_key`. `order` is the tuple
/// versionstamp's user version: the event's place among those of one transaction.
pub fn log_entry_placeholder(order: u16) -> (Vec<u8>, usize) {
    // One per message written: the `(log)` prefix is encoded once.
    static LOG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(log);
    let mut key = Vec::with_capacity(LOG.len() + 13);
    key.extend_from_slice(&LOG);
    key.push(VERSIONSTAMP_CODE);
    let offset = key.len();
    key.extend_from_slice(&[0xff; 10]);
    key.extend_from_slice(&order.to_be_bytes());
    (key, offset)
}

/// `(log, versionstamp)` of a known entry: the 10-byte commit versionstamp and the 2-byte
/// order within it, as a cursor carries them.
pub fn log_entry(position: &[u8; 12]) -> Vec<u8> {
    let mut key = log();
    key.push(VERSIONSTAMP_CODE);
    key.extend_from_slice(position);
    key
}

/// The 12-byte log position of a log key, if it is one.
pub fn log_position(key: &[u8]) -> Option<[u8; 12]> {
    let prefix = log();
    let rest = key.strip_prefix(prefix.as_slice())?;
    let (code, pos) = rest.split_first()?;
    if *code != VERSIONSTAMP_CODE || pos.len() != 12 {
        return None;
    }
    let mut out = [0u8; 12];
    out.copy_from_slice(pos);
    Some(out)
}

/// `(ws, W, app, A)` → an app: its name, bot user and scopes (ARCHITECTURE §8 "Apps").
pub fn app(w: &WorkspaceId, a: &AppId) -> Vec<u8> {
    ws(w).str("app").str(a.as_str()).finish()
}

/// Prefix of a workspace's [`app`]s.
pub fn apps(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("app").finish()
}

/// `(inhook, hash)` → an incoming webhook, by the SHA-256 of its secret: what
/// `POST /v1/hooks/{secret}` looks up.
pub fn incoming(hash: &[u8; 32]) -> Vec<u8> {
    Key::new().str("inhook").bytes(hash).finish()
}

/// `(ws, W, inhooks, A, I)` → incoming webhook I of app A and its secret's hash: to list and
/// delete them.
pub fn incoming_listed(w: &WorkspaceId, a: &AppId, i: &str) -> Vec<u8> {
    ws(w).str("inhooks").str(a.as_str()).str(i).finish()
}

/// Prefix of app A's [`incoming_listed`] hooks.
pub fn incoming_of(w: &WorkspaceId, a: &AppId) -> Vec<u8> {
    ws(w).str("inhooks").str(a.as_str()).finish()
}

/// `(ws, W, cmd, name)` → slash command `/name` of the workspace: its app, URL and secret.
pub fn command(w: &WorkspaceId, name: &str) -> Vec<u8> {
    ws(w).str("cmd").str(name).finish()
}

/// Prefix of a workspace's [`command`]s.
pub fn commands(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("cmd").finish()
}

/// `(cmdresp, hash)` → where the answers to one run of a command go, by the SHA-256 of its
/// `response_url`'s secret, until it expires.
pub fn command_response(hash: &[u8; 32]) -> Vec<u8> {
    Key::new().str("cmdresp").bytes(hash).finish()
}

/// `(cmdrun, hash)` → one run of a command by the SHA-256 of its workspace, sender and
/// `client_msg_id`: a retried send finds it and does not run the command again.
pub fn command_run(hash: &[u8; 32]) -> Vec<u8> {
    Key::new().str("cmdrun").bytes(hash).finish()
}

/// `(cmdexp, expires_at, hash)` → empty: [`command_response`]s and [`command_run`]s by expiry,
/// to clear them.
pub fn command_expiry(expires_at: i64, hash: &[u8; 32]) -> Vec<u8> {
    Key::new().str("cmdexp").int(expires_at).bytes(hash).finish()
}

/// The hash of a [`command_expiry`] key.
pub fn command_expiry_hash(key: &[u8]) -> Option<[u8; 32]> {
    match super::tuple::unpack(key).ok()?.pop()? {
        super::tuple::Element::Bytes(b) => b.try_into().ok(),
        _ => None,
    }
}

/// `(ws, W, hook, H)` → an event webhook endpoint: its app, URL, event types, secrets, state.
pub fn webhook(w: &WorkspaceId, h: &str) -> Vec<u8> {
    ws(w).str("hook").str(h).finish()
}

/// `(ws, W, hookver)` → a counter (little-endian i64, atomic adds) bumped at every change of
/// one of W's [`webhook`]s: the consumer `hooks` keeps W's endpoints decoded while it holds.
pub fn webhooks_version(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("hookver").finish()
}

/// Prefix of a workspace's [`webhook`]s.
pub fn webhooks(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("hook").finish()
}

/// `(hooks, e, W, position)` → an event some app of W gets by webhook, with those apps: the
/// workspace's one queue, in feed order, shared by its endpoints. Each endpoint keeps how far
/// it has delivered in its [`hook_state`]; what every endpoint is past is cleared. Keyed by
/// position first, so a batch's entries are written together at the queue's end.
pub fn hook_event(w: &WorkspaceId, position: &[u8]) -> Vec<u8> {
    Key::new().str("hooks").str("e").str(w.as_str()).bytes(position).finish()
}

/// Prefix of W's [`hook_event`]s.
pub fn hook_events(w: &WorkspaceId) -> Vec<u8> {
    Key::new().str("hooks").str("e").str(w.as_str()).finish()
}

/// `(hooks, r, W, H, position, replay)` → the body of an event a replay queued again for
/// endpoint H, by its 12-byte feed position; `replay` is the replay's time (ms), so a replay
/// never writes the key of an entry a delivery in flight is about to remove.
pub fn hook_replayed(w: &WorkspaceId, h: &str, position: &[u8], replay: u64) -> Vec<u8> {
    Key::new().str("hooks").str("r").str(w.as_str()).str(h).bytes(position).uint(replay).finish()
}

/// Prefix of endpoint H's [`hook_replayed`] events.
pub fn hook_replays(w: &WorkspaceId, h: &str) -> Vec<u8> {
    Key::new().str("hooks").str("r").str(w.as_str()).str(h).finish()
}

/// Prefix of every [`hook_replayed`] event of W's endpoints.
pub fn hook_replays_of(w: &WorkspaceId) -> Vec<u8> {
    Key::new().str("hooks").str("r").str(w.as_str()).finish()
}

/// `(hooks, ready, W)` → empty: W's endpoints have events to deliver (the dispatcher's list).
pub fn hook_ready(w: &WorkspaceId) -> Vec<u8> {
    Key::new().str("hooks").str("ready").str(w.as_str()).finish()
}

/// Prefix of every [`hook_ready`] entry.
pub fn hooks_ready() -> Vec<u8> {
    Key::new().str("hooks").str("ready").finish()
}

/// `(hooks, swept, W)` → the feed position up to which W's [`hook_event`]s were cleared.
pub fn hook_swept(w: &WorkspaceId) -> Vec<u8> {
    Key::new().str("hooks").str("swept").str(w.as_str()).finish()
}

/// `(hooks, state, W, H)` → endpoint H's delivery state: how far it has delivered, who holds
/// it, failures, next try.
pub fn hook_state(w: &WorkspaceId, h: &str) -> Vec<u8> {
    Key::new().str("hooks").str("state").str(w.as_str()).str(h).finish()
}

/// Prefix of every [`hook_state`]: the workspaces with endpoints.
pub fn hook_states() -> Vec<u8> {
    Key::new().str("hooks").str("state").finish()
}

/// `(ws, W, hooklog, position, H)` → what became of the delivery of one event to H. By
/// position first, as the queue, so one flush's entries lie together.
pub fn hook_log(w: &WorkspaceId, position: &[u8], h: &str) -> Vec<u8> {
    ws(w).str("hooklog").bytes(position).str(h).finish()
}

/// Prefix of W's [`hook_log`] entries at one position.
pub fn hook_log_at(w: &WorkspaceId, position: &[u8]) -> Vec<u8> {
    ws(w).str("hooklog").bytes(position).finish()
}

/// Prefix of W's [`hook_log`].
pub fn hook_logs(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("hooklog").finish()
}

/// `(ws, W, nprefs, U)` → a user's notification preferences (ARCHITECTURE §8 "Notifications").
pub fn notify_prefs(w: &WorkspaceId, u: &UserId) -> Vec<u8> {
    ws(w).str("nprefs").str(u.as_str()).finish()
}

/// `(ws, W, nall, C, U)` → empty: U wants a notification for every message of C — the
/// members a message notifies without naming them, read per message instead of every member.
pub fn notify_all(w: &WorkspaceId, c: &ChannelId, u: &UserId) -> Vec<u8> {
    ws(w).str("nall").str(c.as_str()).str(u.as_str()).finish()
}

/// Prefix of C's [`notify_all`] entries.
pub fn notify_all_in(w: &WorkspaceId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("nall").str(c.as_str()).finish()
}

/// `(ws, W, nkw, U)` → U's highlight keywords: the workspace's users with keywords, read per
/// message.
pub fn notify_keywords(w: &WorkspaceId, u: &UserId) -> Vec<u8> {
    ws(w).str("nkw").str(u.as_str()).finish()
}

/// Prefix of every [`notify_keywords`] entry of a workspace.
pub fn notify_keywords_of(w: &WorkspaceId) -> Vec<u8> {
    ws(w).str("nkw").finish()
}

/// `(ws, W, pushsub, U, id)` → a Web Push subscription of U (`id`: a hash of its endpoint).
pub fn push_subscription(w: &WorkspaceId, u: &UserId, id: &str) -> Vec<u8> {
    ws(w).str("pushsub").str(u.as_str()).str(id).finish()
}

/// Prefix of U's [`push_subscription`]s.
pub fn push_subscriptions(w: &WorkspaceId, u: &UserId) -> Vec<u8> {
    ws(w).str("pushsub").str(u.as_str()).finish()
}

/// `(ws, W, npend, U, C, seq)` → when it is due and why: message `seq` of C may notify U.
/// Written with [`notify_due`] by the consumer `notify`; both are cleared when the
/// conversation's notification is claimed.
pub fn notify_pending(w: &WorkspaceId, u: &UserId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    ws(w).str("npend").str(u.as_str()).str(c.as_str()).uint(seq).finish()
}

/// Prefix of U's [`notify_pending`] messages of C: one conversation's burst.
pub fn notify_pending_in(w: &WorkspaceId, u: &UserId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("npend").str(u.as_str()).str(c.as_str()).finish()
}

/// `(ws, W, nbpend, C, seq, U)` → when it is due and why: message `seq` of C, an `@channel` of
/// a channel too large to decide at once, may notify U. What [`notify_pending`] is for one
/// message and user, laid out by message so that a fan-out's thousands of entries sit side by
/// side (a few B-tree pages written, not one per member); with [`notify_broadcast`] and the
/// same [`notify_due`] queue.
pub fn notify_broadcast_pending(w: &WorkspaceId, c: &ChannelId, seq: Seq, u: &UserId) -> Vec<u8> {
    ws(w).str("nbpend").str(c.as_str()).uint(seq).str(u.as_str()).finish()
}

/// Prefix of message `seq`'s [`notify_broadcast_pending`] entries.
pub fn notify_broadcast_pending_of(w: &WorkspaceId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    ws(w).str("nbpend").str(c.as_str()).uint(seq).finish()
}

/// `(ws, W, nbcast, C, seq)` → empty: message `seq` of C has [`notify_broadcast_pending`]
/// entries left — where a claim of a user's burst in C looks for theirs.
pub fn notify_broadcast(w: &WorkspaceId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    ws(w).str("nbcast").str(c.as_str()).uint(seq).finish()
}

/// Prefix of C's [`notify_broadcast`] entries.
pub fn notify_broadcasts_in(w: &WorkspaceId, c: &ChannelId) -> Vec<u8> {
    ws(w).str("nbcast").str(c.as_str()).finish()
}

/// `(notify, due, due, W, U, C, seq)` → empty: the queue of pending messages by when they are
/// due (ms).
pub fn notify_due(due: i64, w: &WorkspaceId, u: &UserId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    Key::new().str("notify").str("due").int(due).str(w.as_str()).str(u.as_str()).str(c.as_str()).uint(seq).finish()
}

/// Prefix of the [`notify_due`] queue.
pub fn notify_dues() -> Vec<u8> {
    Key::new().str("notify").str("due").finish()
}

/// Where the [`notify_due`] entries due at `due` begin: the end of a range of those due before.
pub fn notify_dues_at(due: i64) -> Vec<u8> {
    Key::new().str("notify").str("due").int(due).finish()
}

/// `(notify, out, at, W, U, C, first)` → a notification being delivered or waiting to be tried
/// again at `at` (ms): claimed by a node until then, so one that dies leaves it to another.
pub fn notify_out(at: i64, w: &WorkspaceId, u: &UserId, c: &ChannelId, first: Seq) -> Vec<u8> {
    Key::new().str("notify").str("out").int(at).str(w.as_str()).str(u.as_str()).str(c.as_str()).uint(first).finish()
}

/// Prefix of the [`notify_out`] queue.
pub fn notify_outs() -> Vec<u8> {
    Key::new().str("notify").str("out").finish()
}

/// Where the [`notify_out`] entries at `at` begin.
pub fn notify_outs_at(at: i64) -> Vec<u8> {
    Key::new().str("notify").str("out").int(at).finish()
}

/// `(ws, W, nfailed, U, at, C, first)` → why a notification could not be delivered: the record
/// of one given up on.
pub fn notify_failed(w: &WorkspaceId, u: &UserId, at: i64, c: &ChannelId, first: Seq) -> Vec<u8> {
    ws(w).str("nfailed").str(u.as_str()).int(at).str(c.as_str()).uint(first).finish()
}

/// Prefix of U's [`notify_failed`] records.
pub fn notify_failures(w: &WorkspaceId, u: &UserId) -> Vec<u8> {
    ws(w).str("nfailed").str(u.as_str()).finish()
}

/// `(notify, fan, W, C, seq)` → an `@channel` message of a large channel being expanded into
/// pending entries by the dispatcher, and the last member done.
pub fn notify_fanout(w: &WorkspaceId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    Key::new().str("notify").str("fan").str(w.as_str()).str(c.as_str()).uint(seq).finish()
}

/// Prefix of every [`notify_fanout`].
pub fn notify_fanouts() -> Vec<u8> {
    Key::new().str("notify").str("fan").finish()
}

/// `(ws, W, nmail, U, C, seq)` → when it was posted and why: message `seq` of C goes into U's
/// next email digest if still unread then. Written by the consumer `notify`, cleared when the
/// digest is claimed: each message is in at most one digest.
pub fn notify_mail_pending(w: &WorkspaceId, u: &UserId, c: &ChannelId, seq: Seq) -> Vec<u8> {
    ws(w).str("nmail").str(u.as_str()).str(c.as_str()).uint(seq).finish()
}

/// Prefix of U's [`notify_mail_pending`] messages.
pub fn notify_mail_pending_of(w: &WorkspaceId, u: &UserId) -> Vec<u8> {
    ws(w).str("nmail").str(u.as_str()).finish()
}

/// `(ws, W, nmailq, U)` → when U's next digest is due (ms): set with the first message of a
/// digest, so that the queue holds one entry per user.
pub fn notify_mail_queued(w: &WorkspaceId, u: &UserId) -> Vec<u8> {
    ws(w).str("nmailq").str(u.as_str()).finish()
}

/// `(notify, mail, due, W, U)` → empty: the queue of users' digests by when they are due.
pub fn notify_mail_due(due: i64, w: &WorkspaceId, u: &UserId) -> Vec<u8> {
    Key::new().str("notify").str("mail").int(due).str(w.as_str()).str(u.as_str()).finish()
}

/// Prefix of the [`notify_mail_due`] queue.
pub fn notify_mail_dues() -> Vec<u8> {
    Key::new().str("notify").str("mail").finish()
}

/// Where the [`notify_mail_due`] entries due at `due` begin.
pub fn notify_mail_dues_at(due: i64) -> Vec<u8> {
    Key::new().str("notify").str("mail").int(due).finish()
}

/// `(notify, mailout, at, W, U, id)` → a digest being sent or waiting to be tried again at
/// `at` (ms), claimed by a node until then, as [`notify_out`] is.
pub fn notify_mail_out(at: i64, w: &WorkspaceId, u: &UserId, id: &str) -> Vec<u8> {
    Key::new().str("notify").str("mailout").int(at).str(w.as_str()).str(u.as_str()).str(id).finish()
}

/// Prefix of the [`notify_mail_out`] queue.
pub fn notify_mail_outs() -> Vec<u8> {
    Key::new().str("notify").str("mailout").finish()
}

/// Where the [`notify_mail_out`] entries at `at` begin.
pub fn notify_mail_outs_at(at: i64) -> Vec<u8> {
    Key::new().str("notify").str("mailout").int(at).finish()
}

/// `(meta, name)`: deployment-wide bookkeeping (log tick, log size, trim point).
pub fn meta(name: &str) -> Vec<u8> {
    Key::new().str("meta").str(name).finish()
}

/// `(consumer, cursor, name)` → the 12-byte log position a feed consumer has handled up to
/// (ARCHITECTURE §8). Its existence registers the consumer: the trimmer keeps the events after
/// it, up to the feed's hold limits.
pub fn consumer_cursor(name: &str) -> Vec<u8> {
    Key::new().str("consumer").str("cursor").str(name).finish()
}

/// Prefix of every consumer's cursor; the consumer's name is the last element of each key.
pub fn consumer_cursors() -> Vec<u8> {
    Key::new().str("consumer").str("cursor").finish()
}

/// `(consumer, lease, name)` → which runner may run the consumer and until when (owner id and
/// expiry in ms): one runner of a consumer at a time across origin nodes.
pub fn consumer_lease(name: &str) -> Vec<u8> {
    Key::new().str("consumer").str("lease").str(name).finish()
}

/// `(meta, consumer_registrations)` → a counter (little-endian i64) every registration of a new
/// consumer cursor adds 1 to, so that a trim that read the cursors before a registration sees
/// the change and reads them again.
pub fn consumer_registrations() -> Vec<u8> {
    meta("consumer_registrations")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_round_trip_and_sort_by_position() {
        let a = log_entry(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5]);
        let b = log_entry(&[0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
        assert!(a < b);
        assert_eq!(log_position(&a), Some([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5]));
        let (placeholder, offset) = log_entry_placeholder(7);
        assert_eq!(&placeholder[offset..offset + 10], &[0xff; 10]);
        assert_eq!(&placeholder[offset + 10..], &[0, 7]);
        assert_eq!(log_position(&messages(&WorkspaceId::new_unchecked("W1"), &ChannelId::new_unchecked("C1"))), None);
    }

    #[test]
    fn message_keys_sort_by_seq() {
        let w = WorkspaceId::new_unchecked("W1");
        let c = ChannelId::new_unchecked("C1");
        assert!(message(&w, &c, 9) < message(&w, &c, 10));
        assert!(message(&w, &c, 255) < message(&w, &c, 256));
        assert!(message(&w, &c, 1).starts_with(&messages(&w, &c)));
    }

    #[test]
    fn file_sweeper_keys_sort_by_time_under_their_prefix() {
        let w = WorkspaceId::new_unchecked("W1");
        let old = file_pending(1_000, &w, "F1");
        let new = file_pending(20_000, &w, "F0");
        assert!(old < new && old.starts_with(&files_pending()));
        assert!(old < files_pending_at(1_001) && files_pending_at(20_000) <= new);
        let gc = file_gc(5, &w, "F1", "ws/W1/ab/x.png");
        assert!(gc.starts_with(&files_gc()) && gc < files_gc_at(6) && files_gc_at(5) <= gc);
        assert!(!gc.starts_with(&files_pending()) && !old.starts_with(&files_gc()));
    }

    #[test]
    fn consumer_cursors_share_a_prefix_that_names_them() {
        let key = consumer_cursor("thumbnails");
        assert!(key.starts_with(&consumer_cursors()));
        assert_eq!(super::super::tuple::last_str(&key).as_deref(), Some("thumbnails"));
        assert!(!consumer_lease("thumbnails").starts_with(&consumer_cursors()));
    }
}
