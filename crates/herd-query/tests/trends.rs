//! Trends against hand-worked examples: spec §8 example A, week starts, DST days, hourly
//! buckets, breakdown limits, filters, weekly active and property math.

mod common;

use common::Fixture;
use herd_query::trends::{BREAKDOWN_NULL, BREAKDOWN_OTHER};
use herd_query::{
    BoolOp, Breakdown, Display, Interval, Math, MathSpec, Operator, PropertyFilter, PropertyGroup,
    PropertySource, Series, TrendsQuery, TrendsResult, WeekStart,
};

fn series(event: &str, math: Math, group: Option<&str>) -> Series {
    Series {
        event: (!event.is_empty()).then(|| event.to_string()),
        math: MathSpec {
            math,
            group_type: group.map(str::to_string),
            property: None,
        },
        ..Series::default()
    }
}

fn query(series: Vec<Series>, from: &str, to: &str) -> TrendsQuery {
    TrendsQuery {
        series,
        date_from: from.into(),
        date_to: to.into(),
        ..TrendsQuery::default()
    }
}

async fn run(f: &Fixture, q: &TrendsQuery) -> TrendsResult {
    f.engine.trends(f.project, q, 0).await.expect("trends")
}

fn data(r: &TrendsResult) -> Vec<Vec<f64>> {
    r.results.iter().map(|s| s.data.clone()).collect()
}

/// Spec §8 example A.
async fn example_a() -> Fixture {
    let f = Fixture::new(&["company"]).await;
    f.events(&[
        ("2024-01-01T10:00:00Z", "u1", "pv", ["acme", ""], "{}"),
        ("2024-01-01T11:00:00Z", "u2", "pv", ["acme", ""], "{}"),
        ("2024-01-01T12:00:00Z", "u3", "pv", ["", ""], "{}"),
        ("2024-01-02T09:00:00Z", "u1", "pv", ["globex", ""], "{}"),
        ("2024-01-02T23:30:00Z", "u4", "pv", ["acme", ""], "{}"),
        ("2024-01-03T00:10:00Z", "u4", "pv", ["acme", ""], "{}"),
    ])
    .await;
    f.group(0, "acme", serde_json::json!({"plan": "pro"})).await;
    f.group(0, "acme", serde_json::json!({"plan": "enterprise"}))
        .await;
    f.group(0, "globex", serde_json::json!({"plan": "free"}))
        .await;
    f
}

#[tokio::test]
async fn example_a_total_dau_unique_group() {
    let f = example_a().await;
    let q = query(
        vec![
            series("pv", Math::Total, None),
            series("pv", Math::Dau, None),
            series("pv", Math::UniqueGroup, Some("company")),
        ],
        "2024-01-01",
        "2024-01-03",
    );
    let r = run(&f, &q).await;
    assert_eq!(r.labels, ["2024-01-01", "2024-01-02", "2024-01-03"]);
    assert_eq!(
        data(&r),
        [
            vec![3.0, 2.0, 1.0],
            vec![3.0, 2.0, 1.0],
            vec![1.0, 2.0, 1.0]
        ]
    );
    assert_eq!(r.results[0].count, 6.0);
    // The same from Parquet instead of the write buffer.
    f.flush().await;
    assert_eq!(data(&run(&f, &q).await)[2], [1.0, 2.0, 1.0]);
}

#[tokio::test]
async fn example_a_total_value_and_cumulative() {
    let f = example_a().await;
    let mut q = query(
        vec![series("pv", Math::UniqueGroup, Some("company"))],
        "2024-01-01",
        "2024-01-03",
    );
    q.display = Display::TotalValue;
    let r = run(&f, &q).await;
    assert_eq!(r.results[0].aggregated_value, Some(2.0));
    q.display = Display::Cumulative;
    assert_eq!(data(&run(&f, &q).await), [vec![1.0, 2.0, 2.0]]);
    // Cumulative total is a running sum.
    let mut q = query(
        vec![series("pv", Math::Total, None)],
        "2024-01-01",
        "2024-01-03",
    );
    q.display = Display::Cumulative;
    assert_eq!(data(&run(&f, &q).await), [vec![3.0, 5.0, 6.0]]);
}

