#![allow(clippy::unwrap_used)]

use super::block::{Block, BlockBuilder};
use super::bloom::{Bloom, hash};
use super::fences::CHUNK;
use std::sync::Arc;

use super::layout::INDEXED_KEY;
use super::policy::{MERGE_WIDTH, MemoryShape};
use super::writer::IndexWriter;
use super::*;
use crate::keys::{BY_KEY, KEY_RULE, read_u64};
use crate::kv::Db;
use xxhash_rust::xxh3::xxh3_64;

fn key(prefix: &str, time: u64, seq: u64) -> Vec<u8> {
    let mut key = vec![BY_KEY];
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(&time.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn prefix(p: &str) -> Vec<u8> {
    let mut key = vec![BY_KEY];
    key.extend_from_slice(p.as_bytes());
    key
}

/// Scanning prefix `p` finds the seqs `want`, in order, and in reverse.
fn assert_scans_both_ways(index: &Index, p: &str, mut want: Vec<u64>) {
    assert_eq!(scan_seqs(index, p, false), want);
    want.reverse();
    assert_eq!(scan_seqs(index, p, true), want);
}

fn bounds(p: &str) -> (Vec<u8>, Vec<u8>) {
    let lo = prefix(p);
    let mut hi = prefix(p);
    hi.extend_from_slice(&[0xff; 16]);
    (lo, hi)
}

fn scan_seqs(index: &Index, p: &str, reverse: bool) -> Vec<u64> {
    let (lo, hi) = bounds(p);
    index
        .scan(&prefix(p), &lo, &hi, reverse)
        .map(|e| {
            let (k, _) = e.unwrap();
            read_u64(&k[k.len() - 8..]).unwrap()
        })
        .collect()
}

fn open_in(dir: &std::path::Path) -> (Db, Arc<Index>, IndexWriter, u64) {
    open_shaped(dir, 1 << 20)
}

/// [`open_in`] with memory runs merged up to `run_cap` bytes.
fn open_shaped(dir: &std::path::Path, run_cap: usize) -> (Db, Arc<Index>, IndexWriter, u64) {
    open_with(dir, run_cap, 1 << 20)
}

/// [`open_shaped`] with a block cache of `block_cache` bytes, which also bounds what a run
/// keeps in memory (`policy::resident_per_run`).
fn open_with(
    dir: &std::path::Path,
    run_cap: usize,
    block_cache: u64,
) -> (Db, Arc<Index>, IndexWriter, u64) {
    let db = Db::open(dir, 16 << 20).unwrap();
    let shape = MemoryShape {
        filter_keys: 400_000,
        run_cap,
    };
    let (index, writer, indexed) = open(
        db.clone(),
        KEY_RULE,
        None,
        shape,
        Default::default(),
        block_cache,
    )
    .unwrap();
    (db, index, writer, indexed)
}

#[test]
fn blocks_find_every_key_and_no_other() {
    let mut builder = BlockBuilder::default();
    let keys: Vec<Vec<u8>> = (0..200u64).map(|i| key("abc", i * 2, i)).collect();
    for (i, k) in keys.iter().enumerate() {
        builder.add(k, &[i as u8]);
    }
    let (bytes, last) = builder.finish();
    assert_eq!(&last, keys.last().unwrap());
    let block = Block::parse(1, bytes).unwrap();
    assert_eq!(block.n, 200);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(block.seek(k, false).unwrap(), i);
        assert_eq!(block.seek(k, true).unwrap(), i + 1);
        let (head, suffix) = block.key_parts(i).unwrap();
        assert_eq!([head, suffix].concat(), *k);
        assert_eq!(block.value(i).unwrap(), &[i as u8]);
    }
    // Between two keys, and before and after all of them.
    assert_eq!(block.seek(&key("abc", 3, 0), false).unwrap(), 2);
    assert_eq!(block.seek(&prefix("ab"), false).unwrap(), 0);
    assert_eq!(block.seek(&prefix("abd"), false).unwrap(), 200);
    assert!(Block::parse(1, vec![0, 0, 0, 9]).is_err());
}

#[test]
fn block_entries_with_long_keys_values_and_shared_prefixes_read_back() {
    let mut builder = BlockBuilder::default();
    let long = |i: u64, len: usize| {
        let mut k = vec![b'K'; len];
        k.extend_from_slice(&i.to_be_bytes());
        k
    };
    // Shared prefixes, suffixes and values past one varint byte (127) and past two (16,383).
    let entries: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (long(0, 300), vec![]),
        (long(1, 300), vec![7; 200]),
        (long(2, 300), vec![8; 20_000]),
    ];
    for (k, v) in &entries {
        builder.add(k, v);
    }
    assert!(builder.is_full());
    let (bytes, _) = builder.finish();
    let block = Block::parse(1, bytes).unwrap();
    for (i, (k, v)) in entries.iter().enumerate() {
        let (head, suffix) = block.key_parts(i).unwrap();
        assert_eq!([head, suffix].concat(), *k);
        assert_eq!(block.value(i).unwrap(), &v[..]);
    }
    // A varint that never ends or passes 32 bits, or a length past the block, is damage, not
    // a panic.
    let mut bad = vec![0, 0, 0, 1, 0, 0];
    bad.extend_from_slice(&[0xff; 6]);
    assert!(Block::parse(1, bad).is_err());
    assert!(
        Block::parse(
            1,
            vec![0, 0, 0, 1, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0]
        )
        .is_err()
    );
    assert!(Block::parse(1, vec![0, 0, 0, 1, 0, 0, 0, 9, 1]).is_err());
}

