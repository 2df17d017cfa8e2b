//! Handlers of notifications: the caller's preferences (`GET`/`PUT /v1/notifications/prefs`)
//! and Web Push subscriptions (`GET /v1/push/key`, `POST`/`DELETE /v1/push/subscriptions`)
//! (ARCHITECTURE §8 "Notifications"). Every route acts on the caller's own records only: there
//! is no user id in any path, so nobody can read or change another user's.

use std::sync::Arc;

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use selvage_shared::{NotifyPrefs, PushSubscriptionJson};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{Json, Query};
use crate::{
    caller::Caller,
    error::{OriginError, Result},
    notify::{self, Notify},
    Origin,
};

/// The notification service, or the `404` of an origin without it.
fn service(origin: &Origin) -> Result<&Notify> {
    origin.notify.as_ref().ok_or_else(|| OriginError::NotFound(notify::DISABLED.into()))
}

/// `GET /v1/notifications/prefs`: the caller's preferences (defaults if never set).
pub(super) async fn get_prefs(State(origin): State<Arc<Origin>>, caller: Caller) -> Result<Json<NotifyPrefs>> {
    service(&origin)?;
    Ok(Json(notify::get_prefs(&origin.store, &caller).await?))
}

/// `PUT /v1/notifications/prefs`: replaces the caller's preferences; answers them as stored.
pub(super) async fn put_prefs(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Json(prefs): Json<NotifyPrefs>,
) -> Result<Json<NotifyPrefs>> {
    service(&origin)?;
    Ok(Json(notify::put_prefs(&origin.store, &caller, prefs).await?))
}

/// `GET /v1/push/key`: the key browsers subscribe with (`applicationServerKey`).
pub(super) async fn push_key(State(origin): State<Arc<Origin>>, _caller: Caller) -> Result<Json<Value>> {
    Ok(Json(json!({ "public_key": service(&origin)?.public_key() })))
}

/// `POST /v1/push/subscriptions`: registers a browser's `PushSubscription.toJSON()`.
pub(super) async fn subscribe(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Json(s): Json<PushSubscriptionJson>,
) -> Result<Json<Value>> {
    service(&origin)?.subscribe(&origin.store, &caller, &s).await?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Endpoint {
    endpoint: String,
}

/// `DELETE /v1/push/subscriptions` with `{"endpoint": …}`: removes one of the caller's.
pub(super) async fn unsubscribe(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Json(e): Json<Endpoint>,
) -> Result<Json<Value>> {
    let removed = service(&origin)?.unsubscribe(&origin.store, &caller, &e.endpoint).await?;
    match removed {
        true => Ok(Json(json!({ "ok": true }))),
        false => Err(OriginError::NotFound("no push subscription with this endpoint".into())),
    }
}

#[derive(Deserialize)]
pub(super) struct UnsubscribeQuery {
    token: String,
}

/// The unsubscribe pages are for people following a link in a mail: plain HTML that loads
/// nothing, runs nothing and posts only to itself.
fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{title}</h1>{body}</body></html>"
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

fn refused() -> OriginError {
    OriginError::NotFound("this unsubscribe link is not valid (or its user is gone)".into())
}

/// `GET /v1/notifications/unsubscribe?token=`: the page an email's link opens. It changes
/// nothing (mail scanners open links): its button posts the same URL.
pub(super) async fn unsubscribe_page(
    State(origin): State<Arc<Origin>>,
    Query(q): Query<UnsubscribeQuery>,
) -> Result<Response> {
    let handle = service(&origin)?.unsubscribe_email(&origin.store, &q.token, false).await?.ok_or_else(refused)?;
    let body = format!(
        "<p>Stop email notifications for <strong>@{}</strong>? Push notifications stay as they are.</p>\
         <form method=\"post\"><button type=\"submit\">Unsubscribe</button></form>",
        notify::email::escape(&handle)
    );
    Ok(page("Unsubscribe from emails", &body))
}

/// `POST /v1/notifications/unsubscribe?token=`: turns the user's email off — the page's button,
/// and the one-click unsubscribe of RFC 8058 that mail clients send (its form body is ignored).
pub(super) async fn unsubscribe_email(
    State(origin): State<Arc<Origin>>,
    Query(q): Query<UnsubscribeQuery>,
) -> Result<Response> {
    let handle = service(&origin)?.unsubscribe_email(&origin.store, &q.token, true).await?.ok_or_else(refused)?;
    let body = format!(
        "<p>You will get no more notification emails as <strong>@{}</strong>. To have them again, turn email \
         on in your notification preferences.</p>",
        notify::email::escape(&handle)
    );
    Ok(page("Unsubscribed", &body))
}
