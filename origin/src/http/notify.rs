//! Handlers of notifications: the caller's preferences (`GET`/`PUT /v1/notifications/prefs`)
//! and Web Push subscriptions (`GET /v1/push/key`, `POST`/`DELETE /v1/push/subscriptions`)
//! (ARCHITECTURE §8 "Notifications"). Every route acts on the caller's own records only: there
//! is no user id in any path, so nobody can read or change another user's.

use std::sync::Arc;

use axum::extract::State;
use selvage_shared::{NotifyPrefs, PushSubscriptionJson};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Json;
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
