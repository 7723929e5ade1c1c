//! How a block's entries are stored in a run file (index format 5): each entry coded against
//! the one before it, then the block LZ4-compressed. A block read back is decoded whole into
//! the in-memory layout of `block.rs`, which readers binary-search in place; only files and
//! merges see this coding.
//!
//! An entry is `[flags][shared][suffix length][suffix]`, then its tail and its value:
//! - `shared` is the length of the prefix its key shares with the previous entry's key; with
//!   flag [`TAIL`], of the two keys without their last 16 bytes, and those 16 bytes (a timed
//!   key's time and seq, two u64 BE) follow as the zigzag varints of their differences from the
//!   previous key's;
//! - with flag [`VALUE`], the value is 8 bytes (a dedup entry's seq) given as the zigzag varint
//!   of its difference from the previous value; otherwise `[value length][value]`.
//!
//! The writer picks, entry by entry, whichever is shorter. Why: entries are sorted, so a key
//! shares far more with its neighbour than with the block's first key, and a run of one prefix
//! differs entry to entry only by a small step of time and of seq. On the engine benchmark's
//! store this took the index from 14.8 to 6.4 bytes an entry after LZ4 (docs/benchmarks.md;
//! `gancho-bench --store-stats` weighs both codings on any stopped store, `stats.rs`).

use super::block::{Block, BlockBuilder};
use super::layout::corrupt;
use crate::error::StoreError;

/// The key's last 16 bytes are coded as differences from the previous key's.
const TAIL: u8 = 1;
/// The value is 8 bytes, coded as the difference from the previous 8-byte value.
const VALUE: u8 = 2;
/// The bytes of a key's tail: time and seq of a timed key.
const TAIL_BYTES: usize = 16;

/// Codes the entries of one block, in order.
#[derive(Debug, Default)]
pub(super) struct PackedBuilder {
    out: Vec<u8>,
    prev_key: Vec<u8>,
    prev_value: Vec<u8>,
}

impl PackedBuilder {
    pub(super) fn add(&mut self, key: &[u8], value: &[u8]) {
        let whole = shared(&self.prev_key, key);
        let plain =
            varint_len(whole as u64) + varint_len((key.len() - whole) as u64) + (key.len() - whole);
        let tail = self.tail_coding(key);
        let mut flags = 0;
        if let Some((_, _, cost)) = tail
            && cost < plain
        {
            flags |= TAIL;
        }
        let value_step = match (u64_of(value), u64_of(&self.prev_value)) {
            (Some(now), Some(before)) => Some(zigzag(now.wrapping_sub(before))),
            _ => None,
        };
        if let Some(step) = value_step
            && varint_len(step) < 1 + value.len()
        {
            flags |= VALUE;
        }
        self.out.push(flags);
        match tail.filter(|_| flags & TAIL != 0) {
            Some((body_shared, steps, _)) => {
                let body = &key[..key.len() - TAIL_BYTES];
                push_varint(&mut self.out, body_shared as u64);
                push_varint(&mut self.out, (body.len() - body_shared) as u64);
                self.out.extend_from_slice(&body[body_shared..]);
                for step in steps {
                    push_varint(&mut self.out, step);
                }
            }
            None => {
                push_varint(&mut self.out, whole as u64);
                push_varint(&mut self.out, (key.len() - whole) as u64);
                self.out.extend_from_slice(&key[whole..]);
            }
        }
        match value_step.filter(|_| flags & VALUE != 0) {
            Some(step) => push_varint(&mut self.out, step),
            None => {
                push_varint(&mut self.out, value.len() as u64);
                self.out.extend_from_slice(value);
            }
        }
        self.prev_key.clear();
        self.prev_key.extend_from_slice(key);
        self.prev_value.clear();
        self.prev_value.extend_from_slice(value);
    }

    /// The coded entries; the builder is empty again.
    pub(super) fn finish(&mut self) -> Vec<u8> {
        self.prev_key.clear();
        self.prev_value.clear();
        std::mem::take(&mut self.out)
    }

    /// With the tail coded as differences: the shared length of the two bodies, the two
    /// zigzag steps, and what the key then takes. `None` unless both keys have a tail.
    fn tail_coding(&self, key: &[u8]) -> Option<(usize, [u64; 2], usize)> {
        let (body, tail) = split_tail(key)?;
        let (prev_body, prev_tail) = split_tail(&self.prev_key)?;
        let body_shared = shared(prev_body, body);
        let steps = [0, 1].map(|i| zigzag(tail[i].wrapping_sub(prev_tail[i])));
        let cost = varint_len(body_shared as u64)
            + varint_len((body.len() - body_shared) as u64)
            + (body.len() - body_shared)
            + steps.iter().map(|&s| varint_len(s)).sum::<usize>();
        Some((body_shared, steps, cost))
    }
}

