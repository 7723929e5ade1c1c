//! The `gancho` binary: reads the config, wires the store and the ingress together, handles
//! signals, and serves the operator's commands (`run`, `events`, `quarantine`, `outbox`, `rules`,
//! `check`, `check-config`).
//!
//! This is the only crate that handles signals, reads the environment for its config, or uses
//! `anyhow`: errors from the library crates are typed and get their context here.

mod admin;
mod config;
mod control;
mod data;
mod metrics;
mod pages;
mod prune;
mod ready;
mod reload;
mod replay;
mod run;
mod tail;
mod test_rules;
mod text;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gancho_core::{Clock as _, SystemClock};

use crate::config::Config;
use crate::control::{Query, Request, Response};
use crate::text::shown;

/// mimalloc instead of glibc's allocator: the ingest path allocates and frees small buffers on
/// several threads, where glibc's malloc spent a tenth of all CPU time in the benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_CONFIG from sysexits.h: the config is wrong. The systemd unit does not restart on it.
const EXIT_CONFIG: u8 = 78;

/// gancho: receives webhooks, stores them durably, and runs rules on them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The config file (TOML). Without it, the embedded defaults: listen on 127.0.0.1:8080,
    /// data in ./data, rules from ./rules.
    #[arg(long, global = true, env = "GANCHO_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the config and exit.
    CheckConfig,
    /// List stored events, oldest first.
    Events {
        /// Only events of this source (its name in the config).
        #[arg(long)]
        source: Option<String>,
        /// Only events of this type, in the source's words (`open`).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only events whose correlation key NAME equals VALUE.
        #[arg(long, value_name = "NAME=VALUE", value_parser = parse_key)]
        key: Option<(String, String)>,
        /// Only events whose event time is within this long before now, as `24h`, `30m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// At most this many (the newest); 0 for all.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Compile every rule in the rules folder (or DIR) and report each; exit 1 if one fails.
    Check {
        /// Folders of `.rhai` rules and rule files; default: the config's `rules_dir`.
        paths: Vec<PathBuf>,
    },
    /// Run rules over events from a file, with a virtual clock, in a temporary store: no
    /// daemon, no data folder touched, nothing sent. Prints each decided action as a JSON
    /// line; exits 1 on a rule error, or when `--expect` differs.
    Test {
        /// The rule files.
        #[arg(required = true)]
        rules: Vec<PathBuf>,
        /// JSON lines, each `{"source": NAME, "payload": BODY, "received": TIME?}`.
        #[arg(long)]
        events: PathBuf,
        /// JSON lines of the actions expected, in order (fields left out are not compared).
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Run on to this RFC 3339 time, or `+DURATION` after the last event.
        #[arg(long)]
        until: Option<String>,
    },
    /// Run a rule version over the stored history (the running daemon's, or a stopped
    /// one's), on a temporary copy with a virtual clock: print what it would have decided,
    /// in `gancho test`'s format with `--json`. Sends nothing and changes nothing live; exits
    /// 1 if the rule fails on an event.
    Replay {
        /// The rule file (a new version of a live rule, or a new rule).
        rule: PathBuf,
        /// Replay the events that arrived within this long before now, as `24h`, `7d`
        /// (default: every stored event).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "from")]
        since: Option<std::time::Duration>,
        /// Replay the events from this seq on.
        #[arg(long)]
        from: Option<u64>,
        /// The events that arrived within this long before the replay's start are copied too,
        /// for the rule's window queries, and not run.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        history: std::time::Duration,
        /// Print each decided action as a JSON line (`gancho test`'s format).
        #[arg(long)]
        json: bool,
    },
    /// The rules the running daemon has loaded: what wakes them, runs, errors, last error.
    Rules {
        #[command(subcommand)]
        control: Option<RulesCommand>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the actions rules decided, in the order they were decided.
    Outbox {
        /// At most this many (the oldest); 0 for all.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List dead letters: actions that failed for good or too often, with every try's error.
    /// `gancho dead retry ID|--all` puts them back in the outbox.
    Dead {
        #[command(subcommand)]
        retry: Option<DeadCommand>,
        /// At most this many (the oldest); 0 for all.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the delivered actions (kept `[retry] sent_retention`): to whom, when decided and
    /// delivered, failed tries, and the peer's answer.
    Sent {
        /// Only this channel's: email, sms or http.
        #[arg(long, value_parser = parse_channel)]
        channel: Option<gancho_core::Channel>,
        /// Only those delivered within this long before now, as `24h`, `30m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// At most this many (the newest); 0 for all.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the runs set aside because the engine died running them (a rule on an event): each
    /// was tried three times; its rule still runs on other events, other rules on this one.
    Poisoned {
        /// At most this many (the oldest events); 0 for all.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Why an event did what it did: the event, each rule it woke with its outcome, window
    /// queries and changes, and what became of the actions. Or, with `--rule`, a rule's last
    /// runs.
    Explain {
        /// The event's seq, or its id (`p:…`, `h:…`), as `gancho events` shows them.
        #[arg(required_unless_present = "rule")]
        event: Option<String>,
        /// A rule's last runs instead, newest first.
        #[arg(long)]
        rule: Option<String>,
        /// With `--rule`: how many.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// With `--rule`: only the runs that failed.
        #[arg(long)]
        errors: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the current version of a rule once on each event it failed on (as `gancho explain
    /// --rule NAME --errors` lists them): its decisions are committed and delivered like live
    /// ones, and an event is re-run at most once. Needs the running daemon.
    Rerun {
        /// The rule to run again.
        #[arg(long)]
        rule: String,
        /// On the events it failed on (the only kind of re-run there is; required, so that
        /// the command says what it does).
        #[arg(long, required = true)]
        failed: bool,
        /// Only the runs traced within this long before now, as `24h`, `30m` (default: all
        /// the traces kept, `[engine] trace_retention`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the pending timers and expectations, by rule: when each fires, what cancels it.
    Timers {
        #[command(subcommand)]
        discard: Option<TimersCommand>,
        /// Only this rule's.
        #[arg(long)]
        rule: Option<String>,
        /// Only those whose rule or function was missing when they came due: kept until one
        /// is loaded, or discarded.
        #[arg(long)]
        orphaned: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a rule's state (`once` and `throttle` marks included), or one key of it;
    /// `--clear KEY` or `--clear --all` resets it.
    State {
        rule: String,
        key: Option<String>,
        /// Clear this key (or, with `--all`, all the rule's state) instead of showing it.
        #[arg(long, value_name = "KEY", num_args = 0..=1, default_missing_value = "")]
        clear: Option<String>,
        /// With `--clear`: all the rule's state.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// How far the log is durable, indexed and processed by the rules, and what retention
    /// and the quarantine's cap deleted.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete now what is past its retention (`[store] retention`, `quarantine_retention`,
    /// `[retry] dead_retention`; the daemon also does it every hour), and print what went.
    Prune {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List items that sources sent but that were not valid events, with the reason.
    Quarantine {
        /// At most this many (the newest); 0 for all.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TimersCommand {
    /// Discard an orphaned timer or expectation, named RULE/NAME as `gancho timers` shows it.
    Discard { id: String },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Stop running a rule: events no longer wake it (its pending timers still fire); stored,
    /// so it holds across restarts.
    Disable { name: String },
    /// Run a rule again, disabled by an operator or paused by the engine.
    Enable { name: String },
}

#[derive(Debug, Subcommand)]
enum DeadCommand {
    /// Put dead letters back in the outbox, due at once, with a fresh count of tries.
    Retry {
        /// The action id (from `gancho dead`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

fn parse_key(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Whatever gancho creates (the store's files, mail, the socket) is its own: 0600 and 0700,
    // whatever the umask it was started with.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // The config says how to log: it is read first, and its errors are printed as they are.
    let config = match config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("gancho: config error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(config.log_format);
    // Test builds only: named crash points (`gancho_core::failpoint`), set by the tests that
    // start this binary. A build without them refuses the variable rather than ignore it.
    if let Some(spec) = std::env::var_os("GANCHO_FAILPOINTS") {
        let spec = spec.to_string_lossy();
        if let Err(err) = gancho_core::failpoint::configure(&spec) {
            eprintln!("gancho: GANCHO_FAILPOINTS: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
        tracing::warn!(points = %spec, "fail points are set");
    }
    // Test builds only: the daemon's clock starts at an instant and may run faster.
    let clock: std::sync::Arc<dyn gancho_core::Clock> = match std::env::var_os("GANCHO_TEST_CLOCK")
    {
        None => std::sync::Arc::new(SystemClock),
        Some(spec) => match gancho_core::failpoint::test_clock(&spec.to_string_lossy()) {
            Ok(clock) => {
                tracing::warn!(clock = ?clock, "a test clock is set");
                clock
            }
            Err(err) => {
                eprintln!("gancho: GANCHO_TEST_CLOCK: {err}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            if gancho_core::failpoint::enabled() {
                // `cargo test` (or `cargo build --all-targets`) builds the binary with its test
                // features; the one to install comes from `cargo build --release -p gancho`.
                tracing::warn!("this is a test build: fail points and a test clock can be set");
            }
            run::run(config, cli.config.clone(), clock)
        }
        Command::CheckConfig => {
            println!(
                "config ok: {} source(s), listening on {}",
                config.ingress.sources.len(),
                config.listen
            );
            Ok(())
        }
        Command::Events {
            source,
            kind,
            key,
            since,
            limit,
            json,
        } => list_events(&config, source, kind, key, since, limit, json),
        Command::Quarantine { limit, json } => list_quarantine(&config, limit, json),
        Command::Check { paths } => match check_rules(
            &config,
            match paths.is_empty() {
                true => std::slice::from_ref(&config.rules_dir),
                false => &paths,
            },
        ) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(err) => Err(err),
        },
        Command::Test {
            rules,
            events,
            expect,
            until,
        } => {
            let test = test_rules::TestRun {
                rules,
                events,
                expect,
                until,
            };
            match test_rules::run(&config, &test) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::FAILURE,
                Err(err) => Err(err),
            }
        }
        Command::Replay {
            rule,
            since,
            from,
            history,
            json,
        } => {
            let replay = replay::Replay {
                rule,
                since,
                from,
                history,
                json,
            };
            match replay::run(&config, &replay) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::FAILURE,
                Err(err) => Err(err),
            }
        }
        Command::Rules {
            control: Some(RulesCommand::Disable { name }),
            ..
        } => control_rule(&config, &name, false),
        Command::Rules {
            control: Some(RulesCommand::Enable { name }),
            ..
        } => control_rule(&config, &name, true),
        Command::Rules {
            control: None,
            json,
        } => list_rules(&config, json),
        Command::Outbox { limit, json } => list_outbox(&config, limit, json),
        Command::Prune { json } => prune_now(&config, json),
        Command::Status { json } => show_status(&config, json),
        Command::Poisoned { limit, json } => list_poisoned(&config, limit, json),
        Command::Rerun {
            rule,
            failed: _,
            since,
            json,
        } => rerun(&config, rule, since, json),
        Command::Explain {
            event: seq,
            rule,
            last,
            errors,
            json,
        } => explain(&config, seq, rule, last, errors, json),
        Command::Timers {
            discard: Some(TimersCommand::Discard { id }),
            ..
        } => discard_timer(&config, &id),
        Command::Timers {
            discard: None,
            rule,
            orphaned,
            json,
        } => list_timers(&config, rule, orphaned, json),
        Command::State {
            rule,
            key,
            clear,
            all,
            json,
        } => match clear {
            // `--clear KEY`, or `KEY --clear`; `--all` with neither.
            Some(clear) => {
                let named = (!clear.is_empty()).then_some(clear).or(key);
                match (named, all) {
                    (Some(_), true) => Err(anyhow::anyhow!(
                        "--clear --all clears all the rule's state: name no KEY with it"
                    )),
                    (named, all) => clear_state(&config, rule, named, all),
                }
            }
            None => show_state(&config, rule, key, json),
        },
        Command::Dead {
            retry: Some(DeadCommand::Retry { id, .. }),
            ..
        } => retry_dead(&config, id),
        Command::Dead {
            retry: None,
            limit,
            json,
        } => list_dead(&config, limit, json),
        Command::Sent {
            channel,
            since,
            limit,
            json,
        } => list_sent(&config, channel, since, limit, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`gancho events | head`): what it read was whole.
        Err(err) if broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gancho: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GANCHO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).init(),
        config::LogFormat::Json => lines.json().with_ansi(false).init(),
    }
}

fn list_events(
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
fn print_list<T: serde::de::DeserializeOwned + serde::Serialize>(
    config: &Config,
    request: &Request,
    json: bool,
    text: impl FnMut(&mut dyn std::io::Write, &T) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    print_list_where(config, request, json, |_| true, text)
}

/// [`print_list`] of the items `keep` accepts.
fn print_list_where<T: serde::de::DeserializeOwned + serde::Serialize>(
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
    control::each_item(
        &config.socket_path(),
        &config.store_dir(),
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

fn list_quarantine(config: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
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

/// `gancho check`: true when every rule of these folders and files compiles. A new version
/// that drops a function pending timers of its rule name is a warning (they would be kept as
/// orphaned when they come due), said with how many.
fn check_rules(config: &Config, paths: &[PathBuf]) -> anyhow::Result<bool> {
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
            };
            (s.name.clone(), facts)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for file in &files {
        let (name, compiled) = gancho_engine::check_file(file, &limits);
        let mistakes = match compiled {
            Ok(()) => gancho_engine::lint_file(file, &sources, &limits),
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

fn rules_status(config: &Config) -> anyhow::Result<gancho_engine::EngineStatus> {
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
fn control_rule(config: &Config, name: &str, enable: bool) -> anyhow::Result<()> {
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
fn warn_dropped_callbacks(
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
        let listed = control::each_item(
            &config.socket_path(),
            &config.store_dir(),
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

fn list_rules(config: &Config, json: bool) -> anyhow::Result<()> {
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

fn list_outbox(config: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
    let request = Request::Outbox { limit };
    print_list(config, &request, json, |out, item: &control::Pending| {
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
    })
}

/// An action's line in `gancho outbox` and `gancho dead`.
fn action_line(
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

fn describe(action: &gancho_core::Action) -> String {
    match action {
        gancho_core::Action::Email(e) => format!("email to {}: {}", e.to.join(", "), e.subject),
        gancho_core::Action::Sms(s) => format!("sms to {}: {}", s.to, s.text),
        gancho_core::Action::Http(h) => format!("http {} {}", h.method, h.url),
    }
}

fn parse_channel(text: &str) -> Result<gancho_core::Channel, String> {
    gancho_core::Channel::ALL
        .into_iter()
        .find(|c| c.as_str() == text)
        .ok_or_else(|| format!("{text:?}: a channel is email, sms or http"))
}

fn list_sent(
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

fn list_dead(config: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
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
fn shown_keys<'a>(keys: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    keys.map(|(k, v)| format!("{}={}", shown(k), shown(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ms_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn explain(
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

fn write_run(
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

fn discard_timer(config: &Config, id: &str) -> anyhow::Result<()> {
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

fn list_timers(
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

fn show_state(
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

fn rerun(
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

fn clear_state(
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

fn list_poisoned(config: &Config, limit: usize, json: bool) -> anyhow::Result<()> {
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

fn show_status(config: &Config, json: bool) -> anyhow::Result<()> {
    let Response::Status(status) = ask(config, &Request::Status)? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    if json {
        return print_json(&status);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "durable        {}", status.durable)?;
    writeln!(
        out,
        "indexed        {} (lag {})",
        status.indexed, status.index_lag
    )?;
    writeln!(
        out,
        "engine cursor  {} (lag {})",
        status.engine_cursor, status.engine_lag
    )?;
    writeln!(out, "pruned         {} event(s), ever", status.pruned)?;
    writeln!(
        out,
        "quarantine     {} record(s) dropped for its cap, ever",
        status.quarantine_dropped
    )?;
    Ok(())
}

fn prune_now(config: &Config, json: bool) -> anyhow::Result<()> {
    let retention = prune::Retention::of(config);
    let Response::Pruned(pruned) = ask(config, &Request::Prune { retention })? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    if json {
        return print_json(&pruned);
    }
    writeln!(
        std::io::stdout().lock(),
        "pruned {} event(s) ({} kept for pending timers; {} block(s) deleted, {} rewritten), {} quarantine record(s), {} dead letter(s), {} expired state value(s), {} trace record(s), {} delivery record(s)",
        pruned.events,
        pruned.kept,
        pruned.blocks_deleted,
        pruned.blocks_rewritten,
        pruned.quarantine_records,
        pruned.dead_letters,
        pruned.expired_state,
        pruned.traces,
        pruned.sent
    )?;
    Ok(())
}

fn retry_dead(config: &Config, id: Option<String>) -> anyhow::Result<()> {
    let Response::Retried(n) = ask(config, &Request::DeadRetry { id: id.clone() })? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    match (id, n) {
        (Some(id), 0) => anyhow::bail!("no dead letter with id {id}"),
        _ => writeln!(
            std::io::stdout().lock(),
            "{n} dead letter(s) put back in the outbox"
        )?,
    }
    Ok(())
}

/// Asks the daemon (or the store); an error answer becomes an error.
fn ask(config: &Config, request: &Request) -> anyhow::Result<Response> {
    match control::ask(&config.socket_path(), &config.store_dir(), request)? {
        Response::Error(err) => anyhow::bail!("{err}"),
        other => Ok(other),
    }
}

/// Whether `err` comes from writing to a pipe whose reader is gone.
fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                cause
                    .downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            })
            == Some(std::io::ErrorKind::BrokenPipe)
    })
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