#[test]
fn bloom_filters_hold_what_was_put_in() {
    let mut bloom = Bloom::for_keys(1000);
    for i in 0..1000u64 {
        bloom.insert(hash(&i.to_be_bytes()));
    }
    assert!((0..1000u64).all(|i| bloom.may_contain(hash(&i.to_be_bytes()))));
    let false_positives = (1000..101_000u64)
        .filter(|i| bloom.may_contain(hash(&i.to_be_bytes())))
        .count();
    assert!(false_positives < 3000, "{false_positives} false positives");
}

#[test]
fn scans_merge_memory_and_disk_runs_in_order_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, index, mut writer, indexed) = open_in(dir.path());
    assert_eq!(indexed, 0);
    // Three batches, the second one written out, all interleaved in key order; another
    // prefix beside them, and one entry present twice (re-indexed).
    writer.add(
        (0..100)
            .step_by(3)
            .map(|s| (key("a", s, s), vec![]))
            .collect(),
    );
    writer.add(
        (1..100)
            .step_by(3)
            .map(|s| (key("a", s, s), vec![]))
            .collect(),
    );
    writer.checkpoint(10).unwrap();
    writer.add(
        (2..100)
            .step_by(3)
            .chain([3])
            .map(|s| (key("a", s, s), vec![]))
            .chain((0..50).map(|s| (key("b", s, s), vec![])))
            .collect(),
    );
    let forward = scan_seqs(&index, "a", false);
    assert_eq!(forward, (0..100).collect::<Vec<u64>>());
    let backward = scan_seqs(&index, "a", true);
    assert_eq!(backward, (0..100).rev().collect::<Vec<u64>>());
    assert_eq!(scan_seqs(&index, "b", false).len(), 50);
    assert!(scan_seqs(&index, "c", false).is_empty());
    // A time range inside one prefix.
    let mut lo = prefix("a");
    lo.extend_from_slice(&10u64.to_be_bytes());
    let mut hi = prefix("a");
    hi.extend_from_slice(&20u64.to_be_bytes());
    hi.extend_from_slice(&[0xff; 8]);
    let got: Vec<u64> = index
        .scan(&prefix("a"), &lo, &hi, true)
        .map(|e| read_u64(&e.unwrap().0[10..18]).unwrap())
        .collect();
    assert_eq!(got, (10..=20).rev().collect::<Vec<u64>>());
}

