//! Email digests: the unread mentions and DMs of a user who has been away, batched into one
//! mail over SMTP (ARCHITECTURE §8 "Notifications").
//!
//! **Collecting.** The consumer `notify` writes, with a message's pending notification, a
//! pending *mail* entry `(ws, W, nmail, U, C, seq)` when the message is a DM or a mention and
//! the user wants email and gave an address (`prefs::emails`). The first such entry of a digest
//! also queues the user under `(notify, mail, due, W, U)`, due `notify.email_after_ms` after
//! that message; later ones join the same digest.
//!
//! **Claiming.** When the user's entry is due, one transaction moves every pending mail entry
//! of the user into one digest record `(notify, mailout, at, W, U, id)` and clears them: a
//! message is in at most one digest, whatever nodes and crashes do. The record is claimed until
//! `at`, as push notifications are (`deliver`); a node that dies leaves it to another.
//!
//! **Deciding.** Before sending it re-reads the user (deactivated: dropped), their preferences
//! (email turned off or the address removed: dropped; do-not-disturb: held until it ends),
//! presence (in active use: held for another `email_after_ms`, since they may read it now) and,
//! per message, membership, deletion and the read marker: only messages still unread are sent,
//! and a digest with none left is dropped.
//!
//! **Sending.** One `multipart/alternative` mail, plain text and HTML, grouped by conversation
//! with times in the user's time zone, with an unsubscribe link and the one-click
//! `List-Unsubscribe` headers of RFC 8058. Its `Message-ID` is the digest's id, the same on
//! every try. A temporary SMTP failure (`4xx`, no connection) is tried again after a doubling
//! pause up to `notify.max_attempts`; a permanent one (`5xx`) or running out of tries records
//! the digest as failed and counts it.

use std::{collections::BTreeMap, str::FromStr, sync::Arc, time::Duration};

use base64::Engine as _;
use futures::StreamExt;
use lettre::{
    message::{
        header::{HeaderName, HeaderValue},
        Mailbox, MultiPart,
    },
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
};
use selvage_shared::{Channel, ChannelId, ChannelKind, Message, NotifyPrefs, Presence, Seq, User, UserId, WorkspaceId};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{
    decide::{load_prefs, MailPending},
    deliver::{display_name, Failed},
    prefs::{self, Reason},
};
use crate::{
    caller::get_user,
    channels::records as channels,
    config::NotifyConfig,
    messages::records as messages,
    metrics::Metrics,
    presence::Tracker,
    store::{keys, tuple, KvTxn, RangeRead, Store, StoreError},
    transact,
};

/// Most users' digests claimed per transaction.
const CLAIM_BATCH: usize = 16;
/// Digests sent at once.
const IN_FLIGHT: usize = 4;
/// Most messages one digest takes; a user with more pending gets the rest in the next one,
/// queued at once.
pub const MAX_DIGEST_MESSAGES: usize = 200;
/// Most messages quoted per conversation; the others are counted.
const QUOTED_PER_CONVERSATION: usize = 5;
/// Longest text quoted, in characters.
const QUOTE_CHARS: usize = 300;
/// How long a do-not-disturb set from a client holds a digest before it is looked at again.
const CLIENT_DND_RECHECK_MS: i64 = 60_000;

/// One message of a digest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DigestItem {
    /// Its conversation.
    pub channel: ChannelId,
    /// Its seq.
    pub seq: Seq,
    /// Why it is in the digest.
    pub reason: Reason,
}

/// A digest being sent or waiting for its next try.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Digest {
    /// The same on every try: the mail's `Message-ID`.
    pub id: String,
    /// Its messages, by conversation and seq.
    pub items: Vec<DigestItem>,
    /// Failed tries so far.
    pub attempts: u32,
}

/// Signs and checks the unsubscribe links of a deployment.
#[derive(Clone)]
pub struct Links {
    /// Where people reach the origin's HTTP API, without a trailing `/`.
    pub base: String,
    key: ring::hmac::Key,
}

