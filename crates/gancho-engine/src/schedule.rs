//! Cron schedules in a time zone: which instants a rule's `EVERY` ticks at.
//!
//! croner searches wall-clock (local) time, which is right on ordinary days and in a
//! spring-forward gap (a fixed time that does not exist that day, such as 02:30, runs at the
//! first instant after the gap; an interval schedule skips the missing hour, since no time
//! passes in it). Around a fall-back it is not: it never returns the second pass of the
//! repeated hour, and asked from inside that second pass it answers with an instant of the
//! first, which is in the past. So the search here also runs in each fixed UTC offset the zone
//! has near the instant, where local time is monotonic, and keeps an answer only where the zone
//! really has that offset. What the repeated hour gets, following croner's own split of
//! schedules (and the Open Cron Pattern Specification):
//!
//! - a *fixed-time* schedule (one second, one minute, one hour: `0 30 1 * * *`) runs once, at the
//!   first occurrence of its time;
//! - an *interval* schedule (any other: `0 */20 * * * *`, `0 0 * * * *`) runs in both passes,
//!   since it is about time elapsed.

use chrono::{DateTime, FixedOffset, Offset as _, TimeZone as _};

/// A cron schedule in a time zone.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub(crate) text: String,
    pub(crate) cron: croner::Cron,
    pub(crate) tz: chrono_tz::Tz,
}

/// How far around an instant the zone's offsets are looked at: beyond a day, croner's answer in
/// the zone is right (the repeated hour is never the first tick after an instant a day away
/// unless a schedule matches nothing else in between, and then croner's first occurrence is
/// still a tick).
const OFFSET_HOURS: i64 = 26;

impl Schedule {
    /// The first tick strictly after `after_ms`, on a whole second.
    pub(crate) fn next_after(&self, after_ms: i64) -> Option<i64> {
        // croner keeps the start's fraction of a second in what it finds: search from a whole
        // second, so that ticks are on the second (none is later than that second's).
        let after_ms = after_ms.div_euclid(1000) * 1000;
        let mut best = self
            .cron
            .find_next_occurrence(&self.local(after_ms), false)
            .ok()
            .map(|t| t.timestamp_millis())
            .filter(|&t| t > after_ms);
        for offset in self.offsets_near(after_ms, 0..=OFFSET_HOURS) {
            let mut from = at_offset(after_ms, offset);
            // A fixed time's second occurrence is passed over: look on from it, a few times.
            for _ in 0..4 {
                let Ok(tick) = self.cron.find_next_occurrence(&from, false) else {
                    break;
                };
                let ms = tick.timestamp_millis();
                if !self.has_offset(ms, offset) {
                    break;
                }
                if self.is_repeat(ms) {
                    from = tick;
                    continue;
                }
                if ms > after_ms && best.is_none_or(|b| ms < b) {
                    best = Some(ms);
                }
                break;
            }
        }
        best
    }

