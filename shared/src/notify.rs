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
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole_ms")]
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
    /// Where those emails go. None: no email (an address is the user's own to give, and only
    /// they and the origin's mailer ever read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
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
            email_address: None,
        }
    }
}

/// The largest instant taken, in ms: 2^53 − 1, the largest integer every JSON parser (and a
/// float) holds exactly — about 285,000 years.
pub const MAX_SAFE_MS: i64 = (1 << 53) - 1;

/// An instant in ms. JSON has one number type and JSON Schema counts `2.0` as the integer 2, so
/// a whole number is taken in either spelling; a fraction, or one outside `i64`, is refused.
fn whole_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    let whole = match (n.as_i64(), n.as_f64()) {
        (Some(v), _) => Some(v),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() <= MAX_SAFE_MS as f64 => Some(f as i64),
        _ => None,
    };
    match whole {
        Some(v) if (-MAX_SAFE_MS..=MAX_SAFE_MS).contains(&v) => Ok(Some(v)),
        _ => Err(serde::de::Error::custom(format!("{n} is not a whole number of milliseconds within ±(2^53 - 1)"))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_whole_numbers_in_either_spelling_and_survive_msgpack() {
        let p: NotifyPrefs = serde_json::from_str(r#"{"dnd_until": 42347.0}"#).unwrap();
        assert_eq!(p.dnd_until, Some(42_347));
        let p: NotifyPrefs = serde_json::from_str(r#"{"dnd_until": null}"#).unwrap();
        assert_eq!(p.dnd_until, None);
        for bad in [
            r#"{"dnd_until": 1.5}"#,
            r#"{"dnd_until": 9223372036854775808}"#,
            r#"{"dnd_until": -9223372036854775809}"#,
            r#"{"dnd_until": -9223372036854775808}"#,
            r#"{"dnd_until": 9007199254740992}"#,
            r#"{"dnd_until": "1"}"#,
        ] {
            assert!(serde_json::from_str::<NotifyPrefs>(bad).is_err(), "{bad}");
        }
        let p = NotifyPrefs { dnd_until: Some(-5), email: false, ..NotifyPrefs::default() };
        assert_eq!(crate::from_msgpack::<NotifyPrefs>(&crate::to_msgpack(&p)).unwrap(), p);
        assert!(NotifyPrefs::default().email, "email is on unless turned off");
    }
}
