//! The admin listener (`[admin] listen`): what operators and their tools reach over HTTP,
//! apart from the public port. `/healthz` and `/readyz` are open; every other route needs
//! `Authorization: Bearer TOKEN` (`[admin] token`), compared in constant time, and answers 401
//! with a JSON reason that says nothing of the token otherwise. Without a token the listener
//! does not start.
//!
//! Routes answer from the control socket's functions (`control::respond`,
//! `control::stream_listing`): the CLI and the API share one implementation of each answer,
//! and listings are streamed as the store walks them, never built whole.

use std::net::TcpListener;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use gancho_engine::SharedStatus;
use serde_json::json;

use crate::config::AdminConfig;
use crate::control::{self, Request, Response};
use crate::data::Data;

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
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(serve_metrics))
                .route("/admin/status", web::get().to(status))
                .route("/admin/rules", web::get().to(rules))
                .route("/admin/rules/{name}", web::get().to(rule))
                .route("/admin/rules/{name}/disable", web::post().to(disable))
                .route("/admin/rules/{name}/enable", web::post().to(enable))
                .route("/admin/events", web::get().to(events))
                .route("/admin/events/stream", web::get().to(stream))
                .route("/admin/events/{id}", web::get().to(event))
                .route("/admin/outbox", web::get().to(outbox))
                .route("/admin/dead", web::get().to(dead))
                .route("/admin/dead/retry-all", web::post().to(retry_all))
                .route("/admin/dead/{id}/retry", web::post().to(retry_one))
                .route("/admin/sent", web::get().to(sent))
                .route("/admin/quarantine", web::get().to(quarantine))
                .route("/admin/timers", web::get().to(timers))
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

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped.
    pub async fn wait(self) -> std::io::Result<()> {
        self.server.await
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.into() }))
}

/// Whether the request carries the token, compared in constant time.
fn authorized(request: &HttpRequest, state: &State) -> bool {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    gancho_ingress::constant_time_eq(&sha256(given), &state.token_digest)
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
        ("limit" = Option<usize>, Query, description = "Rules in the page: default 100, at most 1000"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the page before; none for the first page"),
    ),
    responses(
        (status = 200, description = "gancho rules --json"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn rules(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let params = match guarded(&request, &state, &[]) {
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

/// The query string's parameters of a listing route, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    source: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// `NAME=VALUE`.
    key: Option<String>,
    /// An RFC 3339 time, or a duration back from now (`"24h"`).
    since: Option<String>,
    channel: Option<gancho_core::Channel>,
    rule: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// The parameters of `request`, if its query string is one this route takes; the 400 answer
/// if not. Read after the token is checked, so a caller without it learns nothing of them.
fn params(request: &HttpRequest, allowed: &[&str]) -> Result<ListParams, HttpResponse> {
    let params = web::Query::<ListParams>::from_query(request.query_string())
        .map_err(|err| error(StatusCode::BAD_REQUEST, format!("query string: {err}")))?
        .into_inner();
    let given = [
        ("source", params.source.is_some()),
        ("type", params.kind.is_some()),
        ("key", params.key.is_some()),
        ("since", params.since.is_some()),
        ("channel", params.channel.is_some()),
        ("rule", params.rule.is_some()),
    ];
    if let Some((name, _)) = given
        .iter()
        .find(|(name, given)| *given && !allowed.contains(name))
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("query string: this route does not take {name:?}"),
        ));
    }
    Ok(params)
}

/// `since` as an instant: an RFC 3339 time, or a duration back from now.
fn since(text: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, HttpResponse> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Some(time.with_timezone(&chrono::Utc)));
    }
    let back = humantime::parse_duration(text)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!("since: {text:?} is neither an RFC 3339 time nor a duration such as 24h"),
            )
        })?;
    Ok(Some(
        gancho_core::Clock::now(&gancho_core::SystemClock) - back,
    ))
}

/// A page of `listing`, read off the async threads.
async fn list(
    state: &web::Data<State>,
    listing: crate::pages::Listing,
    params: &ListParams,
) -> HttpResponse {
    let data = state.data.clone();
    let (cursor, limit) = (params.cursor.clone(), params.limit.unwrap_or(0));
    let page =
        web::block(move || crate::pages::page(&data, &listing, cursor.as_deref(), limit)).await;
    match page {
        Ok(Ok(page)) => HttpResponse::Ok().json(page),
        Ok(Err(err @ crate::pages::PageError::BadCursor(_))) => {
            error(StatusCode::BAD_REQUEST, err.to_string())
        }
        Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request was cancelled",
        ),
    }
}

