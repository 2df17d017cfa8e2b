//! Workspaces, users and tokens: who is calling, and the records that say so.
//!
//! A workspace is created with its first admin and a `#general` channel everyone joins (written
//! through `channels::records`); a token resolves to a
//! [`Caller`]. Tokens
//! are 256 random bits handed out once; only their SHA-256 is stored, under `(tok, hash)`, and
//! revoking one deletes it and puts a `token_revoked` event in the feed so edge caches forget it
//! too.

use selvage_shared::{Channel, ChannelId, ChannelKind, Event, Grant, Scope, User, UserId, Workspace, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{
    caller::{get_user, Caller},
    channels::records::{write_channel, write_member},
    error::{OriginError, Result},
    feed::Appender,
    ids,
    store::{keys, KvTxn, Store, StoreError},
    transact,
};

/// What `(tok, hash)` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The workspace the token acts in.
    pub workspace: WorkspaceId,
    /// The user the token acts as.
    pub user: UserId,
    /// When it was issued (ms since the epoch).
    pub created_at: i64,
    /// When it stops working, if ever.
    pub expires_at: Option<i64>,
    /// An app's token: only these scopes. `None`: a user's token, with the user's full rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<Scope>>,
}

/// A created user (or workspace admin) and the one copy of their token.
#[derive(Clone, Debug, Serialize)]
pub struct Issued {
    /// The user.
    pub user: User,
    /// The bearer token. It is not stored and cannot be shown again.
    pub token: String,
}

/// Checks a handle: 1–40 of `a-z 0-9 . _ -`.
pub fn validate_handle(handle: &str) -> Result<()> {
    let ok = (1..=40).contains(&handle.len())
        && handle.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(OriginError::BadRequest(format!("handle {handle:?} is invalid: use 1 to 40 of a-z, 0-9, '.', '_' and '-'")))
    }
}

/// Checks a display or workspace name: 1–80 characters, no control characters.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let n = name.chars().count();
    if n == 0 || n > selvage_shared::MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(OriginError::BadRequest(format!(
            "{what} must be 1 to {} characters without control characters",
            selvage_shared::MAX_NAME_CHARS
        )));
    }
    Ok(())
}

/// Writes a new token for `user` in `tx` and returns it.
pub fn issue_token(
    tx: &mut dyn KvTxn,
    workspace: &WorkspaceId,
    user: &UserId,
    ttl_secs: u64,
    now: i64,
) -> Result<String, StoreError> {
    issue_scoped_token(tx, workspace, user, ttl_secs, now, None)
}

/// Writes a new token for `user` in `tx`, limited to `scopes` if given (an app's), and
/// returns it.
pub fn issue_scoped_token(
    tx: &mut dyn KvTxn,
    workspace: &WorkspaceId,
    user: &UserId,
    ttl_secs: u64,
    now: i64,
    scopes: Option<Vec<Scope>>,
) -> Result<String, StoreError> {
    let token = ids::new_token();
    let record = TokenRecord {
        workspace: workspace.clone(),
        user: user.clone(),
        created_at: now,
        expires_at: (ttl_secs > 0).then(|| now + (ttl_secs as i64) * 1000),
        scopes,
    };
    tx.set(&keys::token(&ids::token_hash(&token)), &selvage_shared::to_msgpack(&record))?;
    Ok(token)
}

/// Creates a workspace, its first admin (with a token) and its `#general` channel.
pub async fn create_workspace(
    store: &Store,
    name: &str,
    admin_handle: &str,
    admin_name: &str,
    ttl_secs: u64,
) -> Result<(Workspace, Issued)> {
    validate_name("workspace name", name)?;
    validate_handle(admin_handle)?;
    validate_name("name", admin_name)?;
    let ((workspace, issued), _) = transact!(store, |tx| {
        let now = crate::now_ms();
        let workspace =
            Workspace { id: WorkspaceId::new_unchecked(ids::new_id('W')), name: name.to_string(), created_at: now };
        let admin = User {
            id: UserId::new_unchecked(ids::new_id('U')),
            handle: admin_handle.to_string(),
            name: admin_name.to_string(),
            admin: true,
            deactivated: false,
            tokens_valid_from: 0,
            bot: None,
            created_at: now,
        };
        let general = Channel {
            id: ChannelId::new_unchecked(ids::new_id('C')),
            name: "general".into(),
            kind: ChannelKind::Channel,
            private: false,
            archived: false,
            topic: String::new(),
            purpose: "Everyone in the workspace".into(),
            created_by: admin.id.clone(),
            created_at: now,
        };
        let w = &workspace.id;
        tx.set(&keys::workspace(w), &selvage_shared::to_msgpack(&workspace))?;
        tx.set(&keys::meta_general(w), general.id.as_str().as_bytes())?;
        let mut log = Appender::new();
        write_user(tx, &mut log, w, &admin, now)?;
        write_channel(tx, &mut log, w, &general, now)?;
        write_member(tx, &mut log, w, &general.id, &admin.id, now)?;
        log.finish(tx)?;
        let token = issue_token(tx, w, &admin.id, ttl_secs, now)?;
        (workspace, Issued { user: admin, token })
    })?;
    tracing::info!(ws.id = %workspace.id, name, "workspace created");
    Ok((workspace, issued))
}

