//! Handlers of workspaces, users and tokens: `/v1/workspaces`, `/v1/users`, `/v1/me`,
//! `/v1/tokens`.

use std::sync::Arc;

use axum::{extract::State, http::HeaderMap, response::Response};
use serde::Deserialize;
use serde_json::json;

use super::extract::{created, require_operator, user_id, Json, OptionalJson, Path};
use crate::{accounts, caller::Caller, error::Result, Origin};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateWorkspace {
    name: String,
    admin_handle: String,
    admin_name: Option<String>,
}

pub(super) async fn create_workspace(
    State(origin): State<Arc<Origin>>,
    headers: HeaderMap,
    Json(body): Json<CreateWorkspace>,
) -> Result<Response> {
    require_operator(&origin, &headers, "workspace creation")?;
    let admin_name = body.admin_name.as_deref().unwrap_or(&body.admin_handle);
    let (workspace, issued) = accounts::create_workspace(
        &origin.store,
        &body.name,
        &body.admin_handle,
        admin_name,
        origin.config.token_ttl_secs,
    )
    .await?;
    Ok(created(json!({ "workspace": workspace, "user": issued.user, "token": issued.token })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    handle: String,
    name: Option<String>,
    #[serde(default)]
    admin: bool,
}

pub(super) async fn create_user(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Json(body): Json<CreateUser>,
) -> Result<Response> {
    let name = body.name.as_deref().unwrap_or(&body.handle);
    let issued =
        accounts::create_user(&origin.store, &caller, &body.handle, name, body.admin, origin.config.token_ttl_secs)
            .await?;
    Ok(created(issued))
}

pub(super) async fn deactivate_user(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    set_active(&origin, &caller, &id, false).await
}

pub(super) async fn reactivate_user(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    set_active(&origin, &caller, &id, true).await
}

/// Deactivates or reactivates a user; a deactivated user's presence goes offline at once, so
/// that `@here` stops reaching them before their edges have closed their sessions.
async fn set_active(origin: &Origin, caller: &Caller, id: &str, active: bool) -> Result<Json<serde_json::Value>> {
    let ttl = origin.config.token_ttl_secs;
    let (user, token) = accounts::set_active(&origin.store, caller, &user_id(id)?, active, ttl).await?;
    let change = origin.presence.set_deactivated(&caller.workspace, &user.id, user.deactivated);
    crate::presence::announce(&origin.relay, change);
    let mut body = json!({ "user": user });
    if let Some(token) = token {
        body["token"] = json!(token);
    }
    Ok(Json(body))
}

pub(super) async fn me(caller: Caller) -> Json<serde_json::Value> {
    Json(json!({ "workspace": caller.workspace, "user": caller.user }))
}

pub(super) async fn new_token(State(origin): State<Arc<Origin>>, caller: Caller) -> Result<Response> {
    let token = accounts::new_token_for(&origin.store, &caller, origin.config.token_ttl_secs).await?;
    Ok(created(json!({ "token": token })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeToken {
    token: Option<String>,
}

pub(super) async fn revoke_token(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    OptionalJson(body): OptionalJson<RevokeToken>,
) -> Result<Json<serde_json::Value>> {
    accounts::revoke(&origin.store, &caller, body.token.as_deref()).await?;
    Ok(Json(json!({ "revoked": true })))
}
