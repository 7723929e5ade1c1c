//! Atomic commits without sled transactions: a commit (every change the engine decided for a
//! batch of events, and the cursor past them) is first written as a journal: its writes in
//! chunks of about 2 KiB, then a marker naming the number of chunks. Then its changes are
//! applied with plain writes, and once they are durable the journal is removed. sled recovers
//! a prefix of the writes made before a crash, so at open either the interrupted commit's
//! marker is there, and replaying its chunks (idempotent writes) completes the commit, or it is
//! not, and neither are any of its changes.

use gancho_store::StoreError;
use gancho_store::keys::read_u64;
use gancho_store::kv::{Bytes, Tree};

use crate::overlay::{Write, Writes};

pub(crate) const JOURNAL: u8 = b'J';
/// The chunk number of a commit's marker, written after its last chunk.
pub(crate) const MARKER: u32 = u32::MAX;
/// A commit's writes are journaled in chunks of about this many bytes. Small on purpose: sled
/// 0.34 keeps up to 16 values in a leaf and copies the leaf on every write to it, and its cache
/// keeps at least one page per shard (256) whatever its budget, so the size of the values sets
/// what a busy tree costs in memory. Under wrk with the shipped rules (20 s, 64 connections),
/// 32 KiB chunks peaked at 375-469 MB and left a 521-677 MB engine database; 4 KiB at
/// 280-298 MB (125-148 MB on disk); 2 KiB at 277 MB (113 MB); 1 KiB at 276 MB (105 MB).
const JOURNAL_CHUNK: usize = 2 * 1024;

pub(crate) fn journal_key(commit: u64, chunk: u32) -> [u8; 13] {
    let mut key = [JOURNAL; 13];
    key[1..9].copy_from_slice(&commit.to_be_bytes());
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

pub(crate) fn journal_key_parts(key: &[u8]) -> Option<(u64, u32)> {
    let commit = read_u64(key.get(1..9)?)?;
    let chunk = u32::from_be_bytes(key.get(9..13)?.try_into().ok()?);
    Some((commit, chunk))
}

/// Completes the commits a crash interrupted after their journal was written whole (its
/// marker is there), in order; drops journal chunks without a marker (their commit never
/// began to apply). Then removes every journal record.
pub(crate) fn recover(
    tree: &Tree,
    sync: impl Fn() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let records: Vec<_> = tree.scan_prefix([JOURNAL]).collect::<Result<_, _>>()?;
    if records.is_empty() {
        return Ok(());
    }
    let bad = |key: &[u8]| StoreError::Corrupt {
        key: format!("{key:?}"),
        reason: "bad journal record".to_owned(),
    };
    // Keys sort by commit number, then chunk, with the marker last.
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut replayed = 0;
    for (key, value) in &records {
        let (commit, chunk) = journal_key_parts(key).ok_or_else(|| bad(key))?;
        if chunks.len() as u32 != chunk && chunk != MARKER {
            chunks.clear();
        }
        if chunk == MARKER {
            let n = value
                .as_ref()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| bad(key))?;
            if chunks.len() as u32 != n {
                // Chunks go only when the commit is already durable (markers are removed
                // first, but a store written before that order may lack some): nothing to do.
                tracing::warn!(commit, "an engine journal without all its chunks: skipped");
                chunks.clear();
                continue;
            }
            for chunk in &chunks {
                for (k, v) in decode_journal(chunk).ok_or_else(|| bad(key))? {
                    match v {
                        Some(v) => tree.insert(k, v)?,
                        None => tree.remove(k)?,
                    }
                }
            }
            replayed += 1;
            chunks.clear();
            tracing::debug!(commit, "replayed an engine commit");
        } else {
            chunks.push(value);
        }
    }
    sync()?;
    remove_journal(tree, records.into_iter().map(|(key, _)| key))?;
    sync()?;
    tracing::info!(replayed, "completed the engine commits a crash interrupted");
    Ok(())
}

/// Writes a commit's journal: its writes in chunks of about [`JOURNAL_CHUNK`] bytes (one large
/// record per commit would make sled write a page over a quarter of a segment to a file of its
/// own every time; large chunks make every leaf copy large), then the marker.
pub(crate) fn write_journal(
    tree: &Tree,
    commit: u64,
    writes: &Writes<'_>,
) -> Result<(), StoreError> {
    let mut n = 0u32;
    let mut start = 0;
    while start < writes.len() {
        let mut end = start;
        let mut size = 0;
        while end < writes.len() && (end == start || size < JOURNAL_CHUNK) {
            let (k, v) = &writes[end];
            size += 9 + k.len() + v.as_ref().map_or(0, |v| v.len());
            end += 1;
        }
        tree.insert(journal_key(commit, n), encode_journal(&writes[start..end]))?;
        n += 1;
        start = end;
    }
    // The chunks written, the marker that makes them a commit to complete not yet.
    gancho_core::fail_point!("state.journal.before_marker");
    tree.insert(journal_key(commit, MARKER), &n.to_be_bytes())?;
    Ok(())
}

/// Removes journal records, each commit's marker before its chunks: a crash in between leaves
/// chunks without a marker (dropped at open), never a marker without its chunks.
pub(crate) fn remove_journal(
    tree: &Tree,
    keys: impl Iterator<Item = Bytes>,
) -> Result<(), StoreError> {
    let (markers, chunks): (Vec<_>, Vec<_>) =
        keys.partition(|key| journal_key_parts(key).is_some_and(|(_, chunk)| chunk == MARKER));
    for key in markers.into_iter().chain(chunks) {
        gancho_core::fail_point!("state.journal.remove");
        tree.remove(key)?;
    }
    Ok(())
}

/// `[n: u32]([key len: u32][key][0 | 1 (value len: u32)(value)])*`
pub(crate) fn encode_journal(writes: &[Write<'_>]) -> Vec<u8> {
    let size: usize = writes
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, |v| v.len()))
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(writes.len() as u32).to_be_bytes());
    for (key, value) in writes {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
    }
    out
}

pub(crate) type JournalEntry<'a> = (&'a [u8], Option<&'a [u8]>);

pub(crate) fn decode_journal(bytes: &[u8]) -> Option<Vec<JournalEntry<'_>>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    fn len(bytes: &mut &[u8]) -> Option<usize> {
        usize::try_from(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?)).ok()
    }
    let mut bytes = bytes;
    let n = len(&mut bytes)?;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let key_len = len(&mut bytes)?;
        let key = take(&mut bytes, key_len)?;
        let value = match take(&mut bytes, 1)? {
            [0] => None,
            _ => {
                let value_len = len(&mut bytes)?;
                Some(take(&mut bytes, value_len)?)
            }
        };
        out.push((key, value));
    }
    Some(out)
}
