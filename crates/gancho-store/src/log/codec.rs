//! The log's formats: the `events` tree of the log database holds `M`, `L` and `Q` (the index
//! entries' layouts are in `keys.rs`, how runs are stored in `index/`):
//!
//! | prefix | key                                   | value                          | written by |
//! |--------|---------------------------------------|--------------------------------|------------|
//! | `M`    | `schema`                              | u32 BE format version          | open       |
//! | `M`    | `commit`                              | last seq, last quarantine id   | writer     |
//! | `L`    | seq u64 BE of the block's first event | a block of events              | writer     |
//! | `Q`    | quarantine id u64 BE                  | item, JSON                     | writer     |
//!
//! The log is stored in blocks of consecutive events, one or a few per group commit, because
//! sled costs about 10 µs per insert whatever its size: one insert per event would cap ingest
//! near 70k events/s before any index. A block is `[n: u32][end offset of each record: u32 × n]
//! [records]`, each record one event as JSON, so one event is read without decoding its block.

use gancho_core::{Event, EventId, NewEvent, millis_to_time, time_to_millis};
use serde_json::value::RawValue;

use crate::error::StoreError;
use crate::keys::{read_u32, read_u64};
use crate::kv::{Bytes, Tree};

/// A quarantined item: something a source sent that could not be made into an event, kept with
/// the reason so an operator can see it (and, later, replay it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    pub id: u64,
    pub source: String,
    pub received: chrono::DateTime<chrono::Utc>,
    pub reason: String,
    /// The item exactly as it was sent.
    pub item: Box<serde_json::value::RawValue>,
}

/// The commit record: the last seq and quarantine id of the last group written whole.
pub(crate) const COMMIT_KEY: &[u8] = b"Mcommit";
pub(crate) const LOG: u8 = b'L';
pub(crate) const QUARANTINE: u8 = b'Q';
/// How many quarantine records were dropped for the cap, ever (u64 BE).
pub(crate) const QUARANTINE_DROPPED_KEY: &[u8] = b"Mqdropped";

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

/// The record format's version, its first byte.
const RECORD_V1: u8 = 1;

/// An event's record. Its sequence number is its place in the block, so records are encoded
/// before the writer numbers them (on the caller's thread). Binary, because it is on the hot
/// path twice (ingest, indexing) and JSON would format and parse two timestamps per event:
///
/// `[1u8][time ms: i64][received ms: i64][source][type][id][n keys: u16]([name][value])*[data]`
///
/// where each string is a u16 length and its bytes, and the payload text runs to the end.
pub(crate) fn encode_event(event: &NewEvent) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64 + event.data.get().len() + 64 * event.keys.len());
    out.push(RECORD_V1);
    out.extend_from_slice(&time_to_millis(event.time).to_be_bytes());
    out.extend_from_slice(&time_to_millis(event.received).to_be_bytes());
    put_short(&mut out, &event.source)?;
    put_short(&mut out, &event.kind)?;
    put_short(&mut out, event.id.as_str())?;
    let n_keys = u16::try_from(event.keys.len()).map_err(|_| too_long("keys"))?;
    out.extend_from_slice(&n_keys.to_be_bytes());
    for (name, value) in &event.keys {
        put_short(&mut out, name)?;
        put_short(&mut out, value)?;
    }
    out.extend_from_slice(event.data.get().as_bytes());
    Ok(out)
}

fn too_long(what: &str) -> StoreError {
    StoreError::TooLarge(format!("{what} is longer than {} bytes", u16::MAX))
}

