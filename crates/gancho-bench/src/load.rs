//! The load generator and the do-nothing ceiling server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench-password";

/// Every event the generator makes is distinct, across phases, so none is deduplicated away.
static NEXT_EVENT: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct Target {
    addr: SocketAddr,
    path: &'static str,
    authorization: Option<String>,
    /// Signs each request the Standard Webhooks way instead (the `signed` source).
    signer: Option<gancho_core::signature::StandardWebhooks>,
}

/// The secret of the bench's `signed` source (kind `standard-webhooks`).
pub const SIGNING_SECRET: &str = "whsec_YmVuY2gtc2lnbmluZy1zZWNyZXQtMDEyMzQ1Njc4OQ==";

impl Target {
    pub fn ceiling(addr: SocketAddr) -> Target {
        Target {
            addr,
            path: "/hooks/mailjet",
            authorization: None,
            signer: None,
        }
    }

    pub fn gancho(addr: SocketAddr) -> Target {
        Target {
            addr,
            path: "/hooks/mailjet",
            authorization: Some(format!(
                "Basic {}",
                base64(format!("{USER}:{PASSWORD}").as_bytes())
            )),
            signer: None,
        }
    }

    /// The daemon's `signed` source: each request signed with [`SIGNING_SECRET`].
    pub fn gancho_signed(addr: SocketAddr) -> anyhow::Result<Target> {
        Ok(Target {
            addr,
            path: "/hooks/signed",
            authorization: None,
            signer: Some(gancho_core::signature::StandardWebhooks::new(&[
                SIGNING_SECRET,
            ])?),
        })
    }
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Events per request: 1 posts bare objects, more posts arrays.
    pub group: usize,
}

#[derive(Debug)]
pub struct LoadReport {
    pub group: usize,
    /// Requests answered 200 within the measured window.
    pub requests: u64,
    /// Events acknowledged over the whole phase, warm-up included.
    pub events_total: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of the measured requests, in microseconds.
    pub latency: Histogram<u64>,
}

impl LoadReport {
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn events_per_sec(&self) -> f64 {
        self.requests_per_sec() * self.group as f64
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        self.latency.value_at_percentile(p) as f64 / 1000.0
    }
}

/// A realistic Mailjet event (the shape of the `open`, `click` and `sent` fixtures), distinct
/// in its ids and address. Its time is the bench's base time (2025-11-28) plus a hundredth of
/// a second per event, within about 300 days of it, so never in the future, however `--attach`
/// numbers its events.
fn mailjet_event(out: &mut String, n: u64) {
    use std::fmt::Write as _;
    let kind = ["sent", "open", "click"][(n % 3) as usize];
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        r#"{{"event":"{kind}","time":{},"MessageID":{},"Message_GUID":"1ab23cd4-e567-8901-2345-6789f0gh1i2j","email":"user{}@example.com","mj_campaign_id":7173,"mj_contact_id":{},"customcampaign":"","CustomID":"helloworld","Payload":"","ip":"127.0.0.1","geo":"US","agent":"Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0"}}"#,
        1_764_320_000 + (n / 100) % 26_000_000,
        19_421_777_396_190_490 + n,
        n / 3,
        320 + n % 1000,
    );
}

/// Numbers the next events from `n` on (so that they differ from those of an earlier run).
pub fn number_events_from(n: u64) {
    NEXT_EVENT.fetch_max(n, Ordering::Relaxed);
}

pub fn body(group: usize) -> String {
    let mut body = String::with_capacity(450 * group + 2);
    if group == 1 {
        mailjet_event(&mut body, NEXT_EVENT.fetch_add(1, Ordering::Relaxed));
    } else {
        let first = NEXT_EVENT.fetch_add(group as u64, Ordering::Relaxed);
        body.push('[');
        for i in 0..group as u64 {
            if i > 0 {
                body.push(',');
            }
            mailjet_event(&mut body, first + i);
        }
        body.push(']');
    }
    body
}

