//! The web dashboard: server-rendered pages on the admin listener at `/` (Overview, Rules,
//! Events, Outbox, Dead letters, Quarantine, Timers), for operators who would otherwise SSH in
//! and read JSON. Each page reads what the CLI and the admin API read, through the same
//! functions (`control::respond`, `pages::typed_page`, `tail.rs`); the dashboard decides
//! nothing of its own and keeps nothing but its sessions and the last hour of figures.
//!
//! Pages are HTML written with maud, which escapes every interpolated value: payloads, keys,
//! rule errors and providers' answers are text, never markup. A strict Content-Security-Policy
//! (scripts and styles from the dashboard's own embedded files only) stands behind that. Each
//! page works without JavaScript; `assets/app.js` adds the live tail, the refreshing figures.
//!
//! Signing in takes the admin token and opens a session ([`session`]); every form that
//! changes something carries the session's CSRF token. Without a session, pages redirect to
//! the sign-in form and everything else answers 401.
//!
//! This module has the routes and what they read; the pages are drawn in `layout.rs`,
//! `overview.rs`, `rules.rs`, `events.rs` and `queues.rs`.

mod assets;
mod events;
mod highlight;
mod layout;
mod overview;
mod queues;
mod rules;
mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use gancho_engine::{EngineStatus, SharedStatus};
use maud::Markup;

use crate::control::{self, Request, Response};
use crate::data::Data;
use crate::pages::{Item, Listing};
use session::{Session, Sessions};

/// Items on a listing page.
const PAGE_ITEMS: usize = 50;
/// A rule's page shows this many of its last runs.
const RECENT_RUNS: usize = 20;
/// A rule's source is shown up to this size.
const MAX_SOURCE_BYTES: u64 = 1 << 20;
/// Wrong tokens are answered one at a time, each after this long: whoever guesses gets about
/// three tries a second, however many requests they send at once.
const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(300);
/// After a rule is disabled or enabled, the page waits up to this long for the engine to take
/// it, so the Rules page it goes back to shows it.
const RULE_CONTROL_WAIT: Duration = Duration::from_secs(5);

