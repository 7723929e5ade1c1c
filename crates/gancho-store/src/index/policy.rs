//! Decisions of the indexes, as pure functions of what they are given, so that each is a table
//! of cases in a unit test: which runs to merge, and how the indexer paces itself (when a batch
//! waits for more events, when to checkpoint, when a merge may run, at which priority). The
//! callers act on them; nothing here reads a clock or touches a run.

use std::time::Duration;

/// Runs in one size tier that trigger a merge of that tier.
pub(crate) const MERGE_WIDTH: usize = 4;

/// A run's size tier: size classes of factor 4 by entry count.
pub(crate) fn tier(entries: u64) -> u32 {
    (64 - entries.leading_zeros()) / 2
}

/// Which disk runs (given by their entry counts, oldest first) to merge next: those of the
/// smallest tier that holds at least [`MERGE_WIDTH`] runs, oldest first, at most twice that
/// many. `None` when no tier is full.
pub(crate) fn merge_choice(sizes: &[u64]) -> Option<Vec<usize>> {
    let mut tiers: Vec<u32> = sizes.iter().map(|&n| tier(n)).collect();
    tiers.sort_unstable();
    tiers.dedup();
    tiers.into_iter().find_map(|t| {
        let runs: Vec<usize> = (0..sizes.len())
            .filter(|&i| tier(sizes[i]) == t)
            .take(2 * MERGE_WIDTH)
            .collect();
        (runs.len() >= MERGE_WIDTH).then_some(runs)
    })
}

/// The bytes of lookup filter a disk run may keep in memory, from the block cache's budget
/// (a quarter of it: 1 MiB with the default `cache_mb` of 64, whose sixteenth is the block
/// cache; a run of about 800,000 events); a larger run reads its filter from its file by block.
/// A run whose block index is over a quarter of this pages it (from about 500,000 events). What
/// the runs keep in memory then stays about the same as the store grows: runs come in size
/// tiers of factor 4 with at most a few of each, so the runs under the bound keep about four
/// times it together, and the larger ones about 70 bytes a chunk of 64 blocks and 8 bytes a KiB
/// of filter. The cost: a read from the file a large run an event, for the writer's dedup
/// (about 0.6 µs from the page cache).
pub(crate) fn resident_per_run(block_cache: u64) -> u64 {
    block_cache / 4
}

/// How the memory tier is shaped (from [`Pacing::memory_shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryShape {
    /// Distinct filter prefixes its shared Bloom filter is sized for.
    pub(crate) filter_keys: u64,
    /// A memory run of this many bytes or more is merged with no newer one.
    pub(crate) run_cap: usize,
}

/// Whether a new memory run (`newer`: entries, bytes) is merged into the one before it
/// (`older`): when that one is at most twice its size, so that sizes halve from the oldest on
/// and readers look at a few runs only; but neither may be of `run_cap` bytes or more, so no
/// run grows past twice the cap. Merging
/// copies both into a new run while they still exist (readers may hold them), so the largest
/// merge decides the memory tier's peak: without the cap it was the whole tier, twice (a heap
/// profile under wrk with the shipped rules: 15.7 MB at the merge for a tier that checkpoints
/// at 8 MiB).
pub(crate) fn merges_in_memory(
    older: (usize, usize),
    newer: (usize, usize),
    run_cap: usize,
) -> bool {
    older.0 <= 2 * newer.0 && older.1 < run_cap && newer.1 < run_cap
}

/// Whether a run whose entries are of events in a span of `span` seqs, `garbage` of which were
/// pruned since it was written, is worth writing again without them: once they are a quarter
/// of it, so the indexes hold at most about a third more than the events they index.
pub(crate) fn worth_rewriting(span: u64, garbage: u64) -> bool {
    garbage > 0 && garbage.saturating_mul(4) >= span
}

