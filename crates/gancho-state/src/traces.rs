//! Traces: why each rule did what it did, for `gancho explain`. One record per committed
//! batch that woke a rule (`T` + the seq of the batch's first event), holding each run: its
//! rule and event, its outcome (the actions decided, nothing, or the error), the window
//! queries it made with their answers, and the state and timers it set or cleared. Written
//! outside commits (diagnostics: a crash can lose the last batch's), pruned after
//! `[engine] trace_retention`. The runs `gancho rerun` makes are kept apart, one record per
//! event (`R` + its seq), and shown with the event's. The same database holds the delivery
//! history (`sent.rs`).

use gancho_store::StoreError;
use gancho_store::keys::read_u64;
use serde::{Deserialize, Serialize};

use crate::EngineState;
use crate::schema::to_json;

const TRACES: u8 = b'T';
/// The runs of `gancho rerun` on one event (`R` + its seq): kept apart from its batch's.
const RERUNS: u8 = b'R';
/// One window query of a run, and its answer. Kept as parts (formatted only when shown: a
/// run may make many, and the engine records them all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryTrace {
    /// `count`, `exists`, `first`, `last` or `events`.
    pub call: String,
    /// `source.type`.
    #[serde(rename = "type")]
    pub kind: String,
    pub keys: Vec<(String, String)>,
    /// The window, event time (ms).
    pub from_ms: i64,
    pub to_ms: i64,
    /// How many events it found (for `first`/`last`/`exists`: at most 1).
    pub found: u64,
}

/// One rule's run on one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTrace {
    pub seq: u64,
    pub rule: String,
    /// The run's error (file, line, event), if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The ids of the actions it decided.
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub queries: Vec<QueryTrace>,
    /// State and timers it set or cleared (`set state K`, `set timer N due T`, …).
    #[serde(default)]
    pub changes: Vec<String>,
    /// A run of `gancho rerun` (the event failed this rule before), not the event's first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rerun: bool,
    /// For a timer's or expectation's callback that failed: the timer, used up when it
    /// fired, so that `gancho rerun` can call the function again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<crate::Timer>,
}

/// The runs of one committed batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchTrace {
    /// The latest arrival among its events (ms): what retention goes by.
    pub received_ms: i64,
    pub runs: Vec<RunTrace>,
}

/// A record's format: LZ4 of the batch's JSON (traces repeat rule names, types and keys:
/// about a tenth of the JSON's bytes).
const TRACE_LZ4: u8 = 1;

fn encode(batch: &BatchTrace) -> Result<Vec<u8>, StoreError> {
    let json = to_json(batch)?;
    let mut out = vec![TRACE_LZ4];
    out.extend_from_slice(&lz4_flex::block::compress_prepend_size(&json));
    Ok(out)
}

fn decode(bytes: &[u8]) -> Option<BatchTrace> {
    match bytes.split_first() {
        Some((&TRACE_LZ4, rest)) => {
            let json = lz4_flex::block::decompress_size_prepended(rest).ok()?;
            serde_json::from_slice(&json).ok()
        }
        _ => None,
    }
}

fn key(first_seq: u64) -> [u8; 9] {
    prefixed(TRACES, first_seq)
}

fn prefixed(prefix: u8, seq: u64) -> [u8; 9] {
    let mut key = [prefix; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

impl EngineState {
    /// Stores the traces of a batch whose first event is `first_seq`.
    pub fn save_traces(&self, first_seq: u64, batch: &BatchTrace) -> Result<(), StoreError> {
        self.traces.insert(key(first_seq), encode(batch)?)
    }

    /// The runs on the event `seq`, if traced.
    pub fn traces_of(&self, seq: u64) -> Result<Vec<RunTrace>, StoreError> {
        let found = self
            .traces
            .range(key(0)..=key(seq))
            .next_back()
            .transpose()?;
        let mut runs: Vec<RunTrace> = match found {
            Some((_, value)) => decode(&value)
                .unwrap_or_default()
                .runs
                .into_iter()
                .filter(|r| r.seq == seq)
                .collect(),
            None => Vec::new(),
        };
        if let Some(value) = self.traces.get(prefixed(RERUNS, seq))? {
            runs.extend(decode(&value).unwrap_or_default().runs);
        }
        Ok(runs)
    }

    /// Adds the runs `gancho rerun` made on the event `seq` (all of the same event), arrived
    /// at `received_ms`, to its traces.
    pub fn save_reruns(
        &self,
        seq: u64,
        received_ms: i64,
        runs: Vec<RunTrace>,
    ) -> Result<(), StoreError> {
        let key = prefixed(RERUNS, seq);
        let mut batch = match self.traces.get(key)? {
            Some(value) => decode(&value).unwrap_or_default(),
            None => BatchTrace::default(),
        };
        batch.received_ms = batch.received_ms.max(received_ms);
        batch.runs.extend(runs);
        self.traces.insert(key, encode(&batch)?)
    }

    /// The events a rule's traced runs failed on, oldest first, among the batches with an
    /// event that arrived at or after `since_ms`; not those it has run on since without
    /// failing (re-run, or a later run of the same event).
    pub fn failed_runs(&self, rule: &str, since_ms: i64) -> Result<Vec<u64>, StoreError> {
        let mut failed = std::collections::BTreeSet::new();
        let mut fine = std::collections::HashSet::new();
        let mut note = |batch: BatchTrace| {
            for run in batch.runs.into_iter().filter(|r| r.rule == rule) {
                if run.error.is_some() {
                    failed.insert(run.seq);
                } else {
                    fine.insert(run.seq);
                }
            }
        };
        for entry in self.traces.scan_prefix([TRACES]).rev() {
            let (_, value) = entry?;
            let Some(batch) = decode(&value) else {
                continue;
            };
            if batch.received_ms < since_ms {
                break;
            }
            note(batch);
        }
        for entry in self.traces.scan_prefix([RERUNS]) {
            let (_, value) = entry?;
            if let Some(batch) = decode(&value) {
                note(batch);
            }
        }
        Ok(failed.into_iter().filter(|s| !fine.contains(s)).collect())
    }

    /// Hands the traced runs to `f`, newest first, while it returns true.
    pub fn each_run_newest(&self, mut f: impl FnMut(RunTrace) -> bool) -> Result<(), StoreError> {
        for entry in self.traces.scan_prefix([TRACES]).rev() {
            let (_, value) = entry?;
            let Some(batch) = decode(&value) else {
                continue;
            };
            for run in batch.runs.into_iter().rev() {
                if !f(run) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Deletes the traces of batches whose events all arrived before `before_ms`, oldest
    /// first. Returns how many batches went.
    pub fn prune_traces(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut pruned = 0;
        for entry in self.traces.scan_prefix([TRACES]) {
            let (k, value) = entry?;
            let received = decode(&value).map_or(i64::MIN, |b| b.received_ms);
            if received >= before_ms {
                break;
            }
            if k.get(1..).and_then(read_u64).is_some() {
                self.traces.remove(&k)?;
                pruned += 1;
            }
        }
        for entry in self.traces.scan_prefix([RERUNS]) {
            let (k, value) = entry?;
            if decode(&value).is_none_or(|b| b.received_ms < before_ms) {
                self.traces.remove(&k)?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }
}
