//! The search query language, as people type it into a chat's search box, parsed into a
//! [`Query`] (ARCHITECTURE §8 "Search"). Pure: no I/O, no index.
//!
//! | syntax | meaning |
//! |---|---|
//! | `word` | the message has the word (all words must match; stemmed and folded, see `analysis`) |
//! | `"exact phrase"` | the words in this order |
//! | `-word`, `-"a phrase"` | the message does not have it |
//! | `from:@handle`, `from:handle`, `from:<@U123>` | written by that user (several: any of them) |
//! | `in:#channel`, `in:channel`, `in:<#C123>`, `in:<#C123\|name>` | in that channel (several: any) |
//! | `before:YYYY-MM-DD` | posted before that day (UTC) |
//! | `after:YYYY-MM-DD` | posted after that day (UTC): from the next day on |
//! | `on:YYYY-MM-DD` | posted on that day (UTC) |
//! | `has:file`, `has:link` | shares a file; carries a URL |
//! | `is:thread` | a thread's root with replies, or a reply |
//!
//! The last item, if it is a bare word, also matches as a prefix: the query of someone still
//! typing (`deplo` finds `deploy`).
//!
//! **Unknown operators are text.** `foo:bar`, `12:30`, `https://example.com` or `TODO:` are
//! words like any other (the index splits them into their parts), as people mean them: only
//! the operators above are operators, and only they can be malformed. Operator names are
//! case-insensitive.
//!
//! Handles and channel names stay names here ([`UserRef::Handle`], [`ChannelRef::Name`]): the
//! caller resolves them against the store ([`super::Resolver`]).
//!
//! Anything malformed is a [`QueryError`] whose message says what to fix, for a `400`. The
//! messages name operators but never repeat what the client sent.

use selvage_shared::{ChannelId, UserId};
use time::{Date, Month};

/// Longest query, in characters (the edge checks a `search` query's text against the same).
pub const MAX_QUERY_CHARS: usize = selvage_shared::MAX_SEARCH_CHARS;
/// Most words and phrases in a query, excluded ones included.
pub const MAX_TERMS: usize = 32;
/// Most `from:` and `in:` filters in a query, together.
pub const MAX_FILTERS: usize = 32;

/// A parsed query. Every field must hold for a message to match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Words and phrases the message must have.
    pub terms: Vec<Term>,
    /// Words and phrases it must not have.
    pub excluded: Vec<Term>,
    /// Its author is one of these (any, if empty).
    pub from: Vec<UserRef>,
    /// Its channel is one of these (any the caller may read, if empty).
    pub channels: Vec<ChannelRef>,
    /// Posted before the start of this day (UTC).
    pub before: Option<Date>,
    /// Posted after the end of this day (UTC).
    pub after: Option<Date>,
    /// Posted on this day (UTC).
    pub on: Option<Date>,
    /// It shares at least one file.
    pub has_file: bool,
    /// Its text carries a URL.
    pub has_link: bool,
    /// It is part of a thread (a root with replies, or a reply).
    pub is_thread: bool,
}

/// A word or a phrase of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    /// A word.
    Word(String),
    /// The query's last bare word: the word itself, or any word it begins.
    Prefix(String),
    /// Words in this order.
    Phrase(String),
}

impl Term {
    /// The term's text as typed.
    pub fn text(&self) -> &str {
        match self {
            Term::Word(t) | Term::Prefix(t) | Term::Phrase(t) => t,
        }
    }
}

/// Whom `from:` names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UserRef {
    /// A handle, lower-cased, for the caller to resolve.
    Handle(String),
    /// A user id, from `<@U…>`.
    Id(UserId),
}

/// Which channel `in:` names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChannelRef {
    /// A channel name, lower-cased, for the caller to resolve.
    Name(String),
    /// A channel id, from `<#C…>`.
    Id(ChannelId),
}

