//! The Events page (filters, pages, the live tail) and an event's page: its payload, its keys,
//! the runs it woke with their queries (the trace), and what became of each action.

use gancho_core::Event;
use gancho_state::traces::{QueryTrace, RunTrace};
use maud::{Markup, html};

use super::layout::{empty, encode, event_link, pager, rule_link, time_el, time_ms};
use crate::control::{ActionFate, Explanation};

/// The Events page's filters, as given in its query string.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct Filters {
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    pub from: String,
    pub to: String,
    pub cursor: Option<String>,
}

impl Filters {
    /// The query string of these filters (the cursor left out): where "Next page" adds its
    /// cursor.
    pub fn query(&self) -> String {
        let pairs = [
            ("source", &self.source),
            ("type", &self.kind),
            ("key", &self.key),
            ("from", &self.from),
            ("to", &self.to),
        ];
        let given: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        if given.is_empty() {
            "/events".to_owned()
        } else {
            format!("/events?{}", given.join("&"))
        }
    }

    fn any(&self) -> bool {
        [&self.source, &self.kind, &self.key, &self.from, &self.to]
            .iter()
            .any(|v| !v.is_empty())
    }
}

/// The filter form.
fn filter_form(filters: &Filters, sources: &[String]) -> Markup {
    html! {
        form.filters method="get" action="/events" aria-label="Filter events" {
            div {
                label for="f-source" { "Source" }
                select #f-source name="source" {
                    option value="" selected[filters.source.is_empty()] { "All" }
                    @for source in sources {
                        option value=(source) selected[filters.source == *source] { (source) }
                    }
                }
            }
            div {
                label for="f-type" { "Type" }
                input #f-type name="type" value=(filters.kind) placeholder="open";
            }
            div {
                label for="f-key" { "Key" }
                input #f-key name="key" value=(filters.key) placeholder="email=ana@example.com";
            }
            div {
                label for="f-from" { "From (UTC)" }
                input #f-from type="datetime-local" step="1" name="from" value=(filters.from);
            }
            div {
                label for="f-to" { "To (UTC)" }
                input #f-to type="datetime-local" step="1" name="to" value=(filters.to);
            }
            div.actions {
                button type="submit" { "Filter" }
                @if filters.any() { " " a href="/events" { "Clear" } }
            }
        }
    }
}

/// The keys of an event, as `name=value` pairs.
fn keys(event: &Event) -> String {
    event
        .keys
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The Events page: the live tail (first page only), the filters and a page of events.
pub fn list(
    filters: &Filters,
    sources: &[String],
    events: Result<(&[Event], Option<&str>), &str>,
) -> Markup {
    html! {
        @if filters.cursor.is_none() {
            section aria-labelledby="live-h" {
                h2 #live-h { "Live tail" }
                p #live-status role="status" { "New events appear here as they are stored (with JavaScript on; else reload)." }
                div.scroll {
                    table #live-tail data-stream="/events/live" {
                        caption.visually-hidden { "Events stored since this page was opened, newest first" }
                        thead { (head_row()) }
                        tbody {}
                    }
                }
            }
        }
        section aria-labelledby="stored-h" {
            h2 #stored-h { "Stored events" }
            (filter_form(filters, sources))
            @match events {
                Err(why) => { p.error-text role="alert" { (why) } }
                Ok((events, next)) => {
                    @if events.is_empty() {
                        (empty("No stored event matches."))
                    } @else {
                        div.scroll {
                            table #events {
                                caption.visually-hidden { "Stored events, newest first" }
                                thead { (head_row()) }
                                tbody {
                                    @for event in events {
                                        tr {
                                            td { (event_link(event.seq)) }
                                            td { (time_el(event.time.timestamp_millis())) }
                                            td { (event.source) "." (event.kind) }
                                            td.keys { (keys(event)) }
                                        }
                                    }
                                }
                            }
                        }
                        (pager(&filters.query(), next))
                    }
                }
            }
        }
    }
}

fn head_row() -> Markup {
    html! {
        tr {
            th scope="col" { "Event" }
            th scope="col" { "Event time" }
            th scope="col" { "Type" }
            th scope="col" { "Keys" }
        }
    }
}

