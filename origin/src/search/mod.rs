//! Search: full-text search over every message a user may read (ARCHITECTURE §8 "Search").
//!
//! A service on the feed, in four parts, each in its own module:
//!
//! - `analysis` — how text becomes terms: lowercasing and folding, English stemming, CJK
//!   bigrams, identifiers and URLs split into their parts.
//! - [`query`] — the query language people type (`from:@ana "rate limit" -flaky deplo`),
//!   parsed into a [`Query`] or a [`QueryError`] that says what to fix.
//! - [`index`] — the tantivy index on the origin's disk ([`SearchIndex`]): one document per
//!   message, commits that record the feed cursor they cover, and the search itself, which
//!   requires the caller's workspace and readable channels inside the tantivy query.
//! - [`indexer`] — the feed consumer `search` that keeps the index current, and
//!   [`indexer::reindex`], the rebuild from the store.
//!
//! A search, as the HTTP route and the edge's query will run it:
//!
//! ```ignore
//! let mut query = search::query::parse(&q)?;                        // 400 on a QueryError
//! search::resolve(&mut query, &StoreResolver::new(&store, &caller.workspace)).await?;
//! let allowed = readable.of(&store, &caller).await?;                // the permission check
//! let index = index.clone();
//! let page = spawn_blocking(move || index.search(&query, &w, &allowed, Sort::Relevance, 20, cursor)).await??;
//! // …then check every hit against the store again before answering (ARCHITECTURE §7).
//! ```

pub mod analysis;
pub mod index;
pub mod indexer;
pub mod query;
mod service;

#[cfg(test)]
mod tests;

use std::{collections::HashSet, sync::Arc};

use async_trait::async_trait;
use selvage_shared::{ChannelId, UserId, WorkspaceId};

pub use self::{
    index::{Hit, IndexOptions, Page, SearchIndex, Snippet, Sort},
    indexer::Indexer,
    query::{ChannelRef, Query, QueryError, UserRef},
    service::{Ask, Search, DEFAULT_LIMIT, DISABLED},
};
use crate::{
    caller::Caller,
    channels::records::Gate,
    store::{decode, keys, tuple::last_str, KvTxn, RangeRead, Store, StoreError},
    transact,
};

/// Why a search, or the index under it, failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query is malformed (a `400`; the message says what to fix).
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The page size is out of range (a `400`).
    #[error("limit must be between 1 and {}", index::MAX_LIMIT)]
    BadLimit,
    /// The page cursor is not one this origin handed out (a `400`).
    #[error("the search cursor is invalid or too deep; start again without it")]
    BadCursor,
    /// The index's files could not be read or written.
    #[error("search index I/O: {0}")]
    Io(String),
    /// tantivy failed.
    #[error("search index: {0}")]
    Index(String),
    /// The index holds something it should not (a document without its ids, a payload that is
    /// not a cursor).
    #[error("search index is corrupt: {0}")]
    Corrupt(String),
    /// The store failed while resolving names, reading permissions or rebuilding.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SearchError {
    /// Whether the client's request is at fault (a `400`), rather than the server.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, SearchError::Query(_) | SearchError::BadLimit | SearchError::BadCursor)
    }
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(e: tantivy::TantivyError) -> Self {
        SearchError::Index(e.to_string())
    }
}

impl From<tantivy::directory::error::OpenDirectoryError> for SearchError {
    fn from(e: tantivy::directory::error::OpenDirectoryError) -> Self {
        SearchError::Io(e.to_string())
    }
}

impl From<std::io::Error> for SearchError {
    fn from(e: std::io::Error) -> Self {
        SearchError::Io(e.to_string())
    }
}

/// Turns the handles of `from:` and the names of `in:` into ids, for one workspace.
#[async_trait]
pub trait Resolver: Send + Sync {
    /// The id of the user with this handle, if there is one.
    async fn user(&self, handle: &str) -> Result<Option<UserId>, SearchError>;
    /// The id of the channel with this name, if there is one.
    async fn channel(&self, name: &str) -> Result<Option<ChannelId>, SearchError>;
}

/// Resolves the query's handles and channel names to ids where `resolver` knows them. Those it
/// does not know stay names, and match nothing: a search `from:@nobody` finds nothing rather
/// than failing, and says nothing about whether a private channel of that name exists.
pub async fn resolve(query: &mut Query, resolver: &dyn Resolver) -> Result<(), SearchError> {
    for user in &mut query.from {
        if let UserRef::Handle(handle) = user {
            if let Some(id) = resolver.user(handle).await? {
                *user = UserRef::Id(id);
            }
        }
    }
    for channel in &mut query.channels {
        if let ChannelRef::Name(name) = channel {
            if let Some(id) = resolver.channel(name).await? {
                *channel = ChannelRef::Id(id);
            }
        }
    }
    Ok(())
}

/// A [`Resolver`] reading a workspace's handle and channel-name indexes in the store.
pub struct StoreResolver<'a> {
    store: &'a Store,
    workspace: &'a WorkspaceId,
}

