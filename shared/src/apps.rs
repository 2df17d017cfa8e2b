//! Apps: integrations that act in a workspace through a bot user and tokens limited to
//! [`Scope`]s (ARCHITECTURE §8 "Apps").
//!
//! A user's token may do whatever the user may; an app's token only what its scopes allow, and
//! then only what its bot user may (membership still decides which channels). Each HTTP route
//! and each client frame names the scope it needs; routes that manage the workspace or a
//! person's own settings take user tokens only.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{AppId, UserId};

/// What an app's token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Post, edit and delete its messages, react, follow threads, move its read markers,
    /// open DMs.
    #[serde(rename = "chat:write")]
    ChatWrite,
    /// See channels, their members and users.
    #[serde(rename = "channels:read")]
    ChannelsRead,
    /// Create channels, change them, add and remove members.
    #[serde(rename = "channels:write")]
    ChannelsWrite,
    /// Read the messages and threads of the channels its bot user is in.
    #[serde(rename = "channels:history")]
    ChannelsHistory,
    /// Download files and list a channel's files.
    #[serde(rename = "files:read")]
    FilesRead,
    /// Upload and delete files.
    #[serde(rename = "files:write")]
    FilesWrite,
    /// Search the messages its bot user may read.
    #[serde(rename = "search:read")]
    SearchRead,
    /// Receive events: WebSocket sessions, `GET /v1/events`, event webhooks.
    #[serde(rename = "events")]
    Events,
    /// Register slash commands and answer them.
    #[serde(rename = "commands")]
    Commands,
}

impl Scope {
    /// Every scope, in a fixed order.
    pub const ALL: [Scope; 9] = [
        Scope::ChatWrite,
        Scope::ChannelsRead,
        Scope::ChannelsWrite,
        Scope::ChannelsHistory,
        Scope::FilesRead,
        Scope::FilesWrite,
        Scope::SearchRead,
        Scope::Events,
        Scope::Commands,
    ];

    /// Its bit in a [`Grant`].
    fn bit(self) -> u16 {
        1 << (Scope::ALL.iter().position(|s| *s == self).unwrap_or(15) as u16)
    }

    /// Its name on the wire, e.g. `chat:write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ChatWrite => "chat:write",
            Scope::ChannelsRead => "channels:read",
            Scope::ChannelsWrite => "channels:write",
            Scope::ChannelsHistory => "channels:history",
            Scope::FilesRead => "files:read",
            Scope::FilesWrite => "files:write",
            Scope::SearchRead => "search:read",
            Scope::Events => "events",
            Scope::Commands => "commands",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request or frame needs of its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Any valid token (who am I, revoke this token).
    Any,
    /// A user's token, or an app's with this scope.
    Scope(Scope),
    /// A user's token: managing the workspace, apps, tokens, a person's own settings.
    User,
}

/// What a token may do: everything its user may (a user's token), or only what its scopes
/// allow (an app's). Two bytes and a tag: every session holds one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// `None`: a user's token; else one bit per scope, in [`Scope::ALL`]'s order.
    bits: Option<u16>,
}

impl Grant {
    /// A user's token, limited by nothing but the user's rights.
    pub fn user() -> Grant {
        Grant { bits: None }
    }

    /// An app's token with these scopes.
    pub fn app(scopes: &[Scope]) -> Grant {
        Grant { bits: Some(scopes.iter().fold(0, |bits, s| bits | s.bit())) }
    }

    /// From a token record's scopes (`None`: a user's token).
    pub fn from_scopes(scopes: Option<&[Scope]>) -> Grant {
        scopes.map(Grant::app).unwrap_or_default()
    }

    /// The scopes of an app's token (`None` for a user's).
    pub fn scopes(&self) -> Option<Vec<Scope>> {
        self.bits.map(|bits| Scope::ALL.into_iter().filter(|s| bits & s.bit() != 0).collect())
    }

    /// Whether the token is an app's.
    pub fn is_app(&self) -> bool {
        self.bits.is_some()
    }

    /// Whether the token may do what `need` names; else the refusal to show the caller.
    pub fn allows(&self, need: Need) -> Result<(), String> {
        match (self.bits, need) {
            (None, _) | (Some(_), Need::Any) => Ok(()),
            (Some(bits), Need::Scope(s)) if bits & s.bit() != 0 => Ok(()),
            (Some(_), Need::Scope(s)) => Err(format!("this app token lacks the scope `{s}`")),
            (Some(_), Need::User) => Err("app tokens cannot do this; use a user's token".to_string()),
        }
    }
}

/// An app as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// The app's id.
    pub id: AppId,
    /// Its name (also its bot user's display name).
    pub name: String,
    /// Its bot user: what it posts as, and whose memberships decide what it sees.
    pub bot_user: UserId,
    /// The scopes its tokens may be given.
    pub scopes: Vec<Scope>,
    /// Who created it.
    pub created_by: UserId,
    /// When (ms since the epoch).
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_token_may_do_anything_an_app_token_only_its_scopes() {
        let user = Grant::user();
        assert!(user.allows(Need::User).is_ok() && user.allows(Need::Scope(Scope::ChatWrite)).is_ok());
        let app = Grant::app(&[Scope::ChannelsRead]);
        assert_eq!(app.scopes(), Some(vec![Scope::ChannelsRead]));
        assert_eq!(Grant::from_scopes(Some(&Scope::ALL)).scopes(), Some(Scope::ALL.to_vec()));
        assert_eq!(user.scopes(), None);
        assert!(app.allows(Need::Any).is_ok());
        assert!(app.allows(Need::Scope(Scope::ChannelsRead)).is_ok());
        let refused = app.allows(Need::Scope(Scope::ChatWrite)).unwrap_err();
        assert!(refused.contains("chat:write"), "{refused}");
        assert!(app.allows(Need::User).is_err());
    }

    #[test]
    fn scopes_have_their_wire_names() {
        for s in Scope::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
            let back: Scope = serde_json::from_value(serde_json::json!(s.as_str())).unwrap();
            assert_eq!(back, s);
        }
        assert!(serde_json::from_value::<Scope>(serde_json::json!("admin")).is_err());
    }
}
