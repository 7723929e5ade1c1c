//! Scans: cursors over the runs, merged in key order. Readers and merges both walk runs this
//! way, without a copy per entry.

use std::ops::Range;
use std::sync::Arc;

use super::block::Block;
use super::cache::BlockCache;
use super::layout::condemn;
use super::memory::MemRun;
use super::rule::KeyRule;
use super::run::DiskRun;
use crate::error::StoreError;
use crate::kv::Tree;
use crate::purged::Purged;

/// An index entry: its key and (for dedup entries) its value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// A merge, in key order, of the scans of several runs; equal entries come out once. A cursor
/// ([`Scan::advance`], [`Scan::key`]) that copies nothing, and an iterator of owned entries.
#[derive(Debug)]
pub(crate) struct Scan {
    sources: Vec<Source>,
    /// Whether each source is on an entry.
    live: Vec<bool>,
    reverse: bool,
    /// The source of the current entry.
    current: Option<usize>,
    /// The previous entry's key, to pass over equal entries of other runs.
    last: Vec<u8>,
    started: bool,
    /// Entries of these events are passed over: they were pruned.
    purged: Option<(Arc<Purged>, KeyRule)>,
}

#[derive(Debug)]
pub(super) enum Source {
    Mem {
        run: Arc<MemRun>,
        /// The entries not visited yet are `start..end`.
        start: usize,
        end: usize,
        /// The entry it is on.
        at: Option<usize>,
    },
    Disk(Box<DiskScan>),
}

impl Source {
    /// Moves to the next entry; false once there is none.
    pub(super) fn advance(&mut self, reverse: bool) -> Result<bool, StoreError> {
        match self {
            Source::Mem { start, end, at, .. } => {
                if start >= end {
                    *at = None;
                    return Ok(false);
                }
                *at = Some(if reverse {
                    *end -= 1;
                    *end
                } else {
                    *start += 1;
                    *start - 1
                });
                Ok(true)
            }
            Source::Disk(scan) => scan.advance(),
        }
    }

    /// The entry it is on (after `advance` returned true).
    pub(super) fn entry(&self) -> (&[u8], &[u8]) {
        match self {
            Source::Mem { run, at, .. } => match at {
                Some(i) => (run.key(*i), run.value(*i)),
                None => (&[], &[]),
            },
            Source::Disk(scan) => scan.entry(),
        }
    }
}

impl Scan {
    pub(super) fn new(sources: Vec<Source>, reverse: bool) -> Scan {
        Scan {
            live: vec![false; sources.len()],
            sources,
            reverse,
            current: None,
            last: Vec::new(),
            started: false,
            purged: None,
        }
    }

    /// Passes over the entries of pruned events, whose seq `rule` reads.
    pub(super) fn skipping(mut self, purged: Arc<Purged>, rule: KeyRule) -> Scan {
        if !purged.is_empty() {
            self.purged = Some((purged, rule));
        }
        self
    }

    /// Moves to the next entry; false at the end.
    pub(crate) fn advance(&mut self) -> Result<bool, StoreError> {
        if !self.started {
            self.started = true;
            for (source, live) in self.sources.iter_mut().zip(&mut self.live) {
                *live = source.advance(self.reverse)?;
            }
        } else if let Some(i) = self.current.take() {
            self.last.clear();
            self.last.extend_from_slice(self.sources[i].entry().0);
            self.live[i] = self.sources[i].advance(self.reverse)?;
        }
        loop {
            let mut best: Option<usize> = None;
            for i in 0..self.sources.len() {
                if !self.live[i] {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some(b) => {
                        let (key, best_key) =
                            (self.sources[i].entry().0, self.sources[b].entry().0);
                        if self.reverse {
                            key > best_key
                        } else {
                            key < best_key
                        }
                    }
                };
                if better {
                    best = Some(i);
                }
            }
            let Some(i) = best else {
                return Ok(false);
            };
            if self.sources.len() > 1
                && !self.last.is_empty()
                && self.sources[i].entry().0 == &self.last[..]
            {
                // The same entry from another run.
                self.live[i] = self.sources[i].advance(self.reverse)?;
                continue;
            }
            if let Some((purged, rule)) = &self.purged {
                let (key, value) = self.sources[i].entry();
                if (rule.seq)(key, value).is_some_and(|seq| purged.contains(seq)) {
                    self.live[i] = self.sources[i].advance(self.reverse)?;
                    continue;
                }
            }
            self.current = Some(i);
            return Ok(true);
        }
    }

    /// The entry it is on: (key, value).
    pub(crate) fn entry(&self) -> (&[u8], &[u8]) {
        match self.current {
            Some(i) => self.sources[i].entry(),
            None => (&[], &[]),
        }
    }
}