/// Writes a user's record and handle, and logs `user_updated`.
pub(crate) fn write_user(
    tx: &mut dyn KvTxn,
    log: &mut Appender,
    w: &WorkspaceId,
    user: &User,
    now: i64,
) -> Result<(), StoreError> {
    tx.set(&keys::user(w, &user.id), &selvage_shared::to_msgpack(user))?;
    tx.set(&keys::handle(w, &user.handle), user.id.as_str().as_bytes())?;
    log.append(tx, w, now, Event::UserUpdated { user: user.clone() })?;
    Ok(())
}

/// Creates a user in the caller's workspace (the caller must be an admin), joins them to
/// `#general`, and issues their first token.
pub async fn create_user(
    store: &Store,
    caller: &Caller,
    handle: &str,
    name: &str,
    admin: bool,
    ttl_secs: u64,
) -> Result<Issued> {
    if !caller.user.admin {
        return Err(OriginError::Forbidden("only workspace admins can create users".into()));
    }
    validate_handle(handle)?;
    validate_name("name", name)?;
    let w = &caller.workspace;
    let (issued, _) = transact!(store, |tx| {
        if tx.get(&keys::handle(w, handle)).await?.is_some() {
            None
        } else {
            let now = crate::now_ms();
            let user = User {
                id: UserId::new_unchecked(ids::new_id('U')),
                handle: handle.to_string(),
                name: name.to_string(),
                admin,
                deactivated: false,
                tokens_valid_from: 0,
                bot: None,
                created_at: now,
            };
            let mut log = Appender::new();
            write_user(tx, &mut log, w, &user, now)?;
            if let Some(general) = tx.get(&keys::meta_general(w)).await? {
                if let Some(general) = std::str::from_utf8(&general).ok().and_then(ChannelId::parse) {
                    write_member(tx, &mut log, w, &general, &user.id, now)?;
                }
            }
            log.finish(tx)?;
            let token = issue_token(tx, w, &user.id, ttl_secs, now)?;
            Some(Issued { user, token })
        }
    })?;
    let issued = issued.ok_or_else(|| OriginError::Conflict(format!("handle {handle:?} is already taken")))?;
    tracing::info!(ws.id = %w, user.id = %issued.user.id, "user created");
    Ok(issued)
}

/// Issues another token for the caller (a second device, a bot).
pub async fn new_token_for(store: &Store, caller: &Caller, ttl_secs: u64) -> Result<String> {
    let (token, _) =
        transact!(store, |tx| { issue_token(tx, &caller.workspace, &caller.user.id, ttl_secs, crate::now_ms())? })?;
    Ok(token)
}

/// Resolves a bearer token to its caller.
pub async fn authenticate(store: &Store, token: &str) -> Result<Caller> {
    Ok(authenticate_hash(store, &ids::token_hash(token)).await?.0)
}

/// Resolves a token by its SHA-256 (what edges send over the link, so tokens never leave the
/// edge that received them) to its caller: unknown, expired or revoked tokens and deactivated
/// users are `unauthorized`. Also returns when the token expires (ms since the epoch), if ever.
pub async fn authenticate_hash(store: &Store, hash: &[u8; 32]) -> Result<(Caller, Option<i64>)> {
    let hash = *hash;
    let (found, _) = transact!(store, |tx| {
        match tx.get(&keys::token(&hash)).await? {
            None => None,
            Some(raw) => {
                let record: TokenRecord = match selvage_shared::from_msgpack(&raw) {
                    Ok(r) => r,
                    Err(_) => return Err(StoreError::Engine("token record does not decode".into())),
                };
                let user = tx.get(&keys::user(&record.workspace, &record.user)).await?;
                Some((record, user))
            }
        }
    })?;
    let unauthorized = || OriginError::Unauthorized("token is unknown, revoked or expired".into());
    let (record, user) = found.ok_or_else(unauthorized)?;
    if record.expires_at.is_some_and(|t| t <= crate::now_ms()) {
        return Err(unauthorized());
    }
    let user: User = selvage_shared::from_msgpack(&user.ok_or_else(unauthorized)?)?;
    if user.deactivated {
        return Err(OriginError::Unauthorized("user is deactivated".into()));
    }
    if record.created_at < user.tokens_valid_from {
        // Issued before the user was deactivated: revoked with everything else they held.
        return Err(unauthorized());
    }
    let grant = Grant::from_scopes(record.scopes.as_deref());
    Ok((Caller { workspace: record.workspace, user, token_hash: hash, grant }, record.expires_at))
}