#[test]
fn dedup_entries_are_found_in_every_kind_of_run() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, index, mut writer, _) = open_in(dir.path());
    let dedup = |i: u64| {
        let mut k = vec![b'D'];
        k.extend_from_slice(&xxh3_64(&i.to_be_bytes()).to_be_bytes());
        k
    };
    writer.add(
        (0..5000)
            .map(|i| (dedup(i), i.to_be_bytes().to_vec()))
            .collect(),
    );
    writer.checkpoint(5000).unwrap();
    writer.add(
        (5000..6000)
            .map(|i| (dedup(i), i.to_be_bytes().to_vec()))
            .collect(),
    );
    for i in [0, 1, 2500, 4999, 5000, 5999] {
        assert_eq!(
            index.get(&dedup(i)).unwrap(),
            Some(i.to_be_bytes().to_vec())
        );
    }
    for i in 6000..7000 {
        assert_eq!(index.get(&dedup(i)).unwrap(), None);
    }
}

/// Fills one size tier: [`MERGE_WIDTH`] disk runs of `n` entries each under prefix `p`.
fn fill_a_tier(writer: &mut IndexWriter, p: &str, n: u64) {
    for batch in 0..MERGE_WIDTH as u64 {
        writer.add((0..n).map(|i| (key(p, i, batch * n + i), vec![])).collect());
        writer.checkpoint(batch + 1).unwrap();
    }
}

#[test]
fn runs_of_a_tier_are_merged_and_their_blocks_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (db, index, mut writer, _) = open_in(dir.path());
    fill_a_tier(&mut writer, "m", 1000);
    assert_eq!(writer.disk_runs(), MERGE_WIDTH);
    assert!(writer.merge_pending());
    // A reader holding a scan keeps the old runs' blocks alive.
    let mut held = index.scan(&prefix("m"), &bounds("m").0, &bounds("m").1, false);
    // A slice at a time: readers see the old runs until the merge is done.
    let mut steps = 0;
    while !writer.merge_step(500).unwrap() {
        steps += 1;
        assert_eq!(writer.disk_runs(), MERGE_WIDTH);
        assert_eq!(scan_seqs(&index, "m", false).len(), 4000);
    }
    assert!(steps >= 7, "{steps} steps");
    assert_eq!(writer.disk_runs(), 1);
    assert!(!writer.merge_pending());
    writer.collect_garbage().unwrap();
    assert_eq!(held.by_ref().count(), 4000);
    drop(held);
    writer.collect_garbage().unwrap();
    let all = scan_seqs(&index, "m", false);
    assert_eq!(all.len(), 4000);
    // Only the merged run's file is left.
    assert_eq!(
        run_files(&db),
        vec![super::file::run_path(
            &db.path().join(RUNS_DIR),
            writer.disk[0].id
        )]
    );
}

/// The run files in the index database's folder.
fn run_files(db: &Db) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(db.path().join(RUNS_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn a_merge_cut_short_and_orphan_blocks_leave_the_answers_whole() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, _index, mut writer, _) = open_in(dir.path());
        fill_a_tier(&mut writer, "o", 3000);
        // Stopped halfway: what it wrote is deleted.
        assert!(!writer.merge_step(5000).unwrap());
        writer.abandon_merge();
        assert_eq!(writer.disk_runs(), MERGE_WIDTH);
        // Another half-done merge, left as a crash would leave it.
        assert!(!writer.merge_step(5000).unwrap());
        drop(writer);
        // The file of a run with no record, as a crash would leave it.
        let orphan = super::file::run_path(&db.path().join(RUNS_DIR), 999);
        std::fs::write(&orphan, b"garbage").unwrap();
        db.flush().unwrap();
    }
    let (db, index, writer, indexed) = open_in(dir.path());
    assert_eq!(indexed, MERGE_WIDTH as u64);
    assert_eq!(writer.disk_runs(), MERGE_WIDTH);
    assert_eq!(scan_seqs(&index, "o", false).len(), 3000 * MERGE_WIDTH);
    // Only the live runs' files are left.
    assert_eq!(run_files(&db).len(), MERGE_WIDTH);
    assert!(writer.next_id > 999);
}

