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
//! This module has the dashboard's state, its routes, what every answer shares (headers,
//! errors, reading off the async threads) and signing in; `rule_routes.rs`, `event_routes.rs`
//! and `queue_routes.rs` have the pages' routes and what they read; the pages are drawn in
//! `layout.rs`, `overview.rs`, `rules.rs`, `events.rs` and `queues.rs`.

mod assets;
mod event_routes;
mod events;
mod highlight;
mod layout;
mod overview;
mod queue_routes;
mod queues;
mod rule_routes;
mod rules;
mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use gancho_engine::{EngineStatus, SharedStatus};
use maud::Markup;

use crate::data::Data;
use crate::pages::{Item, Listing};
use session::{Session, Sessions};

/// Items on a listing page.
const PAGE_ITEMS: usize = 50;
/// Wrong tokens are answered one at a time, each after this long: whoever guesses gets about
/// three tries a second, however many requests they send at once.
const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(300);

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
        .route("/rules", web::get().to(rule_routes::rules_page))
        .route("/rules/{name}", web::get().to(rule_routes::rule_page))
        .route(
            "/rules/{name}/disable",
            web::post().to(rule_routes::disable_rule),
        )
        .route(
            "/rules/{name}/enable",
            web::post().to(rule_routes::enable_rule),
        )
        .route("/events", web::get().to(event_routes::events_page))
        .route("/events/live", web::get().to(event_routes::events_live))
        .route("/events/{id}", web::get().to(event_routes::event_page))
        .route("/outbox", web::get().to(queue_routes::outbox_page))
        .route("/dead", web::get().to(queue_routes::dead_page))
        .route(
            "/dead/retry-all",
            web::get().to(queue_routes::confirm_retry_all),
        )
        .route("/dead/retry-all", web::post().to(queue_routes::retry_all))
        .route(
            "/dead/{id}/retry",
            web::get().to(queue_routes::confirm_retry_one),
        )
        .route("/dead/{id}/retry", web::post().to(queue_routes::retry_one))
        .route("/quarantine", web::get().to(queue_routes::quarantine_page))
        .route("/timers", web::get().to(queue_routes::timers_page))
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
}