/// How the indexer paces itself. The daemon's values are [`Pacing::DEFAULT`]'s, sized by
/// [`Pacing::for_memory`] for its memory tier and [`Pacing::boosting_before`] for its backlog
/// bound (with the default `cache_mb`: checkpoints at 4 MiB, normal priority past about 150,000
/// unindexed events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pacing {
    /// Events indexed per batch (one memory run), between two looks at the log's progress.
    pub(crate) batch_events: u64,
    /// Under a high rate of events, a batch smaller than `batch_events` waits this long for
    /// more: when the indexer keeps up, every group commit (a few events) would otherwise make a
    /// batch of its own, and sorting and merging many tiny runs costs more than the entries
    /// themselves. It delays what the engine sees by as much, at most.
    pub(crate) batch_wait: Duration,
    /// ... the rate (events per second, measured over the last second) from which batches
    /// wait. Below it the CPU is not short, and the engine sees every event as soon as it can.
    pub(crate) batch_wait_rate: u64,
    /// How often the memory runs are written out, the indexes made durable and the persisted
    /// watermark moved. Syncing the index database after every batch would put an fdatasync
    /// every few milliseconds on the disk that the log's group commits wait on (measured: a
    /// third of single-event throughput).
    pub(crate) checkpoint_every: Duration,
    /// ... or once the memory tier takes this many bytes (half its budget: with the default
    /// `cache_mb` 4 MiB, some 50,000 entries or 8,500 Mailjet events), whichever comes first.
    pub(crate) checkpoint_bytes: usize,
    /// Past this many bytes in memory (after a failed checkpoint: the memory tier's whole
    /// budget), indexing waits for a checkpoint to succeed (readers merge the unindexed tail of
    /// the log meanwhile), so memory stays bounded.
    pub(crate) max_memory_bytes: usize,
    /// Runs are merged while the indexer trails the log by less than this (a merge is never
    /// urgent, catching up is) ...
    pub(crate) merge_max_lag: u64,
    /// ... or once there are more disk runs than this: every lookup asks each run's filter.
    pub(crate) merge_anyway_runs: usize,
    /// Past this many unindexed events, the indexer leaves idle priority until it is back
    /// under a tenth of it.
    pub(crate) max_idle_lag: u64,
    /// ... or once durable events have waited this long for it: at idle priority any busy
    /// process on the host (not only gancho's ingest) holds it back, for as long as it runs,
    /// and the rules wait on the indexer. Measured: two busy loops on 2 cores left a rebuild
    /// of 100,000 events at 3% of a core for five minutes.
    pub(crate) max_idle_wait: Duration,
}

impl Pacing {
    pub(crate) const DEFAULT: Pacing = Pacing {
        batch_events: 2048,
        batch_wait: Duration::from_millis(10),
        batch_wait_rate: 5_000,
        checkpoint_every: Duration::from_secs(5),
        checkpoint_bytes: 16 << 20,
        max_memory_bytes: 32 << 20,
        merge_max_lag: 4 * 2048,
        merge_anyway_runs: 24,
        max_idle_lag: 500_000,
        max_idle_wait: Duration::from_secs(5),
    };

    /// The pacing for a memory tier of `budget` bytes (at least 8 MiB: a checkpoint every few
    /// thousand events would put an `fdatasync` of the index database every few milliseconds on
    /// the disk the log's group commits wait on): checkpoints at half of it, and indexing waits
    /// for one past all of it.
    pub(crate) fn for_memory(budget: u64) -> Pacing {
        let budget = usize::try_from(budget).unwrap_or(usize::MAX).max(8 << 20);
        Pacing {
            checkpoint_bytes: budget / 2,
            max_memory_bytes: budget,
            ..Pacing::DEFAULT
        }
    }

    /// Leaves idle priority before the lag reaches `max_lag`, past which the writer waits for
    /// the indexer (at half of it, or at `max_idle_lag` if that is lower): an indexer held at
    /// idle priority would otherwise hold ingest back.
    pub(crate) fn boosting_before(self, max_lag: u64) -> Pacing {
        Pacing {
            max_idle_lag: self.max_idle_lag.min(max_lag / 2),
            ..self
        }
    }

    /// The memory tier's shape: its Bloom filter sized for the distinct filter prefixes of the
    /// entries one checkpoint holds (an entry takes some 70 bytes), with room (past it, false
    /// positives only grow); memory runs merged up to an eighth of a checkpoint, so a
    /// checkpoint finds about eight large runs and a tail of small ones.
    pub(crate) fn memory_shape(&self) -> MemoryShape {
        MemoryShape {
            filter_keys: (self.checkpoint_bytes / 40) as u64,
            run_cap: self.checkpoint_bytes / 8,
        }
    }

