//! Handlers of apps and their event webhooks: `/v1/apps` (ARCHITECTURE §8 "Apps").

use std::sync::Arc;

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use selvage_shared::{AppId, Scope};
use serde::Deserialize;
use serde_json::json;

use super::extract::{created, page_limit, Json, OptionalJson, Path, Query};
use crate::{apps, apps::webhooks::WebhookView, caller::Caller, error::OriginError, error::Result, Origin};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateWebhook {
    url: String,
    events: Vec<String>,
}

pub(super) async fn create_webhook(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateWebhook>,
) -> Result<Response> {
    let (webhook, secret) =
        origin.webhooks.create(&caller, &origin.feed, &app_id(&id)?, &body.url, &body.events).await?;
    Ok(created(json!({ "webhook": webhook, "secret": secret })))
}

pub(super) async fn list_webhooks(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    Ok(Json(json!({ "webhooks": origin.webhooks.list(&caller, &app_id(&id)?).await? })))
}

pub(super) async fn get_hook(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, hook)): Path<(String, String)>,
) -> Result<Json<WebhookView>> {
    Ok(Json(origin.webhooks.get(&caller, &app_id(&id)?, &hook).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateWebhook {
    url: Option<String>,
    events: Option<Vec<String>>,
    enabled: Option<bool>,
}

pub(super) async fn update_hook(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, hook)): Path<(String, String)>,
    Json(body): Json<UpdateWebhook>,
) -> Result<Json<WebhookView>> {
    let a = app_id(&id)?;
    let view = origin
        .webhooks
        .update(&caller, &origin.feed, &a, &hook, body.url.as_deref(), body.events.as_deref(), body.enabled)
        .await?;
    Ok(Json(view))
}

pub(super) async fn delete_hook(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, hook)): Path<(String, String)>,
) -> Result<StatusCode> {
    origin.webhooks.delete(&caller, &app_id(&id)?, &hook).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn rotate_webhook(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, hook)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    let secret = origin.webhooks.rotate(&caller, &app_id(&id)?, &hook).await?;
    Ok(Json(json!({ "secret": secret })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
    before: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/apps/{id}/deliveries`: every endpoint's log of the app, merged, newest first.
pub(super) async fn app_deliveries(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<serde_json::Value>> {
    let limit = page_limit(q.limit, 100)?;
    let (page, next) = origin.webhooks.app_deliveries(&caller, &app_id(&id)?, q.before.as_deref(), limit).await?;
    let deliveries: Vec<serde_json::Value> =
        page.into_iter().map(|(cursor, hook, d)| delivery_json(cursor, Some(hook), d)).collect();
    Ok(Json(json!({ "deliveries": deliveries, "next": next })))
}

pub(super) async fn webhook_deliveries(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, hook)): Path<(String, String)>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<serde_json::Value>> {
    let limit = page_limit(q.limit, 100)?;
    let (page, next) = origin.webhooks.deliveries(&caller, &app_id(&id)?, &hook, q.before.as_deref(), limit).await?;
    let deliveries: Vec<serde_json::Value> =
        page.into_iter().map(|(cursor, d)| delivery_json(cursor, None, d)).collect();
    Ok(Json(json!({ "deliveries": deliveries, "next": next })))
}

/// A log entry as the API shows it: the delivery, its event's cursor and, in an app's merged
/// log, its endpoint.
fn delivery_json(
    cursor: selvage_shared::Cursor,
    hook: Option<String>,
    d: apps::webhooks::Delivery,
) -> serde_json::Value {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    v["cursor"] = json!(cursor);
    if let Some(hook) = hook {
        v["webhook"] = json!(hook);
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Replay {
    cursor: String,
}

pub(super) async fn replay_webhook(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, hook)): Path<(String, String)>,
    Json(body): Json<Replay>,
) -> Result<Json<serde_json::Value>> {
    let (queued, cursor) = origin.webhooks.replay(&caller, &origin.feed, &app_id(&id)?, &hook, &body.cursor).await?;
    Ok(Json(json!({ "queued": queued, "cursor": cursor })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateIncoming {
    channel: String,
}

pub(super) async fn create_incoming(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateIncoming>,
) -> Result<Response> {
    let channel = super::extract::channel_id(&body.channel)?;
    let (hook, secret) = apps::incoming::create(&origin.store, &caller, &app_id(&id)?, &channel).await?;
    Ok(created(json!({ "hook": hook, "url": format!("/v1/hooks/{secret}") })))
}

pub(super) async fn list_incoming(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    Ok(Json(json!({ "hooks": apps::incoming::list(&origin.store, &caller, &app_id(&id)?).await? })))
}

pub(super) async fn delete_incoming(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, hook)): Path<(String, String)>,
) -> Result<StatusCode> {
    apps::incoming::delete(&origin.store, &caller, &app_id(&id)?, &hook).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IncomingPost {
    text: String,
    client_msg_id: Option<String>,
}

/// `POST /v1/hooks/{secret}`: no token; the secret in the URL is the credential.
pub(super) async fn post_incoming(
    State(origin): State<Arc<Origin>>,
    Path(secret): Path<String>,
    headers: axum::http::HeaderMap,
    Json(body): Json<IncomingPost>,
) -> Result<Response> {
    origin.rate.check(crate::rate::Class::Incoming, &crate::ids::token_hash(&secret))?;
    let key =
        body.client_msg_id.or_else(|| headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(String::from));
    let sent = apps::incoming::post(&origin, &secret, body.text, key).await?;
    let status = if sent.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    let m = &sent.message;
    let answer = json!({ "channel": m.channel, "seq": m.seq, "ts": m.ts, "duplicate": sent.duplicate });
    Ok((status, axum::Json(answer)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateCommand {
    command: String,
    url: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    usage_hint: String,
}

pub(super) async fn create_command(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CreateCommand>,
) -> Result<Response> {
    let (command, secret) = origin
        .commands
        .create(&caller, &app_id(&id)?, &body.command, &body.url, &body.description, &body.usage_hint)
        .await?;
    Ok(created(json!({ "command": command, "secret": secret })))
}

pub(super) async fn list_commands(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    Ok(Json(json!({ "commands": origin.commands.list(&caller, &app_id(&id)?).await? })))
}

pub(super) async fn delete_command(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
) -> Result<StatusCode> {
    origin.commands.delete(&caller, &app_id(&id)?, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/apps/{id}/commands/{name}/rotate`: a new signing secret (shown once).
pub(super) async fn rotate_command(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    let secret = origin.commands.rotate(&caller, &app_id(&id)?, &name).await?;
    Ok(Json(json!({ "secret": secret })))
}

/// `GET /v1/commands`: the workspace's slash commands, for a client to offer as one types `/`.
pub(super) async fn workspace_commands(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
) -> Result<Json<serde_json::Value>> {
    Ok(Json(json!({ "commands": origin.commands.all(&caller).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CommandResponse {
    text: String,
    #[serde(default)]
    response_type: Option<String>,
}

/// `POST /v1/commands/respond/{secret}`: an app's later answer to a slash command. No token;
/// the secret in the `response_url` is the credential.
pub(super) async fn command_response(
    State(origin): State<Arc<Origin>>,
    Path(secret): Path<String>,
    Json(body): Json<CommandResponse>,
) -> Result<Json<serde_json::Value>> {
    origin.rate.check(crate::rate::Class::Incoming, &crate::ids::token_hash(&secret))?;
    let answer = apps::commands::Answer { text: Some(body.text), response_type: body.response_type };
    let outcome = origin.commands.respond(&origin, &secret, answer).await?;
    Ok(Json(json!({ "answer": outcome })))
}
