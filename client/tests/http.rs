//! The HTTP API client against a real origin on port 0 over a real embedded store in a temporary
//! directory, as a bot would use it (ARCHITECTURE §5).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use selvage_client::http::{HttpClient, HttpError, Page, Retry};
use selvage_origin::{OriginConfig, Running};
use selvage_shared::{ChannelId, ErrorCode, Event};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const OPERATOR_KEY: &str = "test-operator-key-0123456789";
const TEST_DEADLINE: Duration = Duration::from_secs(60);

struct TestOrigin {
    base: String,
    running: Option<Running>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestOrigin {
    async fn start() -> TestOrigin {
        let dir = tempfile::tempdir().unwrap();
        let config = OriginConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            operator_key: Some(OPERATOR_KEY.into()),
            ..OriginConfig::default()
        };
        let shutdown = CancellationToken::new();
        let running = selvage_origin::start(config, shutdown.clone()).await.unwrap();
        TestOrigin { base: format!("http://{}", running.addr), running: Some(running), shutdown, _dir: dir }
    }

    /// A raw call, for what a bot's token cannot do (making workspaces and users).
    async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
        resp.json().await.unwrap()
    }

    /// A workspace; returns its admin's token.
    async fn workspace(&self, name: &str) -> String {
        let v = self.post("/v1/workspaces", OPERATOR_KEY, json!({ "name": name, "admin_handle": "admin" })).await;
        v["token"].as_str().unwrap().to_owned()
    }

    /// A user of the admin's workspace; returns their token.
    async fn user(&self, admin: &str, handle: &str) -> String {
        let v = self.post("/v1/users", admin, json!({ "handle": handle })).await;
        v["token"].as_str().unwrap().to_owned()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
    }
}

async fn within<T>(test: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_DEADLINE, test).await.expect("test deadline passed")
}

async fn general(api: &HttpClient) -> ChannelId {
    let channels = api.channels().await.unwrap();
    channels.iter().find(|c| c.channel.name == "general").expect("a general channel").channel.id.clone()
}

