//! A realistic chat corpus and the queries people type into it, for the `search` scenario:
//! deterministic from a seed, so that Selvage and its peer index the same messages and answer
//! the same queries, and two runs with the same seed measure the same work.
//!
//! **Messages.** Each message is generated on its own from `(seed, index)`, so any message can
//! be produced again without keeping the corpus in memory (the peer is loaded by generating it
//! a second time). Its channel is Zipf-distributed over the channels (a few busy channels, a
//! long tail of quiet ones), its author is one of the channel's [`AUTHORS_PER_CHANNEL`]
//! members. Its length in words is log-normal: mostly a few words, a long tail of paragraphs.
//! Its words come from a Zipf-distributed vocabulary: real English words first (the frequent
//! ones, stop words included, then the words of a software team's chat), then invented words
//! for the long tail of rare terms; a share of the words are code identifiers (`rate_limit`,
//! `getUserName`), file names (`deploy_notes.md`) and URLs. [`CJK_SHARE`] of the messages are
//! Chinese, Japanese or Korean, from vocabularies of real words in those scripts.
//!
//! **Queries.** [`Corpus::queries`] draws a fixed set of queries in the proportions of
//! [`QueryKind`]: one to three words, a phrase taken from a real message (so it matches), a
//! word from one author, a word in one channel, a word being typed (a prefix), and a CJK word.
//! Each is kept as its parts ([`QuerySpec`]), rendered into Selvage's query language here and
//! into the peer's query by the peer.

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};

/// Members of each channel who write in it.
pub const AUTHORS_PER_CHANNEL: usize = 8;

/// The share of messages written in Chinese, Japanese or Korean.
pub const CJK_SHARE: f64 = 0.10;

/// Words in the vocabulary: the real words below, then invented ones.
const VOCABULARY: usize = 30_000;

/// Zipf exponents: of the vocabulary (natural text is close to 1), of the channels' activity.
const WORD_EXPONENT: f64 = 1.05;
const CHANNEL_EXPONENT: f64 = 0.8;

/// Longest message, in words.
const MAX_WORDS: usize = 400;

/// The frequent English words, most frequent first (function words, as in any text).
const COMMON: &[&str] = &[
    "the", "to", "i", "a", "and", "is", "it", "you", "we", "that", "for", "in", "of", "on", "this", "be", "can",
    "with", "have", "not", "but", "just", "so", "are", "if", "do", "was", "what", "at", "will", "there", "think", "ok",
    "yes", "thanks", "from", "all", "my", "me", "they", "get", "like", "now", "one", "would", "should", "our", "or",
    "about", "up", "out", "know", "no", "need", "also", "going", "when", "see", "how", "some", "still", "it's", "i'm",
    "don't", "good", "new", "here", "time", "more", "make", "then", "look", "any", "today", "why", "sure",
];

