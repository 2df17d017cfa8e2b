//! Handlers of messages: posting, editing, deleting, reactions, following threads, and reading
//! history and threads back: `/v1/channels/{id}/messages…`.

use std::sync::Arc;

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use selvage_shared::Seq;
use serde::Deserialize;
use serde_json::json;

use super::extract::{body_seq_opt, channel_id, path_seq, Json, Path, Query};
use crate::{
    caller::Caller,
    error::Result,
    messages::{edits, history, sequencer::SendRequest},
    Origin,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PostMessage {
    text: String,
    client_msg_id: String,
    #[serde(default, deserialize_with = "body_seq_opt")]
    thread_root: Option<Seq>,
}

pub(super) async fn post_message(
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
        files: Vec::new(),
    };
    if let Some((command, answer)) = origin.commands.run(&origin, &request).await? {
        return Ok(axum::Json(json!({ "command": command, "answer": answer })).into_response());
    }
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
pub(super) struct EditMessage {
    text: String,
}

/// `PATCH /v1/channels/{id}/messages/{seq}`: the author (or an admin) replaces the text.
pub(super) async fn edit_message(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
    Json(body): Json<EditMessage>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message = edits::edit(&origin.store, &caller, &channel_id(&id)?, seq, &body.text, &origin.presence).await?;
    Ok(Json(json!({ "message": message })))
}

/// `DELETE /v1/channels/{id}/messages/{seq}`: the author (or an admin) leaves a tombstone.
pub(super) async fn delete_message(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let channel = channel_id(&id)?;
    let message = edits::delete(&origin.store, &caller, &channel, seq).await?;
    if let Some(files) = &origin.files {
        // A deleted message takes its files with it (ARCHITECTURE §8 "Files").
        files.message_deleted(&origin.store, &caller.workspace, &channel, seq).await?;
    }
    Ok(Json(json!({ "message": message })))
}

/// `PUT /v1/channels/{id}/messages/{seq}/reactions/{emoji}`: idempotent.
pub(super) async fn add_reaction(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq, emoji)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message = edits::react(&origin.store, &caller, &channel_id(&id)?, seq, &emoji, true).await?;
    Ok(Json(json!({ "message": message })))
}

/// `DELETE /v1/channels/{id}/messages/{seq}/reactions/{emoji}`: idempotent.
pub(super) async fn remove_reaction(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq, emoji)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message = edits::react(&origin.store, &caller, &channel_id(&id)?, seq, &emoji, false).await?;
    Ok(Json(json!({ "message": message })))
}

/// `PUT /v1/channels/{id}/messages/{seq}/follow`: get the thread's replies.
pub(super) async fn follow_thread(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message = edits::follow(&origin.store, &caller, &channel_id(&id)?, seq, true).await?;
    Ok(Json(json!({ "message": message })))
}

/// `DELETE /v1/channels/{id}/messages/{seq}/follow`: stop getting the thread's replies.
pub(super) async fn unfollow_thread(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>> {
    let seq = path_seq(&seq)?;
    let message = edits::follow(&origin.store, &caller, &channel_id(&id)?, seq, false).await?;
    Ok(Json(json!({ "message": message })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    before: Option<Seq>,
    after: Option<Seq>,
    limit: Option<usize>,
}

pub(super) async fn history_page(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<history::Page>> {
    let bounds = history::Bounds { before: q.before, after: q.after, limit: q.limit.unwrap_or(100) };
    Ok(Json(history::page(&origin.store, &caller, &channel_id(&id)?, bounds).await?))
}

/// `GET /v1/channels/{id}/messages/{seq}/thread`: a page of a thread's replies.
pub(super) async fn thread_page(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, root)): Path<(String, String)>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<history::Page>> {
    let root = path_seq(&root)?;
    let bounds = history::Bounds { before: q.before, after: q.after, limit: q.limit.unwrap_or(100) };
    Ok(Json(history::thread(&origin.store, &caller, &channel_id(&id)?, root, bounds).await?))
}
