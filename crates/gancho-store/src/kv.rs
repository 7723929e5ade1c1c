//! The key-value engine underneath every database of gancho: the one module that names sled.
//!
//! The rest of the store (and `gancho-state`) says what it stores; this module says how. It
//! offers only the operations whose crash behaviour the stores' protocols rely on: point reads
//! and writes, ordered iteration, flush, and [`FileSync`]. It deliberately has no batch, no
//! transaction and no `clear`: the first `apply_batch` or `transaction` in a process puts every
//! later sled operation, in every database, behind one global read-write lock (sled 0.34's
//! `concurrency_control`), and `Tree::clear` takes that lock too. [`Tree::remove_all`] empties a
//! tree with plain removals instead. clippy's `disallowed-methods` refuses the sled calls
//! outside this module as well.
//!
//! Atomicity of a group of writes comes from the callers' protocols (a commit record last, a
//! journal with a marker), which rest on one property of sled kept here: after a crash it
//! recovers a prefix of the writes made before it, in order.

use std::collections::HashMap;
use std::fs::File;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::StoreError;

/// A value or key as the engine returns it: cheap to clone, derefs to `[u8]`.
pub type Bytes = sled::IVec;

/// One database: a folder with its own log, page cache and lock.
#[derive(Debug, Clone)]
pub struct Db {
    db: sled::Db,
    /// Its folder: files the store keeps beside sled's (the indexes' run files) go under it.
    path: PathBuf,
    /// In test builds, a `crash` fail point flushes this database before the process exits
    /// (`gancho_core::failpoint`); a no-op otherwise.
    _crash_flush: std::sync::Arc<gancho_core::failpoint::CrashHook>,
}

/// An ordered map of bytes to bytes within a [`Db`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tree {
    tree: sled::Tree,
}

/// Entries in key order (or reversed), each a `Result`: a read may fail midway.
pub struct Iter {
    iter: sled::Iter,
}

impl std::fmt::Debug for Iter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

fn error(err: sled::Error) -> StoreError {
    match err {
        sled::Error::Io(source) => StoreError::Io {
            what: "storage engine I/O".to_owned(),
            source,
        },
        other => StoreError::Engine(other.to_string()),
    }
}

fn open_error(path: &Path, err: sled::Error) -> StoreError {
    match err {
        sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: path.display().to_string(),
            }
        }
        sled::Error::Io(source) => StoreError::Io {
            what: format!("opening store at {}", path.display()),
            source,
        },
        other => StoreError::Engine(format!("opening store at {}: {other}", path.display())),
    }
}

impl Db {
    /// Opens (or creates) the database in `path` with a page cache of `cache_capacity` bytes,
    /// retrying a lock held for a moment: a database closed in this process releases its lock
    /// only when sled's own background thread lets go of it, shortly after. Fails with
    /// [`StoreError::Locked`] when another process has it open.
    pub fn open(path: &Path, cache_capacity: u64) -> Result<Db, StoreError> {
        let mut attempts = 0;
        loop {
            match open_sled(path, cache_capacity) {
                Ok(db) => {
                    sync_conf(path)?;
                    let flushed = db.clone();
                    let hook = gancho_core::failpoint::on_crash(Box::new(move || {
                        let _ = flushed.flush();
                    }));
                    return Ok(Db {
                        db,
                        path: path.to_owned(),
                        _crash_flush: std::sync::Arc::new(hook),
                    });
                }
                Err(err) => match open_error(path, err) {
                    StoreError::Locked { .. } if attempts < 20 => {
                        attempts += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => return Err(other),
                },
            }
        }
    }

    /// The database's folder. sled reads and writes only its own files there (`conf`, `db`,
    /// `blobs/`, `snap.*`), so the store may keep a folder of its own in it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tree of this name, created if missing.
    pub fn tree(&self, name: &str) -> Result<Tree, StoreError> {
        self.db
            .open_tree(name)
            .map(|tree| Tree { tree })
            .map_err(error)
    }

    /// Writes every write so far to the database's log file (`sync_file_range`: not a
    /// guarantee against power loss; [`FileSync`] gives that).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(error)
    }

    /// Makes every write so far durable: a flush, then `file`'s `fdatasync` when there is one.
    pub fn make_durable(&self, file: Option<&mut FileSync>) -> Result<(), StoreError> {
        self.flush()?;
        if let Some(file) = file {
            file.sync().map_err(StoreError::Engine)?;
        }
        Ok(())
    }
}

