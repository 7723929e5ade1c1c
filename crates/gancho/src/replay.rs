//! `gancho replay`: a rule version run over the stored history, to see what it would have
//! decided, before it goes live. The events come from the running daemon's log (or from the
//! store of a stopped one) and are copied, in log order, into a temporary store, where the
//! rule runs with a virtual clock that moves to each event's arrival, as in `gancho test`. The
//! events that arrived within `--history` before the replay's start are copied first and not
//! run: its window queries see them, as the live rule would have. The rule starts from empty
//! state (the live state is what the live rule made of these same events) and nothing is
//! sent; the live store, state and outbox are only read.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use gancho_core::{Event, NewEvent};
use gancho_engine::{CRON_SOURCE, TIMER_SOURCE};
use gancho_store::Submission;
use serde_json::Value;

use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::test_rules::Harness;

/// What `gancho replay` is given.
#[derive(Debug)]
pub struct Replay {
    pub rule: PathBuf,
    /// Replay the events that arrived within this long before now.
    pub since: Option<Duration>,
    /// Replay the events from this seq on.
    pub from: Option<u64>,
    /// The events that arrived within this long before the start are there for queries.
    pub history: Duration,
    pub json: bool,
}

/// Replays; true when the rule never failed.
pub fn run(config: &Config, replay: &Replay) -> anyhow::Result<bool> {
    let (_, compiled) = gancho_engine::check_file(&replay.rule, &config.engine().limits);
    if let Err(diag) = compiled {
        eprintln!("error  {diag}");
        return Ok(false);
    }
    let now = gancho_core::Clock::now(&gancho_core::SystemClock);
    // Where the replay starts: a seq, an arrival time, or the log's beginning.
    let start_ms = match (replay.from, replay.since) {
        (Some(seq), _) => {
            let Response::Explained(what) = ask(config, &Request::Explain { seq })? else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            let event = what
                .event
                .with_context(|| format!("no event {seq} is stored (pruned, or not yet)"))?;
            event.received.timestamp_millis()
        }
        (None, Some(since)) => {
            let since = chrono::Duration::from_std(since).context("--since is too long")?;
            (now - since).timestamp_millis()
        }
        (None, None) => i64::MIN,
    };
    let history_ms = i64::try_from(replay.history.as_millis()).unwrap_or(i64::MAX);
    let request = Request::Log {
        from: 1,
        received_from_ms: start_ms.saturating_sub(history_ms),
    };
    let replayed = |event: &Event| match replay.from {
        Some(seq) => event.seq >= seq,
        None => event.received.timestamp_millis() >= start_ms,
    };
    let mut history: Vec<NewEvent> = Vec::new();
    let mut harness: Option<Harness> = None;
    let mut replayed_count = 0u64;
    let mut broken = false;
    control::client::each_item(
        &config.socket_path(),
        config.stopped_store_dir().as_deref(),
        &request,
        |event: Event| {
            // The live engine's own events: the replay's engine makes its own.
            if event.source == TIMER_SOURCE || event.source == CRON_SOURCE || broken {
                return Ok(());
            }
            if harness.is_none() && !replayed(&event) {
                history.push(new_event(event));
                return Ok(());
            }
            let h = match &mut harness {
                Some(h) => h,
                None => {
                    let start = event.received;
                    match Harness::new(
                        config,
                        std::slice::from_ref(&replay.rule),
                        start,
                        std::mem::take(&mut history),
                    )? {
                        Some(h) => harness.insert(h),
                        None => {
                            broken = true;
                            return Ok(());
                        }
                    }
                }
            };
            let at = event.received;
            h.feed(
                at,
                Submission {
                    events: vec![new_event(event)],
                    rejected: Vec::new(),
                },
            )?;
            replayed_count += 1;
            Ok(())
        },
    )?;
    if broken {
        return Ok(false);
    }
    let Some(mut harness) = harness else {
        eprintln!("no stored event to replay");
        return Ok(true);
    };
    // Timers and expectations due by now fire, as they would have live.
    harness.advance_to(now)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    for line in &harness.decided {
        if replay.json {
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", crate::shown(&text_line(line)))?;
        }
    }
    if !replay.json {
        writeln!(
            out,
            "{} event(s) replayed: {} action(s) decided{}",
            replayed_count,
            harness.decided.len(),
            if harness.failed {
                ", and the rule failed (see above)"
            } else {
                ""
            }
        )?;
    }
    let passed = !harness.failed;
    harness.close()?;
    Ok(passed)
}

fn ask(config: &Config, request: &Request) -> anyhow::Result<Response> {
    match control::client::ask(
        &config.socket_path(),
        config.stopped_store_dir().as_deref(),
        request,
    )? {
        Response::Error(err) => anyhow::bail!("{err}"),
        other => Ok(other),
    }
}

fn new_event(event: Event) -> NewEvent {
    NewEvent {
        id: event.id,
        source: event.source,
        kind: event.kind,
        time: event.time,
        received: event.received,
        keys: event.keys,
        data: event.data,
    }
}

/// One decided action as a line of text: when, which rule, the channel, and to whom.
fn text_line(line: &Value) -> String {
    let field = |name: &str| line["action"][name].as_str().unwrap_or_default().to_owned();
    let what = match line["channel"].as_str() {
        Some("email") => format!("to {} {:?}", field("to"), field("subject")),
        Some("sms") => format!("to {} {:?}", field("to"), field("text")),
        Some("http") => format!("{} {}", field("method"), field("url")),
        _ => line["action"].to_string(),
    };
    format!(
        "{}  {}  {}  {what}",
        line["at"].as_str().unwrap_or_default(),
        line["rule"].as_str().unwrap_or_default(),
        line["channel"].as_str().unwrap_or_default(),
    )
}
