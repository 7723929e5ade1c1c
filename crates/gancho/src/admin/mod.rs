//! The admin listener (`[admin] listen`): what operators and their tools reach over HTTP,
//! apart from the public port. `/healthz` and `/readyz` are open; every other route needs
//! `Authorization: Bearer TOKEN` (`[admin] token`), compared in constant time, and answers 401
//! with a JSON reason that says nothing of the token otherwise. Without a token the listener
//! does not start.
//!
//! Routes answer from the control socket's functions (`control::respond`,
//! `control::stream_listing`): the CLI and the API share one implementation of each answer,
//! and listings are streamed as the store walks them, never built whole.
//!
//! `listings.rs` has the listing routes; this module the server, the token, the probes,
//! metrics, status and rules, and the OpenAPI document that gathers every route. The web
//! dashboard (`crate::dashboard`) is served by the same server, at `/`.

mod cluster;
mod listings;

use std::net::TcpListener;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use gancho_engine::SharedStatus;
use serde_json::json;

use crate::config::AdminConfig;
use crate::control::{self, Request, Response};
use crate::data::Data;
pub use cluster::{ClusterSources, start_cluster};
use listings::Page;

/// The read gauges (lags, queues, sizes) are sampled at most this often.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

struct State {
    data: Data,
    engine: SharedStatus,
    /// The token's SHA-256: what a given token's digest is compared with, so the comparison's
    /// time says nothing of the token, its length included.
    token_digest: Vec<u8>,
    ready_max_lag: u64,
    started: std::time::Instant,
    /// Renders `/metrics`.
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    metrics_public: bool,
    /// When the read gauges were last sampled: at most every [`SAMPLE_EVERY`], however often
    /// `/metrics` is asked (the queue gauges walk their records).
    sampled: std::sync::Mutex<Option<std::time::Instant>>,
    store_dir: std::path::PathBuf,
    /// The configured sources' names: where an event id is looked up.
    sources: Vec<String>,
}

/// The running admin server.
pub struct AdminServer {
    server: actix_web::dev::Server,
    local_addr: std::net::SocketAddr,
}

impl AdminServer {
    /// Serves on `listener`, if the config has a token; `None` otherwise.
    pub fn start(
        listener: TcpListener,
        config: &AdminConfig,
        data: Data,
        store_dir: std::path::PathBuf,
        engine: SharedStatus,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        sources: Vec<String>,
    ) -> std::io::Result<Option<AdminServer>> {
        let Some(token) = config.token.as_ref().and_then(|t| t.expose()) else {
            return Ok(None);
        };
        let local_addr = listener.local_addr()?;
        let dashboard = web::Data::new(crate::dashboard::Dashboard::start(
            data.clone(),
            engine.clone(),
            sha256(token.as_bytes()),
            store_dir.clone(),
            metrics.clone(),
            sources.clone(),
        )?);
        let state = web::Data::new(State {
            data,
            engine,
            token_digest: sha256(token.as_bytes()),
            ready_max_lag: config.ready_max_lag,
            started: std::time::Instant::now(),
            metrics,
            metrics_public: config.metrics_public,
            sampled: std::sync::Mutex::new(None),
            store_dir,
            sources,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(dashboard.clone())
                .configure(crate::dashboard::routes)
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(serve_metrics))
                .route("/admin/status", web::get().to(status))
                .route("/admin/rules", web::get().to(rules))
                .route("/admin/rules/{name}", web::get().to(rule))
                .route("/admin/rules/{name}/disable", web::post().to(disable))
                .route("/admin/rules/{name}/enable", web::post().to(enable))
                .route("/admin/events", web::get().to(listings::events))
                .route("/admin/events/stream", web::get().to(listings::stream))
                .route("/admin/events/{id}", web::get().to(listings::event))
                .route("/admin/outbox", web::get().to(listings::outbox))
                .route("/admin/dead", web::get().to(listings::dead))
                .route("/admin/dead/retry-all", web::post().to(listings::retry_all))
                .route(
                    "/admin/dead/{id}/retry",
                    web::post().to(listings::retry_one),
                )
                .route("/admin/sent", web::get().to(listings::sent))
                .route("/admin/quarantine", web::get().to(listings::quarantine))
                .route("/admin/timers", web::get().to(listings::timers))
                .route("/admin/openapi.json", web::get().to(openapi))
                .default_service(web::to(not_found))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)?
        .run();
        Ok(Some(AdminServer { server, local_addr }))
    }
}

