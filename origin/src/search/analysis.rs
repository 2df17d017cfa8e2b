//! Text analysis: how message text and file names become the terms of the search index, and how
//! a query's words become the same terms (ARCHITECTURE §8 "Search").
//!
//! One analyzer, [`text_analyzer`], is registered on the index under [`TEXT_ANALYZER`] and used
//! for both sides, indexing and querying, so a word always meets itself:
//!
//! 1. [`MessageTokenizer`] cuts the text into parts: runs of letters and digits, split where
//!    code identifiers join words (`rate_limit`, `config.rs`, `getUserName`, `HTTPServer`, the
//!    pieces of a URL), and runs of CJK characters (Han, Hiragana, Katakana, Hangul) as
//!    overlapping bigrams (`東京都` → `東京`, `京都`; a lone CJK character stays a unigram),
//!    since those scripts put no spaces between words. Each part takes the next position, so
//!    phrases (`"rate limit"`, `"東京都"`) match by position.
//! 2. tantivy's filters: parts over [`MAX_TERM_BYTES`] are dropped (base64 blobs, hashes),
//!    then Unicode lowercasing, folding to ASCII where a letter has an ASCII form (`café` →
//!    `cafe`, `straße` → `strasse`), and English stemming (`deploying` → `deploy`).
//!
//! An identifier is found by each of its parts and by itself: the query `config.rs` analyses to
//! the parts `config`, `rs`, which the index builder turns into a phrase. The whole identifier
//! is not indexed as one more term: the phrase of its parts finds it, also inside a longer path
//! (`src/config.rs`), and keeps one term per position.
//!
//! [`prefix_analyzer`] is the same without stemming, for the word being typed: a prefix must
//! be compared with the words as written (`stagi` begins `staging`, not its stem `stage`), so
//! the index keeps the text a second time, analysed by [`words_analyzer`]: unstemmed, each
//! word as the terms of its beginnings of [`MIN_GRAM_CHARS`] to [`MAX_GRAM_CHARS`]
//! characters, marked with [`GRAM_MARK`] (`deploy` → `dep*`, `depl*`, `deplo*`, `deploy*`),
//! at the word's position. The word being typed is then one term (`depl*`, whose postings are
//! every message with a word beginning `depl`) rather than the union of every word it
//! begins, which a search would have to read and merge. A word shorter or longer than that is
//! kept as itself (`db`, `東京`, `internationalization`, besides `int*` to `intern*`), and a
//! typed part of one or two, or of more than six characters, is expanded into the terms it
//! begins: few words begin with the same seven letters, so that union is short, and the
//! beginnings stop at six because each one more costs every longer word a term (a fifth of the
//! indexing time and of the index at 12). The mark keeps a word's beginnings apart from a whole
//! word: `dep*` never finds the two-letter word `de`.
//!
//! In the words field, a word of 3 to 6 characters is only its beginnings: the last of them
//! (`deploy*`) stands for it, also when an identifier's earlier parts are matched there
//! (`rate_lim` → `rate*` then `lim*`), where it also matches the words it begins (`rates_limit`
//! too) — as loose as stemming, and only for a word still being typed.

use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, Stemmer, TextAnalyzer, Token, TokenFilter, TokenStream,
    Tokenizer,
};

/// The name [`text_analyzer`] is registered under on the index.
pub const TEXT_ANALYZER: &str = "selvage_text";

/// The name [`words_analyzer`] is registered under on the index.
pub const WORDS_ANALYZER: &str = "selvage_words";

/// Shortest beginning of a word indexed as a term (see the module's documentation).
pub const MIN_GRAM_CHARS: usize = 3;

/// Longest beginning of a word indexed as a term.
pub const MAX_GRAM_CHARS: usize = 6;

/// Ends the term of a word's beginning: `dep*`. Never part of a word (the tokenizer cuts at
/// punctuation).
pub const GRAM_MARK: char = '*';

/// The term of the beginning `prefix`, if beginnings that long are indexed.
pub fn gram(prefix: &str) -> Option<String> {
    let chars = prefix.chars().count();
    (MIN_GRAM_CHARS..=MAX_GRAM_CHARS).contains(&chars).then(|| format!("{prefix}{GRAM_MARK}"))
}

/// Longest term kept, in bytes: longer parts are noise (hashes, encoded blobs) and would only
/// bloat the term dictionary.
pub const MAX_TERM_BYTES: usize = 64;

