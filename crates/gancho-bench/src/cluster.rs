//! `--cluster-publish`: what cluster mode's ingress path costs against what JetStream itself
//! can take on the same servers (issue 17's figures).
//!
//! It starts a three-server JetStream cluster on loopback (`gancho_testkit::nats`: file
//! storage, `sync_interval: always`), creates the cluster's partition streams, and measures in
//! the same run:
//! - the ceiling: a plain publisher of 400-byte messages to one R3 stream, `--connections`
//!   concurrent publishers, each with one message in flight, then with `--group` in flight
//!   (published together, then every acknowledgement awaited: `nats bench js pub --async`);
//! - gancho's `publish_events` with single events: `--connections` concurrent requests of one
//!   event each, every request waiting for its acknowledgement (what a webhook's 200 waits for);
//! - the same with grouped requests of `--group` events.
//!
//! Traffic goes to 127.0.0.1 only; the servers stop with the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use gancho_core::NewEvent;
use gancho_testkit::nats::NatsCluster;
use hdrhistogram::Histogram;

pub struct ClusterBench {
    pub connections: usize,
    pub group: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// The release binary, for the phases with real nodes (`cluster_nodes.rs`); without it
    /// they are skipped.
    pub gancho: Option<std::path::PathBuf>,
    /// Events published before the rule-processing phases.
    pub events: usize,
    /// The clusters' partitions (`--partitions`; the default, 16, unless measuring fewer).
    pub partitions: u16,
    /// Which phases to run (`--cluster-phases`): `ingest` (the library's, then a node's over
    /// HTTP), `processing`, `takeover`.
    pub phases: Vec<String>,
}

struct Phase {
    name: &'static str,
    events_per_request: usize,
    requests: u64,
    seconds: f64,
    latency: Histogram<u64>,
    errors: u64,
}

impl Phase {
    fn row(&self) -> String {
        let rate = self.requests as f64 / self.seconds;
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            self.name,
            self.events_per_request,
            rate,
            rate * self.events_per_request as f64,
            ms(0.5),
            ms(0.99),
            self.latency.max() as f64 / 1000.0,
            self.errors
        )
    }

    fn events_per_second(&self) -> f64 {
        self.requests as f64 * self.events_per_request as f64 / self.seconds
    }
}

pub fn run(bench: &ClusterBench) -> anyhow::Result<()> {
    let phase = |name: &str| bench.phases.iter().any(|p| p == name);
    let nodes = bench
        .gancho
        .as_ref()
        .map(|gancho| crate::cluster_nodes::NodesBench {
            gancho: gancho.clone(),
            connections: bench.connections,
            group: bench.group,
            duration: bench.duration,
            warmup: bench.warmup,
            events: bench.events,
            partitions: bench.partitions,
        });
    // `GANCHO_BENCH_KEEP=DIR` keeps the nodes' folders and logs there.
    let (_temp, root) = match std::env::var_os("GANCHO_BENCH_KEEP") {
        Some(dir) => (None, std::path::PathBuf::from(dir)),
        None => {
            let temp = tempfile::tempdir()?;
            let root = temp.path().to_owned();
            (Some(temp), root)
        }
    };
    if phase("ingest") {
        let cluster = NatsCluster::start(3).context("nats-server is not installed")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let base = runtime.block_on(measure(bench, &cluster))?;
        drop(runtime);
        match &nodes {
            Some(nodes) => {
                ingest_rows(&crate::cluster_nodes::ingest(nodes, &cluster, &root)?, base)
            }
            None => eprintln!("no gancho release binary: the phases with real nodes are skipped"),
        }
    }
    let Some(nodes) = &nodes else {
        return Ok(());
    };
    if phase("processing") {
        processing(bench, nodes, &root)?;
    }
    if phase("takeover") {
        takeover(nodes, &root)?;
    }
    Ok(())
}

fn ingest_rows(ingest: &[crate::cluster_nodes::IngestRow], base: f64) {
    println!(
        "\n| phase (real node, HTTP) | events/s | of the async ceiling | p50 ms | p99 ms | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in ingest {
        println!(
            "| {} | {:.0} | {:.0}% | {:.2} | {:.2} | {} |",
            row.name,
            row.events_per_sec,
            100.0 * row.events_per_sec / base,
            row.p50_ms,
            row.p99_ms,
            row.errors
        );
    }
}

