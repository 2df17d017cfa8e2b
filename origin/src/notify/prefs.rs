//! The rules of a user's notification preferences: checking a document a client sends, and
//! answering, for a message and a moment, whether it notifies and whether do-not-disturb holds
//! it (ARCHITECTURE §8 "Notifications"). Pure functions of their inputs, the clock included, so
//! schedules are tested at any instant in any time zone.

use jiff::{civil::Weekday, tz::TimeZone, Timestamp};
use selvage_shared::{ChannelKind, DndWindow, NotifyLevel, NotifyPrefs};

/// Most highlight keywords a user may have.
pub const MAX_KEYWORDS: usize = 50;
/// Longest keyword, in characters.
pub const MAX_KEYWORD_CHARS: usize = 64;
/// Most channels with their own preferences.
pub const MAX_CHANNELS: usize = 2_000;
/// Most do-not-disturb windows.
pub const MAX_WINDOWS: usize = 14;

/// Why a message may notify a user, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A DM or group DM the user is in.
    Direct,
    /// Mentions the user by name.
    Mention,
    /// `@channel` or `@here`.
    Broadcast,
    /// Contains one of the user's keywords.
    Keyword,
    /// A reply in a thread the user follows.
    Thread,
    /// A channel the user wants every message of.
    All,
}

/// Checks a preferences document; answers what is wrong, as a client should read it.
pub fn validate(p: &NotifyPrefs) -> Result<(), String> {
    if p.channels.len() > MAX_CHANNELS {
        return Err(format!("at most {MAX_CHANNELS} channels may have their own preferences"));
    }
    if p.keywords.len() > MAX_KEYWORDS {
        return Err(format!("at most {MAX_KEYWORDS} keywords"));
    }
    for k in &p.keywords {
        if k.trim().is_empty() || k.chars().count() > MAX_KEYWORD_CHARS {
            return Err(format!("a keyword must have 1 to {MAX_KEYWORD_CHARS} characters"));
        }
        if k.chars().any(char::is_control) {
            return Err("a keyword must not contain control characters".into());
        }
    }
    if let Some(tz) = &p.timezone {
        TimeZone::get(tz).map_err(|_| format!("unknown time zone {tz:?}: use an IANA name such as Europe/Berlin"))?;
    }
    if p.dnd_schedule.len() > MAX_WINDOWS {
        return Err(format!("at most {MAX_WINDOWS} do-not-disturb windows"));
    }
    for w in &p.dnd_schedule {
        window(w)?;
    }
    if let Some(a) = &p.email_address {
        email_address(a)?;
    }
    Ok(())
}

/// Whether a message that notifies for `reason` also goes into the user's email digest: DMs
/// and mentions (by name, `@channel`/`@here`, keywords), when they want email and gave an
/// address — not thread replies or every message of a channel, as Slack's digests.
pub fn emails(p: &NotifyPrefs, reason: Reason) -> bool {
    p.email && p.email_address.is_some() && reason <= Reason::Keyword
}

/// Longest email address (RFC 5321's path limit less its brackets).
pub const MAX_EMAIL_ADDRESS: usize = 254;

