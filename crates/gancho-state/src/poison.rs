//! Poison events: an event whose processing kills the engine (an abort, a stack overflow, a
//! panic that escapes) must not take the daemon down at every restart. What this database keeps
//! for it, written outside commits, with a flush (no `fdatasync`: what it guards against is the
//! death of the process, not of the machine):
//!
//! | key         | value                                        | written                        |
//! |-------------|----------------------------------------------|--------------------------------|
//! | `Mlife`     | empty: the engine is running                 | at start; removed at a clean stop |
//! | `Mbatch`    | first, last seq of the batch being processed | before each batch              |
//! | `Mrun`      | seq, rule: the run in progress               | before each run in careful mode, removed after it |
//! | `Msuspect`  | seq, rule, crashes: the run that died        | at start, from `Mrun`          |
//! | `X` seq rule | [`Poisoned`], JSON                          | when a run is set aside        |
//!
//! A start that finds `Mlife` follows an unclean exit: the engine processes the events of the
//! last batch begun (`Mbatch`) in *careful mode*, recording each run before it starts. A start
//! that finds `Mrun` knows which run died, and counts it; a run that has died twice in careful
//! mode (three times in all, with the unattributed first) is set aside and not run again.

use gancho_store::StoreError;
use gancho_store::keys::{push_str, read_u64};
use serde::{Deserialize, Serialize};

use crate::EngineState;
use crate::schema::{Fields, corrupt, to_json};

const LIFE_KEY: &[u8] = b"Mlife";
const BATCH_KEY: &[u8] = b"Mbatch";
const RUN_KEY: &[u8] = b"Mrun";
const SUSPECT_KEY: &[u8] = b"Msuspect";
/// Careful mode's marks of this process's runs: the node's, not the partition's (a snapshot
/// leaves them out).
pub(crate) const LOCAL_KEYS: &[&[u8]] = &[LIFE_KEY, BATCH_KEY, RUN_KEY, SUSPECT_KEY];
const POISONED: u8 = b'X';

/// Runs that died this often in careful mode are set aside (the first death, which started
/// careful mode, is not attributed to a run: three in all).
pub const CAREFUL_DEATHS: u32 = 2;

/// A run set aside: the engine died running `rule` on the event `seq` this many times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poisoned {
    pub seq: u64,
    pub rule: String,
    /// `source.type` of the event.
    #[serde(rename = "type")]
    pub kind: String,
    /// Times the engine died running it.
    pub deaths: u32,
    /// When it was set aside (wall clock, ms).
    pub set_aside_ms: i64,
}

/// What the engine's last life left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastLife {
    /// It ended without a clean stop.
    pub unclean: bool,
    /// After an unclean end: the last seq of the last batch it began; events up to it are
    /// processed in careful mode.
    pub careful_until: Option<u64>,
    /// The run that died in careful mode, and how many times it has.
    pub suspect: Option<(u64, String, u32)>,
}

fn seq_rule(seq: u64, rule: &str) -> Vec<u8> {
    let mut value = seq.to_be_bytes().to_vec();
    push_str(&mut value, rule);
    value
}

fn read_seq_rule(bytes: &[u8]) -> Option<(u64, String, Fields<'_>)> {
    let seq = read_u64(bytes.get(..8)?)?;
    let mut fields = Fields::new(bytes.get(8..)?);
    let rule = fields.string()?;
    Some((seq, rule, fields))
}

fn poisoned_key(seq: u64, rule: &str) -> Vec<u8> {
    let mut key = vec![POISONED];
    key.extend_from_slice(&seq_rule(seq, rule));
    key
}

