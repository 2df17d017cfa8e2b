//! The sequencer: gives every channel one gap-free total order and makes messages durable
//! before anyone is told they were sent (ARCHITECTURE §2 "Ordering").
//!
//! Every channel belongs to one of the node's committer shards (a hash of the channel id picks
//! it; `sequencer.shards` of them, by default one per two cores). Sends wait in the shard's
//! bounded queue. The shard's one committer task takes everything queued — for every channel of
//! the shard — and writes it in **one** transaction: for each message its record, its dedup
//! entry `(nonce, C, client_msg_id)`, a thread-index entry for replies, and a versionstamped
//! feed event; for each channel its new head. Seqs are `head + 1, + 2, …` read
//! inside that transaction, so they have no gaps, and FoundationDB's serializability keeps them
//! right even if two nodes ever wrote one channel (the loser conflicts and retries). Only after
//! the commit returns does each sender get its seq (from the shard's answering thread, while
//! the committer goes on to the next group). While one group commits, the next one
//! gathers, so the group size grows with load and the fsync cost is shared. Shards write
//! disjoint keys (feed entries are versionstamped, counters are atomic adds), so they never
//! conflict with each other; they let groups of different channels be built in parallel while
//! the store merges their commits into one log write.
//!
//! Permission checks (channel visible, caller a member, channel not archived) happen inside the
//! same transaction, so a member removed a moment ago cannot slip a message in.
//!
//! The same transaction parses the text's mentions (`@here` reaching the members the presence
//! tracker saw active when the send was queued) and writes the mention index, and for a thread
//! reply moves the root's summary and logs the root's new state just before the reply, which
//! names the thread's followers it goes to (see `messages::records`).
//!
//! A retried send with a `client_msg_id` the channel already has returns the original seq and
//! writes nothing — also when both copies arrive in one group, and also after a commit whose
//! outcome was unknown.

use std::{
    collections::hash_map::Entry,
    hash::{Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

use rustc_hash::{FxHashMap, FxHashSet, FxHasher};
use selvage_shared::{ChannelId, Cursor, Event, FileRef, Message, Seq, UserId, WorkspaceId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::records::{self, validate_text, Mentioned, ThreadSummary};
use crate::{
    channels,
    config::SequencerConfig,
    error::{OriginError, Result},
    feed::{self, Appender},
    metrics::Metrics,
    presence,
    store::{keys, Committed, KvTxn, Store, StoreError},
    transact,
};

/// A message to sequence.
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// The sender's workspace.
    pub workspace: WorkspaceId,
    /// The channel to post in.
    pub channel: ChannelId,
    /// The sender.
    pub user: UserId,
    /// The text.
    pub text: String,
    /// The client's id for this message; retries with the same id are answered, not repeated.
    pub client_msg_id: String,
    /// The seq of the thread's root, for a reply.
    pub thread_root: Option<Seq>,
    /// Files the message carries, already uploaded and checked by the files service
    /// (ARCHITECTURE §8 "Files"); a message with files may have an empty text.
    pub files: Vec<FileRef>,
}

/// A committed send.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The message as stored.
    pub message: Message,
    /// Its feed cursor; `None` when the send was a retry answered from the dedup index.
    pub cursor: Option<Cursor>,
    /// Whether this send was a retry of an earlier one.
    pub duplicate: bool,
}

struct Pending {
    request: SendRequest,
    /// The text's mentions, parsed once.
    mentioned: Mentioned,
    reply: oneshot::Sender<Result<Sent>>,
    enqueued: Instant,
}

/// The handle request handlers send through.
#[derive(Clone)]
pub struct Sequencer {
    /// One queue per committer shard.
    queues: Arc<[mpsc::Sender<Pending>]>,
    presence: Arc<presence::Tracker>,
    metrics: Arc<Metrics>,
}

impl Sequencer {
    /// Starts one committer task per shard; the returned task ends when all of them have
    /// stopped (after committing what is queued) on `shutdown`.
    pub fn start(
        store: Store,
        config: SequencerConfig,
        metrics: Arc<Metrics>,
        presence: Arc<presence::Tracker>,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let shards = config.committers();
        // The capacity is the node's; each shard holds its share of it.
        let capacity = config.queue_capacity.div_ceil(shards).max(1);
        let mut queues = Vec::with_capacity(shards);
        let mut committers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (queue, rx) = mpsc::channel(capacity);
            let committer = Committer {
                store: store.clone(),
                config: config.clone(),
                metrics: metrics.clone(),
                gates: Gates::default(),
                answerer: Answerer::start(metrics.clone()),
            };
            committers.push(tokio::spawn(committer.run(rx, shutdown.clone())));
            queues.push(queue);
        }
        let task = tokio::spawn(async move {
            for committer in committers {
                if let Err(e) = committer.await {
                    tracing::error!(error = %e, "a sequencer committer failed");
                }
            }
        });
        (Sequencer { queues: queues.into(), presence, metrics }, task)
    }

    /// The queue of the shard `channel` belongs to.
    fn queue(&self, workspace: &WorkspaceId, channel: &ChannelId) -> &mpsc::Sender<Pending> {
        &self.queues[shard_of(workspace, channel, self.queues.len())]
    }

    /// Sequences one message and waits for its commit.
    pub async fn send(&self, request: SendRequest) -> Result<Sent> {
        validate(&request)?;
        let mentioned = Mentioned::of(&request.text, &self.presence, &request.workspace);
        let (reply, answer) = oneshot::channel();
        let pending = Pending { request, mentioned, reply, enqueued: Instant::now() };
        match self.queue(&pending.request.workspace, &pending.request.channel).try_send(pending) {
            Ok(()) => self.metrics.queue_depth.inc(),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.overloaded.inc();
                return Err(OriginError::Overloaded("the sequencer queue is full; retry with backoff".into()));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(OriginError::Unavailable("the origin is shutting down".into()));
            }
        }
        // No timer per send: the committer answers every send within `ack_timeout` of its
        // enqueueing, timing the group instead (see `Committer::commit_group`).
        match answer.await {
            Ok(outcome) => outcome,
            Err(_) => Err(OriginError::Unavailable(
                "the sequencer stopped before committing; retry with the same client_msg_id".into(),
            )),
        }
    }
}

/// The committer shard of a channel: a stable hash of its ids, so every send to one channel
/// goes through one committer and one order.
fn shard_of(workspace: &WorkspaceId, channel: &ChannelId, shards: usize) -> usize {
    let mut h = FxHasher::default();
    workspace.as_str().hash(&mut h);
    channel.as_str().hash(&mut h);
    // The high half: FxHash mixes its low bits least.
    ((h.finish() >> 32) % shards as u64) as usize
}

