//! One property filter, prepared once and matched many times (protocol spec §3.6 operators).
//!
//! Coercions follow PostHog's flag service (`property_matching.rs`), which `/flags` answers
//! with, and agree with the SDKs' local evaluation except where noted:
//!
//! * A property is compared as *text*: a string as itself, anything else as its compact JSON
//!   (`1` → `"1"`, `true` → `"true"`, `null` → `"null"`).
//! * `exact`/`is_not`: case-insensitive text equality; a list value means "any of". When the
//!   value is a boolean or `"true"`/`"false"` (or a list of only those), both sides compare
//!   as booleans: `"True"`, `"true"` and `true` are one value.
//! * `icontains`, `starts_with`, `ends_with` and their negations: ASCII case-insensitive.
//! * `gt`/`gte`/`lt`/`lte`: both sides as numbers (a JSON number, or text that parses as one);
//!   a property that is not a number does not match. (posthog-python compares as text when
//!   the property is a string; the server, and herd, do not.)
//! * Dates: a property that is a number, or text that parses as one, is Unix seconds; text is
//!   RFC 3339, `YYYY-MM-DD[ HH:MM[:SS[.f]]]` (UTC) or relative (`-7d`). The filter value is a
//!   date or relative date (`-1h`, `-7d`, `-2w`, `-1m`, `-1y`) measured back from `now`.
//! * Semver: a leading `v` is dropped, missing minor/patch are 0, leading zeros stripped.
//! * Regex: Rust's `regex` (RE2-like: no look-around, no backreferences); searched anywhere
//!   in the text.
//!
//! A *missing* property (key absent) is the caller's to decide: with partial properties it is
//! [`Match::Missing`], with complete ones positive operators are false and negative ones
//! (`is_not`, `not_icontains`, `not_regex`, `not_starts_with`, `not_ends_with`, `is_not_set`)
//! true.

use chrono::{DateTime, Months, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use regex::Regex;
use semver::{Version, VersionReq};
use serde_json::Value;

use crate::definition::{Operator, Problem};

/// The outcome of one filter against one actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    Yes,
    No,
    /// The property is absent and the properties are only the caller's partial set.
    Missing,
}