impl EngineState {
    /// Starts a life of the engine: reads what the last one left (and attributes a death in
    /// careful mode to its run), then records that this one runs.
    pub fn begin_life(&self) -> Result<LastLife, StoreError> {
        let unclean = self.tree.get(LIFE_KEY)?.is_some();
        let mut last = LastLife {
            unclean,
            ..LastLife::default()
        };
        if unclean {
            last.careful_until = match self.tree.get(BATCH_KEY)? {
                Some(v) => Some(
                    v.get(8..16)
                        .and_then(read_u64)
                        .ok_or_else(|| corrupt("Mbatch", "not two u64"))?,
                ),
                None => None,
            };
        }
        let suspect = match self.tree.get(SUSPECT_KEY)? {
            Some(v) => {
                let (seq, rule, mut rest) =
                    read_seq_rule(&v).ok_or_else(|| corrupt("Msuspect", "bad value"))?;
                let deaths = rest.u32().ok_or_else(|| corrupt("Msuspect", "bad count"))?;
                Some((seq, rule, deaths))
            }
            None => None,
        };
        last.suspect = suspect;
        if let Some(run) = self.tree.get(RUN_KEY)? {
            let (seq, rule, _) = read_seq_rule(&run).ok_or_else(|| corrupt("Mrun", "bad value"))?;
            let deaths = match &last.suspect {
                Some((s, r, n)) if *s == seq && *r == rule => n + 1,
                _ => 1,
            };
            let mut value = seq_rule(seq, &rule);
            value.extend_from_slice(&deaths.to_be_bytes());
            self.tree.insert(SUSPECT_KEY, value)?;
            self.tree.remove(RUN_KEY)?;
            last.suspect = Some((seq, rule, deaths));
        }
        self.tree.insert(LIFE_KEY, Vec::new())?;
        self.db.flush()?;
        Ok(last)
    }

    /// Ends a life cleanly: the next start processes as usual.
    pub fn end_life(&self) -> Result<(), StoreError> {
        self.tree.remove(LIFE_KEY)?;
        self.db.flush()
    }

    /// Records the batch about to be processed.
    pub fn note_batch(&self, first: u64, last: u64) -> Result<(), StoreError> {
        let mut value = first.to_be_bytes().to_vec();
        value.extend_from_slice(&last.to_be_bytes());
        self.tree.insert(BATCH_KEY, value)?;
        self.db.flush()
    }

    /// Records, in careful mode, the run about to start.
    pub fn note_run(&self, seq: u64, rule: &str) -> Result<(), StoreError> {
        self.tree.insert(RUN_KEY, seq_rule(seq, rule))?;
        self.db.flush()
    }

    /// The careful run recorded last has ended (whatever its outcome): a death from here on
    /// is not its doing.
    pub fn end_run(&self) -> Result<(), StoreError> {
        self.tree.remove(RUN_KEY)?;
        self.db.flush()
    }

    /// Careful mode is over: no run is in progress or suspected.
    pub fn end_careful(&self) -> Result<(), StoreError> {
        self.tree.remove(RUN_KEY)?;
        self.tree.remove(SUSPECT_KEY)?;
        self.db.flush()
    }

    /// Sets a run aside for good.
    pub fn set_aside(&self, poisoned: &Poisoned) -> Result<(), StoreError> {
        self.tree.insert(
            poisoned_key(poisoned.seq, &poisoned.rule),
            to_json(poisoned)?,
        )?;
        self.tree.remove(RUN_KEY)?;
        self.db.flush()
    }

    /// Whether this run was set aside.
    pub fn is_set_aside(&self, seq: u64, rule: &str) -> Result<bool, StoreError> {
        Ok(self.tree.get(poisoned_key(seq, rule))?.is_some())
    }

    /// The runs set aside, oldest event first, at most `limit` (0: all).
    pub fn poisoned(&self, limit: usize) -> Result<Vec<Poisoned>, StoreError> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut out = Vec::new();
        for value in self.tree.scan_prefix([POISONED]).values().take(limit) {
            let value = value?;
            out.push(
                serde_json::from_slice(&value)
                    .map_err(|err| corrupt("poisoned", &err.to_string()))?,
            );
        }
        Ok(out)
    }
}
