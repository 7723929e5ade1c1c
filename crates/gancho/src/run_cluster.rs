//! `gancho run` with `[cluster]`: a node of a cluster on NATS JetStream (issue 17,
//! `docs/cluster.md`). Once the servers pass the checks (`cluster.rs`), the node creates the
//! cluster's buckets and streams if no node did yet, answers webhooks by publishing their events
//! to their partitions' streams (200 once every one is acknowledged), and runs the partitions its
//! membership gives it (`gancho_node::run_node`) on a runtime of its own. The data folder keeps
//! this node's quarantine (`store/`), its partitions' stores (`cluster/p<N>/`) and the global
//! lane's when it runs it (`cluster/global/`).
//!
//! With an `[admin]` token, the admin listener serves the probes, `/metrics` (with the
//! cluster's series) and `/admin/cluster` (`admin/cluster.rs`). The control socket answers the
//! outbox's, dead letters', deliveries', timers', state's and poisoned runs' commands from the
//! partitions this node runs (`control/cluster.rs`). Not yet in cluster mode: the commands
//! that name events by seq or change rules, the admin API's single-node routes and the
//! dashboard; SIGHUP reloads the rules only (other config changes need a restart).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use gancho_cluster::{ClusterConfig, ClusterPublisher, NatsAuth};
use gancho_engine::{EngineConfig, Placement, SourcePlacement};
use gancho_ingress::{IngressServer, Readiness};
use gancho_node::{NodeConfig, NodeStatus, OwnerConfig, RunningStores, SnapshotPolicy, run_node};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::data::Data;
use crate::run::{create_private_dir, notify};

/// Runs this node until SIGTERM or SIGINT, then hands its partitions over and stops.
pub fn run(
    config: Config,
    cluster: ClusterConfig,
    clock: Arc<dyn gancho_core::Clock>,
) -> anyhow::Result<()> {
    let metrics = crate::metrics::install_for(&config.admin)?;
    // NATS's own runtime: the partitions' appliers block on it, and the HTTP server's is
    // single-threaded.
    let nats = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gancho-nats")
        .enable_all()
        .build()
        .context("starting the NATS runtime")?;
    let token = match &cluster.auth {
        NatsAuth::Token(secret) => secret.expose().map(str::to_owned),
        _ => None,
    };
    let (client, js) = nats
        .block_on(async {
            let client = gancho_cluster::connect(&cluster, token.as_deref()).await?;
            let js = jetstream::new(client.clone());
            gancho_cluster::fix_partitions(&js, cluster.partitions).await?;
            gancho_cluster::create_streams(&js, cluster.partitions).await?;
            Ok::<_, gancho_cluster::ClusterError>((client, js))
        })
        .context("preparing the cluster's streams")?;
    create_private_dir(&config.data_dir)?;
    let store_dir = config.store_dir();
    let data = Data::open(&store_dir, &config.store)
        .with_context(|| format!("opening the node's store at {}", store_dir.display()))?;

    let (stop_node, stop) = watch::channel(false);
    let (reload_node, reload) = watch::channel(0u64);
    let (status_tx, status) = watch::channel(NodeStatus::default());
    let lanes = RunningStores::default();
    let node = NodeConfig {
        node: cluster.node.clone(),
        partitions: cluster.partitions,
        lease: cluster.lease,
        dir: config.data_dir.join("cluster"),
        owner: OwnerConfig {
            store: config.store.clone(),
            engine: EngineConfig {
                placement: Some(placement(&config, cluster.partitions)),
                ..config.engine()
            },
            actions: cluster_budgets(&config.actions, cluster.partitions),
            snapshots: SnapshotPolicy::default(),
            retention: crate::prune::PartitionPrune::policy(&config, clock.clone()),
        },
    };
    let (node_ended, membership_ended) = tokio::sync::oneshot::channel::<()>();
    let node_task = {
        let (js, clock, lanes) = (js.clone(), clock.clone(), lanes.clone());
        nats.spawn(async move {
            let result = run_node(&js, node, clock, stop, reload, status_tx, lanes).await;
            let _ = node_ended.send(());
            result
        })
    };
    let partition_keys: HashMap<String, String> = config
        .ingress
        .sources
        .iter()
        .filter_map(|s| {
            s.partition
                .as_ref()
                .map(|p| (s.name.clone(), p.key.clone()))
        })
        .collect();
    // The context spawns onto the runtime it is made in.
    let publisher = {
        let client = client.clone();
        nats.block_on(async move {
            Arc::new(ClusterPublisher::new(
                gancho_cluster::ingress_context(client),
                cluster.partitions,
                partition_keys,
            ))
        })
    };
    let node_status = status.clone();
    let readiness: Readiness = Arc::new(move || {
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err("NATS is not reachable".to_owned());
        }
        if !status.borrow().connected {
            return Err("the cluster membership's last tick failed".to_owned());
        }
        Ok(())
    });
    let admin = metrics.map(|metrics| {
        (
            metrics,
            crate::admin::ClusterSources {
                readiness: readiness.clone(),
                js: js.clone(),
                nats: nats.handle().clone(),
                node: cluster.node.clone(),
                status: node_status,
            },
        )
    });
    let served = gancho_ingress::block_on(serve(
        &config,
        &cluster,
        data.clone(),
        clock,
        Serving {
            readiness,
            publisher,
            membership_ended,
            admin,
            reload: reload_node,
            lanes,
        },
    ));
    // The partitions are handed over (each one's last batch committed, its sends finished),
    // whether serving ended well or not.
    let _ = stop_node.send(true);
    let handed = nats.block_on(node_task);
    let stored = data.shutdown().context("flushing the node's store");
    served?;
    handed
        .context("the cluster membership's task")?
        .context("the cluster membership")?;
    stored?;
    info!("stopped cleanly");
    Ok(())
}

