//! Slash commands (ARCHITECTURE §8 "Apps"): an app registers `/name` with a URL, and a person's
//! `send` whose text starts with it runs the command instead of being posted.
//!
//! Running one: the origin checks the sender may post in the channel, makes a `response_url`
//! (a secret URL, valid for 30 minutes and five answers), and POSTs the command to the app as
//! JSON, signed as event webhooks are (Standard Webhooks; a secret per command, shown once).
//! The app has `apps.command_timeout_ms` (3 s) to answer:
//! - `{"response_type": "in_channel", "text": …}`: the command is posted as its sender and the
//!   answer as the app's bot user, for everyone in the channel;
//! - `{"text": …}` (or `"response_type": "ephemeral"`, or a plain-text body): the answer goes
//!   to the sender alone, as an `ephemeral_message` event to their sessions, never stored;
//! - an empty `2xx`: taken, the app answers later through the `response_url`, if at all.
//!
//! An unknown command is `unknown_command` and an app that fails or is late `command_failed`,
//! both to the sender; nothing is posted either way. Bots' texts are never commands: an app's
//! `/status` is a message. A command's name is `[a-z0-9_-]{1,32}`: a text whose first word is
//! not one (`/usr/bin`, `/ 5`) is a message, and one that should be can start with a space.

use std::time::Duration;

use selvage_shared::{AppId, ChannelId, CommandAnswer, Event, Scope, Seq, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::webhooks::{new_secret, retire, sign, Secret};
use crate::{
    caller::{get_user, Caller},
    channels::records as channel_records,
    config::AppsConfig,
    error::{OriginError, Result},
    feed::relay::Relayed,
    ids,
    messages::{records::validate_text, sequencer::SendRequest},
    outbound::{self, Allow, Outbound},
    store::{keys, KvTxn, RangeRead, Store, StoreError},
    transact, Origin,
};

/// Most commands one app may register.
pub const MAX_PER_APP: usize = 25;
/// Longest command name (without its slash).
pub const MAX_NAME: usize = 32;
/// How long a `response_url` answers.
pub const RESPONSE_URL_TTL_MS: i64 = 30 * 60 * 1000;
/// How many answers one `response_url` takes.
pub const RESPONSE_URL_USES: u32 = 5;
/// The most of an app's answer that is read (a longer one fails the command).
const MAX_ANSWER: usize = 64 * 1024;
/// Expired `response_url`s cleared by each command run.
const SWEEP: usize = 16;

/// A registered command as the store keeps it, under its name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Command {
    /// Its name, without the slash.
    pub name: String,
    /// The app it belongs to.
    pub app: AppId,
    /// Where it is POSTed.
    pub url: String,
    /// What it does, for the people who type it.
    pub description: String,
    /// Its arguments, e.g. `[environment]`.
    pub usage_hint: String,
    /// The secret that signs what it is sent.
    pub secret: Secret,
    /// Secrets rotated out that still sign beside it until their `until`.
    #[serde(default)]
    pub previous: Vec<Secret>,
    /// Who registered it.
    pub created_by: UserId,
    /// When (ms).
    pub created_at: i64,
}

/// A command as the API shows it: no secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommandView {
    /// With its slash: `/deploy`.
    pub command: String,
    pub app: AppId,
    pub url: String,
    pub description: String,
    pub usage_hint: String,
    pub created_at: i64,
}

impl From<&Command> for CommandView {
    fn from(c: &Command) -> Self {
        CommandView {
            command: format!("/{}", c.name),
            app: c.app.clone(),
            url: c.url.clone(),
            description: c.description.clone(),
            usage_hint: c.usage_hint.clone(),
            created_at: c.created_at,
        }
    }
}

/// Where a command's later answers go, kept under the hash of its `response_url`'s secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Respond {
    /// The run's channel, sender and command.
    to: Target,
    app: AppId,
    expires_at: i64,
    uses_left: u32,
}

/// What a send that starts with a command comes to, as its transaction finds it.
enum Found {
    /// No such command (or its app's bot is gone).
    Unknown,
    /// A retry of a send that already ran it: the first run's outcome (`Deferred` while it runs).
    Again(CommandAnswer),
    /// To run: the command, its app's bot user, where its answers go.
    Run(Box<(Command, UserId, Target)>),
}

/// One run of a command, for retries of its send (kept as long as its `response_url`).
#[derive(Debug, Serialize, Deserialize)]
struct Run {
    /// What it came to; `None` while it runs.
    outcome: Option<CommandAnswer>,
}