fn processing(
    bench: &ClusterBench,
    nodes: &crate::cluster_nodes::NodesBench,
    root: &std::path::Path,
) -> anyhow::Result<()> {
    let one = crate::cluster_nodes::processing(nodes, 1, root)?;
    let three = crate::cluster_nodes::processing(nodes, 3, root)?;
    println!(
        "\nrule processing of {} events, published while the settled nodes were stopped: 1 node \
         {:.0} events/s (cores {:.0} % busy, the node {:.0} % of them), 3 nodes {:.0} events/s \
         (cores {:.0} % busy, the nodes {:.0} % of them): {:.2}x; target 2x",
        bench.events,
        one.events_per_sec,
        one.machine_busy,
        one.nodes_share,
        three.events_per_sec,
        three.machine_busy,
        three.nodes_share,
        three.events_per_sec / one.events_per_sec
    );
    Ok(())
}

fn takeover(
    nodes: &crate::cluster_nodes::NodesBench,
    root: &std::path::Path,
) -> anyhow::Result<()> {
    let (moved, leased, claimed) = crate::cluster_nodes::takeover(nodes, root)?;
    println!(
        "takeover after kill -9 of the owner of {moved} partitions (lease 2 s): all leased by others \
         after {:.2} s, all claimed (first commit in each journal) after {:.2} s",
        leased.as_secs_f64(),
        claimed.as_secs_f64()
    );
    Ok(())
}