impl Links {
    /// Links under `base`, signed with `secret` (kept in the store, the same on every node).
    pub fn new(base: &str, secret: &[u8]) -> Links {
        Links {
            base: base.trim_end_matches('/').to_string(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        }
    }

    fn signed(w: &WorkspaceId, u: &UserId) -> String {
        format!("unsubscribe\n{w}\n{u}")
    }

    /// The token of `u`'s unsubscribe link: `W.U.signature`.
    pub fn token(&self, w: &WorkspaceId, u: &UserId) -> String {
        let tag = ring::hmac::sign(&self.key, Links::signed(w, u).as_bytes());
        format!("{w}.{u}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The user a token was made for, if it is one of this deployment's.
    pub fn check(&self, token: &str) -> Option<(WorkspaceId, UserId)> {
        let mut parts = token.splitn(3, '.');
        let (w, u, sig) = (parts.next()?, parts.next()?, parts.next()?);
        let (w, u) = (WorkspaceId::parse(w)?, UserId::parse(u)?);
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).ok()?;
        ring::hmac::verify(&self.key, Links::signed(&w, &u).as_bytes(), &tag).ok()?;
        Some((w, u))
    }

    /// The unsubscribe page of `u`.
    pub fn unsubscribe_url(&self, w: &WorkspaceId, u: &UserId) -> String {
        format!("{}/v1/notifications/unsubscribe?token={}", self.base, self.token(w, u))
    }
}

/// What became of a claimed digest.
enum Outcome {
    Sent,
    Dropped(&'static str),
    /// Look again at this time (ms).
    Held(i64),
    Retry(String),
    Failed(String),
}

/// One claimed digest.
struct Claim {
    key: Vec<u8>,
    w: WorkspaceId,
    u: UserId,
    digest: Digest,
}

/// A conversation of a digest as the mail shows it.
struct Conversation {
    channel: Channel,
    messages: Vec<(Message, String)>,
}

/// What the mailer reads before it decides.
struct State {
    user: Option<User>,
    prefs: NotifyPrefs,
    conversations: Vec<Conversation>,
}

/// The email digest sender (see the module's documentation).
pub struct Mailer {
    pub(super) store: Store,
    pub(super) presence: Arc<Tracker>,
    pub(super) config: NotifyConfig,
    pub(super) transport: AsyncSmtpTransport<Tokio1Executor>,
    pub(super) from: Mailbox,
    pub(super) links: Links,
    pub(super) metrics: Arc<Metrics>,
}

/// The SMTP transport of `notify.smtp_url`.
pub fn transport(config: &NotifyConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
        .map_err(|e| format!("notify.smtp_url: {e}"))?;
    Ok(builder.timeout(Some(Duration::from_millis(config.request_timeout_ms))).build())
}

impl Mailer {
    /// Runs until `shutdown`: a step every `notify.tick_ms`, at once again after a full one.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = Duration::from_millis(self.config.tick_ms);
        super::every_tick(tick, CLAIM_BATCH, "email digest", shutdown, |now| self.step(now)).await
    }

    /// Claims the digests due at `now` (ms) and sends them, [`IN_FLIGHT`] at once (each over a
    /// connection of its own); answers how many were claimed.
    pub async fn step(&self, now: i64) -> Result<usize, StoreError> {
        let claims = self.claim(now).await?;
        let count = claims.len();
        let handled: Vec<Result<(), StoreError>> = futures::stream::iter(claims)
            .map(|claim| self.handle(claim, now))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        handled.into_iter().collect::<Result<Vec<()>, StoreError>>()?;
        Ok(count)
    }

    async fn claim(&self, now: i64) -> Result<Vec<Claim>, StoreError> {
        let until = now.saturating_add(self.config.claim_ms as i64);
        let (claims, _) = transact!(self.store, |tx| {
            let mut claims = Vec::new();
            let due = RangeRead::between(keys::notify_mail_dues(), keys::notify_mail_dues_at(now.saturating_add(1)))
                .limit(CLAIM_BATCH);
            for (k, _) in tx.get_range(&due).await? {
                tx.clear(&k)?;
                let Some((w, u)) = parse_due_key(&k) else { continue };
                tx.clear(&keys::notify_mail_queued(&w, &u))?;
                let Some(digest) = take_pending(tx, &w, &u, now).await? else { continue };
                let key = keys::notify_mail_out(until, &w, &u, &digest.id);
                tx.set(&key, &selvage_shared::to_msgpack(&digest))?;
                claims.push(Claim { key, w, u, digest });
            }
            let expired =
                RangeRead::between(keys::notify_mail_outs(), keys::notify_mail_outs_at(now.saturating_add(1)))
                    .limit(CLAIM_BATCH.saturating_sub(claims.len()).max(1));
            for (k, raw) in tx.get_range(&expired).await? {
                tx.clear(&k)?;
                let (Some((w, u)), Ok(digest)) = (parse_out_key(&k), selvage_shared::from_msgpack::<Digest>(&raw))
                else {
                    continue;
                };
                let key = keys::notify_mail_out(until, &w, &u, &digest.id);
                tx.set(&key, &raw)?;
                claims.push(Claim { key, w, u, digest });
            }
            claims
        })?;
        Ok(claims)
    }

    async fn handle(&self, claim: Claim, now: i64) -> Result<(), StoreError> {
        let outcome = self.attempt(&claim, now).await?;
        let Claim { key, w, u, digest } = claim;
        let max_attempts = self.config.max_attempts;
        let outcome = match outcome {
            Outcome::Retry(why) if digest.attempts + 1 >= max_attempts => Outcome::Failed(why),
            other => other,
        };
        let (still_ours, _) = transact!(self.store, |tx| {
            if tx.get(&key).await?.is_none() {
                false
            } else {
                tx.clear(&key)?;
                match &outcome {
                    Outcome::Sent | Outcome::Dropped(_) => {}
                    Outcome::Held(at) => {
                        tx.set(&keys::notify_mail_out(*at, &w, &u, &digest.id), &selvage_shared::to_msgpack(&digest))?;
                    }
                    Outcome::Retry(_) => {
                        let mut next = digest.clone();
                        next.attempts += 1;
                        let pause = self
                            .config
                            .retry_min_ms
                            .saturating_mul(1u64 << next.attempts.min(20))
                            .min(self.config.retry_max_ms);
                        let at = now.saturating_add(pause as i64);
                        tx.set(&keys::notify_mail_out(at, &w, &u, &digest.id), &selvage_shared::to_msgpack(&next))?;
                    }
                    Outcome::Failed(error) => {
                        let first = &digest.items[0];
                        let failed = Failed {
                            seqs: digest.items.iter().map(|i| i.seq).collect(),
                            attempts: digest.attempts + 1,
                            error: format!("email: {error}"),
                        };
                        tx.set(
                            &keys::notify_failed(&w, &u, now, &first.channel, first.seq),
                            &selvage_shared::to_msgpack(&failed),
                        )?;
                    }
                }
                true
            }
        })?;
        if !still_ours {
            return Ok(());
        }
        let label = match &outcome {
            Outcome::Sent => Some("sent"),
            Outcome::Dropped(why) => Some(*why),
            Outcome::Failed(_) => Some("failed"),
            Outcome::Held(_) | Outcome::Retry(_) => None,
        };
        match &outcome {
            Outcome::Retry(e) | Outcome::Failed(e) => tracing::warn!(ws.id = %w, user.id = %u, digest = %digest.id,
                attempts = digest.attempts + 1, error = %e, "email digest not sent"),
            Outcome::Sent => tracing::debug!(ws.id = %w, user.id = %u, digest = %digest.id, "email digest sent"),
            _ => {}
        }
        if let Some(label) = label {
            self.metrics.notify_digests.with_label_values(&[label]).inc();
        }
        Ok(())
    }

    async fn attempt(&self, claim: &Claim, now: i64) -> Result<Outcome, StoreError> {
        let state = self.read_state(claim).await?;
        let Some(user) = state.user.as_ref().filter(|u| !u.deactivated) else { return Ok(Outcome::Dropped("gone")) };
        let Some(address) = state.prefs.email_address.as_deref().filter(|_| state.prefs.email) else {
            return Ok(Outcome::Dropped("email_off"));
        };
        if let Some(until) = prefs::dnd_until(&state.prefs, now) {
            return Ok(Outcome::Held(until));
        }
        match self.presence.presence_of(&claim.w, &claim.u, tokio::time::Instant::now()) {
            Presence::Dnd => return Ok(Outcome::Held(now + CLIENT_DND_RECHECK_MS)),
            Presence::Active => return Ok(Outcome::Held(now + self.config.email_after_ms as i64)),
            _ => {}
        }
        if state.conversations.is_empty() {
            return Ok(Outcome::Dropped("read"));
        }
        let to = match address.parse() {
            Ok(a) => Mailbox::new(Some(display_name(user)), a),
            Err(e) => return Ok(Outcome::Failed(format!("address refused: {e}"))),
        };
        let mail = match self.compose(claim, user, &state, to) {
            Ok(mail) => mail,
            Err(e) => return Ok(Outcome::Failed(format!("cannot build the mail: {e}"))),
        };
        let result = self.transport.send(mail).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_permanent() => "rejected",
            Err(_) => "retry",
        };
        self.metrics.notify_deliveries.with_label_values(&["email", label]).inc();
        Ok(match result {
            Ok(_) => Outcome::Sent,
            Err(e) if e.is_permanent() => Outcome::Failed(e.to_string()),
            Err(e) => Outcome::Retry(e.to_string()),
        })
    }

    async fn read_state(&self, claim: &Claim) -> Result<State, StoreError> {
        let (w, u) = (&claim.w, &claim.u);
        let mut by_channel: BTreeMap<&ChannelId, Vec<&DigestItem>> = BTreeMap::new();
        for item in &claim.digest.items {
            by_channel.entry(&item.channel).or_default().push(item);
        }
        let (state, _) = transact!(self.store, |tx| {
            let user = get_user(tx, w, u).await?;
            let prefs = load_prefs(tx, w, u).await?;
            let mut conversations = Vec::new();
            let mut names: BTreeMap<UserId, String> = BTreeMap::new();
            for (c, items) in &by_channel {
                let Some(channel) = channels::load(tx, w, c).await? else { continue };
                if !channels::is_member(tx, w, c, u).await? {
                    continue;
                }
                let read = match tx.get(&keys::read_marker(w, u, c)).await? {
                    Some(raw) => selvage_shared::from_msgpack::<Seq>(&raw).unwrap_or(0),
                    None => 0,
                };
                let mut quoted = Vec::new();
                for item in items.iter().filter(|i| i.seq > read) {
                    if !prefs::notifies(&prefs, c, channel.kind, item.reason) {
                        continue;
                    }
                    let Some(m) = messages::load(tx, w, c, item.seq).await?.filter(|m| !m.deleted) else { continue };
                    if !names.contains_key(&m.user) {
                        let name = get_user(tx, w, &m.user).await?.map(|a| display_name(&a));
                        names.insert(m.user.clone(), name.unwrap_or_else(|| m.user.to_string()));
                    }
                    let author = names.get(&m.user).cloned().unwrap_or_default();
                    quoted.push((m, author));
                }
                if !quoted.is_empty() {
                    conversations.push(Conversation { channel, messages: quoted });
                }
            }
            State { user, prefs, conversations }
        })?;
        Ok(state)
    }

    fn compose(&self, claim: &Claim, user: &User, state: &State, to: Mailbox) -> Result<lettre::Message, String> {
        let count: usize = state.conversations.iter().map(|c| c.messages.len()).sum();
        let subject = subject(state, count);
        let unsubscribe = self.links.unsubscribe_url(&claim.w, &claim.u);
        let tz = state.prefs.timezone.as_deref().and_then(|t| jiff::tz::TimeZone::get(t).ok());
        let tz = tz.unwrap_or(jiff::tz::TimeZone::UTC);
        let (text, html) = bodies(user, state, count, &unsubscribe, &tz);
        let host = url::Url::parse(&self.links.base).ok().and_then(|u| u.host_str().map(str::to_string));
        let message_id = format!("<{}@{}>", claim.digest.id, host.unwrap_or_else(|| "selvage.invalid".into()));
        lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{unsubscribe}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ))
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-generated".into()))
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| e.to_string())
    }
}

