//! The actions benchmark.
//!
//! 1. Delivery throughput: actions committed to a store's outbox as the engine does, delivered
//!    by the executor to a local HTTP receiver (actix-web, keep-alive) and to a local SMTP
//!    server (gancho-testkit's); actions/s from the executor's start to the last one received.
//! 2. End-to-end latency: the real daemon (release binary) with a rule that calls the local
//!    receiver for every bank event; an open-loop generator posts single events at a fixed
//!    rate, each carrying its scheduled send time, and the receiver records the time from that
//!    to the call arriving (scheduled, not actual, send time: a stalled server cannot hide its
//!    stall by slowing the generator down).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context, bail};
use gancho_actions::{ActionsConfig, EmailTransport};
use gancho_core::{
    Action, ActionRequest, Clock as _, EmailAction, HttpAction, SystemClock, action_id,
};
use gancho_state::{Change, EngineState};
use gancho_store::StoreConfig;
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct ActionsBench {
    pub http_actions: usize,
    pub email_actions: usize,
    pub rate: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub fsync: bool,
    pub gancho: std::path::PathBuf,
}

/// What the receiver saw.
#[derive(Debug)]
struct Received {
    calls: AtomicU64,
    /// Calls whose scheduled send time is at or after this (µs since the epoch) are measured.
    measure_from_us: AtomicU64,
    /// Webhook POST (scheduled) → call received, µs.
    latency: Mutex<Histogram<u64>>,
}

fn now_us() -> u64 {
    u64::try_from(SystemClock.now().timestamp_micros()).unwrap_or(0)
}

async fn receive(body: web::Bytes, seen: web::Data<Arc<Received>>) -> HttpResponse {
    let now = now_us();
    seen.calls.fetch_add(1, Ordering::Relaxed);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(at) = value["at_us"].as_u64()
        && at >= seen.measure_from_us.load(Ordering::Relaxed)
    {
        let mut latency = seen.latency.lock().unwrap_or_else(|e| e.into_inner());
        let _ = latency.record(now.saturating_sub(at).max(1));
    }
    HttpResponse::Ok().finish()
}

/// An actix-web receiver on its own thread, two workers.
fn start_receiver(seen: Arc<Received>) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let served = actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(seen.clone()))
                    .route("/hook", web::post().to(receive))
            })
            .workers(2)
            .disable_signals()
            .listen(listener)?
            .run()
            .await
        });
        if let Err(err) = served {
            eprintln!("receiver failed: {err}");
        }
    });
    Ok(addr)
}

fn new_received() -> anyhow::Result<Arc<Received>> {
    Ok(Arc::new(Received {
        calls: AtomicU64::new(0),
        measure_from_us: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
    }))
}

pub fn run(bench: &ActionsBench) -> anyhow::Result<()> {
    gancho_actions::install_crypto();
    let seen = new_received()?;
    let receiver = start_receiver(seen.clone())?;
    let url = format!("http://{receiver}/hook");
    println!();
    println!("| delivery | actions | seconds | actions/s | peak RSS (this process) |");
    println!("|---|---:|---:|---:|---:|");
    for (label, concurrency, per_host) in [
        ("HTTP, defaults (32 at once, 8 per host)", 32, 8),
        ("HTTP, 32 at once, 32 per host", 32, 32),
    ] {
        let http = Action::Http(HttpAction {
            method: "POST".to_owned(),
            url: url.clone(),
            headers: Default::default(),
            json: Some(serde_json::json!({"email": "ana@example.com", "code": "WELCOME-7KQ2M9XA"})),
            body: None,
        });
        let before = seen.calls.load(Ordering::Relaxed);
        let n = bench.http_actions;
        crate::rss::reset_peak();
        let took = deliver(
            bench.fsync,
            n,
            &http,
            |config| {
                config.http.allow_private = true;
                config.http.limits.concurrency = concurrency;
                config.http.per_host = per_host;
            },
            || seen.calls.load(Ordering::Relaxed) - before >= n as u64,
        )?;
        println!(
            "| {label} | {n} | {:.2} | {:.0} | {} |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            crate::rss::peak_shown()
        );
    }
    let smtp = gancho_testkit::SmtpServer::start();
    for concurrency in [4, 16] {
        let email = Action::Email(EmailAction {
            to: vec!["Ana <ana@example.com>".to_owned()],
            subject: "10% off, just for you".to_owned(),
            text: "Thanks for reading! Your discount code is WELCOME-7KQ2M9XA.".to_owned(),
            html: None,
        });
        let n = bench.email_actions;
        let before = smtp.mails().len();
        crate::rss::reset_peak();
        let took = deliver(
            bench.fsync,
            n,
            &email,
            |config| {
                config.email.transport = EmailTransport::Smtp {
                    url: smtp.url().into(),
                };
                config.email.limits.concurrency = concurrency;
            },
            || smtp.mails().len() - before >= n,
        )?;
        println!(
            "| SMTP (test server), {concurrency} pooled connections | {n} | {:.2} | {:.0} | {} |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            crate::rss::peak_shown()
        );
    }
    latency(bench, receiver, &seen)
}