/// The analyzer of message text and file names (see the module's documentation).
pub fn text_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(MessageTokenizer)
        .filter(RemoveLongFilter::limit(MAX_TERM_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(Stemmer::new(Language::English))
        .build()
}

/// [`text_analyzer`] without stemming: the analysis of the word a user is still typing.
pub fn prefix_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(MessageTokenizer)
        .filter(RemoveLongFilter::limit(MAX_TERM_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// [`prefix_analyzer`] with each word's beginnings (see the module's documentation): the
/// analysis of the unstemmed field at indexing.
pub fn words_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(MessageTokenizer)
        .filter(RemoveLongFilter::limit(MAX_TERM_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(EdgeGrams)
        .build()
}

/// Turns each token into the terms of its beginnings, at its position, and keeps the token
/// itself only when it is shorter or longer than the beginnings indexed.
#[derive(Clone, Copy)]
pub struct EdgeGrams;

impl TokenFilter for EdgeGrams {
    type Tokenizer<T: Tokenizer> = EdgeGramsFilter<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> EdgeGramsFilter<T> {
        EdgeGramsFilter { inner: tokenizer, pending: Vec::new() }
    }
}

/// [`EdgeGrams`] over a tokenizer.
#[derive(Clone)]
pub struct EdgeGramsFilter<T> {
    inner: T,
    pending: Vec<Token>,
}

impl<T: Tokenizer> Tokenizer for EdgeGramsFilter<T> {
    type TokenStream<'a> = EdgeGramsStream<'a, T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        self.pending.clear();
        EdgeGramsStream { tail: self.inner.token_stream(text), pending: &mut self.pending }
    }
}

/// The tokens of [`EdgeGramsFilter`]: the current one is the last of `pending`.
pub struct EdgeGramsStream<'a, T> {
    tail: T,
    pending: &'a mut Vec<Token>,
}

impl<T: TokenStream> TokenStream for EdgeGramsStream<'_, T> {
    fn advance(&mut self) -> bool {
        self.pending.pop();
        if !self.pending.is_empty() {
            return true;
        }
        if !self.tail.advance() {
            return false;
        }
        let word = self.tail.token();
        let ends: Vec<usize> = word.text.char_indices().map(|(i, c)| i + c.len_utf8()).collect();
        let whole = !(MIN_GRAM_CHARS..=MAX_GRAM_CHARS).contains(&ends.len());
        for &end in ends.iter().take(MAX_GRAM_CHARS).skip(MIN_GRAM_CHARS - 1).rev() {
            let mut text = String::with_capacity(end + 1);
            text.push_str(&word.text[..end]);
            text.push(GRAM_MARK);
            self.pending.push(Token { text, ..word.clone() });
        }
        if whole {
            self.pending.push(word.clone());
        }
        true
    }

    fn token(&self) -> &Token {
        self.pending.last().unwrap_or_else(|| self.tail.token())
    }

    fn token_mut(&mut self) -> &mut Token {
        match self.pending.last_mut() {
            Some(token) => token,
            None => self.tail.token_mut(),
        }
    }
}

/// The terms of `text` under `analyzer`, each with its position.
pub fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<(usize, String)> {
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while let Some(token) = stream.next() {
        out.push((token.position, token.text.clone()));
    }
    out
}

/// Whether `c` belongs to a script written without spaces between words, whose runs are
/// indexed as bigrams: Han (with its extensions and compatibility ideographs), Hiragana,
/// Katakana (half-width too) and Hangul.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF      // Hangul Jamo
        | 0x3040..=0x309F    // Hiragana
        | 0x30A0..=0x30FF    // Katakana
        | 0x3130..=0x318F    // Hangul compatibility Jamo
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK unified ideographs, extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xA960..=0xA97F    // Hangul Jamo extended A
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xD7B0..=0xD7FF    // Hangul Jamo extended B
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x20000..=0x323AF // CJK unified ideographs, extensions B to H
    )
}

/// Splits text into the parts the index keeps (see the module's documentation).
///
/// Written here because tantivy has no tokenizer for it: its `SimpleTokenizer` keeps a CJK run
/// as one token and does not split `getUserName`; its `NgramTokenizer` cuts the whole text, not
/// only the CJK runs. Dictionary-based CJK segmenters need dictionaries of tens of megabytes
/// and serve one language each; bigrams serve all three with no data.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageTokenizer;

