//! Cluster mode: a partition's engine database as one file, and back. A snapshot holds every
//! key of the engine's tree that the partition's decisions made (rule state, timers,
//! expectations, the outbox and its outcomes, the cursor, the last commit's number), not what
//! belongs to the node that wrote it (the store's secret, careful mode's marks, its journal
//! position). It is taken between commits, so it is exactly the decisions up to one journal
//! message: the node's shared journal position, written in the snapshot's mark. A new owner
//! restores it, then applies the journal's messages after that position as after any takeover.
//!
//! Format (version 1): `gancho-snapshot 1\n`, then each entry as `E`, its key's length (u32,
//! big endian), the key, its value's length (u32), the value; then `Z`, the entry count (u64)
//! and the xxh3-64 of every byte before it (u64). A file cut short, altered or followed by
//! anything is refused as a whole, before the database it would replace is touched.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

use gancho_store::StoreError;
use gancho_store::kv::{Db, FileSync, sync_dir};
use xxhash_rust::xxh3::Xxh3;

use crate::applier::wait_durable;
use crate::overlay::lock;
use crate::{EngineState, JOURNAL_POSITION_KEY, SECRET_KEY, StoreConfig};

const MAGIC: &[u8] = b"gancho-snapshot 1\n";
/// The tag before each entry, and the one before the trailer.
const ENTRY: u8 = b'E';
const END: u8 = b'Z';

/// What a snapshot holds: the decisions up to this message of the partition's journal, which
/// leave the engine at this cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMark {
    pub journal_seq: u64,
    pub cursor: u64,
    pub entries: u64,
}

/// Keys of the node that keeps the database, not of the partition: never in a snapshot.
fn node_local(key: &[u8]) -> bool {
    [SECRET_KEY, JOURNAL_POSITION_KEY]
        .iter()
        .chain(crate::poison::LOCAL_KEYS)
        .any(|local| key == *local)
}

fn corrupt(reason: &str) -> StoreError {
    crate::schema::corrupt("a snapshot", reason)
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Writes and hashes at once.
struct Hashed<'a> {
    out: &'a mut dyn Write,
    hash: Xxh3,
}

impl Hashed<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.hash.update(bytes);
        self.out.write_all(bytes).map_err(io("writing a snapshot"))
    }
}

impl EngineState {
    /// Cluster mode: the last message of the partition's journal the fence knows (`None`
    /// without a fence): how far the shared journal has grown since a snapshot.
    pub fn fence_position(&self) -> Option<u64> {
        self.shared.fence.as_ref().map(|fence| fence.position())
    }

    /// Writes this (fenced) database to `out` as a snapshot, between two commits: no commit is
    /// queued while it runs (the engine's next commit waits), and every one queued before is
    /// applied first. Its mark names the journal message the snapshot is up to (the fence's
    /// position), and that position is recorded here too, so that this node taking the
    /// partition over again later reads the journal on from there.
    pub fn write_snapshot(&self, out: &mut dyn Write) -> Result<SnapshotMark, StoreError> {
        let Some(fence) = self.shared.fence.clone() else {
            return Err(StoreError::Engine(
                "a snapshot is taken of a partition's database only".to_owned(),
            ));
        };
        let queue = lock(&self.applier);
        let last = self.commits.load(Ordering::Acquire).saturating_sub(1);
        wait_durable(&self.shared, last)?;
        let journal_seq = fence.position();
        let cursor = self.shared.durable_cursor.load(Ordering::Acquire);
        let mut hashed = Hashed {
            out,
            hash: Xxh3::new(),
        };
        hashed.put(MAGIC)?;
        let mut entries = 0u64;
        for entry in self.tree.iter() {
            let (key, value) = entry?;
            if node_local(&key) {
                continue;
            }
            hashed.put(&[ENTRY])?;
            for part in [&key[..], &value[..]] {
                let len =
                    u32::try_from(part.len()).map_err(|_| corrupt("an entry larger than 4 GiB"))?;
                hashed.put(&len.to_be_bytes())?;
                hashed.put(part)?;
            }
            entries += 1;
        }
        hashed.put(&[END])?;
        hashed.put(&entries.to_be_bytes())?;
        let digest = hashed.hash.digest();
        hashed
            .out
            .write_all(&digest.to_be_bytes())
            .map_err(io("writing a snapshot"))?;
        hashed.out.flush().map_err(io("writing a snapshot"))?;
        self.set_journal_position(journal_seq)?;
        drop(queue);
        Ok(SnapshotMark {
            journal_seq,
            cursor,
            entries,
        })
    }
}

/// Reads exactly `buf.len()` bytes, hashing them.
fn read_hashed(input: &mut dyn Read, hash: &mut Xxh3, buf: &mut [u8]) -> Result<(), StoreError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => return Err(corrupt("cut short")),
            Ok(n) => got += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(io("reading a snapshot")(err)),
        }
    }
    hash.update(buf);
    Ok(())
}