/// An event's page.
pub fn page(explanation: &Explanation) -> Markup {
    let Some(event) = &explanation.event else {
        return empty("No such event is stored.");
    };
    let payload = serde_json::from_str::<serde_json::Value>(event.data.get())
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| event.data.get().to_owned());
    html! {
        dl.facts {
            div { dt { "Seq" } dd { (event.seq) } }
            div { dt { "Id" } dd { code { (event.id.to_string()) } } }
            div { dt { "Source" } dd { (event.source) } }
            div { dt { "Type" } dd { (event.kind) } }
            div { dt { "Event time" } dd { (time_el(event.time.timestamp_millis())) } }
            div { dt { "Received" } dd { (time_el(event.received.timestamp_millis())) } }
        }
        section aria-labelledby="keys-h" {
            h2 #keys-h { "Keys" }
            @if event.keys.is_empty() {
                (empty("No correlation keys."))
            } @else {
                table #keys {
                    caption.visually-hidden { "Correlation keys" }
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Value" } } }
                    tbody {
                        @for (name, value) in &event.keys {
                            tr {
                                th scope="row" { (name) }
                                td {
                                    a href={ "/events?key=" (encode(&format!("{name}={value}"))) } { (value) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="payload-h" {
            h2 #payload-h { "Payload" }
            pre.payload tabindex="0" { code { (payload) } }
        }
        section aria-labelledby="runs-h" {
            h2 #runs-h { "Rules it woke" }
            @if explanation.runs.is_empty() {
                (empty("It woke no rule (or its trace was pruned, or the engine has not reached it yet)."))
            }
            @for run in &explanation.runs {
                (run_trace(run))
            }
        }
        section aria-labelledby="actions-h" {
            h2 #actions-h { "Actions" }
            @if explanation.actions.is_empty() {
                (empty("No actions were decided."))
            } @else {
                div.scroll {
                    table #actions {
                        caption.visually-hidden { "What became of each action decided on this event" }
                        thead {
                            tr {
                                th scope="col" { "Action" }
                                th scope="col" { "Status" }
                                th scope="col" { "When" }
                                th scope="col" .num { "Failed tries" }
                                th scope="col" { "Why" }
                            }
                        }
                        tbody {
                            @for fate in &explanation.actions {
                                (action_row(fate))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn run_trace(run: &RunTrace) -> Markup {
    html! {
        article.run aria-label={ "Run of rule " (run.rule) } {
            h3 {
                (rule_link(&run.rule)) " "
                @match &run.error {
                    Some(_) => { span.badge.bad { "failed" } }
                    None => { span.badge.ok { "ok" } }
                }
                @if run.rerun { " (rerun)" }
            }
            @if let Some(error) = &run.error {
                p.error-text { (error) }
            }
            @if !run.queries.is_empty() {
                div.scroll {
                    table.queries {
                        caption { "Queries" }
                        thead {
                            tr {
                                th scope="col" { "Call" }
                                th scope="col" { "Type" }
                                th scope="col" { "Keys" }
                                th scope="col" { "Window" }
                                th scope="col" .num { "Found" }
                            }
                        }
                        tbody {
                            @for query in &run.queries {
                                (query_row(query))
                            }
                        }
                    }
                }
            }
            @if !run.changes.is_empty() {
                p { "Changes: " }
                ul { @for change in &run.changes { li { code { (change) } } } }
            }
            @if !run.actions.is_empty() {
                p {
                    "Actions: "
                    @for (i, id) in run.actions.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href={ "#action-" (id) } { code { (short(id)) } }
                    }
                }
            }
        }
    }
}

fn query_row(query: &QueryTrace) -> Markup {
    let keys = query
        .keys
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        tr {
            td { code { (query.call) } }
            td { (query.kind) }
            td.keys { (keys) }
            td { (time_ms(query.from_ms)) " – " (time_ms(query.to_ms)) }
            td.num { (query.found) }
        }
    }
}

fn action_row(fate: &ActionFate) -> Markup {
    // A dead letter's own page is the question whether to retry it; a pending action is a
    // row of the outbox.
    let (class, link) = match fate.fate.as_str() {
        "delivered" => ("ok", None),
        "dead" => ("bad", Some(format!("/dead/{}/retry", encode(&fate.id)))),
        "pending" => ("warn", Some(format!("/outbox#item-{}", encode(&fate.id)))),
        _ => ("off", None),
    };
    html! {
        tr id={ "action-" (fate.id) } {
            td { code title=(fate.id) { (short(&fate.id)) } }
            td {
                @match link {
                    Some(path) => { a href=(path) { span class={ "badge " (class) } { (fate.fate) } } }
                    None => { span class={ "badge " (class) } { (fate.fate) } }
                }
            }
            td { @if let Some(at) = fate.at_ms { (time_el(at)) } }
            td.num { (fate.failed_tries) }
            td.error-text { (fate.why.as_deref().unwrap_or("")) }
        }
    }
}

/// An action id cut for a table (the whole id is its title).
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