impl<'a> StoreResolver<'a> {
    /// Resolves names of `workspace`.
    pub fn new(store: &'a Store, workspace: &'a WorkspaceId) -> Self {
        StoreResolver { store, workspace }
    }

    async fn id(&self, key: Vec<u8>) -> Result<Option<String>, SearchError> {
        let (raw, _) = transact!(self.store, |tx| { tx.get(&key).await? })?;
        Ok(raw.and_then(|raw| String::from_utf8(raw).ok()))
    }
}

#[async_trait]
impl Resolver for StoreResolver<'_> {
    async fn user(&self, handle: &str) -> Result<Option<UserId>, SearchError> {
        Ok(self.id(keys::handle(self.workspace, handle)).await?.and_then(|id| UserId::parse(&id)))
    }

    async fn channel(&self, name: &str) -> Result<Option<ChannelId>, SearchError> {
        Ok(self.id(keys::channel_name(self.workspace, name)).await?.and_then(|id| ChannelId::parse(&id)))
    }
}

/// The channels whose messages `caller` may find, now: every public channel of their
/// workspace and every channel, private channel, DM and group DM they are a member of — the
/// rule of every read (ARCHITECTURE §7). Read in one transaction, uncached (a search reads them
/// through [`ReadableChannels`]).
pub async fn readable_channels(store: &Store, caller: &Caller) -> Result<HashSet<ChannelId>, SearchError> {
    let (readable, _) = transact!(store, |tx| {
        let public = public_channels(tx, &caller.workspace).await?;
        with_joined(tx, caller, public).await?
    })?;
    Ok(readable)
}

/// `readable` (the workspace's public channels) and the channels `caller` is a member of.
async fn with_joined(
    tx: &mut dyn KvTxn,
    caller: &Caller,
    mut readable: HashSet<ChannelId>,
) -> Result<HashSet<ChannelId>, StoreError> {
    for (key, _) in tx.get_range(&RangeRead::prefix(&keys::joined_by(&caller.workspace, &caller.user.id))).await? {
        if let Some(c) = last_str(&key).and_then(|s| ChannelId::parse(&s)) {
            readable.insert(c);
        }
    }
    Ok(readable)
}

/// The public channels of `w`: those every member of the workspace may read.
async fn public_channels(tx: &mut dyn KvTxn, w: &WorkspaceId) -> Result<HashSet<ChannelId>, StoreError> {
    let mut public = HashSet::new();
    for (key, raw) in tx.get_range(&RangeRead::prefix(&keys::channels(w))).await? {
        let gate: Gate = decode("channel", &raw)?;
        if let Some(c) = last_str(&key).and_then(|s| ChannelId::parse(&s)).filter(|_| gate.visible(false)) {
            public.insert(c);
        }
    }
    Ok(public)
}

/// Channels read as of one value of a workspace's gates counter.
struct AsOf {
    gates: i64,
    channels: Arc<HashSet<ChannelId>>,
}

/// The channels each user may read, cached while their workspace's gates counter stays the
/// same. Every transaction that writes a channel record or a membership adds 1 to that
/// counter (`keys::gates`), so a search reads the counter in its own transaction, and a cached
/// set read at the same value is exactly what the store holds now: a membership removed, a
/// channel made private, counts at once. Without this, every search read and decoded every
/// channel record of the workspace.
pub struct ReadableChannels {
    /// Per workspace, its public channels.
    public: moka::sync::Cache<WorkspaceId, Arc<AsOf>>,
    /// Per user, the channels they may read.
    users: moka::sync::Cache<(WorkspaceId, UserId), Arc<AsOf>>,
}

impl ReadableChannels {
    /// A cache of at most `users` users' sets (and as many workspaces').
    pub fn new(users: u64) -> ReadableChannels {
        ReadableChannels { public: moka::sync::Cache::new(users.max(1)), users: moka::sync::Cache::new(users.max(1)) }
    }

    /// The channels `caller` may read now (see [`readable_channels`]).
    pub async fn of(&self, store: &Store, caller: &Caller) -> Result<Arc<HashSet<ChannelId>>, SearchError> {
        let w = &caller.workspace;
        let user_key = (w.clone(), caller.user.id.clone());
        let (channels, _) = transact!(store, |tx| {
            let gates = tx.get(&keys::gates(w)).await?.as_deref().map_or(0, crate::feed::le_i64);
            match self.users.get(&user_key).filter(|cached| cached.gates == gates) {
                Some(cached) => cached.channels.clone(),
                None => {
                    let public = match self.public.get(w).filter(|cached| cached.gates == gates) {
                        Some(cached) => cached,
                        None => {
                            let channels = Arc::new(public_channels(tx, w).await?);
                            let fresh = Arc::new(AsOf { gates, channels });
                            self.public.insert(w.clone(), fresh.clone());
                            fresh
                        }
                    };
                    let channels = Arc::new(with_joined(tx, caller, (*public.channels).clone()).await?);
                    self.users.insert(user_key.clone(), Arc::new(AsOf { gates, channels: channels.clone() }));
                    channels
                }
            }
        })?;
        Ok(channels)
    }
}