/// What is wrong with a query. Each message says how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Nothing but spaces.
    #[error("the search query is empty")]
    Empty,
    /// Over [`MAX_QUERY_CHARS`].
    #[error("the search query is over {MAX_QUERY_CHARS} characters")]
    TooLong,
    /// Over [`MAX_TERMS`] words and phrases, or over [`MAX_FILTERS`] `from:` and `in:`.
    #[error("the search query has too many parts: at most {MAX_TERMS} words and phrases and {MAX_FILTERS} from: and in: filters")]
    TooManyParts,
    /// A `"` with no closing `"`.
    #[error("a quote is not closed: end the phrase with \"")]
    UnterminatedQuote,
    /// A `-` followed by nothing.
    #[error("'-' must be followed by a word or a phrase to exclude")]
    DanglingMinus,
    /// `-from:` and the like.
    #[error("only words and phrases can be excluded, not {0}")]
    ExcludedOperator(&'static str),
    /// An operator with nothing after its colon.
    #[error("{0} needs a value, e.g. {1}")]
    MissingValue(&'static str, &'static str),
    /// An operator whose value is not one it takes.
    #[error("{0} takes {1}")]
    BadValue(&'static str, &'static str),
    /// `before:`, `after:` or `on:` given twice.
    #[error("{0} may be given only once")]
    Repeated(&'static str),
    /// Exclusions with nothing to exclude them from.
    #[error("a search needs a word, a phrase or a filter besides what it excludes")]
    OnlyExclusions,
}

/// The operators, with what they take (for error messages).
const OPERATORS: [(&str, &str); 7] = [
    ("from:", "a user: from:@handle or from:<@U…>"),
    ("in:", "a channel: in:#channel or in:<#C…>"),
    ("before:", "a date as YYYY-MM-DD (UTC), e.g. before:2024-05-31"),
    ("after:", "a date as YYYY-MM-DD (UTC), e.g. after:2024-05-31"),
    ("on:", "a date as YYYY-MM-DD (UTC), e.g. on:2024-05-31"),
    ("has:", "file or link: has:file, has:link"),
    ("is:", "thread: is:thread"),
];

/// One item of a query as written, before its meaning is decided.
#[derive(Debug, PartialEq, Eq)]
enum Item<'a> {
    Word { text: &'a str, negated: bool },
    Phrase { text: &'a str, negated: bool },
}

/// Parses a query (see the module's documentation).
pub fn parse(input: &str) -> Result<Query, QueryError> {
    if input.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::TooLong);
    }
    let items = split(input)?;
    let last_bare_word = items.iter().rposition(|i| matches!(i, Item::Word { negated: false, .. }));
    let last_bare_word = last_bare_word.filter(|&at| at + 1 == items.len());
    let mut query = Query::default();
    for (at, item) in items.into_iter().enumerate() {
        match item {
            Item::Phrase { text, negated } => add_term(&mut query, Term::Phrase(text.to_string()), negated),
            Item::Word { text, negated } => match operator(text) {
                Some((name, value)) if negated => {
                    let _ = value;
                    return Err(QueryError::ExcludedOperator(name));
                }
                Some((name, value)) => apply_operator(&mut query, name, value)?,
                None if Some(at) == last_bare_word => add_term(&mut query, Term::Prefix(text.to_string()), false),
                None => add_term(&mut query, Term::Word(text.to_string()), negated),
            },
        }
    }
    check(&query)?;
    Ok(query)
}

fn add_term(query: &mut Query, term: Term, negated: bool) {
    if negated {
        query.excluded.push(term);
    } else {
        query.terms.push(term);
    }
}

/// Whether the query asks for anything, and is small enough.
fn check(query: &Query) -> Result<(), QueryError> {
    if query.terms.len() + query.excluded.len() > MAX_TERMS || query.from.len() + query.channels.len() > MAX_FILTERS {
        return Err(QueryError::TooManyParts);
    }
    let filters = !query.from.is_empty()
        || !query.channels.is_empty()
        || query.before.is_some()
        || query.after.is_some()
        || query.on.is_some()
        || query.has_file
        || query.has_link
        || query.is_thread;
    match (query.terms.is_empty() && !filters, query.excluded.is_empty()) {
        (false, _) => Ok(()),
        (true, true) => Err(QueryError::Empty),
        (true, false) => Err(QueryError::OnlyExclusions),
    }
}

/// Cuts the query into words and phrases: words end at spaces and quotes; a phrase runs from a
/// `"` to the next one; a `-` right before either excludes it.
fn split(input: &str) -> Result<Vec<Item<'_>>, QueryError> {
    let mut items = Vec::new();
    let mut rest = input;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(items);
        }
        let negated = rest.starts_with('-');
        if negated {
            rest = &rest[1..];
        }
        if let Some(after_quote) = rest.strip_prefix('"') {
            let close = after_quote.find('"').ok_or(QueryError::UnterminatedQuote)?;
            let text = after_quote[..close].trim();
            // An empty phrase asks for nothing.
            if !text.is_empty() {
                items.push(Item::Phrase { text, negated });
            }
            rest = &after_quote[close + 1..];
            continue;
        }
        let end = rest.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(rest.len());
        if end == 0 {
            return Err(QueryError::DanglingMinus);
        }
        items.push(Item::Word { text: &rest[..end], negated });
        rest = &rest[end..];
    }
}

/// The operator a word starts with, if any (names are case-insensitive), and its value.
fn operator(word: &str) -> Option<(&'static str, &str)> {
    OPERATORS.iter().find_map(|&(name, _)| {
        let head = word.get(..name.len())?;
        head.eq_ignore_ascii_case(name).then(|| (name, &word[name.len()..]))
    })
}

