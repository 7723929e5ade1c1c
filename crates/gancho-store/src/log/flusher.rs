//! The flusher thread: makes the groups the writer applied durable: it syncs the segment files
//! they wrote, writes their commit record, then one flush (and one `fdatasync`, when
//! configured) for every group handed to it so far, and only then answers their
//! callers and moves the `durable` watermark. A failed flush or sync fails the store for good.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use tracing::{debug, error};

use super::codec;
use super::writer::Applied;
use crate::error::StoreError;
use crate::kv::{Db, FileSync, Tree};
use crate::progress::Progress;

pub(super) fn run_flusher(
    db: Db,
    tree: Tree,
    mut sync: Option<FileSync>,
    rx: mpsc::Receiver<Applied>,
    progress: Arc<Progress>,
) {
    let heartbeat = gancho_core::heartbeat::Heartbeat::register("log flusher");
    while let Ok(first) = rx.recv() {
        let _working = heartbeat.working();
        let (mut last_seq, mut last_qid) = (first.last_seq, first.last_qid);
        let mut staged = first.staged;
        let mut segments = first.segments;
        while let Ok(more) = rx.try_recv() {
            last_seq = last_seq.max(more.last_seq);
            last_qid = last_qid.max(more.last_qid);
            staged.extend(more.staged);
            for file in more.segments {
                if !segments.iter().any(|f| Arc::ptr_eq(f, &file)) {
                    segments.push(file);
                }
            }
        }
        let started = std::time::Instant::now();
        // The groups' bytes in segments on disk, then the record that makes them count.
        let flushed = sync_segments(&segments, sync.is_some())
            .and_then(|()| {
                // Every key of the groups written, but not the commit record.
                gancho_core::fail_point!("log.group.before_commit_record");
                tree.insert(
                    codec::COMMIT_KEY,
                    &codec::encode_commit(last_seq, last_qid)[..],
                )
                .map_err(|err| format!("writing the commit record: {err}"))
            })
            .and_then(|()| db.flush().map_err(|err| format!("flush: {err}")));
        let flush_time = started.elapsed();
        let durable = flushed.and_then(|_| sync_log(&mut sync));
        tracing::trace!(
            requests = staged.len(),
            flush_us = flush_time.as_micros() as u64,
            sync_us = (started.elapsed() - flush_time).as_micros() as u64,
            "group commit"
        );
        match durable {
            Ok(()) => {
                progress.durable.fetch_max(last_seq, Ordering::AcqRel);
                progress.notify();
                for s in staged {
                    let _ = s.reply.send(Ok(s.report));
                }
            }
            Err(reason) => {
                // The events are written but not known to be on disk, and after a failed
                // fdatasync the kernel may have dropped them while marking them clean: a later
                // sync succeeding proves nothing. The store stops accepting events; the daemon
                // exits and is restarted, and the restart keeps only what reached the disk.
                error!(error = %reason, "making events durable failed; the store stops");
                progress.fail(&reason);
                for s in staged {
                    let _ = s.reply.send(Err(StoreError::Failed(reason.clone())));
                }
                break;
            }
        }
    }
    debug!("store flusher stopped");
}

/// The `fdatasync` of a group commit. `log.fdatasync` makes it fail in test builds, as a full
/// disk or a failing device would.
fn sync_log(sync: &mut Option<FileSync>) -> Result<(), String> {
    gancho_core::fail_point!(
        "log.fdatasync",
        "fdatasync: injected failure (fail point log.fdatasync)".to_owned()
    );
    match sync {
        Some(sync) => sync.sync(),
        None => Ok(()),
    }
}

/// The `fdatasync` of the segment files a batch of groups appended blocks to.
fn sync_segments(files: &[Arc<std::fs::File>], fsync: bool) -> Result<(), String> {
    if !fsync {
        return Ok(());
    }
    for file in files {
        file.sync_data()
            .map_err(|err| format!("fdatasync of a log segment: {err}"))?;
    }
    Ok(())
}
