//! Whether the embedded store can take writes: the problems of its writers (the log, the
//! flusher) and the free space on the data directory's disk, for commits and `/readyz`.
//!
//! A write that fails (a full disk, a failing device) sets its writer's problem; the next one
//! that succeeds clears it. In front of both, the commit thread refuses commits while the disk
//! is short of what the log and a flush need, so that neither meets a full disk: redb refuses
//! all further work after a failed write, until it is reopened.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use super::{lock, Shared};

/// What clients are told while the disk is (nearly) full.
pub(super) const DISK_FULL: &str = "the origin's disk is full; writes resume once space is freed";
/// How often the commit thread looks at the free space on the data directory's disk.
const SPACE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Why the store cannot take writes at the moment, if it cannot: set by a failed write to the
/// log or to redb, cleared by the next write of the same kind that succeeds.
#[derive(Default)]
pub(super) struct Health {
    /// Whether either slot is set, so that the commit path checks an atomic, not a lock.
    troubled: AtomicBool,
    /// The log's problem, the flusher's and the disk's.
    problems: Mutex<[Option<String>; 3]>,
}

/// The writers [`Health`] keeps a problem for.
#[derive(Clone, Copy)]
pub(super) enum Writer {
    Log = 0,
    Flush = 1,
    /// Not a writer: the free-space check in front of them.
    Space = 2,
}

impl Health {
    pub(super) fn failed(&self, writer: Writer, why: String) {
        lock(&self.problems)[writer as usize] = Some(why);
        self.troubled.store(true, Ordering::Release);
    }

    pub(super) fn wrote(&self, writer: Writer) {
        if self.troubled.load(Ordering::Acquire) {
            let mut problems = lock(&self.problems);
            if problems[writer as usize].take().is_some() {
                tracing::info!("the embedded store writes again");
            }
            self.troubled.store(problems.iter().any(Option::is_some), Ordering::Release);
        }
    }

    pub(super) fn problem(&self) -> Option<String> {
        if !self.troubled.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.problems).iter().flatten().next().cloned()
    }
}

/// What a client and `/readyz` are told when the disk refuses a write: the cause an operator
/// acts on, not the engine's internals.
pub(super) fn refusal(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::StorageFull => DISK_FULL.into(),
        _ => format!("the origin cannot write to its disk ({})", error.kind()),
    }
}

/// What the commit thread last learned of the free space on its disk.
pub(super) struct SpaceCheck {
    /// When to look again.
    next: Instant,
    /// Why commits are refused, while the disk is short of space.
    short: Option<String>,
    /// Whether a failure to read the free space was logged.
    warned: bool,
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`, and the
/// filesystem's size (the commit thread's check here, and the origin's metrics).
#[cfg(unix)]
pub(crate) fn disk_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs only writes into the zeroed struct we own, through a valid pointer, and
    // reads the NUL-terminated path, which outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = st.f_frsize as u64;
    Ok(((st.f_bavail as u64).saturating_mul(block), (st.f_blocks as u64).saturating_mul(block)))
}

#[cfg(not(unix))]
pub(crate) fn disk_space(_dir: &Path) -> std::io::Result<(u64, u64)> {
    Err(std::io::Error::other("free space is only read on Unix"))
}

impl SpaceCheck {
    pub(super) fn new() -> Self {
        SpaceCheck { next: Instant::now(), short: None, warned: false }
    }

    /// Refuses commits while the data directory's disk has less free space than
    /// [`EmbeddedOptions::min_free_bytes`](super::EmbeddedOptions::min_free_bytes) plus twice
    /// the bytes waiting to be flushed (a flush's copy-on-write pages), looking at most every
    /// [`SPACE_CHECK_INTERVAL`].
    pub(super) fn check(&mut self, shared: &Shared) -> Result<(), &'static str> {
        let min_free = shared.opts.min_free_bytes;
        let now = Instant::now();
        if min_free == 0 || now < self.next {
            return if self.short.is_some() { Err(DISK_FULL) } else { Ok(()) };
        }
        self.next = now + SPACE_CHECK_INTERVAL;
        let free = match disk_space(shared.wal.dir()).map(|(free, _)| free) {
            Ok(free) => free,
            Err(e) => {
                if !std::mem::replace(&mut self.warned, true) {
                    tracing::warn!(error = %e, "cannot read the free space of the data directory's disk; not checking it");
                }
                return Ok(());
            }
        };
        let unflushed = shared.mem.unflushed_size().0 as u64;
        let need = min_free.saturating_add(unflushed.saturating_mul(2));
        if free < need {
            let why = format!(
                "the data directory's disk is nearly full: {} MiB free, {} MiB kept free for the log and flushes; commits are refused until space is freed",
                free >> 20,
                need >> 20
            );
            if self.short.is_none() {
                tracing::error!(
                    free,
                    need,
                    "the data directory's disk is nearly full; refusing commits until space is freed"
                );
            }
            shared.health.failed(Writer::Space, why.clone());
            self.short = Some(why);
            return Err(DISK_FULL);
        }
        if self.short.take().is_some() {
            tracing::info!(free, need, "the data directory's disk has room again; taking commits");
            shared.health.wrote(Writer::Space);
        }
        Ok(())
    }
}