    /// Whether the incoming rate (`events` over `elapsed`) is high enough for batches to wait.
    pub(crate) fn busy(&self, events: u64, elapsed: Duration) -> bool {
        let secs = elapsed.as_secs_f64();
        secs > 0.0 && events as f64 / secs > self.batch_wait_rate as f64
    }

    /// Whether a batch should wait for more events before it is indexed: only when busy, and
    /// when there is something to index but less than a batch.
    pub(crate) fn gather(&self, busy: bool, lag: u64, stopping: bool) -> bool {
        busy && lag > 0 && lag < self.batch_events && !stopping
    }

    /// Whether a checkpoint is due: its period passed, memory holds enough, or the store is
    /// stopping.
    pub(crate) fn checkpoint_due(
        &self,
        since_last: Duration,
        bytes: usize,
        stopping: bool,
    ) -> bool {
        since_last >= self.checkpoint_every || bytes >= self.checkpoint_bytes || stopping
    }

    /// Whether indexing must wait for a checkpoint first (memory is full).
    pub(crate) fn memory_full(&self, bytes: usize) -> bool {
        bytes >= self.max_memory_bytes
    }

    /// Whether a merge slice may run now: caught up enough, or too many runs.
    pub(crate) fn may_merge(&self, lag: u64, disk_runs: usize) -> bool {
        lag < self.merge_max_lag || disk_runs > self.merge_anyway_runs
    }

