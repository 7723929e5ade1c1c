//! Reads the log ahead of the engine, on a thread of its own: the next batch's events are read
//! and decoded while the engine runs the rules of the current one. Log entries never change once
//! written, so a read ahead is as good as a read now.

use std::sync::mpsc;
use std::thread::JoinHandle;

use gancho_core::Event;
use gancho_store::{Store, StoreError};
use tracing::warn;

/// What to read: a range of seqs, and whether only the engine's own events (timer firings and
/// cron ticks) are wanted.
type Request = (u64, u64, bool);
type Reply = (Request, Result<Vec<Event>, StoreError>);

/// Reads a range; with `own_only`, decodes only timer firings and cron ticks (an engine with no
/// rules and no expectations has nothing to do with the rest).
fn read(store: &Store, (from, to, own_only): Request) -> Result<Vec<Event>, StoreError> {
    if own_only {
        store.read_range_where(from, to, |source, _| {
            source == crate::engine::TIMER_SOURCE || source == crate::engine::CRON_SOURCE
        })
    } else {
        store.read_range(from, to)
    }
}

#[derive(Debug)]
pub(crate) struct Reader {
    store: Store,
    /// `None` when the thread could not be started: every read is then made on the spot.
    ahead: Option<Ahead>,
    /// The range asked for and not received yet.
    pending: Option<Request>,
}

#[derive(Debug)]
struct Ahead {
    requests: mpsc::Sender<Request>,
    replies: mpsc::Receiver<Reply>,
    thread: JoinHandle<()>,
}

impl Reader {
    pub(crate) fn new(store: Store) -> Reader {
        let (requests, jobs) = mpsc::channel::<Request>();
        let (done, replies) = mpsc::channel::<Reply>();
        let reader = store.clone();
        let thread = std::thread::Builder::new()
            .name("gancho-read".to_owned())
            .spawn(move || {
                for request in jobs {
                    if done.send((request, read(&reader, request))).is_err() {
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

    /// The events with seqs in `from..=to` (durable ones only; with `own_only`, timer firings
    /// and cron ticks only), in log order, and the last seq read (the end of the range, which
    /// may hold no event kept); a shorter range when a read ahead of `from..=t` with `t < to`
    /// is there to take.
    pub(crate) fn read(
        &mut self,
        from: u64,
        to: u64,
        own_only: bool,
    ) -> Result<(Vec<Event>, u64), StoreError> {
        if let (Some(ahead), Some(request)) = (&self.ahead, self.pending.take()) {
            match ahead.replies.recv() {
                Ok((read, events))
                    if read == request
                        && request.0 == from
                        && request.1 <= to
                        && request.2 == own_only =>
                {
                    return events.map(|events| (events, request.1));
                }
                Ok(_) => {}
                // The thread is gone (it cannot panic short of a bug): read in line from now on.
                Err(_) => self.ahead = None,
            }
        }
        read(&self.store, (from, to, own_only)).map(|events| (events, to))
    }

    /// Starts reading `from..=to`, for the next [`Reader::read`].
    pub(crate) fn read_ahead(&mut self, from: u64, to: u64, own_only: bool) {
        if from > to || self.pending.is_some() {
            return;
        }
        if let Some(ahead) = &self.ahead
            && ahead.requests.send((from, to, own_only)).is_ok()
        {
            self.pending = Some((from, to, own_only));
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
