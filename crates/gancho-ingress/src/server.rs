use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use gancho_core::Clock;
use gancho_core::publish::EventPublisher;
use gancho_store::{Appender, Store, StoreError};
use serde_json::json;
use tracing::{debug, warn};

use crate::adapter::BodyError;
use crate::publish::{Counts, Refused, publish};
use crate::sources::{BodyFormat, Source, Sources};

/// What the server needs to know, already validated.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub sources: Vec<Source>,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// HTTP worker threads; 0: one per core.
    pub workers: usize,
    /// How long a graceful stop waits for requests in flight.
    pub shutdown_grace: Duration,
    /// How long a request's body may take to arrive, from the end of its head; past it the
    /// answer is 408 and the connection closes.
    pub body_timeout: Duration,
    /// Connections open at once, at most (the rest wait in the kernel's accept queue).
    pub max_connections: usize,
}

impl Default for IngressConfig {
    /// No sources, bodies up to 1 MiB arriving within 10 s, a worker per core, 10,000
    /// connections, 30 s for requests in flight.
    fn default() -> IngressConfig {
        IngressConfig {
            sources: Vec::new(),
            max_body_bytes: 1024 * 1024,
            workers: 0,
            shutdown_grace: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// Whether the daemon is ready for traffic (`GET /readyz`): `Err` says why not. The binary
/// knows what readiness takes (the engine's lag, the rules); this crate only answers it.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Why a request was refused, as `gancho_events_rejected_total{reason}` says it; items put in
/// quarantine are `invalid`.
const REJECTIONS: [(StatusCode, &str); 6] = [
    (StatusCode::UNAUTHORIZED, "unauthorized"),
    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "content_type"),
    (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
    (StatusCode::REQUEST_TIMEOUT, "timeout"),
    (StatusCode::BAD_REQUEST, "malformed"),
    (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
];

/// A source's series, registered once (no-ops unless the daemon installed a recorder).
struct SourceMetrics {
    received: metrics::Counter,
    duplicate: metrics::Counter,
    /// By reason, in the order of [`REJECTIONS`].
    rejected: Vec<metrics::Counter>,
}

impl SourceMetrics {
    fn new(source: &str) -> SourceMetrics {
        let source = source.to_owned();
        SourceMetrics {
            received: metrics::counter!("gancho_events_received_total", "source" => source.clone()),
            duplicate: metrics::counter!("gancho_events_duplicate_total", "source" => source.clone()),
            rejected: REJECTIONS
                .iter()
                .map(|(_, reason)| {
                    metrics::counter!(
                        "gancho_events_rejected_total",
                        "source" => source.clone(),
                        "reason" => *reason
                    )
                })
                .collect(),
        }
    }

    fn rejected(&self, reason: &str) -> Option<&metrics::Counter> {
        let i = REJECTIONS.iter().position(|(_, r)| *r == reason)?;
        self.rejected.get(i)
    }
}

struct State {
    ready: Readiness,
    metrics: HashMap<String, SourceMetrics>,
    request_seconds: metrics::Histogram,
    sources: Sources,
    max_body_bytes: usize,
    body_timeout: Duration,
    appender: Appender,
    /// Cluster mode: where the events go (the items refused still go to this node's
    /// quarantine). `None`: to the local log, with the quarantined items, as one submission.
    publisher: Option<Arc<dyn EventPublisher>>,
    store: Store,
    clock: Arc<dyn Clock>,
}

/// The running HTTP server.
pub struct IngressServer {
    server: actix_web::dev::Server,
    local_addr: SocketAddr,
    sources: Sources,
}

impl std::fmt::Debug for IngressServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// Stops the server from elsewhere.
#[derive(Clone)]
pub struct IngressHandle(actix_web::dev::ServerHandle);

impl std::fmt::Debug for IngressHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IngressHandle")
    }
}

impl IngressHandle {
    /// Stops accepting connections and waits (up to the configured grace) for requests in
    /// flight to be answered.
    pub async fn stop(&self) {
        self.0.stop(true).await;
    }
}

/// Runs a future to completion on the runtime the HTTP server needs (actix's system on a tokio
/// current-thread runtime). The binary's async code runs inside it.
pub fn block_on<F: Future>(future: F) -> F::Output {
    actix_web::rt::System::new().block_on(future)
}

impl IngressServer {
    /// Starts serving on an already bound listener. Must run inside [`block_on`].
    pub fn start(
        listener: TcpListener,
        config: IngressConfig,
        store: Store,
        clock: Arc<dyn Clock>,
        ready: Readiness,
    ) -> std::io::Result<IngressServer> {
        IngressServer::start_publishing(listener, config, store, clock, ready, None)
    }

    /// [`IngressServer::start`], with the events of each request given to `publisher` (cluster
    /// mode) instead of the local log.
    pub fn start_publishing(
        listener: TcpListener,
        config: IngressConfig,
        store: Store,
        clock: Arc<dyn Clock>,
        ready: Readiness,
        publisher: Option<Arc<dyn EventPublisher>>,
    ) -> std::io::Result<IngressServer> {
        let local_addr = listener.local_addr()?;
        for source in config
            .sources
            .iter()
            .filter(|s| s.auth.is_none() && s.verify.is_none())
        {
            warn!(source = %source.name, "source has no authentication: anyone who can reach the port can post events to it");
        }
        let state = web::Data::new(State {
            ready,
            metrics: config
                .sources
                .iter()
                .map(|s| (s.name.clone(), SourceMetrics::new(&s.name)))
                .collect(),
            request_seconds: metrics::histogram!("gancho_ingest_request_seconds"),
            sources: Sources::new(config.sources),
            max_body_bytes: config.max_body_bytes,
            body_timeout: config.body_timeout,
            appender: store.appender(),
            publisher,
            store,
            clock,
        });
        let sources = state.sources.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                // `/hooks/{source}` is matched by hand under a static prefix: actix-web matches
                // a path parameter with a regex, a measurable part of a small webhook's cost.
                .service(web::scope("/hooks").default_service(web::to(hook)))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .default_service(web::to(not_found))
        })
        .disable_signals()
        .shutdown_timeout(config.shutdown_grace.as_secs().max(1));
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // actix-web counts connections per worker.
        server = server
            .workers(workers)
            .max_connections(config.max_connections.div_ceil(workers).max(1));
        let server = server.listen(listener)?.run();
        Ok(IngressServer {
            server,
            local_addr,
            sources,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The sources it accepts, whose credentials can be rotated while it runs.
    pub fn sources(&self) -> Sources {
        self.sources.clone()
    }

    pub fn handle(&self) -> IngressHandle {
        IngressHandle(self.server.handle())
    }

    /// Serves until stopped.
    pub async fn wait(self) -> std::io::Result<()> {
        self.server.await
    }
}

async fn healthz(state: web::Data<State>) -> HttpResponse {
    // The store is opened before the server binds, so answering at all means it is open.
    match state.store.failure() {
        None => HttpResponse::Ok().content_type("text/plain").body("ok\n"),
        Some(reason) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store failed: {reason}"),
        ),
    }
}

/// 200 when the daemon is ready for traffic, else 503 with the reason, both as JSON.
async fn readyz(state: web::Data<State>) -> HttpResponse {
    match (state.ready)() {
        Ok(()) => HttpResponse::Ok().json(json!({ "ready": true })),
        Err(reason) => HttpResponse::ServiceUnavailable().json(json!({
            "ready": false,
            "reason": reason,
        })),
    }
}

/// How far the log is durable and indexed: `indexed` trailing `durable` by more than a few
/// thousand events for long means indexing cannot keep up with the incoming rate.
async fn not_found(req: HttpRequest) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.path()),
    )
}

