//! The layout of the `events` tree. Everything the writer commits together lives in this one
//! tree under a one-byte prefix, because a sled batch is atomic within one tree:
//!
//! | prefix | key                                                        | value            |
//! |--------|------------------------------------------------------------|------------------|
//! | `M`    | `schema`                                                   | u32 BE version   |
//! | `L`    | seq u64 BE                                                 | event, JSON      |
//! | `D`    | source, event id                                           | seq u64 BE       |
//! | `T`    | source, type, time, seq                                    | empty            |
//! | `K`    | source, type, key name, key value, time, seq               | empty            |
//! | `Q`    | quarantine id u64 BE                                       | item, JSON       |
//!
//! Strings are length-prefixed (u32 BE), so a value containing any byte cannot run into the
//! next field, and a prefix of whole fields selects exactly the entries whose fields are equal.
//! Times are milliseconds with the sign bit flipped, so byte order is time order.

use gancho_core::{Event, EventId};

use crate::{Quarantined, StoreError};

pub(crate) const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"Mschema";
pub(crate) const LOG: u8 = b'L';
pub(crate) const QUARANTINE: u8 = b'Q';
const DEDUP: u8 = b'D';
const BY_TYPE: u8 = b'T';
const BY_KEY: u8 = b'K';

pub(crate) fn check_schema(tree: &sled::Tree) -> Result<(), StoreError> {
    match tree.get(SCHEMA_KEY).map_err(StoreError::sled)? {
        None => {
            tree.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                .map_err(StoreError::sled)?;
            Ok(())
        }
        Some(v) => {
            let found = read_u32(&v).ok_or_else(|| StoreError::Corrupt {
                key: "schema".to_owned(),
                reason: "not a u32".to_owned(),
            })?;
            if found == SCHEMA_VERSION {
                Ok(())
            } else {
                Err(StoreError::Schema {
                    found,
                    expected: SCHEMA_VERSION,
                })
            }
        }
    }
}

pub(crate) fn log_key(seq: u64) -> [u8; 9] {
    let mut key = [LOG; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn quarantine_key(id: u64) -> [u8; 9] {
    let mut key = [QUARANTINE; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn dedup_key(source: &str, id: &EventId) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + source.len() + id.as_str().len());
    key.push(DEDUP);
    push_str(&mut key, source);
    push_str(&mut key, id.as_str());
    key
}

/// The prefix of the by-type index for one (source, type).
pub(crate) fn type_prefix(source: &str, kind: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + source.len() + kind.len() + 16);
    key.push(BY_TYPE);
    push_str(&mut key, source);
    push_str(&mut key, kind);
    key
}

/// The prefix of the by-key index for one (source, type, key name, key value).
pub(crate) fn key_prefix(source: &str, kind: &str, name: &str, value: &str) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(17 + source.len() + kind.len() + name.len() + value.len() + 16);
    key.push(BY_KEY);
    push_str(&mut key, source);
    push_str(&mut key, kind);
    push_str(&mut key, name);
    push_str(&mut key, value);
    key
}

/// Appends (time, seq) to an index prefix, making the full index key.
pub(crate) fn push_time_seq(key: &mut Vec<u8>, time_ms: i64, seq: u64) {
    key.extend_from_slice(&time_key(time_ms));
    key.extend_from_slice(&seq.to_be_bytes());
}

pub(crate) fn time_key(time_ms: i64) -> [u8; 8] {
    ((time_ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// The sequence number at the end of an index key.
pub(crate) fn seq_of_index_key(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8)?;
    read_u64(&key[tail..])
}

fn push_str(key: &mut Vec<u8>, s: &str) {
    // Key values are capped well below 4 GiB by the adapters (gancho_core::MAX_KEY_LEN);
    // saturate rather than wrap if a caller ever passes more.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(s.as_bytes());
}

pub(crate) fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn read_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

pub(crate) fn encode_event(event: &Event) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(event).map_err(|err| StoreError::Corrupt {
        key: format!("L{}", event.seq),
        reason: format!("encoding: {err}"),
    })
}

pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt {
        key: "event".to_owned(),
        reason: err.to_string(),
    })
}

pub(crate) fn encode_quarantined(item: &Quarantined) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(item).map_err(|err| StoreError::Corrupt {
        key: format!("Q{}", item.id),
        reason: format!("encoding: {err}"),
    })
}

pub(crate) fn decode_quarantined(bytes: &[u8]) -> Result<Quarantined, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt {
        key: "quarantine".to_owned(),
        reason: err.to_string(),
    })
}

/// The highest id under a one-byte prefix whose keys are `prefix ++ u64 BE`, 0 if none.
pub(crate) fn last_id(tree: &sled::Tree, prefix: u8) -> Result<u64, StoreError> {
    match tree
        .scan_prefix([prefix])
        .next_back()
        .transpose()
        .map_err(StoreError::sled)?
    {
        Some((key, _)) => read_u64(&key[1..]).ok_or_else(|| StoreError::Corrupt {
            key: format!("{key:?}"),
            reason: "not a sequence key".to_owned(),
        }),
        None => Ok(0),
    }
}

pub(crate) fn last_seq(tree: &sled::Tree) -> Result<u64, StoreError> {
    last_id(tree, LOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_like_times() {
        let times = [i64::MIN, -86_400_000, -1, 0, 1, 1_764_320_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(time_key(pair[0]) < time_key(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn length_prefix_keeps_fields_apart() {
        assert_ne!(
            key_prefix("a", "b", "c", "d\0e"),
            key_prefix("a", "b", "c\0d", "e")
        );
        let p = key_prefix("s", "t", "email", "a@x");
        let longer = key_prefix("s", "t", "email", "a@x.com");
        assert!(!longer.starts_with(&p));
    }
}
