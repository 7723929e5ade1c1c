//! Named crash points for tests: [`fail_point!`](crate::fail_point) marks a place between two
//! writes of a protocol, and a test decides what happens there: crash the process, fail, pause
//! until released, or sleep.
//!
//! The points cost nothing in a release build: without the `failpoints` feature the macro
//! expands to nothing and this module keeps only no-op stand-ins. The feature is switched on by
//! the dev-dependencies of the crates that test their protocols, so `cargo test` builds (the
//! daemon binary the end-to-end tests start included) have the points, and `cargo build
//! --release` does not. `docs/decisions/0004-fail-points.md` says why this is home-grown rather
//! than the `fail` crate.
//!
//! Points are configured by [`configure`] with the syntax of the `fail` crate, which the
//! daemon reads from `GANCHO_FAILPOINTS` (`NAME=ACTIONS;NAME=ACTIONS`). `ACTIONS` is one task
//! or several joined by `->`, each optionally counted (`N*`): a counted task acts on its next N
//! hits and then hands over to the next. So `3*off->crash` lets three hits pass and crashes the
//! fourth. Actions:
//!
//! - `off`: nothing happens;
//! - `crash`: every open database is flushed (the hooks of [`on_crash`]), then the process exits
//!   at once with [`CRASH_EXIT_CODE`], running no destructor: the writes made before the point
//!   are on disk and none after it, the worst case for a protocol that orders its writes;
//! - `kill`: the process exits at once (`exit`, no destructor runs) without flushing: what the
//!   databases had written to their files survives, as after `kill -9`;
//! - `error`: the point's error branch is taken (`fail_point!(NAME, ERROR)` returns `Err`);
//! - `panic`: the thread panics;
//! - `abort`: the process aborts (`SIGABRT`), as a stack overflow or a failed allocation does;
//! - `pause`: the thread waits until this point is [`release`]d, removed or set again, after printing
//!   `fail point NAME: paused` to stderr so a test watching the log knows it is there;
//! - `sleep(MS)`: the thread sleeps, after printing `fail point NAME: sleeping MS ms`.

use std::fmt;

/// The exit code of a process stopped by a `crash` or `kill` point.
pub const CRASH_EXIT_CODE: i32 = 86;

/// A `GANCHO_FAILPOINTS` value that cannot be read, or points asked of a build without them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fail points: {0}")]
pub struct FailPointError(String);

/// What [`on_crash`] returns: the hook stays registered while this lives.
pub struct CrashHook {
    #[cfg(feature = "failpoints")]
    id: u64,
}

impl fmt::Debug for CrashHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashHook").finish_non_exhaustive()
    }
}

/// Whether this build has fail points.
pub const fn enabled() -> bool {
    cfg!(feature = "failpoints")
}

/// Marks a crash point. `fail_point!("NAME")` acts on `crash`, `kill`, `panic`, `pause` and
/// `sleep`; `fail_point!("NAME", ERROR)` also returns `Err(ERROR)` from the enclosing function
/// when the point is set to `error`. Without the `failpoints` feature it expands to nothing and
/// `ERROR` is not evaluated.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! fail_point {
    ($name:literal) => {
        let _ = $crate::failpoint::hit($name);
    };
    ($name:literal, $err:expr) => {
        if $crate::failpoint::hit($name) {
            return Err($err);
        }
    };
    // A name made at run time (`fail_point!(dyn format!(...))`), for a point per event type.
    (dyn $name:expr) => {
        let _ = $crate::failpoint::hit(&$name);
    };
}

/// Marks a crash point (this build has none: it expands to nothing).
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! fail_point {
    ($name:literal) => {};
    ($name:literal, $err:expr) => {};
    (dyn $name:expr) => {};
}

