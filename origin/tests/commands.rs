//! Slash commands end to end: a real origin on port 0 and a real HTTP app in the test that
//! checks each command's Standard Webhooks signature with its own HMAC (the `hmac` and `sha2`
//! crates, not the origin's `ring`) and answers as the command's text tells it to.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post, Router};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use selvage_shared::Event;
use serde_json::{json, Value};
use sha2::Sha256;
use support::{Api, TestOrigin};

/// One command the app got, and whether its signature checked out.
#[derive(Clone, Debug)]
struct Got {
    body: Value,
    signed: bool,
}

/// The app: its secret (set once the command is registered) and what it got.
#[derive(Clone, Default)]
struct App {
    inner: Arc<Mutex<(String, Vec<Got>)>>,
}

impl App {
    async fn start() -> (App, String) {
        let app = App::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/command", listener.local_addr().unwrap());
        let router = Router::new().route("/command", post(answer)).with_state(app.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (app, url)
    }

    fn got(&self) -> Vec<Got> {
        self.inner.lock().unwrap().1.clone()
    }
}

/// Answers as the command's text says: `eph`, `chan`, `later` (nothing now), `slow` (too
/// late), `fail` (`500`).
async fn answer(State(app): State<App>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let signed = {
        let secret = app.inner.lock().unwrap().0.clone();
        let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or_default()).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
        mac.update(&body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        header("webhook-signature").split(' ').any(|s| s == expected)
    };
    app.inner.lock().unwrap().1.push(Got { body: v.clone(), signed });
    let text = v["text"].as_str().unwrap_or_default();
    match text.split_whitespace().next().unwrap_or_default() {
        "eph" => (StatusCode::OK, json!({ "text": format!("just you: {text}") }).to_string()),
        "chan" => (StatusCode::OK, json!({ "response_type": "in_channel", "text": "deployed for all" }).to_string()),
        "plain" => (StatusCode::OK, "plain words".into()),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (StatusCode::OK, json!({ "text": "too late" }).to_string())
        }
        "fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom".into()),
        _ => (StatusCode::OK, String::new()),
    }
}

/// Commands may reach 127.0.0.1, and have a second to answer.
fn tweak(c: &mut selvage_origin::OriginConfig) {
    c.apps.allow_networks = vec!["127.0.0.1/32".into()];
    c.apps.command_timeout_ms = 1_000;
}

/// An app with `commands` and `chat:write` and `/deploy` at `url`; answers (app id, bot id).
async fn app_with_command(api: &Api, admin: &str, url: &str, app: &App) -> (String, String) {
    let scopes = json!(["commands", "chat:write"]);
    let (s, v) =
        api.post("/v1/apps", admin, json!({ "name": "Deployer", "handle": "deployer", "scopes": scopes })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["app"]["id"].as_str().unwrap().to_string();
    let bot = v["bot_user"]["id"].as_str().unwrap().to_string();
    let body = json!({ "command": "/deploy", "url": url, "description": "Ships it", "usage_hint": "[env]" });
    let (s, v) = api.post(&format!("/v1/apps/{id}/commands"), admin, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["command"]["command"], "/deploy", "{v}");
    app.inner.lock().unwrap().0 = v["secret"].as_str().unwrap().to_string();
    (id, bot)
}

async fn run(api: &Api, token: &str, channel: &str, text: &str) -> (StatusCode, Value) {
    let body = json!({ "text": text, "client_msg_id": format!("k-{text}") });
    api.post(&format!("/v1/channels/{channel}/messages"), token, body).await
}

async fn texts(api: &Api, token: &str, channel: &str) -> Vec<(String, String)> {
    let (s, v) = api.get(&format!("/v1/channels/{channel}/messages?limit=50"), token).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut out: Vec<(String, String)> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user"].as_str().unwrap().to_string(), m["text"].as_str().unwrap().to_string()))
        .collect();
    out.retain(|(_, t)| !t.is_empty());
    out
}

/// The next ephemeral message the origin relays to the edges within 5 s.
async fn next_ephemeral(rx: &mut tokio::sync::broadcast::Receiver<selvage_origin::feed::relay::Relayed>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = rx.recv().await.unwrap();
            if matches!(r.event, Event::EphemeralMessage { .. }) {
                return r.event;
            }
        }
    })
    .await
    .expect("an ephemeral message")
}