impl Tokenizer for MessageTokenizer {
    type TokenStream<'a> = Parts;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Parts {
        Parts { tokens: split(text).into_iter(), current: Token::default() }
    }
}

/// The parts of one text, cut all at once (a message is at most 64 KiB).
#[derive(Debug)]
pub struct Parts {
    tokens: std::vec::IntoIter<Token>,
    current: Token,
}

impl TokenStream for Parts {
    fn advance(&mut self) -> bool {
        match self.tokens.next() {
            Some(token) => {
                self.current = token;
                true
            }
            None => false,
        }
    }

    fn token(&self) -> &Token {
        &self.current
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.current
    }
}

/// What a character does to the parts around it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A letter or digit of a script that spaces its words.
    Word,
    /// A CJK character.
    Cjk,
    /// Anything else: spaces, punctuation, symbols, joiners of identifiers.
    Separator,
}

fn class(c: char) -> Class {
    if is_cjk(c) {
        Class::Cjk
    } else if c.is_alphanumeric() {
        Class::Word
    } else {
        Class::Separator
    }
}

/// Cuts `text` into parts, with byte offsets and consecutive positions.
fn split(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |&(at, _)| at);
    let mut i = 0;
    while i < chars.len() {
        let kind = class(chars[i].1);
        let mut j = i + 1;
        while j < chars.len() && class(chars[j].1) == kind {
            j += 1;
        }
        match kind {
            Class::Word => {
                let run = &chars[i..j];
                let mut start = 0;
                for cut in camel_cuts(run).into_iter().chain(std::iter::once(run.len())) {
                    push(&mut out, text, run[start].0, end_of(i + cut));
                    start = cut;
                }
            }
            Class::Cjk if j - i == 1 => push(&mut out, text, chars[i].0, end_of(j)),
            Class::Cjk => {
                for (k, &(at, _)) in chars.iter().enumerate().take(j - 1).skip(i) {
                    push(&mut out, text, at, end_of(k + 2));
                }
            }
            Class::Separator => {}
        }
        i = j;
    }
    out
}

/// Where a run of letters and digits splits as a camelCase identifier: before an upper-case
/// letter that follows a lower-case one (`get|User`), and before the last capital of an
/// acronym that a lower-case letter follows (`HTTP|Server`). Indexes into `run`, ascending,
/// never 0.
fn camel_cuts(run: &[(usize, char)]) -> Vec<usize> {
    let mut cuts = Vec::new();
    for k in 1..run.len() {
        let (prev, cur) = (run[k - 1].1, run[k].1);
        let next_lower = run.get(k + 1).is_some_and(|&(_, c)| c.is_lowercase());
        if cur.is_uppercase() && (prev.is_lowercase() || (prev.is_uppercase() && next_lower)) {
            cuts.push(k);
        }
    }
    cuts
}

fn push(out: &mut Vec<Token>, text: &str, from: usize, to: usize) {
    out.push(Token {
        offset_from: from,
        offset_to: to,
        position: out.len(),
        text: text[from..to].to_string(),
        position_length: 1,
    });
}

