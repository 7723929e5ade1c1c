//! The dedup and query indexes, kept as sorted runs: a small log-structured merge tree whose
//! runs are files of blocks of entries, recorded in sled.
//!
//! Why not one sled key per entry, as before: a Mailjet event has six index entries, and at
//! millions of keys sled spent 55-65 µs of CPU and wrote about 2.6 KB to disk per event (a leaf
//! holds 16 keys, every insert clones and relogs one, and the cache tracks every leaf). Indexing
//! then needed a whole core at 18,000 events/s, beside ingest. Here an entry costs a sort and a
//! copy: the indexer collects each batch's entries in memory (a *memory run*: sorted, with a
//! Bloom filter), and every few seconds writes the memory runs out as one *disk run*: a file
//! of its entries in LZ4-compressed 16 KiB blocks, its Bloom filter and its block index, made
//! live by its record in sled (decision 0006: sled held written blocks in memory far past its
//! cache, and left most of the index database as garbage on disk). Runs of about the
//! same size are merged into one (size tiers of factor 4), so a store holds a few dozen runs at
//! most, and each entry is rewritten once per tier.
//!
//! Readers take a snapshot of the runs (an `ArcSwap`, so no lock is shared with the indexer,
//! which runs at idle priority). A point lookup asks the runs whose Bloom filter may hold its
//! key; a scan is always within one *filter prefix* (an index key without its time and seq, or
//! a whole dedup key), so it too skips the runs that cannot hold it, and merges the others in
//! key order.
//!
//! The layout is in `layout.rs` (the tree) and `file.rs` (run files). Readers' blocks go through
//! a block cache (`cache.rs`) within the store's memory budget.
//!
//! Crash safety rests on sled recovering a prefix of its writes (as the log does): a run's
//! file is written (and synced, with fsync on) before its record, and a merged run's record
//! before the records of the runs it replaces are removed; their files are deleted once those
//! removals are durable, and files of runs without a record are deleted at open. A run records the last seq it indexes: one past the watermark (a crash between the run
//! and the watermark, or a power loss with fsync off that cost the log its tail) is deleted at
//! open and indexed again. Equal entries in several runs are one entry to readers.
//!
//! A merge is done a slice at a time between batches, so indexing never waits long for one;
//! while the indexer trails the log it only merges once there are more than a few dozen runs.
//! A scan also skips runs whose event times miss its window.

mod block;
mod bloom;
mod cache;
mod fences;
mod file;
pub(crate) mod indexer;
mod layout;
mod memory;
mod packed;
mod policy;
mod reader;
mod rule;
mod run;
mod scan;
mod stats;
mod writer;

#[cfg(test)]
pub(crate) use self::file::RUNS_DIR;
pub(crate) use self::layout::INDEXED_KEY;
pub(crate) use self::layout::REBUILD_KEY;
pub(crate) use self::policy::Pacing;
pub(crate) use self::reader::Index;
pub(crate) use self::rule::KeyRule;
pub(crate) use self::scan::Scan;
pub use self::stats::{IndexStats, index_stats};
#[cfg(test)]
pub(crate) use self::writer::IndexWriter;
pub(crate) use self::writer::{indexed_seq, open};

#[cfg(test)]
mod tests;