/// What the node's HTTP side is served with.
struct Serving {
    readiness: Readiness,
    publisher: Arc<ClusterPublisher>,
    /// Fires when the membership's task ends.
    membership_ended: tokio::sync::oneshot::Receiver<()>,
    /// Counts SIGHUPs: the node reloads its partitions' rules at each.
    reload: watch::Sender<u64>,
    /// The partitions this node runs, for the control socket.
    lanes: RunningStores,
    /// The metrics handle and what the admin listener reads, with an `[admin]` token.
    admin: Option<(
        metrics_exporter_prometheus::PrometheusHandle,
        crate::admin::ClusterSources,
    )>,
}

async fn serve(
    config: &Config,
    cluster: &ClusterConfig,
    data: Data,
    clock: Arc<dyn gancho_core::Clock>,
    serving: Serving,
) -> anyhow::Result<()> {
    let Serving {
        readiness,
        publisher,
        mut membership_ended,
        admin,
        reload,
        lanes,
    } = serving;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    // The node's own store holds what its ingress refused (quarantine): pruned as a single
    // node's is. The partitions' stores are pruned by their owners.
    let prune_task = tokio::spawn(crate::prune::every_hour(
        data.clone(),
        crate::prune::Retention::of(config),
        clock.clone(),
    ));
    let control = crate::control::socket::ControlSocket::bind(&config.socket_path())?;
    let control_task = tokio::spawn(control.serve_cluster(data.clone(), lanes));
    let server = IngressServer::start_publishing(
        listener,
        config.ingress.clone(),
        data.store.clone(),
        clock,
        readiness,
        Some(publisher),
    )
    .context("starting the HTTP server")?;
    let admin = match admin {
        Some((metrics, sources)) => {
            let listener = std::net::TcpListener::bind(config.admin.listen)
                .with_context(|| format!("binding [admin] listen {}", config.admin.listen))?;
            crate::admin::start_cluster(listener, &config.admin, metrics, sources)
                .context("starting the admin listener")?
        }
        None => {
            info!("no [admin] token: the admin listener (metrics, cluster status) does not start");
            None
        }
    };
    let admin = crate::admin::RunningAdmin::spawn(admin);
    info!(
        listen = %server.local_addr(),
        admin = %admin.addr(),
        node = %cluster.node,
        partitions = cluster.partitions,
        data_dir = %config.data_dir.display(),
        rules_dir = %config.rules_dir.display(),
        "gancho is ready (cluster node)"
    );
    notify(&[sd_notify::NotifyState::Ready]);
    let watchdog_task =
        sd_notify::watchdog_enabled().map(|interval| tokio::spawn(crate::run::watchdog(interval)));
    let handle = server.handle();
    let mut served = std::pin::pin!(server.wait());
    let mut membership_failed = false;
    let stopped_early = loop {
        tokio::select! {
            result = &mut served => break Some(result),
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break None }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break None }
            _ = sighup.recv() => {
                // Only the rules: a cluster node applies other config changes at a restart.
                info!("SIGHUP: reading the rules folder again in every partition this node runs (other config changes need a restart in cluster mode)");
                reload.send_modify(|n| *n += 1);
            }
            _ = &mut membership_ended => {
                // It could not join the cluster (or stopped by itself): serving on would answer
                // webhooks that no partition of this node runs; the unit starts it again.
                tracing::error!("the cluster membership stopped: stopping");
                membership_failed = true;
                break None;
            }
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    let result = match stopped_early {
        Some(result) => result,
        None => {
            let ((), result) = tokio::join!(handle.stop(), served);
            result
        }
    };
    if let Some(task) = watchdog_task {
        task.abort();
    }
    prune_task.abort();
    control_task.abort();
    // The control socket's file goes with the task that owned it.
    let _ = control_task.await;
    admin.stop().await;
    result.context("serving HTTP")?;
    if membership_failed {
        anyhow::bail!("the cluster membership stopped");
    }
    Ok(())
}

