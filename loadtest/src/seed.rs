//! Seeding test workspaces through the origin's public HTTP API (docs/API.md), as an operator
//! and an admin would: create the workspace with the operator key, then users, channels,
//! memberships and DMs, many requests at once. The same client makes the few other calls the
//! scenarios need: changing messages (edits, deletes, reactions) and reading a channel's history.

use std::future::Future;

use anyhow::{bail, Context, Result};
use futures::{stream, StreamExt, TryStreamExt};
use selvage_shared::{Channel, ChannelId, Message, User, UserId, Workspace};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// Messages asked for per history page (the API's most).
const HISTORY_PAGE: usize = 1000;

/// A client of the origin's HTTP API.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    concurrency: usize,
}

/// A user and their token.
#[derive(Clone, Debug)]
pub struct Member {
    /// The user record as the origin returned it.
    pub user: User,
    /// Their bearer token.
    pub token: String,
}

/// A freshly created workspace and its first admin.
#[derive(Clone, Debug)]
pub struct SeededWorkspace {
    /// The workspace record.
    pub workspace: Workspace,
    /// The admin, who creates everything else.
    pub admin: Member,
    /// `#general`, which every user joins on creation.
    pub general: Channel,
}

#[derive(Deserialize)]
struct Created {
    workspace: Workspace,
    user: User,
    token: String,
}

#[derive(Deserialize)]
struct Issued {
    user: User,
    token: String,
}

#[derive(Deserialize)]
struct ChannelReply {
    channel: Channel,
}

#[derive(Deserialize)]
struct ChannelList {
    channels: Vec<Channel>,
}

#[derive(Deserialize)]
struct MessageReply {
    message: Message,
}

#[derive(Deserialize)]
struct HistoryPage {
    messages: Vec<Message>,
    has_more: bool,
}

/// The origin answered a request with an error status: the error of [`Api`]'s calls that a
/// caller may want to tell apart (downcast an `anyhow::Error` to it), e.g. to count errors by
/// code.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path} failed ({status}): {body}")]
pub struct Refused {
    method: reqwest::Method,
    path: String,
    /// The HTTP status.
    pub status: u16,
    /// The answer's `error.code` (`not_found`, `forbidden`, …); empty when it had none.
    pub code: String,
    body: String,
}

