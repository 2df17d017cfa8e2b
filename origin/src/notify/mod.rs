//! Notifications: telling people about what concerns them while they are away — by Web Push to
//! their browsers and through a push proxy to their phones (ARCHITECTURE §8 "Notifications").
//!
//! Two parts, both built on the feed:
//!
//! - `decide`: the feed consumer `notify`. For each message it finds who it may notify and
//!   writes that, per (user, message), in the transaction that moves its cursor: exactly once.
//! - `deliver`: the dispatcher. When a pending message is due (`notify.delay_ms` after it was
//!   posted) it takes the user's whole burst in that conversation as one notification, checks
//!   that it is still unread, the user still away and not in do-not-disturb, and delivers it,
//!   with retries.
//!
//! Preferences (`prefs`) are per user, read and written only by that user ([`get_prefs`],
//! [`put_prefs`]); push subscriptions likewise ([`subscribe`], [`unsubscribe`]). The VAPID key
//! pair that signs every push request is made on the deployment's first start and kept in the
//! store, so every origin node signs with the same key and browsers' subscriptions stay valid.

pub mod decide;
pub mod deliver;
pub mod email;
pub mod prefs;
pub mod webpush;

use std::{sync::Arc, time::Duration};

use selvage_shared::{NotifyPrefs, PushSubscriptionJson};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::{
    decide::Decider,
    deliver::Dispatcher,
    email::{Links, Mailer},
    webpush::Vapid,
};
use crate::{
    caller::Caller,
    channels::records as channels,
    config::{ConsumersConfig, NotifyConfig},
    error::{OriginError, Result},
    feed::{
        consumer::{ConsumerError, ConsumerOptions, ConsumerRunner},
        Feed,
    },
    metrics::Metrics,
    outbound,
    presence::Tracker,
    store::{keys, RangeRead, Store},
    transact,
};

/// What `/v1/notifications/…` and `/v1/push/…` answer on an origin without notifications.
pub const DISABLED: &str = "notifications are disabled on this origin (notify.enabled = false)";

/// Most push subscriptions one user may have (browsers, profiles, devices).
pub const MAX_SUBSCRIPTIONS: usize = 20;

/// A user's Web Push subscription as the store keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subscription {
    /// A hash of the endpoint: the subscription's key.
    pub id: String,
    /// The push service's URL.
    pub endpoint: String,
    /// The browser's P-256 public key (65 bytes).
    pub p256dh: Vec<u8>,
    /// The browser's authentication secret (16 bytes).
    pub auth: Vec<u8>,
    /// When it was registered (ms).
    pub created_at: i64,
}

/// The notification service of one origin.
pub struct Notify {
    config: NotifyConfig,
    vapid: Arc<Vapid>,
    client: outbound::Outbound,
    /// The unsubscribe links of emails.
    links: Links,
    /// The SMTP transport and sender, when `notify.smtp_url` is set.
    smtp: Option<(lettre::AsyncSmtpTransport<lettre::Tokio1Executor>, lettre::message::Mailbox)>,
    metrics: Arc<Metrics>,
}

impl Notify {
    /// Opens the service: reads the deployment's VAPID key pair and the key of its unsubscribe
    /// links, making them on the first start. `bound` is the API's address as a URL, for links
    /// when `notify.public_url` is not set.
    pub async fn open(
        config: &NotifyConfig,
        store: &Store,
        bound: &str,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Notify, String> {
        if !config.push_proxy_url.is_empty() {
            outbound::check_url(&config.push_proxy_url, &config.allow_internal_endpoints.into())
                .map_err(|e| format!("notify.push_proxy_url: {e}"))?;
        }
        let smtp = match config.smtp_url.is_empty() {
            true => None,
            false => Some((email::transport(config)?, email::parse_from(&config.email_from)?)),
        };
        let key = keys::meta("notify_vapid_pkcs8");
        let made = Vapid::generate().map_err(|e| e.to_string())?;
        let links_key = keys::meta("notify_links_key");
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| "no randomness for the links key".to_string())?;
        let ((pkcs8, link_secret), _) = transact!(store, |tx| {
            let pkcs8 = match tx.get(&key).await? {
                Some(kept) => kept,
                None => {
                    tx.set(&key, &made)?;
                    made.clone()
                }
            };
            let link_secret = match tx.get(&links_key).await? {
                Some(kept) => kept,
                None => {
                    tx.set(&links_key, &secret)?;
                    secret.to_vec()
                }
            };
            (pkcs8, link_secret)
        })
        .map_err(|e| format!("cannot read the notification keys: {e}"))?;
        let base = if config.public_url.is_empty() { bound } else { config.public_url.as_str() };
        let links = Links::new(base, &link_secret);
        let vapid =
            Vapid::from_pkcs8(&pkcs8, &config.vapid_subject).map_err(|e| format!("the stored VAPID key: {e}"))?;
        let client =
            outbound::Outbound::new(config.allow_internal_endpoints, Duration::from_millis(config.request_timeout_ms))?;
        Ok(Notify { config: config.clone(), vapid: Arc::new(vapid), client, links, smtp, metrics })
    }