impl From<bool> for Match {
    fn from(b: bool) -> Self {
        if b { Self::Yes } else { Self::No }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
    Neq,
}

impl Cmp {
    fn holds<T: PartialOrd>(self, lhs: &T, rhs: &T) -> bool {
        match self {
            Self::Gt => lhs > rhs,
            Self::Gte => lhs >= rhs,
            Self::Lt => lhs < rhs,
            Self::Lte => lhs <= rhs,
            Self::Eq => lhs == rhs,
            Self::Neq => lhs != rhs,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextOp {
    Contains,
    StartsWith,
    EndsWith,
}

/// What `exact`/`is_not` compare with.
#[derive(Debug, Clone, PartialEq)]
enum ExactTarget {
    /// The filter value is boolean-like: compare truthiness.
    Truthy(bool),
    /// Lower-cased texts; a match is equality with any.
    Any(Vec<String>),
}

/// A relative or absolute date of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DateSpec {
    Absolute(DateTime<Utc>),
    Relative { amount: u32, unit: char },
}

impl DateSpec {
    fn resolve(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Absolute(d) => Some(d),
            Self::Relative { amount, unit } => relative_to(now, amount, unit),
        }
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    IsSet,
    IsNotSet,
    Exact {
        negate: bool,
        target: ExactTarget,
    },
    Text {
        negate: bool,
        op: TextOp,
        needle: String,
    },
    Regex {
        negate: bool,
        regex: Regex,
    },
    Number {
        cmp: Cmp,
        rhs: f64,
    },
    Date {
        cmp: Cmp,
        rhs: DateSpec,
    },
    Semver {
        cmp: Cmp,
        rhs: Version,
    },
    SemverReq(VersionReq),
}

/// A filter's operator and value, ready to match.
#[derive(Debug, Clone)]
pub(crate) struct PreparedMatch {
    matcher: Matcher,
}

impl PreparedMatch {
    /// Prepares `operator` with `value`; the problem says why it can't be.
    pub(crate) fn new(operator: &Operator, value: &Value) -> Result<Self, Problem> {
        let needs_value = !matches!(operator, Operator::IsSet | Operator::IsNotSet);
        if needs_value && value.is_null() {
            return Err(Problem::MissingValue(operator.to_string()));
        }
        let op_name = || operator.to_string();
        let matcher = match operator {
            Operator::IsSet => Matcher::IsSet,
            Operator::IsNotSet => Matcher::IsNotSet,
            Operator::Exact | Operator::IsNot => Matcher::Exact {
                negate: *operator == Operator::IsNot,
                target: exact_target(value),
            },
            Operator::IContains | Operator::NotIContains => {
                text(*operator == Operator::NotIContains, TextOp::Contains, value)
            }
            Operator::StartsWith | Operator::NotStartsWith => text(
                *operator == Operator::NotStartsWith,
                TextOp::StartsWith,
                value,
            ),
            Operator::EndsWith | Operator::NotEndsWith => {
                text(*operator == Operator::NotEndsWith, TextOp::EndsWith, value)
            }
            Operator::Regex | Operator::NotRegex => Matcher::Regex {
                negate: *operator == Operator::NotRegex,
                regex: compile_regex(&as_text(value))?,
            },
            Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte => Matcher::Number {
                cmp: match operator {
                    Operator::Gt => Cmp::Gt,
                    Operator::Gte => Cmp::Gte,
                    Operator::Lt => Cmp::Lt,
                    _ => Cmp::Lte,
                },
                rhs: as_number(value).ok_or_else(|| Problem::NotANumber {
                    operator: op_name(),
                    value: value.to_string(),
                })?,
            },
            Operator::IsDateBefore | Operator::IsDateAfter | Operator::IsDateExact => {
                Matcher::Date {
                    cmp: match operator {
                        Operator::IsDateBefore => Cmp::Lt,
                        Operator::IsDateAfter => Cmp::Gt,
                        _ => Cmp::Eq,
                    },
                    rhs: value.as_str().and_then(parse_date_spec).ok_or_else(|| {
                        Problem::NotADate {
                            operator: op_name(),
                            value: value.to_string(),
                        }
                    })?,
                }
            }
            Operator::SemverEq
            | Operator::SemverNeq
            | Operator::SemverGt
            | Operator::SemverGte
            | Operator::SemverLt
            | Operator::SemverLte => Matcher::Semver {
                cmp: match operator {
                    Operator::SemverEq => Cmp::Eq,
                    Operator::SemverNeq => Cmp::Neq,
                    Operator::SemverGt => Cmp::Gt,
                    Operator::SemverGte => Cmp::Gte,
                    Operator::SemverLt => Cmp::Lt,
                    _ => Cmp::Lte,
                },
                rhs: parse_version(&as_text(value)).ok_or_else(|| Problem::NotASemver {
                    operator: op_name(),
                    value: value.to_string(),
                })?,
            },
            Operator::SemverTilde | Operator::SemverCaret | Operator::SemverWildcard => {
                Matcher::SemverReq(version_requirement(operator, &as_text(value)).ok_or_else(
                    || Problem::NotASemver {
                        operator: op_name(),
                        value: value.to_string(),
                    },
                )?)
            }
            Operator::Other(name) => return Err(Problem::UnknownOperator(name.clone())),
        };
        Ok(Self { matcher })
    }

    /// Matches a property value (`None`: the key is absent). `complete` says whether the
    /// properties are all there are (absent means unset) or only what the caller sent.
    pub(crate) fn matches(
        &self,
        property: Option<&Value>,
        complete: bool,
        now: DateTime<Utc>,
    ) -> Match {
        let Some(property) = property else {
            if !complete {
                return Match::Missing;
            }
            return match &self.matcher {
                Matcher::IsNotSet => Match::Yes,
                Matcher::Exact { negate, .. }
                | Matcher::Text { negate, .. }
                | Matcher::Regex { negate, .. } => (*negate).into(),
                _ => Match::No,
            };
        };
        let hit = match &self.matcher {
            Matcher::IsSet => true,
            Matcher::IsNotSet => false,
            Matcher::Exact { negate, target } => {
                let equal = match target {
                    ExactTarget::Truthy(t) => is_truthy(property) == *t,
                    ExactTarget::Any(list) => {
                        let text = as_text(property).to_lowercase();
                        list.contains(&text)
                    }
                };
                equal != *negate
            }
            Matcher::Text { negate, op, needle } => {
                let hay = as_text(property).to_ascii_lowercase();
                let found = match op {
                    TextOp::Contains => hay.contains(needle.as_str()),
                    TextOp::StartsWith => hay.starts_with(needle.as_str()),
                    TextOp::EndsWith => hay.ends_with(needle.as_str()),
                };
                found != *negate
            }
            Matcher::Regex { negate, regex } => regex.is_match(&as_text(property)) != *negate,
            Matcher::Number { cmp, rhs } => {
                as_number(property).is_some_and(|lhs| cmp.holds(&lhs, rhs))
            }
            Matcher::Date { cmp, rhs } => match (property_date(property, now), rhs.resolve(now)) {
                (Some(lhs), Some(rhs)) => cmp.holds(&lhs, &rhs),
                _ => false,
            },
            Matcher::Semver { cmp, rhs } => {
                parse_version(&as_text(property)).is_some_and(|lhs| cmp.holds(&lhs, rhs))
            }
            Matcher::SemverReq(req) => {
                parse_version(&as_text(property)).is_some_and(|v| req.matches(&v))
            }
        };
        hit.into()
    }
}

fn text(negate: bool, op: TextOp, value: &Value) -> Matcher {
    Matcher::Text {
        negate,
        op,
        needle: as_text(value).to_ascii_lowercase(),
    }
}

/// A value as PostHog compares it as text: strings bare, everything else as compact JSON.
pub(crate) fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        other => as_text(other).parse::<f64>().ok(),
    }
}

fn is_truthy_or_falsy(value: &Value) -> bool {
    match value {
        Value::Bool(_) => true,
        Value::String(s) => {
            let s = s.to_lowercase();
            s == "true" || s == "false"
        }
        Value::Array(items) => items.iter().all(is_truthy_or_falsy),
        _ => false,
    }
}

fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => s.to_lowercase() == "true",
        Value::Array(items) => items.iter().all(is_truthy),
        _ => false,
    }
}

