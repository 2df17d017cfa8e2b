//! The dispatcher: turns due pending messages into notifications, decides at the last moment
//! whether they are still wanted, and delivers them (ARCHITECTURE §8 "Notifications").
//!
//! **Claiming.** Every `notify.tick_ms` it takes, in one transaction, the pending messages due
//! by now *and every other pending message of the same conversation for the same user*, due or
//! not: a burst becomes one notification ("5 new messages from …"). They leave the pending
//! keys for one *outgoing* record under `(notify, out, at, …)`, `at` being the end of the
//! claim (`notify.claim_ms`). Transactions make a claim exclusive across origin nodes, and a
//! node that dies mid-delivery leaves its claims to expire and be taken again.
//!
//! **Already seen wins.** Before sending it re-reads, in one transaction: the user (gone or
//! deactivated: dropped), their membership (lost: dropped), their preferences (the channel
//! muted since: dropped; do-not-disturb, manual or scheduled: held until it ends), the read
//! marker (the messages read meanwhile are dropped, all of them: nothing to send), the
//! messages (deleted: dropped), and presence (a session in active use: dropped, the user is
//! looking; do-not-disturb set from a client: held). A held notification's messages go back to
//! pending, due when the hold ends, so that those arriving meanwhile join them: one
//! notification after do-not-disturb, not one per burst.
//!
//! **Delivery.** To each of the user's Web Push subscriptions (RFC 8030 with VAPID and an
//! encrypted payload, `webpush`) and to the push proxy if one is configured. A target that
//! accepted is recorded on the outgoing record, so a retry sends only to the others; a push
//! service's `404`/`410` removes the subscription; `429`, `5xx` and network failures are tried
//! again after a doubling pause, up to `notify.max_attempts`, after which the notification is
//! recorded as failed under `(ws, W, nfailed, U, …)` and counted. Each payload carries an id
//! that is the same on every try, and each Web Push request a `Topic` per conversation, so a
//! push service still holding an older notification of the conversation replaces it.
//!
//! **Once.** The outgoing record is removed in the transaction after the delivery. A crash
//! between a push service accepting a notification and that transaction sends it again when
//! the claim expires — the one window where a notification can arrive twice, with the same id.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use futures::StreamExt;
use selvage_shared::{Channel, ChannelId, ChannelKind, Message, NotifyPrefs, Presence, Seq, User, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{
    decide::{self, load_prefs, Pending},
    prefs::{self, Reason},
    webpush::{self, Vapid},
    Subscription,
};
use crate::{
    caller::get_user,
    channels::records as channels,
    config::NotifyConfig,
    messages::records as messages,
    metrics::Metrics,
    outbound::Outbound,
    presence::Tracker,
    store::{keys, tuple, KvTxn, RangeRead, Store, StoreError},
    transact,
};

/// Most conversations claimed per transaction.
const CLAIM_BATCH: usize = 64;
/// Most fan-outs expanded per step.
const EXPAND_JOBS: usize = 16;
/// Notifications delivered at once.
const IN_FLIGHT: usize = 16;
/// Most messages a notification quotes and counts in detail.
const MAX_MESSAGES: usize = 20;
/// Longest text quoted in a notification, in characters.
const BODY_CHARS: usize = 180;
/// How long a do-not-disturb set from a client (no end known) holds a notification before it
/// is looked at again.
const CLIENT_DND_RECHECK_MS: i64 = 60_000;

/// A notification being delivered or waiting for its next try.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outgoing {
    /// The messages it is about, oldest first.
    pub seqs: Vec<Seq>,
    /// The strongest reason among them.
    pub reason: Reason,
    /// Failed tries so far.
    pub attempts: u32,
    /// Targets that accepted it already (subscription ids, `proxy`).
    #[serde(default)]
    pub done: Vec<String>,
    /// When its first message was due.
    pub due: i64,
}

/// What is recorded of a notification given up on.
#[derive(Debug, Serialize, Deserialize)]
pub struct Failed {
    /// The messages it was about.
    pub seqs: Vec<Seq>,
    /// Tries made.
    pub attempts: u32,
    /// The last failure.
    pub error: String,
}

/// One claimed notification.
struct Claim {
    key: Vec<u8>,
    w: WorkspaceId,
    u: UserId,
    c: ChannelId,
    out: Outgoing,
}

