//! How far the log has come: durable up to here, indexed up to here. Shared by the writer, the
//! flusher, the indexer and readers, and waited on through one condition variable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Every event with a seq at or below this is on disk.
    pub(crate) durable: AtomicU64,
    /// Every event with a seq at or below this is in the dedup index and the query indexes.
    pub(crate) indexed: AtomicU64,
    /// The store is shutting down: background threads finish what they hold and stop.
    pub(crate) stopping: AtomicBool,
    /// The store is closing: the writer takes what is queued without waiting for the indexer.
    pub(crate) closing: AtomicBool,
    /// Why the store stopped accepting events, if it failed.
    failure: Mutex<Option<String>>,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Progress {
    pub(crate) fn new(durable: u64, indexed: u64) -> Progress {
        Progress {
            durable: AtomicU64::new(durable),
            indexed: AtomicU64::new(indexed),
            ..Progress::default()
        }
    }

    /// Wakes everyone waiting for progress.
    pub(crate) fn notify(&self) {
        // Taking the lock orders this wake-up after a waiter's check of its condition.
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }

    /// Waits until `ready()` holds, or the timeout passes; returns whether it holds.
    pub(crate) fn wait_until(&self, ready: impl Fn() -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if ready() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Records that the store cannot go on (the first reason is kept).
    pub(crate) fn fail(&self, reason: &str) {
        {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            failure.get_or_insert_with(|| reason.to_owned());
        }
        // A writer waiting for the indexer learns it at once.
        self.notify();
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.notify();
    }
}
