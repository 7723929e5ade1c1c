//! Backoff: how long to wait after a failed try.

use std::time::Duration;

use crate::RetryPolicy;

/// What becomes of an item after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Tried again after this wait.
    Retry(Duration),
    /// Kept as a dead letter, for this reason.
    Dead(&'static str),
}

impl RetryPolicy {
    /// The fate of an item first tried at `first_ms` whose `tries`-th try (1 for the first)
    /// failed at `now_ms`: dead if the peer refused for good, if it has been failing for
    /// `max_age`, or past `max_attempts` (0: no cap); else retried after [`RetryPolicy::delay`].
    pub(crate) fn after_failure(
        &self,
        first_ms: i64,
        now_ms: i64,
        tries: u32,
        permanent: bool,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> AfterFailure {
        let age = u64::try_from(now_ms.saturating_sub(first_ms)).unwrap_or(0);
        let too_old = self
            .max_age
            .is_some_and(|max| u128::from(age) >= max.as_millis());
        if permanent {
            AfterFailure::Dead("refused for good")
        } else if too_old {
            AfterFailure::Dead("failing for too long")
        } else if self.max_attempts > 0 && tries >= self.max_attempts {
            AfterFailure::Dead("too many failed tries")
        } else {
            AfterFailure::Retry(self.delay(tries, retry_after, unit))
        }
    }

    /// The wait after the `failures`-th failed try (1 for the first): `initial` doubled per
    /// earlier failure, capped at `max`, then jittered into its upper half (so retries of many
    /// items failed together spread out), and never shorter than what the peer asked for with
    /// `Retry-After` (itself capped at `max`). `unit` is a number in [0, 1).
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(40);
        let backoff = self
            .initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let jittered = backoff.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) => jittered.max(asked.min(self.max)),
            None => jittered,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(3600),
            max_attempts: 15,
            max_age: None,
            dead_retention: None,
            sent_retention: None,
        }
    }

    /// The default schedule through an outage that never ends, on a simulated clock: the
    /// times of the tries, and when and why the item goes to dead letters.
    fn outage(policy: &RetryPolicy, unit: f64) -> (Vec<i64>, i64, &'static str) {
        let (first, mut now) = (0i64, 0i64);
        let mut tries = Vec::new();
        loop {
            tries.push(now);
            let n = u32::try_from(tries.len()).unwrap();
            match policy.after_failure(first, now, n, false, None, unit) {
                AfterFailure::Retry(wait) => now += i64::try_from(wait.as_millis()).unwrap(),
                AfterFailure::Dead(why) => return (tries, now, why),
            }
        }
    }

    #[test]
    fn the_default_schedule_retries_through_a_three_day_outage() {
        let hour = 3_600_000;
        for unit in [0.0, 0.5, 0.999] {
            let (tries, dead_at, why) = outage(&RetryPolicy::default(), unit);
            assert_eq!(why, "failing for too long", "{unit}");
            // Retried until the third day is over, an hour apart at most, then buried.
            assert!(
                dead_at >= 72 * hour && dead_at < 73 * hour,
                "{unit}: {dead_at}"
            );
            assert!(tries.windows(2).all(|w| w[1] - w[0] <= hour), "{unit}");
            assert!(tries.len() > 72, "{unit}: {} tries", tries.len());
        }
        // A cap on tries still applies when one is set.
        let capped = RetryPolicy {
            max_attempts: 15,
            ..RetryPolicy::default()
        };
        let (tries, _, why) = outage(&capped, 0.5);
        assert_eq!((tries.len(), why), (15, "too many failed tries"));
        assert_eq!(
            RetryPolicy::default().after_failure(0, 0, 1, true, None, 0.5),
            AfterFailure::Dead("refused for good")
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.delay(1, None, 0.999_999).as_millis(), 1999);
        assert_eq!(p.delay(1, None, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(2, None, 0.0), Duration::from_secs(2));
        assert_eq!(p.delay(4, None, 0.0), Duration::from_secs(8));
        // 2 s × 2^11 > 1 h: capped, then jittered.
        assert_eq!(p.delay(12, None, 0.0), Duration::from_secs(1800));
        assert_eq!(p.delay(100, None, 0.0), Duration::from_secs(1800));
        for failures in 1..20 {
            for unit in [0.0, 0.3, 0.99] {
                assert!(p.delay(failures, None, unit) <= p.max);
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_the_max() {
        let p = policy();
        let asked = Some(Duration::from_secs(120));
        assert_eq!(p.delay(1, asked, 0.5), Duration::from_secs(120));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(86_400)), 0.5),
            Duration::from_secs(3600)
        );
        // A short Retry-After does not shorten the backoff.
        assert_eq!(
            p.delay(4, Some(Duration::from_secs(1)), 0.0),
            Duration::from_secs(8)
        );
    }
}