/// Whether a message's text carries a link (`has:link`): a URL with a web scheme, or one
/// starting with `www.`.
pub fn has_link(text: &str) -> bool {
    let lower = text.to_lowercase();
    lower.contains("http://") || lower.contains("https://") || lower.contains("www.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysed(text: &str) -> Vec<String> {
        terms(&mut text_analyzer(), text).into_iter().map(|(_, t)| t).collect()
    }

    fn positions(text: &str) -> Vec<usize> {
        terms(&mut text_analyzer(), text).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn words_are_lowercased_folded_and_stemmed() {
        assert_eq!(analysed("Café DEPLOYING straße"), ["cafe", "deploy", "strass"]);
        assert_eq!(analysed("cafe deploy"), ["cafe", "deploy"]);
        assert_eq!(analysed("deployed deploys deployment"), ["deploy", "deploy", "deploy"]);
        assert_eq!(analysed("Ångström naïve"), ["angstrom", "naiv"]);
    }

    #[test]
    fn the_prefix_analyzer_does_not_stem() {
        let terms: Vec<String> = terms(&mut prefix_analyzer(), "Deploying").into_iter().map(|(_, t)| t).collect();
        assert_eq!(terms, ["deploying"]);
    }

    #[test]
    fn the_words_field_keeps_each_word_and_its_beginnings_at_its_position() {
        let terms = terms(&mut words_analyzer(), "Rate_Limit a Café 東京都 internationalization deploy deployed");
        let at = |p: usize| terms.iter().filter(|(q, _)| *q == p).map(|(_, t)| t.as_str()).collect::<Vec<_>>();
        assert_eq!(at(0), ["rat*", "rate*"]);
        assert_eq!(at(1), ["lim*", "limi*", "limit*"]);
        assert_eq!(at(2), ["a"], "a short word is itself");
        assert_eq!(at(3), ["caf*", "cafe*"]);
        assert_eq!(at(4), ["東京"]);
        let long = at(6);
        assert_eq!(long.len(), 1 + MAX_GRAM_CHARS - MIN_GRAM_CHARS + 1, "a long word is itself and {long:?}");
        assert_eq!(long[0], "internationalization");
        assert_eq!(long.last(), Some(&"intern*"));
        assert_eq!(at(7), ["deploy*", "deplo*", "depl*", "dep*"].iter().rev().copied().collect::<Vec<_>>());
        assert_eq!(at(8), ["deployed", "dep*", "depl*", "deplo*", "deploy*"], "one longer than the beginnings");
        assert_eq!(gram("dep").as_deref(), Some("dep*"));
        assert_eq!(gram("de"), None);
        assert_eq!(gram("deploy").as_deref(), Some("deploy*"));
        assert_eq!(gram("deploye"), None);
    }

    #[test]
    fn identifiers_split_into_their_parts() {
        assert_eq!(analysed("config.rs"), ["config", "rs"]);
        assert_eq!(analysed("rate_limit"), ["rate", "limit"]);
        assert_eq!(analysed("getUserName"), ["get", "user", "name"]);
        assert_eq!(analysed("HTTPServer"), ["http", "server"]);
        assert_eq!(analysed("src/search/index.rs:42"), ["src", "search", "index", "rs", "42"]);
        // Letters and digits stay together.
        assert_eq!(analysed("v2 utf8 x86_64"), ["v2", "utf8", "x86", "64"]);
    }

    #[test]
    fn urls_split_into_their_parts() {
        assert_eq!(
            analysed("see https://docs.example.com/guide?lang=en#setup"),
            ["see", "https", "doc", "exampl", "com", "guid", "lang", "en", "setup"]
        );
    }

    #[test]
    fn cjk_runs_become_overlapping_bigrams() {
        assert_eq!(analysed("東京都"), ["東京", "京都"]);
        // Japanese mixes Han and kana in one run.
        assert_eq!(analysed("東京に行く"), ["東京", "京に", "に行", "行く"]);
        assert_eq!(analysed("검색엔진"), ["검색", "색엔", "엔진"]);
        assert_eq!(analysed("カタカナ"), ["カタ", "タカ", "カナ"]);
        // A lone CJK character is a unigram.
        assert_eq!(analysed("猫 dog"), ["猫", "dog"]);
    }

    #[test]
    fn mixed_scripts_split_at_the_change() {
        assert_eq!(analysed("Rust言語でdeploy"), ["rust", "言語", "語で", "deploy"]);
    }

    #[test]
    fn positions_are_consecutive_so_phrases_match() {
        assert_eq!(positions("rate_limit hit 東京都"), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn offsets_point_at_the_original_text() {
        let text = "Voilà: getUserName, 東京";
        let mut analyzer = text_analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut spans = Vec::new();
        while let Some(t) = stream.next() {
            spans.push(&text[t.offset_from..t.offset_to]);
        }
        assert_eq!(spans, ["Voilà", "get", "User", "Name", "東京"]);
    }

    #[test]
    fn long_parts_punctuation_and_empty_text_make_no_terms() {
        assert!(analysed("").is_empty());
        assert!(analysed("!!! --- ...").is_empty());
        assert_eq!(analysed(&format!("{} ok", "a".repeat(MAX_TERM_BYTES + 1))), ["ok"]);
    }

    #[test]
    fn links_are_recognised() {
        assert!(has_link("look at HTTPS://example.com"));
        assert!(has_link("www.example.org has it"));
        assert!(!has_link("no link, just http talk"));
    }
}