fn exact_target(value: &Value) -> ExactTarget {
    if is_truthy_or_falsy(value) {
        return ExactTarget::Truthy(is_truthy(value));
    }
    match value {
        Value::Array(items) => {
            ExactTarget::Any(items.iter().map(|v| as_text(v).to_lowercase()).collect())
        }
        single => ExactTarget::Any(vec![as_text(single).to_lowercase()]),
    }
}

/// Largest compiled program a flag regex may take (1 MiB): generous for real patterns, and a
/// bound on what one definition can cost every evaluation.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn compile_regex(pattern: &str) -> Result<Regex, Problem> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| Problem::BadRegex {
            pattern: pattern.to_owned(),
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
}

/// `-7d`, `7d`, `-1h`, `-2w`, `-1m`, `-1y` (number below 10 000, as PostHog).
fn parse_relative(s: &str) -> Option<DateSpec> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let unit = body.chars().last()?;
    if !matches!(unit, 'h' | 'd' | 'w' | 'm' | 'y') {
        return None;
    }
    let digits = &body[..body.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u32 = digits.parse().ok()?;
    (amount < 10_000).then_some(DateSpec::Relative { amount, unit })
}

/// `now` moved back by a relative date. Months and years are calendar months (the day is
/// clamped to the month's last, like dateutil's `relativedelta`).
fn relative_to(now: DateTime<Utc>, amount: u32, unit: char) -> Option<DateTime<Utc>> {
    let amount64 = i64::from(amount);
    match unit {
        'h' => now.checked_sub_signed(TimeDelta::try_hours(amount64)?),
        'd' => now.checked_sub_signed(TimeDelta::try_days(amount64)?),
        'w' => now.checked_sub_signed(TimeDelta::try_weeks(amount64)?),
        'm' => now.checked_sub_months(Months::new(amount)),
        'y' => now.checked_sub_months(Months::new(amount.checked_mul(12)?)),
        _ => None,
    }
}