/// What an app answered, or sent to a `response_url`.
#[derive(Debug, Default, Deserialize)]
pub struct Answer {
    /// The answer; none: nothing to show.
    #[serde(default)]
    pub text: Option<String>,
    /// `in_channel` or `ephemeral` (the default).
    #[serde(default)]
    pub response_type: Option<String>,
}

/// A command's name from the text of a send, and the rest (its arguments); `None` when the
/// text is not a command.
pub fn parse(text: &str) -> Option<(String, &str)> {
    let rest = text.strip_prefix('/')?;
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let name = &rest[..end];
    valid_name(name).then(|| (name.to_ascii_lowercase(), rest[end..].trim()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn no_command(name: &str) -> OriginError {
    OriginError::NotFound(format!("command /{name} not found"))
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Option<T> {
    selvage_shared::from_msgpack(raw).ok()
}

/// Slash commands: their registry, and running them.
pub struct Commands {
    store: Store,
    allow: Allow,
    client: Outbound,
    timeout: Duration,
    /// Where `response_url`s point: the API's public URL, no trailing slash.
    base: String,
    /// How long a secret rotated out still signs (ms).
    overlap_ms: i64,
}

impl Commands {
    /// Commands over `store`, reaching apps as `config` allows, with `response_url`s under
    /// `base` (used when `config.public_url` is empty).
    pub fn new(store: &Store, config: &AppsConfig, base: &str) -> std::result::Result<Commands, String> {
        let allow = Allow::parse(false, &config.allow_networks)?;
        let timeout = Duration::from_millis(config.command_timeout_ms);
        let client = Outbound::new(allow.clone(), timeout)?;
        let base = if config.public_url.is_empty() { base } else { config.public_url.as_str() };
        Ok(Commands {
            store: store.clone(),
            allow,
            client,
            timeout,
            base: base.trim_end_matches('/').to_string(),
            overlap_ms: config.secret_overlap_secs as i64 * 1000,
        })
    }

    /// Registers `/name` for app `a` (admins; the app needs the `commands` scope). Answers it and
    /// its signing secret (shown once).
    pub async fn create(
        &self,
        caller: &Caller,
        a: &AppId,
        name: &str,
        url: &str,
        description: &str,
        usage_hint: &str,
    ) -> Result<(CommandView, String)> {
        super::require_admin(caller)?;
        let name = name.strip_prefix('/').unwrap_or(name);
        if !valid_name(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(OriginError::BadRequest(format!(
                "command: 1 to {MAX_NAME} of a-z, 0-9, _ and -, after an optional slash"
            )));
        }
        if url.len() > 2048 {
            return Err(OriginError::BadRequest("url: at most 2048 bytes".into()));
        }
        outbound::check_url(url, &self.allow).map_err(|e| OriginError::BadRequest(format!("url: {e}")))?;
        if description.chars().count() > 200 || usage_hint.chars().count() > 100 {
            return Err(OriginError::BadRequest("description: at most 200 characters; usage_hint: 100".into()));
        }
        let w = &caller.workspace;
        let (app, _) = transact!(self.store, |tx| { super::load(tx, w, a).await? })?;
        let app = app.ok_or_else(|| super::no_app(a))?;
        if !app.scopes.contains(&Scope::Commands) {
            return Err(OriginError::BadRequest("the app needs the `commands` scope to have slash commands".into()));
        }
        let (secret, shown) = new_secret()?;
        let command = Command {
            name: name.to_string(),
            app: a.clone(),
            url: url.to_string(),
            description: description.to_string(),
            usage_hint: usage_hint.to_string(),
            secret,
            previous: Vec::new(),
            created_by: caller.user.id.clone(),
            created_at: crate::now_ms(),
        };
        let (made, _) = transact!(self.store, |tx| {
            if super::load(tx, w, a).await?.is_none() {
                return Ok(Err(super::no_app(a)));
            }
            if tx.get(&keys::command(w, name)).await?.is_some() {
                return Ok(Err(OriginError::Conflict(format!("/{name} is taken in this workspace"))));
            }
            if of_app(tx, w, a).await?.len() >= MAX_PER_APP {
                return Ok(Err(OriginError::BadRequest(format!("an app has at most {MAX_PER_APP} commands"))));
            }
            tx.set(&keys::command(w, name), &selvage_shared::to_msgpack(&command))?;
            Ok(())
        })?;
        made?;
        Ok((CommandView::from(&command), shown))
    }

    /// App `a`'s commands (admins).
    pub async fn list(&self, caller: &Caller, a: &AppId) -> Result<Vec<CommandView>> {
        super::require_admin(caller)?;
        let w = &caller.workspace;
        let (found, _) = transact!(self.store, |tx| {
            match super::load(tx, w, a).await? {
                None => None,
                Some(_) => Some(of_app(tx, w, a).await?),
            }
        })?;
        Ok(found.ok_or_else(|| super::no_app(a))?.iter().map(CommandView::from).collect())
    }

    /// Every command of the caller's workspace, for anyone in it: what a client offers as the
    /// person types `/`.
    pub async fn all(&self, caller: &Caller) -> Result<Vec<CommandView>> {
        let w = &caller.workspace;
        let (rows, _) = transact!(self.store, |tx| { tx.get_range(&RangeRead::prefix(&keys::commands(w))).await? })?;
        Ok(rows.iter().filter_map(|(_, raw)| decode::<Command>(raw)).map(|c| CommandView::from(&c)).collect())
    }

    /// Makes a new signing secret for `/name` of app `a` (admins); the current one keeps
    /// signing beside it for `apps.secret_overlap_secs`, so the app can switch without failing a
    /// run. Answers the new one (shown once).
    pub async fn rotate(&self, caller: &Caller, a: &AppId, name: &str) -> Result<String> {
        super::require_admin(caller)?;
        let name = name.strip_prefix('/').unwrap_or(name);
        if !valid_name(name) {
            return Err(no_command(name));
        }
        let (secret, shown) = new_secret()?;
        let w = &caller.workspace;
        let overlap = self.overlap_ms;
        let (found, _) = transact!(self.store, |tx| {
            let key = keys::command(w, name);
            match tx.get(&key).await?.and_then(|raw| decode::<Command>(&raw)).filter(|c| c.app == *a) {
                None => false,
                Some(mut command) => {
                    let now = crate::now_ms();
                    command.previous.push(std::mem::replace(&mut command.secret, secret.clone()));
                    retire(&mut command.previous, now, overlap);
                    tx.set(&key, &selvage_shared::to_msgpack(&command))?;
                    true
                }
            }
        })?;
        match found {
            true => Ok(shown),
            false => Err(no_command(name)),
        }
    }

    /// Removes `/name` of app `a` (admins).
    pub async fn delete(&self, caller: &Caller, a: &AppId, name: &str) -> Result<()> {
        super::require_admin(caller)?;
        let name = name.strip_prefix('/').unwrap_or(name);
        if !valid_name(name) {
            return Err(no_command(name));
        }
        let w = &caller.workspace;
        let (found, _) = transact!(self.store, |tx| {
            let key = keys::command(w, name);
            match tx.get(&key).await?.and_then(|raw| decode::<Command>(&raw)).filter(|c| c.app == *a) {
                None => false,
                Some(_) => {
                    tx.clear(&key)?;
                    true
                }
            }
        })?;
        match found {
            true => Ok(()),
            false => Err(no_command(name)),
        }
    }

    /// Runs the command `request.text` starts with, if it is one and a person sent it: answers
    /// what the app did with it, or `None` when the text is to be posted as it is.
    pub async fn run(&self, origin: &Origin, request: &SendRequest) -> Result<Option<(String, CommandAnswer)>> {
        let Some((name, args)) = parse(&request.text) else { return Ok(None) };
        let (w, c, u) = (&request.workspace, &request.channel, &request.user);
        let now = crate::now_ms();
        let token = ids::new_token();
        let run_hash = ids::token_hash(&format!("{w}\0{u}\0{}", request.client_msg_id));
        let (found, _) = transact!(self.store, |tx| {
            let Some(user) = get_user(tx, w, u).await? else {
                return Ok(Err(OriginError::Unauthorized("the sender is not a user of this workspace".into())));
            };
            if user.bot.is_some() {
                return Ok(Ok(None));
            }
            // The channel as a send would check it: visible, a member, not archived.
            let channel = channel_records::load(tx, w, c).await?;
            let member = channel_records::is_member(tx, w, c, u).await?;
            match channel {
                Some(ch) if channel_records::visible(&ch, member) => {
                    if !member {
                        return Ok(Err(OriginError::NotMember(format!("join {c} to run commands in it"))));
                    }
                    if ch.archived {
                        return Ok(Err(OriginError::Archived(format!("channel {c} is archived"))));
                    }
                }
                _ => return Ok(Err(OriginError::no_channel(c.as_str()))),
            }
            let command = tx.get(&keys::command(w, &name)).await?.and_then(|raw| decode::<Command>(&raw));
            let Some(command) = command else { return Ok(Ok(Some(Found::Unknown))) };
            let Some(bot) = super::active_bot(tx, w, &command.app).await? else { return Ok(Ok(Some(Found::Unknown))) };
            // A retried send: what the first run came to, or taken while it runs.
            if let Some(run) = tx.get(&keys::command_run(&run_hash)).await?.and_then(|raw| decode::<Run>(&raw)) {
                return Ok(Ok(Some(Found::Again(run.outcome.unwrap_or(CommandAnswer::Deferred)))));
            }
            tx.set(&keys::command_run(&run_hash), &selvage_shared::to_msgpack(&Run { outcome: None }))?;
            tx.set(&keys::command_expiry(now + RESPONSE_URL_TTL_MS, &run_hash), &[])?;
            let respond = Respond {
                to: Target {
                    workspace: w.clone(),
                    channel: c.clone(),
                    user: u.clone(),
                    thread_root: request.thread_root,
                    command: name.clone(),
                },
                app: command.app.clone(),
                expires_at: now + RESPONSE_URL_TTL_MS,
                uses_left: RESPONSE_URL_USES,
            };
            let hash = ids::token_hash(&token);
            tx.set(&keys::command_response(&hash), &selvage_shared::to_msgpack(&respond))?;
            tx.set(&keys::command_expiry(respond.expires_at, &hash), &[])?;
            sweep(tx, now).await?;
            Ok(Some(Found::Run(Box::new((command, bot.id, respond.to)))))
        })?;
        let metrics = &origin.metrics.commands;
        let shown = format!("/{name}");
        let (command, bot, to) = match found? {
            None => return Ok(None),
            Some(Found::Unknown) => {
                metrics.with_label_values(&["unknown"]).inc();
                return Err(OriginError::UnknownCommand(format!(
                    "/{name} is not a command in this workspace; to post the text as it is, start it with a space"
                )));
            }
            Some(Found::Again(outcome)) => return Ok(Some((shown, outcome))),
            Some(Found::Run(run)) => *run,
        };
        let ran = async {
            let answer = self.ask(&command, request, args, &token, now).await?;
            Ok::<_, OriginError>(match answer.text.as_deref().map(str::trim) {
                None | Some("") => CommandAnswer::Deferred,
                Some(_) => {
                    let in_channel = answer.response_type.as_deref() == Some("in_channel");
                    if in_channel {
                        // As in Slack: the channel sees the command, then its answer.
                        origin.sequencer.send(request.clone()).await?;
                    }
                    deliver(origin, &to, &bot, answer.text.unwrap_or_default(), in_channel).await?
                }
            })
        }
        .await;
        // Recorded for a retry of the same send: its outcome, or — a failure having done
        // nothing — no run, so that a retry runs it.
        let recorded = ran.as_ref().ok().map(|outcome| Run { outcome: Some(*outcome) });
        let key = keys::command_run(&run_hash);
        let kept = transact!(self.store, |tx| {
            match &recorded {
                Some(run) => tx.set(&key, &selvage_shared::to_msgpack(run))?,
                None => tx.clear(&key)?,
            }
        });
        if let Err(e) = kept {
            tracing::warn!(error = %e, command = %shown, "could not record a command's run; a retry of its send finds it running");
        }
        let outcome = ran.inspect_err(|_| metrics.with_label_values(&["failed"]).inc())?;
        metrics.with_label_values(&[outcome_label(outcome)]).inc();
        Ok(Some((shown, outcome)))
    }

    /// POSTs the command to its app and reads its answer.
    async fn ask(&self, command: &Command, request: &SendRequest, args: &str, token: &str, now: i64) -> Result<Answer> {
        let name = &command.name;
        let id = format!("cmd_{}", ids::new_id('X'));
        let timestamp = (now / 1000).to_string();
        let body = json!({
            "type": "slash_command",
            "command": format!("/{name}"),
            "text": args,
            "workspace": request.workspace,
            "app": command.app,
            "channel": request.channel,
            "user": request.user,
            "thread_root": request.thread_root,
            "response_url": format!("{}/v1/commands/respond/{token}", self.base),
            "trigger_id": id,
            "timestamp": jiff::Timestamp::from_millisecond(now).map(|t| t.to_string()).unwrap_or_default(),
        });
        let body = serde_json::to_vec(&body).map_err(|e| OriginError::Internal(format!("command body: {e}")))?;
        let secrets: Vec<Secret> = command.previous.iter().chain([&command.secret]).cloned().collect();
        let signature = sign(&secrets, now, &id, &timestamp, &body);
        let headers = [
            ("content-type", "application/json".to_string()),
            ("webhook-id", id.clone()),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signature),
        ];
        let failed = |why: String| OriginError::CommandFailed(format!("/{name} failed: {why}"));
        let (status, answer) = match self.client.post_for(&command.url, &headers, body, MAX_ANSWER + 1).await {
            Ok(answered) => answered,
            Err(e) if e.contains("deadline") => {
                return Err(failed(format!("its app did not answer within {} ms", self.timeout.as_millis())))
            }
            Err(e) => {
                tracing::info!(command = %name, app = %command.app, error = %e, "a slash command's app did not answer");
                return Err(failed("its app could not be reached".into()));
            }
        };
        if !(200..300).contains(&status) {
            return Err(failed(format!("its app answered {status}")));
        }
        if answer.len() > MAX_ANSWER {
            return Err(failed(format!("its app's answer is over {MAX_ANSWER} bytes")));
        }
        read_answer(&answer).map_err(failed)
    }

    /// Takes an answer sent to a `response_url` (`POST /v1/commands/respond/{secret}`): no
    /// token, the secret is the credential. An unknown, used up or expired URL is "not found".
    pub async fn respond(&self, origin: &Origin, secret: &str, answer: Answer) -> Result<CommandAnswer> {
        let gone = || OriginError::NotFound("no such response_url, or it expired or was used 5 times".into());
        if secret.is_empty() || secret.len() > 128 {
            return Err(gone());
        }
        let text = answer.text.clone().unwrap_or_default();
        validate_text(&text)?;
        let in_channel = match answer.response_type.as_deref() {
            None | Some("ephemeral") => false,
            Some("in_channel") => true,
            Some(other) => {
                return Err(OriginError::BadRequest(format!(
                    "response_type {other:?}: in_channel or ephemeral (the default)"
                )))
            }
        };
        let hash = ids::token_hash(secret);
        let now = crate::now_ms();
        let (found, _) = transact!(self.store, |tx| {
            let key = keys::command_response(&hash);
            match tx.get(&key).await?.and_then(|raw| decode::<Respond>(&raw)) {
                Some(mut r) if r.expires_at > now && r.uses_left > 0 => {
                    r.uses_left -= 1;
                    tx.set(&key, &selvage_shared::to_msgpack(&r))?;
                    super::active_bot(tx, &r.to.workspace, &r.app).await?.map(|b| (r.to, b.id))
                }
                _ => None,
            }
        })?;
        let (to, bot) = found.ok_or_else(gone)?;
        deliver(origin, &to, &bot, text, in_channel).await
    }
}

fn outcome_label(outcome: CommandAnswer) -> &'static str {
    match outcome {
        CommandAnswer::InChannel => "in_channel",
        CommandAnswer::Ephemeral => "ephemeral",
        CommandAnswer::Deferred => "deferred",
    }
}

/// An app's answer body: JSON `{text, response_type}`, empty, or plain text (shown to the
/// sender alone).
fn read_answer(body: &[u8]) -> std::result::Result<Answer, String> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Ok(Answer::default());
    }
    if trimmed.starts_with(b"{") {
        let answer: Answer =
            serde_json::from_slice(trimmed).map_err(|e| format!("its app's answer is not valid JSON: {e}"))?;
        return match answer.response_type.as_deref() {
            None | Some("ephemeral") | Some("in_channel") => Ok(answer),
            Some(other) => Err(format!("its app's response_type {other:?} is neither in_channel nor ephemeral")),
        };
    }
    match std::str::from_utf8(trimmed) {
        Ok(text) => Ok(Answer { text: Some(text.to_string()), response_type: None }),
        Err(_) => Err("its app's answer is neither JSON nor text".into()),
    }
}