/// Checks what can be checked without storage.
fn validate(r: &SendRequest) -> Result<()> {
    // A file's message may say nothing beside the file.
    if !r.text.is_empty() || r.files.is_empty() {
        validate_text(&r.text)?;
    }
    if r.files.len() > MAX_FILES {
        return Err(OriginError::BadRequest(format!("a message carries at most {MAX_FILES} files")));
    }
    if r.client_msg_id.is_empty() || r.client_msg_id.len() > selvage_shared::MAX_CLIENT_MSG_ID_BYTES {
        return Err(OriginError::BadRequest(format!(
            "client_msg_id must be 1 to {} bytes",
            selvage_shared::MAX_CLIENT_MSG_ID_BYTES
        )));
    }
    if r.thread_root == Some(0) {
        return Err(OriginError::BadRequest("thread_root must be a message seq (1 or more)".into()));
    }
    Ok(())
}

/// Records that the files a message carries were shared by it, in the transaction that commits
/// it: from the moment anyone sees the message, its members may read its files (the files
/// service claimed each for this channel and this send before asking; ARCHITECTURE §8 "Files").
async fn share_files(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    c: &ChannelId,
    seq: Seq,
    files: &[FileRef],
) -> Result<(), StoreError> {
    use crate::files::records::{self as file_records, FileRecord, FileState};
    for f in files {
        let Some(file) = file_records::load(tx, w, &f.id).await? else { continue };
        if file.state == FileState::Ready && file.seq.is_none() && file.channel.as_ref() == Some(c) {
            file_records::write(tx, w, &FileRecord { seq: Some(seq), ..file })?;
            tx.set(&keys::channel_file(w, c, seq, &f.id), f.id.as_bytes())?;
        }
    }
    Ok(())
}

/// Most files one message carries.
pub const MAX_FILES: usize = 10;

/// What became of one send in a group.
enum Outcome {
    New { message: Message, order: u16 },
    Duplicate(Message),
    Rejected(OriginError),
}

struct Committer {
    store: Store,
    config: SequencerConfig,
    metrics: Arc<Metrics>,
    gates: Gates,
    answerer: Answerer,
}

/// A committed group on its way to its senders.
struct Answers {
    group: Vec<Pending>,
    outcomes: Vec<Outcome>,
    committed: Committed,
    /// From taking the group to its commit.
    elapsed: Duration,
}

impl Answers {
    /// Answers each sender, in the group's order.
    fn send(self, metrics: &Metrics) {
        let Answers { group, outcomes, committed, elapsed } = self;
        // Counted first, so that whoever hears of a message sees it in the metrics.
        let new = outcomes.iter().filter(|o| matches!(o, Outcome::New { .. })).count() as u64;
        let duplicates = outcomes.iter().filter(|o| matches!(o, Outcome::Duplicate(_))).count() as u64;
        metrics.messages_committed.inc_by(new);
        metrics.duplicates.inc_by(duplicates);
        for (pending, outcome) in group.into_iter().zip(outcomes) {
            let answer = match outcome {
                Outcome::New { message, order } => {
                    let cursor = feed::cursor(&feed::position(&committed, order));
                    Ok(Sent { message, cursor: Some(cursor), duplicate: false })
                }
                Outcome::Duplicate(message) => Ok(Sent { message, cursor: None, duplicate: true }),
                Outcome::Rejected(e) => Err(e),
            };
            tracing::trace!(wait_us = pending.enqueued.elapsed().as_micros() as u64, "send answered");
            // A sender that gave up waiting dropped its receiver; its message is committed all
            // the same and a retry will find it by client_msg_id.
            let _ = pending.reply.send(answer);
        }
        tracing::debug!(messages = new, elapsed_us = elapsed.as_micros() as u64, "group committed");
    }
}

/// A committer's answering thread: it sends a committed group's answers, in commit order,
/// while the committer builds the next group. A thread rather than a task: the committer
/// rarely yields while it builds a group (its reads seldom wait), so a task spawned from it
/// would sit on its worker until the next commit; a thread answers at once, on another core.
struct Answerer {
    jobs: Option<std::sync::mpsc::Sender<Answers>>,
    /// Closed when the thread has sent everything it was given.
    done: Option<oneshot::Receiver<()>>,
    metrics: Arc<Metrics>,
}