/// Decodes a block's entries (as [`PackedBuilder`] coded them) into the in-memory layout.
pub(super) fn unpack(run: u64, packed: &[u8]) -> Result<Block, StoreError> {
    let mut builder = BlockBuilder::default();
    decode(run, packed, |key, value| {
        if builder.is_full() {
            return Err(corrupt(run, "a block holds more than a block's entries"));
        }
        builder.add(key, value);
        Ok(true)
    })?;
    if builder.is_empty() {
        return Err(corrupt(run, "an empty block"));
    }
    let (raw, _) = builder.finish();
    Block::parse(run, raw)
}

/// The value of `key` in a coded block, if it holds it: the entries are decoded in order up to
/// the key's place, and no block is built (the writer's dedup looks up an event id this way
/// on every Bloom filter false positive and every repeated delivery; building the block cost
/// it two thirds of its time under a load of repeats).
pub(super) fn find(run: u64, packed: &[u8], wanted: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    if packed.is_empty() {
        return Err(corrupt(run, "an empty block"));
    }
    let mut found = None;
    decode(run, packed, |key, value| match key.cmp(wanted) {
        std::cmp::Ordering::Less => Ok(true),
        std::cmp::Ordering::Equal => {
            found = Some(value.to_vec());
            Ok(false)
        }
        std::cmp::Ordering::Greater => Ok(false),
    })?;
    Ok(found)
}

/// Decodes a block's entries in order, giving each (key, value) to `each` until it answers
/// false or the block ends.
fn decode(
    run: u64,
    packed: &[u8],
    mut each: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let bad = |reason: &str| corrupt(run, reason);
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut at = 0;
    while at < packed.len() {
        let flags = packed[at];
        at += 1;
        if flags & !(TAIL | VALUE) != 0 {
            return Err(bad("an entry with unknown flags"));
        }
        let shared = read(packed, &mut at, run)?;
        let suffix_len = read(packed, &mut at, run)?;
        let suffix = take(packed, &mut at, suffix_len, run)?;
        if flags & TAIL != 0 {
            let (prev_body, prev_tail) =
                split_tail(&key).ok_or_else(|| bad("a key's tail without a previous one"))?;
            if to_usize(shared) > prev_body.len() {
                return Err(bad("a shared prefix longer than the previous key"));
            }
            let steps = [read(packed, &mut at, run)?, read(packed, &mut at, run)?];
            let tail = [0, 1].map(|i| prev_tail[i].wrapping_add(unzigzag(steps[i])));
            // The key is rebuilt in place: the previous one's shared head, then the rest.
            key.truncate(to_usize(shared));
            key.extend_from_slice(suffix);
            key.extend_from_slice(&tail[0].to_be_bytes());
            key.extend_from_slice(&tail[1].to_be_bytes());
        } else {
            if to_usize(shared) > key.len() {
                return Err(bad("a shared prefix longer than the previous key"));
            }
            key.truncate(to_usize(shared));
            key.extend_from_slice(suffix);
        }
        if flags & VALUE != 0 {
            let before = u64_of(&value).ok_or_else(|| bad("a value step without a value"))?;
            let step = read(packed, &mut at, run)?;
            value.clear();
            value.extend_from_slice(&before.wrapping_add(unzigzag(step)).to_be_bytes());
        } else {
            let len = read(packed, &mut at, run)?;
            value.clear();
            value.extend_from_slice(take(packed, &mut at, len, run)?);
        }
        if !each(&key, &value)? {
            return Ok(());
        }
    }
    Ok(())
}

