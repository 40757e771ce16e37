//! Time buckets of an insight: the date range of a request resolved in an IANA timezone, and
//! the list of bucket start instants (hour, day, week, month) that the planner assigns events to.
//!
//! PostHog buckets in the team timezone (`toStartOfDay(toTimeZone(timestamp, tz))`), rounds
//! the lower bound down to the start of its interval, includes the upper bound, and emits every
//! bucket from the first to the last with zero fill (spec §2.3). Buckets here are instants (µs
//! since the epoch, UTC) computed once per request, so the per-row work is a lookup in a short
//! sorted list, and DST days are exactly as long as they are in that zone.

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

use crate::Error;

/// Bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// Clock hours.
    Hour,
    /// Calendar days in the timezone.
    Day,
    /// Calendar weeks starting on [`WeekStart`].
    Week,
    /// Calendar months.
    Month,
}

/// First day of a week.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum WeekStart {
    /// PostHog's default (`toStartOfWeek` mode 0).
    #[default]
    Sunday,
    /// `week_start_day = Monday` (mode 3).
    Monday,
}

/// A timezone by IANA name; empty means UTC.
pub fn parse_timezone(name: &str) -> Result<Tz, Error> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse::<Tz>()
        .map_err(|_| Error::invalid("timezone", format!("unknown IANA timezone {name:?}")))
}

/// The instant of a local wall-clock time; in a DST gap the first instant after it, in a
/// repeated hour the earlier one.
pub fn local_to_instant(tz: Tz, local: NaiveDateTime) -> i64 {
    let mut probe = local;
    for _ in 0..4 {
        if let Some(t) = tz.from_local_datetime(&probe).earliest() {
            return t.timestamp_micros();
        }
        // A DST gap: the wall clock skips this time; move forward to the end of the gap.
        probe += Duration::minutes(30);
    }
    // No zone has a gap longer than two hours; treat the time as UTC rather than fail.
    local.and_utc().timestamp_micros()
}

/// The local wall-clock time of an instant.
pub fn instant_to_local(tz: Tz, micros: i64) -> NaiveDateTime {
    let utc = DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default();
    utc.with_timezone(&tz).naive_local()
}

/// Start of the interval containing the local time `local`, as local time.
fn truncate_local(
    local: NaiveDateTime,
    interval: Interval,
    week_start: WeekStart,
) -> NaiveDateTime {
    let date = local.date();
    match interval {
        Interval::Hour => local
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(local),
        Interval::Day => date.and_time(NaiveTime::MIN),
        Interval::Week => {
            let back = match week_start {
                WeekStart::Sunday => date.weekday().num_days_from_sunday(),
                WeekStart::Monday => date.weekday().num_days_from_monday(),
            };
            (date - Duration::days(i64::from(back))).and_time(NaiveTime::MIN)
        }
        Interval::Month => date.with_day(1).unwrap_or(date).and_time(NaiveTime::MIN),
    }
}

/// Start of the bucket containing `micros`, as an instant.
pub fn bucket_start(tz: Tz, micros: i64, interval: Interval, week_start: WeekStart) -> i64 {
    if interval == Interval::Hour {
        // Clock hours are the same instants in every zone with whole-hour offsets; for
        // half-hour zones truncate in local time.
        let local = instant_to_local(tz, micros);
        let offset = local.and_utc().timestamp_micros() - micros;
        return micros - (micros + offset).rem_euclid(3_600_000_000);
    }
    local_to_instant(
        tz,
        truncate_local(instant_to_local(tz, micros), interval, week_start),
    )
}

/// The start of the bucket after the one starting at `start`.
fn next_start(tz: Tz, start: i64, interval: Interval) -> i64 {
    match interval {
        Interval::Hour => start + 3_600_000_000,
        Interval::Day | Interval::Week | Interval::Month => {
            let local = instant_to_local(tz, start).date();
            let next = match interval {
                Interval::Day => local + Duration::days(1),
                Interval::Week => local + Duration::days(7),
                _ => local
                    .checked_add_months(chrono::Months::new(1))
                    .unwrap_or(local + Duration::days(31)),
            };
            local_to_instant(tz, next.and_time(NaiveTime::MIN))
        }
    }
}

/// The start of the bucket before the one starting at `start`.
fn prev_start(tz: Tz, start: i64, interval: Interval, week_start: WeekStart) -> i64 {
    match interval {
        Interval::Hour => start - 3_600_000_000,
        _ => bucket_start(tz, start - 1, interval, week_start),
    }
}