    /// The priority the indexer should move to, if any. `Some(false)` leaves idle priority
    /// (when it may): past `max_idle_lag`, or once it has been behind the log for
    /// `max_idle_wait` (`waited`) while gancho itself is not `busy` ingesting, since then what
    /// holds it back is another process. `Some(true)` goes back to idle priority once it has
    /// caught up (under a tenth of the lag, and not behind for long: `waited` starts again
    /// only when it has caught up).
    pub(crate) fn priority(
        &self,
        idle: bool,
        can_boost: bool,
        lag: u64,
        waited: Duration,
        busy: bool,
    ) -> Option<bool> {
        let long = waited > self.max_idle_wait;
        let starved = !busy && lag > 0 && long;
        if idle && can_boost && (lag > self.max_idle_lag || starved) {
            Some(false)
        } else if !idle && lag < self.max_idle_lag / 10 && !long {
            Some(true)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_size_classes_of_factor_four() {
        for (entries, expected) in [(0, 0), (1, 0), (3, 1), (4, 1), (15, 2), (16, 2), (64, 3)] {
            assert_eq!(tier(entries), expected, "{entries} entries");
        }
    }

    #[test]
    fn memory_runs_merge_with_one_at_most_twice_their_size_below_the_cap() {
        for (older, newer, expected) in [
            ((10, 100), (10, 100), true),
            ((20, 200), (10, 100), true),
            ((21, 210), (10, 100), false),
            ((20, 999), (10, 100), true),
            ((20, 1000), (10, 100), false),
            ((20, 5000), (20, 5000), false),
            // A run merged past the cap takes no older one in.
            ((20, 900), (30, 1500), false),
        ] {
            assert_eq!(
                merges_in_memory(older, newer, 1000),
                expected,
                "{older:?} {newer:?}"
            );
        }
    }

    #[test]
    fn a_run_is_written_again_once_a_quarter_of_it_was_pruned() {
        for (span, garbage, expected) in [
            (100, 0, false),
            (100, 24, false),
            (100, 25, true),
            (1, 1, true),
            (u64::MAX, u64::MAX, true),
        ] {
            assert_eq!(
                worth_rewriting(span, garbage),
                expected,
                "{garbage} of {span}"
            );
        }
    }

    #[test]
    fn the_smallest_full_tier_is_merged_oldest_first() {
        let cases: &[(&[u64], Option<&[usize]>)] = &[
            (&[], None),
            (&[100, 100, 100], None),
            (&[100, 100, 100, 100], Some(&[0, 1, 2, 3])),
            // Two full tiers: the smaller one goes first.
            (
                &[5000, 100, 5000, 100, 5000, 100, 5000, 100],
                Some(&[1, 3, 5, 7]),
            ),
            // Sizes of one tier, not equal sizes.
            (&[128, 200, 300, 511], Some(&[0, 1, 2, 3])),
            // At most twice the width.
            (&[9; 10], Some(&[0, 1, 2, 3, 4, 5, 6, 7])),
            // A tier with fewer runs than the width waits, even beside a big one.
            (&[1 << 20, 10, 10, 10], None),
        ];
        for (sizes, expected) in cases {
            assert_eq!(merge_choice(sizes).as_deref(), *expected, "sizes {sizes:?}");
        }
    }

    #[test]
    fn batches_wait_only_when_busy_and_short_of_a_batch() {
        let p = Pacing::DEFAULT;
        let cases = [
            // (busy, lag, stopping, gather)
            (false, 10, false, false),
            (true, 0, false, false),
            (true, 10, false, true),
            (true, 2047, false, true),
            (true, 2048, false, false),
            (true, 10, true, false),
        ];
        for (busy, lag, stopping, expected) in cases {
            assert_eq!(
                p.gather(busy, lag, stopping),
                expected,
                "{busy} {lag} {stopping}"
            );
        }
        assert!(!p.busy(5_000, Duration::from_secs(1)));
        assert!(p.busy(5_001, Duration::from_secs(1)));
        assert!(!p.busy(1_000_000, Duration::ZERO));
    }

    #[test]
    fn checkpoints_come_by_time_by_size_or_at_stop() {
        let p = Pacing::DEFAULT;
        let cases = [
            (Duration::from_secs(1), 10, false, false),
            (Duration::from_secs(5), 10, false, true),
            (Duration::from_secs(1), 16 << 20, false, true),
            (Duration::from_secs(1), (16 << 20) - 1, false, false),
            (Duration::ZERO, 0, true, true),
        ];
        for (since, bytes, stopping, expected) in cases {
            assert_eq!(p.checkpoint_due(since, bytes, stopping), expected);
        }
        assert!(!p.memory_full((32 << 20) - 1));
        assert!(p.memory_full(32 << 20));
        // The budget sets both; a tiny one is raised to a floor of 8 MiB.
        let small = Pacing::for_memory(8 << 20);
        assert_eq!(
            (small.checkpoint_bytes, small.max_memory_bytes),
            (4 << 20, 8 << 20)
        );
        assert_eq!(Pacing::for_memory(0).max_memory_bytes, 8 << 20);
        assert_eq!(Pacing::for_memory(32 << 20), Pacing::DEFAULT);
        // The indexer leaves idle priority before ingest would wait for it.
        assert_eq!(
            Pacing::DEFAULT.boosting_before(400_000).max_idle_lag,
            200_000
        );
        assert_eq!(
            Pacing::DEFAULT.boosting_before(10_000_000).max_idle_lag,
            Pacing::DEFAULT.max_idle_lag
        );
    }

    #[test]
    fn merges_wait_while_behind_unless_runs_pile_up() {
        let p = Pacing::DEFAULT;
        let cases = [
            (0, 5, true),
            (8191, 5, true),
            (8192, 5, false),
            (1 << 20, 25, true),
        ];
        for (lag, runs, expected) in cases {
            assert_eq!(p.may_merge(lag, runs), expected, "lag {lag} runs {runs}");
        }
    }

    #[test]
    fn priority_leaves_idle_past_the_lag_or_a_wait_not_its_own_and_returns_once_caught_up() {
        let p = Pacing::DEFAULT;
        let (now, long) = (Duration::ZERO, Duration::from_secs(6));
        let cases = [
            // (idle, can_boost, lag, waited, busy, change)
            (true, true, 500_000, now, true, None),
            (true, true, 500_001, now, true, Some(false)),
            (true, false, 900_000, now, false, None),
            (false, true, 60_000, now, false, None),
            (false, true, 49_999, now, false, Some(true)),
            // Behind for 6 s while gancho is not busy: another process holds it back.
            (true, true, 10, long, false, Some(false)),
            (true, true, 10, Duration::from_secs(5), false, None),
            (true, false, 10, long, false, None),
            // ... but not during gancho's own burst: acknowledging comes first.
            (true, true, 10, long, true, None),
            // Boosted, it stays so until it has caught up.
            (false, true, 10, long, false, None),
            (false, true, 0, now, false, Some(true)),
        ];
        for (idle, can_boost, lag, waited, busy, expected) in cases {
            assert_eq!(
                p.priority(idle, can_boost, lag, waited, busy),
                expected,
                "{idle} {can_boost} {lag} {waited:?} {busy}"
            );
        }
    }
}