/// Where an answer goes.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Target {
    workspace: WorkspaceId,
    channel: ChannelId,
    user: UserId,
    thread_root: Option<Seq>,
    command: String,
}

/// Shows `text` from `bot`: posted in the channel (`in_channel`), or to the sender alone.
///
/// A bot not in the channel posts there only if it may join it (a public channel); in a
/// private one the answer goes to the sender alone, saying so: a command does not let an app
/// into a channel nobody invited it to.
async fn deliver(origin: &Origin, to: &Target, bot: &UserId, text: String, in_channel: bool) -> Result<CommandAnswer> {
    validate_text(&text).map_err(|e| OriginError::CommandFailed(format!("/{}: the app's answer: {e}", to.command)))?;
    let mut text = text;
    if in_channel {
        let w = &to.workspace;
        let (joined, _) = transact!(origin.store, |tx| {
            let channel = channel_records::load(tx, w, &to.channel).await?;
            match channel {
                Some(ch) if !ch.archived => {
                    if channel_records::is_member(tx, w, &to.channel, bot).await? {
                        true
                    } else if !ch.private && !ch.is_conversation() {
                        let mut log = crate::feed::Appender::new();
                        channel_records::write_member(tx, &mut log, w, &to.channel, bot, crate::now_ms())?;
                        log.finish(tx)?;
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            }
        })?;
        if joined {
            let request = SendRequest {
                workspace: to.workspace.clone(),
                channel: to.channel.clone(),
                user: bot.clone(),
                text,
                client_msg_id: ids::new_id('M'),
                thread_root: to.thread_root,
                files: Vec::new(),
            };
            origin.sequencer.send(request).await?;
            return Ok(CommandAnswer::InChannel);
        }
        text = format!(
            "{text}\n\n(Only you can see this: /{} answered for the channel, but its app is not in it.)",
            to.command
        );
    }
    let event = Event::EphemeralMessage {
        channel: to.channel.clone(),
        user: to.user.clone(),
        from: bot.clone(),
        text,
        ts: crate::now_ms(),
    };
    origin.relay.publish(Relayed { from_edge: None, workspace: to.workspace.clone(), event });
    Ok(CommandAnswer::Ephemeral)
}

/// Clears up to [`SWEEP`] `response_url`s that expired.
async fn sweep(tx: &mut dyn KvTxn, now: i64) -> Result<(), StoreError> {
    let range = RangeRead::between(keys::command_expiry(0, &[0; 32]), keys::command_expiry(now, &[0; 32])).limit(SWEEP);
    for (key, _) in tx.get_range(&range).await? {
        tx.clear(&key)?;
        if let Some(hash) = keys::command_expiry_hash(&key) {
            tx.clear(&keys::command_response(&hash))?;
            tx.clear(&keys::command_run(&hash))?;
        }
    }
    Ok(())
}

/// App `a`'s commands.
async fn of_app(tx: &mut dyn KvTxn, w: &WorkspaceId, a: &AppId) -> Result<Vec<Command>, StoreError> {
    let rows = tx.get_range(&RangeRead::prefix(&keys::commands(w))).await?;
    Ok(rows.iter().filter_map(|(_, raw)| decode::<Command>(raw)).filter(|c| c.app == *a).collect())
}

/// Removes every command of app `a` (the app is being deleted).
pub async fn clear_of_app(tx: &mut dyn KvTxn, w: &WorkspaceId, a: &AppId) -> Result<(), StoreError> {
    for c in of_app(tx, w, a).await? {
        tx.clear(&keys::command(w, &c.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_first_word_when_it_is_a_name() {
        assert_eq!(parse("/deploy prod now"), Some(("deploy".to_string(), "prod now")));
        assert_eq!(parse("/Deploy"), Some(("deploy".to_string(), "")));
        assert_eq!(parse("/a-b_c\tx"), Some(("a-b_c".to_string(), "x")));
        for text in ["deploy", " /deploy", "/", "/ deploy", "/usr/bin is here", "/x.y", "//deploy"] {
            assert_eq!(parse(text), None, "{text:?}");
        }
        assert_eq!(parse(&format!("/{}", "a".repeat(MAX_NAME + 1))), None);
    }

    #[test]
    fn answers_are_json_text_or_nothing() {
        let a = read_answer(br#"{"text":"hi","response_type":"in_channel"}"#).unwrap();
        assert_eq!((a.text.as_deref(), a.response_type.as_deref()), (Some("hi"), Some("in_channel")));
        assert_eq!(read_answer(b"  ").unwrap().text, None);
        assert_eq!(read_answer(b"plain words").unwrap().text.as_deref(), Some("plain words"));
        assert!(read_answer(br#"{"text":"hi","response_type":"everyone"}"#).is_err());
        assert!(read_answer(b"{not json").is_err());
        assert!(read_answer(&[0xff, 0xfe]).is_err());
    }
}