/// Checks an email address: a dot-atom local part and a host name of at least two labels, the
/// form every mail system takes (no quoted local parts, no address literals). The API's schema
/// states the same rule as a pattern.
pub fn email_address(a: &str) -> Result<(), String> {
    let bad = || format!("{a:?} is not an email address like name@example.com");
    if a.len() > MAX_EMAIL_ADDRESS {
        return Err(format!("an email address has at most {MAX_EMAIL_ADDRESS} characters"));
    }
    let (local, domain) = a.split_once('@').ok_or_else(bad)?;
    let atom =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-".contains(&b));
    if !local.split('.').all(atom) {
        return Err(bad());
    }
    let label = |s: &str| {
        (1..=63).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || !labels.iter().all(|l| label(l)) {
        return Err(bad());
    }
    Ok(())
}

/// A window's days (Monday = 0) and its start and end in minutes of the day.
fn window(w: &DndWindow) -> Result<(Vec<u8>, u32, u32), String> {
    if w.days.is_empty() {
        return Err("a do-not-disturb window needs at least one day".into());
    }
    let days = w
        .days
        .iter()
        .map(|d| {
            ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .position(|n| n == d)
                .map(|i| i as u8)
                .ok_or_else(|| format!("unknown day {d:?}: use mon, tue, wed, thu, fri, sat or sun"))
        })
        .collect::<Result<Vec<u8>, String>>()?;
    Ok((days, minutes(&w.from)?, minutes(&w.to)?))
}

/// `HH:MM` as minutes of the day.
fn minutes(hhmm: &str) -> Result<u32, String> {
    let bad = || format!("{hhmm:?} is not a time of day: use HH:MM, 00:00 to 23:59");
    let (h, m) = hhmm.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Whether do-not-disturb holds notifications at `now_ms`, and if so until when (ms): the
/// manual `dnd_until`, or the end of the scheduled window `now` is in (the later of the two).
pub fn dnd_until(p: &NotifyPrefs, now_ms: i64) -> Option<i64> {
    let manual = p.dnd_until.filter(|&until| until > now_ms);
    let scheduled = scheduled_until(p, now_ms);
    manual.max(scheduled)
}

/// The end of the scheduled window that `now_ms` falls in, in the user's time zone.
fn scheduled_until(p: &NotifyPrefs, now_ms: i64) -> Option<i64> {
    if p.dnd_schedule.is_empty() {
        return None;
    }
    let tz = p.timezone.as_deref().and_then(|t| TimeZone::get(t).ok()).unwrap_or(TimeZone::UTC);
    let now = Timestamp::from_millisecond(now_ms).ok()?.to_zoned(tz);
    let today = now.date();
    let minute = u32::from(now.hour() as u8) * 60 + u32::from(now.minute() as u8);
    let mut end: Option<i64> = None;
    for w in &p.dnd_schedule {
        let Ok((days, from, to)) = window(w) else { continue };
        let overnight = to <= from;
        // A window that started today, or an overnight one that started yesterday.
        let started_today = days.contains(&monday_index(now.weekday())) && minute >= from && (overnight || minute < to);
        let yesterday = now.weekday().wrapping_sub(1);
        let from_yesterday = overnight && days.contains(&monday_index(yesterday)) && minute < to;
        if !(started_today || from_yesterday) {
            continue;
        }
        let end_day = if started_today && overnight { today.tomorrow().ok()? } else { today };
        let at = end_day.at((to / 60) as i8, (to % 60) as i8, 0, 0).to_zoned(now.time_zone().clone()).ok()?;
        let ms = at.timestamp().as_millisecond();
        end = Some(end.map_or(ms, |e| e.max(ms)));
    }
    end
}

fn monday_index(d: Weekday) -> u8 {
    d.to_monday_zero_offset() as u8
}

/// The level of a conversation for the user: theirs, or the default of its kind (every
/// message of a DM or group DM, mentions in a channel).
pub fn level(p: &NotifyPrefs, channel: &selvage_shared::ChannelId, kind: ChannelKind) -> NotifyLevel {
    match p.channels.get(channel).and_then(|c| c.level) {
        Some(level) => level,
        None if matches!(kind, ChannelKind::Dm | ChannelKind::GroupDm) => NotifyLevel::All,
        None => NotifyLevel::Mentions,
    }
}

/// Whether a message that may notify the user for `reason` does, under their preferences for
/// the conversation (do-not-disturb aside: it delays, it does not cancel).
pub fn notifies(p: &NotifyPrefs, channel: &selvage_shared::ChannelId, kind: ChannelKind, reason: Reason) -> bool {
    let muted = p.channels.get(channel).is_some_and(|c| c.muted);
    if muted {
        return reason == Reason::Mention;
    }
    match level(p, channel, kind) {
        NotifyLevel::Nothing => false,
        NotifyLevel::Mentions => reason != Reason::All,
        NotifyLevel::All => true,
    }
}

/// Whether `text` contains one of `keywords` as a whole word (or phrase), ignoring case.
pub fn has_keyword(text: &str, keywords: &[String]) -> bool {
    if keywords.is_empty() {
        return false;
    }
    let lower = text.to_lowercase();
    keywords.iter().any(|k| {
        let k = k.trim().to_lowercase();
        !k.is_empty()
            && lower.match_indices(&k).any(|(at, _)| {
                let before = lower[..at].chars().next_back();
                let after = lower[at + k.len()..].chars().next();
                !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
            })
    })
}

#[cfg(test)]
mod tests {
    use selvage_shared::{ChannelId, ChannelNotify};

    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn nights(tz: &str) -> NotifyPrefs {
        NotifyPrefs {
            timezone: Some(tz.into()),
            dnd_schedule: vec![DndWindow {
                days: vec!["mon".into(), "tue".into(), "wed".into(), "thu".into(), "fri".into()],
                from: "22:00".into(),
                to: "08:00".into(),
            }],
            ..NotifyPrefs::default()
        }
    }

    #[test]
    fn an_overnight_window_holds_until_the_next_morning_in_the_users_zone() {
        let p = nights("Europe/Berlin");
        // Tuesday 2026-03-10, 23:30 in Berlin (UTC+1): inside, until Wednesday 08:00 Berlin.
        assert_eq!(dnd_until(&p, ms("2026-03-10T22:30:00Z")), Some(ms("2026-03-11T07:00:00Z")));
        // Wednesday 07:59 Berlin: still inside the window that began Tuesday.
        assert_eq!(dnd_until(&p, ms("2026-03-11T06:59:00Z")), Some(ms("2026-03-11T07:00:00Z")));
        // Wednesday 08:00 and midday: outside.
        assert_eq!(dnd_until(&p, ms("2026-03-11T07:00:00Z")), None);
        assert_eq!(dnd_until(&p, ms("2026-03-11T11:00:00Z")), None);
        // Saturday 01:00 Berlin: the window of Friday night.
        assert_eq!(dnd_until(&p, ms("2026-03-14T00:00:00Z")), Some(ms("2026-03-14T07:00:00Z")));
        // Sunday 23:00 Berlin: no window starts on Sunday.
        assert_eq!(dnd_until(&p, ms("2026-03-15T22:00:00Z")), None);
        // The same instant is a different local time elsewhere: 23:30 UTC on Tuesday is 18:30 in
        // New York (outside), 22:30 in Berlin... and 23:30 in London (inside).
        assert_eq!(dnd_until(&nights("America/New_York"), ms("2026-03-10T22:30:00Z")), None);
        assert!(dnd_until(&nights("Europe/London"), ms("2026-03-10T23:30:00Z")).is_some());
    }

    #[test]
    fn the_window_follows_daylight_saving_time() {
        // Berlin moves to UTC+2 on 2026-03-29: 22:00 local is then 20:00 UTC.
        let p = nights("Europe/Berlin");
        assert!(dnd_until(&p, ms("2026-03-30T20:30:00Z")).is_some());
        assert_eq!(dnd_until(&p, ms("2026-03-30T20:30:00Z")), Some(ms("2026-03-31T06:00:00Z")));
        assert_eq!(dnd_until(&p, ms("2026-03-23T20:30:00Z")), None, "a week earlier that is 21:30 local");
    }

    #[test]
    fn manual_dnd_and_the_schedule_take_the_later_end() {
        let mut p = nights("UTC");
        let now = ms("2026-03-10T23:00:00Z");
        p.dnd_until = Some(ms("2026-03-11T10:00:00Z"));
        assert_eq!(dnd_until(&p, now), p.dnd_until);
        p.dnd_until = Some(now - 1);
        assert_eq!(dnd_until(&p, now), Some(ms("2026-03-11T08:00:00Z")), "an expired manual dnd is nothing");
        let day = ms("2026-03-11T12:00:00Z");
        assert_eq!(
            dnd_until(&NotifyPrefs { dnd_until: Some(day + 60_000), ..NotifyPrefs::default() }, day),
            Some(day + 60_000)
        );
    }

    #[test]
    fn levels_and_mutes_decide_what_notifies() {
        let c = ChannelId::parse("C1").unwrap();
        let d = ChannelId::parse("D1").unwrap();
        let mut p = NotifyPrefs::default();
        assert!(notifies(&p, &d, ChannelKind::Dm, Reason::All), "a DM notifies every message by default");
        assert!(!notifies(&p, &c, ChannelKind::Channel, Reason::All), "a channel, only mentions");
        assert!(notifies(&p, &c, ChannelKind::Channel, Reason::Broadcast));
        p.channels.insert(c.clone(), ChannelNotify { level: Some(NotifyLevel::Nothing), muted: false });
        assert!(!notifies(&p, &c, ChannelKind::Channel, Reason::Mention));
        p.channels.insert(c.clone(), ChannelNotify { level: Some(NotifyLevel::All), muted: true });
        assert!(!notifies(&p, &c, ChannelKind::Channel, Reason::All));
        assert!(!notifies(&p, &c, ChannelKind::Channel, Reason::Broadcast), "muted: not even @channel");
        assert!(notifies(&p, &c, ChannelKind::Channel, Reason::Mention), "muted: still a mention by name");
    }

    #[test]
    fn keywords_match_whole_words_in_any_case() {
        let k = vec!["deploy".to_string(), "on call".to_string()];
        assert!(has_keyword("Who can DEPLOY today?", &k));
        assert!(has_keyword("I'm on call tonight", &k));
        assert!(has_keyword("deploy", &k));
        assert!(!has_keyword("redeployed it", &k), "inside another word");
        assert!(!has_keyword("anything", &[]));
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        let bad = |p: NotifyPrefs| validate(&p).unwrap_err();
        assert!(
            bad(NotifyPrefs { timezone: Some("Mars/Olympus".into()), ..NotifyPrefs::default() }).contains("time zone")
        );
        let window = |days: &[&str], from: &str, to: &str| NotifyPrefs {
            dnd_schedule: vec![DndWindow {
                days: days.iter().map(|d| d.to_string()).collect(),
                from: from.into(),
                to: to.into(),
            }],
            ..NotifyPrefs::default()
        };
        assert!(bad(window(&["funday"], "22:00", "08:00")).contains("unknown day"));
        assert!(bad(window(&[], "22:00", "08:00")).contains("at least one day"));
        for t in ["24:00", "7:00", "07:60", "0700", "", "ab:cd", "-1:00"] {
            assert!(bad(window(&["mon"], t, "08:00")).contains("time of day"), "{t}");
        }
        assert!(bad(NotifyPrefs { keywords: vec!["  ".into()], ..NotifyPrefs::default() }).contains("keyword"));
        assert!(bad(NotifyPrefs { keywords: vec!["x".repeat(65)], ..NotifyPrefs::default() }).contains("keyword"));
        assert!(validate(&nights("Asia/Tokyo")).is_ok());
    }
}
