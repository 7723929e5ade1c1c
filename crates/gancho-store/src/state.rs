//! The engine's durable state: its cursor in the log, per-rule state, timers and expectations,
//! cron marks, and the outbox of decided actions. A sled database of its own (`store/engine`),
//! written by the engine thread, and by the actions executor for the outbox's delivery records
//! (`outbox.rs`, other prefixes).
//!
//! | prefix | key                                         | value                         |
//! |--------|---------------------------------------------|-------------------------------|
//! | `M`    | `cursor`                                    | u64 BE: log processed up to   |
//! | `S`    | rule, key                                   | [`StateValue`], JSON          |
//! | `A`    | rule, timer name                            | [`Timer`], JSON               |
//! | `W`    | due time, rule, timer name                  | empty (timers by due time)    |
//! | `E`    | source, type, n, name×n, rule, callback     | empty ([`ExpectShape`]s)      |
//! | `O`    | channel, event seq, rule, position          | [`ActionRequest`], JSON       |
//! | `R`    | rule                                        | i64 BE: last cron tick, ms    |
//! | `J`    | commit number, chunk number (`u32::MAX`: marker) | journal of one commit    |
//!
//! **Atomic commits without sled transactions.** A commit (every change the engine decided for
//! a batch of events, and the cursor past them) is first written as a journal: its writes in
//! chunks of about 32 KiB, then a marker naming the number of chunks. Then its changes are
//! applied with plain inserts and removes, and once they are durable the journal is removed.
//! The engine thread only stages a commit (its keys, and its records as they are, in an
//! in-memory overlay that reads consult first); the applier thread encodes it, writes the
//! journal and applies it. One write happens outside commits: [`EngineState::due_timers`]
//! removes a due-time entry that no applied timer refers to (garbage either way). sled
//! recovers a prefix of the writes made before a crash, so at open either the interrupted
//! commit's marker is there, and replaying its chunks (idempotent writes) completes the commit,
//! or it is not, and neither are any of its changes: the cursor is where it was and the batch
//! is processed again from the same history. sled's `transaction` would do the same but puts every sled
//! operation in the process behind one global lock (see `writer.rs`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use gancho_core::ActionRequest;
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::codec::{self, read_u64};
use crate::writer::FileSync;

const CURSOR_KEY: &[u8] = b"Mcursor";
const STATE: u8 = b'S';
const TIMER: u8 = b'A';
const DUE: u8 = b'W';
const SHAPE: u8 = b'E';
/// Layouts before expectation timers were named from their shape: an entry per expectation
/// (`X`: source, type, n, (name, value)×n, rule, timer name) and shapes without rule (`Y`).
const OLD_EXPECT: u8 = b'X';
const OLD_SHAPE: u8 = b'Y';
const CRON: u8 = b'R';
const JOURNAL: u8 = b'J';
/// The chunk number of a commit's marker, written after its last chunk.
const MARKER: u32 = u32::MAX;
const JOURNAL_CHUNK: usize = 32 * 1024;
/// Commits queued for the applier, at most.
const APPLY_QUEUE: usize = 4;

fn journal_key(commit: u64, chunk: u32) -> [u8; 13] {
    let mut key = [JOURNAL; 13];
    key[1..9].copy_from_slice(&commit.to_be_bytes());
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

fn journal_key_parts(key: &[u8]) -> Option<(u64, u32)> {
    let commit = read_u64(key.get(1..9)?)?;
    let chunk = u32::from_be_bytes(key.get(9..13)?.try_into().ok()?);
    Some((commit, chunk))
}

/// A value of a rule's persistent state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateValue {
    pub value: serde_json::Value,
    /// In event time, ms: the value is gone for events at or after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

/// A durable timer: when it comes due, an event `timer.NAME` is appended to the log and, when
/// the engine reaches it, the rule's `callback` runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    pub rule: String,
    pub name: String,
    /// Unique per setting of the timer (a timer set again under its name gets a new uid): the
    /// firing event's provider id, so a firing is appended to the log once.
    pub uid: String,
    /// In event time, ms.
    pub due_ms: i64,
    pub callback: String,
    /// What the callback receives.
    pub data: serde_json::Value,
    /// The seq of the event whose processing set it.
    pub origin_seq: u64,
    /// Set for an expectation (`expect`): the event that would cancel it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expectation>,
}

/// "An event of this type with these keys, with an event time in `from_ms..=to_ms`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    pub source: String,
    pub kind: String,
    /// Sorted by name.
    pub keys: Vec<(String, String)>,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// What a rule's expectations wait on: events of (source, type) carrying the keys `names`
