//! The rule author's commands: `check`, `rules` (and enabling, disabling), `explain`,
//! `timers discard`, `state --clear`, `rerun`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;

use super::*;
use crate::config::Config;
use crate::control::{Request, Response};
use crate::text::shown;

/// `gancho check`: true when every rule of these folders and files compiles (and with
/// `cluster`, would work in cluster mode). A new version
/// that drops a function pending timers of its rule name is a warning (they would be kept as
/// orphaned when they come due), said with how many.
pub(crate) fn check_rules(
    config: &Config,
    paths: &[PathBuf],
    cluster: bool,
) -> anyhow::Result<bool> {
    let limits = gancho_engine::Limits::default();
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            // The folder's errors (a missing one) as `check_dir` says them.
            gancho_engine::check_dir(path, &limits)
                .with_context(|| format!("checking {}", path.display()))?;
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
                .collect();
            found.sort();
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            anyhow::bail!("checking {}: no such file or folder", path.display());
        }
    }
    // What the config says of its sources: their types (when known) and keys.
    let sources: std::collections::BTreeMap<String, gancho_engine::SourceFacts> = config
        .ingress
        .sources
        .iter()
        .map(|s| {
            let facts = gancho_engine::SourceFacts {
                types: s.kind.known_types().map(|t| t.into_iter().collect()),
                keys: s.kind.key_names().into_iter().collect(),
                partition: s
                    .partition
                    .as_ref()
                    .map(|p| (p.key.clone(), p.colocated.iter().cloned().collect())),
            };
            (s.name.clone(), facts)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for file in &files {
        let (name, compiled) = gancho_engine::check_file(file, &limits);
        let mistakes = match compiled {
            Ok(()) => gancho_engine::lint_file(file, &sources, &limits, cluster),
            Err(diag) => vec![diag],
        };
        if mistakes.is_empty() {
            writeln!(out, "ok     {name}")?;
            continue;
        }
        failed += 1;
        for diag in mistakes {
            writeln!(out, "error  {}", shown(&diag.to_string()))?;
        }
    }
    for path in paths {
        warn_dropped_callbacks(config, path, &limits, &mut out)?;
    }
    let places: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    writeln!(
        out,
        "{} rule(s) in {}, {failed} with errors",
        files.len(),
        places.join(", ")
    )?;
    Ok(failed == 0)
}

pub(crate) fn rules_status(config: &Config) -> anyhow::Result<gancho_engine::EngineStatus> {
    let request = Request::Rules {
        rules_dir: config.rules_dir.clone(),
    };
    let Response::Rules(status) = ask(config, &request)? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    Ok(status)
}

/// `gancho rules disable|enable NAME`: stored at once; the running engine reads it within a
/// second, which this waits for.
pub(crate) fn control_rule(config: &Config, name: &str, enable: bool) -> anyhow::Result<()> {
    let request = Request::RuleControl {
        name: name.to_owned(),
        enable,
    };
    let Response::Done(said) = ask(config, &request)? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status = rules_status(config)?;
        let rule = status.rules.iter().find(|r| r.name == name);
        if rule.is_none() {
            writeln!(
                std::io::stderr().lock(),
                "gancho: warning: no rule {} in {} (stored anyway: it applies to a rule of that name)",
                shown(name),
                config.rules_dir.display()
            )?;
        }
        let applied = rule.is_none_or(|r| (r.disabled || r.paused.is_some()) != enable);
        if status.stopped || applied {
            break;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the daemon has not applied it within 5 s (it is stored)");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    writeln!(std::io::stdout().lock(), "{}", shown(&said))?;
    Ok(())
}

/// Warns, for each rule file at `path` (a file or a folder's), of the pending timers of its
/// rule that name a function the file no longer defines. Quiet when no store can be read.
pub(crate) fn warn_dropped_callbacks(
    config: &Config,
    path: &std::path::Path,
    limits: &gancho_engine::Limits,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    if !config.store_dir().exists() {
        return Ok(());
    }
    let files: Vec<PathBuf> = match path.is_dir() {
        true => std::fs::read_dir(path)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
            .collect(),
        false => vec![path.to_owned()],
    };
    for file in files {
        let (Some(rule), Some(callbacks)) = (
            file.file_stem().and_then(|s| s.to_str()),
            gancho_engine::rule_callbacks(&file, limits),
        ) else {
            continue;
        };
        let mut dropped: std::collections::BTreeMap<String, usize> = Default::default();
        let request = Request::Timers {
            rule: Some(rule.to_owned()),
        };
        let listed = crate::control::client::each_item(
            &config.socket_path(),
            config.stopped_store_dir().as_deref(),
            &request,
            |timer: gancho_state::inspect::TimerView| {
                if !callbacks.contains(&timer.callback) {
                    *dropped.entry(timer.callback).or_default() += 1;
                }
                Ok(())
            },
        );
        if listed.is_err() {
            // The store is held or unreadable: nothing to compare with.
            continue;
        }
        for (callback, n) in dropped {
            writeln!(
                out,
                "warn   {}: {n} pending timer(s) or expectation(s) of rule {} call {}(), which this version does not define: they will be kept as orphaned",
                file.display(),
                shown(rule),
                shown(&callback)
            )?;
        }
    }
    Ok(())
}

pub(crate) fn list_rules(config: &Config, json: bool) -> anyhow::Result<()> {
    let status = rules_status(config)?;
    if json {
        return print_json(&status);
    }
    let mut out = std::io::stdout().lock();
    match status.stopped {
        true => writeln!(
            out,
            "daemon stopped; engine at event {} (rules as they compile now, counters as stored)",
            status.cursor
        )?,
        false => writeln!(out, "engine at event {}", status.cursor)?,
    }
    for rule in &status.rules {
        let wakes = match &rule.every {
            Some(every) => format!("every {every}"),
            None => rule.on.join(","),
        };
        let state = match (rule.loaded, rule.disabled, rule.paused.is_some()) {
            (false, _, _) => "broken",
            (true, true, _) => "disabled",
            (true, false, true) => "paused",
            (true, false, false) => "loaded",
        };
        writeln!(
            out,
            "{:<24} {:<8} runs={} errors={} actions={} time={}ms  {}",
            shown(&rule.name),
            state,
            rule.runs,
            rule.errors,
            rule.actions,
            rule.time_ms,
            shown(&wakes)
        )?;
        if let Some(why) = &rule.paused {
            writeln!(
                out,
                "    paused: {}; `gancho rules enable {}` resumes it",
                shown(why),
                shown(&rule.name)
            )?;
        }
        if let Some(diag) = &rule.error {
            writeln!(out, "    does not compile: {}", shown(&diag.to_string()))?;
        }
        if let Some(err) = &rule.last_error {
            writeln!(out, "    last error: {}", shown(err))?;
        }
    }
    Ok(())
}

pub(crate) fn explain(
    config: &Config,
    event: Option<String>,
    rule: Option<String>,
    last: usize,
    errors: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if let Some(rule) = rule {
        let request = Request::RuleRuns { rule, last, errors };
        let Response::Runs(runs) = ask(config, &request)? else {
            anyhow::bail!("unexpected answer from the daemon");
        };
        if json {
            return print_json(&runs);
        }
        for run in &runs {
            write_run(&mut out, run)?;
        }
        return Ok(());
    }
    let event = event.context("name an event's seq or id, or --rule NAME")?;
    let seq = match event.parse::<u64>() {
        Ok(seq) => seq,
        Err(_) => {
            let request = Request::FindEvent {
                id: event.clone(),
                sources: config
                    .ingress
                    .sources
                    .iter()
                    .map(|s| s.name.clone())
                    .collect(),
            };
            match ask(config, &request)? {
                Response::Found(Some(seq)) => seq,
                Response::Found(None) => {
                    anyhow::bail!("no event with id {} is stored", shown(&event))
                }
                _ => anyhow::bail!("unexpected answer from the daemon"),
            }
        }
    };
    let Response::Explained(what) = ask(config, &Request::Explain { seq })? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    if json {
        return print_json(&what);
    }
    match &what.event {
        Some(e) => writeln!(
            out,
            "event {seq}: {}.{} at {}  {}",
            shown(&e.source),
            shown(&e.kind),
            e.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            shown_keys(e.keys.iter())
        )?,
        None => writeln!(
            out,
            "event {seq}: not in the log (not stored yet, or pruned)"
        )?,
    }
    if what.runs.is_empty() {
        writeln!(out, "  woke no rule (or its trace was pruned)")?;
    }
    for run in &what.runs {
        write_run(&mut out, run)?;
    }
    for action in &what.actions {
        let when = action.at_ms.map(ms_time).unwrap_or_default();
        let tries = match action.failed_tries {
            0 => String::new(),
            n => format!(" after {n} failed tr{}", if n == 1 { "y" } else { "ies" }),
        };
        let said = match action.fate.as_str() {
            "delivered" => format!("delivered {when}{tries}"),
            "dead" => format!(
                "dead since {when}{tries}: {}",
                action.why.as_deref().unwrap_or_default()
            ),
            "pending" if action.at_ms.is_some() => format!(
                "pending, next try {when}{tries}: {}",
                action.why.as_deref().unwrap_or_default()
            ),
            other => other.to_owned(),
        };
        writeln!(out, "  action {}: {}", shown(&action.id), shown(&said))?;
    }
    Ok(())
}

pub(crate) fn write_run(
    out: &mut dyn std::io::Write,
    run: &gancho_state::traces::RunTrace,
) -> std::io::Result<()> {
    let outcome = match (&run.error, run.actions.len()) {
        (Some(error), _) => format!("failed: {}", shown(error)),
        (None, 0) => "decided nothing".to_owned(),
        (None, n) => format!("decided {n} action(s)"),
    };
    writeln!(
        out,
        "  rule {} on event {}{}: {outcome}",
        shown(&run.rule),
        run.seq,
        if run.rerun { " (gancho rerun)" } else { "" }
    )?;
    for q in &run.queries {
        writeln!(
            out,
            "    {} {} {} from {} to {} -> {}",
            q.call,
            shown(&q.kind),
            shown_keys(q.keys.iter().map(|(k, v)| (k, v))),
            ms_time(q.from_ms),
            ms_time(q.to_ms),
            q.found
        )?;
    }
    for change in &run.changes {
        writeln!(out, "    {}", shown(change))?;
    }
    Ok(())
}

pub(crate) fn discard_timer(config: &Config, id: &str) -> anyhow::Result<()> {
    let Some((rule, name)) = id.split_once('/') else {
        anyhow::bail!("name the timer as RULE/NAME, as `gancho timers` shows it");
    };
    let request = Request::DiscardTimer {
        rule: rule.to_owned(),
        name: name.to_owned(),
    };
    let Response::Done(said) = ask(config, &request)? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    writeln!(std::io::stdout().lock(), "{}", shown(&said))?;
    Ok(())
}

pub(crate) fn rerun(
    config: &Config,
    rule: String,
    since: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<()> {
    let since_ms = match since {
        Some(since) => {
            let since = chrono::Duration::from_std(since).context("--since is too long")?;
            (gancho_core::Clock::now(&gancho_core::SystemClock) - since).timestamp_millis()
        }
        None => i64::MIN,
    };
    let request = Request::Rerun {
        rule: rule.clone(),
        since_ms,
    };
    let Response::Reran(reran) = ask(config, &request)? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    if json {
        for (seq, outcome) in &reran {
            let line = serde_json::json!({ "seq": seq, "rule": rule, "outcome": outcome });
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    for (seq, outcome) in &reran {
        writeln!(out, "event {seq}: {}", shown(outcome))?;
    }
    writeln!(
        out,
        "{} failed run(s) of rule {} re-run",
        reran.len(),
        shown(&rule)
    )?;
    Ok(())
}

pub(crate) fn clear_state(
    config: &Config,
    rule: String,
    key: Option<String>,
    all: bool,
) -> anyhow::Result<()> {
    if key.is_none() && !all {
        anyhow::bail!("--clear needs a KEY, or --all for all the rule's state");
    }
    let Response::Done(said) = ask(config, &Request::ClearState { rule, key })? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    writeln!(std::io::stdout().lock(), "{}", shown(&said))?;
    Ok(())
}
