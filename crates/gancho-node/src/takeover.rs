//! Taking a partition's engine state over: the fence first, then the decisions. The node opens
//! the partition's journal where it ends now (its fence), opens the local engine database with
//! that fence, then applies every commit the journal holds up to the fence that the database
//! lacks. A commit another node writes after the fence opened makes this node's first commit
//! refused, so no owner decides on a history that misses another's decisions. That first commit
//! is made here, empty, before the state is handed to anything that acts on it (the claim).
//! A database behind the partition's latest snapshot (a node new to the partition) is replaced
//! by the snapshot first, so only the journal's tail after it is replayed.

use std::path::Path;
use std::sync::Arc;

use async_nats::jetstream;
use gancho_cluster::{
    ClusterError, Journal, Partition, cluster_secret, fetch_snapshot, lane_name, latest_snapshot,
    partition_secret, read_journal,
};
use gancho_state::snapshot::{journal_position_at, restore_snapshot};
use gancho_state::{EngineState, StoreConfig};
use gancho_store::StoreError;

use crate::JournalFence;

/// Why a partition's engine state could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("partition {partition}'s journal: {source}")]
    Journal {
        partition: Partition,
        #[source]
        source: ClusterError,
    },
    #[error("partition {partition}'s engine database: {source}")]
    State {
        partition: Partition,
        #[source]
        source: StoreError,
    },
}

/// Opens partition `partition`'s engine database in `dir` (a store folder: `dir/engine`,
/// `dir/traces`) as this node's, fenced by the partition's journal, with every decision the
/// journal holds applied. Returns it with the cursor it is at: the partition's events after it
/// are the ones to decide. The database is opened, and the journal's messages applied, on
/// blocking threads.
pub async fn take_over(
    js: &jetstream::Context,
    partition: Partition,
    node: &str,
    dir: &Path,
    config: &StoreConfig,
) -> Result<(EngineState, u64), TakeoverError> {
    let journal_error = |source| TakeoverError::Journal { partition, source };
    let state_error = |source| TakeoverError::State { partition, source };
    let journal = Journal::open(js, partition, node)
        .await
        .map_err(journal_error)?;
    let through = journal.last_sequence();
    restore_if_behind(js, partition, dir, config).await?;
    let secret = partition_secret(&cluster_secret(js).await.map_err(journal_error)?, partition);
    let fence = Arc::new(JournalFence::new(
        journal,
        tokio::runtime::Handle::current(),
    ));
    let state = {
        let (dir, config) = (dir.to_owned(), config.clone());
        tokio::task::spawn_blocking(move || EngineState::open_fenced(&dir, &config, fence, secret))
            .await
            .map_err(|err| state_error(StoreError::Engine(err.to_string())))?
            .map_err(state_error)?
    };
    match replay_and_claim(js, partition, &state, through).await {
        Ok(cursor) => Ok((state, cursor)),
        Err(err) => {
            // Its applier thread would hold the database open for good, and every later start
            // of the partition on this node would find it "in use by another process" (seen
            // after a server's cut: a journal read failed here, and the node kept the lease
            // of a partition it could never run again).
            let closing = state.clone();
            let _ = tokio::task::spawn_blocking(move || closing.close()).await;
            Err(err)
        }
    }
}

