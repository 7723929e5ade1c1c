//! `gancho-bench`: measures gancho's ingest path on this machine.
//!
//! It starts the real `gancho` binary (the release build beside this one) on a temp data
//! folder, and a do-nothing actix-web endpoint in this process that parses the same JSON and
//! answers 200: the ceiling any durable webhook server could reach here. A load generator with
//! hand-written HTTP/1.1 keep-alive connections (so the client costs as little CPU as possible)
//! posts realistic, all-distinct Mailjet events to both, single events and grouped arrays, and
//! reports events/s and latency percentiles. A micro-benchmark then splits one event's cost into
//! parsing, adapting (keys, hashing), and storing (sled apply, flush, fdatasync).
//!
//! It is a measuring tool, not part of the product: it must not be linked into the daemon.

mod actions;
mod cluster;
mod cluster_nodes;
mod daemon;
mod engine;
mod load;
mod metrics_cost;
mod micro;
mod prune;
mod rss;
mod signed_cost;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::daemon::{Gancho, mb, store_sizes};
use crate::load::{LoadReport, LoadSpec, Target};

/// The daemon's allocator, so in-process measurements (engine, micro-benchmarks) match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Load generator and micro-benchmarks for gancho's ingest path")]
struct Args {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long each load phase measures, after its warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before each phase, not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Events per grouped request.
    #[arg(long, default_value_t = 100)]
    group: usize,
    /// Single events posted to the fresh daemon before the measured phases, not counted (then
    /// the bench waits for the indexer): a running daemon's store is not new, and a new one is
    /// slower for its first seconds (its files grow, so each `fdatasync` also commits file
    /// system metadata). `0s` measures it cold.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    prime: Duration,
    /// The gancho binary; default: `gancho` beside this binary.
    #[arg(long)]
    gancho: Option<PathBuf>,
    /// Turn the store's fdatasync off (crash-safe only) to measure what it costs.
    #[arg(long)]
    no_fsync: bool,
    /// The daemon's `[store] cache_mb`; default: its own default.
    #[arg(long)]
    cache_mb: Option<u64>,
    /// Load phases: the daemon runs the rules of `--rules` (by default it runs none, so the
    /// phases measure ingest alone).
    #[arg(long)]
    with_rules: bool,
    /// Skip the load phases, run the micro-benchmark only.
    #[arg(long)]
    micro_only: bool,
    /// Skip the micro-benchmark.
    #[arg(long)]
    load_only: bool,
    /// Load an already running gancho at this address (source `mailjet` with the bench's
    /// credentials) with grouped requests only when `--group` > 1, else single events; for
    /// profiling it from outside.
    #[arg(long)]
    attach: Option<SocketAddr>,
    /// Measure the rule engine instead: throughput over a store of `--events` events with the
    /// rules of `--rules`, and the cost of a window query.
    #[arg(long)]
    engine: bool,
    /// Events in the engine benchmark's store (and published before `--cluster-publish`'s
    /// rule-processing phases).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// The shipped rules, for the engine benchmark.
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// Keep the engine benchmark's event store in this folder, and reuse it when it is there
    /// (built with the same `--events`), to compare engine changes without rebuilding it.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Engine benchmark: measure only the shipped rules (no 100-rule run, no window queries).
    #[arg(long)]
    shipped_only: bool,
    /// Print what the databases of a stopped store folder hold (live bytes by key prefix, and
    /// what LZ4 would make of the index blocks) against their size on disk, and exit.
    #[arg(long)]
    store_stats: Option<PathBuf>,
    /// Measure ingest while retention deletes: single events alone, then while `gancho
    /// prune` runs, after priming with `--prime` of grouped events older than the retention.
    #[arg(long)]
    prune: bool,
    /// Measure cluster mode's publishing instead (issue 17): on a three-server JetStream
    /// cluster it starts on loopback (`nats-server` in PATH), a plain JetStream publisher's
    /// ceiling, then gancho's `publish_events` with single and grouped requests, in the same run
    #[arg(long)]
    cluster_publish: bool,
    /// `--cluster-publish`'s partitions per cluster (cluster mode's default is 16).
    #[arg(long, default_value_t = 16)]
    partitions: u16,
    /// `--cluster-publish`'s phases to run: `ingest`, `processing`, `takeover`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,processing,takeover"
    )]
    cluster_phases: Vec<String>,
    /// Measure the actions instead: delivery throughput to a local HTTP receiver and SMTP
    /// server, and webhook-to-HTTP-action latency through the daemon at `--rate`.
    #[arg(long)]
    actions: bool,
    /// Events per second posted in the actions latency phase.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// HTTP actions delivered in each throughput phase.
    #[arg(long, default_value_t = 20_000)]
    http_actions: usize,
    /// E-mail actions delivered in each throughput phase.
    #[arg(long, default_value_t = 5_000)]
    email_actions: usize,
    /// Measure what the Prometheus metrics cost the ingest path: single events to a daemon
    /// without an admin listener (no metrics recorder) and to one with it (scraped every
    /// second), in alternating phases of `--duration`, `--rounds` each.
    #[arg(long)]
    metrics_cost: bool,
    /// Phases per daemon in `--metrics-cost`.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `--metrics-cost` with metrics off in both daemons: the difference the setup itself
    /// makes (an A/A test), to read the real figure against.
    #[arg(long)]
    control: bool,
    /// Measure what a signature check costs ingest: single events to a basic-auth source and
    /// to a Standard Webhooks one of the same daemon, in alternating phases, `--rounds` each.
    #[arg(long)]
    signed_cost: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "# gancho-bench: {} connections, {:?} per phase after {:?} warm-up, fsync {}",
        args.connections,
        args.duration,
        args.warmup,
        if args.no_fsync { "off" } else { "on" }
    );
    if let Some(dir) = &args.store_stats {
        return store_stats(dir);
    }
    if args.engine {
        return engine::run(&engine::EngineBench {
            events: args.events,
            cache_mb: args.cache_mb,
            rules: args.rules.clone(),
            store: args.store.clone(),
            shipped_only: args.shipped_only,
            fsync: !args.no_fsync,
        });
    }
    if args.actions {
        return actions::run(&actions::ActionsBench {
            http_actions: args.http_actions,
            email_actions: args.email_actions,
            rate: args.rate,
            duration: args.duration,
            warmup: args.warmup,
            connections: args.connections,
            fsync: !args.no_fsync,
            gancho: gancho_bin(&args)?,
        });
    }
    if args.cluster_publish {
        return cluster::run(&cluster::ClusterBench {
            connections: args.connections,
            group: args.group,
            duration: args.duration,
            warmup: args.warmup,
            gancho: gancho_bin(&args).ok(),
            events: args.events,
            partitions: args.partitions,
            phases: args.cluster_phases.clone(),
        });
    }
    if args.prune {
        return prune::run(&args);
    }
    if args.metrics_cost {
        return metrics_cost::run(&args);
    }
    if args.signed_cost {
        return signed_cost::run(&args);
    }
    if let Some(addr) = args.attach {
        let spec = LoadSpec {
            connections: args.connections,
            duration: args.duration,
            warmup: args.warmup,
            group: args.group,
        };
        // Events distinct from those an earlier run posted (the bench numbers them from 0):
        // numbered from the clock, a million a second since the run before, more than any
        // run posts (at 10,000 a second, a grouped run followed by another within its
        // duration posted the same ids again). The numbering starts over every 100,000 s.
        let now = gancho_core::Clock::now(&gancho_core::SystemClock);
        let seconds = u64::try_from(now.timestamp()).unwrap_or(0) % 100_000;
        load::number_events_from(seconds * 1_000_000);
        let r = load::run(&Target::gancho(addr), &spec)?;
        println!(
            "{addr}: {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
            r.events_per_sec(),
            r.percentile_ms(50.0),
            r.percentile_ms(99.0),
            r.errors
        );
        return Ok(());
    }
    if !args.micro_only {
        run_load(&args)?;
    }
    if !args.load_only {
        micro::run(!args.no_fsync)?;
    }
    Ok(())
}

