//! The overlay: writes committed but not yet applied to the tree, by key, with the number of
//! the commit that made them. Every read looks here first, so a read sees every committed
//! change; a write leaves the overlay only after it is in the tree. Records are kept as they are
//! (not encoded) until the applier thread encodes them, so the engine thread neither encodes
//! what it commits nor decodes what it reads back.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use gancho_core::ActionRequest;
use gancho_store::StoreError;
use gancho_store::kv::Tree;

use crate::schema::{
    CRON, Change, StateValue, Timer, corrupt, due_key, outbox_key, push_str, shape_key, state_key,
    timer_key, to_json,
};

/// A committed value: bytes, or a record kept as it is until the applier thread encodes it,
/// so the engine thread neither encodes it nor, reading it back from the overlay, decodes it.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Removed,
    Bytes(Vec<u8>),
    Timer(Arc<Timer>),
    State(Arc<StateValue>),
    Action(Arc<ActionRequest>),
}

impl Slot {
    /// The bytes stored for it, `None` for a removal.
    pub(crate) fn encode(&self) -> Result<Option<Cow<'_, [u8]>>, StoreError> {
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
pub(crate) trait Record: serde::de::DeserializeOwned {
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
pub(crate) type Staged = Vec<(Vec<u8>, Slot)>;
/// A write, encoded: key, and value or removal.
pub(crate) type Write<'a> = (&'a [u8], Option<Cow<'a, [u8]>>);
/// A staged commit, encoded.
pub(crate) type Writes<'a> = Vec<Write<'a>>;
/// Key → (commit number, value or removal).
pub(crate) type Overlay = BTreeMap<Vec<u8>, (u64, Slot)>;
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// Takes a lock, whether or not another thread panicked holding it: every structure behind
/// these locks is left whole between statements.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn stage_change(change: Change, staged: &mut Staged) {
    match change {
        Change::PutState { rule, key, value } => {
            staged.push((state_key(&rule, &key), Slot::State(Arc::new(value))));
        }
        Change::DeleteState { rule, key } => staged.push((state_key(&rule, &key), Slot::Removed)),
        Change::PutTimer(timer) => {
            // An orphaned timer is not due: it has no entry by due time.
            if !timer.orphaned {
                staged.push((due_key(&timer), Slot::Bytes(Vec::new())));
            }
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
            staged.push((outbox_key(&action), Slot::Action(Arc::new(action))));
        }
        Change::PutShape(shape) => staged.push((shape_key(&shape), Slot::Bytes(Vec::new()))),
        Change::CronMark { rule, tick_ms } => {
            let mut key = vec![CRON];
            push_str(&mut key, &rule);
            staged.push((key, Slot::Bytes((tick_ms as u64).to_be_bytes().to_vec())));
        }
    }
}

/// A value, as committed (applied or not).
pub(crate) fn get(
    overlay: &Mutex<Overlay>,
    tree: &Tree,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    let staged = lock(overlay).get(key).map(|(_, slot)| slot.clone());
    if let Some(slot) = staged {
        return Ok(slot.encode()?.map(Cow::into_owned));
    }
    // Applied values leave the overlay only after they are in the tree.
    Ok(tree.get(key)?.map(|v| v.to_vec()))
}

/// The entries whose keys start with `prefix` and are below `end` (when given), as
/// committed, in key order, at most `limit`.
pub(crate) fn scan(
    overlay: &Mutex<Overlay>,
    tree: &Tree,
    prefix: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let in_range = |k: &[u8]| k.starts_with(prefix) && end.is_none_or(|e| k < e);
    // The overlay first: an entry applied meanwhile is then in both, with the same value.
    let pending: Vec<(Vec<u8>, Slot)> = lock(overlay)
        .range(prefix.to_vec()..)
        .take_while(|(k, _)| in_range(k))
        .map(|(k, (_, v))| (k.clone(), v.clone()))
        .collect();
    let mut merged = BTreeMap::new();
    for entry in tree.scan_prefix(prefix) {
        let (k, v) = entry?;
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

pub(crate) fn get_record<T: Record>(
    overlay: &Mutex<Overlay>,
    tree: &Tree,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    let staged = lock(overlay).get(key).map(|(_, slot)| slot.clone());
    match staged {
        Some(Slot::Removed) => return Ok(None),
        Some(slot) => {
            if let Some(record) = T::from_slot(&slot) {
                return Ok(Some(record));
            }
        }
        None => {}
    }
    match get(overlay, tree, key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|err| corrupt(&format!("{key:?}"), &err.to_string())),
    }
}
