//! Operators' changes to what the running engine keeps (`gancho state --clear`, `gancho
//! timers discard`, `gancho rerun`), handed to the engine rather than written beside it: the engine reads
//! them at its next step and stages them into the batch it commits, so they are atomic with
//! its decisions and never undone by a value it was about to write. A request is removed once
//! the commit that carried it is done (applying one twice is harmless).
//!
//! | key          | value                    |
//! |--------------|--------------------------|
//! | `K` id u64   | [`OperatorOp`], JSON     |

use gancho_store::StoreError;
use gancho_store::keys::read_u64;
use serde::{Deserialize, Serialize};

use crate::EngineState;
use crate::schema::{corrupt, to_json};

const OPS: u8 = b'K';

/// A change an operator asks of the running engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorOp {
    /// Clear a rule's state: `key`, or all of it.
    ClearState { rule: String, key: Option<String> },
    /// Give up an orphaned timer or expectation (`name` as `gancho timers` shows it).
    DiscardOrphan { rule: String, name: String },
    /// Run the current version of `rule` once on each event it failed on, among those
    /// traced since `since_ms` (`gancho rerun --rule NAME --failed`). Each re-run leaves a
    /// mark in the rule's state (`rerun:SEQ`), committed with its decisions: an event is
    /// re-run at most once.
    Rerun { rule: String, since_ms: i64 },
}

fn op_key(id: u64) -> [u8; 9] {
    let mut key = [OPS; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

impl EngineState {
    /// Hands a change to the running engine; returns its id.
    pub fn request_op(&self, op: &OperatorOp) -> Result<u64, StoreError> {
        let mut bytes = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| corrupt("operator request", "no random id"))?;
        let id = u64::from_be_bytes(bytes);
        self.tree.insert(op_key(id), to_json(op)?)?;
        self.db.flush()?;
        Ok(id)
    }

    /// The requests waiting for the engine.
    pub fn pending_ops(&self) -> Result<Vec<(u64, OperatorOp)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix([OPS]) {
            let (key, value) = entry?;
            let Some(id) = key.get(1..).and_then(read_u64) else {
                continue;
            };
            match serde_json::from_slice(&value) {
                Ok(op) => out.push((id, op)),
                Err(err) => {
                    tracing::warn!(id, error = %err, "an unreadable operator request is dropped");
                    self.tree.remove(op_key(id))?;
                }
            }
        }
        Ok(out)
    }

    /// A request is carried out (its commit is done).
    pub fn op_done(&self, id: u64) -> Result<(), StoreError> {
        self.tree.remove(op_key(id))?;
        Ok(())
    }

    /// Whether a request still waits for the engine.
    pub fn op_pending(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.tree.get(op_key(id))?.is_some())
    }
}
