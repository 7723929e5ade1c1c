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
//! run is written once, read by block and deleted whole, which plain files do at no cost.
//! Blocks are read through the indexes' block cache, which the store's memory budget bounds.
//!
//! Why two filters: the writer's dedup asks the lookup filter of every run for every event, so
//! a run keeps it in memory; scans are fewer and read their filter's one 64-byte block from the
//! file (the kernel's page cache keeps the hot ones). Kept whole in memory, the scan filters
//! were two thirds of the filters' bits and the largest part of an idle daemon's heap on a
//! large store (docs/memory-notes.md).
//!
//! What stays in memory is bounded per run, not per event: a run whose lookup filter is over
//! its budget ([`keeps_lookup`], from the block cache's) reads it by block as the scan filter
//! is read, and a run whose block index is over a quarter of that budget ([`keeps_fences`])
//! pages it (`fences.rs`). Kept whole for every run, the two grew with the store (1.8 bytes an
//! event, 12 MB of an idle daemon's 30 at 7 M events). The file is the same either way: which
//! form a run takes is decided when it is opened or written. A filter read from the file is
//! checked a 1 KiB page at a time against sums taken at open ([`FILTER_PAGE`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::block::Block;
use super::bloom::{BLOOM_BLOCK_WORDS, Bloom, block_may_contain, block_of};
use super::fences::{BlockIndex, Fences};
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

/// Whether a run keeps its lookup filter of `words` words in memory, with `resident` bytes
/// allowed a run (`index::open`); a larger one is read from the file by block, as the scan
/// filter is.
pub(super) fn keeps_lookup(words: usize, resident: u64) -> bool {
    8 * words as u64 <= resident
}

/// Whether a run keeps a block index of `bytes` (as stored) in memory whole; a larger one is
/// paged (`fences.rs`). A quarter of what a lookup filter may take: the block index is read
/// only when a filter says "maybe", the lookup filter for every event.
fn keeps_fences(bytes: u64, resident: u64) -> bool {
    bytes <= resident / 4
}

/// The bytes of filter one checksum covers when a filter is read from the file: a probe reads
/// the whole page its block lies in (a `pread` costs about the same for 64 bytes or 1 KiB) and
/// checks it, so a damaged filter is reported as damage instead of answering "absent" (which,
/// for the lookup filter, would store a duplicate). The sums take 1/128 of the filter's size.
const FILTER_PAGE: usize = 1024;

/// A Bloom filter read from the run's file by block: where it starts, its size in words (a
/// multiple of [`BLOOM_BLOCK_WORDS`]), and the xxh3 of each [`FILTER_PAGE`] of it, taken when
/// the file was written, or opened and checked against its footer.
#[derive(Debug)]
struct FileFilter {
    at: u64,
    words: usize,
    sums: Vec<u64>,
}

impl FileFilter {
    /// The filter of `words` words at `at`, whose bytes `sum` is then given in order.
    fn new(at: u64, words: usize) -> FileFilter {
        FileFilter {
            at,
            words,
            sums: Vec::with_capacity((8 * words).div_ceil(FILTER_PAGE)),
        }
    }

    /// Takes the sums of the next bytes of the filter, a whole number of pages unless they are
    /// its last.
    fn sum(&mut self, bytes: &[u8]) {
        self.sums.extend(bytes.chunks(FILTER_PAGE).map(xxh3_64));
    }

