//! Handlers of apps: `/v1/apps` (ARCHITECTURE §8 "Apps").

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, response::Response};
use selvage_shared::{AppId, Scope};
use serde::Deserialize;
use serde_json::json;

use super::extract::{created, Json, OptionalJson, Path};
use crate::{apps, caller::Caller, error::OriginError, error::Result, Origin};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateApp {
    name: String,
    handle: String,
    scopes: Vec<Scope>,
}

pub(super) async fn create_app(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Json(body): Json<CreateApp>,
) -> Result<Response> {
    let ttl = origin.config.token_ttl_secs;
    let made = apps::create(&origin.store, &caller, &body.name, &body.handle, &body.scopes, ttl).await?;
    Ok(created(made))
}

pub(super) async fn list_apps(State(origin): State<Arc<Origin>>, caller: Caller) -> Result<Json<serde_json::Value>> {
    Ok(Json(json!({ "apps": apps::list(&origin.store, &caller).await? })))
}

fn app_id(raw: &str) -> Result<AppId> {
    AppId::parse(raw).ok_or_else(|| OriginError::NotFound(format!("app {raw} not found")))
}

pub(super) async fn get_app(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<selvage_shared::App>> {
    Ok(Json(apps::get(&origin.store, &caller, &app_id(&id)?).await?))
}

pub(super) async fn delete_app(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    apps::delete(&origin.store, &caller, &app_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct NewAppToken {
    #[serde(default)]
    scopes: Vec<Scope>,
}

pub(super) async fn new_app_token(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<NewAppToken>,
) -> Result<Response> {
    let ttl = origin.config.token_ttl_secs;
    let (token, scopes) = apps::issue_token(&origin.store, &caller, &app_id(&id)?, &body.scopes, ttl).await?;
    Ok(created(json!({ "token": token, "scopes": scopes })))
}