fn shared(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A key's body and its tail read as two u64 BE; `None` for a key shorter than a tail.
fn split_tail(key: &[u8]) -> Option<(&[u8], [u64; 2])> {
    let body_len = key.len().checked_sub(TAIL_BYTES)?;
    let (body, tail) = key.split_at(body_len);
    Some((body, [u64_of(&tail[..8])?, u64_of(&tail[8..])?]))
}

fn u64_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn zigzag(step: u64) -> u64 {
    let n = step as i64;
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> u64 {
    (n >> 1) ^ (n & 1).wrapping_neg()
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn varint_len(n: u64) -> usize {
    (64 - n.max(1).leading_zeros() as usize).div_ceil(7)
}

/// LEB128, 7 bits a byte, low bits first.
fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The varint at `*at`, which moves past it; damage when it runs past the block or 64 bits.
fn read(bytes: &[u8], at: &mut usize, run: u64) -> Result<u64, StoreError> {
    let mut n = 0u64;
    for i in 0..10 {
        let byte = *bytes
            .get(*at)
            .ok_or_else(|| corrupt(run, "a number runs past its block"))?;
        *at += 1;
        // The tenth byte holds the top bit of 64.
        if i == 9 && byte > 1 {
            break;
        }
        n |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(corrupt(run, "a number past 64 bits"))
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, len: u64, run: u64) -> Result<&'a [u8], StoreError> {
    let end = at
        .checked_add(to_usize(len))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| corrupt(run, "an entry runs past its block"))?;
    let slice = &bytes[*at..end];
    *at = end;
    Ok(slice)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn timed(prefix: &[u8], time: u64, seq: u64) -> Vec<u8> {
        let mut key = prefix.to_vec();
        key.extend_from_slice(&time.to_be_bytes());
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    fn round_trip(entries: &[(Vec<u8>, Vec<u8>)]) -> (Vec<u8>, Block) {
        let mut packer = PackedBuilder::default();
        for (key, value) in entries {
            packer.add(key, value);
        }
        let packed = packer.finish();
        let block = unpack(7, &packed).unwrap();
        assert_eq!(block.n, entries.len());
        for (i, (key, value)) in entries.iter().enumerate() {
            let (head, suffix) = block.key_parts(i).unwrap();
            assert_eq!([head, suffix].concat(), *key, "entry {i}");
            assert_eq!(block.value(i).unwrap(), &value[..], "entry {i}");
            // Found without building the block, and keys just before and after it are not.
            assert_eq!(find(7, &packed, key).unwrap().as_deref(), Some(&value[..]));
            let mut after = key.clone();
            after.push(0);
            if entries.get(i + 1).is_none_or(|(next, _)| *next != after) {
                assert_eq!(find(7, &packed, &after).unwrap(), None, "after entry {i}");
            }
            if let Some((&last, head)) = key.split_last()
                && last > 0
                && (i == 0 || entries[i - 1].0 < [head, &[last - 1]].concat())
            {
                let before = [head, &[last - 1]].concat();
                assert_eq!(find(7, &packed, &before).unwrap(), None, "before entry {i}");
            }
        }
        (packed, block)
    }

    #[test]
    fn every_kind_of_entry_comes_back_as_it_went_in() {
        let mut entries = vec![
            (
                b"D\0\0\0\x07mailjet\0\0\0\x03abc".to_vec(),
                41u64.to_be_bytes().to_vec(),
            ),
            (
                b"D\0\0\0\x07mailjet\0\0\0\x03abd".to_vec(),
                40u64.to_be_bytes().to_vec(),
            ),
            // A short value, an empty one, a key shorter than a tail.
            (b"E".to_vec(), b"xyz".to_vec()),
            (b"F".to_vec(), Vec::new()),
        ];
        // Times and seqs going up, down (a later prefix), and wrapping past u64::MAX.
        for (prefix, time, seq) in [
            (&b"Kmail:ann"[..], 1_000, 5),
            (b"Kmail:ann", 1_000, 9),
            (b"Kmail:ann", 2_500, 6),
            (b"Kmail:bob", 10, u64::MAX),
            (b"Kmail:bob", u64::MAX, 0),
            (b"Tmailjet.sent", 0, 1),
        ] {
            entries.push((timed(prefix, time, seq), Vec::new()));
        }
        round_trip(&entries);
    }

    #[test]
    fn neighbours_take_a_few_bytes() {
        let entries: Vec<_> = (0..1000u64)
            .map(|i| {
                (
                    timed(b"Tmailjet\0sent", 1_793_520_000_000 + i * 37, 10_000 + i),
                    vec![],
                )
            })
            .collect();
        let (packed, _) = round_trip(&entries);
        // A flag, two lengths, two one-byte steps and the empty value's length: 6 bytes an
        // entry (the first one whole), against 32 in the block's own layout.
        assert!(
            packed.len() <= 6 * entries.len() + 32,
            "{} bytes",
            packed.len()
        );
    }

    #[test]
    fn damage_is_reported_not_read() {
        let entries = vec![
            (timed(b"Ka", 1, 1), vec![]),
            (timed(b"Ka", 2, 2), 9u64.to_be_bytes().to_vec()),
            (timed(b"Kb", 3, 3), 10u64.to_be_bytes().to_vec()),
        ];
        let mut packer = PackedBuilder::default();
        for (key, value) in &entries {
            packer.add(key, value);
        }
        let packed = packer.finish();
        for cut in 0..packed.len() {
            // Cut anywhere: an error or fewer entries, never a panic.
            if let Ok(block) = unpack(1, &packed[..cut]) {
                assert!(block.n <= entries.len());
            }
            let _ = find(1, &packed[..cut], &entries[2].0);
        }
        let mut bad_flags = packed.clone();
        bad_flags[0] = 0x80;
        assert!(unpack(1, &bad_flags).is_err());
        assert!(find(1, &bad_flags, &entries[0].0).is_err());
        // The first entry cannot refer to a previous key.
        let mut no_previous = packed.clone();
        no_previous[0] = TAIL;
        assert!(unpack(1, &no_previous).is_err());
        assert!(unpack(1, &[]).is_err());
        assert!(find(1, &[], b"K").is_err());
        assert!(
            unpack(
                1,
                &[
                    0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
                ]
            )
            .is_err()
        );
    }

    #[test]
    fn varint_lengths_match_what_is_written() {
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_varint(&mut out, n);
            assert_eq!(out.len(), varint_len(n), "{n}");
            let mut at = 0;
            assert_eq!(read(&out, &mut at, 0).unwrap(), n);
            assert_eq!(unzigzag(zigzag(n)), n);
        }
    }
}
