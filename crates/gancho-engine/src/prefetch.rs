//! Reads the log ahead of the engine, on a thread of its own: the next batch's events are read
//! and decoded while the engine runs the rules of the current one. Log entries never change once
//! written, so a read ahead is as good as a read now.

use std::sync::mpsc;
use std::thread::JoinHandle;

use gancho_core::Event;
use gancho_store::{Store, StoreError};
use tracing::warn;

type Reply = ((u64, u64), Result<Vec<Event>, StoreError>);

#[derive(Debug)]
pub(crate) struct Reader {
    store: Store,
    /// `None` when the thread could not be started: every read is then made on the spot.
    ahead: Option<Ahead>,
    /// The range asked for and not received yet.
    pending: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Ahead {
    requests: mpsc::Sender<(u64, u64)>,
    replies: mpsc::Receiver<Reply>,
    thread: JoinHandle<()>,
}

impl Reader {
    pub(crate) fn new(store: Store) -> Reader {
        let (requests, jobs) = mpsc::channel::<(u64, u64)>();
        let (done, replies) = mpsc::channel::<Reply>();
        let reader = store.clone();
        let thread = std::thread::Builder::new()
            .name("gancho-read".to_owned())
            .spawn(move || {
                for (from, to) in jobs {
                    if done
                        .send(((from, to), reader.read_range(from, to)))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        let ahead = match thread {
            Ok(thread) => Some(Ahead {
                requests,
                replies,
                thread,
            }),
            Err(err) => {
                warn!(error = %err, "could not start the log reader thread; reading in line");
                None
            }
        };
        Reader {
            store,
            ahead,
            pending: None,
        }
    }

    /// The events with seqs in `from..=to` (durable ones only), in log order; fewer when a read
    /// ahead of `from..=t` with `t < to` is there to take.
    pub(crate) fn read(&mut self, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        if let (Some(ahead), Some(range)) = (&self.ahead, self.pending.take()) {
            match ahead.replies.recv() {
                Ok((read, events)) if read == range && range.0 == from && range.1 <= to => {
                    return events;
                }
                Ok(_) => {}
                // The thread is gone (it cannot panic short of a bug): read in line from now on.
                Err(_) => self.ahead = None,
            }
        }
        self.store.read_range(from, to)
    }

    /// Starts reading `from..=to`, for the next [`Reader::read`].
    pub(crate) fn read_ahead(&mut self, from: u64, to: u64) {
        if from > to || self.pending.is_some() {
            return;
        }
        if let Some(ahead) = &self.ahead {
            if ahead.requests.send((from, to)).is_ok() {
                self.pending = Some((from, to));
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(Ahead {
            requests, thread, ..
        }) = self.ahead.take()
        {
            drop(requests);
            if thread.join().is_err() {
                warn!("the log reader thread panicked");
            }
        }
    }
}