/// The admin server (if the config started one) serving on a task of the current runtime.
pub struct RunningAdmin {
    running: Option<(
        std::net::SocketAddr,
        actix_web::dev::ServerHandle,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
}

impl RunningAdmin {
    pub fn spawn(admin: Option<AdminServer>) -> RunningAdmin {
        RunningAdmin {
            running: admin.map(|admin| {
                let handle = admin.server.handle();
                (admin.local_addr, handle, tokio::spawn(admin.server))
            }),
        }
    }

    /// Its address for the log's ready line, or `off`.
    pub fn addr(&self) -> String {
        self.running
            .as_ref()
            .map_or_else(|| "off".to_owned(), |(addr, _, _)| addr.to_string())
    }

    /// Stops it gracefully (requests in flight answered) and waits for its task.
    pub async fn stop(self) {
        if let Some((_, handle, task)) = self.running {
            handle.stop(true).await;
            let _ = task.await;
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.into() }))
}

/// Whether the request carries the token, compared in constant time.
fn authorized(request: &HttpRequest, state: &State) -> bool {
    bearer_matches(request, &state.token_digest)
}

/// Whether the request's bearer token has this SHA-256, compared in constant time.
fn bearer_matches(request: &HttpRequest, token_digest: &[u8]) -> bool {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    gancho_ingress::constant_time_eq(&sha256(given), token_digest)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
        .json(json!({ "error": "unauthorized: this route needs Authorization: Bearer TOKEN" }))
}

/// Answers `request` as the control socket would, off the async threads (it reads the store).
async fn respond(state: &web::Data<State>, request: Request) -> HttpResponse {
    let (data, engine) = (state.data.clone(), state.engine.clone());
    let answered = web::block(move || control::respond(&data, Some(&engine), &request)).await;
    match answered {
        Ok(Response::Error(message)) => error(StatusCode::BAD_REQUEST, message),
        Ok(response) => HttpResponse::Ok().json(response),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request was cancelled",
        ),
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "admin",
    summary = "Whether the stores work",
    responses(
        (status = 200, description = "ok"),
        (status = 503, description = "A store failed, and why"),
    ),
)]
async fn healthz(state: web::Data<State>) -> HttpResponse {
    match state.data.store.failure() {
        None => HttpResponse::Ok().content_type("text/plain").body("ok\n"),
        Some(reason) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store failed: {reason}"),
        ),
    }
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "admin",
    summary = "Whether the daemon is ready for traffic",
    responses(
        (status = 200, description = "{\"ready\": true}"),
        (status = 503, description = "{\"ready\": false, \"reason\": ...}"),
    ),
)]
async fn readyz(state: web::Data<State>) -> HttpResponse {
    match crate::ready::check(&state.data, &state.engine, state.ready_max_lag) {
        Ok(()) => HttpResponse::Ok().json(json!({ "ready": true })),
        Err(reason) => HttpResponse::ServiceUnavailable().json(json!({
            "ready": false,
            "reason": reason,
        })),
    }
}

