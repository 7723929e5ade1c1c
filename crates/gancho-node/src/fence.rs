//! A partition's shared journal (`gancho_cluster::Journal`) as the fence of its engine state's
//! commits (`gancho_state::CommitFence`): the state's applier thread writes each batch's records
//! there, fenced, before its local journal, and a refusal stops the partition's engine.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use gancho_cluster::{ClusterError, Journal};
use gancho_state::{CommitFence, FenceError};

/// The fence of one partition's engine state.
#[derive(Debug)]
pub struct JournalFence {
    journal: Mutex<Journal>,
    /// The journal's last sequence this fence knows, kept apart from the journal's lock: the
    /// applier holds that lock through a NATS round trip, and [`CommitFence::position`] is
    /// asked from async tasks (the snapshot task) that must never wait on it.
    position: AtomicU64,
    /// The runtime the NATS client runs on: the applier thread is not one of its tasks.
    runtime: tokio::runtime::Handle,
}

impl JournalFence {
    /// `journal` opened by this node as it took the partition; `runtime` the NATS client's.
    pub fn new(journal: Journal, runtime: tokio::runtime::Handle) -> JournalFence {
        JournalFence {
            position: AtomicU64::new(journal.last_sequence()),
            journal: Mutex::new(journal),
            runtime,
        }
    }
}

/// A journal message's records, at most (the servers' `max_payload` is 1 MiB by default, and
/// the message has headers too).
const MESSAGE_BYTES: usize = 768 * 1024;

impl CommitFence for JournalFence {
    fn commit(&self, cursor: u64, records: &[u8]) -> Result<(), FenceError> {
        let mut journal = self
            .journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A batch too large for one message goes as several, each of whole records (each
        // commit is whole in one message, so a takeover that reads only the first ones applies
        // whole commits); one commit larger than a message is refused by the servers.
        for message in messages(records, MESSAGE_BYTES) {
            match self
                .runtime
                .block_on(journal.commit(cursor, message.to_vec()))
            {
                Ok(_) => self
                    .position
                    .store(journal.last_sequence(), Ordering::Release),
                Err(err @ ClusterError::Fenced { .. }) => {
                    return Err(FenceError::Fenced(err.to_string()));
                }
                Err(err) => return Err(FenceError::Unavailable(err.to_string())),
            }
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }
}

/// `records` (journal records: a 4-byte length, then 16 bytes of hash and commit number, then
/// that many bytes) cut at record boundaries into pieces of at most `limit` bytes where the
/// records allow it.
fn messages(records: &[u8], limit: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut at) = (0, 0);
    while at < records.len() {
        let len = records
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(records.len() - at, |b| 20 + u32::from_be_bytes(b) as usize);
        let end = (at + len).min(records.len());
        if end - start > limit && at > start {
            out.push(&records[start..at]);
            start = at;
        }
        at = end;
    }
    if at > start {
        out.push(&records[start..at]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::messages;

    fn record(n: usize) -> Vec<u8> {
        let mut r = (n as u32).to_be_bytes().to_vec();
        r.extend(std::iter::repeat_n(7u8, 16 + n));
        r
    }

    #[test]
    fn records_are_cut_into_messages_at_their_boundaries() {
        let records: Vec<u8> = [10, 30, 5, 40].iter().flat_map(|&n| record(n)).collect();
        let sizes =
            |limit| -> Vec<usize> { messages(&records, limit).iter().map(|m| m.len()).collect() };
        assert_eq!(sizes(10_000), vec![records.len()]);
        // 30, 50, 25, 60 bytes: a message as full as the limit allows, a record never cut.
        assert_eq!(sizes(80), vec![80, 25, 60]);
        assert_eq!(sizes(10), vec![30, 50, 25, 60]);
        assert!(messages(&[], 10).is_empty());
    }
}
