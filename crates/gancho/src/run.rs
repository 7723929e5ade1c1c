//! `gancho run`: the daemon's life from start to a clean stop.
//!
//! Start: open the store (it holds the data folder's lock), start the rule engine and the
//! actions executor, bind the control socket, bind the HTTP port, serve. SIGHUP reloads the
//! rules folder at once (it is also read every second) and what of the config can change
//! without a restart (`reload.rs`). Stop on SIGTERM or SIGINT, from the front: stop accepting and
//! answer the requests in flight, let the engine commit its batch, let the sends in flight
//! finish (up to the grace period), then let the store make every accepted event durable, then
//! exit 0.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::Context as _;
use gancho_ingress::IngressServer;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::control::socket::ControlSocket;
use crate::data::Data;

/// Runs the daemon until it is told to stop. `clock` is the wall clock, except in tests of the
/// binary (`GANCHO_TEST_CLOCK`).
/// `config_path` is where the config was read from (`None`: the embedded defaults), read again
/// on SIGHUP.
pub fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    clock: Arc<dyn gancho_core::Clock>,
) -> anyhow::Result<()> {
    gancho_ingress::block_on(serve(config, config_path, clock))
}

async fn serve(
    mut config: Config,
    config_path: Option<std::path::PathBuf>,
    clock: Arc<dyn gancho_core::Clock>,
) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let metrics = crate::metrics::install_for(&config.admin)?;
    create_private_dir(&config.data_dir)?;
    let store_dir = config.store_dir();
    let data = Data::open(&store_dir, &config.store)
        .with_context(|| format!("opening the store at {}", store_dir.display()))?;
    let store = data.store.clone();
    // The engine loads the rules before the port opens: a broken rule is reported at start
    // (and keeps being reported in `gancho rules`), but does not stop the daemon.
    let engine = gancho_engine::spawn(
        store.clone(),
        data.state.clone(),
        clock.clone(),
        config.engine(),
    )
    .context("starting the rule engine")?;
    // Actions decided before a restart (and not delivered) go out from here on.
    // `None` only after a reload whose executor could not start: the daemon then stops.
    let mut actions = Some(
        gancho_actions::spawn(&data.state.outbox(), clock.clone(), config.actions.clone())
            .context("starting the actions executor")?,
    );
    let mut failed_reload: Option<anyhow::Error> = None;
    let control = ControlSocket::bind(&config.socket_path())?;
    let control_task = tokio::spawn(control.serve(data.clone(), engine.shared_status()));
    let mut prune_task = tokio::spawn(crate::prune::every_hour(
        data.clone(),
        crate::prune::Retention::of(&config),
        clock.clone(),
    ));

    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    let readiness = crate::ready::readiness(
        data.clone(),
        engine.shared_status(),
        config.admin.ready_max_lag,
    );
    let server = IngressServer::start(
        listener,
        config.ingress.clone(),
        store.clone(),
        clock.clone(),
        readiness,
    )
    .context("starting the HTTP server")?;
    let sources = server.sources();
    // The operators' listener, when the config gives it a token.
    let admin = match metrics {
        Some(metrics) => {
            let listener = std::net::TcpListener::bind(config.admin.listen)
                .with_context(|| format!("binding [admin] listen {}", config.admin.listen))?;
            crate::admin::AdminServer::start(
                listener,
                &config.admin,
                data.clone(),
                config.store_dir(),
                engine.shared_status(),
                metrics,
                config
                    .ingress
                    .sources
                    .iter()
                    .map(|s| s.name.clone())
                    .collect(),
            )
            .context("starting the admin listener")?
        }
        None => {
            info!("no [admin] token: the admin listener (API, metrics) does not start");
            None
        }
    };
    let admin = crate::admin::RunningAdmin::spawn(admin);
    info!(
        listen = %server.local_addr(),
        admin = %admin.addr(),
        data_dir = %config.data_dir.display(),
        rules_dir = %config.rules_dir.display(),
        sources = config.ingress.sources.len(),
        fsync = config.store.fsync,
        "gancho is ready"
    );
    // Under systemd (`Type=notify`): the unit is started once events can be received.
    notify(&[sd_notify::NotifyState::Ready]);
    let watchdog_task =
        sd_notify::watchdog_enabled().map(|interval| tokio::spawn(watchdog(interval)));
    let handle = server.handle();
    let mut served = std::pin::pin!(server.wait());
    let mut store_failed = std::pin::pin!(watch_store(data.clone()));
    let stopped_early = loop {
        tokio::select! {
            result = &mut served => break Some(result),
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break None }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break None }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the rules and the config");
                engine.reload();
                let Some(new) = read_again(config_path.as_deref()) else { continue };
                let need_restart = crate::reload::needs_restart(&config, &new);
                let rotated = sources.rotate(&new.ingress.sources);
                // Only when they changed: a rule deploy's SIGHUP leaves sends undisturbed.
                let changed = crate::reload::actions_changed(&config.actions, &new.actions);
                if changed && let Some(running) = actions.take() {
                    let retention = crate::prune::Retention::of(&config);
                    match restart_actions(running, &data, &clock, &mut config, new.actions.clone()).await {
                        Ok(restarted) => actions = Some(restarted),
                        // No executor: stop in order, for systemd to start the daemon again.
                        Err(err) => {
                            failed_reload = Some(err);
                            break None;
                        }
                    }
                    // [retry]'s dead_retention and sent_retention are the prune's.
                    if crate::prune::Retention::of(&config) != retention {
                        prune_task.abort();
                        prune_task = tokio::spawn(crate::prune::every_hour(
                            data.clone(),
                            crate::prune::Retention::of(&config),
                            clock.clone(),
                        ));
                    }
                }
                info!(
                    credentials_changed = %rotated.changed.join(", "),
                    actions_restarted = changed,
                    "SIGHUP: config reloaded: [email], [sms], [http], [retry] and the sources' credentials"
                );
                if !rotated.need_restart.is_empty() || !need_restart.is_empty() {
                    let mut keys: Vec<String> = need_restart.iter().map(|k| (*k).to_owned()).collect();
                    keys.extend(rotated.need_restart.iter().map(|name| format!("[sources.{name}]")));
                    warn!(
                        keys = %keys.join(", "),
                        "SIGHUP: these changed and need a restart; they keep their running values until then"
                    );
                }
            }
            reason = &mut store_failed => {
                error!(%reason, "the store failed: stopping so the service restarts");
                // Tests hold the stop here (`sleep`) to see what a client sees meanwhile.
                gancho_core::fail_point!("run.store_failed");
                break None
            }
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    let served_result = match stopped_early {
        Some(result) => result,
        None => {
            // The server's own future carries out the stop, so both must be polled together.
            let ((), result) = tokio::join!(handle.stop(), served);
            result
        }
    };
    admin.stop().await;
    control_task.abort();
    // A prune under way finishes on its blocking thread; none starts after this.
    prune_task.abort();
    // The control socket's file goes with the task that owned it.
    let _ = control_task.await;
    // The engine commits its batch in progress and stops before the store closes (it appends
    // timer firings and cron ticks).
    tokio::task::spawn_blocking(move || engine.stop())
        .await
        .context("stopping the engine")?;
    // Sends in flight get the grace period; what is abandoned goes out after the next start.
    if let Some(actions) = actions {
        tokio::task::spawn_blocking(move || actions.stop())
            .await
            .context("stopping the actions executor")?;
    }
    let stored = data.shutdown().context("flushing the store");
    // The pings go on through the stop: a slow one (sends in flight, the store's flush) is not
    // a stuck daemon.
    if let Some(task) = watchdog_task {
        task.abort();
    }
    if let Err(err) = &served_result {
        warn!(error = %err, "the HTTP server stopped with an error");
    }
    stored?;
    served_result.context("serving HTTP")?;
    if let Some(reason) = data.failure() {
        anyhow::bail!("the store failed: {reason}");
    }
    if let Some(err) = failed_reload {
        return Err(err.context("a SIGHUP left no actions executor"));
    }
    info!("stopped cleanly");
    Ok(())
}