fn is_request_id(id: Option<&str>) -> bool {
    id.is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn a_bot_posts_reads_edits_and_reacts() {
    within(async {
        let origin = TestOrigin::start().await;
        let token = origin.workspace("acme").await;
        let api = HttpClient::new(&origin.base, token).unwrap();

        let me = api.me().await.unwrap();
        assert_eq!(me.user.handle, "admin");
        let general = general(&api).await;
        let info = api.channel(&general).await.unwrap();
        assert!(info.is_member);
        assert_eq!(info.last_seq, 0);

        let first = api.post_message(&general, "hello", "m-1", None).await.unwrap();
        assert_eq!((first.seq, first.duplicate, first.message.text.as_str()), (1, false, "hello"));
        let again = api.post_message(&general, "hello", "m-1", None).await.unwrap();
        assert_eq!((again.seq, again.duplicate), (1, true), "a repeat answers with the original");
        let second = api.post_message(&general, "second", "m-2", None).await.unwrap();
        let reply = api.post_message(&general, "in the thread", "m-3", Some(first.seq)).await.unwrap();
        assert_eq!((second.seq, reply.seq), (2, 3));

        let newest = api.history(&general, Page::newest(10)).await.unwrap();
        let seqs: Vec<_> = newest.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3], "oldest first, the repeat written once");
        assert!(!newest.has_more);
        let after = api.history(&general, Page::after(1, 1)).await.unwrap();
        assert_eq!((after.messages[0].seq, after.has_more), (2, true));
        let before = api.history(&general, Page::before(3, 10)).await.unwrap();
        assert_eq!(before.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
        let thread = api.thread(&general, first.seq, Page::default()).await.unwrap();
        assert_eq!(thread.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);

        let edited = api.edit_message(&general, 2, "second, edited").await.unwrap();
        assert_eq!(edited.text, "second, edited");
        assert!(edited.edited_at.is_some());
        let reacted = api.react(&general, 2, "thumbsup::skin-tone-2").await.unwrap();
        assert_eq!(reacted.reactions.len(), 1);
        assert_eq!((reacted.reactions[0].emoji.as_str(), reacted.reactions[0].count), ("thumbsup::skin-tone-2", 1));
        assert_eq!(api.react(&general, 2, "thumbsup::skin-tone-2").await.unwrap().reactions[0].count, 1);
        assert!(api.unreact(&general, 2, "thumbsup::skin-tone-2").await.unwrap().reactions.is_empty());
        assert!(api.delete_message(&general, 2).await.unwrap().deleted);
        assert_eq!(api.mark_read(&general, 3).await.unwrap(), 3);

        let head = api.events(None, Duration::ZERO).await.unwrap();
        assert!(head.events.is_empty());
        let posted = api.post_message(&general, "after the head", "m-4", None).await.unwrap();
        let events = api.events(Some(&head.cursor), Duration::from_secs(10)).await.unwrap();
        assert!(events.resync.is_none());
        let sent = events.events.iter().find_map(|frame| match &frame.event {
            Event::Message(message) => Some(message.seq),
            _ => None,
        });
        assert_eq!(sent, Some(posted.seq), "{:?}", events.events);
        origin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn errors_carry_the_api_code_message_and_request_id() {
    within(async {
        let origin = TestOrigin::start().await;
        let admin = origin.workspace("acme").await;
        let ada = origin.user(&admin, "ada").await;
        let admin_api = HttpClient::new(&origin.base, admin).unwrap();
        let general = general(&admin_api).await;
        let first = admin_api.post_message(&general, "mine", "a-1", None).await.unwrap();

        let stranger = HttpClient::new(&origin.base, "svt_not-a-token").unwrap();
        match stranger.me().await {
            Err(e @ HttpError::Api { status: StatusCode::UNAUTHORIZED, code: ErrorCode::Unauthorized, .. }) => {
                assert!(is_request_id(e.request_id()), "{e}");
            }
            other => panic!("expected unauthorized, got {other:?}"),
        }

        let ada = HttpClient::new(&origin.base, ada).unwrap();
        let missing = ChannelId::parse("C-no-such-channel").unwrap();
        assert_eq!(ada.history(&missing, Page::default()).await.unwrap_err().code(), Some(ErrorCode::NotFound));
        let edit = ada.edit_message(&general, first.seq, "not yours").await.unwrap_err();
        assert_eq!(edit.code(), Some(ErrorCode::Forbidden), "{edit}");
        assert!(is_request_id(edit.request_id()));
        ada.join(&general).await.unwrap();
        ada.join(&general).await.unwrap();
        let posted = ada.post_message(&general, "joined", "b-1", None).await.unwrap();
        let conflict = ada.post_message(&general, "other text", "b-1", None).await.unwrap_err();
        match &conflict {
            HttpError::Api { status, code, message, .. } => {
                assert_eq!((*status, *code), (StatusCode::CONFLICT, ErrorCode::Conflict));
                assert!(!message.is_empty());
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(!conflict.is_retryable());
        let history = admin_api.history(&general, Page::default()).await.unwrap();
        assert_eq!(history.messages.last().map(|m| (m.seq, m.text.as_str())), Some((posted.seq, "joined")));
        origin.stop().await;
    })
    .await;
}

/// Forwards every request to the origin, but answers the first `lose` sends of a message with
/// `503 unavailable` — after the origin committed them: the answer is lost, not the message.
struct LossyProxy {
    origin: String,
    lose: usize,
    sends: AtomicUsize,
}

async fn forward(
    State(proxy): State<Arc<LossyProxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
    let mut request = reqwest::Client::new().request(method.clone(), format!("{}{uri}", proxy.origin)).body(body);
    for name in ["authorization", "content-type"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            request = request.header(name, value);
        }
    }
    let answer = request.send().await.unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let body = answer.bytes().await.unwrap();
    let is_send = method == reqwest::Method::POST && uri.path().ends_with("/messages");
    if is_send && proxy.sends.fetch_add(1, Ordering::SeqCst) < proxy.lose {
        let error = json!({ "error": { "code": "unavailable", "message": "the answer was lost" } });
        return (StatusCode::SERVICE_UNAVAILABLE, [("x-request-id", "00000000000000ff")], axum::Json(error))
            .into_response();
    }
    (status, [("content-type", "application/json")], body).into_response()
}

#[tokio::test]
async fn a_send_whose_answer_is_lost_is_retried_and_written_once() {
    within(async {
        let origin = TestOrigin::start().await;
        let token = origin.workspace("acme").await;
        let proxy = Arc::new(LossyProxy { origin: origin.base.clone(), lose: 2, sends: AtomicUsize::new(0) });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(forward).with_state(proxy.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let retry = Retry { attempts: 3, backoff: Duration::from_millis(10), max_backoff: Duration::from_millis(50) };
        let api = HttpClient::new(&proxy_base, &token).unwrap().with_retry(retry);
        let general = general(&api).await;
        let posted = api.post_message(&general, "exactly once", "lost-1", None).await.unwrap();
        assert_eq!(proxy.sends.load(Ordering::SeqCst), 3, "two lost answers, then the third try");
        assert_eq!((posted.seq, posted.duplicate), (1, true), "the first try had written it");
        let history = api.history(&general, Page::default()).await.unwrap();
        assert_eq!(history.messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["exactly once"]);

        // Out of tries: the last error comes back, with its request id.
        proxy.sends.store(0, Ordering::SeqCst);
        let once = api.clone().with_retry(Retry { attempts: 1, ..retry });
        let lost = once.post_message(&general, "lost again", "lost-2", None).await.unwrap_err();
        assert_eq!((lost.code(), lost.request_id()), (Some(ErrorCode::Unavailable), Some("00000000000000ff")));
        assert!(lost.is_retryable());
        assert_eq!(proxy.sends.load(Ordering::SeqCst), 1);

        server.abort();
        origin.stop().await;
    })
    .await;
}
