//! An app's token on a session (ARCHITECTURE §8 "Apps"): the edge holds every frame to the
//! token's scopes, and a token without `events` cannot open a session at all. A slash command
//! sent on a session: its private answer reaches every session of its sender and nobody else's.

mod support;

use selvage_origin::{accounts, apps};
use selvage_shared::Scope;
use serde_json::{json, Value};
use support::{rig, rig_with_origin, Got, Raw};

/// The next text frame as JSON, skipping events; `None` at a close or the end.
async fn next_reply(raw: &mut Raw) -> Option<Value> {
    loop {
        match raw.next().await {
            Got::Data(0x1, bytes) => {
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                if ["error", "result", "ack", "pong", "command"].contains(&v["type"].as_str().unwrap_or_default()) {
                    return Some(v);
                }
            }
            Got::Data(..) | Got::Control(_) => {}
            Got::Close(_) | Got::End => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_session_is_held_to_its_scopes() {
    let rig = rig("apps", false, |_| {}).await;
    let store = &rig.origin.store;
    let admin = accounts::authenticate(store, &rig.token).await.unwrap();

    // No `events`: the session is refused, with the reason, and closed as unauthorized.
    let quiet = apps::create(store, &admin, "Quiet", "quiet", &[Scope::ChatWrite], 0).await.unwrap();
    let mut raw = Raw::upgrade(rig.edge.addr, "", Some(&quiet.token)).await;
    let error = next_reply(&mut raw).await.expect("an error frame before the close");
    assert_eq!(error["code"], "forbidden", "{error}");
    assert!(error["message"].as_str().unwrap().contains("events"), "{error}");

    // `events` and `channels:read`: it may look, not post.
    let reader =
        apps::create(store, &admin, "Reader", "reader", &[Scope::Events, Scope::ChannelsRead], 0).await.unwrap();
    let (mut raw, hello) = Raw::connect_with(rig.edge.addr, &reader.token, "").await;
    assert_eq!(hello["self"]["id"], reader.bot_user.id.as_str(), "{hello}");
    let send = json!({ "type": "send", "id": "s1", "channel": rig.general, "text": "hi", "client_msg_id": "c1" });
    raw.send(0x81, send.to_string().as_bytes()).await;
    let refused = next_reply(&mut raw).await.unwrap();
    assert_eq!((refused["reply_to"].as_str(), refused["code"].as_str()), (Some("s1"), Some("forbidden")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("chat:write"), "{refused}");
    let history = json!({ "type": "query", "id": "h1", "q": "history", "channel": rig.general });
    raw.send(0x81, history.to_string().as_bytes()).await;
    let refused = next_reply(&mut raw).await.unwrap();
    assert_eq!(refused["code"], "forbidden", "no channels:history: {refused}");
    let channels = json!({ "type": "query", "id": "q1", "q": "channels" });
    raw.send(0x81, channels.to_string().as_bytes()).await;
    let answer = next_reply(&mut raw).await.unwrap();
    assert_eq!((answer["type"].as_str(), answer["reply_to"].as_str()), (Some("result"), Some("q1")), "{answer}");
    let ping = json!({ "type": "ping", "id": "p1" });
    raw.send(0x81, ping.to_string().as_bytes()).await;
    assert_eq!(next_reply(&mut raw).await.unwrap()["type"], "pong");
}

/// The frames up to the first of type `kind` (included), within the support's deadline.
async fn until(raw: &mut Raw, kind: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        match raw.next().await {
            Got::Data(0x1, bytes) => {
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                let done = v["type"] == kind;
                seen.push(v);
                if done {
                    return seen;
                }
            }
            Got::Data(..) | Got::Control(_) => {}
            other => panic!("the session ended waiting for {kind}: {other:?} after {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slash_commands_private_answer_reaches_its_senders_sessions_only() {
    // The app: `{"text": …}` for the sender alone, `in_channel` for `chan`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cmd", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/cmd",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let v: Value = serde_json::from_slice(&body).unwrap();
            match v["text"].as_str().unwrap() {
                "chan" => json!({ "response_type": "in_channel", "text": "for everyone" }).to_string(),
                other => json!({ "text": format!("only you: {other}") }).to_string(),
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let rig = rig_with_origin("cmds", false, |_| {}, |c| c.apps.allow_networks = vec!["127.0.0.1/32".into()]).await;
    let store = &rig.origin.store;
    let admin = accounts::authenticate(store, &rig.token).await.unwrap();
    let made = apps::create(store, &admin, "Ops", "ops", &[Scope::Commands, Scope::ChatWrite], 0).await.unwrap();
    rig.origin.commands.create(&admin, &made.app.id, "ops", &url, "", "").await.unwrap();

    let (mut first, _) = Raw::connect_with(rig.edge.addr, &rig.token, "").await;
    let (mut second, _) = Raw::connect_with(rig.edge.addr, &rig.another_token().await, "").await;
    let (mut bob, _) = Raw::connect_with(rig.edge.addr, &rig.user("bob").await, "").await;

    let run = |id: &str, text: &str| {
        json!({ "type": "send", "id": id, "channel": rig.general, "text": text, "client_msg_id": id }).to_string()
    };
    first.send(0x81, run("c1", "/ops status").as_bytes()).await;
    // The answer may overtake the command's reply: they come by different ways.
    let mut seen = until(&mut first, "command").await;
    let reply = seen.pop().unwrap();
    assert_eq!((reply["type"].as_str(), reply["reply_to"].as_str()), (Some("command"), Some("c1")), "{reply}");
    assert_eq!((reply["command"].as_str(), reply["answer"].as_str()), (Some("/ops"), Some("ephemeral")), "{reply}");
    let early = seen.into_iter().find(|v| v["type"] == "ephemeral_message");
    for (i, session) in [&mut first, &mut second].into_iter().enumerate() {
        let private = match (i, &early) {
            (0, Some(early)) => early.clone(),
            _ => until(session, "ephemeral_message").await.pop().unwrap(),
        };
        assert_eq!(private["text"], "only you: status", "{private}");
        assert_eq!(
            (private["channel"].as_str(), private["user"].as_str()),
            (Some(rig.general.as_str()), Some(rig.admin.as_str()))
        );
        assert_eq!(private["from"], made.bot_user.id.as_str(), "{private}");
    }

    // In the channel: everyone sees the command and its answer; bob saw nothing private first.
    first.send(0x81, run("c2", "/ops chan").as_bytes()).await;
    let reply = until(&mut first, "command").await.pop().unwrap();
    assert_eq!(reply["answer"], "in_channel", "{reply}");
    let mut seen = Vec::new();
    while !seen.iter().any(|v: &Value| v["text"] == "for everyone") {
        seen.extend(until(&mut bob, "message").await);
    }
    assert!(seen.iter().all(|v| v["type"] != "ephemeral_message"), "{seen:?}");
    let texts: Vec<&str> = seen.iter().filter(|v| v["type"] == "message").filter_map(|v| v["text"].as_str()).collect();
    assert_eq!(texts, ["/ops chan", "for everyone"]);

    // Unknown: an error to the sender, nothing posted.
    first.send(0x81, run("c3", "/nope").as_bytes()).await;
    let refused = next_reply(&mut first).await.unwrap();
    assert_eq!(
        (refused["reply_to"].as_str(), refused["code"].as_str()),
        (Some("c3"), Some("unknown_command")),
        "{refused}"
    );
}
