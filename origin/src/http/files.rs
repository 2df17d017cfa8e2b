//! Handlers of files: `/v1/files…` and `/v1/channels/{id}/files` (ARCHITECTURE §8 "Files").
//! The rules and the storage access live in [`crate::files`]; this parses and renders. Every
//! route answers `404` to an authenticated caller while files are not enabled
//! ([`require_files`]).

use std::sync::Arc;

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use selvage_shared::Seq;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::extract::{body_seq, body_seq_opt, channel_id, page_limit, Json, Path, Query};
use crate::{
    caller::Caller,
    error::{OriginError, Result},
    files::{self, Files, Presigned, Share},
    Origin,
};

/// Answers `404` on every files route of an origin without files, once the token is checked
/// (a request without a valid one gets `401`, as on every other route).
pub(super) async fn require_files(State(origin): State<Arc<Origin>>, request: Request, next: Next) -> Response {
    match origin.files {
        Some(_) => next.run(request).await,
        None => {
            let (mut parts, _) = request.into_parts();
            match Caller::from_request_parts(&mut parts, &origin).await {
                Ok(_) => OriginError::NotFound(files::DISABLED.into()).into_response(),
                Err(unauthorized) => unauthorized.into_response(),
            }
        }
    }
}

/// The files service; [`require_files`] has made sure there is one.
fn service(origin: &Origin) -> Result<&Files> {
    origin.files.as_ref().ok_or_else(|| OriginError::NotFound(files::DISABLED.into()))
}

/// A presigned URL as the API shows it.
fn presigned(p: &Presigned) -> Value {
    let headers: Map<String, Value> = p.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    json!({ "url": p.url, "method": p.method, "headers": headers, "expires_at": p.expires_at })
}

/// Headers of every answer that hands out a download URL: not cached, not sniffed.
fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateFile {
    name: String,
    #[serde(deserialize_with = "body_seq")]
    size: u64,
    content_type: String,
}

/// `POST /v1/files`: declare a file, get its upload URL.
pub(super) async fn create_file(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Json(body): Json<CreateFile>,
) -> Result<Response> {
    let created = service(&origin)?.create(&origin.store, &caller, &body.name, body.size, &body.content_type).await?;
    let body = json!({ "file": created.file, "upload": presigned(&created.upload) });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CompleteFile {
    channel: String,
    client_msg_id: String,
    #[serde(default)]
    text: String,
    #[serde(default, deserialize_with = "body_seq_opt")]
    thread_root: Option<Seq>,
}

/// `POST /v1/files/{id}/complete`: check the upload and share it in a channel.
pub(super) async fn complete_file(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<CompleteFile>,
) -> Result<Response> {
    let share = Share {
        channel: channel_id(&body.channel)?,
        client_msg_id: body.client_msg_id,
        text: body.text,
        thread_root: body.thread_root,
    };
    let done = service(&origin)?.complete(&origin.store, &origin.sequencer, &caller, &id, share).await?;
    let sent = &done.sent;
    let m = &sent.message;
    let status = if sent.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    let body = json!({
        "file": done.file, "channel": m.channel, "seq": m.seq, "ts": m.ts, "cursor": sent.cursor,
        "duplicate": sent.duplicate, "message": m,
    });
    Ok((status, axum::Json(body)).into_response())
}

/// `GET /v1/files/{id}`: metadata and download URLs, of the file and of its thumbnails.
pub(super) async fn get_file(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let got = service(&origin)?.get(&origin.store, &caller, &id).await?;
    let thumbs: Vec<Value> = got
        .thumbs
        .iter()
        .map(|(t, url)| json!({ "size": t.size, "width": t.width, "height": t.height, "download": presigned(url) }))
        .collect();
    let body = json!({ "file": got.file, "download": presigned(&got.download), "thumbs": thumbs });
    Ok(guarded(axum::Json(body).into_response()))
}

/// `GET /v1/files/{id}/thumbs/{size}`: `302` to the thumbnail's download URL.
pub(super) async fn file_thumb(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path((id, size)): Path<(String, String)>,
) -> Result<Response> {
    // Anything but a size answers like a size the file has no thumbnail of.
    let Ok(size) = size.parse::<u32>() else {
        return Err(OriginError::NotFound(format!("file {id} has no thumbnail of size {size}")));
    };
    let url = service(&origin)?.thumb(&origin.store, &caller, &id, size).await?;
    redirect(&url)
}

/// `GET /v1/files/{id}/content`: `302` to the download URL.
pub(super) async fn file_content(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let got = service(&origin)?.get(&origin.store, &caller, &id).await?;
    redirect(&got.download)
}

/// A `302` to a presigned URL.
fn redirect(url: &Presigned) -> Result<Response> {
    let location = HeaderValue::from_str(&url.url)
        .map_err(|e| OriginError::Internal(format!("a presigned URL is not a header value: {e}")))?;
    Ok(guarded((StatusCode::FOUND, [(header::LOCATION, location)]).into_response()))
}

/// `DELETE /v1/files/{id}`: the uploader or an admin.
pub(super) async fn delete_file(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let file = service(&origin)?.delete(&origin.store, &caller, &id).await?;
    Ok(Json(json!({ "file": file })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilesQuery {
    before: Option<Seq>,
    limit: Option<usize>,
}

/// `GET /v1/channels/{id}/files`: a channel's files, newest first.
pub(super) async fn channel_files(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<FilesQuery>,
) -> Result<Json<Value>> {
    let limit = page_limit(q.limit, 100)?;
    let page = service(&origin)?.list(&origin.store, &caller, &channel_id(&id)?, q.before, limit).await?;
    Ok(Json(json!({ "files": page.files, "has_more": page.has_more })))
}
