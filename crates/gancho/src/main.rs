//! The `gancho` binary: reads the config, wires the store and the ingress together, handles
//! signals, and serves the operator's commands (`run`, `events`, `quarantine`, `outbox`, `rules`,
//! `check`, `check-config`, …), which `commands/` carries out.
//!
//! This is the only crate that handles signals, reads the environment for its config, or uses
//! `anyhow`: errors from the library crates are typed and get their context here.

mod admin;
mod allocator;
mod cluster;
mod commands;
mod config;
mod control;
mod dashboard;
mod data;
mod instant;
mod metrics;
mod pages;
mod prune;
mod ready;
mod reload;
mod replay;
mod run;
mod run_cluster;
mod tail;
mod test_rules;
mod text;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gancho_core::SystemClock;

use crate::commands::*;
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
        /// Also check the rules for cluster mode: a partitioned rule's window queries and
        /// `expect` must select by the queried source's `partition_key` or a key colocated with
        /// it. On when the config has `[cluster]`.
        #[arg(long)]
        cluster: bool,
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
    /// Cluster mode on NATS JetStream (`[cluster]`).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
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

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Check that the NATS servers of `[cluster]` meet gancho's needs (nats-server 2.14 or
    /// later, JetStream with file storage, `sync_interval: always`) and that this node can
    /// connect; exit 1 if not.
    Check {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The live nodes (last heartbeat), and each partition's owner, committed cursor and lag,
    /// as NATS holds them; on any node.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
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
    if matches!(cli.command, None | Some(Command::Run)) {
        allocator::tune();
    }
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
            if let Some(cluster) = config.cluster.clone() {
                return cluster::run(config, cluster, clock);
            }
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
        Command::Check { paths, cluster } => match check_rules(
            &config,
            match paths.is_empty() {
                true => std::slice::from_ref(&config.rules_dir),
                false => &paths,
            },
            cluster || config.cluster.is_some(),
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
        Command::Cluster {
            command: ClusterCommand::Check { json },
        } => cluster::check_command(&config, json),
        Command::Cluster {
            command: ClusterCommand::Status { json },
        } => cluster::status_command(&config, json),
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

fn parse_channel(text: &str) -> Result<gancho_core::Channel, String> {
    gancho_core::Channel::ALL
        .into_iter()
        .find(|c| c.as_str() == text)
        .ok_or_else(|| format!("{text:?}: a channel is email, sms or http"))
}
