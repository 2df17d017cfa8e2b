//! Incoming webhooks (ARCHITECTURE §8 "Apps"): a secret URL, `POST /v1/hooks/{secret}`, that
//! posts into one channel as an app's bot user — what a CI system or a monitoring tool is
//! given to talk into a channel without holding a token.
//!
//! The secret is 256 random bits shown once; the store keeps its SHA-256 only, under
//! `(inhook, hash)`, as it keeps tokens. Posting goes through the sequencer as the bot user, so
//! membership, archiving and limits are checked as for anyone, and a `client_msg_id` (in the
//! body, or the `Idempotency-Key` header) makes a retried post land once. Deleting the hook
//! revokes the URL.

use selvage_shared::{AppId, ChannelId, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{
    caller::Caller,
    channels,
    error::{OriginError, Result},
    ids,
    sequencer::{SendRequest, Sent},
    store::{keys, KvTxn, RangeRead, Store, StoreError},
    transact, Origin,
};

/// Most incoming webhooks one app may have.
pub const MAX_INCOMING: usize = 100;
/// Longest `client_msg_id` a sender may give: the hook's id and a `/` go in front of it.
pub const MAX_KEY_BYTES: usize = selvage_shared::MAX_CLIENT_MSG_ID_BYTES - 34;

/// An incoming webhook as the store keeps it (under its secret's hash) and the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IncomingHook {
    /// Its id (the secret is not kept).
    pub id: String,
    /// Its workspace.
    pub workspace: WorkspaceId,
    /// The app it posts as (through its bot user).
    pub app: AppId,
    /// Where it posts.
    pub channel: ChannelId,
    /// Who made it.
    pub created_by: UserId,
    /// When (ms).
    pub created_at: i64,
}

/// What the store keeps under the app: the hook and its secret's hash, to list and delete it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Listed {
    hook: IncomingHook,
    hash: Vec<u8>,
}

fn no_hook(h: &str) -> OriginError {
    OriginError::NotFound(format!("incoming webhook {h} not found"))
}

/// Makes an incoming webhook of app `a` into channel `c` (admins only); its bot user is added
/// to the channel if it is not in it. Answers it and its secret (shown once).
pub async fn create(store: &Store, caller: &Caller, a: &AppId, c: &ChannelId) -> Result<(IncomingHook, String)> {
    super::require_admin(caller)?;
    let w = &caller.workspace;
    let (app, _) = transact!(store, |tx| { super::load(tx, w, a).await? })?;
    let app = app.ok_or_else(|| super::no_app(a))?;
    if !app.scopes.contains(&selvage_shared::Scope::ChatWrite) {
        return Err(OriginError::BadRequest("the app needs the `chat:write` scope to post by incoming webhook".into()));
    }
    // As the admin: the channel must be one they can see, and adding the bot to a private one
    // takes being in it, as for anyone they invite.
    channels::add_member(store, caller, c, &app.bot_user).await?;
    let secret = ids::new_token();
    let hash = ids::token_hash(&secret);
    let hook = IncomingHook {
        id: ids::new_id('I'),
        workspace: w.clone(),
        app: a.clone(),
        channel: c.clone(),
        created_by: caller.user.id.clone(),
        created_at: crate::now_ms(),
    };
    let (full, _) = transact!(store, |tx| {
        let have = tx.get_range(&RangeRead::prefix(&keys::incoming_of(w, a)).limit(MAX_INCOMING)).await?;
        if have.len() >= MAX_INCOMING {
            true
        } else {
            tx.set(&keys::incoming(&hash), &selvage_shared::to_msgpack(&hook))?;
            let listed = Listed { hook: hook.clone(), hash: hash.to_vec() };
            tx.set(&keys::incoming_listed(w, a, &hook.id), &selvage_shared::to_msgpack(&listed))?;
            false
        }
    })?;
    if full {
        return Err(OriginError::BadRequest(format!("an app has at most {MAX_INCOMING} incoming webhooks")));
    }
    tracing::info!(ws.id = %w, app.id = %a, hook.id = %hook.id, channel.id = %c, by = %caller.user.id,
        "incoming webhook created");
    Ok((hook, secret))
}

