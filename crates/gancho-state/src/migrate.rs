//! The engine database's format and its numbered migrations (the mechanism is
//! `gancho_store::format`). Each step runs once, when a store of the version before it is
//! opened, after the journal of an interrupted commit has been replayed.
//!
//! | version | layout                                                                        |
//! |---------|-------------------------------------------------------------------------------|
//! | 0       | before versions: outbox keys `O` + seq (no channel), one `X` entry per        |
//! |         | expectation and `Y` shapes without their rule                                 |
//! | 1       | `O` + channel byte + seq, expectation shapes `E` (see `schema.rs`)            |
//! | 2       | version 1's; the journal in a file (`journal.rs`), `Mapplied`; no `J` chunks  |

use std::collections::BTreeSet;

use gancho_core::ActionRequest;
use gancho_store::StoreError;
use gancho_store::format::{Format, Step};
use gancho_store::keys::read_u64;
use gancho_store::kv::Tree;

use crate::journal::decode_journal;

use crate::schema::{
    ExpectShape, Fields, OUTBOX, Timer, channel_byte_known, corrupt, outbox_key, shape_key,
    timer_key,
};

/// An entry per expectation in version 0: source, type, n, (name, value)×n, rule, timer name.
const OLD_EXPECT: u8 = b'X';
/// Shapes without their rule in version 0.
const OLD_SHAPE: u8 = b'Y';

pub(crate) const FORMAT: Format = Format {
    name: "engine",
    key: b"Mformat",
    current: 2,
    oldest: 0,
    steps: &[
        Step {
            what: "outbox keys by channel; expectations found by their shape",
            run: step_1,
        },
        Step {
            what: "the journal moves to a file: a commit a crash left journaled in the tree \
                   is completed, and the tree's journal removed",
            run: journal_out_of_the_tree,
        },
    ],
};

/// Version 1's journal: a commit's writes in chunks (`J` + commit u64 + chunk u32), then a
/// marker (chunk `u32::MAX`) holding the number of chunks.
const OLD_JOURNAL: u8 = b'J';
const OLD_MARKER: u32 = u32::MAX;

/// Version 1 to 2: completes the commits whose journal a crash left whole in the tree (their
/// marker is there), in order, drops chunks without a marker (their commit never began to
/// apply), then removes the journal, markers first. Idempotent. `EngineState::open` runs it
/// before every other step too: those expect whole commits.
pub(crate) fn journal_out_of_the_tree(tree: &Tree) -> Result<(), StoreError> {
    let records: Vec<_> = tree.scan_prefix([OLD_JOURNAL]).collect::<Result<_, _>>()?;
    let bad = |key: &[u8]| corrupt(&format!("journal record {key:?}"), "bad journal record");
    let parts = |key: &[u8]| -> Option<(u64, u32)> {
        let commit = read_u64(key.get(1..9)?)?;
        let chunk = u32::from_be_bytes(key.get(9..13)?.try_into().ok()?);
        Some((commit, chunk))
    };
    // Keys sort by commit number, then chunk, with the marker last.
    let mut chunks: Vec<&[u8]> = Vec::new();
    for (key, value) in &records {
        let (commit, chunk) = parts(key).ok_or_else(|| bad(key))?;
        if chunks.len() as u32 != chunk && chunk != OLD_MARKER {
            chunks.clear();
        }
        if chunk != OLD_MARKER {
            chunks.push(value);
            continue;
        }
        let n = value
            .as_ref()
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| bad(key))?;
        if chunks.len() as u32 == n {
            for chunk in &chunks {
                for (k, v) in decode_journal(chunk).ok_or_else(|| bad(key))? {
                    match v {
                        Some(v) => tree.insert(k, v)?,
                        None => tree.remove(k)?,
                    }
                }
            }
            tracing::info!(commit, "completed an engine commit a crash interrupted");
        }
        chunks.clear();
    }
    let (markers, chunks): (Vec<_>, Vec<_>) = records
        .into_iter()
        .map(|(key, _)| key)
        .partition(|key| parts(key).is_some_and(|(_, chunk)| chunk == OLD_MARKER));
    for key in markers.into_iter().chain(chunks) {
        tree.remove(key)?;
    }
    Ok(())
}

/// Version 0 to 1. Idempotent: a crash in it runs it again at the next open.
fn step_1(tree: &Tree) -> Result<(), StoreError> {
    outbox_by_channel(tree)?;
    expectations_by_shape(tree)
}