/// What became of a claimed notification.
enum Outcome {
    /// Delivered to every target.
    Delivered,
    /// Not wanted any more; the label says why (a value of `selvage_notify_outcomes_total`).
    Dropped(&'static str),
    /// Do-not-disturb: look again at this time (ms).
    Held(i64),
    /// Some target failed in a way that may pass.
    Retry(String),
}

/// What the dispatcher reads before it decides.
struct State {
    /// Messages of the notification still unread (those quoted are at most [`MAX_MESSAGES`]).
    unread: usize,
    user: Option<User>,
    channel: Option<Channel>,
    member: bool,
    prefs: NotifyPrefs,
    read: Seq,
    messages: Vec<Message>,
    authors: Vec<String>,
    subscriptions: Vec<Subscription>,
}

/// The dispatcher (see the module's documentation).
pub struct Dispatcher {
    pub(super) store: Store,
    pub(super) presence: Arc<Tracker>,
    pub(super) config: NotifyConfig,
    pub(super) vapid: Arc<Vapid>,
    pub(super) client: Outbound,
    pub(super) email_after_ms: Option<i64>,
    pub(super) metrics: Arc<Metrics>,
}

impl Dispatcher {
    /// Runs until `shutdown`: a step every `notify.tick_ms`, at once again after a full one.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = Duration::from_millis(self.config.tick_ms);
        super::every_tick(tick, CLAIM_BATCH, "notification dispatcher", shutdown, |now| self.step(now)).await
    }

    /// Expands the `@channel` messages of large channels waiting for it, then claims what is
    /// due at `now` (ms) and handles it; answers how many were claimed.
    pub async fn step(&self, now: i64) -> Result<usize, StoreError> {
        self.expand().await?;
        let claims = self.claim(now).await?;
        let count = claims.len();
        let handled: Vec<Result<(), StoreError>> = futures::stream::iter(claims)
            .map(|claim| self.handle(claim, now))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        handled.into_iter().collect::<Result<Vec<()>, StoreError>>()?;
        Ok(count)
    }

