//! Atomic commits without sled transactions: a write-ahead journal in a file of its own
//! (`store/engine/journal`).
//!
//! The applier appends each commit of a batch (every write the engine decided for a batch of
//! events, and the cursor past them) as one record, `[len: u32][xxh3-64: u64][commit: u64]
//! [writes]` (the hash covers the commit number and the writes), and `fdatasync`s the file.
//! Only then does it apply the writes to the tree with plain writes, each commit's number
//! (`Mapplied`) after its writes, and make the tree durable; then the file is emptied. sled
//! recovers a prefix of the writes made before a crash, so at open:
//! - a record whose commit is at or below `Mapplied` was applied whole: skipped (the actions
//!   executor may have removed a delivered item since, which a replay would bring back);
//! - a later whole record began to apply, or not: replayed (its writes are idempotent), in
//!   order, each with its `Mapplied`;
//! - a torn record at the end (a crash while appending) and anything after it never began to
//!   apply (the file is synced before the first write): dropped, and the engine processes its
//!   events again from the same history.
//!
//! The journal is synced before the tree's writes because sled's own flusher writes pages in
//! the background: without it, a power loss could keep some of a commit's writes and lose the
//! record that completes them.
//!
//! Why a file and not sled: the journal was chunks in the engine's tree, inserted and removed
//! for every commit, and sled copies a whole leaf on every write. Under wrk with the shipped
//! rules that churn was about 50 MB of the peak RSS (286 MB against 234 MB without it).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use gancho_store::StoreError;
use gancho_store::keys::read_u64;
use gancho_store::kv::{Tree, sync_dir};
use xxhash_rust::xxh3::xxh3_64;

use crate::overlay::Write;

/// The number of the last commit applied to the tree (`u64` BE), written after its writes.
pub(crate) const APPLIED_KEY: &[u8] = b"Mapplied";
/// The journal's file, in the engine database's folder.
pub(crate) const JOURNAL_FILE: &str = "journal";
/// A record's header: its length, its hash, its commit number.
const HEADER: usize = 4 + 8 + 8;

/// The applier's end of the journal file.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    /// Bytes in the file (the next record goes there).
    len: u64,
    fsync: bool,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

impl Journal {
    /// Opens (or creates) the journal in the engine database's folder `dir`, completes the
    /// commits a crash interrupted (see the module documentation), makes that durable with
    /// `sync`, and empties the file. Returns the journal and the number of the last commit
    /// applied: the next commit takes the number after it.
    pub(crate) fn open(
        dir: &Path,
        tree: &Tree,
        fsync: bool,
        sync: impl Fn() -> Result<(), StoreError>,
    ) -> Result<(Journal, u64), StoreError> {
        let path = dir.join(JOURNAL_FILE);
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        if created && fsync {
            // The file's name durable before any record in it counts.
            sync_dir(dir)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io(format!("reading {}", path.display())))?;
        let applied = applied_commit(tree)?;
        let (applied, replayed, _) = replay(tree, &bytes, applied, &path.display().to_string())?;
        let mut journal = Journal {
            file,
            path,
            len: bytes.len() as u64,
            fsync,
        };
        if journal.len > 0 {
            sync()?;
            journal.empty()?;
            if journal.fsync {
                journal.sync_file()?;
            }
        }
        if replayed > 0 {
            tracing::info!(replayed, "completed the engine commits a crash interrupted");
        }
        Ok((journal, applied))
    }

