//! The embedded engine's write-ahead log: where a commit is durable before it reaches redb.
//!
//! The commit thread appends one **record** per commit group and (with `fsync` on) syncs it
//! before any commit of the group is acknowledged. A record holds every accepted transaction of
//! the group with its commit version and its mutations, fully resolved (atomic adds summed,
//! versionstamps filled in), so replaying it needs nothing but the record:
//!
//! ```text
//! segment := header record* leftover
//! header  := "SELVWAL2" first:u64 salt:u64 crc:u32 0:u32   (32 bytes; crc32 of the 24 before it)
//! record  := len:u32 crc:u32 salt:u64 payload             (crc32 of salt, len and payload)
//! payload := txn_count:u32 txn*                            (txn_count >= 1)
//! txn     := version:u64 mutation_count:u32 mutation*
//! mutation:= 1 key value | 2 key | 3 begin end  (set, clear, clear_range; each field u32 len + bytes)
//! ```
//!
//! All integers are little endian. The log is a series of **segment** files next to the redb
//! file, `<stem>.wal.<first version>` (20 digits, so names sort like versions). Segments are
//! only ever appended to; the flusher retires the ones whose every record is in redb, and asks
//! for a new segment after each flush so that the current one soon becomes retirable too. A
//! retired segment is deleted, or kept (up to [`SPARE_SEGMENTS`]) to be renamed and written
//! over as a later segment, as databases recycle their log files. A new segment's directory
//! entry is synced before anything is written to it.
//!
//! **Every use of a file has its own salt.** A segment's header carries a random `salt`, drawn
//! anew each time the file starts a segment, and every record carries it too, inside its
//! checksum. A recycled file keeps its earlier use's bytes behind the new records; whatever they
//! hold — old records, message texts full of zeros, bytes shaped like a header — they carry
//! another salt (or none), so they can never pass for a record of this segment. Zeros in
//! particular are never a record: a record's salt is never 0 and its payload never empty.
//!
//! [`recover`] reads the log on open. Records of versions the redb file already holds are
//! skipped, the rest replayed in order. A segment's records end in one of three ways
//! ([`End`]): cleanly at the end of the file, where its earlier use's bytes begin (nothing is
//! wrong), or at a **torn** record of its own salt (a write the process never finished; with
//! `fsync` on it was never acknowledged). Replay goes on into the next segment when that one
//! starts exactly where the log stopped. When a later segment holds commits past a version the
//! log does not have, the log is inconsistent: recovery fails, naming the segments and versions,
//! rather than serve a history with a hole in it (the store then refuses to open; see
//! `docs/STORAGE.md`).
//!
//! A write that fails is taken back ([`Wal::append`] truncates the segment to where the record
//! began; [`Wal::undo`] does the same after a failed sync), so the commit thread can refuse the
//! group and go on with the same versions once the disk has room. Only when even that fails is
//! the log **broken**, and the store refuses commits until it is reopened.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

/// First bytes of every segment: the format and its version.
const MAGIC: &[u8; 8] = b"SELVWAL2";
/// The first format, whose records carry no salt; read for segments an older build left.
const MAGIC_V1: &[u8; 8] = b"SELVWAL1";
/// What every version of the magic starts with: a file that does not is no segment of ours.
const MAGIC_STEM: &[u8] = b"SELVWAL";
/// A segment header: magic, first version, salt, checksum, padding.
const HEADER_BYTES: usize = 32;
/// A record header: length, checksum, salt.
const RECORD_HEADER_BYTES: usize = 16;
/// A segment is closed once it is this large, even between flushes.
const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
/// Obsolete segments kept to be written over instead of deleted.
const SPARE_SEGMENTS: usize = 2;
/// Largest payload [`recover`] believes; anything longer is garbage (a group is capped far
/// below this by the commit thread).
const MAX_RECORD_BYTES: usize = 1 << 30;

const TAG_SET: u8 = 1;
const TAG_CLEAR: u8 = 2;
const TAG_CLEAR_RANGE: u8 = 3;

/// One mutation as the log stores it, and as the memtable takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Mutation {
    Set(Vec<u8>, Vec<u8>),
    Clear(Vec<u8>),
    ClearRange(Vec<u8>, Vec<u8>),
}

/// Builds one record in a reusable buffer. Its salt and checksum are filled in by
/// [`Wal::append`], which knows the segment it goes to.
pub(super) struct RecordBuilder<'b> {
    buf: &'b mut Vec<u8>,
    /// Where the current transaction's mutation count goes, and the count so far.
    txn: Option<(usize, u32)>,
    txns: u32,
}

impl<'b> RecordBuilder<'b> {
    /// Starts a record, clearing `buf`.
    pub(super) fn new(buf: &'b mut Vec<u8>) -> Self {
        buf.clear();
        // len, crc, salt and txn_count, filled in by `finish` and `seal`.
        buf.extend_from_slice(&[0; RECORD_HEADER_BYTES + 4]);
        RecordBuilder { buf, txn: None, txns: 0 }
    }

    /// Starts the next transaction of the record.
    pub(super) fn txn(&mut self, version: u64) {
        self.end_txn();
        self.buf.extend_from_slice(&version.to_le_bytes());
        self.txn = Some((self.buf.len(), 0));
        self.buf.extend_from_slice(&[0; 4]);
        self.txns += 1;
    }

    fn field(&mut self, bytes: &[u8]) {
        // Keys and values are far below 4 GiB (FoundationDB's limits are checked before).
        self.buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(bytes);
    }

    fn count(&mut self) {
        if let Some((_, n)) = &mut self.txn {
            *n += 1;
        }
    }

    pub(super) fn set(&mut self, key: &[u8], value: &[u8]) {
        self.buf.push(TAG_SET);
        self.field(key);
        self.field(value);
        self.count();
    }

    pub(super) fn clear(&mut self, key: &[u8]) {
        self.buf.push(TAG_CLEAR);
        self.field(key);
        self.count();
    }

