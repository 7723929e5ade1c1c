//! The Rules routes: the list, a rule's page (its source read from the file the engine names,
//! its last traced runs), and disabling or enabling a rule, which waits for the engine to take
//! the change so the page it goes back to shows it.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::{
    Csrf, Dashboard, Trouble, actor, blocking, cancelled, layout, message, page, rules, see_other,
    viewer,
};
use crate::control::{self, Request, Response};

/// A rule's page shows this many of its last runs.
const RECENT_RUNS: usize = 20;
/// A rule's source is shown up to this size.
const MAX_SOURCE_BYTES: u64 = 1 << 20;
/// After a rule is disabled or enabled, the page waits up to this long for the engine to take
/// it, so the Rules page it goes back to shows it.
const RULE_CONTROL_WAIT: Duration = Duration::from_secs(5);

/// What the Rules page is told after a change: the rule, and what became of it. The sentence is
/// the page's own: nothing in the query string is shown as it was given.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub(super) struct RulesQuery {
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

pub(super) async fn rules_page(
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

pub(super) async fn rule_page(
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
        return no_such_rule(&name, &session);
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
        return no_such_rule(&name, &session);
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

pub(super) async fn disable_rule(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    name: web::Path<String>,
    form: web::Form<Csrf>,
) -> HttpResponse {
    control_rule(request, dashboard, name.into_inner(), &form.csrf, false).await
}

pub(super) async fn enable_rule(
    request: HttpRequest,
    dashboard: web::Data<Dashboard>,
    name: web::Path<String>,
    form: web::Form<Csrf>,
) -> HttpResponse {
    control_rule(request, dashboard, name.into_inner(), &form.csrf, true).await
}

fn no_such_rule(name: &str, session: &super::session::Session) -> HttpResponse {
    message(
        StatusCode::NOT_FOUND,
        "No such rule",
        "/rules",
        session,
        &format!("There is no rule {name}."),
    )
}