/// Moves up to [`MAX_DIGEST_MESSAGES`] of U's pending mail entries into a digest; queues the
/// rest again at `now`.
async fn take_pending(tx: &mut dyn KvTxn, w: &WorkspaceId, u: &UserId, now: i64) -> Result<Option<Digest>, StoreError> {
    let rows =
        tx.get_range(&RangeRead::prefix(&keys::notify_mail_pending_of(w, u)).limit(MAX_DIGEST_MESSAGES + 1)).await?;
    if rows.len() > MAX_DIGEST_MESSAGES {
        tx.set(&keys::notify_mail_queued(w, u), &selvage_shared::to_msgpack(&now))?;
        tx.set(&keys::notify_mail_due(now, w, u), &[])?;
    }
    let mut items = Vec::new();
    for (k, raw) in rows.into_iter().take(MAX_DIGEST_MESSAGES) {
        tx.clear(&k)?;
        let Some((c, seq)) = parse_pending_key(&k) else { continue };
        let Ok(p) = selvage_shared::from_msgpack::<MailPending>(&raw) else { continue };
        items.push(DigestItem { channel: c, seq, reason: p.reason });
    }
    let Some(first) = items.first() else { return Ok(None) };
    let digest =
        ring::digest::digest(&ring::digest::SHA256, format!("{w}/{u}/{}/{}", first.channel, first.seq).as_bytes());
    Ok(Some(Digest { id: hex::encode(&digest.as_ref()[..12]), items, attempts: 0 }))
}

