//! Run files: each disk run is one immutable file of its own, `indexes/runs/ID.run`, written
//! once by the indexer, read with positioned reads, and deleted whole when merged away. Its
//! record in the index database's tree (`run.rs`) makes it live; a file without one is what a
//! crash left of a run being written or deleted, and is deleted at open.
//!
//! Layout:
//!
//! | part     | bytes                                                                  |
//! |----------|------------------------------------------------------------------------|
//! | blocks   | each an LZ4 frame of one block's entries coded as `packed.rs` says, its size prepended |
//! | lookup filter | the Bloom filter of its untimed keys (dedup entries, looked up whole), u64 LE words |
//! | scan filter | the Bloom filter of its timed keys' prefixes (what scans ask for), u64 LE words |
//! | fences   | per block: its end offset u64 LE, xxh3 of its bytes u64 LE, its last key's length u32 LE and the key |
//! | footer   | `GXR3` (`GXR2`: index format 4, blocks as `block.rs` lays them out in memory), where the lookup filter, the scan filter and the fences start (u64 LE each), then the xxh3 of those three parts' bytes (u64 LE) |
//!
//! Why files and not sled values (decision 0006): sled kept every written block in memory far
//! beyond its cache budget, and left two thirds of the index database as garbage on disk, while a
//! run is written once, read by block and deleted whole, which plain files do at no cost. The
//! fences (the block index) and the lookup filter stay in memory, a few bytes per event; blocks
//! are read through the indexes' block cache, which the store's memory budget bounds.
//!
//! Why two filters: the writer's dedup asks the lookup filter of every run for every event, so
//! it stays in memory; scans are fewer and read their filter's one 64-byte block from the file
//! (the kernel's page cache keeps the hot ones). Kept whole in memory, the scan filters were
//! two thirds of the filters' bits and the largest part of an idle daemon's heap on a large
//! store (docs/memory-notes.md).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::block::{Block, first_not_before};
use super::bloom::{BLOOM_BLOCK_WORDS, Bloom, block_may_contain, block_of};
use super::layout::corrupt;
use super::packed::{find, unpack};
use crate::error::StoreError;

/// The folder of run files in the index database's folder.
pub(crate) const RUNS_DIR: &str = "runs";
const MAGIC: &[u8; 4] = b"GXR3";
const FOOTER_BYTES: u64 = 4 + 8 + 8 + 8 + 8;
/// The bytes of one block of a blocked Bloom filter.
const FILTER_BLOCK_BYTES: usize = 8 * BLOOM_BLOCK_WORDS;
const SUFFIX: &str = ".run";

/// The file of run `id` in `dir`.
pub(super) fn run_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}{SUFFIX}"))
}

