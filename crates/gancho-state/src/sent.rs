//! The delivery history (`gancho sent`, `gancho explain`): every delivered action, with what
//! it was, who it went to, its failed tries, when it was decided and delivered, and the
//! peer's answer. Written by the outbox when an action is delivered, into the traces'
//! database (diagnostics: no `fdatasync`; a crash can lose the last second's records, never
//! a delivery), and pruned after `[retry] sent_retention`.
//!
//! | key                              | value                  |
//! |----------------------------------|------------------------|
//! | `Y` delivered time (8) action id | [`Sent`], JSON         |
//! | `D` action id                    | delivered time (8)     |

use gancho_core::Channel;
use gancho_store::StoreError;
use gancho_store::keys::{read_time, time_key};
use gancho_store::kv::Tree;
use serde::{Deserialize, Serialize};

use crate::outbox::{Attempt, Outbox, OutboxItem};
use crate::schema::to_json;

const SENT: u8 = b'Y';
const BY_ID: u8 = b'D';

/// A delivered action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub id: String,
    pub rule: String,
    /// The log event whose processing decided it.
    pub event_seq: u64,
    pub channel: Channel,
    /// Whom it went to: the addresses, the number, or the method and URL.
    pub to: String,
    /// When it was decided (0 when not known: decided before the time was recorded), and
    /// delivered, ms since the epoch.
    pub decided_ms: i64,
    pub delivered_ms: i64,
    /// Its failed tries before the delivery.
    #[serde(default)]
    pub failed_tries: Vec<Attempt>,
    /// The peer's answer (`smtp 250 …`, `http 201`, `twilio SM…`), or where the file
    /// transport wrote it.
    pub answer: String,
}

impl Sent {
    /// The record of `item`, delivered at `now_ms` with this answer.
    pub fn of(item: &OutboxItem, now_ms: i64, answer: &str) -> Sent {
        let action = &item.action;
        let to = action.action.destination();
        Sent {
            id: action.id.clone(),
            rule: action.rule.clone(),
            event_seq: action.event_seq,
            channel: action.action.channel(),
            to,
            decided_ms: action.decided_ms,
            delivered_ms: now_ms,
            failed_tries: item
                .delivery
                .as_ref()
                .map(|d| d.attempts.clone())
                .unwrap_or_default(),
            answer: answer.to_owned(),
        }
    }
}

fn sent_key(delivered_ms: i64, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + id.len());
    key.push(SENT);
    key.extend_from_slice(&time_key(delivered_ms));
    key.extend_from_slice(id.as_bytes());
    key
}

fn id_key(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(BY_ID);
    key.extend_from_slice(id.as_bytes());
    key
}

pub(crate) fn record(traces: &Tree, sent: &Sent) -> Result<(), StoreError> {
    traces.insert(sent_key(sent.delivered_ms, &sent.id), to_json(sent)?)?;
    traces.insert(id_key(&sent.id), time_key(sent.delivered_ms).to_vec())
}

/// What `gancho sent` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentQuery {
    pub channel: Option<Channel>,
    /// Only those delivered at or after this, ms.
    pub since_ms: Option<i64>,
    /// The newest this many, 0 for all.
    pub limit: usize,
}

impl Outbox {
    /// The delivery of the action `id`, if it is still recorded.
    pub fn sent(&self, id: &str) -> Result<Option<Sent>, StoreError> {
        let Some(at) = self.traces.get(id_key(id))? else {
            return Ok(None);
        };
        let Some(at) = read_time(&at) else {
            return Ok(None);
        };
        Ok(self
            .traces
            .get(sent_key(at, id))?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Hands the deliveries the query matches to `f`, oldest first (the newest `limit`, or
    /// all since `since_ms`), as they are read.
    pub fn each_sent(
        &self,
        query: &SentQuery,
        f: impl FnMut(Sent) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.each_sent_before(query, None, f)
    }

    /// [`Outbox::each_sent`] over the deliveries before the one delivered at `before` (its
    /// delivery time and id) only: with a `limit`, the page of the newest `limit` of those.
    pub fn each_sent_before(
        &self,
        query: &SentQuery,
        before: Option<(i64, &str)>,
        mut f: impl FnMut(Sent) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let from = sent_key(query.since_ms.unwrap_or(i64::MIN), "");
        let to = match before {
            Some((ms, id)) => sent_key(ms, id).to_vec(),
            None => vec![SENT + 1],
        };
        let matches = |sent: &Sent| query.channel.is_none_or(|c| sent.channel == c);
        let decode = |value: &[u8]| serde_json::from_slice::<Sent>(value).ok();
        if query.limit == 0 {
            for entry in self.traces.range(from.clone()..to.clone()) {
                let (_, value) = entry?;
                if let Some(sent) = decode(&value).filter(matches) {
                    f(sent)?;
                }
            }
            return Ok(());
        }
        // The newest `limit`, held (at most `limit` of them), then handed oldest first.
        let mut newest = Vec::new();
        for entry in self.traces.range(from.clone()..to.clone()).rev() {
            let (_, value) = entry?;
            if let Some(sent) = decode(&value).filter(matches) {
                newest.push(sent);
                if newest.len() == query.limit {
                    break;
                }
            }
        }
        for sent in newest.into_iter().rev() {
            f(sent)?;
        }
        Ok(())
    }

    /// Deletes the records of deliveries before `before_ms`; returns how many.
    pub fn prune_sent(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut pruned = 0;
        for entry in self
            .traces
            .range(sent_key(i64::MIN, "")..sent_key(before_ms, ""))
        {
            let (key, _) = entry?;
            if let Some(id) = key.get(9..).and_then(|id| std::str::from_utf8(id).ok()) {
                self.traces.remove(id_key(id))?;
            }
            self.traces.remove(&key)?;
            pruned += 1;
        }
        Ok(pruned)
    }
}
