//! `GET /v1/events`: the long-poll fallback to the edges' WebSockets, read from the feed and
//! filtered to what the caller may see.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::extract::State;
use selvage_shared::{ChannelId, Event, EventFrame, FeedEvent, ServerFrame};
use serde::{Deserialize, Serialize};

use super::extract::{page_limit, Json, Query};
use crate::{
    caller::Caller,
    channels::records::visible_channel,
    error::{OriginError, Result},
    feed::{self, Position, Read},
    Origin,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    cursor: Option<String>,
    wait_ms: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
pub(super) struct EventsPage {
    events: Vec<ServerFrame>,
    cursor: selvage_shared::Cursor,
    #[serde(skip_serializing_if = "Option::is_none")]
    resync: Option<String>,
}

/// `GET /v1/events`: the long-poll fallback. Without a cursor it answers at once with the
/// current head cursor. With one, it returns the caller-visible events after it, waiting up to
/// `wait_ms` for some to arrive; the returned cursor resumes exactly after the last event read.
pub(super) async fn events(
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
        let (visible, _) = crate::transact!(origin.store, |tx| { visible_channel(tx, caller, c).await?.is_some() })?;
        self.channels.insert(c.clone(), visible);
        Ok(visible)
    }
}
