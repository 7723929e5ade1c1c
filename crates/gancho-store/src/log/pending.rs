//! The dedup ids of events in the log but not yet in the dedup index: the writer's half of exact
//! dedup (see `writer.rs`). It holds one id per event the indexer trails by, which under a
//! burst is millions, so its entries are kept small.
//!
//! An id is a 128-bit hash of the event's dedup key (a collision would make one event a
//! duplicate of another: at 2^-128 per pair, far below the odds of a disk error). Its low half
//! keys a map to the event's seq; the whole id sits in a queue in seq order, where the seq finds
//! it to check the high half. Seqs are contiguous, so the queue needs no seq of its own, but
//! where events placed at given seqs (`Appender::append_at`) skip some: each such jump is
//! noted once, however many seqs it skips. Two ids
//! that share a low half (about one pair in 2^64) put the second in a small overflow map, so the
//! answer stays exact. That is some 40 bytes an event instead of the 80-100 of a map and a queue
//! of whole ids with their seqs (both 16-byte aligned).

use std::collections::{HashMap, VecDeque};

/// What an event's id costs here, about: its map entry (17 bytes with its control byte) and its
/// queue slot (16), each in a table that grows by doubling, so 35 to 71 bytes: 56 on average.
pub(crate) const BYTES_PER_EVENT: u64 = 56;

/// Keyed by the std's randomly seeded hasher, not by the id's bits as they are: the id is an
/// unseeded hash of what a webhook sent, so an attacker could pick ids that share a bucket and
/// make every lookup walk one long chain on the writer thread.
type ByLow = HashMap<u64, u64>;

#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Low half of an id → its seq.
    by_low: ByLow,
    /// Ids whose low half another pending id has, whole → seq.
    overflow: HashMap<u128, u64>,
    /// Ids as (low, high) halves, in seq order from `first`.
    ids: VecDeque<(u64, u64)>,
    /// The seq of `ids[0]` (the next seq when empty).
    first: u64,
    /// Ids dropped from the front of `ids`, ever: an id's place counted from the first ever
    /// held is `popped` + its index in `ids`.
    popped: u64,
    /// Where seqs jump: (place, seq) of each id whose seq is not the one after its
    /// predecessor's, in order, past the front.
    jumps: VecDeque<(u64, u64)>,
}

fn halves(id: u128) -> (u64, u64) {
    (id as u64, (id >> 64) as u64)
}