fn put_short(out: &mut Vec<u8>, s: &str) -> Result<(), StoreError> {
    let len = u16::try_from(s.len()).map_err(|_| too_long("a field of the event"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// A record read in place: everything but the payload, borrowed.
#[derive(Debug)]
pub(crate) struct RecordView<'a> {
    pub(crate) seq: u64,
    pub(crate) time_ms: i64,
    pub(crate) received_ms: i64,
    pub(crate) source: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) id: &'a str,
    pub(crate) keys: Vec<(&'a str, &'a str)>,
    pub(crate) data: &'a str,
}

pub(crate) fn view_record(seq: u64, bytes: &[u8]) -> Result<RecordView<'_>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: format!("L{seq}"),
        reason: reason.to_owned(),
    };
    let mut r = Reader { bytes, at: 0 };
    if r.take(1) != Some(&[RECORD_V1][..]) {
        return Err(corrupt("unknown record version"));
    }
    let time_ms = r.i64().ok_or_else(|| corrupt("truncated time"))?;
    let received_ms = r.i64().ok_or_else(|| corrupt("truncated receipt time"))?;
    let mut short = || {
        r.short()
            .ok_or_else(|| corrupt("truncated or non-UTF-8 field"))
    };
    let source = short()?;
    let kind = short()?;
    let id = short()?;
    let n_keys = r.u16().ok_or_else(|| corrupt("truncated keys"))?;
    let mut keys = Vec::with_capacity(usize::from(n_keys));
    for _ in 0..n_keys {
        let name = r.short().ok_or_else(|| corrupt("truncated key name"))?;
        let value = r.short().ok_or_else(|| corrupt("truncated key value"))?;
        keys.push((name, value));
    }
    let data = std::str::from_utf8(&bytes[r.at..]).map_err(|_| corrupt("payload is not UTF-8"))?;
    Ok(RecordView {
        seq,
        time_ms,
        received_ms,
        source,
        kind,
        id,
        keys,
        data,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn short(&mut self) -> Option<&'a str> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.take(len)?).ok()
    }
}

pub(crate) fn decode_event(seq: u64, bytes: &[u8]) -> Result<Event, StoreError> {
    event_from_view(view_record(seq, bytes)?)
}

/// The event a record view shows, owned.
pub(crate) fn event_from_view(view: RecordView<'_>) -> Result<Event, StoreError> {
    let seq = view.seq;
    let data = RawValue::from_string(view.data.to_owned()).map_err(|err| StoreError::Corrupt {
        key: format!("L{seq}"),
        reason: format!("payload: {err}"),
    })?;
    Ok(Event {
        seq,
        id: EventId::from_stored(view.id),
        source: view.source.to_owned(),
        kind: view.kind.to_owned(),
        time: millis_to_time(view.time_ms),
        received: millis_to_time(view.received_ms),
        keys: view
            .keys
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        data,
    })
}

/// How many of one request's invalid items keep their reason in its quarantine record.
pub(crate) const MAX_REASONS: usize = 100;

