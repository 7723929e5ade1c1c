//! A partition owner's snapshots: every so many journal messages (or, with fewer, every so
//! often), the engine database is written between two commits to a file in the partition's
//! folder, stored as the partition's snapshot in the object store, and the journal trimmed
//! below the snapshot before it (`gancho_cluster::trim_journal`). A failure is logged and tried
//! again at the next check: the journal still holds everything meanwhile.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use gancho_cluster::{Partition, lane_name, latest_snapshot, put_snapshot, trim_journal};
use gancho_state::EngineState;
use gancho_store::StoreError;
use tokio::sync::watch;

/// When a partition's owner takes a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// After this many journal messages since the last snapshot.
    pub every_messages: u64,
    /// Or after this long, if any message came since.
    pub every: Duration,
    /// How often to look.
    pub check: Duration,
}

impl Default for SnapshotPolicy {
    fn default() -> SnapshotPolicy {
        SnapshotPolicy {
            every_messages: 10_000,
            every: Duration::from_secs(600),
            check: Duration::from_secs(10),
        }
    }
}

/// Takes partition `partition`'s snapshots by `policy` until `stop` holds `true`.
pub(crate) async fn take_snapshots(
    js: jetstream::Context,
    partition: Partition,
    state: EngineState,
    dir: PathBuf,
    policy: SnapshotPolicy,
    mut stop: watch::Receiver<bool>,
) {
    let lane = lane_name(partition);
    // The journal is trimmed below the snapshot before the newest, so that a node that read
    // the previous one's description as it was replaced can still replay after it.
    let mut last = match latest_snapshot(&js, partition).await {
        Ok(found) => found.map_or(0, |s| s.journal_seq),
        Err(err) => {
            tracing::warn!(partition = %lane, error = %err, "reading the partition's last snapshot");
            0
        }
    };
    let mut taken = Instant::now();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(policy.check) => {}
        }
        let position = state.fence_position().unwrap_or(0);
        let due = position >= last.saturating_add(policy.every_messages)
            || (position > last && taken.elapsed() >= policy.every);
        if !due {
            continue;
        }
        // A stop does not wait for an upload: the stored snapshot stays the previous one
        // until an object is whole (a write in progress finishes on its blocking thread).
        let taking = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            taking = snapshot(&js, partition, &state, &dir, last) => taking,
        };
        match taking {
            Ok(seq) => {
                last = seq;
                taken = Instant::now();
            }
            Err(reason) => {
                tracing::warn!(partition = %lane, %reason, "the partition's snapshot failed: tried again later");
            }
        }
    }
}

/// Takes one snapshot, stores it, and trims the journal up to the `previous` snapshot; returns
/// the journal message it is up to.
async fn snapshot(
    js: &jetstream::Context,
    partition: Partition,
    state: &EngineState,
    dir: &Path,
    previous: u64,
) -> Result<u64, String> {
    let file = dir.join("snapshot.tmp");
    let started = Instant::now();
    let mark = {
        let (state, file) = (state.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            let output = std::fs::File::create(&file).map_err(|source| StoreError::Io {
                what: format!("creating {}", file.display()),
                source,
            })?;
            state.write_snapshot(&mut std::io::BufWriter::new(output))
        })
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| err.to_string())?
    };
    let written = started.elapsed();
    // An owner that lost the partition and does not know it yet (paused, cut off) must not
    // replace a newer snapshot with its older one.
    let newer = latest_snapshot(js, partition)
        .await
        .map_err(|err| err.to_string())?
        .filter(|latest| latest.journal_seq >= mark.journal_seq);
    if let Some(newer) = newer {
        let _ = std::fs::remove_file(&file);
        return Err(format!(
            "a snapshot up to journal message {} is stored already",
            newer.journal_seq
        ));
    }
    let stored = put_snapshot(js, partition, &file, mark.journal_seq, mark.cursor).await;
    let _ = std::fs::remove_file(&file);
    let stored = stored.map_err(|err| err.to_string())?;
    let trimmed = if previous > 0 {
        trim_journal(js, partition, previous + 1)
            .await
            .map_err(|err| err.to_string())?
    } else {
        0
    };
    tracing::info!(
        partition = %lane_name(partition),
        journal = mark.journal_seq,
        cursor = mark.cursor,
        entries = mark.entries,
        bytes = stored.size,
        written_ms = written.as_millis() as u64,
        stored_ms = started.elapsed().as_millis() as u64,
        trimmed,
        "took the partition's snapshot"
    );
    Ok(mark.journal_seq)
}
