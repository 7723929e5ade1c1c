//! The layout of the `events` tree. Everything that must commit together lives in this one
//! tree under a one-byte prefix, because a sled batch is atomic within one tree:
//!
//! | prefix | key                                          | value                          | written by |
//! |--------|----------------------------------------------|--------------------------------|------------|
//! | `M`    | `schema`                                     | u32 BE version                 | open       |
//! | `M`    | `indexed`                                    | u64 BE: log indexed up to here | indexer    |
//! | `L`    | seq u64 BE of the block's first event        | a block of events              | writer     |
//! | `Q`    | quarantine id u64 BE                         | item, JSON                     | writer     |
//! | `D`    | source, event id                             | seq u64 BE                     | indexer    |
//! | `T`    | source, type, time, seq                      | empty                          | indexer    |
//! | `K`    | source, type, key name, key value, time, seq | empty                          | indexer    |
//!
//! The log is stored in blocks of consecutive events, one or a few per group commit, because
//! sled costs about 10 µs per insert whatever its size: one insert per event would cap ingest
//! near 70k events/s before any index. A block is `[n: u32][end offset of each record: u32 × n]
//! [records]`, each record one event as JSON, so one event is read without decoding its block.
//!
//! Strings in keys are length-prefixed (u32 BE), so a value containing any byte cannot run into
//! the next field, and a prefix of whole fields selects exactly the entries whose fields are
//! equal. Times are milliseconds with the sign bit flipped, so byte order is time order.

use gancho_core::{Event, EventId, NewEvent};

use crate::{Quarantined, StoreError};

pub(crate) const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"Mschema";
pub(crate) const INDEXED_KEY: &[u8] = b"Mindexed";
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

/// The key of the block whose first event has this sequence number.
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

/// An event's record: the [`NewEvent`] as JSON. Its sequence number is its place in the block.
pub(crate) fn encode_event(event: &NewEvent) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(event).map_err(|err| StoreError::Corrupt {
        key: "event".to_owned(),
        reason: format!("encoding: {err}"),
    })
}

pub(crate) fn decode_event(seq: u64, bytes: &[u8]) -> Result<Event, StoreError> {
    let new: NewEvent = serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt {
        key: format!("L{seq}"),
        reason: err.to_string(),
    })?;
    Ok(Event::new(seq, new))
}

/// The parts of an event record the indexes need; the payload is skipped, not built.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct IndexView {
    #[serde(skip)]
    pub(crate) seq: u64,
    pub(crate) id: EventId,
    pub(crate) source: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) time: chrono::DateTime<chrono::Utc>,
    pub(crate) keys: gancho_core::Keys,
}

pub(crate) fn decode_index_view(seq: u64, bytes: &[u8]) -> Result<IndexView, StoreError> {
    let mut view: IndexView = serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt {
        key: format!("L{seq}"),
        reason: err.to_string(),
    })?;
    view.seq = seq;
    Ok(view)
}

/// The by-type and by-key index keys of one event.
pub(crate) fn index_keys(view: &IndexView, mut push: impl FnMut(Vec<u8>)) {
    let time_ms = gancho_core::time_to_millis(view.time);
    let mut by_type = type_prefix(&view.source, &view.kind);
    push_time_seq(&mut by_type, time_ms, view.seq);
    push(by_type);
    for (name, value) in &view.keys {
        let mut by_key = key_prefix(&view.source, &view.kind, name, value);
        push_time_seq(&mut by_key, time_ms, view.seq);
        push(by_key);
    }
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

/// The sequence number of the newest event in the log, 0 if it is empty.
pub(crate) fn last_seq(tree: &sled::Tree) -> Result<u64, StoreError> {
    match tree
        .scan_prefix([LOG])
        .next_back()
        .transpose()
        .map_err(StoreError::sled)?
    {
        Some((key, value)) => {
            let block = Block::parse(&key, &value)?;
            Ok(block.first_seq + block.len() as u64 - 1)
        }
        None => Ok(0),
    }
}

pub(crate) fn indexed_seq(tree: &sled::Tree) -> Result<u64, StoreError> {
    match tree.get(INDEXED_KEY).map_err(StoreError::sled)? {
        Some(v) => read_u64(&v).ok_or_else(|| StoreError::Corrupt {
            key: "indexed".to_owned(),
            reason: "not a u64".to_owned(),
        }),
        None => Ok(0),
    }
}

/// Encodes records (already-encoded events with consecutive sequence numbers) as one block.
pub(crate) fn encode_block(records: &[Vec<u8>]) -> Vec<u8> {
    let data_len: usize = records.iter().map(Vec::len).sum();
    let mut block = Vec::with_capacity(4 + 4 * records.len() + data_len);
    block.extend_from_slice(&(records.len() as u32).to_be_bytes());
    let mut end = 0u32;
    for record in records {
        end += record.len() as u32;
        block.extend_from_slice(&end.to_be_bytes());
    }
    for record in records {
        block.extend_from_slice(record);
    }
    block
}

/// A block of the log, read in place.
pub(crate) struct Block<'a> {
    pub(crate) first_seq: u64,
    ends: &'a [u8],
    data: &'a [u8],
}

