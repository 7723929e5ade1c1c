//! The Events routes: the filtered pages of stored events, the live tail (Server-Sent Events that
//! end with the session), and an event's page (`gancho explain`'s answer).

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::{
    Dashboard, Trouble, blocking, events, hardened, listing, message, page, session_of, viewer,
};
use crate::control::{self, Request, Response};
use crate::pages::{Item, Listing};

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

pub(super) async fn events_page(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
) -> HttpResponse {
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
                    let events: Vec<_> = items.into_iter().filter_map(Item::event).collect();
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

pub(super) async fn events_live(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
) -> HttpResponse {
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

pub(super) async fn event_page(
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

#[cfg(test)]
mod tests {
    use super::*;

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
