//! Handlers of search: `GET /v1/search`, and the operator's `POST /v1/admin/search/reindex`
//! (ARCHITECTURE §8 "Search"). The rules live in [`crate::search`]; this parses and renders.

use std::sync::Arc;

use axum::{extract::State, http::HeaderMap};
use selvage_shared::SearchPage;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{require_operator, Json, Query};
use crate::{
    caller::Caller,
    error::{OriginError, Result},
    search::{self, Ask, Search},
    Origin,
};

/// The search service, or the `404` of an origin without it.
fn service(origin: &Origin) -> Result<&Search> {
    origin.search.as_ref().ok_or_else(|| OriginError::NotFound(search::DISABLED.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchQuery {
    q: String,
    sort: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    after: Option<String>,
}

/// `GET /v1/search`: a page of the messages the caller may read that match `q`.
pub(super) async fn search_messages(
    State(origin): State<Arc<Origin>>,
    caller: Caller,
    Query(q): Query<SearchQuery>,
) -> Result<Json<SearchPage>> {
    let service = service(&origin)?;
    let sort = Ask::sort_from(q.sort.as_deref())?;
    // An empty `cursor=` or `after=` is the same as none, as HTML forms and many clients send
    // a parameter left blank.
    let given = |v: Option<String>| v.filter(|v| !v.is_empty());
    let ask = Ask { q: q.q, sort, limit: q.limit, cursor: given(q.cursor), after: given(q.after) };
    Ok(Json(service.ask(&origin.store, &caller, ask).await?))
}

/// `POST /v1/admin/search/reindex` (operator key): rebuilds the index from the store.
pub(super) async fn reindex(State(origin): State<Arc<Origin>>, headers: HeaderMap) -> Result<Json<Value>> {
    require_operator(&origin, &headers, "reindexing")?;
    let docs = service(&origin)?.reindex(&origin.feed, &origin.store).await?;
    Ok(Json(json!({ "documents": docs })))
}
