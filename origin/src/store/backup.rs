//! The backup file: every key and value of a store at one version, as `GET /v1/admin/backup`
//! streams it and `selvage admin restore` reads it (docs/STORAGE.md, "Backup and restore").
//!
//! Pure encoding and decoding, no engine and no I/O of its own beyond the reader given: the
//! origin encodes with [`Encoder`] as it walks a [`BackupSource`], and
//! [`Decoder`] reads a file back, refusing anything that is not a whole backup. All integers
//! are little endian.
//!
//! ```text
//! file    := header record* end
//! header  := "SELVBKUP" format:u16 (= 1) flags:u16 (= 0) reserved:u32 (= 0)
//!            version:u64 created_ms:u64                         (32 bytes)
//! record  := 0x01 key_len:u32 value_len:u32 key value           keys strictly ascending,
//!                                                               1..=10,000 and 0..=100,000 bytes
//! end     := 0x00 records:u64 sha256:[u8; 32]                   SHA-256 of every byte before it
//! ```
//!
//! Nothing may follow `end`. A file cut anywhere — a backup whose stream broke, a copy that ran
//! out of disk — lacks its `end` or fails its checksum, and is refused whole.

use std::{io::Read, ops::ControlFlow};

use sha2::{Digest, Sha256};

use super::{BackupSource, KeyValue, StoreError, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// The first eight bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"SELVBKUP";
/// The format this code writes and reads.
pub const FORMAT: u16 = 1;
/// Bytes of the header.
pub const HEADER_BYTES: usize = 32;
/// Bytes of the end (tag, record count, checksum).
pub const END_BYTES: usize = 1 + 8 + 32;
const RECORD: u8 = 0x01;
const END: u8 = 0x00;

/// What the header of a backup says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The store's version the backup holds: every commit up to it, none after.
    pub version: u64,
    /// When the backup was taken, in ms since the Unix epoch (the origin's clock).
    pub created_ms: u64,
}

/// Why a backup file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file could not be read.
    #[error("cannot read the backup: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not start as a backup does.
    #[error("not a Selvage backup (it does not start with {:?})", std::str::from_utf8(MAGIC).unwrap_or_default())]
    NotABackup,
    /// A backup of a format this version of Selvage does not read.
    #[error("backup format {0} is not one this selvage reads (format {FORMAT}); use the selvage that made it")]
    Format(u16),
    /// The file ends before its end record: the backup did not finish, or the copy was cut.
    #[error("the backup is truncated: it ends after {0} bytes, before its end record (an interrupted backup or copy)")]
    Truncated(u64),
    /// The file's bytes are not what the backup wrote.
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
}

/// Writes a backup: [`Encoder::new`] makes the header, [`Encoder::record`] appends each key in
/// ascending order, [`Encoder::finish`] the end. Everything goes into one buffer, which the
/// caller drains ([`Encoder::take`]) as it sends.
pub struct Encoder {
    out: Vec<u8>,
    hash: Sha256,
    records: u64,
    last_key: Option<Vec<u8>>,
}

impl Encoder {
    /// A backup of `header`, its header already in the buffer.
    pub fn new(header: Header) -> Self {
        let mut out = Vec::with_capacity(HEADER_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&header.version.to_le_bytes());
        out.extend_from_slice(&header.created_ms.to_le_bytes());
        Encoder { out, hash: Sha256::new(), records: 0, last_key: None }
    }

    /// Appends one key and its value; keys must come in strictly ascending order, within the
    /// store's limits (what a store holds always is).
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        check_record(self.last_key.as_deref(), key, value.len())?;
        self.out.push(RECORD);
        self.out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(value);
        self.records += 1;
        match &mut self.last_key {
            Some(last) => {
                last.clear();
                last.extend_from_slice(key);
            }
            None => self.last_key = Some(key.to_vec()),
        }
        Ok(())
    }

    /// Bytes waiting in the buffer.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// The bytes encoded since the last call, to send.
    pub fn take(&mut self) -> Vec<u8> {
        self.hash.update(&self.out);
        std::mem::take(&mut self.out)
    }

    /// The end: the record count and the checksum; the last bytes to send.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(END);
        self.out.extend_from_slice(&self.records.to_le_bytes());
        self.hash.update(&self.out);
        let digest = self.hash.finalize();
        self.out.extend_from_slice(&digest);
        self.out
    }
}

