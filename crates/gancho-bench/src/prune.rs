//! `--prune`: ingest while retention deletes. The daemon is primed with grouped events whose
//! event times are long past the retention, then single events are measured twice: alone, and
//! while `gancho prune` runs again and again (the first deletes the primed events, the next
//! ones what the load posted meanwhile). The daemon itself keeps everything (`retention = "0"`):
//! the prunes come from a second config naming the same data folder with `retention = "30d"`,
//! so none runs outside the measured phase.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Args;
use crate::daemon::Gancho;
use crate::load::{self, LoadReport, LoadSpec, Target};

/// One `gancho prune`: how long it took and how many events it deleted.
struct Prune {
    took: Duration,
    events: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let gancho = Gancho::start(args, dir.path())?;
    let pruning = dir.path().join("prune.toml");
    let text = std::fs::read_to_string(&gancho.config)?;
    if !text.contains("retention = \"0\"") {
        bail!("the bench's config keeps no `retention = \"0\"` to change");
    }
    std::fs::write(
        &pruning,
        text.replace("retention = \"0\"", "retention = \"30d\""),
    )?;
    let spec = |group: usize, duration: Duration, warmup: Duration| LoadSpec {
        connections: args.connections,
        duration,
        warmup,
        group,
    };
    let primed = load::run(
        &Target::gancho(gancho.addr),
        &spec(args.group, args.prime, Duration::ZERO),
    )?;
    println!(
        "primed with {} events (grouped by {}) older than the retention",
        primed.events_total, args.group
    );
    gancho.wait_processed(Duration::from_secs(600))?;
    let alone = load::run(
        &Target::gancho(gancho.addr),
        &spec(1, args.duration, args.warmup),
    )?;
    gancho.wait_processed(Duration::from_secs(600))?;
    let memory_alone = gancho.memory()?;

    let stop = Arc::new(AtomicBool::new(false));
    let pruner = {
        let (bin, stop) = (gancho.bin.clone(), Arc::clone(&stop));
        std::thread::spawn(move || -> anyhow::Result<Vec<Prune>> {
            let mut prunes = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let started = Instant::now();
                let out = Command::new(&bin)
                    .arg("--config")
                    .arg(&pruning)
                    .args(["prune", "--json"])
                    .output()?;
                if !out.status.success() {
                    bail!("gancho prune: {}", String::from_utf8_lossy(&out.stderr));
                }
                let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                prunes.push(Prune {
                    took: started.elapsed(),
                    events: report["events"]
                        .as_u64()
                        .context("no events in the report")?,
                });
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(prunes)
        })
    };
    let during = load::run(
        &Target::gancho(gancho.addr),
        &spec(1, args.duration, args.warmup),
    )?;
    stop.store(true, Ordering::Release);
    let prunes = pruner
        .join()
        .map_err(|_| anyhow::anyhow!("the prune thread panicked"))??;
    let memory_during = gancho.memory()?;
    gancho.stop()?;

    println!();
    println!("| single events | events/s | p50 ms | p90 ms | p99 ms | max ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let row = |name: &str, r: &LoadReport| {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.events_per_sec(),
            r.percentile_ms(50.0),
            r.percentile_ms(90.0),
            r.percentile_ms(99.0),
            r.percentile_ms(100.0),
            r.errors
        )
    };
    row("alone", &alone);
    row("while pruning", &during);
    println!();
    println!(
        "the daemon after the phase alone: {memory_alone}; after the phase while pruning: {memory_during}"
    );
    let pruned: u64 = prunes.iter().map(|p| p.events).sum();
    let busy: Duration = prunes.iter().map(|p| p.took).sum();
    if let Some(first) = prunes.first() {
        println!(
            "{} prunes deleted {pruned} events; the first deleted {} in {:.2} s; pruning took {:.1} s of the {:.1} s phase",
            prunes.len(),
            first.events,
            first.took.as_secs_f64(),
            busy.as_secs_f64(),
            (args.duration + args.warmup).as_secs_f64()
        );
    }
    println!(
        "p99 while pruning / p99 alone: {:.2} (target: at most 2)",
        during.percentile_ms(99.0) / alone.percentile_ms(99.0).max(1e-9)
    );
    Ok(())
}
