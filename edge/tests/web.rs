//! The web client's files and the API passage on an edge (ARCHITECTURE §3 "The web client"),
//! over real HTTP to a real edge and origin: the page and its assets with their security
//! headers, nothing else under the checkout, and `/v1/…` passed to the origin as it came —
//! tokens checked there, bodies capped here, an unreachable origin answered without detail.

mod support;

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use support::*;

fn url(rig: &Rig, path: &str) -> String {
    format!("http://{}{path}", rig.edge.addr)
}

#[tokio::test]
async fn the_page_and_its_assets_carry_a_strict_policy_and_nothing_else_is_served() {
    let rig = rig("web-assets", false, |_| {}).await;
    let http = reqwest::Client::new();

    let page = http.get(url(&rig, "/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    for part in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("app.js"), "the page loads the client");
    assert!(!html.contains("<script>") && !html.contains(" onclick="), "no inline script: {html}");

    // An ETag lets a browser revalidate for a 304.
    let etag = headers[header::ETAG].clone();
    let again = http.get(url(&rig, "/")).header(header::IF_NONE_MATCH, etag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    let script = http.get(url(&rig, "/app.js")).send().await.unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(script.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/javascript"));
    assert!(script.headers().contains_key(header::CONTENT_SECURITY_POLICY));

    // Only flat names of the client's own kinds: no way out of web/, no tests, no sources.
    for path in ["/Cargo.toml", "/..%2FCargo.toml", "/%2e%2e/Cargo.toml", "/tests/e2e.mjs", "/web.rs", "/nope.js"] {
        let r = http.get(url(&rig, path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // The edge's own routes are still its own.
    let health = http.get(url(&rig, "/healthz")).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok\n");
}

#[tokio::test]
async fn the_api_passes_through_to_the_origin_which_checks_the_token() {
    let rig = rig("web-api", false, |c| c.web.max_body_bytes = 64 * 1024).await;
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut r = http.request(method, url(&rig, path));
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        if let Some(body) = body {
            r = r.json(&body);
        }
        r.send()
    };

    let me = call(Method::GET, "/v1/me", Some(&rig.token), None).await.unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["user"]["id"], rig.admin.to_string());

    // The origin's refusals come back as they were.
    let anonymous = call(Method::GET, "/v1/me", None, None).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = call(Method::GET, "/v1/me", Some("sv_not-a-token"), None).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    // A post goes through once: a retry with its key gets the same seq.
    let path = format!("/v1/channels/{}/messages", rig.general);
    let sent = json!({"text": "through the edge", "client_msg_id": "web-1"});
    let first: Value =
        call(Method::POST, &path, Some(&rig.token), Some(sent.clone())).await.unwrap().json().await.unwrap();
    let retry: Value = call(Method::POST, &path, Some(&rig.token), Some(sent)).await.unwrap().json().await.unwrap();
    assert!(first["seq"].as_u64().unwrap() >= 1, "{first}");
    assert_eq!(first["seq"], retry["seq"]);
    let history = call(Method::GET, &format!("{path}?limit=5"), Some(&rig.token), None).await.unwrap();
    let history: Value = history.json().await.unwrap();
    let texts: Vec<&str> = history["messages"].as_array().unwrap().iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts.iter().filter(|t| **t == "through the edge").count(), 1, "{history}");

    // Whose the channel is stays the origin's to check: a private channel is not found by a
    // workspace member outside it, through the edge as anywhere.
    let made = call(Method::POST, "/v1/channels", Some(&rig.token), Some(json!({"name": "plans", "private": true})));
    let made: Value = made.await.unwrap().json().await.unwrap();
    let plans = made["channel"]["id"].as_str().unwrap().to_string();
    let outsider = rig.user("outsider").await;
    let peek = call(Method::GET, &format!("/v1/channels/{plans}/messages"), Some(&outsider), None).await.unwrap();
    assert_eq!(peek.status(), StatusCode::NOT_FOUND);

    // A body over the edge's cap is refused here and changes nothing.
    let huge = json!({"text": "x".repeat(100 * 1024), "client_msg_id": "web-2"});
    let refused = call(Method::POST, &path, Some(&rig.token), Some(huge)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large");
    let after: Value =
        call(Method::GET, &format!("{path}?limit=5"), Some(&rig.token), None).await.unwrap().json().await.unwrap();
    assert_eq!(after["messages"].as_array().unwrap().len(), history["messages"].as_array().unwrap().len());

    // Methods the API has no use for stop here.
    let trace = call(Method::TRACE, "/v1/me", Some(&rig.token), None).await.unwrap();
    assert_eq!(trace.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn an_unreachable_origin_api_is_unavailable_without_detail() {
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = rig("web-down", false, |c| c.web.api_url = format!("http://{closed}")).await;
    let r = reqwest::Client::new().get(url(&down, "/v1/me")).bearer_auth(&down.token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(!text.contains(&closed.port().to_string()) && !text.contains("refused"), "internal detail: {text}");

    // Without an API URL the passage says so; the WebSocket endpoint is not affected.
    let none = rig("web-none", false, |c| c.web.api_url = String::new()).await;
    let r = reqwest::Client::new().get(url(&none, "/v1/me")).bearer_auth(&none.token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(none.edge.edge.is_ready());
}
