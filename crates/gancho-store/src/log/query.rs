//! Listing events and quarantined items for operators.

use chrono::{DateTime, Utc};
use gancho_core::{Event, time_to_millis};

use super::codec;
use super::codec::Quarantined;
use super::segments::Log;
use crate::error::StoreError;
use crate::index::{Index, Scan};
use crate::keys;
use crate::kv::Tree;
use crate::purged::Purged;

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
    /// Only events whose event time is at or before this.
    pub until: Option<DateTime<Utc>>,
    /// At most this many (the newest), 0 for no limit.
    pub limit: usize,
}

/// A correlation key that must be equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFilter {
    pub name: String,
    pub value: String,
}

/// Answers a query: the newest `limit` matching events by sequence number, oldest first.
///
/// Only durable events are seen (`durable`). `indexed` is the indexer's watermark when the query
/// began: events after it may be missing from the indexes, so they are read from the log's tail
/// and merged in.
pub(crate) fn run(
    log: &Log,
    index: &Index,
    query: &EventQuery,
    indexed: u64,
    durable: u64,
) -> Result<Vec<Event>, StoreError> {
    let mut events = Vec::new();
    each(log, index, query, (indexed, durable), |event| {
        events.push(event);
        Ok(())
    })?;
    Ok(events)
}

/// Hands the answer to a query to `f` one event at a time, oldest first: the memory it takes
/// does not grow with the answer (with a source and a type, 8 bytes a matching seq; without,
/// the `limit` newest events, none when there is no limit).
pub(crate) fn each(
    log: &Log,
    index: &Index,
    query: &EventQuery,
    (indexed, durable): (u64, u64),
    mut f: impl FnMut(Event) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let limit = if query.limit == 0 {
        usize::MAX
    } else {
        query.limit
    };
    let purged = index.purged();
    let (Some(source), Some(kind)) = (&query.source, &query.kind) else {
        return by_log(log, query, limit, durable, &purged, f);
    };
    let prefix = match &query.key {
        Some(key) => keys::key_prefix(source, kind, &key.name, &key.value),
        None => keys::type_prefix(source, kind),
    };
    // Index keys are in time order; the answer is by seq. Collect the seqs (cheap: no event
    // is read), keep the newest, then read only those, in order, a block at a time.
    let mut seqs = indexed_seqs(index, &prefix, (query.since, query.until), durable)?;
    log.for_each_record(indexed + 1, durable, |seq, record| {
        if purged.contains(seq) {
            return Ok(());
        }
        let view = codec::view_record(seq, record)?;
        let matches = view.source == source
            && view.kind == kind
            && query
                .since
                .is_none_or(|since| view.time_ms >= time_to_millis(since))
            && query
                .until
                .is_none_or(|until| view.time_ms <= time_to_millis(until))
            && query.key.as_ref().is_none_or(|k| {
                view.keys
                    .iter()
                    .any(|(name, value)| *name == k.name && *value == k.value)
            });
        if matches {
            seqs.push(seq);
        }
        Ok(())
    })?;
    seqs.sort_unstable();
    seqs.dedup();
    if seqs.len() > limit {
        seqs.drain(..seqs.len() - limit);
    }
    let mut block: Option<codec::Block> = None;
    for seq in seqs {
        if block.as_ref().is_none_or(|b| b.slot(seq).is_none()) {
            block = match log.find_block(seq)? {
                Some((key, value)) => Some(log.block(&key, &value)?),
                None => None,
            };
        }
        let record = block.as_ref().and_then(|b| b.record(seq));
        let Some(record) = record else {
            // Pruned since the scan saw it.
            if purged.contains(seq) || index.purged().contains(seq) {
                continue;
            }
            return Err(StoreError::Corrupt {
                key: format!("L{seq}"),
                reason: "indexed event missing from the log".to_owned(),
            });
        };
        let event = codec::decode_event(seq, record)?;
        if matches(&event, query) {
            f(event)?;
        }
    }
    Ok(())
}