/// The config file read and checked again; `None` (and the error logged) if it is invalid, so
/// the running config stays whole.
fn read_again(path: Option<&std::path::Path>) -> Option<Config> {
    match crate::config::load(path) {
        Ok(config) => Some(config),
        Err(err) => {
            error!(error = %err, "SIGHUP: the new config is refused whole; the running one stays");
            None
        }
    }
}

/// Stops the actions executor (sends in flight finish, up to the grace period) and starts one
/// on `new`; the outbox is durable, so what waits in it goes out from the new one. If the new
/// one cannot start, the old config is started again; if that fails too, the daemon stops
/// (and systemd restarts it).
async fn restart_actions(
    actions: gancho_actions::ActionsHandle,
    data: &Data,
    clock: &Arc<dyn gancho_core::Clock>,
    config: &mut Config,
    new: gancho_actions::ActionsConfig,
) -> anyhow::Result<gancho_actions::ActionsHandle> {
    tokio::task::spawn_blocking(move || actions.stop())
        .await
        .context("stopping the actions executor")?;
    let outbox = data.state.outbox();
    match gancho_actions::spawn(&outbox, clock.clone(), new.clone()) {
        Ok(actions) => {
            config.actions = new;
            Ok(actions)
        }
        Err(err) => {
            error!(error = %err, "SIGHUP: the actions cannot start on the new config; the running one stays");
            gancho_actions::spawn(&outbox, clock.clone(), config.actions.clone())
                .context("starting the actions executor again")
        }
    }
}