/// What an operator takes, for its error messages.
fn expected(name: &'static str) -> &'static str {
    OPERATORS.iter().find(|(n, _)| *n == name).map_or("a value", |(_, e)| e)
}

fn example(name: &'static str) -> &'static str {
    match name {
        "from:" => "from:@alice",
        "in:" => "in:#general",
        "has:" => "has:file",
        "is:" => "is:thread",
        _ => "on:2024-05-31",
    }
}

fn apply_operator(query: &mut Query, name: &'static str, value: &str) -> Result<(), QueryError> {
    if value.is_empty() {
        return Err(QueryError::MissingValue(name, example(name)));
    }
    let bad = || QueryError::BadValue(name, expected(name));
    match name {
        "from:" => query.from.push(user_ref(value).ok_or_else(bad)?),
        "in:" => query.channels.push(channel_ref(value).ok_or_else(bad)?),
        "before:" | "after:" | "on:" => {
            let day = date(value).ok_or_else(bad)?;
            let slot = match name {
                "before:" => &mut query.before,
                "after:" => &mut query.after,
                _ => &mut query.on,
            };
            if slot.replace(day).is_some() {
                return Err(QueryError::Repeated(name));
            }
        }
        "has:" => match value.to_ascii_lowercase().as_str() {
            "file" | "files" => query.has_file = true,
            "link" | "links" => query.has_link = true,
            _ => return Err(bad()),
        },
        _ => match value.to_ascii_lowercase().as_str() {
            "thread" => query.is_thread = true,
            _ => return Err(bad()),
        },
    }
    Ok(())
}

/// `@handle`, `handle` or `<@U…>` (a handle is 1–40 of `a-z 0-9 . _ -`, any case typed).
fn user_ref(value: &str) -> Option<UserRef> {
    if let Some(inner) = value.strip_prefix("<@").and_then(|v| v.strip_suffix('>')) {
        let id = inner.split('|').next().unwrap_or(inner);
        return UserId::parse(id).map(UserRef::Id);
    }
    let handle = value.strip_prefix('@').unwrap_or(value).to_ascii_lowercase();
    let valid = (1..=40).contains(&handle.len())
        && handle.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    valid.then_some(UserRef::Handle(handle))
}

/// `#name`, `name` or `<#C…>` / `<#C…|name>` (a name is 1–80 of `a-z 0-9 - _`, any case typed).
fn channel_ref(value: &str) -> Option<ChannelRef> {
    if let Some(inner) = value.strip_prefix("<#").and_then(|v| v.strip_suffix('>')) {
        let id = inner.split('|').next().unwrap_or(inner);
        return ChannelId::parse(id).map(ChannelRef::Id);
    }
    let name = value.strip_prefix('#').unwrap_or(value).to_ascii_lowercase();
    let valid = (1..=80).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
    valid.then_some(ChannelRef::Name(name))
}

/// `YYYY-MM-DD`, a real calendar day.
fn date(value: &str) -> Option<Date> {
    let mut parts = value.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if parts.next().is_some() || !digits(y, 4) || !digits(m, 2) || !digits(d, 2) {
        return None;
    }
    let month = Month::try_from(m.parse::<u8>().ok()?).ok()?;
    Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u8, d: u8) -> Date {
        Date::from_calendar_date(y, Month::try_from(m).unwrap(), d).unwrap()
    }

    fn word(s: &str) -> Term {
        Term::Word(s.into())
    }

    #[test]
    fn words_the_last_one_a_prefix() {
        let q = parse("deploy failed stag").unwrap();
        assert_eq!(q.terms, [word("deploy"), word("failed"), Term::Prefix("stag".into())]);
        assert!(q.excluded.is_empty());
    }

    #[test]
    fn only_a_bare_last_word_is_a_prefix() {
        assert_eq!(
            parse("deploy \"exact phrase\"").unwrap().terms,
            [word("deploy"), Term::Phrase("exact phrase".into())]
        );
        assert_eq!(parse("deploy from:@bob").unwrap().terms, [word("deploy")]);
        assert_eq!(parse("deploy -staging").unwrap().terms, [word("deploy")]);
        assert_eq!(parse("single").unwrap().terms, [Term::Prefix("single".into())]);
    }

    #[test]
    fn phrases_and_exclusions() {
        let q = parse(r#""rate limit" -flaky -"known issue" hit"#).unwrap();
        assert_eq!(q.terms, [Term::Phrase("rate limit".into()), Term::Prefix("hit".into())]);
        assert_eq!(q.excluded, [word("flaky"), Term::Phrase("known issue".into())]);
        // A quote ends a word; an empty phrase asks for nothing.
        let q = parse(r#"foo"bar baz" "" qux"#).unwrap();
        assert_eq!(q.terms, [word("foo"), Term::Phrase("bar baz".into()), Term::Prefix("qux".into())]);
    }

    #[test]
    fn from_takes_handles_and_ids() {
        let q = parse("from:@Alice from:bob from:<@U123> x").unwrap();
        assert_eq!(
            q.from,
            [
                UserRef::Handle("alice".into()),
                UserRef::Handle("bob".into()),
                UserRef::Id(UserId::parse("U123").unwrap())
            ]
        );
    }

    #[test]
    fn in_takes_names_and_ids() {
        let q = parse("in:#General in:random in:<#C9> in:<#C7|ops> x").unwrap();
        assert_eq!(
            q.channels,
            [
                ChannelRef::Name("general".into()),
                ChannelRef::Name("random".into()),
                ChannelRef::Id(ChannelId::parse("C9").unwrap()),
                ChannelRef::Id(ChannelId::parse("C7").unwrap()),
            ]
        );
    }

    #[test]
    fn dates() {
        let q = parse("before:2024-03-01 after:2023-12-31 report").unwrap();
        assert_eq!((q.before, q.after, q.on), (Some(day(2024, 3, 1)), Some(day(2023, 12, 31)), None));
        assert_eq!(parse("ON:2024-02-29").unwrap().on, Some(day(2024, 2, 29)));
    }

    #[test]
    fn has_and_is() {
        let q = parse("has:file has:LINK is:thread").unwrap();
        assert!(q.has_file && q.has_link && q.is_thread);
        assert!(q.terms.is_empty(), "filters alone are a query");
    }

    #[test]
    fn unknown_operators_are_words() {
        let q = parse("foo:bar https://example.com/x 12:30").unwrap();
        assert_eq!(q.terms, [word("foo:bar"), word("https://example.com/x"), Term::Prefix("12:30".into())]);
    }

    #[test]
    fn malformed_queries_say_what_is_wrong() {
        let cases: &[(&str, QueryError)] = &[
            ("", QueryError::Empty),
            ("   \t ", QueryError::Empty),
            ("\"\"", QueryError::Empty),
            ("\"open phrase", QueryError::UnterminatedQuote),
            ("ok -\"open", QueryError::UnterminatedQuote),
            ("word -", QueryError::DanglingMinus),
            ("-from:@bob x", QueryError::ExcludedOperator("from:")),
            ("from: x", QueryError::MissingValue("from:", "from:@alice")),
            ("in: x", QueryError::MissingValue("in:", "in:#general")),
            ("from:<@not an id> x", QueryError::BadValue("from:", expected("from:"))),
            ("from:@Bad!Handle", QueryError::BadValue("from:", expected("from:"))),
            ("in:#bad.name", QueryError::BadValue("in:", expected("in:"))),
            ("before:2024-13-01", QueryError::BadValue("before:", expected("before:"))),
            ("after:2023-02-29", QueryError::BadValue("after:", expected("after:"))),
            ("on:yesterday", QueryError::BadValue("on:", expected("on:"))),
            ("on:2024-1-5", QueryError::BadValue("on:", expected("on:"))),
            ("on:2024-01-05-01", QueryError::BadValue("on:", expected("on:"))),
            ("has:picture", QueryError::BadValue("has:", expected("has:"))),
            ("is:starred", QueryError::BadValue("is:", expected("is:"))),
            ("on:2024-01-01 on:2024-01-02", QueryError::Repeated("on:")),
            ("before:2024-01-01 before:2024-01-02", QueryError::Repeated("before:")),
            ("-spam", QueryError::OnlyExclusions),
            ("-spam -\"bad words\"", QueryError::OnlyExclusions),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).as_ref(), Err(want), "{input:?}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn size_limits() {
        assert_eq!(parse(&"a".repeat(MAX_QUERY_CHARS + 1)), Err(QueryError::TooLong));
        assert!(parse(&"a".repeat(MAX_QUERY_CHARS)).is_ok());
        let many = vec!["w"; MAX_TERMS + 1].join(" ");
        assert_eq!(parse(&many), Err(QueryError::TooManyParts));
        let filters = vec!["from:@a"; MAX_FILTERS + 1].join(" ");
        assert_eq!(parse(&filters), Err(QueryError::TooManyParts));
    }

    #[test]
    fn error_messages_never_repeat_the_input() {
        for input in ["before:<script>", "from:<@<script>>", "has:<script>"] {
            let message = parse(input).unwrap_err().to_string();
            assert!(!message.contains("<script>"), "{message}");
        }
    }

    #[test]
    fn hostile_input_does_not_panic() {
        for input in ["\"", "-", "--", "-\"\"", "from:", ":", "é:é", "\u{0}", "on:\u{1F600}-01-01", "ä\"ö"] {
            let _ = parse(input);
        }
    }
}
