//! Where the log's blocks live: small ones in sled, larger ones in segment files beside it,
//! with a pointer in sled. [`Log`] reads a block wherever it is.
//!
//! Why not all in sled: sled 0.34 copies a whole leaf (up to 16 values) on every insert into
//! it, and frees the copy only at epoch reclamation. A tree of 8-32 KiB log blocks written at
//! 100,000 events a second churns about eight times the log's bytes through the allocator, and
//! the process's memory follows that churn, not the cache budget (issue 15,
//! `docs/memory-notes.md`: 68 MB against 15 MB in a test of sled alone at that rate). A block
//! over [`INLINE_MAX`] bytes is therefore appended to the current segment file, and sled holds
//! a 33-byte pointer to it: `[2][n: u32][segment: u64][offset: u64][len: u32][xxh3-64: u64]`.
//! A single-event request's block stays in sled: its leaf copies are cheap, and it costs the
//! group commit no second `fdatasync`.
//!
//! Durability: the writer appends a group's blocks to the segment and inserts their pointers;
//! the flusher `fdatasync`s the segments before it writes the group's commit record. sled may
//! make the pointers durable at any time (its own thread flushes every 500 ms, and the kernel
//! writes back), but a pointer counts only below a durable commit record, and that record is
//! written after the bytes are on disk. A
//! new segment's directory entry is synced when the file is created. Bytes past the last
//! committed pointer (a group a crash interrupted) are never read; segments wholly past the
//! log's end are deleted at open. A group that fails is rewound: a segment it started is
//! deleted, so every block in a segment has a seq at or above the segment's.
//!
//! Segments are named by the seq of their first block (`{seq:020}.seg`) and hold the blocks of
//! a stretch of the log, in order. A prune rewrites a block in sled (a rewritten block is
//! smaller, and prunes are rare) or removes it; a segment that no pointer refers to any more
//! is deleted once that is durable ([`Segments::collect_garbage`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use xxhash_rust::xxh3::xxh3_64;

use super::codec::{self, Block};
use crate::error::StoreError;
use crate::keys::read_u64;
use crate::kv::{Bytes, Tree};

/// The folder of the segments, in the log database's.
pub(crate) const SEGMENTS_DIR: &str = "segments";
/// A block up to this many bytes (compressed) stays in sled.
pub(crate) const INLINE_MAX: usize = 1024;
/// A segment takes no more blocks once it passes this size (in unit tests, a few blocks).
const SEGMENT_MAX: u64 = if cfg!(test) {
    16 * 1024
} else {
    64 * 1024 * 1024
};
/// No block is larger (a group's records are cut at 32 KiB, and one record is at most a few
/// MiB): a pointer saying otherwise is damaged.
const MAX_BLOCK: u64 = 64 * 1024 * 1024;
const POINTER_LEN: usize = 33;

/// Where a block is in the segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pointer {
    n: u32,
    segment: u64,
    offset: u64,
    len: u32,
    hash: u64,
}

impl Pointer {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(POINTER_LEN);
        v.push(codec::BLOCK_POINTER);
        v.extend_from_slice(&self.n.to_be_bytes());
        v.extend_from_slice(&self.segment.to_be_bytes());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.hash.to_be_bytes());
        v
    }

    fn decode(value: &[u8]) -> Option<Pointer> {
        if value.len() != POINTER_LEN || value[0] != codec::BLOCK_POINTER {
            return None;
        }
        let u32_at = |i: usize| value.get(i..i + 4)?.try_into().ok().map(u32::from_be_bytes);
        Some(Pointer {
            n: u32_at(1)?,
            segment: read_u64(&value[5..13])?,
            offset: read_u64(&value[13..21])?,
            len: u32_at(21)?,
            hash: read_u64(&value[25..33])?,
        })
    }
}

/// The segment files of one log, and open handles on them for reading.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    open: RwLock<BTreeMap<u64, Arc<File>>>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