/// (sorted), else `callback` runs. Recorded once per shape; with an event's key values it names
/// the only timer that event can cancel ([`expectation_name`]), so finding the expectations an
/// event fulfils takes one lookup per shape, not a scan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExpectShape {
    pub source: String,
    pub kind: String,
    pub names: Vec<String>,
    pub rule: String,
    pub callback: String,
}

/// The timer name of an expectation of events of (source, type) with these key values (sorted
/// by name) that calls `callback`: a rule has at most one such expectation at a time.
pub fn expectation_name(source: &str, kind: &str, keys: &[(&str, &str)], callback: &str) -> String {
    let keys = serde_json::to_string(keys).unwrap_or_default();
    format!("expect:{source}.{kind}:{keys}:{callback}")
}

/// One change the engine decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    PutState {
        rule: String,
        key: String,
        value: StateValue,
    },
    DeleteState {
        rule: String,
        key: String,
    },
    /// Sets a timer; the caller deletes the one it replaces first ([`Change::DeleteTimer`]).
    /// A due-time entry left behind is skipped, and dropped, by [`EngineState::due_timers`].
    PutTimer(Timer),
    /// Deletes this exact timer (and its due-time entry).
    DeleteTimer(Timer),
    PutAction(ActionRequest),
    /// Records that a rule's expectations wait on events of this shape, so the engine looks
    /// such events up ([`EngineState::expectation_shapes`]). Written once per shape, not per
    /// expectation.
    PutShape(ExpectShape),
    /// The last cron tick appended for a rule.
    CronMark {
        rule: String,
        tick_ms: i64,
    },
}

/// The engine's state database. Cheap to clone; committed to by one engine thread at a time,
/// read by the control socket, and its outbox worked by the actions executor.
#[derive(Debug, Clone)]
pub struct EngineState {
    db: sled::Db,
    tree: sled::Tree,
    shared: Arc<Shared>,
    /// The next commit's number (journal records are keyed by it; none survive an open).
    commits: Arc<AtomicU64>,
    applier: Arc<Mutex<Option<Applier>>>,
    /// Serializes the outbox's multi-key updates (executor lanes, `gancho dead retry`).
    pub(crate) outbox_lock: Arc<Mutex<()>>,
}

/// What the engine thread and the applier thread share.
#[derive(Debug)]
struct Shared {
    /// `fdatasync` after each flush, when the store is configured so. The lock also keeps
    /// flushes from running concurrently.
    sync: Mutex<Option<FileSync>>,
    /// Writes committed (handed to the applier, which writes their journal, then applies
    /// them) but not yet applied to the tree, by key, with the number of the commit that made
    /// them. Reads look here first.
    overlay: Mutex<Overlay>,
    /// Why applying failed, if it did: commits are refused from then on.
    failure: Mutex<Option<String>>,
    /// The number and cursor of the last commit applied and durable.
    durable_commit: AtomicU64,
    durable_cursor: AtomicU64,
    /// Tells waiters (the actions executor) that the durable cursor moved.
    durable_tx: tokio::sync::watch::Sender<u64>,
}

/// A committed value: bytes, or a record kept as it is until the applier thread encodes it,
/// so the engine thread neither encodes it nor, reading it back from the overlay, decodes it.
#[derive(Debug, Clone)]
enum Slot {
    Removed,
    Bytes(Vec<u8>),
    Timer(Arc<Timer>),
    State(Arc<StateValue>),
    Action(Arc<ActionRequest>),
}

impl Slot {
    /// The bytes stored for it, `None` for a removal.
    fn encode(&self) -> Result<Option<Cow<'_, [u8]>>, StoreError> {
        Ok(Some(match self {
            Slot::Removed => return Ok(None),
            Slot::Bytes(bytes) => Cow::Borrowed(bytes.as_slice()),
            Slot::Timer(timer) => Cow::Owned(to_json(&**timer)?),
            Slot::State(value) => Cow::Owned(to_json(&**value)?),
            Slot::Action(action) => Cow::Owned(to_json(&**action)?),
        }))
    }
}

/// A record the overlay may hold as it is.
trait Record: serde::de::DeserializeOwned {
    fn from_slot(slot: &Slot) -> Option<Self>;
}

impl Record for Timer {
    fn from_slot(slot: &Slot) -> Option<Timer> {
        match slot {
            Slot::Timer(timer) => Some((**timer).clone()),
            _ => None,
        }
    }
}

impl Record for StateValue {
    fn from_slot(slot: &Slot) -> Option<StateValue> {
        match slot {
            Slot::State(value) => Some((**value).clone()),
            _ => None,
        }
    }
}