#[test]
fn a_run_past_the_watermark_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, _index, mut writer, _) = open_in(dir.path());
        writer.add((0..10).map(|s| (key("w", s, s), vec![])).collect());
        writer.checkpoint(10).unwrap();
        writer.add((10..20).map(|s| (key("w", s, s), vec![])).collect());
        writer.checkpoint(20).unwrap();
        // As if the watermark of the second checkpoint had not reached the disk.
        let tree = db.tree("index").unwrap();
        tree.insert(INDEXED_KEY, &10u64.to_be_bytes()[..]).unwrap();
        db.flush().unwrap();
    }
    let (_db, index, writer, indexed) = open_in(dir.path());
    assert_eq!(indexed, 10);
    assert_eq!(writer.disk_runs(), 1);
    assert_eq!(scan_seqs(&index, "w", false), (0..10).collect::<Vec<u64>>());
}

#[test]
fn memory_runs_grow_no_larger_than_the_cap_by_merging_and_stay_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, index, mut writer, _) = open_shaped(dir.path(), 4096);
    for start in (0..3000u64).step_by(10) {
        writer.add(
            (start..start + 10)
                .map(|s| (key("c", s, s), vec![]))
                .collect(),
        );
    }
    // Merged up to the cap: a run past it came from two below it.
    let bytes: Vec<usize> = writer.mem.iter().map(|r| r.bytes()).collect();
    assert!(bytes.iter().all(|&b| b < 2 * 4096), "{bytes:?}");
    assert!(bytes.len() > 10, "{bytes:?}");
    assert_eq!(
        scan_seqs(&index, "c", false),
        (0..3000).collect::<Vec<u64>>()
    );
    writer.checkpoint(3000).unwrap();
    assert_eq!(
        scan_seqs(&index, "c", true),
        (0..3000).rev().collect::<Vec<u64>>()
    );
}

#[test]
fn small_batches_are_merged_in_memory_and_stay_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, index, mut writer, _) = open_in(dir.path());
    // Overlapping batches of 15 entries, as when the indexer keeps up with single events.
    for start in (0..1000u64).step_by(10) {
        writer.add(
            (start..start + 15)
                .map(|s| (key("s", s, s), vec![]))
                .collect(),
        );
    }
    assert!(writer.mem.len() <= 12, "{} memory runs", writer.mem.len());
    assert_eq!(
        scan_seqs(&index, "s", false),
        (0..1005).collect::<Vec<u64>>()
    );
    assert!(writer.mem.iter().map(|r| r.len()).sum::<usize>() >= 1005);
    writer.checkpoint(1).unwrap();
    assert_eq!(writer.memory_bytes(), 0);
    assert_eq!(
        scan_seqs(&index, "s", true),
        (0..1005).rev().collect::<Vec<u64>>()
    );
}

fn a_block(n: u64) -> Block {
    let mut builder = BlockBuilder::default();
    for i in 0..n {
        builder.add(&key("c", i, i), &[]);
    }
    Block::parse(1, builder.finish().0).unwrap()
}

#[test]
fn the_block_cache_stays_within_its_budget_and_keeps_what_is_read_again() {
    let size = a_block(100).bytes.len();
    let cache = super::cache::BlockCache::new(4 * size as u64);
    let loads = std::cell::Cell::new(0);
    let get = |run: u64, i: usize| {
        cache
            .get(run, i, || {
                loads.set(loads.get() + 1);
                Ok(a_block(100))
            })
            .unwrap()
    };
    for i in 0..4 {
        get(1, i);
    }
    assert_eq!(loads.get(), 4);
    // Block 0 is read again: the hand passes it over once.
    get(1, 0);
    assert_eq!(loads.get(), 4);
    for i in 4..7 {
        get(1, i);
        assert!(cache.bytes() <= 4 * size, "{} bytes", cache.bytes());
    }
    get(1, 0);
    assert_eq!(loads.get(), 7, "block 0 was evicted");
    cache.forget(1);
    assert_eq!(cache.bytes(), 0);
}