/// Applies the journal's commits up to `through` that `state` lacks, then makes the claim;
/// returns the cursor the state is at.
async fn replay_and_claim(
    js: &jetstream::Context,
    partition: Partition,
    state: &EngineState,
    through: u64,
) -> Result<u64, TakeoverError> {
    let journal_error = |source| TakeoverError::Journal { partition, source };
    let state_error = |source| TakeoverError::State { partition, source };
    let mut cursor = state.durable_cursor();
    // From where this database is (a node that owned the partition before reads only what
    // others decided since), a chunk of messages at a time, each chunk applied on a blocking
    // thread: applying syncs the database, and this task also renews the node's leases
    // (`while_renewing`), which a replay on the runtime's thread would hold up.
    let mut from = state.journal_position().map_err(state_error)? + 1;
    while from <= through {
        let to = through.min(from.saturating_add(REPLAY_CHUNK - 1));
        let mut messages = Vec::new();
        read_journal(js, partition, from, to, |_, records| {
            messages.push(records.to_vec());
            Ok(())
        })
        .await
        .map_err(journal_error)?;
        let applying = state.clone();
        cursor = tokio::task::spawn_blocking(move || {
            let mut cursor = applying.durable_cursor();
            for records in &messages {
                cursor = applying.catch_up(records)?;
            }
            Ok::<_, StoreError>(cursor)
        })
        .await
        .map_err(|err| state_error(StoreError::Engine(err.to_string())))?
        .map_err(state_error)?;
        from = to + 1;
    }
    // Durable with the claim's commit below.
    state.set_journal_position(through).map_err(state_error)?;
    // The claim: a commit through the fence before anything acts on the state. Accepted, no
    // earlier owner can commit after it (its delivery outcomes included), so what this node's
    // executor finds undelivered was not delivered by an owner that recorded it. Refused,
    // another node wrote after the fence opened: this node does not own the partition.
    state.commit(Vec::new(), cursor).map_err(state_error)?;
    let claimed = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            let durable = state.wait_durable(CLAIM_WAIT);
            match state.failure() {
                Some(reason) => Some(reason),
                None if !durable => Some(format!(
                    "the claim of the partition was not durable within {CLAIM_WAIT:?}"
                )),
                None => None,
            }
        })
        .await
        .map_err(|err| state_error(StoreError::Engine(err.to_string())))?
    };
    match claimed {
        Some(reason) => Err(state_error(StoreError::Failed(reason))),
        None => Ok(cursor),
    }
}

/// Restores the partition's latest snapshot into `dir` if it is further on than the database
/// there (a node new to the partition, or one whose position the journal was trimmed past):
/// the journal's tail after the snapshot is then all there is to replay.
async fn restore_if_behind(
    js: &jetstream::Context,
    partition: Partition,
    dir: &Path,
    config: &StoreConfig,
) -> Result<(), TakeoverError> {
    let journal_error = |source| TakeoverError::Journal { partition, source };
    let state_error = |source| TakeoverError::State { partition, source };
    let blocking = |err: tokio::task::JoinError| state_error(StoreError::Engine(err.to_string()));
    let position = {
        let (dir, config) = (dir.to_owned(), config.clone());
        tokio::task::spawn_blocking(move || journal_position_at(&dir, &config))
            .await
            .map_err(blocking)?
            .map_err(state_error)?
    };
    let Some(latest) = latest_snapshot(js, partition)
        .await
        .map_err(journal_error)?
    else {
        return Ok(());
    };
    if latest.journal_seq <= position {
        return Ok(());
    }
    let file = dir.join("snapshot.restore");
    // The one read may be newer than the one described (replaced meanwhile): its own
    // description counts.
    let Some(snapshot) = fetch_snapshot(js, partition, &file)
        .await
        .map_err(journal_error)?
    else {
        return Ok(());
    };
    // Replaced meanwhile by an older one (an owner that lost the partition without knowing it):
    // never go back from what this database holds.
    if snapshot.journal_seq <= position {
        let _ = std::fs::remove_file(&file);
        return Ok(());
    }
    let entries = {
        let (dir, config, file) = (dir.to_owned(), config.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            let mut input =
                std::io::BufReader::new(std::fs::File::open(&file).map_err(|source| {
                    StoreError::Io {
                        what: format!("opening {}", file.display()),
                        source,
                    }
                })?);
            restore_snapshot(&dir, &config, &mut input, snapshot.journal_seq)
        })
        .await
        .map_err(blocking)?
    };
    let _ = std::fs::remove_file(&file);
    let entries = entries.map_err(state_error)?;
    tracing::info!(
        partition = %lane_name(partition),
        journal = snapshot.journal_seq,
        cursor = snapshot.cursor,
        entries,
        "restored the partition's snapshot"
    );
    Ok(())
}

/// Journal messages read, then applied together, at most (each at most 1 MiB).
const REPLAY_CHUNK: u64 = 64;

/// How long the claim's commit may take (a NATS round trip and a sync, normally).
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
