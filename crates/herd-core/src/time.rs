//! PostHog's event-time rules (protocol spec §1.3): loose timestamp parsing, clock-skew
//! correction against `sent_at`, `offset`, and the future/far-past clamps.
//!
//! All times are µs since the Unix epoch, UTC.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// Clock skew below this is trusted as it is (PostHog's dead band), µs.
pub const SKEW_DEAD_BAND_US: i64 = 150 * 1_000_000;
/// An event more than this far after `now` is moved to `now`, µs.
pub const MAX_FUTURE_US: i64 = 23 * 3600 * 1_000_000;

/// µs since the epoch of a chrono time.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Parses a timestamp the way PostHog's ingestion does: RFC 3339 first, then a date alone,
/// `YYYY-MM-DD HH:MM:SS[.f]` (or with `T`) without a zone (UTC), RFC 2822, and numeric epochs
/// (seconds, or milliseconds when the number is that large). A `+HH` zone reads as `+HH:00`.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    // `2024-01-02T03:04:05+01` → `+01:00`
    if let Some(fixed) = widen_hour_offset(text)
        && let Ok(t) = DateTime::parse_from_rfc3339(&fixed)
    {
        return Some(t.timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, fmt) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(text, fmt) {
            return Some(t.timestamp_micros());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_micros());
    }
    if let Ok(t) = DateTime::parse_from_rfc2822(text) {
        return Some(t.timestamp_micros());
    }
    if let Ok(n) = text.parse::<f64>()
        && n.is_finite()
    {
        // Epoch seconds, or milliseconds when it cannot be seconds of this era.
        let us = if n.abs() >= 1e11 { n * 1e3 } else { n * 1e6 };
        if us.abs() < 9.2e18 {
            return Some(us as i64);
        }
    }
    None
}

fn widen_hour_offset(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let n = bytes.len();
    if n < 4 {
        return None;
    }
    let sign = bytes[n - 3];
    if (sign == b'+' || sign == b'-')
        && bytes[n - 2].is_ascii_digit()
        && bytes[n - 1].is_ascii_digit()
    {
        Some(format!("{text}:00"))
    } else {
        None
    }
}

/// What an event says about its time, and what the request says.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeInputs<'a> {
    /// The event's `timestamp` field.
    pub timestamp: Option<&'a str>,
    /// The event's `offset` field, ms before `now`.
    pub offset_ms: Option<i64>,
    /// The request's `sent_at` (body field or `_` query parameter), µs.
    pub sent_at: Option<i64>,
    /// `properties.$ignore_sent_at`.
    pub ignore_sent_at: bool,
}

/// The stored timestamp of an event received at `now` (protocol spec §1.3).
pub fn resolve_timestamp(inputs: TimeInputs<'_>, now: i64) -> i64 {
    let mut ts = now;
    if let Some(parsed) = inputs.timestamp.and_then(parse_timestamp) {
        ts = match inputs.sent_at {
            Some(sent_at) if !inputs.ignore_sent_at => {
                let skew = sent_at.saturating_sub(now);
                let excess = skew
                    .saturating_abs()
                    .saturating_sub(SKEW_DEAD_BAND_US)
                    .max(0);
                parsed.saturating_sub(skew.signum().saturating_mul(excess))
            }
            _ => parsed,
        };
    }
    if let Some(offset) = inputs.offset_ms {
        ts = now.saturating_sub(offset.saturating_mul(1000));
    }
    if ts.saturating_sub(now) > MAX_FUTURE_US {
        ts = now;
    }
    // Years outside 0..=9999 become the epoch.
    const MIN_US: i64 = -62_167_219_200_000_000; // 0000-01-01
    const MAX_US: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999
    if !(MIN_US..=MAX_US).contains(&ts) {
        ts = 0;
    }
    ts
}

/// The UTC calendar day of a µs timestamp, as days since 1970-01-01.
pub fn day_of(ts_us: i64) -> i32 {
    ts_us.div_euclid(86_400_000_000) as i32
}

/// `YYYY-MM-DD` of a day number from [`day_of`].
pub fn day_string(day: i32) -> String {
    let date = NaiveDate::from_num_days_from_ce_opt(day + 719_163).unwrap_or(NaiveDate::MIN);
    date.format("%Y-%m-%d").to_string()
}