impl Segments {
    /// The segments in `dir` (created if missing).
    pub(crate) fn open(dir: &Path) -> Result<Arc<Segments>, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Arc::new(Segments {
            dir: dir.to_owned(),
            open: RwLock::new(BTreeMap::new()),
        }))
    }

    /// The ids of the segment files on disk, in order.
    fn ids(&self) -> Result<Vec<u64>, StoreError> {
        let what = || format!("listing {}", self.dir.display());
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(what()))? {
            let name = entry.map_err(io(what()))?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(id) = id {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn file(&self, id: u64) -> Result<Arc<File>, std::io::Error> {
        if let Some(file) = self.open.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(Arc::clone(file));
        }
        // Opened under the write lock, which `delete` holds while it unlinks: a handle on a
        // deleted segment never enters the map (it would keep its disk space until a restart).
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = open.get(&id) {
            return Ok(Arc::clone(file));
        }
        let file = Arc::new(File::open(segment_path(&self.dir, id))?);
        Ok(Arc::clone(open.entry(id).or_insert(file)))
    }

    /// The bytes a pointer points at, checked against its hash. `Ok(None)`: the segment is gone.
    fn read(&self, key: &[u8], p: &Pointer) -> Result<Option<Vec<u8>>, StoreError> {
        let file = match self.file(p.segment) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    what: format!("opening log segment {}", p.segment),
                    source,
                });
            }
        };
        if u64::from(p.len) > SEGMENT_MAX + MAX_BLOCK {
            return Err(StoreError::Corrupt {
                key: format!("{key:?}"),
                reason: format!("a block pointer of {} bytes", p.len),
            });
        }
        let mut buf = vec![0u8; p.len as usize];
        file.read_exact_at(&mut buf, p.offset).map_err(io(format!(
            "reading log segment {} at {}",
            p.segment, p.offset
        )))?;
        if xxh3_64(&buf) != p.hash {
            return Err(StoreError::Corrupt {
                key: format!("{key:?}"),
                reason: format!(
                    "the block in log segment {} at {} does not match its checksum",
                    p.segment, p.offset
                ),
            });
        }
        Ok(Some(buf))
    }

    /// Deletes the segments that no block of `tree` points into any more. The removals and
    /// rewrites that let go of them must be durable first.
    ///
    /// With `below: None` (at open, before the writer starts) every segment is looked at. With
    /// `Some(seq)`, only those whose blocks all begin below `seq`, which must be committed: the
    /// writer may be appending to a later one, or have appended blocks whose pointers it has
    /// not inserted yet.
    pub(crate) fn collect_garbage(
        &self,
        tree: &Tree,
        below: Option<u64>,
    ) -> Result<usize, StoreError> {
        let ids = self.ids()?;
        let mut deleted = 0;
        for (i, &id) in ids.iter().enumerate() {
            // A segment holds the blocks from its first seq up to the next segment's.
            let next = ids.get(i + 1).copied();
            let settled = match (below, next) {
                (None, _) => true,
                (Some(below), Some(next)) => next <= below,
                (Some(_), None) => false,
            };
            if !settled {
                continue;
            }
            let end = next.unwrap_or(u64::MAX);
            let mut live = false;
            for entry in tree.range(codec::log_key(id)..codec::log_key(end)) {
                let (_, value) = entry?;
                if Pointer::decode(&value).is_some_and(|p| p.segment == id) {
                    live = true;
                    break;
                }
            }
            if !live {
                self.delete(id)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn delete(&self, id: u64) -> Result<(), StoreError> {
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        open.remove(&id);
        let path = segment_path(&self.dir, id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                what: format!("deleting {}", path.display()),
                source,
            }),
        }
    }
}

