//! Feed streams: the log after an edge's cursor, then new events as they commit, heartbeats in
//! the quiet, and the relay's ephemeral events from other edges (ARCHITECTURE §2 "The feed").

use std::{sync::Arc, time::Duration};

use selvage_shared::{
    link::{encode_frame, FRAME_PREFIX_BYTES},
    Cursor, FeedFrame, FeedItem, MAX_FEED_FRAME_BYTES,
};
use serde::Serialize;
use tokio::time::Instant;

use super::{write_frame, Ctx, FEED_BATCH, HEARTBEAT_EVERY};
use crate::feed::{self, Feed, Position, Read};

/// Where a feed stream starts.
#[derive(Debug)]
pub(super) enum Requested {
    /// At the newest event.
    Head,
    /// After this position.
    After(Position),
    /// The edge's cursor did not parse (the first 40 characters of it).
    Unparsable(String),
}

/// [`FeedFrame::Events`] with borrowed items, so a batch too large for one frame can be split
/// without copying. Serializes exactly like the owned variant (checked by a test).
#[derive(Serialize)]
#[serde(tag = "type", rename = "events")]
struct EventsFrame<'a> {
    items: &'a [FeedItem],
    cursor: &'a Cursor,
}

/// Encodes a batch of events as one or more frames within [`MAX_FEED_FRAME_BYTES`], splitting
/// it in halves as needed. Each frame's cursor is its last item's, the last frame's `next`.
fn encode_events(items: &[FeedItem], next: &Cursor, out: &mut Vec<Vec<u8>>) {
    match encode_frame(&EventsFrame { items, cursor: next }) {
        Ok(frame) if frame.len() - FRAME_PREFIX_BYTES <= MAX_FEED_FRAME_BYTES => out.push(frame),
        _ if items.len() > 1 => {
            let (first, second) = items.split_at(items.len() / 2);
            // `first` is not empty: items.len() >= 2.
            let first_next = first.last().map(|i| i.cursor.clone()).unwrap_or_else(|| next.clone());
            encode_events(first, &first_next, out);
            encode_events(second, next, out);
        }
        _ => {
            // One stored event is at most 100 KB, far below the frame limit; should one ever not
            // fit, skip it loudly rather than wedge every edge on it.
            let cursor = items.first().map(|i| i.cursor.as_str().to_owned()).unwrap_or_default();
            tracing::error!(%cursor, "feed event too large for a frame; skipped");
            if let Ok(frame) = encode_frame(&EventsFrame { items: &[], cursor: next }) {
                out.push(frame);
            }
        }
    }
}

fn encode_feed(frame: &FeedFrame) -> Result<Vec<u8>, String> {
    encode_frame(frame).map_err(|e| e.to_string())
}

