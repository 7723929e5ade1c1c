//! What the index knows of its keys: a rule passed in by its owner, which knows the layouts of
//! event keys (`crate::keys`). The index itself knows none.

/// What the index knows of its keys, passed in by its owner (which knows the layouts of event
/// keys): which keys are *timed*, ending with an event time and a seq (8 bytes each) that scans
/// range over. A timed key's *filter prefix*, the part a Bloom filter holds and every scan stays
/// within, is the key without its time and seq; any other key is its own filter prefix (looked
/// up whole). `timed` must say the same of a key and of its filter prefix: runs keep the
/// prefixes of timed and untimed keys in different filters, and a reader picks the filter by
/// what `timed` says of the prefix it asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyRule {
    pub(crate) timed: fn(&[u8]) -> bool,
    /// The seq of the event an entry (key, value) belongs to: pruned events' entries are
    /// skipped by readers and dropped when a run is written.
    pub(crate) seq: fn(&[u8], &[u8]) -> Option<u64>,
}

impl KeyRule {
    /// The part of a key a Bloom filter holds.
    pub(crate) fn filter_prefix<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        match (self.timed)(key) && key.len() > 16 {
            true => &key[..key.len() - 16],
            false => key,
        }
    }

    /// The event time of a timed key, as its 8 key bytes (byte order is time order).
    pub(crate) fn time(&self, key: &[u8]) -> Option<[u8; 8]> {
        match (self.timed)(key) && key.len() > 16 {
            true => key[key.len() - 16..key.len() - 8].try_into().ok(),
            false => None,
        }
    }

    /// The time range a scan of the filter prefix `prefix` from `lo` to `hi` covers: the time
    /// bytes right after the prefix. `None` for untimed keys, where no run is skipped by time.
    pub(crate) fn scan_times(
        &self,
        prefix: &[u8],
        lo: &[u8],
        hi: &[u8],
    ) -> Option<([u8; 8], [u8; 8])> {
        let at = prefix.len();
        let from = lo
            .get(at..at + 8)
            .and_then(|t| t.try_into().ok())
            .unwrap_or([0; 8]);
        let to = hi
            .get(at..at + 8)
            .and_then(|t| t.try_into().ok())
            .unwrap_or([0xff; 8]);
        (self.timed)(prefix).then_some((from, to))
    }
}