#[tokio::test]
async fn a_command_runs_signed_and_answers_in_channel_or_to_the_sender_alone() {
    let o = TestOrigin::start_with(tweak).await;
    let (admin, general) = o.workspace("acme").await;
    let (alice_id, alice) = o.user(&admin, "alice").await;
    let (app, url) = App::start().await;
    let (_app_id, bot) = app_with_command(&o, &admin, &url, &app).await;
    let mut relayed = o.running().origin.relay.subscribe();

    // Ephemeral: nothing posted; the answer goes to alice alone, from the bot.
    let (s, v) = run(&o, &alice, &general, "/deploy eph staging").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["command"].as_str(), v["answer"].as_str()), (Some("/deploy"), Some("ephemeral")), "{v}");
    match next_ephemeral(&mut relayed).await {
        Event::EphemeralMessage { channel, user, from, text, .. } => {
            assert_eq!(
                (channel.as_str(), user.as_str(), from.as_str()),
                (general.as_str(), alice_id.as_str(), bot.as_str())
            );
            assert_eq!(text, "just you: eph staging");
        }
        other => panic!("{other:?}"),
    }
    assert!(texts(&o, &admin, &general).await.is_empty(), "nothing posted");
    let got = app.got();
    assert_eq!(got.len(), 1);
    assert!(got[0].signed, "signed with the command's secret: {:?}", got[0]);
    let body = &got[0].body;
    assert_eq!((body["type"].as_str(), body["command"].as_str()), (Some("slash_command"), Some("/deploy")), "{body}");
    assert_eq!((body["text"].as_str(), body["user"].as_str()), (Some("eph staging"), Some(alice_id.as_str())));
    assert_eq!(body["channel"], general.as_str());

    // In the channel: the command as alice, then the answer as the bot (which joins the
    // public channel to post it).
    let (s, v) = run(&o, &alice, &general, "/deploy chan prod").await;
    assert_eq!((s, v["answer"].as_str()), (StatusCode::OK, Some("in_channel")), "{v}");
    let posted = texts(&o, &admin, &general).await;
    assert_eq!(
        posted,
        [(alice_id.clone(), "/deploy chan prod".to_string()), (bot.clone(), "deployed for all".to_string())]
    );

    // A plain-text answer is for the sender alone.
    let (_, v) = run(&o, &alice, &general, "/DEPLOY plain").await;
    assert_eq!(v["answer"], "ephemeral", "{v}");
    match next_ephemeral(&mut relayed).await {
        Event::EphemeralMessage { text, .. } => assert_eq!(text, "plain words"),
        other => panic!("{other:?}"),
    }

    // Later, through the response_url: up to five answers, then it is spent.
    let (s, v) = run(&o, &alice, &general, "/deploy later").await;
    assert_eq!((s, v["answer"].as_str()), (StatusCode::OK, Some("deferred")), "{v}");
    let response_url = app.got().last().unwrap().body["response_url"].as_str().unwrap().to_string();
    assert!(response_url.starts_with(&o.base), "{response_url}");
    let http = reqwest::Client::new();
    let respond = |body: Value| http.post(&response_url).json(&body).send();
    let r = respond(json!({ "text": "done, for you" })).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    match next_ephemeral(&mut relayed).await {
        Event::EphemeralMessage { user, text, .. } => {
            assert_eq!((user.as_str(), text.as_str()), (alice_id.as_str(), "done, for you"))
        }
        other => panic!("{other:?}"),
    }
    let r = respond(json!({ "text": "done, for all", "response_type": "in_channel" })).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(texts(&o, &admin, &general).await.last().unwrap(), &(bot.clone(), "done, for all".to_string()));
    let r = respond(json!({ "text": "x", "response_type": "everyone" })).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a bad answer is refused and not counted");
    for _ in 0..3 {
        assert_eq!(respond(json!({ "text": "again" })).await.unwrap().status(), StatusCode::OK);
    }
    let r = respond(json!({ "text": "a sixth" })).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "five answers at most");
    let forged = format!("{}x", response_url);
    assert_eq!(http.post(&forged).json(&json!({ "text": "x" })).send().await.unwrap().status(), StatusCode::NOT_FOUND);

    // Metrics by outcome.
    assert_eq!(o.metric("selvage_commands_total{outcome=\"ephemeral\"}").await, 2.0);
    assert_eq!(o.metric("selvage_commands_total{outcome=\"in_channel\"}").await, 1.0);
    assert_eq!(o.metric("selvage_commands_total{outcome=\"deferred\"}").await, 1.0);
    o.stop().await;
}

