//! The Outbox, Dead letters, Quarantine and Timers routes, and putting dead letters back: each
//! retry is asked for on a confirmation page, then done by a form that carries the CSRF token.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::Markup;

use super::{
    Csrf, Dashboard, Paged, Trouble, actor, blocking, cancelled, layout, listing, message, page,
    queues, see_other, viewer,
};
use crate::control::{self, Request, Response};
use crate::data::Data;
use crate::pages::{Item, Listing};

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

pub(super) async fn outbox_page(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
) -> HttpResponse {
    listing_page(
        request,
        dashboard,
        ("Outbox", "/outbox"),
        Listing::Outbox { channel: None },
        |items, paged| {
            let pending: Vec<_> = items.into_iter().filter_map(Item::pending).collect();
            let notice = paged.retried.map(|n| match n {
                1 => "1 dead letter is back in the outbox.".to_owned(),
                n => format!("{n} dead letters are back in the outbox."),
            });
            queues::outbox(&pending, notice.as_deref())
        },
    )
    .await
}

pub(super) async fn dead_page(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
) -> HttpResponse {
    listing_page(
        request,
        dashboard,
        ("Dead letters", "/dead"),
        Listing::Dead { channel: None },
        |items, _| {
            let letters: Vec<_> = items.into_iter().filter_map(Item::dead).collect();
            queues::dead(&letters)
        },
    )
    .await
}

pub(super) async fn quarantine_page(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
) -> HttpResponse {
    listing_page(
        request,
        dashboard,
        ("Quarantine", "/quarantine"),
        Listing::Quarantine,
        |items, _| {
            let quarantined: Vec<_> = items.into_iter().filter_map(Item::quarantined).collect();
            queues::quarantine(&quarantined)
        },
    )
    .await
}

pub(super) async fn timers_page(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
) -> HttpResponse {
    listing_page(
        request,
        dashboard,
        ("Timers", "/timers"),
        Listing::Timers { rule: None },
        |items, _| {
            let timers: Vec<_> = items.into_iter().filter_map(Item::timer).collect();
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

pub(super) async fn confirm_retry_all(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
) -> HttpResponse {
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
        Some(Err(why)) => dead_letters_failed(&session, &why),
        None => cancelled("Dead letters", "/dead", &session),
    }
}

pub(super) async fn confirm_retry_one(
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
        Some(Err(why)) => dead_letters_failed(&session, &why),
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
        Some(Response::Error(why)) => dead_letters_failed(&session, &why),
        _ => dead_letters_failed(&session, &"unexpected answer"),
    }
}

pub(super) async fn retry_all(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    form: web::Form<Csrf>,
) -> HttpResponse {
    retry(request, dashboard, None, &form.csrf).await
}

pub(super) async fn retry_one(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    id: web::Path<String>,
    form: web::Form<Csrf>,
) -> HttpResponse {
    retry(request, dashboard, Some(id.into_inner()), &form.csrf).await
}

/// The Dead letters page's answer when the store failed under it.
fn dead_letters_failed(
    session: &super::session::Session,
    why: &dyn std::fmt::Display,
) -> HttpResponse {
    message(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Dead letters",
        "/dead",
        session,
        &why.to_string(),
    )
}