    pub(super) fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.buf.push(TAG_CLEAR_RANGE);
        self.field(begin);
        self.field(end);
        self.count();
    }

    fn end_txn(&mut self) {
        if let Some((at, n)) = self.txn.take() {
            self.buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
        }
    }

    /// Fills in the length and the transaction count; [`Wal::append`] adds salt and checksum.
    pub(super) fn finish(mut self) {
        self.end_txn();
        let txns = self.txns;
        let h = RECORD_HEADER_BYTES;
        self.buf[h..h + 4].copy_from_slice(&txns.to_le_bytes());
        // The commit thread caps a group at a few tens of MB, far below 4 GiB.
        let len = (self.buf.len() - h) as u32;
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
    }
}

/// The checksum of a record: its salt, its length and its payload.
fn record_crc(salt: u64, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Stamps a finished record with its segment's salt and its checksum.
fn seal(record: &mut [u8], salt: u64) {
    let len = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
    let crc = record_crc(salt, len, &record[RECORD_HEADER_BYTES..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    record[8..16].copy_from_slice(&salt.to_le_bytes());
}

/// A segment's header.
fn header(first: u64, salt: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&first.to_le_bytes());
    h[16..24].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A salt for a new use of a segment file: random, never 0 (so zeros are never a record).
fn new_salt() -> u64 {
    rand::random::<u64>() | 1
}

/// Reads little-endian fields off a payload; `None` when it runs out.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Some(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Option<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(b))
    }

    fn field(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
}

/// Decodes a payload whose checksum matched: each transaction's version and mutations.
fn decode(payload: &[u8]) -> Option<Vec<(u64, Vec<Mutation>)>> {
    let mut r = Reader { rest: payload };
    let txns = r.u32()?;
    if txns == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(txns.min(1 << 16) as usize);
    for _ in 0..txns {
        let version = r.u64()?;
        let n = r.u32()?;
        let mut mutations = Vec::with_capacity(n.min(1 << 16) as usize);
        for _ in 0..n {
            let m = match r.u8()? {
                TAG_SET => Mutation::Set(r.field()?, r.field()?),
                TAG_CLEAR => Mutation::Clear(r.field()?),
                TAG_CLEAR_RANGE => Mutation::ClearRange(r.field()?, r.field()?),
                _ => return None,
            };
            mutations.push(m);
        }
        out.push((version, mutations));
    }
    r.rest.is_empty().then_some(out)
}

/// How a segment's records end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The file ends right after its last record.
    Clean,
    /// At this offset begin bytes that are no record of this segment: the file's earlier use
    /// (it was recycled), zeros, or a header that was never rewritten. Nothing is wrong.
    Leftover(usize),
    /// At this offset a record of this segment is cut short or fails its checksum: a write the
    /// process did not finish.
    Torn(usize),
    /// A segment of the first format (no salt), which cannot tell a torn record from leftover
    /// bytes: its records end at this offset.
    Unsalted(usize),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Clean => write!(f, "at the end of the file"),
            End::Leftover(at) => write!(f, "at offset {at}, where bytes that are no record of it begin"),
            End::Torn(at) => write!(f, "in a torn record at offset {at}"),
            End::Unsalted(at) => write!(f, "at offset {at} (first format)"),
        }
    }
}

/// A segment's intact records and how they end.
struct Parsed<'a> {
    records: Vec<&'a [u8]>,
    end: End,
}

/// Splits a segment named for version `first` into the payloads of its records.
fn parse_segment(bytes: &[u8], first: u64) -> Parsed<'_> {
    let none = |end| Parsed { records: Vec::new(), end };
    if bytes.len() >= MAGIC_V1.len() && &bytes[..MAGIC_V1.len()] == MAGIC_V1 {
        return parse_unsalted(bytes);
    }
    if bytes.len() < HEADER_BYTES || &bytes[..MAGIC.len()] != MAGIC {
        // A header whose write never finished: the segment never got a record.
        return none(if bytes.is_empty() { End::Clean } else { End::Leftover(0) });
    }
    let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(bytes[24..28].try_into().unwrap_or_default());
    if crc32fast::hash(&bytes[..24]) != crc || field(8) != first {
        // Torn, or the header of the file's earlier use (renamed, never rewritten).
        return none(End::Leftover(0));
    }
    let salt = field(16);
    let mut records = Vec::new();
    let mut at = HEADER_BYTES;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < RECORD_HEADER_BYTES {
            // Too short to tell whose it is: a torn header if these bytes were written last,
            // else the end of the earlier use. Neither holds a commit.
            return Parsed { records, end: End::Leftover(at) };
        }
        let mut r = Reader { rest };
        let (len, crc, record_salt) = match (r.u32(), r.u32(), r.u64()) {
            (Some(len), Some(crc), Some(salt)) => (len, crc, salt),
            _ => return Parsed { records, end: End::Leftover(at) },
        };
        if record_salt != salt {
            return Parsed { records, end: End::Leftover(at) };
        }
        let n = len as usize;
        if !(4..=MAX_RECORD_BYTES).contains(&n) || r.rest.len() < n {
            return Parsed { records, end: End::Torn(at) };
        }
        let payload = &r.rest[..n];
        if record_crc(salt, len, payload) != crc {
            return Parsed { records, end: End::Torn(at) };
        }
        records.push(payload);
        at += RECORD_HEADER_BYTES + n;
    }
    Parsed { records, end: End::Clean }
}

/// A segment of the first format: `len:u32 crc:u32 payload` records after the magic.
fn parse_unsalted(bytes: &[u8]) -> Parsed<'_> {
    let mut records = Vec::new();
    let mut at = MAGIC_V1.len();
    while at < bytes.len() {
        let mut r = Reader { rest: &bytes[at..] };
        let (Some(len), Some(crc)) = (r.u32(), r.u32()) else {
            return Parsed { records, end: End::Unsalted(at) };
        };
        let len = len as usize;
        // An empty payload is no record (it was always a run of zeros).
        if !(4..=MAX_RECORD_BYTES).contains(&len) || r.rest.len() < len {
            return Parsed { records, end: End::Unsalted(at) };
        }
        let payload = &r.rest[..len];
        if crc32fast::hash(payload) != crc || decode(payload).is_none() {
            return Parsed { records, end: End::Unsalted(at) };
        }
        records.push(payload);
        at += 8 + len;
    }
    Parsed { records, end: End::Clean }
}

