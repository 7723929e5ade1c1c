use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

use crate::time::{millis_to_time, time_to_millis};

/// Where "now" comes from. Everything that stamps or compares time takes a clock, so tests can
/// move time by a day in a microsecond instead of waiting for it.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one place the wall clock is read (clippy's `disallowed-methods` refuses it elsewhere).
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to, with millisecond resolution.
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicI64,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            millis: AtomicI64::new(time_to_millis(start)),
        }
    }

    pub fn set(&self, to: DateTime<Utc>) {
        self.millis.store(time_to_millis(to), Ordering::SeqCst);
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.millis
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        millis_to_time(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = millis_to_time(1_700_000_000_000);
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(chrono::Duration::hours(24));
        assert_eq!(
            time_to_millis(clock.now()) - time_to_millis(start),
            86_400_000
        );
    }
}