impl Pending {
    /// Empty, the next event being `next_seq`.
    pub(super) fn new(next_seq: u64) -> Pending {
        Pending {
            first: next_seq,
            ..Pending::default()
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The seq after the last one held (the next seq when empty).
    fn end(&self) -> u64 {
        match self.ids.len() as u64 {
            0 => self.first,
            n => self.seq_at(self.popped + n - 1) + 1,
        }
    }

    /// The seq of the id at `place`.
    fn seq_at(&self, place: u64) -> u64 {
        let i = self.jumps.partition_point(|&(p, _)| p <= place);
        let (base, seq) = match i {
            0 => (self.popped, self.first),
            i => self.jumps[i - 1],
        };
        seq + (place - base)
    }

    /// The place of the id of event `seq`, if one is held.
    fn place_of(&self, seq: u64) -> Option<u64> {
        if seq < self.first {
            return None;
        }
        let i = self.jumps.partition_point(|&(_, s)| s <= seq);
        let (base, base_seq) = match i {
            0 => (self.popped, self.first),
            i => self.jumps[i - 1],
        };
        let place = base + (seq - base_seq);
        let limit = match self.jumps.get(i) {
            Some(&(next, _)) => next,
            None => self.popped + self.ids.len() as u64,
        };
        (place < limit).then_some(place)
    }

    /// Adds the id of event `seq`, which must come after the last one added: the seq after it,
    /// or a later one (the seqs between hold no event).
    pub(super) fn push(&mut self, seq: u64, id: u128) {
        if self.ids.is_empty() {
            self.first = seq;
        } else if seq != self.end() {
            debug_assert!(seq > self.end());
            self.jumps
                .push_back((self.popped + self.ids.len() as u64, seq));
        }
        let (low, high) = halves(id);
        match self.by_low.get(&low) {
            Some(&other) if self.high_of(other) != Some(high) => {
                self.overflow.insert(id, seq);
            }
            _ => {
                self.by_low.insert(low, seq);
            }
        }
        self.ids.push_back((low, high));
    }

    fn high_of(&self, seq: u64) -> Option<u64> {
        let at = usize::try_from(self.place_of(seq)? - self.popped).ok()?;
        self.ids.get(at).map(|&(_, high)| high)
    }

    /// The seq of the event with this id, if it is held.
    pub(super) fn get(&self, id: u128) -> Option<u64> {
        let (low, high) = halves(id);
        if let Some(&seq) = self.by_low.get(&low)
            && self.high_of(seq) == Some(high)
        {
            return Some(seq);
        }
        self.overflow.get(&id).copied()
    }

    /// Drops the ids of events up to `indexed` (the dedup index holds them now), oldest first.
    pub(super) fn drop_through(&mut self, indexed: u64) {
        while self.first <= indexed {
            let Some(id) = self.ids.pop_front() else {
                break;
            };
            let seq = self.first;
            self.popped += 1;
            match self.jumps.front() {
                Some(&(place, next)) if place == self.popped => {
                    self.first = next;
                    self.jumps.pop_front();
                }
                _ => self.first += 1,
            }
            self.forget(seq, id);
        }
        if self.ids.is_empty() {
            self.first = self.first.max(indexed.saturating_add(1));
        }
        self.shrink();
    }

    /// Drops the newest ids, down to `len` of them (a group that failed to be written).
    pub(super) fn truncate(&mut self, len: usize) {
        while self.ids.len() > len {
            let place = self.popped + self.ids.len() as u64 - 1;
            let seq = self.seq_at(place);
            let Some(id) = self.ids.pop_back() else {
                break;
            };
            if self.jumps.back().is_some_and(|&(p, _)| p == place) {
                self.jumps.pop_back();
            }
            self.forget(seq, id);
        }
    }

    /// Removes the map entry of event `seq`, whose id's halves are `(low, high)`.
    fn forget(&mut self, seq: u64, (low, high): (u64, u64)) {
        if self.by_low.get(&low) == Some(&seq) {
            self.by_low.remove(&low);
        } else if !self.overflow.is_empty() {
            self.overflow
                .remove(&((u128::from(high) << 64) | u128::from(low)));
        }
    }

    /// Gives memory back once a backlog is gone: a map sized for a burst of millions would
    /// otherwise stay that size.
    fn shrink(&mut self) {
        if self.by_low.capacity() > 4096 && self.by_low.len() < self.by_low.capacity() / 4 {
            self.by_low.shrink_to(self.by_low.len() * 2);
        }
        if self.ids.capacity() > 4096 && self.ids.len() < self.ids.capacity() / 4 {
            self.ids.shrink_to(self.ids.len() * 2);
        }
    }
}

/// The dedup ids of the events the indexer had not reached when the store opened: after a
/// rebuild of the indexes (a format step, damage), the whole log. It is built once, at open, and
/// dropped whole once the indexer has passed its last event, so it keeps only what finds
/// candidates: 32 bits of each id, sorted, beside the event's seq as an offset, 8 bytes an event.
/// A candidate is confirmed against the log by the caller (`Writer::seen`); one in about 2^32
/// events shares the 32 bits of another's id and costs a read of it. [`Pending`]'s 56 bytes an
/// event made reindexing a store of 6 M events cost 330 MB.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    /// (32 bits of the id, seq - `base`), sorted.
    entries: Vec<(u32, u32)>,
    base: u64,
    /// The last seq it holds.
    last: u64,
}

impl Backlog {
    /// An empty backlog for the events from `base` to `last`; `None` if they span more than a
    /// 32-bit offset.
    pub(super) fn spanning(base: u64, last: u64) -> Option<Backlog> {
        u32::try_from(last.checked_sub(base)?).ok()?;
        Some(Backlog {
            entries: Vec::new(),
            base,
            last,
        })
    }

    /// Adds the id of event `seq`, within the span.
    pub(super) fn push(&mut self, seq: u64, id: u128) {
        let offset = u32::try_from(seq.saturating_sub(self.base)).unwrap_or(u32::MAX);
        self.entries.push((id as u32, offset));
    }

    /// Sorts what was pushed, for [`Backlog::candidates`].
    pub(super) fn finish(mut self) -> Backlog {
        self.entries.sort_unstable();
        self.entries.shrink_to_fit();
        self
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The seqs of the events whose id may be `id` (its 32 bits match): to be confirmed.
    pub(super) fn candidates(&self, id: u128) -> impl Iterator<Item = u64> + '_ {
        let bits = id as u32;
        let start = self.entries.partition_point(|&(b, _)| b < bits);
        self.entries[start..]
            .iter()
            .take_while(move |&&(b, _)| b == bits)
            .map(|&(_, offset)| self.base + u64::from(offset))
    }