#[test]
fn a_run_file_cut_short_or_damaged_is_found_at_open() {
    for damage in ["cut", "flip", "scan filter"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, _index, mut writer, _) = open_in(dir.path());
            writer.add((0..5000).map(|s| (key("d", s, s), vec![])).collect());
            writer.checkpoint(5000).unwrap();
        }
        let runs = dir.path().join(RUNS_DIR);
        let file = std::fs::read_dir(&runs)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let len = std::fs::metadata(&file).unwrap().len();
        let handle = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        let scan_at = {
            let mut word = [0u8; 8];
            std::os::unix::fs::FileExt::read_exact_at(
                &handle_for_reading(&file),
                &mut word,
                len - 24,
            )
            .unwrap();
            u64::from_le_bytes(word)
        };
        match damage {
            "cut" => handle.set_len(len - 10).unwrap(),
            // A bit of the scan filter, which open reads through but does not keep.
            "scan filter" => {
                std::os::unix::fs::FileExt::write_all_at(&handle, b"X", scan_at + 3).unwrap()
            }
            _ => std::os::unix::fs::FileExt::write_all_at(&handle, b"X", len - 40).unwrap(),
        }
        drop(handle);
        let db = Db::open(dir.path(), 16 << 20).unwrap();
        let err = open(
            db,
            KEY_RULE,
            None,
            MemoryShape {
                filter_keys: 400_000,
                run_cap: 1 << 20,
            },
            Default::default(),
            1 << 20,
        )
        .unwrap_err();
        assert!(
            matches!(err, crate::error::StoreError::Corrupt { .. }),
            "{damage}: {err}"
        );
    }
}

fn handle_for_reading(file: &std::path::Path) -> std::fs::File {
    std::fs::File::open(file).unwrap()
}

#[test]
fn dedup_keys_fill_the_filter_kept_in_memory_and_scan_prefixes_the_one_read_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, index, mut writer, _) = open_in(dir.path());
    let dedup = |i: u64| {
        let mut k = vec![b'D'];
        k.extend_from_slice(&i.to_be_bytes());
        k
    };
    // 1,000 dedup keys and 20,000 timed entries under 4,000 prefixes.
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = (0..1000)
        .map(|i| (dedup(i), i.to_be_bytes().to_vec()))
        .collect();
    entries.extend((0..20_000u64).map(|i| (key(&format!("p{:05}", i % 4000), i, i), vec![])));
    writer.add(entries.into_iter().collect());
    writer.checkpoint(20_000).unwrap();
    let view = index.view.load();
    let [run] = &view.disk[..] else {
        panic!("one disk run: {}", view.disk.len())
    };
    assert_eq!((run.distinct, run.lookup_distinct), (5000, 1000));
    // Sized for its own kind only: the lookup filter for 1,000 keys, the scan filter for 4,000.
    assert_eq!(run.file.lookup_words(), 1000 * 10 / 512 * 8 + 8);
    assert_eq!(run.file.scan_words(), 4000 * 10 / 512 * 8 + 8);
    for i in 0..4000 {
        assert!(run.may_hold(hash(&prefix(&format!("p{i:05}"))), true));
    }
    for i in 0..1000 {
        assert!(run.may_hold(hash(&dedup(i)), false));
    }
    let false_positives = (4000..14_000)
        .filter(|i| run.may_hold(hash(&prefix(&format!("p{i:05}"))), true))
        .count();
    assert!(false_positives < 300, "{false_positives} of 10,000");
    drop(view);
    assert_eq!(
        scan_seqs(&index, "p00017", false),
        (0..5).map(|k| 17 + 4000 * k).collect::<Vec<_>>()
    );
    assert_eq!(
        index.get(&dedup(999)).unwrap(),
        Some(999u64.to_be_bytes().to_vec())
    );
}

#[test]
fn short_fences_still_lead_every_lookup_and_scan_to_its_block() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, index, mut writer, _) = open_in(dir.path());
    // 300 prefixes of about 60 entries each: hundreds of blocks, most boundaries inside a
    // prefix, some between two.
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..18_000u64)
        .map(|i| (key(&format!("p{:05}", i % 300), i * 7, i), vec![]))
        .collect();
    writer.add(entries.iter().cloned().collect());
    writer.checkpoint(18_000).unwrap();
    let view = index.view.load();
    let run = &view.disk[0];
    assert!(run.file.blocks() > 20, "{} blocks", run.file.blocks());
    drop(view);
    for (k, _) in &entries {
        assert_eq!(index.get(k).unwrap(), Some(vec![]), "{k:?}");
        // Just after a key (another time): no such key, in whichever block the fences name.
        let mut absent = k.clone();
        let at = absent.len() - 9;
        absent[at] ^= 1;
        if !entries.iter().any(|(e, _)| *e == absent) {
            assert_eq!(index.get(&absent).unwrap(), None);
        }
    }
    for p in (0..300).step_by(7) {
        let want: Vec<u64> = (0..18_000u64).filter(|i| i % 300 == p).collect();
        assert_scans_both_ways(&index, &format!("p{p:05}"), want);
        // A prefix between two that exist finds nothing, both ways.
        let between = format!("p{p:05}~");
        assert!(scan_seqs(&index, &between, false).is_empty());
        assert!(scan_seqs(&index, &between, true).is_empty());
    }
}

