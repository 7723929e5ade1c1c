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
//! again with the same fence; finding its own write at the next sequence (this node's name,
//! this cursor), the retry takes it as done instead of as fenced.
//!
//! A message is at most the servers' `max_payload` (1 MiB by default); a commit larger than
//! that is refused with an error that says so (chunking it is for when the engine's commits
//! go here).

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;

use crate::error::ClusterError;
use crate::partition::Partition;
use crate::streams::{journal_stream, journal_subject};

/// The header holding the cursor a commit ends at.
pub const CURSOR_HEADER: &str = "Gancho-Cursor";
/// The header naming the node that wrote a commit.
pub const NODE_HEADER: &str = "Gancho-Node";

/// A node's handle on one partition's journal, valid while its writes are accepted.
#[derive(Debug)]
pub struct Journal {
    js: jetstream::Context,
    partition: Partition,
    node: String,
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
            .expected_last_sequence(self.last);
        let sent = self
            .js
            .send_publish(journal_subject(self.partition), message)
            .await;
        let acked = match sent {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
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
                if let Some(sequence) = self.own_write_at_next(cursor).await {
                    self.last = sequence;
                    self.cursor = cursor;
                    return Ok(sequence);
                }
                self.fenced = true;
                Err(self.fenced_error())
            }
            Err(err) => Err(ClusterError::Journal {
                partition: self.partition,
                reason: err.to_string(),
            }),
        }
    }

    /// The sequence right after this handle's last, if the message there is this node's
    /// commit of `cursor`.
    async fn own_write_at_next(&self, cursor: u64) -> Option<u64> {
        let next = self.last + 1;
        let stream = self
            .js
            .get_stream(journal_stream(self.partition))
            .await
            .ok()?;
        let message = stream.get_raw_message(next).await.ok()?;
        let node = message.headers.get(NODE_HEADER)?.as_str().to_owned();
        (node == self.node && cursor_of(&message.headers) == Some(cursor)).then_some(next)
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