/// The library phases; returns the async ceiling (events/s).
async fn measure(bench: &ClusterBench, cluster: &NatsCluster) -> anyhow::Result<f64> {
    let config: gancho_cluster::ClusterConfig = toml::from_str(&format!(
        "{}node = \"bench\"\npartitions = {}\n",
        cluster.cluster_keys(),
        bench.partitions
    ))?;
    gancho_cluster::check_servers(&config).await?;
    let client = gancho_cluster::connect(&config, None).await?;
    let ingress = gancho_cluster::ingress_context(client.clone());
    // Room for every publish the phases put in flight at once: with the default 5,000, tasks
    // holding permits while they wait for one more would stop each other.
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(bench.connections * bench.group.max(1) + 1024)
        .build(client);
    let partitions = bench.partitions;
    gancho_cluster::fix_partitions(&js, partitions).await?;
    gancho_cluster::create_streams(&js, partitions).await?;
    js.get_or_create_stream(jetstream::stream::Config {
        name: "CEILING".to_owned(),
        subjects: vec!["ceiling".to_owned()],
        num_replicas: 3,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|err| anyhow::anyhow!("{err}"))?;

    let payload = bytes::Bytes::from(vec![b'x'; 400]);
    let ceiling = phase(
        bench,
        "ceiling: plain JetStream publisher, 400 B, R3, one in flight per connection",
        1,
        {
            let js = js.clone();
            move |_, _| {
                let js = js.clone();
                let payload = payload.clone();
                async move {
                    js.publish("ceiling", payload)
                        .await
                        .map_err(|err| err.to_string())?
                        .await
                        .map(drop)
                        .map_err(|err| err.to_string())
                }
            }
        },
    )
    .await;
    let payload = bytes::Bytes::from(vec![b'x'; 400]);
    let group = bench.group;
    let ceiling_async = phase(
        bench,
        "ceiling: plain JetStream publisher, 400 B, R3, `--group` in flight per connection",
        group,
        {
            let js = js.clone();
            move |_, _| burst(js.clone(), payload.clone(), group, |_| "ceiling".to_owned())
        },
    )
    .await;
    // The same plain publisher spread over the partition streams: what the fan-out over
    // streams (each its own Raft group, each syncing on its own) costs before any gancho code;
    // with one message in flight per connection, as single events are, then `--group`.
    let payload = bytes::Bytes::from(vec![b'x'; 400]);
    let spread_single = phase(
        bench,
        "plain JetStream publisher over the partition streams, one in flight per connection",
        1,
        {
            let js = js.clone();
            move |task, n| {
                burst(js.clone(), payload.clone(), 1, move |_| {
                    let p = (task as u64 + n) % u64::from(partitions);
                    format!("gancho.ev.{p}")
                })
            }
        },
    )
    .await;
    // The same with a `Nats-Msg-Id` on each message, as gancho's have: what the servers'
    // duplicate check costs.
    let payload = bytes::Bytes::from(vec![b'x'; 400]);
    let spread_ids = phase(bench, "the same, each message with a Nats-Msg-Id", 1, {
        let js = js.clone();
        move |task, n| {
            let (js, payload) = (js.clone(), payload.clone());
            async move {
                let p = (task as u64 + n) % u64::from(partitions);
                let message = jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .message_id(format!("{task}-{n}"));
                publish_one(&js, format!("gancho.ev.{p}"), message).await
            }
        }
    })
    .await;
    // The same with gancho's message as `publish_events` builds it (the event's JSON, the
    // format header, a 32-digit id), encoded once before the phase: what the larger message
    // costs the servers, apart from building and encoding events.
    let encoded = bytes::Bytes::from(serde_json::to_vec(&event(0))?);
    let encoded_size = encoded.len();
    let spread_gancho = phase(
        bench,
        "the same, with gancho's message encoded beforehand",
        1,
        pre_encoded(&js, &encoded, partitions, 0),
    )
    .await;
    let payload = bytes::Bytes::from(vec![b'x'; 400]);
    let spread = phase(
        bench,
        "plain JetStream publisher over the partition streams, `--group` in flight per connection",
        group,
        {
            let js = js.clone();
            move |task, n| {
                burst(js.clone(), payload.clone(), group, move |i| {
                    let p = (task as u64 + n + i as u64) % u64::from(partitions);
                    format!("gancho.ev.{p}")
                })
            }
        },
    )
    .await;
    let counter = Arc::new(AtomicU64::new(0));
    let single = phase(bench, "gancho publish_events, single events", 1, {
        let ingress = ingress.clone();
        let counter = Arc::clone(&counter);
        move |_, _| publish(ingress.clone(), Arc::clone(&counter), 1, partitions)
    })
    .await;
    // The pre-encoded phase again, after the others: how far the servers slowed down as the
    // streams (and their duplicate windows) filled, to read the phases in between against.
    let spread_gancho_again = phase(
        bench,
        "the same pre-encoded messages again, after `publish_events`",
        1,
        pre_encoded(&js, &encoded, partitions, 1),
    )
    .await;
    // And placed by a hash of the id, as events are by their key: not in lockstep over the
    // streams as the round robin is.
    let spread_gancho_hashed = phase(
        bench,
        "the same pre-encoded messages, each to the partition of its id's hash",
        1,
        pre_encoded(&js, &encoded, partitions, 2),
    )
    .await;
    let grouped = phase(bench, "gancho publish_events, grouped", bench.group, {
        let ingress = ingress.clone();
        let counter = Arc::clone(&counter);
        let group = bench.group;
        move |_, _| publish(ingress.clone(), Arc::clone(&counter), group, partitions)
    })
    .await;

    println!(
        "\n| phase | events/request | requests/s | events/s | p50 ms | p99 ms | max ms | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for phase in [
        &ceiling,
        &ceiling_async,
        &spread_single,
        &spread_ids,
        &spread_gancho,
        &spread,
        &single,
        &spread_gancho_again,
        &spread_gancho_hashed,
        &grouped,
    ] {
        println!("{}", phase.row());
    }
    println!("(gancho's message: {encoded_size} bytes of event JSON)");
    let base = ceiling_async.events_per_second();
    println!(
        "\nagainst the async ceiling: single events {:.0}% (target 40%, p99 < 50 ms), grouped {:.0}% \
         (target 60%); single events against the one-in-flight ceiling: {:.0}%",
        100.0 * single.events_per_second() / base,
        100.0 * grouped.events_per_second() / base,
        100.0 * single.events_per_second() / ceiling.events_per_second()
    );
    Ok(base)
}

/// A request of one pre-encoded gancho message (`encoded`, the format header, a 32-digit id
/// unique to `round`) to a partition's stream: round robin, or (round 2) the partition of the
/// id's hash.
fn pre_encoded(
    js: &jetstream::Context,
    encoded: &bytes::Bytes,
    partitions: u16,
    round: u8,
) -> impl Fn(
    usize,
    u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
+ Clone
+ Send
+ 'static {
    let (js, encoded) = (js.clone(), encoded.clone());
    move |task, n| {
        let (js, payload) = (js.clone(), encoded.clone());
        Box::pin(async move {
            let id = (u128::from(round) << 120) | ((task as u128) << 64) | u128::from(n);
            let p = if round == 2 {
                u64::from(gancho_core::partition::partition_of(
                    &format!("{id:x}"),
                    partitions,
                ))
            } else {
                (task as u64 + n) % u64::from(partitions)
            };
            let message = jetstream::message::PublishMessage::build()
                .payload(payload)
                .header(
                    gancho_cluster::FORMAT_HEADER,
                    gancho_cluster::FORMAT_JSON_V1,
                )
                .message_id(format!("{id:032x}"));
            publish_one(&js, format!("gancho.ev.{p}"), message).await
        })
    }
}

/// One message published, and its acknowledgement awaited.
async fn publish_one(
    js: &jetstream::Context,
    subject: String,
    message: jetstream::message::PublishMessage,
) -> Result<(), String> {
    js.send_publish(subject, message)
        .await
        .map_err(|err| err.to_string())?
        .await
        .map(drop)
        .map_err(|err| err.to_string())
}

/// `n` plain messages published together (message `i` on `subject(i)`), then every
/// acknowledgement awaited.
async fn burst(
    js: jetstream::Context,
    payload: bytes::Bytes,
    n: usize,
    subject: impl Fn(usize) -> String,
) -> Result<(), String> {
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        acks.push(
            js.publish(subject(i), payload.clone())
                .await
                .map_err(|err| err.to_string())?,
        );
    }
    for ack in acks {
        ack.await.map_err(|err| err.to_string())?;
    }
    Ok(())
}

