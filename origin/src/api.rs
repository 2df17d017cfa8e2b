//! The origin's HTTP API, version 1 (ARCHITECTURE §5), on axum.
//!
//! Handlers are thin: extract and check the request, call the module that owns the concept
//! (`accounts`, `channels`, `sequencer`, `history`, `feed`), and render the result. Every
//! rejection axum would produce (bad JSON, unknown fields, oversized bodies, a missing content
//! type, bad query strings or path parameters, unknown routes, wrong methods) is turned into
//! ARCHITECTURE §5's `{"error": {"code", "message"}}` shape here, and the middleware ([`track`])
//! re-renders anything else that would leave in another shape, a panic included.
//!
//! Every request gets a [`RequestId`]: answered in `x-request-id`, carried by its log lines and by
//! the body of a 5xx. `openapi.json` describes all of it; CI checks the server against it with
//! schemathesis (`origin/tests/schemathesis/run.sh`).

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State,
    },
    http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, patch, post, put},
    Router,
};
use futures::FutureExt;
use selvage_shared::{ChannelId, Event, EventFrame, FeedEvent, Seq, ServerFrame, UserId};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use tracing::Instrument;

use crate::{
    accounts,
    caller::Caller,
    channels::{self, read_markers},
    error::{ErrorShape, OriginError, RequestId, Result},
    feed::{self, Position, Read},
    messages::{self, history, sequencer::SendRequest},
    Origin,
};

/// Builds the router with every route, the body limit and the metrics middleware.
pub fn router(origin: Arc<Origin>) -> Router {
    let body_limit = origin.config.max_body_bytes;
    Router::new()
        .route("/v1/workspaces", post(create_workspace))
        .route("/v1/users", post(create_user))
        .route("/v1/users/{id}/deactivate", post(deactivate_user))
        .route("/v1/users/{id}/reactivate", post(reactivate_user))
        .route("/v1/me", get(me))
        .route("/v1/tokens", post(new_token))
        .route("/v1/tokens/revoke", post(revoke_token))
        .route("/v1/channels", get(list_channels).post(create_channel))
        .route("/v1/channels/{id}", get(get_channel).patch(update_channel))
        .route("/v1/channels/{id}/members", get(list_members).post(add_member))
        .route("/v1/channels/{id}/members/{user}", delete(remove_member))
        .route("/v1/channels/{id}/messages", get(history_page).post(post_message))
        .route("/v1/channels/{id}/messages/{seq}", patch(edit_message).delete(delete_message))
        .route("/v1/channels/{id}/messages/{seq}/thread", get(thread_page))
        .route("/v1/channels/{id}/messages/{seq}/reactions/{emoji}", put(add_reaction).delete(remove_reaction))
        .route("/v1/channels/{id}/messages/{seq}/follow", put(follow_thread).delete(unfollow_thread))
        .route("/v1/channels/{id}/read", put(mark_read))
        .route("/v1/dms", post(open_dm))
        .route("/v1/events", get(events))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(origin.clone(), track))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(origin)
}

