//! `--cluster-publish`'s phases with the real binary (issue 17's figures): gancho nodes in
//! cluster mode, started from the release build on the three-server JetStream cluster of the
//! run.
//! - ingest: one node, no rules; single events, then grouped requests, over HTTP
//!   (`load::run`), against the ceiling measured in the same run;
//! - rule processing: `--events` events published to the 16 partitions first, then one node,
//!   or three, started with a partitioned rule; the time until every partition's committed
//!   cursor reaches its stream's end (read from NATS as `gancho cluster status` reads it);
//! - takeover: with the three nodes running, kill -9 the one that owns most partitions; the
//!   time until each of them is leased by another node, and until its claim is in the journal.
//!
//! Every node listens on 127.0.0.1 and stops with the run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use gancho_testkit::nats::NatsCluster;

use crate::daemon::Gancho;
use crate::load::{self, LoadSpec, Target};

/// Partitions of the measured clusters: the default.
const PARTITIONS: u16 = 16;
/// The lease of the measured clusters (the takeover time follows it).
const LEASE: &str = "2s";

pub struct NodesBench {
    pub gancho: PathBuf,
    pub connections: usize,
    pub group: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Events published before the rule-processing phases.
    pub events: usize,
}

/// One ingest phase's figures.
pub struct IngestRow {
    pub name: &'static str,
    pub events_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// The nodes of a run, by name.
pub type Nodes = Vec<(String, Gancho)>;

/// A node's config on `cluster`, in `dir`, with `rules`.
fn node_config(cluster: &NatsCluster, dir: &Path, rules: &Path, node: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nrules_dir = {:?}\n[store]\nretention = \"0\"\n\
         [sources.mailjet]\nkind = \"mailjet\"\n\
         basic_auth = {{ user = \"{}\", password = \"{}\" }}\n\
         [cluster]\n{}node = \"{node}\"\npartitions = {PARTITIONS}\nlease = \"{LEASE}\"\n",
        dir.join("data").display().to_string(),
        rules.display().to_string(),
        load::USER,
        load::PASSWORD,
        cluster.cluster_keys(),
    )
}

fn start_node(
    bench: &NodesBench,
    cluster: &NatsCluster,
    root: &Path,
    rules: &Path,
    node: &str,
) -> anyhow::Result<Gancho> {
    let dir = root.join(node);
    std::fs::create_dir_all(&dir)?;
    Gancho::start_with(
        &bench.gancho,
        &dir,
        &node_config(cluster, &dir, rules, node),
    )
}

/// Ingest over HTTP through one node: (single, grouped) events/s and p99 ms.
pub fn ingest(
    bench: &NodesBench,
    cluster: &NatsCluster,
    root: &Path,
) -> anyhow::Result<Vec<IngestRow>> {
    let rules = root.join("no-rules");
    std::fs::create_dir_all(&rules)?;
    let node = start_node(bench, cluster, root, &rules, "ingest")?;
    // Let the membership take its partitions (a node answers webhooks from the start, but the
    // measure should not include the partitions' start).
    std::thread::sleep(Duration::from_secs(3));
    let mut rows = Vec::new();
    for group in [1, bench.group] {
        let report = load::run(
            &Target::gancho(node.addr),
            &LoadSpec {
                connections: bench.connections,
                duration: bench.duration,
                warmup: bench.warmup,
                group,
            },
        )?;
        let name = if group == 1 {
            "gancho node over HTTP, single events"
        } else {
            "gancho node over HTTP, grouped"
        };
        eprintln!("{name}: {:.0} events/s", report.events_per_sec());
        rows.push(IngestRow {
            name,
            events_per_sec: report.events_per_sec(),
            p50_ms: report.percentile_ms(50.0),
            p99_ms: report.percentile_ms(99.0),
            errors: report.errors,
        });
    }
    node.terminate()?;
    Ok(rows)
}

/// A runtime and a JetStream client of `cluster`, for the bench's own reads and writes.
fn client(cluster: &NatsCluster) -> anyhow::Result<(tokio::runtime::Runtime, jetstream::Context)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let js = runtime.block_on(async {
        let config: gancho_cluster::ClusterConfig = toml::from_str(&format!(
            "{}node = \"bench\"\npartitions = {PARTITIONS}\n",
            cluster.cluster_keys()
        ))?;
        anyhow::Ok(jetstream::new(
            gancho_cluster::connect(&config, None).await?,
        ))
    })?;
    Ok((runtime, js))
}

/// The partitions' committed cursors and stream ends, and owners, as NATS holds them.
async fn cursors(
    js: &jetstream::Context,
) -> anyhow::Result<BTreeMap<u16, (u64, u64, Option<String>, u64)>> {
    let status = gancho_cluster::cluster_status(js).await?;
    Ok(status
        .partition_status
        .into_iter()
        .map(|p| (p.partition, (p.cursor, p.last_event, p.owner, p.commits)))
        .collect())
}