impl<'a> Block<'a> {
    pub(crate) fn parse(key: &[u8], value: &'a [u8]) -> Result<Block<'a>, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            key: format!("{key:?}"),
            reason: reason.to_owned(),
        };
        let first_seq = key
            .get(1..)
            .and_then(read_u64)
            .ok_or_else(|| corrupt("not a block key"))?;
        let n = value
            .get(..4)
            .and_then(read_u32)
            .ok_or_else(|| corrupt("block without a count"))? as usize;
        let ends = value
            .get(4..4 + 4 * n)
            .ok_or_else(|| corrupt("block shorter than its offsets"))?;
        let data = &value[4 + 4 * n..];
        if n == 0 || read_u32(&ends[4 * (n - 1)..]).map(|e| e as usize) != Some(data.len()) {
            return Err(corrupt("block length does not match its offsets"));
        }
        Ok(Block {
            first_seq,
            ends,
            data,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len() / 4
    }

    pub(crate) fn contains(&self, seq: u64) -> bool {
        seq >= self.first_seq && seq - self.first_seq < self.len() as u64
    }

    /// The record of the event with this sequence number, if the block holds it.
    pub(crate) fn record(&self, seq: u64) -> Option<&'a [u8]> {
        if !self.contains(seq) {
            return None;
        }
        let i = (seq - self.first_seq) as usize;
        let end = read_u32(&self.ends[4 * i..4 * i + 4])? as usize;
        let start = if i == 0 {
            0
        } else {
            read_u32(&self.ends[4 * (i - 1)..4 * i])? as usize
        };
        self.data.get(start..end)
    }

    /// Every (seq, record) of the block, in order.
    pub(crate) fn records(&self) -> impl Iterator<Item = (u64, &'a [u8])> + '_ {
        (0..self.len() as u64).filter_map(move |i| {
            let seq = self.first_seq + i;
            self.record(seq).map(|r| (seq, r))
        })
    }
}

/// The block holding `seq`, if any, as its (key, value).
pub(crate) fn find_block(
    tree: &sled::Tree,
    seq: u64,
) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
    let found = tree
        .range(log_key(0)..=log_key(seq))
        .next_back()
        .transpose()
        .map_err(StoreError::sled)?;
    match found {
        Some((key, value)) if Block::parse(&key, &value)?.contains(seq) => Ok(Some((key, value))),
        _ => Ok(None),
    }
}

/// Calls `f` on every event record with a sequence number in `from..=to`, in order.
pub(crate) fn for_each_record(
    tree: &sled::Tree,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if from > to {
        return Ok(());
    }
    // Start at the block holding `from`, which may begin before it.
    let start = match find_block(tree, from)? {
        Some((key, _)) => key.to_vec(),
        None => log_key(from).to_vec(),
    };
    for entry in tree.range(start..=log_key(to).to_vec()) {
        let (key, value) = entry.map_err(StoreError::sled)?;
        let block = Block::parse(&key, &value)?;
        for (seq, record) in block.records() {
            if seq > to {
                return Ok(());
            }
            if seq >= from {
                f(seq, record)?;
            }
        }
    }
    Ok(())
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
    fn a_block_gives_back_each_record() {
        let records = vec![b"a".to_vec(), b"".to_vec(), b"ccc".to_vec()];
        let value = encode_block(&records);
        let key = log_key(7);
        let block = Block::parse(&key, &value).unwrap();
        assert_eq!(block.len(), 3);
        assert_eq!(block.record(6), None);
        assert_eq!(block.record(7), Some(&b"a"[..]));
        assert_eq!(block.record(8), Some(&b""[..]));
        assert_eq!(block.record(9), Some(&b"ccc"[..]));
        assert_eq!(block.record(10), None);
        let all: Vec<_> = block.records().map(|(s, r)| (s, r.to_vec())).collect();
        assert_eq!(
            all,
            vec![
                (7, records[0].clone()),
                (8, vec![]),
                (9, records[2].clone())
            ]
        );
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let value = encode_block(&[b"abc".to_vec()]);
        let key = log_key(1);
        for cut in 0..value.len() {
            assert!(Block::parse(&key, &value[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Block::parse(b"L", &value).is_err());
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