/// Commits `n` copies of `action` to a fresh store's outbox, starts the executor, and times
/// it until `done`.
fn deliver(
    fsync: bool,
    n: usize,
    action: &Action,
    configure: impl FnOnce(&mut ActionsConfig),
    done: impl Fn() -> bool,
) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let state = EngineState::open(
        &dir.path().join("store"),
        &StoreConfig {
            fsync,
            cache_capacity: 256 << 20,
            ..StoreConfig::default()
        },
    )?;
    for (batch, seqs) in (1..=n as u64).collect::<Vec<_>>().chunks(4096).enumerate() {
        let changes: Vec<Change> = seqs
            .iter()
            .map(|&seq| {
                Change::PutAction(ActionRequest {
                    id: action_id("bench", seq, 0),
                    rule: "bench".to_owned(),
                    event_seq: seq,
                    position: 0,
                    decided_ms: 0,
                    action: action.clone(),
                })
            })
            .collect();
        state.commit(changes, *seqs.last().context("empty batch")?)?;
        if batch % 16 == 15 {
            state.wait_durable(Duration::from_secs(60));
        }
    }
    if !state.wait_durable(Duration::from_secs(120)) {
        bail!("the outbox did not become durable");
    }
    let mut config = ActionsConfig::local(dir.path());
    configure(&mut config);
    let started = Instant::now();
    let executor = gancho_actions::spawn(&state.outbox(), Arc::new(SystemClock), config)?;
    while !done() {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("delivery did not finish in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = started.elapsed();
    executor.stop();
    state.close();
    Ok(took)
}

/// Webhook → rule → HTTP call, through the real daemon, at a fixed rate.
fn latency(bench: &ActionsBench, receiver: SocketAddr, seen: &Arc<Received>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("notify.rhai"),
        format!(
            "const ON = [\"bank.*\"];\nhttp(#{{ method: \"POST\", url: \"http://{receiver}/hook\", json: #{{ at_us: event.at_us, account: event.account }} }});\n"
        ),
    )?;
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nrules_dir = {:?}\n[store]\nretention = \"0\"\nfsync = {}\n\
         [sources.bank]\nkind = \"json\"\ntype = \"/kind\"\nid = \"/id\"\nkeys = {{ account = \"/account\" }}\n\
         [http]\nallow_private = true\n",
        dir.path().join("data").display().to_string(),
        rules.display().to_string(),
        bench.fsync,
    );
    let daemon = crate::daemon::Gancho::start_with(&bench.gancho, dir.path(), &config)?;
    let total = ((bench.duration + bench.warmup).as_secs_f64() * bench.rate as f64) as u64;
    let start_us = now_us() + 500_000;
    let measure_from_us = start_us + u64::try_from(bench.warmup.as_micros()).unwrap_or(0);
    seen.measure_from_us
        .store(measure_from_us, Ordering::Relaxed);
    seen.latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .reset();
    let calls_before = seen.calls.load(Ordering::Relaxed);
    let acks = paced_load(
        daemon.addr,
        bench.rate,
        total,
        bench.connections,
        start_us,
        measure_from_us,
    )?;
    let waited = Instant::now();
    while seen.calls.load(Ordering::Relaxed) - calls_before < total {
        if waited.elapsed() > Duration::from_secs(120) {
            println!(
                "only {} of {total} calls arrived within 120 s of the load's end",
                seen.calls.load(Ordering::Relaxed) - calls_before
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let memory = daemon.memory()?;
    drop(daemon);
    let latency = seen
        .latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let ms = |h: &Histogram<u64>, p: f64| h.value_at_percentile(p) as f64 / 1000.0;
    println!();
    println!(
        "end to end at {} events/s for {:?} (after {:?} warm-up), {} connections, fsync {}:",
        bench.rate, bench.duration, bench.warmup, bench.connections, bench.fsync
    );
    println!("the daemon at the end: {memory}");
    println!("| measured | count | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, h) in [
        ("webhook POST → 200", &acks),
        ("webhook POST → HTTP action received", &latency),
    ] {
        println!(
            "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            h.len(),
            ms(h, 50.0),
            ms(h, 90.0),
            ms(h, 99.0),
            ms(h, 100.0)
        );
    }
    Ok(())
}

/// Posts `total` bank events, the i-th at `start_us + i / rate`, over keep-alive connections;
/// returns the acknowledgement latencies (from the scheduled time) of the measured ones.
fn paced_load(
    addr: SocketAddr,
    rate: u64,
    total: u64,
    connections: usize,
    start_us: u64,
    measure_from_us: u64,
) -> anyhow::Result<Histogram<u64>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for c in 0..connections as u64 {
            tasks.push(tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
                let mut buf = Vec::with_capacity(4096);
                let mut i = c;
                while i < total {
                    let at = start_us + i * 1_000_000 / rate;
                    let now = now_us();
                    if at > now {
                        tokio::time::sleep(Duration::from_micros(at - now)).await;
                    }
                    let body = format!(
                        r#"{{"id":"e{i}","kind":"withdrawal","account":"ES76{}","phone":"+34600000001","amount":20,"at_us":{at}}}"#,
                        i % 1000
                    );
                    let request = format!(
                        "POST /hooks/bank HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(request.as_bytes()).await?;
                    let status = crate::load::read_response(&mut stream, &mut buf).await?;
                    if status != 200 {
                        bail!("event {i}: status {status}");
                    }
                    if at >= measure_from_us {
                        hist.record(now_us().saturating_sub(at).max(1))?;
                    }
                    i += connections as u64;
                }
                anyhow::Ok(hist)
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        for task in tasks {
            all.add(&task.await??)?;
        }
        Ok(all)
    })
}
