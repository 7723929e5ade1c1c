//! The control socket: how listing commands reach the store while the daemon holds it.
//!
//! sled lets one process open a store. While the daemon runs, `gancho events` and friends send
//! one JSON line to `DATA_DIR/gancho.sock` and read one JSON document back, to the end of the
//! stream; with the daemon
//! stopped, they open the store themselves. The socket is created with mode 0600 inside the
//! data folder (mode 0700), so only the service's user and root can use it.
//!
//! Here: the requests and answers, and how the store answers them (`respond`, listings streamed
//! by `stream_listing`). `client`: the commands' side. `socket`: the daemon's listener.
//! `cluster`: what a cluster node answers, from the partitions it runs (with a cluster node
//! stopped, the commands refuse: its partitions' stores may be another node's now).

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gancho_core::{ActionRequest, Event};
use gancho_core::{Clock, SystemClock};
use gancho_engine::{EngineStatus, SharedStatus};
use gancho_state::ops::OperatorOp;
use gancho_state::poison::Poisoned;
use gancho_state::traces::RunTrace;
use gancho_state::{Attempt, OutboxItem};
use gancho_store::{EventQuery, KeyFilter, StoreError};
use serde::{Deserialize, Serialize};

use crate::data::Data;
use crate::prune::{Pruned, Retention};
use tracing::warn;

pub mod client;
mod cluster;
pub mod socket;

/// A question to the daemon (or, with the daemon stopped, to the store directly).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Events(Query),
    Quarantine {
        limit: usize,
    },
    Outbox {
        limit: usize,
    },
    Dead {
        limit: usize,
    },
    /// Puts dead letters back in the outbox: the one with this action id, or all.
    DeadRetry {
        id: Option<String>,
    },
    /// The engine's status: the running daemon's, or, with it stopped, the rules of
    /// `rules_dir` as they compile with their stored counters.
    Rules {
        rules_dir: PathBuf,
    },
    /// Enables a rule (resuming it if the engine paused it) or disables it; stored, so it
    /// holds across restarts. The running engine reads it within a second.
    RuleControl {
        name: String,
        enable: bool,
    },
    /// Deletes what is past its retention now.
    Prune {
        retention: Retention,
    },
    /// How far the log is durable, indexed and processed.
    Status,
    /// Runs set aside because the engine died running them.
    Poisoned {
        limit: usize,
    },
    /// Pending timers and expectations (of one rule, or all): a listing.
    Timers {
        rule: Option<String>,
    },
    /// Rules' state, `once` and `throttle` marks included (of one rule, or all): a listing.
    State {
        rule: Option<String>,
    },
    /// An event, what each rule it woke did, and what became of the actions.
    Explain {
        seq: u64,
    },
    /// The seq of the event one of these sources posted with this id.
    FindEvent {
        id: String,
        sources: Vec<String>,
    },
    /// A rule's last traced runs, newest first (only failed ones with `errors`).
    RuleRuns {
        rule: String,
        last: usize,
        errors: bool,
    },
    /// The delivery history (`gancho sent`), streamed.
    Sent(gancho_state::sent::SentQuery),
    /// The log in order from seq `from`, skipping the events received before
    /// `received_from_ms` (streamed: `gancho replay`).
    Log {
        from: u64,
        received_from_ms: i64,
    },
    /// Runs the current version of a rule once on each event it failed on, among those
    /// traced since `since_ms` (`gancho rerun --rule NAME --failed`).
    Rerun {
        rule: String,
        since_ms: i64,
    },
    /// Discards an orphaned timer or expectation.
    DiscardTimer {
        rule: String,
        name: String,
    },
    /// Clears a rule's state: `key`, or all of it.
    ClearState {
        rule: String,
        key: Option<String>,
    },
}

/// What `gancho explain SEQ` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Explanation {
    /// `None` when it is not in the log (not yet stored, or pruned).
    pub event: Option<Event>,
    /// The runs it woke, as traced (none when it woke no rule, or its trace was pruned).
    pub runs: Vec<RunTrace>,
    /// What became of each action they decided.
    pub actions: Vec<ActionFate>,
}

