//! An app's token on a session (ARCHITECTURE §8 "Apps"): the edge holds every frame to the
//! token's scopes, and a token without `events` cannot open a session at all.

mod support;

use selvage_origin::{accounts, apps};
use selvage_shared::Scope;
use serde_json::{json, Value};
use support::{rig, Got, Raw};

/// The next text frame as JSON, skipping events; `None` at a close or the end.
async fn next_reply(raw: &mut Raw) -> Option<Value> {
    loop {
        match raw.next().await {
            Got::Data(0x1, bytes) => {
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                if v["type"] == "error" || v["type"] == "result" || v["type"] == "ack" || v["type"] == "pong" {
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