/// Why a page cannot show what it was asked for.
#[derive(Debug, thiserror::Error)]
enum Trouble {
    #[error(transparent)]
    Page(#[from] crate::pages::PageError),
    #[error(transparent)]
    Store(#[from] gancho_store::StoreError),
    #[error("the request was cancelled (the daemon is stopping)")]
    Cancelled,
    /// The Events page's filters, and what is wrong with them.
    #[error("{0}")]
    Filter(String),
    #[error("{file}: {reason}")]
    Source { file: String, reason: String },
}

/// What the pages read, and the open sessions.
pub struct Dashboard {
    data: Data,
    engine: SharedStatus,
    /// The admin token's SHA-256, as the admin API compares it.
    token_digest: Vec<u8>,
    sessions: Sessions,
    /// Held while a wrong token is answered: wrong tokens are answered one at a time, each
    /// after [`WRONG_TOKEN_DELAY`], however many come at once.
    wrong_tokens: tokio::sync::Mutex<()>,
    series: Arc<overview::Series>,
    /// The configured sources' names (the Events filter; where an event id is looked up).
    sources: Vec<String>,
}

impl Dashboard {
    /// The dashboard over `data`, its figures sampled by a thread of its own from now on.
    pub fn start(
        data: Data,
        engine: SharedStatus,
        token_digest: Vec<u8>,
        store_dir: std::path::PathBuf,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        sources: Vec<String>,
    ) -> std::io::Result<Dashboard> {
        let series = Arc::new(overview::Series::default());
        overview::start_sampler(
            &series,
            overview::Sources {
                data: data.clone(),
                engine: engine.clone(),
                store_dir,
                metrics,
            },
        )?;
        Ok(Dashboard {
            data,
            engine,
            token_digest,
            sessions: Sessions::new(),
            wrong_tokens: tokio::sync::Mutex::new(()),
            series,
            sources,
        })
    }

    fn engine_status(&self) -> EngineStatus {
        self.engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Adds the dashboard's routes; the app must hold a `web::Data<Dashboard>`.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(overview_page))
        .route("/overview/figures", web::get().to(overview_figures))
        .route("/sign-in", web::get().to(sign_in_form))
        .route("/sign-in", web::post().to(sign_in))
        .route("/sign-out", web::post().to(sign_out))
        .route("/rules", web::get().to(rules_page))
        .route("/rules/{name}", web::get().to(rule_page))
        .route("/rules/{name}/disable", web::post().to(disable_rule))
        .route("/rules/{name}/enable", web::post().to(enable_rule))
        .route("/events", web::get().to(events_page))
        .route("/events/live", web::get().to(events_live))
        .route("/events/{id}", web::get().to(event_page))
        .route("/outbox", web::get().to(outbox_page))
        .route("/dead", web::get().to(dead_page))
        .route("/dead/retry-all", web::get().to(confirm_retry_all))
        .route("/dead/retry-all", web::post().to(retry_all))
        .route("/dead/{id}/retry", web::get().to(confirm_retry_one))
        .route("/dead/{id}/retry", web::post().to(retry_one))
        .route("/quarantine", web::get().to(quarantine_page))
        .route("/timers", web::get().to(timers_page))
        .route("/favicon.ico", web::get().to(no_icon))
        .route("/assets/app.css", web::get().to(css))
        .route("/assets/app.js", web::get().to(js));
}

// ---- answers ---------------------------------------------------------------------------

/// The headers every dashboard answer carries: what the browser may load (the dashboard's own
/// files only, no inline script or style), no framing, no sniffing, no referrer.
fn hardened(status: StatusCode) -> actix_web::HttpResponseBuilder {
    let mut builder = HttpResponse::build(status);
    builder
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    builder
}

fn html(status: StatusCode, markup: Markup) -> HttpResponse {
    hardened(status)
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// A whole page, with the navigation.
fn page(
    status: StatusCode,
    title: &str,
    nav: &str,
    session: &Session,
    content: Markup,
) -> HttpResponse {
    html(status, layout::page(title, nav, session, content))
}

fn see_other(location: &str) -> HttpResponse {
    hardened(StatusCode::SEE_OTHER)
        .insert_header((header::LOCATION, location.to_owned()))
        .finish()
}

fn message(
    status: StatusCode,
    title: &str,
    nav: &str,
    session: &Session,
    text: &str,
) -> HttpResponse {
    page(
        status,
        title,
        nav,
        session,
        maud::html! { p.error role="alert" { (text) } },
    )
}

/// The answer when the daemon stops under a request.
fn cancelled(title: &str, nav: &str, session: &Session) -> HttpResponse {
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        title,
        nav,
        session,
        &Trouble::Cancelled.to_string(),
    )
}

/// Whether the request came over TLS (directly, or as a proxy in front says).
fn over_tls(request: &HttpRequest) -> bool {
    request.connection_info().scheme() == "https"
}

/// A path to go back to after signing in: only one of this site (`/…`, not `//…`), made of
/// visible ASCII only (a browser drops tabs and line ends from a URL, so `/<TAB>/host` would
/// become `//host`), without a backslash (which browsers read as a slash).
fn local_path(next: &str) -> &str {
    let visible = next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    if visible && next.starts_with('/') && !next.starts_with("//") {
        next
    } else {
        "/"
    }
}

// ---- sessions --------------------------------------------------------------------------

/// The session the request's cookie names, if it is open.
fn session_of(request: &HttpRequest, dashboard: &Dashboard) -> Option<Session> {
    let cookies = request.headers().get_all(header::COOKIE);
    cookies
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == session::COOKIE)
        .find_map(|(_, id)| dashboard.sessions.find(id, Instant::now()))
}

/// The session of a page request; without one, the redirect to the sign-in form.
fn viewer(request: &HttpRequest, dashboard: &Dashboard) -> Result<Session, HttpResponse> {
    session_of(request, dashboard).ok_or_else(|| {
        let back = match request.query_string() {
            "" => request.path().to_owned(),
            query => format!("{}?{query}", request.path()),
        };
        see_other(&format!("/sign-in?next={}", layout::encode(&back)))
    })
}

/// The session of a request that changes something, if its form carries the session's CSRF
/// token; 401 without a session, 403 with a wrong token.
fn actor(
    request: &HttpRequest,
    dashboard: &Dashboard,
    csrf: &str,
) -> Result<Session, HttpResponse> {
    let Some(session) = session_of(request, dashboard) else {
        return Err(html(StatusCode::UNAUTHORIZED, layout::sign_in("/", false)));
    };
    if !session.csrf_matches(csrf) {
        return Err(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "",
            &session,
            "This form is out of date (its CSRF token is not this session's): go back, reload the page and try again.",
        ));
    }
    Ok(session)
}

/// The fields of a form that changes something: the CSRF token.
#[derive(serde::Deserialize)]
struct Csrf {
    #[serde(default)]
    csrf: String,
}

#[derive(serde::Deserialize)]
struct Next {
    #[serde(default)]
    next: String,
}

async fn sign_in_form(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    query: web::Query<Next>,
) -> HttpResponse {
    let next = local_path(&query.next);
    if session_of(&request, &dashboard).is_some() {
        return see_other(next);
    }
    html(StatusCode::OK, layout::sign_in(next, false))
}

#[derive(serde::Deserialize)]
struct SignIn {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

async fn sign_in(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    form: web::Form<SignIn>,
) -> HttpResponse {
    let next = local_path(&form.next);
    let digest = ring::digest::digest(&ring::digest::SHA256, form.token.as_bytes());
    if !gancho_ingress::constant_time_eq(digest.as_ref(), &dashboard.token_digest) {
        tracing::warn!(
            peer = request
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            "dashboard: sign-in with a wrong token"
        );
        let _one_at_a_time = dashboard.wrong_tokens.lock().await;
        actix_web::rt::time::sleep(WRONG_TOKEN_DELAY).await;
        return html(StatusCode::UNAUTHORIZED, layout::sign_in(next, true));
    }
    let now = Instant::now();
    match dashboard.sessions.open(now) {
        Ok(session) => hardened(StatusCode::SEE_OTHER)
            .insert_header((header::SET_COOKIE, session.cookie(over_tls(&request), now)))
            .insert_header((header::LOCATION, next.to_owned()))
            .finish(),
        Err(err) => hardened(StatusCode::INTERNAL_SERVER_ERROR).body(err.to_string()),
    }
}

async fn sign_out(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    form: web::Form<Csrf>,
) -> HttpResponse {
    let session = match actor(&request, &dashboard, &form.csrf) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    dashboard.sessions.close(&session.id);
    hardened(StatusCode::SEE_OTHER)
        .insert_header((
            header::SET_COOKIE,
            session::removal_cookie(over_tls(&request)),
        ))
        .insert_header((header::LOCATION, "/sign-in"))
        .finish()
}

// ---- reading off the async threads -----------------------------------------------------

/// Runs `read` on the blocking pool (it reads the store).
async fn blocking<T: Send + 'static>(
    dashboard: &web::Data<Dashboard>,
    read: impl FnOnce(&Dashboard) -> T + Send + 'static,
) -> Option<T> {
    let dashboard = dashboard.clone();
    web::block(move || read(&dashboard)).await.ok()
}

/// A page of `listing`: its items and the next cursor, or why not.
async fn listing(
    dashboard: &web::Data<Dashboard>,
    listing: Listing,
    cursor: Option<String>,
) -> Result<(Vec<Item>, Option<String>), Trouble> {
    blocking(dashboard, move |d| {
        crate::pages::typed_page(&d.data, &listing, cursor.as_deref(), PAGE_ITEMS)
            .map_err(Trouble::from)
    })
    .await
    .unwrap_or(Err(Trouble::Cancelled))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Paged {
    cursor: Option<String>,
    retried: Option<usize>,
}

// ---- Overview --------------------------------------------------------------------------

async fn overview_page(request: HttpRequest, dashboard: web::Data<Dashboard>) -> HttpResponse {
    let session = match viewer(&request, &dashboard) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    dashboard.series.viewed();
    let figures = overview::Figures::from_samples(&dashboard.series.samples());
    let content = maud::html! {
        div #figures data-live="/overview/figures" aria-live="off" {
            (overview::figures(&figures))
        }
    };
    page(StatusCode::OK, "Overview", "/", &session, content)
}

async fn overview_figures(request: HttpRequest, dashboard: web::Data<Dashboard>) -> HttpResponse {
    if session_of(&request, &dashboard).is_none() {
        return hardened(StatusCode::UNAUTHORIZED).finish();
    }
    dashboard.series.viewed();
    let figures = overview::Figures::from_samples(&dashboard.series.samples());
    html(StatusCode::OK, overview::figures(&figures))
}

// ---- Rules -----------------------------------------------------------------------------

/// What the Rules page is told after a change: the rule, and what became of it. The sentence is
/// the page's own: nothing in the query string is shown as it was given.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct RulesQuery {
    rule: Option<String>,
    /// `disabled`, `enabled`, or `pending` (asked, not yet taken by the engine).
    now: Option<String>,
}

