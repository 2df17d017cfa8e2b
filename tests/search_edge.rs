//! Search through the edge (ARCHITECTURE §4 `query`, §8 "Search"): a `search` query goes over
//! the link to a real origin with its index, over WebSocket (JSON and MessagePack) and QUIC. Who
//! finds what, refusals that leave the session usable, read-your-writes with a send's cursor,
//! and paging.

mod support;

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use selvage_client::{Client, ClientError, Inbound, SearchOptions, Transport};
use selvage_shared::{ChannelId, Cursor, ErrorCode, Query, QueryKind, SearchPage, SearchSort};
use serde_json::json;
use support::*;

/// Posts `text` (also its `client_msg_id`: texts differ) over HTTP as the holder of `token`;
/// returns its seq and feed cursor.
async fn post(origin: &Origin, token: &str, channel: &ChannelId, text: &str) -> (u64, Cursor) {
    let path = format!("/v1/channels/{channel}/messages");
    let (s, v) = origin.post(&path, token, json!({ "text": text, "client_msg_id": text })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (v["seq"].as_u64().unwrap(), v["cursor"].as_str().unwrap().parse().unwrap())
}

/// What `client` finds for `text` once the index covers `wait_for`: `(channel, seq)` of each hit.
async fn found(client: &Client, text: &str, wait_for: &Cursor) -> Vec<(ChannelId, u64)> {
    let opts = SearchOptions { wait_for: Some(wait_for.clone()), ..SearchOptions::default() };
    let page = client.search(text, opts).await.unwrap_or_else(|e| panic!("search {text:?}: {e}"));
    assert!(page.caught_up, "the index covers the cursor searched with");
    hits(&page)
}

fn hits(page: &SearchPage) -> Vec<(ChannelId, u64)> {
    page.results.iter().map(|r| (r.message.channel.clone(), r.message.seq)).collect()
}

fn refused(result: Result<SearchPage, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_find_messages_and_nobody_else_does() {
    let origin = Origin::start().await;
    let (edge, _shutdown) = start_edge(&origin, "edge-search").await;
    let a = origin.new_workspace("Acme").await;
    let b = origin.new_workspace("Beta").await;
    let (bob_id, bob) = origin.user(&a.admin_token, "bob").await;
    let (carol_id, carol) = origin.user(&a.admin_token, "carol").await;
    let (_, dave) = origin.user(&a.admin_token, "dave").await;
    let alice = &a.admin_token;

    let secret = origin.channel(alice, "secret", true).await;
    for user in [&bob_id, &carol_id] {
        let (s, v) = origin.post(&format!("/v1/channels/{secret}/members"), alice, json!({ "user": user })).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) = origin.post("/v1/dms", alice, json!({ "users": [bob_id] })).await;
    assert!(s.is_success(), "{v}");
    let dm: ChannelId = v["channel"]["id"].as_str().unwrap().parse().unwrap();

    let (public, _) = post(&origin, alice, &a.general, "the quokka review is on friday").await;
    let (private, _) = post(&origin, alice, &secret, "the zanzibar plan stays between us").await;
    let (direct, _) = post(&origin, &bob, &dm, "marmoset zanzibar, just for you").await;
    let (elsewhere, _) = post(&origin, &b.admin_token, &b.general, "zanzibar and quokka in another workspace").await;
    // Carol was a member when the message was posted (and indexed), and is no longer.
    let path = format!("/v1/channels/{secret}/members/{carol_id}");
    let (s, v) = origin.call(Method::DELETE, &path, alice, None).await;
    assert!(s.is_success(), "{v}");
    let (_, last) = post(&origin, alice, &a.general, "the last word").await;

    // Every transport carries the query and its results.
    let transports = [Transport::WsJson, Transport::WsMsgpack, quic(&edge)];
    let connect = |token: &str, i: usize| {
        let opts = options(&edge, &transports[i % transports.len()], token);
        async move { Client::connect(opts).await.unwrap() }
    };
    let alice = connect(alice, 0).await;
    let bob = connect(&bob, 1).await;
    let carol = connect(&carol, 2).await;
    let dave = connect(&dave, 0).await;
    let other = connect(&b.admin_token, 2).await;

    let general = a.general.clone();
    let expectations = [
        ("alice, a member of #secret and the DM", &alice, vec![(secret.clone(), private), (dm.clone(), direct)]),
        ("bob, a member of #secret and the DM", &bob, vec![(secret.clone(), private), (dm.clone(), direct)]),
        ("carol, removed from #secret", &carol, vec![]),
        ("dave, outside #secret and the DM", &dave, vec![]),
        ("the other workspace's admin", &other, vec![(b.general.clone(), elsewhere)]),
    ];
    for (who, client, expected) in expectations {
        let mut got = found(client, "zanzibar", &last).await;
        got.sort();
        let mut expected = expected;
        expected.sort();
        assert_eq!(got, expected, "{who} searching for zanzibar");
    }
    for (who, client) in [("alice", &alice), ("carol", &carol), ("dave", &dave)] {
        assert_eq!(found(client, "quokka", &last).await, vec![(general.clone(), public)], "{who}: public channel");
    }
    assert_eq!(found(&dave, "marmoset", &last).await, vec![], "a DM outsider");
    assert_eq!(found(&bob, "marmoset", &last).await, vec![(dm.clone(), direct)], "a DM member");
    // Naming the channel does not open it either.
    assert_eq!(found(&carol, &format!("zanzibar in:<#{secret}>"), &last).await, vec![], "in: a private channel");

    // A result carries the channel, the message and where it matched.
    let page = bob.search("zanzibar", SearchOptions { sort: SearchSort::Recent, ..Default::default() }).await.unwrap();
    let first = &page.results[0];
    assert_eq!((first.channel.id.clone(), first.message.seq), (dm.clone(), direct), "newest first");
    assert_eq!(first.message.text, "marmoset zanzibar, just for you");
    let snippet = &first.snippets[0];
    let [start, end] = snippet.highlights[0];
    assert_eq!(&snippet.fragment[start as usize..end as usize], "zanzibar");
    for c in [alice, bob, carol, dave, other] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_searches_are_refused_and_the_session_goes_on() {
    let origin = Origin::start().await;
    let (edge, _shutdown) = start_edge(&origin, "edge-search").await;
    let w = origin.new_workspace("Acme").await;
    let (seq, last) = post(&origin, &w.admin_token, &w.general, "release notes for the quarter").await;
    let mut client = Client::connect(options(&edge, &Transport::WsJson, &w.admin_token)).await.unwrap();

    // The origin's parser explains what is wrong, under the origin's code.
    let cases = [
        ("\"release notes", "quote is not closed"),
        ("notes before:yesterday-ish", "before:"),
        ("-release", "besides what it excludes"),
    ];
    for (text, says) in cases {
        let (code, message) = refused(client.search(text, SearchOptions::default()).await);
        assert_eq!(code, ErrorCode::BadRequest, "{text}: {message}");
        assert!(message.contains(says), "{text}: {message:?} should say {says:?}");
    }
    let page = SearchOptions { page: Some("not a page cursor".into()), ..Default::default() };
    assert_eq!(refused(client.search("release", page).await).0, ErrorCode::BadRequest);

    // What the edge itself refuses is a bad frame, said as such.
    let (code, message) = refused(client.search("   ", SearchOptions::default()).await);
    assert_eq!(code, ErrorCode::BadFrame);
    assert!(message.contains("search text"), "{message}");
    let (code, message) =
        refused(client.search("release", SearchOptions { limit: Some(101), ..Default::default() }).await);
    assert_eq!(code, ErrorCode::BadFrame);
    assert!(message.contains("1 to 100"), "{message}");
    let with_channel =
        Query { text: Some("release".into()), channel: Some(w.general.clone()), ..Query::new("x", QueryKind::Search) };
    match client.query(with_channel).await {
        Err(ClientError::Refused { code: ErrorCode::BadFrame, message }) => {
            assert!(message.contains("in:#"), "{message}")
        }
        other => panic!("a search with a channel field: {other:?}"),
    }
    let unknown_sort = br#"{"type":"query","id":"r1","q":"search","text":"x","sort":"oldest"}"#;
    client.send_raw(unknown_sort.to_vec(), false).await.unwrap();
    match client.next_event(WAIT).await.unwrap() {
        Some(Inbound::Error { code: ErrorCode::BadFrame, message }) => assert!(message.contains("oldest"), "{message}"),
        other => panic!("an unknown sort: {other:?}"),
    }

    // The session is still there, and searching still works.
    client.ping().await.unwrap();
    assert_eq!(found(&client, "release", &last).await, vec![(w.general.clone(), seq)]);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_waiting_for_a_send_finds_it_in_the_same_answer() {
    let origin = Origin::start().await;
    let (edge, _shutdown) = start_edge(&origin, "edge-search").await;
    let w = origin.new_workspace("Acme").await;
    let client = Client::connect(options(&edge, &quic(&edge), &w.admin_token)).await.unwrap();
    for i in 0..5 {
        let word = format!("freshword{i}");
        let ack = client.send(&w.general, &format!("just sent {word}"), &word, None).await.unwrap();
        let cursor = ack.cursor.clone().expect("a first send's ack carries its cursor");
        let page = client.search(&word, SearchOptions { wait_for: Some(cursor), ..Default::default() }).await.unwrap();
        assert!(page.caught_up);
        assert_eq!(hits(&page), vec![(w.general.clone(), ack.seq)], "{word} at once");
        // A retry is acknowledged without a cursor: the message was durable already.
        let again = client.send(&w.general, &format!("just sent {word}"), &word, None).await.unwrap();
        assert_eq!((again.seq, again.cursor), (ack.seq, None));
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_pages_follow_next() {
    let origin = Origin::start().await;
    let (edge, _shutdown) = start_edge(&origin, "edge-search").await;
    let w = origin.new_workspace("Acme").await;
    let mut sent = Vec::new();
    let mut last = None;
    for i in 0..7 {
        let (seq, cursor) = post(&origin, &w.admin_token, &w.general, &format!("pagination test {i}")).await;
        sent.push(seq);
        last = Some(cursor);
    }
    let client = Client::connect(options(&edge, &Transport::WsMsgpack, &w.admin_token)).await.unwrap();
    let mut opts = SearchOptions { sort: SearchSort::Recent, limit: Some(3), wait_for: last, ..Default::default() };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = client.search("pagination", opts.clone()).await.unwrap();
        pages += 1;
        assert!(page.results.len() <= 3 && !page.results.is_empty(), "page {pages}: {:?}", hits(&page));
        seen.extend(page.results.iter().map(|r| r.message.seq));
        match page.next_cursor {
            Some(next) => opts.page = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging never ends");
    }
    sent.reverse();
    assert_eq!(seen, sent, "every message once, newest first");
    assert_eq!(pages, 3);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_of_an_origin_without_search_is_not_found() {
    let origin = Origin::start_with(|c| c.search.enabled = false).await;
    let (edge, _shutdown) = start_edge(&origin, "edge-search").await;
    let w = origin.new_workspace("Acme").await;
    let client = Client::connect(options(&edge, &Transport::WsJson, &w.admin_token)).await.unwrap();
    let (code, message) = refused(client.search("anything", SearchOptions::default()).await);
    assert_eq!((code, message.as_str()), (ErrorCode::NotFound, "search is not enabled on this origin"));
    client.ping().await.unwrap();
    assert_eq!(origin.link_calls_of("search").await, 1, "the search was asked of the origin");
    client.close().await;
}