/// The writer thread's end of the segments: appends blocks to the current segment, and hands
/// the files a group wrote to the flusher, which syncs them before the group's commit record.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    segments: Arc<Segments>,
    /// The segment being appended to, its id and length. A new one is started after an open.
    current: Option<(u64, Arc<File>, u64)>,
    /// The files written since the last `take_written`.
    written: Vec<Arc<File>>,
    /// Whether segments (and a new one's directory entry) are synced.
    fsync: bool,
}

impl SegmentWriter {
    pub(crate) fn new(segments: Arc<Segments>, fsync: bool) -> SegmentWriter {
        SegmentWriter {
            segments,
            current: None,
            written: Vec::new(),
            fsync,
        }
    }

    /// The value to store under the block's key: the block itself when it is small, else a
    /// pointer to where it was appended.
    pub(crate) fn place(&mut self, first_seq: u64, block: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        if block.len() <= INLINE_MAX {
            return Ok(block);
        }
        let n = codec::block_len(&block).unwrap_or(0) as u32;
        let (segment, file, len) = self.segment_for(first_seq)?;
        file.write_all_at(&block, len)
            .map_err(io(format!("appending to log segment {segment}")))?;
        if !self.written.iter().any(|f| Arc::ptr_eq(f, &file)) {
            self.written.push(Arc::clone(&file));
        }
        if let Some(current) = &mut self.current {
            current.2 += block.len() as u64;
        }
        Ok(Pointer {
            n,
            segment,
            offset: len,
            len: block.len() as u32,
            hash: xxh3_64(&block),
        }
        .encode())
    }

    fn segment_for(&mut self, first_seq: u64) -> Result<(u64, Arc<File>, u64), StoreError> {
        if let Some((id, file, len)) = &self.current
            && *len < SEGMENT_MAX
        {
            return Ok((*id, Arc::clone(file), *len));
        }
        let path = segment_path(&self.segments.dir, first_seq);
        // A file of that name can only be one a crash left before a pointer to it was
        // committed (the open deletes those): nothing refers to it.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        if self.fsync {
            crate::kv::sync_dir(&self.segments.dir)?;
        }
        let file = Arc::new(file);
        self.segments
            .open
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(first_seq, Arc::clone(&file));
        self.current = Some((first_seq, Arc::clone(&file), 0));
        Ok((first_seq, file, 0))
    }

    /// The files written since the last call: the flusher syncs them before the commit
    /// record that makes their blocks count.
    pub(crate) fn take_written(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.written)
    }

    /// Where the writer stands, to [`SegmentWriter::rewind`] to if the group fails.
    pub(crate) fn mark(&self) -> Mark {
        Mark(self.current.clone())
    }

    /// Undoes the placing of a failed group's blocks: a segment it started is deleted (its
    /// seqs will be given again, below the segment's name), and the next block goes where the
    /// group's first did. The bytes it appended are overwritten or never read.
    pub(crate) fn rewind(&mut self, mark: Mark) -> Result<(), StoreError> {
        self.written.clear();
        let started = self.current.as_ref().map(|(id, _, _)| *id);
        if let Some(id) = started
            && started != mark.0.as_ref().map(|(id, _, _)| *id)
        {
            self.segments.delete(id)?;
        }
        self.current = mark.0;
        Ok(())
    }
}

/// A [`SegmentWriter`]'s position before a group: its segment, the handle, the length.
#[derive(Debug)]
pub(crate) struct Mark(Option<(u64, Arc<File>, u64)>);

/// The log's tree and its segments: what reading a block takes.
#[derive(Debug, Clone)]
pub(crate) struct Log {
    pub(crate) tree: Tree,
    pub(crate) segments: Arc<Segments>,
}

