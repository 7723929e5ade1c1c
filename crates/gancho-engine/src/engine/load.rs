//! The rules folder: its `.rhai` files by rule name, and `gancho check`'s compile of each.

use std::path::{Path, PathBuf};

use super::config::EngineError;
use crate::rule::{self, Diagnostic};
use crate::sandbox::{self, Limits};

/// The `.rhai` files of a folder, by rule name (files with other names are skipped).
pub(super) fn rule_files(dir: &Path) -> Result<Option<Vec<(String, PathBuf)>>, EngineError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(EngineError::RulesDir {
                path: dir.to_owned(),
                cause: source,
            });
        }
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("rhai") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        files.push((name, path));
    }
    files.sort();
    Ok(Some(files))
}

/// A rule's name and whether it compiles.
pub type CheckResult = (String, Result<(), Diagnostic>);

/// Compiles every rule in a folder without running anything: `gancho check`.
pub fn check_dir(dir: &Path, limits: &Limits) -> Result<Vec<CheckResult>, EngineError> {
    let engine = sandbox::sandbox(limits);
    let mut out = Vec::new();
    let Some(files) = rule_files(dir)? else {
        return Err(EngineError::RulesDir {
            path: dir.to_owned(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        });
    };
    for (name, path) in files {
        out.push((name, check_one(&engine, &path)));
    }
    Ok(out)
}

/// Compiles one rule file, whatever its folder: `gancho check FILE`.
pub fn check_file(path: &Path, limits: &Limits) -> CheckResult {
    let engine = sandbox::sandbox(limits);
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    (name, check_one(&engine, path))
}

fn check_one(engine: &rhai::Engine, path: &Path) -> Result<(), Diagnostic> {
    match std::fs::read_to_string(path) {
        Ok(text) => rule::compile(engine, path, &text).map(drop),
        Err(err) => Err(Diagnostic {
            file: path.to_owned(),
            line: 1,
            column: 1,
            message: format!("cannot read: {err}"),
        }),
    }
}

/// What `gancho rules` shows with the daemon stopped: each rule of the folder as it compiles
/// now, with the counters and controls stored in the engine's database, at its durable cursor.
pub fn stopped_status(
    dir: &Path,
    state: &gancho_state::EngineState,
    limits: &Limits,
) -> Result<super::EngineStatus, EngineError> {
    let engine = sandbox::sandbox(limits);
    let counters = state.rule_counters()?;
    let controls = state.rule_controls()?;
    let files = rule_files(dir)?.unwrap_or_default();
    let mut rules = Vec::with_capacity(files.len());
    for (name, path) in files {
        let compiled = match std::fs::read_to_string(&path) {
            Ok(text) => rule::compile(&engine, &path, &text),
            Err(err) => Err(Diagnostic {
                file: path.clone(),
                line: 1,
                column: 1,
                message: format!("cannot read: {err}"),
            }),
        };
        let stored = counters.get(&name).cloned().unwrap_or_default();
        let control = controls.get(&name).cloned().unwrap_or_default();
        let (on, every, error) = match compiled {
            Ok(rule) => (
                rule.on_text.clone(),
                rule.schedule.as_ref().map(|s| s.text.clone()),
                None,
            ),
            Err(diag) => (Vec::new(), None, Some(diag)),
        };
        rules.push(super::RuleStatus {
            name,
            file: path,
            loaded: error.is_none(),
            error,
            on,
            every,
            runs: stored.runs,
            errors: stored.errors,
            last_error: stored.last_error,
            actions: stored.actions,
            time_ms: stored.time_us / 1000,
            disabled: control.disabled,
            paused: control.paused,
        });
    }
    Ok(super::EngineStatus {
        cursor: state.cursor()?,
        rules,
        stopped: true,
    })
}

/// The functions of a rule file that timers and expectations may call back (one parameter),
/// if it compiles: what `gancho check` compares with the pending timers of the rule.
pub fn rule_callbacks(path: &Path, limits: &Limits) -> Option<std::collections::HashSet<String>> {
    let engine = sandbox::sandbox(limits);
    let text = std::fs::read_to_string(path).ok()?;
    let rule = rule::compile(&engine, path, &text).ok()?;
    Some((*rule.callbacks).clone())
}

/// The mistakes `gancho check` finds in a rule that compiles, against the config's sources
/// (see `rule::lint`), and with `cluster` those that cluster mode adds (`cluster_check`); none
/// for a file that does not compile (its error is reported already).
pub fn lint_file(
    path: &Path,
    sources: &std::collections::BTreeMap<String, crate::rule::SourceFacts>,
    limits: &Limits,
    cluster: bool,
) -> Vec<Diagnostic> {
    let engine = sandbox::sandbox(limits);
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    match rule::compile(&engine, path, &text) {
        Ok(compiled) => {
            let mut found = rule::lint(path, &text, &compiled.on_text, sources);
            found.extend(crate::strict::check(&engine, path, &text, &compiled));
            if cluster && compiled.scope == rule::Scope::Partition {
                found.extend(crate::cluster_check::check(
                    path,
                    &text,
                    &compiled.on_text,
                    sources,
                ));
            }
            found
        }
        Err(_) => Vec::new(),
    }
}
