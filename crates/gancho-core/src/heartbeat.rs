//! Whether the daemon's long-lived threads are stuck, for the systemd watchdog: each thread
//! (the log's writer and flusher, the indexer, the engine, the actions' runtime) holds a
//! [`Heartbeat`] and marks each piece of work with [`Heartbeat::working`]. A thread waiting
//! for work is idle, however long it waits; a thread inside one piece of work for longer than
//! the watchdog allows is stuck ([`stuck`]), and the binary stops telling systemd it is alive.
//!
//! Marking costs two relaxed atomic stores per piece of work; nothing wakes a thread to beat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

struct Slot {
    name: &'static str,
    /// Milliseconds since [`epoch`] + 1 when the current piece of work began; 0: idle.
    busy_since: AtomicU64,
}

/// One thread's liveness. Registered while it lives: dropping it (the thread ends) takes the
/// thread out of [`stuck`]'s view.
pub struct Heartbeat(Arc<Slot>);

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Heartbeat").field(&self.0.name).finish()
    }
}

/// Marks the thread busy while it lives: see [`Heartbeat::working`].
#[must_use = "the work is marked only while this guard lives"]
pub struct Working<'a>(&'a Slot);

impl std::fmt::Debug for Working<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Working").field(&self.0.name).finish()
    }
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.busy_since.store(0, Ordering::Relaxed);
    }
}

fn registry() -> &'static Mutex<Vec<Weak<Slot>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Weak<Slot>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Vec::new()))
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Heartbeat {
    /// Registers a thread named `name` (as logs and the watchdog name it), idle.
    pub fn register(name: &'static str) -> Heartbeat {
        epoch();
        let slot = Arc::new(Slot {
            name,
            busy_since: AtomicU64::new(0),
        });
        let mut slots = registry().lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        Heartbeat(slot)
    }

    /// Marks the thread busy until the guard drops. Nested guards keep the outer start.
    pub fn working(&self) -> Working<'_> {
        let _ = self.0.busy_since.compare_exchange(
            0,
            now_ms().saturating_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        Working(&self.0)
    }
}

/// The threads busy with one piece of work for longer than `longer_than`, with how long.
pub fn stuck(longer_than: Duration) -> Vec<(&'static str, Duration)> {
    let now = now_ms();
    let slots = registry().lock().unwrap_or_else(|e| e.into_inner());
    slots
        .iter()
        .filter_map(Weak::upgrade)
        .filter_map(|slot| {
            let since = slot.busy_since.load(Ordering::Relaxed);
            let busy = Duration::from_millis(now.saturating_sub(since.checked_sub(1)?));
            (busy > longer_than).then_some((slot.name, busy))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_stuck_only_inside_a_piece_of_work_that_lasts() {
        let heartbeat = Heartbeat::register("test-stuck");
        let mine = || {
            stuck(Duration::from_millis(20))
                .into_iter()
                .any(|(name, _)| name == "test-stuck")
        };
        std::thread::sleep(Duration::from_millis(40));
        assert!(!mine(), "idle is not stuck");
        {
            let _working = heartbeat.working();
            assert!(!mine(), "just started");
            std::thread::sleep(Duration::from_millis(40));
            assert!(mine(), "busy too long");
        }
        assert!(!mine(), "done");
        let working = heartbeat.working();
        std::thread::sleep(Duration::from_millis(40));
        // A thread that ends inside its work (a panic) is not watched once its heartbeat is gone.
        std::mem::forget(working);
        assert!(mine());
        drop(heartbeat);
        assert!(!mine(), "a thread gone is not watched");
    }
}
