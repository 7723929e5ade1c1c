//! `--cluster-publish`'s phases with the real binary (issue 17's figures): gancho nodes in
//! cluster mode, started from the release build on the three-server JetStream cluster of the
//! run.
//! - ingest: one node, no rules; single events, then grouped requests, over HTTP
//!   (`load::run`), against the ceiling measured in the same run;
//! - rule processing: one node, or three, started with a partitioned rule on empty streams;
//!   once their ownership has settled they are all stopped (SIGSTOP), `--events` events are
//!   published to the 16 partitions, and they are let go at once (SIGCONT); the figure is the
//!   time until every partition's committed cursor reaches its stream's end (read from NATS as
//!   `gancho cluster status` reads it), so it holds no joining or handing over;
//! - takeover: three nodes with a 2 s lease, on a cluster of their own; kill -9 the one that
//!   owns most partitions; the time until each of them is leased by another node, and until its
//!   claim is in the journal.
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

/// The lease of the takeover's cluster (the takeover time follows it).
const LEASE: &str = "2s";
/// The lease of the processing phases' clusters: longer than the nodes stay stopped while the
/// events are published, so that no lease runs out meanwhile.
const PROCESSING_LEASE: &str = "120s";

pub struct NodesBench {
    pub gancho: PathBuf,
    pub connections: usize,
    pub group: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Events published before the rule-processing phases.
    pub events: usize,
    pub partitions: u16,
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
fn node_config(
    cluster: &NatsCluster,
    dir: &Path,
    rules: &Path,
    node: &str,
    lease: &str,
    partitions: u16,
) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nrules_dir = {:?}\n[store]\nretention = \"0\"\n\
         [sources.mailjet]\nkind = \"mailjet\"\n\
         basic_auth = {{ user = \"{}\", password = \"{}\" }}\n\
         [cluster]\n{}node = \"{node}\"\npartitions = {partitions}\nlease = \"{lease}\"\n",
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
    lease: &str,
) -> anyhow::Result<Gancho> {
    let dir = root.join(node);
    std::fs::create_dir_all(&dir)?;
    Gancho::start_with(
        &bench.gancho,
        &dir,
        &node_config(cluster, &dir, rules, node, lease, bench.partitions),
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
    let node = start_node(bench, cluster, root, &rules, "ingest", LEASE)?;
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
fn client(
    cluster: &NatsCluster,
    partitions: u16,
) -> anyhow::Result<(tokio::runtime::Runtime, jetstream::Context)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let js = runtime.block_on(async {
        let config: gancho_cluster::ClusterConfig = toml::from_str(&format!(
            "{}node = \"bench\"\npartitions = {partitions}\n",
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

/// Publishes `count` bench events, numbered from `first`, in groups of 500, from 16 tasks at
/// once (the phases that call it measure what comes after, not this; and the processing
/// phases' nodes stay stopped meanwhile, which should stay under the 30 s after which the
/// server drops their idle consumers).
async fn publish(
    js: &jetstream::Context,
    first: u64,
    count: usize,
    partitions: u16,
) -> anyhow::Result<()> {
    const TASKS: u64 = 16;
    let end = first + count as u64;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(first));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (js, next) = (js.clone(), std::sync::Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(500, std::sync::atomic::Ordering::Relaxed);
                if n >= end {
                    return anyhow::Ok(());
                }
                let events: Vec<_> = (n..(n + 500).min(end)).map(crate::cluster::event).collect();
                gancho_cluster::publish_events(&js, &events, |e| {
                    gancho_cluster::partition_for(e, "email", partitions)
                })
                .await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// A partitioned rule: a window query by the partition key, and a state write per open.
const OPENS_RULE: &str = "const ON = [\"mailjet.open\"];\n\
     let seen = count(\"mailjet.open\", #{ email: event.email }, hours(24));\n\
     set_state(`opens:${event.email}`, seen);\n";

/// A fresh three-server cluster with the partitions' streams, and `nodes` nodes started on it
/// with the partitioned rule; returns once every partition has had the same owner for 3 s and
/// every node owns some (the nodes join one after another, and the first ones hand partitions
/// over to the later ones).
fn settled_nodes(
    bench: &NodesBench,
    nodes: usize,
    root: &Path,
    name: &str,
    lease: &str,
) -> anyhow::Result<(
    NatsCluster,
    tokio::runtime::Runtime,
    jetstream::Context,
    Nodes,
)> {
    let cluster = NatsCluster::start(3).context("nats-server is not installed")?;
    let (runtime, js) = client(&cluster, bench.partitions)?;
    runtime.block_on(async {
        gancho_cluster::fix_partitions(&js, bench.partitions).await?;
        gancho_cluster::create_streams(&js, bench.partitions).await?;
        anyhow::Ok(())
    })?;
    let rules = root.join(format!("rules-{name}"));
    std::fs::create_dir_all(&rules)?;
    std::fs::write(rules.join("opens.rhai"), OPENS_RULE)?;
    let mut running = Vec::new();
    for i in 0..nodes {
        let node = format!("{name}n{i}");
        running.push((
            node.clone(),
            start_node(bench, &cluster, root, &rules, &node, lease)?,
        ));
    }
    let start = Instant::now();
    let (mut last, mut since) = (BTreeMap::new(), Instant::now());
    loop {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "ownership did not settle: {last:?}"
        );
        let owners: BTreeMap<u16, Option<String>> = runtime
            .block_on(cursors(&js))?
            .into_iter()
            .map(|(p, (_, _, owner, _))| (p, owner))
            .collect();
        let distinct: std::collections::BTreeSet<_> = owners.values().flatten().collect();
        let complete = owners.values().all(Option::is_some) && distinct.len() == nodes;
        if owners != last || !complete {
            (last, since) = (owners, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "{nodes} node(s) settled after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok((cluster, runtime, js, running))
}

/// The CPU time (user and system, clock ticks) and the ticks of every kind the machine has
/// spent so far (`/proc/stat`'s first line): how busy its cores were between two readings.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let total: u64 = ticks.iter().take(8).sum();
    Ok((total - idle, total))
}

/// One processing phase's figures.
pub struct ProcessingRow {
    pub events_per_sec: f64,
    /// How busy the machine's cores were during the catch-up (0-100 %).
    pub machine_busy: f64,
    /// The nodes' share of the machine's CPU time meanwhile (the rest: the servers, the bench).
    pub nodes_share: f64,
}

/// Rule processing with `nodes` nodes whose ownership has settled: they are stopped, the
/// events published, and they are let go at once; the time until every partition's committed
/// cursor reaches its stream's end.
pub fn processing(bench: &NodesBench, nodes: usize, root: &Path) -> anyhow::Result<ProcessingRow> {
    let name = format!("p{nodes}");
    let (cluster, runtime, js, running) =
        settled_nodes(bench, nodes, root, &name, PROCESSING_LEASE)?;
    for (_, node) in &running {
        node.signal("STOP")?;
    }
    let published = Instant::now();
    runtime.block_on(publish(&js, 0, bench.events, bench.partitions))?;
    eprintln!(
        "published {} events in {:.1} s",
        bench.events,
        published.elapsed().as_secs_f64()
    );
    let node_ticks = |running: &Nodes| -> anyhow::Result<u64> {
        running.iter().map(|(_, node)| node.cpu_ticks()).sum()
    };
    let (nodes_before, (busy_before, total_before)) = (node_ticks(&running)?, machine_ticks()?);
    let start = Instant::now();
    for (_, node) in &running {
        node.signal("CONT")?;
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
        std::thread::sleep(Duration::from_millis(50));
    }
    let seconds = start.elapsed().as_secs_f64();
    let (nodes_after, (busy_after, total_after)) = (node_ticks(&running)?, machine_ticks()?);
    let spent = (total_after - total_before).max(1) as f64;
    let row = ProcessingRow {
        events_per_sec: bench.events as f64 / seconds,
        machine_busy: 100.0 * (busy_after - busy_before) as f64 / spent,
        nodes_share: 100.0 * (nodes_after - nodes_before) as f64 / spent,
    };
    eprintln!(
        "rule processing with {nodes} node(s): {} events in {seconds:.1} s, {:.0} events/s \
         (cores {:.0} % busy, the nodes {:.0} % of them)",
        bench.events, row.events_per_sec, row.machine_busy, row.nodes_share
    );
    for (_, node) in running {
        node.terminate()?;
    }
    drop(cluster);
    Ok(row)
}

/// Kills the node owning most partitions; returns (partitions it owned, time until each was
/// leased elsewhere, time until each had a new claim in its journal).
pub fn takeover(bench: &NodesBench, root: &Path) -> anyhow::Result<(usize, Duration, Duration)> {
    let (_cluster, runtime, js, mut running) = settled_nodes(bench, 3, root, "t", LEASE)?;
    // Some history in each partition, as a running cluster has.
    runtime.block_on(publish(&js, 0, bench.events.min(20_000), bench.partitions))?;
    std::thread::sleep(Duration::from_secs(1));
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