/// The seqs of one index prefix with an event time in `since..=until`, up to `durable`.
fn indexed_seqs(
    index: &Index,
    prefix: &[u8],
    (since, until): (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    durable: u64,
) -> Result<Vec<u64>, StoreError> {
    let mut start = prefix.to_vec();
    if let Some(since) = since {
        start.extend_from_slice(&keys::time_key(time_to_millis(since)));
    }
    let mut end = prefix.to_vec();
    match until {
        Some(until) => {
            end.extend_from_slice(&keys::time_key(time_to_millis(until)));
            end.extend_from_slice(&[0xff; 8]);
        }
        None => end.extend_from_slice(&[0xff; 16]),
    }
    let mut seqs = Vec::new();
    for entry in index.scan(prefix, &start, &end, false) {
        let (key, _) = entry?;
        let seq = keys::seq_of_index_key(&key).ok_or_else(|| StoreError::Corrupt {
            key: format!("{key:?}"),
            reason: "index key without a sequence number".to_owned(),
        })?;
        if seq <= durable {
            seqs.push(seq);
        }
    }
    Ok(seqs)
}

/// Walks the log: from the oldest event on when there is no limit, else from the newest back
/// to the `limit`-th match, whose events it then hands over oldest first.
fn by_log(
    log: &Log,
    query: &EventQuery,
    limit: usize,
    durable: u64,
    purged: &Purged,
    mut f: impl FnMut(Event) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let range = log.tree.range(codec::log_key(0)..=codec::log_key(durable));
    if limit == usize::MAX {
        for entry in range {
            let (key, value) = entry?;
            let block = log.block(&key, &value)?;
            for (seq, record) in block.records() {
                if seq > durable || purged.contains(seq) {
                    continue;
                }
                let event = codec::decode_event(seq, record)?;
                if matches(&event, query) {
                    f(event)?;
                }
            }
        }
        return Ok(());
    }
    let mut events = Vec::new();
    'blocks: for entry in range.rev() {
        let (key, value) = entry?;
        let block = log.block(&key, &value)?;
        let records: Vec<_> = block.records().collect();
        for (seq, record) in records.into_iter().rev() {
            if events.len() >= limit {
                break 'blocks;
            }
            if seq > durable || purged.contains(seq) {
                continue;
            }
            let event = codec::decode_event(seq, record)?;
            if matches(&event, query) {
                events.push(event);
            }
        }
    }
    events.into_iter().rev().try_for_each(f)
}

fn matches(event: &Event, query: &EventQuery) -> bool {
    query.source.as_ref().is_none_or(|s| *s == event.source)
        && query.kind.as_ref().is_none_or(|k| *k == event.kind)
        && query.since.is_none_or(|since| event.time >= since)
        && query.until.is_none_or(|until| event.time <= until)
        && query
            .key
            .as_ref()
            .is_none_or(|k| event.keys.get(&k.name) == Some(&k.value))
}

/// Hands quarantined items to `f`, oldest first, the newest `limit` of them (0: all, read as
/// they are handed over; else at most `limit` held).
pub(crate) fn each_quarantined(
    tree: &Tree,
    before: Option<u64>,
    limit: usize,
    mut f: impl FnMut(Quarantined) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let id_of = |key: &[u8]| key.get(1..).and_then(crate::keys::read_u64).unwrap_or(0);
    let mut end = vec![codec::QUARANTINE];
    match before {
        Some(before) => end.extend_from_slice(&before.to_be_bytes()),
        None => end = vec![codec::QUARANTINE + 1],
    }
    let records = || tree.range(vec![codec::QUARANTINE]..end.clone());
    if limit == 0 {
        for entry in records() {
            let (key, bytes) = entry?;
            for item in codec::decode_quarantine(id_of(&key), &bytes)? {
                f(item)?;
            }
        }
        return Ok(());
    }
    let mut items = Vec::new();
    for entry in records().rev() {
        if items.len() >= limit {
            break;
        }
        let (key, bytes) = entry?;
        // Newest first for now: the record's items from its last. A page (`before`) takes
        // records whole, so that the next starts at a record's id.
        let record = codec::decode_quarantine(id_of(&key), &bytes)?;
        match before {
            Some(_) => items.extend(record.into_iter().rev()),
            None => items.extend(record.into_iter().rev().take(limit - items.len())),
        }
    }
    items.into_iter().rev().try_for_each(f)
}