const NAIVE_FORMATS: [&str; 4] = [
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
];

const OFFSET_FORMATS: [&str; 2] = ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"];

/// An absolute date: RFC 3339 / with offset, or naive (read as UTC).
fn parse_absolute(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    for fmt in OFFSET_FORMATS {
        if let Ok(d) = DateTime::parse_from_str(s, fmt) {
            return Some(d.with_timezone(&Utc));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc());
    }
    NAIVE_FORMATS
        .iter()
        .find_map(|fmt| NaiveDateTime::parse_from_str(s, fmt).ok())
        .map(|d| d.and_utc())
}

pub(crate) fn parse_date_spec(s: &str) -> Option<DateSpec> {
    parse_relative(s).or_else(|| parse_absolute(s).map(DateSpec::Absolute))
}

fn from_unix_seconds(seconds: f64) -> Option<DateTime<Utc>> {
    if !seconds.is_finite() {
        return None;
    }
    let whole = seconds.floor();
    let nanos = ((seconds - whole) * 1e9).round().min(999_999_999.0) as u32;
    DateTime::from_timestamp(whole as i64, nanos)
}

/// A property value as a date (see the module doc).
fn property_date(value: &Value, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match value {
        Value::Number(n) => from_unix_seconds(n.as_f64()?),
        Value::String(s) => match s.parse::<f64>() {
            Ok(seconds) => from_unix_seconds(seconds),
            Err(_) => parse_date_spec(s)?.resolve(now),
        },
        _ => None,
    }
}

fn strip_leading_zeros(part: &str) -> &str {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return part;
    }
    let trimmed = part.trim_start_matches('0');
    if trimmed.is_empty() { "0" } else { trimmed }
}

/// Drops a leading `v` and surrounding blanks.
fn normalize_version(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('v').unwrap_or(s).trim()
}

/// `3.08` → `3.8.0`, `2` → `2.0.0`; a pre-release or build suffix is kept as written.
fn canonical_version(s: &str) -> String {
    let (core, suffix) = match s.find(['-', '+']) {
        Some(at) => s.split_at(at),
        None => (s, ""),
    };
    let mut parts: Vec<&str> = core.split('.').map(strip_leading_zeros).collect();
    while parts.len() < 3 {
        parts.push("0");
    }
    format!("{}{}", parts.join("."), suffix)
}

fn parse_version(s: &str) -> Option<Version> {
    Version::parse(&canonical_version(normalize_version(s))).ok()
}

