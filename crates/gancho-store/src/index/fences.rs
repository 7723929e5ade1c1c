//! A run's block index: for each block a *fence* key, where the block ends in the file and the
//! checksum of its bytes. A fence is at least the block's last key and less than the next
//! block's first (the last block's is its last key), so "the first block whose fence is at
//! least `k`" is the only block that can hold `k`.
//!
//! Small runs keep their fences in memory ([`Fences`]). A large run's would grow with the store
//! (about half a byte an event: 3.8 MB of an idle daemon's heap at 7 M events), so it keeps
//! them *paged* ([`Paged`]): in memory only the fence of every [`CHUNK`]th block and where each
//! chunk of records lies in the file, and the checksum of each chunk's records, taken when the
//! whole block index was checked against the file's footer; a lookup reads its chunk (a few
//! KB) and checks it against that sum. The file's layout is the same either way: which form a
//! run takes is decided when it is opened or written (`file.rs`), by its size.

use std::sync::{Arc, Mutex, PoisonError};

use xxhash_rust::xxh3::xxh3_64;

use super::block::first_not_before;
use super::layout::corrupt;
use crate::error::StoreError;

/// Blocks per chunk of a paged block index: a chunk's records take about 3 KB.
pub(super) const CHUNK: usize = 64;
/// The bytes of a fence record before its key: end offset u64 LE, checksum u64 LE, key length
/// u32 LE.
const RECORD_HEAD: usize = 20;

/// Fences kept in memory, in one buffer of keys, so a block costs about 24 bytes beside its
/// fence. Each fence is cut to the shortest key that separates its block from the next (the
/// next block's first key, one byte past what the two share): about half the length of a
/// whole index key.
#[derive(Debug, Default)]
pub(super) struct Fences {
    keys: Vec<u8>,
    key_ends: Vec<u32>,
    ends: Vec<u64>,
    sums: Vec<u64>,
    /// Where the first block starts: 0 for a whole run, a chunk's first block's offset for a
    /// chunk of a paged index.
    start: u64,
}

impl Fences {
    pub(super) fn push(&mut self, last: &[u8], end: u64, sum: u64) {
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
    pub(super) fn cut_last(&mut self, next: &[u8]) {
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
    /// run, and the doubling of `Vec` could leave up to half of it unused.
    fn shrink(mut self) -> Fences {
        self.keys.shrink_to_fit();
        self.key_ends.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.sums.shrink_to_fit();
        self
    }

    /// Block `i`'s fence.
    pub(super) fn key(&self, i: usize) -> &[u8] {
        let start = match i {
            0 => 0,
            _ => self.key_ends[i - 1] as usize,
        };
        &self.keys[start..self.key_ends[i] as usize]
    }

    /// Where block `i` lies in the file, and its checksum.
    fn block(&self, i: usize) -> (u64, u64, u64) {
        let start = match i {
            0 => self.start,
            _ => self.ends[i - 1],
        };
        (start, self.ends[i], self.sums[i])
    }

    /// The first block whose fence is at least `target` (`len()` for none): the only one that
    /// can hold `target`, and where a scan from it starts.
    pub(super) fn find(&self, target: &[u8]) -> usize {
        let found: Result<usize, std::convert::Infallible> =
            first_not_before(self.len(), false, |i| Ok(self.key(i).cmp(target)));
        found.unwrap_or_else(|never| match never {})
    }

    /// The records of the file's block index.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        for i in 0..self.len() {
            let key = self.key(i);
            out.extend_from_slice(&self.ends[i].to_le_bytes());
            out.extend_from_slice(&self.sums[i].to_le_bytes());
            out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(key);
        }
    }

    /// The fences of `bytes`, records of blocks that start at `start` and end at `end`.
    fn decode(run: u64, bytes: &[u8], start: u64, end: u64) -> Result<Fences, StoreError> {
        let mut fences = Fences {
            start,
            ..Fences::default()
        };
        let mut records = Records::new(run, bytes, start, end);
        while let Some(record) = records.next_record()? {
            fences.push(record.key, record.end, record.sum);
        }
        Ok(fences.shrink())
    }
}

/// One record of a block index.
struct Record<'a> {
    end: u64,
    sum: u64,
    key: &'a [u8],
}

/// Reads the records of a block index in order, checking that blocks follow each other from
/// `start` and that the last one ends at `end`.
struct Records<'a> {
    run: u64,
    bytes: &'a [u8],
    /// Where the next record starts in `bytes`.
    at: usize,
    prev: u64,
    end: u64,
}

