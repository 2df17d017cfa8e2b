//! The embedded engine's write-ahead log: where a commit is durable before it reaches redb.
//!
//! The commit thread appends one **record** per commit group and (with `fsync` on) syncs it
//! before any commit of the group is acknowledged. A record holds every accepted transaction of
//! the group with its commit version and its mutations, fully resolved (atomic adds summed,
//! versionstamps filled in), so replaying it needs nothing but the record:
//!
//! ```text
//! segment := MAGIC record*
//! record  := len:u32 crc:u32 payload            (crc32 of payload, little endian)
//! payload := txn_count:u32 txn*
//! txn     := version:u64 mutation_count:u32 mutation*
//! mutation:= 1 key value | 2 key | 3 begin end  (set, clear, clear_range; each field u32 len + bytes)
//! ```
//!
//! The log is a series of **segment** files next to the redb file, `<stem>.wal.<first version>`
//! (20 digits, so names sort like versions). Segments are only ever appended to; the flusher
//! retires the ones whose every record is in redb, and asks for a new segment after each flush
//! so that the current one soon becomes retirable too. A retired segment is deleted, or kept
//! (up to [`SPARE_SEGMENTS`]) to be renamed and written over as a later segment, as databases
//! recycle their log files: its old records, all of versions redb holds, are never replayed. A new segment's directory entry is synced
//! before anything is written to it.
//!
//! [`recover`] reads the log on open: records of versions the redb file already holds are
//! skipped, the rest are replayed in order. A torn, short or corrupt record ends its segment
//! (it is the tail of a write that was never acknowledged); replay goes on into the next segment
//! only if that one starts exactly where the log stopped, so a replay never skips a version.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

/// First bytes of every segment: the format and its version.
const MAGIC: &[u8; 8] = b"SELVWAL1";
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

/// Builds one record in a reusable buffer.
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
        // len, crc and txn_count, filled in by `finish`.
        buf.extend_from_slice(&[0; 12]);
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

    /// Fills in the header; the buffer then holds the whole record.
    pub(super) fn finish(mut self) {
        self.end_txn();
        let txns = self.txns;
        self.buf[8..12].copy_from_slice(&txns.to_le_bytes());
        let payload = &self.buf[8..];
        // The commit thread caps a group at a few tens of MB, far below 4 GiB.
        let len = payload.len() as u32;
        let crc = crc32fast::hash(payload);
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
    }
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

/// Replays the log after `flushed`, in version order, into `apply`.
pub(super) fn recover(
    naming: &Naming,
    flushed: u64,
    mut apply: impl FnMut(u64, Vec<Mutation>),
) -> io::Result<Recovered> {
    let segments = naming.list()?;
    let mut next = flushed + 1;
    let mut replayed = 0u64;
    for (i, (first, path)) in segments.iter().enumerate() {
        if *first > next {
            // Versions next..first are nowhere: the log ends before this segment.
            let why = format!("versions {next}..{first} are missing before {}", path.display());
            log_stop(&why, segments.len() - i);
            break;
        }
        let bytes = fs::read(path)?;
        let (records, torn) = parse_segment(&bytes);
        let mut gap = false;
        for payload in records {
            let Some(txns) = decode(payload) else {
                // A checksummed record that does not parse: treat like a torn one.
                gap = true;
                break;
            };
            for (version, mutations) in txns {
                if version < next {
                    continue;
                }
                if version > next {
                    gap = true;
                    break;
                }
                apply(version, mutations);
                replayed += 1;
                next += 1;
            }
            if gap {
                break;
            }
        }
        if let Some(at) = torn.filter(|_| !gap) {
            tracing::warn!(
                segment = %path.display(),
                offset = at,
                "write-ahead log ends in a torn record (a commit that was never acknowledged); ignoring it"
            );
        }
        if gap {
            let why = format!("{} does not continue at version {next}", path.display());
            log_stop(&why, segments.len() - i - 1);
            break;
        }
    }
    Ok(Recovered { last_version: next - 1, replayed, segments: segments.into_iter().map(|(_, p)| p).collect() })
}

fn log_stop(why: &str, later_segments: usize) {
    tracing::error!(reason = why, later_segments, "write-ahead log replay stopped early; later segments are discarded");
}

/// Splits a segment into the payloads of its intact records, and where the first bad one
/// starts (`None` if the file ends cleanly).
fn parse_segment(bytes: &[u8]) -> (Vec<&[u8]>, Option<usize>) {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return (Vec::new(), Some(0));
    }
    let mut records = Vec::new();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let mut r = Reader { rest: &bytes[at..] };
        let (Some(len), Some(crc)) = (r.u32(), r.u32()) else {
            return (records, Some(at));
        };
        let len = len as usize;
        if len > MAX_RECORD_BYTES || r.rest.len() < len {
            return (records, Some(at));
        }
        let payload = &r.rest[..len];
        if crc32fast::hash(payload) != crc {
            return (records, Some(at));
        }
        records.push(payload);
        at += 8 + len;
    }
    (records, None)
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
}

