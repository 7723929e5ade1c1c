//! `[cluster]` at the binary's edge: the checks a NATS deployment must pass, run by
//! `gancho cluster check` and at the start of `gancho run`.
//!
//! Once the servers pass, `gancho run` runs the node (`run_cluster.rs`); a deployment that
//! fails a check is refused (exit 78), an unreachable one exits 69 so the unit tries again.

use std::process::ExitCode;

use gancho_cluster::{ClusterConfig, ClusterError, ServerReport};

use crate::config::Config;

/// `EX_UNAVAILABLE`: NATS could not be reached; the unit's restart tries again.
const EXIT_UNAVAILABLE: u8 = 69;
/// `EX_CONFIG`: the servers or the config must change first; the unit does not restart.
const EXIT_CONFIG: u8 = 78;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// What the checks found: every server's report, and the partition count the cluster was
/// created with (`None`: not created yet).
struct Checked {
    reports: Vec<ServerReport>,
    recorded: Option<u16>,
}

/// Every server's report, the connection's check, and the partition count against the
/// cluster's (read only: nothing is created).
async fn check(config: &ClusterConfig) -> Result<Checked, ClusterError> {
    let reports = gancho_cluster::check_servers(config).await?;
    let token = match &config.auth {
        gancho_cluster::NatsAuth::Token(secret) => secret.expose(),
        _ => None,
    };
    let client = gancho_cluster::connect(config, token).await?;
    let js = async_nats::jetstream::new(client);
    let recorded = gancho_cluster::recorded_partitions(&js).await?;
    if let Some(recorded) = recorded
        && recorded != config.partitions
    {
        return Err(ClusterError::PartitionsChanged {
            configured: config.partitions,
            recorded,
        });
    }
    Ok(Checked { reports, recorded })
}

/// `gancho cluster check`: prints each server's version and JetStream settings, and whether
/// gancho can run on them.
pub fn check_command(config: &Config, json: bool) -> anyhow::Result<()> {
    let Some(cluster) = &config.cluster else {
        anyhow::bail!("the config has no [cluster] section: this node runs alone, without NATS");
    };
    let result = runtime()?.block_on(check(cluster));
    match (result, json) {
        (Ok(Checked { reports, recorded }), true) => {
            let servers: Vec<serde_json::Value> = reports
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name, "endpoint": r.endpoint, "version": r.version,
                        "jetstream": r.jetstream, "file_storage": r.file_storage,
                        "sync_always": r.sync_always,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "ok": true, "node": cluster.node, "servers": servers,
                    "partitions": cluster.partitions, "created_with_partitions": recorded,
                })
            );
            Ok(())
        }
        (Ok(Checked { reports, recorded }), false) => {
            println!("NAME\tVERSION\tJETSTREAM\tSYNC\tENDPOINT");
            for r in &reports {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    crate::text::shown(&r.name),
                    crate::text::shown(&r.version),
                    if r.file_storage { "file" } else { "no" },
                    if r.sync_always { "always" } else { "no" },
                    r.endpoint
                );
            }
            println!(
                "ok: {} server(s) meet gancho's needs (nats-server >= {}.{}.{}, JetStream on \
                 file storage, sync_interval always), and node {} connected",
                reports.len(),
                gancho_cluster::MIN_SERVER.0,
                gancho_cluster::MIN_SERVER.1,
                gancho_cluster::MIN_SERVER.2,
                cluster.node
            );
            match recorded {
                Some(n) => println!("the cluster was created with {n} partitions, as configured"),
                None => println!(
                    "the cluster is not created yet: the first node will create it with {} \
                     partitions",
                    cluster.partitions
                ),
            }
            Ok(())
        }
        (Err(err), _) => Err(anyhow::anyhow!("{err}")),
    }
}

/// `gancho cluster status`: the live nodes, and each partition's owner, cursor and lag, as
/// NATS holds them (read only).
pub fn status_command(config: &Config, json: bool) -> anyhow::Result<()> {
    let Some(cluster) = &config.cluster else {
        anyhow::bail!("the config has no [cluster] section: this node runs alone, without NATS");
    };
    let status = runtime()?.block_on(async {
        let token = match &cluster.auth {
            gancho_cluster::NatsAuth::Token(secret) => secret.expose(),
            _ => None,
        };
        let client = gancho_cluster::connect(cluster, token).await?;
        gancho_cluster::cluster_status(&async_nats::jetstream::new(client)).await
    });
    let status = status.map_err(|err| anyhow::anyhow!("{err}"))?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
        return Ok(());
    }
    let Some(partitions) = status.partitions else {
        println!("the cluster is not created yet: no node has started on these NATS servers");
        return Ok(());
    };
    println!(
        "cluster of {partitions} partitions; {} node(s) alive",
        status.nodes.len()
    );
    println!("NODE\tLAST HEARTBEAT");
    for node in &status.nodes {
        println!(
            "{}\t{}",
            crate::text::shown(&node.name),
            node.last_heartbeat
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
    }
    println!("PARTITION\tOWNER\tCURSOR\tLAST EVENT\tLAG\tCOMMITS\tLAST SNAPSHOT");
    for p in status.partition_status.iter().chain(&status.global) {
        let snapshot = p.last_snapshot.as_ref().map_or_else(
            || "-".to_owned(),
            |s| {
                let time = s.time.map_or_else(
                    || "?".to_owned(),
                    |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
                format!("{time} (commit {}, cursor {})", s.journal_seq, s.cursor)
            },
        );
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            gancho_cluster::lane_name(p.partition),
            p.owner
                .as_deref()
                .map_or(std::borrow::Cow::Borrowed("-"), crate::text::shown),
            p.cursor,
            p.last_event,
            p.lag,
            p.commits,
            snapshot
        );
    }
    Ok(())
}

/// `gancho run` with `[cluster]`: the checks, then the node (`run_cluster.rs`); the exit code.
pub fn run(
    config: Config,
    cluster: ClusterConfig,
    clock: std::sync::Arc<dyn gancho_core::Clock>,
) -> ExitCode {
    let result = match runtime() {
        Ok(runtime) => runtime.block_on(check(&cluster)),
        Err(err) => {
            eprintln!("gancho: cannot start the cluster checks: {err}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match result {
        // What the servers or the config must change first stops for good (78); anything else
        // (unreachable, a timeout, a leader election) may pass, so the unit tries again (69).
        Err(
            err @ (ClusterError::TooOld { .. }
            | ClusterError::NoJetStream { .. }
            | ClusterError::NoFileStorage { .. }
            | ClusterError::NotSyncAlways { .. }
            | ClusterError::PartitionsChanged { .. }
            | ClusterError::LeaseChanged { .. }
            | ClusterError::NotDurable { .. }
            | ClusterError::UncheckedServers { .. }),
        ) => {
            tracing::error!(error = %err, "cluster mode: refused");
            eprintln!("gancho: cluster mode refused: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) => {
            tracing::error!(error = %err, "cluster mode: NATS is not reachable");
            eprintln!("gancho: cluster mode: {err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Ok(Checked { reports, .. }) => {
            tracing::info!(
                servers = reports.len(),
                "cluster mode: the NATS servers pass gancho's checks"
            );
            match crate::run_cluster::run(config, cluster, clock) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = format!("{err:#}"), "gancho stopped with an error");
                    eprintln!("gancho: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