#[tokio::test]
async fn example_a_breakdown_by_current_group_plan() {
    let f = example_a().await;
    let mut q = query(
        vec![series("pv", Math::Total, None)],
        "2024-01-01",
        "2024-01-03",
    );
    q.breakdown = Some(Breakdown {
        property: "plan".into(),
        source: PropertySource::Group("company".into()),
        limit: 0,
        hide_other: false,
    });
    let r = run(&f, &q).await;
    let lines: Vec<(String, Vec<f64>)> = r
        .results
        .iter()
        .map(|s| (s.breakdown_value.clone().expect("value"), s.data.clone()))
        .collect();
    assert_eq!(
        lines,
        [
            ("enterprise".to_string(), vec![2.0, 1.0, 1.0]),
            ("free".to_string(), vec![0.0, 1.0, 0.0]),
            (BREAKDOWN_NULL.to_string(), vec![1.0, 0.0, 0.0]),
        ]
    );
}

#[tokio::test]
async fn unique_groups_by_their_current_plan_with_and_without_a_group_filter() {
    let f = example_a().await;
    let mut q = query(
        vec![series("pv", Math::UniqueGroup, Some("company"))],
        "2024-01-01",
        "2024-01-03",
    );
    q.breakdown = Some(Breakdown {
        property: "plan".into(),
        source: PropertySource::Group("company".into()),
        limit: 0,
        hide_other: false,
    });
    let lines = |r: TrendsResult| -> Vec<(String, Vec<f64>)> {
        r.results
            .into_iter()
            .map(|s| (s.breakdown_value.expect("value"), s.data))
            .collect()
    };
    let expected = vec![
        ("enterprise".to_string(), vec![1.0, 1.0, 1.0]),
        ("free".to_string(), vec![0.0, 1.0, 0.0]),
    ];
    // The join after distinct (bucket, company) ...
    assert_eq!(lines(run(&f, &q).await), expected);
    // ... and the join before it (a group filter needs the properties first) agree.
    q.filters.filters.push(PropertyFilter {
        key: "plan".into(),
        source: PropertySource::Group("company".into()),
        operator: Operator::IsSet,
        values: vec![],
    });
    assert_eq!(lines(run(&f, &q).await), expected);
    q.display = Display::TotalValue;
    let totals: Vec<(Option<String>, Option<f64>)> = run(&f, &q)
        .await
        .results
        .into_iter()
        .map(|s| (s.breakdown_value, s.aggregated_value))
        .collect();
    assert_eq!(
        totals,
        [
            (Some("enterprise".to_string()), Some(1.0)),
            (Some("free".to_string()), Some(1.0))
        ]
    );
}

#[tokio::test]
async fn timezone_moves_events_across_days() {
    let f = example_a().await;
    // In New York (UTC-5) 01-02 23:30Z and 01-03 00:10Z are both on 01-02 and 10:00Z on 01-01.
    let mut q = query(
        vec![series("pv", Math::Total, None)],
        "2024-01-01",
        "2024-01-03",
    );
    q.timezone = "America/New_York".into();
    assert_eq!(data(&run(&f, &q).await), [vec![3.0, 3.0, 0.0]]);
    // In Tokyo (UTC+9) 01-02 23:30Z is 01-03 08:30.
    q.timezone = "Asia/Tokyo".into();
    assert_eq!(data(&run(&f, &q).await), [vec![3.0, 1.0, 2.0]]);
}

#[tokio::test]
async fn week_starts_sunday_or_monday() {
    let f = Fixture::new(&["company"]).await;
    // 2024-01-06 is a Saturday, 01-07 a Sunday, 01-08 a Monday.
    f.events(&[
        ("2024-01-06T12:00:00Z", "u1", "e", ["a", ""], "{}"),
        ("2024-01-07T12:00:00Z", "u1", "e", ["b", ""], "{}"),
        ("2024-01-08T12:00:00Z", "u1", "e", ["a", ""], "{}"),
    ])
    .await;
    let mut q = query(
        vec![series("e", Math::UniqueGroup, Some("company"))],
        "2024-01-03",
        "2024-01-10",
    );
    q.interval = Some(Interval::Week);
    let r = run(&f, &q).await;
    assert_eq!(r.labels, ["2023-12-31", "2024-01-07"]);
    assert_eq!(data(&r), [vec![1.0, 2.0]]);
    q.week_start = WeekStart::Monday;
    let r = run(&f, &q).await;
    assert_eq!(r.labels, ["2024-01-01", "2024-01-08"]);
    assert_eq!(data(&r), [vec![2.0, 1.0]]);
}

