//! The write-ahead log's recovery (`origin/src/store/embedded/wal.rs`) on segments as a crash,
//! a torn write, a recycled file or a damaged disk could leave them, through
//! `selvage_origin::store::embedded::replay_log_for_fuzzing`.
//!
//! Checks that recovery never panics, and that when it accepts the log it replays versions
//! consecutive from `flushed + 1`; and that it agrees with itself: replaying the same log
//! after a later flushed version (one it replayed) replays exactly the rest.
//!
//! Input: `flushed: u8`, `flags: u8`, then up to four segments, each `first: u16 LE`,
//! `len: u16 LE` and `len` bytes (the last takes whatever is left). With bit 0 of `flags` set,
//! the harness stamps every segment of the current format with the checksums its header and
//! records need (as the log's writer would), so that the fuzzer reaches record decoding
//! instead of stopping at checksums it cannot guess.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selvage_origin::store::embedded::replay_log_for_fuzzing;

const MAX_SEGMENTS: usize = 4;
/// The current format's segment magic, header and record header sizes (`wal.rs`).
const MAGIC: &[u8; 8] = b"SELVWAL2";
const HEADER_BYTES: usize = 32;
const RECORD_HEADER_BYTES: usize = 16;

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Writes the header's first version and checksum, and every record's checksum, as the log
/// writes them: header crc32 over its first 24 bytes, record crc32 over salt, length, payload.
fn stamp(segment: &mut [u8], first: u64) {
    if segment.len() < HEADER_BYTES || &segment[..MAGIC.len()] != MAGIC {
        return;
    }
    segment[8..16].copy_from_slice(&first.to_le_bytes());
    let crc = crc32fast::hash(&segment[..24]);
    segment[24..28].copy_from_slice(&crc.to_le_bytes());
    let mut at = HEADER_BYTES;
    while segment.len() - at >= RECORD_HEADER_BYTES {
        let len = le_u32(&segment[at..]);
        let n = len as usize;
        let Some(end) = (at + RECORD_HEADER_BYTES).checked_add(n).filter(|&e| e <= segment.len()) else { return };
        let salt = &segment[at + 8..at + 16];
        let mut h = crc32fast::Hasher::new();
        h.update(salt);
        h.update(&len.to_le_bytes());
        h.update(&segment[at + RECORD_HEADER_BYTES..end]);
        let crc = h.finalize();
        segment[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

fn segments(mut rest: &[u8], stamped: bool) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while rest.len() >= 4 && out.len() < MAX_SEGMENTS {
        let first = u64::from(u16::from_le_bytes([rest[0], rest[1]]));
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        rest = &rest[4..];
        let len = if out.len() + 1 == MAX_SEGMENTS { rest.len() } else { len.min(rest.len()) };
        let mut bytes = rest[..len].to_vec();
        rest = &rest[len..];
        if stamped {
            stamp(&mut bytes, first);
        }
        out.push((first, bytes));
    }
    // The store lists segments in version order, one file per first version.
    out.sort_by_key(|(first, _)| *first);
    out.dedup_by_key(|(first, _)| *first);
    out
}

fuzz_target!(|data: &[u8]| {
    let [flushed, flags, rest @ ..] = data else { return };
    let flushed = u64::from(*flushed);
    let log = segments(rest, flags & 1 != 0);
    let Ok(versions) = replay_log_for_fuzzing(&log, flushed) else { return };
    let expected: Vec<u64> = (flushed + 1..).take(versions.len()).collect();
    assert_eq!(versions, expected, "replayed versions are not consecutive from {}", flushed + 1);
    if let Some(&last) = versions.last() {
        let later = flushed + (last - flushed) / 2;
        let rest = replay_log_for_fuzzing(&log, later).expect("a log accepted after an earlier version");
        assert_eq!(rest, (later + 1..=last).collect::<Vec<_>>(), "replay after {later} is not the rest");
        assert_eq!(replay_log_for_fuzzing(&log, last).expect("accepted again"), Vec::<u64>::new());
    }
});
