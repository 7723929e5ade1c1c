use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

/// Why a value could not be read as an event time.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TimeError {
    #[error("time {0} is not an RFC 3339 date-time nor Unix seconds")]
    Unparsable(String),
    #[error("time {0} is out of range")]
    OutOfRange(String),
    #[error("time must be a string or a number, found {0}")]
    WrongType(&'static str),
}

/// Reads an event time as providers send it: an RFC 3339 string (`2026-11-28T09:00:00Z`,
/// any offset), or Unix seconds as an integer, a fraction, or a string of digits.
pub fn parse_event_time(value: &Value) -> Result<DateTime<Utc>, TimeError> {
    match value {
        Value::Number(n) => {
            if let Some(secs) = n.as_i64() {
                from_secs(secs, 0).ok_or_else(|| TimeError::OutOfRange(n.to_string()))
            } else if let Some(secs) = n.as_f64() {
                from_fractional_secs(secs).ok_or_else(|| TimeError::OutOfRange(n.to_string()))
            } else {
                Err(TimeError::OutOfRange(n.to_string()))
            }
        }
        Value::String(s) => parse_time_str(s),
        Value::Null => Err(TimeError::WrongType("null")),
        Value::Bool(_) => Err(TimeError::WrongType("a boolean")),
        Value::Array(_) => Err(TimeError::WrongType("an array")),
        Value::Object(_) => Err(TimeError::WrongType("an object")),
    }
}

fn parse_time_str(s: &str) -> Result<DateTime<Utc>, TimeError> {
    let trimmed = s.trim();
    if let Ok(secs) = trimmed.parse::<i64>() {
        return from_secs(secs, 0).ok_or_else(|| TimeError::OutOfRange(s.to_owned()));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(secs) = trimmed.parse::<f64>()
        && secs.is_finite()
    {
        return from_fractional_secs(secs).ok_or_else(|| TimeError::OutOfRange(s.to_owned()));
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