/// Where the segments of the store at `db_path` live and what they are called.
#[derive(Clone, Debug)]
pub(super) struct Naming {
    dir: PathBuf,
    prefix: String,
}

impl Naming {
    pub(super) fn new(db_path: &Path) -> Self {
        let dir = match db_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = db_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Naming { dir, prefix: format!("{stem}.wal.") }
    }

    fn path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{}{first:020}", self.prefix))
    }

    /// The segments on disk, by first version.
    fn list(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(first) = name.to_str().and_then(|n| n.strip_prefix(&self.prefix)).and_then(|v| v.parse().ok())
            else {
                continue;
            };
            out.push((first, entry.path()));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Where a retired segment waits to be written over: `<stem>.wal.spare<slot>`, a name
    /// [`Naming::list`] does not take for a segment.
    fn spare_path(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("{}spare{slot}", self.prefix))
    }

    /// The spare segments on disk.
    fn spares(&self) -> io::Result<Vec<PathBuf>> {
        let spare = format!("{}spare", self.prefix);
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_str().is_some_and(|n| n.starts_with(&spare)) {
                out.push(entry.path());
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Makes creations and deletions in the directory durable.
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// What [`recover`] found.
pub(super) struct Recovered {
    /// The highest version replayed, or the flushed version when nothing was.
    pub(super) last_version: u64,
    /// Transactions replayed.
    pub(super) replayed: u64,
    /// Every segment file found; all of them are obsolete once the replayed commits are in
    /// redb (see [`remove_segments`]).
    pub(super) segments: Vec<PathBuf>,
}

/// An inconsistent log: recovery refuses it rather than lose what a later segment holds.
fn inconsistent(why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the write-ahead log is inconsistent: {why}; nothing was replayed or deleted (see docs/STORAGE.md, \"When recovery refuses\")"),
    )
}

/// Replays the log after `flushed`, in version order, into `apply`. Fails, before anything is
/// applied, when the log is inconsistent: a segment that holds commits past a version no
/// segment has, or a record of a segment's own salt that does not decode.
pub(super) fn recover(naming: &Naming, flushed: u64, apply: impl FnMut(u64, Vec<Mutation>)) -> io::Result<Recovered> {
    let segments = naming.list()?;
    let mut files = Vec::with_capacity(segments.len());
    for (first, path) in &segments {
        files.push((*first, path.as_path(), fs::read(path)?));
    }
    let (last_version, replayed) = replay(&files, flushed, apply)?;
    Ok(Recovered { last_version, replayed, segments: segments.into_iter().map(|(_, p)| p).collect() })
}

/// [`recover`] on segments already read: `(first version, path, bytes)` in version order.
/// Answers the last version and how many transactions were applied. Pure but for logging, so
/// that it can be fuzzed.
pub(super) fn replay(
    files: &[(u64, &Path, Vec<u8>)],
    flushed: u64,
    mut apply: impl FnMut(u64, Vec<Mutation>),
) -> io::Result<(u64, u64)> {
    // Check the whole log first, then replay: an inconsistent log must change nothing.
    let mut plan: Vec<(u64, Vec<Mutation>)> = Vec::new();
    let mut next = flushed + 1;
    // Each segment read so far, and how its records end.
    let mut ends: Vec<(&Path, End)> = Vec::new();
    for (first, path, bytes) in files {
        let parsed = parse_segment(bytes, *first);
        let mut txns = Vec::new();
        for payload in &parsed.records {
            let Some(decoded) = decode(payload) else {
                return Err(inconsistent(format!(
                    "{} holds a record with its own salt and checksum that does not decode",
                    path.display()
                )));
            };
            txns.extend(decoded);
        }
        let newest = txns.last().map(|(v, _)| *v);
        if newest.is_some_and(|v| v >= next) && *first > next {
            let before = ends.last().map_or_else(
                || "the redb file".to_string(),
                |(p, end)| format!("{}, whose records end {end}", p.display()),
            );
            return Err(inconsistent(format!(
                "versions {next}..{} are in no segment, but {} holds versions {first}..{}; the log before it ends with {before}",
                first - 1,
                path.display(),
                newest.unwrap_or(*first),
            )));
        }
        for (version, mutations) in txns {
            if version < next {
                continue;
            }
            if version > next {
                return Err(inconsistent(format!(
                    "{} skips from version {} to {version} within its records",
                    path.display(),
                    next - 1
                )));
            }
            plan.push((version, mutations));
            next += 1;
        }
        ends.push((*path, parsed.end));
    }
    let count = ends.len();
    for (i, (path, end)) in ends.into_iter().enumerate() {
        let segment = path.display();
        match end {
            End::Clean => {}
            End::Leftover(offset) => {
                tracing::debug!(%segment, offset, "log segment's records end where bytes of the file's earlier use begin")
            }
            End::Unsalted(offset) => {
                tracing::info!(%segment, offset, "log segment of the first format ends here (it cannot tell a torn record from leftover bytes)")
            }
            End::Torn(offset) if i + 1 == count => tracing::warn!(
                %segment,
                offset,
                "write-ahead log ends in a torn record: a commit group whose write the process did not finish (with fsync on, never acknowledged); ignoring it"
            ),
            End::Torn(offset) => tracing::warn!(
                %segment,
                offset,
                "log segment ends in a torn record, and the next segment continues the log where it stops; ignoring it"
            ),
        }
    }
    let mut replayed = 0u64;
    for (version, mutations) in plan {
        apply(version, mutations);
        replayed += 1;
    }
    Ok((next - 1, replayed))
}

/// Deletes the segments [`recover`] found (once their commits are durable in redb).
pub(super) fn remove_segments(naming: &Naming, segments: &[PathBuf], sync: bool) -> io::Result<()> {
    for path in segments {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if sync && !segments.is_empty() {
        naming.sync_dir()?;
    }
    Ok(())
}

/// Why a record is not in the log.
#[derive(Debug)]
pub(super) struct LogFailure {
    pub(super) error: io::Error,
    /// Nothing of the record is left in the log: the group can be refused and its versions
    /// given to the next one. When `false`, part of it may be on disk and the log is broken.
    pub(super) undone: bool,
}

/// Where [`Wal::append`] put a record, for [`Wal::undo`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Appended {
    /// Offset of the record in its segment.
    at: u64,
    /// The segment's last version before the record.
    last_before: u64,
}

/// The log the commit thread appends to.
pub(super) struct Wal {
    naming: Naming,
    /// Sync what is appended (the store's `fsync` option).
    fsync: bool,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Closed segments, oldest first: first and last version, path.
    closed: VecDeque<(u64, u64, PathBuf)>,
    /// The segment being appended to, if one is open.
    current: Option<Segment>,
    /// Start a new segment at the next append (set after a flush).
    rotate: bool,
    /// When appended bytes were last synced.
    last_sync: Instant,
    /// Appended bytes not yet synced.
    unsynced: bool,
    /// Retired segments renamed to spare names, to be written over (see [`Wal::recycle`]).
    spare: Vec<PathBuf>,
    /// Set when a failed write could not be taken back: what is on disk is unknown.
    broken: Option<String>,
    /// Syncs to fail with EIO before touching the disk, for tests of what a failed fdatasync
    /// leads to (no filesystem here can be made to fail one on demand).
    #[cfg(test)]
    failing_syncs: usize,
}

struct Segment {
    file: File,
    first: u64,
    last: u64,
    /// Bytes of this segment's own (header and records); a recycled file is longer.
    bytes: u64,
    salt: u64,
    path: PathBuf,
}

impl Wal {
    /// An empty log (after [`recover`] and [`remove_segments`]); its first segment is created
    /// by the first append.
    pub(super) fn new(naming: Naming, fsync: bool) -> Self {
        // Spares left by an earlier run are reused; any beyond the count, deleted.
        let mut spare = naming.spares().unwrap_or_default();
        for extra in spare.split_off(spare.len().min(SPARE_SEGMENTS)) {
            let _ = fs::remove_file(extra);
        }
        let inner = Inner {
            closed: VecDeque::new(),
            current: None,
            rotate: false,
            last_sync: Instant::now(),
            unsynced: false,
            spare,
            broken: None,
            #[cfg(test)]
            failing_syncs: 0,
        };
        Wal { naming, fsync, inner: Mutex::new(inner) }
    }

    /// The directory the segments (and the redb file) are in.
    pub(super) fn dir(&self) -> &Path {
        &self.naming.dir
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` describing the files as they are.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one record (built by [`RecordBuilder`]) holding versions `first..=last`, without
    /// syncing it ([`Wal::sync`]). Stamps it with its segment's salt and checksum. A write that
    /// fails is taken back: the segment is cut to where the record began.
    pub(super) fn append(&self, record: &mut [u8], first: u64, last: u64) -> Result<Appended, LogFailure> {
        let mut inner = self.inner();
        if let Some(why) = &inner.broken {
            return Err(LogFailure { error: io::Error::other(why.clone()), undone: false });
        }
        let full = inner.current.as_ref().is_some_and(|s| s.bytes >= SEGMENT_BYTES);
        if inner.rotate || full {
            if let Some(old) = inner.current.as_ref() {
                if inner.unsynced {
                    // A closed segment is whole on disk before the next one begins, so that the
                    // log never has a hole in front of a later segment.
                    if let Err(error) = old.file.sync_data() {
                        return Err(self.break_log(&mut inner, error));
                    }
                    inner.unsynced = false;
                }
            }
            inner.rotate = false;
            if let Some(old) = inner.current.take() {
                inner.closed.push_back((old.first, old.last, old.path));
            }
        }
        if inner.current.is_none() {
            let spare = inner.spare.pop();
            match self.create(first, spare) {
                Ok(segment) => inner.current = Some(segment),
                Err(error) => return Err(LogFailure { error, undone: true }),
            }
        }
        let Some(seg) = inner.current.as_mut() else {
            return Err(LogFailure { error: io::Error::other("no open write-ahead log segment"), undone: true });
        };
        seal(record, seg.salt);
        let appended = Appended { at: seg.bytes, last_before: seg.last };
        if let Err(error) = seg.file.write_all(record) {
            // Part of the record may be in the file: cut it off, and write on from there.
            let at = appended.at;
            return match seg.file.set_len(at).and_then(|()| seg.file.seek(SeekFrom::Start(at))) {
                Ok(_) => Err(LogFailure { error, undone: true }),
                Err(cut) => {
                    tracing::error!(error = %cut, segment = %seg.path.display(), "cannot cut a failed write off the write-ahead log");
                    Err(self.break_log(&mut inner, error))
                }
            };
        }
        seg.bytes += record.len() as u64;
        seg.last = last;
        inner.unsynced = true;
        Ok(appended)
    }

    /// Takes back the record [`Wal::append`] last put at `appended`, after its sync failed:
    /// cuts the segment there and syncs the cut. When that fails too, the log is broken.
    pub(super) fn undo(&self, appended: Appended) -> Result<(), LogFailure> {
        let mut inner = self.inner();
        let Some(seg) = inner.current.as_mut() else {
            return Err(LogFailure { error: io::Error::other("no open write-ahead log segment"), undone: false });
        };
        let cut = seg
            .file
            .set_len(appended.at)
            .and_then(|()| seg.file.seek(SeekFrom::Start(appended.at)))
            .and_then(|_| seg.file.sync_data());
        match cut {
            Ok(()) => {
                seg.bytes = appended.at;
                seg.last = appended.last_before;
                inner.unsynced = false;
                Ok(())
            }
            Err(error) => Err(self.break_log(&mut inner, error)),
        }
    }

    /// Marks the log broken: nothing more is appended until the store is reopened.
    fn break_log(&self, inner: &mut Inner, error: io::Error) -> LogFailure {
        inner.broken = Some(format!("an earlier write failed and could not be taken back ({error})"));
        LogFailure { error, undone: false }
    }

    /// Makes the next `n` syncs fail with EIO.
    #[cfg(test)]
    pub(super) fn fail_syncs(&self, n: usize) {
        self.inner().failing_syncs = n;
    }

    /// Syncs whatever was appended without a sync.
    pub(super) fn sync(&self) -> io::Result<()> {
        let mut inner = self.inner();
        #[cfg(test)]
        if inner.unsynced && inner.failing_syncs > 0 {
            inner.failing_syncs -= 1;
            return Err(io::Error::from_raw_os_error(5));
        }
        if inner.unsynced {
            if let Some(seg) = &inner.current {
                seg.file.sync_data()?;
            }
            inner.unsynced = false;
            inner.last_sync = Instant::now();
        }
        Ok(())
    }

    /// When appended bytes were last synced.
    pub(super) fn last_sync(&self) -> Instant {
        self.inner().last_sync
    }

    /// Opens the segment that starts at `first`: a `spare` one renamed and written over, else a
    /// new file. Either way with a new salt.
    fn create(&self, first: u64, spare: Option<PathBuf>) -> io::Result<Segment> {
        let path = self.naming.path(first);
        let salt = new_salt();
        let head = header(first, salt);
        if let Some(spare) = spare {
            match self.recycle(&spare, &path, &head) {
                Ok(file) => {
                    let bytes = HEADER_BYTES as u64;
                    return Ok(Segment { file, first, last: first.saturating_sub(1), bytes, salt, path });
                }
                Err(e) => {
                    tracing::warn!(error = %e, segment = %spare.display(), "cannot reuse a write-ahead log segment; starting a new one");
                    let _ = fs::remove_file(&spare);
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let made = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&path)?;
            file.write_all(&head)?;
            if self.fsync {
                file.sync_data()?;
                self.naming.sync_dir()?;
            }
            Ok(file)
        })();
        match made {
            Ok(file) => {
                Ok(Segment { file, first, last: first.saturating_sub(1), bytes: HEADER_BYTES as u64, salt, path })
            }
            Err(e) => {
                // A segment that never got its header holds nothing; do not leave it behind.
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Renames an obsolete segment to `path` and writes the new header over its old one. Its old
    /// records stay behind the new ones until they are written over; their salt is not the new
    /// one, so [`recover`] never takes them for records. The header needs no sync of its own:
    /// the first record's sync carries it, and a header lost in a crash leaves a segment that
    /// was never acknowledged anything. Writing over pages that are in the page cache already,
    /// inside the file's size, spares the kernel allocating pages and blocks, and the fdatasync
    /// the file's size.
    fn recycle(&self, spare: &Path, path: &Path, head: &[u8; HEADER_BYTES]) -> io::Result<File> {
        let mut file = OpenOptions::new().read(true).write(true).open(spare)?;
        let mut magic = [0u8; MAGIC_STEM.len()];
        io::Read::read_exact(&mut file, &mut magic)?;
        if magic != MAGIC_STEM {
            return Err(io::Error::other("the spare segment does not start with the log's magic"));
        }
        fs::rename(spare, path)?;
        if self.fsync {
            self.naming.sync_dir()?;
        }
        file.seek(SeekFrom::Start(0))?;
        // Writing the header leaves the file positioned just after it, where records start.
        file.write_all(head)?;
        Ok(file)
    }

    /// Retires the segments whose every record has version `<= flushed` (they are in redb):
    /// keeps up to [`SPARE_SEGMENTS`] of them to be written over by later segments, deletes the
    /// rest, and makes the next append start a new segment.
    pub(super) fn truncate_through(&self, flushed: u64) -> io::Result<()> {
        let mut doomed = Vec::new();
        let free_slots: Vec<PathBuf>;
        {
            let mut inner = self.inner();
            while inner.closed.front().is_some_and(|(_, last, _)| *last <= flushed) {
                if let Some((_, _, path)) = inner.closed.pop_front() {
                    doomed.push(path);
                }
            }
            if inner.current.as_ref().is_some_and(|s| s.last <= flushed) {
                if let Some(seg) = inner.current.take() {
                    doomed.push(seg.path);
                }
                inner.unsynced = false;
            } else if inner.current.is_some() {
                inner.rotate = true;
            }
            free_slots =
                (0..SPARE_SEGMENTS).map(|k| self.naming.spare_path(k)).filter(|p| !inner.spare.contains(p)).collect();
        }
        // Renamed outside the lock, which the commit thread's appends take. Only the flusher
        // adds spares, so the slots stay free meanwhile. Not synced: should a rename be lost in
        // a crash, the file is an obsolete segment again, which recovery skips and deletes.
        let mut kept = Vec::new();
        for spare in free_slots {
            let Some(path) = doomed.pop() else { break };
            match fs::rename(&path, &spare) {
                Ok(()) => kept.push(spare),
                Err(_) => {
                    doomed.push(path);
                    break;
                }
            }
        }
        if !kept.is_empty() {
            self.inner().spare.extend(kept);
        }
        // Deletions need no sync: a segment that comes back after a crash only holds versions
        // the redb file already has, which recovery skips.
        for path in doomed {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes the spare segments (at a clean shutdown).
    pub(super) fn discard_spares(&self) {
        for path in std::mem::take(&mut self.inner().spare) {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(error = %e, segment = %path.display(), "cannot delete a spare write-ahead log segment");
            }
        }
    }

    /// Segment files currently in use, for tests.
    #[cfg(test)]
    pub(super) fn segment_count(&self) -> usize {
        let inner = self.inner();
        inner.closed.len() + usize::from(inner.current.is_some())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(txns: &[(u64, Vec<Mutation>)]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut b = RecordBuilder::new(&mut buf);
        for (version, ms) in txns {
            b.txn(*version);
            for m in ms {
                match m {
                    Mutation::Set(k, v) => b.set(k, v),
                    Mutation::Clear(k) => b.clear(k),
                    Mutation::ClearRange(s, e) => b.clear_range(s, e),
                }
            }
        }
        b.finish();
        buf
    }

    /// A whole segment as [`Wal`] writes it: header, then each group's record with `salt`.
    fn segment(first: u64, salt: u64, groups: &[Vec<(u64, Vec<Mutation>)>]) -> Vec<u8> {
        let mut out = header(first, salt).to_vec();
        for g in groups {
            let mut rec = record(g);
            seal(&mut rec, salt);
            out.extend_from_slice(&rec);
        }
        out
    }

    fn versions(parsed: &Parsed<'_>) -> Vec<u64> {
        parsed.records.iter().flat_map(|p| decode(p).unwrap()).map(|(v, _)| v).collect()
    }

    fn set(i: u64) -> Vec<Mutation> {
        vec![Mutation::Set(i.to_be_bytes().to_vec(), b"v".to_vec())]
    }

    #[test]
    fn records_round_trip_and_detect_damage() {
        let txns = vec![
            (7, vec![Mutation::ClearRange(b"a".to_vec(), b"c".to_vec()), Mutation::Set(b"b".to_vec(), b"1".to_vec())]),
            (8, vec![]),
            (9, vec![Mutation::Clear(b"b".to_vec()), Mutation::Set(b"".to_vec(), b"".to_vec())]),
        ];
        let seg = segment(7, 42, &[txns.clone(), txns.clone()]);
        let parsed = parse_segment(&seg, 7);
        assert_eq!(parsed.end, End::Clean);
        assert_eq!(parsed.records.len(), 2);
        assert_eq!(decode(parsed.records[1]).unwrap(), txns);
        let one = (seg.len() - HEADER_BYTES) / 2 + HEADER_BYTES;

        // A short tail or a flipped byte in a record of this segment: torn there.
        let whole = seg.len();
        let parsed = parse_segment(&seg[..whole - 1], 7);
        assert_eq!((parsed.records.len(), parsed.end), (1, End::Torn(one)));
        let mut flipped = seg.clone();
        flipped[whole - 3] ^= 0x40;
        assert_eq!(parse_segment(&flipped, 7).end, End::Torn(one));
        // Bytes that are no record of this segment: leftover, whatever they are.
        for tail in [
            vec![0xff; 5],
            vec![0; 8],
            vec![0; 4096],
            segment(1, 43, std::slice::from_ref(&txns))[HEADER_BYTES..].to_vec(),
        ] {
            let mut more = seg.clone();
            more.extend_from_slice(&tail);
            let parsed = parse_segment(&more, 7);
            assert_eq!((parsed.records.len(), parsed.end), (2, End::Leftover(whole)), "{:?}", &tail[..5]);
        }
        // Headers: missing, torn, or of the file's earlier use.
        assert_eq!(parse_segment(b"", 7).end, End::Clean);
        assert_eq!(parse_segment(b"SELVWAL2", 7).end, End::Leftover(0));
        assert_eq!(parse_segment(&seg, 8).end, End::Leftover(0));
        let mut bad = seg.clone();
        bad[17] ^= 1;
        assert_eq!(parse_segment(&bad, 7).end, End::Leftover(0));
        assert_eq!(parse_segment(&header(7, 42), 7).end, End::Clean);
        // A record is never empty, and a record's salt never 0: zeros never parse.
        let mut empty = header(7, 42).to_vec();
        empty.extend_from_slice(&[0; 16]);
        assert_eq!(parse_segment(&empty, 7).end, End::Leftover(HEADER_BYTES));
    }

    /// The first format is still read, and its empty "records" (zeros) end a segment.
    #[test]
    fn segments_of_the_first_format_are_read() {
        let payload = &record(&[(1, set(1))])[RECORD_HEADER_BYTES..];
        let mut seg = MAGIC_V1.to_vec();
        for p in [payload, payload] {
            seg.extend_from_slice(&(p.len() as u32).to_le_bytes());
            seg.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
            seg.extend_from_slice(p);
        }
        let whole = seg.len();
        seg.extend_from_slice(&[0; 8]);
        let parsed = parse_unsalted(&seg);
        assert_eq!((parsed.records.len(), parsed.end), (2, End::Unsalted(whole)));
    }

    #[test]
    fn recovery_replays_in_order_and_refuses_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("t.redb"));
        let wal = Wal::new(naming.clone(), true);
        wal.append(&mut record(&[(1, set(1))]), 1, 1).unwrap();
        wal.sync().unwrap();
        wal.append(&mut record(&[(2, set(2))]), 2, 2).unwrap();
        wal.sync().unwrap();
        wal.truncate_through(0).unwrap(); // nothing to delete; rotates
        wal.append(&mut record(&[(3, set(3)), (4, set(4))]), 3, 4).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.segment_count(), 2);
        drop(wal);

        let replay = |flushed| {
            let mut got = Vec::new();
            recover(&naming, flushed, |v, _| got.push(v)).map(|r| (got, r.last_version, r.segments.len()))
        };
        assert_eq!(replay(0).unwrap(), (vec![1, 2, 3, 4], 4, 2));
        assert_eq!(replay(2).unwrap(), (vec![3, 4], 4, 2));
        assert_eq!(replay(4).unwrap(), (vec![], 4, 2));

        // Tear the last record of the first segment: version 2 is gone, but the second segment
        // holds 3 and 4, which were acknowledged after it. Recovery refuses, applying nothing.
        let first = naming.path(1);
        let len = fs::metadata(&first).unwrap().len();
        OpenOptions::new().write(true).open(&first).unwrap().set_len(len - 2).unwrap();
        let mut applied = 0;
        let err = recover(&naming, 0, |_, _| applied += 1).err().expect("a hole must be refused");
        assert_eq!((err.kind(), applied), (io::ErrorKind::InvalidData, 0));
        let why = err.to_string();
        assert!(why.contains("versions 2..2 are in no segment") && why.contains("torn record"), "{why}");
        // Once version 2 is flushed, the damaged tail no longer matters.
        assert_eq!(replay(2).unwrap(), (vec![3, 4], 4, 2));

        let r = recover(&naming, 2, |_, _| {}).unwrap();
        remove_segments(&naming, &r.segments, true).unwrap();
        assert!(naming.list().unwrap().is_empty());
    }

    /// A record of the segment's own salt that checks out but does not decode is corruption,
    /// not a torn write: refused.
    #[test]
    fn a_checksummed_record_that_does_not_decode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("t.redb"));
        let mut bytes = segment(1, 9, &[vec![(1, set(1))]]);
        let mut bad = vec![0u8; RECORD_HEADER_BYTES];
        bad.extend_from_slice(&[1, 0, 0, 0, 0xee]); // one transaction, then nonsense
        let len = (bad.len() - RECORD_HEADER_BYTES) as u32;
        bad[..4].copy_from_slice(&len.to_le_bytes());
        seal(&mut bad, 9);
        bytes.extend_from_slice(&bad);
        fs::write(naming.path(1), bytes).unwrap();
        let err = recover(&naming, 0, |_, _| {}).err().expect("refused");
        assert!(err.to_string().contains("does not decode"), "{err}");
    }

    #[test]
    fn retired_segments_are_written_over_and_their_old_records_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("t.redb"));
        let wal = Wal::new(naming.clone(), true);
        // Records of one size, so the new ones end exactly where an old one begins.
        let rec = |v: u64| record(&[(v, vec![Mutation::Set(b"k".to_vec(), vec![v as u8; 100])])]);
        for v in 1..=5 {
            wal.append(&mut rec(v), v, v).unwrap();
        }
        wal.sync().unwrap();
        let old_len = fs::metadata(naming.path(1)).unwrap().len();
        wal.truncate_through(5).unwrap();
        assert!(naming.list().unwrap().is_empty(), "the retired segment is no segment any more");
        assert_eq!(naming.spares().unwrap().len(), 1);
        for v in 6..=7 {
            wal.append(&mut rec(v), v, v).unwrap();
        }
        wal.sync().unwrap();
        assert_eq!(naming.list().unwrap().iter().map(|(f, _)| *f).collect::<Vec<_>>(), vec![6]);
        assert!(naming.spares().unwrap().is_empty(), "the spare became segment 6");
        let bytes = fs::read(naming.path(6)).unwrap();
        assert_eq!(bytes.len() as u64, old_len, "written over, not truncated");
        let parsed = parse_segment(&bytes, 6);
        let new_end = HEADER_BYTES + 2 * rec(6).len();
        assert_eq!((versions(&parsed), parsed.end), (vec![6, 7], End::Leftover(new_end)));
        // The old records 3 to 5 are still there, behind the new ones, under the old salt.
        let old = parse_segment(&bytes[new_end..], 0);
        assert_eq!(old.end, End::Leftover(0));
        drop(wal);

        let mut replayed = Vec::new();
        let r = recover(&naming, 5, |v, _| replayed.push(v)).unwrap();
        assert_eq!((replayed, r.last_version), (vec![6, 7], 7));

        // Spares outlive the process: the next run's log takes them.
        remove_segments(&naming, &r.segments, true).unwrap();
        let wal = Wal::new(naming.clone(), true);
        wal.append(&mut rec(8), 8, 8).unwrap();
        wal.truncate_through(8).unwrap();
        drop(wal);
        assert_eq!(naming.spares().unwrap().len(), 1);
        let wal = Wal::new(naming.clone(), true);
        wal.append(&mut rec(9), 9, 9).unwrap();
        wal.sync().unwrap();
        assert!(naming.spares().unwrap().is_empty());
        let mut replayed = Vec::new();
        recover(&naming, 8, |v, _| replayed.push(v)).unwrap();
        assert_eq!(replayed, vec![9]);
    }

    /// Bytes left behind a segment's last record (a recycled file's old contents, here
    /// zeros) end that segment without hiding the next one, which continues the log.
    #[test]
    fn zero_bytes_after_a_segment_never_hide_later_segments() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("t.redb"));
        let wal = Wal::new(naming.clone(), true);
        let set = |i: u64| vec![Mutation::Set(i.to_be_bytes().to_vec(), vec![0; 40])];
        for v in 1..=60 {
            wal.append(&mut record(&[(v, set(v))]), v, v).unwrap();
        }
        wal.sync().unwrap();
        wal.truncate_through(0).unwrap(); // rotates
        for v in 61..=95 {
            wal.append(&mut record(&[(v, set(v))]), v, v).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let first = naming.path(1);
        let mut bytes = fs::read(&first).unwrap();
        bytes.extend_from_slice(&[0; 8]);
        fs::write(&first, bytes).unwrap();

        let mut replayed = Vec::new();
        let r = recover(&naming, 0, |v, _| replayed.push(v)).unwrap();
        assert_eq!(replayed, (1..=95).collect::<Vec<_>>());
        assert_eq!(r.last_version, 95);
    }

    /// A write that fails is cut off the segment, and the next append goes where it began.
    #[test]
    fn an_undone_record_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("t.redb"));
        let wal = Wal::new(naming.clone(), true);
        wal.append(&mut record(&[(1, set(1))]), 1, 1).unwrap();
        wal.sync().unwrap();
        let at = wal.append(&mut record(&[(2, set(2))]), 2, 2).unwrap();
        wal.undo(at).unwrap();
        wal.append(&mut record(&[(2, set(20))]), 2, 2).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let mut replayed = Vec::new();
        recover(&naming, 0, |v, m| replayed.push((v, m))).unwrap();
        assert_eq!(replayed, vec![(1, set(1)), (2, set(20))]);
    }

    #[test]
    fn truncation_deletes_flushed_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("t.redb"));
        let wal = Wal::new(naming.clone(), false);
        let rec = |v: u64| record(&[(v, vec![])]);
        wal.append(&mut rec(1), 1, 1).unwrap();
        wal.append(&mut rec(2), 2, 2).unwrap();
        wal.truncate_through(1).unwrap(); // segment 1 holds version 2: kept, rotation asked
        assert_eq!(naming.list().unwrap().len(), 1);
        wal.append(&mut rec(3), 3, 3).unwrap();
        assert_eq!(naming.list().unwrap().len(), 2);
        wal.truncate_through(2).unwrap();
        assert_eq!(naming.list().unwrap().iter().map(|(f, _)| *f).collect::<Vec<_>>(), vec![3]);
        wal.truncate_through(3).unwrap();
        assert!(naming.list().unwrap().is_empty());
        wal.append(&mut rec(4), 4, 4).unwrap();
        wal.sync().unwrap();
        assert_eq!(naming.list().unwrap().iter().map(|(f, _)| *f).collect::<Vec<_>>(), vec![4]);
    }

    /// What a file held before it was recycled into a segment.
    #[derive(Clone, Debug)]
    enum Earlier {
        Nothing,
        Zeros(usize),
        Random(Vec<u8>),
        /// An older segment of other records and another salt, as the file held it.
        Segment {
            salt: u64,
            values: Vec<Vec<u8>>,
        },
    }

    /// Values as message texts can make them: runs of zeros, bytes shaped like headers.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (1usize..300).prop_map(|n| vec![0; n]),
            (any::<u64>(), 0usize..40).prop_map(|(x, n)| {
                let mut v = vec![0; n];
                v.extend_from_slice(&x.to_le_bytes());
                v.extend_from_slice(&[0; 16]);
                v
            }),
        ]
    }

    fn earlier() -> impl Strategy<Value = Earlier> {
        prop_oneof![
            Just(Earlier::Nothing),
            (1usize..600).prop_map(Earlier::Zeros),
            prop::collection::vec(any::<u8>(), 1..300).prop_map(Earlier::Random),
            (any::<u64>(), prop::collection::vec(value(), 1..12))
                .prop_map(|(salt, values)| Earlier::Segment { salt: salt | 1, values }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// However a segment's file was used before, and whatever the values hold, recovery
        /// replays exactly the commits written, in order; cutting the last segment anywhere
        /// loses only the records it cuts.
        #[test]
        fn recovery_replays_exactly_what_was_written(
            values in prop::collection::vec(value(), 1..30),
            breaks in prop::collection::vec(any::<bool>(), 30),
            earlier in prop::collection::vec(earlier(), 30),
            flushed_frac in 0.0f64..1.0,
            cut in any::<prop::sample::Index>(),
        ) {
            let n = values.len() as u64;
            let commit = |v: u64| (v, vec![Mutation::Set(v.to_be_bytes().to_vec(), values[v as usize - 1].clone())]);
            // Split versions 1..=n into segments, one record per version.
            let mut segments: Vec<Vec<u64>> = vec![vec![1]];
            for v in 2..=n {
                if breaks[v as usize - 1] { segments.push(vec![v]) } else if let Some(s) = segments.last_mut() { s.push(v) }
            }
            let dir = tempfile::tempdir().unwrap();
            let naming = Naming::new(&dir.path().join("t.redb"));
            let mut ends = Vec::new();
            for (i, vs) in segments.iter().enumerate() {
                let salt = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let groups: Vec<_> = vs.iter().map(|&v| vec![commit(v)]).collect();
                let mut bytes = segment(vs[0], salt, &groups);
                ends.push(bytes.len());
                let old = match &earlier[i] {
                    Earlier::Nothing => Vec::new(),
                    Earlier::Zeros(k) => vec![0; bytes.len() + k],
                    Earlier::Random(r) => { let mut o = vec![0xa5; bytes.len()]; o.extend_from_slice(r); o }
                    Earlier::Segment { salt: old_salt, values } => {
                        let groups: Vec<_> = values.iter().enumerate()
                            .map(|(k, v)| vec![(k as u64 + 1, vec![Mutation::Set(b"old".to_vec(), v.clone())])]).collect();
                        segment(1, *old_salt, &groups)
                    }
                };
                if old.len() > bytes.len() {
                    bytes.extend_from_slice(&old[bytes.len()..]);
                }
                fs::write(naming.path(vs[0]), &bytes).unwrap();
            }
            let flushed = ((n as f64) * flushed_frac) as u64;
            let mut got = Vec::new();
            let r = recover(&naming, flushed, |v, m| got.push((v, m))).unwrap();
            let want: Vec<_> = (flushed + 1..=n).map(commit).collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(r.last_version, n);

            // A crash in the middle of the last segment's records: a prefix survives.
            let last = segments.last().unwrap();
            let path = naming.path(last[0]);
            let keep = HEADER_BYTES + cut.index(ends[ends.len() - 1] - HEADER_BYTES + 1);
            let bytes = fs::read(&path).unwrap();
            fs::write(&path, &bytes[..keep]).unwrap();
            let mut got = Vec::new();
            let r = recover(&naming, flushed, |v, _| got.push(v)).unwrap();
            let whole = {
                let mut at = HEADER_BYTES;
                let mut k = 0;
                for &v in last {
                    let mut rec = record(&[commit(v)]);
                    seal(&mut rec, 0);
                    if at + rec.len() > keep { break }
                    at += rec.len();
                    k += 1;
                }
                k
            };
            let survivors = last[0] - 1 + whole as u64;
            prop_assert_eq!(r.last_version, survivors.max(flushed));
            prop_assert_eq!(got, (flushed + 1..=survivors).collect::<Vec<_>>());
        }
    }
}