struct Segment {
    file: File,
    first: u64,
    last: u64,
    bytes: u64,
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
        };
        Wal { naming, fsync, inner: Mutex::new(inner) }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` describing the files as they are.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one record holding versions `first..=last`, without syncing it ([`Wal::sync`]).
    pub(super) fn append(&self, record: &[u8], first: u64, last: u64) -> io::Result<()> {
        let mut inner = self.inner();
        let full = inner.current.as_ref().is_some_and(|s| s.bytes >= SEGMENT_BYTES);
        if inner.rotate || full {
            inner.rotate = false;
            if let Some(old) = inner.current.take() {
                if inner.unsynced {
                    // Flushed eventually anyway, but a closed segment should be whole.
                    old.file.sync_data()?;
                }
                inner.closed.push_back((old.first, old.last, old.path));
            }
        }
        if inner.current.is_none() {
            let spare = inner.spare.pop();
            inner.current = Some(self.create(first, spare)?);
        }
        let Some(seg) = inner.current.as_mut() else {
            return Err(io::Error::other("no open write-ahead log segment"));
        };
        seg.file.write_all(record)?;
        seg.bytes += record.len() as u64;
        seg.last = last;
        inner.unsynced = true;
        Ok(())
    }

    /// Syncs whatever was appended without a sync.
    pub(super) fn sync(&self) -> io::Result<()> {
        let mut inner = self.inner();
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

    /// Opens the segment that starts at `first`: a `spare` one renamed and written over from
    /// after its magic, else a new file.
    fn create(&self, first: u64, spare: Option<PathBuf>) -> io::Result<Segment> {
        let path = self.naming.path(first);
        if let Some(spare) = spare {
            match self.recycle(&spare, &path) {
                Ok(file) => {
                    return Ok(Segment { file, first, last: first.saturating_sub(1), bytes: MAGIC.len() as u64, path });
                }
                Err(e) => {
                    tracing::warn!(error = %e, segment = %spare.display(), "cannot reuse a write-ahead log segment; starting a new one");
                    let _ = fs::remove_file(&spare);
                }
            }
        }
        let mut file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        file.write_all(MAGIC)?;
        if self.fsync {
            file.sync_data()?;
            self.naming.sync_dir()?;
        }
        Ok(Segment { file, first, last: first.saturating_sub(1), bytes: MAGIC.len() as u64, path })
    }

    /// Renames an obsolete segment to `path` and opens it for writing after its magic. Its old
    /// records stay behind the new ones until they are written over; [`recover`] never replays
    /// them (their versions are all below the new name's, so below where replay stands) and a
    /// torn end stops at the first bad checksum as in a new file. Writing over pages that are
    /// in the page cache already, inside the file's size, spares the kernel allocating pages
    /// and blocks, and the fdatasync the file's size.
    fn recycle(&self, spare: &Path, path: &Path) -> io::Result<File> {
        let mut file = OpenOptions::new().read(true).write(true).open(spare)?;
        // Reading the magic leaves the file positioned just after it, where writing starts.
        let mut head = [0u8; MAGIC.len()];
        io::Read::read_exact(&mut file, &mut head)?;
        if &head != MAGIC {
            return Err(io::Error::other("the spare segment does not start with the log's magic"));
        }
        fs::rename(spare, path)?;
        if self.fsync {
            self.naming.sync_dir()?;
        }
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

    #[test]
    fn records_round_trip_and_detect_damage() {
        let txns = vec![
            (7, vec![Mutation::ClearRange(b"a".to_vec(), b"c".to_vec()), Mutation::Set(b"b".to_vec(), b"1".to_vec())]),
            (8, vec![]),
            (9, vec![Mutation::Clear(b"b".to_vec()), Mutation::Set(b"".to_vec(), b"".to_vec())]),
        ];
        let rec = record(&txns);
        let mut seg = MAGIC.to_vec();
        seg.extend_from_slice(&rec);
        seg.extend_from_slice(&rec);
        let (records, torn) = parse_segment(&seg);
        assert_eq!(torn, None);
        assert_eq!(records.len(), 2);
        assert_eq!(decode(records[1]).unwrap(), txns);

        // A short tail, a flipped byte, trailing garbage: all end the segment there.
        let whole = seg.len();
        let (records, torn) = parse_segment(&seg[..whole - 1]);
        assert_eq!((records.len(), torn), (1, Some(MAGIC.len() + rec.len())));
        let mut flipped = seg.clone();
        flipped[whole - 3] ^= 0x40;
        assert_eq!(parse_segment(&flipped).0.len(), 1);
        let mut garbage = seg.clone();
        garbage.extend_from_slice(&[0xff; 5]);
        assert_eq!(parse_segment(&garbage), (parse_segment(&seg).0, Some(whole)));
        assert_eq!(parse_segment(b"SELV").1, Some(0));
        assert_eq!(parse_segment(MAGIC), (Vec::new(), None));
    }

    #[test]
    fn recovery_replays_in_order_and_stops_at_a_break() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("t.redb"));
        let wal = Wal::new(naming.clone(), true);
        let set = |i: u64| vec![Mutation::Set(i.to_be_bytes().to_vec(), b"v".to_vec())];
        wal.append(&record(&[(1, set(1))]), 1, 1).unwrap();
        wal.sync().unwrap();
        wal.append(&record(&[(2, set(2))]), 2, 2).unwrap();
        wal.sync().unwrap();
        wal.truncate_through(0).unwrap(); // nothing to delete; rotates
        wal.append(&record(&[(3, set(3)), (4, set(4))]), 3, 4).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.segment_count(), 2);
        drop(wal);

        let replay = |flushed| {
            let mut got = Vec::new();
            let r = recover(&naming, flushed, |v, _| got.push(v)).unwrap();
            (got, r.last_version, r.segments.len())
        };
        assert_eq!(replay(0), (vec![1, 2, 3, 4], 4, 2));
        assert_eq!(replay(2), (vec![3, 4], 4, 2));
        assert_eq!(replay(4), (vec![], 4, 2));

        // Tear the last record of the first segment: replay stops after version 1, and the
        // second segment (which starts at 3) is not used since version 2 is gone.
        let first = naming.path(1);
        let len = fs::metadata(&first).unwrap().len();
        OpenOptions::new().write(true).open(&first).unwrap().set_len(len - 2).unwrap();
        assert_eq!(replay(0), (vec![1], 1, 2));
        // Once version 2 is flushed, the damaged tail no longer matters.
        assert_eq!(replay(2), (vec![3, 4], 4, 2));

        let r = recover(&naming, 0, |_, _| {}).unwrap();
        remove_segments(&naming, &r.segments, true).unwrap();
        assert!(naming.list().unwrap().is_empty());
    }

    #[test]
    fn retired_segments_are_written_over_and_their_old_records_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("t.redb"));
        let wal = Wal::new(naming.clone(), true);
        // Records of one size, so the new ones end exactly where an old one begins.
        let rec = |v: u64| record(&[(v, vec![Mutation::Set(b"k".to_vec(), vec![v as u8; 100])])]);
        for v in 1..=5 {
            wal.append(&rec(v), v, v).unwrap();
        }
        wal.sync().unwrap();
        let old_len = fs::metadata(naming.path(1)).unwrap().len();
        wal.truncate_through(5).unwrap();
        assert!(naming.list().unwrap().is_empty(), "the retired segment is no segment any more");
        assert_eq!(naming.spares().unwrap().len(), 1);
        for v in 6..=7 {
            wal.append(&rec(v), v, v).unwrap();
        }
        wal.sync().unwrap();
        assert_eq!(naming.list().unwrap().iter().map(|(f, _)| *f).collect::<Vec<_>>(), vec![6]);
        assert!(naming.spares().unwrap().is_empty(), "the spare became segment 6");
        let bytes = fs::read(naming.path(6)).unwrap();
        assert_eq!(bytes.len() as u64, old_len, "written over, not truncated");
        let versions: Vec<u64> =
            parse_segment(&bytes).0.iter().flat_map(|p| decode(p).unwrap()).map(|(v, _)| v).collect();
        assert_eq!(versions, vec![6, 7, 3, 4, 5], "the old records 3 to 5 are still behind the new ones");
        drop(wal);

        let mut replayed = Vec::new();
        let r = recover(&naming, 5, |v, _| replayed.push(v)).unwrap();
        assert_eq!((replayed, r.last_version), (vec![6, 7], 7));

        // Spares outlive the process: the next run's log takes them.
        remove_segments(&naming, &r.segments, true).unwrap();
        let wal = Wal::new(naming.clone(), true);
        wal.append(&rec(8), 8, 8).unwrap();
        wal.truncate_through(8).unwrap();
        drop(wal);
        assert_eq!(naming.spares().unwrap().len(), 1);
        let wal = Wal::new(naming.clone(), true);
        wal.append(&rec(9), 9, 9).unwrap();
        wal.sync().unwrap();
        assert!(naming.spares().unwrap().is_empty());
        let mut replayed = Vec::new();
        recover(&naming, 8, |v, _| replayed.push(v)).unwrap();
        assert_eq!(replayed, vec![9]);
    }

    #[test]
    fn truncation_deletes_flushed_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("t.redb"));
        let wal = Wal::new(naming.clone(), false);
        let rec = record(&[(1, vec![])]);
        wal.append(&rec, 1, 1).unwrap();
        wal.append(&rec, 2, 2).unwrap();
        wal.truncate_through(1).unwrap(); // segment 1 holds version 2: kept, rotation asked
        assert_eq!(naming.list().unwrap().len(), 1);
        wal.append(&rec, 3, 3).unwrap();
        assert_eq!(naming.list().unwrap().len(), 2);
        wal.truncate_through(2).unwrap();
        assert_eq!(naming.list().unwrap().iter().map(|(f, _)| *f).collect::<Vec<_>>(), vec![3]);
        wal.truncate_through(3).unwrap();
        assert!(naming.list().unwrap().is_empty());
        wal.append(&rec, 4, 4).unwrap();
        wal.sync().unwrap();
        assert_eq!(naming.list().unwrap().iter().map(|(f, _)| *f).collect::<Vec<_>>(), vec![4]);
    }
}