#[tokio::test]
async fn dst_day_is_23_hours_and_hourly_buckets_follow_the_offset() {
    let f = Fixture::new(&["company"]).await;
    f.events(&[
        // Berlin 2024-03-31 00:30 CET and 23:30 CEST: both on the 23-hour day.
        ("2024-03-30T23:30:00Z", "u1", "e", ["a", ""], "{}"),
        ("2024-03-31T21:30:00Z", "u2", "e", ["b", ""], "{}"),
        // Berlin 2024-04-01 00:30 CEST: next day.
        ("2024-03-31T22:30:00Z", "u3", "e", ["c", ""], "{}"),
    ])
    .await;
    let mut q = query(
        vec![series("e", Math::UniqueGroup, Some("company"))],
        "2024-03-31",
        "2024-04-01",
    );
    q.timezone = "Europe/Berlin".into();
    assert_eq!(data(&run(&f, &q).await), [vec![2.0, 1.0]]);

    q.interval = Some(Interval::Hour);
    q.date_from = "2024-03-31T00:00".into();
    q.date_to = "2024-03-31T03:59".into();
    let r = run(&f, &q).await;
    // 02:00 does not exist that night.
    assert_eq!(
        r.labels,
        [
            "2024-03-31T00:00:00+01:00",
            "2024-03-31T01:00:00+01:00",
            "2024-03-31T03:00:00+02:00"
        ]
    );
    assert_eq!(data(&r), [vec![1.0, 0.0, 0.0]]);
}