/// Revokes `token` (or, when `None`, the caller's own token). Revoking someone else's token
/// needs an admin of the same workspace; tokens of other workspaces are "not found".
pub async fn revoke(store: &Store, caller: &Caller, token: Option<&str>) -> Result<()> {
    let hash = token.map(ids::token_hash).unwrap_or(caller.token_hash);
    let (outcome, _) = transact!(store, |tx| {
        match tx.get(&keys::token(&hash)).await? {
            None => Err(OriginError::NotFound("token not found".into())),
            Some(raw) => match selvage_shared::from_msgpack::<TokenRecord>(&raw) {
                Ok(r) if r.workspace != caller.workspace => Err(OriginError::NotFound("token not found".into())),
                Ok(r) if r.user != caller.user.id && !caller.user.admin => {
                    Err(OriginError::Forbidden("only admins can revoke other users' tokens".into()))
                }
                _ => {
                    tx.clear(&keys::token(&hash))?;
                    let mut log = Appender::new();
                    log.append(
                        tx,
                        &caller.workspace,
                        crate::now_ms(),
                        Event::TokenRevoked { token_hash: hex::encode(hash) },
                    )?;
                    log.finish(tx)?;
                    Ok(())
                }
            },
        }
    })?;
    outcome
}

/// Deactivates (`active: false`) or reactivates a user of the caller's workspace; admins only,
/// and never oneself. Deactivating revokes every token the user holds (those issued before now
/// stop working, reactivated or not) and logs `user_updated`, on which every edge closes the
/// user's sessions at once and forgets their tokens; the user keeps their history and
/// memberships, but cannot connect, post or be added to channels, and `@here` never reaches
/// them. Reactivating issues the user a new token (their old ones stay revoked), as creating
/// them did. Answers the user as now stored and that token; doing either twice changes nothing
/// (and issues no token).
pub async fn set_active(
    store: &Store,
    caller: &Caller,
    u: &UserId,
    active: bool,
    ttl_secs: u64,
) -> Result<(User, Option<String>)> {
    if !caller.user.admin {
        return Err(OriginError::Forbidden("only workspace admins can deactivate or reactivate users".into()));
    }
    if *u == caller.user.id && !active {
        return Err(OriginError::BadRequest("you cannot deactivate yourself; ask another admin".into()));
    }
    let w = &caller.workspace;
    let (outcome, _) = transact!(store, |tx| {
        match get_user(tx, w, u).await? {
            None => Err(OriginError::NotFound(format!("user {u} not found"))),
            Some(user) if user.deactivated != active => Ok((user, None)),
            // Reactivating would hand out a token without the app's scopes.
            Some(user) if active && user.bot.is_some() => {
                Err(OriginError::BadRequest(format!("{u} is an app's bot user: create the app again instead")))
            }
            Some(mut user) => {
                let now = crate::now_ms();
                user.deactivated = !active;
                let mut log = Appender::new();
                let token = if active {
                    // Issued after `tokens_valid_from`, which is at most `now`.
                    write_user(tx, &mut log, w, &user, now)?;
                    Some(issue_token(tx, w, u, ttl_secs, now.max(user.tokens_valid_from))?)
                } else {
                    // Tokens of this millisecond too: one issued alongside is issued before.
                    user.tokens_valid_from = now + 1;
                    write_user(tx, &mut log, w, &user, now)?;
                    None
                };
                log.finish(tx)?;
                Ok((user, token))
            }
        }
    })?;
    let (user, token) = outcome?;
    tracing::info!(ws.id = %w, user.id = %u, by = %caller.user.id, deactivated = user.deactivated, "user activation changed");
    Ok((user, token))
}

/// Issues a token for an existing user directly (for operators with access to the store, such
/// as `selvage dev`); the user must exist in the workspace.
pub async fn mint_token(store: &Store, w: &WorkspaceId, u: &UserId, ttl_secs: u64) -> Result<String> {
    let (token, _) = transact!(store, |tx| {
        match get_user(tx, w, u).await? {
            Some(user) if !user.deactivated => Some(issue_token(tx, w, u, ttl_secs, crate::now_ms())?),
            _ => None,
        }
    })?;
    token.ok_or_else(|| OriginError::NotFound(format!("no active user {u} in {w}")))
}

/// The caller a token of `u` in `w` would authenticate as, for work done on a user's behalf by
/// someone who already checked the token (an edge over the link). The user must exist in the
/// workspace (`not_found`) and be active (`unauthorized`). The caller carries no token hash
/// (all zeros), so nothing can be revoked through it.
pub async fn caller_for(store: &Store, w: &WorkspaceId, u: &UserId) -> Result<Caller> {
    let (user, _) = transact!(store, |tx| { get_user(tx, w, u).await? })?;
    let user = user.ok_or_else(|| OriginError::NotFound(format!("user {u} not found in {w}")))?;
    if user.deactivated {
        return Err(OriginError::Unauthorized("user is deactivated".into()));
    }
    Ok(Caller { workspace: w.clone(), user, token_hash: [0; 32], grant: Grant::user() })
}
