//! What every dashboard page shares: the document around the content (landmarks, the skip
//! link, the navigation, "Sign out"), the sign-in form, and small helpers for times, links
//! and forms. Everything from outside is interpolated with maud's `(…)`, which escapes it: no
//! page writes outside text as HTML.

use maud::{DOCTYPE, Markup, html};

use super::session::Session;

/// The navigation, in order: label and path. The labels are a contract (issue 16).
pub const NAV: [(&str, &str); 7] = [
    ("Overview", "/"),
    ("Rules", "/rules"),
    ("Events", "/events"),
    ("Outbox", "/outbox"),
    ("Dead letters", "/dead"),
    ("Quarantine", "/quarantine"),
    ("Timers", "/timers"),
];

/// A whole page: `title`, the navigation with `current` marked, and `content` in `<main>`.
pub fn page(title: &str, current: &str, session: &Session, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "gancho" }
                    nav aria-label="Main" {
                        ul {
                            @for (label, path) in NAV {
                                li {
                                    @if path == current {
                                        a href=(path) aria-current="page" { (label) }
                                    } @else {
                                        a href=(path) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    form.signout method="post" action="/sign-out" {
                        (csrf_field(session))
                        button type="submit" { "Sign out" }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · gancho" }
            link rel="stylesheet" href=(super::assets::CSS_PATH);
            script src=(super::assets::JS_PATH) defer {}
        }
    }
}

/// The sign-in page; `wrong` when a wrong token was just given.
pub fn sign_in(next: &str, wrong: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body {
                main #main .signin {
                    h1 { "gancho" }
                    form method="post" action="/sign-in" {
                        @if wrong {
                            p.error role="alert" { "Wrong token" }
                        }
                        input type="hidden" name="next" value=(next);
                        label for="token" { "Token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// The hidden field that carries the session's CSRF token in a form.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A time in ms since the epoch as operators read it (UTC).
pub fn time_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(time) => time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => ms.to_string(),
    }
}

/// A `<time>` element for `ms`.
pub fn time_el(ms: i64) -> Markup {
    let machine = chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    html! { time datetime=(machine) { (time_ms(ms)) } }
}

/// The link to an event's page.
pub fn event_link(seq: u64) -> Markup {
    html! { a href={ "/events/" (seq) } { "#" (seq) } }
}

/// The link to a rule's page.
pub fn rule_link(rule: &str) -> Markup {
    html! { a href={ "/rules/" (encode(rule)) } { (rule) } }
}

/// What [`encode`] leaves as it is: letters, digits and RFC 3986's other unreserved marks.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` percent-encoded for a path segment or a query value.
pub fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

/// "Next page" for a listing, if there is one: `base` is the path with its query (filters).
pub fn pager(base: &str, next_cursor: Option<&str>) -> Markup {
    html! {
        @if let Some(cursor) = next_cursor {
            @let join = if base.contains('?') { "&" } else { "?" };
            nav.pager aria-label="Pages" {
                a rel="next" href={ (base) (join) "cursor=" (encode(cursor)) } { "Next page" }
            }
        }
    }
}

/// What a listing shows when it has nothing.
pub fn empty(what: &str) -> Markup {
    html! { p.empty { (what) } }
}