fn version_requirement(operator: &Operator, value: &str) -> Option<VersionReq> {
    let v = normalize_version(value);
    let text = match operator {
        Operator::SemverTilde => format!("~{}", canonical_version(v)),
        Operator::SemverCaret => format!("^{}", canonical_version(v)),
        _ => v
            .split('.')
            .map(strip_leading_zeros)
            .collect::<Vec<_>>()
            .join("."),
    };
    VersionReq::parse(&text).ok()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 31, 12, 0, 0).unwrap()
    }

    /// Matches `op value` against `property` with partial properties.
    fn m(op: &str, value: Value, property: Value) -> bool {
        let p = PreparedMatch::new(&Operator::from(op.to_owned()), &value).unwrap();
        match p.matches(Some(&property), false, now()) {
            Match::Yes => true,
            Match::No => false,
            Match::Missing => panic!("present property reported missing"),
        }
    }

    fn missing(op: &str, value: Value, complete: bool) -> Match {
        PreparedMatch::new(&Operator::from(op.to_owned()), &value)
            .unwrap()
            .matches(None, complete, now())
    }

    fn problem(op: &str, value: Value) -> String {
        PreparedMatch::new(&Operator::from(op.to_owned()), &value)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn exact_is_case_insensitive_text() {
        assert!(m("exact", json!("Pro"), json!("pro")));
        assert!(m("exact", json!("pro"), json!("PRO")));
        assert!(!m("exact", json!("pro"), json!("free")));
        assert!(!m("exact", json!("pro"), json!("")));
        assert!(!m("exact", json!("pro"), json!(null)));
        assert!(m("exact", json!("null"), json!(null)));
    }

    #[test]
    fn exact_compares_numbers_and_strings_as_text() {
        assert!(m("exact", json!(5), json!("5")));
        assert!(m("exact", json!("5"), json!(5)));
        assert!(!m("exact", json!(5), json!("5.0")));
        assert!(m("exact", json!(1.5), json!("1.5")));
    }

    #[test]
    fn exact_list_is_membership() {
        let list = json!(["US", "CA", "Uk"]);
        assert!(m("exact", list.clone(), json!("us")));
        assert!(m("exact", list.clone(), json!("UK")));
        assert!(!m("exact", list.clone(), json!("de")));
        assert!(m("exact", json!([1, 2]), json!("2")));
        assert!(m("exact", json!(["1", "2"]), json!(2)));
    }

    #[test]
    fn exact_booleans_compare_as_booleans() {
        assert!(m("exact", json!(true), json!("True")));
        assert!(m("exact", json!("true"), json!(true)));
        assert!(m("exact", json!(["true"]), json!(true)));
        assert!(m("exact", json!(false), json!("false")));
        assert!(m("exact", json!("false"), json!(false)));
        assert!(!m("exact", json!("true"), json!(false)));
        // Non-boolean properties are falsy.
        assert!(m("exact", json!("false"), json!("no")));
        assert!(!m("exact", json!("true"), json!(1)));
    }

    #[test]
    fn is_not_negates_exact() {
        assert!(m("is_not", json!("value"), json!("value2")));
        assert!(m("is_not", json!("value"), json!("")));
        assert!(m("is_not", json!("value"), json!(null)));
        assert!(!m("is_not", json!("Value"), json!("value")));
        let list = json!(["value1", "value2"]);
        assert!(m("is_not", list.clone(), json!("value3")));
        assert!(!m("is_not", list, json!("VALUE2")));
    }

    #[test]
    fn contains_family_is_ascii_case_insensitive() {
        assert!(m("icontains", json!("valUe"), json!("343tfvalue5")));
        assert!(!m("icontains", json!("valUe"), json!("Alakazam")));
        assert!(!m("icontains", json!("valUe"), json!(123)));
        assert!(m("icontains", json!("3"), json!(323)));
        assert!(m("not_icontains", json!("x"), json!("abc")));
        assert!(!m("not_icontains", json!("B"), json!("abc")));
        assert!(m("starts_with", json!("Val"), json!("value")));
        assert!(!m("starts_with", json!("al"), json!("value")));
        assert!(m("not_starts_with", json!("al"), json!("value")));
        assert!(m("ends_with", json!("UE"), json!("value")));
        assert!(m("not_ends_with", json!("x"), json!("value")));
        assert!(!m("not_ends_with", json!("lue"), json!("value")));
    }

    #[test]
    fn regex_searches_anywhere_in_the_text() {
        assert!(m("regex", json!(r"\.com$"), json!("a@b.com")));
        assert!(!m("regex", json!(r"\.com$"), json!("a@b.org")));
        assert!(m("regex", json!("^4"), json!(42)));
        assert!(m("regex", json!("ro"), json!("pro")));
        assert!(m("not_regex", json!("^x"), json!("pro")));
        assert!(!m("not_regex", json!("p"), json!("pro")));
        assert!(m("regex", json!("(?i)PRO"), json!("pro")));
    }

    #[test]
    fn regex_errors_are_validation_problems() {
        assert!(problem("regex", json!("(")).starts_with("invalid regex \"(\":"));
        // Look-around works in PostHog (fancy-regex, JS, Python re) but not in herd.
        let msg = problem("regex", json!("foo(?=bar)"));
        assert!(msg.contains("look-around"), "{msg}");
        assert!(!msg.contains('\n'));
        let msg = problem("not_regex", json!(r"(a)\1"));
        assert!(msg.starts_with("invalid regex"), "{msg}");
    }

    #[test]
    fn numeric_comparisons_parse_both_sides() {
        assert!(m("gt", json!(5), json!(6)));
        assert!(m("gt", json!("5"), json!("6")));
        assert!(!m("gt", json!(5), json!(5)));
        assert!(m("gte", json!(5), json!(5)));
        assert!(m("lt", json!("10"), json!("9")));
        assert!(m("lte", json!(1.5), json!("1.5")));
        // Numeric, not lexicographic: "10" > "9".
        assert!(m("gt", json!("9"), json!("10")));
        // A property that is not a number never matches.
        assert!(!m("gt", json!(1), json!("abc")));
        assert!(!m("lt", json!(1), json!(null)));
        assert!(!m("lt", json!(1), json!(true)));
        assert_eq!(
            problem("gt", json!("ten")),
            "operator gt needs a number, got \"ten\""
        );
    }

    #[test]
    fn dates_absolute() {
        let before = |v: Value, p: Value| m("is_date_before", v, p);
        let after = |v: Value, p: Value| m("is_date_after", v, p);
        assert!(before(json!("2024-01-02"), json!("2024-01-01")));
        assert!(!before(json!("2024-01-01"), json!("2024-01-01")));
        assert!(after(json!("2024-01-01"), json!("2024-01-01T00:00:01Z")));
        assert!(before(
            json!("2024-01-01"),
            json!("2023-12-31T23:59:59+00:00")
        ));
        // An offset is honoured: 00:30+01:00 is 23:30 the day before in UTC.
        assert!(before(
            json!("2024-01-01"),
            json!("2024-01-01T00:30:00+01:00")
        ));
        assert!(after(
            json!("2024-01-01 10:00"),
            json!("2024-01-01 10:00:30")
        ));
        // Numbers, and numeric text, are Unix seconds.
        assert!(after(json!("2023-01-01"), json!(1_704_067_200)));
        assert!(before(json!("2024-01-02"), json!("1704067200.5")));
        assert!(m(
            "is_date_exact",
            json!("2024-01-01"),
            json!(1_704_067_200)
        ));
        assert!(m(
            "is_date_exact",
            json!("2024-01-01T00:00:00Z"),
            json!("2024-01-01")
        ));
        assert!(!m(
            "is_date_exact",
            json!("2024-01-01"),
            json!("2024-01-02")
        ));
        // Unparseable properties don't match.
        assert!(!before(json!("2024-01-01"), json!("yesterday")));
        assert!(!after(json!("2024-01-01"), json!(true)));
    }

    #[test]
    fn dates_relative_to_now() {
        // now = 2024-03-31 12:00 UTC
        assert!(m("is_date_after", json!("-7d"), json!("2024-03-25")));
        assert!(!m("is_date_after", json!("-7d"), json!("2024-03-24")));
        assert!(m(
            "is_date_before",
            json!("-1h"),
            json!("2024-03-31T10:59:00Z")
        ));
        assert!(m("is_date_after", json!("-2w"), json!("2024-03-18")));
        // One calendar month back from March 31 is February 29 (clamped).
        assert!(m(
            "is_date_after",
            json!("-1m"),
            json!("2024-02-29T12:00:01Z")
        ));
        assert!(!m(
            "is_date_after",
            json!("-1m"),
            json!("2024-02-29T11:59:59Z")
        ));
        assert!(m("is_date_before", json!("-1y"), json!("2023-03-30")));
        assert!(m("is_date_after", json!("1y"), json!("2023-04-01")));
        assert_eq!(
            problem("is_date_before", json!("-7x")),
            "operator is_date_before needs a date (ISO 8601 like \"2024-01-31\" or relative \
             like \"-7d\"), got \"-7x\""
        );
        assert!(PreparedMatch::new(&Operator::IsDateAfter, &json!("-10000d")).is_err());
        assert!(PreparedMatch::new(&Operator::IsDateAfter, &json!(20240101)).is_err());
    }

    #[test]
    fn semver_comparisons() {
        assert!(m("semver_eq", json!("1.2.3"), json!("v1.2.3")));
        assert!(m("semver_eq", json!("3.8"), json!("3.08.0")));
        assert!(m("semver_neq", json!("1.2.3"), json!("1.2.4")));
        assert!(m("semver_gt", json!("1.2.3"), json!("1.10.0")));
        assert!(!m("semver_gt", json!("1.2.3"), json!("1.2.3")));
        assert!(m("semver_gte", json!("1.2.3"), json!("1.2.3")));
        assert!(m("semver_lt", json!("2"), json!("1.99.99")));
        assert!(m("semver_lte", json!("2.0.0"), json!("2")));
        assert!(m("semver_lt", json!("1.0.0"), json!("1.0.0-beta.1")));
        assert!(!m("semver_gt", json!("1.0.0"), json!("not-a-version")));
        assert_eq!(
            problem("semver_gt", json!("abc")),
            "operator semver_gt needs a semantic version, got \"abc\""
        );
    }

    #[test]
    fn semver_ranges() {
        assert!(m("semver_tilde", json!("1.2.3"), json!("1.2.9")));
        assert!(!m("semver_tilde", json!("1.2.3"), json!("1.3.0")));
        assert!(m("semver_caret", json!("1.2.3"), json!("1.9.0")));
        assert!(!m("semver_caret", json!("1.2.3"), json!("2.0.0")));
        assert!(!m("semver_caret", json!("0.2.3"), json!("0.3.0")));
        assert!(m("semver_wildcard", json!("1.2.*"), json!("1.2.7")));
        assert!(!m("semver_wildcard", json!("1.2.*"), json!("1.3.0")));
        assert!(m("semver_wildcard", json!("1.*"), json!("1.9.9")));
        assert!(m("semver_wildcard", json!("*"), json!("7.0.0")));
        assert!(m("semver_wildcard", json!("3.08.*"), json!("3.8.1")));
        assert!(PreparedMatch::new(&Operator::SemverWildcard, &json!("1.*.3")).is_err());
    }

    #[test]
    fn set_operators() {
        assert!(m("is_set", Value::Null, json!(null)));
        assert!(m("is_set", Value::Null, json!("x")));
        assert!(!m("is_not_set", Value::Null, json!(null)));
        assert_eq!(missing("is_set", Value::Null, true), Match::No);
        assert_eq!(missing("is_not_set", Value::Null, true), Match::Yes);
    }

    #[test]
    fn missing_property_partial_is_missing_for_every_operator() {
        for op in [
            "exact",
            "is_not",
            "icontains",
            "not_regex",
            "gt",
            "is_set",
            "is_not_set",
        ] {
            assert_eq!(missing(op, json!("1"), false), Match::Missing, "{op}");
        }
    }

    #[test]
    fn missing_property_complete_negatives_match() {
        assert_eq!(missing("is_not", json!("a"), true), Match::Yes);
        assert_eq!(missing("not_icontains", json!("a"), true), Match::Yes);
        assert_eq!(missing("not_regex", json!("a"), true), Match::Yes);
        assert_eq!(missing("not_starts_with", json!("a"), true), Match::Yes);
        assert_eq!(missing("not_ends_with", json!("a"), true), Match::Yes);
        assert_eq!(missing("exact", json!("a"), true), Match::No);
        assert_eq!(missing("icontains", json!("a"), true), Match::No);
        assert_eq!(missing("gt", json!(1), true), Match::No);
        assert_eq!(missing("semver_neq", json!("1.0.0"), true), Match::No);
        assert_eq!(missing("is_date_before", json!("-1d"), true), Match::No);
    }

    #[test]
    fn operators_needing_a_value_reject_null_and_unknown_operators_are_named() {
        assert_eq!(
            problem("exact", Value::Null),
            "operator exact needs a value"
        );
        assert_eq!(problem("like", json!("a")), "unknown operator \"like\"");
        assert!(PreparedMatch::new(&Operator::IsSet, &Value::Null).is_ok());
    }

    #[test]
    fn relative_parsing_edges() {
        assert!(parse_relative("000h").is_some());
        assert!(parse_relative("1000h").is_some());
        assert!(parse_relative("1").is_none());
        assert!(parse_relative("1.2y").is_none());
        assert!(parse_relative("-d").is_none());
        assert!(parse_relative("1s").is_none());
        assert!(parse_relative("bazinga").is_none());
        assert!(parse_relative("-9999y").is_some());
        // Far back, still a date.
        assert!(relative_to(now(), 9999, 'y').is_some());
    }
}