/// The day number of a `YYYY-MM-DD` string.
pub fn parse_day(text: &str) -> Option<i32> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(|d| {
        d.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN))
            .num_days() as i32
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn t(text: &str) -> i64 {
        parse_timestamp(text).unwrap_or_else(|| panic!("{text} should parse"))
    }

    #[test]
    fn parses_what_the_clients_send_and_loose_forms() {
        let base = t("2024-01-02T03:04:05Z");
        assert_eq!(t("2024-01-02T03:04:05+00:00"), base);
        assert_eq!(t("2024-01-02T03:04:05.000Z"), base);
        assert_eq!(t("2024-01-02 03:04:05"), base);
        assert_eq!(t("2024-01-02T04:04:05+01"), base);
        assert_eq!(t("Tue, 02 Jan 2024 03:04:05 +0000"), base);
        assert_eq!(t("1704164645"), base);
        assert_eq!(t("1704164645000"), base);
        assert_eq!(t("2024-01-02"), t("2024-01-02T00:00:00Z"));
        assert_eq!(t("2024-01-02T03:04:05.123456Z") - base, 123_456);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp(""), None);
    }

    #[test]
    fn skew_inside_the_dead_band_is_trusted() {
        let now = t("2024-01-02T00:00:00Z");
        let ts = "2024-01-01T23:00:00Z";
        let sent_at = Some(now + 100 * S);
        let got = resolve_timestamp(
            TimeInputs {
                timestamp: Some(ts),
                sent_at,
                ..Default::default()
            },
            now,
        );
        assert_eq!(got, t(ts));
    }

    #[test]
    fn skew_beyond_the_dead_band_is_corrected() {
        let now = t("2024-01-02T00:00:00Z");
        let ts = "2024-01-01T23:00:00Z";
        // Client clock 1 hour fast.
        let sent_at = Some(now + 3600 * S);
        let got = resolve_timestamp(
            TimeInputs {
                timestamp: Some(ts),
                sent_at,
                ..Default::default()
            },
            now,
        );
        assert_eq!(got, t(ts) - (3600 - 150) * S);
        // Client clock 1 hour slow.
        let sent_at = Some(now - 3600 * S);
        let got = resolve_timestamp(
            TimeInputs {
                timestamp: Some(ts),
                sent_at,
                ..Default::default()
            },
            now,
        );
        assert_eq!(got, t(ts) + (3600 - 150) * S);
        // $ignore_sent_at turns correction off.
        let got = resolve_timestamp(
            TimeInputs {
                timestamp: Some(ts),
                sent_at,
                ignore_sent_at: true,
                ..Default::default()
            },
            now,
        );
        assert_eq!(got, t(ts));
    }

    #[test]
    fn offset_overrides_and_clamps_apply() {
        let now = t("2024-01-02T00:00:00Z");
        let got = resolve_timestamp(
            TimeInputs {
                timestamp: Some("2020-01-01T00:00:00Z"),
                offset_ms: Some(5000),
                ..Default::default()
            },
            now,
        );
        assert_eq!(got, now - 5 * S);
        let got = resolve_timestamp(
            TimeInputs {
                timestamp: Some("2024-01-03T00:00:00Z"),
                ..Default::default()
            },
            now,
        );
        assert_eq!(got, now, "24h in the future is clamped to now");
        let got = resolve_timestamp(
            TimeInputs {
                timestamp: Some("2024-01-02T22:00:00Z"),
                ..Default::default()
            },
            now,
        );
        assert_eq!(got, t("2024-01-02T22:00:00Z"), "22h ahead is kept");
        assert_eq!(resolve_timestamp(TimeInputs::default(), now), now);
        let got = resolve_timestamp(
            TimeInputs {
                timestamp: Some("garbage"),
                ..Default::default()
            },
            now,
        );
        assert_eq!(got, now);
    }

    #[test]
    fn days() {
        let ts = t("2024-03-05T23:59:59Z");
        assert_eq!(day_string(day_of(ts)), "2024-03-05");
        assert_eq!(parse_day("2024-03-05"), Some(day_of(ts)));
        assert_eq!(day_string(day_of(-1)), "1969-12-31");
    }
}
