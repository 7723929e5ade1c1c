//! The executor: the actions thread (a single-threaded tokio runtime: sends are I/O, and the
//! store calls between them take microseconds), one lane per channel (`lane.rs`), the task that
//! writes recorded outcomes out in small groups, and the stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gancho_core::{Channel, Clock};
use gancho_state::Outbox;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{error, info, warn};

use crate::ActionsConfig;
use crate::channel::Deliver;
use crate::email::EmailSender;
use crate::failure::ActionsError;
use crate::http::HttpSender;
use crate::lane::{Held, Lane, MAX_BACKLOG, MAX_HELD};
use crate::sms::SmsSender;

/// The running executor.
#[derive(Debug)]
pub struct ActionsHandle {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ActionsHandle {
    /// Dropped without [`ActionsHandle::stop`] (the daemon failed to start): the lanes stop
    /// and the thread ends on its own.
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
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

/// Starts delivering `outbox` on a thread of its own; `clock` stamps tries and decides what is
/// due.
pub fn spawn(
    outbox: &Outbox,
    clock: Arc<dyn Clock>,
    config: ActionsConfig,
) -> Result<ActionsHandle, ActionsError> {
    crate::install_crypto();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ActionsError::Thread)?;
    let recorded = Arc::new(AtomicBool::new(false));
    let lanes: Vec<Arc<Lane>> = Channel::ALL
        .into_iter()
        .map(|channel| {
            let deliverer = {
                let _entered = runtime.enter();
                deliverer(channel, &config)?
            };
            let settings = deliverer.settings();
            let (limits, send_timeout) = (settings.limits, settings.send_timeout);
            let concurrency = limits.concurrency.max(1);
            Ok(Arc::new(Lane {
                channel,
                state: outbox.clone(),
                clock: clock.clone(),
                deliverer,
                policy: config.retry.clone(),
                per_destination: settings.per_destination.clamp(1, concurrency),
                // A held retry comes due again after this only if the process died holding it.
                lease: send_timeout
                    .saturating_mul(2)
                    .saturating_add(Duration::from_secs(30)),
                send_timeout,
                interval: (limits.rate_per_sec > 0.0)
                    .then(|| Duration::try_from_secs_f64(1.0 / limits.rate_per_sec).ok())
                    .flatten(),
                slots: Arc::new(Semaphore::new(concurrency)),
                concurrency,
                max_backlog: match settings.single_destination {
                    true => MAX_HELD,
                    false => MAX_BACKLOG,
                },
                held: Mutex::new(Held::default()),
                room: Notify::new(),
                next_start: Mutex::new(Instant::now()),
                stopping: AtomicBool::new(false),
                recorded: recorded.clone(),
                metrics: crate::lane::LaneMetrics::new(channel),
            }))
        })
        .collect::<Result<_, ActionsError>>()?;
    let (stop, stopped) = watch::channel(false);
    let grace = config.shutdown_grace;
    let thread = std::thread::Builder::new()
        .name("gancho-actions".to_owned())
        .spawn({
            let outbox = outbox.clone();
            move || runtime.block_on(run(lanes, outbox, recorded, stopped, grace))
        })
        .map_err(ActionsError::Thread)?;
    Ok(ActionsHandle {
        stop,
        thread: Some(thread),
    })
}

/// How often recorded outcomes are written to the file, at most: a `kill -9` repeats the
/// deliveries recorded in the last this-long (and those in flight), not the last 500 ms of
/// sled's own background flush.
const OUTCOME_FLUSH: Duration = Duration::from_millis(20);

/// Flushes the outbox's recorded outcomes in small groups until `stop`.
async fn flush_outcomes(
    outbox: Outbox,
    recorded: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    // The runtime's liveness: this task comes back every few ms unless a task blocks the
    // runtime's thread (or the flush hangs), which the watchdog then sees.
    let heartbeat = gancho_core::heartbeat::Heartbeat::register("actions");
    loop {
        let _working = heartbeat.working();
        tokio::select! {
            _ = tokio::time::sleep(OUTCOME_FLUSH) => {}
            _ = stop.changed() => return,
        }
        if recorded.swap(false, Ordering::AcqRel) {
            let outbox = outbox.clone();
            match tokio::task::spawn_blocking(move || outbox.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => error!(error = %err, "flushing delivery outcomes"),
                Err(err) => error!(error = %err, "flushing delivery outcomes"),
            }
        }
    }
}

async fn run(
    lanes: Vec<Arc<Lane>>,
    outbox: Outbox,
    recorded: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let flusher = tokio::spawn(flush_outcomes(outbox.clone(), recorded, stop.clone()));
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
    for lane in &lanes {
        // Queued items not yet sending are left for the next start.
        lane.stopping.store(true, Ordering::Release);
    }
    for handle in loops {
        let _ = handle.await;
    }
    // A send holds a slot: all slots back means no send in flight (items still waiting for
    // a slot see `stopping` and leave).
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
    flusher.abort();
    if let Err(err) = outbox.flush() {
        error!(error = %err, "flushing delivery outcomes");
    }
}

/// The type that delivers a channel's actions, from its config section: the one place the
/// executor tells channels apart.
fn deliverer(channel: Channel, config: &ActionsConfig) -> Result<Arc<dyn Deliver>, ActionsError> {
    Ok(match channel {
        Channel::Email => Arc::new(EmailSender::new(&config.email, &config.data_dir)?),
        Channel::Sms => Arc::new(SmsSender::new(&config.sms, &config.data_dir)?),
        Channel::Http => Arc::new(HttpSender::new(&config.http)?),
    })
}