    /// Drops it whole once the indexer has written out every event it holds (up to `indexed`).
    pub(super) fn drop_through(&mut self, indexed: u64) {
        if !self.entries.is_empty() && indexed >= self.last {
            *self = Backlog::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(low: u64, high: u64) -> u128 {
        (u128::from(high) << 64) | u128::from(low)
    }

    #[test]
    fn ids_are_found_until_indexed_and_collisions_of_a_half_stay_exact() {
        let mut pending = Pending::new(10);
        pending.push(10, id(1, 1));
        pending.push(11, id(2, 2));
        // Same low half as seq 10's, another high half: another event.
        pending.push(12, id(1, 9));
        assert_eq!(pending.get(id(1, 1)), Some(10));
        assert_eq!(pending.get(id(1, 9)), Some(12));
        assert_eq!(pending.get(id(2, 2)), Some(11));
        assert_eq!(pending.get(id(2, 3)), None);
        assert_eq!(pending.get(id(3, 1)), None);
        pending.drop_through(10);
        assert_eq!(pending.get(id(1, 1)), None);
        assert_eq!(pending.get(id(1, 9)), Some(12));
        assert_eq!(pending.len(), 2);
        // A failed group is taken back.
        pending.push(13, id(4, 4));
        pending.truncate(2);
        assert_eq!(pending.get(id(4, 4)), None);
        pending.drop_through(12);
        assert_eq!(pending.len(), 0);
        assert!(pending.by_low.is_empty() && pending.overflow.is_empty());
        // Empty, it starts again at the next seq.
        pending.push(13, id(5, 5));
        assert_eq!(pending.get(id(5, 5)), Some(13));
    }

    #[test]
    fn seqs_may_jump_and_each_id_keeps_its_seq() {
        let mut pending = Pending::new(1);
        pending.push(1, id(1, 1));
        pending.push(2, id(2, 2));
        pending.push(1_000_000_000, id(3, 3));
        pending.push(1_000_000_001, id(4, 4));
        pending.push(1_000_000_005, id(5, 5));
        assert_eq!(pending.len(), 5);
        assert_eq!(pending.jumps.len(), 2);
        for (seq, i) in [
            (1, 1),
            (2, 2),
            (1_000_000_000, 3),
            (1_000_000_001, 4),
            (1_000_000_005, 5),
        ] {
            assert_eq!(pending.get(id(i, i)), Some(seq), "{seq}");
        }
        assert_eq!(pending.end(), 1_000_000_006);
        // A seq in a jump holds no id, even one sharing a low half.
        assert_eq!(pending.place_of(3), None);
        assert_eq!(pending.place_of(1_000_000_002), None);
        // Taken back from the end, past a jump.
        pending.truncate(3);
        assert_eq!(pending.get(id(5, 5)), None);
        assert_eq!(pending.get(id(4, 4)), None);
        assert_eq!(pending.end(), 1_000_000_001);
        assert_eq!(pending.jumps.len(), 1);
        pending.push(1_000_000_003, id(6, 6));
        assert_eq!(pending.get(id(6, 6)), Some(1_000_000_003));
        // Dropped from the front, across the jumps.
        pending.drop_through(2);
        assert_eq!(pending.first, 1_000_000_000);
        assert!(pending.jumps.len() == 1);
        assert_eq!(pending.get(id(3, 3)), Some(1_000_000_000));
        pending.drop_through(1_000_000_000);
        assert_eq!(pending.first, 1_000_000_003);
        assert!(pending.jumps.is_empty());
        assert_eq!(pending.get(id(6, 6)), Some(1_000_000_003));
        pending.drop_through(2_000_000_000);
        assert_eq!(pending.len(), 0);
        assert_eq!(pending.end(), 2_000_000_001);
    }

    #[test]
    fn a_backlog_of_many_ids_gives_its_memory_back() {
        let mut pending = Pending::new(1);
        let spread =
            |seq: u64| u128::from(seq).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        for seq in 1..=100_000u64 {
            pending.push(seq, spread(seq));
        }
        let big = pending.by_low.capacity();
        pending.drop_through(99_990);
        assert_eq!(pending.len(), 10);
        assert!(pending.by_low.capacity() < big / 100);
        assert_eq!(pending.get(spread(100_000)), Some(100_000));
        assert_eq!(pending.get(spread(5)), None);
    }

    #[test]
    fn a_backlog_finds_every_id_as_a_candidate_and_is_dropped_once_indexed_past_it() {
        let ids: Vec<(u64, u128)> = (100..10_100u64)
            .map(|seq| (seq, id(seq * 7919, seq ^ 0xabc)))
            .collect();
        let mut backlog = Backlog::spanning(100, 10_099).unwrap();
        for &(seq, id) in &ids {
            backlog.push(seq, id);
        }
        let mut backlog = backlog.finish();
        assert_eq!(backlog.len(), 10_000);
        for &(seq, id) in &ids {
            assert!(backlog.candidates(id).any(|s| s == seq), "{seq}");
        }
        // Ids sharing their low 32 bits are all candidates; an id of none, none.
        let twin = id(100 * 7919, 1) | (1u128 << 40);
        assert!(backlog.candidates(twin).any(|s| s == 100));
        assert_eq!(backlog.candidates(id(3, 3)).count(), 0);
        backlog.drop_through(10_098);
        assert_eq!(backlog.len(), 10_000);
        backlog.drop_through(10_099);
        assert_eq!(backlog.len(), 0);
        assert!(Backlog::spanning(1, 1 << 32).is_some());
        assert!(Backlog::spanning(1, 2 + (1 << 32)).is_none());
    }
}
