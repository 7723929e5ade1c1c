//! The flusher thread: makes the groups the writer applied durable, one flush (and one
//! `fdatasync`, when configured) for every group handed to it so far, and only then answers their
//! callers and moves the `durable` watermark. A failed flush or sync fails the store for good.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use tracing::{debug, error};

use super::writer::Applied;
use crate::error::StoreError;
use crate::kv::{Db, FileSync};
use crate::progress::Progress;

pub(super) fn run_flusher(
    db: Db,
    mut sync: Option<FileSync>,
    rx: mpsc::Receiver<Applied>,
    progress: Arc<Progress>,
) {
    let heartbeat = gancho_core::heartbeat::Heartbeat::register("log flusher");
    while let Ok(first) = rx.recv() {
        let _working = heartbeat.working();
        let mut last_seq = first.last_seq;
        let mut staged = first.staged;
        while let Ok(more) = rx.try_recv() {
            last_seq = last_seq.max(more.last_seq);
            staged.extend(more.staged);
        }
        let started = std::time::Instant::now();
        let flushed = db.flush().map_err(|err| format!("flush: {err}"));
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
