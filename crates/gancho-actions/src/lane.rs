//! A lane: one channel's deliveries. It takes items from the outbox (new ones in decision
//! order, then retries as they come due) and sends each in a task of its own, within the
//! channel's concurrency and rate, and the destination's.
//!
//! Each destination (the SMTP server, the SMS provider, an HTTP host) has its own share of
//! the channel's sends (`per_host` for HTTP) and a backlog in memory: the keys of its items
//! read from the store and not yet sent. The lane reads on past a slow destination's items
//! (they wait in its backlog, not in the way), so one slow host delays only its own items.
//! A destination that is failing (five transient failures in a row, or a `Retry-After`), or
//! whose backlog is full, gets its items deferred in the store for a while, without counting
//! a try. What a lane holds in memory is bounded; beyond that it stops reading.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gancho_core::{Channel, Clock};
use gancho_state::{Attempt, Delivery, Outbox, OutboxItem};
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{debug, error, info, warn};

use crate::RetryPolicy;
use crate::channel::Deliver;
use crate::failure::Failure;
use crate::retry::AfterFailure;

/// Items read from the store at a time, per lane.
const BATCH: usize = 256;
/// Transient failures in a row after which a destination is left alone for a while.
const BREAKER_THRESHOLD: u32 = 5;
/// The longest a destination is left alone by the breaker.
const BREAKER_MAX: Duration = Duration::from_secs(60);
/// How long a busy destination's items wait before they are looked at again.
const BUSY_WAIT: Duration = Duration::from_millis(500);
/// Items a lane holds in memory (keys in backlogs, and sends in flight); it reads no more
/// from the store until it holds fewer.
pub(crate) const MAX_HELD: usize = 200_000;
/// Keys one destination's backlog holds; more items for it are deferred in the store.
pub(crate) const MAX_BACKLOG: usize = 50_000;

/// Releases a held item from its lane when dropped, with its outcome: after a send, or if
/// the send task panics.
struct Release {
    lane: Arc<Lane>,
    destination: String,
    key: Vec<u8>,
    outcome: Outcome,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.lane.held().keys.remove(&self.key);
        self.lane.release(&self.destination, &self.outcome);
        self.lane.room.notify_one();
        self.lane.pump(&self.destination);
    }
}

/// How one held item left the lane.
#[derive(Debug)]
enum Outcome {
    Sent,
    Failed(Failure),
    /// Not sent: deferred, gone, or left for the next start.
    Left,
}

/// What the lane holds of one destination: the keys of its items waiting in memory, its
/// sends in flight, and its health.
#[derive(Debug, Default)]
struct Destination {
    backlog: VecDeque<Vec<u8>>,
    in_flight: usize,
    /// Transient failures in a row.
    failures: u32,
    /// No new sends before this.
    closed_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct Held {
    destinations: HashMap<String, Destination>,
    /// Items in backlogs or in flight, all destinations.
    total: usize,
    /// Their keys: an item is held once, even if its lease runs out while it waits.
    keys: HashSet<Vec<u8>>,
}

#[derive(Debug)]
/// A channel's series: `gancho_deliveries_total{channel,outcome}` (`delivered`, `failed`: to
/// be retried, `dead`) and `gancho_delivery_seconds{channel}`, from decision to delivery.
pub(crate) struct LaneMetrics {
    delivered: metrics::Counter,
    failed: metrics::Counter,
    dead: metrics::Counter,
    seconds: metrics::Histogram,
}

impl LaneMetrics {
    pub(crate) fn new(channel: Channel) -> LaneMetrics {
        let outcome = |outcome: &'static str| {
            metrics::counter!(
                "gancho_deliveries_total",
                "channel" => channel.as_str(),
                "outcome" => outcome
            )
        };
        LaneMetrics {
            delivered: outcome("delivered"),
            failed: outcome("failed"),
            dead: outcome("dead"),
            seconds: metrics::histogram!("gancho_delivery_seconds", "channel" => channel.as_str()),
        }
    }
}

