//! Poison events: runs that kill the engine are set aside after three deaths instead of
//! killing it at every restart. The engine's database keeps the markers (`gancho_state`'s
//! `poison.rs`): each batch is recorded before it is processed; after an unclean exit the
//! events of the last batch begun are processed in *careful mode*, each run recorded (and
//! flushed) before it starts, so the run a death interrupts is known at the next start. A run
//! that dies twice in careful mode (three times in all) is set aside: listed by
//! `gancho poisoned`, counted as an error of its rule, never run again; the other rules still
//! run on its event, and processing goes on.

use std::collections::HashSet;
use std::sync::Arc;

use gancho_core::Clock;
use gancho_state::EngineState;
use gancho_state::poison::{CAREFUL_DEATHS, Poisoned};
use gancho_store::StoreError;
use tracing::{error, info, warn};

/// What to do with a run.
pub(super) enum Verdict {
    Run,
    /// Do not run it: it was set aside (why, for the rule's last error).
    SetAside(String),
}

#[derive(Debug)]
pub(super) struct Careful {
    state: EngineState,
    clock: Arc<dyn Clock>,
    /// Events up to this seq are processed carefully (after an unclean exit).
    until: Option<u64>,
    /// The run that died in careful mode, and how often.
    suspect: Option<(u64, String, u32)>,
    /// Runs set aside, (seq, rule).
    set_aside: HashSet<(u64, String)>,
    /// A careful run is recorded as in progress.
    running: bool,
}

impl Careful {
    /// Starts a life of the engine, whose committed cursor is `cursor`.
    pub(super) fn begin(
        state: EngineState,
        clock: Arc<dyn Clock>,
        cursor: u64,
    ) -> Result<Careful, StoreError> {
        let last = state.begin_life()?;
        let set_aside = state
            .poisoned(0)?
            .into_iter()
            .map(|p| (p.seq, p.rule))
            .collect();
        let until = last.careful_until.filter(|&until| until > cursor);
        if let Some(until) = until {
            warn!(
                from = cursor + 1,
                until,
                suspect = ?last.suspect,
                "the engine did not stop cleanly: processing the events it was at carefully"
            );
        }
        let mut careful = Careful {
            state,
            clock,
            until,
            suspect: last.suspect,
            set_aside,
            running: false,
        };
        if careful.until.is_none() && careful.suspect.is_some() {
            careful.committed(cursor)?;
        }
        Ok(careful)
    }

    /// Records the batch about to be processed.
    pub(super) fn batch(&self, first: u64, last: u64) -> Result<(), StoreError> {
        self.state.note_batch(first, last)
    }

    /// Before running `rule` on the event `seq` (of type `kind`).
    pub(super) fn before_run(&mut self, seq: u64, rule: &str, kind: &str) -> Verdict {
        let set_aside = || {
            Verdict::SetAside(format!(
                "event {seq} ({kind}) set aside: the engine died running this rule on it (gancho poisoned)"
            ))
        };
        if self.set_aside.contains(&(seq, rule.to_owned())) {
            return set_aside();
        }
        if self.until.is_none_or(|until| seq > until) {
            return Verdict::Run;
        }
        if let Some((s, r, deaths)) = &self.suspect
            && *s == seq
            && r == rule
            && *deaths >= CAREFUL_DEATHS
        {
            let poisoned = Poisoned {
                seq,
                rule: rule.to_owned(),
                kind: kind.to_owned(),
                deaths: deaths + 1,
                set_aside_ms: self.clock.now().timestamp_millis(),
            };
            error!(
                seq,
                rule,
                kind,
                deaths = poisoned.deaths,
                "the engine died each time it ran this rule on this event: set aside (gancho poisoned)"
            );
            if let Err(err) = self.state.set_aside(&poisoned) {
                warn!(error = %err, "recording a run set aside");
            }
            self.set_aside.insert((seq, rule.to_owned()));
            return set_aside();
        }
        match self.state.note_run(seq, rule) {
            Ok(()) => self.running = true,
            Err(err) => {
                // Blame nothing for a death now: the marker may name an earlier run.
                warn!(error = %err, "recording a careful run");
                self.forget_run();
            }
        }
        Verdict::Run
    }

    /// After a run (whatever its outcome): a death from here on is not its doing.
    pub(super) fn after_run(&mut self) {
        if self.running {
            self.forget_run();
        }
    }

    fn forget_run(&mut self) {
        self.running = false;
        if let Err(err) = self.state.end_run() {
            warn!(error = %err, "clearing a careful run's record");
        }
    }

    /// The engine's cursor is committed up to `cursor`: careful mode ends once it is past.
    pub(super) fn committed(&mut self, cursor: u64) -> Result<(), StoreError> {
        if self.until.is_some_and(|until| cursor < until) {
            return Ok(());
        }
        if self.until.take().is_some() || self.suspect.is_some() {
            self.state.end_careful()?;
            self.suspect = None;
            info!(cursor, "the events of the unclean exit are processed");
        }
        Ok(())
    }

    /// The engine stops cleanly.
    pub(super) fn end(&self) -> Result<(), StoreError> {
        self.state.end_life()
    }
}