#[test]
fn a_large_run_reads_its_lookup_filter_and_block_index_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    // Dedup keys of multiples of 3 only: the others are absent.
    let id = |n: u64| {
        let mut k = vec![b'D'];
        k.extend_from_slice(&n.to_be_bytes());
        k
    };
    let dedup = |i: u64| id(3 * i);
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = (0..5_000)
        .map(|i| (dedup(i), i.to_be_bytes().to_vec()))
        .collect();
    entries.extend((0..120_000u64).map(|i| (key(&format!("p{:05}", i % 700), i * 7, i), vec![])));
    // Written, then opened again: a block cache of 4 KiB lets a run keep 1 KiB of lookup filter
    // and 256 bytes of block index, so this one keeps neither.
    for written in [true, false] {
        let (_db, index, mut writer, _) = open_with(dir.path(), 1 << 20, 4096);
        if written {
            writer.add(entries.iter().cloned().collect());
            writer.checkpoint(120_000).unwrap();
        }
        let view = index.view.load();
        let [run] = &view.disk[..] else {
            panic!("one disk run: {}", view.disk.len())
        };
        assert!(run.lookup.is_none());
        assert!(run.file.fences_paged());
        assert!(
            run.file.blocks() > 2 * CHUNK,
            "{} blocks",
            run.file.blocks()
        );
        drop(view);
        for i in 0..5_000 {
            assert_eq!(
                index.get(&dedup(i)).unwrap(),
                Some(i.to_be_bytes().to_vec())
            );
            assert_eq!(index.get(&id(3 * i + 1)).unwrap(), None);
        }
        for (k, _) in entries.iter().skip(5_000).step_by(97) {
            assert_eq!(index.get(k).unwrap(), Some(vec![]), "{k:?}");
        }
        for p in (0..700).step_by(61) {
            let want: Vec<u64> = (0..120_000u64).filter(|i| i % 700 == p).collect();
            assert_scans_both_ways(&index, &format!("p{p:05}"), want);
        }
    }
    // A damaged page of the filter read from the file is reported as damage, not taken for
    // "absent"; a lookup then reads the run's block, and still answers exactly.
    let (db, index, writer, _) = open_with(dir.path(), 1 << 20, 4096);
    let view = index.view.load();
    let run = &view.disk[0];
    let runs = dir.path().join(super::file::RUNS_DIR);
    let path = super::file::run_path(&runs, run.id);
    let mut bytes = std::fs::read(&path).unwrap();
    let whole = bytes.clone();
    let footer = bytes.len() - 36;
    let lookup_at = u64::from_le_bytes(bytes[footer + 4..footer + 12].try_into().unwrap());
    let lookup_at = usize::try_from(lookup_at).unwrap();
    bytes[lookup_at + 100] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let words = run.file.lookup_words();
    let in_first_page = |i: &u64| super::bloom::block_of(words, hash(&dedup(*i))) < 1024 / 64;
    let i = (0..5_000).find(in_first_page).unwrap();
    let err = run.file.lookup_may_contain(hash(&dedup(i))).unwrap_err();
    assert!(matches!(err, crate::StoreError::Corrupt { .. }), "{err}");
    assert_eq!(
        index.get(&dedup(i)).unwrap(),
        Some(i.to_be_bytes().to_vec())
    );
    drop((view, index, writer, db));
    std::fs::write(&path, &whole).unwrap();
    // With the default budget the same run keeps both in memory.
    let (_db, index, _writer, _) = open_with(dir.path(), 1 << 20, 4 << 20);
    let view = index.view.load();
    assert!(view.disk[0].lookup.is_some());
    assert!(!view.disk[0].file.fences_paged());
}
