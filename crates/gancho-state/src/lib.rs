//! The engine's durable state: its cursor in the log, per-rule state, timers and expectations,
//! cron marks, and the outbox of decided actions with their delivery records and dead letters.
//! A sled database of its own (`store/engine`; its key layout is in `schema.rs`), written by the
//! engine's commits and, for the outbox's delivery records, by the actions executor.
//!
//! This crate owns that database; the log and its indexes are `gancho-store`'s, and it reaches
//! the disk only through `gancho_store::kv`. It decides nothing: the engine hands it changes,
//! and the actions executor gets an [`Outbox`] handle, which can mark deliveries but cannot
//! commit a decision. It never reads the wall clock: times arrive with the calls.
//!
//! A key design decision made here is **atomic commits without sled transactions**. A commit
//! (every change the engine decided for a batch of events, and the cursor past them) is staged
//! by the engine thread in an in-memory overlay that every read consults first; the applier
//! thread encodes it, appends it to a journal file and syncs that, applies it with plain
//! writes (its number, `Mapplied`, last), makes it durable and empties the journal. sled
//! recovers a prefix of the writes made before a crash, so at open either the interrupted
//! commit's record is whole in the journal and replaying it completes the commit, or neither it
//! nor any of its changes are, and the engine processes the batch again from the same history
//! (`journal.rs`). sled's `transaction` would do the same but puts every sled
//! operation in the process behind one global lock. One write happens outside commits:
//! [`EngineState::due_timers`] removes a due-time entry that no applied timer refers to.
//!
//! Modules, in layers (each uses only those before it): `schema` (records, key layouts, the
//! channel table), `overlay` (committed, not yet applied writes), `journal` (the journal file
//! and its recovery), `applier` (the thread that applies and syncs), `migrate` (format
//! versions), `outbox` (the executor's view), `listing` (the outbox and dead letters streamed
//! for operators), `retention` (what pruning asks of this database),
//! `poison` (the engine's lives, careful runs and runs set aside: written outside commits),
//! `rules` (rule controls and counters), `inspect` (state and timers for operators), `ops`
//! (operators' changes handed to the running engine).

mod applier;
mod fence;
pub mod inspect;
mod journal;
mod listing;
mod migrate;
pub mod ops;
mod outbox;
mod overlay;
pub mod poison;
mod retention;
pub mod rules;
mod schema;
pub mod sent;
pub mod snapshot;
pub mod traces;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use gancho_core::ActionRequest;
use gancho_store::StoreError;
use gancho_store::keys::{read_time, read_u64};
use gancho_store::kv::{Db, FileSync, Tree};

use crate::applier::{APPLY_QUEUE, Applier, Shared, apply_loop, sync};
use crate::journal::Journal;
use crate::overlay::{Entry, Record, Slot, Staged, get, get_record, lock, scan, stage_change};
use crate::schema::{
    CRON, CURSOR_KEY, DUE, Fields, SHAPE, corrupt, parse_shape, push_str, state_key, timer_key,
};

pub use crate::fence::{CommitFence, FenceError};
pub use crate::journal::decided_in;
pub use crate::outbox::{Attempt, DeadLetter, Delivery, Outbox, OutboxItem};
pub use crate::schema::{Change, ExpectShape, Expectation, StateValue, Timer, expectation_name};
pub use gancho_store::StoreConfig;
pub use gancho_store::StoreError as Error;

/// The engine's state database. Cheap to clone; committed to by one engine thread at a time,
/// read by the control socket, and its outbox worked by the actions executor.
#[derive(Debug, Clone)]
pub struct EngineState {
    db: Db,
    tree: Tree,
    shared: Arc<Shared>,
    /// The next commit's number (journal records carry it; numbers go on from the last one
    /// applied, `Mapplied`, across restarts).
    commits: Arc<AtomicU64>,
    applier: Arc<Mutex<Option<Applier>>>,
    /// Serializes the outbox's multi-key updates (executor lanes, `gancho dead retry`).
    outbox_lock: Arc<Mutex<()>>,
    /// This store's secret key (see [`EngineState::secret`]).
    secret: Arc<StoreSecret>,
    /// The traces of rule runs (`traces.rs`), in a database of their own (`store/traces`):
    /// diagnostics, made durable by sled's own periodic flush, so that they add nothing to
    /// the engine database's flushes and syncs.
    traces: Tree,
}