/// One request of `n` new events, published and acknowledged.
async fn publish(
    js: jetstream::Context,
    counter: Arc<AtomicU64>,
    n: usize,
    partitions: u16,
) -> Result<(), String> {
    let events: Vec<NewEvent> = (0..n)
        .map(|_| event(counter.fetch_add(1, Ordering::Relaxed)))
        .collect();
    gancho_cluster::publish_events(&js, &events, |e| {
        gancho_cluster::partition_for(e, "email", partitions)
    })
    .await
    .map(drop)
    .map_err(|err| err.to_string())
}

/// A Mailjet-like open event of about 400 bytes as JSON.
pub(crate) fn event(i: u64) -> NewEvent {
    let json = serde_json::json!({
        "id": format!("bench-{i}"),
        "source": "mailjet",
        "type": "open",
        "time": "2026-11-30T10:00:00Z",
        "received": "2026-11-30T10:00:01Z",
        "keys": {"email": format!("user{}@example.com", i % 100_000), "MessageID": format!("{}", 1_000_000 + i)},
        "data": {"event": "open", "time": 1_764_496_800, "MessageID": 1_000_000 + i,
                  "email": format!("user{}@example.com", i % 100_000), "mj_campaign_id": 7,
                  "ip": "127.0.0.1", "geo": "ES", "agent": "Mozilla/5.0"},
    });
    // The bench builds its own events: a failure is a bug in this file.
    serde_json::from_value(json).unwrap_or_else(|err| panic!("bench event: {err}"))
}

/// Runs `request` on `--connections` concurrent tasks for the warm-up, then measures for
/// `--duration`.
async fn phase<F, Fut>(
    bench: &ClusterBench,
    name: &'static str,
    events_per_request: usize,
    request: F,
) -> Phase
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..bench.connections {
        let request = request.clone();
        let stop = Arc::clone(&stop);
        let measuring = Arc::clone(&measuring);
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|err| panic!("histogram: {err}"));
            let (mut requests, mut errors, mut n) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let result = request(task, n).await;
                n += 1;
                if measuring.load(Ordering::Relaxed) {
                    match result {
                        Ok(()) => {
                            requests += 1;
                            let _ = latency.record(start.elapsed().as_micros() as u64);
                        }
                        Err(_) => errors += 1,
                    }
                }
            }
            (latency, requests, errors)
        }));
    }
    tokio::time::sleep(bench.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(bench.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|err| panic!("histogram: {err}"));
    let (mut requests, mut errors) = (0, 0);
    for task in tasks {
        if let Ok((l, r, e)) = task.await {
            let _ = latency.add(&l);
            requests += r;
            errors += e;
        }
    }
    eprintln!("{name}: {:.0} requests/s", requests as f64 / seconds);
    Phase {
        name,
        events_per_request,
        requests,
        seconds,
        latency,
        errors,
    }
}