/// A resolved, inclusive time range `[from, to]` (µs) in a timezone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// The timezone buckets are computed in.
    pub tz: Tz,
    /// First instant included.
    pub from: i64,
    /// Last instant included.
    pub to: i64,
}

/// Which end of a range a date string is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `date_from`: a date means its first instant.
    From,
    /// `date_to`: a date means its last instant.
    To,
}

/// The inclusive range of a request's `date_from` / `date_to` (empty: `-7d` / `now`), checked
/// to be in order.
pub fn parse_range(date_from: &str, date_to: &str, tz: Tz, now: i64) -> Result<(i64, i64), Error> {
    let from_text = if date_from.is_empty() {
        "-7d"
    } else {
        date_from
    };
    let to_text = if date_to.is_empty() { "now" } else { date_to };
    let from = parse_date("date_from", from_text, End::From, tz, now)?;
    let to = parse_date("date_to", to_text, End::To, tz, now)?;
    if from > to {
        return Err(Error::invalid(
            "date_from",
            format!("date_from ({from_text}) is after date_to ({to_text})"),
        ));
    }
    Ok((from, to))
}

/// Parses a `date_from` / `date_to` value in `tz`:
/// `YYYY-MM-DD` (a whole local day), `YYYY-MM-DD[T| ]HH:MM[:SS[.f]]` (local time), RFC 3339
/// with an offset (an absolute instant), or relative `-N{h,d,w,m,y}` from `now` (days, weeks,
/// months and years start at local midnight) and `now`.
pub fn parse_date(
    field: &'static str,
    text: &str,
    end: End,
    tz: Tz,
    now: i64,
) -> Result<i64, Error> {
    let t = parse_unbounded(field, text, end, tz, now)?;
    if !(MIN_INSTANT..MAX_INSTANT).contains(&t) {
        return Err(out_of_range(field, text));
    }
    Ok(t)
}

/// Dates a request may name: years 1000 to 2999. Calendar arithmetic (next day, week start,
/// DST probing) stays far from chrono's limits.
const MIN_YEAR: i32 = 1000;
const MAX_YEAR: i32 = 2999;
/// Two days before 1000-01-01T00:00:00Z, µs (local midnights of those years in any zone).
const MIN_INSTANT: i64 = -30_610_224_000_000_000 - 2 * 86_400_000_000;
/// Two days after 3000-01-01T00:00:00Z, µs.
const MAX_INSTANT: i64 = 32_503_680_000_000_000 + 2 * 86_400_000_000;

fn out_of_range(field: &str, text: &str) -> Error {
    Error::invalid(
        field,
        format!("{text:?} is outside the years {MIN_YEAR} to {MAX_YEAR}"),
    )
}

fn parse_unbounded(
    field: &'static str,
    text: &str,
    end: End,
    tz: Tz,
    now: i64,
) -> Result<i64, Error> {
    let text = text.trim();
    let bad = || {
        Error::invalid(
            field,
            format!(
                "{text:?} is not a date (YYYY-MM-DD), a local date-time (YYYY-MM-DDTHH:MM:SS), \
                 an RFC 3339 time, `now` or a relative date like -7d"
            ),
        )
    };
    if text == "now" {
        return Ok(now);
    }
    if let Some(rel) = text.strip_prefix('-') {
        let unit = rel.chars().last().ok_or_else(bad)?;
        let n: i64 = rel[..rel.len() - unit.len_utf8()]
            .parse()
            .map_err(|_| bad())?;
        if !(0..=100_000).contains(&n) {
            return Err(bad());
        }
        if unit == 'h' {
            let t = now - n * 3_600_000_000;
            return Ok(match end {
                End::From => t,
                End::To => t - t.rem_euclid(3_600_000_000) + 3_599_999_999,
            });
        }
        let today = instant_to_local(tz, now).date();
        let day = match unit {
            'd' => today - Duration::days(n),
            'w' => today - Duration::weeks(n),
            'm' => today
                .checked_sub_months(chrono::Months::new(n as u32))
                .ok_or_else(bad)?,
            'y' => today
                .checked_sub_months(chrono::Months::new(12 * n as u32))
                .ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if !(MIN_YEAR..=MAX_YEAR).contains(&day.year()) {
            return Err(out_of_range(field, text));
        }
        return Ok(day_bound(tz, day, end));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_micros());
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if !(MIN_YEAR..=MAX_YEAR).contains(&day.year()) {
            return Err(out_of_range(field, text));
        }
        return Ok(day_bound(tz, day, end));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(local) = NaiveDateTime::parse_from_str(text, fmt) {
            if !(MIN_YEAR..=MAX_YEAR).contains(&local.year()) {
                return Err(out_of_range(field, text));
            }
            return Ok(local_to_instant(tz, local));
        }
    }
    Err(bad())
}