/// The response header that names the request (the same id as in 5xx bodies and the log).
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request an id (its span, its errors and the `x-request-id` header carry it),
/// turns a panic into a 500 and any error response not in ARCHITECTURE §5's shape into one, and
/// records the request in the metrics and the debug log.
async fn track(State(origin): State<Arc<Origin>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = RequestId::new();
    let route =
        request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let span = tracing::debug_span!("request", request.id = %id, %method, route);
    let served = AssertUnwindSafe(id.clone().scope(next.run(request))).catch_unwind().instrument(span.clone()).await;
    let _entered = span.enter();
    let mut response = match served {
        Ok(response) => reshape(response, &id),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            OriginError::Internal(format!("handler panicked: {what}")).response_for(&id)
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status();
    let m = &origin.metrics;
    m.http_requests.with_label_values(&[route.as_str(), method.as_str(), status.as_str()]).inc();
    m.http_latency.with_label_values(&[route.as_str()]).observe(started.elapsed().as_secs_f64());
    tracing::debug!(status = status.as_u16(), us = started.elapsed().as_micros() as u64, "request");
    response
}

/// An error response that did not come from [`OriginError`] (one axum or a layer made itself)
/// is replaced by the error of its status in ARCHITECTURE §5's shape; others pass unchanged.
fn reshape(response: Response, id: &RequestId) -> Response {
    let status = response.status();
    if status.as_u16() < 400 || response.extensions().get::<ErrorShape>().is_some() {
        return response;
    }
    let error = match status {
        StatusCode::NOT_FOUND => OriginError::NotFound("no such route; see /v1/openapi.json".into()),
        StatusCode::METHOD_NOT_ALLOWED => {
            OriginError::MethodNotAllowed("method not allowed on this route; see /v1/openapi.json".into())
        }
        StatusCode::PAYLOAD_TOO_LARGE => OriginError::TooLarge("request body is over the size limit".into()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            OriginError::UnsupportedMediaType("send the body as `Content-Type: application/json`".into())
        }
        s if s.is_server_error() => OriginError::Internal(format!("a {s} response without an error body")),
        s => OriginError::BadRequest(format!("request refused ({s})")),
    };
    let mut reshaped = error.response_for(id);
    // Headers such as `allow` on a 405 stay.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            reshaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    reshaped
}

/// `axum::Json` with our error shape for every rejection.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = OriginError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A JSON body that may be absent (an empty body means `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = OriginError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| body_rejection(r.status(), "cannot read body", r.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalJson)
            .map_err(|e| OriginError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

fn json_rejection(r: JsonRejection) -> OriginError {
    body_rejection(r.status(), "invalid JSON body", r.body_text())
}

/// A body axum could not take: over the size limit, without the JSON content type, or
/// unreadable / malformed.
fn body_rejection(status: StatusCode, what: &str, detail: String) -> OriginError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => OriginError::TooLarge("request body is over the size limit".into()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            OriginError::UnsupportedMediaType("send the body as `Content-Type: application/json`".into())
        }
        _ => OriginError::BadRequest(format!("{what}: {detail}")),
    }
}

/// `axum::extract::Path` with our error shape (a path segment that is not valid UTF-8 once
/// percent-decoded, or does not parse).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = OriginError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r: PathRejection| OriginError::BadRequest(format!("invalid path: {}", r.body_text())))
    }
}

/// A message seq from a path: a whole number from 1.
fn path_seq(raw: &str) -> Result<Seq> {
    match raw.parse::<Seq>() {
        Ok(seq) if seq >= 1 => Ok(seq),
        _ => Err(OriginError::BadRequest(format!("seq {raw:?} is not a message seq (a whole number from 1)"))),
    }
}

/// A seq in a JSON body. JSON has one number type, and JSON Schema counts `2.0` as the integer
/// 2, so a whole number is taken in either spelling; a fraction, a negative number or one past
/// the largest seq is refused.
fn body_seq<'de, D: Deserializer<'de>>(d: D) -> Result<Seq, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(v) = n.as_u64() {
        return Ok(v);
    }
    match n.as_f64() {
        // 2^64 as f64: every whole f64 below it converts exactly.
        Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => Ok(f as Seq),
        _ => Err(serde::de::Error::custom(format!("{n} is not a whole number from 0"))),
    }
}

/// [`body_seq`] for an optional field.
fn body_seq_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Seq>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "body_seq")] Seq);
    Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(seq)| seq))
}