fn error(status: StatusCode, reason: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": reason.into() }))
}

/// The source named by a path `/hooks/NAME` (one segment, percent-decoded).
fn source_name(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    let segment = path.strip_prefix("/hooks/")?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
}

/// `POST /hooks/NAME`, measured: the request's time, and per configured source what was
/// stored, already there, or refused and why.
async fn hook(req: HttpRequest, payload: web::Payload, state: web::Data<State>) -> HttpResponse {
    let started = std::time::Instant::now();
    // Only configured sources are labels: anyone can post to any name.
    let series = source_name(req.path()).and_then(|name| state.metrics.get(name.as_ref()));
    let (response, counts) = receive(req, payload, &state).await;
    state
        .request_seconds
        .record(started.elapsed().as_secs_f64());
    if let Some(series) = series {
        match counts {
            Some(counts) => {
                series.received.increment(counts.stored as u64);
                series.duplicate.increment(counts.duplicates as u64);
                if let Some(invalid) = series.rejected("invalid") {
                    invalid.increment(counts.quarantined as u64);
                }
            }
            None => {
                let reason = REJECTIONS
                    .iter()
                    .find(|(status, _)| *status == response.status())
                    .map(|(_, reason)| *reason);
                if let Some(counter) = reason.and_then(|r| series.rejected(r)) {
                    counter.increment(1);
                }
            }
        }
    }
    response
}