/// Streams the feed after `cursor` until the edge goes away or the origin shuts down.
pub(super) async fn feed_stream(
    ctx: &Ctx,
    mut send: quinn::SendStream,
    requested: Requested,
    edge_id: &Arc<str>,
) -> Result<(), String> {
    let feed: &Feed = &ctx.origin.feed;
    let metrics = &ctx.origin.metrics;
    let head = feed.head().await.map_err(|e| format!("cannot read the feed head: {e}"))?;
    let resync_at_head = |reason: String| (head, FeedFrame::Resync { reason, cursor: feed::cursor(&head) });
    let (mut pos, first) = match requested {
        Requested::Head => (head, FeedFrame::Heartbeat { cursor: feed::cursor(&head) }),
        Requested::Unparsable(s) => resync_at_head(format!(
            "{s:?} is not a feed cursor (24 lower-case hex digits); rebuild caches from snapshots and continue \
             from this cursor"
        )),
        Requested::After(p) if p > head => resync_at_head(
            "the cursor is ahead of this origin's feed (restored or different data?); rebuild caches from \
             snapshots and continue from this cursor"
                .into(),
        ),
        Requested::After(p) => (p, FeedFrame::Heartbeat { cursor: feed::cursor(&p) }),
    };
    // The first frame goes out at once: it tells the edge its key was accepted.
    write_frame(&mut send, &encode_feed(&first)?).await?;
    let mut last_write = Instant::now();
    let mut wake = feed.subscribe();
    let mut relayed = ctx.origin.relay.subscribe();
    let mut frames = Vec::new();
    loop {
        wake.borrow_and_update();
        let read = match feed.read_after(&pos, FEED_BATCH).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "feed read failed; retrying");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                }
            }
        };
        match read {
            Read::Resync { trim_point } => {
                let frame = FeedFrame::Resync {
                    reason: format!(
                        "cursor {} is older than the feed's trim point: the events after it were trimmed; rebuild \
                         caches from snapshots and continue from this cursor",
                        feed::cursor(&pos)
                    ),
                    cursor: feed::cursor(&trim_point),
                };
                write_frame(&mut send, &encode_feed(&frame)?).await?;
                last_write = Instant::now();
                pos = trim_point;
                continue;
            }
            Read::Events { items, next } => {
                if next != pos {
                    let full = items.len() >= FEED_BATCH;
                    let n = items.len() as u64;
                    let items: Vec<FeedItem> = items
                        .into_iter()
                        .map(|(p, e)| FeedItem {
                            cursor: feed::cursor(&p),
                            workspace: e.workspace,
                            ts: e.ts,
                            event: e.event,
                        })
                        .collect();
                    frames.clear();
                    encode_events(&items, &feed::cursor(&next), &mut frames);
                    for frame in &frames {
                        write_frame(&mut send, frame).await?;
                    }
                    metrics.link_feed_events.inc_by(n);
                    last_write = Instant::now();
                    pos = next;
                    if full {
                        continue;
                    }
                }
            }
        }
        // Caught up: wait for new events, sending a heartbeat after a second of quiet, and pass
        // on ephemeral events from other edges (and the origin's own) meanwhile.
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                let _ = send.finish();
                return Ok(());
            }
            relay = relayed.recv() => match relay {
                Ok(r) if r.from_edge.as_ref() != Some(edge_id) => {
                    let frame = FeedFrame::Ephemeral { workspace: r.workspace, event: Box::new(r.event) };
                    write_frame(&mut send, &encode_feed(&frame)?).await?;
                    last_write = Instant::now();
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    metrics.link_relay_dropped.inc_by(n);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err("the relay stopped".into()),
            },
            changed = tokio::time::timeout_at(last_write + HEARTBEAT_EVERY, wake.changed()) => match changed {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("the feed notifier stopped".into()),
                Err(_) => {
                    write_frame(&mut send, &encode_feed(&FeedFrame::Heartbeat { cursor: feed::cursor(&pos) })?).await?;
                    last_write = Instant::now();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::tests::item;

    #[test]
    fn borrowed_events_frames_decode_as_feed_frames() {
        let items = vec![item(1, 3), item(2, 4)];
        let next = Cursor::from_position(&[9; 12]);
        let mut out = Vec::new();
        encode_events(&items, &next, &mut out);
        assert_eq!(out.len(), 1);
        let owned = encode_frame(&FeedFrame::Events { items: items.clone(), cursor: next.clone() }).unwrap();
        assert_eq!(out[0], owned, "same bytes as the owned variant");
        let back = selvage_shared::decode_feed_frame(&out[0][FRAME_PREFIX_BYTES..]).unwrap();
        assert_eq!(back, FeedFrame::Events { items, cursor: next });
    }

    #[test]
    fn oversized_batches_split_in_order_with_cursors() {
        // 300 events of 64 KiB: ~19 MiB, over the 16 MiB feed frame limit.
        let items: Vec<FeedItem> = (0..=255u8).chain(0..44).map(|n| item(n, 64 * 1024)).collect();
        let next = Cursor::from_position(&[9; 12]);
        let mut out = Vec::new();
        encode_events(&items, &next, &mut out);
        assert!(out.len() >= 2, "split into {} frames", out.len());
        let mut seen = Vec::new();
        for (i, frame) in out.iter().enumerate() {
            assert!(frame.len() - FRAME_PREFIX_BYTES <= MAX_FEED_FRAME_BYTES);
            match selvage_shared::decode_feed_frame(&frame[FRAME_PREFIX_BYTES..]).unwrap() {
                FeedFrame::Events { items, cursor } => {
                    if i + 1 == out.len() {
                        assert_eq!(cursor, next, "the last frame ends at the batch's cursor");
                    } else {
                        assert_eq!(Some(&cursor), items.last().map(|i| &i.cursor), "a frame ends at its last item");
                    }
                    seen.extend(items);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, items);
    }
}