/// A page size from the query string: `default` when absent, else 1 to 1000.
fn page_limit(given: Option<usize>, default: usize) -> Result<usize> {
    let limit = given.unwrap_or(default);
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(OriginError::BadRequest("limit must be between 1 and 1000".into()))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` with our error shape.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = OriginError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r: QueryRejection| OriginError::BadRequest(format!("invalid query string: {}", r.body_text())))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<Arc<Origin>> for Caller {
    type Rejection = OriginError;

    async fn from_request_parts(parts: &mut Parts, origin: &Arc<Origin>) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)
            .ok_or_else(|| OriginError::Unauthorized("missing `Authorization: Bearer <token>` header".into()))?;
        accounts::authenticate(&origin.store, token).await
    }
}

fn channel_id(raw: &str) -> Result<ChannelId> {
    ChannelId::parse(raw).ok_or_else(|| OriginError::no_channel(raw))
}

fn user_id(raw: &str) -> Result<UserId> {
    UserId::parse(raw).ok_or_else(|| OriginError::NotFound(format!("user {raw} not found")))
}

fn created<T: Serialize>(body: T) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateWorkspace {
    name: String,
    admin_handle: String,
    admin_name: Option<String>,
}

async fn create_workspace(
    State(origin): State<Arc<Origin>>,
    headers: HeaderMap,
    Json(body): Json<CreateWorkspace>,
) -> Result<Response> {
    let Some(expected) = origin.config.operator_key.as_deref() else {
        return Err(OriginError::Forbidden("workspace creation is disabled: no operator_key is configured".into()));
    };
    let given = bearer(&headers).ok_or_else(|| OriginError::Unauthorized("the operator key is required".into()))?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes())) {
        return Err(OriginError::Unauthorized("wrong operator key".into()));
    }
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
struct CreateUser {
    handle: String,
    name: Option<String>,
    #[serde(default)]
    admin: bool,
}

async fn create_user(
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

async fn deactivate_user(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    set_active(&origin, &caller, &id, false).await
}

async fn reactivate_user(
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

async fn me(caller: Caller) -> Json<serde_json::Value> {
    Json(json!({ "workspace": caller.workspace, "user": caller.user }))
}

async fn new_token(State(origin): State<Arc<Origin>>, caller: Caller) -> Result<Response> {
    let token = accounts::new_token_for(&origin.store, &caller, origin.config.token_ttl_secs).await?;
    Ok(created(json!({ "token": token })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeToken {
    token: Option<String>,
}

async fn revoke_token(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    OptionalJson(body): OptionalJson<RevokeToken>,
) -> Result<Json<serde_json::Value>> {
    accounts::revoke(&origin.store, &caller, body.token.as_deref()).await?;
    Ok(Json(json!({ "revoked": true })))
}

async fn list_channels(State(origin): State<Arc<Origin>>, caller: Caller) -> Result<Json<serde_json::Value>> {
    let channels = channels::list(&origin.store, &caller).await?;
    Ok(Json(json!({ "channels": channels })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateChannel {
    name: String,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    purpose: String,
}

async fn create_channel(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Json(body): Json<CreateChannel>,
) -> Result<Response> {
    let view = channels::create(&origin.store, &caller, &body.name, body.private, &body.topic, &body.purpose).await?;
    Ok(created(json!({ "channel": view })))
}

async fn get_channel(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    let view = channels::get(&origin.store, &caller, &channel_id(&id)?).await?;
    Ok(Json(json!({ "channel": view })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateChannel {
    name: Option<String>,
    topic: Option<String>,
    purpose: Option<String>,
    archived: Option<bool>,
}

/// `PATCH /v1/channels/{id}`: rename, set topic or purpose, archive or unarchive.
async fn update_channel(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateChannel>,
) -> Result<Json<serde_json::Value>> {
    let change =
        channels::ChannelChange { name: body.name, topic: body.topic, purpose: body.purpose, archived: body.archived };
    let view = channels::update(&origin.store, &caller, &channel_id(&id)?, &change).await?;
    Ok(Json(json!({ "channel": view })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_members(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<MembersQuery>,
) -> Result<Json<serde_json::Value>> {
    let limit = page_limit(q.limit, 200)?;
    let after = q.after.as_deref().map(user_id).transpose()?;
    let members = channels::members(&origin.store, &caller, &channel_id(&id)?, after.as_ref(), limit + 1).await?;
    let has_more = members.len() > limit;
    let members: Vec<_> = members.into_iter().take(limit).collect();
    Ok(Json(json!({ "members": members, "has_more": has_more })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AddMember {
    user: Option<String>,
}

async fn add_member(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<AddMember>,
) -> Result<Json<serde_json::Value>> {
    let user = match body.user.as_deref() {
        Some(raw) => user_id(raw)?,
        None => caller.user.id.clone(),
    };
    channels::add_member(&origin.store, &caller, &channel_id(&id)?, &user).await?;
    Ok(Json(json!({ "ok": true })))
}

async fn remove_member(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, user)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    channels::remove_member(&origin.store, &caller, &channel_id(&id)?, &user_id(&user)?).await?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenDm {
    users: Vec<String>,
}

async fn open_dm(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Json(body): Json<OpenDm>,
) -> Result<Json<serde_json::Value>> {
    if body.users.is_empty() {
        return Err(OriginError::BadRequest("users must name at least one other user".into()));
    }
    let users = body.users.iter().map(|u| user_id(u)).collect::<Result<Vec<_>>>()?;
    let view = channels::open_conversation(&origin.store, &caller, &users).await?;
    Ok(Json(json!({ "channel": view })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    text: String,
    client_msg_id: String,
    #[serde(default, deserialize_with = "body_seq_opt")]
    thread_root: Option<Seq>,
}

async fn post_message(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<PostMessage>,
) -> Result<Response> {
    let request = SendRequest {
        workspace: caller.workspace.clone(),
        channel: channel_id(&id)?,
        user: caller.user.id.clone(),
        text: body.text,
        client_msg_id: body.client_msg_id,
        thread_root: body.thread_root,
    };
    let sent = origin.sequencer.send(request).await?;
    let status = if sent.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    let m = &sent.message;
    let body = json!({
        "channel": m.channel, "seq": m.seq, "ts": m.ts, "cursor": sent.cursor,
        "duplicate": sent.duplicate, "message": m,
    });
    Ok((status, axum::Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditMessage {
    text: String,
}

/// `PATCH /v1/channels/{id}/messages/{seq}`: the author (or an admin) replaces the text.
async fn edit_message(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
    Json(body): Json<EditMessage>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message =
        messages::edits::edit(&origin.store, &caller, &channel_id(&id)?, seq, &body.text, &origin.presence).await?;
    Ok(Json(json!({ "message": message })))
}

/// `DELETE /v1/channels/{id}/messages/{seq}`: the author (or an admin) leaves a tombstone.
async fn delete_message(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message = messages::edits::delete(&origin.store, &caller, &channel_id(&id)?, seq).await?;
    Ok(Json(json!({ "message": message })))
}

/// `PUT /v1/channels/{id}/messages/{seq}/reactions/{emoji}`: idempotent.
async fn add_reaction(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq, emoji)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message = messages::edits::react(&origin.store, &caller, &channel_id(&id)?, seq, &emoji, true).await?;
    Ok(Json(json!({ "message": message })))
}

/// `DELETE /v1/channels/{id}/messages/{seq}/reactions/{emoji}`: idempotent.
async fn remove_reaction(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq, emoji)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message = messages::edits::react(&origin.store, &caller, &channel_id(&id)?, seq, &emoji, false).await?;
    Ok(Json(json!({ "message": message })))
}

/// `PUT /v1/channels/{id}/messages/{seq}/follow`: get the thread's replies.
async fn follow_thread(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message = messages::edits::follow(&origin.store, &caller, &channel_id(&id)?, seq, true).await?;
    Ok(Json(json!({ "message": message })))
}

/// `DELETE /v1/channels/{id}/messages/{seq}/follow`: stop getting the thread's replies.
async fn unfollow_thread(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message = messages::edits::follow(&origin.store, &caller, &channel_id(&id)?, seq, false).await?;
    Ok(Json(json!({ "message": message })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkRead {
    #[serde(deserialize_with = "body_seq")]
    seq: Seq,
}

/// `PUT /v1/channels/{id}/read {seq}`: moves the caller's read marker forward (never back).
async fn mark_read(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<MarkRead>,
) -> Result<Json<serde_json::Value>> {
    let c = channel_id(&id)?;
    let seq = read_markers::mark(&origin.store, &caller, &c, body.seq).await?;
    Ok(Json(json!({ "channel": c, "read_seq": seq })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    before: Option<Seq>,
    after: Option<Seq>,
    limit: Option<usize>,
}

async fn history_page(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<history::Page>> {
    let bounds = history::Bounds { before: q.before, after: q.after, limit: q.limit.unwrap_or(100) };
    Ok(Json(history::page(&origin.store, &caller, &channel_id(&id)?, bounds).await?))
}

/// `GET /v1/channels/{id}/messages/{seq}/thread`: a page of a thread's replies.
async fn thread_page(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, root)): Path<(String, String)>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<history::Page>> {
    let root = path_seq(&root)?;
    let bounds = history::Bounds { before: q.before, after: q.after, limit: q.limit.unwrap_or(100) };
    Ok(Json(history::thread(&origin.store, &caller, &channel_id(&id)?, root, bounds).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    cursor: Option<String>,
    wait_ms: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct EventsPage {
    events: Vec<ServerFrame>,
    cursor: selvage_shared::Cursor,
    #[serde(skip_serializing_if = "Option::is_none")]
    resync: Option<String>,
}

/// `GET /v1/events`: the long-poll fallback. Without a cursor it answers at once with the
/// current head cursor. With one, it returns the caller-visible events after it, waiting up to
/// `wait_ms` for some to arrive; the returned cursor resumes exactly after the last event read.
async fn events(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventsPage>> {
    let limit = page_limit(q.limit, 100)?;
    let Some(raw) = q.cursor.as_deref() else {
        let head = origin.feed.head().await?;
        return Ok(Json(EventsPage { events: Vec::new(), cursor: feed::cursor(&head), resync: None }));
    };
    let mut pos = feed::parse_cursor(raw).ok_or_else(|| OriginError::BadRequest(format!("{raw:?} is not a cursor")))?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(origin.config.feed.max_wait_ms));
    let deadline = tokio::time::Instant::now() + wait;
    let mut wake = origin.feed.subscribe();
    let mut visibility = Visibility::default();
    origin.metrics.feed_waiters.inc();
    let _waiting = scopeguard(|| origin.metrics.feed_waiters.dec());
    loop {
        wake.borrow_and_update();
        match origin.feed.read_after(&pos, limit).await? {
            Read::Resync { .. } => {
                let head = origin.feed.head().await?;
                let reason =
                    "the cursor is older than the feed's retention; reload state and continue from this cursor";
                return Ok(Json(EventsPage {
                    events: Vec::new(),
                    cursor: feed::cursor(&head),
                    resync: Some(reason.into()),
                }));
            }
            Read::Events { items, next } => {
                let read_any = !items.is_empty();
                let events = visibility.filter(&origin, &caller, items).await?;
                pos = next;
                let now = tokio::time::Instant::now();
                if !events.is_empty() || now >= deadline {
                    return Ok(Json(EventsPage { events, cursor: feed::cursor(&pos), resync: None }));
                }
                if !read_any && tokio::time::timeout_at(deadline, wake.changed()).await.is_err() {
                    return Ok(Json(EventsPage { events, cursor: feed::cursor(&pos), resync: None }));
                }
            }
        }
    }
}

/// Runs `f` when dropped: keeps a gauge right however a handler exits.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Which feed events one caller may see, with channel visibility looked up once per channel.
#[derive(Default)]
struct Visibility {
    channels: HashMap<ChannelId, bool>,
}

impl Visibility {
    async fn filter(
        &mut self,
        origin: &Origin,
        caller: &Caller,
        items: Vec<(Position, FeedEvent)>,
    ) -> Result<Vec<ServerFrame>> {
        let mut out = Vec::new();
        for (pos, record) in items {
            if record.workspace != caller.workspace || record.event.is_internal() {
                continue;
            }
            let visible = match &record.event {
                Event::ReadMarker { user, .. } => *user == caller.user.id,
                Event::MemberJoined { user, .. } | Event::MemberLeft { user, .. } if *user == caller.user.id => true,
                event => match event.channel() {
                    None => true,
                    Some(c) => self.channel(origin, caller, c).await?,
                },
            };
            if visible {
                out.push(ServerFrame::Event(EventFrame { cursor: feed::cursor(&pos), event: record.event }));
            }
        }
        Ok(out)
    }

    async fn channel(&mut self, origin: &Origin, caller: &Caller, c: &ChannelId) -> Result<bool> {
        if let Some(v) = self.channels.get(c) {
            return Ok(*v);
        }
        let (visible, _) = crate::transact!(origin.store, |tx| {
            channels::records::visible_channel(tx, caller, c).await?.is_some()
        })?;
        self.channels.insert(c.clone(), visible);
        Ok(visible)
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when storage answers a read within a second and the sequencer is running.
async fn readyz(State(origin): State<Arc<Origin>>) -> Response {
    let probe = async {
        let mut tx = origin.store.begin().await?;
        tx.get(&crate::store::keys::meta("readyz")).await?;
        Ok::<_, crate::store::StoreError>(())
    };
    let answers = matches!(tokio::time::timeout(Duration::from_secs(1), probe).await, Ok(Ok(())));
    // Reads that answer are not enough: a store that refuses writes (a full disk) is not ready.
    let cannot_write = origin.store.write_problem();
    let store_ok = answers && cannot_write.is_none();
    let sequencer_ok = !origin.shutdown.is_cancelled();
    if store_ok && sequencer_ok {
        return axum::Json(json!({ "ready": true, "store": true, "sequencer": true })).into_response();
    }
    // Not ready is a 503 like any other: the error shape (with the request id) beside the
    // probe's fields.
    let id = RequestId::current().unwrap_or_default();
    let why = match (answers, cannot_write) {
        (false, _) => "storage does not answer".to_string(),
        (true, Some(problem)) => format!("storage cannot take writes: {problem}"),
        (true, None) => "the sequencer is stopping".to_string(),
    };
    tracing::warn!(request.id = %id, store = store_ok, sequencer = sequencer_ok, "not ready: {why}");
    let body = json!({
        "ready": false, "store": store_ok, "sequencer": sequencer_ok,
        "error": { "code": "unavailable", "message": format!("not ready: {why}"), "request_id": id.to_string() },
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response.extensions_mut().insert(ErrorShape);
    response
}

async fn metrics(State(origin): State<Arc<Origin>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], origin.metrics.render()).into_response()
}

async fn not_found() -> OriginError {
    OriginError::NotFound("no such route; see /v1/openapi.json".into())
}

async fn method_not_allowed() -> OriginError {
    OriginError::MethodNotAllowed("method not allowed on this route; see /v1/openapi.json".into())
}

#[cfg(test)]
mod tests {
    /// Every route the router serves is in the OpenAPI document with each of its methods, so a
    /// new endpoint cannot ship undocumented — and so untested by CI's schemathesis run, which
    /// knows only the document. Read from this file's source: the router's table is its truth.
    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let mut routes = 0;
        for line in include_str!("api.rs").lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
            let path = line.split('"').nth(1).unwrap();
            for method in ["get", "post", "put", "patch", "delete"] {
                if [" ", "."].iter().any(|before| line.contains(&format!("{before}{method}("))) {
                    routes += 1;
                    assert!(doc["paths"][path][method].is_object(), "{method} {path} is not in openapi.json");
                }
            }
        }
        assert!(routes >= 29, "only {routes} routes found: has the router's layout changed?");
    }
}