async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: &web::Data<State>,
) -> (HttpResponse, Option<Counts>) {
    let response = |r: HttpResponse| (r, None);
    let Some(name) = source_name(req.path()) else {
        return response(not_found(req).await);
    };
    if req.method() != actix_web::http::Method::POST {
        let mut refused = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {}: webhooks are POSTed", req.method(), req.path()),
        );
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response(refused);
    }
    let name = name.into_owned();
    let sources = state.sources.0.load_full();
    let Some(source) = sources.get(&name) else {
        return response(error(
            StatusCode::NOT_FOUND,
            format!("unknown source {name:?}"),
        ));
    };
    if let Some(auth) = &source.auth
        && !auth.accepts(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )
    {
        let mut refused = error(StatusCode::UNAUTHORIZED, "missing or wrong credentials");
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"gancho\""),
        );
        return response(refused);
    }
    if let Err(reason) = check_content_type(&req, source.format) {
        return response(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, reason));
    }
    let body = match read_body(&req, payload, state.max_body_bytes, state.body_timeout).await {
        Ok(body) => body,
        Err(refused) => return response(refused),
    };
    if let Some(verifier) = &source.verify
        && let Err(failed) = verifier.check(req.headers(), &body, state.clock.now())
    {
        return response(error(
            StatusCode::UNAUTHORIZED,
            format!("signature check failed: {failed}"),
        ));
    }
    let (answer, counts) = parse_and_store(&req, state, source, &body).await;
    // Refused for a passing reason, the request will come again as the provider retries it:
    // its token is not spent. (A 4xx would come again refused all the same.)
    if answer.status() == StatusCode::SERVICE_UNAVAILABLE
        && let Some(verifier) = &source.verify
    {
        verifier.forget(&body);
    }
    (answer, counts)
}

