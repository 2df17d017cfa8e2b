//! The one entry point for driving an origin from inside its own process: the load generator's
//! in-process targets and tests, which want a workspace to work in and sends at the speed of the
//! sequencer, without HTTP in between.
//!
//! Everything here is a method on the [`Origin`] handle that [`crate::start`] returns (in
//! [`crate::Running::origin`]), acting as an [`Actor`]: a user of a workspace with a token. Each
//! method runs the same domain code, with the same rules and refusals, as the HTTP route named in
//! its documentation; only the parsing and rendering of HTTP are skipped. Tokens made here never
//! expire.

use selvage_shared::{link::WorkspaceSnapshot, Channel, ChannelId, Seq, User, Workspace, WorkspaceId};

use crate::{
    accounts::{self, Issued},
    caller::Caller,
    channels,
    error::Result,
    messages::sequencer::{SendRequest, Sent},
    snapshot, Origin,
};

/// Someone an in-process caller acts as: a user of a workspace, and the bearer token they would
/// use over HTTP or a WebSocket.
#[derive(Clone, Debug)]
pub struct Actor {
    caller: Caller,
    token: String,
}

impl Actor {
    /// The workspace the actor belongs to.
    pub fn workspace(&self) -> &WorkspaceId {
        &self.caller.workspace
    }

    /// The user the actor is.
    pub fn user(&self) -> &User {
        &self.caller.user
    }

    /// The actor's bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Who the actor's requests act for, for in-crate tests of the domain functions.
    #[cfg(test)]
    pub(crate) fn caller(&self) -> &Caller {
        &self.caller
    }
}

impl Origin {
    /// Creates a workspace with its first admin and its `#general` channel
    /// (`POST /v1/workspaces`); answers the workspace and the admin.
    pub async fn create_workspace(
        &self,
        name: &str,
        admin_handle: &str,
        admin_name: &str,
    ) -> Result<(Workspace, Actor)> {
        let (workspace, issued) = accounts::create_workspace(&self.store, name, admin_handle, admin_name, 0).await?;
        Ok((workspace, self.actor(issued).await?))
    }

    /// Creates a user in `admin`'s workspace, joined to `#general` (`POST /v1/users`).
    pub async fn create_user(&self, admin: &Actor, handle: &str, name: &str) -> Result<Actor> {
        let issued = accounts::create_user(&self.store, &admin.caller, handle, name, false, 0).await?;
        self.actor(issued).await
    }

    /// Creates a channel with `creator` as its first member (`POST /v1/channels`).
    pub async fn create_channel(&self, creator: &Actor, name: &str, private: bool) -> Result<Channel> {
        Ok(channels::create(&self.store, &creator.caller, name, private, "", "").await?.channel)
    }

    /// Every channel `member` may see, by name (`GET /v1/channels`).
    pub async fn channels(&self, member: &Actor) -> Result<Vec<Channel>> {
        Ok(channels::list(&self.store, &member.caller).await?.into_iter().map(|view| view.channel).collect())
    }

    /// Posts `text` as `author` in `channel` and waits for the sequencer's ack: the message is
    /// durable and has its seq when this returns (`POST /v1/channels/{id}/messages`). A retry
    /// with the same `client_msg_id` answers the original, marked as a duplicate.
    pub async fn send(
        &self,
        author: &Actor,
        channel: &ChannelId,
        text: &str,
        client_msg_id: impl Into<String>,
    ) -> Result<Sent> {
        self.post(author, channel, None, text, client_msg_id.into()).await
    }

    /// [`Origin::send`], as a reply in the thread rooted at `root`.
    pub async fn reply(
        &self,
        author: &Actor,
        channel: &ChannelId,
        root: Seq,
        text: &str,
        client_msg_id: impl Into<String>,
    ) -> Result<Sent> {
        self.post(author, channel, Some(root), text, client_msg_id.into()).await
    }

    async fn post(
        &self,
        author: &Actor,
        channel: &ChannelId,
        thread_root: Option<Seq>,
        text: &str,
        client_msg_id: String,
    ) -> Result<Sent> {
        let request = SendRequest {
            workspace: author.caller.workspace.clone(),
            channel: channel.clone(),
            user: author.caller.user.id.clone(),
            text: text.to_string(),
            client_msg_id,
            thread_root,
            files: Vec::new(),
        };
        self.sequencer.send(request).await
    }

    /// A workspace's whole state and the feed cursor it is consistent with, as an edge loads it
    /// over the link (the `snapshot` call).
    pub async fn snapshot(&self, workspace: &WorkspaceId) -> Result<WorkspaceSnapshot> {
        snapshot::read(&self.store, workspace).await
    }

    /// The actor a just-issued token authenticates as.
    async fn actor(&self, issued: Issued) -> Result<Actor> {
        let caller = accounts::authenticate(&self.store, &issued.token).await?;
        Ok(Actor { caller, token: issued.token })
    }
}