fn parse_due_key(k: &[u8]) -> Option<(WorkspaceId, UserId)> {
    let e = tuple::unpack(k).ok()?;
    let [_, _, _, w, u] = e.as_slice() else { return None };
    Some((WorkspaceId::parse(w.as_str()?)?, UserId::parse(u.as_str()?)?))
}

fn parse_out_key(k: &[u8]) -> Option<(WorkspaceId, UserId)> {
    let e = tuple::unpack(k).ok()?;
    let [_, _, _, w, u, _] = e.as_slice() else { return None };
    Some((WorkspaceId::parse(w.as_str()?)?, UserId::parse(u.as_str()?)?))
}

fn parse_pending_key(k: &[u8]) -> Option<(ChannelId, Seq)> {
    let e = tuple::unpack(k).ok()?;
    let [.., c, seq] = e.as_slice() else { return None };
    Some((ChannelId::parse(c.as_str()?)?, Seq::try_from(seq.as_int()?).ok()?))
}

/// A conversation's name as a reader knows it.
fn conversation_name(c: &Conversation) -> String {
    match c.channel.kind {
        ChannelKind::Channel => format!("#{}", c.channel.name),
        ChannelKind::Dm | ChannelKind::GroupDm => {
            let mut authors: Vec<&str> = c.messages.iter().map(|(_, a)| a.as_str()).collect();
            authors.sort_unstable();
            authors.dedup();
            format!("Direct messages with {}", authors.join(", "))
        }
    }
}

