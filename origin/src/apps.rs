//! Apps: integrations with a bot user and scoped tokens (ARCHITECTURE §8 "Apps").
//!
//! A workspace admin creates an app; it gets a *bot user* — a user like any other, in the
//! channels it is invited to and nowhere else, marked with its app — and a first token limited
//! to the app's [`Scope`]s. Every route and frame checks the scopes
//! (`http/scopes.rs`, [`ClientFrame::need`](selvage_shared::ClientFrame::need)), and then, as
//! for any user, membership. More tokens, with the same or fewer scopes, come from
//! [`issue_token`]; any one is revoked as a user's is (`POST /v1/tokens/revoke`), and deleting
//! the app deactivates its bot user, which revokes them all.

pub mod commands;
pub mod incoming;
pub mod webhooks;

use std::collections::BTreeSet;

use selvage_shared::{App, AppId, Scope, User, UserId};

use crate::{
    accounts::{issue_scoped_token, validate_handle, validate_name, write_user},
    caller::{get_user, Caller},
    error::{OriginError, Result},
    feed::Appender,
    ids,
    store::{keys, KvTxn, RangeRead, Store, StoreError},
    transact,
};

/// Most apps one workspace may have.
pub const MAX_APPS: usize = 1000;

/// A new app, with its bot user and the one copy of its first token.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Created {
    /// The app.
    pub app: App,
    /// Its bot user.
    pub bot_user: User,
    /// A token with the app's scopes. Not stored; it cannot be shown again.
    pub token: String,
}

fn require_admin(caller: &Caller) -> Result<()> {
    match caller.user.admin {
        true => Ok(()),
        false => Err(OriginError::Forbidden("only workspace admins can manage apps".into())),
    }
}

/// The scopes asked for, each once, in a fixed order; at least one.
fn checked_scopes(scopes: &[Scope]) -> Result<Vec<Scope>> {
    let set: BTreeSet<Scope> = scopes.iter().copied().collect();
    if set.is_empty() {
        return Err(OriginError::BadRequest("give the app at least one scope".into()));
    }
    Ok(set.into_iter().collect())
}

/// The bot user of app `a`, if the app exists and its bot user is active: who posts for an
/// incoming webhook or answers a slash command.
pub async fn active_bot(
    tx: &mut dyn KvTxn,
    w: &selvage_shared::WorkspaceId,
    a: &AppId,
) -> Result<Option<User>, StoreError> {
    match load(tx, w, a).await? {
        Some(app) => Ok(get_user(tx, w, &app.bot_user).await?.filter(|b| !b.deactivated)),
        None => Ok(None),
    }
}

/// Reads an app of a workspace.
pub async fn load(tx: &mut dyn KvTxn, w: &selvage_shared::WorkspaceId, a: &AppId) -> Result<Option<App>, StoreError> {
    match tx.get(&keys::app(w, a)).await? {
        None => Ok(None),
        Some(raw) => Ok(selvage_shared::from_msgpack(&raw).ok()),
    }
}

/// Creates an app called `name` with the bot user `handle` and `scopes` (admins only).
pub async fn create(
    store: &Store,
    caller: &Caller,
    name: &str,
    handle: &str,
    scopes: &[Scope],
    ttl_secs: u64,
) -> Result<Created> {
    require_admin(caller)?;
    validate_name("name", name)?;
    validate_handle(handle)?;
    let scopes = checked_scopes(scopes)?;
    let w = &caller.workspace;
    let (created, _) = transact!(store, |tx| {
        if tx.get(&keys::handle(w, handle)).await?.is_some() {
            Err(OriginError::Conflict(format!("handle {handle:?} is already taken")))
        } else if tx.get_range(&RangeRead::prefix(&keys::apps(w)).limit(MAX_APPS)).await?.len() >= MAX_APPS {
            Err(OriginError::BadRequest(format!("a workspace has at most {MAX_APPS} apps")))
        } else {
            let now = crate::now_ms();
            let id = AppId::new_unchecked(ids::new_id('A'));
            let bot_user = User {
                id: UserId::new_unchecked(ids::new_id('U')),
                handle: handle.to_string(),
                name: name.to_string(),
                admin: false,
                deactivated: false,
                tokens_valid_from: 0,
                created_at: now,
                bot: Some(id.clone()),
            };
            let app = App {
                id,
                name: name.to_string(),
                bot_user: bot_user.id.clone(),
                scopes: scopes.clone(),
                created_by: caller.user.id.clone(),
                created_at: now,
            };
            let mut log = Appender::new();
            write_user(tx, &mut log, w, &bot_user, now)?;
            log.finish(tx)?;
            tx.set(&keys::app(w, &app.id), &selvage_shared::to_msgpack(&app))?;
            let token = issue_scoped_token(tx, w, &bot_user.id, ttl_secs, now, Some(scopes.clone()))?;
            Ok(Created { app, bot_user, token })
        }
    })?;
    let created = created?;
    tracing::info!(ws.id = %w, app.id = %created.app.id, user.id = %created.bot_user.id, by = %caller.user.id,
        "app created");
    Ok(created)
}

