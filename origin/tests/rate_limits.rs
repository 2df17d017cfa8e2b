//! Rate limits per token on the HTTP API (ARCHITECTURE §7): a real origin on port 0 with small
//! buckets, refusing with `429`, `Retry-After` and `rate_limited`, and recovering once the
//! bucket has refilled.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use selvage_shared::rate::Rate;
use serde_json::json;
use support::TestOrigin;

fn small(c: &mut selvage_origin::OriginConfig) {
    c.rate_limits.write = Rate { per_second: 1, burst: 3 };
    c.rate_limits.read = Rate { per_second: 1, burst: 5 };
    c.rate_limits.incoming = Rate { per_second: 1, burst: 2 };
}

async fn post(o: &TestOrigin, token: &str, channel: &str, n: usize) -> reqwest::Response {
    let body = json!({ "text": format!("message {n}"), "client_msg_id": format!("rl-{n}") });
    o.http.post(o.url(&format!("/v1/channels/{channel}/messages"))).bearer_auth(token).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_with_retry_after_and_recovers() {
    let o = TestOrigin::start_with(small).await;
    let (admin, general) = o.workspace("acme").await;
    // The workspace's creation took nothing from the admin's buckets (it used the operator
    // key); a second token takes one write, two sends the rest of the burst.
    let (s, v) = o.post("/v1/tokens", &admin, json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let second = v["token"].as_str().unwrap().to_string();
    for n in 0..2 {
        assert_eq!(post(&o, &admin, &general, n).await.status(), StatusCode::CREATED, "within the burst");
    }
    let refused = post(&o, &admin, &general, 3).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("write rate"), "{body}");
    assert!(body["error"]["retry_after_ms"].as_u64().unwrap() >= 1000, "{body}");

    // Reads have a bucket of their own, and another token of the same user too.
    let (s, v) = o.get(&format!("/v1/channels/{general}/messages"), &admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 2, "the refused send wrote nothing: {v}");
    assert_eq!(post(&o, &second, &general, 4).await.status(), StatusCode::CREATED);

    // Reads run out too, looser.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(o.get("/v1/me", &second).await.0);
    }
    assert!(statuses[..5].iter().all(|s| *s == StatusCode::OK), "the burst: {statuses:?}");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");

    // After the wait it says, the token may write again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(post(&o, &admin, &general, 5).await.status(), StatusCode::CREATED, "recovered");
    assert!(o.metric("selvage_rate_limited_total{class=\"write\"}").await >= 1.0);
    assert!(o.metric("selvage_rate_limited_total{class=\"read\"}").await >= 1.0);
    o.stop().await;
}

#[tokio::test]
async fn an_incoming_webhook_has_a_bucket_of_its_own() {
    let o = TestOrigin::start_with(small).await;
    let (admin, general) = o.workspace("acme").await;
    let (s, v) = o.post("/v1/apps", &admin, json!({ "name": "CI", "handle": "ci", "scopes": ["chat:write"] })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let app = v["app"]["id"].as_str().unwrap().to_string();
    let (s, v) = o.post(&format!("/v1/apps/{app}/incoming"), &admin, json!({ "channel": general })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let url = o.url(v["url"].as_str().unwrap());
    let hook = |n: usize| o.http.post(&url).json(&json!({ "text": format!("build {n}") })).send();
    assert_eq!(hook(0).await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(hook(1).await.unwrap().status(), StatusCode::CREATED);
    let refused = hook(2).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    // The admin's own token is not affected.
    assert_eq!(post(&o, &admin, &general, 0).await.status(), StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(hook(3).await.unwrap().status(), StatusCode::CREATED, "recovered");
    o.stop().await;
}

#[tokio::test]
async fn rate_limits_can_be_turned_off() {
    let o = TestOrigin::start_with(|c| {
        small(c);
        c.rate_limits.enabled = false;
    })
    .await;
    let (admin, general) = o.workspace("acme").await;
    for n in 0..10 {
        assert_eq!(post(&o, &admin, &general, n).await.status(), StatusCode::CREATED);
    }
    o.stop().await;
}