/// The words of a software team's chat, roughly most frequent first: what people search for.
const TEAM: &[&str] = &[
    "deploy",
    "release",
    "build",
    "test",
    "tests",
    "review",
    "merge",
    "branch",
    "issue",
    "bug",
    "fix",
    "fixed",
    "meeting",
    "update",
    "change",
    "changes",
    "production",
    "staging",
    "server",
    "service",
    "database",
    "query",
    "error",
    "errors",
    "failing",
    "failed",
    "works",
    "working",
    "config",
    "logs",
    "customer",
    "team",
    "sprint",
    "ticket",
    "design",
    "api",
    "endpoint",
    "latency",
    "timeout",
    "cache",
    "memory",
    "cpu",
    "disk",
    "network",
    "cluster",
    "node",
    "pipeline",
    "rollback",
    "incident",
    "alert",
    "oncall",
    "dashboard",
    "metrics",
    "migration",
    "schema",
    "index",
    "search",
    "feature",
    "flag",
    "user",
    "users",
    "account",
    "login",
    "password",
    "token",
    "permission",
    "channel",
    "message",
    "notification",
    "mobile",
    "android",
    "ios",
    "browser",
    "frontend",
    "backend",
    "docs",
    "document",
    "spec",
    "proposal",
    "roadmap",
    "quarter",
    "planning",
    "demo",
    "launch",
    "customers",
    "sales",
    "support",
    "billing",
    "invoice",
    "contract",
    "budget",
    "hiring",
    "interview",
    "candidate",
    "onboarding",
    "lunch",
    "coffee",
    "tomorrow",
    "yesterday",
    "monday",
    "friday",
    "week",
    "weekend",
    "morning",
    "afternoon",
    "call",
    "sync",
    "standup",
    "retro",
    "slides",
    "feedback",
    "question",
    "answer",
    "idea",
    "plan",
    "priority",
    "blocked",
    "blocker",
    "deadline",
    "estimate",
    "version",
    "upgrade",
    "dependency",
    "library",
    "package",
    "container",
    "kubernetes",
    "docker",
    "terraform",
    "aws",
    "region",
    "bucket",
    "upload",
    "download",
    "file",
    "image",
    "video",
    "report",
    "analytics",
    "experiment",
    "results",
    "performance",
    "benchmark",
    "regression",
    "slow",
    "fast",
    "crash",
    "restart",
    "outage",
    "recovered",
    "monitoring",
    "traffic",
    "spike",
    "load",
    "capacity",
    "scaling",
    "shard",
    "replica",
    "backup",
    "restore",
    "encryption",
    "security",
    "vulnerability",
    "patch",
    "hotfix",
    "changelog",
    "approved",
    "approve",
    "reviewing",
    "deploying",
    "deployed",
    "testing",
    "tested",
    "merged",
    "released",
    "shipped",
    "shipping",
    "investigating",
    "debugging",
    "refactor",
    "cleanup",
    "typo",
    "lint",
    "flaky",
    "retry",
    "queue",
    "worker",
    "job",
    "cron",
    "schedule",
    "calendar",
    "invite",
    "agenda",
    "notes",
    "summary",
    "decision",
    "decided",
    "agreed",
    "vote",
    "option",
    "tradeoff",
    "risk",
    "cost",
    "price",
    "pricing",
    "trial",
    "signup",
    "churn",
    "revenue",
    "growth",
    "marketing",
    "campaign",
    "blog",
    "post",
    "website",
    "landing",
    "page",
    "button",
    "form",
    "modal",
    "layout",
    "color",
    "font",
    "icon",
    "logo",
    "screenshot",
    "mockup",
    "prototype",
    "figma",
    "sketch",
    "café",
    "naïve",
    "résumé",
];

/// Syllables the invented words of the long tail are made of.
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "sta", "vel", "tor", "ban", "qui", "dex", "mor", "pla", "sen", "tri", "zo", "gal",
    "fen", "hob", "jin", "cor", "ith", "lux", "ser", "ven", "ard", "pol", "nim", "ost", "ula",
];

const HOSTS: &[&str] = &[
    "github.com",
    "docs.example.com",
    "grafana.internal",
    "jira.example.com",
    "confluence.example.com",
    "sentry.io",
    "status.example.com",
    "drive.google.com",
    "figma.com",
    "stackoverflow.com",
];

const EXTENSIONS: &[&str] = &["rs", "py", "ts", "go", "md", "yaml", "json", "log", "png", "pdf", "csv", "toml"];

/// Chinese words: run together without spaces.
const CHINESE: &[&str] = &[
    "我们",
    "今天",
    "部署",
    "服务器",
    "数据库",
    "会议",
    "问题",
    "测试",
    "发布",
    "明天",
    "已经",
    "需要",
    "修复",
    "版本",
    "用户",
    "搜索",
    "功能",
    "客户",
    "项目",
    "进度",
    "上线",
    "回滚",
    "日志",
    "错误",
    "性能",
    "监控",
    "报警",
    "下午",
    "上午",
    "讨论",
    "确认",
    "一下",
    "可以",
    "没有",
    "这个",
    "那个",
    "因为",
    "所以",
    "完成",
    "开始",
    "文档",
    "设计",
    "评审",
    "代码",
    "合并",
    "分支",
    "北京",
    "上海",
    "东京都",
    "团队",
];

/// Japanese words: run together without spaces.
const JAPANESE: &[&str] = &[
    "デプロイ",
    "サーバー",
    "会議",
    "確認",
    "します",
    "お願いします",
    "東京",
    "今日",
    "明日",
    "テスト",
    "リリース",
    "データベース",
    "検索",
    "問題",
    "修正",
    "対応",
    "完了",
    "ありがとうございます",
    "よろしく",
    "資料",
    "共有",
    "レビュー",
    "エラー",
    "ログ",
    "本番",
    "環境",
    "予定",
    "です",
    "ました",
    "について",
    "ユーザー",
    "機能",
];

/// Korean words: separated by spaces.
const KOREAN: &[&str] = &[
    "배포",
    "서버",
    "회의",
    "확인",
    "테스트",
    "오늘",
    "내일",
    "검색",
    "문제",
    "수정",
    "완료",
    "감사합니다",
    "데이터베이스",
    "릴리스",
    "사용자",
    "기능",
    "로그",
    "에러",
    "검토",
    "공유",
    "일정",
    "진행",
    "했습니다",
    "합니다",
    "부탁드립니다",
    "서울",
    "팀",
    "프로젝트",
    "코드",
    "문서",
];

