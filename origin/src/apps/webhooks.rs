//! Event webhooks (ARCHITECTURE §8 "Apps"): every event an app's bot user may see, POSTed to
//! the app's HTTPS endpoints, signed as the Standard Webhooks specification says, in feed
//! order, retried for about a day, replayable.
//!
//! Three parts, on the feed's consumer mechanism:
//!
//! - **The consumer `hooks`** reads the feed once for every endpoint. For each event whose
//!   workspace has apps with endpoints that asked for its type and whose bot user may see it
//!   ([`visible_to`]), it writes the event with those apps under `(hooks, e, W, position)` in
//!   [`Consumer::apply`], the transaction that moves its cursor: **exactly once**, in one queue
//!   per workspace ordered by feed position, so a SIGKILL anywhere loses nothing. One entry
//!   serves every endpoint, and a batch's entries go together at the queue's end: the disk
//!   writes grow with the events, not with the endpoints.
//! - **The dispatcher** ([`Dispatcher`]), every `apps.tick_ms` on every node, takes the
//!   workspaces with events to deliver; a node leases one endpoint at a time (`(hooks, state, W,
//!   H)`, transactions make the lease exclusive), sends the entries after its `done` position
//!   that are for it (its app, its event types, after its creation: `since`), and only after a
//!   `2xx` moves `done` past them and logs the deliveries. A failure pauses the whole endpoint —
//!   later events wait, so deliveries stay in feed order — for `apps.webhook_retry_min_ms`,
//!   then 4× longer each time up to `apps.webhook_retry_max_ms`; an endpoint failing for
//!   `apps.webhook_disable_after_secs` (a day) is disabled with the reason. The queue is cleared
//!   up to the lowest `done` of the workspace's endpoints — a disabled one's counting for
//!   `apps.webhook_keep_disabled_secs`, so enabled again within it, it gets what it missed in
//!   order; later, what was cleared is queued again from the feed, as a replay.
//! - **Replays** queue bodies for one endpoint under `(hooks, r, W, H, position, replay)`; the
//!   dispatcher merges them with the queue by position.
//! - **Signing.** `webhook-id` is `evt_` and the event's cursor — the same on every try and every
//!   replay — `webhook-timestamp` the try's time, and `webhook-signature` `v1,<base64 HMAC-SHA256
//!   of id.timestamp.body>` for each secret still valid: after a rotation the old secret signs
//!   beside the new one for `apps.secret_overlap_secs`, so receivers can switch without losing
//!   a delivery.
//!
//! A crash between an endpoint's `2xx` and the transaction that records it sends that event
//! again, with the same `webhook-id`: receivers deduplicate by it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use base64::Engine as _;
use selvage_shared::{AppId, ChannelId, Cursor, Event, FeedEvent, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    caller::Caller,
    channels::records as channels,
    config::{AppsConfig, ConsumersConfig},
    error::{OriginError, Result},
    feed::{
        self,
        consumer::{Batch, Consumer, ConsumerError, ConsumerOptions, ConsumerRunner, StartFrom},
        Feed, Position, Read,
    },
    ids,
    metrics::Metrics,
    outbound::{self, Allow, Outbound},
    store::{keys, KvTxn, RangeRead, Store, StoreError},
    transact,
};

/// The consumer's name: the key of its cursor and lease. Never renamed.
pub const NAME: &str = "hooks";
/// Most endpoints one app may have.
pub const MAX_WEBHOOKS: usize = 20;
/// Events sent to one endpoint per lease.
const SEND_BATCH: usize = 64;
/// Entries of a workspace's queue one lease reads at most, looking for an endpoint's.
const SCAN_BATCH: usize = 1_024;
/// Queue entries (and delivery bodies) a node keeps decoded.
const ENTRY_CACHE: u64 = 20_000;
/// How long an endpoint enabled again waits for what it missed to be queued from the feed
/// (ms): the pause ends as soon as it is; a node that died meanwhile leaves it this long.
const REQUEUE_HOLD_MS: i64 = 60_000;
/// How often a node marks every workspace with endpoints and clears old log entries (ms).
const UPKEEP_MS: i64 = 60_000;
/// Log entries one upkeep looks at per workspace.
const UPKEEP_BATCH: usize = 10_000;
/// A lease lasts this many request timeouts (`apps.webhook_timeout_ms`). A node starts a try
/// only while two are left, so it records its tries before the lease ends; a node that died
/// holds its endpoints this long at most.
const LEASE_TIMEOUTS: i64 = 4;
/// How long a stopping dispatcher waits for its endpoints to record what they sent and let
/// their leases go.
const DRAIN: Duration = Duration::from_secs(5);
/// Endpoints served at once by one node.
const IN_FLIGHT: usize = 128;
/// Most workspaces looked at per step.
const READY_BATCH: usize = 1_000;
/// Most events one replay queues.
pub const MAX_REPLAY: usize = 10_000;
/// What an endpoint's answer may say that the log keeps.
const LOG_BODY_BYTES: usize = 256;
/// The event types an endpoint may ask for (`*`: all of them).
pub const EVENT_TYPES: [&str; 11] = [
    "message",
    "message_changed",
    "message_deleted",
    "reaction_added",
    "reaction_removed",
    "member_joined",
    "member_left",
    "channel_created",
    "channel_updated",
    "user_updated",
    "read_marker",
];

/// A secret that signs deliveries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Secret {
    /// The key (24 random bytes); shown once, as `whsec_` and its base64.
    pub key: Vec<u8>,
    /// Until when it signs (ms), for one rotated out; `None`: the current one.
    pub until: Option<i64>,
}

/// An event webhook endpoint as the store keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Webhook {
    /// Its id.
    pub id: String,
    /// The app it delivers for.
    pub app: AppId,
    /// Where events are POSTed.
    pub url: String,
    /// The event types it gets (`*`: all).
    pub events: Vec<String>,
    /// The secrets that sign, the current one last.
    pub secrets: Vec<Secret>,
    /// Whether events are queued and delivered for it.
    pub enabled: bool,
    /// Why it was disabled, when it was by failing.
    pub disabled_reason: Option<String>,
    /// When it was created (ms).
    pub created_at: i64,
    /// The feed's head when it was created: it gets the events after it (older ones by replay).
    #[serde(default)]
    pub since: Option<Position>,
    /// When it was disabled (ms), while it is.
    #[serde(default)]
    pub disabled_at: Option<i64>,
}

/// An endpoint as the API shows it: no secrets.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WebhookView {
    pub id: String,
    pub app: AppId,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    pub created_at: i64,
}

impl From<&Webhook> for WebhookView {
    fn from(h: &Webhook) -> Self {
        WebhookView {
            id: h.id.clone(),
            app: h.app.clone(),
            url: h.url.clone(),
            events: h.events.clone(),
            enabled: h.enabled,
            disabled_reason: h.disabled_reason.clone(),
            created_at: h.created_at,
        }
    }
}

/// An endpoint's delivery state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The node serving it, until `lease_until` (ms).
    pub owner: String,
    pub lease_until: i64,
    /// Failed tries in a row.
    pub attempts: u32,
    /// When the first of them failed (ms).
    pub failing_since: Option<i64>,
    /// No try before this (ms).
    pub next_at: i64,
    /// Every entry of the workspace's queue up to this position is delivered or not for it;
    /// `None`: nothing delivered yet, the endpoint's `since` stands.
    #[serde(default)]
    pub done: Option<Position>,
}

