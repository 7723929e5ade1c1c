//! The event log: appended by one writer thread in groups, made durable by one flusher thread,
//! read in blocks. `append` (what callers submit and get back, the job queue), `writer` (group
//! commit, dedup), `flusher` (flush + `fdatasync`, answers),
//! `codec` (records, blocks, the commit record, the log database's format), `cache`
//! (decompressed blocks for single-event reads), `query` (listings and windows, from the indexes
//! with the log's unindexed tail merged in), `prune` (retention: pruned events and old
//! quarantine records), `segments` (larger blocks in files of their own, and `Log`, which reads
//! a block wherever it is).

pub(crate) mod append;
pub(crate) mod cache;
pub(crate) mod codec;
mod flusher;
mod pending;
pub(crate) mod prune;
pub(crate) mod query;
pub(crate) mod segments;
pub(crate) mod writer;

pub(crate) use self::pending::BYTES_PER_EVENT as PENDING_BYTES_PER_EVENT;