/// The segment size of databases created now: sled's default, 512 KiB. sled keeps about three
/// segment buffers per database in memory, written in place as they fill, so the size is
/// resident memory: 4 MiB segments cost some 34 MB of the daemon's three databases under load
/// (docs/memory-notes.md). A page over a quarter of a segment (128 KiB) goes to a blob file of
/// its own: leaves hold at most 16 values, and since the log's blocks over 1 KiB went to segment
/// files of our own, only a large value makes one (a quarantined body of over 128 KiB, rule
/// state that large), which costs speed, not correctness.
const SEGMENT_SIZE: usize = 512 * 1024;
/// The segment size of databases created before: a leaf then held up to 16 log blocks of several
/// KiB. sled refuses to open a database with another size than the one it was created with.
const SEGMENT_SIZE_BEFORE: usize = 4 * 1024 * 1024;

/// How sled is configured.
fn config(path: &Path, cache_capacity: u64, segment_size: usize) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        .mode(sled::Mode::HighThroughput)
        .segment_size(segment_size)
}

/// Opens the database in `path` with the segment size it was created with: [`SEGMENT_SIZE`]
/// for a new one, else whichever of the two sizes sled accepts. sled checks its `conf` file
/// before it takes the lock or writes anything, so a refused try leaves nothing behind.
fn open_sled(path: &Path, cache_capacity: u64) -> Result<sled::Db, sled::Error> {
    match config(path, cache_capacity, SEGMENT_SIZE).open() {
        Err(sled::Error::Unsupported(why)) if why.contains("io buffer size") => {
            config(path, cache_capacity, SEGMENT_SIZE_BEFORE).open()
        }
        other => other,
    }
}

/// Makes sled's `conf` file, and its name, durable. sled writes it when it creates a database
/// and never syncs it; a power loss could then leave a database whose data is on disk but whose
/// segment size is not, and the next open would take the default and misread the data.
fn sync_conf(path: &Path) -> Result<(), StoreError> {
    let conf = path.join("conf");
    File::open(&conf)
        .and_then(|file| file.sync_all())
        .map_err(|source| StoreError::Io {
            what: format!("syncing {}", conf.display()),
            source,
        })?;
    sync_dir(path)
}

impl Tree {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, StoreError> {
        self.tree.get(key).map_err(error)
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        self.tree.contains_key(key).map_err(error)
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<Bytes>) -> Result<(), StoreError> {
        self.tree.insert(key, value).map(drop).map_err(error)
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.tree.remove(key).map(drop).map_err(error)
    }

    pub fn iter(&self) -> Iter {
        Iter {
            iter: self.tree.iter(),
        }
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        Iter {
            iter: self.tree.range(range),
        }
    }

    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        Iter {
            iter: self.tree.scan_prefix(prefix),
        }
    }

    /// Writes every write so far in the tree's database to its log file (as [`Db::flush`]).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush().map(drop).map_err(error)
    }

    /// Removes every entry, one plain removal at a time (see the module documentation for why
    /// not sled's `clear`).
    pub fn remove_all(&self) -> Result<(), StoreError> {
        for key in self.iter().keys() {
            self.remove(key?)?;
        }
        Ok(())
    }
}

impl Iter {
    pub fn keys(self) -> impl DoubleEndedIterator<Item = Result<Bytes, StoreError>> {
        self.map(|entry| entry.map(|(key, _)| key))
    }

    pub fn values(self) -> impl DoubleEndedIterator<Item = Result<Bytes, StoreError>> {
        self.map(|entry| entry.map(|(_, value)| value))
    }
}

impl Iterator for Iter {
    type Item = Result<(Bytes, Bytes), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.iter.next().map(|entry| entry.map_err(error))
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.iter.next_back().map(|entry| entry.map_err(error))
    }
}

/// What must reach the disk, beyond sled's flush, for a write to survive a power loss.
///
/// sled's flush writes its log file with `sync_file_range`, which neither waits for the disk's
/// cache nor persists the file's size: `fdatasync` does both. sled also writes pages larger
/// than a quarter of a segment (128 KiB by default: a large event with its node) to files of
/// their own under `blobs/`, and never syncs them; each new blob file and the folder that names
/// it are synced too. This knows sled's file layout (`db`, `blobs/`), which is why it lives here.
#[derive(Debug)]
pub struct FileSync {
    log_file: File,
    blobs_dir: PathBuf,
    /// Each blob file (sled names them by log position) with the size it had when synced. A
    /// blob is synced again whenever its size changed: sled may still be writing one while it
    /// is listed, and its page becomes part of a later flush.
    synced_blobs: HashMap<u64, u64>,
}

