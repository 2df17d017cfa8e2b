//! The runtime the services on the feed run on (ARCHITECTURE §8): a tokio runtime of its own
//! whose threads run at a lower CPU priority than the sequencer's.
//!
//! The sequencer answers people waiting for their message to be sent; a consumer's work —
//! deciding notifications, delivering webhooks, indexing, making thumbnails — can wait, because
//! its cursor is durable and it catches up. When the machine is busy the kernel gives the
//! origin's own runtime first call on the cores and the consumers what is left
//! (`consumers.nice`); when it is not, they run at full speed. Their lag is a metric
//! (`selvage_consumer_lag_seconds`).
//!
//! Only the threads of this runtime are reniced: on Linux a thread's nice value is its own
//! (`setpriority(PRIO_PROCESS, 0, …)` applies to the calling thread), and the threads it starts
//! (its blocking pool, a search writer) inherit it. Elsewhere the priority is left as is.

use tokio::runtime::{Handle, Runtime};

/// The consumers' runtime; shut down in the background when dropped.
pub struct Background {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Background {
    /// A runtime of `threads` workers whose nice value is `nice` (0–19) above the process's, or, with `threads` 0, the caller's
    /// own runtime (no separate threads, no priority).
    pub fn new(threads: usize, nice: i32) -> std::io::Result<Background> {
        if threads == 0 {
            return Ok(Background { runtime: None, handle: Handle::current() });
        }
        let target = (nice_now() + nice).min(19);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("selvage-consumers")
            .on_thread_start(move || lower_priority(target))
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Background { runtime: Some(runtime), handle })
    }

    /// Where the consumers' tasks go: `let _in = background.handle().enter();` before they are
    /// spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context must not; its tasks have been
        // awaited by then (the origin's shutdown joins them).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
fn nice_now() -> i32 {
    // SAFETY: getpriority has no memory effects; `who` 0 is the calling thread on Linux. errno
    // is cleared first because -1 is a valid nice value.
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    }
}

/// Sets the calling thread's nice value to `target`, unless it is there already (a thread
/// inherits its creator's: the blocking pool's threads are started by workers).
#[cfg(target_os = "linux")]
fn lower_priority(target: i32) {
    if nice_now() >= target {
        return;
    }
    // SAFETY: as above.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) };
    if r != 0 {
        tracing::warn!(nice = target, error = %std::io::Error::last_os_error(), "could not lower a consumer thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn nice_now() -> i32 {
    0
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_target: i32) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        nice_now()
    }

    #[tokio::test]
    async fn consumer_threads_run_at_the_configured_nice_and_the_callers_do_not() {
        let before = nice_of_this_thread();
        let background = Background::new(1, 7).unwrap();
        let (worker, blocking) = background
            .handle()
            .spawn(async { (nice_of_this_thread(), tokio::task::spawn_blocking(nice_of_this_thread).await.unwrap()) })
            .await
            .unwrap();
        // Raising one's own nice value needs no privilege; the thread starts from the
        // process's value.
        assert_eq!(worker, (before + 7).min(19));
        assert_eq!(blocking, (before + 7).min(19));
        assert_eq!(nice_of_this_thread(), before, "the caller's thread keeps its priority");
        drop(background);
    }

    #[tokio::test]
    async fn no_threads_means_the_callers_runtime() {
        let background = Background::new(0, 10).unwrap();
        let before = nice_of_this_thread();
        let seen = background.handle().spawn(async { nice_of_this_thread() }).await.unwrap();
        assert_eq!(seen, before);
    }
}
