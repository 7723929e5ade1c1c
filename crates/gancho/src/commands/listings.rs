//! The listing commands (`events`, `quarantine`, `outbox`, `sent`, `dead`, `timers`, `state`,
//! `poisoned`): each asks the daemon (or the stopped store) and prints a table or JSON lines as
//! the items arrive.

use std::io::Write as _;

use anyhow::Context as _;
use gancho_core::{Clock as _, SystemClock};

use super::*;
use crate::config::Config;
use crate::control::{Query, Request, Response};
use crate::text::shown;

pub(crate) fn list_events(
    config: &Config,
    source: Option<String>,
    kind: Option<String>,
    key: Option<(String, String)>,
    since: Option<std::time::Duration>,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let since = match since {
        Some(d) => Some(
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| SystemClock.now().checked_sub_signed(d))
                .context("--since reaches before the earliest representable time")?,
        ),
        None => None,
    };
    let query = Query {
        source,
        kind,
        key,
        since,
        until: None,
        limit,
    };
    let request = Request::Events(query);
    print_list(config, &request, json, |out, e: &gancho_core::Event| {
        let keys = shown_keys(e.keys.iter());
        writeln!(
            out,
            "{:>8}  {}  {}.{}  {}",
            e.seq,
            e.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            shown(&e.source),
            shown(&e.kind),
            keys
        )
    })
}

/// Prints a listing as it arrives, a JSON array with `json`, else `text` for each item:
/// neither the daemon nor this process holds the whole answer.
pub(crate) fn print_list<T: serde::de::DeserializeOwned + serde::Serialize>(
    config: &Config,
    request: &Request,
    json: bool,
    text: impl FnMut(&mut dyn std::io::Write, &T) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    print_list_where(config, request, json, |_| true, text)
}

/// [`print_list`] of the items `keep` accepts.
pub(crate) fn print_list_where<T: serde::de::DeserializeOwned + serde::Serialize>(
    config: &Config,
    request: &Request,
    json: bool,
    keep: impl Fn(&T) -> bool,
    mut text: impl FnMut(&mut dyn std::io::Write, &T) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    if json {
        write!(out, "[")?;
    }
    crate::control::client::each_item(
        &config.socket_path(),
        // A stopped cluster node's own store (its quarantine) is still its own.
        match request {
            Request::Quarantine { .. } => Some(config.store_dir()),
            _ => config.stopped_store_dir(),
        }
        .as_deref(),
        request,
        |item: T| {
            if !keep(&item) {
                return Ok(());
            }
            if json {
                if !first {
                    write!(out, ",")?;
                }
                serde_json::to_writer(&mut out, &item)?;
            } else {
                text(&mut out, &item)?;
            }
            first = false;
            Ok(())
        },
    )?;
    if json {
        writeln!(out, "]")?;
    }
    out.flush()?;
    Ok(())
}

pub(crate) fn list_quarantine(config: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
    let request = Request::Quarantine { limit };
    print_list(
        config,
        &request,
        json,
        |out, q: &gancho_store::Quarantined| {
            writeln!(
                out,
                "{:>8}  {}  {}  {}  {}",
                q.id,
                q.received
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                shown(&q.source),
                shown(&q.reason),
                shown(q.item.get())
            )
        },
    )
}

pub(crate) fn list_outbox(config: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
    let request = Request::Outbox { limit };
    print_list(
        config,
        &request,
        json,
        |out, item: &crate::control::Pending| {
            action_line(out, &item.action)?;
            if let Some(last) = item.attempts.last() {
                let next = item
                    .next_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map_or_else(String::new, |t| format!(", next try {}", t.to_rfc3339()));
                writeln!(
                    out,
                    "    {} failed tries{next}; last: {}",
                    item.attempts.len(),
                    shown(&last.error)
                )?;
            }
            Ok(())
        },
    )
}

/// An action's line in `gancho outbox` and `gancho dead`.
pub(crate) fn action_line(
    out: &mut dyn std::io::Write,
    action: &gancho_core::ActionRequest,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{}  event {:>8}  {:<20} {}",
        action.id,
        action.event_seq,
        shown(&action.rule),
        shown(&describe(&action.action))
    )
}

pub(crate) fn describe(action: &gancho_core::Action) -> String {
    match action {
        gancho_core::Action::Email(e) => format!("email to {}: {}", e.to.join(", "), e.subject),
        gancho_core::Action::Sms(s) => format!("sms to {}: {}", s.to, s.text),
        gancho_core::Action::Http(h) => format!("http {} {}", h.method, h.url),
    }
}