fn day_bound(tz: Tz, day: NaiveDate, end: End) -> i64 {
    match end {
        End::From => local_to_instant(tz, day.and_time(NaiveTime::MIN)),
        End::To => local_to_instant(tz, (day + Duration::days(1)).and_time(NaiveTime::MIN)) - 1,
    }
}

/// The most buckets one request may produce.
pub const MAX_BUCKETS: usize = 50_000;

/// The buckets of a range: their start instants, plus `lookback` extra buckets before the
/// first one (for trailing-window math), and the instant after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Buckets {
    /// Start instants of the lookback buckets and then of the visible buckets, ascending,
    /// followed by the end (exclusive) of the last visible bucket.
    pub bounds: Vec<i64>,
    /// How many of the first `bounds` are lookback buckets.
    pub lookback: usize,
    /// The bucket width.
    pub interval: Interval,
}

impl Buckets {
    /// Every bucket from the one containing `range.from` to the one containing `range.to`,
    /// with `lookback` more before them.
    pub fn new(
        range: TimeRange,
        interval: Interval,
        week_start: WeekStart,
        lookback: usize,
    ) -> Result<Self, Error> {
        let first = bucket_start(range.tz, range.from, interval, week_start);
        let mut before = Vec::with_capacity(lookback);
        let mut t = first;
        for _ in 0..lookback {
            t = prev_start(range.tz, t, interval, week_start);
            before.push(t);
        }
        before.reverse();
        let mut bounds = before;
        let mut t = first;
        while t <= range.to {
            bounds.push(t);
            if bounds.len() > MAX_BUCKETS + lookback {
                return Err(Error::invalid(
                    "interval",
                    format!("the date range has more than {MAX_BUCKETS} buckets of this interval"),
                ));
            }
            t = next_start(range.tz, t, interval);
        }
        bounds.push(t);
        Ok(Self {
            bounds,
            lookback,
            interval,
        })
    }

    /// Visible buckets.
    pub fn len(&self) -> usize {
        self.bounds.len() - 1 - self.lookback
    }

    /// Whether there are no visible buckets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start instants of the visible buckets.
    pub fn starts(&self) -> &[i64] {
        &self.bounds[self.lookback..self.bounds.len() - 1]
    }

    /// First instant of the first (lookback) bucket.
    pub fn scan_from(&self) -> i64 {
        self.bounds[0]
    }

    /// Index of the bucket holding `micros` counted from the first lookback bucket, or
    /// `None` outside all buckets.
    pub fn index_of(&self, micros: i64) -> Option<usize> {
        let i = self.bounds.partition_point(|b| *b <= micros);
        (i > 0 && i < self.bounds.len()).then(|| i - 1)
    }

