//! The layouts of event keys in the indexes, and the order-preserving encodings every key of
//! gancho uses (also those of the engine's database, in `gancho-state`).
//!
//! | prefix | key                                          | value        |
//! |--------|----------------------------------------------|--------------|
//! | `D`    | source, event id                             | seq u64 BE   |
//! | `T`    | source, type, time, seq                      | empty        |
//! | `K`    | source, type, key name, key value, time, seq | empty        |
//!
//! Strings in keys are length-prefixed (u32 BE), so a value containing any byte cannot run into
//! the next field, and a prefix of whole fields selects exactly the entries whose fields are
//! equal. Times are milliseconds with the sign bit flipped, so byte order is time order. `T` and
//! `K` entries are *timed* ([`KEY_RULE`]): the index skips runs by their time span and keeps
//! the part before time and seq in its Bloom filters.

use crate::index::KeyRule;

pub(crate) const DEDUP: u8 = b'D';
pub(crate) const BY_TYPE: u8 = b'T';
pub(crate) const BY_KEY: u8 = b'K';

/// How the index tells timed entries (`T`, `K`) from dedup entries.
pub(crate) const KEY_RULE: KeyRule = KeyRule {
    timed: |key| matches!(key.first(), Some(&BY_TYPE | &BY_KEY)),
    seq: |key, value| match key.first() {
        Some(&BY_TYPE | &BY_KEY) => seq_of_index_key(key),
        _ => read_u64(value),
    },
};

pub(crate) fn dedup_key(source: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + source.len() + id.len());
    write_key(&mut key, DEDUP, &[source, id]);
    key
}

/// The prefix of the by-type index for one (source, type).
pub(crate) fn type_prefix(source: &str, kind: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + source.len() + kind.len() + 16);
    write_key(&mut key, BY_TYPE, &[source, kind]);
    key
}

/// The prefix of the by-key index for one (source, type, key name, key value).
pub(crate) fn key_prefix(source: &str, kind: &str, name: &str, value: &str) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(17 + source.len() + kind.len() + name.len() + value.len() + 16);
    write_key(&mut key, BY_KEY, &[source, kind, name, value]);
    key
}

/// Replaces what `key` holds with a key of this prefix byte and these (length-prefixed) fields.
pub(crate) fn write_key(key: &mut Vec<u8>, prefix: u8, fields: &[&str]) {
    key.clear();
    key.push(prefix);
    for field in fields {
        push_str(key, field);
    }
}

/// Appends (time, seq) to an index prefix, making the full index key.
pub(crate) fn push_time_seq(key: &mut Vec<u8>, time_ms: i64, seq: u64) {
    key.extend_from_slice(&time_key(time_ms));
    key.extend_from_slice(&seq.to_be_bytes());
}

pub fn time_key(time_ms: i64) -> [u8; 8] {
    ((time_ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// The time (ms) a [`time_key`] holds, read from the 8 bytes it was written as.
pub fn read_time(bytes: &[u8]) -> Option<i64> {
    read_u64(bytes).map(|raw| (raw ^ (1 << 63)) as i64)
}

/// The sequence number at the end of an index key.
pub(crate) fn seq_of_index_key(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8)?;
    read_u64(&key[tail..])
}

pub fn push_str(key: &mut Vec<u8>, s: &str) {
    // Key values are capped well below 4 GiB by the adapters (gancho_core::MAX_KEY_LEN);
    // saturate rather than wrap if a caller ever passes more.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(s.as_bytes());
}

pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub(crate) fn read_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}
