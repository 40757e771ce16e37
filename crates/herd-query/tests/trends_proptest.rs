//! Property test: random events, a random timezone (DST and half-/quarter-hour offsets
//! included), interval and week start → total, unique users and unique groups per bucket
//! equal a brute-force count written plainly here with chrono-tz; and unique groups and users
//! broken down by the company's current `plan` equal a brute-force count per plan; and a
//! breakdown by an event property with a random limit, "other" shown or hidden, in every
//! display (weekly active companies on daily charts too) equals a brute-force ranking.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, Duration, NaiveDate, TimeZone, Timelike};
use chrono_tz::Tz;
use common::Fixture;
use herd_core::Event;
use herd_query::{Breakdown, Display, Interval, Math, MathSpec, Series, TrendsQuery, WeekStart};
use proptest::prelude::*;

const ZONES: [&str; 7] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "America/Sao_Paulo",
    "Pacific/Auckland",
];

/// Windows around DST changes (EU/US spring, EU/US autumn, NZ April).
const STARTS: [(i32, u32, u32); 4] = [(2024, 3, 8), (2024, 3, 29), (2024, 10, 25), (2024, 4, 4)];

#[derive(Debug, Clone)]
struct Case {
    zone: usize,
    start: usize,
    interval: Interval,
    week_start: WeekStart,
    /// Range: days after the window start, and its length in days.
    from_day: i64,
    days: i64,
    /// (minutes after window start - 1 day, user, company)
    events: Vec<(i64, u8, u8)>,
    flush_after: usize,
    /// Per company c1..c4: 0 no group row, 1 properties without `plan`, 2 free, 3 pro.
    plans: Vec<u8>,
    /// The event-property breakdown: limit, hide "other", display (0 series, 1 total, 2
    /// cumulative).
    limit: usize,
    hide_other: bool,
    display: u8,
}

/// Distinct companies and distinct users.
type CompaniesAndUsers = (BTreeSet<String>, BTreeSet<String>);

/// The breakdown label of company `company` (1..=4) under `plans`.
fn plan_label(plans: &[u8], company: u8) -> &'static str {
    match plans[usize::from(company) - 1] {
        2 => "free",
        3 => "pro",
        _ => herd_query::trends::BREAKDOWN_NULL,
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..ZONES.len(),
        0..STARTS.len(),
        prop_oneof![
            Just(Interval::Hour),
            Just(Interval::Day),
            Just(Interval::Week),
            Just(Interval::Month)
        ],
        prop_oneof![Just(WeekStart::Sunday), Just(WeekStart::Monday)],
        0i64..4,
        1i64..8,
        prop::collection::vec((0i64..(12 * 24 * 60), 0u8..6, 0u8..5), 0..80),
        0usize..80,
        prop::collection::vec(0u8..4, 4),
        (1usize..4, any::<bool>(), 0u8..3),
    )
        .prop_map(
            |(
                zone,
                start,
                interval,
                week_start,
                from_day,
                days,
                events,
                flush_after,
                plans,
                (limit, hide_other, display),
            )| {
                Case {
                    limit,
                    hide_other,
                    display,
                    zone,
                    start,
                    interval,
                    week_start,
                    from_day,
                    days,
                    events,
                    flush_after,
                    plans,
                }
            },
        )
}

/// The bucket label of a local time, computed directly from the calendar.
fn label(tz: Tz, micros: i64, interval: Interval, week_start: WeekStart) -> (NaiveDate, String) {
    let local = tz.timestamp_micros(micros).single().expect("instant");
    let date = local.date_naive();
    match interval {
        Interval::Hour => {
            let back = i64::from(local.minute()) * 60_000_000
                + i64::from(local.second()) * 1_000_000
                + i64::from(local.nanosecond() / 1000);
            let start = tz
                .timestamp_micros(micros - back)
                .single()
                .expect("instant");
            (date, start.format("%Y-%m-%dT%H:%M:%S%:z").to_string())
        }
        Interval::Day => (date, date.format("%Y-%m-%d").to_string()),
        Interval::Week => {
            let back = match week_start {
                WeekStart::Sunday => date.weekday().num_days_from_sunday(),
                WeekStart::Monday => date.weekday().num_days_from_monday(),
            };
            let d = date - Duration::days(i64::from(back));
            (d, d.format("%Y-%m-%d").to_string())
        }
        Interval::Month => {
            let d = date.with_day(1).expect("day 1");
            (d, d.format("%Y-%m-%d").to_string())
        }
    }
}