    /// Expands every waiting fan-out ([`decide::expand`]), a chunk of members per transaction,
    /// up to [`EXPAND_JOBS`] of them per step.
    async fn expand(&self) -> Result<(), StoreError> {
        let (jobs, _) = transact!(self.store, |tx| {
            tx.get_range(&RangeRead::prefix(&keys::notify_fanouts()).limit(EXPAND_JOBS)).await?
        })?;
        for (k, _) in jobs {
            let Some((w, c, seq)) = parse_fanout_key(&k) else { continue };
            loop {
                let ((written, done), _) = transact!(self.store, |tx| {
                    decide::expand(tx, &w, &c, seq, decide::EXPAND_CHUNK, self.email_after_ms).await?
                })?;
                self.metrics.notify_pending.inc_by(written);
                if done {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Takes the due conversations and the expired claims (see the module's documentation).
    async fn claim(&self, now: i64) -> Result<Vec<Claim>, StoreError> {
        let until = now.saturating_add(self.config.claim_ms as i64);
        let (claims, _) = transact!(self.store, |tx| {
            let mut claims = Vec::new();
            let due =
                RangeRead::between(keys::notify_dues(), keys::notify_dues_at(now.saturating_add(1))).limit(CLAIM_BATCH);
            let mut conversations = BTreeSet::new();
            for (k, _) in tx.get_range(&due).await? {
                // Cleared here too, not only with its pending entry: a queue entry left without
                // one must not come back at every step.
                tx.clear(&k)?;
                if let Some((_, w, u, c, _)) = parse_queue_key(&k) {
                    conversations.insert((w, u, c));
                }
            }
            for (w, u, c) in conversations {
                if let Some(out) = take_pending(tx, &w, &u, &c).await? {
                    let key = keys::notify_out(until, &w, &u, &c, out.seqs[0]);
                    tx.set(&key, &selvage_shared::to_msgpack(&out))?;
                    claims.push(Claim { key, w, u, c, out });
                }
            }
            let expired = RangeRead::between(keys::notify_outs(), keys::notify_outs_at(now.saturating_add(1)))
                .limit(CLAIM_BATCH.saturating_sub(claims.len()).max(1));
            for (k, raw) in tx.get_range(&expired).await? {
                let (Some((_, w, u, c, first)), Ok(out)) =
                    (parse_queue_key(&k), selvage_shared::from_msgpack::<Outgoing>(&raw))
                else {
                    tx.clear(&k)?;
                    continue;
                };
                tx.clear(&k)?;
                let key = keys::notify_out(until, &w, &u, &c, first);
                tx.set(&key, &raw)?;
                claims.push(Claim { key, w, u, c, out });
            }
            claims
        })?;
        Ok(claims)
    }

    /// Decides, delivers and records one claimed notification.
    async fn handle(&self, mut claim: Claim, now: i64) -> Result<(), StoreError> {
        let mut expired = Vec::new();
        let outcome = self.attempt(&mut claim, now, &mut expired).await?;
        let max_attempts = self.config.max_attempts;
        let backoff = |attempts: u32| {
            let pause = self.config.retry_min_ms.saturating_mul(1u64 << attempts.min(20)).min(self.config.retry_max_ms);
            now.saturating_add(pause as i64)
        };
        let Claim { key, w, u, c, mut out } = claim;
        let first = out.seqs[0];
        let label = match &outcome {
            Outcome::Delivered => Some("delivered"),
            Outcome::Dropped(why) => Some(*why),
            Outcome::Held(_) => None,
            Outcome::Retry(_) if out.attempts + 1 >= max_attempts => Some("failed"),
            Outcome::Retry(_) => None,
        };
        let (still_ours, _) = transact!(self.store, |tx| {
            // Another node took the claim over (this one was too slow): it is theirs now.
            if tx.get(&key).await?.is_none() {
                false
            } else {
                tx.clear(&key)?;
                for id in &expired {
                    tx.clear(&keys::push_subscription(&w, &u, id))?;
                }
                match &outcome {
                    Outcome::Delivered | Outcome::Dropped(_) => {}
                    // Not tried yet: its messages wait as pending again, due when the hold
                    // ends, so that what arrives meanwhile joins them in one notification.
                    Outcome::Held(until) if out.attempts == 0 && out.done.is_empty() => {
                        let value = selvage_shared::to_msgpack(&Pending { due: *until, reason: out.reason });
                        for &seq in &out.seqs {
                            tx.set(&keys::notify_pending(&w, &u, &c, seq), &value)?;
                            tx.set(&keys::notify_due(*until, &w, &u, &c, seq), &[])?;
                        }
                    }
                    // Tried before: kept whole, so the targets that accepted it are not sent it
                    // again.
                    Outcome::Held(until) => {
                        tx.set(&keys::notify_out(*until, &w, &u, &c, first), &selvage_shared::to_msgpack(&out))?;
                    }
                    Outcome::Retry(error) => {
                        let mut next = out.clone();
                        next.attempts += 1;
                        if next.attempts >= max_attempts {
                            let failed =
                                Failed { seqs: next.seqs.clone(), attempts: next.attempts, error: error.clone() };
                            tx.set(&keys::notify_failed(&w, &u, now, &c, first), &selvage_shared::to_msgpack(&failed))?;
                        } else {
                            tx.set(
                                &keys::notify_out(backoff(next.attempts), &w, &u, &c, first),
                                &selvage_shared::to_msgpack(&next),
                            )?;
                        }
                    }
                }
                true
            }
        })?;
        if !still_ours {
            return Ok(());
        }
        if let Outcome::Retry(error) = &outcome {
            out.attempts += 1;
            tracing::warn!(ws.id = %w, user.id = %u, channel.id = %c, attempts = out.attempts, error = %error,
                "notification not delivered");
        }
        if let Some(label) = label {
            self.metrics.notify_outcomes.with_label_values(&[label]).inc();
            if label == "delivered" {
                let posted = out.due - self.config.delay_ms as i64;
                self.metrics.notify_latency_seconds.observe((now - posted).max(0) as f64 / 1000.0);
            }
        }
        Ok(())
    }

    /// Re-reads what decides the notification and delivers it if it is still wanted.
    async fn attempt(&self, claim: &mut Claim, now: i64, expired: &mut Vec<String>) -> Result<Outcome, StoreError> {
        let state = self.read_state(claim).await?;
        let (Some(user), Some(channel)) = (&state.user, &state.channel) else { return Ok(Outcome::Dropped("gone")) };
        if user.deactivated || !state.member {
            return Ok(Outcome::Dropped("gone"));
        }
        if !prefs::notifies(&state.prefs, &channel.id, channel.kind, claim.out.reason) {
            return Ok(Outcome::Dropped("muted"));
        }
        if let Some(until) = prefs::dnd_until(&state.prefs, now) {
            return Ok(Outcome::Held(until));
        }
        let presence = self.presence.presence_of(&claim.w, &claim.u, tokio::time::Instant::now());
        if presence == Presence::Dnd {
            return Ok(Outcome::Held(now + CLIENT_DND_RECHECK_MS));
        }
        if claim.out.seqs.iter().all(|&s| s <= state.read) {
            return Ok(Outcome::Dropped("read"));
        }
        if presence == Presence::Active {
            return Ok(Outcome::Dropped("active"));
        }
        if state.messages.is_empty() {
            return Ok(Outcome::Dropped("gone"));
        }
        let payload = payload(claim, channel, &state);
        let mut targets: Vec<Target> = state
            .subscriptions
            .iter()
            .filter(|s| !claim.out.done.contains(&s.id))
            .map(|s| Target::WebPush(s.clone()))
            .collect();
        if !self.config.push_proxy_url.is_empty() && !claim.out.done.iter().any(|d| d == "proxy") {
            targets.push(Target::Proxy);
        }
        if targets.is_empty() && claim.out.done.is_empty() {
            return Ok(Outcome::Dropped("no_target"));
        }
        let mut retry = None;
        for target in targets {
            let (name, result) = match &target {
                Target::WebPush(s) => ("webpush", self.web_push(s, claim, &payload, now).await),
                Target::Proxy => ("proxy", self.proxy(claim, &payload, now).await),
            };
            let label = match &result {
                Sent::Ok => "ok",
                Sent::Expired => "expired",
                Sent::Rejected(_) => "rejected",
                Sent::Retry(_) => "retry",
            };
            self.metrics.notify_deliveries.with_label_values(&[name, label]).inc();
            let id = match &target {
                Target::WebPush(s) => s.id.clone(),
                Target::Proxy => "proxy".to_string(),
            };
            match result {
                Sent::Ok => claim.out.done.push(id),
                Sent::Expired => expired.push(id),
                Sent::Rejected(why) => {
                    tracing::warn!(target = name, ws.id = %claim.w, user.id = %claim.u, error = %why,
                        "a notification was refused for good by one target");
                    claim.out.done.push(id);
                }
                Sent::Retry(why) => retry = Some(why),
            }
        }
        Ok(match retry {
            Some(why) => Outcome::Retry(why),
            None => Outcome::Delivered,
        })
    }

    async fn read_state(&self, claim: &Claim) -> Result<State, StoreError> {
        let (w, u, c) = (&claim.w, &claim.u, &claim.c);
        let seqs = &claim.out.seqs;
        let (state, _) = transact!(self.store, |tx| {
            let user = get_user(tx, w, u).await?;
            let channel = channels::load(tx, w, c).await?;
            let member = channels::is_member(tx, w, c, u).await?;
            let prefs = load_prefs(tx, w, u).await?;
            let read = match tx.get(&keys::read_marker(w, u, c)).await? {
                Some(raw) => selvage_shared::from_msgpack::<Seq>(&raw).unwrap_or(0),
                None => 0,
            };
            let unread = seqs.iter().filter(|&&s| s > read).count();
            let mut messages = Vec::new();
            for &seq in seqs.iter().filter(|&&s| s > read).rev().take(MAX_MESSAGES) {
                if let Some(m) = messages::load(tx, w, c, seq).await?.filter(|m| !m.deleted) {
                    messages.push(m);
                }
            }
            messages.reverse();
            let mut authors: Vec<String> = Vec::new();
            let mut seen: BTreeSet<UserId> = BTreeSet::new();
            for m in &messages {
                if seen.insert(m.user.clone()) {
                    let name =
                        get_user(tx, w, &m.user).await?.map(|a| display_name(&a)).unwrap_or_else(|| m.user.to_string());
                    authors.push(name);
                }
            }
            let subscriptions = tx
                .get_range(&RangeRead::prefix(&keys::push_subscriptions(w, u)))
                .await?
                .into_iter()
                .filter_map(|(_, raw)| selvage_shared::from_msgpack::<Subscription>(&raw).ok())
                .collect();
            State { unread, user, channel, member, prefs, read, messages, authors, subscriptions }
        })?;
        Ok(state)
    }

    async fn web_push(&self, s: &Subscription, claim: &Claim, payload: &[u8], now: i64) -> Sent {
        let body = match webpush::encrypt(&s.p256dh, &s.auth, payload) {
            Ok(body) => body,
            Err(e) => return Sent::Rejected(format!("cannot encrypt for this subscription: {e}")),
        };
        let authorization = match self.vapid.authorization(&s.endpoint, (now / 1000).max(0) as u64) {
            Ok(a) => a,
            Err(e) => return Sent::Rejected(format!("cannot sign for this endpoint: {e}")),
        };
        let urgency = match claim.out.reason {
            Reason::Direct | Reason::Mention => webpush::Urgency::High,
            _ => webpush::Urgency::Normal,
        };
        let ttl = u32::try_from(self.config.ttl_secs).unwrap_or(u32::MAX);
        let mut headers = match webpush::request_headers(ttl, urgency, Some(&topic(claim))) {
            Ok(headers) => headers,
            Err(e) => return Sent::Rejected(format!("cannot build the push request: {e}")),
        };
        headers.push(("authorization", authorization));
        classify(self.client.post(&s.endpoint, &headers, body).await)
    }

    async fn proxy(&self, claim: &Claim, payload: &[u8], now: i64) -> Sent {
        let body = payload.to_vec();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.config.push_proxy_secret.as_bytes());
        let timestamp = (now / 1000).to_string();
        let mut signed = timestamp.clone().into_bytes();
        signed.push(b'.');
        signed.extend_from_slice(&body);
        let signature = hex::encode(ring::hmac::sign(&key, &signed).as_ref());
        let headers = [
            ("content-type", "application/json".to_string()),
            ("x-selvage-timestamp", timestamp),
            ("x-selvage-signature", format!("sha256={signature}")),
            ("x-selvage-user", claim.u.to_string()),
        ];
        classify(self.client.post(&self.config.push_proxy_url, &headers, body).await)
    }
}

/// Where one notification goes.
enum Target {
    WebPush(Subscription),
    Proxy,
}

/// What a target answered.
enum Sent {
    Ok,
    /// The subscription is gone (`404`, `410`).
    Expired,
    /// Refused for good (any other `4xx`).
    Rejected(String),
    /// May pass (`408`, `429`, `5xx`, no answer).
    Retry(String),
}

fn classify(answer: Result<u16, String>) -> Sent {
    match answer {
        Err(e) => Sent::Retry(e),
        Ok(200..=299) => Sent::Ok,
        Ok(404 | 410) => Sent::Expired,
        Ok(status @ (408 | 425 | 429 | 500..=599)) => Sent::Retry(format!("answered {status}")),
        Ok(status) => Sent::Rejected(format!("answered {status}")),
    }
}

/// Moves the pending messages of one conversation of a user into an outgoing record: theirs
/// alone (`notify_pending`) and theirs among the `@channel` messages of C still marked as
/// having entries (`notify_broadcast_pending`); a message whose last entry this takes loses its
/// mark.
async fn take_pending(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    u: &UserId,
    c: &ChannelId,
) -> Result<Option<Outgoing>, StoreError> {
    let mut taken: Vec<(Seq, Pending)> = Vec::new();
    for (k, raw) in tx.get_range(&RangeRead::prefix(&keys::notify_pending_in(w, u, c))).await? {
        tx.clear(&k)?;
        if let (Some(seq), Ok(p)) = (last_seq(&k), selvage_shared::from_msgpack::<Pending>(&raw)) {
            taken.push((seq, p));
        }
    }
    for (mark, _) in tx.get_range(&RangeRead::prefix(&keys::notify_broadcasts_in(w, c))).await? {
        let Some(seq) = last_seq(&mark) else {
            tx.clear(&mark)?;
            continue;
        };
        let key = keys::notify_broadcast_pending(w, c, seq, u);
        let Some(raw) = tx.get(&key).await? else { continue };
        tx.clear(&key)?;
        if let Ok(p) = selvage_shared::from_msgpack::<Pending>(&raw) {
            taken.push((seq, p));
        }
        // Claims take a message's entries in user order (its queue keys share one due time),
        // so most find the next one at once; only the last looks back over the whole message,
        // in case an entry before this one is left.
        let (_, end) = crate::store::prefix_range(&keys::notify_broadcast_pending_of(w, c, seq));
        let mut after = key;
        after.push(0x00);
        if tx.get_range(&RangeRead::between(after, end).limit(1)).await?.is_empty() {
            let left = RangeRead::prefix(&keys::notify_broadcast_pending_of(w, c, seq)).limit(1);
            if tx.get_range(&left).await?.is_empty() {
                tx.clear(&mark)?;
            }
        }
    }
    taken.sort_by_key(|(seq, _)| *seq);
    let mut out: Option<Outgoing> = None;
    for (seq, p) in taken {
        tx.clear(&keys::notify_due(p.due, w, u, c, seq))?;
        match &mut out {
            None => {
                out = Some(Outgoing { seqs: vec![seq], reason: p.reason, attempts: 0, done: Vec::new(), due: p.due })
            }
            Some(o) => {
                o.seqs.push(seq);
                o.reason = o.reason.min(p.reason);
                o.due = o.due.min(p.due);
            }
        }
    }
    Ok(out)
}

/// The seq a key ends with.
fn last_seq(k: &[u8]) -> Option<Seq> {
    let e = tuple::unpack(k).ok()?;
    Seq::try_from(e.last()?.as_int()?).ok()
}

/// `(W, C, seq)` of a `notify_fanout` key.
fn parse_fanout_key(k: &[u8]) -> Option<(WorkspaceId, ChannelId, Seq)> {
    let e = tuple::unpack(k).ok()?;
    let [_, _, w, c, seq] = e.as_slice() else { return None };
    Some((WorkspaceId::parse(w.as_str()?)?, ChannelId::parse(c.as_str()?)?, Seq::try_from(seq.as_int()?).ok()?))
}

/// `(at, W, U, C, seq)` of a `notify_due` or `notify_out` key.
fn parse_queue_key(k: &[u8]) -> Option<(i64, WorkspaceId, UserId, ChannelId, Seq)> {
    let e = tuple::unpack(k).ok()?;
    let [_, _, at, w, u, c, seq] = e.as_slice() else { return None };
    Some((
        at.as_int()?,
        WorkspaceId::parse(w.as_str()?)?,
        UserId::parse(u.as_str()?)?,
        ChannelId::parse(c.as_str()?)?,
        Seq::try_from(seq.as_int()?).ok()?,
    ))
}

/// The Web Push `Topic` of a conversation (RFC 8030 §5.4: at most 32 characters of the
/// base64url alphabet): a newer notification replaces an older one a push service still holds.
fn topic(claim: &Claim) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{}/{}/{}", claim.w, claim.u, claim.c).as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..18])
}

/// The name people know a user by: their display name, else their handle.
pub(super) fn display_name(u: &User) -> String {
    if u.name.is_empty() {
        u.handle.clone()
    } else {
        u.name.clone()
    }
}

/// The JSON a device shows (see docs/API.md "Notifications").
fn payload(claim: &Claim, channel: &Channel, state: &State) -> Vec<u8> {
    // Past the messages quoted, the unread ones counted (some may be deleted since: not read).
    let count = if state.unread > MAX_MESSAGES { state.unread } else { state.messages.len() };
    let Some(latest) = state.messages.last() else { return Vec::new() };
    let from = match state.authors.as_slice() {
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [a, b, more @ ..] => format!("{a}, {b} and {} more", more.len()),
        [] => String::new(),
    };
    let title = match channel.kind {
        ChannelKind::Dm => from.clone(),
        ChannelKind::GroupDm => format!("{from} (group)"),
        ChannelKind::Channel => format!("#{}", channel.name),
    };
    let text: String = latest.text.chars().take(BODY_CHARS).collect();
    let body = match (count, channel.kind) {
        (1, ChannelKind::Dm) => text.clone(),
        (1, _) => format!("{}: {text}", state.authors.first().cloned().unwrap_or_default()),
        (n, _) => format!("{n} new messages from {from}"),
    };
    serde_json::to_vec(&serde_json::json!({
        "id": format!("{}/{}/{}/{}", claim.w, claim.u, claim.c, claim.out.seqs[0]),
        "workspace": claim.w,
        "user": claim.u,
        "channel": { "id": channel.id, "name": channel.name, "kind": channel.kind },
        "seq": latest.seq,
        "count": count,
        "reason": claim.out.reason,
        "title": title,
        "body": body,
        "text": text,
        "ts": latest.ts,
    }))
    .unwrap_or_default()
}
