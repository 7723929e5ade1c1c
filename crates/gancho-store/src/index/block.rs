//! Blocks of a run as readers hold them (in a run file they are coded otherwise, `packed.rs`,
//! and decoded into this layout when read): `[n: u32][offset of each entry: u16 × n][entries]`,
//! an entry being `[shared][suffix length][suffix][value length][value]`, the three numbers
//! LEB128 varints:
//! its key is the first `shared` bytes of the block's first key (held whole by entry 0), then
//! the suffix. Any entry decodes on its own, so a block is binary-searched in place without
//! decoding it. An entry starts before [`BLOCK_BYTES`] (a block is closed once its entries pass
//! it), so its offset fits in 16 bits.
//!
//! Why varints and 16-bit offsets: the fixed `u32`s of index format 3 were 16 of the about 35
//! bytes an entry took before compression, and LZ4 does little with them (they repeat no four
//! bytes); an index entry is mostly small numbers and a short suffix.

use std::cmp::Ordering;
use std::ops::Range;

use super::layout::corrupt;
use crate::error::StoreError;
use crate::keys::read_u32;

/// A block is closed once its encoded entries pass this size (it is LZ4-compressed in its run
/// file, and read and cached whole).
const BLOCK_BYTES: usize = 16 * 1024;
// Every entry starts below it, so its offset is a u16.
const _: () = assert!(BLOCK_BYTES <= u16::MAX as usize);

#[derive(Debug, Default)]
pub(super) struct BlockBuilder {
    offsets: Vec<u16>,
    data: Vec<u8>,
    first: Vec<u8>,
    last: Vec<u8>,
}

impl BlockBuilder {
    pub(super) fn add(&mut self, key: &[u8], value: &[u8]) {
        let shared = if self.offsets.is_empty() {
            self.first = key.to_vec();
            0
        } else {
            self.first
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        // An entry is added only to a block that is not full: it starts below BLOCK_BYTES.
        debug_assert!(!self.is_full());
        self.offsets
            .push(u16::try_from(self.data.len()).unwrap_or(u16::MAX));
        push_varint(&mut self.data, shared);
        push_varint(&mut self.data, key.len() - shared);
        self.data.extend_from_slice(&key[shared..]);
        push_varint(&mut self.data, value.len());
        self.data.extend_from_slice(value);
        self.last.clear();
        self.last.extend_from_slice(key);
    }

    /// Whether it takes no more entries (the next one would start at or past [`BLOCK_BYTES`]).
    pub(super) fn is_full(&self) -> bool {
        self.data.len() >= BLOCK_BYTES
    }

    pub(super) fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The encoded block and its last key; the builder is empty again.
    pub(super) fn finish(&mut self) -> (Vec<u8>, Vec<u8>) {
        let mut out = Vec::with_capacity(4 + 2 * self.offsets.len() + self.data.len());
        out.extend_from_slice(&len32(self.offsets.len()).to_be_bytes());
        for offset in &self.offsets {
            out.extend_from_slice(&offset.to_be_bytes());
        }
        out.extend_from_slice(&self.data);
        self.offsets.clear();
        self.data.clear();
        (out, std::mem::take(&mut self.last))
    }
}

/// Index keys are capped far below 4 GiB (`gancho_core::MAX_KEY_LEN`); saturate rather than wrap.
pub(super) fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Appends `n` as a LEB128 varint: 7 bits a byte, low bits first, the high bit set on every
/// byte but the last.
fn push_varint(out: &mut Vec<u8>, n: usize) {
    let mut n = len32(n);
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The varint at the start of `bytes` and how many bytes it took; `None` when it runs past
/// `bytes` or past 32 bits.
fn read_varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut n = 0u32;
    for (i, &byte) in bytes.iter().enumerate().take(5) {
        // The fifth byte holds the top 4 bits of 32.
        if i == 4 && byte > 0x0f {
            return None;
        }
        n |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((n as usize, i + 1));
        }
    }
    None
}

/// A block read from its run file.
#[derive(Debug, Clone)]
pub(super) struct Block {
    pub(super) bytes: Vec<u8>,
    pub(super) n: usize,
    /// Where the entries start.
    data: usize,
    /// Where the first key (entry 0's suffix) lies in `bytes`.
    first: Range<usize>,
    /// The run it belongs to, for error messages.
    run: u64,
}