/// 32 random bytes made at a store's first open and kept in it: the key of the MACs that
/// make rules' codes and action ids unguessable from outside. Its `Debug` shows nothing.
pub struct StoreSecret([u8; 32]);

impl StoreSecret {
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for StoreSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSecret(<redacted>)")
    }
}

/// Where the secret is kept in the engine's tree.
pub(crate) const SECRET_KEY: &[u8] = b"Msecret";
/// Cluster mode: the partition's journal sequence the tree holds every commit up to.
pub(crate) const JOURNAL_POSITION_KEY: &[u8] = b"Mjournal";

impl EngineState {
    /// Opens (or creates) the engine's database in `store_dir/engine`, replays the commit a
    /// crash interrupted, brings an earlier format up to date, and starts the applier thread.
    /// Fails with [`StoreError::Locked`] when another process has it open.
    pub fn open(store_dir: &Path, config: &StoreConfig) -> Result<EngineState, StoreError> {
        let path = store_dir.join("engine");
        let db = Db::open(&path, config.engine_cache())?;
        let traces = Db::open(&store_dir.join("traces"), config.traces_cache())?.tree("traces")?;
        EngineState::open_db(db, &path, config.fsync, traces, None)
    }

    /// [`EngineState::open`] for a partition's owner in cluster mode: every batch of commits
    /// goes through `fence` (the partition's shared journal) before it is journaled here, and
    /// a refusal fails this state (see [`CommitFence`]). `secret` is the partition's, the same
    /// on every node (action ids and `code()` are made with it), kept as this store's.
    pub fn open_fenced(
        store_dir: &Path,
        config: &StoreConfig,
        fence: Arc<dyn CommitFence>,
        secret: [u8; 32],
    ) -> Result<EngineState, StoreError> {
        let path = store_dir.join("engine");
        let db = Db::open(&path, config.engine_cache())?;
        let traces = Db::open(&store_dir.join("traces"), config.traces_cache())?.tree("traces")?;
        let state = EngineState::open_db(db, &path, config.fsync, traces, Some(fence))?;
        if state.secret.bytes() != &secret {
            state.tree.insert(SECRET_KEY, &secret[..])?;
            state.sync()?;
        }
        Ok(EngineState {
            secret: Arc::new(StoreSecret(secret)),
            ..state
        })
    }

