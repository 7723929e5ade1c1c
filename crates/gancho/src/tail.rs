//! `GET /admin/events/stream`: a live tail of the log as Server-Sent Events. Each event stored
//! from the moment of the request on is sent as `event: event`, and once the engine has
//! processed it, what the rules it woke decided, as traced, as `event: decision` (`{"seq",
//! "runs"}`; nothing for an event that woke no rule). Each carries `id: E-D`: the last event
//! and the last event whose decisions were sent, so a client that reconnects with
//! `Last-Event-ID` resumes both where they were (a bare `E` resumes both after E). A comment
//! line every 15 s keeps proxies from closing a quiet stream.
//!
//! The stream polls the store every 200 ms and sends at most [`BATCH`] events a chunk; it holds
//! one chunk at a time, and stops when the client goes (actix drops it).

use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use gancho_store::StoreError;

use crate::data::Data;

/// How often the stream looks for new events.
const POLL: Duration = Duration::from_millis(200);
/// A comment is sent after this long without anything else.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events read and sent in one chunk, at most.
const BATCH: u64 = 200;

/// Where a tail is.
pub struct Tail {
    data: Data,
    /// The next event to send.
    next_event: u64,
    /// The next event whose decisions to send.
    next_decision: u64,
    /// The engine's durable cursor as trusted (traces of events up to it are written: the
    /// traces thread writes a batch's right after its commit, so a cursor read a poll ago is
    /// safe), then the last one read and when.
    engine_seen: (u64, u64, Instant),
    last_sent: Instant,
}

impl Tail {
    /// A tail from after `after` (events, decisions): the log's durable head when `None`.
    pub fn new(data: Data, after: Option<(u64, u64)>) -> Tail {
        let head = data.store.status().durable;
        let (events, decisions) = after.unwrap_or((head, head));
        let engine_seen = data.state.durable_cursor();
        Tail {
            data,
            next_event: events.saturating_add(1),
            next_decision: decisions.saturating_add(1),
            engine_seen: (0, engine_seen, Instant::now()),
            last_sent: Instant::now(),
        }
    }

    /// `Last-Event-ID` as [`Tail::new`] takes it: `E-D`, or `E` for both; `None` if it is
    /// neither.
    pub fn parse_last_id(text: &str) -> Option<(u64, u64)> {
        match text.trim().split_once('-') {
            Some((events, decisions)) => Some((events.parse().ok()?, decisions.parse().ok()?)),
            None => {
                let seq = text.trim().parse().ok()?;
                Some((seq, seq))
            }
        }
    }

    /// The next chunk of the stream, waiting until there is one.
    pub async fn next_chunk(mut self) -> Option<(Result<Bytes, StoreError>, Tail)> {
        loop {
            let data = self.data.clone();
            let (trusted, read, at) = self.engine_seen;
            if at.elapsed() >= POLL {
                self.engine_seen = (read, self.data.state.durable_cursor(), Instant::now());
            } else {
                self.engine_seen = (trusted, read, at);
            }
            let (from_event, from_decision, engine_seen) =
                (self.next_event, self.next_decision, self.engine_seen.0);
            let read = actix_web::web::block(move || {
                read_chunk(&data, from_event, from_decision, engine_seen)
            })
            .await;
            let chunk = match read {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(err)) => return Some((Err(err), self)),
                // The blocking pool is shutting down: the daemon stops.
                Err(_) => return None,
            };
            self.next_event = chunk.next_event;
            self.next_decision = chunk.next_decision;
            if !chunk.text.is_empty() {
                self.last_sent = Instant::now();
                return Some((Ok(Bytes::from(chunk.text)), self));
            }
            if self.last_sent.elapsed() >= KEEP_ALIVE {
                self.last_sent = Instant::now();
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), self));
            }
            actix_web::rt::time::sleep(POLL).await;
        }
    }
}

struct Chunk {
    text: String,
    next_event: u64,
    next_decision: u64,
}

/// The events from `from_event` on that are durable, and the decisions from `from_decision`
/// up to the engine's cursor as last seen, as SSE text; at most [`BATCH`] of each.
fn read_chunk(
    data: &Data,
    from_event: u64,
    from_decision: u64,
    engine_seen: u64,
) -> Result<Chunk, StoreError> {
    let mut text = String::new();
    let durable = data.store.status().durable;
    let mut next_event = from_event;
    // The last event whose decisions were sent: an event's id carries it.
    let decided_before = from_decision.saturating_sub(1);
    if from_event <= durable {
        let to = durable.min(from_event.saturating_add(BATCH - 1));
        for event in data.store.read_range(from_event, to)? {
            let json = serde_json::to_string(&event).map_err(|err| corrupt(event.seq, &err))?;
            text.push_str(&format!(
                "event: event\nid: {}-{decided_before}\ndata: {json}\n\n",
                event.seq
            ));
        }
        next_event = to + 1;
    }
    // Decisions only for events already sent, and processed as of the last poll.
    let decided = engine_seen.min(next_event.saturating_sub(1));
    let mut next_decision = from_decision;
    if from_decision <= decided {
        let to = decided.min(from_decision.saturating_add(BATCH - 1));
        let sent_events = next_event.saturating_sub(1);
        for seq in from_decision..=to {
            let runs = data.state.traces_of(seq)?;
            if runs.is_empty() {
                continue;
            }
            let json = serde_json::to_string(&serde_json::json!({ "seq": seq, "runs": runs }))
                .map_err(|err| corrupt(seq, &err))?;
            text.push_str(&format!(
                "event: decision\nid: {sent_events}-{seq}\ndata: {json}\n\n"
            ));
        }
        next_decision = to + 1;
    }
    Ok(Chunk {
        text,
        next_event,
        next_decision,
    })
}

fn corrupt(seq: u64, err: &serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: format!("L{seq}"),
        reason: err.to_string(),
    }
}
