use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

/// Why a value could not be read as an event time.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TimeError {
    #[error("time {0} is not an ISO 8601 date-time nor a Unix time")]
    Unparsable(String),
    #[error("time {0} is out of range")]
    OutOfRange(String),
    #[error("time must be a string or a number, found {0}")]
    WrongType(&'static str),
}

/// How a number given as an event time is read: seconds, milliseconds, or by its size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Unix seconds.
    S,
    /// Unix milliseconds.
    Ms,
    /// Milliseconds above [`AUTO_MS_ABOVE`] (seconds that large are past the year 5000),
    /// seconds otherwise.
    #[default]
    Auto,
}

/// With [`TimeUnit::Auto`], a number above this is milliseconds: 10^11 seconds is the year
/// 5138, 10^11 milliseconds is 1973.
pub const AUTO_MS_ABOVE: f64 = 1e11;

/// Reads an event time as providers send it: an RFC 3339 / ISO 8601 string
/// (`2026-11-28T09:00:00Z`, any offset, with or without a fraction; without an offset it is
/// UTC), or Unix seconds or milliseconds ([`TimeUnit::Auto`]) as an integer, a fraction, or a
/// string of digits.
pub fn parse_event_time(value: &Value) -> Result<DateTime<Utc>, TimeError> {
    parse_event_time_in(value, TimeUnit::Auto)
}

/// [`parse_event_time`], numbers read in `unit`.
pub fn parse_event_time_in(value: &Value, unit: TimeUnit) -> Result<DateTime<Utc>, TimeError> {
    match value {
        Value::Number(n) => {
            let read = match n.as_i64() {
                Some(whole) => from_number(whole as f64, Some(whole), unit),
                None => n
                    .as_f64()
                    .and_then(|fraction| from_number(fraction, None, unit)),
            };
            read.ok_or_else(|| TimeError::OutOfRange(n.to_string()))
        }
        Value::String(s) => parse_time_str(s, unit),
        Value::Null => Err(TimeError::WrongType("null")),
        Value::Bool(_) => Err(TimeError::WrongType("a boolean")),
        Value::Array(_) => Err(TimeError::WrongType("an array")),
        Value::Object(_) => Err(TimeError::WrongType("an object")),
    }
}

/// A number as an event time in `unit`: `whole` when it is an integer (read exactly).
fn from_number(value: f64, whole: Option<i64>, unit: TimeUnit) -> Option<DateTime<Utc>> {
    let millis = match unit {
        TimeUnit::S => false,
        TimeUnit::Ms => true,
        TimeUnit::Auto => value.abs() > AUTO_MS_ABOVE,
    };
    match (millis, whole) {
        (false, Some(secs)) => from_secs(secs, 0),
        (false, None) => from_fractional_secs(value),
        (true, Some(ms)) => DateTime::from_timestamp_millis(ms),
        (true, None) => from_fractional_secs(value / 1000.0),
    }
}

fn parse_time_str(s: &str, unit: TimeUnit) -> Result<DateTime<Utc>, TimeError> {
    let trimmed = s.trim();
    let out_of_range = || TimeError::OutOfRange(format!("{s:?}"));
    if let Ok(whole) = trimmed.parse::<i64>() {
        return from_number(whole as f64, Some(whole), unit).ok_or_else(out_of_range);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(t.with_timezone(&Utc));
    }
    // ISO 8601 forms RFC 3339 leaves out: a space for the `T`, an offset without its colon,
    // no offset (UTC).
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(trimmed, format) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(trimmed, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(value) = trimmed.parse::<f64>()
        && value.is_finite()
    {
        return from_number(value, None, unit).ok_or_else(out_of_range);
    }
    Err(TimeError::Unparsable(format!("{s:?}")))
}

fn from_secs(secs: i64, nanos: u32) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(secs, nanos).single()
}

fn from_fractional_secs(secs: f64) -> Option<DateTime<Utc>> {
    if !secs.is_finite() {
        return None;
    }
    let whole = secs.floor();
    if whole < i64::MIN as f64 || whole > i64::MAX as f64 {
        return None;
    }
    let nanos = ((secs - whole) * 1e9).round().min(999_999_999.0) as u32;
    from_secs(whole as i64, nanos)
}

/// Milliseconds since the Unix epoch: the resolution at which gancho stores and compares
/// event times.
pub fn time_to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The inverse of [`time_to_millis`]; saturates at chrono's range, which is far wider than
/// any event time.
pub fn millis_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn milliseconds_are_told_from_seconds_by_their_size_or_the_unit() {
        let want = Utc.timestamp_opt(1_764_460_000, 0).single().unwrap();
        assert_eq!(
            parse_event_time(&json!(1_764_460_000_000_i64)).unwrap(),
            want
        );
        assert_eq!(parse_event_time(&json!("1764460000000")).unwrap(), want);
        assert_eq!(parse_event_time(&json!(1_764_460_000)).unwrap(), want);
        let ms = parse_event_time_in(&json!(1_764_460_000_123_i64), TimeUnit::Ms).unwrap();
        assert_eq!(ms.timestamp_millis(), 1_764_460_000_123);
        assert_eq!(
            parse_event_time_in(&json!(1_764_460_000_000.5), TimeUnit::Auto)
                .unwrap()
                .timestamp_millis(),
            1_764_460_000_000
        );
        // Told to read seconds, a millisecond value is far in the future (or out of range).
        let secs = parse_event_time_in(&json!(1_764_460_000_000_i64), TimeUnit::S).unwrap();
        assert_eq!(secs.timestamp(), 1_764_460_000_000);
        let small = parse_event_time_in(&json!(1_764_460), TimeUnit::Ms).unwrap();
        assert_eq!(small.timestamp_millis(), 1_764_460);
    }

    #[test]
    fn iso_8601_with_and_without_fractions_and_offsets() {
        let want = Utc.timestamp_opt(1_764_320_000, 0).single().unwrap();
        for text in [
            "2025-11-28T08:53:20Z",
            "2025-11-28T08:53:20.000Z",
            "2025-11-28T09:53:20+01:00",
            "2025-11-28T09:53:20+0100",
            "2025-11-28 08:53:20",
            "2025-11-28T08:53:20",
            "2025-11-28 08:53:20+00:00",
        ] {
            assert_eq!(parse_event_time(&json!(text)).unwrap(), want, "{text}");
        }
        let fraction = parse_event_time(&json!("2025-11-28T08:53:20.250Z")).unwrap();
        assert_eq!(fraction.timestamp_millis(), 1_764_320_000_250);
    }

    #[test]
    fn unix_seconds_as_number_and_string() {
        let want = Utc.timestamp_opt(1_764_320_000, 0).unwrap();
        assert_eq!(parse_event_time(&json!(1_764_320_000)).unwrap(), want);
        assert_eq!(parse_event_time(&json!("1764320000")).unwrap(), want);
    }

    #[test]
    fn fractional_seconds_keep_millis() {
        let t = parse_event_time(&json!(1_764_320_000.25)).unwrap();
        assert_eq!(time_to_millis(t), 1_764_320_000_250);
    }

    #[test]
    fn rfc3339_with_offset_is_normalised_to_utc() {
        let t = parse_event_time(&json!("2026-11-28T10:00:00+01:00")).unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0).unwrap());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_event_time(&json!("yesterday")),
            Err(TimeError::Unparsable(_))
        ));
        assert!(parse_event_time(&json!(true)).is_err());
        assert!(parse_event_time(&json!(1e300)).is_err());
        assert!(parse_event_time(&json!(i64::MAX)).is_err());
    }
}