fn subject(state: &State, count: usize) -> String {
    match state.conversations.as_slice() {
        [c] if count == 1 => {
            let (_, author) = &c.messages[0];
            match c.channel.kind {
                ChannelKind::Channel => format!("{author} mentioned you in #{}", c.channel.name),
                _ => format!("New message from {author}"),
            }
        }
        [c] => format!("{count} unread messages in {}", conversation_name(c)),
        _ => format!("{count} unread messages in {} conversations", state.conversations.len()),
    }
}

/// The plain-text and HTML bodies.
fn bodies(user: &User, state: &State, count: usize, unsubscribe: &str, tz: &jiff::tz::TimeZone) -> (String, String) {
    let when = |ts: i64| {
        jiff::Timestamp::from_millisecond(ts)
            .map(|t| t.to_zoned(tz.clone()).strftime("%a %d %b %H:%M").to_string())
            .unwrap_or_default()
    };
    let name = display_name(user);
    let mut text = format!(
        "Hi {name},\n\nYou have {count} unread {} while you were away:\n",
        if count == 1 { "message" } else { "messages" }
    );
    let mut html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\"><p>Hi {},</p>\
         <p>You have {count} unread {} while you were away:</p>",
        escape(&name),
        if count == 1 { "message" } else { "messages" }
    );
    for c in &state.conversations {
        let title = conversation_name(c);
        text.push_str(&format!("\n{title}\n"));
        html.push_str(&format!("<h3>{}</h3><ul>", escape(&title)));
        let shown = c.messages.len().saturating_sub(QUOTED_PER_CONVERSATION);
        if shown > 0 {
            text.push_str(&format!("  … and {shown} earlier\n"));
            html.push_str(&format!("<li><em>… and {shown} earlier</em></li>"));
        }
        for (m, author) in c.messages.iter().skip(shown) {
            let quote: String = m.text.chars().take(QUOTE_CHARS).collect();
            let cut = if m.text.chars().count() > QUOTE_CHARS { "…" } else { "" };
            text.push_str(&format!("  {author} ({}): {quote}{cut}\n", when(m.ts)));
            html.push_str(&format!(
                "<li><strong>{}</strong> <small>{}</small><br>{}{cut}</li>",
                escape(author),
                escape(&when(m.ts)),
                escape(&quote)
            ));
        }
        html.push_str("</ul>");
    }
    text.push_str(&format!(
        "\nYou get this email because email notifications are on for your account.\nTo stop them: {unsubscribe}\n"
    ));
    html.push_str(&format!(
        "<p style=\"color:#666;font-size:small\">You get this email because email notifications are on for your \
         account. <a href=\"{}\">Unsubscribe</a></p></body></html>",
        escape(unsubscribe)
    ));
    (text, html)
}