    /// The filter of `words` words at `at` in a file being written, whose bytes are `bytes`.
    fn of(at: u64, words: usize, bytes: &[u8]) -> FileFilter {
        let mut filter = FileFilter::new(at, words);
        filter.sum(bytes);
        filter
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
    /// `resident`: the bytes of filter a run may keep in memory ([`keeps_lookup`]), which
    /// decides whether its block index is paged.
    pub(super) fn finish(
        mut self,
        lookup: &Bloom,
        scan: &Bloom,
        fsync: bool,
        resident: u64,
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
        let split = 8 * lookup.words.len();
        let lookup_file = (!keeps_lookup(lookup.words.len(), resident))
            .then(|| FileFilter::of(lookup_at, lookup.words.len(), &meta[..split]));
        let scan_file = FileFilter::of(scan_at, scan.words.len(), &meta[split..]);
        let records_from = meta.len();
        self.fences.encode(&mut meta);
        let fence_bytes = (meta.len() - records_from) as u64;
        let fences = match keeps_fences(fence_bytes, resident) {
            true => BlockIndex::resident(std::mem::take(&mut self.fences)),
            false => {
                self.fences = Fences::default();
                BlockIndex::decode(self.run, &meta[records_from..], fences_at, lookup_at, true)?
            }
        };
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
            fences,
            lookup_words: lookup.words.len(),
            lookup: lookup_file,
            scan: scan_file,
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
    fences: BlockIndex,
    /// The size of its lookup filter in words; where to read it, when the run does not keep it
    /// in memory.
    lookup_words: usize,
    lookup: Option<FileFilter>,
    /// Its scan filter, always read from the file.
    scan: FileFilter,
}

impl RunFile {
    /// Opens run `run`'s file: reads its block index and checks its filters, whose sizes in
    /// words must be those its record gives. The lookup filter is read and returned if the run
    /// keeps it in memory ([`keeps_lookup`] with `resident`), else read through, as the scan
    /// filter always is; the block index is kept whole or paged by its own bound
    /// ([`keeps_fences`]) of the same `resident`.
    pub(super) fn open(
        dir: &Path,
        run: u64,
        lookup_words: usize,
        scan_words: usize,
        resident: u64,
    ) -> Result<(RunFile, Option<Bloom>), StoreError> {
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
        // The three parts are checked as one; a filter not kept is read through a chunk at a
        // time, and the sums of its pages taken.
        let mut hasher = Xxh3::new();
        let read_through = |hasher: &mut Xxh3, filter: &mut FileFilter| {
            let end = filter.at + 8 * filter.words as u64;
            let mut at = filter.at;
            while at < end {
                let chunk = read(at, (end - at).min(1 << 20))?;
                hasher.update(&chunk);
                filter.sum(&chunk);
                at += chunk.len() as u64;
            }
            Ok::<(), StoreError>(())
        };
        let (lookup, lookup_file) = match keeps_lookup(lookup_words, resident) {
            true => {
                let bytes = read(lookup_at, scan_at - lookup_at)?;
                hasher.update(&bytes);
                (Some(bytes), None)
            }
            false => {
                let mut filter = FileFilter::new(lookup_at, lookup_words);
                read_through(&mut hasher, &mut filter)?;
                (None, Some(filter))
            }
        };
        let mut scan = FileFilter::new(scan_at, scan_words);
        read_through(&mut hasher, &mut scan)?;
        let fences = read(fences_at, footer_at - fences_at)?;
        hasher.update(&fences);
        if hasher.digest() != sum {
            return Err(corrupt(run, "its filters or block index are damaged"));
        }
        let page = !keeps_fences(fences.len() as u64, resident);
        let fences = BlockIndex::decode(run, &fences, fences_at, lookup_at, page)?;
        let lookup = lookup.map(|bytes| Bloom {
            words: words_of(&bytes),
        });
        Ok((
            RunFile {
                run,
                path,
                file,
                fences,
                lookup_words,
                lookup: lookup_file,
                scan,
            },
            lookup,
        ))
    }

    /// Whether its scan filter may hold the prefix of `hash`: one filter block read from the
    /// file.
    pub(super) fn scan_may_contain(&self, hash: u64) -> Result<bool, StoreError> {
        self.filter_may_contain(&self.scan, hash)
    }

    /// Whether its lookup filter may hold `hash`, read from the file as the scan filter is (a
    /// run that keeps it in memory asks it there).
    pub(super) fn lookup_may_contain(&self, hash: u64) -> Result<bool, StoreError> {
        match &self.lookup {
            Some(filter) => self.filter_may_contain(filter, hash),
            // Kept in memory, and asked there: "maybe" is always right.
            None => Ok(true),
        }
    }

    /// Whether the run keeps its lookup filter in memory (decided when the file was written or
    /// opened, [`keeps_lookup`]); if not, it is read from here.
    pub(super) fn keeps_lookup(&self) -> bool {
        self.lookup.is_none()
    }

    /// The size of its lookup filter, in words.
    pub(super) fn lookup_words(&self) -> usize {
        self.lookup_words
    }

    /// Whether its block index is paged.
    #[cfg(test)]
    pub(super) fn fences_paged(&self) -> bool {
        self.fences.is_paged()
    }

    /// The first block whose fence is at least `target` (`blocks()` for none): the only one
    /// that can hold `target`, and where a scan from it starts.
    pub(super) fn find_block(&self, target: &[u8]) -> Result<usize, StoreError> {
        self.fences.find(target, &|at, len| self.read(at, len))
    }

    fn read(&self, at: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        read_at(&self.file, &self.path, self.run, at, len)
    }

    /// Whether `filter` may hold `hash`: the page of the filter that holds its block read from
    /// the file and checked.
    fn filter_may_contain(&self, filter: &FileFilter, hash: u64) -> Result<bool, StoreError> {
        let offset = block_of(filter.words, hash) * FILTER_BLOCK_BYTES;
        let page = offset / FILTER_PAGE;
        let page_start = page * FILTER_PAGE;
        let len = (8 * filter.words - page_start).min(FILTER_PAGE);
        let mut buf = [0u8; FILTER_PAGE];
        let bytes = &mut buf[..len];
        read_exact(
            &self.file,
            &self.path,
            self.run,
            filter.at + page_start as u64,
            bytes,
        )?;
        if filter.sums.get(page) != Some(&xxh3_64(bytes)) {
            return Err(corrupt(self.run, "a filter block fails its checksum"));
        }
        let at = offset - page_start;
        let block_bytes = bytes
            .get(at..at + FILTER_BLOCK_BYTES)
            .ok_or_else(|| corrupt(self.run, "a filter block past its filter"))?;
        let mut block = [0u64; BLOOM_BLOCK_WORDS];
        for (word, bytes) in block.iter_mut().zip(block_bytes.chunks_exact(8)) {
            *word = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        }
        Ok(block_may_contain(&block, hash))
    }

    /// The size of its scan filter, in words.
    pub(super) fn scan_words(&self) -> usize {
        self.scan.words
    }

    /// The bytes block `i` takes in the file.
    pub(super) fn stored_block_bytes(&self, i: usize) -> Result<u64, StoreError> {
        let (start, end, _) = self.locate(i)?;
        Ok(end - start)
    }

    /// Where block `i` lies in the file, and its checksum.
    fn locate(&self, i: usize) -> Result<(u64, u64, u64), StoreError> {
        self.fences
            .block(self.run, i, &|at, len| self.read(at, len))
    }

    /// How many blocks it has.
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
        let (start, end, sum) = self.locate(i)?;
        let packed = self.read(start, end - start)?;
        if xxh3_64(&packed) != sum {
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