impl<'a> Records<'a> {
    fn new(run: u64, bytes: &'a [u8], start: u64, end: u64) -> Records<'a> {
        Records {
            run,
            bytes,
            at: 0,
            prev: start,
            end,
        }
    }

    fn next_record(&mut self) -> Result<Option<Record<'a>>, StoreError> {
        let bad = || corrupt(self.run, "unreadable block index");
        let rest = &self.bytes[self.at..];
        if rest.is_empty() {
            return match self.prev == self.end {
                true => Ok(None),
                false => Err(bad()),
            };
        }
        let (head, rest) = rest.split_at_checked(RECORD_HEAD).ok_or_else(bad)?;
        let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or([0; 8]));
        let (end, sum) = (word(0), word(8));
        let len = u32::from_le_bytes(head[16..20].try_into().unwrap_or([0; 4])) as usize;
        let key = rest.get(..len).ok_or_else(bad)?;
        if end <= self.prev || end > self.end {
            return Err(bad());
        }
        self.prev = end;
        self.at += RECORD_HEAD + len;
        Ok(Some(Record { end, sum, key }))
    }
}

/// A block index read from the file a chunk at a time.
#[derive(Debug)]
pub(super) struct Paged {
    run: u64,
    blocks: usize,
    /// Per chunk: the fence of its last block (as key), where its records end relative to
    /// `records_at` (as end: a chunk's records start where the previous chunk's end, the first
    /// at 0) and their checksum (as sum).
    tops: Fences,
    /// Where the block index starts in the file.
    records_at: u64,
    /// Where each chunk's first block starts, and where the last block ends.
    block_starts: Vec<u64>,
    blocks_end: u64,
    /// The chunk read last: a scan reads one chunk for [`CHUNK`] blocks.
    last: Mutex<Option<(usize, Arc<Fences>)>>,
}

impl Paged {
    fn decode(
        run: u64,
        bytes: &[u8],
        records_at: u64,
        blocks_end: u64,
    ) -> Result<Paged, StoreError> {
        let mut records = Records::new(run, bytes, 0, blocks_end);
        let mut paged = Paged {
            run,
            blocks: 0,
            tops: Fences::default(),
            records_at,
            block_starts: Vec::new(),
            blocks_end,
            last: Mutex::new(None),
        };
        let (mut chunk_at, mut block_start) = (0, 0);
        let mut last_key: Vec<u8> = Vec::new();
        loop {
            let before = records.at;
            let record = records.next_record()?;
            let closes = record.is_none() || paged.blocks.is_multiple_of(CHUNK);
            if closes && paged.blocks > 0 {
                let sum = xxh3_64(&bytes[chunk_at..before]);
                paged.tops.push(&last_key, before as u64, sum);
                chunk_at = before;
            }
            let Some(record) = record else {
                break;
            };
            if paged.blocks.is_multiple_of(CHUNK) {
                paged.block_starts.push(block_start);
            }
            last_key.clear();
            last_key.extend_from_slice(record.key);
            block_start = record.end;
            paged.blocks += 1;
        }
        paged.tops = std::mem::take(&mut paged.tops).shrink();
        paged.block_starts.shrink_to_fit();
        Ok(paged)
    }

    /// Chunk `c`, read with `read` (offset and length in the file) unless it was the last one
    /// read. The lock is not held while reading: a lookup does not wait for another's read.
    fn chunk(&self, c: usize, read: ReadAt<'_>) -> Result<Arc<Fences>, StoreError> {
        {
            let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, chunk)) = last.as_ref()
                && *at == c
            {
                return Ok(Arc::clone(chunk));
            }
        }
        let (Some(&start), true) = (self.block_starts.get(c), c < self.tops.len()) else {
            return Err(corrupt(self.run, "no such chunk of the block index"));
        };
        let (from, to, sum) = self.tops.block(c);
        let bytes = read(self.records_at + from, to - from)?;
        if xxh3_64(&bytes) != sum {
            return Err(corrupt(
                self.run,
                "a chunk of the block index fails its checksum",
            ));
        }
        let end = self
            .block_starts
            .get(c + 1)
            .copied()
            .unwrap_or(self.blocks_end);
        let chunk = Arc::new(Fences::decode(self.run, &bytes, start, end)?);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((c, Arc::clone(&chunk)));
        Ok(chunk)
    }
}

/// A run's block index, in memory or paged.
#[derive(Debug)]
pub(super) enum BlockIndex {
    Resident(Fences),
    Paged(Paged),
}

/// How a paged index reads its chunks from the run's file: offset and length.
pub(super) type ReadAt<'a> = &'a dyn Fn(u64, u64) -> Result<Vec<u8>, StoreError>;

impl BlockIndex {
    /// The block index of `bytes` (the records, at `records_at` in the file, of blocks that end
    /// at `blocks_end`), paged when `page`.
    pub(super) fn decode(
        run: u64,
        bytes: &[u8],
        records_at: u64,
        blocks_end: u64,
        page: bool,
    ) -> Result<BlockIndex, StoreError> {
        Ok(match page {
            true => BlockIndex::Paged(Paged::decode(run, bytes, records_at, blocks_end)?),
            false => BlockIndex::Resident(Fences::decode(run, bytes, 0, blocks_end)?),
        })
    }

