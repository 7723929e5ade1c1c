//! The Rules page (one row per rule, with "Disable"/"Enable") and a rule's page (its source,
//! numbered and coloured, and its recent runs linking to their events).

use gancho_engine::RuleStatus;
use gancho_state::traces::RunTrace;
use maud::{Markup, html};

use super::highlight;
use super::layout::{csrf_field, empty, encode, event_link, rule_link};
use super::session::Session;

/// A rule's status as the Rules page words it.
fn status(rule: &RuleStatus) -> Markup {
    html! {
        @if let Some(error) = &rule.error {
            span.badge.bad { "broken" }
            " "
            span.where { (error.file.display()) ":" (error.line) ":" (error.column) }
            @if rule.loaded { " (the previous version runs)" }
        } @else if rule.disabled {
            span.badge.off { "disabled" }
        } @else if let Some(why) = &rule.paused {
            span.badge.warn { "paused" } " " span.why { (why) }
        } @else if rule.loaded {
            span.badge.ok { "loaded" }
        } @else {
            span.badge.off { "not loaded" }
        }
    }
}

/// What wakes a rule: its event types, its schedule.
fn wakes(rule: &RuleStatus) -> Markup {
    html! {
        @for (i, on) in rule.on.iter().enumerate() {
            @if i > 0 { ", " }
            code { (on) }
        }
        @if let Some(every) = &rule.every {
            @if !rule.on.is_empty() { ", " }
            "every " code { (every) }
        }
    }
}

/// The form that disables or enables `rule`.
fn toggle(rule: &RuleStatus, session: &Session) -> Markup {
    let (verb, path) = if rule.disabled || rule.paused.is_some() {
        ("Enable", "enable")
    } else {
        ("Disable", "disable")
    };
    html! {
        form.inline method="post" action={ "/rules/" (encode(&rule.name)) "/" (path) } {
            (csrf_field(session))
            button type="submit" aria-label={ (verb) " rule " (rule.name) } { (verb) }
        }
    }
}

/// The Rules page's table.
pub fn list(rules: &[RuleStatus], session: &Session, notice: Option<&str>) -> Markup {
    html! {
        @if let Some(notice) = notice {
            p.notice role="status" { (notice) }
        }
        @if rules.is_empty() {
            (empty("No rules: drop .rhai files into the rules folder."))
        } @else {
            div.scroll {
                table #rules {
                    caption { "Rules, their runs and errors since they were first loaded" }
                    thead {
                        tr {
                            th scope="col" { "Name" }
                            th scope="col" { "Wakes on" }
                            th scope="col" { "Status" }
                            th scope="col" .num { "Runs" }
                            th scope="col" .num { "Errors" }
                            th scope="col" .num { "Actions" }
                            th scope="col" { "Last error" }
                            th scope="col" { span.visually-hidden { "Control" } }
                        }
                    }
                    tbody {
                        @for rule in rules {
                            tr data-rule=(rule.name) {
                                th scope="row" { (rule_link(&rule.name)) }
                                td { (wakes(rule)) }
                                td.status { (status(rule)) }
                                td.num { (rule.runs) }
                                td.num { (rule.errors) }
                                td.num { (rule.actions) }
                                td.error-text { (rule.last_error.as_deref().unwrap_or("")) }
                                td { (toggle(rule, session)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A rule's page: its status, its source (`None` when its file cannot be read, with why) and
/// its last traced runs.
pub fn page(
    rule: &RuleStatus,
    source: Result<&str, &str>,
    runs: &[RunTrace],
    session: &Session,
) -> Markup {
    html! {
        dl.facts {
            div { dt { "File" } dd { code { (rule.file.display()) } } }
            div { dt { "Wakes on" } dd { (wakes(rule)) } }
            div { dt { "Status" } dd { (status(rule)) } }
            div { dt { "Runs" } dd { (rule.runs) } }
            div { dt { "Errors" } dd { (rule.errors) } }
            div { dt { "Actions" } dd { (rule.actions) } }
            div { dt { "Control" } dd { (toggle(rule, session)) } }
        }
        @if let Some(error) = &rule.error {
            p.error-text role="alert" { (error.to_string()) }
        }
        @if let Some(last) = &rule.last_error {
            p { "Last error: " span.error-text { (last) } }
        }
        section aria-labelledby="source-h" {
            h2 #source-h { "Source" }
            @match source {
                Ok(text) => { (source_listing(text, rule.error.as_ref().map(|e| e.line))) }
                Err(why) => { p.error-text { (why) } }
            }
        }
        section aria-labelledby="runs-h" {
            h2 #runs-h { "Recent runs" }
            (recent_runs(runs))
        }
    }
}

/// The source, a numbered line each, coloured; `error_line` marked.
fn source_listing(source: &str, error_line: Option<usize>) -> Markup {
    html! {
        div.scroll {
            table.source aria-label="Source with line numbers" {
                tbody {
                    @for (i, spans) in highlight::lines(source).iter().enumerate() {
                        @let n = i + 1;
                        tr id={ "L" (n) } .error-line[error_line == Some(n)] {
                            td.ln { (n) }
                            td {
                                code {
                                    @for (kind, text) in spans {
                                        @match kind.class() {
                                            Some(class) => { span class=(class) { (text) } }
                                            None => { (text) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A rule's last traced runs, newest first.
fn recent_runs(runs: &[RunTrace]) -> Markup {
    html! {
        @if runs.is_empty() {
            (empty("No traced runs (none yet, or their traces were pruned)."))
        } @else {
            div.scroll {
                table #runs {
                    caption { "Last traced runs, newest first" }
                    thead {
                        tr {
                            th scope="col" { "Event" }
                            th scope="col" { "Outcome" }
                            th scope="col" .num { "Actions" }
                            th scope="col" .num { "Queries" }
                            th scope="col" { "Changes" }
                        }
                    }
                    tbody {
                        @for run in runs {
                            tr {
                                td { (event_link(run.seq)) }
                                td {
                                    @match &run.error {
                                        Some(error) => { span.badge.bad { "failed" } " " span.error-text { (error) } }
                                        None => { span.badge.ok { "ok" } }
                                    }
                                    @if run.rerun { " (rerun)" }
                                }
                                td.num { (run.actions.len()) }
                                td.num { (run.queries.len()) }
                                td { (run.changes.join("; ")) }
                            }
                        }
                    }
                }
            }
        }
    }
}