/// The workspace's apps (admins only), oldest first.
pub async fn list(store: &Store, caller: &Caller) -> Result<Vec<App>> {
    require_admin(caller)?;
    let (rows, _) = transact!(store, |tx| { tx.get_range(&RangeRead::prefix(&keys::apps(&caller.workspace))).await? })?;
    let mut apps: Vec<App> = rows.iter().filter_map(|(_, raw)| selvage_shared::from_msgpack(raw).ok()).collect();
    apps.sort_by_key(|a| a.created_at);
    Ok(apps)
}

/// One app (admins only); another workspace's is "not found".
pub async fn get(store: &Store, caller: &Caller, a: &AppId) -> Result<App> {
    require_admin(caller)?;
    let (app, _) = transact!(store, |tx| { load(tx, &caller.workspace, a).await? })?;
    app.ok_or_else(|| no_app(a))
}

fn no_app(a: &AppId) -> OriginError {
    OriginError::NotFound(format!("app {a} not found"))
}

/// Issues another token for app `a`'s bot user with `scopes` (all the app's when empty), which
/// must be among the app's (admins only). Answers the token and its scopes.
pub async fn issue_token(
    store: &Store,
    caller: &Caller,
    a: &AppId,
    scopes: &[Scope],
    ttl_secs: u64,
) -> Result<(String, Vec<Scope>)> {
    require_admin(caller)?;
    let asked = if scopes.is_empty() { None } else { Some(checked_scopes(scopes)?) };
    let w = &caller.workspace;
    let (issued, _) = transact!(store, |tx| {
        let Some(app) = load(tx, w, a).await? else { return Ok(Err(no_app(a))) };
        let scopes = asked.clone().unwrap_or_else(|| app.scopes.clone());
        if let Some(extra) = scopes.iter().find(|s| !app.scopes.contains(s)) {
            return Ok(Err(OriginError::BadRequest(format!("the app was not given the scope `{extra}`"))));
        }
        match get_user(tx, w, &app.bot_user).await? {
            Some(bot) if !bot.deactivated => {
                let now = crate::now_ms().max(bot.tokens_valid_from);
                let token = issue_scoped_token(tx, w, &bot.id, ttl_secs, now, Some(scopes.clone()))?;
                Ok((token, scopes))
            }
            _ => Err(no_app(a)),
        }
    })?;
    issued
}

/// Deletes app `a` (admins only): its bot user is deactivated, which revokes every token it
/// held and closes its sessions; what it posted stays.
pub async fn delete(store: &Store, caller: &Caller, a: &AppId) -> Result<()> {
    require_admin(caller)?;
    let w = &caller.workspace;
    let (found, _) = transact!(store, |tx| {
        let Some(app) = load(tx, w, a).await? else { return Ok(false) };
        tx.clear(&keys::app(w, a))?;
        incoming::clear_of_app(tx, w, a).await?;
        commands::clear_of_app(tx, w, a).await?;
        for (_, raw) in tx.get_range(&RangeRead::prefix(&keys::webhooks(w))).await? {
            if let Ok(hook) = selvage_shared::from_msgpack::<webhooks::Webhook>(&raw) {
                if hook.app == *a {
                    webhooks::clear_hook(tx, w, &hook.id)?;
                }
            }
        }
        if let Some(mut bot) = get_user(tx, w, &app.bot_user).await? {
            if !bot.deactivated {
                let now = crate::now_ms();
                bot.deactivated = true;
                bot.tokens_valid_from = now + 1;
                let mut log = Appender::new();
                write_user(tx, &mut log, w, &bot, now)?;
                log.finish(tx)?;
            }
        }
        true
    })?;
    match found {
        true => {
            tracing::info!(ws.id = %w, app.id = %a, by = %caller.user.id, "app deleted");
            Ok(())
        }
        false => Err(no_app(a)),
    }
}
