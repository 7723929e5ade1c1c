//! The `[store]` section of the config file and how its one memory budget, `cache_mb`, is
//! shared between the store's caches and its backlog of unindexed events.

use std::time::Duration;

use crate::log;

/// How the store is opened: the `[store]` section of the config file, whose keys are those of
/// [`StoreSection`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(try_from = "StoreSection")]
pub struct StoreConfig {
    /// After sled's flush, also `fdatasync` the log file, so an acknowledged event survives a
    /// power loss and not only a crash of the process. Default: true.
    pub fsync: bool,
    /// The memory budget, in bytes, of every cache of the store folder together: the page
    /// caches of its four databases (the log and its indexes here, the engine's and the
    /// traces' in `gancho-state`) and the indexes' memory tier. Default: 64 MiB. See the
    /// shares below.
    pub cache_capacity: u64,
    /// The most the quarantine keeps, in bytes of its records; past it the oldest records go
    /// (and are counted). Default: 256 MiB.
    pub quarantine_max_bytes: u64,
    /// How long events are kept, by event time (`None`: for ever). Default: 30 days.
    pub retention: Option<Duration>,
    /// How long quarantined items are kept, by arrival (`None`: for ever). Default: 7 days.
    pub quarantine_retention: Option<Duration>,
}

/// `[store]` as written in the config file (the store counts its cache in bytes, the file in MiB).
#[derive(Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `fdatasync` after each group flush, so an acknowledged event survives a power loss; off,
    /// it survives a crash of the process only. Default: true. Example: false.
    pub fsync: bool,
    /// The memory budget of the store's caches together, in MiB: the page caches of its
    /// databases and the indexes' memory tier. Default: 64. Example: 256.
    pub cache_mb: u64,
    /// The most the quarantine keeps, in MiB; past it its oldest records are dropped (and
    /// counted in the log). Default: 256. Example: 1024.
    pub quarantine_max_mb: u64,
    /// Events whose event time is older than this are deleted once the engine has processed
    /// them and no pending timer refers to them; `"0"` keeps everything. Default: `"30d"`.
    /// Example: `"90d"`.
    #[serde(deserialize_with = "gancho_core::config::duration::retention::deserialize")]
    pub retention: Option<Duration>,
    /// Quarantined items older than this (since they arrived) are deleted; `"0"` keeps them
    /// (up to `quarantine_max_mb`). Default: `"7d"`. Example: `"30d"`.
    #[serde(deserialize_with = "gancho_core::config::duration::retention::deserialize")]
    pub quarantine_retention: Option<Duration>,
}

const MIB: u64 = 1024 * 1024;
const DAY: u64 = 24 * 3600;

impl Default for StoreSection {
    fn default() -> StoreSection {
        let store = StoreConfig::default();
        StoreSection {
            fsync: store.fsync,
            cache_mb: store.cache_capacity / MIB,
            quarantine_max_mb: store.quarantine_max_bytes / MIB,
            retention: store.retention,
            quarantine_retention: store.quarantine_retention,
        }
    }
}

impl TryFrom<StoreSection> for StoreConfig {
    type Error = gancho_core::KeyError;

    fn try_from(section: StoreSection) -> Result<StoreConfig, gancho_core::KeyError> {
        if section.cache_mb == 0 {
            return Err(gancho_core::KeyError::new("cache_mb", "must be at least 1"));
        }
        if section.quarantine_max_mb == 0 {
            return Err(gancho_core::KeyError::new(
                "quarantine_max_mb",
                "must be at least 1",
            ));
        }
        Ok(StoreConfig {
            fsync: section.fsync,
            cache_capacity: section.cache_mb.saturating_mul(MIB),
            quarantine_max_bytes: section.quarantine_max_mb.saturating_mul(MIB),
            retention: section.retention,
            quarantine_retention: section.quarantine_retention,
        })
    }
}

/// How the budget is shared. The indexes' memory tier gets a quarter: it holds the entries of
/// the last seconds of events until a checkpoint writes them out, and a smaller one means more,
/// smaller runs to merge. The writer's pending dedup ids (one per event the indexer trails by)
/// get a quarter, which sets how far the indexer may trail before ingest waits for it. The
/// indexes' block cache (blocks of run files that lookups and scans read) gets an eighth, and
/// the index database's page cache, which holds only run records and the watermark, a
/// sixteenth. The log (written at its end, read near it) and the engine's database get an
/// eighth each.
/// How the budget is shared. A sled database holds several times its nominal page cache (its
/// cache is 256 shards that each keep the page they took last, counts a page by its size on
/// disk, and evicts late: `docs/memory-notes.md`), and the memory tier takes up to twice its
/// share while a merge holds its inputs and its output. So the nominal shares add up to well
/// under the budget, and what the store holds stays within it: under wrk with the shipped rules,
/// halving the sled caches and the memory tier took the peak from 149-192 MB to 140-165 MB at
/// the same throughput (`docs/benchmarks.md`).
impl StoreConfig {
    /// `[store] cache_mb` when the config does not set it.
    pub const DEFAULT_CACHE_MB: u64 = 64;

    /// The page cache of the engine's database.
    pub fn engine_cache(&self) -> u64 {
        self.cache_capacity / 16
    }

    /// The page cache of the traces' database (rule traces and the delivery history).
    pub fn traces_cache(&self) -> u64 {
        self.cache_capacity / 16
    }

    /// The page cache of the log's database.
    pub fn log_cache(&self) -> u64 {
        self.cache_capacity / 16
    }

    /// The page cache of the index database (run records and the watermark).
    pub fn index_cache(&self) -> u64 {
        self.cache_capacity / 16
    }

    /// The indexes' block cache; a quarter of it is also what one disk run may keep in memory
    /// of its lookup filter (`index::policy::resident_per_run`).
    pub fn index_blocks(&self) -> u64 {
        self.cache_capacity / 16
    }

    /// The indexes' memory tier: entries added since the last checkpoint.
    pub fn memory_tier(&self) -> u64 {
        self.cache_capacity / 8
    }

    /// How many events the indexer may trail the log by before the writer waits for it (ingest
    /// slows to the indexer's pace rather than memory growing with the backlog): as many as the
    /// writer's pending dedup ids hold in their quarter of the budget, and at least 10,000.
    /// Events that were unindexed when the store opened (after a rebuild, the whole log) do not
    /// count: ingest goes on while the indexer works through them.
    pub fn max_index_lag(&self) -> u64 {
        (self.cache_capacity / 4 / log::PENDING_BYTES_PER_EVENT).max(10_000)
    }
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            fsync: true,
            cache_capacity: StoreConfig::DEFAULT_CACHE_MB * MIB,
            quarantine_max_bytes: 256 * 1024 * 1024,
            retention: Some(Duration::from_secs(30 * DAY)),
            quarantine_retention: Some(Duration::from_secs(7 * DAY)),
        }
    }
}
