//! The origin's HTTP API, version 1 (ARCHITECTURE §5), on axum.
//!
//! Handlers are thin: extract and check the request, call the domain module that owns the
//! concept, and render the result. One handler module per service — `accounts` (workspaces,
//! users, tokens), `channels` (channels, members, DMs, read markers), `messages` (posting,
//! changes, history), `events` (the long-poll feed), `files` (uploads and downloads), `search`
//! and `backup` (the operator's online backup) — with the extractors they share in `extract`,
//! and the rendering of errors in [`error`]. Every rejection axum would produce (bad
//! JSON, unknown fields, oversized bodies, a missing content type, bad query strings or path
//! parameters, unknown routes, wrong methods) is turned into ARCHITECTURE §5's
//! `{"error": {"code", "message"}}` shape, and the middleware here ([`track`]) re-renders
//! anything else that would leave in another shape, a panic included.
//!
//! Every request gets a [`RequestId`]: answered in `x-request-id`, carried by its log lines and by
//! the body of a 5xx. `openapi.json` describes all of it; CI checks the server against it with
//! schemathesis (`origin/tests/schemathesis/run.sh`).

mod accounts;
mod apps;
mod backup;
mod channels;
pub mod error;
mod events;
mod extract;
mod files;
mod messages;
mod notify;
mod scopes;
mod search;

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{header, HeaderName, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, patch, post, put},
    Router,
};
use futures::FutureExt;
use serde_json::json;
use tracing::Instrument;

use self::{
    accounts::{create_user, create_workspace, deactivate_user, me, new_token, reactivate_user, revoke_token},
    channels::{
        add_member, create_channel, get_channel, list_channels, list_members, mark_read, open_dm, remove_member,
        update_channel,
    },
    error::ErrorShape,
    events::events,
    files::{
        channel_files, complete_file, create_file, delete_file, file_content, file_thumb, get_file, require_files,
    },
    messages::{
        add_reaction, delete_message, edit_message, follow_thread, history_page, post_message, remove_reaction,
        thread_page, unfollow_thread,
    },
};
use crate::{
    error::{OriginError, RequestId},
    Origin,
};

/// Builds the router with every route, the body limit and the metrics middleware.
pub fn router(origin: Arc<Origin>) -> Router {
    let body_limit = origin.config.max_body_bytes;
    // Files answer 404 as a whole while they are off, token or not (ARCHITECTURE §8 "Files").
    let files = Router::new()
        .route("/v1/files", post(create_file))
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
        .route("/v1/files/{id}/complete", post(complete_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/files/{id}/thumbs/{size}", get(file_thumb))
        .route("/v1/channels/{id}/files", get(channel_files))
        .route_layer(middleware::from_fn_with_state(origin.clone(), require_files));
    Router::new()
        .route("/v1/workspaces", post(create_workspace))
        .route("/v1/users", post(create_user))
        .route("/v1/users/{id}/deactivate", post(deactivate_user))
        .route("/v1/users/{id}/reactivate", post(reactivate_user))
        .route("/v1/me", get(me))
        .route("/v1/tokens", post(new_token))
        .route("/v1/tokens/revoke", post(revoke_token))
        .route("/v1/apps", get(apps::list_apps).post(apps::create_app))
        .route("/v1/apps/{id}", get(apps::get_app).delete(apps::delete_app))
        .route("/v1/apps/{id}/tokens", post(apps::new_app_token))
        .route("/v1/apps/{id}/deliveries", get(apps::app_deliveries))
        .route("/v1/apps/{id}/webhooks", get(apps::list_webhooks).post(apps::create_webhook))
        .route("/v1/apps/{id}/webhooks/{hook}", get(apps::get_hook).patch(apps::update_hook).delete(apps::delete_hook))
        .route("/v1/apps/{id}/webhooks/{hook}/rotate", post(apps::rotate_webhook))
        .route("/v1/apps/{id}/webhooks/{hook}/deliveries", get(apps::webhook_deliveries))
        .route("/v1/apps/{id}/webhooks/{hook}/replay", post(apps::replay_webhook))
        .route("/v1/apps/{id}/incoming", get(apps::list_incoming).post(apps::create_incoming))
        .route("/v1/apps/{id}/incoming/{hook}", delete(apps::delete_incoming))
        .route("/v1/hooks/{secret}", post(apps::post_incoming))
        .route("/v1/apps/{id}/commands", get(apps::list_commands).post(apps::create_command))
        .route("/v1/apps/{id}/commands/{name}", delete(apps::delete_command))
        .route("/v1/apps/{id}/commands/{name}/rotate", post(apps::rotate_command))
        .route("/v1/commands", get(apps::workspace_commands))
        .route("/v1/commands/respond/{secret}", post(apps::command_response))
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
        .route("/v1/search", get(search::search_messages))
        .route("/v1/notifications/prefs", get(notify::get_prefs).put(notify::put_prefs))
        .route("/v1/notifications/unsubscribe", get(notify::unsubscribe_page).post(notify::unsubscribe_email))
        .route("/v1/push/key", get(notify::push_key))
        .route("/v1/push/subscriptions", post(notify::subscribe).delete(notify::unsubscribe))
        .route("/v1/admin/search/reindex", post(search::reindex))
        .route("/v1/admin/backup", get(backup::backup))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(files)
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

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when storage answers a read within a second and the sequencer is running — and, with
/// files enabled, when their bucket answers within a second too.
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
    let files_ok = match &origin.files {
        Some(files) => Some(matches!(tokio::time::timeout(Duration::from_secs(1), files.ready()).await, Ok(Ok(())))),
        None => None,
    };
    if store_ok && sequencer_ok && files_ok != Some(false) {
        let mut body = json!({ "ready": true, "store": true, "sequencer": true });
        if files_ok.is_some() {
            body["files"] = json!(true);
        }
        return axum::Json(body).into_response();
    }
    // Not ready is a 503 like any other: the error shape (with the request id) beside the
    // probe's fields.
    let id = RequestId::current().unwrap_or_default();
    let why = match (answers, cannot_write) {
        (false, _) => "storage does not answer".to_string(),
        (true, Some(problem)) => format!("storage cannot take writes: {problem}"),
        (true, None) if !sequencer_ok => "the sequencer is stopping".to_string(),
        (true, None) => "the files bucket does not answer".to_string(),
    };
    tracing::warn!(request.id = %id, store = store_ok, sequencer = sequencer_ok, files = ?files_ok, "not ready: {why}");
    let mut body = json!({
        "ready": false, "store": store_ok, "sequencer": sequencer_ok,
        "error": { "code": "unavailable", "message": format!("not ready: {why}"), "request_id": id.to_string() },
    });
    if let Some(files_ok) = files_ok {
        body["files"] = json!(files_ok);
    }
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
        for line in include_str!("mod.rs").lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
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
