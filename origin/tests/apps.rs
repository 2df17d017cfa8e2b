//! Apps end to end over the HTTP API of a real origin on port 0: bot users, scoped tokens, and
//! that a bot sees and does no more than its scopes and its memberships allow.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::TestOrigin;

/// Creates an app as `admin`; answers (app id, bot user id, token).
async fn app(o: &TestOrigin, admin: &str, handle: &str, scopes: &[&str]) -> (String, String, String) {
    let (s, v) =
        o.post("/v1/apps", admin, json!({ "name": format!("The {handle}"), "handle": handle, "scopes": scopes })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["bot_user"]["bot"], v["app"]["id"], "the bot user names its app: {v}");
    assert_eq!(v["app"]["bot_user"], v["bot_user"]["id"]);
    let id = |p: &Value| p.as_str().unwrap().to_string();
    (id(&v["app"]["id"]), id(&v["bot_user"]["id"]), id(&v["token"]))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_app_token_does_what_its_scopes_allow_in_the_channels_its_bot_is_in() {
    let o = TestOrigin::start().await;
    let (admin, general) = o.workspace("acme").await;
    let (_, alice) = o.user(&admin, "alice").await;
    let ops = o.channel(&admin, "ops", false).await;
    let secret = o.channel(&admin, "secret", true).await;
    o.send_text(&admin, &general, "hello everyone").await;
    o.send_text(&admin, &secret, "the secret plan").await;

    // A reader: no chat:write.
    let (_, reader_id, reader) = app(&o, &admin, "reader", &["channels:read", "channels:history"]).await;
    let (s, v) = o.get("/v1/me", &reader).await;
    assert_eq!((s, v["user"]["id"].as_str()), (StatusCode::OK, Some(reader_id.as_str())), "{v}");
    // In no channel until invited; a public channel's history is open to it as to any user.
    let (_, v) = o.get(&format!("/v1/channels/{general}/members"), &admin).await;
    assert!(!v.to_string().contains(&reader_id), "not in #general: {v}");
    let (s, v) = o.get(&format!("/v1/channels/{general}/messages"), &reader).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["messages"][0]["text"], "hello everyone");
    let body = json!({ "text": "may I?", "client_msg_id": "r1" });
    let (s, v) = o.post(&format!("/v1/channels/{general}/messages"), &reader, body).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("chat:write"), "says which scope: {v}");
    // Nothing an app may not do at all: users, apps, tokens, preferences.
    for (path, body) in [
        ("/v1/users", json!({ "handle": "sneaky" })),
        ("/v1/apps", json!({ "name": "x", "handle": "x", "scopes": ["chat:write"] })),
        ("/v1/tokens", json!({})),
    ] {
        let (s, v) = o.post(path, &reader, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
    }
    let (s, v) = o.get("/v1/notifications/prefs", &reader).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // Private channels it was not invited to do not exist for it, in lists and by id.
    let (_, v) = o.get("/v1/channels", &reader).await;
    let names: Vec<&str> = v["channels"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(!names.contains(&"secret"), "{names:?}");
    let (s, _) = o.get(&format!("/v1/channels/{secret}/messages"), &reader).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = o.get(&format!("/v1/channels/{secret}"), &reader).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A poster with search: posts where invited, finds only what its bot user may read.
    let (_, poster_id, poster) = app(&o, &admin, "poster", &["chat:write", "search:read"]).await;
    let (s, v) = o.post(&format!("/v1/channels/{ops}/members"), &admin, json!({ "user": poster_id })).await;
    assert!(s.is_success(), "{v}");
    let seq = o.send_text(&poster, &ops, "deploy finished plan").await;
    assert!(seq >= 1);
    let body = json!({ "text": "here too", "client_msg_id": "p1" });
    let (s, v) = o.post(&format!("/v1/channels/{general}/messages"), &poster, body).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "not_member"), "{v}");
    let (s, v) = o.get(&format!("/v1/channels/{ops}/messages"), &poster).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no channels:history: {v}");
    let head = o.get("/v1/events", &admin).await.1["cursor"].as_str().unwrap().to_string();
    let (s, v) = o.get(&format!("/v1/search?q=plan&after={head}"), &poster).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let texts = |v: &Value| -> Vec<String> {
        let mut t: Vec<String> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["message"]["text"].as_str().map(String::from))
            .collect();
        t.sort();
        t
    };
    assert_eq!(texts(&v), ["deploy finished plan"], "not the private channel's: {v}");
    // The private channel's message is in the index: its members find it.
    let (s, v) = o.get(&format!("/v1/search?q=plan&after={head}"), &admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(texts(&v), ["deploy finished plan", "the secret plan"], "{v}");
    let (s, v) = o.get(&format!("/v1/search?q=plan&after={head}"), &alice).await;
    assert_eq!((s, texts(&v)), (StatusCode::OK, vec!["deploy finished plan".to_string()]), "{v}");
    o.stop().await;
}

