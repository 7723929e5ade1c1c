//! How the daemon's allocator is tuned. mimalloc keeps memory freed by the program for a second
//! (its `purge_delay`, 1000 ms by default) before giving it back to the system, on every thread.
//! gancho's threads hand buffers to each other (requests to the log writer, blocks to sled's
//! threads), so under load that held-back memory was a third of the daemon's RSS: 136 MB instead
//! of 75-80 under single events, a peak of 273 MB instead of 209 under the ingest benchmark,
//! with the same throughput (`docs/benchmarks.md`). A 10 ms delay gives it back.
//!
//! mimalloc reads its options from the environment once, at the first allocation, which is
//! before `main`; setting one from Rust would take `unsafe` (the workspace forbids it). So
//! `gancho run` executes itself again, as the same process (the PID, the systemd notify
//! socket and the watchdog stay), with `MIMALLOC_PURGE_DELAY` set, unless the environment sets
//! it already: an operator's own value wins.

use std::os::unix::process::CommandExt as _;

/// mimalloc's option, read from the environment.
pub const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";
/// The delay gancho runs with, in milliseconds.
pub const PURGE_DELAY_MS: &str = "10";

/// Executes this binary again with the purge delay set, unless it is set already; returns only
/// if it is (the usual case, after the first execution). Executing can fail (the binary was
/// replaced or removed meanwhile, or the system refuses): then this process cannot go on either,
/// since the attempt reset its SIGPIPE handling to the default (a client that hangs up would kill
/// the daemon), so it exits with the reason, and a supervisor starts it again. Setting the
/// variable in the environment skips this step.
pub fn tune() {
    if std::env::var_os(PURGE_DELAY_VAR).is_some() {
        return;
    }
    let err = match std::env::current_exe() {
        Ok(exe) => {
            let mut args = std::env::args_os();
            let mut command = std::process::Command::new(exe);
            if let Some(arg0) = args.next() {
                command.arg0(arg0);
            }
            command
                .args(args)
                .env(PURGE_DELAY_VAR, PURGE_DELAY_MS)
                .exec()
        }
        Err(err) => err,
    };
    eprintln!(
        "gancho: could not execute itself again to set {PURGE_DELAY_VAR}={PURGE_DELAY_MS}: {err} \
         (set {PURGE_DELAY_VAR} in the environment to skip this step)"
    );
    std::process::exit(EXIT_NOT_EXECUTED);
}

/// The exit code when executing again failed (`EX_OSERR`).
const EXIT_NOT_EXECUTED: i32 = 71;