fn run_load(args: &Args) -> anyhow::Result<()> {
    let ceiling = load::start_ceiling()?;
    let dir = tempfile::tempdir()?;
    let gancho = Gancho::start(args, dir.path())?;
    // What a daemon holds once it is up, before any request.
    std::thread::sleep(Duration::from_secs(2));
    let at_start = gancho.memory()?;
    println!("gancho RSS after start: {:.1} MB", mb(at_start.rss_kb));
    let spec = |group: usize| LoadSpec {
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        group,
    };
    let mut primed_events = 0;
    if !args.prime.is_zero() {
        let primed = load::run(
            &Target::gancho(gancho.addr),
            &LoadSpec {
                duration: args.prime,
                warmup: Duration::ZERO,
                ..spec(1)
            },
        )?;
        primed_events = primed.events_total;
        gancho.wait_indexed(Duration::from_secs(300))?;
        let memory = gancho.memory()?;
        println!(
            "primed gancho with {} single events over {} ({:.0} events/s); RSS {:.1} MB, peak {:.1} MB",
            primed.events_total,
            humantime::format_duration(args.prime),
            primed.events_per_sec(),
            mb(memory.rss_kb),
            mb(memory.peak_kb)
        );
    }
    let mut lags = Vec::new();
    let ceiling_single = load::run(&Target::ceiling(ceiling), &spec(1))?;
    let gancho_single = load::run(&Target::gancho(gancho.addr), &spec(1))?;
    lags.push(("single events", gancho.status()?));
    let memory_single = gancho.memory()?;
    let ceiling_grouped = load::run(&Target::ceiling(ceiling), &spec(args.group))?;
    let gancho_grouped = load::run(&Target::gancho(gancho.addr), &spec(args.group))?;
    lags.push(("grouped", gancho.status()?));
    let memory_grouped = gancho.memory()?;
    let catch_up = gancho.wait_indexed(Duration::from_secs(300))?;
    let memory_end = gancho.memory()?;
    let sizes = store_sizes(&dir.path().join("data").join("store"));
    let rows: Vec<(&str, LoadReport)> = vec![
        (
            "ceiling: do-nothing actix-web, single events",
            ceiling_single,
        ),
        ("gancho, single events", gancho_single),
        ("ceiling: do-nothing actix-web, grouped", ceiling_grouped),
        ("gancho, grouped", gancho_grouped),
    ];
    let stored = gancho.stop()?;
    let acknowledged: u64 = rows
        .iter()
        .filter(|(name, _)| name.starts_with("gancho"))
        .map(|(_, r)| r.events_total)
        .chain([primed_events])
        .sum();
    println!();
    println!(
        "| phase | events/request | requests/s | events/s | p50 ms | p90 ms | p99 ms | max ms | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, r) in &rows {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.group,
            r.requests_per_sec(),
            r.events_per_sec(),
            r.percentile_ms(50.0),
            r.percentile_ms(90.0),
            r.percentile_ms(99.0),
            r.percentile_ms(100.0),
            r.errors
        );
    }
    let single_ratio = rows[1].1.events_per_sec() / rows[0].1.events_per_sec();
    println!();
    println!(
        "gancho single events reach {:.0}% of the ceiling measured in the same run",
        single_ratio * 100.0
    );
    println!(
        "events acknowledged by gancho (warm-up included): {acknowledged}; events in its store after the run: {stored}"
    );
    for (phase, memory) in [
        ("single events", memory_single),
        ("grouped", memory_grouped),
        ("catch-up", memory_end),
    ] {
        println!(
            "gancho RSS at the end of the {phase} phase: {:.1} MB (peak so far {:.1} MB)",
            mb(memory.rss_kb),
            mb(memory.peak_kb)
        );
    }
    println!(
        "store on disk after the run: {}",
        sizes
            .iter()
            .map(|(name, bytes)| format!("{name} {:.1} MB", *bytes as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (phase, (durable, indexed)) in &lags {
        println!(
            "index lag at the end of the {phase} phase: {} events (durable {durable}, indexed {indexed})",
            durable - indexed
        );
    }
    match catch_up {
        Some((events, took)) => println!(
            "with the load stopped, the indexer caught up {events} events in {:.1} s: {:.0} events/s",
            took.as_secs_f64(),
            events as f64 / took.as_secs_f64().max(1e-9)
        ),
        None => println!("the indexer did not catch up within 300 s"),
    }
    if stored < acknowledged {
        bail!("gancho stored fewer events than it acknowledged");
    }
    Ok(())
}

/// The gancho binary: `--gancho`, or the one beside this binary.
fn gancho_bin(args: &Args) -> anyhow::Result<PathBuf> {
    let bin = match &args.gancho {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no folder for the bench binary")?
            .join("gancho"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p gancho`",
            bin.display()
        );
    }
    Ok(bin)
}

impl Gancho {
    fn start(args: &Args, dir: &Path) -> anyhow::Result<Gancho> {
        Gancho::start_extra(args, dir, "")
    }

    /// [`Gancho::start`] with `extra` appended to its config (sections after the sources).
    fn start_extra(args: &Args, dir: &Path, extra: &str) -> anyhow::Result<Gancho> {
        // No rules: the phases measure ingest (POST to durable event, indexing beside it); the
        // engine and the actions have benchmarks of their own.
        let rules = dir.join("rules");
        std::fs::create_dir_all(&rules)?;
        let rules = match args.with_rules {
            true => std::fs::canonicalize(&args.rules)?,
            false => rules,
        };
        let cache = match args.cache_mb {
            Some(mb) => format!("cache_mb = {mb}\n"),
            None => String::new(),
        };
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nrules_dir = {:?}\n[store]\nretention = \"0\"\nfsync = {}\n{cache}\
             [sources.mailjet]\nkind = \"mailjet\"\n\
             basic_auth = {{ user = \"{}\", password = \"{}\" }}\n{extra}\n",
            dir.join("data").display().to_string(),
            rules.display().to_string(),
            !args.no_fsync,
            load::USER,
            load::PASSWORD,
        );
        Gancho::start_with(&gancho_bin(args)?, dir, &config)
    }
}

/// Live bytes by first key byte in each database of a store folder, beside its size on disk;
/// for the index database also its run files (`indexes/runs/`, live whole).
fn store_stats(dir: &Path) -> anyhow::Result<()> {
    use gancho_store::kv::Db;
    for (name, tree) in [
        ("log", "events"),
        ("indexes", "index"),
        ("engine", "engine"),
    ] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let db = Db::open(&path, 16 << 20)?;
        let tree = db.tree(tree)?;
        let mut by_prefix: std::collections::BTreeMap<u8, (u64, u64)> = Default::default();
        for entry in tree.iter() {
            let (key, value) = entry?;
            let slot = by_prefix
                .entry(key.first().copied().unwrap_or(0))
                .or_default();
            slot.0 += 1;
            slot.1 += (key.len() + value.len()) as u64;
        }
        let (mut files, mut file_bytes) = (0u64, 0u64);
        // The index's run files, and the log's segment files (its larger blocks).
        for folder in ["runs", "segments"] {
            if let Ok(found) = std::fs::read_dir(path.join(folder)) {
                for file in found.flatten() {
                    files += 1;
                    file_bytes += file.metadata().map_or(0, |m| m.len());
                }
            }
        }
        let live = by_prefix.values().map(|(_, bytes)| bytes).sum::<u64>() + file_bytes;
        let on_disk = store_sizes(dir)
            .into_iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, bytes)| bytes);
        println!(
            "{name}: {:.1} MB on disk, {:.1} MB live ({:.0} % garbage)",
            on_disk as f64 / 1e6,
            live as f64 / 1e6,
            100.0 * (1.0 - live as f64 / on_disk.max(1) as f64)
        );
        for (prefix, (keys, bytes)) in by_prefix {
            println!(
                "  {}: {keys} keys, {:.1} MB",
                char::from(prefix),
                bytes as f64 / 1e6
            );
        }
        if files > 0 {
            println!("  files: {files}, {:.1} MB", file_bytes as f64 / 1e6);
        }
        if name == "indexes" {
            drop(tree);
            drop(db);
            let s = gancho_store::index_stats(&path)?;
            let per = |bytes: u64| bytes as f64 / s.entries.max(1) as f64;
            println!(
                "  {} entries in {} runs: blocks {:.1} MB, {:.1} bytes an entry (index format 4's blocks would take {:.1} MB, {:.1} bytes an entry)",
                s.entries,
                s.runs,
                s.block_bytes as f64 / 1e6,
                per(s.block_bytes),
                s.format_4_block_bytes as f64 / 1e6,
                per(s.format_4_block_bytes)
            );
        }
    }
    Ok(())
}
