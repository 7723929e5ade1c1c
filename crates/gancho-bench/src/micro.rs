//! Where one event's time goes on the ingest path, step by step, in this process.

use std::time::{Duration, Instant};

use gancho_core::{Clock as _, EventId, SystemClock};
use gancho_ingress::{SourceKind, TimePolicy, submission_from};
use gancho_store::{Store, StoreConfig, Submission};

use crate::load::body;

fn per_op(n: u64, elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e6 / n as f64
}

pub fn run(fsync: bool) -> anyhow::Result<()> {
    const N: u64 = 50_000;
    let bodies: Vec<String> = (0..N).map(|_| body(1)).collect();

    // For comparison: what building the whole payload as a tree would cost.
    let start = Instant::now();
    for b in &bodies {
        std::hint::black_box(serde_json::from_str::<serde_json::Value>(b)?);
    }
    let parse = per_op(N, start.elapsed());

    let start = Instant::now();
    for b in &bodies {
        std::hint::black_box(EventId::from_content(b));
    }
    let hash = per_op(N, start.elapsed());

    let now = SystemClock.now();
    let start = Instant::now();
    let mut submissions = Vec::with_capacity(bodies.len());
    for b in &bodies {
        submissions.push(submission_from(
            "mailjet",
            &SourceKind::Mailjet,
            &TimePolicy::default(),
            b,
            now,
        )?);
    }
    let adapt = per_op(N, start.elapsed());

    let start = Instant::now();
    for s in &submissions {
        for e in &s.events {
            std::hint::black_box(serde_json::to_vec(e)?);
        }
    }
    let encode = per_op(N, start.elapsed());

    // Applying in large groups: the store's per-event cost with flushes amortised away.
    let dir = tempfile::tempdir()?;
    let config = StoreConfig {
        fsync,
        cache_capacity: 256 * 1024 * 1024,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), &config)?;
    let appender = store.appender();
    let mut events = submissions.into_iter().flat_map(|s| s.events);
    let start = Instant::now();
    let mut applied = 0u64;
    loop {
        let group: Vec<_> = events.by_ref().take(1000).collect();
        if group.is_empty() {
            break;
        }
        applied += group.len() as u64;
        appender.append_blocking(Submission {
            events: group,
            rejected: vec![],
        })?;
    }
    let store_grouped = per_op(applied, start.elapsed());

    // One event per flush: what a group commit costs, whatever its size.
    const FLUSHES: u64 = 500;
    let start = Instant::now();
    for _ in 0..FLUSHES {
        let b = body(1);
        let sub = submission_from(
            "mailjet",
            &SourceKind::Mailjet,
            &TimePolicy::default(),
            &b,
            now,
        )?;
        appender.append_blocking(sub)?;
    }
    let one_per_flush = per_op(FLUSHES, start.elapsed());

    // The indexer alone: how fast the indexes catch up with a backlog, nothing else running.
    let backlog_start = store.status().indexed;
    let last = store.last_seq()?;
    let start = Instant::now();
    let caught_up = store.wait_indexed(last, Duration::from_secs(600));
    let index_rate = (last - backlog_start) as f64 / start.elapsed().as_secs_f64();
    store.shutdown()?;

    println!();
    println!(
        "| step (one core, {N} realistic Mailjet events, fsync {}) | µs per event |",
        if fsync { "on" } else { "off" }
    );
    println!("|---|---:|");
    println!("| (not on the path) parse a whole event into a serde_json::Value | {parse:.2} |");
    println!("| content hash for dedup (xxh3-128 of the minified text) | {hash:.2} |");
    println!(
        "| adapter: split the body, read type, time and keys, hash, copy the payload text | {adapt:.2} |"
    );
    println!("| encode the event record (on the HTTP worker) | {encode:.2} |");
    println!(
        "| store writer: dedup lookup, log block append, in groups of 1000 with one flush each (indexer running beside it) | {store_grouped:.2} |"
    );
    println!(
        "| store: one event per group: apply + flush{} (the group-commit cost) | {one_per_flush:.0} |",
        if fsync { " + fdatasync" } else { "" }
    );
    println!();
    let backlog = last - backlog_start;
    if backlog < 10_000 {
        // The indexer kept up with the steps above: no backlog worth timing (the load phases
        // time a real one).
        println!("indexer: kept up with the steps above ({backlog} events behind at their end)");
    } else {
        println!(
            "indexer catching up on a backlog of {backlog} events alone: {index_rate:.0} events/s{}",
            if caught_up {
                ""
            } else {
                " (did not finish in 600 s)"
            }
        );
    }
    Ok(())
}