/// Tells the service manager, if there is one (`NOTIFY_SOCKET`), how the daemon is doing.
pub(crate) fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(state) {
        warn!(error = %err, "could not notify the service manager");
    }
}

/// Under systemd with `WatchdogSec=` (`WATCHDOG_USEC`): tells it `WATCHDOG=1` every half
/// interval while no thread is stuck, that is while each of the log's writer and flusher, the
/// indexer, the engine and the actions' runtime is idle or within half an interval of one piece
/// of work (`gancho_core::heartbeat`). A stuck thread stops the pings, and systemd restarts the
/// service. This task runs on the HTTP server's runtime, so a blocked runtime stops them too.
pub(crate) async fn watchdog(interval: std::time::Duration) {
    let half = interval / 2;
    info!(
        every_ms = half.as_millis() as u64,
        "watchdog: telling systemd we are alive"
    );
    let mut tick = tokio::time::interval(half);
    let mut was_stuck = false;
    loop {
        tick.tick().await;
        let stuck = gancho_core::heartbeat::stuck(half);
        if stuck.is_empty() {
            if was_stuck {
                info!("no thread is stuck any more: the watchdog pings resume");
            }
            was_stuck = false;
            notify(&[sd_notify::NotifyState::Watchdog]);
        } else if !was_stuck {
            let threads: Vec<String> = stuck
                .iter()
                .map(|(name, busy)| format!("{name} ({} s)", busy.as_secs()))
                .collect();
            error!(
                threads = %threads.join(", "),
                "a thread is stuck: the watchdog pings stop, so systemd restarts gancho"
            );
            was_stuck = true;
        }
    }
}

/// Resolves once the store reports a failure (it then refuses events): the daemon stops and
/// exits non-zero, and systemd restarts it on a store that keeps only what reached the disk.
async fn watch_store(data: Data) -> String {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        if let Some(reason) = data.failure() {
            return reason;
        }
    }
}

/// Creates the data folder readable by its owner only: it holds the events and the control
/// socket.
/// A data folder that exists already but is open to others is tightened to 0700 (with a
/// warning): it holds every event, the outbox and the control socket.
pub(crate) fn create_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    if !path.exists() {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    }
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o777 != 0o700 {
        if mode & 0o077 != 0 {
            warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the data folder was open to others: now 0700");
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    // Files left by an earlier start under a looser umask.
    restrict_tree(path, 4);
    Ok(())
}

/// Takes group and other permissions off what is under `dir` (`depth` levels down), best
/// effort: a file that cannot be changed is logged, never a reason not to start.
fn restrict_tree(dir: &std::path::Path, depth: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            let tight = std::fs::Permissions::from_mode(mode & 0o700);
            if let Err(err) = std::fs::set_permissions(&path, tight) {
                warn!(path = %path.display(), error = %err, "could not restrict a data file");
            }
        }
        if meta.is_dir() && depth > 0 {
            restrict_tree(&path, depth - 1);
        }
    }
}