impl RulesQuery {
    /// The notice for a rule that exists, as the page words it.
    fn notice(&self, rules: &[gancho_engine::RuleStatus]) -> Option<String> {
        let rule = self.rule.as_deref()?;
        if !rules.iter().any(|r| r.name == rule) {
            return None;
        }
        match self.now.as_deref()? {
            "disabled" => Some(format!("Rule {rule} disabled.")),
            "enabled" => Some(format!("Rule {rule} enabled.")),
            "pending" => Some(format!(
                "Rule {rule}: the change is stored; the engine has not taken it yet (it does within a second)."
            )),
            _ => None,
        }
    }
}

async fn rules_page(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    query: web::Query<RulesQuery>,
) -> HttpResponse {
    let session = match viewer(&request, &dashboard) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let mut rules = dashboard.engine_status().rules;
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    let notice = query.notice(&rules);
    page(
        StatusCode::OK,
        "Rules",
        "/rules",
        &session,
        rules::list(&rules, &session, notice.as_deref()),
    )
}

async fn rule_page(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    name: web::Path<String>,
) -> HttpResponse {
    let session = match viewer(&request, &dashboard) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let Some(rule) = dashboard
        .engine_status()
        .rules
        .into_iter()
        .find(|r| r.name == *name)
    else {
        return message(
            StatusCode::NOT_FOUND,
            "No such rule",
            "/rules",
            &session,
            &format!("There is no rule {name}."),
        );
    };
    let (file, rule_name) = (rule.file.clone(), rule.name.clone());
    let read = blocking(&dashboard, move |d| {
        let source = read_source(&file);
        let runs = match control::respond(
            &d.data,
            Some(&d.engine),
            &Request::RuleRuns {
                rule: rule_name,
                last: RECENT_RUNS,
                errors: false,
            },
        ) {
            Response::Runs(runs) => runs,
            _ => Vec::new(),
        };
        (source, runs)
    })
    .await;
    let Some((source, runs)) = read else {
        return cancelled("Rule", "/rules", &session);
    };
    let why = source.as_ref().err().map(Trouble::to_string);
    let source = match (&source, &why) {
        (Ok(text), _) => Ok(text.as_str()),
        (Err(_), Some(why)) => Err(why.as_str()),
        (Err(_), None) => Err(""),
    };
    let title = format!("Rule {}", rule.name);
    page(
        StatusCode::OK,
        &title,
        "/rules",
        &session,
        rules::page(&rule, source, &runs, &session),
    )
}