    pub(super) fn resident(fences: Fences) -> BlockIndex {
        BlockIndex::Resident(fences.shrink())
    }

    /// How many blocks the run has.
    pub(super) fn len(&self) -> usize {
        match self {
            BlockIndex::Resident(fences) => fences.len(),
            BlockIndex::Paged(paged) => paged.blocks,
        }
    }

    /// The first block whose fence is at least `target` (`len()` for none).
    pub(super) fn find(&self, target: &[u8], read: ReadAt<'_>) -> Result<usize, StoreError> {
        match self {
            BlockIndex::Resident(fences) => Ok(fences.find(target)),
            BlockIndex::Paged(paged) => {
                // The chunk whose last fence is the first at least `target` holds the block.
                let c = paged.tops.find(target);
                if c >= paged.tops.len() {
                    return Ok(paged.blocks);
                }
                Ok(c * CHUNK + paged.chunk(c, read)?.find(target))
            }
        }
    }

    /// Where block `i` of run `run` lies in the file, and its checksum.
    pub(super) fn block(
        &self,
        run: u64,
        i: usize,
        read: ReadAt<'_>,
    ) -> Result<(u64, u64, u64), StoreError> {
        match self {
            BlockIndex::Resident(fences) if i < fences.len() => Ok(fences.block(i)),
            BlockIndex::Paged(paged) if i < paged.blocks => {
                let chunk = paged.chunk(i / CHUNK, read)?;
                match i % CHUNK < chunk.len() {
                    true => Ok(chunk.block(i % CHUNK)),
                    false => Err(corrupt(paged.run, "a chunk of the block index is short")),
                }
            }
            BlockIndex::Resident(_) | BlockIndex::Paged(_) => Err(corrupt(run, "no such block")),
        }
    }

    /// Whether it is paged.
    #[cfg(test)]
    pub(super) fn is_paged(&self) -> bool {
        matches!(self, BlockIndex::Paged(_))
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

    /// A block index of `n` blocks of 100 bytes each, block `i`'s fence `k{i:05}`, as the file
    /// stores it.
    fn records(n: usize) -> Vec<u8> {
        let mut fences = Fences::default();
        for i in 0..n {
            fences.push(
                format!("k{i:05}").as_bytes(),
                100 * (i as u64 + 1),
                i as u64,
            );
        }
        let mut bytes = Vec::new();
        fences.encode(&mut bytes);
        bytes
    }

    #[test]
    fn a_paged_index_finds_and_locates_every_block_as_the_resident_one_does() {
        let at = 5_000;
        for n in [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let bytes = records(n);
            let end = 100 * n as u64;
            let resident = BlockIndex::decode(1, &bytes, at, end, false).unwrap();
            let paged = BlockIndex::decode(1, &bytes, at, end, true).unwrap();
            let reads = std::cell::Cell::new(0);
            let read = |from: u64, len: u64| {
                reads.set(reads.get() + 1);
                let from = usize::try_from(from - at).unwrap();
                Ok(bytes[from..from + usize::try_from(len).unwrap()].to_vec())
            };
            assert!(paged.is_paged());
            assert_eq!(paged.len(), n);
            for i in 0..n {
                let key = format!("k{i:05}");
                for target in [key.clone(), format!("{key}!"), key[..5].to_owned()] {
                    assert_eq!(
                        paged.find(target.as_bytes(), &read).unwrap(),
                        resident.find(target.as_bytes(), &read).unwrap(),
                        "{n} blocks, {target}"
                    );
                }
                let block = (100 * i as u64, 100 * (i as u64 + 1), i as u64);
                assert_eq!(paged.block(1, i, &read).unwrap(), block);
                assert_eq!(resident.block(1, i, &read).unwrap(), block);
            }
            assert_eq!(paged.find(b"l", &read).unwrap(), n);
            assert!(paged.block(1, n, &read).is_err());
            // In order, a chunk is read once.
            reads.set(0);
            for i in 0..n {
                paged.block(1, i, &read).unwrap();
            }
            assert!(reads.get() <= n.div_ceil(CHUNK), "{n} blocks");
        }
    }

    #[test]
    fn a_damaged_chunk_is_reported_as_damage() {
        let bytes = records(2 * CHUNK);
        let paged = BlockIndex::decode(7, &bytes, 0, 200 * CHUNK as u64, true).unwrap();
        let read = |from: u64, len: u64| {
            let mut chunk = bytes[from as usize..(from + len) as usize].to_vec();
            chunk[30] ^= 1;
            Ok(chunk)
        };
        let err = paged.find(b"k00100", &read).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        // Records that do not follow each other are refused when the index is read, in
        // either form.
        let mut swapped = records(3);
        swapped[..8].copy_from_slice(&250u64.to_le_bytes());
        for page in [false, true] {
            assert!(BlockIndex::decode(7, &swapped, 0, 300, page).is_err());
        }
    }
}
