//! Traces: why each rule did what it did, for `gancho explain`. One record per committed
//! batch that woke a rule (`T` + the seq of the batch's first event), holding each run: its
//! rule and event, its outcome (the actions decided, nothing, or the error), the window
//! queries it made with their answers, and the state and timers it set or cleared. Written
//! outside commits (diagnostics: a crash can lose the last batch's), pruned after
//! `[engine] trace_retention`.

use gancho_store::StoreError;
use gancho_store::keys::read_u64;
use serde::{Deserialize, Serialize};

use crate::EngineState;
use crate::schema::to_json;

const TRACES: u8 = b'T';

/// One window query of a run, and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryTrace {
    /// `count mailjet.sent MessageID=42 from … to …`
    pub query: String,
    /// How many events it found (for `first`/`last`/`exists`: at most 1).
    pub found: u64,
}

/// One rule's run on one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// The runs of one committed batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchTrace {
    /// The latest arrival among its events (ms): what retention goes by.
    pub received_ms: i64,
    pub runs: Vec<RunTrace>,
}

fn key(first_seq: u64) -> [u8; 9] {
    let mut key = [TRACES; 9];
    key[1..].copy_from_slice(&first_seq.to_be_bytes());
    key
}

impl EngineState {
    /// Stores the traces of a batch whose first event is `first_seq`.
    pub fn save_traces(&self, first_seq: u64, batch: &BatchTrace) -> Result<(), StoreError> {
        self.tree.insert(key(first_seq), to_json(batch)?)
    }

    /// The runs on the event `seq`, if traced.
    pub fn traces_of(&self, seq: u64) -> Result<Vec<RunTrace>, StoreError> {
        let found = self.tree.range(key(0)..=key(seq)).next_back().transpose()?;
        let Some((_, value)) = found else {
            return Ok(Vec::new());
        };
        let batch: BatchTrace = serde_json::from_slice(&value).unwrap_or_default();
        Ok(batch.runs.into_iter().filter(|r| r.seq == seq).collect())
    }

    /// Hands the traced runs to `f`, newest first, while it returns true.
    pub fn each_run_newest(&self, mut f: impl FnMut(RunTrace) -> bool) -> Result<(), StoreError> {
        for entry in self.tree.scan_prefix([TRACES]).rev() {
            let (_, value) = entry?;
            let Ok(batch) = serde_json::from_slice::<BatchTrace>(&value) else {
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
        for entry in self.tree.scan_prefix([TRACES]) {
            let (k, value) = entry?;
            let received =
                serde_json::from_slice::<BatchTrace>(&value).map_or(i64::MIN, |b| b.received_ms);
            if received >= before_ms {
                break;
            }
            if k.get(1..).and_then(read_u64).is_some() {
                self.tree.remove(&k)?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }
}