pub(crate) struct Lane {
    pub(crate) channel: Channel,
    pub(crate) state: Outbox,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) deliverer: Arc<dyn Deliver>,
    pub(crate) policy: RetryPolicy,
    pub(crate) per_destination: usize,
    pub(crate) lease: Duration,
    /// Sends in flight, all destinations.
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) concurrency: usize,
    /// Keys one destination's backlog may hold: for e-mail and SMS (one destination each) as
    /// many as the lane holds, so a long backlog waits in memory instead of being deferred.
    pub(crate) max_backlog: usize,
    pub(crate) held: Mutex<Held>,
    /// Told when the lane holds fewer items than [`MAX_HELD`].
    pub(crate) room: Notify,
    /// The channel's rate limit, as the time between send starts.
    pub(crate) interval: Option<Duration>,
    /// When the next send may start, under the rate limit.
    pub(crate) next_start: Mutex<Instant>,
    /// The longest a whole send may take.
    pub(crate) send_timeout: Duration,
    pub(crate) stopping: AtomicBool,
    /// Set when an outcome is recorded: the flusher writes it out soon (`OUTCOME_FLUSH`).
    pub(crate) recorded: Arc<AtomicBool>,
    /// The channel's series (no-ops unless the daemon installed a metrics recorder).
    pub(crate) metrics: LaneMetrics,
}

