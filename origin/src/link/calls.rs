//! Calls streams: every call an edge makes runs as its own task, at most [`CALLS_IN_FLIGHT`] at
//! once per stream, and the replies go back through one writer task over a bounded queue. The
//! calls about ephemeral state (relays, presence) are answered in order on the reader.
//!
//! A call is the link's request handler: it checks what the edge sent, calls the domain module
//! that owns it, and maps a failure through [`OriginError::code`] and
//! [`OriginError::client_message`], as the HTTP API does.

use std::sync::Arc;

use selvage_net::quic::{write_frames, FrameReadError, FrameReader};
use selvage_shared::{
    link::{Answer, Call, LinkCall, LinkError},
    Cursor, ErrorCode, FeedItem, WorkspaceId,
};
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};
use tracing::Instrument;

use super::{
    encode_reply, link_error, Ctx, CALLS_IN_FLIGHT, CALL_TIMEOUT, EVENTS_SCAN_BUDGET, FEED_BATCH, MAX_CALL_FRAME_BYTES,
    REPLY_QUEUE, WRITE_TIMEOUT,
};
use crate::{
    accounts,
    channels::read_markers,
    error::{OriginError, RequestId},
    feed::{self, relay::Relayed, Feed, Position, Read},
    messages::{history, sequencer::SendRequest},
    notify, presence,
    search::{self, Ask},
    snapshot, Origin,
};

/// Just the id of a call that does not decode as a whole, so its error can still be matched to
/// it by the edge.
#[derive(Deserialize)]
struct CallId {
    id: u64,
}