/// How a backup written with [`write()`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Every record and the end were handed over: this many records.
    Whole(u64),
    /// The reader went away (`send` refused a piece); what it got has no end.
    Abandoned,
}

/// Encodes everything `source` holds as a backup taken at `created_ms`, handing the bytes to
/// `send` in pieces of about `piece` bytes; `send` answers `false` once nobody reads any more.
/// Blocking, as [`BackupSource::scan`] is. A failure of the source leaves the pieces sent
/// without an end, so the file they make is refused.
pub fn write(
    source: &mut dyn BackupSource,
    created_ms: u64,
    piece: usize,
    send: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<Written, StoreError> {
    let mut encoder = Encoder::new(Header { version: source.version(), created_ms });
    let mut failed = None;
    let mut gone = false;
    source.scan(&mut |key, value| {
        if let Err(e) = encoder.record(key, value) {
            failed = Some(e);
            return ControlFlow::Break(());
        }
        if encoder.pending() >= piece && !send(encoder.take()) {
            gone = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failed {
        return Err(StoreError::Engine(format!("cannot back up: {e}")));
    }
    if gone {
        return Ok(Written::Abandoned);
    }
    let records = encoder.records;
    let mut last = encoder.take();
    last.extend(encoder.finish());
    Ok(if send(last) { Written::Whole(records) } else { Written::Abandoned })
}

/// A record's key and value against the limits and the order.
fn check_record(last: Option<&[u8]>, key: &[u8], value_len: usize) -> Result<(), BackupError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(BackupError::Corrupt(format!("a key of {} bytes", key.len())));
    }
    if value_len > MAX_VALUE_BYTES {
        return Err(BackupError::Corrupt(format!("a value of {value_len} bytes")));
    }
    if last.is_some_and(|last| last >= key) {
        return Err(BackupError::Corrupt("keys out of order".into()));
    }
    Ok(())
}

/// Reads a backup back, checking everything: [`Decoder::open`] reads the header,
/// [`Decoder::next_record`] each record in turn and, at the end, the record count, the checksum and
/// that nothing follows. A record is only trustworthy once the whole file has been read
/// without error: a caller that writes as it reads must be able to undo it.
pub struct Decoder<R> {
    input: R,
    header: Header,
    hash: Sha256,
    read: u64,
    records: u64,
    last_key: Option<Vec<u8>>,
    done: bool,
}

impl<R: Read> Decoder<R> {
    /// Reads and checks the header.
    pub fn open(mut input: R) -> Result<Self, BackupError> {
        let mut head = [0u8; HEADER_BYTES];
        let got = read_full(&mut input, &mut head)?;
        if got < MAGIC.len() || &head[..MAGIC.len()] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        if got < HEADER_BYTES {
            return Err(BackupError::Truncated(got as u64));
        }
        let format = u16::from_le_bytes([head[8], head[9]]);
        if format != FORMAT {
            return Err(BackupError::Format(format));
        }
        let version = u64::from_le_bytes(head[16..24].try_into().unwrap_or_default());
        let created_ms = u64::from_le_bytes(head[24..32].try_into().unwrap_or_default());
        let mut hash = Sha256::new();
        hash.update(head);
        Ok(Decoder {
            input,
            header: Header { version, created_ms },
            hash,
            read: HEADER_BYTES as u64,
            records: 0,
            last_key: None,
            done: false,
        })
    }

    /// The header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.read
    }

    /// The next record, or `None` once the end has been read and checked.
    pub fn next_record(&mut self) -> Result<Option<KeyValue>, BackupError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.exact(&mut tag)?;
        match tag[0] {
            RECORD => {
                let mut lens = [0u8; 8];
                self.exact(&mut lens)?;
                let key_len = u32::from_le_bytes([lens[0], lens[1], lens[2], lens[3]]) as usize;
                let value_len = u32::from_le_bytes([lens[4], lens[5], lens[6], lens[7]]) as usize;
                // Checked before allocating: a corrupt length must not ask for gigabytes.
                if key_len == 0 || key_len > MAX_KEY_BYTES || value_len > MAX_VALUE_BYTES {
                    return Err(BackupError::Corrupt(format!(
                        "a record of a {key_len}-byte key and a {value_len}-byte value"
                    )));
                }
                let mut key = vec![0u8; key_len];
                self.exact(&mut key)?;
                let mut value = vec![0u8; value_len];
                self.exact(&mut value)?;
                check_record(self.last_key.as_deref(), &key, value.len())?;
                self.records += 1;
                self.last_key = Some(key.clone());
                Ok(Some((key, value)))
            }
            END => {
                let mut count = [0u8; 8];
                self.exact(&mut count)?;
                let expected = self.hash.clone().finalize();
                let mut digest = [0u8; 32];
                let got = read_full(&mut self.input, &mut digest)?;
                if got < digest.len() {
                    return Err(BackupError::Truncated(self.read + got as u64));
                }
                self.read += digest.len() as u64;
                if digest[..] != expected[..] {
                    return Err(BackupError::Corrupt("its checksum does not match its contents".into()));
                }
                if u64::from_le_bytes(count) != self.records {
                    return Err(BackupError::Corrupt("its record count does not match its records".into()));
                }
                let mut more = [0u8; 1];
                if read_full(&mut self.input, &mut more)? > 0 {
                    return Err(BackupError::Corrupt("bytes follow its end record".into()));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(BackupError::Corrupt(format!("an unknown record tag {other:#04x} at byte {}", self.read - 1))),
        }
    }

    /// Reads the whole file, checking it; answers its header and record count.
    pub fn verify(mut self) -> Result<(Header, u64), BackupError> {
        while self.next_record()?.is_some() {}
        Ok((self.header, self.records))
    }

    /// Fills `buf` (hashed), or fails as truncated.
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        let got = read_full(&mut self.input, buf)?;
        self.read += got as u64;
        if got < buf.len() {
            return Err(BackupError::Truncated(self.read));
        }
        self.hash.update(&*buf);
        Ok(())
    }
}

/// Reads until `buf` is full or the input ends; answers how many bytes were read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encode(header: Header, records: &[KeyValue]) -> Vec<u8> {
        let mut e = Encoder::new(header);
        let mut out = Vec::new();
        for (k, v) in records {
            e.record(k, v).unwrap();
            if e.pending() > 100 {
                out.extend(e.take());
            }
        }
        out.extend(e.take());
        out.extend(e.finish());
        out
    }

    fn decode(bytes: &[u8]) -> Result<(Header, Vec<KeyValue>), BackupError> {
        let mut d = Decoder::open(bytes)?;
        let mut records = Vec::new();
        while let Some(kv) = d.next_record()? {
            records.push(kv);
        }
        Ok((d.header(), records))
    }

    fn sorted_records() -> impl Strategy<Value = Vec<KeyValue>> {
        proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 1..12),
            proptest::collection::vec(any::<u8>(), 0..40),
            0..30,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// What is encoded decodes to the same header and records; cut short anywhere, or with
        /// any one byte changed, it is refused.
        #[test]
        fn round_trips_and_refuses_any_cut_or_change(
            records in sorted_records(),
            version in any::<u64>(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let header = Header { version, created_ms: 1_700_000_000_000 };
            let bytes = encode(header, &records);
            prop_assert_eq!(decode(&bytes).unwrap(), (header, records));
            let cut = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err(), "cut at {} of {}", cut, bytes.len());
            let mut changed = bytes.clone();
            changed[flip.index(bytes.len())] ^= 1 << bit;
            prop_assert!(decode(&changed).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(decode(&longer).is_err());
        }
    }

    #[test]
    fn refusals_say_why() {
        let header = Header { version: 7, created_ms: 0 };
        let bytes = encode(header, &[(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
        let truncated = decode(&bytes[..bytes.len() - 5]).unwrap_err();
        assert!(truncated.to_string().contains("truncated"), "{truncated}");
        assert!(matches!(decode(b"PK\x03\x04 a zip file"), Err(BackupError::NotABackup)));
        let mut other = bytes.clone();
        other[8] = 9;
        assert!(matches!(decode(&other), Err(BackupError::Format(9))));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decode(&flipped).unwrap_err().to_string().contains("checksum"));
        let mut e = Encoder::new(header);
        e.record(b"b", b"").unwrap();
        assert!(e.record(b"a", b"").is_err(), "keys must ascend");
        assert!(e.record(b"", b"").is_err(), "no empty key");
        assert!(Encoder::new(header).record(b"k", &vec![0; MAX_VALUE_BYTES + 1]).is_err());
    }
}