/// One generated message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// Its channel, `0..channels`.
    pub channel: usize,
    /// Its author, a user index `0..users` (one of the channel's [`Corpus::authors`]).
    pub author: usize,
    /// Its text.
    pub text: String,
}

/// What a query is made of, in the proportions drawn by [`Corpus::queries`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    /// One frequent word.
    OneWord,
    /// Two words, both required.
    TwoWords,
    /// Three words, all required.
    ThreeWords,
    /// Two words in this order, taken from a real message.
    Phrase,
    /// A word, written by one author (`from:@handle`).
    From,
    /// A word, in one channel (`in:#channel`).
    In,
    /// The start of a word, as it is being typed.
    Prefix,
    /// A Chinese, Japanese or Korean word.
    Cjk,
}

/// The kinds, in the order queries cycle through them.
const KINDS: &[QueryKind] = &[
    QueryKind::OneWord,
    QueryKind::TwoWords,
    QueryKind::ThreeWords,
    QueryKind::Phrase,
    QueryKind::From,
    QueryKind::In,
    QueryKind::Prefix,
    QueryKind::Cjk,
];

/// A query, as its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuerySpec {
    /// What it is.
    pub kind: QueryKind,
    /// Words the message must have; with [`QueryKind::Prefix`], the last one is a word's start.
    pub words: Vec<String>,
    /// Words it must have in this order.
    pub phrase: Vec<String>,
    /// Written by this user (a user index).
    pub from: Option<usize>,
    /// In this channel (a channel index).
    pub channel: Option<usize>,
}

impl QuerySpec {
    /// The query in Selvage's query language, with the handles and channel names of
    /// [`handle`] and [`channel_name`]. Its last bare word also matches as a prefix, as every
    /// Selvage query's does.
    pub fn selvage(&self) -> String {
        let mut parts = Vec::new();
        if let Some(u) = self.from {
            parts.push(format!("from:@{}", handle(u)));
        }
        if let Some(c) = self.channel {
            parts.push(format!("in:#{}", channel_name(c)));
        }
        if !self.phrase.is_empty() {
            parts.push(format!("\"{}\"", self.phrase.join(" ")));
        }
        parts.extend(self.words.iter().cloned());
        parts.join(" ")
    }
}

/// The handle of user `u`.
pub fn handle(u: usize) -> String {
    format!("user-{u:04}")
}

/// The name of channel `c`.
pub fn channel_name(c: usize) -> String {
    format!("ch-{c:04}")
}

/// The corpus (see the module's documentation).
pub struct Corpus {
    seed: u64,
    channels: usize,
    users: usize,
    vocabulary: Vec<String>,
    /// The channels in order of activity: `busiest[0]` gets the most messages.
    busiest: Vec<usize>,
    words: Zipf<f64>,
    channel_activity: Zipf<f64>,
    length: LogNormal<f64>,
}

