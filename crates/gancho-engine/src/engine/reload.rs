//! Loading the rules folder into a running [`Engine`]: new and changed files compiled and
//! swapped in, broken ones reported while their previous version runs on, deleted ones
//! stopped; a rule's literal windows checked against the retention, and its orphaned timers
//! armed again when it defines their function once more.

use std::collections::HashSet;

use gancho_core::time_to_millis;
use tracing::{info, warn};

use crate::rule::{self, Diagnostic};

use super::config::EngineError;
use super::load::rule_files;
use super::status::ReloadReport;
use super::walk::Engine;

impl Engine {
    /// Warns when a window written in the rule reaches further back than the store keeps
    /// events (its first query of a longer window, computed at run time, warns otherwise).
    pub(super) fn check_windows(&self, name: &str, path: &std::path::Path, text: &str) {
        let mut ctx = self.ctx.borrow_mut();
        ctx.told_retention.remove(name);
        let (Some(retention), Some(window)) =
            (ctx.retention_ms, rule::longest_literal_window_ms(text))
        else {
            return;
        };
        if window > retention {
            warn!(
                rule = name,
                file = %path.display(),
                window_ms = window,
                retention_ms = retention,
                "a window of this rule is longer than the store's retention ([store] retention): it sees only the events kept"
            );
            ctx.told_retention.insert(name.to_owned());
        }
    }

    /// Reads the rules folder again: new and changed files are compiled and swapped in, broken
    /// ones reported (their previous version keeps running), deleted ones stopped.
    pub fn reload(&mut self) -> Result<ReloadReport, EngineError> {
        self.refresh_controls()?;
        let dir = self.config.rules_dir.clone();
        let mut report = ReloadReport::default();
        let files = match rule_files(&dir)? {
            Some(files) => files,
            // Gone while running (a deploy that replaces the folder): keep the rules running
            // rather than stop them all and let events pass unseen.
            None if self.loaded_once => {
                return Err(EngineError::RulesDir {
                    path: dir,
                    cause: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the folder is gone; the loaded rules keep running",
                    ),
                });
            }
            None => {
                warn!(dir = %dir.display(), "no rules folder: no rules loaded");
                Vec::new()
            }
        };
        self.loaded_once = true;
        let present: HashSet<String> = files.iter().map(|(name, _)| name.clone()).collect();
        for (name, path) in files {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    let diag = Diagnostic {
                        file: path.clone(),
                        line: 1,
                        column: 1,
                        message: format!("cannot read: {err}"),
                    };
                    self.broken.insert(name, (0, diag.clone()));
                    report.failed.push(diag);
                    continue;
                }
            };
            let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
            if self.rules.get(&name).is_some_and(|r| r.hash == hash) {
                self.broken.remove(&name);
                continue;
            }
            if self.broken.get(&name).is_some_and(|(h, _)| *h == hash) {
                continue;
            }
            match rule::compile(&self.rhai, &path, &text) {
                Ok(rule) if !self.config.lane.runs(rule.scope) => {
                    // It runs on the other lane (cluster mode): not here, and not broken.
                    tracing::debug!(rule = %name, lane = ?self.config.lane, "rule of the other lane: not loaded here");
                    self.broken.remove(&name);
                    if self.rules.remove(&name).is_some() {
                        self.cron_next.remove(&name);
                        report.removed.push(name);
                    }
                }
                Ok(rule) => {
                    info!(rule = %name, file = %path.display(), "rule loaded");
                    self.broken.remove(&name);
                    self.check_windows(&name, &path, &text);
                    // A rule changed while running has missed nothing: its schedule starts from
                    // now. (At start, or for a new file, the first step catches up instead.)
                    match (self.rules.contains_key(&name), &rule.schedule) {
                        (true, Some(schedule)) => {
                            let now = time_to_millis(self.clock.now());
                            let next = schedule.next_after(now).unwrap_or(i64::MAX);
                            self.cron_next.insert(name.clone(), next);
                        }
                        _ => {
                            self.cron_next.remove(&name);
                        }
                    }
                    self.rules.insert(name.clone(), rule);
                    self.rearm_orphans(&name);
                    report.loaded.push(name);
                }
                Err(diag) => {
                    warn!(rule = %name, "rule does not compile: {diag}");
                    self.broken.insert(name, (hash, diag.clone()));
                    report.failed.push(diag);
                }
            }
        }
        let gone: Vec<String> = self
            .rules
            .keys()
            .chain(self.broken.keys())
            .filter(|name| !present.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            if self.rules.remove(&name).is_some() {
                info!(rule = %name, "rule file deleted: rule stopped");
                report.removed.push(name.clone());
            }
            self.broken.remove(&name);
            self.cron_next.remove(&name);
        }
        if !report.loaded.is_empty() || !report.removed.is_empty() {
            self.clear_dispatch();
        }
        Ok(report)
    }

    /// Arms again the orphaned timers of a rule just loaded whose function it defines: due at
    /// once (they came due while orphaned), each under a new uid, so that its firing is a new
    /// event in the log.
    pub(super) fn rearm_orphans(&mut self, name: &str) {
        let Some(rule) = self.rules.get(name) else {
            return;
        };
        let orphans = match self.state.orphaned_timers(name) {
            Ok(orphans) => orphans,
            Err(err) => {
                warn!(rule = name, error = %err, "reading orphaned timers");
                return;
            }
        };
        let now_ms = time_to_millis(self.clock.now());
        for orphan in orphans {
            if !rule.callbacks.contains(&orphan.callback) {
                continue;
            }
            info!(rule = name, timer = %orphan.name, "an orphaned timer is armed again");
            let armed = gancho_state::Timer {
                orphaned: false,
                uid: format!("{}@{now_ms}", orphan.uid),
                due_ms: orphan.due_ms.min(now_ms),
                ..orphan.clone()
            };
            self.ctx.borrow_mut().set_timer(Some(orphan), Some(armed));
        }
    }
}