    /// The last tick at or before `at_ms`, on a whole second: one that [`Schedule::next_after`]
    /// gives too, so catching up and ticking on agree.
    pub(crate) fn last_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let at_ms = at_ms.div_euclid(1000) * 1000;
        let mut found = self
            .cron
            .find_previous_occurrence(&self.local(at_ms), true)
            .ok()
            .map(|t| t.timestamp_millis())
            .into_iter()
            .collect::<Vec<_>>();
        for offset in self.offsets_near(at_ms, -OFFSET_HOURS..=0) {
            if let Ok(tick) = self
                .cron
                .find_previous_occurrence(&at_offset(at_ms, offset), true)
            {
                found.push(tick.timestamp_millis());
            }
        }
        // croner's answers backwards are not all ticks (in a spring-forward gap it gives the
        // second before the gap): keep those the forward search agrees with, else start from
        // the earliest answer ...
        let mut last = found
            .iter()
            .copied()
            .filter(|&t| t <= at_ms && self.next_after(t - 1000) == Some(t))
            .max();
        let mut from = match last {
            Some(t) => t,
            None => found.iter().min()? - 1000,
        };
        // ... and walk forwards, which finds a fixed time run at the end of a gap.
        for _ in 0..16 {
            match self.next_after(from) {
                Some(next) if next <= at_ms => (last, from) = (Some(next), next),
                _ => break,
            }
        }
        last
    }

    fn local(&self, ms: i64) -> DateTime<chrono_tz::Tz> {
        gancho_core::millis_to_time(ms).with_timezone(&self.tz)
    }

    fn offset_at(&self, ms: i64) -> FixedOffset {
        self.local(ms).offset().fix()
    }

    /// The distinct offsets the zone has at whole hours `hours` from `ms`.
    fn offsets_near(&self, ms: i64, hours: std::ops::RangeInclusive<i64>) -> Vec<FixedOffset> {
        let mut offsets: Vec<FixedOffset> = Vec::with_capacity(2);
        for h in hours {
            let offset = self.offset_at(ms.saturating_add(h * 3_600_000));
            if !offsets.contains(&offset) {
                offsets.push(offset);
            }
        }
        offsets
    }

    fn has_offset(&self, ms: i64, offset: FixedOffset) -> bool {
        self.offset_at(ms) == offset
    }

    /// Whether the tick at `ms` is the second occurrence of its local time (the second pass of a
    /// repeated hour) and the schedule runs once a day at a fixed time, so it ran at the first.
    fn is_repeat(&self, ms: i64) -> bool {
        if self.cron.determine_job_type() != croner::JobType::FixedTime {
            return false;
        }
        let naive = self.local(ms).naive_local();
        match self.tz.from_local_datetime(&naive) {
            chrono::LocalResult::Ambiguous(first, _) => first.timestamp_millis() != ms,
            _ => false,
        }
    }
}