/// Where the cluster places each source's events, for the partitions' engines (each sets its
/// own partition).
fn placement(config: &Config, partitions: u16) -> Placement {
    Placement {
        partition: 0,
        partitions,
        sources: config
            .ingress
            .sources
            .iter()
            .filter_map(|s| {
                let spec = s.partition.as_ref()?;
                Some((
                    s.name.clone(),
                    SourcePlacement {
                        key: spec.key.clone(),
                        colocated: spec.colocated.iter().cloned().collect(),
                    },
                ))
            })
            .collect(),
    }
}

/// The actions' settings of one partition's executor: each channel's rate limit
/// (`rate_per_second`) is the cluster's budget, split evenly over the partitions and the global
/// lane, each of which runs an executor of its own on whichever node owns it. Their sends
/// together never exceed the budget, whatever the nodes; a partition cannot borrow what others
/// leave unused. Concurrency stays per executor.
fn cluster_budgets(
    actions: &gancho_actions::ActionsConfig,
    partitions: u16,
) -> gancho_actions::ActionsConfig {
    let lanes = f64::from(partitions) + 1.0;
    let mut split = actions.clone();
    for limits in [
        &mut split.email.limits,
        &mut split.sms.limits,
        &mut split.http.limits,
    ] {
        limits.rate_per_sec /= lanes;
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channels_rate_is_split_over_the_partitions_and_the_global_lane() {
        let mut actions = gancho_actions::ActionsConfig::local("/tmp/unused");
        actions.sms.limits.rate_per_sec = 17.0;
        actions.http.limits.rate_per_sec = 0.0;
        let split = cluster_budgets(&actions, 16);
        assert_eq!(split.sms.limits.rate_per_sec, 1.0);
        // No limit stays no limit; concurrency is not split.
        assert_eq!(split.http.limits.rate_per_sec, 0.0);
        assert_eq!(split.sms.limits.concurrency, actions.sms.limits.concurrency);
        assert_eq!(split.email.limits, actions.email.limits);
    }
}