impl Answerer {
    fn start(metrics: Arc<Metrics>) -> Answerer {
        let (jobs, rx) = std::sync::mpsc::channel::<Answers>();
        let (finished, done) = oneshot::channel::<()>();
        let thread_metrics = metrics.clone();
        let spawned = std::thread::Builder::new().name("selvage-answer".into()).spawn(move || {
            for answers in rx {
                answers.send(&thread_metrics);
            }
            drop(finished);
        });
        match spawned {
            Ok(_) => Answerer { jobs: Some(jobs), done: Some(done), metrics },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a sequencer answering thread; the committer answers itself");
                Answerer { jobs: None, done: None, metrics }
            }
        }
    }

    fn answer(&self, answers: Answers) {
        let unsent = match &self.jobs {
            Some(jobs) => jobs.send(answers).err().map(|e| e.0),
            None => Some(answers),
        };
        if let Some(answers) = unsent {
            answers.send(&self.metrics);
        }
    }

    /// Waits until every group handed over is answered.
    async fn stop(&mut self) {
        self.jobs = None;
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

/// Most channels plus memberships [`Gates`] holds before it starts over.
const MAX_CACHED_GATES: usize = 1 << 20;

/// What a committer knows of its channels' gates and its senders' memberships, per workspace.
/// It holds while the workspace's gates counter ([`keys::gates`], moved by every write of a
/// channel record or membership) reads as it did when they were read. So a group reads that
/// one key per workspace — which also puts it in the group's read conflicts: a membership
/// change committed while the group is built makes the group retry — instead of a channel
/// record and a membership per channel (FoundationDB's "metadata version" pattern).
#[derive(Default)]
struct Gates {
    workspaces: FxHashMap<WorkspaceId, WorkspaceGates>,
    /// Channels plus memberships held, over all workspaces.
    entries: usize,
}

#[derive(Default)]
struct WorkspaceGates {
    /// The gates counter these were read under.
    counter: i64,
    channels: FxHashMap<ChannelId, ChannelGates>,
    entries: usize,
}

struct ChannelGates {
    /// `None`: no such channel.
    gate: Option<channels::records::Gate>,
    members: FxHashMap<UserId, bool>,
    /// The channel's keys, encoded once rather than in every group.
    keys: Arc<ChannelKeys>,
}

/// The keys a group writes for a channel, or the prefixes of them.
struct ChannelKeys {
    /// [`keys::head`].
    head: Vec<u8>,
    /// [`keys::messages`]: a message's key is this and its seq.
    messages: Vec<u8>,
    /// [`keys::nonces`]: a dedup entry's key is this and the client_msg_id.
    nonces: Vec<u8>,
}

impl ChannelKeys {
    fn of(w: &WorkspaceId, c: &ChannelId) -> Arc<Self> {
        Arc::new(ChannelKeys { head: keys::head(w, c), messages: keys::messages(w, c), nonces: keys::nonces(w, c) })
    }
}

impl Gates {
    /// Notes `w`'s gates counter as a transaction reads it, forgetting what was read under
    /// another value.
    fn check(&mut self, w: &WorkspaceId, counter: i64) {
        match self.workspaces.get_mut(w) {
            Some(ws) if ws.counter == counter => {}
            Some(ws) => {
                self.entries -= ws.entries;
                *ws = WorkspaceGates { counter, ..WorkspaceGates::default() };
            }
            None => {
                self.workspaces.insert(w.clone(), WorkspaceGates { counter, ..WorkspaceGates::default() });
            }
        }
    }

    fn channel(&self, w: &WorkspaceId, c: &ChannelId) -> Option<&ChannelGates> {
        self.workspaces.get(w)?.channels.get(c)
    }

    /// Room for one more entry of `w`: past the cap everything is forgotten (and read again).
    fn make_room(&mut self, w: &WorkspaceId) -> Option<&mut WorkspaceGates> {
        if self.entries >= MAX_CACHED_GATES {
            for ws in self.workspaces.values_mut() {
                ws.channels.clear();
                ws.entries = 0;
            }
            self.entries = 0;
        }
        self.entries += 1;
        let ws = self.workspaces.get_mut(w)?;
        ws.entries += 1;
        Some(ws)
    }

    fn put_gate(
        &mut self,
        w: &WorkspaceId,
        c: &ChannelId,
        gate: Option<channels::records::Gate>,
        keys: Arc<ChannelKeys>,
    ) {
        if let Some(ws) = self.make_room(w) {
            ws.channels.insert(c.clone(), ChannelGates { gate, members: FxHashMap::default(), keys });
        }
    }

    fn put_member(&mut self, w: &WorkspaceId, c: &ChannelId, u: &UserId, member: bool) {
        if self.channel(w, c).is_none() {
            return;
        }
        if let Some(ch) = self.make_room(w).and_then(|ws| ws.channels.get_mut(c)) {
            ch.members.insert(u.clone(), member);
        }
    }
}

/// Rough bytes a send adds to its group's transaction as the store counts them (mutations and
/// conflict ranges): its record and feed event (the text twice), keys and metadata (about 650
/// bytes beside the text, measured), and per user it may mention a mention-index entry and the
/// user's id in the record and the event (plus a membership read for each user `@here`
/// reaches). A group that still comes out over the store's limit is committed in halves (see
/// [`Committer::commit_group`]).
fn weight(p: &Pending) -> usize {
    2 * p.request.text.len() + 768 + 384 * p.mentioned.reach() + 2 * 512 * p.request.files.len()
}

impl Committer {
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
        let mut carry: Option<Pending> = None;
        loop {
            let first = match carry.take() {
                Some(p) => p,
                None => tokio::select! {
                    biased;
                    p = rx.recv() => match p { Some(p) => p, None => break },
                    _ = shutdown.cancelled() => {
                        // Commit what is already queued, refuse the rest by closing.
                        rx.close();
                        match rx.recv().await { Some(p) => p, None => break }
                    }
                },
            };
            let mut bytes = weight(&first);
            let mut group = vec![first];
            while group.len() < self.config.max_batch_messages {
                match rx.try_recv() {
                    Ok(p) => {
                        let w = weight(&p);
                        if bytes + w > self.config.max_batch_bytes {
                            carry = Some(p);
                            break;
                        }
                        bytes += w;
                        group.push(p);
                    }
                    Err(_) => break,
                }
            }
            self.metrics.queue_depth.sub(group.len() as i64);
            self.commit_group(group).await;
        }
        // The last groups' senders hear before the committer counts as stopped.
        self.answerer.stop().await;
    }

    /// Tells senders their send timed out and may be retried.
    fn answer_retry(&self, senders: Vec<Pending>, why: &str) {
        self.metrics.ack_timeouts.inc_by(senders.len() as u64);
        for pending in senders {
            let _ = pending.reply.send(Err(OriginError::Unavailable(why.into())));
        }
    }

    /// Commits one group and answers its senders, with one timer for the group rather than one
    /// per send. A send that already waited `ack_timeout` in the queue is told to retry without
    /// being written (the queue sheds what its senders have given up on), and a commit that
    /// takes longer than `ack_timeout` is abandoned, its senders told to retry with the same
    /// `client_msg_id` (the commit may still land; the retry then finds it). So no sender waits
    /// more than twice `ack_timeout`: queued behind a commit, then in its own.
    async fn commit_group(&mut self, group: Vec<Pending>) {
        let started = Instant::now();
        let ack_timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let (group, expired): (Vec<Pending>, Vec<Pending>) =
            group.into_iter().partition(|p| started.saturating_duration_since(p.enqueued) < ack_timeout);
        if !expired.is_empty() {
            self.answer_retry(expired, "the send waited too long for a commit; retry with the same client_msg_id");
        }
        if group.is_empty() {
            return;
        }
        let requests: Vec<(&SendRequest, &Mentioned)> = group.iter().map(|p| (&p.request, &p.mentioned)).collect();
        let mut attempts = 0u32;
        let (store, gates) = (&self.store, &mut self.gates);
        let result = tokio::time::timeout(ack_timeout, async {
            transact!(store, |tx| {
                attempts += 1;
                sequence(tx, &requests, gates).await?
            })
        })
        .await;
        drop(requests);
        let Ok(result) = result else {
            tracing::warn!(
                messages = group.len(),
                waited_ms = started.elapsed().as_millis() as u64,
                "a group commit did not finish in sequencer.ack_timeout_ms; its senders were told to retry"
            );
            self.answer_retry(group, "the commit did not finish in time; retry with the same client_msg_id");
            return;
        };
        if let Err(StoreError::TransactionTooLarge(bytes)) = result {
            if group.len() > 1 {
                // Weights are estimates: a group over the limit is committed in halves rather
                // than failed, and only a send too large alone is refused.
                tracing::debug!(
                    messages = group.len(),
                    bytes,
                    "a group is over the transaction limit; committing it in halves"
                );
                let mut first = group;
                let second = first.split_off(first.len() / 2);
                Box::pin(self.commit_group(first)).await;
                Box::pin(self.commit_group(second)).await;
                return;
            }
        }
        if attempts > 1 {
            self.metrics.commit_retries.with_label_values(&["conflict_or_unknown"]).inc_by(u64::from(attempts - 1));
        }
        let elapsed = started.elapsed();
        self.metrics.commit_latency.observe(elapsed.as_secs_f64());
        self.metrics.batch_size.observe(group.len() as f64);
        match result {
            Ok((outcomes, committed)) => self.answerer.answer(Answers { group, outcomes, committed, elapsed }),
            Err(e) => {
                // Only a lone send reaches here too large (a larger group was halved above).
                let too_large = matches!(e, StoreError::TransactionTooLarge(_));
                if too_large {
                    tracing::warn!(error = %e, "a send too large to commit even alone was refused");
                } else {
                    tracing::error!(error = %e, messages = group.len(), "group commit failed");
                }
                let retryable = e.is_retryable() || matches!(e, StoreError::Unavailable(_));
                for pending in group {
                    let err = if too_large {
                        OriginError::TooLarge(format!(
                            "this message with its mentions and thread updates is over the storage transaction limit ({e})"
                        ))
                    } else if let StoreError::NoSpace(why) = &e {
                        OriginError::Store(StoreError::NoSpace(why.clone()))
                    } else if retryable {
                        OriginError::Unavailable(format!("commit failed ({e}); retry with the same client_msg_id"))
                    } else {
                        OriginError::Internal(format!("commit failed: {e}"))
                    };
                    let _ = pending.reply.send(Err(err));
                }
            }
        }
    }
}

