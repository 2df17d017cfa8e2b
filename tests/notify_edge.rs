//! Notification preferences through the edge (ARCHITECTURE §4, §8 "Notifications"): the
//! `notify_prefs` query and the `set_notify_prefs` frame go over the link to a real origin,
//! over WebSocket (JSON and MessagePack) and QUIC. Each user reads and changes only their own;
//! what the origin refuses reaches the client with its code and leaves the session usable.

mod support;

use reqwest::{Method, StatusCode};
use selvage_client::{Client, ClientError, Transport};
use selvage_shared::{ChannelId, ChannelNotify, ErrorCode, NotifyLevel, NotifyPrefs, Query, QueryKind};
use support::*;

fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_reads_and_sets_their_own_preferences_on_every_transport() {
    let origin = Origin::start().await;
    let (edge, _shutdown) = start_edge(&origin, "edge-notify").await;
    let a = origin.new_workspace("Acme").await;
    let b = origin.new_workspace("Beta").await;
    let (_, bob) = origin.user(&a.admin_token, "bob").await;
    let (_, carol) = origin.user(&a.admin_token, "carol").await;
    let secret = origin.channel(&a.admin_token, "secret", true).await;

    let transports = [Transport::WsJson, Transport::WsMsgpack, quic(&edge)];
    for (i, transport) in transports.iter().enumerate() {
        let client = Client::connect(options(&edge, transport, &bob)).await.unwrap();
        let mut prefs = NotifyPrefs {
            keywords: vec![format!("deploy-{i}"), "incident".into()],
            timezone: Some("Europe/Berlin".into()),
            email_address: Some("bob@example.com".into()),
            dnd_until: Some(1_900_000_000_000 + i as i64),
            ..NotifyPrefs::default()
        };
        prefs.channels.insert(a.general.clone(), ChannelNotify { level: Some(NotifyLevel::All), muted: false });
        let stored = client.set_notify_prefs(prefs.clone()).await.unwrap();
        assert_eq!(stored, prefs, "{transport:?}: answered as stored");
        assert_eq!(client.notify_prefs().await.unwrap(), prefs, "{transport:?}: read back");
        // The same document over HTTP: one store, two APIs.
        let (s, v) = origin.call(Method::GET, "/v1/notifications/prefs", &bob, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(serde_json::from_value::<NotifyPrefs>(v).unwrap(), prefs, "{transport:?}: over HTTP");

        // Refusals: a channel bob cannot see answers as a missing one; a bad document says why.
        let mut hidden = NotifyPrefs::default();
        hidden.channels.insert(secret.clone(), ChannelNotify { level: Some(NotifyLevel::All), muted: false });
        let (code, _) = refused(client.set_notify_prefs(hidden).await);
        assert_eq!(code, ErrorCode::NotFound, "{transport:?}: a private channel bob is not in");
        let other: ChannelId = b.general.clone();
        let mut elsewhere = NotifyPrefs::default();
        elsewhere.channels.insert(other, ChannelNotify { level: Some(NotifyLevel::All), muted: false });
        let (code, _) = refused(client.set_notify_prefs(elsewhere).await);
        assert_eq!(code, ErrorCode::NotFound, "{transport:?}: another workspace's channel");
        let bad_tz = NotifyPrefs { timezone: Some("Mars/Olympus".into()), ..NotifyPrefs::default() };
        let (code, message) = refused(client.set_notify_prefs(bad_tz).await);
        assert_eq!(code, ErrorCode::BadRequest, "{transport:?}");
        assert!(message.contains("Mars/Olympus"), "{message}");
        let bad_address = NotifyPrefs { email_address: Some("bob at example".into()), ..NotifyPrefs::default() };
        assert_eq!(refused(client.set_notify_prefs(bad_address).await).0, ErrorCode::BadRequest);
        // A notify_prefs query takes nothing but its id.
        let q = Query { channel: Some(a.general.clone()), ..Query::new("", QueryKind::NotifyPrefs) };
        assert_eq!(refused(client.query(q).await).0, ErrorCode::BadFrame, "{transport:?}");
        // Nothing refused changed anything, and the session goes on.
        assert_eq!(client.notify_prefs().await.unwrap(), prefs, "{transport:?}: unchanged by the refusals");
        client.ping().await.unwrap();
        client.close().await;
    }

    // carol sees her own defaults, never bob's; her change leaves bob's alone.
    let carol = Client::connect(options(&edge, &Transport::WsJson, &carol)).await.unwrap();
    assert_eq!(carol.notify_prefs().await.unwrap(), NotifyPrefs::default());
    let mine = NotifyPrefs { email: false, ..NotifyPrefs::default() };
    assert_eq!(carol.set_notify_prefs(mine.clone()).await.unwrap(), mine);
    let (_, v) = origin.call(Method::GET, "/v1/notifications/prefs", &bob, None).await;
    assert_eq!(v["keywords"][0], "deploy-2", "bob's are his own: {v}");
    carol.close().await;
}
