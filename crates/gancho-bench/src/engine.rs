//! The engine's throughput and the cost of a window query, on a store of realistic Mailjet
//! traffic (`--engine`).
//!
//! Builds a store of N events (recipients get a `sent`; 60% open it, 15% click, 3% bounce,
//! through the real Mailjet adapter), waits for the indexer, then runs the engine over the
//! whole log from cursor 0: once with the shipped rules, once with 100 rules (the shipped ones
//! and 95 more woken by every click). The clock stays at the campaign's start, so no reminder
//! comes due while measuring. Then times window queries by key against the full store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeZone as _, Utc};
use gancho_core::{Clock as _, ManualClock, SystemClock};
use gancho_engine::{Engine, EngineConfig};
use gancho_ingress::{SourceKind, TimePolicy, submission_from};
use gancho_state::EngineState;
use gancho_store::{Order, Store, StoreConfig, Window};
use hdrhistogram::Histogram;

pub struct EngineBench {
    pub events: usize,
    /// The stores' `cache_mb`; default: the daemon's (64).
    pub cache_mb: Option<u64>,
    pub rules: PathBuf,
    pub fsync: bool,
    pub store: Option<PathBuf>,
    pub shipped_only: bool,
}

/// The budget of the stores the engine bench opens: `--cache-mb`, else the daemon's default,
/// so that the RSS it prints is the daemon's (figures before 2026-12-01 used 512 MiB).
static CACHE_MB: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(StoreConfig::DEFAULT_CACHE_MB);

fn config(fsync: bool) -> StoreConfig {
    StoreConfig {
        fsync,
        cache_capacity: CACHE_MB.load(std::sync::atomic::Ordering::Relaxed) * 1024 * 1024,
        ..StoreConfig::default()
    }
}

fn open(path: &Path, fsync: bool) -> anyhow::Result<Store> {
    Ok(Store::open(path, &config(fsync))?)
}

/// A recipient's events: (type, seconds after the campaign start).
fn recipient_events(i: u64) -> Vec<(&'static str, i64)> {
    let sent = (i / 10) as i64;
    let mut out = vec![("sent", sent)];
    if i % 10 < 6 {
        out.push(("open", sent + 60 + (i % 7200) as i64));
    }
    if i % 20 < 3 {
        out.push(("click", sent + 120 + (i % 3600) as i64));
    }
    if i % 100 < 3 {
        out.push(("bounce", sent + 5));
    }
    out
}

const T0: i64 = 1_793_520_000; // 2026-11-01T08:00:00Z

fn body(kind: &str, i: u64, at: i64) -> String {
    let hard = i.is_multiple_of(2);
    format!(
        r#"{{"event":"{kind}","time":{},"MessageID":{},"Message_GUID":"1ab23cd4-e567-8901-2345-{i:012}","email":"user{i}@example.com","mj_campaign_id":7257,"mj_contact_id":{i},"customcampaign":"","CustomID":"spring-{}","Payload":"","hard_bounce":{hard},"error":"user unknown"}}"#,
        T0 + at,
        19_421_777_000_000_000 + i,
        i % 1000
    )
}

pub fn run(bench: &EngineBench) -> anyhow::Result<()> {
    if let Some(mb) = bench.cache_mb {
        CACHE_MB.store(mb, std::sync::atomic::Ordering::Relaxed);
    }
    let dir = tempfile::tempdir()?;
    let path = match &bench.store {
        Some(kept) => kept.clone(),
        None => dir.path().join("store"),
    };
    let reuse = bench.store.is_some() && path.join("log").exists();
    let store = if reuse {
        let store = open(&path, bench.fsync)?;
        println!(
            "store: reusing {} ({} events)",
            path.display(),
            store.status().durable
        );
        store
    } else {
        build_store(&path, bench)?
    };
    let store = measure_engine(
        store,
        &path,
        "the 5 shipped rules",
        &bench.rules,
        bench.fsync,
    )?;
    if bench.shipped_only {
        store.shutdown()?;
        return Ok(());
    }
    let many = dir.path().join("rules-100");
    std::fs::create_dir_all(&many)?;
    for entry in std::fs::read_dir(&bench.rules)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "rhai") {
            std::fs::copy(&p, many.join(p.file_name().context("file name")?))?;
        }
    }
    for i in 0..95 {
        std::fs::write(
            many.join(format!("extra-{i:02}.rhai")),
            format!(
                "const ON = [\"mailjet.click\"];\nif event.CustomID == \"campaign-{i}\" {{\n    http(#{{ url: \"https://hooks.example.com/{i}\", json: #{{ email: event.email }} }});\n}}\n"
            ),
        )?;
    }
    let store = measure_engine(
        store,
        &path,
        "100 rules (95 more on every click)",
        &many,
        bench.fsync,
    )?;
    measure_queries(&store, recipients_for(bench.events))?;
    store.shutdown()?;
    Ok(())
}

/// The recipients a store of `events` events has.
fn recipients_for(events: usize) -> u64 {
    let (mut total, mut recipients) = (0, 0);
    while total < events {
        total += recipient_events(recipients).len();
        recipients += 1;
    }
    recipients
}