#[tokio::test]
async fn unknown_late_and_failing_commands_are_clear_errors_and_post_nothing() {
    let o = TestOrigin::start_with(tweak).await;
    let (admin, general) = o.workspace("acme").await;
    let (app, url) = App::start().await;
    let (app_id, _) = app_with_command(&o, &admin, &url, &app).await;

    let (s, v) = run(&o, &admin, &general, "/nope a b").await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unknown_command")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("/nope"), "{v}");
    let (s, v) = run(&o, &admin, &general, "/deploy slow").await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FAILED_DEPENDENCY, Some("command_failed")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("did not answer within 1000 ms"), "{v}");
    let (s, v) = run(&o, &admin, &general, "/deploy fail").await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FAILED_DEPENDENCY, Some("command_failed")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("answered 500"), "{v}");
    assert!(texts(&o, &admin, &general).await.is_empty(), "nothing posted");

    // Not commands: texts whose first word is no name, and what bots send.
    assert_eq!(run(&o, &admin, &general, "/usr/bin is a path").await.0, StatusCode::CREATED);
    assert_eq!(run(&o, &admin, &general, " /nope with a space").await.0, StatusCode::CREATED);
    let (s, v) = o.post(&format!("/v1/apps/{app_id}/tokens"), &admin, json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let bot_token = v["token"].as_str().unwrap().to_string();
    let (s, v) = o
        .post(
            &format!("/v1/channels/{general}/members"),
            &admin,
            json!({ "user": o.get("/v1/apps", &admin).await.1["apps"][0]["bot_user"] }),
        )
        .await;
    assert!(s.is_success(), "{v}");
    assert_eq!(run(&o, &bot_token, &general, "/deploy eph").await.0, StatusCode::CREATED, "a bot's text is posted");
    assert_eq!(texts(&o, &admin, &general).await.len(), 3);

    // Outside the channels one is in: as a send would answer.
    let private = o.channel(&admin, "private", true).await;
    let (_, alice) = o.user(&admin, "alice").await;
    assert_eq!(run(&o, &alice, &private, "/deploy eph").await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.got().len(), 2, "only the slow and the failing command reached the app");

    assert_eq!(o.metric("selvage_commands_total{outcome=\"unknown\"}").await, 1.0);
    assert_eq!(o.metric("selvage_commands_total{outcome=\"failed\"}").await, 2.0);
    o.stop().await;
}

#[tokio::test]
async fn an_app_not_invited_to_a_private_channel_answers_there_only_to_the_sender() {
    let o = TestOrigin::start_with(tweak).await;
    let (admin, _) = o.workspace("acme").await;
    let (app, url) = App::start().await;
    let (_, bot) = app_with_command(&o, &admin, &url, &app).await;
    let private = o.channel(&admin, "private", true).await;
    let mut relayed = o.running().origin.relay.subscribe();

    let (s, v) = run(&o, &admin, &private, "/deploy chan").await;
    assert_eq!((s, v["answer"].as_str()), (StatusCode::OK, Some("ephemeral")), "{v}");
    match next_ephemeral(&mut relayed).await {
        Event::EphemeralMessage { text, .. } => assert!(text.contains("its app is not in it"), "{text}"),
        other => panic!("{other:?}"),
    }
    let (_, v) = o.get(&format!("/v1/channels/{private}/members"), &admin).await;
    assert!(!v.to_string().contains(&bot), "the bot was not let in: {v}");
    o.stop().await;
}