/// A commit's writes as staged by the engine thread, the cursor last.
type Staged = Vec<(Vec<u8>, Slot)>;
/// A write, encoded: key, and value or removal.
type Write<'a> = (&'a [u8], Option<Cow<'a, [u8]>>);
/// A staged commit, encoded.
type Writes<'a> = Vec<Write<'a>>;
/// Key → (commit number, value or removal).
type Overlay = BTreeMap<Vec<u8>, (u64, Slot)>;
type Entry = (Vec<u8>, Vec<u8>);

#[derive(Debug)]
struct Applier {
    jobs: mpsc::SyncSender<(u64, Staged)>,
    thread: JoinHandle<()>,
}

impl EngineState {
    pub(crate) fn open(db: sled::Db, path: &Path, fsync: bool) -> Result<EngineState, StoreError> {
        let tree = db.open_tree("engine").map_err(StoreError::sled)?;
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
        });
        let state = EngineState {
            db,
            tree,
            shared,
            commits: Arc::new(AtomicU64::new(1)),
            applier: Arc::new(Mutex::new(None)),
            outbox_lock: Arc::new(Mutex::new(())),
        };
        state.recover()?;
        state.migrate_outbox()?;
        state.migrate_expectations()?;
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
                .spawn(move || apply_loop(&db, &tree, &shared, &rx))
                .map_err(|source| StoreError::Io {
                    what: "starting the engine state thread".to_owned(),
                    source,
                })?
        };
        *lock(&state.applier) = Some(Applier { jobs, thread });
        Ok(state)
    }

    /// Completes the commits a crash interrupted after their journal was written whole (its
    /// marker is there), in order; drops journal chunks without a marker (their commit never
    /// began to apply). Then removes every journal record.
    fn recover(&self) -> Result<(), StoreError> {
        let records: Vec<_> = self
            .tree
            .scan_prefix([JOURNAL])
            .collect::<Result<_, _>>()
            .map_err(StoreError::sled)?;
        if records.is_empty() {
            return Ok(());
        }
        let bad = |key: &[u8]| StoreError::Corrupt {
            key: format!("{key:?}"),
            reason: "bad journal record".to_owned(),
        };
        // Keys sort by commit number, then chunk, with the marker last.
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut replayed = 0;
        for (key, value) in &records {
            let (commit, chunk) = journal_key_parts(key).ok_or_else(|| bad(key))?;
            if chunks.len() as u32 != chunk && chunk != MARKER {
                chunks.clear();
            }
            if chunk == MARKER {
                let n = value
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| bad(key))?;
                if chunks.len() as u32 != n {
                    // Chunks go only when the commit is already durable (markers are removed
                    // first, but a store written before that order may lack some): nothing to do.
                    tracing::warn!(commit, "an engine journal without all its chunks: skipped");
                    chunks.clear();
                    continue;
                }
                for chunk in &chunks {
                    for (k, v) in decode_journal(chunk).ok_or_else(|| bad(key))? {
                        self.apply(k, v)?;
                    }
                }
                replayed += 1;
                chunks.clear();
                tracing::debug!(commit, "replayed an engine commit");
            } else {
                chunks.push(value);
            }
        }
        self.sync()?;
        remove_journal(&self.tree, records.into_iter().map(|(key, _)| key))?;
        self.sync()?;
        tracing::info!(replayed, "completed the engine commits a crash interrupted");
        Ok(())
    }

    /// Stores written before outbox keys began with their channel kept them by event seq
    /// alone (`O`, seq, rule, position): such keys are moved under their channel.
    fn migrate_outbox(&self) -> Result<(), StoreError> {
        let mut moved = 0;
        for entry in self.tree.scan_prefix([crate::outbox::OUTBOX]) {
            let (key, value) = entry.map_err(StoreError::sled)?;
            if key.get(1).is_some_and(|b| b"esh".contains(b)) {
                continue;
            }
            let action: ActionRequest = serde_json::from_slice(&value)
                .map_err(|err| corrupt("outbox item", &err.to_string()))?;
            self.apply(&crate::outbox::outbox_key(&action), Some(&value))?;
            self.apply(&key, None)?;
            moved += 1;
        }
        if moved > 0 {
            self.sync()?;
            tracing::info!(moved, "moved outbox items to the per-channel layout");
        }
        Ok(())
    }

    /// Stores written before expectation timers were named from their shape kept an entry per
    /// expectation (`X`) and shapes without their rule (`Y`): each `X` entry becomes its
    /// rule's shape (`E`), then the old entries go.
    fn migrate_expectations(&self) -> Result<(), StoreError> {
        let mut old = Vec::new();
        let mut shapes = std::collections::BTreeSet::new();
        for entry in self.tree.scan_prefix([OLD_EXPECT]) {
            let (key, _) = entry.map_err(StoreError::sled)?;
            if let Some(shape) = self.old_expectation_shape(&key[1..])? {
                shapes.insert(shape);
            }
            old.push(key);
        }
        for entry in self.tree.scan_prefix([OLD_SHAPE]) {
            old.push(entry.map_err(StoreError::sled)?.0);
        }
        if old.is_empty() {
            return Ok(());
        }
        for shape in &shapes {
            self.apply(&shape_key(shape), Some(&[]))?;
        }
        self.sync()?;
        for key in &old {
            self.apply(key, None)?;
        }
        self.sync()?;
        tracing::info!(
            shapes = shapes.len(),
            "moved expectations to the per-rule shape layout"
        );
        Ok(())
    }

    /// The shape of an old expectation entry (source, type, n, (name, value)×n, rule, timer
    /// name), from its timer; `None` when the timer is gone.
    fn old_expectation_shape(&self, key: &[u8]) -> Result<Option<ExpectShape>, StoreError> {
        let bad = || corrupt("expectation", "bad key");
        let mut fields = Fields::new(key);
        let source = fields.string().ok_or_else(bad)?;
        let kind = fields.string().ok_or_else(bad)?;
        let n = fields.u32().ok_or_else(bad)?;
        let mut names = Vec::new();
        for _ in 0..n {
            names.push(fields.string().ok_or_else(bad)?);
            fields.string().ok_or_else(bad)?;
        }
        let rule = fields.string().ok_or_else(bad)?;
        let name = fields.string().ok_or_else(bad)?;
        Ok(self.timer(&rule, &name)?.map(|timer| ExpectShape {
            source,
            kind,
            names,
            rule,
            callback: timer.callback,
        }))
    }

    fn apply(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        match value {
            Some(v) => self.tree.insert(key, v).map(drop),
            None => self.tree.remove(key).map(drop),
        }
        .map_err(StoreError::sled)
    }

    /// Makes every write so far durable: flush, and `fdatasync` when the store is configured so.
    pub fn sync(&self) -> Result<(), StoreError> {
        sync(&self.db, &self.shared)
    }

    /// Waits until every commit is applied, makes it durable, and stops the applier thread.
    pub(crate) fn close(&self) {
        if let Some(applier) = lock(&self.applier).take() {
            drop(applier.jobs);
            if applier.thread.join().is_err() {
                tracing::error!("the engine state thread panicked");
            }
        }
    }

    /// A value, as committed (applied or not).
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let staged = lock(&self.shared.overlay)
            .get(key)
            .map(|(_, slot)| slot.clone());
        if let Some(slot) = staged {
            return Ok(slot.encode()?.map(Cow::into_owned));
        }
        // Applied values leave the overlay only after they are in the tree.
        Ok(self
            .tree
            .get(key)
            .map_err(StoreError::sled)?
            .map(|v| v.to_vec()))
    }

    /// The entries whose keys start with `prefix` and are below `end` (when given), as
    /// committed, in key order, at most `limit`.
    pub(crate) fn scan(
        &self,
        prefix: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let in_range = |k: &[u8]| k.starts_with(prefix) && end.is_none_or(|e| k < e);
        // The overlay first: an entry applied meanwhile is then in both, with the same value.
        let pending: Vec<(Vec<u8>, Slot)> = lock(&self.shared.overlay)
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| in_range(k))
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        let mut merged = BTreeMap::new();
        for entry in self.tree.scan_prefix(prefix) {
            let (k, v) = entry.map_err(StoreError::sled)?;
            if !in_range(&k) {
                break;
            }
            merged.insert(k.to_vec(), v.to_vec());
            if merged.len() >= limit.saturating_add(pending.len()) {
                break;
            }
        }
        for (k, v) in pending {
            match v.encode()? {
                Some(v) => merged.insert(k, v.into_owned()),
                None => merged.remove(&k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
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
        end.extend_from_slice(&codec::time_key(until_ms));
        end.push(0xff);
        let mut timers = Vec::new();
        for (key, _) in self.scan(&[DUE], Some(&end), limit)? {
            let due = key
                .get(1..9)
                .and_then(read_u64)
                .map(|raw| (raw ^ (1 << 63)) as i64);
            let mut fields = Fields::new(key.get(9..).unwrap_or_default());
            let (Some(due), Some(rule), Some(name)) = (due, fields.string(), fields.string())
            else {
                return Err(corrupt("due timer", "bad key"));
            };
            match self.timer(&rule, &name)? {
                Some(timer) if timer.due_ms == due => timers.push(timer),
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
                        self.tree.remove(&key).map_err(StoreError::sled)?;
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
                let raw = key
                    .get(1..9)
                    .and_then(read_u64)
                    .ok_or_else(|| corrupt("due timer", "bad key"))?;
                Ok(Some((raw ^ (1 << 63)) as i64))
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
    pub fn outbox(&self, limit: usize) -> Result<Vec<ActionRequest>, StoreError> {
        Ok(self
            .pending_actions(limit)?
            .into_iter()
            .map(|item| item.action)
            .collect())
    }

    /// Notified with the durable cursor each time it moves ([`EngineState::durable_cursor`]).
    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable_tx.subscribe()
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
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
        let commit = self.commits.fetch_add(1, Ordering::Relaxed);
        {
            let mut overlay = lock(&self.shared.overlay);
            for (key, slot) in &staged {
                overlay.insert(key.clone(), (commit, slot.clone()));
            }
        }
        let sent = lock(&self.applier)
            .as_ref()
            .map(|a| a.jobs.send((commit, staged)).is_ok());
        if sent != Some(true) {
            return Err(StoreError::Closed);
        }
        Ok(())
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

    /// Waits until every commit made so far is durable.
    pub fn wait_durable(&self, timeout: std::time::Duration) -> bool {
        let target = self.commits.load(Ordering::Acquire).saturating_sub(1);
        let deadline = std::time::Instant::now() + timeout;
        while self.shared.durable_commit.load(Ordering::Acquire) < target {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        true
    }

    fn get_record<T: Record>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        let staged = lock(&self.shared.overlay)
            .get(key)
            .map(|(_, slot)| slot.clone());
        match staged {
            Some(Slot::Removed) => return Ok(None),
            Some(slot) => {
                if let Some(record) = T::from_slot(&slot) {
                    return Ok(Some(record));
                }
            }
            None => {}
        }
        match self.get(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|err| corrupt(&format!("{key:?}"), &err.to_string())),
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn sync(db: &sled::Db, shared: &Shared) -> Result<(), StoreError> {
    let mut file = lock(&shared.sync);
    db.flush().map_err(StoreError::sled)?;
    if let Some(file) = file.as_mut() {
        file.sync().map_err(StoreError::Engine)?;
    }
    Ok(())
}

/// The applier thread: applies committed writes to the tree in commit order, takes them out of
/// the overlay, and once they are durable removes the journal records that covered them.
fn apply_loop(
    db: &sled::Db,
    tree: &sled::Tree,
    shared: &Shared,
    jobs: &mpsc::Receiver<(u64, Staged)>,
) {
    let mut applied = 0;
    let mut applied_cursor = 0;
    let mut journaled: Vec<u64> = Vec::new();
    loop {
        // Block for the next job, then take whatever else is queued: one flush for them all.
        let mut batch = match jobs.recv() {
            Ok(job) => vec![job],
            Err(_) => Vec::new(),
        };
        let closing = batch.is_empty();
        batch.extend(jobs.try_iter());
        for (commit, staged) in &batch {
            let written = encode_writes(staged).and_then(|writes| {
                write_journal(tree, *commit, &writes)?;
                for (key, value) in &writes {
                    match value {
                        Some(v) => tree.insert(key, v.as_ref()).map(drop),
                        None => tree.remove(key).map(drop),
                    }
                    .map_err(StoreError::sled)?;
                }
                Ok(())
            });
            if let Err(err) = written {
                fail(shared, &format!("applying engine state: {err}"));
                return;
            }
            let mut overlay = lock(&shared.overlay);
            for (key, _) in staged {
                if overlay.get(key).is_some_and(|(c, _)| c == commit) {
                    overlay.remove(key);
                }
            }
            drop(overlay);
            applied = *commit;
            if let Some((_, Slot::Bytes(cursor))) = staged.last() {
                applied_cursor = read_u64(cursor).unwrap_or(applied_cursor);
            }
            journaled.push(*commit);
        }
        if !journaled.is_empty() {
            if let Err(err) = sync(db, shared) {
                fail(shared, &err.to_string());
                return;
            }
            shared.durable_commit.store(applied, Ordering::Release);
            shared
                .durable_cursor
                .store(applied_cursor, Ordering::Release);
            shared.durable_tx.send_replace(applied_cursor);
            // Durable: the journals of these commits are no longer needed.
            let keys = tree
                .range(journal_key(0, 0)..=journal_key(applied, MARKER))
                .keys()
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::sled)
                .and_then(|keys| remove_journal(tree, keys.into_iter()));
            if let Err(err) = keys {
                fail(shared, &format!("removing engine journal: {err}"));
                return;
            }
            journaled.clear();
        }
        if closing {
            if let Err(err) = sync(db, shared) {
                fail(shared, &err.to_string());
            }
            return;
        }
    }
}

/// A staged commit's writes, encoded.
fn encode_writes(staged: &Staged) -> Result<Writes<'_>, StoreError> {
    staged
        .iter()
        .map(|(key, slot)| Ok((key.as_slice(), slot.encode()?)))
        .collect()
}

/// Writes a commit's journal: its writes in chunks of about 32 KiB (sled writes a page over a
/// quarter of a segment to a file of its own, which one large record per commit would do every
/// time), then the marker.
fn write_journal(tree: &sled::Tree, commit: u64, writes: &Writes<'_>) -> Result<(), StoreError> {
    let mut n = 0u32;
    let mut start = 0;
    while start < writes.len() {
        let mut end = start;
        let mut size = 0;
        while end < writes.len() && (end == start || size < JOURNAL_CHUNK) {
            let (k, v) = &writes[end];
            size += 9 + k.len() + v.as_ref().map_or(0, |v| v.len());
            end += 1;
        }
        tree.insert(journal_key(commit, n), encode_journal(&writes[start..end]))
            .map_err(StoreError::sled)?;
        n += 1;
        start = end;
    }
    tree.insert(journal_key(commit, MARKER), &n.to_be_bytes())
        .map_err(StoreError::sled)?;
    Ok(())
}

/// Removes journal records, each commit's marker before its chunks: a crash in between leaves
/// chunks without a marker (dropped at open), never a marker without its chunks.
fn remove_journal(
    tree: &sled::Tree,
    keys: impl Iterator<Item = sled::IVec>,
) -> Result<(), StoreError> {
    let (markers, chunks): (Vec<_>, Vec<_>) =
        keys.partition(|key| journal_key_parts(key).is_some_and(|(_, chunk)| chunk == MARKER));
    for key in markers.into_iter().chain(chunks) {
        tree.remove(key).map_err(StoreError::sled)?;
    }
    Ok(())
}

fn fail(shared: &Shared, reason: &str) {
    tracing::error!(reason, "the engine state store failed");
    *lock(&shared.failure) = Some(reason.to_owned());
}

pub(crate) fn corrupt(key: &str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|err| corrupt("engine record", &err.to_string()))
}

fn stage_change(change: Change, staged: &mut Staged) {
    match change {
        Change::PutState { rule, key, value } => {
            staged.push((state_key(&rule, &key), Slot::State(Arc::new(value))));
        }
        Change::DeleteState { rule, key } => staged.push((state_key(&rule, &key), Slot::Removed)),
        Change::PutTimer(timer) => {
            staged.push((due_key(&timer), Slot::Bytes(Vec::new())));
            staged.push((
                timer_key(&timer.rule, &timer.name),
                Slot::Timer(Arc::new(timer)),
            ));
        }
        Change::DeleteTimer(timer) => {
            staged.push((timer_key(&timer.rule, &timer.name), Slot::Removed));
            staged.push((due_key(&timer), Slot::Removed));
        }
        Change::PutAction(action) => {
            staged.push((
                crate::outbox::outbox_key(&action),
                Slot::Action(Arc::new(action)),
            ));
        }
        Change::PutShape(shape) => staged.push((shape_key(&shape), Slot::Bytes(Vec::new()))),
        Change::CronMark { rule, tick_ms } => {
            let mut key = vec![CRON];
            push_str(&mut key, &rule);
            staged.push((key, Slot::Bytes((tick_ms as u64).to_be_bytes().to_vec())));
        }
    }
}

fn state_key(rule: &str, key: &str) -> Vec<u8> {
    let mut out = vec![STATE];
    push_str(&mut out, rule);
    push_str(&mut out, key);
    out
}

fn timer_key(rule: &str, name: &str) -> Vec<u8> {
    let mut out = vec![TIMER];
    push_str(&mut out, rule);
    push_str(&mut out, name);
    out
}

fn due_key(timer: &Timer) -> Vec<u8> {
    let mut out = vec![DUE];
    out.extend_from_slice(&codec::time_key(timer.due_ms));
    push_str(&mut out, &timer.rule);
    push_str(&mut out, &timer.name);
    out
}

fn shape_key(shape: &ExpectShape) -> Vec<u8> {
    let mut out = vec![SHAPE];
    push_str(&mut out, &shape.source);
    push_str(&mut out, &shape.kind);
    out.extend_from_slice(&(shape.names.len() as u32).to_be_bytes());
    for name in &shape.names {
        push_str(&mut out, name);
    }
    push_str(&mut out, &shape.rule);
    push_str(&mut out, &shape.callback);
    out
}

/// A shape key without its prefix byte.
fn parse_shape(key: &[u8]) -> Option<ExpectShape> {
    let mut fields = Fields::new(key);
    let source = fields.string()?;
    let kind = fields.string()?;
    let n = fields.u32()?;
    let names = (0..n).map(|_| fields.string()).collect::<Option<_>>()?;
    Some(ExpectShape {
        source,
        kind,
        names,
        rule: fields.string()?,
        callback: fields.string()?,
    })
}

pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads length-prefixed fields back.
struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Fields<'a> {
        Fields { bytes }
    }

    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.bytes.split_at_checked(4)?;
        self.bytes = rest;
        Some(u32::from_be_bytes(head.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        let (head, rest) = self.bytes.split_at_checked(len)?;
        self.bytes = rest;
        String::from_utf8(head.to_vec()).ok()
    }
}

/// `[n: u32]([key len: u32][key][0 | 1 (value len: u32)(value)])*`
fn encode_journal(writes: &[Write<'_>]) -> Vec<u8> {
    let size: usize = writes
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, |v| v.len()))
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(writes.len() as u32).to_be_bytes());
    for (key, value) in writes {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
    }
    out
}