/// A rule's file as text, or why it cannot be shown. Only files the engine names are read.
fn read_source(file: &std::path::Path) -> Result<String, Trouble> {
    let trouble = |reason: String| Trouble::Source {
        file: file.display().to_string(),
        reason,
    };
    let metadata = std::fs::metadata(file).map_err(|err| trouble(err.to_string()))?;
    if metadata.len() > MAX_SOURCE_BYTES {
        return Err(trouble(format!(
            "{} bytes, too large to show here",
            metadata.len()
        )));
    }
    let bytes = std::fs::read(file).map_err(|err| trouble(err.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

async fn control_rule(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    name: String,
    csrf: &str,
    enable: bool,
) -> HttpResponse {
    let session = match actor(&request, &dashboard, csrf) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    if !dashboard
        .engine_status()
        .rules
        .iter()
        .any(|r| r.name == name)
    {
        return message(
            StatusCode::NOT_FOUND,
            "No such rule",
            "/rules",
            &session,
            &format!("There is no rule {name}."),
        );
    }
    let asked = name.clone();
    let answer = blocking(&dashboard, move |d| {
        control::respond(
            &d.data,
            Some(&d.engine),
            &Request::RuleControl {
                name: asked,
                enable,
            },
        )
    })
    .await;
    match answer {
        Some(Response::Error(why)) => {
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Rules",
                "/rules",
                &session,
                &why,
            );
        }
        None => {
            return cancelled("Rules", "/rules", &session);
        }
        Some(_) => {}
    }
    // The engine reads the change within a second: wait for it, so the page shows it.
    let deadline = Instant::now() + RULE_CONTROL_WAIT;
    let taken = |d: &Dashboard| {
        d.engine_status()
            .rules
            .iter()
            .any(|r| r.name == name && r.disabled != enable && (!enable || r.paused.is_none()))
    };
    while !taken(&dashboard) && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let now = match (taken(&dashboard), enable) {
        (false, _) => "pending",
        (true, true) => "enabled",
        (true, false) => "disabled",
    };
    see_other(&format!("/rules?rule={}&now={now}", layout::encode(&name)))
}

async fn disable_rule(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    name: web::Path<String>,
    form: web::Form<Csrf>,
) -> HttpResponse {
    control_rule(request, dashboard, name.into_inner(), &form.csrf, false).await
}

async fn enable_rule(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    name: web::Path<String>,
    form: web::Form<Csrf>,
) -> HttpResponse {
    control_rule(request, dashboard, name.into_inner(), &form.csrf, true).await
}

// ---- Events ----------------------------------------------------------------------------

/// The store's query for the Events page's filters, or what is wrong with them.
fn events_query(filters: &events::Filters) -> Result<control::Query, Trouble> {
    let now = gancho_core::Clock::now(&gancho_core::SystemClock);
    let instant = |name: &str, text: &str| {
        if text.trim().is_empty() {
            return Ok(None);
        }
        crate::instant::parse(text, now)
            .map(Some)
            .ok_or_else(|| {
                Trouble::Filter(format!(
                    "{name}: {text:?} is not a time (2026-11-30T16:05) or a duration back from now (24h)"
                ))
            })
    };
    let key = match filters.key.trim() {
        "" => None,
        key => match key.split_once('=') {
            Some((name, value)) if !name.is_empty() => Some((name.to_owned(), value.to_owned())),
            _ => return Err(Trouble::Filter(format!("Key: {key:?} is not NAME=VALUE"))),
        },
    };
    let given = |text: &str| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let (since, until) = (instant("From", &filters.from)?, instant("To", &filters.to)?);
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(Trouble::Filter(
            "From is after To: no event can be in that range".to_owned(),
        ));
    }
    Ok(control::Query {
        source: given(&filters.source),
        kind: given(&filters.kind),
        key,
        since,
        until,
        limit: 0,
    })
}

async fn events_page(request: HttpRequest, dashboard: web::Data<Dashboard>) -> HttpResponse {
    let session = match viewer(&request, &dashboard) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let filters = match web::Query::<events::Filters>::from_query(request.query_string()) {
        Ok(filters) => filters.into_inner(),
        Err(err) => {
            return message(
                StatusCode::BAD_REQUEST,
                "Events",
                "/events",
                &session,
                &format!("The filters: {err}"),
            );
        }
    };
    let (status, found) = match events_query(&filters) {
        Err(why) => (StatusCode::BAD_REQUEST, Err(why)),
        Ok(query) => {
            match listing(&dashboard, Listing::Events(query), filters.cursor.clone()).await {
                Ok((items, next)) => {
                    let events: Vec<_> = items
                        .into_iter()
                        .filter_map(|item| match item {
                            Item::Event(event) => Some(event),
                            _ => None,
                        })
                        .collect();
                    (StatusCode::OK, Ok((events, next)))
                }
                Err(why) => (StatusCode::BAD_REQUEST, Err(why)),
            }
        }
    };
    let why = found.as_ref().err().map(Trouble::to_string);
    let shown = match (&found, &why) {
        (Ok((events, next)), _) => Ok((events.as_slice(), next.as_deref())),
        (Err(_), why) => Err(why.as_deref().unwrap_or_default()),
    };
    let content = events::list(&filters, &dashboard.sources, shown);
    page(status, "Events", "/events", &session, content)
}

async fn events_live(request: HttpRequest, dashboard: web::Data<Dashboard>) -> HttpResponse {
    let Some(session) = session_of(&request, &dashboard) else {
        return hardened(StatusCode::UNAUTHORIZED).finish();
    };
    let after = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::tail::Tail::parse_last_id);
    let tail = crate::tail::Tail::new(dashboard.data.clone(), after);
    // The stream ends with the session: signed out, expired or evicted, it sends no more.
    let step = |(tail, dashboard, id): (crate::tail::Tail, web::Data<Dashboard>, String)| async move {
        dashboard.sessions.find(&id, Instant::now())?;
        let (chunk, tail) = tail.next_chunk().await?;
        // A chunk may have waited long for its event: the session is looked at again.
        dashboard.sessions.find(&id, Instant::now())?;
        Some((chunk, (tail, dashboard, id)))
    };
    hardened(StatusCode::OK)
        .content_type("text/event-stream")
        .streaming(futures_util::stream::unfold(
            (tail, dashboard, session.id),
            step,
        ))
}