/// Whether the input has another byte (read into `buf`).
fn read_some(input: &mut dyn Read, buf: &mut [u8; 1]) -> Result<bool, StoreError> {
    loop {
        match input.read(buf) {
            Ok(n) => return Ok(n > 0),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(io("reading a snapshot")(err)),
        }
    }
}

/// The journal position recorded in the engine database in `store_dir/engine` (0: none, or no
/// database yet), read without opening it as a state: what a takeover compares with the
/// partition's latest snapshot. The database must not be open.
pub fn journal_position_at(store_dir: &Path, config: &StoreConfig) -> Result<u64, StoreError> {
    let path = store_dir.join("engine");
    if !path.exists() {
        return Ok(0);
    }
    let db = Db::open(&path, config.engine_cache())?;
    match db.tree("engine")?.get(JOURNAL_POSITION_KEY)? {
        None => Ok(0),
        Some(v) => gancho_store::keys::read_u64(&v)
            .ok_or_else(|| crate::schema::corrupt("Mjournal", "not a u64")),
    }
}

/// Replaces the engine database in `store_dir/engine` with the snapshot read from `input`,
/// which is up to message `journal_seq` of the partition's journal. The database must not be
/// open. The snapshot is written to `engine.restore` beside it, checked whole and made
/// durable, and only then swapped in; a crash before the swap leaves the old database, one
/// after it the new (a leftover `engine.restore` or `engine.old` is removed at the next
/// restore). Returns how many entries it restored.
pub fn restore_snapshot(
    store_dir: &Path,
    config: &StoreConfig,
    input: &mut dyn Read,
    journal_seq: u64,
) -> Result<u64, StoreError> {
    let (live, fresh, old) = (
        store_dir.join("engine"),
        store_dir.join("engine.restore"),
        store_dir.join("engine.old"),
    );
    for leftover in [&fresh, &old] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).map_err(io("removing a leftover restore"))?;
        }
    }
    let entries = {
        let db = Db::open(&fresh, config.engine_cache())?;
        let tree = db.tree("engine")?;
        let entries = load(&tree, input)?;
        tree.insert(JOURNAL_POSITION_KEY, &journal_seq.to_be_bytes()[..])?;
        db.make_durable(Some(&mut FileSync::open(&fresh)?))?;
        entries
    };
    if live.exists() {
        std::fs::rename(&live, &old).map_err(io("setting the old engine database aside"))?;
    }
    std::fs::rename(&fresh, &live).map_err(io("putting the restored engine database in"))?;
    sync_dir(store_dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io("removing the old engine database"))?;
    }
    Ok(entries)
}

/// Reads a snapshot's entries into `tree`, checking its count and hash at the end.
fn load(tree: &gancho_store::kv::Tree, input: &mut dyn Read) -> Result<u64, StoreError> {
    let mut hash = Xxh3::new();
    let mut magic = vec![0u8; MAGIC.len()];
    read_hashed(input, &mut hash, &mut magic)?;
    if magic != MAGIC {
        return Err(corrupt("not a gancho snapshot of version 1"));
    }
    let mut entries = 0u64;
    loop {
        let mut tag = [0u8; 1];
        read_hashed(input, &mut hash, &mut tag)?;
        match tag[0] {
            ENTRY => {
                let key = read_part(input, &mut hash)?;
                let value = read_part(input, &mut hash)?;
                tree.insert(key, value)?;
                entries += 1;
            }
            END => break,
            _ => return Err(corrupt("an unknown record")),
        }
    }
    let mut count = [0u8; 8];
    read_hashed(input, &mut hash, &mut count)?;
    let digest = hash.digest();
    let mut stored = [0u8; 8];
    read_hashed(input, &mut Xxh3::new(), &mut stored)?;
    if u64::from_be_bytes(count) != entries || u64::from_be_bytes(stored) != digest {
        return Err(corrupt("its count or hash does not match its entries"));
    }
    let mut more = [0u8; 1];
    if read_some(input, &mut more)? {
        return Err(corrupt("bytes after its end"));
    }
    Ok(entries)
}

/// A length-prefixed part of an entry.
fn read_part(input: &mut dyn Read, hash: &mut Xxh3) -> Result<Vec<u8>, StoreError> {
    let mut len = [0u8; 4];
    read_hashed(input, hash, &mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    // Read in steps, so that a corrupt length cannot make it allocate gigabytes at once.
    let mut part = Vec::with_capacity(len.min(1 << 20));
    let mut chunk = vec![0u8; len.min(64 * 1024)];
    while part.len() < len {
        let n = (len - part.len()).min(chunk.len());
        read_hashed(input, hash, &mut chunk[..n])?;
        part.extend_from_slice(&chunk[..n]);
    }
    Ok(part)
}