    /// The public key browsers subscribe with (`applicationServerKey`), base64url.
    pub fn public_key(&self) -> String {
        self.vapid.public_key()
    }

    /// Starts the consumer `notify` and the dispatcher.
    pub fn start_background(
        &self,
        store: &Store,
        feed: &Arc<Feed>,
        presence: &Arc<Tracker>,
        consumers: &ConsumersConfig,
        shutdown: &CancellationToken,
    ) -> std::result::Result<Vec<JoinHandle<()>>, ConsumerError> {
        let decider = Decider {
            delay_ms: self.config.delay_ms as i64,
            email_after_ms: self.email_after_ms(),
            inline_members: self.config.inline_members,
            metrics: self.metrics.clone(),
        };
        let runner = ConsumerRunner::new(feed.clone(), Arc::new(decider), ConsumerOptions::from_config(consumers))?;
        let dispatcher = Arc::new(self.dispatcher(store, presence));
        let mut tasks = vec![runner.spawn(shutdown.clone()), tokio::spawn(dispatcher.run(shutdown.clone()))];
        if let Some(mailer) = self.mailer(store, presence) {
            tasks.push(tokio::spawn(Arc::new(mailer).run(shutdown.clone())));
        }
        Ok(tasks)
    }

    /// The email digest sender, when `notify.smtp_url` is set (the tests drive one step by step).
    pub fn mailer(&self, store: &Store, presence: &Arc<Tracker>) -> Option<Mailer> {
        let (transport, from) = self.smtp.clone()?;
        Some(Mailer {
            store: store.clone(),
            presence: presence.clone(),
            config: self.config.clone(),
            transport,
            from,
            links: self.links.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Turns email off for the user an unsubscribe token was made for; answers their handle,
    /// or `None` for a token that is not one of this deployment's (or a user who is gone).
    pub async fn unsubscribe_email(&self, store: &Store, token: &str, apply: bool) -> Result<Option<String>> {
        let Some((w, u)) = self.links.check(token) else { return Ok(None) };
        let (handle, _) = transact!(store, |tx| {
            match crate::caller::get_user(tx, &w, &u).await? {
                None => None,
                Some(user) => {
                    if apply {
                        let mut prefs = decide::load_prefs(tx, &w, &u).await?;
                        if prefs.email {
                            prefs.email = false;
                            tx.set(&keys::notify_prefs(&w, &u), &selvage_shared::to_msgpack(&prefs))?;
                        }
                    }
                    Some(user.handle)
                }
            }
        })?;
        Ok(handle)
    }

    /// A dispatcher over `store` (the tests drive one step by step).
    pub fn dispatcher(&self, store: &Store, presence: &Arc<Tracker>) -> Dispatcher {
        Dispatcher {
            store: store.clone(),
            presence: presence.clone(),
            config: self.config.clone(),
            vapid: self.vapid.clone(),
            client: self.client.clone(),
            email_after_ms: self.email_after_ms(),
            metrics: self.metrics.clone(),
        }
    }

    /// How long after a message its email is due; `None` without SMTP.
    fn email_after_ms(&self) -> Option<i64> {
        self.smtp.as_ref().map(|_| self.config.email_after_ms as i64)
    }

    /// Registers a browser's push subscription for the caller (again: replaces its keys).
    pub async fn subscribe(&self, store: &Store, caller: &Caller, s: &PushSubscriptionJson) -> Result<()> {
        outbound::check_url(&s.endpoint, &self.config.allow_internal_endpoints.into())
            .map_err(|e| OriginError::BadRequest(format!("endpoint: {e}")))?;
        if s.endpoint.len() > 2048 {
            return Err(OriginError::BadRequest("endpoint: at most 2048 bytes".into()));
        }
        let checked = webpush::Subscription::from_base64url(&s.endpoint, &s.keys.p256dh, &s.keys.auth)
            .map_err(|e| OriginError::BadRequest(format!("subscription: {e}")))?;
        let id = subscription_id(&s.endpoint);
        let sub = Subscription {
            id: id.clone(),
            endpoint: checked.endpoint,
            p256dh: checked.p256dh,
            auth: checked.auth,
            created_at: crate::now_ms(),
        };
        let (w, u) = (&caller.workspace, &caller.user.id);
        let (full, _) = transact!(store, |tx| {
            let key = keys::push_subscription(w, u, &id);
            let have =
                tx.get_range(&RangeRead::prefix(&keys::push_subscriptions(w, u)).limit(MAX_SUBSCRIPTIONS + 1)).await?;
            let known = have.iter().any(|(k, _)| *k == key);
            if !known && have.len() >= MAX_SUBSCRIPTIONS {
                true
            } else {
                tx.set(&key, &selvage_shared::to_msgpack(&sub))?;
                false
            }
        })?;
        if full {
            return Err(OriginError::BadRequest(format!(
                "at most {MAX_SUBSCRIPTIONS} push subscriptions per user: remove one first"
            )));
        }
        Ok(())
    }

    /// Removes the caller's subscription with this endpoint; answers whether there was one.
    pub async fn unsubscribe(&self, store: &Store, caller: &Caller, endpoint: &str) -> Result<bool> {
        let key = keys::push_subscription(&caller.workspace, &caller.user.id, &subscription_id(endpoint));
        let (had, _) = transact!(store, |tx| {
            let had = tx.get(&key).await?.is_some();
            tx.clear(&key)?;
            had
        })?;
        Ok(had)
    }
}

/// Runs `step` (given the time in ms; answering how much it claimed) every `tick` until
/// `shutdown`, and at once again after a step that claimed `batch` or more: the loop of the
/// dispatcher and of the mailer. A failed step is logged as `what` and tried at the next tick.
async fn every_tick<F, Fut>(tick: Duration, batch: usize, what: &'static str, shutdown: CancellationToken, step: F)
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<usize, crate::store::StoreError>>,
{
    loop {
        let full = match step(crate::now_ms()).await {
            Ok(claimed) => claimed >= batch,
            Err(e) => {
                tracing::warn!(error = %e, "{what} step failed; will retry");
                false
            }
        };
        if !full {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
        } else if shutdown.is_cancelled() {
            return;
        }
    }
}

/// The key of the subscription with this endpoint.
fn subscription_id(endpoint: &str) -> String {
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, endpoint.as_bytes()).as_ref()[..16])
}

/// The caller's notification preferences.
pub async fn get_prefs(store: &Store, caller: &Caller) -> Result<NotifyPrefs> {
    let (prefs, _) = transact!(store, |tx| { decide::load_prefs(tx, &caller.workspace, &caller.user.id).await? })?;
    Ok(prefs)
}

/// Replaces the caller's notification preferences; every channel named must be one the
/// caller can see (else `404`, as for any channel they cannot see).
pub async fn put_prefs(store: &Store, caller: &Caller, prefs: NotifyPrefs) -> Result<NotifyPrefs> {
    prefs::validate(&prefs).map_err(OriginError::BadRequest)?;
    let mut prefs = prefs;
    prefs.keywords = prefs.keywords.iter().map(|k| k.trim().to_string()).collect();
    let (w, u) = (&caller.workspace, &caller.user.id);
    let (unknown, _) = transact!(store, |tx| {
        let mut unknown = None;
        for c in prefs.channels.keys() {
            if channels::visible_channel(tx, caller, c).await?.is_none() {
                unknown = Some(c.clone());
                break;
            }
        }
        if unknown.is_none() {
            let old = decide::load_prefs(tx, w, u).await?;
            for c in old.channels.keys() {
                tx.clear(&keys::notify_all(w, c, u))?;
            }
            for (c, p) in &prefs.channels {
                if p.level == Some(selvage_shared::NotifyLevel::All) && !p.muted {
                    tx.set(&keys::notify_all(w, c, u), &[])?;
                }
            }
            match prefs.keywords.is_empty() {
                true => tx.clear(&keys::notify_keywords(w, u))?,
                false => tx.set(&keys::notify_keywords(w, u), &selvage_shared::to_msgpack(&prefs.keywords))?,
            }
            tx.set(&keys::notify_prefs(w, u), &selvage_shared::to_msgpack(&prefs))?;
        }
        unknown
    })?;
    match unknown {
        Some(c) => Err(OriginError::no_channel(c.as_str())),
        None => Ok(prefs),
    }
}