/// Writes one group into `tx`: the body of the group-commit transaction.
/// A channel as one group attempt sees it.
struct GroupChannel {
    /// Its record, `None` if there is no such channel.
    gate: Option<channels::records::Gate>,
    /// The last seq, as this attempt moves it.
    head: Seq,
    /// The last seq as read.
    read: Seq,
    keys: Arc<ChannelKeys>,
}

/// What a dedup entry remembers of a send: enough to tell a retry (same text, same thread)
/// from an id reused for another message, which is refused rather than answered with the
/// first message.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Dedup {
    text_crc: u32,
    thread_root: Seq,
}

/// A dedup entry as stored: the seq, then (since per-sender ids) the content's fingerprint.
struct DedupEntry {
    seq: Seq,
    /// `None` for entries written before fingerprints were kept.
    content: Option<[u8; 12]>,
}

impl Dedup {
    fn of(r: &SendRequest) -> Self {
        Dedup { text_crc: crc32fast::hash(r.text.as_bytes()), thread_root: r.thread_root.unwrap_or(0) }
    }

    fn fingerprint(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.text_crc.to_le_bytes());
        out[4..].copy_from_slice(&self.thread_root.to_le_bytes());
        out
    }

    /// `seq:i64 le`, then the fingerprint: text crc32 `u32 le`, thread root `u64 le` (0: none).
    fn encode(self, seq: Seq) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(&(seq as i64).to_le_bytes());
        out.extend_from_slice(&self.fingerprint());
        out
    }

    fn decode(raw: &[u8]) -> Option<DedupEntry> {
        let seq = feed::le_i64(raw.get(..8)?) as Seq;
        let content = match raw.len() {
            8 => None,
            20 => raw[8..].try_into().ok(),
            _ => return None,
        };
        Some(DedupEntry { seq, content })
    }
}

/// The answer to a client_msg_id its sender already used in the channel for another text or
/// thread.
fn id_reused(client_msg_id: &str) -> OriginError {
    OriginError::Conflict(format!(
        "client_msg_id {client_msg_id:?} was already used for a different message in this channel (id reused with different content)"
    ))
}

/// Room a message record takes beyond its text, with a typical author, channel and
/// client_msg_id, so that encoding it seldom grows the buffer.
const RECORD_ROOM: usize = 192;