/// An entry of a workspace's queue: an event and the apps it is for.
#[derive(Serialize, Deserialize)]
struct Queued {
    apps: Vec<AppId>,
    event: FeedEvent,
}

/// Where endpoint `hook` with `state` has delivered to in its workspace's queue.
fn done_of(hook: &Webhook, state: &State) -> Position {
    state.done.or(hook.since).unwrap_or_default()
}

/// Whether a disabled endpoint's events are still kept for it at `now` (ms).
fn kept_for(hook: &Webhook, now: i64, keep_ms: i64) -> bool {
    hook.enabled || hook.disabled_at.is_some_and(|at| now - at < keep_ms)
}

/// The first key after `key`.
fn after(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// What became of one event's delivery to one endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    /// The `webhook-id` it was sent with.
    pub id: String,
    /// The event's type.
    pub event: String,
    /// `delivered`, or `failing` while it is being tried again.
    pub status: String,
    /// Tries so far.
    pub attempts: u32,
    /// The endpoint's last answer, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<u16>,
    /// Why the last try failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the last try was made (ms).
    pub at: i64,
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Option<T> {
    selvage_shared::from_msgpack(raw).ok()
}

fn no_webhook(h: &str) -> OriginError {
    OriginError::NotFound(format!("webhook {h} not found"))
}

/// A new secret and how it is shown (`whsec_` and its base64, once).
pub(crate) fn new_secret() -> Result<(Secret, String)> {
    let mut key = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| OriginError::Internal("no randomness for a webhook secret".into()))?;
    let shown = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
    Ok((Secret { key: key.to_vec(), until: None }, shown))
}

/// Rotates `secrets` out at `now` (ms): those whose end has passed go, and the current ones
/// sign for `overlap_ms` more — for a webhook's secrets and a slash command's alike.
pub(crate) fn retire(secrets: &mut Vec<Secret>, now: i64, overlap_ms: i64) {
    secrets.retain(|s| s.until.is_none_or(|t| t > now));
    for s in secrets.iter_mut().filter(|s| s.until.is_none()) {
        s.until = Some(now + overlap_ms);
    }
}