async fn event_page(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    id: web::Path<String>,
) -> HttpResponse {
    let session = match viewer(&request, &dashboard) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let id = id.into_inner();
    let asked = id.clone();
    let answer = blocking(&dashboard, move |d| {
        let seq = match asked.parse::<u64>() {
            Ok(seq) => Some(seq),
            Err(_) => match control::respond(
                &d.data,
                Some(&d.engine),
                &Request::FindEvent {
                    id: asked,
                    sources: d.sources.clone(),
                },
            ) {
                Response::Found(seq) => seq,
                other => return other,
            },
        };
        match seq {
            Some(seq) => control::respond(&d.data, Some(&d.engine), &Request::Explain { seq }),
            None => Response::Explained(Default::default()),
        }
    })
    .await;
    match answer {
        Some(Response::Explained(what)) if what.event.is_some() => {
            let title = format!("Event {}", what.event.as_ref().map_or(0, |e| e.seq));
            page(
                StatusCode::OK,
                &title,
                "/events",
                &session,
                events::page(&what),
            )
        }
        Some(Response::Explained(_)) => message(
            StatusCode::NOT_FOUND,
            "No such event",
            "/events",
            &session,
            &format!("No event {id} is stored (not yet, or pruned by retention)."),
        ),
        Some(Response::Error(why)) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Event",
            "/events",
            &session,
            &why,
        ),
        _ => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Event",
            "/events",
            &session,
            "unexpected answer",
        ),
    }
}