impl FileSync {
    /// For the database in `path` (opened already).
    pub fn open(path: &Path) -> Result<FileSync, StoreError> {
        let io_err = |what: String| move |source| StoreError::Io { what, source };
        let log_path = path.join("db");
        let log_file = File::open(&log_path).map_err(io_err(format!(
            "opening {} for fdatasync",
            log_path.display()
        )))?;
        // The store's files may have just been created: make their names durable too.
        sync_dir(path)?;
        let mut sync = FileSync {
            log_file,
            blobs_dir: path.join("blobs"),
            synced_blobs: HashMap::new(),
        };
        sync.sync().map_err(StoreError::Engine)?;
        Ok(sync)
    }

    /// `fdatasync`s the log file and every blob file new or grown since the last call.
    ///
    /// Running out of file descriptors or memory for a moment is not a failure of the device:
    /// what needs one (listing `blobs/`, opening a blob) is tried again until it succeeds, so
    /// the callers wait rather than the store failing for good.
    pub fn sync(&mut self) -> Result<(), String> {
        self.log_file
            .sync_data()
            .map_err(|err| format!("fdatasync: {err}"))?;
        let listed = patiently(&format!("listing {}", self.blobs_dir.display()), || {
            std::fs::read_dir(&self.blobs_dir)
        });
        let entries = match listed {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(format!("listing {}: {err}", self.blobs_dir.display())),
        };
        let mut present = HashMap::with_capacity(self.synced_blobs.len());
        let mut synced_any = false;
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u64>().ok())
            else {
                continue;
            };
            let file = match patiently("opening a blob", || File::open(entry.path())) {
                Ok(file) => file,
                // sled removed it meanwhile: its page was rewritten elsewhere.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(format!("opening blob {id}: {err}")),
            };
            let size = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            if self.synced_blobs.get(&id) != Some(&size) {
                match file.sync_data() {
                    Ok(()) => synced_any = true,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(format!("fdatasync of blob {id}: {err}")),
                }
            }
            present.insert(id, size);
        }
        if synced_any {
            patiently("opening blobs/", || File::open(&self.blobs_dir))
                .and_then(|dir| dir.sync_all())
                .map_err(|err| format!("syncing {}: {err}", self.blobs_dir.display()))?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

/// Makes the names of files created in `dir` durable (files of gancho's own beside sled's:
/// index runs, log segments, the engine's journal).
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            what: format!("syncing folder {}", dir.display()),
            source,
        })
}

/// Whether an error is the process or the system running short of a resource for a moment
/// (descriptors, memory), not a failure of the device.
fn is_shortage(err: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOMEM on Linux.
    matches!(err.raw_os_error(), Some(24 | 23 | 12))
}

/// Runs `op`, trying again while it fails for a shortage (backing off to a second between
/// tries, with a warning every ten seconds); any other error is returned.
fn patiently<T>(what: &str, mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut wait = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    let mut warned = Duration::ZERO;
    loop {
        match op() {
            Err(err) if is_shortage(&err) => {
                if waited >= warned {
                    tracing::warn!(error = %err, what, waited = ?waited, "short of a resource; trying again");
                    warned = waited + Duration::from_secs(10);
                }
                std::thread::sleep(wait);
                waited += wait;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn new_databases_get_small_segments_and_those_created_with_large_ones_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        {
            let db = config(&old, 1 << 20, SEGMENT_SIZE_BEFORE).open().unwrap();
            db.insert(b"k", &b"v"[..]).unwrap();
            db.flush().unwrap();
        }
        for path in [&old, &new] {
            for _ in 0..2 {
                let db = Db::open(path, 1 << 20).unwrap();
                let tree = db.tree("t").unwrap();
                tree.insert(b"k", &b"v"[..]).unwrap();
                assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
                db.flush().unwrap();
            }
        }
        let size = |path: &Path| {
            let conf = std::fs::read(path.join("conf")).unwrap();
            let text = String::from_utf8_lossy(&conf).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("segment_size: ").map(str::to_owned))
                .unwrap()
        };
        assert_eq!(size(&old), SEGMENT_SIZE_BEFORE.to_string());
        assert_eq!(size(&new), SEGMENT_SIZE.to_string());
    }
}