#[tokio::test]
async fn registering_commands_is_for_admins_checked_and_scoped_to_the_workspace() {
    let o = TestOrigin::start_with(tweak).await;
    let (admin, _) = o.workspace("acme").await;
    let (other_admin, _) = o.workspace("globex").await;
    let (_, alice) = o.user(&admin, "alice").await;
    let (app, url) = App::start().await;
    let (app_id, _) = app_with_command(&o, &admin, &url, &app).await;
    let path = format!("/v1/apps/{app_id}/commands");

    let cases = [
        (json!({ "command": "/deploy", "url": url }), StatusCode::CONFLICT),
        (json!({ "command": "/Bad Name", "url": url }), StatusCode::BAD_REQUEST),
        (json!({ "command": "/meta", "url": "http://169.254.169.254/latest/meta-data" }), StatusCode::BAD_REQUEST),
        (json!({ "command": "/local", "url": "http://10.0.0.1/x" }), StatusCode::BAD_REQUEST),
        (json!({ "command": "/ftp", "url": "ftp://example.com/x" }), StatusCode::BAD_REQUEST),
    ];
    for (body, status) in cases {
        let (s, v) = o.post(&path, &admin, body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
    }
    assert_eq!(o.post(&path, &alice, json!({ "command": "/x", "url": url })).await.0, StatusCode::FORBIDDEN);
    assert_eq!(o.post(&path, &other_admin, json!({ "command": "/x", "url": url })).await.0, StatusCode::NOT_FOUND);
    assert_eq!(o.get(&path, &other_admin).await.0, StatusCode::NOT_FOUND);

    // Everyone in the workspace sees its commands, with no secret; another workspace none.
    let (s, v) = o.get("/v1/commands", &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["commands"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["commands"][0]["usage_hint"], "[env]");
    assert!(!v.to_string().contains("whsec_"), "{v}");
    assert_eq!(o.get("/v1/commands", &other_admin).await.1["commands"], json!([]));

    // A revoked token reaches none of it.
    let (_, doomed) = o.user(&admin, "doomed").await;
    assert_eq!(o.post("/v1/tokens/revoke", &doomed, json!({})).await.0, StatusCode::OK);
    assert_eq!(o.get("/v1/commands", &doomed).await.0, StatusCode::UNAUTHORIZED);
    let general = o.get("/v1/channels", &admin).await.1["channels"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(run(&o, &doomed, &general, "/deploy eph").await.0, StatusCode::UNAUTHORIZED);

    // An app without the `commands` scope has none.
    let (_, v) =
        o.post("/v1/apps", &admin, json!({ "name": "Poster", "handle": "poster", "scopes": ["chat:write"] })).await;
    let poster = v["app"]["id"].as_str().unwrap();
    let (s, v) = o.post(&format!("/v1/apps/{poster}/commands"), &admin, json!({ "command": "/p", "url": url })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Deleting the command, or the app, ends it.
    assert_eq!(
        o.call(reqwest::Method::DELETE, &format!("{path}/deploy"), &other_admin, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        o.call(reqwest::Method::DELETE, &format!("{path}/deploy"), &admin, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(run(&o, &admin, &general, "/deploy eph").await.1["error"]["code"], "unknown_command");
    let (s, _) = o.post(&path, &admin, json!({ "command": "/again", "url": url })).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        o.call(reqwest::Method::DELETE, &format!("/v1/apps/{app_id}"), &admin, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(o.get("/v1/commands", &alice).await.1["commands"], json!([]));
    o.stop().await;
}

/// A rotated command secret: the old one keeps signing beside the new one, so the app can
/// switch without failing a run; only the app's admins rotate it.
#[tokio::test]
async fn a_rotated_command_secret_signs_beside_the_old_one() {
    let o = TestOrigin::start_with(tweak).await;
    let (admin, general) = o.workspace("acme").await;
    let (app, url) = App::start().await;
    let (app_id, _) = app_with_command(&o, &admin, &url, &app).await;
    let (s, v) = o.post(&format!("/v1/apps/{app_id}/commands/deploy/rotate"), &admin, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rotated = v["secret"].as_str().unwrap().to_string();
    assert!(rotated.starts_with("whsec_"), "{v}");
    // The app still checks with the old secret.
    let (s, v) = run(&o, &admin, &general, "/deploy eph one").await;
    assert!(s.is_success(), "{v}");
    // Then with the new one.
    app.inner.lock().unwrap().0 = rotated;
    let (s, v) = run(&o, &admin, &general, "/deploy eph two").await;
    assert!(s.is_success(), "{v}");
    let got = app.got();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|g| g.signed), "{got:?}");

    let (_, alice) = o.user(&admin, "alice").await;
    let path = format!("/v1/apps/{app_id}/commands/deploy/rotate");
    assert_eq!(o.post(&path, &alice, json!({})).await.0, StatusCode::FORBIDDEN);
    let (other, _) = o.workspace("globex").await;
    assert_eq!(o.post(&path, &other, json!({})).await.0, StatusCode::NOT_FOUND);
    let missing = format!("/v1/apps/{app_id}/commands/nope/rotate");
    assert_eq!(o.post(&missing, &admin, json!({})).await.0, StatusCode::NOT_FOUND);
    o.stop().await;
}

/// A retried send of a command (the same `client_msg_id`) does not run it again: it answers what
/// the first run came to. A run that failed did nothing, so its retry runs it.
#[tokio::test]
async fn a_retried_command_send_runs_it_once_and_a_failed_one_again() {
    let o = TestOrigin::start_with(tweak).await;
    let (admin, general) = o.workspace("acme").await;
    let (app, url) = App::start().await;
    app_with_command(&o, &admin, &url, &app).await;
    let first = run(&o, &admin, &general, "/deploy chan once").await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    assert_eq!(first.1["answer"], "in_channel", "{}", first.1);
    let again = run(&o, &admin, &general, "/deploy chan once").await;
    assert_eq!(first, again, "the retry answers what the first run came to");
    assert_eq!(app.got().len(), 1, "the app was asked once");
    let posted = texts(&o, &admin, &general).await;
    assert_eq!(posted.iter().filter(|(_, t)| t == "/deploy chan once").count(), 1, "{posted:?}");
    assert_eq!(posted.iter().filter(|(_, t)| t == "deployed for all").count(), 1, "{posted:?}");

    let (s, v) = run(&o, &admin, &general, "/deploy fail").await;
    assert!(!s.is_success(), "{v}");
    let (s, v) = run(&o, &admin, &general, "/deploy fail").await;
    assert!(!s.is_success(), "{v}");
    assert_eq!(app.got().len(), 3, "a failed run is tried again");
    o.stop().await;
}