    /// Appends the records of a batch of commits, and makes them durable.
    #[cfg(test)]
    pub(crate) fn append(&mut self, commits: &[(u64, Vec<Write<'_>>)]) -> Result<(), StoreError> {
        self.append_encoded(&encode_records(commits))
    }

    /// Appends records [`encode_records`] made, and makes them durable.
    pub(crate) fn append_encoded(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let what = || format!("appending to {}", self.path.display());
        // Half the batch written, the rest not: a torn record, which the next open drops.
        let half = buf.len() / 2;
        self.file
            .write_all_at(&buf[..half], self.len)
            .map_err(io(what()))?;
        gancho_core::fail_point!("state.journal.before_marker");
        self.file
            .write_all_at(&buf[half..], self.len + half as u64)
            .map_err(io(what()))?;
        self.len += buf.len() as u64;
        if self.fsync {
            self.sync_file()?;
        }
        Ok(())
    }

    /// Every commit appended is durable in the tree: the records are no longer needed. The file
    /// is emptied without a sync: records that come back after a crash are skipped by their
    /// commit number.
    pub(crate) fn applied(&mut self) -> Result<(), StoreError> {
        gancho_core::fail_point!("state.journal.remove");
        self.empty()
    }

    fn empty(&mut self) -> Result<(), StoreError> {
        self.file
            .set_len(0)
            .map_err(io(format!("emptying {}", self.path.display())))?;
        self.len = 0;
        Ok(())
    }

    fn sync_file(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(io(format!("fdatasync of {}", self.path.display())))
    }
}

/// Applies the whole records of `bytes` whose commits are after `applied`, in order, up to the
/// first torn or damaged one. Returns the last commit applied, how many were, and how many
/// bytes of whole records `bytes` began with. `what` names the journal in errors.
pub(crate) fn replay(
    tree: &Tree,
    bytes: &[u8],
    mut applied: u64,
    what: &str,
) -> Result<(u64, usize, usize), StoreError> {
    let mut replayed = 0;
    let mut whole = 0;
    for (commit, writes) in records(bytes) {
        whole += HEADER + writes.len();
        if commit <= applied {
            continue;
        }
        let writes = decode_journal(writes).ok_or_else(|| StoreError::Corrupt {
            key: format!("{what} (commit {commit})"),
            reason: "a journal record whose hash matches but whose writes do not decode".to_owned(),
        })?;
        apply(tree, commit, writes.into_iter())?;
        applied = commit;
        replayed += 1;
        tracing::debug!(commit, "replayed an engine commit");
    }
    Ok((applied, replayed, whole))
}

/// The records of a batch of commits, as the journal file holds them.
pub(crate) fn encode_records(commits: &[(u64, Vec<Write<'_>>)]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (commit, writes) in commits {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER]);
        buf[start + 12..start + 20].copy_from_slice(&commit.to_be_bytes());
        encode_journal_into(writes, &mut buf);
        let len = (buf.len() - start - HEADER) as u32;
        let hash = xxh3_64(&buf[start + 12..]);
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        buf[start + 4..start + 12].copy_from_slice(&hash.to_be_bytes());
    }
    buf
}

/// The number of the last commit applied to the tree, 0 for none.
fn applied_commit(tree: &Tree) -> Result<u64, StoreError> {
    match tree.get(APPLIED_KEY)? {
        None => Ok(0),
        Some(v) => read_u64(&v).ok_or_else(|| StoreError::Corrupt {
            key: "Mapplied".to_owned(),
            reason: "not a u64".to_owned(),
        }),
    }
}

/// Applies a commit's writes to the tree, its number last. `state.apply.halfway` stops it
/// halfway through in test builds.
pub(crate) fn apply<'a>(
    tree: &Tree,
    commit: u64,
    writes: impl ExactSizeIterator<Item = JournalEntry<'a>>,
) -> Result<(), StoreError> {
    let half = writes.len() / 2;
    for (i, (key, value)) in writes.enumerate() {
        if i == half {
            gancho_core::fail_point!("state.apply.halfway");
        }
        match value {
            Some(v) => tree.insert(key, v).map(drop),
            None => tree.remove(key).map(drop),
        }?;
    }
    tree.insert(APPLIED_KEY, &commit.to_be_bytes()[..])
        .map(drop)
}

/// The whole records of a journal file's bytes, in order, up to the first torn or damaged one.
fn records(mut bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    std::iter::from_fn(move || {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let hash = read_u64(bytes.get(4..12)?)?;
        let body = bytes.get(12..HEADER + len)?;
        if xxh3_64(body) != hash {
            tracing::warn!("a torn engine journal record: dropped with what follows it");
            return None;
        }
        let commit = read_u64(&body[..8])?;
        bytes = &bytes[HEADER + len..];
        Some((commit, &body[8..]))
    })
}

/// The actions a shared journal message's commits put in the outbox, with each one's commit
/// number, in order: what an owner decided (and, rarely, a dead letter an operator put back).
/// The failure tests' oracle compares them with what a single node decides on the same events.
pub fn decided_in(bytes: &[u8]) -> Result<Vec<(u64, gancho_core::ActionRequest)>, StoreError> {
    let mut decided = Vec::new();
    for (commit, writes) in records(bytes) {
        let writes = decode_journal(writes).ok_or_else(|| StoreError::Corrupt {
            key: format!("the partition's journal (commit {commit})"),
            reason: "a journal record whose hash matches but whose writes do not decode".to_owned(),
        })?;
        for (key, value) in writes {
            if key.len() > 1
                && key[0] == crate::schema::OUTBOX
                && crate::schema::channel_byte_known(key[1])
                && let Some(value) = value
            {
                let action = serde_json::from_slice(value).map_err(|err| StoreError::Corrupt {
                    key: format!("the partition's journal (commit {commit})"),
                    reason: format!("an outbox item that is not an action: {err}"),
                })?;
                decided.push((commit, action));
            }
        }
    }
    Ok(decided)
}

/// `[n: u32]([key len: u32][key][0 | 1 (value len: u32)(value)])*`
#[cfg(test)]
pub(crate) fn encode_journal(writes: &[Write<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_journal_into(writes, &mut out);
    out
}

fn encode_journal_into(writes: &[Write<'_>], out: &mut Vec<u8>) {
    let size: usize = writes
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, |v| v.len()))
        .sum();
    out.reserve(4 + size);
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