impl Corpus {
    /// The corpus of `seed` over `channels` channels and `users` users (at least
    /// [`AUTHORS_PER_CHANNEL`]).
    pub fn new(seed: u64, channels: usize, users: usize) -> Corpus {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut vocabulary: Vec<String> = COMMON.iter().chain(TEAM).map(|w| w.to_string()).collect();
        while vocabulary.len() < VOCABULARY {
            let syllables = rng.random_range(2..=4);
            let word: String = (0..syllables).map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())]).collect();
            vocabulary.push(word);
        }
        let mut busiest: Vec<usize> = (0..channels).collect();
        for i in (1..busiest.len()).rev() {
            busiest.swap(i, rng.random_range(0..=i));
        }
        #[allow(clippy::expect_used)] // constant, valid parameters
        let (words, channel_activity, length) = (
            Zipf::new(VOCABULARY as f64, WORD_EXPONENT).expect("valid Zipf parameters"),
            Zipf::new(channels.max(1) as f64, CHANNEL_EXPONENT).expect("valid Zipf parameters"),
            // Median e^2.1 ≈ 8 words; one message in a hundred is past ~70.
            LogNormal::new(2.1, 0.95).expect("valid log-normal parameters"),
        );
        Corpus {
            seed,
            channels,
            users: users.max(AUTHORS_PER_CHANNEL),
            vocabulary,
            busiest,
            words,
            channel_activity,
            length,
        }
    }

    /// The users who write in channel `c` (user indexes, distinct).
    pub fn authors(&self, c: usize) -> Vec<usize> {
        let stride = self.users / AUTHORS_PER_CHANNEL;
        (0..AUTHORS_PER_CHANNEL).map(|k| (c * 7 + k * stride.max(1)) % self.users).collect()
    }

    fn rng(&self, i: u64, salt: u64) -> StdRng {
        // SplitMix64 of the index: neighbouring indexes get unrelated streams.
        let mut z = i.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        StdRng::seed_from_u64(z ^ (z >> 31))
    }

    fn word(&self, rng: &mut StdRng) -> &str {
        let rank = self.words.sample(rng) as usize;
        &self.vocabulary[rank.clamp(1, VOCABULARY) - 1]
    }

    /// Message `i` of the corpus.
    pub fn message(&self, i: u64) -> Generated {
        let mut rng = self.rng(i, 0);
        let rank = self.channel_activity.sample(&mut rng) as usize;
        let channel = self.busiest[rank.clamp(1, self.channels) - 1];
        let authors = self.authors(channel);
        let author = authors[rng.random_range(0..authors.len())];
        let words = (self.length.sample(&mut rng) as usize).clamp(1, MAX_WORDS);
        let text = if rng.random_bool(CJK_SHARE) { self.cjk_text(&mut rng, words) } else { self.text(&mut rng, words) };
        Generated { channel, author, text }
    }

    /// English-like text of `n` words, some of them identifiers, file names and URLs.
    fn text(&self, rng: &mut StdRng, n: usize) -> String {
        let mut text = String::with_capacity(n * 7);
        for k in 0..n {
            if k > 0 {
                text.push(' ');
            }
            let roll: f64 = rng.random();
            if roll < 0.015 {
                let (a, b) = (self.word(rng).to_string(), self.word(rng).to_string());
                text.push_str(&format!("{a}_{b}"));
            } else if roll < 0.025 {
                let (a, b) = (self.word(rng).to_string(), self.word(rng).to_string());
                let mut chars = b.chars();
                let upper: String = chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default();
                text.push_str(&format!("get{a}{upper}"));
            } else if roll < 0.032 {
                let name = self.word(rng).to_string();
                let ext = EXTENSIONS[rng.random_range(0..EXTENSIONS.len())];
                text.push_str(&format!("{name}_{}.{ext}", self.word(rng)));
            } else if roll < 0.038 {
                let host = HOSTS[rng.random_range(0..HOSTS.len())];
                let (a, b) = (self.word(rng).to_string(), self.word(rng).to_string());
                text.push_str(&format!("https://{host}/{a}/{b}?id={}", rng.random_range(100..100_000)));
            } else {
                text.push_str(self.word(rng));
            }
        }
        text
    }

    /// Chinese, Japanese or Korean text of about `n` words.
    fn cjk_text(&self, rng: &mut StdRng, n: usize) -> String {
        let (words, separator) = match rng.random_range(0..3) {
            0 => (CHINESE, ""),
            1 => (JAPANESE, ""),
            _ => (KOREAN, " "),
        };
        let mut text = String::new();
        for k in 0..n {
            if k > 0 {
                // Sentences: a full stop now and then, an English word (a product, a term) too.
                if rng.random_bool(0.1) {
                    text.push_str(if separator.is_empty() { "。" } else { ". " });
                } else {
                    text.push_str(separator);
                }
            }
            if rng.random_bool(0.05) {
                text.push(' ');
                text.push_str(self.word(rng));
                text.push(' ');
            } else {
                // Zipf-like within the script's vocabulary: early words are the common ones.
                let r: f64 = rng.random();
                text.push_str(words[((r * r) * words.len() as f64) as usize % words.len()]);
            }
        }
        text
    }

    /// `n` queries for a user who reads the channels `readable` (channel indexes), cycling
    /// through the kinds of [`QueryKind`]; `messages` is the corpus's size, for the phrases.
    pub fn queries(&self, n: usize, readable: &[usize], messages: u64) -> Vec<QuerySpec> {
        let mut rng = self.rng(u64::MAX, 1);
        let searchable: Vec<&str> =
            TEAM.iter().copied().filter(|w| w.chars().all(|c| c.is_ascii_lowercase())).collect();
        // Searched words: the team's words, the frequent ones more often.
        let pick = |rng: &mut StdRng| -> String {
            let r: f64 = rng.random();
            searchable[((r * r) * searchable.len() as f64) as usize % searchable.len()].to_string()
        };
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let kind = KINDS[k % KINDS.len()];
            let mut q = QuerySpec { kind, words: Vec::new(), phrase: Vec::new(), from: None, channel: None };
            match kind {
                QueryKind::OneWord => q.words.push(pick(&mut rng)),
                QueryKind::TwoWords => q.words.extend([pick(&mut rng), pick(&mut rng)]),
                QueryKind::ThreeWords => q.words.extend([pick(&mut rng), pick(&mut rng), pick(&mut rng)]),
                QueryKind::Phrase => {
                    q.phrase = self.phrase_from(&mut rng, messages).unwrap_or_else(|| vec![pick(&mut rng)])
                }
                QueryKind::From | QueryKind::In => {
                    let c = readable.get(rng.random_range(0..readable.len().max(1))).copied().unwrap_or(0);
                    if kind == QueryKind::From {
                        let authors = self.authors(c);
                        q.from = Some(authors[rng.random_range(0..authors.len())]);
                    } else {
                        q.channel = Some(c);
                    }
                    q.words.push(pick(&mut rng));
                }
                QueryKind::Prefix => {
                    let word = pick(&mut rng);
                    let keep = word.chars().count().clamp(3, 5).min(word.chars().count());
                    q.words.push(word.chars().take(keep).collect());
                }
                QueryKind::Cjk => {
                    let words = [CHINESE, JAPANESE, KOREAN][rng.random_range(0..3)];
                    let r: f64 = rng.random();
                    q.words.push(words[((r * r) * words.len() as f64) as usize % words.len()].to_string());
                }
            }
            out.push(q);
        }
        out
    }

    /// Two neighbouring plain words of a random English message, if one of a few tries has them.
    fn phrase_from(&self, rng: &mut StdRng, messages: u64) -> Option<Vec<String>> {
        for _ in 0..50 {
            let m = self.message(rng.random_range(0..messages.max(1)));
            let words: Vec<&str> = m.text.split(' ').collect();
            let plain = |w: &str| w.len() > 2 && w.chars().all(|c| c.is_ascii_lowercase());
            let pairs: Vec<usize> = (1..words.len()).filter(|&k| plain(words[k - 1]) && plain(words[k])).collect();
            if let Some(&k) = pairs.get(rng.random_range(0..pairs.len().max(1))) {
                return Some(vec![words[k - 1].to_string(), words[k].to_string()]);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_fixed_by_the_seed() {
        let (a, b, c) = (Corpus::new(7, 100, 50), Corpus::new(7, 100, 50), Corpus::new(8, 100, 50));
        assert_eq!(a.message(42), b.message(42));
        assert_ne!(
            (0..20).map(|i| a.message(i)).collect::<Vec<_>>(),
            (0..20).map(|i| c.message(i)).collect::<Vec<_>>()
        );
        assert_eq!(a.queries(16, &[1, 2, 3], 1000), b.queries(16, &[1, 2, 3], 1000));
    }

    #[test]
    fn the_corpus_has_the_promised_shape() {
        let corpus = Corpus::new(1, 1000, 200);
        let messages: Vec<Generated> = (0..20_000).map(|i| corpus.message(i)).collect();
        let cjk = messages.iter().filter(|m| m.text.chars().any(|c| c > '\u{2e80}')).count() as f64 / 20_000.0;
        assert!((0.07..0.14).contains(&cjk), "CJK share {cjk}");
        let mut lengths: Vec<usize> = messages.iter().map(|m| m.text.len()).collect();
        lengths.sort_unstable();
        let (median, p99) = (lengths[10_000], lengths[19_800]);
        assert!(median < 100 && p99 > 4 * median, "median {median} bytes, p99 {p99}");
        for m in &messages {
            assert!(corpus.authors(m.channel).contains(&m.author));
        }
        let channels: std::collections::HashSet<usize> = messages.iter().map(|m| m.channel).collect();
        assert!(channels.len() > 500, "only {} channels used", channels.len());
        let all = messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>().join(" ");
        for part in ["https://", "_", ".md", "deploy"] {
            assert!(all.contains(part), "no {part:?} in the corpus");
        }
    }

    #[test]
    fn queries_cover_every_kind() {
        let corpus = Corpus::new(3, 1000, 200);
        let queries = corpus.queries(KINDS.len() * 4, &[5, 6, 7], 10_000);
        for kind in KINDS {
            assert!(queries.iter().any(|q| q.kind == *kind), "no {kind:?} query");
        }
        let phrase = queries.iter().find(|q| q.kind == QueryKind::Phrase).unwrap();
        assert_eq!(phrase.phrase.len(), 2);
        assert!(phrase.selvage().starts_with('"'));
        let from = queries.iter().find(|q| q.kind == QueryKind::From).unwrap();
        assert!(from.selvage().starts_with("from:@user-"));
        let within = queries.iter().find(|q| q.kind == QueryKind::In).unwrap();
        assert!([5, 6, 7].contains(&within.channel.unwrap()));
    }
}