/// What became of an action, as `gancho explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionFate {
    pub id: String,
    /// `pending` (in the outbox), `delivered`, `dead` (in dead letters), or `done`: no longer
    /// in the outbox, its delivery no longer recorded (older than `[retry] sent_retention`).
    pub fate: String,
    /// When it was delivered or died, or when it is tried next (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    /// Its failed tries.
    #[serde(default)]
    pub failed_tries: usize,
    /// The last try's error, or the peer's answer to the delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// What `gancho status` shows: how far each stage has come.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Every event up to this seq is on disk.
    pub durable: u64,
    /// ... in the indexes.
    pub indexed: u64,
    pub index_lag: u64,
    /// ... processed by the rules, durably.
    pub engine_cursor: u64,
    pub engine_lag: u64,
    /// Events deleted by retention, ever.
    pub pruned: u64,
    /// Quarantine records dropped for its cap, ever.
    pub quarantine_dropped: u64,
}

/// An outbox item on the wire: the action, and its failed tries so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    #[serde(flatten)]
    pub action: ActionRequest,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// When it is tried next, ms since the epoch; absent: as soon as it is durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ms: Option<i64>,
}

impl From<OutboxItem> for Pending {
    fn from(item: OutboxItem) -> Pending {
        let (attempts, next_ms) = match item.delivery {
            Some(d) => (d.attempts, Some(d.next_ms)),
            None => (Vec::new(), None),
        };
        Pending {
            action: item.action,
            attempts,
            next_ms,
        }
    }
}