/// Version 0 kept outbox keys by event seq alone (`O`, seq, rule, position): each moves under
/// its channel. A key whose second byte is already a channel byte (from the channel table) is
/// in the new layout and stays: an old key's second byte is the top byte of a seq, 0 in
/// practice. This runs only on a version 0 store, so a channel added later can never be taken
/// for the old layout.
fn outbox_by_channel(tree: &Tree) -> Result<(), StoreError> {
    let mut moved = 0;
    for entry in tree.scan_prefix([OUTBOX]) {
        let (key, value) = entry?;
        if key.get(1).copied().is_some_and(channel_byte_known) {
            continue;
        }
        let action: ActionRequest = serde_json::from_slice(&value)
            .map_err(|err| corrupt("outbox item", &err.to_string()))?;
        let new_key = outbox_key(&action);
        if new_key.as_slice() == key.as_ref() {
            continue;
        }
        // The new key first: a crash in between leaves the item twice, and the step, run
        // again, moves the old one onto the same key.
        tree.insert(&new_key, value)?;
        tree.remove(&key)?;
        moved += 1;
    }
    if moved > 0 {
        tracing::info!(moved, "moved outbox items to the per-channel layout");
    }
    Ok(())
}

/// Version 0 kept an entry per expectation (`X`) and shapes without their rule (`Y`): each
/// `X` entry becomes its rule's shape (`E`), then the old entries go.
fn expectations_by_shape(tree: &Tree) -> Result<(), StoreError> {
    let mut old = Vec::new();
    let mut shapes = BTreeSet::new();
    for entry in tree.scan_prefix([OLD_EXPECT]) {
        let (key, _) = entry?;
        if let Some(shape) = old_expectation_shape(tree, &key[1..])? {
            shapes.insert(shape);
        }
        old.push(key);
    }
    for entry in tree.scan_prefix([OLD_SHAPE]) {
        old.push(entry?.0);
    }
    if old.is_empty() {
        return Ok(());
    }
    for shape in &shapes {
        tree.insert(shape_key(shape), &[][..])?;
    }
    tree.flush()?;
    for key in &old {
        tree.remove(key)?;
    }
    tracing::info!(
        shapes = shapes.len(),
        "moved expectations to the per-rule shape layout"
    );
    Ok(())
}

/// The shape of an old expectation entry (source, type, n, (name, value)×n, rule, timer
/// name), from its timer; `None` when the timer is gone.
fn old_expectation_shape(tree: &Tree, key: &[u8]) -> Result<Option<ExpectShape>, StoreError> {
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
    let timer: Option<Timer> = match tree.get(timer_key(&rule, &name))? {
        None => None,
        Some(v) => {
            Some(serde_json::from_slice(&v).map_err(|err| corrupt("timer", &err.to_string()))?)
        }
    };
    Ok(timer.map(|timer| ExpectShape {
        source,
        kind,
        names,
        rule,
        callback: timer.callback,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    //! Stores of version 0, written the way the earlier builds wrote them.

    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::schema::push_str;

    /// Writes an `X` entry and a `Y` shape of an expectation on `MessageID` = 42 of rule `r`
    /// whose timer is `name`.
    pub(crate) fn write_old_expectation(tree: &Tree, name: &str) {
        let mut x = vec![OLD_EXPECT];
        push_str(&mut x, "mailjet");
        push_str(&mut x, "open");
        x.extend_from_slice(&1u32.to_be_bytes());
        push_str(&mut x, "MessageID");
        push_str(&mut x, "42");
        push_str(&mut x, "r");
        push_str(&mut x, name);
        let mut y = vec![OLD_SHAPE];
        push_str(&mut y, "mailjet");
        push_str(&mut y, "open");
        y.extend_from_slice(&1u32.to_be_bytes());
        push_str(&mut y, "MessageID");
        tree.insert(x, &[][..]).unwrap();
        tree.insert(y, &[][..]).unwrap();
    }

    /// Writes an outbox item under its version 0 key (`O`, seq, rule, position).
    pub(crate) fn write_old_outbox_item(tree: &Tree, action: &ActionRequest) {
        let mut key = vec![OUTBOX];
        key.extend_from_slice(&action.event_seq.to_be_bytes());
        push_str(&mut key, &action.rule);
        key.extend_from_slice(&action.position.to_be_bytes());
        tree.insert(key, serde_json::to_vec(action).unwrap())
            .unwrap();
    }

    pub(crate) fn has_prefix(tree: &Tree, prefix: u8) -> bool {
        tree.scan_prefix([prefix]).next().is_some()
    }

    pub(crate) const OLD_PREFIXES: [u8; 2] = [OLD_EXPECT, OLD_SHAPE];
}
