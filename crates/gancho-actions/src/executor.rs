//! The executor: one lane per channel takes items from the outbox (new ones in decision
//! order, then retries as they come due), and sends each in a task of its own, within the
//! channel's concurrency and rate, and the destination's.
//!
//! A destination (the SMTP server, the SMS provider, an HTTP host) that is busy (its share of
//! sends in flight) or failing (five transient failures in a row, or a `Retry-After`) gets no
//! new sends for a while: its items are deferred, without counting a try, so they cannot hold
//! the channel's slots while other destinations wait.
//!
//! Everything runs on one thread with a single-threaded tokio runtime: sends are I/O, and the
//! store calls between them take microseconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gancho_core::{Action, ActionRequest, Channel};
use gancho_store::{Attempt, Delivery, EngineState, OutboxItem, Store};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, error, info, warn};

use crate::email::EmailSender;
use crate::failure::{ActionsError, Failure};
use crate::http::HttpSender;
use crate::sms::SmsSender;
use crate::{ActionsConfig, ChannelLimits, RetryPolicy};

/// Items read from the store at a time, per lane.
const BATCH: usize = 256;
/// Transient failures in a row after which a destination is left alone for a while.
const BREAKER_THRESHOLD: u32 = 5;
/// The longest a destination is left alone by the breaker.
const BREAKER_MAX: Duration = Duration::from_secs(60);
/// How long a busy destination's items wait before they are looked at again.
const BUSY_WAIT: Duration = Duration::from_millis(500);

/// The running executor.
#[derive(Debug)]
pub struct ActionsHandle {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ActionsHandle {
    /// Stops taking items, waits for sends in flight up to the configured grace period, and
    /// returns. What it abandons is sent again after the next start.
    pub fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("the actions thread panicked");
        }
    }
}

/// Starts delivering the outbox of `store` on a thread of its own.
pub fn spawn(store: &Store, config: ActionsConfig) -> Result<ActionsHandle, ActionsError> {
    crate::install_crypto();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ActionsError::Thread)?;
    let senders = {
        let _entered = runtime.enter();
        Arc::new(Senders {
            email: EmailSender::new(&config.email, &config.data_dir)?,
            sms: SmsSender::new(&config.sms, &config.data_dir)?,
            http: HttpSender::new(&config.http)?,
        })
    };
    let lanes: Vec<Arc<Lane>> = Channel::ALL
        .into_iter()
        .map(|channel| {
            let (limits, timeout, per_destination) = match channel {
                Channel::Email => (
                    config.email.limits,
                    config.email.timeout,
                    config.email.limits.concurrency,
                ),
                Channel::Sms => (
                    config.sms.limits,
                    config.sms.timeout,
                    config.sms.limits.concurrency,
                ),
                Channel::Http => (
                    config.http.limits,
                    config.http.timeout,
                    config.http.per_host,
                ),
            };
            let concurrency = limits.concurrency.max(1);
            Arc::new(Lane {
                channel,
                state: store.engine_state().clone(),
                senders: senders.clone(),
                policy: config.retry.clone(),
                limits,
                per_destination: per_destination.clamp(1, concurrency),
                // A send that takes longer than this is taken for lost (and tried again).
                lease: timeout * 2 + Duration::from_secs(30),
                slots: Arc::new(Semaphore::new(concurrency)),
                concurrency,
                destinations: Mutex::new(HashMap::new()),
            })
        })
        .collect();
    let (stop, stopped) = watch::channel(false);
    let grace = config.shutdown_grace;
    let thread = std::thread::Builder::new()
        .name("gancho-actions".to_owned())
        .spawn(move || runtime.block_on(run(lanes, stopped, grace)))
        .map_err(ActionsError::Thread)?;
    Ok(ActionsHandle {
        stop,
        thread: Some(thread),
    })
}

