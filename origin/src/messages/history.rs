//! Reading a channel's messages back: pages in either direction by `seq`.
//!
//! Messages are stored under `(ws, W, msg, C, seq)`, so a page is one range read. Without
//! bounds a page is the newest messages; `before` pages back in time, `after` forward (what a
//! client that saw a gap or reconnects asks for). Pages are always returned oldest first.
//!
//! A thread is read the same way through its index, `(ws, W, thread, C, root, reply)`: one range
//! read for the page's reply seqs, then one point read per reply. Every page carries its
//! messages' reactions and thread summaries ([`records::decorate`]).

use selvage_shared::{ChannelId, Message, Seq};

use super::records;
use crate::{
    caller::Caller,
    channels,
    error::{OriginError, Result},
    store::{decode, keys, RangeRead, Store, StoreError},
    transact,
};

/// Largest page.
pub const MAX_PAGE: usize = 1000;

/// One page of history.
pub use selvage_shared::HistoryPage as Page;

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

impl Bounds {
    fn check(&self) -> Result<()> {
        if !(1..=MAX_PAGE).contains(&self.limit) {
            return Err(OriginError::BadRequest(format!("limit must be between 1 and {MAX_PAGE}")));
        }
        Ok(())
    }

    /// The key range of the page under `prefix`, whose keys end in a seq (`key_at` builds the
    /// key of one seq), and whether to read it backwards: with only `after` the page is read
    /// forward from it, otherwise back from the newest end.
    fn range(&self, prefix: &[u8], key_at: impl Fn(Seq) -> Vec<u8>) -> (Vec<u8>, Vec<u8>, bool) {
        let (begin_all, end_all) = crate::store::prefix_range(prefix);
        let begin = match self.after {
            Some(after) => {
                let mut k = key_at(after);
                k.push(0x00);
                k
            }
            None => begin_all,
        };
        let end = match self.before {
            Some(before) => key_at(before),
            None => end_all,
        };
        (begin, end, self.after.is_none())
    }
}

/// Reads a page of a channel the caller may see (public channels are readable by everyone in
/// the workspace, private ones and DMs by members only).
pub async fn page(store: &Store, caller: &Caller, c: &ChannelId, bounds: Bounds) -> Result<Page> {
    bounds.check()?;
    let w = &caller.workspace;
    let (begin, end, reverse) = bounds.range(&keys::messages(w, c), |seq| keys::message(w, c, seq));
    let (page, _) = transact!(store, |tx| {
        if channels::records::visible_channel(tx, caller, c).await?.is_none() {
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
                .map(|(_, v)| decode::<Message>("message", v))
                .collect::<Result<Vec<_>, _>>()?;
            if reverse {
                messages.reverse();
            }
            records::decorate(tx, w, c, &mut messages).await?;
            Some(Page { messages, has_more })
        }
    })?;
    page.ok_or_else(|| OriginError::no_channel(c.as_str()))
}

/// Why a thread could not be read, found inside the transaction.
enum ThreadRead {
    Page(Page),
    NoChannel,
    NoRoot,
    NotARoot,
}

/// Reads a page of the replies to `root` in a channel the caller may see, with the same bounds
/// and order as [`page`] (reply seqs, oldest first). The root itself is not part of the page; it
/// must be a top-level message of the channel.
pub async fn thread(store: &Store, caller: &Caller, c: &ChannelId, root: Seq, bounds: Bounds) -> Result<Page> {
    bounds.check()?;
    let w = &caller.workspace;
    let (begin, end, reverse) = bounds.range(&keys::thread(w, c, root), |seq| keys::thread_reply(w, c, root, seq));
    let (read, _) = transact!(store, |tx| {
        if channels::records::visible_channel(tx, caller, c).await?.is_none() {
            ThreadRead::NoChannel
        } else {
            match records::load(tx, w, c, root).await? {
                None => ThreadRead::NoRoot,
                Some(root) if root.thread_root.is_some() => ThreadRead::NotARoot,
                Some(_) if begin >= end => ThreadRead::Page(Page { messages: Vec::new(), has_more: false }),
                Some(_) => {
                    let range = RangeRead::between(begin.clone(), end.clone()).limit(bounds.limit + 1).reverse(reverse);
                    let rows = tx.get_range(&range).await?;
                    let has_more = rows.len() > bounds.limit;
                    let mut messages = Vec::with_capacity(rows.len().min(bounds.limit));
                    for (key, _) in rows.iter().take(bounds.limit) {
                        let seq = reply_seq(key)?;
                        let reply = records::load(tx, w, c, seq).await?.ok_or_else(|| {
                            StoreError::Engine(format!("thread index names reply {seq} of {c}, which is missing"))
                        })?;
                        messages.push(reply);
                    }
                    if reverse {
                        messages.reverse();
                    }
                    records::decorate(tx, w, c, &mut messages).await?;
                    ThreadRead::Page(Page { messages, has_more })
                }
            }
        }
    })?;
    match read {
        ThreadRead::Page(page) => Ok(page),
        ThreadRead::NoChannel => Err(OriginError::no_channel(c.as_str())),
        ThreadRead::NoRoot => Err(OriginError::NotFound(format!("message {root} not found in channel {c}"))),
        ThreadRead::NotARoot => {
            Err(OriginError::BadRequest(format!("message {root} is a reply; threads start at a top-level message")))
        }
    }
}

/// The reply seq at the end of a thread index key.
fn reply_seq(key: &[u8]) -> Result<Seq, StoreError> {
    crate::store::tuple::last_u64(key)
        .ok_or_else(|| StoreError::Engine("a thread index key does not end in a seq".into()))
}