/// One request's invalid items, as stored: one record per request, so that an array of 10,000
/// invalid items costs one sled value of about its own size, not 10,000.
#[derive(serde::Serialize, serde::Deserialize)]
struct QuarantineRecord {
    source: String,
    received: chrono::DateTime<chrono::Utc>,
    items: Vec<StoredItem>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredItem {
    /// Kept for the first [`MAX_REASONS`] items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    item: Box<serde_json::value::RawValue>,
}

/// The record of one request's invalid items (all from one source, received together).
pub(crate) fn encode_quarantine_record(items: &[Quarantined]) -> Result<Vec<u8>, StoreError> {
    let Some(first) = items.first() else {
        return Ok(Vec::new());
    };
    let record = QuarantineRecord {
        source: first.source.clone(),
        received: first.received,
        items: items
            .iter()
            .enumerate()
            .map(|(i, q)| StoredItem {
                reason: (i < MAX_REASONS).then(|| q.reason.clone()),
                item: q.item.clone(),
            })
            .collect(),
    };
    serde_json::to_vec(&record).map_err(|err| StoreError::Corrupt {
        key: "quarantine".to_owned(),
        reason: format!("encoding: {err}"),
    })
}

/// The items of the quarantine value under id `id`, each with that id.
pub(crate) fn decode_quarantine(id: u64, bytes: &[u8]) -> Result<Vec<Quarantined>, StoreError> {
    // A request's record, or (stores written before records) one item. Tried in turn: serde's
    // untagged enums cannot hold a `RawValue`.
    let record = match serde_json::from_slice::<QuarantineRecord>(bytes) {
        Ok(record) => record,
        Err(err) => {
            return serde_json::from_slice::<Quarantined>(bytes)
                .map(|item| vec![item])
                .map_err(|_| StoreError::Corrupt {
                    key: format!("Q{id}"),
                    reason: err.to_string(),
                });
        }
    };
    let n = record.items.len();
    Ok(record
        .items
        .into_iter()
        .enumerate()
        .map(|(i, stored)| Quarantined {
            id,
            source: record.source.clone(),
            received: record.received,
            reason: stored.reason.unwrap_or_else(|| {
                format!(
                    "(not kept: item {} of the request's {n} invalid items; the first {MAX_REASONS} keep theirs)",
                    i + 1
                )
            }),
            item: stored.item,
        })
        .collect())
}

/// The highest id under a one-byte prefix whose keys are `prefix ++ u64 BE`, 0 if none.
pub(crate) fn last_id(tree: &Tree, prefix: u8) -> Result<u64, StoreError> {
    match tree.scan_prefix([prefix]).next_back().transpose()? {
        Some((key, _)) => read_u64(&key[1..]).ok_or_else(|| StoreError::Corrupt {
            key: format!("{key:?}"),
            reason: "not a sequence key".to_owned(),
        }),
        None => Ok(0),
    }
}

/// The sequence number of the newest event in the log, 0 if it is empty.
pub(crate) fn last_seq(tree: &Tree) -> Result<u64, StoreError> {
    match tree.scan_prefix([LOG]).next_back().transpose()? {
        Some((key, value)) => {
            let first = key.get(1..).and_then(read_u64);
            match (first, block_len(&value)) {
                (Some(first), Some(n)) if n > 0 => Ok(first + n - 1),
                _ => Err(StoreError::Corrupt {
                    key: format!("{key:?}"),
                    reason: "not a block".to_owned(),
                }),
            }
        }
        None => Ok(0),
    }
}

/// The seq of the log's first block, if it has one: no event below it is stored.
pub(crate) fn log_start(tree: &Tree) -> Result<Option<u64>, StoreError> {
    let first = tree
        .range(log_key(0)..=log_key(u64::MAX))
        .next()
        .transpose()?;
    Ok(first.and_then(|(key, _)| key.get(1..).and_then(read_u64)))
}

/// The last seq and quarantine id ever given: the commit record's, or the newest keys' (a
/// store from before commit records). Never less than either, so pruning the newest block or
/// quarantine record cannot make a number be given twice.
pub(crate) fn log_end(tree: &Tree) -> Result<(u64, u64), StoreError> {
    let (seq, qid) = read_commit(tree)?.unwrap_or((0, 0));
    Ok((
        seq.max(last_seq(tree)?),
        qid.max(last_id(tree, QUARANTINE)?),
    ))
}

pub(crate) fn encode_commit(last_seq: u64, last_qid: u64) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&last_seq.to_be_bytes());
    value[8..].copy_from_slice(&last_qid.to_be_bytes());
    value
}

/// The last group written whole, as (last seq, last quarantine id), if any group was.
pub(crate) fn read_commit(tree: &Tree) -> Result<Option<(u64, u64)>, StoreError> {
    match tree.get(COMMIT_KEY)? {
        None => Ok(None),
        Some(v) => match (
            v.get(..8).and_then(read_u64),
            v.get(8..16).and_then(read_u64),
        ) {
            (Some(seq), Some(qid)) => Ok(Some((seq, qid))),
            _ => Err(StoreError::Corrupt {
                key: "commit".to_owned(),
                reason: "not two u64".to_owned(),
            }),
        },
    }
}