/// The event types asked for: known ones, or `*`.
fn checked_events(events: &[String]) -> Result<Vec<String>> {
    if events.is_empty() {
        return Err(OriginError::BadRequest("name at least one event type, or \"*\"".into()));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
            return Err(OriginError::BadRequest(format!(
                "unknown event type {e:?}; known: * or {}",
                EVENT_TYPES.join(", ")
            )));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// The endpoints of app `a`.
async fn hooks_of(tx: &mut dyn KvTxn, w: &WorkspaceId, a: &AppId) -> Result<Vec<Webhook>, StoreError> {
    let rows = tx.get_range(&RangeRead::prefix(&keys::webhooks(w))).await?;
    Ok(rows.iter().filter_map(|(_, raw)| decode::<Webhook>(raw)).filter(|h| h.app == *a).collect())
}

/// The position of a delivery log's `before` cursor.
fn log_cursor(c: &str) -> Result<Position> {
    feed::parse_cursor(c).ok_or_else(|| OriginError::BadRequest(format!("{c:?} is not a cursor")))
}

/// The endpoint `h` of app `a`, if it is one of the caller's workspace's.
async fn load_hook(tx: &mut dyn KvTxn, w: &WorkspaceId, a: &AppId, h: &str) -> Result<Option<Webhook>, StoreError> {
    if !selvage_shared::is_valid_id(h) {
        return Ok(None);
    }
    Ok(tx.get(&keys::webhook(w, h)).await?.and_then(|raw| decode::<Webhook>(&raw)).filter(|hook| hook.app == *a))
}

/// The endpoints' API (admins of the app's workspace only).
pub struct Webhooks {
    store: Store,
    allow: Allow,
    overlap_ms: i64,
    keep_ms: i64,
}

impl Webhooks {
    /// The API over `store`, checking URLs against `config.allow_networks`.
    pub fn new(store: &Store, config: &AppsConfig) -> std::result::Result<Webhooks, String> {
        let allow = Allow::parse(false, &config.allow_networks)?;
        Ok(Webhooks {
            store: store.clone(),
            allow,
            overlap_ms: config.secret_overlap_secs as i64 * 1000,
            keep_ms: config.webhook_keep_disabled_secs as i64 * 1000,
        })
    }

    fn check_url(&self, url: &str) -> Result<()> {
        if url.len() > 2048 {
            return Err(OriginError::BadRequest("url: at most 2048 bytes".into()));
        }
        outbound::check_url(url, &self.allow).map(|_| ()).map_err(|e| OriginError::BadRequest(format!("url: {e}")))
    }

    /// Adds an endpoint to app `a`, for the events after the feed's head of now; answers it and
    /// its secret (shown once).
    pub async fn create(
        &self,
        caller: &Caller,
        feed: &Feed,
        a: &AppId,
        url: &str,
        events: &[String],
    ) -> Result<(WebhookView, String)> {
        super::require_admin(caller)?;
        self.check_url(url)?;
        let events = checked_events(events)?;
        let (secret, shown) = new_secret()?;
        // Read before the transaction, not in it: a read of the log's end would conflict with
        // every send.
        let since = feed.head().await?;
        let w = &caller.workspace;
        let (made, _) = transact!(self.store, |tx| {
            match super::load(tx, w, a).await? {
                None => return Ok(Err(super::no_app(a))),
                Some(app) if !app.scopes.contains(&selvage_shared::Scope::Events) => {
                    return Ok(Err(OriginError::BadRequest(
                        "the app needs the `events` scope to get events by webhook".into(),
                    )))
                }
                Some(_) => {}
            }
            let mine = tx.get_range(&RangeRead::prefix(&keys::webhooks(w))).await?;
            let count = mine.iter().filter_map(|(_, raw)| decode::<Webhook>(raw)).filter(|h| h.app == *a).count();
            if count >= MAX_WEBHOOKS {
                return Ok(Err(OriginError::BadRequest(format!("an app has at most {MAX_WEBHOOKS} webhooks"))));
            }
            let hook = Webhook {
                id: ids::new_id('H'),
                app: a.clone(),
                url: url.to_string(),
                events: events.clone(),
                secrets: vec![secret.clone()],
                enabled: true,
                disabled_reason: None,
                created_at: crate::now_ms(),
                since: Some(since),
                disabled_at: None,
            };
            save_hook(tx, w, &hook)?;
            Ok(WebhookView::from(&hook))
        })?;
        let view = made?;
        tracing::info!(ws.id = %w, app.id = %a, webhook.id = %view.id, by = %caller.user.id, "webhook created");
        Ok((view, shown))
    }

    /// App `a`'s endpoints.
    pub async fn list(&self, caller: &Caller, a: &AppId) -> Result<Vec<WebhookView>> {
        super::require_admin(caller)?;
        let w = &caller.workspace;
        let (found, _) = transact!(self.store, |tx| {
            match super::load(tx, w, a).await? {
                None => None,
                Some(_) => Some(hooks_of(tx, w, a).await?),
            }
        })?;
        let mut hooks: Vec<WebhookView> =
            found.ok_or_else(|| super::no_app(a))?.iter().map(WebhookView::from).collect();
        hooks.sort_by_key(|h| h.created_at);
        Ok(hooks)
    }

    /// One endpoint.
    pub async fn get(&self, caller: &Caller, a: &AppId, h: &str) -> Result<WebhookView> {
        super::require_admin(caller)?;
        let (hook, _) = transact!(self.store, |tx| { load_hook(tx, &caller.workspace, a, h).await? })?;
        hook.map(|h| WebhookView::from(&h)).ok_or_else(|| no_webhook(h))
    }

    /// Changes an endpoint: its URL, its event types, or whether it is enabled. Enabling one
    /// clears its failures, so what it has not delivered is tried again at once: from the
    /// workspace's queue if it was kept (`apps.webhook_keep_disabled_secs`), else queued again
    /// from the feed as a replay would.
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        caller: &Caller,
        feed: &Feed,
        a: &AppId,
        h: &str,
        url: Option<&str>,
        events: Option<&[String]>,
        enabled: Option<bool>,
    ) -> Result<WebhookView> {
        super::require_admin(caller)?;
        if let Some(url) = url {
            self.check_url(url)?;
        }
        let events = events.map(checked_events).transpose()?;
        let w = &caller.workspace;
        let now = crate::now_ms();
        let keep_ms = self.keep_ms;
        let (updated, _) = transact!(self.store, |tx| {
            let Some(mut hook) = load_hook(tx, w, a, h).await? else { return Ok(None) };
            if let Some(url) = url {
                hook.url = url.to_string();
            }
            if let Some(events) = &events {
                hook.events = events.clone();
            }
            let mut missed = None;
            match enabled {
                Some(true) if !hook.enabled => {
                    let mut state = load_state(tx, w, h).await?;
                    (state.attempts, state.failing_since, state.next_at) = (0, None, 0);
                    let done = done_of(&hook, &state);
                    let swept = tx.get(&keys::hook_swept(w)).await?.and_then(|raw| Position::try_from(raw).ok());
                    if !kept_for(&hook, now, keep_ms) || swept.is_some_and(|s| s > done) {
                        // The queue did not keep everything for it: what it missed goes
                        // again from the feed, and the dispatcher waits until it is queued.
                        missed = Some(done);
                        state.next_at = now + REQUEUE_HOLD_MS;
                    }
                    tx.set(&keys::hook_state(w, h), &selvage_shared::to_msgpack(&state))?;
                    tx.set(&keys::hook_ready(w), &[])?;
                    (hook.enabled, hook.disabled_reason, hook.disabled_at) = (true, None, None);
                }
                Some(false) if hook.enabled => (hook.enabled, hook.disabled_at) = (false, Some(now)),
                _ => {}
            }
            save_hook(tx, w, &hook)?;
            Some((hook, missed))
        })?;
        let (hook, missed) = updated.ok_or_else(|| no_webhook(h))?;
        if let Some(from) = missed {
            self.catch_up(feed, w, a, &hook, from).await?;
        }
        Ok(WebhookView::from(&hook))
    }

    /// For `hook`, enabled again after its workspace's queue stopped keeping its events: queues
    /// again from the feed what it missed after `from` — up to the feed's head once the
    /// consumer sees it enabled, so nothing falls between the two — then moves its `done` to
    /// that head and lets the dispatcher serve it.
    async fn catch_up(&self, feed: &Feed, w: &WorkspaceId, a: &AppId, hook: &Webhook, from: Position) -> Result<()> {
        let h = hook.id.as_str();
        let head = feed.head().await?;
        let bot = transact!(self.store, |tx| { super::load(tx, w, a).await?.map(|app| app.bot_user) })?.0;
        let queued = match &bot {
            Some(bot) => self.requeue(feed, w, hook, bot, from, head).await,
            None => Ok((0, head)),
        };
        match &queued {
            Ok((n, to)) if *to >= head => tracing::info!(ws.id = %w, webhook.id = %h, queued = n,
                "webhook enabled again; what its workspace's queue no longer kept was queued again from the feed"),
            Ok((n, to)) => tracing::warn!(ws.id = %w, webhook.id = %h, queued = n, from = %feed::cursor(to),
                "webhook enabled again; it missed more than one replay queues: replay from this cursor for the rest"),
            Err(e) => tracing::warn!(ws.id = %w, webhook.id = %h, from = %feed::cursor(&from), error = %e,
                "webhook enabled again, but what it missed could not be queued from the feed: replay from this cursor"),
        }
        transact!(self.store, |tx| {
            let mut state = load_state(tx, w, h).await?;
            state.done = Some(done_of(hook, &state).max(head));
            state.next_at = 0;
            tx.set(&keys::hook_state(w, h), &selvage_shared::to_msgpack(&state))?;
            tx.set(&keys::hook_ready(w), &[])?;
        })?;
        Ok(())
    }

    /// Makes a new secret for an endpoint; the current one keeps signing beside it for
    /// `apps.secret_overlap_secs`. Answers the new one (shown once).
    pub async fn rotate(&self, caller: &Caller, a: &AppId, h: &str) -> Result<String> {
        super::require_admin(caller)?;
        let (secret, shown) = new_secret()?;
        let w = &caller.workspace;
        let overlap = self.overlap_ms;
        let (found, _) = transact!(self.store, |tx| {
            let Some(mut hook) = load_hook(tx, w, a, h).await? else { return Ok(false) };
            let now = crate::now_ms();
            retire(&mut hook.secrets, now, overlap);
            hook.secrets.push(secret.clone());
            save_hook(tx, w, &hook)?;
            true
        })?;
        match found {
            true => Ok(shown),
            false => Err(no_webhook(h)),
        }
    }

    /// Removes an endpoint with its queue, state and log.
    pub async fn delete(&self, caller: &Caller, a: &AppId, h: &str) -> Result<()> {
        super::require_admin(caller)?;
        let w = &caller.workspace;
        let (found, _) = transact!(self.store, |tx| {
            if load_hook(tx, w, a, h).await?.is_none() {
                false
            } else {
                clear_hook(tx, w, h)?;
                true
            }
        })?;
        match found {
            true => Ok(()),
            false => Err(no_webhook(h)),
        }
    }

    /// An endpoint's deliveries, newest first: at most `limit` of those before `before` (a
    /// cursor), and the cursor to ask for the next page with.
    pub async fn deliveries(
        &self,
        caller: &Caller,
        a: &AppId,
        h: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(Cursor, Delivery)>, Option<Cursor>)> {
        super::require_admin(caller)?;
        let w = &caller.workspace;
        let before = before.map(log_cursor).transpose()?;
        let (found, _) = transact!(self.store, |tx| {
            match load_hook(tx, w, a, h).await? {
                None => None,
                Some(_) => Some(log_page(tx, w, before.as_ref(), limit, &|hook| hook == h).await?),
            }
        })?;
        let (rows, next) = found.ok_or_else(|| no_webhook(h))?;
        Ok((rows.into_iter().map(|(p, _, d)| (feed::cursor(&p), d)).collect(), next.map(|p| feed::cursor(&p))))
    }

    /// The delivery log of every endpoint of app `a` together, newest first: a page of `limit`
    /// before the cursor `before` (a few more when the last event went to several endpoints),
    /// each with its endpoint's id, and the cursor of the next page.
    #[allow(clippy::type_complexity)]
    pub async fn app_deliveries(
        &self,
        caller: &Caller,
        a: &AppId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(Cursor, String, Delivery)>, Option<Cursor>)> {
        super::require_admin(caller)?;
        let w = &caller.workspace;
        let before = before.map(log_cursor).transpose()?;
        let (found, _) = transact!(self.store, |tx| {
            match super::load(tx, w, a).await? {
                None => None,
                Some(_) => {
                    let mine: Vec<String> = hooks_of(tx, w, a).await?.into_iter().map(|h| h.id).collect();
                    Some(log_page(tx, w, before.as_ref(), limit, &|hook| mine.iter().any(|m| m == hook)).await?)
                }
            }
        })?;
        let (rows, next) = found.ok_or_else(|| super::no_app(a))?;
        let page = rows.into_iter().map(|(p, hook, d)| (feed::cursor(&p), hook, d)).collect();
        Ok((page, next.map(|p| feed::cursor(&p))))
    }

    /// Queues again, for one endpoint, the events after `from` (a cursor) up to the feed's head
    /// as it is now — what the consumer would have queued for it — at most [`MAX_REPLAY`].
    /// Answers how many were queued and where it stopped (more may follow from there).
    pub async fn replay(
        &self,
        caller: &Caller,
        feed: &Feed,
        a: &AppId,
        h: &str,
        from: &str,
    ) -> Result<(usize, Cursor)> {
        super::require_admin(caller)?;
        let w = &caller.workspace;
        let from =
            feed::parse_cursor(from).ok_or_else(|| OriginError::BadRequest(format!("{from:?} is not a cursor")))?;
        let (found, _) = transact!(self.store, |tx| {
            match load_hook(tx, w, a, h).await? {
                None => None,
                Some(hook) => super::load(tx, w, a).await?.map(|app| (hook, app.bot_user)),
            }
        })?;
        let (hook, bot) = found.ok_or_else(|| no_webhook(h))?;
        let head = feed.head().await?;
        let (queued, pos) = self.requeue(feed, w, &hook, &bot, from, head).await?;
        tracing::info!(ws.id = %w, webhook.id = %h, queued, by = %caller.user.id, "webhook replay queued");
        Ok((queued, feed::cursor(&pos)))
    }

    /// Queues for `hook` (of bot user `bot`) the events after `from` up to `until` that it
    /// would have got, at most [`MAX_REPLAY`]; answers how many and where it stopped.
    async fn requeue(
        &self,
        feed: &Feed,
        w: &WorkspaceId,
        hook: &Webhook,
        bot: &UserId,
        from: Position,
        until: Position,
    ) -> Result<(usize, Position)> {
        let replay = crate::now_ms().max(1) as u64;
        let (mut pos, mut queued) = (from, 0);
        while pos < until && queued < MAX_REPLAY {
            let items = match feed.read_after(&pos, 256).await? {
                Read::Resync { .. } => {
                    return Err(OriginError::BadRequest(
                        "the cursor is older than the feed's retention: replay from a later one".into(),
                    ))
                }
                Read::Events { items, .. } if items.is_empty() => break,
                Read::Events { items, .. } => items,
            };
            let items: Vec<(Position, FeedEvent)> = items.into_iter().filter(|(p, _)| *p <= until).collect();
            let Some(last) = items.last().map(|(p, _)| *p) else { break };
            let (n, _) = transact!(self.store, |tx| {
                let mut reads = Reads::default();
                let mut n = 0;
                for (p, e) in &items {
                    if &e.workspace == w && queue_for(tx, &mut reads, hook, bot, p, e, replay).await? {
                        n += 1;
                    }
                }
                if n > 0 {
                    tx.set(&keys::hook_ready(w), &[])?;
                }
                n
            })?;
            queued += n;
            pos = last;
        }
        Ok((queued, pos))
    }
}

/// Most log entries of other endpoints one page reads past those it answers.
const LOG_SCAN: usize = 20_000;

/// A page of W's delivery log, newest first: the entries of endpoints `of` accepts before
/// `before`, `limit` of them unless the log ends first, and whole events — an event's entries on
/// every endpoint share its cursor, and the next page starts before it. Answers the page and
/// the position of the next one, `None` when nothing is left. After [`LOG_SCAN`] entries of
/// other endpoints a page ends short, with the position to go on from.
#[allow(clippy::type_complexity)]
async fn log_page(
    tx: &mut dyn KvTxn,
    w: &WorkspaceId,
    before: Option<&Position>,
    limit: usize,
    of: &(dyn Fn(&str) -> bool + Sync),
) -> Result<(Vec<(Position, String, Delivery)>, Option<Position>), StoreError> {
    let (begin, mut end) = crate::store::prefix_range(&keys::hook_logs(w));
    if let Some(pos) = before {
        end = keys::hook_log_at(w, pos);
    }
    let mut page: Vec<(Position, String, Delivery)> = Vec::new();
    let mut scanned = 0;
    // The event being read (its entries are together); a page ends only after a whole one.
    let mut at: Option<Position> = None;
    // The page has `limit`: what is read now only tells whether more follow.
    let mut full = false;
    loop {
        let rows = tx.get_range(&RangeRead::between(begin.clone(), end.clone()).limit(1_000).reverse(true)).await?;
        let Some((last, _)) = rows.last() else { return Ok((page, None)) };
        end = last.clone();
        for (k, raw) in &rows {
            let Some((position, hook)) = log_key(k) else { continue };
            if at.is_some() && at != Some(position) {
                full |= page.len() >= limit;
                if scanned >= LOG_SCAN {
                    return Ok((page, at));
                }
            }
            if !full {
                at = Some(position);
            }
            scanned += 1;
            if of(&hook) {
                if full {
                    return Ok((page, at));
                }
                if let Some(d) = decode::<Delivery>(raw) {
                    page.push((position, hook, d));
                }
            }
        }
    }
}

/// The position and endpoint of a [`keys::hook_log`] key.
fn log_key(k: &[u8]) -> Option<(Position, String)> {
    let e = crate::store::tuple::unpack(k).ok()?;
    match e.as_slice() {
        [.., position, hook] => Some((position.as_bytes()?.try_into().ok()?, hook.as_str()?.to_string())),
        _ => None,
    }
}

/// Writes `hook`, and bumps its workspace's [`keys::webhooks_version`].
fn save_hook(tx: &mut dyn KvTxn, w: &WorkspaceId, hook: &Webhook) -> Result<(), StoreError> {
    tx.set(&keys::webhook(w, &hook.id), &selvage_shared::to_msgpack(hook))?;
    tx.atomic_add(&keys::webhooks_version(w), 1)
}

/// Removes endpoint `h` of `w`: it, its state and its replays. Its log entries stay until the
/// log's retention clears them (listings show only endpoints that exist), and the workspace's
/// queue is swept at the dispatcher's next look, as if it had delivered everything.
pub fn clear_hook(tx: &mut dyn KvTxn, w: &WorkspaceId, h: &str) -> Result<(), StoreError> {
    tx.clear(&keys::webhook(w, h))?;
    tx.atomic_add(&keys::webhooks_version(w), 1)?;
    tx.clear(&keys::hook_state(w, h))?;
    tx.set(&keys::hook_ready(w), &[])?;
    let (begin, end) = crate::store::prefix_range(&keys::hook_replays(w, h));
    tx.clear_range(&begin, &end)?;
    Ok(())
}

async fn load_state(tx: &mut dyn KvTxn, w: &WorkspaceId, h: &str) -> Result<State, StoreError> {
    Ok(tx.get(&keys::hook_state(w, h)).await?.and_then(|raw| decode(&raw)).unwrap_or_default())
}

/// The feed position a queue or log key ends with.
fn position_of(k: &[u8]) -> Option<Position> {
    let e = crate::store::tuple::unpack(k).ok()?;
    e.iter().rev().find_map(|e| e.as_bytes()?.try_into().ok())
}

/// An app's bot user and its endpoints.
pub struct Bot {
    user: UserId,
    app: AppId,
    hooks: Vec<Webhook>,
}

/// What one transaction of the consumer reads once: each workspace's bots with their
/// endpoints, and whether a bot user is in a channel. Most events concern no bot, and a batch
/// looks each of these up per event, so they are read once and looked up without allocating.
#[derive(Default)]
pub struct Reads {
    bots: HashMap<WorkspaceId, Arc<Vec<Bot>>>,
    member: HashMap<UserId, HashMap<ChannelId, bool>>,
    /// Each workspace's bots as decoded by earlier transactions, with the
    /// [`keys::webhooks_version`] they were read at.
    known: Option<BotsCache>,
}

/// A workspace's bots by the [`keys::webhooks_version`] they were read at.
pub type BotsCache = moka::sync::Cache<WorkspaceId, (Option<Vec<u8>>, Arc<Vec<Bot>>)>;

impl Reads {
    /// W's apps that have endpoints, each with all of them. The version key is read in the
    /// transaction, so a change to an endpoint conflicts with it as a read of them all would;
    /// while it holds, the endpoints decoded by an earlier transaction serve.
    async fn bots(&mut self, tx: &mut dyn KvTxn, w: &WorkspaceId) -> Result<Arc<Vec<Bot>>, StoreError> {
        if let Some(known) = self.bots.get(w) {
            return Ok(known.clone());
        }
        let version = tx.get(&keys::webhooks_version(w)).await?;
        if let Some((v, bots)) = self.known.as_ref().and_then(|c| c.get(w)) {
            if v == version {
                self.bots.insert(w.clone(), bots.clone());
                return Ok(bots);
            }
        }
        let mut bots: Vec<Bot> = Vec::new();
        for (_, raw) in tx.get_range(&RangeRead::prefix(&keys::webhooks(w))).await? {
            let Some(hook) = decode::<Webhook>(&raw) else { continue };
            match bots.iter_mut().find(|b| b.app == hook.app) {
                Some(bot) => bot.hooks.push(hook),
                None => {
                    if let Some(app) = super::load(tx, w, &hook.app).await? {
                        bots.push(Bot { user: app.bot_user, app: app.id, hooks: vec![hook] });
                    }
                }
            }
        }
        let bots = Arc::new(bots);
        self.bots.insert(w.clone(), bots.clone());
        if let Some(known) = &self.known {
            known.insert(w.clone(), (version, bots.clone()));
        }
        Ok(bots)
    }

    async fn member(
        &mut self,
        tx: &mut dyn KvTxn,
        w: &WorkspaceId,
        u: &UserId,
        c: &ChannelId,
    ) -> Result<bool, StoreError> {
        if let Some(known) = self.member.get(u).and_then(|of| of.get(c)) {
            return Ok(*known);
        }
        let is = channels::is_member(tx, w, c, u).await?;
        self.member.entry(u.clone()).or_default().insert(c.clone(), is);
        Ok(is)
    }
}

/// Whether `hook` asked for events of type `kind`.
fn wants(hook: &Webhook, kind: &str) -> bool {
    hook.events.iter().any(|t| t == "*" || t == kind)
}

/// Whether bot user `bot` may get `event` of `w` by webhook: an event of a channel only while
/// it is in that channel (as Slack's Events API: public channels included, so that what an app
/// gets is what it was invited to), its own read markers only, its own joins and leaves always,
/// and events of no channel (users) always. Never internal or ephemeral events.
async fn visible_to(
    tx: &mut dyn KvTxn,
    reads: &mut Reads,
    w: &WorkspaceId,
    bot: &UserId,
    event: &Event,
) -> Result<bool, StoreError> {
    if event.is_internal() || event.is_ephemeral() {
        return Ok(false);
    }
    match event {
        Event::ReadMarker { user, .. } => Ok(user == bot),
        Event::MemberJoined { user, .. } | Event::MemberLeft { user, .. } if user == bot => Ok(true),
        event => match event.channel() {
            None => Ok(true),
            Some(c) => reads.member(tx, w, bot, c).await,
        },
    }
}

/// The body of a delivery: Standard Webhooks' `{type, timestamp, data}`, the data being the
/// event as clients get it, with its workspace, app and cursor.
fn body(app: &AppId, position: &Position, e: &FeedEvent) -> Vec<u8> {
    let timestamp = jiff::Timestamp::from_millisecond(e.ts).map(|t| t.to_string()).unwrap_or_default();
    serde_json::to_vec(&serde_json::json!({
        "type": e.event.kind(),
        "timestamp": timestamp,
        "data": {
            "workspace": e.workspace,
            "app": app,
            "cursor": feed::cursor(position),
            "event": e.event,
        },
    }))
    .unwrap_or_default()
}

/// Queues event `e` at `position` again for `hook`, for replay `replay` (see
/// [`keys::hook_replayed`]), if it asked for its type and its bot user `bot` may see it;
/// answers whether it did.
async fn queue_for(
    tx: &mut dyn KvTxn,
    reads: &mut Reads,
    hook: &Webhook,
    bot: &UserId,
    position: &Position,
    e: &FeedEvent,
    replay: u64,
) -> Result<bool, StoreError> {
    if !wants(hook, e.event.kind()) {
        return Ok(false);
    }
    if !visible_to(tx, reads, &e.workspace, bot, &e.event).await? {
        return Ok(false);
    }
    tx.set_owned(keys::hook_replayed(&e.workspace, &hook.id, position, replay), body(&hook.app, position, e))?;
    Ok(true)
}

/// The consumer `hooks` (see the module's documentation).
pub struct Queuer {
    pub metrics: Arc<Metrics>,
    /// How long a disabled endpoint's events are kept for it (ms).
    pub keep_ms: i64,
    /// The workspaces' bots, decoded once per change of their endpoints.
    pub bots: BotsCache,
}

#[async_trait]
impl Consumer for Queuer {
    fn name(&self) -> &str {
        NAME
    }

    /// Events from now on: a first start does not send history (replay does, on request).
    fn start_from(&self) -> StartFrom {
        StartFrom::Head
    }

    async fn apply(&self, tx: &mut dyn KvTxn, batch: &Batch) -> Result<(), ConsumerError> {
        let mut reads = Reads { known: Some(self.bots.clone()), ..Default::default() };
        let (now, keep_ms) = (crate::now_ms(), self.keep_ms);
        let mut queued = 0u64;
        let mut ready: std::collections::HashSet<WorkspaceId> = Default::default();
        for item in &batch.items {
            let e = &item.event;
            if e.event.is_internal() || e.event.is_ephemeral() {
                continue;
            }
            let w = &e.workspace;
            let kind = e.event.kind();
            let mut apps = Vec::new();
            for bot in reads.bots(tx, w).await?.iter() {
                let after_creation = |h: &&Webhook| h.since.is_none_or(|since| item.position > since);
                let hooks = bot
                    .hooks
                    .iter()
                    .filter(|h| kept_for(h, now, keep_ms) && wants(h, kind))
                    .filter(after_creation)
                    .count();
                if hooks == 0 || !visible_to(tx, &mut reads, w, &bot.user, &e.event).await? {
                    continue;
                }
                apps.push(bot.app.clone());
                queued += hooks as u64;
            }
            if !apps.is_empty() {
                let entry = Queued { apps, event: e.clone() };
                tx.set_owned(keys::hook_event(w, &item.position), selvage_shared::to_msgpack(&entry))?;
                ready.insert(w.clone());
            }
        }
        for w in &ready {
            tx.set(&keys::hook_ready(w), &[])?;
        }
        self.metrics.webhook_queued.inc_by(queued);
        Ok(())
    }
}

/// Starts the consumer `hooks` and the dispatcher.
pub fn start(
    store: &Store,
    feed: &Arc<Feed>,
    config: &AppsConfig,
    consumers: &ConsumersConfig,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> std::result::Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let queuer = Queuer {
        metrics: metrics.clone(),
        keep_ms: config.webhook_keep_disabled_secs as i64 * 1000,
        bots: moka::sync::Cache::new(10_000),
    };
    let runner = ConsumerRunner::new(feed.clone(), Arc::new(queuer), ConsumerOptions::from_config(consumers))
        .map_err(|e| e.to_string())?;
    let dispatcher = Arc::new(Dispatcher::new(store, config, metrics.clone())?);
    Ok(vec![runner.spawn(shutdown.clone()), tokio::spawn(dispatcher.run(shutdown.clone()))])
}

/// What one try of one delivery came to.
enum Sent {
    Delivered(u16),
    Failed(Option<u16>, String),
}

/// The dispatcher (see the module's documentation).
pub struct Dispatcher {
    store: Store,
    client: Outbound,
    config: AppsConfig,
    metrics: Arc<Metrics>,
    /// This node's name in leases.
    me: String,
    /// The endpoints this node is serving now, each in a task of its own: a slow endpoint
    /// never holds the others up.
    serving: std::sync::Mutex<std::collections::HashSet<(WorkspaceId, String)>>,
    /// When this node last ran [`Dispatcher::upkeep`] (ms).
    last_upkeep: std::sync::atomic::AtomicI64,
    /// Queue entries decoded, and delivery bodies made (one per app), shared by the endpoints
    /// that read them: an entry never changes once written.
    entries: moka::sync::Cache<(WorkspaceId, Position), Arc<Queued>>,
    bodies: moka::sync::Cache<(WorkspaceId, Position, AppId), Arc<Vec<u8>>>,
}

impl Dispatcher {
    /// A dispatcher over `store`.
    pub fn new(store: &Store, config: &AppsConfig, metrics: Arc<Metrics>) -> std::result::Result<Dispatcher, String> {
        let allow = Allow::parse(false, &config.allow_networks)?;
        let client = Outbound::new(allow, Duration::from_millis(config.webhook_timeout_ms))?;
        Ok(Dispatcher {
            store: store.clone(),
            client,
            config: config.clone(),
            metrics,
            me: ids::new_id('N'),
            serving: Default::default(),
            last_upkeep: Default::default(),
            entries: moka::sync::Cache::new(ENTRY_CACHE),
            bodies: moka::sync::Cache::new(ENTRY_CACHE),
        })
    }

    /// Runs until `shutdown`: a step every `apps.tick_ms`. At shutdown each endpoint being
    /// served stops (a request in flight is dropped, its event still queued), records what it
    /// delivered and lets its lease go, so the next node to start serves it at once — within
    /// [`DRAIN`]; past that, the lease expires on its own.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = Duration::from_millis(self.config.tick_ms);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            if let Err(e) = self.step(crate::now_ms(), &mut tasks, &shutdown).await {
                tracing::warn!(error = %e, "webhook dispatcher step failed; will retry");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
        }
        let drained = tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(left = tasks.len(), "webhook endpoints still recording at shutdown; their leases expire");
        }
        tasks.shutdown().await;
    }

    /// In one transaction, for each workspace with events to deliver: leases every endpoint
    /// behind the queue's end (or with replays) that is due at `now` (ms) and that this node
    /// is not serving yet — up to [`IN_FLIGHT`] at once; clears the queue up to what every
    /// endpoint that keeps it is past; and unmarks the workspace when no endpoint is behind.
    /// Then serves each endpoint leased in a task of its own, until `stop`. Once a minute it
    /// also marks every workspace with endpoints (so what a disabled endpoint stopped keeping is
    /// swept) and clears delivery log entries older than `apps.delivery_log_secs`. Answers how
    /// many endpoints it started.
    pub async fn step(
        self: &Arc<Self>,
        now: i64,
        tasks: &mut tokio::task::JoinSet<()>,
        stop: &CancellationToken,
    ) -> Result<usize, StoreError> {
        // At least twice per log retention, for a short one.
        let upkeep_ms = UPKEEP_MS.min(self.config.delivery_log_secs as i64 * 500);
        if now - self.last_upkeep.load(std::sync::atomic::Ordering::Relaxed) >= upkeep_ms {
            self.last_upkeep.store(now, std::sync::atomic::Ordering::Relaxed);
            self.upkeep(now).await?;
        }
        let lease_ms = self.config.webhook_timeout_ms as i64 * LEASE_TIMEOUTS;
        let keep_ms = self.config.webhook_keep_disabled_secs as i64 * 1000;
        let busy: std::collections::HashSet<(WorkspaceId, String)> =
            self.serving.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let room = IN_FLIGHT.saturating_sub(busy.len());
        let me = &self.me;
        let (leased, _) = transact!(self.store, |tx| {
            let mut leased = Vec::new();
            for (k, _) in tx.get_range(&RangeRead::prefix(&keys::hooks_ready()).limit(READY_BATCH)).await? {
                if leased.len() >= room {
                    break;
                }
                let Some(w) = crate::store::tuple::unpack(&k).ok().and_then(|e| match e.as_slice() {
                    [_, _, w] => WorkspaceId::parse(w.as_str()?),
                    _ => None,
                }) else {
                    tx.clear(&k)?;
                    continue;
                };
                let (begin, end) = crate::store::prefix_range(&keys::hook_events(&w));
                let tail = tx.get_range(&RangeRead::between(begin.clone(), end).limit(1).reverse(true)).await?;
                let tail = tail.first().and_then(|(k, _)| position_of(k));
                let any_replays =
                    !tx.get_range(&RangeRead::prefix(&keys::hook_replays_of(&w)).limit(1)).await?.is_empty();
                // The lowest `done` of the endpoints the queue is kept for.
                let mut floor: Option<Position> = None;
                let mut behind = false;
                for (_, raw) in tx.get_range(&RangeRead::prefix(&keys::webhooks(&w))).await? {
                    let Some(hook) = decode::<Webhook>(&raw) else { continue };
                    let mut state = load_state(tx, &w, &hook.id).await?;
                    let done = done_of(&hook, &state);
                    if kept_for(&hook, now, keep_ms) {
                        floor = Some(floor.map_or(done, |f| f.min(done)));
                    }
                    if !hook.enabled {
                        continue;
                    }
                    // Behind the queue's end, or with replays (looked for only where W has some).
                    let pending = tail.is_some_and(|t| t > done)
                        || (any_replays
                            && !tx
                                .get_range(&RangeRead::prefix(&keys::hook_replays(&w, &hook.id)).limit(1))
                                .await?
                                .is_empty());
                    if !pending {
                        continue;
                    }
                    behind = true;
                    let due = (state.lease_until <= now || state.owner == *me) && state.next_at <= now;
                    if !due || leased.len() >= room || busy.contains(&(w.clone(), hook.id.clone())) {
                        continue;
                    }
                    state.owner = me.clone();
                    state.lease_until = now + lease_ms;
                    tx.set(&keys::hook_state(&w, &hook.id), &selvage_shared::to_msgpack(&state))?;
                    leased.push((w.clone(), hook, done, state.lease_until));
                }
                // Clear what every endpoint keeping the queue is past; with none, all of it.
                if let Some(to) = tail.map(|t| floor.map_or(t, |f| f.min(t))) {
                    let swept = tx.get(&keys::hook_swept(&w)).await?.and_then(|raw| Position::try_from(raw).ok());
                    if swept.is_none_or(|s| s < to) {
                        tx.clear_range(&begin, &after(&keys::hook_event(&w, &to)))?;
                        tx.set(&keys::hook_swept(&w), &to)?;
                    }
                }
                if !behind {
                    tx.clear(&k)?;
                }
            }
            leased
        })?;
        let started = leased.len();
        for (w, hook, done, lease_until) in leased {
            let h = hook.id.clone();
            self.serving.lock().unwrap_or_else(|e| e.into_inner()).insert((w.clone(), h.clone()));
            let (me, stop) = (self.clone(), stop.clone());
            tasks.spawn(async move {
                if let Err(e) = me.serve(&w, hook, done, lease_until, &stop).await {
                    tracing::warn!(ws.id = %w, webhook.id = %h, error = %e, "serving a webhook failed; will retry");
                }
                me.serving.lock().unwrap_or_else(|e| e.into_inner()).remove(&(w, h));
            });
        }
        Ok(started)
    }

    /// Marks every workspace with endpoints, for [`Dispatcher::step`] to sweep its queue, and
    /// clears its delivery log's entries older than `apps.delivery_log_secs` (the oldest
    /// [`UPKEEP_BATCH`] looked at per workspace: the rest at the next upkeep).
    async fn upkeep(&self, now: i64) -> Result<(), StoreError> {
        let (states, _) = transact!(self.store, |tx| {
            tx.get_range(&RangeRead::prefix(&keys::hook_states()).limit(100_000)).await?
        })?;
        let mut workspaces: Vec<WorkspaceId> = states
            .iter()
            .filter_map(|(k, _)| match crate::store::tuple::unpack(k).ok()?.as_slice() {
                [_, _, w, _] => WorkspaceId::parse(w.as_str()?),
                _ => None,
            })
            .collect();
        workspaces.dedup();
        let cutoff = now - self.config.delivery_log_secs as i64 * 1000;
        for w in &workspaces {
            let (cleared, _) = transact!(self.store, |tx| {
                tx.set(&keys::hook_ready(w), &[])?;
                let mut cleared = 0;
                for (k, raw) in tx.get_range(&RangeRead::prefix(&keys::hook_logs(w)).limit(UPKEEP_BATCH)).await? {
                    if decode::<Delivery>(&raw).is_some_and(|d| d.at >= cutoff) {
                        break;
                    }
                    tx.clear(&k)?;
                    cleared += 1;
                }
                cleared
            })?;
            if cleared > 0 {
                tracing::debug!(ws.id = %w, cleared, "old webhook delivery log entries cleared");
            }
        }
        Ok(())
    }

    /// Sends, in feed order, what endpoint `hook` of `w` has to deliver after `done`: the
    /// queue's entries for it merged with its replays, until one fails, all are delivered, the
    /// lease runs short or `stop`; then, in one transaction, moves `done` past what was
    /// delivered (and past entries not for it), removes delivered replays, logs every try,
    /// records a failure's backoff (or disables the endpoint) and lets the lease go.
    async fn serve(
        &self,
        w: &WorkspaceId,
        hook: Webhook,
        done: Position,
        lease_until: i64,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let h = hook.id.as_str();
        let (begin, end) = (after(&keys::hook_event(w, &done)), crate::store::prefix_range(&keys::hook_events(w)).1);
        let ((replays, queued), _) = transact!(self.store, |tx| {
            let replays = tx.get_range(&RangeRead::prefix(&keys::hook_replays(w, h)).limit(SEND_BATCH)).await?;
            let queued = tx.get_range(&RangeRead::between(begin.clone(), end.clone()).limit(SCAN_BATCH)).await?;
            (replays, queued)
        })?;
        let mut pending: Vec<Pending> = Vec::new();
        // How far the queue's entries read are all in `pending` or not for this endpoint.
        let mut covered = done;
        let mut matched = 0;
        // The queue's entries read, in order.
        let mut scanned: Vec<Position> = Vec::with_capacity(queued.len());
        for (k, raw) in &queued {
            let Some(position) = position_of(k) else { continue };
            scanned.push(position);
            let Some(entry) = self.entry(w, position, raw) else {
                covered = position;
                continue;
            };
            let kind = entry.event.event.kind();
            let mine =
                entry.apps.contains(&hook.app) && wants(&hook, kind) && hook.since.is_none_or(|since| position > since);
            if mine {
                if matched == SEND_BATCH {
                    break;
                }
                matched += 1;
                let body = self.bodies.get_with((w.clone(), position, hook.app.clone()), || {
                    Arc::new(body(&hook.app, &position, &entry.event))
                });
                pending.push(Pending {
                    position,
                    body,
                    kind: kind.to_string(),
                    ts: Some(entry.event.ts),
                    replay: None,
                });
            }
            covered = position;
        }
        for (k, raw) in replays {
            if let Some(position) = position_of(&k) {
                let (kind, ts) = replayed_kind_and_time(&raw);
                pending.push(Pending { position, body: Arc::new(raw), kind, ts, replay: Some(k) });
            }
        }
        // Replays first among equals: a replay's copy of an event goes before the queue's.
        pending.sort_by(|a, b| a.position.cmp(&b.position).then_with(|| b.replay.is_some().cmp(&a.replay.is_some())));
        if pending.len() > SEND_BATCH {
            if pending[SEND_BATCH..].iter().any(|p| p.replay.is_none()) {
                // A queue entry left for later: `done` may not pass it.
                covered = pending[..SEND_BATCH].iter().rev().find(|p| p.replay.is_none()).map_or(done, |p| p.position);
            }
            pending.truncate(SEND_BATCH);
        }

        let pending_positions: Vec<Position> = pending.iter().map(|p| p.position).collect();
        let timeout_ms = self.config.webhook_timeout_ms as i64;
        // What was sent: its position, replay key, `webhook-id`, type, outcome and time.
        #[allow(clippy::type_complexity)]
        let mut tried: Vec<(Position, Option<Vec<u8>>, String, String, Sent, i64)> = Vec::new();
        for Pending { position, body, kind, ts, replay } in pending {
            if stop.is_cancelled() || crate::now_ms() + 2 * timeout_ms > lease_until {
                break;
            }
            let id = format!("evt_{}", feed::cursor(&position));
            let sent = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                sent = self.send(&hook, &id, &body) => sent,
            };
            let at = crate::now_ms();
            let failed = matches!(sent, Sent::Failed(..));
            if !failed {
                let committed = ts.unwrap_or(at);
                self.metrics.webhook_latency_seconds.observe((at - committed).max(0) as f64 / 1000.0);
            }
            tried.push((position, replay, id, kind, sent, at));
            if failed {
                break;
            }
        }
        // Where `done` may go: past everything read if all went, else past the entries read
        // before the first that was not delivered (those not for this endpoint included).
        let delivered = tried.iter().take_while(|t| matches!(t.4, Sent::Delivered(_))).count();
        let new_done = match pending_positions.get(delivered) {
            None => covered,
            Some(stuck) => scanned.iter().take_while(|p| *p < stuck).last().copied().unwrap_or(done).min(covered),
        };
        let me = &self.me;
        let (recorded, _) = transact!(self.store, |tx| {
            let mut state = load_state(tx, w, h).await?;
            if state.owner != *me || state.lease_until != lease_until {
                // Another node took the endpoint over: what was sent here goes again from there.
                false
            } else {
                for (position, replay, id, kind, sent, at) in &tried {
                    let attempts = state.attempts + 1;
                    let (status, response_status, error) = match sent {
                        Sent::Delivered(status) => ("delivered", Some(*status), None),
                        Sent::Failed(status, error) => ("failing", *status, Some(error.clone())),
                    };
                    let entry = Delivery {
                        id: id.clone(),
                        event: kind.clone(),
                        status: status.into(),
                        attempts,
                        response_status,
                        error: error.clone(),
                        at: *at,
                    };
                    tx.set(&keys::hook_log(w, position, h), &selvage_shared::to_msgpack(&entry))?;
                    match error {
                        None => {
                            if let Some(key) = replay {
                                tx.clear(key)?;
                            }
                            (state.attempts, state.failing_since, state.next_at) = (0, None, 0);
                        }
                        Some(error) => {
                            let since = *state.failing_since.get_or_insert(*at);
                            state.attempts = attempts;
                            let pause = self
                                .config
                                .webhook_retry_min_ms
                                .saturating_mul(4u64.saturating_pow(attempts.saturating_sub(1).min(16)))
                                .min(self.config.webhook_retry_max_ms);
                            state.next_at = at + pause as i64;
                            if at - since >= self.config.webhook_disable_after_secs as i64 * 1000 {
                                if let Some(mut hook) =
                                    tx.get(&keys::webhook(w, h)).await?.and_then(|raw| decode::<Webhook>(&raw))
                                {
                                    hook.enabled = false;
                                    hook.disabled_at = Some(*at);
                                    hook.disabled_reason = Some(format!(
                                        "disabled after failing for {} s, {attempts} tries in a row; last: {error}",
                                        (at - since) / 1000
                                    ));
                                    save_hook(tx, w, &hook)?;
                                }
                            }
                        }
                    }
                }
                if new_done > done {
                    state.done = Some(new_done);
                }
                state.lease_until = 0;
                tx.set(&keys::hook_state(w, h), &selvage_shared::to_msgpack(&state))?;
                true
            }
        })?;
        if !recorded {
            return Ok(());
        }
        for (.., sent, _) in &tried {
            match sent {
                Sent::Delivered(_) => self.metrics.webhook_deliveries.with_label_values(&["delivered"]).inc(),
                Sent::Failed(_, error) => {
                    self.metrics.webhook_deliveries.with_label_values(&["retry"]).inc();
                    tracing::warn!(ws.id = %w, webhook.id = %h, error = %error,
                        "webhook delivery failed; the endpoint waits before its next try");
                }
            }
        }
        Ok(())
    }

    /// The queue entry at `position` of W's queue, decoded from `raw` unless known.
    fn entry(&self, w: &WorkspaceId, position: Position, raw: &[u8]) -> Option<Arc<Queued>> {
        self.entries.optionally_get_with((w.clone(), position), || decode::<Queued>(raw).map(Arc::new))
    }

    /// One try: the request, signed with every secret still valid.
    async fn send(&self, hook: &Webhook, id: &str, body: &[u8]) -> Sent {
        let now = crate::now_ms();
        let timestamp = (now / 1000).to_string();
        let signature = sign(&hook.secrets, now, id, &timestamp, body);
        let headers = [
            ("content-type", "application/json".to_string()),
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signature),
        ];
        match self.client.post_for(&hook.url, &headers, body.to_vec(), LOG_BODY_BYTES).await {
            Ok((status @ 200..=299, _)) => Sent::Delivered(status),
            Ok((status, answer)) => {
                let said = String::from_utf8_lossy(&answer).chars().take(LOG_BODY_BYTES).collect::<String>();
                Sent::Failed(Some(status), format!("answered {status}: {said}"))
            }
            Err(e) => Sent::Failed(None, e),
        }
    }
}