#[tokio::test]
async fn breakdown_limit_collects_the_rest_in_other_with_exact_uniques() {
    let f = Fixture::new(&["company"]).await;
    let mut rows = Vec::new();
    // Browser x: 3 companies, y: 2, z: 1, w: 1; company c1 uses both z and w.
    for (c, b) in [
        ("c1", "x"),
        ("c2", "x"),
        ("c3", "x"),
        ("c1", "y"),
        ("c4", "y"),
        ("c1", "z"),
        ("c1", "w"),
    ] {
        rows.push((c, b));
    }
    let props: Vec<String> = rows
        .iter()
        .map(|(_, b)| format!(r#"{{"$browser":"{b}"}}"#))
        .collect();
    let evs: Vec<common::Ev<'_>> = rows
        .iter()
        .zip(&props)
        .map(|((c, _), p)| ("2024-02-01T10:00:00Z", "u", "e", [*c, ""], p.as_str()))
        .collect();
    f.events(&evs).await;
    f.events(&[("2024-02-01T11:00:00Z", "u", "e", ["c9", ""], "{}")])
        .await;
    let mut q = query(
        vec![series("e", Math::UniqueGroup, Some("company"))],
        "2024-02-01",
        "2024-02-01",
    );
    q.breakdown = Some(Breakdown {
        property: "$browser".into(),
        source: PropertySource::Event,
        limit: 2,
        hide_other: false,
    });
    let r = run(&f, &q).await;
    let lines: Vec<(String, f64)> = r
        .results
        .iter()
        .map(|s| (s.breakdown_value.clone().expect("value"), s.data[0]))
        .collect();
    // "other" holds z and w: one company (c1), not two.
    assert_eq!(
        lines,
        [
            ("x".to_string(), 3.0),
            ("y".to_string(), 2.0),
            (BREAKDOWN_NULL.to_string(), 1.0),
            (BREAKDOWN_OTHER.to_string(), 1.0),
        ]
    );
    if let Some(b) = q.breakdown.as_mut() {
        b.hide_other = true;
    }
    assert_eq!(run(&f, &q).await.results.len(), 3);
}

#[tokio::test]
async fn filters_on_event_and_group_properties_with_and_or() {
    let f = example_a().await;
    f.events(&[
        (
            "2024-01-02T10:00:00Z",
            "u9",
            "pv",
            ["globex", ""],
            r#"{"$browser":"Chrome","n":5}"#,
        ),
        (
            "2024-01-02T11:00:00Z",
            "u9",
            "pv",
            ["acme", ""],
            r#"{"$browser":"Firefox","n":"12"}"#,
        ),
    ])
    .await;
    let run_with = |filters: PropertyGroup| {
        let mut q = query(
            vec![series("pv", Math::Total, None)],
            "2024-01-01",
            "2024-01-03",
        );
        q.filters = filters;
        let f = &f;
        async move { run(f, &q).await.results[0].count }
    };
    let leaf =
        |key: &str, source: PropertySource, operator: Operator, values: &[&str]| PropertyFilter {
            key: key.into(),
            source,
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
    let and = |filters: Vec<PropertyFilter>| PropertyGroup {
        op: BoolOp::And,
        filters,
        groups: vec![],
    };
    let company = || PropertySource::Group("company".into());
    // 8 events: acme 5 (enterprise), globex 2 (free), no company 1.
    assert_eq!(run_with(PropertyGroup::default()).await, 8.0);
    assert_eq!(
        run_with(and(vec![leaf(
            "plan",
            company(),
            Operator::Exact,
            &["enterprise"]
        )]))
        .await,
        5.0
    );
    assert_eq!(
        run_with(and(vec![leaf(
            "plan",
            company(),
            Operator::IsNot,
            &["enterprise"]
        )]))
        .await,
        3.0,
        "is_not keeps events without a group"
    );
    assert_eq!(
        run_with(and(vec![leaf("plan", company(), Operator::IsNotSet, &[])])).await,
        1.0
    );
    assert_eq!(
        run_with(and(vec![leaf(
            "plan",
            company(),
            Operator::IContains,
            &["PRISE"]
        )]))
        .await,
        5.0
    );
    assert_eq!(
        run_with(and(vec![leaf(
            "$browser",
            PropertySource::Event,
            Operator::Regex,
            &["^(Ch|Fi)"]
        )]))
        .await,
        2.0
    );
    assert_eq!(
        run_with(and(vec![leaf(
            "n",
            PropertySource::Event,
            Operator::Gt,
            &["6"]
        )]))
        .await,
        1.0,
        "numeric text compares as a number"
    );
    assert_eq!(
        run_with(and(vec![leaf(
            "n",
            PropertySource::Event,
            Operator::Lte,
            &["12"]
        )]))
        .await,
        2.0
    );
    assert_eq!(
        run_with(and(vec![leaf(
            "$browser",
            PropertySource::Event,
            Operator::NotIContains,
            &["chrome"]
        )]))
        .await,
        7.0
    );
    let or = PropertyGroup {
        op: BoolOp::Or,
        filters: vec![
            leaf("plan", company(), Operator::Exact, &["free"]),
            leaf(
                "$browser",
                PropertySource::Event,
                Operator::Exact,
                &["Firefox"],
            ),
        ],
        groups: vec![],
    };
    assert_eq!(run_with(or).await, 3.0);
}

#[tokio::test]
async fn weekly_active_groups_use_a_trailing_seven_day_window() {
    let f = Fixture::new(&["company"]).await;
    f.events(&[
        // Before the range: counts in the first days through the lookback.
        ("2023-12-28T10:00:00Z", "u1", "e", ["a", ""], "{}"),
        ("2024-01-02T10:00:00Z", "u2", "e", ["b", ""], "{}"),
        ("2024-01-03T10:00:00Z", "u3", "e", ["a", ""], "{}"),
    ])
    .await;
    let q = query(
        vec![series("e", Math::WeeklyActive, Some("company"))],
        "2024-01-01",
        "2024-01-10",
    );
    // a: 12-28..01-03 then 01-03..01-09; b: 01-02..01-08.
    assert_eq!(
        data(&run(&f, &q).await),
        [vec![1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0, 0.0]]
    );
    let mut total = q.clone();
    total.display = Display::TotalValue;
    // Active in 01-04..01-10: none.
    assert_eq!(run(&f, &total).await.results[0].aggregated_value, Some(0.0));
    total.date_to = "2024-01-08".into();
    assert_eq!(run(&f, &total).await.results[0].aggregated_value, Some(2.0));
}

#[tokio::test]
async fn monthly_active_on_weekly_buckets_counts_the_30_days_ending_at_each_week_start() {
    let f = Fixture::new(&["company"]).await;
    f.events(&[
        ("2023-12-10T10:00:00Z", "u1", "e", ["a", ""], "{}"),
        ("2024-01-09T10:00:00Z", "u2", "e", ["b", ""], "{}"),
    ])
    .await;
    let mut q = query(
        vec![series("e", Math::MonthlyActive, Some("company"))],
        "2024-01-01",
        "2024-01-31",
    );
    q.interval = Some(Interval::Week);
    q.week_start = WeekStart::Monday;
    let r = run(&f, &q).await;
    assert_eq!(
        r.labels,
        [
            "2024-01-01",
            "2024-01-08",
            "2024-01-15",
            "2024-01-22",
            "2024-01-29"
        ]
    );
    // a (12-10) is in the 30 days ending 01-01 and 01-08 (12-10 > 01-08 − 30 d = 12-09);
    // b (01-09) from 01-15 on.
    assert_eq!(data(&r), [vec![1.0, 1.0, 1.0, 1.0, 1.0]]);
    // Weekly active on weekly buckets falls back to unique per week.
    q.series = vec![series("e", Math::WeeklyActive, Some("company"))];
    assert_eq!(data(&run(&f, &q).await), [vec![0.0, 1.0, 0.0, 0.0, 0.0]]);
}

#[tokio::test]
async fn property_math_and_any_event() {
    let f = Fixture::new(&["company"]).await;
    f.events(&[
        (
            "2024-01-01T10:00:00Z",
            "u1",
            "buy",
            ["a", ""],
            r#"{"price":10}"#,
        ),
        (
            "2024-01-01T11:00:00Z",
            "u1",
            "buy",
            ["a", ""],
            r#"{"price":"30"}"#,
        ),
        (
            "2024-01-01T12:00:00Z",
            "u1",
            "buy",
            ["a", ""],
            r#"{"price":20}"#,
        ),
        (
            "2024-01-01T13:00:00Z",
            "u1",
            "buy",
            ["a", ""],
            r#"{"price":"n/a"}"#,
        ),
        ("2024-01-02T13:00:00Z", "u1", "view", ["a", ""], r#"{}"#),
    ])
    .await;
    let m = |math: Math| Series {
        event: Some("buy".into()),
        math: MathSpec {
            math,
            group_type: None,
            property: Some("price".into()),
        },
        ..Series::default()
    };
    let q = query(
        vec![
            m(Math::Sum),
            m(Math::Avg),
            m(Math::Min),
            m(Math::Max),
            m(Math::Median),
            m(Math::P90),
            series("", Math::Total, None),
        ],
        "2024-01-01",
        "2024-01-02",
    );
    let r = run(&f, &q).await;
    assert_eq!(
        data(&r),
        [
            vec![60.0, 0.0],
            vec![20.0, 0.0],
            vec![10.0, 0.0],
            vec![30.0, 0.0],
            vec![20.0, 0.0],
            vec![28.0, 0.0],
            vec![4.0, 1.0]
        ]
    );
    assert_eq!(r.results[6].label, "All events");
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let f = example_a().await;
    let err = |q: TrendsQuery| {
        let f = &f;
        async move {
            match f.engine.trends(f.project, &q, 0).await {
                Err(herd_query::Error::Invalid { field, message }) => format!("{field}: {message}"),
                other => panic!("expected an invalid-request error, got {other:?}"),
            }
        }
    };
    let ok = || {
        query(
            vec![series("pv", Math::Total, None)],
            "2024-01-01",
            "2024-01-03",
        )
    };
    assert!(
        err(query(vec![], "2024-01-01", "2024-01-03"))
            .await
            .starts_with("series:")
    );
    let mut q = ok();
    q.timezone = "Mars/Base".into();
    assert!(err(q).await.contains("Mars/Base"));
    let mut q = ok();
    q.date_from = "2024-02-01".into();
    assert!(err(q).await.starts_with("date_from:"));
    let q = query(
        vec![series("pv", Math::UniqueGroup, Some("planet"))],
        "2024-01-01",
        "2024-01-03",
    );
    let e = err(q).await;
    assert!(
        e.starts_with("series[0].math_group_type:") && e.contains("planet"),
        "{e}"
    );
    let mut q = ok();
    q.filters.filters.push(PropertyFilter {
        key: "x".into(),
        source: PropertySource::Event,
        operator: Operator::Regex,
        values: vec!["(".into()],
    });
    assert!(err(q).await.starts_with("filters.filters[0].values:"));
}