/// Text as HTML (also what the unsubscribe pages show).
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

/// Whether `from` (config) reads as a sender.
pub fn parse_from(from: &str) -> Result<Mailbox, String> {
    Mailbox::from_str(from).map_err(|e| format!("notify.email_from: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (WorkspaceId, UserId) {
        (WorkspaceId::parse("W1").unwrap(), UserId::parse("U1").unwrap())
    }

    #[test]
    fn unsubscribe_tokens_are_checked() {
        let links = Links::new("https://chat.example.com/", b"0123456789abcdef0123456789abcdef");
        let (w, u) = ids();
        let token = links.token(&w, &u);
        assert_eq!(links.check(&token), Some((w.clone(), u.clone())));
        assert!(links
            .unsubscribe_url(&w, &u)
            .starts_with("https://chat.example.com/v1/notifications/unsubscribe?token=W1.U1."));
        // Another user's name on this signature, another deployment's key, garbage: refused.
        let forged = token.replacen("U1", "U2", 1);
        assert_eq!(links.check(&forged), None);
        let other = Links::new("https://chat.example.com", b"another key, of another deployment");
        assert_eq!(other.check(&token), None);
        for bad in ["", "W1", "W1.U1", "W1.U1.", "W1.U1.!!!", "..", "W1.U1.AAAA"] {
            assert_eq!(links.check(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<b>\"x\" & 'y'</b>"), "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;");
    }

    #[test]
    fn every_address_the_api_takes_is_one_the_mailer_takes() {
        for a in ["a@b.co", "first.last+tag@mail.example.com", "x!#$%&'*+/=?^_`{|}~-y@a-b.c1", "1@2.3"] {
            assert!(prefs::email_address(a).is_ok(), "{a}");
            assert!(a.parse::<lettre::Address>().is_ok(), "{a}");
        }
        for a in
            ["", "a", "a@b", "@b.co", "a@.co", "a..b@c.co", ".a@c.co", "a@-b.co", "a@b-.co", "a b@c.co", "a@b.co\n"]
        {
            assert!(prefs::email_address(a).is_err(), "{a:?}");
        }
    }
}