/// Reads calls until the edge finishes the stream, runs each as its own task, and writes the
/// replies through one writer task.
pub(super) async fn calls_stream(ctx: &Arc<Ctx>, send: quinn::SendStream, recv: quinn::RecvStream, edge_id: &Arc<str>) {
    let (replies, queue) = mpsc::channel::<Vec<u8>>(REPLY_QUEUE);
    let writer = tokio::spawn(write_replies(send, queue));
    let slots = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let metrics = &ctx.origin.metrics;
    let mut calls = FrameReader::new(recv);
    loop {
        let frame = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            frame = calls.read_frame(MAX_CALL_FRAME_BYTES) => frame,
        };
        let bytes = match frame {
            Ok(Some(bytes)) => bytes,
            Ok(None) => break,
            Err(FrameReadError::Read(e)) => {
                tracing::debug!(error = %e, "calls stream read failed");
                break;
            }
            Err(FrameReadError::Truncated { .. }) => break,
            Err(FrameReadError::TooLarge(e)) => {
                // The stream cannot be resynchronised past a frame that is not read: answer and end.
                metrics.link_calls.with_label_values(&["invalid"]).inc();
                let error = link_error(ErrorCode::TooLarge, format!("call frame refused: {e}"));
                let _ = replies.send(encode_reply(0, Err(error))).await;
                let _ = calls.stream().stop(0u32.into());
                break;
            }
        };
        let call = match selvage_shared::from_msgpack::<LinkCall>(&bytes) {
            Ok(call) if call.id != 0 => call,
            Ok(_) => {
                metrics.link_calls.with_label_values(&["invalid"]).inc();
                let error = link_error(ErrorCode::BadFrame, "call id 0 is reserved; number calls from 1");
                if replies.send(encode_reply(0, Err(error))).await.is_err() {
                    break;
                }
                continue;
            }
            Err(e) => {
                metrics.link_calls.with_label_values(&["invalid"]).inc();
                let id = selvage_shared::from_msgpack::<CallId>(&bytes).map(|c| c.id).unwrap_or(0);
                let error = link_error(ErrorCode::BadFrame, format!("call does not decode: {e}"));
                if replies.send(encode_reply(id, Err(error))).await.is_err() {
                    break;
                }
                continue;
            }
        };
        // Ephemeral calls are answered here, in order and without a task: each is a hand-over
        // to memory, and a user's presence reports must be taken in the order the edge sent them.
        if let Some(reply) = ephemeral(&ctx.origin, edge_id, &call.call) {
            metrics.link_calls.with_label_values(&[call.call.name()]).inc();
            if replies.send(encode_reply(call.id, reply)).await.is_err() {
                break;
            }
            continue;
        }
        let slot = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let name = call.call.name();
        metrics.link_calls.with_label_values(&[name]).inc();
        let (ctx, replies) = (ctx.clone(), replies.clone());
        let span = tracing::debug_span!("link_call", call.id = call.id, call = name);
        ctx.tracker.clone().spawn(
            async move {
                let reply = run_call(&ctx.origin, call.call).await;
                let _ = replies.send(encode_reply(call.id, reply)).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
    // The writer ends once every running call has sent its reply.
    drop(replies);
    if let Err(e) = writer.await {
        tracing::error!(error = %e, "calls writer failed");
    }
}

/// Answers the calls about ephemeral state (relays, presence) at once; `None` for the rest.
fn ephemeral(origin: &Origin, edge_id: &Arc<str>, call: &Call) -> Option<Result<Answer, LinkError>> {
    let now = tokio::time::Instant::now();
    let reply = match call {
        Call::Relay { workspace, event } if event.is_ephemeral() => {
            let relayed =
                Relayed { from_edge: Some(edge_id.clone()), workspace: workspace.clone(), event: (**event).clone() };
            origin.relay.publish(relayed);
            Ok(Answer::Done)
        }
        Call::Relay { .. } => {
            Err(link_error(ErrorCode::BadRequest, "only ephemeral events (typing, presence) are relayed"))
        }
        Call::Presence { workspace, reports } => {
            presence::announce(&origin.relay, origin.presence.report(edge_id, workspace, reports, now));
            Ok(Answer::Done)
        }
        Call::SetDnd { workspace, user, dnd } => {
            presence::announce(&origin.relay, origin.presence.set_dnd(workspace, user, *dnd, now));
            Ok(Answer::Done)
        }
        Call::PresenceSnapshot { workspace } => Ok(Answer::Presences { users: origin.presence.online(workspace, now) }),
        _ => return None,
    };
    Some(reply)
}

async fn write_replies(mut send: quinn::SendStream, mut queue: mpsc::Receiver<Vec<u8>>) {
    match write_frames(&mut send, &mut queue, WRITE_TIMEOUT).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => {
            tracing::debug!(error = %e, "calls stream write failed");
            // Callers still sending get an error from the closed queue.
            queue.close();
        }
    }
}

/// Runs one call under [`CALL_TIMEOUT`], mapping failures through [`OriginError::code`].
async fn run_call(origin: &Origin, call: Call) -> Result<Answer, LinkError> {
    match tokio::time::timeout(CALL_TIMEOUT, answer(origin, call)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) if matches!(e.code(), ErrorCode::Internal | ErrorCode::Unavailable) => {
            // As over HTTP: a server error's detail is logged under a request id, never sent on
            // to clients; the edge passes the message, and so the id, on to its client.
            let id = RequestId::new();
            tracing::warn!(request.id = %id, code = %e.code(), error = %e, "link call failed");
            Err(link_error(e.code(), format!("{} (request_id {id})", e.client_message())))
        }
        Ok(Err(e)) => Err(link_error(e.code(), e.client_message())),
        Err(_) => Err(link_error(
            ErrorCode::Unavailable,
            format!("the origin did not answer within {} s; retry with backoff", CALL_TIMEOUT.as_secs()),
        )),
    }
}