/// Drops what the lane knows of a destination with nothing held and nothing against it (no
/// failures, or a pause that is over), so the map holds only busy and failing destinations.
fn forget_if_idle(destinations: &mut HashMap<String, Destination>, destination: &str) {
    let now = Instant::now();
    if destinations.get(destination).is_some_and(|d| {
        d.in_flight == 0
            && d.backlog.is_empty()
            && match d.closed_until {
                None => d.failures == 0,
                Some(until) => until <= now,
            }
    }) {
        destinations.remove(destination);
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(1.0 + 0.2 * fastrand::f64())
}

impl Lane {
    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    pub(crate) async fn run(self: Arc<Lane>, mut stop: watch::Receiver<bool>) {
        let mut durable = self.state.durable_watch();
        // New items are read after this key; retries come through the store's retry index.
        let mut after: Option<Vec<u8>> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            if self.held().total >= MAX_HELD {
                tokio::select! {
                    _ = self.room.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let items = match self.next_items(after.as_deref()) {
                Ok((items, last)) => {
                    if last.is_some() {
                        after = last;
                    }
                    items
                }
                Err(err) => {
                    error!(channel = %self.channel, error = %err, "reading the outbox");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            };
            if items.is_empty() {
                let wait = match self.state.next_action_due(self.channel) {
                    Ok(Some(due)) => Duration::from_millis(
                        u64::try_from((due - self.now_ms()).clamp(0, 1000)).unwrap_or(1000),
                    ),
                    _ => Duration::from_secs(1),
                };
                tokio::select! {
                    _ = durable.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let mut failed = false;
            for item in items {
                if !self.enqueue(item) {
                    failed = true;
                    break;
                }
            }
            if failed {
                // The store refused a write: do not spin on the same items.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
            }
            // Let the sends just started, and the other lanes, run.
            tokio::task::yield_now().await;
        }
        debug!(channel = %self.channel, "lane stopped");
    }

    /// Retries that are due, then new items, and the key to read new items on from.
    fn next_items(
        &self,
        after: Option<&[u8]>,
    ) -> Result<(Vec<OutboxItem>, Option<Vec<u8>>), gancho_state::Error> {
        let mut items = self.state.due_actions(self.channel, self.now_ms(), BATCH)?;
        let mut last = None;
        if items.len() < BATCH {
            let (fresh, fresh_last) =
                self.state
                    .fresh_actions(self.channel, after, BATCH - items.len())?;
            items.extend(fresh);
            last = fresh_last;
        }
        Ok((items, last))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the item in its destination's backlog, or defers it in the store when the
    /// destination is failing or its backlog is full.
    /// False when the store failed to record a lease or a deferral.
    fn enqueue(self: &Arc<Lane>, item: OutboxItem) -> bool {
        let destination = self.deliverer.destination(&item.action.action);
        let already = self.held().keys.contains(&item.key);
        if already {
            // Its lease ran out while it waited here: lease it again, keep one copy.
            return self.lease(&item);
        }
        if let Some(wait) = self.closed_for(&destination) {
            return self.defer(&item, wait);
        }
        if self
            .held()
            .destinations
            .get(&destination)
            .is_some_and(|d| d.backlog.len() >= self.max_backlog)
        {
            return self.defer(&item, jitter(BUSY_WAIT));
        }
        if !self.lease(&item) {
            return false;
        }
        {
            let mut held = self.held();
            if !held.keys.insert(item.key.clone()) {
                return true;
            }
            held.total += 1;
            held.destinations
                .entry(destination.clone())
                .or_default()
                .backlog
                .push_back(item.key);
        }
        self.pump(&destination);
        true
    }

    /// A retry leaves the retry index while the lane holds it (so the next read does not
    /// return it again), due again only if this process dies first, or if it waits longer
    /// than the lease (then it is leased again, and not held twice). False when the store
    /// failed to record it; a new item (no delivery record) needs no lease.
    fn lease(&self, item: &OutboxItem) -> bool {
        let Some(delivery) = &item.delivery else {
            return true;
        };
        let mut leased = delivery.clone();
        leased.next_ms = self.now_ms().saturating_add(millis(self.lease));
        match self.state.action_rescheduled(item, &leased) {
            Ok(()) => true,
            Err(err) => {
                error!(id = %item.action.id, error = %err, "holding a retry");
                false
            }
        }
    }

    /// Starts sends for the destination while it has items and room in its share.
    fn pump(self: &Arc<Lane>, destination: &str) {
        loop {
            let key = {
                let mut held = self.held();
                let Some(d) = held.destinations.get_mut(destination) else {
                    return;
                };
                if d.in_flight >= self.per_destination {
                    return;
                }
                let Some(key) = d.backlog.pop_front() else {
                    return;
                };
                d.in_flight += 1;
                key
            };
            let lane = self.clone();
            let destination = destination.to_owned();
            tokio::spawn(async move { lane.send(destination, key).await });
        }
    }

    /// Sends one held item, records the outcome, and lets the destination's next item go.
    async fn send(self: Arc<Lane>, destination: String, key: Vec<u8>) {
        // Releases the item even if the send panics.
        let mut guard = Release {
            lane: self.clone(),
            destination,
            key,
            outcome: Outcome::Left,
        };
        if let Ok(_slot) = self.slots.clone().acquire_owned().await {
            // Boxed: a task waiting for its slot stays small (the send's state is large).
            guard.outcome = Box::pin(self.send_with_slot(&guard.destination, &guard.key)).await;
        }
    }

    async fn send_with_slot(&self, destination: &str, key: &[u8]) -> Outcome {
        if self.stopping.load(Ordering::Acquire) || self.state.failure().is_some() {
            // Left in the outbox: sent after the next start (or, its state failed because
            // another node owns the partition now, by that node).
            return Outcome::Left;
        }
        let item = match self.state.action_item(key) {
            Ok(Some(item)) => item,
            // Delivered or buried meanwhile (a dead letter put back and sent twice over).
            Ok(None) => return Outcome::Left,
            Err(err) => {
                error!(channel = %self.channel, error = %err, "reading an outbox item");
                return Outcome::Left;
            }
        };
        if let Some(wait) = self.closed_for(destination) {
            // The destination began failing while this waited.
            self.defer(&item, wait);
            return Outcome::Left;
        }
        // The channel's rate counts sends only, not items deferred.
        if let Some(interval) = self.interval {
            let start = {
                let mut next = self.next_start.lock().unwrap_or_else(|e| e.into_inner());
                let start = (*next).max(Instant::now());
                *next = start + interval;
                start
            };
            tokio::time::sleep_until(start.into()).await;
            if self.stopping.load(Ordering::Acquire) {
                return Outcome::Left;
            }
            if let Some(wait) = self.closed_for(destination) {
                self.defer(&item, wait);
                return Outcome::Left;
            }
        }
        if item.delivery.is_some() {
            // Tests hold a retry here (`pause`) until they let it go.
            gancho_core::fail_point!("actions.send.retry");
        }
        // Leased and about to go: a crash here must not lose the item.
        gancho_core::fail_point!("actions.send.before");
        let started = Instant::now();
        // Checked when the rule decided it; checked again here, as the store is not trusted.
        let send = async {
            item.action
                .action
                .validate()
                .map_err(|err| Failure::permanent(err.to_string()))?;
            self.deliverer.send(&item.action, &*self.clock).await
        };
        let result = match tokio::time::timeout(self.send_timeout, send).await {
            Ok(result) => result,
            Err(_) => Err(Failure::transient(format!(
                "no answer within {:?}",
                self.send_timeout
            ))),
        };
        // Sent, not yet recorded: a crash here repeats the send, with the same id.
        gancho_core::fail_point!("actions.send.after");
        self.record(item, &result, started.elapsed());
        match result {
            Ok(_) => Outcome::Sent,
            Err(failure) => Outcome::Failed(failure),
        }
    }

    /// How long the destination is left alone, if it is.
    fn closed_for(&self, destination: &str) -> Option<Duration> {
        let now = Instant::now();
        let until = self.held().destinations.get(destination)?.closed_until?;
        (until > now).then(|| jitter(until - now))
    }

    /// Puts an item aside for `wait` without counting a try.
    fn defer(&self, item: &OutboxItem, wait: Duration) -> bool {
        let now = self.now_ms();
        let mut delivery = item.delivery.clone().unwrap_or(Delivery {
            first_ms: now,
            next_ms: now,
            attempts: Vec::new(),
        });
        delivery.next_ms = now.saturating_add(millis(wait));
        match self.state.action_rescheduled(item, &delivery) {
            Ok(()) => true,
            Err(err) => {
                error!(id = %item.action.id, error = %err, "deferring an action");
                false
            }
        }
    }

    /// The item leaves the lane; its outcome tells the destination's health.
    fn release(&self, destination: &str, outcome: &Outcome) {
        let mut held = self.held();
        held.total = held.total.saturating_sub(1);
        let Some(d) = held.destinations.get_mut(destination) else {
            return;
        };
        d.in_flight = d.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Left => {}
            Outcome::Sent => {
                d.failures = 0;
                d.closed_until = None;
            }
            Outcome::Failed(f) if f.permanent => {}
            Outcome::Failed(f) => {
                d.failures += 1;
                let pause = match f.retry_after {
                    Some(asked) => Some(asked.min(self.policy.max)),
                    None if d.failures >= BREAKER_THRESHOLD => Some(
                        self.policy
                            .delay(d.failures - BREAKER_THRESHOLD + 1, None, 1.0)
                            .min(BREAKER_MAX),
                    ),
                    None => None,
                };
                if let Some(pause) = pause {
                    let until = Instant::now() + pause;
                    d.closed_until = Some(d.closed_until.map_or(until, |t| t.max(until)));
                    if f.retry_after.is_none() {
                        warn!(
                            destination,
                            failures = d.failures,
                            pause_ms = pause.as_millis() as u64,
                            "a failing destination is left alone for a while"
                        );
                    }
                }
            }
        }
        forget_if_idle(&mut held.destinations, destination);
    }

    /// Records the outcome of a send: delivered, to be retried, or dead.
    fn record(&self, item: OutboxItem, result: &Result<String, Failure>, took: Duration) {
        let action = &item.action;
        let recorded = match result {
            Ok(receipt) => {
                match item.delivery.as_ref().filter(|d| !d.attempts.is_empty()) {
                    // Its failed tries leave the store with it: the log keeps them.
                    Some(delivery) => info!(
                        id = %action.id,
                        rule = %action.rule,
                        channel = %self.channel,
                        failed_tries = delivery.attempts.len(),
                        first_error = %delivery.attempts[0].error,
                        receipt,
                        "delivered after failed tries"
                    ),
                    None => debug!(
                        id = %action.id,
                        rule = %action.rule,
                        channel = %self.channel,
                        took_ms = took.as_millis() as u64,
                        receipt,
                        "delivered"
                    ),
                }
                let now = self.now_ms();
                self.metrics.delivered.increment(1);
                if action.decided_ms > 0 {
                    let waited = now.saturating_sub(action.decided_ms).max(0);
                    self.metrics.seconds.record(waited as f64 / 1000.0);
                }
                self.state.action_delivered(&item, now, receipt)
            }
            Err(failure) => self.failed(&item, failure),
        };
        if let Err(err) = recorded {
            error!(id = %action.id, error = %err, "recording a delivery outcome");
        }
        self.recorded.store(true, Ordering::Release);
    }

    fn failed(&self, item: &OutboxItem, failure: &Failure) -> Result<(), gancho_state::Error> {
        let action = &item.action;
        let now = self.now_ms();
        let mut delivery = item.delivery.clone().unwrap_or(Delivery {
            first_ms: now,
            next_ms: now,
            attempts: Vec::new(),
        });
        delivery.attempts.push(Attempt {
            at_ms: now,
            error: failure.message.clone(),
            permanent: failure.permanent,
        });
        let tries = u32::try_from(delivery.attempts.len()).unwrap_or(u32::MAX);
        let fate = self.policy.after_failure(
            delivery.first_ms,
            now,
            tries,
            failure.permanent,
            failure.retry_after,
            fastrand::f64(),
        );
        let wait = match fate {
            AfterFailure::Retry(wait) => wait,
            AfterFailure::Dead(why) => {
                error!(
                id = %action.id,
                rule = %action.rule,
                channel = %self.channel,
                tries,
                error = %failure,
                "{why}: moved to dead letters (`gancho dead`)"
                );
                self.metrics.dead.increment(1);
                return self.state.action_dead(item, delivery.attempts, now);
            }
        };
        delivery.next_ms = now.saturating_add(millis(wait));
        warn!(
            id = %action.id,
            rule = %action.rule,
            channel = %self.channel,
            tries,
            retry_in_ms = millis(wait),
            error = %failure,
            "delivery failed; will retry"
        );
        self.metrics.failed.increment(1);
        self.state.action_rescheduled(item, &delivery)
    }
}