#[tokio::test]
async fn admins_manage_apps_and_their_tokens_and_deleting_one_revokes_them_all() {
    let o = TestOrigin::start().await;
    let (admin, _) = o.workspace("acme").await;
    let (_, alice) = o.user(&admin, "alice").await;
    let (s, v) =
        o.post("/v1/apps", &alice, json!({ "name": "Mine", "handle": "mine", "scopes": ["chat:write"] })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only admins: {v}");
    for bad in [
        json!({ "name": "Bad", "handle": "bad", "scopes": [] }),
        json!({ "name": "Bad", "handle": "bad", "scopes": ["admin"] }),
        json!({ "name": "Bad", "handle": "Not A Handle", "scopes": ["events"] }),
        json!({ "name": "Bad", "handle": "alice", "scopes": ["events"] }),
    ] {
        let (s, v) = o.post("/v1/apps", &admin, bad.clone()).await;
        assert!(s == StatusCode::BAD_REQUEST || s == StatusCode::CONFLICT, "{bad}: {s} {v}");
    }
    let (app_id, bot, first) = app(&o, &admin, "deployer", &["chat:write", "channels:read"]).await;
    let (s, v) = o.get("/v1/apps", &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["apps"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["apps"][0]["scopes"], json!(["chat:write", "channels:read"]));

    // Fewer scopes: fine; one the app was not given: refused.
    let (s, v) = o.post(&format!("/v1/apps/{app_id}/tokens"), &admin, json!({ "scopes": ["channels:read"] })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let narrow = v["token"].as_str().unwrap().to_string();
    let (s, _) = o.get("/v1/channels", &narrow).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = o.post("/v1/dms", &narrow, json!({ "users": [bot] })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no chat:write on this one");
    let (s, v) = o.post(&format!("/v1/apps/{app_id}/tokens"), &admin, json!({ "scopes": ["search:read"] })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Revoked one by one like any token, by an admin.
    let (s, v) = o.post("/v1/tokens/revoke", &admin, json!({ "token": narrow })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(o.get("/v1/me", &narrow).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(o.get("/v1/me", &first).await.0, StatusCode::OK);

    // Another workspace's admin sees no such app.
    let (other_admin, _) = o.workspace("globex").await;
    assert_eq!(o.get(&format!("/v1/apps/{app_id}"), &other_admin).await.0, StatusCode::NOT_FOUND);
    let (s, _) = o.call(Method::DELETE, &format!("/v1/apps/{app_id}"), &other_admin, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(o.post(&format!("/v1/apps/{app_id}/tokens"), &other_admin, json!({})).await.0, StatusCode::NOT_FOUND);

    // A bot user is not brought back as a person.
    let (s, _) = o.post(&format!("/v1/users/{bot}/deactivate"), &admin, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = o.post(&format!("/v1/users/{bot}/reactivate"), &admin, json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let (_, _, second) = app(&o, &admin, "notifier", &["chat:write"]).await;
    let (s, v) = o.get("/v1/apps", &admin).await;
    assert_eq!((s, v["apps"].as_array().unwrap().len()), (StatusCode::OK, 2));
    let notifier = v["apps"][1]["id"].as_str().unwrap().to_string();
    let (s, _) = o.call(Method::DELETE, &format!("/v1/apps/{notifier}"), &admin, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(o.get("/v1/me", &second).await.0, StatusCode::UNAUTHORIZED, "deleting the app revokes its tokens");
    assert_eq!(o.get(&format!("/v1/apps/{notifier}"), &admin).await.0, StatusCode::NOT_FOUND);
    o.stop().await;
}

#[tokio::test]
async fn an_incoming_webhook_posts_as_its_bot_once_per_key_until_revoked() {
    let o = TestOrigin::start().await;
    let (admin, _) = o.workspace("acme").await;
    let alerts = o.channel(&admin, "alerts", true).await;
    let (app_id, bot, _) = app(&o, &admin, "monitor", &["chat:write"]).await;
    let (s, v) = o.post(&format!("/v1/apps/{app_id}/incoming"), &admin, json!({ "channel": alerts })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    let hook = v["hook"]["id"].as_str().unwrap().to_string();
    assert!(url.starts_with("/v1/hooks/") && url.len() > 40, "{url}");

    // No token: the URL is the credential. A retry with the same key posts once.
    let post = |body: Value| {
        let url = o.url(&url);
        let http = o.http.clone();
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = post(json!({ "text": "disk at 91 %", "client_msg_id": "alert-1" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let seq = v["seq"].as_u64().unwrap();
    let (s, v) = post(json!({ "text": "disk at 91 %", "client_msg_id": "alert-1" })).await;
    assert_eq!((s, v["seq"].as_u64(), &v["duplicate"]), (StatusCode::OK, Some(seq), &json!(true)), "{v}");
    let (s, _) = post(json!({ "text": "disk at 95 %" })).await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, v) = o.get(&format!("/v1/channels/{alerts}/messages"), &admin).await;
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "posted once per key: {v}");
    assert!(msgs.iter().all(|m| m["user"] == bot.as_str()), "as the bot user: {v}");

    // Bad bodies change nothing; unknown secrets say nothing.
    let (s, _) = post(json!({ "text": "" })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = post(json!({ "text": "x", "channel": "elsewhere" })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown fields are refused");
    let r = o.http.post(o.url("/v1/hooks/not-a-secret")).json(&json!({ "text": "x" })).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Another workspace's admin can neither see, add to nor revoke this app's hooks; a member
    // who is no admin neither; and an admin cannot point a hook at another workspace's channel.
    let (other_admin, other_general) = o.workspace("globex").await;
    let (_, alice) = o.user(&admin, "alice").await;
    for token in [&other_admin, &alice] {
        let (s, v) = o.get(&format!("/v1/apps/{app_id}/incoming"), token).await;
        assert!(s == StatusCode::NOT_FOUND || s == StatusCode::FORBIDDEN, "{v}");
        let (s, _) = o.post(&format!("/v1/apps/{app_id}/incoming"), token, json!({ "channel": alerts })).await;
        assert!(s == StatusCode::NOT_FOUND || s == StatusCode::FORBIDDEN, "{s}");
        let (s, _) = o.call(Method::DELETE, &format!("/v1/apps/{app_id}/incoming/{hook}"), token, None).await;
        assert!(s == StatusCode::NOT_FOUND || s == StatusCode::FORBIDDEN, "{s}");
    }
    let (s, v) = o.post(&format!("/v1/apps/{app_id}/incoming"), &admin, json!({ "channel": other_general })).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    let (s, v) = o.get(&format!("/v1/apps/{app_id}/incoming"), &admin).await;
    assert_eq!((s, v["hooks"].as_array().unwrap().len()), (StatusCode::OK, 1), "{v}");
    let (s, _) = o.call(Method::DELETE, &format!("/v1/apps/{app_id}/incoming/{hook}"), &admin, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = post(json!({ "text": "after the revocation" })).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "revoked");
    let (_, v) = o.get(&format!("/v1/channels/{alerts}/messages"), &admin).await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    o.stop().await;
}