fn build_store(path: &Path, bench: &EngineBench) -> anyhow::Result<Store> {
    let store = open(path, bench.fsync)?;
    let start = Instant::now();
    let mut batch = Vec::new();
    let mut total = 0;
    let mut recipients = 0u64;
    let now = SystemClock.now();
    while total < bench.events {
        for (kind, at) in recipient_events(recipients) {
            batch.push(body(kind, recipients, at));
            total += 1;
        }
        recipients += 1;
        if batch.len() >= 1000 || total >= bench.events {
            let text = format!("[{}]", batch.join(","));
            let submission = submission_from(
                "mailjet",
                &SourceKind::Mailjet,
                &TimePolicy::default(),
                &text,
                now,
            )?;
            store.appender().append_blocking(submission)?;
            batch.clear();
        }
    }
    let appended = start.elapsed();
    let last = store.status().durable;
    while !store.wait_indexed(last, Duration::from_secs(1)) {}
    let indexed = start.elapsed();
    println!(
        "store: {total} events ({recipients} recipients) appended in {:.1} s, indexed after {:.1} s",
        appended.as_secs_f64(),
        indexed.as_secs_f64()
    );

    Ok(store)
}

/// Runs a fresh engine (its state removed) over the whole log.
fn measure_engine(
    store: Store,
    path: &Path,
    label: &str,
    rules: &Path,
    fsync: bool,
) -> anyhow::Result<Store> {
    store.shutdown()?;
    drop(store);
    match std::fs::remove_dir_all(path.join("engine")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    // A daemon that has been writing its store finds it in the page cache; a fresh open here
    // might not (this machine's cache is shared): read it once so both runs start alike.
    warm_page_cache(path)?;
    let store = open(path, fsync)?;
    let state = EngineState::open(path, &config(fsync))?;
    let clock = Arc::new(ManualClock::new(
        Utc.timestamp_opt(T0, 0).single().context("time")?,
    ));
    let mut engine = Engine::new(
        store.clone(),
        state.clone(),
        clock,
        EngineConfig::new(rules),
    )?;
    // The peak below is this run's own: building the store and the earlier runs are not in it.
    let rss_before = crate::rss::reset_peak();
    let start = Instant::now();
    let cpu_before = thread_cpu();
    let processed = engine.run_until_idle(Duration::from_secs(3600))?;
    // Until every decision is applied and on disk.
    state.wait_durable(Duration::from_secs(3600));
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_delta(&cpu_before, &thread_cpu());
    // Counted one at a time: the whole list of some 300,000 actions would be most of this
    // process's peak.
    let mut outbox = 0usize;
    state.outbox().each_pending(0, |_| {
        outbox += 1;
        Ok(())
    })?;
    let errors: u64 = engine.status().rules.iter().map(|r| r.errors).sum();
    println!(
        "engine, {label}: {processed} events in {elapsed:.1} s = {:.0} events/s; {outbox} actions decided, {errors} rule errors",
        processed as f64 / elapsed
    );
    if let (Some(before), Some((rss, peak))) = (rss_before, crate::rss::memory_kb()) {
        println!(
            "  RSS (the whole process: store, engine and its state, no ingress): {:.1} MB before, {:.1} MB after, peak {:.1} MB",
            before as f64 / 1024.0,
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
    println!(
        "  CPU seconds by thread: {}",
        cpu.iter()
            .map(|(name, secs)| format!("{name} {secs:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for rule in engine.status().rules {
        if let Some(err) = rule.last_error {
            println!("  {}: {} errors, last: {err}", rule.name, rule.errors);
        }
    }
    drop(engine);
    // The next measurement removes the engine's database: let go of it first.
    state.close();
    Ok(store)
}

/// Reads every file of the store once.
fn warm_page_cache(path: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            warm_page_cache(&entry.path())?;
        } else {
            std::io::copy(
                &mut std::fs::File::open(entry.path())?,
                &mut std::io::sink(),
            )?;
        }
    }
    Ok(())
}

/// CPU seconds used so far by this process's threads, summed by thread name (Linux only;
/// empty elsewhere).
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... utime stime: fields 14 and 15, counted after the ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n);
        // Numbered sled threads count as one.
        let name = name
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *out.entry(name).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    out
}

fn cpu_delta(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = after
        .iter()
        .map(|(name, secs)| (name.clone(), secs - before.get(name).unwrap_or(&0.0)))
        .filter(|(_, secs)| *secs >= 0.05)
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

fn measure_queries(store: &Store, recipients: u64) -> anyhow::Result<()> {
    let max_seq = store.status().durable;
    let n = 20_000u64;
    let mut count = Histogram::<u64>::new(3)?;
    let mut last = Histogram::<u64>::new(3)?;
    let mut found = 0;
    for k in 0..n {
        // Spread over the whole store, not only its hot end.
        let i = (k * 7_919) % recipients;
        let at = T0 + (i / 10) as i64;
        let window = Window {
            source: "mailjet".to_owned(),
            kind: "sent".to_owned(),
            keys: vec![(
                "MessageID".to_owned(),
                (19_421_777_000_000_000 + i).to_string(),
            )],
            from_ms: (at - 86_400) * 1000,
            to_ms: (at + 3600) * 1000,
            max_seq,
        };
        let start = Instant::now();
        let hits = store.count(&window, usize::MAX)?;
        count.record(start.elapsed().as_nanos() as u64)?;
        found += hits;
        let start = Instant::now();
        if let Some(&(_, seq)) = store.window(&window, Order::Newest, 1)?.first() {
            std::hint::black_box(store.event(seq)?);
        }
        last.record(start.elapsed().as_nanos() as u64)?;
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "window query by key over {max_seq} events ({n} queries, {found} hits): count p50 {:.1} µs, p99 {:.1} µs; last (with the event read) p50 {:.1} µs, p99 {:.1} µs",
        us(&count, 0.5),
        us(&count, 0.99),
        us(&last, 0.5),
        us(&last, 0.99)
    );
    Ok(())
}