impl Api {
    /// A client of the origin at `base` (e.g. `http://127.0.0.1:7700`) that runs at most
    /// `concurrency` requests at once in its bulk operations.
    pub fn new(http: reqwest::Client, base: &str, concurrency: usize) -> Api {
        Api { http, base: base.trim_end_matches('/').to_string(), concurrency: concurrency.max(1) }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            let code = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&bytes).into_owned();
            return Err(Refused { method, path: path.to_string(), status: status.as_u16(), code, body }.into());
        }
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer to {method} {path}"))
    }

    /// Creates a workspace with the operator key; its admin gets the handle `admin_handle`.
    pub async fn create_workspace(
        &self,
        operator_key: &str,
        name: &str,
        admin_handle: &str,
    ) -> Result<SeededWorkspace> {
        let body = json!({ "name": name, "admin_handle": admin_handle, "admin_name": "Workspace Admin" });
        let created: Created = self
            .request(reqwest::Method::POST, "/v1/workspaces", operator_key, Some(body))
            .await
            .context("creating the test workspace (is the operator key right?)")?;
        let admin = Member { user: created.user, token: created.token };
        let list: ChannelList = self.request(reqwest::Method::GET, "/v1/channels", &admin.token, None).await?;
        let general = list
            .channels
            .into_iter()
            .find(|c| c.name == "general")
            .context("the new workspace has no #general channel")?;
        Ok(SeededWorkspace { workspace: created.workspace, admin, general })
    }

    /// Creates users (they join `#general`) with the given (handle, name)s, `concurrency` at a
    /// time; returns them in the order given.
    pub async fn create_users(&self, admin: &Member, people: Vec<(String, String)>) -> Result<Vec<Member>> {
        self.bulk(people, |(handle, name)| async move {
            let body = json!({ "handle": handle, "name": name });
            let issued: Issued = self.request(reqwest::Method::POST, "/v1/users", &admin.token, Some(body)).await?;
            Ok(Member { user: issued.user, token: issued.token })
        })
        .await
    }

    /// Creates channels (name, private) as `creator`, who becomes their first member; returns
    /// them in the order given.
    pub async fn create_channels(&self, creator: &Member, specs: Vec<(String, bool)>) -> Result<Vec<Channel>> {
        self.bulk(specs, |(name, private)| async move {
            let body = json!({ "name": name, "private": private });
            let reply: ChannelReply =
                self.request(reqwest::Method::POST, "/v1/channels", &creator.token, Some(body)).await?;
            Ok(reply.channel)
        })
        .await
    }

    /// Adds users to channels, as `inviter` (a member of each channel).
    pub async fn add_members(&self, inviter: &Member, pairs: Vec<(ChannelId, UserId)>) -> Result<()> {
        self.bulk(pairs, |(channel, user)| async move {
            let path = format!("/v1/channels/{channel}/members");
            let _: Value =
                self.request(reqwest::Method::POST, &path, &inviter.token, Some(json!({ "user": user }))).await?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Opens DMs (one other user) or group DMs (several) for `opener`; returns them in order.
    pub async fn open_conversations(&self, opener: &Member, others: Vec<Vec<UserId>>) -> Result<Vec<Channel>> {
        self.bulk(others, |users| async move {
            let reply: ChannelReply =
                self.request(reqwest::Method::POST, "/v1/dms", &opener.token, Some(json!({ "users": users }))).await?;
            Ok(reply.channel)
        })
        .await
    }

    /// Replaces the text of message `seq` (as its author, or an admin); answers the message as it
    /// now reads.
    pub async fn edit_message(&self, token: &str, channel: &ChannelId, seq: u64, text: &str) -> Result<Message> {
        let path = format!("/v1/channels/{channel}/messages/{seq}");
        let reply: MessageReply =
            self.request(reqwest::Method::PATCH, &path, token, Some(json!({ "text": text }))).await?;
        Ok(reply.message)
    }

    /// Deletes message `seq` (as its author, or an admin), leaving its tombstone; answers the
    /// tombstone.
    pub async fn delete_message(&self, token: &str, channel: &ChannelId, seq: u64) -> Result<Message> {
        let path = format!("/v1/channels/{channel}/messages/{seq}");
        let reply: MessageReply = self.request(reqwest::Method::DELETE, &path, token, None).await?;
        Ok(reply.message)
    }

    /// Adds (`add`) or takes back the token's user's reaction `emoji` to message `seq`; answers
    /// the message as it now reads. `emoji` goes into the path as it is, so it must be a valid
    /// emoji name (which needs no escaping).
    pub async fn react(&self, token: &str, channel: &ChannelId, seq: u64, emoji: &str, add: bool) -> Result<Message> {
        let path = format!("/v1/channels/{channel}/messages/{seq}/reactions/{emoji}");
        let method = if add { reqwest::Method::PUT } else { reqwest::Method::DELETE };
        let reply: MessageReply = self.request(method, &path, token, None).await?;
        Ok(reply.message)
    }

    /// Every message of a channel as a member (`token`) reads it now, oldest first, a page at a
    /// time.
    pub async fn history(&self, token: &str, channel: &ChannelId) -> Result<Vec<Message>> {
        let mut messages = Vec::new();
        let mut after = 0;
        loop {
            let path = format!("/v1/channels/{channel}/messages?after={after}&limit={HISTORY_PAGE}");
            let page: HistoryPage = self.request(reqwest::Method::GET, &path, token, None).await?;
            let Some(last) = page.messages.last().map(|m| m.seq) else { break };
            if last <= after {
                bail!("the history of {channel} after seq {after} went backwards (to seq {last})");
            }
            after = last;
            messages.extend(page.messages);
            if !page.has_more {
                break;
            }
        }
        Ok(messages)
    }

    /// Runs `f` over `items` with at most `concurrency` in flight; results in input order;
    /// the first failure stops the rest.
    async fn bulk<I, T, F, Fut>(&self, items: Vec<I>, f: F) -> Result<Vec<T>>
    where
        F: Fn(I) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        stream::iter(items.into_iter().map(f)).buffered(self.concurrency).try_collect().await
    }
}

/// A person's display name for user number `i`: realistic lengths without real people.
pub fn person_name(i: usize) -> String {
    const FIRST: [&str; 16] = [
        "Ada",
        "Grace",
        "Alan",
        "Edsger",
        "Barbara",
        "Donald",
        "Margaret",
        "Dennis",
        "Frances",
        "Ken",
        "Radia",
        "Leslie",
        "Hedy",
        "Tim",
        "Katherine",
        "Niklaus",
    ];
    const LAST: [&str; 16] = [
        "Lovelace",
        "Hopper",
        "Turing",
        "Dijkstra",
        "Liskov",
        "Knuth",
        "Hamilton",
        "Ritchie",
        "Allen",
        "Thompson",
        "Perlman",
        "Lamport",
        "Lamarr",
        "Berners-Lee",
        "Johnson",
        "Wirth",
    ];
    format!("{} {} {}", FIRST[i % FIRST.len()], LAST[(i / FIRST.len()) % LAST.len()], i)
}