impl Block {
    pub(super) fn parse(run: u64, bytes: Vec<u8>) -> Result<Block, StoreError> {
        let n = bytes
            .get(..4)
            .and_then(read_u32)
            .map(|n| n as usize)
            .ok_or_else(|| corrupt(run, "block without a count"))?;
        let data = n
            .checked_mul(2)
            .and_then(|x| x.checked_add(4))
            .filter(|&d| d <= bytes.len() && n > 0)
            .ok_or_else(|| corrupt(run, "block shorter than its offsets"))?;
        let mut block = Block {
            bytes,
            n,
            data,
            first: 0..0,
            run,
        };
        let (shared, first, _) = block.ranges(0)?;
        if shared != 0 {
            return Err(corrupt(run, "a block's first key shares a prefix"));
        }
        block.first = first;
        Ok(block)
    }

    /// Entry `i`: the length of the first key's prefix it shares, and where its key's suffix
    /// and its value lie.
    pub(super) fn ranges(
        &self,
        i: usize,
    ) -> Result<(usize, Range<usize>, Range<usize>), StoreError> {
        let bad = || corrupt(self.run, "entry out of its block");
        if i >= self.n {
            return Err(bad());
        }
        let at = 4 + 2 * i;
        let offset = self
            .bytes
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(bad)?;
        let mut r = self.data.checked_add(offset).ok_or_else(bad)?;
        let bytes = &self.bytes;
        let take = |r: &mut usize, len: usize| -> Result<Range<usize>, StoreError> {
            let end = r.checked_add(len).filter(|&e| e <= bytes.len());
            let range = *r..end.ok_or_else(bad)?;
            *r = range.end;
            Ok(range)
        };
        let number = |r: &mut usize| -> Result<usize, StoreError> {
            let (n, len) = bytes.get(*r..).and_then(read_varint).ok_or_else(bad)?;
            *r += len;
            Ok(n)
        };
        let shared = number(&mut r)?;
        let suffix_len = number(&mut r)?;
        let suffix = take(&mut r, suffix_len)?;
        let value_len = number(&mut r)?;
        let value = take(&mut r, value_len)?;
        if shared > self.first.len() && i > 0 {
            return Err(corrupt(self.run, "shared prefix longer than the first key"));
        }
        Ok((shared, suffix, value))
    }

    /// Entry `i`'s key as the shared head of the first key and its own suffix.
    pub(super) fn key_parts(&self, i: usize) -> Result<(&[u8], &[u8]), StoreError> {
        let (shared, suffix, _) = self.ranges(i)?;
        let head = &self.bytes[self.first.start..self.first.start + shared];
        Ok((head, &self.bytes[suffix]))
    }

    /// Compares entry `i`'s key with `target`, without building the key.
    pub(super) fn cmp(&self, i: usize, target: &[u8]) -> Result<Ordering, StoreError> {
        let (head, suffix) = self.key_parts(i)?;
        let n = head.len().min(target.len());
        match head[..n].cmp(&target[..n]) {
            Ordering::Equal => {}
            other => return Ok(other),
        }
        if target.len() <= head.len() {
            return Ok(if head.len() + suffix.len() > target.len() {
                Ordering::Greater
            } else {
                Ordering::Equal
            });
        }
        Ok(suffix.cmp(&target[head.len()..]))
    }

    pub(super) fn value(&self, i: usize) -> Result<&[u8], StoreError> {
        let (_, _, value) = self.ranges(i)?;
        Ok(&self.bytes[value])
    }

    /// The first entry whose key is at least (`strict`: more than) `target`.
    pub(super) fn seek(&self, target: &[u8], strict: bool) -> Result<usize, StoreError> {
        first_not_before(self.n, strict, |i| self.cmp(i, target))
    }

    /// The value of the entry whose key is `key`, if there is one.
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<&[u8]>, StoreError> {
        let i = self.seek(key, false)?;
        if i < self.n && self.cmp(i, key)? == Ordering::Equal {
            return self.value(i).map(Some);
        }
        Ok(None)
    }
}

/// Binary search over `n` sorted entries: the first whose comparison with a target (`cmp(i)`:
/// entry `i` against it) is not `Less` (`strict`: is `Greater`).
pub(super) fn first_not_before<E>(
    n: usize,
    strict: bool,
    mut cmp: impl FnMut(usize) -> Result<Ordering, E>,
) -> Result<usize, E> {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let before = match cmp(mid)? {
            Ordering::Less => true,
            Ordering::Equal => strict,
            Ordering::Greater => false,
        };
        if before {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}