/// App `a`'s incoming webhooks (admins only).
pub async fn list(store: &Store, caller: &Caller, a: &AppId) -> Result<Vec<IncomingHook>> {
    super::require_admin(caller)?;
    let w = &caller.workspace;
    let (rows, _) = transact!(store, |tx| {
        match super::load(tx, w, a).await? {
            None => None,
            Some(_) => Some(tx.get_range(&RangeRead::prefix(&keys::incoming_of(w, a))).await?),
        }
    })?;
    let rows = rows.ok_or_else(|| super::no_app(a))?;
    let mut hooks: Vec<IncomingHook> =
        rows.iter().filter_map(|(_, raw)| selvage_shared::from_msgpack::<Listed>(raw).ok()).map(|l| l.hook).collect();
    hooks.sort_by_key(|h| h.created_at);
    Ok(hooks)
}

/// Deletes (revokes) incoming webhook `h` of app `a` (admins only).
pub async fn delete(store: &Store, caller: &Caller, a: &AppId, h: &str) -> Result<()> {
    super::require_admin(caller)?;
    if !selvage_shared::is_valid_id(h) {
        return Err(no_hook(h));
    }
    let w = &caller.workspace;
    let (found, _) = transact!(store, |tx| {
        let key = keys::incoming_listed(w, a, h);
        match tx.get(&key).await?.and_then(|raw| selvage_shared::from_msgpack::<Listed>(&raw).ok()) {
            None => false,
            Some(listed) => {
                tx.clear(&key)?;
                if let Ok(hash) = <[u8; 32]>::try_from(listed.hash.as_slice()) {
                    tx.clear(&keys::incoming(&hash))?;
                }
                true
            }
        }
    })?;
    match found {
        true => Ok(()),
        false => Err(no_hook(h)),
    }
}

/// Removes every incoming webhook of app `a` (the app is being deleted).
pub async fn clear_of_app(tx: &mut dyn KvTxn, w: &WorkspaceId, a: &AppId) -> Result<(), StoreError> {
    for (k, raw) in tx.get_range(&RangeRead::prefix(&keys::incoming_of(w, a))).await? {
        tx.clear(&k)?;
        let hash = selvage_shared::from_msgpack::<Listed>(&raw).ok().and_then(|l| <[u8; 32]>::try_from(l.hash).ok());
        if let Some(hash) = hash {
            tx.clear(&keys::incoming(&hash))?;
        }
    }
    Ok(())
}

/// Posts `text` through the incoming webhook whose secret is `secret`, as its app's bot user.
/// An unknown or revoked secret, or an app gone, is "not found", with nothing said about why.
pub async fn post(origin: &Origin, secret: &str, text: String, client_msg_id: Option<String>) -> Result<Sent> {
    let unknown = || OriginError::NotFound("no such incoming webhook".into());
    if secret.is_empty() || secret.len() > 128 {
        return Err(unknown());
    }
    let hash = ids::token_hash(secret);
    let (found, _) = transact!(origin.store, |tx| {
        match tx
            .get(&keys::incoming(&hash))
            .await?
            .and_then(|raw| selvage_shared::from_msgpack::<IncomingHook>(&raw).ok())
        {
            None => None,
            Some(hook) => super::active_bot(tx, &hook.workspace, &hook.app).await?.map(|bot| (hook, bot)),
        }
    })?;
    let (hook, bot) = found.ok_or_else(unknown)?;
    // Keys are the sender's, per hook: two hooks of one bot may be given the same one. Without
    // a key every post is a new message.
    let client_msg_id = match client_msg_id {
        Some(key) if key.is_empty() || key.len() > MAX_KEY_BYTES => {
            return Err(OriginError::BadRequest(format!("client_msg_id must be 1 to {MAX_KEY_BYTES} bytes")))
        }
        Some(key) => format!("{}/{key}", hook.id),
        None => format!("{}/{}", hook.id, ids::new_id('M')),
    };
    let request = SendRequest {
        workspace: hook.workspace,
        channel: hook.channel,
        user: bot.id,
        text,
        client_msg_id,
        thread_root: None,
        files: Vec::new(),
    };
    origin.sequencer.send(request).await
}
