//! A partition's decision journal, and the fence that keeps two owners from both deciding.
//!
//! The owner of a partition commits each batch's decisions as one journal message, which
//! carries the cursor (the event stream's sequence the batch ends at). Every write names the
//! journal's last sequence as its owner last saw it (`Nats-Expected-Last-Sequence`), and
//! JetStream applies that check in its Raft log's order. So if another node has written since
//! (it took the partition over while this one was paused or cut off), this node's write is
//! refused, whatever its lease said, and it must drop the partition at once:
//! [`ClusterError::Fenced`]. The lease only says who *should* own a partition; this fence is
//! what makes sure only one does.
//!
//! A write whose acknowledgement was lost (a leader change, a dropped connection) is tried
//! again with the same fence; finding its own write at the next sequence (this handle's random
//! writer id, this cursor), the retry takes it as done instead of as fenced.
//!
//! A message is at most the servers' `max_payload` (1 MiB by default); a commit larger than
//! that is refused with an error that says so (chunking it is for when the engine's commits
//! go here).

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;

use crate::error::ClusterError;
use crate::streams::{journal_stream, journal_subject};
use gancho_core::partition::Partition;

/// The header holding the cursor a commit ends at.
pub const CURSOR_HEADER: &str = "Gancho-Cursor";
/// The header naming the node that wrote a commit.
pub const NODE_HEADER: &str = "Gancho-Node";
/// The header naming the handle that wrote a commit: random per [`Journal::open`], so two
/// handles of one node (a restarted process under the same name, an old task still retrying)
/// never take each other's writes for their own.
pub const WRITER_HEADER: &str = "Gancho-Writer";

/// How long a commit is sent again while the server answers that no stream takes its subject.
const UNROUTED_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// A node's handle on one partition's journal, valid while its writes are accepted.
#[derive(Debug)]
pub struct Journal {
    js: jetstream::Context,
    partition: Partition,
    node: String,
    /// This handle's id, in every commit it writes.
    writer: String,
    /// The journal's last sequence as this handle knows it: the fence of its next write.
    last: u64,
    /// The cursor of the last commit (0: none yet).
    cursor: u64,
    /// A refused write ends the handle: the node no longer owns the partition.
    fenced: bool,
}

impl Journal {
    /// Opens partition `p`'s journal where it ends now: its last sequence and committed cursor.
    pub async fn open(
        js: &jetstream::Context,
        partition: Partition,
        node: &str,
    ) -> Result<Journal, ClusterError> {
        let journal_error = |err: String| ClusterError::Journal {
            partition,
            reason: err,
        };
        let mut stream = js
            .get_stream(journal_stream(partition))
            .await
            .map_err(|err| journal_error(err.to_string()))?;
        let last = stream
            .info()
            .await
            .map_err(|err| journal_error(err.to_string()))?
            .state
            .last_sequence;
        let cursor = if last == 0 {
            0
        } else {
            let message = stream
                .get_raw_message(last)
                .await
                .map_err(|err| journal_error(err.to_string()))?;
            cursor_of(&message.headers).ok_or_else(|| {
                journal_error(format!("its message {last} has no {CURSOR_HEADER} header"))
            })?
        };
        Ok(Journal {
            js: js.clone(),
            partition,
            node: node.to_owned(),
            writer: format!("{:032x}", fastrand::u128(..)),
            last,
            cursor,
            fenced: false,
        })
    }

    /// The journal's last sequence, as this handle knows it.
    pub fn last_sequence(&self) -> u64 {
        self.last
    }