/// The run id a file name stands for, if it is a run file's.
pub(super) fn run_id(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(SUFFIX)?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// The block index of a run: for each block a *fence* key, where the block ends in the file and
/// the checksum of its bytes. A fence is at least the block's last key and less than the next
/// block's first (the last block's is its last key), so "the first block whose fence is at least
/// `k`" is the only block that can hold `k`. Each fence is cut to the shortest such key (the
/// next block's first key, one byte past what the two share): about half the length of a whole
/// index key, and fences stay in memory for as long as their run. Kept in one buffer of keys,
/// so a block costs about 24 bytes beside its fence.
#[derive(Debug, Default)]
pub(super) struct Fences {
    keys: Vec<u8>,
    key_ends: Vec<u32>,
    ends: Vec<u64>,
    sums: Vec<u64>,
}

impl Fences {
    fn push(&mut self, last: &[u8], end: u64, sum: u64) {
        self.keys.extend_from_slice(last);
        self.key_ends
            .push(u32::try_from(self.keys.len()).unwrap_or(u32::MAX));
        self.ends.push(end);
        self.sums.push(sum);
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Cuts the last fence (a block's last key) to the shortest key that is at least it and
    /// less than `next`, the next block's first key.
    fn cut_last(&mut self, next: &[u8]) {
        let start = match self.key_ends.len() {
            0 => return,
            1 => 0,
            n => self.key_ends[n - 2] as usize,
        };
        let last = &self.keys[start..];
        let shared = last.iter().zip(next).take_while(|(a, b)| a == b).count();
        // `next` cut one byte past what they share is more than `last`, and less than `next`
        // unless it is all of `next` (then the fence stays whole).
        if shared + 1 >= next.len() || shared + 1 >= last.len() || last >= next {
            return;
        }
        self.keys.truncate(start);
        self.keys.extend_from_slice(&next[..shared + 1]);
        if let Some(end) = self.key_ends.last_mut() {
            *end = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
        }
    }

    /// Gives back what growing the vectors left over: fences stay in memory as long as their
    /// run, and the doubling of `Vec` could leave up to half of it unused (a heap profile of
    /// an idle daemon on 5 M events: filters and fences 35 MB, the largest part of its heap).
    fn shrink(mut self) -> Fences {
        self.keys.shrink_to_fit();
        self.key_ends.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.sums.shrink_to_fit();
        self
    }

    /// Block `i`'s last key.
    pub(super) fn key(&self, i: usize) -> &[u8] {
        let start = match i {
            0 => 0,
            _ => self.key_ends[i - 1] as usize,
        };
        &self.keys[start..self.key_ends[i] as usize]
    }

    /// Where block `i` lies in the file.
    fn span(&self, i: usize) -> (u64, u64) {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1],
        };
        (start, self.ends[i])
    }

    /// The first block whose fence is at least `target` (`len()` for none): the only one that
    /// can hold `target`, and where a scan from it starts.
    pub(super) fn find(&self, target: &[u8]) -> usize {
        let found: Result<usize, std::convert::Infallible> =
            first_not_before(self.len(), false, |i| Ok(self.key(i).cmp(target)));
        found.unwrap_or_else(|never| match never {})
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for i in 0..self.len() {
            let key = self.key(i);
            out.extend_from_slice(&self.ends[i].to_le_bytes());
            out.extend_from_slice(&self.sums[i].to_le_bytes());
            out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(key);
        }
    }

    fn decode(run: u64, mut bytes: &[u8], blocks_end: u64) -> Result<Fences, StoreError> {
        let bad = || corrupt(run, "unreadable block index");
        let mut fences = Fences::default();
        let mut prev = 0;
        while !bytes.is_empty() {
            let (head, rest) = bytes.split_at_checked(20).ok_or_else(bad)?;
            let word =
                |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or([0; 8]));
            let (end, sum) = (word(0), word(8));
            let len = u32::from_le_bytes(head[16..20].try_into().unwrap_or([0; 4])) as usize;
            let (key, rest) = rest.split_at_checked(len).ok_or_else(bad)?;
            if end <= prev || end > blocks_end {
                return Err(bad());
            }
            prev = end;
            fences.push(key, end, sum);
            bytes = rest;
        }
        if prev != blocks_end {
            return Err(bad());
        }
        Ok(fences.shrink())
    }
}

/// A run file being written, block by block.
#[derive(Debug)]
pub(super) struct FileWriter {
    run: u64,
    path: PathBuf,
    out: Option<BufWriter<File>>,
    written: u64,
    fences: Fences,
}