async fn sequence(
    tx: &mut dyn KvTxn,
    requests: &[(&SendRequest, &Mentioned)],
    gates: &mut Gates,
) -> Result<Vec<Outcome>, StoreError> {
    let now = crate::now_ms();
    // Keyed by borrowed ids with a fast hasher: a group touches each of many channels once or
    // twice, so these maps are on every message's path.
    // Per channel: its record (None if missing), the head as this transaction moves it and as
    // read, and the key prefixes of its messages and dedup entries (built once per group).
    let mut chans: FxHashMap<(&WorkspaceId, &ChannelId), GroupChannel> = FxHashMap::default();
    let mut members: FxHashMap<(&WorkspaceId, &ChannelId, &UserId), bool> = FxHashMap::default();
    let mut seen: FxHashMap<(&WorkspaceId, &ChannelId, &UserId, &str), usize> = FxHashMap::default();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(requests.len());
    // Thread roots replied to in this group: the root as it reads and its summary.
    let mut roots: FxHashMap<(&WorkspaceId, &ChannelId, Seq), (Message, ThreadSummary)> = FxHashMap::default();
    // Workspaces whose gates counter this attempt has read.
    let mut checked: FxHashSet<&WorkspaceId> = FxHashSet::default();
    let mut log = Appender::new();
    // The group's reads, made together before anything is decided (the engine looks them up
    // side by side): each channel's head and each send's dedup entry. Its gates are read first,
    // since a changed gates counter forgets what the committer knew of the workspace.
    let mut new_channels: Vec<(&WorkspaceId, &ChannelId)> = Vec::new();
    let mut nonce_keys: Vec<Vec<u8>> = Vec::with_capacity(requests.len());
    for &(r, _) in requests {
        let (w, c) = (&r.workspace, &r.channel);
        if checked.insert(w) {
            let counter = tx.get(&keys::gates(w)).await?.as_deref().map_or(0, feed::le_i64);
            gates.check(w, counter);
        }
        let channel = match chans.entry((w, c)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let (gate, channel_keys) = match gates.channel(w, c) {
                    Some(known) => (known.gate, known.keys.clone()),
                    None => {
                        let gate = channels::records::load_gate(tx, w, c).await?;
                        let channel_keys = ChannelKeys::of(w, c);
                        gates.put_gate(w, c, gate, channel_keys.clone());
                        (gate, channel_keys)
                    }
                };
                new_channels.push((w, c));
                e.insert(GroupChannel { gate, head: 0, read: 0, keys: channel_keys })
            }
        };
        nonce_keys.push(keys::nonce_in(&channel.keys.nonces, &r.user, &r.client_msg_id));
    }
    let head_keys: Vec<&[u8]> = new_channels.iter().filter_map(|k| Some(chans.get(k)?.keys.head.as_slice())).collect();
    let heads = tx.get_many(&head_keys).await?;
    for (k, head) in new_channels.iter().zip(heads) {
        if let Some(channel) = chans.get_mut(k) {
            channel.head = head.as_deref().map_or(0, feed::le_i64) as Seq;
            channel.read = channel.head;
        }
    }
    let mut dedup = tx.get_many(&nonce_keys.iter().map(Vec::as_slice).collect::<Vec<_>>()).await?;
    if dedup.len() != requests.len() {
        return Err(StoreError::Engine(format!("{} dedup entries read for {} sends", dedup.len(), requests.len())));
    }
    for (i, &(r, mentioned)) in requests.iter().enumerate() {
        let (w, c) = (&r.workspace, &r.channel);
        if let Some(&first) = seen.get(&(w, c, &r.user, r.client_msg_id.as_str())) {
            let original = requests[first].0;
            let again = match &outcomes[first] {
                _ if Dedup::of(original) != Dedup::of(r) => Outcome::Rejected(id_reused(&r.client_msg_id)),
                Outcome::New { message, .. } | Outcome::Duplicate(message) => Outcome::Duplicate(message.clone()),
                Outcome::Rejected(_) => {
                    Outcome::Rejected(OriginError::BadRequest("duplicate of a rejected send".into()))
                }
            };
            outcomes.push(again);
            continue;
        }
        let Some(GroupChannel { gate: channel, head, keys: channel_keys, .. }) = chans.get_mut(&(w, c)) else {
            return Err(StoreError::Engine(format!("channel {c} missing from its group")));
        };
        let member = match members.entry((w, c, &r.user)) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let known = gates.channel(w, c).and_then(|ch| ch.members.get(&r.user).copied());
                let member = match known {
                    Some(member) => member,
                    None => {
                        let member = channels::records::is_member(tx, w, c, &r.user).await?;
                        gates.put_member(w, c, &r.user, member);
                        member
                    }
                };
                *e.insert(member)
            }
        };
        let rejection = match *channel {
            None => Some(OriginError::no_channel(c.as_str())),
            Some(ch) if !ch.visible(member) => Some(OriginError::no_channel(c.as_str())),
            Some(_) if !member => Some(OriginError::NotMember(format!("join {c} before posting in it"))),
            Some(ch) if ch.archived => Some(OriginError::Archived(format!("channel {c} is archived"))),
            Some(_) => None,
        };
        if let Some(e) = rejection {
            outcomes.push(Outcome::Rejected(e));
            continue;
        }
        let nonce_key = std::mem::take(&mut nonce_keys[i]);
        if let Some(raw) = dedup[i].take() {
            let Some(entry) = Dedup::decode(&raw) else {
                return Err(StoreError::Engine(format!("dedup entry of {c} does not decode")));
            };
            if entry.content.is_some_and(|held| held != Dedup::of(r).fingerprint()) {
                seen.insert((w, c, &r.user, r.client_msg_id.as_str()), i);
                outcomes.push(Outcome::Rejected(id_reused(&r.client_msg_id)));
                continue;
            }
            let seq = entry.seq;
            let original = tx.get(&keys::message_in(&channel_keys.messages, seq)).await?;
            let message = original
                .map(|raw| selvage_shared::from_msgpack::<Message>(&raw))
                .transpose()
                .map_err(|e| StoreError::Engine(format!("message record does not decode: {e}")))?
                .ok_or_else(|| StoreError::Engine(format!("dedup entry points at missing message {c}/{seq}")))?;
            seen.insert((w, c, &r.user, r.client_msg_id.as_str()), i);
            outcomes.push(Outcome::Duplicate(message));
            continue;
        }
        // A reply needs a top-level root; the root's summary moves with it (kept per group, so
        // several replies to one root in one group count up from each other).
        if let Some(root) = r.thread_root {
            if let Entry::Vacant(slot) = roots.entry((w, c, root)) {
                let found = if root <= *head {
                    records::load_decorated(tx, w, c, root).await?.filter(|m| m.thread_root.is_none())
                } else {
                    None
                };
                match found {
                    Some(message) => {
                        let summary = records::load_summary(tx, w, c, root).await?;
                        slot.insert((message, summary));
                    }
                    None => {
                        outcomes.push(Outcome::Rejected(OriginError::BadRequest(format!(
                            "thread_root {root} is not a top-level message of {c}"
                        ))));
                        continue;
                    }
                }
            }
        }
        *head += 1;
        let seq = *head;
        let mut message = Message {
            client_msg_id: r.client_msg_id.clone(),
            thread_root: r.thread_root,
            files: r.files.clone(),
            ..Message::new(c.clone(), seq, now, r.user.clone(), r.text.clone())
        };
        records::set_mentions(tx, w, &mut message, mentioned).await?;
        if let Some(root) = r.thread_root {
            tx.set(&keys::thread_reply(w, c, root, seq), &[])?;
            // The root's new summary goes out just before the reply, so the channel learns that
            // `seq` is a reply; the reply names who it is for (the thread's followers now), so
            // every edge routes it, live or on resume, by the reply alone.
            if let Some((root_message, summary)) = roots.get_mut(&(w, c, root)) {
                summary.add_reply(&r.user, seq, now);
                summary.apply_to(root_message);
                message.thread_followers = root_message.thread_followers.clone();
                let event = Event::MessageChanged { channel: c.clone(), seq: root, message: root_message.clone() };
                log.append(tx, w, now, event)?;
            }
        }
        records::index_mentions(tx, w, &message)?;
        share_files(tx, w, c, seq, &r.files).await?;
        let record = selvage_shared::to_msgpack_sized(&message, RECORD_ROOM + message.text.len());
        let order = log.append_message(tx, w, now, &record)?;
        tx.set_owned(keys::message_in(&channel_keys.messages, seq), record)?;
        tx.set_owned(nonce_key, Dedup::of(r).encode(seq))?;
        // Posting reads the channel up to one's own message, so that it never counts as
        // unread. A blind write: the marker is at most the head read above, below `seq`. Edges
        // apply the same rule to the `message` event; no `read_marker` event is needed.
        tx.set_owned(keys::read_marker(w, &r.user, c), selvage_shared::to_msgpack(&seq))?;
        seen.insert((w, c, &r.user, r.client_msg_id.as_str()), i);
        outcomes.push(Outcome::New { message, order });
    }
    for ((w, c, root), (_, summary)) in &roots {
        records::write_summary(tx, w, c, *root, summary)?;
    }
    for ch in chans.values() {
        if ch.head != ch.read {
            tx.set(&ch.keys.head, &(ch.head as i64).to_le_bytes())?;
        }
    }
    log.finish(tx)?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::{
        accounts,
        caller::Caller,
        store::{
            embedded::{EmbeddedOptions, EmbeddedStore},
            Committed, KeyValue, KvStore, RangeRead, Watch,
        },
    };

    /// The embedded engine with commits held up: by `delay`, or for ever (`None`), the way a
    /// stalled disk or an unreachable cluster holds them. Everything else goes straight through.
    struct Held {
        inner: Store,
        delay: Option<Duration>,
        /// Transactions with more point writes than this fail to commit as too large.
        max_sets: usize,
    }

    struct HeldTxn {
        inner: Box<dyn KvTxn>,
        delay: Option<Duration>,
        max_sets: usize,
        sets: usize,
    }

    #[async_trait]
    impl KvStore for Held {
        async fn begin(&self) -> Result<Box<dyn KvTxn>, StoreError> {
            Ok(Box::new(HeldTxn {
                inner: self.inner.begin().await?,
                delay: self.delay,
                max_sets: self.max_sets,
                sets: 0,
            }))
        }

        fn engine(&self) -> &'static str {
            "held"
        }
    }

    #[async_trait]
    impl KvTxn for HeldTxn {
        async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key).await
        }
        async fn get_range(&mut self, range: &RangeRead) -> Result<Vec<KeyValue>, StoreError> {
            self.inner.get_range(range).await
        }
        fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
            self.sets += 1;
            self.inner.set(key, value)
        }
        fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
            self.inner.clear(key)
        }
        fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
            self.inner.clear_range(begin, end)
        }
        fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), StoreError> {
            self.inner.atomic_add(key, delta)
        }
        fn set_versionstamped_key(&mut self, key: &[u8], offset: usize, value: &[u8]) -> Result<(), StoreError> {
            self.inner.set_versionstamped_key(key, offset, value)
        }
        fn watch(&mut self, key: &[u8]) -> Result<Watch, StoreError> {
            self.inner.watch(key)
        }
        async fn commit(self: Box<Self>) -> Result<Committed, StoreError> {
            if self.sets > self.max_sets {
                return Err(StoreError::TransactionTooLarge(self.sets));
            }
            match self.delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending::<()>().await,
            }
            self.inner.commit().await
        }
        async fn on_error(self: Box<Self>, err: StoreError) -> Result<Box<dyn KvTxn>, StoreError> {
            let inner = self.inner.on_error(err).await?;
            Ok(Box::new(HeldTxn { inner, delay: self.delay, max_sets: self.max_sets, sets: 0 }))
        }
    }

    /// A store with a workspace and one channel its admin is in, and a sequencer over it with
    /// commits held by `delay`, one message per group.
    async fn held_sequencer(
        dir: &std::path::Path,
        delay: Option<Duration>,
        ack_timeout_ms: u64,
    ) -> (Store, Sequencer, SendRequest, Caller) {
        let config = SequencerConfig { shards: 1, max_batch_messages: 1, ack_timeout_ms, ..SequencerConfig::default() };
        capped_sequencer(dir, delay, usize::MAX, config).await
    }

    /// [`held_sequencer`] with transactions of more than `max_sets` point writes refused as too
    /// large, and the sequencer configured by `config`.
    async fn capped_sequencer(
        dir: &std::path::Path,
        delay: Option<Duration>,
        max_sets: usize,
        config: SequencerConfig,
    ) -> (Store, Sequencer, SendRequest, Caller) {
        let inner: Store = EmbeddedStore::open(&dir.join("s.redb"), EmbeddedOptions::default()).unwrap();
        let (_, admin) = accounts::create_workspace(&inner, "w", "admin", "Admin", 0).await.unwrap();
        let caller = accounts::authenticate(&inner, &admin.token).await.unwrap();
        let channel = channels::create(&inner, &caller, "held", false, "", "").await.unwrap().channel.id;
        let held: Store = Arc::new(Held { inner: inner.clone(), delay, max_sets });
        let presence = Arc::new(presence::Tracker::new(Duration::from_secs(60)));
        let (sequencer, _) =
            Sequencer::start(held, config, Arc::new(Metrics::new()), presence, CancellationToken::new());
        let request = SendRequest {
            workspace: caller.workspace.clone(),
            channel,
            user: caller.user.id.clone(),
            text: "hello".into(),
            client_msg_id: String::new(),
            thread_root: None,
            files: Vec::new(),
        };
        (inner, sequencer, request, caller)
    }

    #[tokio::test]
    async fn cached_gates_follow_membership_and_archiving() {
        let dir = tempfile::tempdir().unwrap();
        let store: Store = EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default()).unwrap();
        let (_, admin) = accounts::create_workspace(&store, "w", "admin", "Admin", 0).await.unwrap();
        let admin = accounts::authenticate(&store, &admin.token).await.unwrap();
        let bob = accounts::create_user(&store, &admin, "bob", "Bob", false, 0).await.unwrap();
        let bob = accounts::authenticate(&store, &bob.token).await.unwrap();
        let c = channels::create(&store, &admin, "team", true, "", "").await.unwrap().channel.id;
        let presence = Arc::new(presence::Tracker::new(Duration::from_secs(60)));
        let config = SequencerConfig { shards: 1, ..SequencerConfig::default() };
        let (sequencer, _) =
            Sequencer::start(store.clone(), config, Arc::new(Metrics::new()), presence, CancellationToken::new());
        let mut n = 0;
        let mut send = |user: &Caller| {
            n += 1;
            let request = SendRequest {
                workspace: user.workspace.clone(),
                channel: c.clone(),
                user: user.user.id.clone(),
                text: format!("message {n}"),
                client_msg_id: format!("m{n}"),
                thread_root: None,
                files: Vec::new(),
            };
            let sequencer = sequencer.clone();
            async move { sequencer.send(request).await }
        };
        // Not a member of the private channel yet: it does not exist for bob.
        assert!(matches!(send(&bob).await, Err(OriginError::NotFound(_))));
        channels::add_member(&store, &admin, &c, &bob.user.id).await.unwrap();
        assert_eq!(send(&bob).await.unwrap().message.seq, 1);
        assert_eq!(send(&bob).await.unwrap().message.seq, 2);
        channels::remove_member(&store, &admin, &c, &bob.user.id).await.unwrap();
        assert!(matches!(send(&bob).await, Err(OriginError::NotFound(_))), "removed, bob must not post");
        channels::add_member(&store, &admin, &c, &bob.user.id).await.unwrap();
        assert_eq!(send(&bob).await.unwrap().message.seq, 3);
        let archive = channels::ChannelChange { archived: Some(true), ..Default::default() };
        channels::update(&store, &admin, &c, &archive).await.unwrap();
        assert!(matches!(send(&bob).await, Err(OriginError::Archived(_))), "archived, nobody posts");
        assert!(matches!(send(&admin).await, Err(OriginError::Archived(_))));
        let mut tx = store.begin().await.unwrap();
        assert_eq!(channels::records::last_seq(&mut *tx, &admin.workspace, &c).await.unwrap(), 3);
    }

    /// A client_msg_id is the sender's own: another member's send with the same id is a new
    /// message, and the sender reusing it for other content is refused, in one group or across
    /// groups; a true retry gets the original.
    #[tokio::test]
    async fn client_msg_ids_are_per_sender_and_never_claim_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let store: Store = EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default()).unwrap();
        let (_, admin) = accounts::create_workspace(&store, "w", "alice", "Alice", 0).await.unwrap();
        let alice = accounts::authenticate(&store, &admin.token).await.unwrap();
        let bob = accounts::create_user(&store, &alice, "bob", "Bob", false, 0).await.unwrap();
        let bob = accounts::authenticate(&store, &bob.token).await.unwrap();
        let c = channels::create(&store, &alice, "team", false, "", "").await.unwrap().channel.id;
        channels::add_member(&store, &alice, &c, &bob.user.id).await.unwrap();
        let presence = Arc::new(presence::Tracker::new(Duration::from_secs(60)));
        let (sequencer, _) = Sequencer::start(
            store.clone(),
            SequencerConfig::default(),
            Arc::new(Metrics::new()),
            presence,
            CancellationToken::new(),
        );
        let request = |who: &Caller, text: &str, id: &str, root: Option<Seq>| SendRequest {
            workspace: who.workspace.clone(),
            channel: c.clone(),
            user: who.user.id.clone(),
            text: text.into(),
            client_msg_id: id.into(),
            thread_root: root,
            files: Vec::new(),
        };
        let first = sequencer.send(request(&alice, "alice's", "K", None)).await.unwrap();
        assert!(!first.duplicate);
        let bobs = sequencer.send(request(&bob, "bob's", "K", None)).await.unwrap();
        assert!(!bobs.duplicate, "bob's message must be stored, not answered with alice's");
        assert_eq!((bobs.message.seq, bobs.message.text.as_str()), (2, "bob's"));
        let retry = sequencer.send(request(&alice, "alice's", "K", None)).await.unwrap();
        assert!(retry.duplicate);
        assert_eq!((retry.message.seq, retry.message.text.as_str()), (1, "alice's"));
        for (text, root) in [("other text", None), ("alice's", Some(2))] {
            match sequencer.send(request(&alice, text, "K", root)).await {
                Err(OriginError::Conflict(why)) => assert!(why.contains("reused"), "{why}"),
                other => panic!("reusing an id for other content must be refused, got {other:?}"),
            }
        }
        // The same within one group: sent together, the second with other content is refused.
        let (a, b) = tokio::join!(
            sequencer.send(request(&bob, "one", "J", None)),
            sequencer.send(request(&bob, "two", "J", None))
        );
        let refused = [&a, &b].iter().filter(|o| matches!(o, Err(OriginError::Conflict(_)))).count();
        assert_eq!(refused, 1, "{a:?} {b:?}");
        let mut tx = store.begin().await.unwrap();
        assert_eq!(channels::records::last_seq(&mut *tx, &alice.workspace, &c).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_membership_change_while_a_group_commits_makes_it_retry() {
        let dir = tempfile::tempdir().unwrap();
        let hold = Duration::from_millis(300);
        let (inner, sequencer, request, caller) = held_sequencer(dir.path(), Some(hold), 10_000).await;
        let send = |id: &str| {
            let (sequencer, request) = (sequencer.clone(), SendRequest { client_msg_id: id.into(), ..request.clone() });
            tokio::spawn(async move { sequencer.send(request).await })
        };
        // The first send caches the channel's gate and the membership.
        assert_eq!(send("a").await.unwrap().unwrap().message.seq, 1);
        // The second is built from the cache and waits on its commit while the sender leaves.
        let second = send("b");
        tokio::time::sleep(hold / 3).await;
        channels::remove_member(&inner, &caller, &request.channel, &caller.user.id).await.unwrap();
        match second.await.unwrap() {
            Err(OriginError::NotMember(_)) => {}
            other => panic!("the group must retry and find the sender gone, got {other:?}"),
        }
        let mut tx = inner.begin().await.unwrap();
        assert_eq!(channels::records::last_seq(&mut *tx, &request.workspace, &request.channel).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_commit_that_never_returns_is_answered_with_retry() {
        let dir = tempfile::tempdir().unwrap();
        let (_, sequencer, request, _) = held_sequencer(dir.path(), None, 300).await;
        let started = Instant::now();
        let first = tokio::spawn({
            let (sequencer, request) = (sequencer.clone(), request.clone());
            async move { sequencer.send(SendRequest { client_msg_id: "a".into(), ..request }).await }
        });
        // Queued behind the stalled commit, then stalled in its own.
        let second = sequencer.send(SendRequest { client_msg_id: "b".into(), ..request }).await;
        let first = first.await.unwrap();
        for outcome in [first, second] {
            match outcome {
                Err(OriginError::Unavailable(why)) => assert!(why.contains("retry"), "{why}"),
                other => panic!("expected a retry answer, got {other:?}"),
            }
        }
        assert!(started.elapsed() >= Duration::from_millis(300), "answered before the ack timeout");
    }

    #[tokio::test]
    async fn sends_that_waited_out_the_ack_timeout_in_the_queue_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        // Each commit takes 1 s; a send may wait 2.5 s in the queue. Of four sends queued at
        // once, the fourth reaches the committer after 3 s.
        let (inner, sequencer, request, _) = held_sequencer(dir.path(), Some(Duration::from_secs(1)), 2_500).await;
        let mut sends = Vec::new();
        for id in ["a", "b", "c", "d"] {
            let (sequencer, request) = (sequencer.clone(), request.clone());
            sends.push(tokio::spawn(async move {
                sequencer.send(SendRequest { client_msg_id: id.into(), ..request }).await
            }));
            // In this order into the queue.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut outcomes = Vec::new();
        for send in sends {
            outcomes.push(send.await.unwrap());
        }
        let seqs: Vec<Seq> = outcomes[..3].iter().map(|o| o.as_ref().expect("committed in time").message.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        match &outcomes[3] {
            Err(OriginError::Unavailable(why)) => assert!(why.contains("waited too long"), "{why}"),
            other => panic!("expected the expired send to be told to retry, got {other:?}"),
        }
        // The expired send was not written: the channel ends at 3.
        let (w, c) = (&request.workspace, &request.channel);
        let mut tx = inner.begin().await.unwrap();
        assert_eq!(channels::records::last_seq(&mut *tx, w, c).await.unwrap(), 3);
        assert!(tx.get(&keys::nonce(w, c, &request.user, "d")).await.unwrap().is_none());
    }

    /// The channel's last seq as committed.
    async fn head(store: &Store, request: &SendRequest) -> Seq {
        let mut tx = store.begin().await.unwrap();
        channels::records::last_seq(&mut *tx, &request.workspace, &request.channel).await.unwrap()
    }

    #[tokio::test]
    async fn a_group_over_the_transaction_limit_is_committed_in_halves() {
        let dir = tempfile::tempdir().unwrap();
        // A message writes its record and its dedup entry, a group the channel's head: groups
        // of more than 8 messages are too large for this store.
        let config = SequencerConfig { shards: 1, max_batch_messages: 64, ..SequencerConfig::default() };
        let (store, sequencer, request, _) = capped_sequencer(dir.path(), Some(Duration::ZERO), 17, config).await;
        let sends = (0..64).map(|i| {
            let sequencer = sequencer.clone();
            let request = SendRequest { client_msg_id: format!("m{i}"), ..request.clone() };
            tokio::spawn(async move { sequencer.send(request).await })
        });
        let mut seqs = Vec::new();
        for send in futures::future::join_all(sends).await {
            seqs.push(send.unwrap().expect("every send of an oversized group commits").message.seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
        assert_eq!(head(&store, &request).await, 64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_sends_naming_many_users_commits_within_the_store_limit() {
        let dir = tempfile::tempdir().unwrap();
        let config = SequencerConfig { shards: 1, ..SequencerConfig::default() };
        let (store, sequencer, request, _) =
            capped_sequencer(dir.path(), Some(Duration::ZERO), usize::MAX, config).await;
        // ~25 KB per send as the store counts it: 600 of them are over its 10 MB transaction.
        let text: String =
            (0..selvage_shared::mentions::MAX_MENTIONS).map(|_| format!("<@{}> ", crate::ids::new_id('U'))).collect();
        let sends = (0..600).map(|i| {
            let sequencer = sequencer.clone();
            let request = SendRequest { client_msg_id: format!("m{i}"), text: text.clone(), ..request.clone() };
            tokio::spawn(async move { sequencer.send(request).await })
        });
        let mut seqs = Vec::new();
        for send in futures::future::join_all(sends).await {
            let sent = send.unwrap().expect("every send commits");
            assert_eq!(sent.message.mentions.len(), selvage_shared::mentions::MAX_MENTIONS);
            seqs.push(sent.message.seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=600).collect::<Vec<_>>());
        assert_eq!(head(&store, &request).await, 600);
    }

    #[tokio::test]
    async fn a_send_too_large_alone_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = SequencerConfig { shards: 1, ..SequencerConfig::default() };
        let (store, sequencer, request, _) = capped_sequencer(dir.path(), Some(Duration::ZERO), 1, config).await;
        let refused = sequencer.send(SendRequest { client_msg_id: "big".into(), ..request.clone() }).await;
        assert!(matches!(refused, Err(OriginError::TooLarge(_))), "{refused:?}");
        assert_eq!(head(&store, &request).await, 0);
    }

    #[test]
    fn a_channel_keeps_its_shard_and_channels_spread_over_all() {
        let w = WorkspaceId::new_unchecked("W1");
        let mut counts = [0usize; 4];
        for i in 0..1000 {
            let c = ChannelId::new_unchecked(format!("C{i}"));
            let shard = shard_of(&w, &c, 4);
            assert_eq!(shard, shard_of(&w, &c, 4), "one channel, one shard");
            counts[shard] += 1;
        }
        // Each shard gets a fair part of 1,000 channels (250 on average).
        assert!(counts.iter().all(|&n| n > 150), "{counts:?}");
        assert_eq!(shard_of(&w, &ChannelId::new_unchecked("C1"), 1), 0);
    }

    #[test]
    fn a_message_may_say_nothing_beside_its_files() {
        let file = |i: usize| FileRef {
            id: format!("F{i:012}"),
            name: "a.pdf".into(),
            size: 1,
            content_type: "application/pdf".into(),
            thumbs: Vec::new(),
        };
        let request = SendRequest {
            workspace: WorkspaceId::new_unchecked("W1"),
            channel: ChannelId::new_unchecked("C1"),
            user: UserId::new_unchecked("U1"),
            text: String::new(),
            client_msg_id: "m1".into(),
            thread_root: None,
            files: Vec::new(),
        };
        assert!(matches!(validate(&request), Err(OriginError::BadRequest(_))), "no text, no files");
        validate(&SendRequest { files: vec![file(1)], ..request.clone() }).expect("a file alone");
        let text_with_nul = SendRequest { text: "a\0b".into(), files: vec![file(1)], ..request.clone() };
        assert!(validate(&text_with_nul).is_err(), "a text beside files follows the text rule");
        let many = SendRequest { files: (0..=MAX_FILES).map(file).collect(), ..request };
        assert!(matches!(validate(&many), Err(OriginError::BadRequest(_))), "at most {MAX_FILES} files");
    }
}