async fn run(lanes: Vec<Arc<Lane>>, mut stop: watch::Receiver<bool>, grace: Duration) {
    let loops: Vec<_> = lanes
        .iter()
        .map(|lane| tokio::spawn(lane.clone().run(stop.clone())))
        .collect();
    info!("delivering actions");
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    for handle in loops {
        let _ = handle.await;
    }
    // The sends in flight hold the lanes' slots: all slots back means all sends done.
    let drained = tokio::time::timeout(grace, async {
        for lane in &lanes {
            let _ = lane.slots.acquire_many(lane.concurrency as u32).await;
        }
    })
    .await;
    if drained.is_err() {
        let abandoned: usize = lanes
            .iter()
            .map(|l| l.concurrency - l.slots.available_permits())
            .sum();
        warn!(
            abandoned,
            "stopped with sends in flight; they are sent again after the next start"
        );
    } else {
        info!("stopped delivering actions");
    }
}

#[derive(Debug)]
struct Senders {
    email: EmailSender,
    sms: SmsSender,
    http: HttpSender,
}

impl Senders {
    fn destination(&self, request: &ActionRequest) -> String {
        match &request.action {
            Action::Email(_) => self.email.destination().to_owned(),
            Action::Sms(_) => self.sms.destination().to_owned(),
            Action::Http(http) => HttpSender::destination(http),
        }
    }

    async fn send(&self, request: &ActionRequest) -> Result<String, Failure> {
        // Checked when the rule decided it; checked again here, as the store is not trusted.
        request
            .action
            .validate()
            .map_err(|err| Failure::permanent(err.to_string()))?;
        match &request.action {
            Action::Email(email) => self.email.send(request, email).await,
            Action::Sms(sms) => self.sms.send(request, sms).await,
            Action::Http(http) => self.http.send(request, http).await,
        }
    }
}

/// What the lane knows of one destination.
#[derive(Debug, Default)]
struct Destination {
    in_flight: usize,
    /// Transient failures in a row.
    failures: u32,
    /// No new sends before this.
    closed_until: Option<Instant>,
}

