//! What a stopped store's index runs hold, for `gancho-bench --store-stats`: entries, the bytes
//! their files take, and what the blocks of index format 4 (prefix shared with the block's
//! first key, `block.rs`'s layout, then LZ4) would take for the same entries, to weigh the
//! coding of `packed.rs` against it on real data.

use std::path::Path;

use super::block::BlockBuilder;
use super::file::{RUNS_DIR, run_path};
use super::layout::{RUN, run_of_key};
use super::run::DiskRun;
use crate::error::StoreError;
use crate::kv::Db;

/// What [`index_stats`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub runs: u64,
    pub entries: u64,
    /// The run files' bytes (blocks, filters, block index).
    pub file_bytes: u64,
    /// The blocks' bytes as stored (LZ4 of `packed.rs`'s coding).
    pub block_bytes: u64,
    /// The same entries' blocks in index format 4 (LZ4 of `block.rs`'s layout).
    pub format_4_block_bytes: u64,
}

/// Reads every live run of the index database in `dir` (a stopped store's `indexes` folder).
pub fn index_stats(dir: &Path) -> Result<IndexStats, StoreError> {
    let db = Db::open(dir, 16 << 20)?;
    let tree = db.tree("index")?;
    let runs_dir = dir.join(RUNS_DIR);
    let mut stats = IndexStats::default();
    for item in tree.scan_prefix([RUN]) {
        let (key, record) = item?;
        let id = run_of_key(&key)?;
        let run = DiskRun::open(&runs_dir, id, &record, u64::MAX)?;
        let path = run_path(&runs_dir, id);
        stats.file_bytes += std::fs::metadata(&path)
            .map_err(|source| StoreError::Io {
                what: format!("reading the size of {}", path.display()),
                source,
            })?
            .len();
        stats.runs += 1;
        let mut old = BlockBuilder::default();
        for b in 0..run.file.blocks() {
            stats.block_bytes += run.file.stored_block_bytes(b)?;
            let block = run.file.read_block(b)?;
            for i in 0..block.n {
                let (head, suffix) = block.key_parts(i)?;
                let key = [head, suffix].concat();
                old.add(&key, block.value(i)?);
                stats.entries += 1;
                if old.is_full() {
                    stats.format_4_block_bytes += packed_len(&old.finish().0);
                }
            }
        }
        if !old.is_empty() {
            stats.format_4_block_bytes += packed_len(&old.finish().0);
        }
    }
    Ok(stats)
}

fn packed_len(raw: &[u8]) -> u64 {
    lz4_flex::compress_prepend_size(raw).len() as u64
}
