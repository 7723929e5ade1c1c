//! The sequence numbers of pruned events, as sorted ranges. A pruned event is gone for every
//! reader the moment its seq is here: the indexes skip its entries (they are dropped for good
//! when a run is next written), a read by seq finds nothing, dedup no longer knows its id. The
//! set is written (and made durable) before the log blocks are rewritten without the events, so
//! a crash in between cannot leave an index entry pointing at a missing record.
//!
//! Events are pruned oldest first, so the ranges coalesce: the set is one range and a hole for
//! each event kept past its time (one a pending timer refers to).

/// Disjoint, non-adjacent inclusive ranges `(first, last)`, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Purged {
    ranges: Vec<(u64, u64)>,
}

impl Purged {
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub(crate) fn contains(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, last)| last < seq);
        self.ranges.get(i).is_some_and(|&(first, _)| first <= seq)
    }

    /// The last seq of the range of the set that holds `seq`, if one does.
    pub(crate) fn last_of(&self, seq: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|&(_, last)| last < seq);
        self.ranges
            .get(i)
            .filter(|&&(first, _)| first <= seq)
            .map(|&(_, last)| last)
    }

    /// How many seqs in `lo..=hi` are pruned.
    pub(crate) fn count_in(&self, lo: u64, hi: u64) -> u64 {
        if lo > hi {
            return 0;
        }
        let start = self.ranges.partition_point(|&(_, last)| last < lo);
        self.ranges[start..]
            .iter()
            .take_while(|&&(first, _)| first <= hi)
            .map(|&(first, last)| last.min(hi) - first.max(lo) + 1)
            .sum()
    }

    /// How many seqs are pruned in all.
    pub(crate) fn total(&self) -> u64 {
        self.ranges.iter().map(|&(f, l)| l - f + 1).sum()
    }

    /// This set with `seqs` (sorted ascending) added.
    pub(crate) fn with(&self, seqs: &[u64]) -> Purged {
        let mut added: Vec<(u64, u64)> = Vec::new();
        for &seq in seqs {
            match added.last_mut() {
                Some((_, last)) if seq <= last.saturating_add(1) => *last = (*last).max(seq),
                _ => added.push((seq, seq)),
            }
        }
        self.with_ranges(&added)
    }

    /// This set with the inclusive ranges `added` (each `first <= last`) added.
    pub(crate) fn with_ranges(&self, added: &[(u64, u64)]) -> Purged {
        let mut all: Vec<(u64, u64)> = self.ranges.iter().chain(added).copied().collect();
        all.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(all.len());
        for (first, last) in all {
            match ranges.last_mut() {
                Some((_, end)) if first <= end.saturating_add(1) => *end = (*end).max(last),
                _ => ranges.push((first, last)),
            }
        }
        Purged { ranges }
    }

    /// This set without the seqs after `last`.
    pub(crate) fn through(&self, last: u64) -> Purged {
        let ranges = self
            .ranges
            .iter()
            .filter(|&&(first, _)| first <= last)
            .map(|&(first, end)| (first, end.min(last)))
            .collect();
        Purged { ranges }
    }

    /// `[n: u64][first, last: u64 × 2]*`, big-endian.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 16 * self.ranges.len());
        out.extend_from_slice(&(self.ranges.len() as u64).to_be_bytes());
        for &(first, last) in &self.ranges {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&last.to_be_bytes());
        }
        out
    }

    /// The set `encode` wrote; `None` if the bytes are not one.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Purged> {
        let n = crate::keys::read_u64(bytes.get(..8)?)?;
        let body = bytes.get(8..)?;
        if body.len() as u64 != n.checked_mul(16)? {
            return None;
        }
        let mut ranges = Vec::with_capacity(body.len() / 16);
        for pair in body.chunks_exact(16) {
            let first = crate::keys::read_u64(&pair[..8])?;
            let last = crate::keys::read_u64(&pair[8..])?;
            let ordered = ranges
                .last()
                .is_none_or(|&(_, end): &(u64, u64)| first > end.saturating_add(1));
            if first > last || !ordered {
                return None;
            }
            ranges.push((first, last));
        }
        Some(Purged { ranges })
    }
}

#[cfg(test)]
mod tests {
    use super::Purged;

    #[test]
    fn ranges_coalesce_and_answer_membership_and_counts() {
        let set = Purged::default().with(&[3, 4, 5, 9]).with(&[6, 10, 20]);
        assert_eq!(set.ranges, vec![(3, 6), (9, 10), (20, 20)]);
        for (seq, inside) in [
            (2, false),
            (3, true),
            (6, true),
            (7, false),
            (10, true),
            (20, true),
        ] {
            assert_eq!(set.contains(seq), inside, "{seq}");
        }
        assert_eq!(set.count_in(1, 100), 7);
        assert_eq!(set.last_of(4), Some(6));
        assert_eq!(set.last_of(20), Some(20));
        assert_eq!(set.last_of(7), None);
        assert_eq!(set.count_in(5, 9), 3);
        assert_eq!(set.count_in(11, 19), 0);
        assert_eq!(set.total(), 7);
        assert_eq!(set.with(&[7, 8, 11]).ranges, vec![(3, 11), (20, 20)]);
        assert_eq!(set.through(9).ranges, vec![(3, 6), (9, 9)]);
        assert_eq!(set.through(2), Purged::default());
        assert_eq!(set.through(u64::MAX), set);
        assert_eq!(
            set.with_ranges(&[(11, 19), (100, 1 << 40)]).ranges,
            vec![(3, 6), (9, 20), (100, 1 << 40)]
        );
    }

    #[test]
    fn it_round_trips_and_refuses_what_is_not_a_set() {
        let set = Purged::default().with(&[1, 2, 8, u64::MAX]);
        assert_eq!(Purged::decode(&set.encode()), Some(set.clone()));
        let mut bytes = set.encode();
        bytes.pop();
        assert_eq!(Purged::decode(&bytes), None);
        let unordered = Purged {
            ranges: vec![(8, 9), (1, 2)],
        };
        assert_eq!(Purged::decode(&unordered.encode()), None);
    }
}