#[derive(Debug)]
struct Lane {
    channel: Channel,
    state: EngineState,
    senders: Arc<Senders>,
    policy: RetryPolicy,
    limits: ChannelLimits,
    per_destination: usize,
    lease: Duration,
    slots: Arc<Semaphore>,
    concurrency: usize,
    destinations: Mutex<HashMap<String, Destination>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Lane {
    async fn run(self: Arc<Lane>, mut stop: watch::Receiver<bool>) {
        let mut durable = self.state.durable_watch();
        // New items are read after this key; retries come through the store's retry index.
        let mut after: Option<Vec<u8>> = None;
        let mut next_start = Instant::now();
        let interval = (self.limits.rate_per_sec > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / self.limits.rate_per_sec));
        'lanes: loop {
            if *stop.borrow() {
                break;
            }
            let items = match self.next_items(after.as_deref()) {
                Ok(items) => items,
                Err(err) => {
                    error!(channel = %self.channel, error = %err, "reading the outbox");
                    Vec::new()
                }
            };
            if items.is_empty() {
                let wait = match self.state.next_action_due(self.channel) {
                    Ok(Some(due)) => Duration::from_millis(
                        u64::try_from((due - now_ms()).clamp(0, 1000)).unwrap_or(1000),
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
            for item in items {
                if item.delivery.is_none() {
                    after = Some(item.key.clone());
                }
                let permit = tokio::select! {
                    permit = self.slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break 'lanes,
                    },
                    _ = stop.changed() => break 'lanes,
                };
                if let Some(interval) = interval {
                    let start = next_start.max(Instant::now());
                    next_start = start + interval;
                    tokio::select! {
                        _ = tokio::time::sleep_until(start.into()) => {}
                        _ = stop.changed() => break 'lanes,
                    }
                }
                self.dispatch(item, permit);
            }
        }
        debug!(channel = %self.channel, "lane stopped");
    }

    /// Retries that are due, then new items.
    fn next_items(
        &self,
        after: Option<&[u8]>,
    ) -> Result<Vec<OutboxItem>, gancho_store::StoreError> {
        let mut items = self.state.due_actions(self.channel, now_ms(), BATCH)?;
        if items.len() < BATCH {
            items.extend(
                self.state
                    .fresh_actions(self.channel, after, BATCH - items.len())?,
            );
        }
        Ok(items)
    }

    fn destinations(&self) -> std::sync::MutexGuard<'_, HashMap<String, Destination>> {
        self.destinations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the item in a task of its own, or defers it when its destination is busy or
    /// failing.
    fn dispatch(self: &Arc<Lane>, mut item: OutboxItem, permit: OwnedSemaphorePermit) {
        let destination = self.senders.destination(&item.action);
        let now = Instant::now();
        let refused = {
            let mut destinations = self.destinations();
            let d = destinations.entry(destination.clone()).or_default();
            match d.closed_until {
                Some(until) if until > now => Some(until - now),
                _ if d.in_flight >= self.per_destination => Some(BUSY_WAIT),
                _ => {
                    d.in_flight += 1;
                    None
                }
            }
        };
        if let Some(wait) = refused {
            let wait = wait.mul_f64(1.0 + 0.2 * fastrand::f64());
            self.defer(&item, wait);
            return;
        }
        if let Some(delivery) = &item.delivery {
            // A retry stays in the retry index while it is sent, due again only if this
            // process dies before it records the outcome.
            let mut leased = delivery.clone();
            leased.next_ms = now_ms().saturating_add(millis(self.lease));
            match self.state.action_rescheduled(&item, &leased) {
                Ok(()) => item.delivery = Some(leased),
                Err(err) => {
                    error!(id = %item.action.id, error = %err, "recording a send");
                    self.release(&destination, None);
                    return;
                }
            }
        }
        let lane = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = lane.senders.send(&item.action).await;
            lane.record(&destination, item, result, started.elapsed());
            drop(permit);
        });
    }

    /// Puts an item aside for `wait` without counting a try.
    fn defer(&self, item: &OutboxItem, wait: Duration) {
        let now = now_ms();
        let mut delivery = item.delivery.clone().unwrap_or(Delivery {
            first_ms: now,
            next_ms: now,
            attempts: Vec::new(),
        });
        delivery.next_ms = now.saturating_add(millis(wait));
        if let Err(err) = self.state.action_rescheduled(item, &delivery) {
            error!(id = %item.action.id, error = %err, "deferring an action");
        }
    }

    fn release(&self, destination: &str, failure: Option<&Failure>) {
        let mut destinations = self.destinations();
        let Some(d) = destinations.get_mut(destination) else {
            return;
        };
        d.in_flight = d.in_flight.saturating_sub(1);
        match failure {
            None => {
                d.failures = 0;
                d.closed_until = None;
            }
            Some(f) if f.permanent => {}
            Some(f) => {
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
    }

    /// Records the outcome of a send: delivered, to be retried, or dead.
    fn record(
        &self,
        destination: &str,
        item: OutboxItem,
        result: Result<String, Failure>,
        took: Duration,
    ) {
        let action = &item.action;
        let recorded = match &result {
            Ok(receipt) => {
                debug!(
                    id = %action.id,
                    rule = %action.rule,
                    channel = %self.channel,
                    took_ms = took.as_millis() as u64,
                    receipt,
                    "delivered"
                );
                self.state.action_delivered(&item)
            }
            Err(failure) => self.failed(&item, failure),
        };
        if let Err(err) = recorded {
            error!(id = %action.id, error = %err, "recording a delivery outcome");
        }
        self.release(destination, result.as_ref().err());
    }

    fn failed(&self, item: &OutboxItem, failure: &Failure) -> Result<(), gancho_store::StoreError> {
        let action = &item.action;
        let now = now_ms();
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
        let too_old = self
            .policy
            .max_age
            .is_some_and(|age| now.saturating_sub(delivery.first_ms) >= millis(age));
        if failure.permanent || tries >= self.policy.max_attempts || too_old {
            let why = if failure.permanent {
                "refused for good"
            } else if too_old {
                "failing for too long"
            } else {
                "too many failed tries"
            };
            error!(
                id = %action.id,
                rule = %action.rule,
                channel = %self.channel,
                tries,
                error = %failure,
                "{why}: moved to dead letters (`gancho dead`)"
            );
            return self.state.action_dead(item, delivery.attempts, now);
        }
        let wait = self
            .policy
            .delay(tries, failure.retry_after, fastrand::f64());
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
        self.state.action_rescheduled(item, &delivery)
    }
}
