//! Handlers of channels, their members, DMs and read markers: `/v1/channels…`, `/v1/dms`.

use std::sync::Arc;

use axum::{extract::State, response::Response};
use selvage_shared::Seq;
use serde::Deserialize;
use serde_json::json;

use super::extract::{body_seq, channel_id, created, page_limit, user_id, Json, OptionalJson, Path, Query};
use crate::{
    caller::Caller,
    channels::{self, read_markers},
    error::{OriginError, Result},
    Origin,
};

pub(super) async fn list_channels(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
) -> Result<Json<serde_json::Value>> {
    let channels = channels::list(&origin.store, &caller).await?;
    Ok(Json(json!({ "channels": channels })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateChannel {
    name: String,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    purpose: String,
}

pub(super) async fn create_channel(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Json(body): Json<CreateChannel>,
) -> Result<Response> {
    let view = channels::create(&origin.store, &caller, &body.name, body.private, &body.topic, &body.purpose).await?;
    Ok(created(json!({ "channel": view })))
}

pub(super) async fn get_channel(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    let view = channels::get(&origin.store, &caller, &channel_id(&id)?).await?;
    Ok(Json(json!({ "channel": view })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateChannel {
    name: Option<String>,
    topic: Option<String>,
    purpose: Option<String>,
    archived: Option<bool>,
}

/// `PATCH /v1/channels/{id}`: rename, set topic or purpose, archive or unarchive.
pub(super) async fn update_channel(
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
pub(super) struct MembersQuery {
    after: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list_members(
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
pub(super) struct AddMember {
    user: Option<String>,
}

pub(super) async fn add_member(
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

pub(super) async fn remove_member(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, user)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    channels::remove_member(&origin.store, &caller, &channel_id(&id)?, &user_id(&user)?).await?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenDm {
    users: Vec<String>,
}

pub(super) async fn open_dm(
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
pub(super) struct MarkRead {
    #[serde(deserialize_with = "body_seq")]
    seq: Seq,
}

/// `PUT /v1/channels/{id}/read {seq}`: moves the caller's read marker forward (never back).
pub(super) async fn mark_read(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<MarkRead>,
) -> Result<Json<serde_json::Value>> {
    let c = channel_id(&id)?;
    let seq = read_markers::mark(&origin.store, &caller, &c, body.seq).await?;
    Ok(Json(json!({ "channel": c, "read_seq": seq })))
}
