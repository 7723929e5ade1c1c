//! Instants as operators type them, in a query string or a form: an RFC 3339 time, the value of
//! an HTML `datetime-local` field (`2026-11-30T16:05`, read as UTC: the dashboard labels its
//! fields so), or a duration back from now (`24h`, `90m`).

use chrono::{DateTime, NaiveDateTime, Utc};

/// `text` as an instant, `now` being what a duration counts back from; `None` when it is none
/// of the three forms.
pub fn parse(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(local) = NaiveDateTime::parse_from_str(text, format) {
            return Some(local.and_utc());
        }
    }
    let back = chrono::Duration::from_std(humantime::parse_duration(text).ok()?).ok()?;
    now.checked_sub_signed(back)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_three_forms_are_read_and_anything_else_is_refused() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let at = |h, m, s| Some(Utc.with_ymd_and_hms(2026, 11, 30, h, m, s).unwrap());
        assert_eq!(parse("2026-11-30T09:30:00+01:00", now), at(8, 30, 0));
        assert_eq!(parse("2026-11-30T09:30", now), at(9, 30, 0));
        assert_eq!(parse("2026-11-30T09:30:15", now), at(9, 30, 15));
        assert_eq!(parse("90m", now), at(10, 30, 0));
        assert_eq!(parse(" 24h ", now), Some(now - chrono::Duration::hours(24)));
        assert_eq!(parse("yesterday", now), None);
        assert_eq!(parse("", now), None);
    }
}
