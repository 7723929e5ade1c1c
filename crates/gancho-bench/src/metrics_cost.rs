//! `--metrics-cost`: what counting for Prometheus costs the ingest path. Two daemons run side
//! by side, idle in turn: one without an admin listener (no recorder: every `metrics::`
//! macro is a no-op), one with it and a scraper reading `/metrics` every second (Prometheus
//! scrapes every 15 s or more). Single events, the path with the most counting per event,
//! are posted to each in alternating phases, so drift on a shared machine touches both alike.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::Args;
use crate::daemon::Gancho;
use crate::load::{self, LoadSpec, Target};

const TOKEN: &str = "bench-admin-token-0123456789";

/// What the ingress counts per request, timed in this process: `n` requests' worth (two clock
/// reads, a counter add, a histogram sample) on the handles registered now; ns per request.
fn per_request_ns(n: u32) -> f64 {
    let received = metrics::counter!("gancho_events_received_total", "source" => "bench");
    let seconds = metrics::histogram!("gancho_ingest_request_seconds");
    let started = std::time::Instant::now();
    for _ in 0..n {
        let request = std::time::Instant::now();
        received.increment(1);
        seconds.record(std::hint::black_box(request.elapsed().as_secs_f64()));
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

/// The counting's own cost, without a recorder (the macros' no-ops) and with the daemon's
/// (the Prometheus exporter with its buckets): deterministic where the load phases are not.
fn counting_cost() -> anyhow::Result<(f64, f64)> {
    const N: u32 = 2_000_000;
    per_request_ns(N / 10);
    let without = per_request_ns(N);
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ])?
        .install_recorder()?;
    per_request_ns(N / 10);
    let with = per_request_ns(N);
    // The samples are folded at scrape time: that is part of the cost too.
    let folded = std::time::Instant::now();
    handle.run_upkeep();
    let rendered = handle.render();
    let per_sample = folded.elapsed().as_nanos() as f64 / f64::from(N + N / 10);
    std::hint::black_box(rendered);
    Ok((without, with + per_sample))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let (count_without, count_with) = counting_cost()?;
    println!(
        "the ingress's counting per request: {count_without:.1} ns without a recorder, {count_with:.1} ns with the Prometheus exporter (scrape-time folding included)"
    );
    let (plain_dir, counted_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let plain = Gancho::start(args, plain_dir.path())?;
    let admin_section = match args.control {
        true => String::new(),
        false => format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
    };
    let counted = Gancho::start_extra(args, counted_dir.path(), &admin_section)?;
    let admin = match (counted.admin, args.control) {
        (Some(admin), _) => Some(admin),
        (None, true) => None,
        (None, false) => anyhow::bail!("the daemon with a token has no admin listener"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (stop, scrapes) = (stop.clone(), scrapes.clone());
        std::thread::spawn(move || -> anyhow::Result<usize> {
            let mut bytes = 0;
            let Some(admin) = admin else { return Ok(0) };
            while !stop.load(Ordering::Relaxed) {
                bytes = scrape(admin)?;
                scrapes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok(bytes)
        })
    };
    let spec = LoadSpec {
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        group: 1,
    };
    // Both stores past their first seconds (see `--prime`).
    for gancho in [&plain, &counted] {
        gancho.prime(&Target::gancho(gancho.addr), &spec, args.prime)?;
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    // The daemon's CPU time per event: what the machine's noise touches least (a busy core
    // slows the daemon, but does not make it do more work per event).
    let (mut cpu_without, mut cpu_with) = (Vec::new(), Vec::new());
    println!(
        "| round | without metrics, events/s | with metrics, events/s | p99 without, ms | p99 with, ms | CPU µs/event without | with |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for round in 1..=args.rounds.max(1) {
        // Which goes first alternates too.
        let order: [(&Gancho, bool); 2] = match round % 2 {
            1 => [(&plain, false), (&counted, true)],
            _ => [(&counted, true), (&plain, false)],
        };
        let mut row = [(0.0, 0.0, 0.0); 2];
        for (gancho, metrics) in order {
            let ticks = gancho.cpu_ticks()?;
            let report = load::run(&Target::gancho(gancho.addr), &spec)?;
            // Its indexing is part of what an event costs.
            gancho.wait_indexed(Duration::from_secs(300))?;
            let used = (gancho.cpu_ticks()? - ticks) as f64 / 100.0;
            let events = (report.events_total as f64).max(1.0);
            row[usize::from(metrics)] = (
                report.events_per_sec(),
                report.percentile_ms(99.0),
                used / events * 1e6,
            );
        }
        without.push(row[0].0);
        with.push(row[1].0);
        cpu_without.push(row[0].2);
        cpu_with.push(row[1].2);
        println!(
            "| {round} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            row[0].0, row[1].0, row[0].1, row[1].1, row[0].2, row[1].2
        );
    }
    stop.store(true, Ordering::Relaxed);
    let exposition = scraper
        .join()
        .map_err(|_| anyhow::anyhow!("the scraper panicked"))??;
    // Each round's two phases ran back to back: their ratio is what drift touches least.
    let mut ratios: Vec<f64> = with.iter().zip(&without).map(|(b, a)| b / a).collect();
    let ratio = median(&mut ratios);
    let (a, b) = (median(&mut without), median(&mut with));
    println!();
    println!(
        "with metrics / without, median of the rounds: {:+.1}% (medians {a:.0} and {b:.0} events/s); {} scrapes of {exposition} bytes",
        (ratio - 1.0) * 100.0,
        scrapes.load(Ordering::Relaxed)
    );
    let mut cpu_ratios: Vec<f64> = cpu_with
        .iter()
        .zip(&cpu_without)
        .map(|(b, a)| b / a)
        .collect();
    let cpu = median(&mut cpu_without);
    println!(
        "CPU time per event with metrics / without, median of the rounds: {:+.1}% ({cpu:.2} and {:.2} µs)",
        (median(&mut cpu_ratios) - 1.0) * 100.0,
        median(&mut cpu_with)
    );
    println!(
        "the counting's share of an event's CPU time (single events, one request each): {:.3}%",
        (count_with - count_without) / (cpu * 1000.0) * 100.0
    );
    println!(
        "the daemons after the rounds: without metrics {}; with metrics {}",
        plain.memory()?,
        counted.memory()?
    );
    plain.stop()?;
    counted.stop()?;
    Ok(())
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One `GET /metrics`, read whole; the body's length.
fn scrape(admin: SocketAddr) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect(admin)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the /metrics answer")?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        anyhow::bail!(
            "/metrics answered {}",
            String::from_utf8_lossy(&answer[..head_end])
        );
    }
    Ok(answer.len() - head_end - 4)
}