impl FileWriter {
    pub(super) fn create(dir: &Path, run: u64) -> Result<FileWriter, StoreError> {
        let path = run_path(dir, run);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        Ok(FileWriter {
            run,
            path,
            out: Some(BufWriter::with_capacity(256 * 1024, file)),
            written: 0,
            fences: Fences::default(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| corrupt(self.run, "run file written after it was finished"))?;
        out.write_all(bytes)
            .map_err(io(format!("writing {}", self.path.display())))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The next block will start with `first`: the fence of the one before it is cut short.
    pub(super) fn next_block_starts(&mut self, first: &[u8]) {
        self.fences.cut_last(first);
    }

    /// Appends a block (its entries coded by `PackedBuilder`) whose last key is `last`.
    pub(super) fn block(&mut self, raw: &[u8], last: &[u8]) -> Result<(), StoreError> {
        let packed = lz4_flex::compress_prepend_size(raw);
        self.write(&packed)?;
        let sum = xxh3_64(&packed);
        self.fences.push(last, self.written, sum);
        Ok(())
    }

    /// Writes the filters, the block index and the footer; with `fsync`, the file's data reach
    /// the disk before this returns (its name does with the folder's sync, by the caller).
    pub(super) fn finish(
        mut self,
        lookup: &Bloom,
        scan: &Bloom,
        fsync: bool,
    ) -> Result<RunFile, StoreError> {
        let lookup_at = self.written;
        let filters = 8 * (lookup.words.len() + scan.words.len());
        let mut meta = Vec::with_capacity(filters + 64 * self.fences.len());
        for word in &lookup.words {
            meta.extend_from_slice(&word.to_le_bytes());
        }
        let scan_at = lookup_at + meta.len() as u64;
        for word in &scan.words {
            meta.extend_from_slice(&word.to_le_bytes());
        }
        let fences_at = lookup_at + meta.len() as u64;
        self.fences.encode(&mut meta);
        let mut footer = Vec::with_capacity(FOOTER_BYTES as usize);
        footer.extend_from_slice(MAGIC);
        for at in [lookup_at, scan_at, fences_at, xxh3_64(&meta)] {
            footer.extend_from_slice(&at.to_le_bytes());
        }
        self.write(&meta)?;
        self.write(&footer)?;
        let out = self
            .out
            .take()
            .ok_or_else(|| corrupt(self.run, "run file finished twice"))?;
        let file = out
            .into_inner()
            .map_err(|err| io(format!("writing {}", self.path.display()))(err.into_error()))?;
        if fsync {
            file.sync_data()
                .map_err(io(format!("fdatasync of {}", self.path.display())))?;
        }
        Ok(RunFile {
            run: self.run,
            path: std::mem::take(&mut self.path),
            file,
            fences: std::mem::take(&mut self.fences).shrink(),
            scan_at,
            scan_words: scan.words.len(),
        })
    }
}

impl Drop for FileWriter {
    /// A run given up before it was finished leaves no file.
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Little-endian u64 words.
fn words_of(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .collect()
}

/// `len` bytes of run `run`'s file at `at`; a file shorter than that is a damaged run.
fn read_at(file: &File, path: &Path, run: u64, at: u64, len: u64) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0; usize::try_from(len).map_err(|_| corrupt(run, "too large"))?];
    read_exact(file, path, run, at, &mut buf)?;
    Ok(buf)
}

/// Fills `buf` from run `run`'s file at `at`.
fn read_exact(
    file: &File,
    path: &Path,
    run: u64,
    at: u64,
    buf: &mut [u8],
) -> Result<(), StoreError> {
    file.read_exact_at(buf, at).map_err(|err| match err.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt(run, "its file is cut short"),
        _ => io(format!("reading {}", path.display()))(err),
    })
}

/// An open run file, read by block.
#[derive(Debug)]
pub(super) struct RunFile {
    run: u64,
    path: PathBuf,
    file: File,
    pub(super) fences: Fences,
    /// Where its scan filter starts, and its size in words (a multiple of
    /// [`BLOOM_BLOCK_WORDS`]).
    scan_at: u64,
    scan_words: usize,
}

impl RunFile {
    /// Opens run `run`'s file, reads its block index and its lookup filter and checks its scan
    /// filter (read through, not kept), whose sizes in words must be those its record gives.
    pub(super) fn open(
        dir: &Path,
        run: u64,
        lookup_words: usize,
        scan_words: usize,
    ) -> Result<(RunFile, Bloom), StoreError> {
        let path = run_path(dir, run);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(run, "its file is missing"));
            }
            Err(err) => return Err(io(format!("opening {}", path.display()))(err)),
        };
        let read = |at: u64, len: u64| read_at(&file, &path, run, at, len);
        let size = file
            .metadata()
            .map_err(io(format!("reading {}", path.display())))?
            .len();
        let footer_at = size
            .checked_sub(FOOTER_BYTES)
            .ok_or_else(|| corrupt(run, "its file is cut short"))?;
        let footer = read(footer_at, FOOTER_BYTES)?;
        let word = |at: usize| u64::from_le_bytes(footer[at..at + 8].try_into().unwrap_or([0; 8]));
        let (lookup_at, scan_at, fences_at, sum) = (word(4), word(12), word(20), word(28));
        if &footer[..4] != MAGIC
            || lookup_at > scan_at
            || scan_at > fences_at
            || fences_at > footer_at
        {
            return Err(corrupt(run, "its file has no valid footer"));
        }
        if scan_at - lookup_at != 8 * lookup_words as u64
            || fences_at - scan_at != 8 * scan_words as u64
        {
            return Err(corrupt(run, "run filter of the wrong size"));
        }
        // The three parts are checked as one, the scan filter a chunk at a time.
        let mut hasher = Xxh3::new();
        let lookup = read(lookup_at, scan_at - lookup_at)?;
        hasher.update(&lookup);
        let mut at = scan_at;
        while at < fences_at {
            let chunk = read(at, (fences_at - at).min(1 << 20))?;
            hasher.update(&chunk);
            at += chunk.len() as u64;
        }
        let fences = read(fences_at, footer_at - fences_at)?;
        hasher.update(&fences);
        if hasher.digest() != sum {
            return Err(corrupt(run, "its filters or block index are damaged"));
        }
        let fences = Fences::decode(run, &fences, lookup_at)?;
        Ok((
            RunFile {
                run,
                path,
                file,
                fences,
                scan_at,
                scan_words,
            },
            Bloom {
                words: words_of(&lookup),
            },
        ))
    }

    /// Whether its scan filter may hold the prefix of `hash`: one filter block read from the
    /// file.
    pub(super) fn scan_may_contain(&self, hash: u64) -> Result<bool, StoreError> {
        let at = self.scan_at + (block_of(self.scan_words, hash) * FILTER_BLOCK_BYTES) as u64;
        let mut bytes = [0u8; FILTER_BLOCK_BYTES];
        read_exact(&self.file, &self.path, self.run, at, &mut bytes)?;
        let mut block = [0u64; BLOOM_BLOCK_WORDS];
        for (word, bytes) in block.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        }
        Ok(block_may_contain(&block, hash))
    }

    /// The size of its scan filter, in words.
    pub(super) fn scan_words(&self) -> usize {
        self.scan_words
    }

    /// How many blocks it has.
    /// The bytes block `i` takes in the file (0 past the last block).
    pub(super) fn stored_block_bytes(&self, i: usize) -> u64 {
        match i < self.fences.len() {
            true => {
                let (start, end) = self.fences.span(i);
                end - start
            }
            false => 0,
        }
    }

    pub(super) fn blocks(&self) -> usize {
        self.fences.len()
    }

    /// Reads and checks block `i`.
    pub(super) fn read_block(&self, i: usize) -> Result<Block, StoreError> {
        unpack(self.run, &self.read_coded(i)?)
    }

    /// The value of `key` in block `i`, read and checked, without building the block.
    pub(super) fn find_in_block(
        &self,
        i: usize,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        find(self.run, &self.read_coded(i)?, key)
    }

    /// Block `i`'s entries as coded (`packed.rs`), read, checked and decompressed.
    fn read_coded(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        if i >= self.fences.len() {
            return Err(corrupt(self.run, "no such block"));
        }
        let (start, end) = self.fences.span(i);
        let packed = read_at(&self.file, &self.path, self.run, start, end - start)?;
        if xxh3_64(&packed) != self.fences.sums[i] {
            return Err(corrupt(self.run, "a block fails its checksum"));
        }
        lz4_flex::decompress_size_prepended(&packed)
            .map_err(|_| corrupt(self.run, "a block does not decompress"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_is_cut_to_the_shortest_key_between_two_blocks() {
        let mut fences = Fences::default();
        fences.push(b"Kmail:ann@x.io:0001", 10, 0);
        fences.cut_last(b"Kmail:bob@x.io:0002");
        fences.push(b"Kmail:bob@x.io:0009", 20, 0);
        // Nothing shorter than the next first key itself: the fence stays whole.
        fences.cut_last(b"Kmail:bob@x.io:000a");
        fences.push(b"Kmail:bob@x.io:000a", 30, 0);
        fences.cut_last(b"Kmail:bob@x.io:000a0");
        assert_eq!(fences.key(0), b"Kmail:b");
        assert_eq!(fences.key(1), b"Kmail:bob@x.io:0009");
        // Nor when the block's last key begins the next one's first.
        assert_eq!(fences.key(2), b"Kmail:bob@x.io:000a");
        assert_eq!(fences.find(b"Kmail:ann@x.io:0001"), 0);
        assert_eq!(fences.find(b"Kmail:az"), 0);
        assert_eq!(fences.find(b"Kmail:bob@x.io:0002"), 1);
        assert_eq!(fences.find(b"Kmail:bob@x.io:000a"), 2);
        assert_eq!(fences.find(b"Kmail:c"), 3);
    }

    #[test]
    fn run_file_names_stand_for_their_ids_only() {
        let dir = Path::new("/x");
        let path = run_path(dir, 0xabc);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(run_id(name), Some(0xabc));
        assert_eq!(run_id("0000000000000abc.tmp"), None);
        assert_eq!(run_id("abc.run"), None);
        assert_eq!(run_id("zzzzzzzzzzzzzzzz.run"), None);
    }
}