impl Log {
    /// The block stored under `key` as `value`, read from its segment if `value` points there.
    /// A segment deleted meanwhile (a prune let go of it) means the value changed: it is read
    /// again, and a block that is gone reads as one whose events are all pruned.
    pub(crate) fn block(&self, key: &[u8], value: &[u8]) -> Result<Block, StoreError> {
        let Some(pointer) = Pointer::decode(value) else {
            return Block::parse(key, value);
        };
        if let Some(bytes) = self.segments.read(key, &pointer)? {
            return Block::parse(key, &bytes);
        }
        match self.tree.get(key)? {
            Some(now) if now[..] != value[..] => self.block(key, &now),
            Some(_) => Err(StoreError::Corrupt {
                key: format!("{key:?}"),
                reason: format!("log segment {} is missing", pointer.segment),
            }),
            None => Block::empty(key, pointer.n as usize),
        }
    }

    /// The block holding `seq`, if any, as its (key, value).
    pub(crate) fn find_block(&self, seq: u64) -> Result<Option<(Bytes, Bytes)>, StoreError> {
        codec::find_block(&self.tree, seq)
    }

    /// Calls `f` on every event record with a sequence number in `from..=to`, in order.
    pub(crate) fn for_each_record(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if from > to {
            return Ok(());
        }
        // Start at the block holding `from`, which may begin before it.
        let start = match self.find_block(from)? {
            Some((key, _)) => key.to_vec(),
            None => codec::log_key(from).to_vec(),
        };
        for entry in self.tree.range(start..=codec::log_key(to).to_vec()) {
            let (key, value) = entry?;
            let block = self.block(&key, &value)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_reads_back_and_anything_else_is_not_one() {
        let p = Pointer {
            n: 80,
            segment: 1_000_001,
            offset: 64 << 20,
            len: 9000,
            hash: 0xdead_beef_0bad_cafe,
        };
        let v = p.encode();
        assert_eq!(v.len(), POINTER_LEN);
        assert_eq!(Pointer::decode(&v), Some(p));
        assert_eq!(codec::block_len(&v), Some(80));
        assert_eq!(Pointer::decode(&v[..32]), None);
        assert_eq!(
            Pointer::decode(&codec::encode_block(&[b"x".to_vec()])),
            None
        );
    }

    #[test]
    fn a_block_read_while_a_prune_lets_go_of_its_segment_reads_as_it_is_now() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::kv::Db::open(&dir.path().join("db"), 1 << 20).unwrap();
        let log = Log {
            tree: db.tree("events").unwrap(),
            segments: Segments::open(&dir.path().join("segments")).unwrap(),
        };
        let records: Vec<Vec<u8>> = (0..100u32)
            .map(|i| format!("record {i} {}", i.wrapping_mul(2_654_435_761)).into_bytes())
            .collect();
        let mut writer = SegmentWriter::new(Arc::clone(&log.segments), false);
        let key = codec::log_key(7);
        let pointer = writer.place(7, codec::encode_block(&records)).unwrap();
        assert!(
            Pointer::decode(&pointer).is_some(),
            "a large block goes to a segment"
        );
        log.tree.insert(key, &pointer[..]).unwrap();
        let block = log.block(&key, &pointer).unwrap();
        assert_eq!(block.record(7), Some(&records[0][..]));
        assert_eq!(block.record(106), Some(&records[99][..]));

        // The segment goes while the pointer is still in the tree: damage, said as such.
        log.segments.delete(7).unwrap();
        let err = log.block(&key, &pointer).err().unwrap().to_string();
        assert!(err.contains("log segment 7 is missing"), "{err}");
        // A prune rewrote the block in the tree: the reader gets the new one.
        let mut pruned = records.clone();
        pruned[0].clear();
        let rewritten = codec::encode_block(&pruned[..3]);
        log.tree.insert(key, &rewritten[..]).unwrap();
        let block = log.block(&key, &pointer).unwrap();
        assert_eq!(
            (block.record(7), block.record(8)),
            (None, Some(&records[1][..]))
        );
        // A prune removed it: every event of it reads as pruned.
        log.tree.remove(key).unwrap();
        let block = log.block(&key, &pointer).unwrap();
        assert_eq!((block.len(), block.records().count()), (100, 0));
    }
}
