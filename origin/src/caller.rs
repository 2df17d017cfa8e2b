//! Who a request acts for: the [`Caller`] every domain operation takes, and the user record it
//! is made of.
//!
//! The lowest layer of the domain: [`accounts`](crate::accounts) turns a token into a caller,
//! and channels, messages and the rest check what the caller may do. Reading a user lives here,
//! not in `accounts`, because channels need it too (inviting someone, opening a DM) while
//! `accounts` builds on channels (a new workspace gets `#general`, a new user joins it).

use selvage_shared::{Grant, Need, User, UserId, WorkspaceId};

use crate::store::{keys, KvTxn, StoreError};

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The caller's workspace; every key the request touches is under it.
    pub workspace: WorkspaceId,
    /// The caller.
    pub user: User,
    /// Hash of the token used, so the caller can revoke it.
    pub token_hash: [u8; 32],
    /// What the token may do: anything the user may (a user's token), or its scopes (an app's).
    pub grant: Grant,
}

impl Caller {
    /// Checks that the caller's token may do what `need` names (`forbidden` if not).
    pub fn require(&self, need: Need) -> Result<(), crate::error::OriginError> {
        self.grant.allows(need).map_err(crate::error::OriginError::Forbidden)
    }
}

/// Reads a user of a workspace.
pub async fn get_user(tx: &mut dyn KvTxn, w: &WorkspaceId, u: &UserId) -> Result<Option<User>, StoreError> {
    match tx.get(&keys::user(w, u)).await? {
        None => Ok(None),
        Some(raw) => selvage_shared::from_msgpack(&raw)
            .map(Some)
            .map_err(|e| StoreError::Engine(format!("user record does not decode: {e}"))),
    }
}