/// Checks the token, then reads the route's parameters: the answer to give instead, if any.
fn guarded(
    request: &HttpRequest,
    state: &State,
    allowed: &[&str],
) -> Result<ListParams, HttpResponse> {
    if !authorized(request, state) {
        return Err(unauthorized());
    }
    params(request, allowed)
}

#[utoipa::path(
    get,
    path = "/admin/events",
    tag = "admin",
    summary = "Stored events, newest first",
    params(
        ("source" = Option<String>, Query, description = "Only this source"),
        ("type" = Option<String>, Query, description = "Only this type, in the source's words (open)"),
        ("key" = Option<String>, Query, description = "Only events with this correlation key, NAME=VALUE"),
        ("since" = Option<String>, Query, description = "Only since this RFC 3339 time, or this duration back from now (24h)"),
        ("limit" = Option<usize>, Query, description = "Items in the page: default 100, at most 1000"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the page before; none for the first page"),
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn events(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let params = match guarded(&request, &state, &["source", "type", "key", "since"]) {
        Ok(params) => params,
        Err(answer) => return answer,
    };
    let key = match params.key.as_deref().map(|k| k.split_once('=')) {
        None => None,
        Some(Some((name, value))) if !name.is_empty() => Some((name.to_owned(), value.to_owned())),
        Some(_) => return error(StatusCode::BAD_REQUEST, "key: give it as NAME=VALUE"),
    };
    let since = match since(params.since.as_deref()) {
        Ok(since) => since,
        Err(answer) => return answer,
    };
    let query = control::Query {
        source: params.source.clone(),
        kind: params.kind.clone(),
        key,
        since,
        limit: 0,
    };
    list(&state, crate::pages::Listing::Events(query), &params).await
}

/// A listing whose filters are its parameters as given: checks the token and the parameters,
/// then answers the page.
async fn list_with(
    request: &HttpRequest,
    state: &web::Data<State>,
    allowed: &[&str],
    listing: impl FnOnce(&ListParams) -> crate::pages::Listing,
) -> HttpResponse {
    match guarded(request, state, allowed) {
        Ok(params) => list(state, listing(&params), &params).await,
        Err(answer) => answer,
    }
}

#[utoipa::path(
    get,
    path = "/admin/outbox",
    tag = "admin",
    summary = "Actions waiting, in delivery order",
    params(
        ("channel" = Option<String>, Query, description = "Only this channel: email, sms or http"),
        ("limit" = Option<usize>, Query, description = "Items in the page: default 100, at most 1000"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the page before; none for the first page"),
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn outbox(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    list_with(&request, &state, &["channel"], |p| {
        crate::pages::Listing::Outbox { channel: p.channel }
    })
    .await
}

#[utoipa::path(
    get,
    path = "/admin/dead",
    tag = "admin",
    summary = "Dead letters, in decision order",
    params(
        ("channel" = Option<String>, Query, description = "Only this channel: email, sms or http"),
        ("limit" = Option<usize>, Query, description = "Items in the page: default 100, at most 1000"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the page before; none for the first page"),
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn dead(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    list_with(&request, &state, &["channel"], |p| {
        crate::pages::Listing::Dead { channel: p.channel }
    })
    .await
}

#[utoipa::path(
    get,
    path = "/admin/sent",
    tag = "admin",
    summary = "Delivered actions, newest first",
    params(
        ("channel" = Option<String>, Query, description = "Only this channel: email, sms or http"),
        ("since" = Option<String>, Query, description = "Only since this RFC 3339 time, or this duration back from now (24h)"),
        ("limit" = Option<usize>, Query, description = "Items in the page: default 100, at most 1000"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the page before; none for the first page"),
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn sent(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let params = match guarded(&request, &state, &["channel", "since"]) {
        Ok(params) => params,
        Err(answer) => return answer,
    };
    let since_ms = match since(params.since.as_deref()) {
        Ok(since) => since.map(|t| t.timestamp_millis()),
        Err(answer) => return answer,
    };
    let query = gancho_state::sent::SentQuery {
        channel: params.channel,
        since_ms,
        limit: 0,
    };
    list(&state, crate::pages::Listing::Sent(query), &params).await
}

#[utoipa::path(
    get,
    path = "/admin/quarantine",
    tag = "admin",
    summary = "Quarantined items, newest first",
    params(
        ("limit" = Option<usize>, Query, description = "Items in the page: default 100, at most 1000"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the page before; none for the first page"),
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn quarantine(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    list_with(&request, &state, &[], |_| crate::pages::Listing::Quarantine).await
}

#[utoipa::path(
    get,
    path = "/admin/timers",
    tag = "admin",
    summary = "Pending timers and expectations, by rule and name",
    params(
        ("rule" = Option<String>, Query, description = "Only this rule's"),
        ("limit" = Option<usize>, Query, description = "Items in the page: default 100, at most 1000"),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the page before; none for the first page"),
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn timers(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    list_with(&request, &state, &["rule"], |p| {
        crate::pages::Listing::Timers {
            rule: p.rule.clone(),
        }
    })
    .await
}

/// `GET /admin/events/ID`: the event (by seq, or by its id `p:…`/`h:…`), what each rule it woke
/// did, and what became of the actions: `gancho explain`'s answer.
#[utoipa::path(
    get,
    path = "/admin/events/{id}",
    tag = "admin",
    summary = "One event, the runs it woke and what became of their actions",
    params(
        ("id" = String, Path, description = "Its seq, or its id (p:..., h:...)"),
    ),
    responses(
        (status = 200, description = "gancho explain --json"),
        (status = 404, description = "No such event is stored"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn event(
    request: HttpRequest,
    state: web::Data<State>,
    id: web::Path<String>,
) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    let id = id.into_inner();
    let (data, engine, sources) = (
        state.data.clone(),
        state.engine.clone(),
        state.sources.clone(),
    );
    let answered = web::block(move || {
        let seq = match id.parse::<u64>() {
            Ok(seq) => Some(seq),
            Err(_) => {
                match control::respond(&data, Some(&engine), &Request::FindEvent { id, sources }) {
                    Response::Found(seq) => seq,
                    other => return other,
                }
            }
        };
        match seq {
            Some(seq) => control::respond(&data, Some(&engine), &Request::Explain { seq }),
            None => Response::Explained(Default::default()),
        }
    })
    .await;
    match answered {
        Ok(Response::Explained(what)) if what.event.is_none() => {
            error(StatusCode::NOT_FOUND, "no such event is stored")
        }
        Ok(Response::Explained(what)) => HttpResponse::Ok().json(what),
        Ok(Response::Error(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Ok(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer"),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request was cancelled",
        ),
    }
}

/// Puts dead letters back in the outbox: `gancho dead retry`'s request.
async fn retry(state: &web::Data<State>, id: Option<String>) -> HttpResponse {
    let data = state.data.clone();
    let named = id.is_some();
    let answered =
        web::block(move || control::respond(&data, None, &Request::DeadRetry { id })).await;
    match answered {
        Ok(Response::Retried(0)) if named => error(StatusCode::NOT_FOUND, "no such dead letter"),
        Ok(Response::Retried(n)) => HttpResponse::Ok().json(json!({ "retried": n })),
        Ok(Response::Error(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Ok(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer"),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request was cancelled",
        ),
    }
}

#[utoipa::path(
    post,
    path = "/admin/dead/{id}/retry",
    tag = "admin",
    summary = "Put one dead letter back in the outbox",
    params(
        ("id" = String, Path, description = "The action's id"),
    ),
    responses(
        (status = 200, description = "{\"retried\": 1}"),
        (status = 404, description = "No such dead letter"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn retry_one(
    request: HttpRequest,
    state: web::Data<State>,
    id: web::Path<String>,
) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    retry(&state, Some(id.into_inner())).await
}

#[utoipa::path(
    post,
    path = "/admin/dead/retry-all",
    tag = "admin",
    summary = "Put every dead letter back in the outbox",
    responses(
        (status = 200, description = "{\"retried\": N}"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn retry_all(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    retry(&state, None).await
}

/// `GET /admin/events/stream`: new events and the rules' decisions as Server-Sent Events
/// (`tail.rs`), from the log's head, or after the `Last-Event-ID` a reconnecting client sends.
#[utoipa::path(
    get,
    path = "/admin/events/stream",
    tag = "admin",
    summary = "New events and the rules' decisions, as Server-Sent Events",
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id (E-D: the last event and the last decision received)"),
    ),
    responses(
        (status = 200, description = "text/event-stream: event: event (id: seq), event: decision"),
        (status = 400, description = "Last-Event-ID is not a seq"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
async fn stream(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    let after = match request.headers().get("last-event-id") {
        None => None,
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(crate::tail::Tail::parse_last_id)
        {
            Some(ids) => Some(ids),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID: not an id this stream sent",
                );
            }
        },
    };
    let tail = crate::tail::Tail::new(state.data.clone(), after);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(futures_util::stream::unfold(
            tail,
            crate::tail::Tail::next_chunk,
        ))
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
        healthz, readyz, serve_metrics, status, rules, rule, disable, enable, events, stream,
        event, outbox, dead, retry_all, retry_one, sent, quarantine, timers, openapi
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