    fn open_db(
        db: Db,
        path: &Path,
        fsync: bool,
        traces: Tree,
        fence: Option<Arc<dyn CommitFence>>,
    ) -> Result<EngineState, StoreError> {
        let tree = db.tree("engine")?;
        let sync = if fsync {
            Some(FileSync::open(path)?)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            sync: Mutex::new(sync),
            overlay: Mutex::new(BTreeMap::new()),
            failure: Mutex::new(None),
            durable_commit: AtomicU64::new(0),
            durable_cursor: AtomicU64::new(0),
            durable_tx: tokio::sync::watch::Sender::new(0),
            fence,
        });
        let state = EngineState {
            db,
            tree,
            shared,
            commits: Arc::new(AtomicU64::new(1)),
            applier: Arc::new(Mutex::new(None)),
            outbox_lock: Arc::new(Mutex::new(())),
            secret: Arc::new(StoreSecret([0; 32])),
            traces,
        };
        // A newer format is refused before its journal is touched; a journal version 1 left
        // in the tree is completed before any other step runs (they expect whole commits).
        if migrate::FORMAT
            .check(&state.tree)?
            .is_some_and(|version| version < 2)
        {
            migrate::journal_out_of_the_tree(&state.tree)?;
            state.sync()?;
        }
        let (journal, applied) = Journal::open(path, &state.tree, fsync, || state.sync())?;
        migrate::FORMAT.upgrade(&state.tree, &mut || state.sync())?;
        state.commits.store(applied + 1, Ordering::Release);
        state
            .shared
            .durable_commit
            .store(applied, Ordering::Release);
        let state = EngineState {
            secret: Arc::new(state.load_secret()?),
            ..state
        };
        let cursor = state.cursor()?;
        state.shared.durable_cursor.store(cursor, Ordering::Release);
        state.shared.durable_tx.send_replace(cursor);
        // At most a few commits wait for the applier: beyond that, committing waits, so the
        // overlay (memory) stays bounded when the engine outruns sled.
        let (jobs, rx) = mpsc::sync_channel(APPLY_QUEUE);
        let thread = {
            let (db, tree, shared) = (state.db.clone(), state.tree.clone(), state.shared.clone());
            std::thread::Builder::new()
                .name("gancho-state".to_owned())
                .spawn(move || apply_loop(&db, &tree, journal, &shared, &rx))
                .map_err(|source| StoreError::Io {
                    what: "starting the engine state thread".to_owned(),
                    source,
                })?
        };
        *lock(&state.applier) = Some(Applier { jobs, thread });
        Ok(state)
    }

    /// The store's secret, made (from the system's random source) and made durable at its
    /// first open.
    fn load_secret(&self) -> Result<StoreSecret, StoreError> {
        if let Some(bytes) = self.tree.get(SECRET_KEY)? {
            return <[u8; 32]>::try_from(&bytes[..])
                .map(StoreSecret)
                .map_err(|_| schema::corrupt("Msecret", "not 32 bytes"));
        }
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(
            |_| StoreError::Engine("no random source for the store's secret".to_owned()),
        )?;
        self.tree.insert(SECRET_KEY, &bytes[..])?;
        self.sync()?;
        Ok(StoreSecret(bytes))
    }

    /// The store's secret key: the same for the life of the store, different for every store.
    pub fn secret(&self) -> &StoreSecret {
        &self.secret
    }

    /// A value, as committed (applied or not).
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get(&self.shared.overlay, &self.tree, key)
    }

    /// The entries whose keys start with `prefix` and are below `end` (when given), as
    /// committed, in key order, at most `limit`.
    pub(crate) fn scan(
        &self,
        prefix: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        scan(&self.shared.overlay, &self.tree, prefix, end, limit)
    }

    fn get_record<T: Record>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        get_record(&self.shared.overlay, &self.tree, key)
    }

    /// The outbox of this database, as the actions executor and operators work it.
    pub fn outbox(&self) -> Outbox {
        Outbox {
            tree: self.tree.clone(),
            shared: Arc::clone(&self.shared),
            lock: Arc::clone(&self.outbox_lock),
            traces: self.traces.clone(),
            fenced: self.shared.fence.as_ref().map(|_| outbox::Fenced {
                commits: Arc::clone(&self.commits),
                applier: Arc::clone(&self.applier),
                staged: Arc::new(Mutex::new(Vec::new())),
            }),
        }
    }

    /// Makes every write so far durable: flush, and `fdatasync` when the store is configured so.
    pub fn sync(&self) -> Result<(), StoreError> {
        sync(&self.db, &self.shared)
    }

    /// Waits until every commit is applied, makes it durable, and stops the applier thread.
    pub fn close(&self) {
        if let Some(applier) = lock(&self.applier).take() {
            drop(applier.jobs);
            if applier.thread.join().is_err() {
                tracing::error!("the engine state thread panicked");
            }
        }
    }

    /// The seq of the last event the engine processed, 0 for none.
    pub fn cursor(&self) -> Result<u64, StoreError> {
        match self.get(CURSOR_KEY)? {
            None => Ok(0),
            Some(v) => read_u64(&v).ok_or_else(|| corrupt("cursor", "not a u64")),
        }
    }

    pub fn state(&self, rule: &str, key: &str) -> Result<Option<StateValue>, StoreError> {
        self.get_record(&state_key(rule, key))
    }

    pub fn timer(&self, rule: &str, name: &str) -> Result<Option<Timer>, StoreError> {
        self.get_record(&timer_key(rule, name))
    }

    /// Timers due at or before `until_ms`, earliest first, at most `limit`. Call it from the
    /// thread that commits (the engine's): it drops entries no timer refers to, which a commit
    /// made meanwhile from another thread could make refer to one again.
    pub fn due_timers(&self, until_ms: i64, limit: usize) -> Result<Vec<Timer>, StoreError> {
        let mut end = vec![DUE];
        end.extend_from_slice(&gancho_store::keys::time_key(until_ms));
        end.push(0xff);
        let mut timers = Vec::new();
        for (key, _) in self.scan(&[DUE], Some(&end), limit)? {
            let due = key.get(1..9).and_then(read_time);
            let mut fields = Fields::new(key.get(9..).unwrap_or_default());
            let (Some(due), Some(rule), Some(name)) = (due, fields.string(), fields.string())
            else {
                return Err(corrupt("due timer", "bad key"));
            };
            match self.timer(&rule, &name)? {
                Some(timer) if timer.due_ms == due && !timer.orphaned => timers.push(timer),
                // An entry no timer refers to (left by a store written before timers were
                // replaced whole, or by a crash between writes): it goes, outside any commit,
                // but only when that verdict rests on applied state. While a commit touching
                // the timer is staged, it may not survive a crash, and the entry with it.
                _ => {
                    let staged = {
                        let overlay = lock(&self.shared.overlay);
                        overlay.contains_key(&key) || overlay.contains_key(&timer_key(&rule, &name))
                    };
                    if !staged {
                        self.tree.remove(&key)?;
                    }
                }
            }
        }
        Ok(timers)
    }

    /// The earliest due time of any timer.
    pub fn next_due(&self) -> Result<Option<i64>, StoreError> {
        match self.scan(&[DUE], None, 1)?.into_iter().next() {
            None => Ok(None),
            Some((key, _)) => {
                let due = key
                    .get(1..9)
                    .and_then(read_time)
                    .ok_or_else(|| corrupt("due timer", "bad key"))?;
                Ok(Some(due))
            }
        }
    }

    /// Every shape some expectation ever waited on.
    pub fn expectation_shapes(&self) -> Result<Vec<ExpectShape>, StoreError> {
        let mut shapes = Vec::new();
        for (key, _) in self.scan(&[SHAPE], None, usize::MAX)? {
            shapes.push(
                parse_shape(&key[1..]).ok_or_else(|| corrupt("expectation shape", "bad key"))?,
            );
        }
        Ok(shapes)
    }

    pub fn cron_mark(&self, rule: &str) -> Result<Option<i64>, StoreError> {
        let mut key = vec![CRON];
        push_str(&mut key, rule);
        match self.get(&key)? {
            None => Ok(None),
            Some(v) => read_u64(&v)
                .map(|v| Some(v as i64))
                .ok_or_else(|| corrupt("cron mark", "not a u64")),
        }
    }

    /// Actions in the outbox in the order they were decided, the oldest `limit` (0: all).
    pub fn decided_actions(&self, limit: usize) -> Result<Vec<ActionRequest>, StoreError> {
        Ok(self
            .outbox()
            .pending_actions(limit)?
            .into_iter()
            .map(|item| item.action)
            .collect())
    }

    /// Notified with the durable cursor each time it moves ([`EngineState::durable_cursor`]).
    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable_tx.subscribe()
    }

    /// Commits a batch: every change, and the cursor at `cursor`, atomically (see the module
    /// documentation). The changes are visible to reads at once; the applier thread applies
    /// them to the tree and makes them durable shortly after ([`EngineState::durable_commit`]).
    /// A crash before then loses the commit whole, and the engine processes its events again
    /// from the same history, deciding the same.
    pub fn commit(&self, changes: Vec<Change>, cursor: u64) -> Result<(), StoreError> {
        if let Some(reason) = lock(&self.shared.failure).clone() {
            return Err(StoreError::Failed(reason));
        }
        let mut staged: Staged = Vec::with_capacity(changes.len() * 2 + 1);
        for change in changes {
            stage_change(change, &mut staged);
        }
        staged.push((
            CURSOR_KEY.to_vec(),
            Slot::Bytes(cursor.to_be_bytes().to_vec()),
        ));
        applier::queue(&self.applier, &self.commits, staged, |commit, staged| {
            let mut overlay = lock(&self.shared.overlay);
            for (key, slot) in staged {
                overlay.insert(key.clone(), (commit, slot.clone()));
            }
        })
        .map(drop)
    }

    /// Cluster mode, at a takeover: applies the commits of one message of the partition's shared
    /// journal (its payload, as [`CommitFence::commit`] was given it) that this database has not
    /// applied, and makes them durable. Call it for each message up to where the fence was
    /// opened, oldest first, before anything is committed here: the database then holds what
    /// every earlier owner decided, and its next commit number follows theirs. Returns the
    /// cursor it is at. A message that is not whole records is refused (`Corrupt`).
    pub fn catch_up(&self, records: &[u8]) -> Result<u64, StoreError> {
        let applied = self.shared.durable_commit.load(Ordering::Acquire);
        if self.commits.load(Ordering::Acquire) != applied + 1 {
            return Err(StoreError::Engine(
                "catching up with the shared journal while commits are in flight".to_owned(),
            ));
        }
        let (applied, replayed, whole) =
            journal::replay(&self.tree, records, applied, "the partition's journal")?;
        if whole != records.len() {
            return Err(schema::corrupt(
                "the partition's journal",
                "a message that is not whole journal records",
            ));
        }
        if replayed == 0 {
            return Ok(self.shared.durable_cursor.load(Ordering::Acquire));
        }
        self.sync()?;
        self.commits.store(applied + 1, Ordering::Release);
        self.shared.durable_commit.store(applied, Ordering::Release);
        let cursor = self.cursor()?;
        self.shared.durable_cursor.store(cursor, Ordering::Release);
        self.shared.durable_tx.send_replace(cursor);
        Ok(cursor)
    }

    /// Cluster mode: the sequence of the partition's journal up to which this database holds
    /// every commit (0: none known), so that a takeover reads the journal on from there.
    pub fn journal_position(&self) -> Result<u64, StoreError> {
        match self.tree.get(JOURNAL_POSITION_KEY)? {
            None => Ok(0),
            Some(v) => read_u64(&v).ok_or_else(|| schema::corrupt("Mjournal", "not a u64")),
        }
    }

    /// Records that this database holds every commit of the partition's journal up to `seq`
    /// (after [`EngineState::catch_up`] applied them); made durable with the next sync.
    pub fn set_journal_position(&self, seq: u64) -> Result<(), StoreError> {
        self.tree
            .insert(JOURNAL_POSITION_KEY, &seq.to_be_bytes()[..])
    }

    /// Why the engine state could not be applied or made durable, if so (the daemon then exits
    /// and restarts, and the journal completes what was committed).
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
    }

    /// The cursor of the last commit that is durable: actions decided up to this seq survive
    /// a crash, and only those may be carried out.
    pub fn durable_cursor(&self) -> u64 {
        self.shared.durable_cursor.load(Ordering::Acquire)
    }

    /// Waits until every commit made so far is durable; `false` at the timeout, or at once if
    /// the store failed.
    pub fn wait_durable(&self, timeout: std::time::Duration) -> bool {
        let target = self.commits.load(Ordering::Acquire).saturating_sub(1);
        let deadline = std::time::Instant::now() + timeout;
        while self.shared.durable_commit.load(Ordering::Acquire) < target {
            // A failed store makes nothing durable again: no use waiting (a refused claim
            // used to hold a partition's start for the whole timeout).
            if std::time::Instant::now() >= deadline || self.failure().is_some() {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        true
    }
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod journal_tests;
#[cfg(test)]
mod tests;