type JournalEntry<'a> = (&'a [u8], Option<&'a [u8]>);

fn decode_journal(bytes: &[u8]) -> Option<Vec<JournalEntry<'_>>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    fn len(bytes: &mut &[u8]) -> Option<usize> {
        usize::try_from(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?)).ok()
    }
    let mut bytes = bytes;
    let n = len(&mut bytes)?;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let key_len = len(&mut bytes)?;
        let key = take(&mut bytes, key_len)?;
        let value = match take(&mut bytes, 1)? {
            [0] => None,
            _ => {
                let value_len = len(&mut bytes)?;
                Some(take(&mut bytes, value_len)?)
            }
        };
        out.push((key, value));
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    pub(crate) fn open(path: &Path) -> EngineState {
        // A store closed in this process lets go of its lock shortly after (sled's own thread).
        let db = crate::open_db(path, 16 << 20).unwrap();
        EngineState::open(db, path, false).unwrap()
    }

    fn put(rule: &str, key: &str, v: i64) -> Change {
        Change::PutState {
            rule: rule.to_owned(),
            key: key.to_owned(),
            value: StateValue {
                value: serde_json::Value::from(v),
                expires_ms: None,
            },
        }
    }

    fn value(state: &EngineState, key: &str) -> Option<serde_json::Value> {
        state.state("r", key).unwrap().map(|v| v.value)
    }

    #[test]
    fn a_commit_interrupted_after_its_journal_record_is_completed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine");
        {
            let state = open(&path);
            state.commit(vec![put("r", "a", 1)], 10).unwrap();
            // A crash after the journal record and the first of the batch's writes.
            let mut staged = Vec::new();
            for change in [put("r", "a", 2), put("r", "b", 2)] {
                stage_change(change, &mut staged);
            }
            staged.push((
                CURSOR_KEY.to_vec(),
                Slot::Bytes(20u64.to_be_bytes().to_vec()),
            ));
            let writes = encode_writes(&staged).unwrap();
            state
                .tree
                .insert(journal_key(99, 0), encode_journal(&writes[..1]))
                .unwrap();
            state
                .tree
                .insert(journal_key(99, 1), encode_journal(&writes[1..]))
                .unwrap();
            state
                .tree
                .insert(journal_key(99, MARKER), &2u32.to_be_bytes())
                .unwrap();
            // And a later commit that crashed before its marker: dropped, not applied.
            let mut later = Vec::new();
            stage_change(put("r", "c", 3), &mut later);
            state
                .tree
                .insert(
                    journal_key(100, 0),
                    encode_journal(&encode_writes(&later).unwrap()),
                )
                .unwrap();
            let (k, v) = &writes[0];
            state.apply(k, v.as_deref()).unwrap();
            state.close();
        }
        let state = open(&path);
        assert_eq!(state.cursor().unwrap(), 20);
        assert_eq!(value(&state, "a"), Some(2.into()));
        assert_eq!(value(&state, "b"), Some(2.into()));
        assert_eq!(value(&state, "c"), None);
        assert_eq!(state.tree.scan_prefix([JOURNAL]).count(), 0);
    }

    fn shape() -> ExpectShape {
        ExpectShape {
            source: "mailjet".to_owned(),
            kind: "open".to_owned(),
            names: vec!["MessageID".to_owned()],
            rule: "r".to_owned(),
            callback: "f".to_owned(),
        }
    }

    fn expect_timer(name: &str, due_ms: i64, keys: Option<&str>) -> Timer {
        Timer {
            rule: "r".to_owned(),
            name: name.to_owned(),
            uid: format!("r/{name}/1.1"),
            due_ms,
            callback: "f".to_owned(),
            data: serde_json::Value::Null,
            origin_seq: 1,
            expect: keys.map(|k| Expectation {
                source: "mailjet".to_owned(),
                kind: "open".to_owned(),
                keys: vec![("MessageID".to_owned(), k.to_owned())],
                from_ms: 0,
                to_ms: due_ms,
            }),
        }
    }

    #[test]
    fn timers_are_found_by_due_time_and_by_name_and_deleted_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(&dir.path().join("engine"));
        let name = expectation_name("mailjet", "open", &[("MessageID", "42")], "f");
        assert_eq!(name, r#"expect:mailjet.open:[["MessageID","42"]]:f"#);
        let early = expect_timer("early", -5, None);
        let late = expect_timer(&name, 500, Some("42"));
        state
            .commit(
                vec![
                    Change::PutTimer(late.clone()),
                    Change::PutTimer(early.clone()),
                    Change::PutShape(shape()),
                ],
                1,
            )
            .unwrap();
        assert_eq!(state.next_due().unwrap(), Some(-5));
        assert_eq!(
            state.due_timers(0, 10).unwrap(),
            std::slice::from_ref(&early)
        );
        assert_eq!(state.due_timers(500, 10).unwrap(), [early, late.clone()]);
        assert_eq!(state.timer("r", &name).unwrap(), Some(late.clone()));
        assert_eq!(state.expectation_shapes().unwrap(), [shape()]);
        state.commit(vec![Change::DeleteTimer(late)], 2).unwrap();
        assert_eq!(state.timer("r", &name).unwrap(), None);
        assert_eq!(state.due_timers(1000, 10).unwrap().len(), 1);
        assert_eq!(state.scan(&[DUE], None, 10).unwrap().len(), 1);
        // Set again for later without deleting it: its old entry by due time is dropped when
        // it comes up, and the timer is due at its new time only.
        let moved = Timer {
            due_ms: 700,
            ..expect_timer("early", -5, None)
        };
        state
            .commit(vec![Change::PutTimer(moved.clone())], 3)
            .unwrap();
        assert!(state.wait_durable(std::time::Duration::from_secs(10)));
        assert_eq!(state.due_timers(0, 10).unwrap(), []);
        assert_eq!(state.scan(&[DUE], None, 10).unwrap().len(), 1);
        assert_eq!(state.due_timers(700, 10).unwrap(), [moved]);
    }

    #[test]
    fn expectations_of_the_old_layout_become_shapes_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine");
        let name = expectation_name("mailjet", "open", &[("MessageID", "42")], "f");
        let timer = expect_timer(&name, 500, Some("42"));
        {
            let state = open(&path);
            state
                .commit(vec![Change::PutTimer(timer.clone())], 1)
                .unwrap();
            state.close();
            // What the old layout wrote besides the timer: its expectation entry and shape.
            let mut x = vec![OLD_EXPECT];
            push_str(&mut x, "mailjet");
            push_str(&mut x, "open");
            x.extend_from_slice(&1u32.to_be_bytes());
            push_str(&mut x, "MessageID");
            push_str(&mut x, "42");
            push_str(&mut x, "r");
            push_str(&mut x, &name);
            let mut y = vec![OLD_SHAPE];
            push_str(&mut y, "mailjet");
            push_str(&mut y, "open");
            y.extend_from_slice(&1u32.to_be_bytes());
            push_str(&mut y, "MessageID");
            state.tree.insert(x, &[]).unwrap();
            state.tree.insert(y, &[]).unwrap();
            state.sync().unwrap();
        }
        let state = open(&path);
        assert_eq!(state.expectation_shapes().unwrap(), [shape()]);
        assert_eq!(state.timer("r", &name).unwrap(), Some(timer));
        assert_eq!(state.tree.scan_prefix([OLD_EXPECT]).count(), 0);
        assert_eq!(state.tree.scan_prefix([OLD_SHAPE]).count(), 0);
    }
}