// ---- Outbox, Dead letters, Quarantine, Timers -------------------------------------------

/// A listing page: `draw` turns the page's items into its content.
async fn listing_page(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    (title, nav): (&str, &str),
    which: Listing,
    draw: impl FnOnce(Vec<Item>, &Paged) -> Markup,
) -> HttpResponse {
    let session = match viewer(&request, &dashboard) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let paged = web::Query::<Paged>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    match listing(&dashboard, which, paged.cursor.clone()).await {
        Ok((items, next)) => {
            let content = maud::html! {
                (draw(items, &paged))
                (layout::pager(nav, next.as_deref()))
            };
            page(StatusCode::OK, title, nav, &session, content)
        }
        Err(why) => message(
            StatusCode::BAD_REQUEST,
            title,
            nav,
            &session,
            &why.to_string(),
        ),
    }
}

async fn outbox_page(request: HttpRequest, dashboard: web::Data<Dashboard>) -> HttpResponse {
    listing_page(
        request,
        dashboard,
        ("Outbox", "/outbox"),
        Listing::Outbox { channel: None },
        |items, paged| {
            let pending: Vec<_> = items
                .into_iter()
                .filter_map(|item| match item {
                    Item::Pending(p) => Some(*p),
                    _ => None,
                })
                .collect();
            let notice = paged.retried.map(|n| match n {
                1 => "1 dead letter is back in the outbox.".to_owned(),
                n => format!("{n} dead letters are back in the outbox."),
            });
            queues::outbox(&pending, notice.as_deref())
        },
    )
    .await
}

