//! The engine's thread in the daemon: steps the engine as events arrive, reloads the rules
//! folder every second, and stops between batches when asked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gancho_core::Clock;
use gancho_state::EngineState;
use gancho_store::Store;
use tracing::{error, info, warn};

use crate::engine::{Engine, EngineConfig, EngineError, EngineStatus, SharedStatus};

/// How often the rules folder is read for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// The engine thread's stack: deep enough for the deepest value the sandbox's limits allow.
pub const ENGINE_STACK: usize = 256 << 20;
/// The longest the thread sleeps with nothing to do (timers and cron ticks are checked then).
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The running engine thread.
#[derive(Debug)]
pub struct EngineHandle {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    status: SharedStatus,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// The engine's status as of its last step.
    pub fn status(&self) -> EngineStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A handle on the status that can be sent elsewhere.
    pub fn shared_status(&self) -> SharedStatus {
        Arc::clone(&self.status)
    }

    /// Asks for the rules folder to be read now (SIGHUP).
    pub fn reload(&self) {
        self.reload.store(true, Ordering::Release);
    }

    /// Stops after the batch in progress is committed.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("the engine thread panicked");
        }
    }
}

/// Starts the engine on a thread of its own. The rules are loaded before this returns, so a
/// broken rule is reported at start.
pub fn spawn(
    store: Store,
    state: EngineState,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
) -> Result<EngineHandle, EngineError> {
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    let status: SharedStatus = Arc::new(Mutex::new(EngineStatus::default()));
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread = {
        let (stop, reload, status) = (stop.clone(), reload.clone(), status.clone());
        std::thread::Builder::new()
            .name("gancho-engine".to_owned())
            // rhai walks a value's nesting recursively (to size it, to drop it). A run fails
            // once a variable it reads nests deeper than 64 levels (`sandbox::resolve_variables`),
            // but values built by recursive calls and never read may go some thousands deep
            // (call depth × expression depth): a margin that costs only the pages used.
            .stack_size(ENGINE_STACK)
            .spawn(move || {
                // rhai's engine is not Send: it is built on this thread.
                let mut engine = match Engine::new(store.clone(), state, clock, config) {
                    Ok(engine) => {
                        let _ = ready_tx.send(Ok(()));
                        engine
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                // Rule runs catch their own panics; one that escapes the engine (a bug) ends
                // the process, so that its supervisor restarts it, rather than leave a daemon
                // that takes events and never acts on them. Every write is crash-safe, and a
                // run that does it again and again is set aside (`careful.rs`).
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&mut engine, &store, &stop, &reload, &status)
                }));
                if ran.is_err() {
                    error!("the engine thread panicked; the process exits to be restarted");
                    std::process::exit(70);
                }
            })
            .map_err(|source| EngineError::RulesDir {
                path: "(engine thread)".into(),
                cause: source,
            })?
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(EngineHandle {
            stop,
            reload,
            status,
            thread: Some(thread),
        }),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(EngineError::RulesDir {
            path: "(engine thread)".into(),
            cause: std::io::Error::other("the engine thread stopped at start"),
        }),
    }
}

fn run(
    engine: &mut Engine,
    store: &Store,
    stop: &AtomicBool,
    reload: &AtomicBool,
    status: &Mutex<EngineStatus>,
) {
    let mut reloaded = Instant::now();
    let mut failing = false;
    let mut reload_failing = false;
    *status.lock().unwrap_or_else(|e| e.into_inner()) = engine.status();
    let heartbeat = gancho_core::heartbeat::Heartbeat::register("engine");
    while !stop.load(Ordering::Acquire) {
        let working = heartbeat.working();
        if reload.swap(false, Ordering::AcqRel) || reloaded.elapsed() >= RELOAD_EVERY {
            reloaded = Instant::now();
            match engine.reload() {
                Err(err) if !reload_failing => {
                    error!(error = %err, "reading the rules folder");
                    reload_failing = true;
                }
                Err(_) => {}
                Ok(_) => reload_failing = false,
            }
        }
        match engine.step() {
            Ok(report) => {
                if failing {
                    info!("the engine is processing again");
                    failing = false;
                }
                if report.processed == 0 && report.appended == 0 {
                    if let Err(err) = engine.commit_idle_cursor() {
                        warn!(error = %err, "could not commit the engine's cursor");
                    }
                    drop(working);
                    store.wait_indexed(engine.cursor() + 1, IDLE_WAIT);
                }
            }
            Err(err) => {
                if !failing {
                    error!(error = %err, "the engine could not commit; retrying");
                    failing = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        *status.lock().unwrap_or_else(|e| e.into_inner()) = engine.status();
    }
    match engine.commit_cursor() {
        Err(err) => warn!(error = %err, "could not commit the engine's cursor at stop"),
        // A clean stop: the next start processes as usual.
        Ok(()) => {
            if let Err(err) = engine.end_life() {
                warn!(error = %err, "could not record the engine's clean stop");
            }
        }
    }
}