/// A window over the indexes: events of one (source, type), with these key values, whose event
/// time is in `from_ms..=to_ms`, among the first `max_seq` of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub source: String,
    pub kind: String,
    /// Every one must be equal. Empty: every event of the type.
    pub keys: Vec<(String, String)>,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Events after this seq are not seen: a rule sees the history as it was when its event was
    /// appended, so processing an event again sees the same history.
    pub max_seq: u64,
}

/// Which end of a window to take from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Earliest event time first.
    Oldest,
    /// Latest event time first.
    Newest,
}

/// The (time, seq) of the matching events, in `order`, at most `limit`, and how many there
/// are (up to `limit`). With `keep` false only the count is made: no list is built, so
/// counting a day of events costs no memory.
pub(crate) fn window(
    log: &Log,
    index: &Index,
    window: &Window,
    (order, limit, keep): (Order, usize, bool),
    indexed: u64,
) -> Result<(Vec<(i64, u64)>, usize), StoreError> {
    if window.from_ms > window.to_ms || limit == 0 {
        return Ok((Vec::new(), 0));
    }
    let (scan_prefix, others) = match window.keys.split_first() {
        None => (keys::type_prefix(&window.source, &window.kind), &[][..]),
        Some(((name, value), others)) => (
            keys::key_prefix(&window.source, &window.kind, name, value),
            others,
        ),
    };
    // Other keys: the seqs each allows, in the same time range.
    let mut allowed: Vec<std::collections::HashSet<u64>> = Vec::with_capacity(others.len());
    for (name, value) in others {
        let prefix = keys::key_prefix(&window.source, &window.kind, name, value);
        let mut set = std::collections::HashSet::new();
        for entry in time_range(index, &prefix, window.from_ms, window.to_ms, false) {
            let (key, _) = entry?;
            set.insert(index_time_seq(&key)?.1);
        }
        allowed.push(set);
    }
    let tail = window.max_seq > indexed;
    let mut found = Vec::new();
    let mut count = 0;
    let entries = time_range(
        index,
        &scan_prefix,
        window.from_ms,
        window.to_ms,
        order == Order::Newest,
    );
    for entry in entries {
        let (key, _) = entry?;
        let (time, seq) = index_time_seq(&key)?;
        if seq > window.max_seq || !allowed.iter().all(|set| set.contains(&seq)) {
            continue;
        }
        if tail || keep {
            found.push((time, seq));
        }
        count += 1;
        if !tail && count >= limit {
            return Ok((found, count));
        }
    }
    if tail {
        // Events not indexed yet: read from the log.
        let purged = index.purged();
        log.for_each_record(indexed + 1, window.max_seq, |seq, record| {
            if purged.contains(seq) {
                return Ok(());
            }
            let view = codec::view_record(seq, record)?;
            let matches = view.source == window.source
                && view.kind == window.kind
                && (window.from_ms..=window.to_ms).contains(&view.time_ms)
                && window
                    .keys
                    .iter()
                    .all(|(n, v)| view.keys.iter().any(|(kn, kv)| kn == n && kv == v));
            if matches {
                found.push((view.time_ms, seq));
            }
            Ok(())
        })?;
        found.sort_unstable();
        found.dedup();
        if order == Order::Newest {
            found.reverse();
        }
        found.truncate(limit);
        count = found.len();
        if !keep {
            found = Vec::new();
        }
    }
    Ok((found, count))
}

fn time_range(index: &Index, prefix: &[u8], from_ms: i64, to_ms: i64, newest_first: bool) -> Scan {
    let mut start = prefix.to_vec();
    start.extend_from_slice(&keys::time_key(from_ms));
    let mut end = prefix.to_vec();
    end.extend_from_slice(&keys::time_key(to_ms));
    end.extend_from_slice(&[0xff; 8]);
    index.scan(prefix, &start, &end, newest_first)
}

fn index_time_seq(key: &[u8]) -> Result<(i64, u64), StoreError> {
    let bad = || StoreError::Corrupt {
        key: format!("{key:?}"),
        reason: "index key without time and sequence number".to_owned(),
    };
    let n = key.len();
    let time = key
        .get(n.checked_sub(16).ok_or_else(bad)?..n - 8)
        .and_then(keys::read_time)
        .ok_or_else(bad)?;
    let seq = keys::read_u64(&key[n - 8..]).ok_or_else(bad)?;
    Ok((time, seq))
}