async fn dead_page(request: HttpRequest, dashboard: web::Data<Dashboard>) -> HttpResponse {
    listing_page(
        request,
        dashboard,
        ("Dead letters", "/dead"),
        Listing::Dead { channel: None },
        |items, _| {
            let letters: Vec<_> = items
                .into_iter()
                .filter_map(|item| match item {
                    Item::Dead(d) => Some(*d),
                    _ => None,
                })
                .collect();
            queues::dead(&letters)
        },
    )
    .await
}

async fn quarantine_page(request: HttpRequest, dashboard: web::Data<Dashboard>) -> HttpResponse {
    listing_page(
        request,
        dashboard,
        ("Quarantine", "/quarantine"),
        Listing::Quarantine,
        |items, _| {
            let quarantined: Vec<_> = items
                .into_iter()
                .filter_map(|item| match item {
                    Item::Quarantined(q) => Some(q),
                    _ => None,
                })
                .collect();
            queues::quarantine(&quarantined)
        },
    )
    .await
}

async fn timers_page(request: HttpRequest, dashboard: web::Data<Dashboard>) -> HttpResponse {
    listing_page(
        request,
        dashboard,
        ("Timers", "/timers"),
        Listing::Timers { rule: None },
        |items, _| {
            let timers: Vec<_> = items
                .into_iter()
                .filter_map(|item| match item {
                    Item::Timer(t) => Some(*t),
                    _ => None,
                })
                .collect();
            queues::timers(&timers)
        },
    )
    .await
}

/// The dead letter with this action id, if there is one; and how many there are.
fn find_dead(
    data: &Data,
    id: Option<&str>,
) -> Result<(Option<gancho_state::DeadLetter>, usize), Trouble> {
    let (mut found, mut count) = (None, 0usize);
    data.state.outbox().each_dead(0, |letter| {
        count += 1;
        if found.is_none() && Some(letter.action.id.as_str()) == id {
            found = Some(letter);
        }
        Ok(())
    })?;
    Ok((found, count))
}

async fn confirm_retry_all(request: HttpRequest, dashboard: web::Data<Dashboard>) -> HttpResponse {
    let session = match viewer(&request, &dashboard) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    match blocking(&dashboard, |d| find_dead(&d.data, None)).await {
        Some(Ok((_, 0))) => see_other("/dead"),
        Some(Ok((_, count))) => page(
            StatusCode::OK,
            "Retry all dead letters?",
            "/dead",
            &session,
            queues::confirm_retry(None, count, &session),
        ),
        Some(Err(why)) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Dead letters",
            "/dead",
            &session,
            &why.to_string(),
        ),
        None => cancelled("Dead letters", "/dead", &session),
    }
}

