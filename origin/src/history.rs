//! Reading a channel's messages back: pages in either direction by `seq`.
//!
//! Messages are stored under `(ws, W, msg, C, seq)`, so a page is one range read. Without
//! bounds a page is the newest messages; `before` pages back in time, `after` forward (what a
//! client that saw a gap or reconnects asks for). Pages are always returned oldest first.

use selvage_shared::{ChannelId, Message, Seq};
use serde::Serialize;

use crate::{
    accounts::Caller,
    channels,
    error::{OriginError, Result},
    store::{keys, RangeRead, Store, StoreError},
    transact,
};

/// Largest page.
pub const MAX_PAGE: usize = 1000;

/// One page of history.
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    /// Messages, oldest first.
    pub messages: Vec<Message>,
    /// Whether more messages lie beyond this page in the direction it was read.
    pub has_more: bool,
}

/// Which part of the history to read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bounds {
    /// Only messages with a seq below this.
    pub before: Option<Seq>,
    /// Only messages with a seq above this.
    pub after: Option<Seq>,
    /// At most this many (1..=[`MAX_PAGE`]).
    pub limit: usize,
}

/// Reads a page of a channel the caller may see (public channels are readable by everyone in
/// the workspace, private ones and DMs by members only).
pub async fn page(store: &Store, caller: &Caller, c: &ChannelId, bounds: Bounds) -> Result<Page> {
    if !(1..=MAX_PAGE).contains(&bounds.limit) {
        return Err(OriginError::BadRequest(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let w = &caller.workspace;
    let prefix = keys::messages(w, c);
    let (begin_all, end_all) = crate::store::prefix_range(&prefix);
    let begin = match bounds.after {
        Some(after) => {
            let mut k = keys::message(w, c, after);
            k.push(0x00);
            k
        }
        None => begin_all,
    };
    let end = match bounds.before {
        Some(before) => keys::message(w, c, before),
        None => end_all,
    };
    // With only `after`, read forward from it; otherwise read back from the newest end.
    let reverse = bounds.after.is_none();
    let (page, _) = transact!(store, |tx| {
        if channels::visible_channel(tx, caller, c).await?.is_none() {
            None
        } else if begin >= end {
            Some(Page { messages: Vec::new(), has_more: false })
        } else {
            let range = RangeRead::between(begin.clone(), end.clone()).limit(bounds.limit + 1).reverse(reverse);
            let rows = tx.get_range(&range).await?;
            let has_more = rows.len() > bounds.limit;
            let mut messages = rows
                .iter()
                .take(bounds.limit)
                .map(|(_, v)| selvage_shared::from_msgpack::<Message>(v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Engine(format!("message record does not decode: {e}")))?;
            if reverse {
                messages.reverse();
            }
            Some(Page { messages, has_more })
        }
    })?;
    page.ok_or_else(|| OriginError::no_channel(c.as_str()))
}
