//! The memory tier: each batch of entries the indexer collects becomes a sorted memory run that
//! readers see at once; runs of about one size are merged, so there are a few. A checkpoint
//! writes them out as one disk run.

use super::block::{first_not_before, len32};
use super::bloom::{SharedBloom, hash};
use super::rule::KeyRule;
use super::run::{FilterBounds, TimeSpan};

/// The entries of one batch, as the indexer collects them: keys and values back to back in one
/// buffer (no allocation per entry).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    data: Vec<u8>,
    slots: Vec<Slot>,
}

/// Where an entry lies in its run's buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    at: usize,
    key_len: u32,
    value_len: u32,
}

impl Batch {
    pub(crate) fn push(&mut self, key: &[u8], value: &[u8]) {
        self.slots.push(Slot {
            at: self.data.len(),
            key_len: len32(key.len()),
            value_len: len32(value.len()),
        });
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
impl FromIterator<(Vec<u8>, Vec<u8>)> for Batch {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(entries: I) -> Batch {
        let mut batch = Batch::default();
        for (key, value) in entries {
            batch.push(&key, &value);
        }
        batch
    }
}

/// Entries of recent batches, not yet written out: sorted, unique keys.
#[derive(Debug)]
pub(super) struct MemRun {
    data: Vec<u8>,
    slots: Vec<Slot>,
    pub(super) times: TimeSpan,
}

impl MemRun {
    /// Sorts a batch into a run, putting its keys in `bloom`.
    pub(super) fn new(batch: Batch, bloom: &SharedBloom, rule: KeyRule) -> MemRun {
        let Batch { data, mut slots } = batch;
        let key = |slot: &Slot| &data[slot.at..slot.at + slot.key_len as usize];
        slots.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        slots.dedup_by(|a, b| key(a) == key(b));
        let mut times = TimeSpan::default();
        for slot in &slots {
            let key = key(slot);
            bloom.insert(hash(rule.filter_prefix(key)));
            if let Some(time) = rule.time(key) {
                times.add(time);
            }
        }
        MemRun { data, slots, times }
    }

    /// One run of the entries of both (equal entries once).
    pub(super) fn merge(older: &MemRun, newer: &MemRun) -> MemRun {
        let mut batch = Batch {
            data: Vec::with_capacity(older.data.len() + newer.data.len()),
            slots: Vec::with_capacity(older.len() + newer.len()),
        };
        let (mut i, mut j) = (0, 0);
        while i < older.len() || j < newer.len() {
            let take_older = j >= newer.len() || (i < older.len() && older.key(i) < newer.key(j));
            if take_older {
                batch.push(older.key(i), older.value(i));
                i += 1;
            } else {
                // Equal keys: the newer entry. Their values differ only for a dedup entry
                // whose first event was pruned and whose id was posted again: the newer is
                // the live one.
                if i < older.len() && older.key(i) == newer.key(j) {
                    i += 1;
                }
                batch.push(newer.key(j), newer.value(j));
                j += 1;
            }
        }
        let times = older.times.join(newer.times);
        MemRun {
            data: batch.data,
            slots: batch.slots,
            times,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Its distinct filter prefixes of each kind (its keys are sorted, so a prefix's keys are
    /// together): what a disk run written from it sizes its filters for.
    pub(super) fn filter_bounds(&self, rule: KeyRule) -> FilterBounds {
        let mut bounds = FilterBounds::default();
        let mut prev: Option<&[u8]> = None;
        for i in 0..self.len() {
            let key = self.key(i);
            let prefix = rule.filter_prefix(key);
            if prev != Some(prefix) {
                match (rule.timed)(prefix) {
                    true => bounds.scan += 1,
                    false => bounds.lookup += 1,
                }
                prev = Some(prefix);
            }
        }
        bounds
    }

    /// The memory its entries take: their bytes and their places.
    pub(super) fn bytes(&self) -> usize {
        self.data.len() + self.slots.len() * std::mem::size_of::<Slot>()
    }

    pub(super) fn key(&self, i: usize) -> &[u8] {
        let slot = self.slots[i];
        &self.data[slot.at..slot.at + slot.key_len as usize]
    }

    pub(super) fn value(&self, i: usize) -> &[u8] {
        let slot = self.slots[i];
        let start = slot.at + slot.key_len as usize;
        &self.data[start..start + slot.value_len as usize]
    }

    /// The first entry whose key is at least (`strict`: more than) `target`.
    pub(super) fn seek(&self, target: &[u8], strict: bool) -> usize {
        let found = first_not_before(self.len(), strict, |i| {
            Ok::<_, std::convert::Infallible>(self.key(i).cmp(target))
        });
        match found {
            Ok(i) => i,
            Err(never) => match never {},
        }
    }
}