/// Runs one phase on a single-threaded runtime: the generator takes one core at most and
/// leaves the rest to the server.
pub fn run(target: &Target, spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let start = Instant::now();
        let measure_from = start + spec.warmup;
        let end = measure_from + spec.duration;
        let mut tasks = Vec::with_capacity(spec.connections);
        for _ in 0..spec.connections {
            let target = target.clone();
            let group = spec.group;
            tasks.push(tokio::spawn(async move {
                connection(target, group, measure_from, end).await
            }));
        }
        let mut report = LoadReport {
            group: spec.group,
            requests: 0,
            events_total: 0,
            errors: 0,
            elapsed: spec.duration,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        };
        for task in tasks {
            let one = task.await??;
            report.requests += one.requests;
            report.events_total += one.events_total;
            report.errors += one.errors;
            report.latency.add(&one.latency)?;
        }
        Ok(report)
    })
}

async fn connection(
    target: Target,
    group: usize,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<LoadReport> {
    let mut stream = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let mut report = LoadReport {
        group,
        requests: 0,
        events_total: 0,
        errors: 0,
        elapsed: end - measure_from,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    let mut buf = Vec::with_capacity(4096);
    let mut request = Vec::with_capacity(512 * group + 256);
    loop {
        let sent_at = Instant::now();
        if sent_at >= end {
            break;
        }
        let body = body(group);
        request.clear();
        request.extend_from_slice(
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                target.path,
                target.addr,
                body.len()
            )
            .as_bytes(),
        );
        if let Some(auth) = &target.authorization {
            request.extend_from_slice(format!("Authorization: {auth}\r\n").as_bytes());
        }
        if let Some(signer) = &target.signer {
            let id = format!("msg_{}", NEXT_EVENT.fetch_add(1, Ordering::Relaxed));
            let now = gancho_core::Clock::now(&gancho_core::SystemClock).timestamp();
            let signature = signer.sign(&id, now, body.as_bytes());
            request.extend_from_slice(
                format!(
                    "webhook-id: {id}\r\nwebhook-timestamp: {now}\r\nwebhook-signature: {signature}\r\n"
                )
                .as_bytes(),
            );
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body.as_bytes());
        stream.write_all(&request).await?;
        let status = read_response(&mut stream, &mut buf).await?;
        let latency = sent_at.elapsed();
        if status == 200 {
            report.events_total += group as u64;
            if sent_at >= measure_from {
                report.requests += 1;
                report.latency.record(
                    u64::try_from(latency.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                )?;
            }
        } else {
            report.errors += 1;
        }
    }
    Ok(report)
}

/// Reads one response with a Content-Length body; returns its status.
pub(crate) async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<u16> {
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..head_end])?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("bad status line")?;
            let length = head
                .split("\r\n")
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = head_end + 4 + length;
            while buf.len() < total {
                read_more(stream, buf).await?;
            }
            buf.drain(..total);
            return Ok(status);
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        bail!("the server closed the connection");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Starts the do-nothing endpoint on its own thread: it parses the JSON body and answers 200,
/// with the same worker count as gancho's default.
pub fn start_ceiling() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let served = actix_web::rt::System::new().block_on(async move {
            HttpServer::new(|| {
                App::new()
                    .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                    .route("/hooks/{source}", web::post().to(ceiling))
            })
            .disable_signals()
            .listen(listener)?
            .run()
            .await
        });
        if let Err(err) = served {
            eprintln!("ceiling server failed: {err}");
        }
    });
    Ok(addr)
}

async fn ceiling(body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(value) => {
            let n = value.as_array().map_or(1, Vec::len);
            HttpResponse::Ok()
                .json(serde_json::json!({"stored": n, "duplicates": 0, "quarantined": 0}))
        }
        Err(err) => HttpResponse::BadRequest().body(err.to_string()),
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
