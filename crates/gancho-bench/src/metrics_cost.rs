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

use crate::load::{self, LoadSpec, Target};
use crate::{Args, Gancho};

const TOKEN: &str = "bench-admin-token-0123456789";

pub fn run(args: &Args) -> anyhow::Result<()> {
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
        load::run(
            &Target::gancho(gancho.addr),
            &LoadSpec {
                duration: args.prime,
                warmup: Duration::ZERO,
                ..spec
            },
        )?;
        gancho.wait_indexed(Duration::from_secs(300))?;
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    println!(
        "| round | without metrics, events/s | with metrics, events/s | p99 without, ms | p99 with, ms |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for round in 1..=args.rounds.max(1) {
        // Which goes first alternates too.
        let order: [(&Gancho, bool); 2] = match round % 2 {
            1 => [(&plain, false), (&counted, true)],
            _ => [(&counted, true), (&plain, false)],
        };
        let mut row = [(0.0, 0.0); 2];
        for (gancho, metrics) in order {
            let report = load::run(&Target::gancho(gancho.addr), &spec)?;
            gancho.wait_indexed(Duration::from_secs(300))?;
            row[usize::from(metrics)] = (report.events_per_sec(), report.percentile_ms(99.0));
        }
        without.push(row[0].0);
        with.push(row[1].0);
        println!(
            "| {round} | {:.0} | {:.0} | {:.2} | {:.2} |",
            row[0].0, row[1].0, row[0].1, row[1].1
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
    plain.stop()?;
    counted.stop()?;
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
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
