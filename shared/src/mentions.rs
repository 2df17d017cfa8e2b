//! Mentions in message text, parsed once when a message is written (and again when it is edited)
//! and stored with it, so nobody downstream parses text again.
//!
//! The syntax is Slack's: `<@U123>` mentions a user by id (an optional `|label` after the id is
//! allowed and ignored, as clients write `<@U123|alice>`); `<!channel>` or a bare `@channel`
//! mentions every member; `<!here>` or a bare `@here` every member with an active session. A
//! bare word counts only when it stands alone: `foo@channel.com` and `@channels` are not
//! mentions. Pure functions, no allocation beyond the result.

use crate::ids::UserId;

/// Most distinct users one message may mention; later ones are ignored (Slack caps a message's
/// mentions in the same spirit: one message must not page a whole workspace by name).
pub const MAX_MENTIONS: usize = 100;

/// Most users one `@here` reaches; in a larger crowd of active members the rest are not
/// counted as mentioned (the message still says `mentions_here`).
pub const MAX_HERE: usize = 1000;

/// What a text mentions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mentions {
    /// Users mentioned by id, each once, in order of first appearance.
    pub users: Vec<UserId>,
    /// `@channel`: every member.
    pub channel: bool,
    /// `@here`: every member with an active session.
    pub here: bool,
}

/// Parses the mentions of `text`.
pub fn parse(text: &str) -> Mentions {
    let mut out = Mentions::default();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => {
                let Some(len) = text[i + 1..].find('>') else { break };
                let inner = &text[i + 1..i + 1 + len];
                let inner = inner.split('|').next().unwrap_or_default();
                if let Some(id) = inner.strip_prefix('@') {
                    if let Some(user) = UserId::parse(id) {
                        if !out.users.contains(&user) && out.users.len() < MAX_MENTIONS {
                            out.users.push(user);
                        }
                    }
                } else if inner == "!channel" || inner == "!everyone" {
                    out.channel = true;
                } else if inner == "!here" {
                    out.here = true;
                }
                i += len + 2;
            }
            b'@' => {
                let before_ok = i == 0 || !is_word_byte(bytes[i - 1]);
                let word_end = bytes[i + 1..].iter().position(|b| !is_word_byte(*b)).map_or(bytes.len(), |n| i + 1 + n);
                if before_ok {
                    match &text[i + 1..word_end] {
                        "channel" | "everyone" => out.channel = true,
                        "here" => out.here = true,
                        _ => {}
                    }
                }
                i = word_end.max(i + 1);
            }
            _ => i += 1,
        }
    }
    out
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(m: &Mentions) -> Vec<&str> {
        m.users.iter().map(UserId::as_str).collect()
    }

    #[test]
    fn user_mentions_in_order_each_once() {
        let m = parse("hi <@U2>, <@U1|alice> and <@U2> again");
        assert_eq!(ids(&m), ["U2", "U1"]);
        assert!(!m.channel && !m.here);
    }

    #[test]
    fn broadcasts_in_both_spellings() {
        assert!(parse("<!channel> lunch").channel);
        assert!(parse("lunch @channel!").channel);
        assert!(parse("@here: standup").here);
        assert!(parse("<!here|here> standup").here);
    }

    #[test]
    fn lookalikes_are_not_mentions() {
        for text in ["mail me@channel.com", "@channels are nice", "x@here", "<@not an id>", "<@>", "@", "<", "<@U1"] {
            let m = parse(text);
            assert_eq!(m, Mentions::default(), "{text}");
        }
    }

    #[test]
    fn mentions_are_capped() {
        let text: String = (0..MAX_MENTIONS + 20).map(|n| format!("<@U{n}> ")).collect();
        assert_eq!(parse(&text).users.len(), MAX_MENTIONS);
    }

    proptest::proptest! {
        /// Any text parses without panicking, and every user it finds is written `<@id` in it.
        #[test]
        fn any_text_parses_to_mentions_it_contains(text in "(<@U[0-9]{1,3}(\\|[a-z]{0,3})?>|@here|@channel|<!here>|[ <>@!|a-zé]){0,40}") {
            let m = parse(&text);
            for user in &m.users {
                let written = format!("<@{}", user.as_str());
                proptest::prop_assert!(text.contains(&written), "{} not in {:?}", user.as_str(), text);
            }
            let mut unique = m.users.clone();
            unique.sort();
            unique.dedup();
            proptest::prop_assert_eq!(unique.len(), m.users.len());
        }

        #[test]
        fn arbitrary_unicode_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }
    }

    #[test]
    fn arbitrary_text_never_panics() {
        for text in ["<<@@>>", "@\u{e9}here", "é<@U1>é", "<@U1|", "@here@channel", "\u{1f600}@here"] {
            let _ = parse(text);
        }
        assert!(parse("@here@channel").here);
    }
}