impl Iterator for Scan {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.advance() {
            Ok(true) => {
                let (key, value) = self.entry();
                Some(Ok((key.to_vec(), value.to_vec())))
            }
            Ok(false) => None,
            Err(err) => {
                // Nothing after an error.
                self.live.iter_mut().for_each(|live| *live = false);
                self.current = None;
                Some(Err(err))
            }
        }
    }
}

/// A scan of one disk run, block by block.
pub(super) struct DiskScan {
    /// For marking the indexes for a rebuild if a block is damaged.
    tree: Tree,
    /// Readers go through the block cache; merges read past it.
    cache: Option<Arc<BlockCache>>,
    /// Held so that a merge does not delete the run's file under this scan.
    run: Arc<DiskRun>,
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
    reverse: bool,
    /// The blocks still to read are `next..end`, taken from the far end when `reverse`; set
    /// by the first `advance` (`placed`), which reads the block index of a run that pages it.
    next: usize,
    end: usize,
    placed: bool,
    /// The block being read and the next entry to read in it (reverse: one past it).
    current: Option<(Arc<Block>, usize)>,
    /// The entry it is on: its key, and where its value lies in the current block.
    key: Vec<u8>,
    value: Range<usize>,
    done: bool,
}

impl std::fmt::Debug for DiskScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskScan")
            .field("run", &self.run.id)
            .field("reverse", &self.reverse)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl DiskScan {
    pub(super) fn new(
        tree: &Tree,
        cache: Option<Arc<BlockCache>>,
        run: &Arc<DiskRun>,
        lo: &[u8],
        hi: Option<&[u8]>,
        reverse: bool,
    ) -> DiskScan {
        DiskScan {
            tree: tree.clone(),
            cache,
            run: Arc::clone(run),
            lo: lo.to_vec(),
            hi: hi.map(<[u8]>::to_vec),
            reverse,
            next: 0,
            end: 0,
            placed: false,
            current: None,
            key: Vec::new(),
            value: 0..0,
            done: false,
        }
    }

    /// The entry it is on (after `advance` returned true).
    pub(super) fn entry(&self) -> (&[u8], &[u8]) {
        match &self.current {
            Some((block, _)) => (&self.key, &block.bytes[self.value.clone()]),
            None => (&[], &[]),
        }
    }

    /// Moves to the next entry within the bounds; false once there is none.
    pub(super) fn advance(&mut self) -> Result<bool, StoreError> {
        let result = self.step();
        if !matches!(result, Ok(true)) {
            self.done = true;
        }
        if let Err(err) = &result {
            condemn(&self.tree, err);
        }
        result
    }

    /// Sets the blocks to read: from the first block whose fence is at least `lo`, or down
    /// from the block that holds `hi` (the first whose fence is at least `hi`).
    fn place(&mut self) -> Result<(), StoreError> {
        let file = &self.run.file;
        (self.next, self.end) = match (self.reverse, &self.hi) {
            (true, Some(hi)) => (0, (file.find_block(hi)? + 1).min(file.blocks())),
            (true, None) => (0, file.blocks()),
            (false, _) => (file.find_block(&self.lo)?, file.blocks()),
        };
        self.placed = true;
        Ok(())
    }

    pub(super) fn step(&mut self) -> Result<bool, StoreError> {
        if !self.placed && !self.done {
            self.place()?;
        }
        loop {
            if self.done {
                return Ok(false);
            }
            if let Some((block, at)) = &mut self.current {
                let index = if self.reverse {
                    (*at > 0).then(|| {
                        *at -= 1;
                        *at
                    })
                } else {
                    (*at < block.n).then(|| {
                        *at += 1;
                        *at - 1
                    })
                };
                if let Some(i) = index {
                    let (head, suffix) = block.key_parts(i)?;
                    self.key.clear();
                    self.key.extend_from_slice(head);
                    self.key.extend_from_slice(suffix);
                    self.value = block.ranges(i)?.2;
                    let past = if self.reverse {
                        self.key < self.lo
                    } else {
                        self.hi.as_ref().is_some_and(|hi| self.key > *hi)
                    };
                    return Ok(!past);
                }
            }
            if self.next >= self.end {
                return Ok(false);
            }
            let at = if self.reverse {
                self.end -= 1;
                self.end
            } else {
                self.next += 1;
                self.next - 1
            };
            let block = match &self.cache {
                Some(cache) => cache.get(self.run.id, at, || self.run.file.read_block(at))?,
                None => Arc::new(self.run.file.read_block(at)?),
            };
            let at = if self.reverse {
                match &self.hi {
                    Some(hi) => block.seek(hi, true)?,
                    None => block.n,
                }
            } else {
                block.seek(&self.lo, false)?
            };
            self.current = Some((block, at));
        }
    }
}