fn at_offset(ms: i64, offset: FixedOffset) -> DateTime<FixedOffset> {
    gancho_core::millis_to_time(ms).with_timezone(&offset)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn schedule(text: &str, zone: &str) -> Schedule {
        Schedule {
            text: text.to_owned(),
            cron: croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Required)
                .year(croner::parser::Year::Disallowed)
                .build()
                .parse(text)
                .unwrap(),
            tz: zone.parse().unwrap(),
        }
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    /// The ticks after `from`, as local times with their offsets.
    fn ticks(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut t = ms(from);
        (0..n)
            .map(|_| {
                let next = s.next_after(t).unwrap();
                assert!(next > t, "a tick not after its start");
                t = next;
                s.local(t).format("%d %H:%M%:z").to_string()
            })
            .collect()
    }

    #[test]
    fn spring_forward_skips_the_missing_hour_and_runs_a_fixed_time_in_it_at_its_end() {
        // Madrid, 29 March 2026: 02:00 becomes 03:00 (01:00 UTC).
        let every20 = schedule("0 */20 * * * *", "Europe/Madrid");
        assert_eq!(
            ticks(&every20, "2026-03-29T01:30:00+01:00", 4),
            [
                "29 01:40+01:00",
                "29 03:00+02:00",
                "29 03:20+02:00",
                "29 03:40+02:00"
            ]
        );
        let at_0230 = schedule("0 30 2 * * *", "Europe/Madrid");
        assert_eq!(
            ticks(&at_0230, "2026-03-28T12:00:00+01:00", 3),
            ["29 03:00+02:00", "30 02:30+02:00", "31 02:30+02:00"]
        );
        // New York, 8 March 2026: 02:00 becomes 03:00 (07:00 UTC).
        let hourly = schedule("0 15 * * * *", "America/New_York");
        assert_eq!(
            ticks(&hourly, "2026-03-08T00:30:00-05:00", 3),
            ["08 01:15-05:00", "08 03:15-04:00", "08 04:15-04:00"]
        );
        let ny_0230 = schedule("0 30 2 * * *", "America/New_York");
        assert_eq!(
            ticks(&ny_0230, "2026-03-07T12:00:00-05:00", 2),
            ["08 03:00-04:00", "09 02:30-04:00"]
        );
    }

    #[test]
    fn fall_back_runs_an_interval_in_both_passes_and_a_fixed_time_once() {
        // Madrid, 25 October 2026: 03:00 becomes 02:00 again (01:00 UTC).
        let every20 = schedule("0 */20 * * * *", "Europe/Madrid");
        assert_eq!(
            ticks(&every20, "2026-10-25T01:50:00+02:00", 7),
            [
                "25 02:00+02:00",
                "25 02:20+02:00",
                "25 02:40+02:00",
                "25 02:00+01:00",
                "25 02:20+01:00",
                "25 02:40+01:00",
                "25 03:00+01:00"
            ]
        );
        // Asked from inside the second pass, the answer is ahead, not in the first.
        assert_eq!(
            every20.next_after(ms("2026-10-25T02:05:00+01:00")),
            Some(ms("2026-10-25T02:20:00+01:00"))
        );
        let at_0230 = schedule("0 30 2 * * *", "Europe/Madrid");
        assert_eq!(
            ticks(&at_0230, "2026-10-24T12:00:00+02:00", 2),
            ["25 02:30+02:00", "26 02:30+01:00"]
        );
        assert_eq!(
            at_0230.next_after(ms("2026-10-25T02:10:00+01:00")),
            Some(ms("2026-10-26T02:30:00+01:00"))
        );
        // New York, 1 November 2026: 02:00 becomes 01:00 again (06:00 UTC).
        let hourly = schedule("0 30 * * * *", "America/New_York");
        assert_eq!(
            ticks(&hourly, "2026-11-01T00:45:00-04:00", 3),
            ["01 01:30-04:00", "01 01:30-05:00", "01 02:30-05:00"]
        );
        let ny_0130 = schedule("0 30 1 * * *", "America/New_York");
        assert_eq!(
            ticks(&ny_0130, "2026-10-31T12:00:00-04:00", 2),
            ["01 01:30-04:00", "02 01:30-05:00"]
        );
    }

    #[test]
    fn ticks_fall_on_the_whole_second_whatever_the_fraction_asked_from() {
        let s = schedule("0 */5 * * * *", "Europe/Madrid");
        let from = ms("2026-11-30T10:02:00.317+01:00");
        assert_eq!(s.next_after(from), Some(ms("2026-11-30T10:05:00+01:00")));
        assert_eq!(
            s.last_at_or_before(from + 600_000),
            Some(ms("2026-11-30T10:10:00+01:00"))
        );
        assert_eq!(
            s.next_after(ms("2026-11-30T10:05:00.708+01:00")),
            Some(ms("2026-11-30T10:10:00+01:00"))
        );
    }

    #[test]
    fn the_last_tick_before_an_instant_agrees_with_the_ticks_after() {
        for (text, zone, from) in [
            (
                "0 */20 * * * *",
                "Europe/Madrid",
                "2026-10-25T01:10:00+02:00",
            ),
            ("0 30 2 * * *", "Europe/Madrid", "2026-10-24T12:00:00+02:00"),
            (
                "0 */20 * * * *",
                "Europe/Madrid",
                "2026-03-29T01:10:00+01:00",
            ),
            ("0 30 2 * * *", "Europe/Madrid", "2026-03-28T12:00:00+01:00"),
            (
                "0 30 * * * *",
                "America/New_York",
                "2026-11-01T00:10:00-04:00",
            ),
            (
                "0 30 1 * * *",
                "America/New_York",
                "2026-10-31T12:00:00-04:00",
            ),
            (
                "0 30 2 * * *",
                "America/New_York",
                "2026-03-07T12:00:00-05:00",
            ),
        ] {
            let s = schedule(text, zone);
            let mut t = ms(from);
            for _ in 0..6 {
                let next = s.next_after(t).unwrap();
                // Just before the next tick, the last one is the previous tick (or earlier than
                // the start); at the tick, it is the tick.
                assert_eq!(s.last_at_or_before(next), Some(next), "{text} {zone}");
                let before = s
                    .last_at_or_before(next - 1)
                    .unwrap_or_else(|| panic!("{text} {zone}: nothing before {next}"));
                assert!(before <= t, "{text} {zone}: {before} vs {t}");
                t = next;
            }
        }
    }
}
