//! The admin API's listings and their actions: events (one, a page, the live stream), the
//! outbox, dead letters (and putting them back), deliveries, the quarantine and timers. Each
//! checks the token first, then its query string, and answers through `pages.rs`,
//! `control::respond` or `tail.rs`: what the CLI answers, from the same functions.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::{State, authorized, error, unauthorized};
use crate::control::{self, Request, Response};

/// The paging parameters every listing takes, as the OpenAPI document describes them (they
/// are read with the rest, in [`ListParams`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct Page {
    /// Items in the page: default 100, at most 1000.
    limit: Option<usize>,
    /// The `next_cursor` of the page before; none for the first page.
    cursor: Option<String>,
}

/// The query string's parameters of a listing route, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    source: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// `NAME=VALUE`.
    key: Option<String>,
    /// An RFC 3339 time, or a duration back from now (`"24h"`).
    since: Option<String>,
    /// An RFC 3339 time, or a duration back from now.
    until: Option<String>,
    channel: Option<gancho_core::Channel>,
    rule: Option<String>,
    pub(super) limit: Option<usize>,
    pub(super) cursor: Option<String>,
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
        ("until", params.until.is_some()),
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
    instant("since", text)
}

/// The parameter `name` as an instant: an RFC 3339 time, or a duration back from now.
fn instant(
    name: &str,
    text: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, HttpResponse> {
    let Some(text) = text else { return Ok(None) };
    crate::instant::parse(text, gancho_core::Clock::now(&gancho_core::SystemClock))
        .map(Some)
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!("{name}: {text:?} is neither an RFC 3339 time nor a duration such as 24h"),
            )
        })
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
pub(super) fn guarded(
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
        ("until" = Option<String>, Query, description = "Only until this RFC 3339 time, or this duration back from now (1h)"),
        Page,
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn events(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let params = match guarded(
        &request,
        &state,
        &["source", "type", "key", "since", "until"],
    ) {
        Ok(params) => params,
        Err(answer) => return answer,
    };
    let key = match params.key.as_deref().map(|k| k.split_once('=')) {
        None => None,
        Some(Some((name, value))) if !name.is_empty() => Some((name.to_owned(), value.to_owned())),
        Some(_) => return error(StatusCode::BAD_REQUEST, "key: give it as NAME=VALUE"),
    };
    let (since, until) = match (
        since(params.since.as_deref()),
        instant("until", params.until.as_deref()),
    ) {
        (Ok(since), Ok(until)) => (since, until),
        (Err(answer), _) | (_, Err(answer)) => return answer,
    };
    let query = control::Query {
        source: params.source.clone(),
        kind: params.kind.clone(),
        key,
        since,
        until,
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
        Page,
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn outbox(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
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
        Page,
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn dead(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
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
        Page,
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn sent(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
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
        Page,
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn quarantine(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
    list_with(&request, &state, &[], |_| crate::pages::Listing::Quarantine).await
}

#[utoipa::path(
    get,
    path = "/admin/timers",
    tag = "admin",
    summary = "Pending timers and expectations, by rule and name",
    params(
        ("rule" = Option<String>, Query, description = "Only this rule's"),
        Page,
    ),
    responses(
        (status = 200, description = "A page: {\"items\": [...], \"next_cursor\": string or null}"),
        (status = 400, description = "A parameter this route does not take, or a cursor not of this listing"),
        (status = 401, description = "No token, or a wrong one"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn timers(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
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
pub(super) async fn event(
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
pub(super) async fn retry_one(
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
pub(super) async fn retry_all(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
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
pub(super) async fn stream(request: HttpRequest, state: web::Data<State>) -> HttpResponse {
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