async fn answer(origin: &Origin, call: Call) -> Result<Answer, OriginError> {
    match call {
        Call::Authenticate { token_hash } => {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&token_hash, &mut hash).map_err(|_| {
                OriginError::Unauthorized("token_hash must be the 64-hex-digit SHA-256 of the token".into())
            })?;
            let (caller, expires_at) = accounts::authenticate_hash(&origin.store, &hash).await?;
            let scopes = caller.grant.scopes();
            Ok(Answer::Principal { workspace: caller.workspace, user: caller.user.id, expires_at, scopes })
        }
        Call::Snapshot { workspace } => {
            Ok(Answer::Snapshot(Box::new(snapshot::read(&origin.store, &workspace).await?)))
        }
        Call::Send { workspace, user, channel, text, client_msg_id, thread_root } => {
            let request = SendRequest { workspace, channel, user, text, client_msg_id, thread_root, files: Vec::new() };
            if let Some((command, outcome)) = origin.commands.run(origin, &request).await? {
                return Ok(Answer::Command { command, outcome });
            }
            let sent = origin.sequencer.send(request).await?;
            Ok(Answer::Sent { message: Box::new(sent.message), cursor: sent.cursor, duplicate: sent.duplicate })
        }
        Call::History { workspace, user, channel, before, after, limit } => {
            let caller = accounts::caller_for(&origin.store, &workspace, &user).await?;
            let bounds = history::Bounds { before, after, limit: limit as usize };
            let page = history::page(&origin.store, &caller, &channel, bounds).await?;
            Ok(Answer::Messages { messages: page.messages, has_more: page.has_more })
        }
        Call::Thread { workspace, user, channel, root, before, after, limit } => {
            let caller = accounts::caller_for(&origin.store, &workspace, &user).await?;
            let bounds = history::Bounds { before, after, limit: limit as usize };
            let page = history::thread(&origin.store, &caller, &channel, root, bounds).await?;
            Ok(Answer::Messages { messages: page.messages, has_more: page.has_more })
        }
        Call::Search { workspace, user, text, sort, limit, page, wait_for } => {
            let search = origin.search.as_ref().ok_or_else(|| OriginError::NotFound(search::DISABLED.into()))?;
            let caller = accounts::caller_for(&origin.store, &workspace, &user).await?;
            let ask = Ask {
                q: text,
                sort: sort.into(),
                limit: limit.map(|l| l as usize),
                cursor: page,
                after: wait_for.map(|c| c.to_string()),
            };
            Ok(Answer::Found(search.ask(&origin.store, &caller, ask).await?))
        }
        Call::Events { workspace, after, limit } => events(&origin.feed, &workspace, &after, limit).await,
        Call::MarkRead { workspace, user, channel, seq } => {
            let caller = accounts::caller_for(&origin.store, &workspace, &user).await?;
            let seq = read_markers::mark(&origin.store, &caller, &channel, seq).await?;
            Ok(Answer::ReadMarker { seq })
        }
        Call::NotifyPrefs { workspace, user, prefs } => {
            if origin.notify.is_none() {
                return Err(OriginError::NotFound(notify::DISABLED.into()));
            }
            let caller = accounts::caller_for(&origin.store, &workspace, &user).await?;
            let prefs = match prefs {
                None => notify::get_prefs(&origin.store, &caller).await?,
                Some(prefs) => notify::put_prefs(&origin.store, &caller, *prefs).await?,
            };
            Ok(Answer::NotifyPrefs(Box::new(prefs)))
        }
        Call::Relay { .. } | Call::Presence { .. } | Call::SetDnd { .. } | Call::PresenceSnapshot { .. } => {
            Err(OriginError::BadRequest("ephemeral calls are answered by the calls stream".into()))
        }
    }
}

/// A workspace's events after `after`: scans the log (at most [`EVENTS_SCAN_BUDGET`] entries)
/// until `limit` of them are found or the log ends.
async fn events(feed: &Feed, workspace: &WorkspaceId, after: &Cursor, limit: u32) -> Result<Answer, OriginError> {
    let limit = limit as usize;
    if !(1..=history::MAX_PAGE).contains(&limit) {
        return Err(OriginError::BadRequest(format!("limit must be between 1 and {}", history::MAX_PAGE)));
    }
    let mut pos: Position =
        after.position().ok_or_else(|| OriginError::BadRequest(format!("{after} is not a feed cursor")))?;
    // Read in chunks of at least a few hundred entries: other workspaces' events are skipped,
    // and a small limit must not turn the scan into thousands of tiny reads.
    let chunk = limit.clamp(256, FEED_BATCH);
    let mut items = Vec::new();
    let mut scanned = 0usize;
    loop {
        match feed.read_after(&pos, chunk).await? {
            Read::Resync { trim_point } => {
                return Ok(Answer::Events { items, next: feed::cursor(&trim_point), more: true, resync: true });
            }
            Read::Events { items: batch, next } => {
                let batch_len = batch.len();
                for (p, e) in batch {
                    if e.workspace != *workspace {
                        continue;
                    }
                    items.push(FeedItem { cursor: feed::cursor(&p), workspace: e.workspace, ts: e.ts, event: e.event });
                    if items.len() == limit {
                        return Ok(Answer::Events { items, next: feed::cursor(&p), more: true, resync: false });
                    }
                }
                pos = next;
                scanned += batch_len;
                if batch_len < chunk {
                    return Ok(Answer::Events { items, next: feed::cursor(&pos), more: false, resync: false });
                }
                if scanned >= EVENTS_SCAN_BUDGET {
                    return Ok(Answer::Events { items, next: feed::cursor(&pos), more: true, resync: false });
                }
            }
        }
    }
}
