//! The operator's commands other than `run`, each asking the daemon over its control socket
//! (or, with the daemon stopped, the store itself) and printing the answer: `main.rs` parses
//! the command line and calls these.

mod listings;
mod rules;

pub(crate) use listings::*;
pub(crate) use rules::*;

use std::io::Write as _;

use crate::config::Config;
use crate::control::{Request, Response};

pub(crate) fn show_status(config: &Config, json: bool) -> anyhow::Result<()> {
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

pub(crate) fn prune_now(config: &Config, json: bool) -> anyhow::Result<()> {
    let retention = crate::prune::Retention::of(config);
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

pub(crate) fn retry_dead(config: &Config, id: Option<String>) -> anyhow::Result<()> {
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
pub(crate) fn ask(config: &Config, request: &Request) -> anyhow::Result<Response> {
    match crate::control::client::ask(
        &config.socket_path(),
        config.stopped_store_dir().as_deref(),
        request,
    )? {
        Response::Error(err) => anyhow::bail!("{err}"),
        other => Ok(other),
    }
}

/// Whether `err` comes from writing to a pipe whose reader is gone.
pub(crate) fn broken_pipe(err: &anyhow::Error) -> bool {
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

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
