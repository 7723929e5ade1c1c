//! Backoff: how long to wait after a failed try.

use std::time::Duration;

use crate::RetryPolicy;

impl RetryPolicy {
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
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(3600),
            max_attempts: 15,
            max_age: None,
        }
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