/// The event type of a replayed delivery's body, and when its event was committed (ms).
fn replayed_kind_and_time(body: &[u8]) -> (String, Option<i64>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return (String::new(), None) };
    let ts = v["timestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| t.as_millisecond());
    (v["type"].as_str().unwrap_or_default().to_string(), ts)
}

/// One delivery to make.
struct Pending {
    position: Position,
    body: Arc<Vec<u8>>,
    /// Its event's type, and when the event was committed (ms).
    kind: String,
    ts: Option<i64>,
    /// The key of the replay that queued it; `None`: the workspace's queue.
    replay: Option<Vec<u8>>,
}

/// `webhook-signature`: `v1,<base64 HMAC-SHA256 of id.timestamp.body>` for each secret valid at
/// `now`, space-separated.
pub fn sign(secrets: &[Secret], now: i64, id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    secrets
        .iter()
        .filter(|s| s.until.is_none_or(|t| t > now))
        .map(|s| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &s.key);
            format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, &signed)))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's own example: its secret, id, timestamp and body
    /// give its signature.
    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        let key = base64::engine::general_purpose::STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let got = sign(&[Secret { key, until: None }], 0, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body);
        assert_eq!(got, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotated_out_secret_signs_until_its_end() {
        let old = Secret { key: vec![1; 24], until: Some(1_000) };
        let new = Secret { key: vec![2; 24], until: None };
        let both = sign(&[old.clone(), new.clone()], 999, "id", "1", b"{}");
        assert_eq!(both.split(' ').count(), 2, "{both}");
        let one = sign(&[old, new], 1_000, "id", "1", b"{}");
        assert_eq!(one.split(' ').count(), 1, "{one}");
    }
}