    /// The cursor of the last commit: the partition's events up to this sequence are decided.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Commits one batch's decisions (`payload`) with the cursor it ends at. Refused with
    /// [`ClusterError::Fenced`] if anyone wrote to the journal since this handle's last write
    /// or open; the handle then refuses every later commit too.
    pub async fn commit(&mut self, cursor: u64, payload: Vec<u8>) -> Result<u64, ClusterError> {
        if self.fenced {
            return Err(self.fenced_error());
        }
        let message = PublishMessage::build()
            .payload(payload.into())
            .header(CURSOR_HEADER, cursor.to_string().as_str())
            .header(NODE_HEADER, self.node.as_str())
            .header(WRITER_HEADER, self.writer.as_str())
            .expected_last_sequence(self.last);
        // Right after a stream is created, a server may not route its subject yet and answer
        // that no stream takes it: nothing was stored, so the same message is sent again, for
        // a moment, before the caller hears of it.
        let deadline = tokio::time::Instant::now() + UNROUTED_FOR;
        let acked = loop {
            let sent = self
                .js
                .send_publish(journal_subject(self.partition), message.clone())
                .await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            match acked {
                Err(err)
                    if err.kind() == PublishErrorKind::StreamNotFound
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => break other,
            }
        };
        match acked {
            Ok(ack) => {
                self.last = ack.sequence;
                self.cursor = cursor;
                Ok(ack.sequence)
            }
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                // A retry of a commit whose acknowledgement was lost finds its own write
                // there: that is this commit, not another owner's.
                match self.own_write_at_next(cursor).await {
                    Ok(Some(sequence)) => {
                        self.last = sequence;
                        self.cursor = cursor;
                        Ok(sequence)
                    }
                    Ok(None) => {
                        self.fenced = true;
                        Err(self.fenced_error())
                    }
                    // Not known yet whether the write there is this one: the caller tries
                    // again (the server still enforces the fence).
                    Err(reason) => Err(ClusterError::Journal {
                        partition: self.partition,
                        reason,
                    }),
                }
            }
            Err(err) => Err(ClusterError::Journal {
                partition: self.partition,
                reason: err.to_string(),
            }),
        }
    }

    /// The sequence right after this handle's last, if the message there is this handle's
    /// commit of `cursor`; `Ok(None)` if it is another's (or there is none); `Err` if it could
    /// not be read.
    async fn own_write_at_next(&self, cursor: u64) -> Result<Option<u64>, String> {
        let next = self.last + 1;
        let stream = self
            .js
            .get_stream(journal_stream(self.partition))
            .await
            .map_err(|err| err.to_string())?;
        let message = match stream.get_raw_message(next).await {
            Ok(message) => message,
            Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                return Ok(None);
            }
            Err(err) => return Err(err.to_string()),
        };
        let writer = message.headers.get(WRITER_HEADER).map(|v| v.as_str());
        let ours =
            writer == Some(self.writer.as_str()) && cursor_of(&message.headers) == Some(cursor);
        Ok(ours.then_some(next))
    }

    fn fenced_error(&self) -> ClusterError {
        ClusterError::Fenced {
            partition: self.partition,
            node: self.node.clone(),
            expected: self.last,
        }
    }
}

fn cursor_of(headers: &async_nats::HeaderMap) -> Option<u64> {
    headers.get(CURSOR_HEADER)?.as_str().parse().ok()
}

/// Partition `partition`'s journal messages from sequence `from` up to `through`, oldest
/// first, each handed to `each` with its sequence: what a new owner replays before it commits
/// (`through` being where its fence opened). A message missing is an error, and so is a journal
/// trimmed past `from` ([`ClusterError::Trimmed`]: the partition's snapshot holds what it
/// held): the decisions it held would be lost.
pub async fn read_journal(
    js: &jetstream::Context,
    partition: Partition,
    from: u64,
    through: u64,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<(), ClusterError> {
    let journal_error = |reason: String| ClusterError::Journal { partition, reason };
    let mut stream = js
        .get_stream(journal_stream(partition))
        .await
        .map_err(|err| journal_error(err.to_string()))?;
    let from = from.max(1);
    let kept = stream
        .info()
        .await
        .map_err(|err| journal_error(err.to_string()))?
        .state
        .first_sequence;
    if from <= through && kept > from {
        return Err(ClusterError::Trimmed {
            partition,
            first: kept,
            position: from - 1,
        });
    }
    for sequence in from..=through {
        let message = stream
            .get_raw_message(sequence)
            .await
            .map_err(|err| journal_error(format!("reading its message {sequence}: {err}")))?;
        each(sequence, &message.payload)
            .map_err(|reason| journal_error(format!("its message {sequence}: {reason}")))?;
    }
    Ok(())
}