/// [`EventQuery`] on the wire.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Query {
    pub source: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub key: Option<(String, String)>,
    pub since: Option<DateTime<Utc>>,
    /// Only events whose event time is at or before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl Query {
    pub(crate) fn to_store(&self) -> EventQuery {
        EventQuery {
            source: self.source.clone(),
            kind: self.kind.clone(),
            key: self
                .key
                .clone()
                .map(|(name, value)| KeyFilter { name, value }),
            since: self.since,
            until: self.until,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Retried(usize),
    Rules(EngineStatus),
    Pruned(Pruned),
    Status(Status),
    Poisoned(Vec<Poisoned>),
    Done(String),
    Found(Option<u64>),
    /// What `gancho rerun` did: each event re-run (seq) and what came of it.
    Reran(Vec<(u64, String)>),
    Explained(Explanation),
    Runs(Vec<RunTrace>),
    Error(String),
}

/// The seq of the first of these sources' events stored with this id.
fn find_event(data: &Data, id: &str, sources: &[String]) -> Result<Option<u64>, StoreError> {
    for source in sources {
        if let Some(seq) = data.store.find_event(source, id)? {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// Answers a request that is not a listing, as the control socket does: what the admin API
/// answers too.
pub fn respond(data: &Data, engine: Option<&SharedStatus>, request: &Request) -> Response {
    answer(data, engine, request)
}

fn answer(data: &Data, engine: Option<&SharedStatus>, request: &Request) -> Response {
    let outbox = data.state.outbox();
    let result = match request {
        Request::Events(_)
        | Request::Sent(_)
        | Request::Log { .. }
        | Request::Quarantine { .. }
        | Request::Outbox { .. }
        | Request::Dead { .. }
        | Request::Timers { .. }
        | Request::State { .. } => Ok(Response::Error(
            "listings are streamed (control::client::each_item), not answered whole".to_owned(),
        )),
        Request::DeadRetry { id } => outbox
            .retry_dead(id.as_deref(), SystemClock.now().timestamp_millis())
            .map(Response::Retried),
        Request::Status => status(data).map(Response::Status),
        Request::Poisoned { limit } => data.state.poisoned(*limit).map(Response::Poisoned),
        Request::Prune { retention } => {
            crate::prune::prune(data, retention, SystemClock.now()).map(Response::Pruned)
        }
        Request::Rules { rules_dir } => match engine {
            Some(status) => Ok(Response::Rules(
                status.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            )),
            None => gancho_engine::stopped_status(
                rules_dir,
                &data.state,
                &gancho_engine::Limits::default(),
            )
            .map(Response::Rules)
            .or_else(|err| Ok(Response::Error(err.to_string()))),
        },
        Request::Explain { seq } => explain(data, *seq).map(Response::Explained),
        Request::FindEvent { id, sources } => find_event(data, id, sources).map(Response::Found),
        Request::RuleRuns { rule, last, errors } => {
            let mut runs = Vec::new();
            data.state
                .each_run_newest(|run| {
                    if run.rule == *rule && (!errors || run.error.is_some()) {
                        runs.push(run);
                    }
                    runs.len() < *last
                })
                .map(|()| Response::Runs(runs))
        }
        Request::Rerun { .. } if engine.is_none() => Ok(Response::Error(
            "gancho rerun runs the rule in the daemon's engine: start the daemon first".to_owned(),
        )),
        Request::Rerun { rule, since_ms } => rerun(data, rule, *since_ms),
        Request::DiscardTimer { rule, name } => {
            let mut found = false;
            let listed = data.state.each_timer(Some(rule), |timer| {
                found |= timer.orphaned && timer.name == *name;
                Ok(())
            });
            match (listed, found) {
                (Err(err), _) => Err(err),
                (Ok(()), false) => Ok(Response::Error(format!("no orphaned timer {rule}/{name}"))),
                // The running engine does it in its next commit; a stopped one is not writing.
                (Ok(()), true) if engine.is_some() => Ok(through_engine(
                    data,
                    &OperatorOp::DiscardOrphan {
                        rule: rule.clone(),
                        name: name.clone(),
                    },
                    format!("orphaned timer {rule}/{name} discarded"),
                )),
                (Ok(()), true) => data
                    .state
                    .discard_orphan(rule, name)
                    .map(|_| Response::Done(format!("orphaned timer {rule}/{name} discarded"))),
            }
        }
        Request::ClearState { rule, key } if engine.is_some() => {
            let mut n = 0;
            data.state
                .each_state(Some(rule), |entry| {
                    n += usize::from(key.as_ref().is_none_or(|k| *k == entry.key));
                    Ok(())
                })
                .map(|()| {
                    through_engine(
                        data,
                        &OperatorOp::ClearState {
                            rule: rule.clone(),
                            key: key.clone(),
                        },
                        format!("{n} state value(s) of rule {rule} cleared"),
                    )
                })
        }
        Request::ClearState { rule, key } => data
            .state
            .clear_state(rule, key.as_deref())
            .map(|n| Response::Done(format!("{n} state value(s) of rule {rule} cleared"))),
        Request::RuleControl { name, enable } => {
            let control = gancho_state::rules::RuleControl {
                disabled: !enable,
                paused: None,
            };
            data.state.set_rule_control(name, &control).map(|()| {
                Response::Done(match enable {
                    true => format!("rule {name} enabled: events wake it again"),
                    false => format!("rule {name} disabled: events no longer wake it"),
                })
            })
        }
    };
    result.unwrap_or_else(|err| Response::Error(err.to_string()))
}

fn status(data: &Data) -> Result<Status, StoreError> {
    let log = data.store.status();
    let engine_cursor = data.state.durable_cursor();
    Ok(Status {
        durable: log.durable,
        indexed: log.indexed,
        index_lag: log.durable.saturating_sub(log.indexed),
        engine_cursor,
        engine_lag: log.durable.saturating_sub(engine_cursor),
        pruned: data.store.pruned(),
        quarantine_dropped: data.store.quarantine_dropped()?,
    })
}

/// What the daemon sends at a time while it streams a listing.
const CHUNK: usize = 64 * 1024;

/// Whether a request is a listing, answered as a stream ([`stream_listing`]).
fn is_listing(request: &Request) -> bool {
    matches!(
        request,
        Request::Events(_)
            | Request::Sent(_)
            | Request::Log { .. }
            | Request::Quarantine { .. }
            | Request::Outbox { .. }
            | Request::Dead { .. }
            | Request::Timers { .. }
            | Request::State { .. }
    )
}

/// Sends the answer to a listing through `tx` as it is read: `{"TAG":[item,...]}` (`events`,
/// `quarantine`, `outbox`, `dead`), in chunks of about [`CHUNK`] bytes. An error before the
/// first chunk is sent as `{"error":"..."}`; one after it cuts the answer short, which the
/// client reports. Both the daemon and a client reading a stopped store answer this way.
fn stream_listing(data: &Data, request: &Request, tx: &tokio::sync::mpsc::Sender<Vec<u8>>) {
    match request {
        Request::Events(query) => stream_list("events", tx, |f| {
            data.store.each_event(&query.to_store(), f)
        }),
        Request::Sent(query) => {
            stream_list("sent", tx, |f| data.state.outbox().each_sent(query, f))
        }
        Request::Log {
            from,
            received_from_ms,
        } => stream_list("log", tx, |f| {
            let durable = data.store.status().durable;
            let mut at = (*from).max(1);
            while at <= durable {
                let to = at.saturating_add(999).min(durable);
                for event in data.store.read_range(at, to)? {
                    if event.received.timestamp_millis() >= *received_from_ms {
                        f(event)?;
                    }
                }
                at = to + 1;
            }
            Ok(())
        }),
        Request::Quarantine { limit } => {
            stream_list("quarantine", tx, |f| data.store.each_quarantined(*limit, f))
        }
        Request::Outbox { limit } => stream_list("outbox", tx, |f| {
            data.state
                .outbox()
                .each_pending(*limit, |item| f(Pending::from(item)))
        }),
        Request::Dead { limit } => {
            stream_list("dead", tx, |f| data.state.outbox().each_dead(*limit, f))
        }
        Request::Timers { rule } => {
            stream_list("timers", tx, |f| data.state.each_timer(rule.as_deref(), f))
        }
        Request::State { rule } => {
            stream_list("state", tx, |f| data.state.each_state(rule.as_deref(), f))
        }
        _ => {
            let answer = Response::Error("not a listing".to_owned());
            let _ = tx.blocking_send(serde_json::to_vec(&answer).unwrap_or_default());
        }
    }
}

fn stream_list<T: Serialize>(
    tag: &str,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
    walk: impl FnOnce(&mut dyn FnMut(T) -> Result<(), StoreError>) -> Result<(), StoreError>,
) {
    let mut buf = format!(r#"{{"{tag}":["#).into_bytes();
    let mut first = true;
    let mut sent = false;
    let gone = || StoreError::Io {
        what: "sending a listing to the client".to_owned(),
        source: std::io::ErrorKind::BrokenPipe.into(),
    };
    let walked = walk(&mut |item: T| {
        if !first {
            buf.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut buf, &item).map_err(|err| StoreError::Corrupt {
            key: tag.to_owned(),
            reason: err.to_string(),
        })?;
        if buf.len() >= CHUNK {
            tx.blocking_send(std::mem::take(&mut buf))
                .map_err(|_| gone())?;
            sent = true;
        }
        Ok(())
    });
    let last = match walked {
        Ok(()) => {
            buf.extend_from_slice(b"]}");
            buf
        }
        Err(err) => {
            warn!(error = %err, listing = tag, "listing");
            if sent {
                return;
            }
            serde_json::to_vec(&Response::Error(err.to_string())).unwrap_or_default()
        }
    };
    // The client may be gone: nothing more to do then.
    let _ = tx.blocking_send(last);
}

fn explain(data: &Data, seq: u64) -> Result<Explanation, StoreError> {
    let event = data.store.get(seq)?;
    let runs = data.state.traces_of(seq)?;
    let ids: Vec<String> = runs.iter().flat_map(|r| r.actions.clone()).collect();
    let mut fates: std::collections::HashMap<String, ActionFate> = Default::default();
    let last_error =
        |tries: &[gancho_state::Attempt]| tries.last().map(|attempt| attempt.error.clone());
    let outbox = data.state.outbox();
    // The actions decided on this event are keyed by its seq: two key ranges per channel.
    outbox.each_pending_of_event(seq, |item| {
        if ids.contains(&item.action.id) {
            let tries = item.delivery.as_ref().map_or(&[][..], |d| &d.attempts[..]);
            let fate = ActionFate {
                id: item.action.id.clone(),
                fate: "pending".to_owned(),
                at_ms: item.delivery.as_ref().map(|d| d.next_ms),
                failed_tries: tries.len(),
                why: last_error(tries),
            };
            fates.insert(item.action.id, fate);
        }
        Ok(())
    })?;
    outbox.each_dead_of_event(seq, |dead| {
        if ids.contains(&dead.action.id) {
            let fate = ActionFate {
                id: dead.action.id.clone(),
                fate: "dead".to_owned(),
                at_ms: Some(dead.dead_ms),
                failed_tries: dead.attempts.len(),
                why: last_error(&dead.attempts),
            };
            fates.insert(dead.action.id, fate);
        }
        Ok(())
    })?;
    let mut actions = Vec::with_capacity(ids.len());
    for id in ids {
        let fate = match fates.remove(&id) {
            Some(fate) => fate,
            None => match outbox.sent(&id)? {
                Some(sent) => ActionFate {
                    id,
                    fate: "delivered".to_owned(),
                    at_ms: Some(sent.delivered_ms),
                    failed_tries: sent.failed_tries.len(),
                    why: Some(sent.answer),
                },
                None => ActionFate {
                    id,
                    fate: "done".to_owned(),
                    at_ms: None,
                    failed_tries: 0,
                    why: None,
                },
            },
        };
        actions.push(fate);
    }
    Ok(Explanation {
        event,
        runs,
        actions,
    })
}

/// Hands a change to the running engine (it commits it with its next batch) and waits until
/// it is durable, up to 10 s.
fn through_engine(data: &Data, op: &OperatorOp, done: String) -> Response {
    let id = match data.state.request_op(op) {
        Ok(id) => id,
        Err(err) => return Response::Error(err.to_string()),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match data.state.op_pending(id) {
            Ok(false) => return Response::Done(done),
            Ok(true) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(true) => {
                return Response::Error(
                    "the engine has not carried it out within 10 s; it will when it can".to_owned(),
                );
            }
            Err(err) => return Response::Error(err.to_string()),
        }
    }
}

/// Hands `gancho rerun` to the running engine, waits for it (up to 50 s: the client waits
/// 60), and says what each re-run did, from the marks it left.
fn rerun(data: &Data, rule: &str, since_ms: i64) -> Result<Response, StoreError> {
    let id = data.state.request_op(&OperatorOp::Rerun {
        rule: rule.to_owned(),
        since_ms,
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(50);
    while data.state.op_pending(id)? {
        if std::time::Instant::now() >= deadline {
            return Ok(Response::Error(
                "the engine is still re-running after 50 s; it goes on (gancho state RULE lists each rerun:SEQ done)"
                    .to_owned(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let op = id.to_string();
    let mut reran = Vec::new();
    data.state.each_state(Some(rule), |entry| {
        let ours = entry.value.value.get("op").and_then(|v| v.as_str()) == Some(op.as_str());
        if let (true, Some(seq)) = (
            ours,
            entry
                .key
                .strip_prefix("rerun:")
                .and_then(|s| s.parse::<u64>().ok()),
        ) {
            let outcome = entry.value.value.get("outcome").and_then(|v| v.as_str());
            reran.push((seq, outcome.unwrap_or_default().to_owned()));
        }
        Ok(())
    })?;
    reran.sort_unstable();
    Ok(Response::Reran(reran))
}
