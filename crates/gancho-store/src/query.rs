//! Listing events and quarantined items for operators.

use chrono::{DateTime, Utc};
use gancho_core::{Event, time_to_millis};

use crate::codec;
use crate::{Quarantined, StoreError};

/// Which events to list. With a source and a type the store answers from its indexes (by key
/// when a key is given); otherwise it walks the log from the newest event back.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub source: Option<String>,
    /// The event type in the source's words (`open`, not `mailjet.open`).
    pub kind: Option<String>,
    pub key: Option<KeyFilter>,
    /// Only events whose event time is at or after this.
    pub since: Option<DateTime<Utc>>,
    /// At most this many (the newest), 0 for no limit.
    pub limit: usize,
}

/// A correlation key that must be equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFilter {
    pub name: String,
    pub value: String,
}

pub(crate) fn run(tree: &sled::Tree, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
    let limit = if query.limit == 0 {
        usize::MAX
    } else {
        query.limit
    };
    let mut events = match (&query.source, &query.kind) {
        (Some(source), Some(kind)) => {
            let prefix = match &query.key {
                Some(key) => codec::key_prefix(source, kind, &key.name, &key.value),
                None => codec::type_prefix(source, kind),
            };
            by_index(tree, &prefix, query.since, limit)?
        }
        _ => by_log(tree, query, limit)?,
    };
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

/// Reads the newest `limit` entries of one index prefix at or after `since`.
fn by_index(
    tree: &sled::Tree,
    prefix: &[u8],
    since: Option<DateTime<Utc>>,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut start = prefix.to_vec();
    if let Some(since) = since {
        start.extend_from_slice(&codec::time_key(time_to_millis(since)));
    }
    let entries = match prefix_end(prefix) {
        Some(end) => tree.range(start..end),
        None => tree.range(start..),
    };
    let mut events = Vec::new();
    for entry in entries.rev().take(limit) {
        let (key, _) = entry.map_err(StoreError::sled)?;
        let seq = codec::seq_of_index_key(&key).ok_or_else(|| StoreError::Corrupt {
            key: format!("{key:?}"),
            reason: "index key without a sequence number".to_owned(),
        })?;
        let bytes = tree
            .get(codec::log_key(seq))
            .map_err(StoreError::sled)?
            .ok_or_else(|| StoreError::Corrupt {
                key: format!("L{seq}"),
                reason: "indexed event missing from the log".to_owned(),
            })?;
        events.push(codec::decode_event(&bytes)?);
    }
    Ok(events)
}

fn by_log(tree: &sled::Tree, query: &EventQuery, limit: usize) -> Result<Vec<Event>, StoreError> {
    let mut events = Vec::new();
    for entry in tree.scan_prefix([codec::LOG]).rev() {
        if events.len() >= limit {
            break;
        }
        let (_, bytes) = entry.map_err(StoreError::sled)?;
        let event = codec::decode_event(&bytes)?;
        if matches(&event, query) {
            events.push(event);
        }
    }
    Ok(events)
}

fn matches(event: &Event, query: &EventQuery) -> bool {
    query.source.as_ref().is_none_or(|s| *s == event.source)
        && query.kind.as_ref().is_none_or(|k| *k == event.kind)
        && query.since.is_none_or(|since| event.time >= since)
        && query
            .key
            .as_ref()
            .is_none_or(|k| event.keys.get(&k.name) == Some(&k.value))
}

/// The smallest key greater than every key that starts with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(crate) fn quarantine(tree: &sled::Tree, limit: usize) -> Result<Vec<Quarantined>, StoreError> {
    let limit = if limit == 0 { usize::MAX } else { limit };
    let mut items = Vec::new();
    for entry in tree.scan_prefix([codec::QUARANTINE]).rev().take(limit) {
        let (_, bytes) = entry.map_err(StoreError::sled)?;
        items.push(codec::decode_quarantined(&bytes)?);
    }
    items.reverse();
    Ok(items)
}