/// The Prometheus text exposition: the counters as counted, the gauges read now.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "admin",
    summary = "Prometheus text exposition (open when [admin] metrics_public)",
    responses(
        (status = 200, description = "text/plain; version=0.0.4"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn serve_metrics(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !state.metrics_public && !authorized(&request, &state) {
        return unauthorized();
    }
    let cursor = engine_status(&state).cursor;
    let state = state.into_inner();
    let rendered = web::block(move || {
        let due = {
            let mut sampled = state.sampled.lock().unwrap_or_else(|e| e.into_inner());
            let due = sampled.is_none_or(|at| at.elapsed() >= SAMPLE_EVERY);
            if due {
                *sampled = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            crate::metrics::sample(&state.data, &state.store_dir, cursor)?;
        }
        state.metrics.run_upkeep();
        Ok::<_, gancho_store::StoreError>(state.metrics.render())
    })
    .await;
    match rendered {
        Ok(Ok(text)) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request was cancelled",
        ),
    }
}

#[utoipa::path(
    get,
    path = "/admin/status",
    tag = "admin",
    summary = "The log, index and engine positions, lags, store sizes, uptime, version",
    responses(
        (status = 200, description = "gancho status, with store_bytes, uptime_seconds and version"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn status(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    let (data, engine) = (state.data.clone(), state.engine.clone());
    let uptime = state.started.elapsed().as_secs();
    let store_dir = state.store_dir.clone();
    let answered = web::block(move || {
        let status = control::respond(&data, Some(&engine), &Request::Status);
        let bytes: serde_json::Map<String, serde_json::Value> =
            crate::metrics::store_bytes(&store_dir)
                .into_iter()
                .map(|(db, bytes)| (db.to_owned(), bytes.into()))
                .collect();
        (status, bytes)
    })
    .await;
    match answered {
        Ok((Response::Status(status), store_bytes)) => HttpResponse::Ok().json(json!({
            "status": status,
            "store_bytes": store_bytes,
            "uptime_seconds": uptime,
            "version": env!("CARGO_PKG_VERSION"),
        })),
        Ok((Response::Error(message), _)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer"),
    }
}

#[utoipa::path(
    get,
    path = "/admin/rules",
    tag = "admin",
    summary = "Every rule: file, loaded or broken, disabled or paused, counters, last error",
    params(
        Page,
    ),
    responses(
        (status = 200, description = "gancho rules --json"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn rules(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let params = match listings::guarded(&request, &state, &[]) {
        Ok(params) => params,
        Err(answer) => return answer,
    };
    let status = engine_status(&state);
    let limit = params.limit.unwrap_or(0);
    match crate::pages::rules_page(status.rules, params.cursor.as_deref(), limit) {
        Ok((rules, next_cursor)) => HttpResponse::Ok().json(json!({
            "cursor": status.cursor,
            "rules": rules,
            "next_cursor": next_cursor,
        })),
        Err(err) => error(StatusCode::BAD_REQUEST, err.to_string()),
    }
}

/// The running engine's status, as `gancho rules` shows it.
fn engine_status(state: &State) -> gancho_engine::EngineStatus {
    state
        .engine
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

#[utoipa::path(
    get,
    path = "/admin/rules/{name}",
    tag = "admin",
    summary = "One rule",
    params(
        ("name" = String, Path, description = "The rule's name (its file without .rhai)"),
    ),
    responses(
        (status = 200, description = "The rule as /admin/rules lists it"),
        (status = 404, description = "No such rule"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn rule(
    request: HttpRequest,
    state: web::Data<State>,
    name: web::Path<String>,
) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    match engine_status(&state)
        .rules
        .into_iter()
        .find(|r| r.name == *name)
    {
        Some(rule) => HttpResponse::Ok().json(rule),
        None => error(StatusCode::NOT_FOUND, format!("no rule {name}")),
    }
}

async fn control_rule(
    request: HttpRequest,
    state: web::Data<State>,
    name: String,
    enable: bool,
) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    respond(&state, Request::RuleControl { name, enable }).await
}

#[utoipa::path(
    post,
    path = "/admin/rules/{name}/disable",
    tag = "admin",
    summary = "Disable a rule (held across restarts)",
    params(
        ("name" = String, Path, description = "The rule's name"),
    ),
    responses(
        (status = 200, description = "{\"done\": ...}"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn disable(
    request: HttpRequest,
    state: web::Data<State>,
    name: web::Path<String>,
) -> HttpResponse {
    control_rule(request, state, name.into_inner(), false).await
}

#[utoipa::path(
    post,
    path = "/admin/rules/{name}/enable",
    tag = "admin",
    summary = "Enable (or resume) a rule",
    params(
        ("name" = String, Path, description = "The rule's name"),
    ),
    responses(
        (status = 200, description = "{\"done\": ...}"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn enable(
    request: HttpRequest,
    state: web::Data<State>,
    name: web::Path<String>,
) -> HttpResponse {
    control_rule(request, state, name.into_inner(), true).await
}

async fn not_found(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    // Unknown routes say no more than known ones to a caller without the token.
    if !authorized(&request, &state) {
        return unauthorized();
    }
    error(StatusCode::NOT_FOUND, "no such route")
}

#[utoipa::path(
    get,
    path = "/admin/openapi.json",
    tag = "admin",
    summary = "This document",
    responses(
        (status = 200, description = "OpenAPI 3"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn openapi(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    HttpResponse::Ok().json(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// The OpenAPI 3 document of the admin listener, generated from the routes' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "gancho admin API", description = "The admin listener ([admin] listen): every route but /healthz and /readyz needs Authorization: Bearer TOKEN."),
    paths(
        healthz, readyz, serve_metrics, status, rules, rule, disable, enable,
        listings::events, listings::stream, listings::event, listings::outbox, listings::dead,
        listings::retry_all, listings::retry_one, listings::sent, listings::quarantine,
        listings::timers, openapi
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the routes name.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