pub(crate) fn list_sent(
    config: &Config,
    channel: Option<gancho_core::Channel>,
    since: Option<std::time::Duration>,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let since_ms = match since {
        Some(since) => {
            let since = chrono::Duration::from_std(since).context("--since is too long")?;
            Some((gancho_core::Clock::now(&gancho_core::SystemClock) - since).timestamp_millis())
        }
        None => None,
    };
    let request = Request::Sent(gancho_state::sent::SentQuery {
        channel,
        since_ms,
        limit,
    });
    print_list(
        config,
        &request,
        json,
        |out, sent: &gancho_state::sent::Sent| {
            let tries = match sent.failed_tries.len() {
                0 => String::new(),
                n => format!(" after {n} failed tries"),
            };
            writeln!(
                out,
                "{}  {}  event {:>8}  {:<20} {} to {}{tries}: {}",
                ms_time(sent.delivered_ms),
                sent.id,
                sent.event_seq,
                shown(&sent.rule),
                sent.channel,
                shown(&sent.to),
                shown(&sent.answer)
            )
        },
    )
}

pub(crate) fn list_dead(config: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
    let request = Request::Dead { limit };
    print_list(
        config,
        &request,
        json,
        |out, letter: &gancho_state::DeadLetter| {
            action_line(out, &letter.action)?;
            for attempt in &letter.attempts {
                let at = chrono::DateTime::from_timestamp_millis(attempt.at_ms)
                    .map_or_else(String::new, |t| t.to_rfc3339());
                writeln!(out, "    {at}  {}", shown(&attempt.error))?;
            }
            Ok(())
        },
    )
}

/// Correlation keys as `name=value`, escaped, joined by spaces.
pub(crate) fn shown_keys<'a>(keys: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    keys.map(|(k, v)| format!("{}={}", shown(k), shown(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn ms_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

pub(crate) fn list_timers(
    config: &Config,
    rule: Option<String>,
    orphaned: bool,
    json: bool,
) -> anyhow::Result<()> {
    let request = Request::Timers { rule };
    print_list_where(
        config,
        &request,
        json,
        |timer: &gancho_state::inspect::TimerView| !orphaned || timer.orphaned,
        |out, timer| {
            writeln!(
                out,
                "{}/{}  {}  calls {}  (set by event {}){}",
                shown(&timer.rule),
                shown(&timer.name),
                match timer.orphaned {
                    true => format!("came due {}", ms_time(timer.due_ms)),
                    false => format!("due {}", ms_time(timer.due_ms)),
                },
                shown(&timer.callback),
                timer.origin_seq,
                match timer.orphaned {
                    true => "  ORPHANED: its rule or function is missing",
                    false => "",
                }
            )?;
            if let Some(expect) = &timer.expect {
                let keys = shown_keys(expect.keys.iter().map(|(k, v)| (k, v)));
                writeln!(
                    out,
                    "    unless {}.{} {} arrives with a time in {} .. {}",
                    shown(&expect.source),
                    shown(&expect.kind),
                    keys,
                    ms_time(expect.from_ms),
                    ms_time(expect.to_ms)
                )?;
            }
            Ok(())
        },
    )
}

pub(crate) fn show_state(
    config: &Config,
    rule: String,
    key: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let request = Request::State { rule: Some(rule) };
    print_list_where(
        config,
        &request,
        json,
        |entry: &gancho_state::inspect::StateEntry| key.as_ref().is_none_or(|k| *k == entry.key),
        |out, entry| {
            let expires = entry
                .value
                .expires_ms
                .map_or_else(String::new, |ms| format!("  (until {})", ms_time(ms)));
            writeln!(
                out,
                "{:<32} {}{expires}",
                shown(&entry.key),
                shown(&entry.value.value.to_string())
            )
        },
    )
}

pub(crate) fn list_poisoned(config: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
    let Response::Poisoned(runs) = ask(config, &Request::Poisoned { limit })? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    if json {
        return print_json(&runs);
    }
    let mut out = std::io::stdout().lock();
    for run in &runs {
        let at = chrono::DateTime::from_timestamp_millis(run.set_aside_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        writeln!(
            out,
            "event {:>8}  {:<24} rule {:<20} died {} times, set aside {at}",
            run.seq,
            shown(&run.kind),
            shown(&run.rule),
            run.deaths
        )?;
    }
    if runs.is_empty() {
        writeln!(out, "no run set aside")?;
    }
    Ok(())
}