    /// Labels of the visible buckets in the timezone: `YYYY-MM-DD` for days, weeks and months,
    /// `YYYY-MM-DDTHH:MM:SS±HH:MM` for hours (unambiguous on the repeated hour of a DST change).
    pub fn labels(&self, tz: Tz) -> Vec<String> {
        self.starts()
            .iter()
            .map(|t| {
                let utc = DateTime::<Utc>::from_timestamp_micros(*t).unwrap_or_default();
                let local = utc.with_timezone(&tz);
                match self.interval {
                    Interval::Hour => local.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                    _ => local.format("%Y-%m-%d").to_string(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .expect("rfc3339")
            .timestamp_micros()
    }

    fn range(tz: &str, from: &str, to: &str) -> TimeRange {
        let tz = parse_timezone(tz).expect("tz");
        TimeRange {
            tz,
            from: parse_date("date_from", from, End::From, tz, 0).expect("from"),
            to: parse_date("date_to", to, End::To, tz, 0).expect("to"),
        }
    }

    #[test]
    fn days_in_a_dst_zone_are_23_and_25_hours_long() {
        let r = range("Europe/Berlin", "2024-03-30", "2024-04-01");
        let b = Buckets::new(r, Interval::Day, WeekStart::Sunday, 0).expect("buckets");
        assert_eq!(b.labels(r.tz), ["2024-03-30", "2024-03-31", "2024-04-01"]);
        assert_eq!(b.bounds[0], at("2024-03-29T23:00:00Z"));
        assert_eq!(b.bounds[2] - b.bounds[1], 23 * 3_600_000_000);
        assert_eq!(b.bounds[2], at("2024-03-31T22:00:00Z"));
    }

    #[test]
    fn weeks_start_on_sunday_or_monday_and_the_first_week_is_whole() {
        // 2024-01-03 is a Wednesday.
        let r = range("UTC", "2024-01-03", "2024-01-16");
        let sun = Buckets::new(r, Interval::Week, WeekStart::Sunday, 0).expect("sun");
        assert_eq!(sun.labels(r.tz), ["2023-12-31", "2024-01-07", "2024-01-14"]);
        let mon = Buckets::new(r, Interval::Week, WeekStart::Monday, 0).expect("mon");
        assert_eq!(mon.labels(r.tz), ["2024-01-01", "2024-01-08", "2024-01-15"]);
    }

    #[test]
    fn hours_across_the_autumn_change_repeat_the_local_hour_with_its_offset() {
        let r = range("Europe/Berlin", "2024-10-27T01:00", "2024-10-27T03:30");
        let b = Buckets::new(r, Interval::Hour, WeekStart::Sunday, 0).expect("hours");
        assert_eq!(
            b.labels(r.tz),
            [
                "2024-10-27T01:00:00+02:00",
                "2024-10-27T02:00:00+02:00",
                "2024-10-27T02:00:00+01:00",
                "2024-10-27T03:00:00+01:00"
            ]
        );
    }

    #[test]
    fn months_and_lookback() {
        let r = range("America/New_York", "2024-01-15", "2024-03-02");
        let b = Buckets::new(r, Interval::Month, WeekStart::Sunday, 1).expect("months");
        assert_eq!(b.labels(r.tz), ["2024-01-01", "2024-02-01", "2024-03-01"]);
        assert_eq!(b.scan_from(), at("2023-12-01T05:00:00Z"));
        assert_eq!(b.index_of(at("2023-12-31T12:00:00Z")), Some(0));
        assert_eq!(b.index_of(at("2024-03-31T12:00:00Z")), Some(3));
        assert_eq!(b.index_of(at("2024-04-01T05:00:00Z")), None);
    }

    #[test]
    fn dates_outside_years_1000_to_2999_are_refused() {
        let tz = parse_timezone("Europe/Berlin").expect("tz");
        for text in [
            "+262142-12-31",
            "262142-12-31",
            "-262143-01-01",
            "0001-01-01",
            "3000-01-01",
        ] {
            for end in [End::From, End::To] {
                assert!(parse_date("date_to", text, end, tz, 0).is_err(), "{text}");
            }
        }
        assert!(parse_date("date_to", "2999-12-31", End::To, tz, 0).is_ok());
        assert!(parse_date("date_from", "1000-01-01", End::From, tz, 0).is_ok());
    }

    #[test]
    fn date_parsing() {
        let tz = parse_timezone("Asia/Kolkata").expect("tz");
        assert_eq!(
            parse_date("date_to", "2024-01-01", End::To, tz, 0).expect("to"),
            at("2024-01-01T18:29:59.999999Z")
        );
        assert_eq!(
            parse_date("date_from", "2024-01-01T10:00:00Z", End::From, tz, 0).expect("abs"),
            at("2024-01-01T10:00:00Z")
        );
        let now = at("2024-05-10T12:34:00Z");
        assert_eq!(
            parse_date("date_from", "-7d", End::From, Tz::UTC, now).expect("rel"),
            at("2024-05-03T00:00:00Z")
        );
        assert!(parse_date("date_from", "yesterday-ish", End::From, tz, 0).is_err());
        for bad in ["-7é", "-", "-d", "-99999999d", "-7x"] {
            assert!(
                parse_date("date_from", bad, End::From, tz, now).is_err(),
                "{bad}"
            );
        }
        assert!(parse_timezone("Mars/Olympus").is_err());
        // Half-hour zone: hours start at :30 UTC.
        assert_eq!(
            bucket_start(
                tz,
                at("2024-01-01T10:10:00Z"),
                Interval::Hour,
                WeekStart::Sunday
            ),
            at("2024-01-01T09:30:00Z")
        );
    }
}
