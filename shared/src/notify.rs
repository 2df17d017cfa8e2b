//! Notification preferences and Web Push subscriptions as the API carries them (ARCHITECTURE §8
//! "Notifications"). The origin checks and applies them; these are the shapes only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ChannelId;

/// A user's notification preferences. Every field has a default, so `{}` is a valid document
/// and a client sends only what it changes (`PATCH` semantics on `PUT`: see the API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyPrefs {
    /// Per channel (or DM): the level and whether it is muted. Channels not listed notify on
    /// mentions; DMs and group DMs on every message.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<ChannelId, ChannelNotify>,
    /// Highlight words: a message containing one (as a whole word, any case) notifies as a
    /// mention does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// Do not disturb until this instant (ms since the epoch); notifications wait until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnd_until: Option<i64>,
    /// Recurring do-not-disturb windows, in [`NotifyPrefs::timezone`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dnd_schedule: Vec<DndWindow>,
    /// The user's IANA time zone (`Europe/Berlin`); `UTC` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Whether unread mentions and DMs are also sent by email after the user has been away.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub email: bool,
}

impl Default for NotifyPrefs {
    fn default() -> Self {
        NotifyPrefs {
            channels: BTreeMap::new(),
            keywords: Vec::new(),
            dnd_until: None,
            dnd_schedule: Vec::new(),
            timezone: None,
            email: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// How much of a channel notifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyLevel {
    /// Every message.
    All,
    /// Mentions of the user (by name, `@channel`, `@here`), keywords and followed threads.
    Mentions,
    /// Nothing.
    Nothing,
}

/// One channel's preferences.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelNotify {
    /// The level; absent, the default of the conversation's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<NotifyLevel>,
    /// Muted: nothing notifies but a mention of the user by name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
}

/// A weekly do-not-disturb window: on each of `days`, from `from` to `to` (`HH:MM`, 24 h). A
/// window whose `to` is not after its `from` runs overnight, into the next day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DndWindow {
    /// `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`: the days the window starts on.
    pub days: Vec<String>,
    /// Start, `HH:MM`.
    pub from: String,
    /// End, `HH:MM`.
    pub to: String,
}

/// A browser's push subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSubscriptionJson {
    /// The push service's URL for this browser.
    pub endpoint: String,
    /// The browser's keys.
    pub keys: PushKeys,
}

/// The keys of a [`PushSubscriptionJson`], base64url.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushKeys {
    /// The browser's P-256 public key (65 bytes, uncompressed).
    pub p256dh: String,
    /// The authentication secret (16 bytes).
    pub auth: String,
}