/// Rule processing with `nodes` nodes over `bench.events` events published beforehand, on a
/// cluster of its own; returns events/s, and the nodes still running (for the takeover).
pub fn processing(
    bench: &NodesBench,
    nodes: usize,
    root: &Path,
) -> anyhow::Result<(f64, NatsCluster, Nodes)> {
    let cluster = NatsCluster::start(3).context("nats-server is not installed")?;
    let (runtime, js) = client(&cluster)?;
    runtime.block_on(async {
        gancho_cluster::fix_partitions(&js, PARTITIONS).await?;
        gancho_cluster::create_streams(&js, PARTITIONS).await?;
        // Grouped publishes of 500: the phase measures processing, not this.
        let mut n = 0u64;
        while (n as usize) < bench.events {
            let events: Vec<_> = (0..500).map(|i| crate::cluster::event(n + i)).collect();
            gancho_cluster::publish_events(&js, &events, |e| {
                gancho_cluster::partition_for(e, "email", PARTITIONS)
            })
            .await?;
            n += 500;
        }
        anyhow::Ok(())
    })?;
    let rules = root.join(format!("rules-{nodes}"));
    std::fs::create_dir_all(&rules)?;
    // A partitioned rule: a window query by the partition key, and a state write per open.
    std::fs::write(
        rules.join("opens.rhai"),
        "const ON = [\"mailjet.open\"];\n\
         let seen = count(\"mailjet.open\", #{ email: event.email }, hours(24));\n\
         set_state(`opens:${event.email}`, seen);\n",
    )?;
    let start = Instant::now();
    let mut running = Vec::new();
    for i in 0..nodes {
        let name = format!("p{nodes}n{i}");
        running.push((
            name.clone(),
            start_node(bench, &cluster, root, &rules, &name)?,
        ));
    }
    let deadline = start + Duration::from_secs(600);
    loop {
        let caught_up = runtime.block_on(cursors(&js))?;
        let (done, total): (u64, u64) = caught_up
            .values()
            .fold((0, 0), |(d, t), (cursor, last, _, _)| {
                (d + cursor, t + last)
            });
        if done >= total && total as usize >= bench.events {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not caught up: {done} of {total}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let seconds = start.elapsed().as_secs_f64();
    let rate = bench.events as f64 / seconds;
    eprintln!(
        "rule processing with {nodes} node(s): {} events in {seconds:.1} s, {rate:.0} events/s",
        bench.events
    );
    Ok((rate, cluster, running))
}

/// Kills the node owning most partitions; returns (partitions it owned, time until each was
/// leased elsewhere, time until each had a new claim in its journal).
pub fn takeover(
    cluster: &NatsCluster,
    mut running: Nodes,
) -> anyhow::Result<(usize, Duration, Duration)> {
    let (runtime, js) = client(cluster)?;
    let before = runtime.block_on(cursors(&js))?;
    let mut owned: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for (p, (_, _, owner, _)) in &before {
        if let Some(owner) = owner {
            owned.entry(owner.clone()).or_default().push(*p);
        }
    }
    let (victim, partitions) = owned
        .into_iter()
        .max_by_key(|(_, ps)| ps.len())
        .context("no partition has an owner")?;
    let at = running
        .iter()
        .position(|(name, _)| *name == victim)
        .context("the owner is not one of the bench's nodes")?;
    let (_, node) = running.remove(at);
    let killed = Instant::now();
    node.kill()?;
    let (mut leased, mut claimed) = (None, None);
    while claimed.is_none() {
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(60), "not taken over");
        let now = runtime.block_on(cursors(&js))?;
        let moved = |claim: bool| {
            partitions.iter().all(|p| {
                now.get(p).is_some_and(|(_, _, owner, commits)| {
                    owner.as_deref().is_some_and(|o| o != victim)
                        && (!claim || *commits > before.get(p).map_or(0, |b| b.3))
                })
            })
        };
        if leased.is_none() && moved(false) {
            leased = Some(killed.elapsed());
        }
        if moved(true) {
            claimed = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // How long each partition's start took on the nodes that took them (their log).
    std::thread::sleep(Duration::from_millis(500));
    for (name, node) in &running {
        let log = node.config.with_file_name("gancho.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("took_ms")) {
            eprintln!("{name}: {line}");
        }
    }
    for (_, node) in running {
        node.terminate()?;
    }
    Ok((
        partitions.len(),
        leased.unwrap_or_default(),
        claimed.unwrap_or_default(),
    ))
}
