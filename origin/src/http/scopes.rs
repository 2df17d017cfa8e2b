//! What each route needs of the caller's token (ARCHITECTURE §8 "Apps"): the one table the
//! [`Caller`](crate::caller::Caller) extractor consults, so that no handler can forget it. A
//! user's token passes everywhere (the handlers then check the user's own rights); an app's
//! token only where its scopes say. A route not in the table takes user tokens only.

use axum::http::Method;
use selvage_shared::{Need, Scope};

/// What `method` on the route `path` (as the router spells it) needs.
pub(super) fn need(method: &Method, path: &str) -> Need {
    use Scope::*;
    let read = *method == Method::GET;
    match path {
        "/v1/me" | "/v1/tokens/revoke" => Need::Any,
        "/v1/channels" | "/v1/channels/{id}" | "/v1/channels/{id}/members" if read => Need::Scope(ChannelsRead),
        "/v1/channels" | "/v1/channels/{id}" | "/v1/channels/{id}/members" | "/v1/channels/{id}/members/{user}" => {
            Need::Scope(ChannelsWrite)
        }
        "/v1/channels/{id}/messages" | "/v1/channels/{id}/messages/{seq}/thread" if read => {
            Need::Scope(ChannelsHistory)
        }
        "/v1/channels/{id}/messages"
        | "/v1/channels/{id}/messages/{seq}"
        | "/v1/channels/{id}/messages/{seq}/reactions/{emoji}"
        | "/v1/channels/{id}/messages/{seq}/follow"
        | "/v1/channels/{id}/read"
        | "/v1/dms" => Need::Scope(ChatWrite),
        "/v1/events" => Need::Scope(Events),
        "/v1/search" => Need::Scope(SearchRead),
        "/v1/files" | "/v1/files/{id}" | "/v1/files/{id}/complete" if !read => Need::Scope(FilesWrite),
        "/v1/files/{id}" | "/v1/files/{id}/content" | "/v1/files/{id}/thumbs/{size}" | "/v1/channels/{id}/files" => {
            Need::Scope(FilesRead)
        }
        _ => Need::User,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_token_reaches_only_the_routes_of_its_scopes() {
        assert_eq!(need(&Method::GET, "/v1/channels"), Need::Scope(Scope::ChannelsRead));
        assert_eq!(need(&Method::POST, "/v1/channels"), Need::Scope(Scope::ChannelsWrite));
        assert_eq!(need(&Method::GET, "/v1/channels/{id}/messages"), Need::Scope(Scope::ChannelsHistory));
        assert_eq!(need(&Method::POST, "/v1/channels/{id}/messages"), Need::Scope(Scope::ChatWrite));
        assert_eq!(need(&Method::DELETE, "/v1/files/{id}"), Need::Scope(Scope::FilesWrite));
        assert_eq!(need(&Method::GET, "/v1/files/{id}"), Need::Scope(Scope::FilesRead));
        assert_eq!(need(&Method::POST, "/v1/users"), Need::User);
        assert_eq!(need(&Method::POST, "/v1/apps"), Need::User);
        assert_eq!(need(&Method::PUT, "/v1/notifications/prefs"), Need::User);
        assert_eq!(need(&Method::GET, "/v1/me"), Need::Any);
    }
}