/// Removes what follows the last commit record: the blocks and quarantined items of a group
/// that a crash interrupted. Nothing of it was acknowledged.
pub(crate) fn discard_uncommitted(tree: &Tree) -> Result<usize, StoreError> {
    let (seq, qid) = read_commit(tree)?.unwrap_or((0, 0));
    let mut removed = 0;
    for (prefix, after) in [
        (LOG, log_key(seq + 1)),
        (QUARANTINE, quarantine_key(qid + 1)),
    ] {
        for entry in tree
            .range(after.to_vec()..=vec![prefix, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        {
            let (key, _) = entry?;
            tree.remove(key)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The block format's version, its first byte: LZ4-compressed records.
const BLOCK_LZ4: u8 = 1;
/// The first byte of a pointer to a block kept in a segment file (`segments.rs`).
pub(crate) const BLOCK_POINTER: u8 = 2;

/// Encodes records (already-encoded events with consecutive sequence numbers) as one block:
/// `[1u8][n: u32][LZ4 of ([end offset of each record: u32 × n][records])]`. The count stays
/// outside the compressed part, so finding the block that holds a seq decompresses nothing.
/// Compression matters because sled rewrites a leaf, all its values included, every few
/// updates: the bytes it writes, not the events, set the pace (about 4x fewer with LZ4 on
/// webhook JSON).
pub(crate) fn encode_block(records: &[Vec<u8>]) -> Vec<u8> {
    let data_len: usize = records.iter().map(Vec::len).sum();
    let mut inner = Vec::with_capacity(4 * records.len() + data_len);
    let mut end = 0u32;
    for record in records {
        end += record.len() as u32;
        inner.extend_from_slice(&end.to_be_bytes());
    }
    for record in records {
        inner.extend_from_slice(record);
    }
    let compressed = lz4_flex::block::compress_prepend_size(&inner);
    let mut block = Vec::with_capacity(5 + compressed.len());
    block.push(BLOCK_LZ4);
    block.extend_from_slice(&(records.len() as u32).to_be_bytes());
    block.extend_from_slice(&compressed);
    block
}

/// The number of events in a block, without decompressing it: of a block stored inline, or of
/// one a pointer points at (`segments.rs`; its count sits at the same place).
pub(crate) fn block_len(value: &[u8]) -> Option<u64> {
    if value.first() != Some(&BLOCK_LZ4) && value.first() != Some(&BLOCK_POINTER) {
        return None;
    }
    value.get(1..5).and_then(read_u32).map(u64::from)
}

/// A block of the log, decompressed.
pub(crate) struct Block {
    pub(crate) first_seq: u64,
    n: usize,
    /// The offsets, then the records.
    inner: Vec<u8>,
}

impl Block {
    pub(crate) fn parse(key: &[u8], value: &[u8]) -> Result<Block, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            key: format!("{key:?}"),
            reason: reason.to_owned(),
        };
        let first_seq = key
            .get(1..)
            .and_then(read_u64)
            .ok_or_else(|| corrupt("not a block key"))?;
        let n = block_len(value).ok_or_else(|| corrupt("not a block"))? as usize;
        let inner = lz4_flex::block::decompress_size_prepended(&value[5..])
            .map_err(|err| corrupt(&format!("decompressing: {err}")))?;
        let data_len = inner
            .len()
            .checked_sub(4 * n)
            .ok_or_else(|| corrupt("block shorter than its offsets"))?;
        if n == 0 || read_u32(&inner[4 * (n - 1)..4 * n]).map(|e| e as usize) != Some(data_len) {
            return Err(corrupt("block length does not match its offsets"));
        }
        Ok(Block {
            first_seq,
            n,
            inner,
        })
    }

    /// A block of `n` places whose events are all pruned: what a block removed by a prune
    /// reads as to a reader that found it just before.
    pub(crate) fn empty(key: &[u8], n: usize) -> Result<Block, StoreError> {
        let first_seq = key
            .get(1..)
            .and_then(read_u64)
            .ok_or_else(|| StoreError::Corrupt {
                key: format!("{key:?}"),
                reason: "not a block key".to_owned(),
            })?;
        // A block holds at most 32 KiB of records, none empty when written: more places than
        // this is a damaged pointer, not a reason to allocate gigabytes.
        if n > 1 << 20 {
            return Err(StoreError::Corrupt {
                key: format!("{key:?}"),
                reason: format!("a block of {n} places"),
            });
        }
        Ok(Block {
            first_seq,
            n,
            inner: vec![0; 4 * n],
        })
    }

    /// The record of the event with this sequence number, if the block holds it (a pruned
    /// event's record is empty: the block keeps its place, so the seqs after it stay theirs).
    pub(crate) fn record(&self, seq: u64) -> Option<&[u8]> {
        self.slot(seq).filter(|record| !record.is_empty())
    }

    /// Whatever is at `seq`'s place: its record, or nothing for a pruned event.
    pub(crate) fn slot(&self, seq: u64) -> Option<&[u8]> {
        if seq < self.first_seq || seq - self.first_seq >= self.n as u64 {
            return None;
        }
        let i = (seq - self.first_seq) as usize;
        let end = read_u32(self.inner.get(4 * i..4 * i + 4)?)? as usize;
        let start = if i == 0 {
            0
        } else {
            read_u32(self.inner.get(4 * (i - 1)..4 * i)?)? as usize
        };
        self.inner.get(4 * self.n + start..4 * self.n + end)
    }

    /// How many places the block has (pruned events included).
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// Every (seq, record) of the block, in order, pruned events left out.
    pub(crate) fn records(&self) -> impl DoubleEndedIterator<Item = (u64, &[u8])> + '_ {
        (0..self.n as u64).filter_map(move |i| {
            let seq = self.first_seq + i;
            self.record(seq).map(|r| (seq, r))
        })
    }
}

/// The block holding `seq`, if any, as its (key, value).
pub(crate) fn find_block(tree: &Tree, seq: u64) -> Result<Option<(Bytes, Bytes)>, StoreError> {
    let found = tree
        .range(log_key(0)..=log_key(seq))
        .next_back()
        .transpose()?;
    match found {
        Some((key, value)) => {
            let first = key.get(1..).and_then(read_u64).unwrap_or(u64::MAX);
            match block_len(&value) {
                Some(n) if seq >= first && seq - first < n => Ok(Some((key, value))),
                Some(_) => Ok(None),
                None => Err(StoreError::Corrupt {
                    key: format!("{key:?}"),
                    reason: "not a block".to_owned(),
                }),
            }
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::{key_prefix, time_key};

    #[test]
    fn time_keys_sort_like_times() {
        let times = [i64::MIN, -86_400_000, -1, 0, 1, 1_764_320_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(time_key(pair[0]) < time_key(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn a_block_gives_back_each_record_and_an_empty_one_is_a_pruned_event() {
        let records = vec![b"a".to_vec(), b"".to_vec(), b"ccc".to_vec()];
        let value = encode_block(&records);
        let key = log_key(7);
        let block = Block::parse(&key, &value).unwrap();
        assert_eq!(block.record(6), None);
        assert_eq!(block.record(7), Some(&b"a"[..]));
        assert_eq!(block.record(8), None);
        assert_eq!(block.slot(8), Some(&b""[..]));
        assert_eq!(block.record(9), Some(&b"ccc"[..]));
        assert_eq!(block.record(10), None);
        let all: Vec<_> = block.records().map(|(s, r)| (s, r.to_vec())).collect();
        assert_eq!(block_len(&value), Some(3));
        assert_eq!(all, vec![(7, records[0].clone()), (9, records[2].clone())]);
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let value = encode_block(&[b"abc".to_vec()]);
        let key = log_key(1);
        for cut in 0..value.len() {
            assert!(Block::parse(&key, &value[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Block::parse(b"L", &value).is_err());
        let mut flipped = value.clone();
        for i in 5..flipped.len() {
            flipped[i] ^= 0xff;
            // Damage is either caught or yields other bytes; it never panics.
            let _ = Block::parse(&key, &flipped);
            flipped[i] ^= 0xff;
        }
    }

    fn event_data_len(bytes: &[u8]) -> usize {
        view_record(1, bytes).unwrap().data.len()
    }

    pub(crate) fn withdrawal() -> NewEvent {
        let mut keys = gancho_core::Keys::new();
        keys.insert("email".into(), "a@x".into());
        keys.insert("MessageID".into(), "19421777835146491".into());
        NewEvent {
            id: EventId::from_provider("w-1"),
            source: "bank".into(),
            kind: "withdrawal".into(),
            time: millis_to_time(1_764_320_000_123),
            received: millis_to_time(1_764_320_001_000),
            keys,
            data: RawValue::from_string(r#"{"id":"w-1", "n": 19421777835146491}"#.into()).unwrap(),
        }
    }

    #[test]
    fn records_round_trip_and_truncation_is_an_error() {
        let event = withdrawal();
        let bytes = encode_event(&event).unwrap();
        let back = decode_event(9, &bytes).unwrap();
        assert_eq!(back, Event::new(9, event));
        let header = bytes.len() - event_data_len(&bytes);
        for cut in 0..header {
            assert!(view_record(9, &bytes[..cut]).is_err(), "cut at {cut}");
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
