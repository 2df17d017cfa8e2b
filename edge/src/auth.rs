//! Who a bearer token is, remembered: token hash → (workspace, user).
//!
//! The edge never keeps tokens in clear: it hashes what the client presents (SHA-256, as the
//! origin stores it) and asks the origin about unknown hashes, once per hash however many
//! connections present it at the same time. Answers are trusted for `cache.token_ttl_secs`; a
//! revocation reaches the edge as a `token_revoked` feed event and is forgotten at once (and
//! sessions using it are closed by fan-out); a session whose token expires ends then (see
//! [`Principal::expires_in`]), with the same close as a revoked one. While the origin is unreachable, remembered
//! tokens keep working, which is what lets clients boot from the cache in an outage.

use std::{sync::Arc, time::Duration};

use selvage_shared::{
    link::{Answer, Call, LinkError},
    ErrorCode, Grant, UserId, WorkspaceId,
};
use sha2::{Digest, Sha256};

use axum::http::{header, HeaderMap};

use crate::{error::EdgeError, metrics::Metrics, upstream::Upstream};

/// An authenticated token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Lower-case hex SHA-256 of the token.
    pub token_hash: String,
    /// The token's workspace.
    pub workspace: WorkspaceId,
    /// The token's user.
    pub user: UserId,
    /// When the token stops working (ms since the epoch), if ever.
    pub expires_at: Option<i64>,
    /// What the token may do: anything its user may, or only its scopes (an app's token).
    pub grant: Grant,
}

impl Principal {
    /// How long until the token stops working (zero once it has), if it ever does.
    pub fn expires_in(&self) -> Option<Duration> {
        let at = self.expires_at?;
        Some(Duration::from_millis(u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0)))
    }
}

/// The token cache.
pub struct Tokens {
    cache: moka::future::Cache<String, Principal>,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
}

/// Lower-case hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Tokens {
    /// A cache of at most `capacity` tokens, each trusted for `ttl`.
    pub fn new(upstream: Arc<Upstream>, capacity: u64, ttl: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        let cache = moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        Arc::new(Tokens { cache, upstream, metrics })
    }

    /// Who `token` is; `unauthorized` for unknown, expired or revoked tokens, `unavailable`
    /// when the origin cannot be asked.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, EdgeError> {
        let unauthorized = || EdgeError::Unauthorized("the token is unknown, expired or revoked".into());
        if token.is_empty() || token.len() > 512 {
            return Err(unauthorized());
        }
        let hash = hash_token(token);
        let principal = match self.cache.get(&hash).await {
            Some(p) => {
                self.metrics.cache_requests.with_label_values(&["token", "hit"]).inc();
                p
            }
            None => {
                self.metrics.cache_requests.with_label_values(&["token", "miss"]).inc();
                let ask = self.ask(hash.clone());
                self.cache.try_get_with(hash, ask).await.map_err(|e| EdgeError::Origin((*e).clone()))?
            }
        };
        if principal.expires_at.is_some_and(|t| t <= now_ms()) {
            self.cache.invalidate(&principal.token_hash).await;
            return Err(unauthorized());
        }
        Ok(principal)
    }

    async fn ask(&self, token_hash: String) -> Result<Principal, LinkError> {
        match self.upstream.call(Call::Authenticate { token_hash: token_hash.clone() }).await? {
            Answer::Principal { workspace, user, expires_at, scopes } => {
                Ok(Principal { token_hash, workspace, user, expires_at, grant: Grant::from_scopes(scopes.as_deref()) })
            }
            other => Err(LinkError {
                code: ErrorCode::Internal,
                message: format!("the origin answered an authenticate call with {other:?}"),
            }),
        }
    }

    /// Forgets every token of a user (deactivated: all their tokens are revoked at once).
    pub fn forget_user(&self, workspace: &WorkspaceId, user: &UserId) {
        let (workspace, user) = (workspace.clone(), user.clone());
        if let Err(e) = self.cache.invalidate_entries_if(move |_, p| p.workspace == workspace && p.user == user) {
            // Only if invalidation closures were not enabled; then forget everything.
            tracing::warn!(error = %e, "cannot forget one user's tokens; forgetting every token");
            self.cache.invalidate_all();
        }
    }

    /// Forgets a revoked token.
    pub async fn forget(&self, token_hash: &str) {
        self.cache.invalidate(token_hash).await;
    }

    /// Forgets every token (after the edge missed feed events, revocations among them).
    pub fn forget_all(&self) {
        self.cache.invalidate_all();
    }
}

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}