/// The body of a request that passed its checks, parsed by the source's adapter and stored.
async fn parse_and_store(
    req: &HttpRequest,
    state: &web::Data<State>,
    source: &Source,
    body: &[u8],
) -> (HttpResponse, Option<Counts>) {
    let response = |r: HttpResponse| (r, None);
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(err) => {
            return response(error(
                StatusCode::BAD_REQUEST,
                format!("body is not valid JSON: it is not UTF-8 ({err})"),
            ));
        }
    };
    let converted;
    let text = match source.format {
        BodyFormat::Json => text,
        BodyFormat::Form => {
            converted = crate::formats::form_to_json(body);
            converted.as_str()
        }
        BodyFormat::Xml => match crate::formats::xml_to_json(text) {
            Ok(json) => {
                converted = json;
                converted.as_str()
            }
            Err(reason) => return response(error(StatusCode::BAD_REQUEST, reason)),
        },
    };
    let received = state.clock.now();
    let envelope = source.headers.read(req.headers());
    let submission = match crate::adapter::submission_with(
        &source.name,
        &source.kind,
        &source.time,
        &envelope,
        text,
        received,
    ) {
        Ok(submission) => submission,
        Err(err @ BodyError::NotJson(_)) => {
            return response(error(StatusCode::BAD_REQUEST, err.to_string()));
        }
        Err(err) => return response(error(StatusCode::UNPROCESSABLE_ENTITY, err.to_string())),
    };
    if let Some(first) = submission.rejected.first() {
        // One line per request, however many items it carried.
        warn!(
            source = %source.name,
            items = submission.rejected.len(),
            first_reason = %first.reason,
            "items quarantined"
        );
    }
    // Tests keep a request in flight here (`sleep`: it blocks this worker, which is the point).
    gancho_core::fail_point!("ingress.before_append");
    let stored = match &state.publisher {
        None => state
            .appender
            .append(submission)
            .await
            .map(|report| Counts {
                stored: report.stored.len(),
                duplicates: report.duplicates.len(),
                quarantined: report.quarantined.len(),
            }),
        Some(publisher) => match publish(publisher.as_ref(), &state.appender, submission).await {
            Ok(counts) => Ok(counts),
            Err(Refused::Store(err)) => Err(err),
            Err(Refused::Cluster(err)) => {
                warn!(source = %source.name, error = %err, "publishing webhook failed");
                return response(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{err}; retry later"),
                ));
            }
        },
    };
    match stored {
        Ok(counts) => {
            debug!(
                source = %source.name,
                stored = counts.stored,
                duplicates = counts.duplicates,
                quarantined = counts.quarantined,
                "webhook stored"
            );
            let answer = HttpResponse::Ok().json(json!({
                "stored": counts.stored,
                "duplicates": counts.duplicates,
                "quarantined": counts.quarantined,
            }));
            (answer, Some(counts))
        }
        Err(StoreError::Closed) => response(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down; retry later",
        )),
        Err(StoreError::Busy) => response(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests are waiting for the disk; retry later",
        )),
        Err(err @ StoreError::TooLarge(_)) => {
            response(error(StatusCode::UNPROCESSABLE_ENTITY, err.to_string()))
        }
        Err(err) => {
            warn!(source = %source.name, error = %err, "storing webhook failed");
            response(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "events could not be stored durably; retry later",
            ))
        }
    }
}

fn check_content_type(req: &HttpRequest, format: BodyFormat) -> Result<(), String> {
    let want = match format {
        BodyFormat::Json => "application/json",
        BodyFormat::Form => "application/x-www-form-urlencoded",
        BodyFormat::Xml => "application/xml",
    };
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Err(format!("missing Content-Type; send {want}"));
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    let accepted = match format {
        BodyFormat::Json => json,
        BodyFormat::Form => essence == want,
        BodyFormat::Xml => {
            essence == want
                || essence == "text/xml"
                || (essence.starts_with("application/") && essence.ends_with("+xml"))
        }
    };
    if accepted {
        Ok(())
    } else {
        Err(format!(
            "Content-Type {text:?} is not supported; send {want}"
        ))
    }
}

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<web::BytesMut, HttpResponse> {
    use futures_util::StreamExt as _;
    let deadline = std::time::Instant::now() + timeout;
    let too_large = || {
        closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        drain(&mut payload, deadline).await;
        return Err(too_large());
    }
    // Memory is taken as the bytes arrive: a declared length reserves nothing up front.
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(INITIAL_BODY_CAPACITY));
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|err| error(StatusCode::BAD_REQUEST, format!("reading body: {err}")))?;
            if body.len() + chunk.len() > limit {
                drain(&mut payload, deadline).await;
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match actix_web::rt::time::timeout(left(deadline), read).await {
        Ok(Ok(())) => Ok(body),
        Ok(Err(response)) => Err(response),
        Err(_) => Err(closing(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {}",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

/// The most a request's body may reserve before its bytes arrive.
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;

/// What is read and thrown away of a refused body, at most, so that a client that sends its
/// whole body before it reads the answer gets the answer rather than a reset.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// Reads and drops the rest of a body (up to [`DRAIN_LIMIT`], until `deadline`).
async fn drain(payload: &mut web::Payload, deadline: std::time::Instant) {
    use futures_util::StreamExt as _;
    let mut drained = 0usize;
    let _ = actix_web::rt::time::timeout(left(deadline), async {
        while let Some(Ok(chunk)) = payload.next().await {
            drained += chunk.len();
            if drained > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

fn left(deadline: std::time::Instant) -> Duration {
    deadline.saturating_duration_since(std::time::Instant::now())
}

/// An error answer after which the connection is closed (its body was not read whole).
fn closing(status: StatusCode, reason: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .force_close()
        .json(json!({ "error": reason.into() }))
}