fn check(c: Case) {
    let tz: Tz = ZONES[c.zone].parse().expect("zone");
    let (y, m, d) = STARTS[c.start];
    let window = NaiveDate::from_ymd_opt(y, m, d).expect("date");
    let from = window + Duration::days(c.from_day);
    let to = from + Duration::days(c.days - 1);
    let base = chrono::Utc
        .from_utc_datetime(
            &(window - Duration::days(1))
                .and_hms_opt(0, 0, 0)
                .expect("t"),
        )
        .timestamp_micros();
    let events: Vec<Event> = c
        .events
        .iter()
        .enumerate()
        .map(|(i, (minute, user, company))| Event {
            uuid: uuid::Uuid::from_u128(i as u128 + 1),
            event: "e".into(),
            distinct_id: format!("u{user}"),
            timestamp: base + minute * 60_000_000 + (i as i64 % 60) * 1_000_000,
            properties: match source(i) {
                Some(v) => serde_json::json!({ "src": v }).to_string(),
                None => "{}".into(),
            },
            groups: [
                if *company == 0 {
                    String::new()
                } else {
                    format!("c{company}")
                },
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
            created_at: 0,
        })
        .collect();

    // Brute force: per label, events, users and non-empty companies.
    let (_, first_label) = label(
        tz,
        tz.from_local_datetime(&from.and_hms_opt(0, 0, 0).expect("t"))
            .earliest()
            .expect("midnight")
            .timestamp_micros(),
        c.interval,
        c.week_start,
    );
    let mut expected: BTreeMap<String, (usize, BTreeSet<String>, BTreeSet<String>)> =
        BTreeMap::new();
    // (plan label, bucket label) → (companies, users).
    let mut by_plan: BTreeMap<(&str, String), CompaniesAndUsers> = BTreeMap::new();
    for e in &events {
        let local_date = tz
            .timestamp_micros(e.timestamp)
            .single()
            .expect("instant")
            .date_naive();
        let (_, l) = label(tz, e.timestamp, c.interval, c.week_start);
        let in_range = local_date <= to
            && match c.interval {
                // Hour labels carry an offset: compare instants instead.
                Interval::Hour => local_date >= from,
                _ => l >= first_label,
            };
        if !in_range {
            continue;
        }
        // Events without a company have no plan: users count under the null label.
        let plan = match e.groups[0].get(1..) {
            Some(n) if !n.is_empty() => plan_label(&c.plans, n.parse().expect("company number")),
            _ => herd_query::trends::BREAKDOWN_NULL,
        };
        let by = by_plan.entry((plan, l.clone())).or_default();
        if !e.groups[0].is_empty() {
            by.0.insert(e.groups[0].clone());
        }
        by.1.insert(e.distinct_id.clone());
        let entry = expected.entry(l).or_default();
        entry.0 += 1;
        entry.1.insert(e.distinct_id.clone());
        if !e.groups[0].is_empty() {
            entry.2.insert(e.groups[0].clone());
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let f = Fixture::new(&["company"]).await;
        for (i, plan) in c.plans.iter().enumerate() {
            let key = format!("c{}", i + 1);
            match plan {
                0 => {}
                1 => f.group(0, &key, serde_json::json!({"size": 3})).await,
                2 => f.group(0, &key, serde_json::json!({"plan": "free"})).await,
                _ => f.group(0, &key, serde_json::json!({"plan": "pro"})).await,
            }
        }
        let split = c.flush_after.min(events.len());
        let (flushed, buffered) = events.split_at(split);
        if !flushed.is_empty() {
            f.write(flushed.to_vec()).await;
            f.flush().await;
        }
        if !buffered.is_empty() {
            f.write(buffered.to_vec()).await;
        }
        let s = |math: Math, group: Option<&str>| Series {
            event: Some("e".into()),
            math: MathSpec {
                math,
                group_type: group.map(str::to_string),
                property: None,
            },
            ..Series::default()
        };
        let q = TrendsQuery {
            series: vec![
                s(Math::Total, None),
                s(Math::Dau, None),
                s(Math::UniqueGroup, Some("company")),
                s(Math::WeeklyActive, Some("company")),
            ],
            interval: Some(c.interval),
            date_from: from.format("%Y-%m-%d").to_string(),
            date_to: to.format("%Y-%m-%d").to_string(),
            timezone: ZONES[c.zone].into(),
            week_start: c.week_start,
            ..TrendsQuery::default()
        };
        let r = f.engine.trends(f.project, &q, 0).await.expect("trends");
        // Actors by their strings instead of their numbers: the same answer.
        let by_strings = f
            .engine
            .clone()
            .with_actor_numbers(false)
            .trends(f.project, &q, 0)
            .await
            .expect("trends by strings");
        assert_eq!(by_strings, r, "by strings");
        let mut got: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
        assert_eq!(
            r.labels.iter().collect::<BTreeSet<_>>().len(),
            r.labels.len(),
            "labels are unique: {:?}",
            r.labels
        );
        for (i, l) in r.labels.iter().enumerate() {
            let v = (
                r.results[0].data[i],
                r.results[1].data[i],
                r.results[2].data[i],
            );
            if v != (0.0, 0.0, 0.0) {
                got.insert(l.clone(), v);
            }
        }
        let want: BTreeMap<String, (f64, f64, f64)> = expected
            .into_iter()
            .map(|(l, (n, users, companies))| {
                (l, (n as f64, users.len() as f64, companies.len() as f64))
            })
            .collect();
        assert_eq!(got, want, "case {c:?}\nlabels {:?}", r.labels);
        // Weekly active companies on a daily chart: companies with an event on one of the
        // 7 local days ending with the bucket's day (events before date_from count too).
        if c.interval == Interval::Day {
            for (i, l) in r.labels.iter().enumerate() {
                let d = NaiveDate::parse_from_str(l, "%Y-%m-%d").expect("date label");
                let active: BTreeSet<&str> = events
                    .iter()
                    .filter(|e| {
                        let day = tz
                            .timestamp_micros(e.timestamp)
                            .single()
                            .expect("instant")
                            .date_naive();
                        day <= to && day <= d && day > d - Duration::days(7)
                    })
                    .filter(|e| !e.groups[0].is_empty())
                    .map(|e| e.groups[0].as_str())
                    .collect();
                assert_eq!(
                    r.results[3].data[i],
                    active.len() as f64,
                    "weekly active on {l}, case {c:?}"
                );
            }
        }
        // The first label is the bucket of date_from.
        assert_eq!(r.labels.first(), Some(&first_label), "first label");

        // Unique companies and users broken down by the company's current plan.
        let q = TrendsQuery {
            series: vec![
                s(Math::UniqueGroup, Some("company")),
                s(Math::Dau, Some("company")),
                Series {
                    math: MathSpec {
                        math: Math::Dau,
                        group_type: None,
                        property: None,
                    },
                    ..s(Math::Dau, None)
                },
            ],
            breakdown: Some(Breakdown::group_property("company", "plan", 0)),
            ..q
        };
        let r = f
            .engine
            .trends(f.project, &q, 0)
            .await
            .expect("breakdown trends");
        let mut got: BTreeMap<(usize, String, String), f64> = BTreeMap::new();
        for line in &r.results {
            for (i, l) in r.labels.iter().enumerate() {
                if line.data[i] != 0.0 {
                    let value = line.breakdown_value.clone().expect("breakdown value");
                    got.insert((line.series_index, value, l.clone()), line.data[i]);
                }
            }
        }
        let mut want: BTreeMap<(usize, String, String), f64> = BTreeMap::new();
        for ((plan, l), (companies, users)) in &by_plan {
            if !companies.is_empty() {
                want.insert((0, plan.to_string(), l.clone()), companies.len() as f64);
                want.insert((1, plan.to_string(), l.clone()), companies.len() as f64);
            }
            want.insert((2, plan.to_string(), l.clone()), users.len() as f64);
        }
        assert_eq!(got, want, "breakdown by plan, case {c:?}");

        let q = TrendsQuery {
            series: match c.interval {
                Interval::Day => vec![
                    s(Math::Total, None),
                    s(Math::Dau, None),
                    s(Math::WeeklyActive, Some("company")),
                ],
                _ => vec![s(Math::Total, None), s(Math::Dau, None)],
            },
            breakdown: Some(Breakdown {
                property: "src".into(),
                source: herd_query::PropertySource::Event,
                limit: c.limit,
                hide_other: c.hide_other,
            }),
            display: [
                Display::TimeSeries,
                Display::TotalValue,
                Display::Cumulative,
            ][usize::from(c.display)],
            ..q
        };
        let r = f
            .engine
            .trends(f.project, &q, 0)
            .await
            .expect("event breakdown");
        let want = brute_breakdown(&c, tz, &events, &q, &r.labels, (from, to), &first_label);
        let got: Vec<(usize, String, Vec<f64>)> = r
            .results
            .iter()
            .map(|l| {
                let data = match q.display {
                    Display::TotalValue => vec![l.aggregated_value.expect("total")],
                    _ => l.data.clone(),
                };
                (
                    l.series_index,
                    l.breakdown_value.clone().expect("value"),
                    data,
                )
            })
            .collect();
        assert_eq!(
            got, want,
            "breakdown by src, case {c:?}\nlabels {:?}",
            r.labels
        );
    });
}

/// The `src` property of event `i` (none for every fifth).
fn source(i: usize) -> Option<String> {
    (!i.is_multiple_of(5)).then(|| format!("s{}", (i * 7 + i / 3) % 4))
}

/// Lines of a breakdown by `src`, computed plainly: rank the values in range by the
/// series' math, keep the top `limit`, label the rest "other" (when shown and there are
/// more), then each display's values per line.
fn brute_breakdown(
    c: &Case,
    tz: Tz,
    events: &[Event],
    q: &TrendsQuery,
    labels: &[String],
    (from, to): (NaiveDate, NaiveDate),
    first_label: &str,
) -> Vec<(usize, String, Vec<f64>)> {
    use herd_query::trends::{BREAKDOWN_NULL, BREAKDOWN_OTHER};
    let day_of = |e: &Event| {
        tz.timestamp_micros(e.timestamp)
            .single()
            .expect("instant")
            .date_naive()
    };
    let visible = |e: &Event| {
        let (_, l) = label(tz, e.timestamp, c.interval, c.week_start);
        day_of(e) <= to
            && match c.interval {
                Interval::Hour => day_of(e) >= from,
                _ => l.as_str() >= first_label,
            }
    };
    let src = |i: usize| source(i);
    let mut out = Vec::new();
    for (k, series) in q.series.iter().enumerate() {
        let math = series.math.math;
        // The actor an event counts for (None: it does not count).
        let actor = |e: &Event| -> Option<String> {
            match math {
                Math::Total => Some(e.uuid.to_string()),
                Math::Dau => Some(e.distinct_id.clone()),
                _ => (!e.groups[0].is_empty()).then(|| e.groups[0].clone()),
            }
        };
        let mut rank: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            if let (true, Some(v), Some(a)) = (visible(e), src(i), actor(e)) {
                rank.entry(v).or_default().insert(a);
            }
        }
        let mut ranked: Vec<(String, usize)> =
            rank.into_iter().map(|(v, a)| (v, a.len())).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let more = ranked.len() > c.limit;
        let top: Vec<String> = ranked.into_iter().take(c.limit).map(|(v, _)| v).collect();
        let line_of = |i: usize| -> Option<String> {
            match src(i) {
                None => Some(BREAKDOWN_NULL.to_string()),
                Some(v) if top.contains(&v) => Some(v),
                Some(_) if more && !c.hide_other => Some(BREAKDOWN_OTHER.to_string()),
                Some(_) => None,
            }
        };
        let mut order: Vec<String> = top.clone();
        order.push(BREAKDOWN_NULL.into());
        order.push(BREAKDOWN_OTHER.into());
        // Per line, the actors of each bucket (or of the range).
        let mut cells: BTreeMap<String, Vec<BTreeSet<String>>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            let (Some(line), Some(a)) = (line_of(i), actor(e)) else {
                continue;
            };
            let weekly = math == Math::WeeklyActive;
            let total = q.display == Display::TotalValue;
            let (_, l) = label(tz, e.timestamp, c.interval, c.week_start);
            let day = day_of(e);
            // Which buckets the event counts in (a total: slot 0, the period or the range).
            let hits: Vec<usize> = match (weekly, total) {
                (_, true) if !visible(e) => continue,
                (true, true) => match day > to - Duration::days(7) {
                    true => vec![0],
                    false => vec![],
                },
                (false, true) => vec![0],
                (false, false) if !visible(e) => continue,
                (false, false) => labels.iter().position(|bl| *bl == l).into_iter().collect(),
                (true, false) => (0..labels.len())
                    .filter(|b| {
                        let d = NaiveDate::parse_from_str(&labels[*b], "%Y-%m-%d").expect("day");
                        day <= to && day <= d && day > d - Duration::days(7)
                    })
                    .collect(),
            };
            // A line shows when it has rows: visible events, or a window reaching the range.
            if weekly && !total && hits.is_empty() {
                continue;
            }
            let slots = cells
                .entry(line)
                .or_insert_with(|| vec![BTreeSet::new(); labels.len().max(1)]);
            for b in hits {
                slots[b].insert(a.clone());
            }
        }
        for line in order {
            let Some(slots) = cells.remove(&line) else {
                continue;
            };
            let data = match q.display {
                Display::TotalValue => vec![slots[0].len() as f64],
                // A running sum of each bucket's weekly actives (as PostHog).
                Display::Cumulative if math == Math::WeeklyActive => {
                    let mut acc = 0.0;
                    slots
                        .iter()
                        .map(|s| {
                            acc += s.len() as f64;
                            acc
                        })
                        .collect()
                }
                Display::Cumulative => {
                    let mut seen = BTreeSet::new();
                    let mut acc = 0.0;
                    slots
                        .iter()
                        .map(|s| {
                            let new = match math {
                                Math::Total => s.len(),
                                _ => s.iter().filter(|a| seen.insert((*a).clone())).count(),
                            };
                            acc += new as f64;
                            acc
                        })
                        .collect()
                }
                Display::TimeSeries => slots.iter().map(|s| s.len() as f64).collect(),
            };
            out.push((k, line, data));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn unique_groups_per_bucket_match_brute_force(c in case()) {
        check(c);
    }
}