#[cfg(feature = "failpoints")]
pub use imp::{configure, hit, hits, on_crash, release, remove, set, wait_hits};

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
    use std::time::{Duration, Instant};

    use super::{CRASH_EXIT_CODE, CrashHook, FailPointError};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Action {
        Off,
        Crash,
        Kill,
        Error,
        Panic,
        Abort,
        Pause,
        Sleep(u64),
    }

    #[derive(Debug, Clone)]
    struct Task {
        /// `None`: acts on every hit from now on.
        remaining: Option<u64>,
        action: Action,
    }

    #[derive(Default)]
    struct Registry {
        points: HashMap<String, Vec<Task>>,
        hits: HashMap<String, u64>,
        /// Bumped by every change of a point, so a thread paused there knows to look again.
        epochs: HashMap<String, u64>,
        hooks: Vec<(u64, Box<dyn Fn() + Send>)>,
    }

    struct Global {
        registry: Mutex<Registry>,
        changed: Condvar,
    }

    /// Set once any point is configured: until then `hit` costs one relaxed load.
    static ANY: AtomicBool = AtomicBool::new(false);
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);

    fn global() -> &'static Global {
        static GLOBAL: OnceLock<Global> = OnceLock::new();
        GLOBAL.get_or_init(|| Global {
            registry: Mutex::new(Registry::default()),
            changed: Condvar::new(),
        })
    }

    fn lock() -> MutexGuard<'static, Registry> {
        global()
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn parse_action(text: &str) -> Result<Action, FailPointError> {
        let text = text.trim();
        Ok(match text {
            "off" => Action::Off,
            "crash" => Action::Crash,
            "kill" => Action::Kill,
            "error" | "return" => Action::Error,
            "panic" => Action::Panic,
            "abort" => Action::Abort,
            "pause" => Action::Pause,
            _ => {
                let ms = text
                    .strip_prefix("sleep(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .and_then(|ms| ms.trim().parse().ok())
                    .ok_or_else(|| FailPointError(format!("unknown action {text:?}")))?;
                Action::Sleep(ms)
            }
        })
    }

    fn parse_tasks(spec: &str) -> Result<Vec<Task>, FailPointError> {
        spec.split("->")
            .map(|task| {
                let (remaining, action) = match task.split_once('*') {
                    Some((count, action)) => {
                        let count = count.trim().parse::<u64>().map_err(|_| {
                            FailPointError(format!("bad count {:?} in {spec:?}", count.trim()))
                        })?;
                        (Some(count), action)
                    }
                    None => (None, task),
                };
                Ok(Task {
                    remaining,
                    action: parse_action(action)?,
                })
            })
            .collect()
    }

    /// Sets point `name` to `actions` (see the module's syntax).
    pub fn set(name: &str, actions: &str) -> Result<(), FailPointError> {
        let tasks = parse_tasks(actions)?;
        let mut registry = lock();
        registry.points.insert(name.to_owned(), tasks);
        *registry.epochs.entry(name.to_owned()).or_default() += 1;
        ANY.store(true, Ordering::Release);
        global().changed.notify_all();
        Ok(())
    }

    /// Reads `NAME=ACTIONS;NAME=ACTIONS` and sets each point.
    pub fn configure(spec: &str) -> Result<(), FailPointError> {
        for item in spec.split(';').filter(|item| !item.trim().is_empty()) {
            let (name, actions) = item
                .split_once('=')
                .ok_or_else(|| FailPointError(format!("{item:?} is not NAME=ACTIONS")))?;
            set(name.trim(), actions)?;
        }
        Ok(())
    }

    /// Turns point `name` off, waking a thread paused there.
    pub fn remove(name: &str) {
        let mut registry = lock();
        registry.points.remove(name);
        *registry.epochs.entry(name.to_owned()).or_default() += 1;
        global().changed.notify_all();
    }

    /// Lets a thread paused at `name` go on (the point is turned off).
    pub fn release(name: &str) {
        remove(name);
    }

    /// How many times point `name` has been reached so far.
    pub fn hits(name: &str) -> u64 {
        lock().hits.get(name).copied().unwrap_or(0)
    }

    /// Waits until point `name` has been reached `n` times; false if `timeout` passed first.
    pub fn wait_hits(name: &str, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut registry = lock();
        loop {
            if registry.hits.get(name).copied().unwrap_or(0) >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            registry = global()
                .changed
                .wait_timeout(registry, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Registers `flush`, run by a `crash` point before the process exits (a database's
    /// flush). It stays registered while the returned hook lives.
    pub fn on_crash(flush: Box<dyn Fn() + Send>) -> CrashHook {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        lock().hooks.push((id, flush));
        CrashHook { id }
    }

    impl Drop for CrashHook {
        fn drop(&mut self) {
            // The hook may hold the last handle of a database, whose drop flushes: drop it
            // after the lock is released.
            let mut registry = lock();
            let at = registry.hooks.iter().position(|(id, _)| *id == self.id);
            let hook = at.map(|at| registry.hooks.remove(at));
            drop(registry);
            drop(hook);
        }
    }

    /// Point `name` is reached: does what it is set to. True when its error branch is to be
    /// taken. Use [`fail_point!`](crate::fail_point) rather than calling this.
    pub fn hit(name: &str) -> bool {
        if !ANY.load(Ordering::Acquire) {
            return false;
        }
        let mut registry = lock();
        *registry.hits.entry(name.to_owned()).or_default() += 1;
        global().changed.notify_all();
        let action = next_action(&mut registry, name);
        match action {
            Action::Off => false,
            Action::Error => true,
            Action::Sleep(ms) => {
                drop(registry);
                eprintln!("fail point {name}: sleeping {ms} ms");
                std::thread::sleep(Duration::from_millis(ms));
                false
            }
            Action::Panic => {
                drop(registry);
                panic!("fail point {name}");
            }
            Action::Abort => {
                eprintln!("fail point {name}: abort");
                std::process::abort();
            }
            Action::Kill => {
                // No destructor runs and nothing is flushed (exit handlers run, and gancho has
                // none that write).
                eprintln!("fail point {name}: kill");
                std::process::exit(CRASH_EXIT_CODE);
            }
            Action::Crash => {
                for (_, flush) in &registry.hooks {
                    flush();
                }
                eprintln!("fail point {name}: crash");
                std::process::exit(CRASH_EXIT_CODE);
            }
            Action::Pause => {
                eprintln!("fail point {name}: paused");
                let epoch = |r: &Registry| r.epochs.get(name).copied().unwrap_or(0);
                let paused_at = epoch(&registry);
                while epoch(&registry) == paused_at {
                    registry = global()
                        .changed
                        .wait(registry)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                false
            }
        }
    }

    fn next_action(registry: &mut Registry, name: &str) -> Action {
        let Some(tasks) = registry.points.get_mut(name) else {
            return Action::Off;
        };
        while let Some(task) = tasks.first_mut() {
            match &mut task.remaining {
                None => return task.action,
                Some(0) => {
                    tasks.remove(0);
                }
                Some(n) => {
                    *n -= 1;
                    return task.action;
                }
            }
        }
        Action::Off
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;

        #[test]
        fn counted_tasks_hand_over_in_order() {
            set("test.counted", "2*off->error").unwrap();
            assert!(!hit("test.counted"));
            assert!(!hit("test.counted"));
            assert!(hit("test.counted"));
            assert!(hit("test.counted"));
            assert_eq!(hits("test.counted"), 4);
            set("test.counted", "1*error").unwrap();
            assert!(hit("test.counted"));
            assert!(!hit("test.counted"));
        }

        #[test]
        fn bad_specs_are_refused() {
            assert!(configure("nothing").is_err());
            assert!(set("test.bad", "explode").is_err());
            assert!(set("test.bad", "x*off").is_err());
            assert!(set("test.bad", "sleep(ms)").is_err());
            assert!(configure("a.b=sleep(5);c.d=3*off->crash").is_ok());
            remove("a.b");
            remove("c.d");
        }

        #[test]
        fn a_paused_point_waits_for_its_release() {
            set("test.pause", "pause").unwrap();
            let worker = std::thread::spawn(|| hit("test.pause"));
            assert!(wait_hits("test.pause", 1, Duration::from_secs(10)));
            // Another point's change does not let it go.
            set("test.other", "off").unwrap();
            remove("test.other");
            std::thread::sleep(Duration::from_millis(50));
            assert!(!worker.is_finished());
            release("test.pause");
            assert_eq!(worker.join().ok(), Some(false));
        }
    }
}

/// Sets fail points (this build has none: any point asked for is an error).
#[cfg(not(feature = "failpoints"))]
pub fn configure(spec: &str) -> Result<(), FailPointError> {
    if spec.trim().is_empty() {
        Ok(())
    } else {
        Err(FailPointError(
            "this build has no fail points (they are compiled into test builds only)".to_owned(),
        ))
    }
}

/// Registers a flush to run before a `crash` point exits (this build has none: it is dropped).
#[cfg(not(feature = "failpoints"))]
pub fn on_crash(flush: Box<dyn Fn() + Send>) -> CrashHook {
    drop(flush);
    CrashHook {}
}

/// A clock for the daemon under test (`GANCHO_TEST_CLOCK`): it starts at a given instant and
/// runs `speed` times faster than the wall clock, so a test sees the night of a
/// daylight-saving change pass in seconds. Test builds only.
#[cfg(feature = "failpoints")]
#[derive(Debug)]
pub struct WarpClock {
    start: chrono::DateTime<chrono::Utc>,
    started: std::time::Instant,
    speed: f64,
}

#[cfg(feature = "failpoints")]
impl crate::Clock for WarpClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let elapsed = self.started.elapsed().as_secs_f64() * self.speed;
        // `as` saturates: a speed too great for the calendar stops at its end.
        let ms = (elapsed * 1000.0) as i64;
        self.start
            .checked_add_signed(chrono::Duration::milliseconds(ms))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
    }
}

/// Reads `START[xSPEED]` (RFC 3339, then a speed factor, 1 by default) into a [`WarpClock`].
#[cfg(feature = "failpoints")]
pub fn test_clock(spec: &str) -> Result<std::sync::Arc<dyn crate::Clock>, FailPointError> {
    let (start, speed) = match spec.split_once('x') {
        Some((start, speed)) => (start, speed),
        None => (spec, "1"),
    };
    let start = chrono::DateTime::parse_from_rfc3339(start.trim())
        .map_err(|err| FailPointError(format!("test clock {start:?}: {err}")))?
        .with_timezone(&chrono::Utc);
    let speed: f64 = speed
        .trim()
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0)
        .ok_or_else(|| FailPointError(format!("test clock speed {speed:?}")))?;
    Ok(std::sync::Arc::new(WarpClock {
        start,
        started: std::time::Instant::now(),
        speed,
    }))
}

/// A test clock (this build has none: asking for one is an error).
#[cfg(not(feature = "failpoints"))]
pub fn test_clock(_spec: &str) -> Result<std::sync::Arc<dyn crate::Clock>, FailPointError> {
    Err(FailPointError(
        "this build has no test clock (it is compiled into test builds only)".to_owned(),
    ))
}