async fn confirm_retry_one(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    id: web::Path<String>,
) -> HttpResponse {
    let session = match viewer(&request, &dashboard) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let id = id.into_inner();
    let asked = id.clone();
    match blocking(&dashboard, move |d| find_dead(&d.data, Some(&asked))).await {
        Some(Ok((Some(letter), count))) => page(
            StatusCode::OK,
            "Retry this dead letter?",
            "/dead",
            &session,
            queues::confirm_retry(Some(&letter), count, &session),
        ),
        Some(Ok((None, _))) => message(
            StatusCode::NOT_FOUND,
            "No such dead letter",
            "/dead",
            &session,
            &format!("No dead letter {id} (already retried?)."),
        ),
        Some(Err(why)) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Dead letters",
            "/dead",
            &session,
            &why.to_string(),
        ),
        None => cancelled("Dead letters", "/dead", &session),
    }
}

async fn retry(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    id: Option<String>,
    csrf: &str,
) -> HttpResponse {
    let session = match actor(&request, &dashboard, csrf) {
        Ok(session) => session,
        Err(answer) => return answer,
    };
    let anchor = id
        .as_ref()
        .map(|id| format!("#item-{}", layout::encode(id)))
        .unwrap_or_default();
    let answer = blocking(&dashboard, move |d| {
        control::respond(&d.data, None, &Request::DeadRetry { id })
    })
    .await;
    match answer {
        Some(Response::Retried(n)) => see_other(&format!("/outbox?retried={n}{anchor}")),
        Some(Response::Error(why)) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Dead letters",
            "/dead",
            &session,
            &why,
        ),
        _ => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Dead letters",
            "/dead",
            &session,
            "unexpected answer",
        ),
    }
}

async fn retry_all(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    form: web::Form<Csrf>,
) -> HttpResponse {
    retry(request, dashboard, None, &form.csrf).await
}

async fn retry_one(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    id: web::Path<String>,
    form: web::Form<Csrf>,
) -> HttpResponse {
    retry(request, dashboard, Some(id.into_inner()), &form.csrf).await
}

// ---- assets ----------------------------------------------------------------------------

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

/// Browsers ask for `/favicon.ico` on every page: there is none, and saying so costs nothing
/// (unknown routes answer 401 to a caller without the API token).
async fn no_icon() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .finish()
}

async fn css() -> HttpResponse {
    asset("text/css; charset=utf-8", assets::CSS)
}

async fn js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", assets::JS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_gone_back_to() {
        assert_eq!(local_path("/events?source=x"), "/events?source=x");
        assert_eq!(local_path("//evil.example/"), "/");
        assert_eq!(local_path("https://evil.example/"), "/");
        assert_eq!(local_path("/\\evil.example"), "/");
        assert_eq!(local_path("/\t/evil.example/"), "/");
        assert_eq!(local_path("/\n/evil.example/"), "/");
        assert_eq!(local_path("/ /evil.example/"), "/");
        assert_eq!(local_path(""), "/");
    }

    #[test]
    fn the_filters_become_a_query_or_a_reason() {
        let filters = events::Filters {
            source: "mailjet".into(),
            kind: " open ".into(),
            key: "email=a=b@x".into(),
            from: "2026-11-30T10:00".into(),
            ..Default::default()
        };
        let query = events_query(&filters).unwrap();
        assert_eq!(query.source.as_deref(), Some("mailjet"));
        assert_eq!(query.kind.as_deref(), Some("open"));
        assert_eq!(query.key, Some(("email".into(), "a=b@x".into())));
        assert!(query.since.is_some() && query.until.is_none());
        let bad_key = events::Filters {
            key: "email".into(),
            ..Default::default()
        };
        assert!(
            events_query(&bad_key)
                .unwrap_err()
                .to_string()
                .contains("NAME=VALUE")
        );
        let backwards = events::Filters {
            from: "2026-11-30T10:00".into(),
            to: "2026-11-30T09:00".into(),
            ..Default::default()
        };
        assert!(matches!(events_query(&backwards), Err(Trouble::Filter(_))));
        let bad_time = events::Filters {
            to: "soon".into(),
            ..Default::default()
        };
        assert!(
            events_query(&bad_time)
                .unwrap_err()
                .to_string()
                .starts_with("To:")
        );
    }
}
