//! The Outbox, Dead letters, Quarantine and Timers pages, and the confirmation asked before a
//! dead letter (or all of them) is put back in the outbox.

use gancho_core::ActionRequest;
use gancho_state::inspect::TimerView;
use gancho_state::{Attempt, DeadLetter};
use gancho_store::Quarantined;
use maud::{Markup, html};

use super::events::short;
use super::layout::{csrf_field, empty, encode, event_link, rule_link, time_el};
use super::session::Session;
use crate::control::Pending;

/// The cells every action row starts with: id, channel, destination, rule, event.
fn action_cells(action: &ActionRequest) -> Markup {
    html! {
        td { code title=(action.id) { (short(&action.id)) } }
        td { (action.action.channel().as_str()) }
        td.dest { (action.action.destination()) }
        td { (rule_link(&action.rule)) }
        td { (event_link(action.event_seq)) }
    }
}

fn action_head() -> Markup {
    html! {
        th scope="col" { "Action" }
        th scope="col" { "Channel" }
        th scope="col" { "Destination" }
        th scope="col" { "Rule" }
        th scope="col" { "Event" }
    }
}

/// Failed tries, each with its time and error.
fn attempts(attempts: &[Attempt]) -> Markup {
    html! {
        @if attempts.is_empty() {
            "none"
        } @else {
            ol.attempts {
                @for attempt in attempts {
                    li {
                        (time_el(attempt.at_ms)) ": "
                        span.error-text { (attempt.error) }
                        @if attempt.permanent { " (refused for good)" }
                    }
                }
            }
        }
    }
}

/// The Outbox page: actions waiting, in delivery order. `highlight`: the action just put back.
pub fn outbox(items: &[Pending], notice: Option<&str>) -> Markup {
    html! {
        @if let Some(notice) = notice {
            p.notice role="status" { (notice) }
        }
        @if items.is_empty() {
            (empty("The outbox is empty: every action decided has been delivered or is dead."))
        } @else {
            div.scroll {
                table #outbox {
                    caption.visually-hidden { "Actions waiting, in delivery order" }
                    thead {
                        tr {
                            (action_head())
                            th scope="col" { "Tries that failed" }
                            th scope="col" { "Next try" }
                        }
                    }
                    tbody {
                        @for item in items {
                            tr id={ "item-" (item.action.id) } {
                                (action_cells(&item.action))
                                td { (attempts(&item.attempts)) }
                                td {
                                    @match item.next_ms {
                                        Some(ms) => { (time_el(ms)) }
                                        None => { "now" }
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

/// The Dead letters page.
pub fn dead(letters: &[DeadLetter]) -> Markup {
    html! {
        @if letters.is_empty() {
            (empty("No dead letters."))
        } @else {
            p { a.button href="/dead/retry-all" { "Retry all" } }
            div.scroll {
                table #dead {
                    caption.visually-hidden { "Actions that failed for good, in decision order" }
                    thead {
                        tr {
                            (action_head())
                            th scope="col" { "Tries" }
                            th scope="col" { "Dead since" }
                            th scope="col" { span.visually-hidden { "Control" } }
                        }
                    }
                    tbody {
                        @for letter in letters {
                            tr id={ "item-" (letter.action.id) } {
                                (action_cells(&letter.action))
                                td { (attempts(&letter.attempts)) }
                                td { (time_el(letter.dead_ms)) }
                                td {
                                    a.button href={ "/dead/" (encode(&letter.action.id)) "/retry" }
                                        aria-label={ "Retry action " (short(&letter.action.id)) } { "Retry" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The question asked before dead letters are put back: `one` names the letter (with what it
/// was), `None` asks about all `count` of them.
pub fn confirm_retry(one: Option<&DeadLetter>, count: usize, session: &Session) -> Markup {
    let action = match one {
        Some(letter) => format!("/dead/{}/retry", encode(&letter.action.id)),
        None => "/dead/retry-all".to_owned(),
    };
    html! {
        form.confirm method="post" action=(action) {
            (csrf_field(session))
            @match one {
                Some(letter) => {
                    p {
                        "Put the " (letter.action.action.channel().as_str()) " action to "
                        strong { (letter.action.action.destination()) }
                        " (rule " (letter.action.rule) ", event #" (letter.action.event_seq)
                        ") back in the outbox? It will be tried again from its first try."
                    }
                }
                None => {
                    p {
                        "Put every dead letter back in the outbox (" strong { (count) } " now)? They will be tried again from their first try."
                    }
                }
            }
            button type="submit" { "Yes, retry" }
            " "
            a href="/dead" { "Cancel" }
        }
    }
}

/// A quarantined item is shown up to this many bytes (the CLI shows it whole).
const ITEM_SHOWN_BYTES: usize = 4096;

/// A quarantined item as sent, cut at [`ITEM_SHOWN_BYTES`] (at a character's boundary).
fn item_text(text: &str) -> Markup {
    let mut end = text.len().min(ITEM_SHOWN_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    html! {
        pre.item tabindex="0" { code { (&text[..end]) } }
        @if end < text.len() {
            p.empty { "… " (text.len()) " bytes in all: " code { "gancho quarantine --json" } " shows it whole." }
        }
    }
}

/// The Quarantine page.
pub fn quarantine(items: &[Quarantined]) -> Markup {
    html! {
        @if items.is_empty() {
            (empty("Nothing in quarantine."))
        } @else {
            div.scroll {
                table #quarantine {
                    caption.visually-hidden { "Items that were not valid events, newest first" }
                    thead {
                        tr {
                            th scope="col" { "Received" }
                            th scope="col" { "Source" }
                            th scope="col" { "Reason" }
                            th scope="col" { "Item as sent" }
                        }
                    }
                    tbody {
                        @for item in items {
                            tr {
                                td { (time_el(item.received.timestamp_millis())) }
                                td { (item.source) }
                                td.error-text { (item.reason) }
                                td { (item_text(item.item.get())) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The Timers page.
pub fn timers(timers: &[TimerView]) -> Markup {
    html! {
        @if timers.is_empty() {
            (empty("No pending timers or expectations."))
        } @else {
            div.scroll {
                table #timers {
                    caption.visually-hidden { "Pending timers and expectations, by rule and name" }
                    thead {
                        tr {
                            th scope="col" { "Rule" }
                            th scope="col" { "Name" }
                            th scope="col" { "Kind" }
                            th scope="col" { "Due" }
                            th scope="col" { "Calls" }
                            th scope="col" { "Set by" }
                        }
                    }
                    tbody {
                        @for timer in timers {
                            tr {
                                td { (rule_link(&timer.rule)) }
                                td { code { (timer.name) } }
                                td {
                                    @if let Some(expect) = &timer.expect {
                                        "expects " (expect.source) "." (expect.kind)
                                    } @else {
                                        "timer"
                                    }
                                    @if timer.orphaned { " " span.badge.warn { "orphaned: its rule or function is missing" } }
                                }
                                td { (time_el(timer.due_ms)) }
                                td { code { (timer.callback) } }
                                td { (event_link(timer.origin_seq)) }
                            }
                        }
                    }
                }
            }
        }
    }
}
