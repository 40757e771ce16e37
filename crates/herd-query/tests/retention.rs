//! Retention against hand-worked examples (recurring, first time, by company, breakdown by a
//! group property, distinct target and returning events, bad requests) and a property test
//! against a brute-force count written plainly here.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Fixture;
use herd_core::Event;
use herd_query::{
    Breakdown, Error, Interval, PropertySource, RetentionEntity, RetentionQuery, RetentionResult,
    RetentionType,
};
use proptest::prelude::*;

fn pv() -> RetentionEntity {
    RetentionEntity {
        event: Some("pv".into()),
        ..RetentionEntity::default()
    }
}

fn query(periods: usize, date_to: &str) -> RetentionQuery {
    RetentionQuery {
        target: pv(),
        returning: pv(),
        period: Some(Interval::Day),
        periods,
        date_to: date_to.into(),
        ..RetentionQuery::default()
    }
}

async fn run(f: &Fixture, q: &RetentionQuery) -> RetentionResult {
    f.engine
        .retention(f.project, q, 0)
        .await
        .expect("retention")
}

/// (breakdown value, values) per cohort.
fn lines(r: &RetentionResult) -> Vec<(String, Vec<u64>)> {
    r.cohorts
        .iter()
        .map(|c| {
            (
                c.breakdown_value.clone().unwrap_or_default(),
                c.values.clone(),
            )
        })
        .collect()
}

fn table(r: &RetentionResult) -> Vec<Vec<u64>> {
    r.cohorts.iter().map(|c| c.values.clone()).collect()
}

async fn example() -> Fixture {
    let f = Fixture::new(&["company"]).await;
    f.events(&[
        ("2024-01-01T10:00:00Z", "u1", "pv", ["acme", ""], "{}"),
        ("2024-01-02T10:00:00Z", "u1", "pv", ["acme", ""], "{}"),
        ("2024-01-04T10:00:00Z", "u1", "pv", ["acme", ""], "{}"),
        ("2024-01-02T11:00:00Z", "u2", "pv", ["acme", ""], "{}"),
        ("2024-01-03T11:00:00Z", "u2", "pv", ["acme", ""], "{}"),
        ("2024-01-01T12:00:00Z", "u3", "pv", ["globex", ""], "{}"),
        ("2023-12-31T12:00:00Z", "u4", "pv", ["", ""], "{}"),
        ("2024-01-02T12:00:00Z", "u4", "pv", ["", ""], "{}"),
        // After the range: not seen.
        ("2024-01-05T12:00:00Z", "u3", "pv", ["globex", ""], "{}"),
    ])
    .await;
    f.group(0, "acme", serde_json::json!({"plan": "enterprise"}))
        .await;
    f.group(0, "globex", serde_json::json!({"plan": "free"}))
        .await;
    f
}

#[tokio::test]
async fn recurring_and_first_time_by_user() {
    let f = example().await;
    let q = query(4, "2024-01-04");
    let r = run(&f, &q).await;
    assert_eq!(r.labels, ["Day 0", "Day 1", "Day 2", "Day 3"]);
    let dates: Vec<&str> = r.cohorts.iter().map(|c| c.date.as_str()).collect();
    assert_eq!(
        dates,
        ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    );
    assert_eq!(
        table(&r),
        [
            vec![2, 1, 0, 1],
            vec![3, 1, 1, 0],
            vec![1, 0, 0, 0],
            vec![1, 0, 0, 0]
        ]
    );
    let mut first = q.clone();
    first.retention_type = RetentionType::FirstTime;
    // u4's first time was before the range: left out.
    assert_eq!(
        table(&run(&f, &first).await),
        [
            vec![2, 1, 0, 1],
            vec![1, 1, 0, 0],
            vec![0, 0, 0, 0],
            vec![0, 0, 0, 0]
        ]
    );
    // The same from Parquet.
    f.flush().await;
    assert_eq!(table(&run(&f, &q).await)[1], vec![3, 1, 1, 0]);
}

#[tokio::test]
async fn by_company_with_a_breakdown_by_plan() {
    let f = example().await;
    let mut q = query(4, "2024-01-04");
    q.aggregation_group_type = Some("company".into());
    assert_eq!(
        table(&run(&f, &q).await),
        [
            vec![2, 1, 1, 1],
            vec![1, 1, 1, 0],
            vec![1, 1, 0, 0],
            vec![1, 0, 0, 0]
        ]
    );
    q.breakdown = Some(Breakdown {
        property: "plan".into(),
        source: PropertySource::Group("company".into()),
        limit: 0,
        hide_other: false,
    });
    let r = run(&f, &q).await;
    let lines = lines(&r);
    let l = |v: &str, c: [u64; 4]| (v.to_string(), c.to_vec());
    assert_eq!(
        lines,
        [
            l("enterprise", [1, 1, 1, 1]),
            l("enterprise", [1, 1, 1, 0]),
            l("enterprise", [1, 1, 0, 0]),
            l("enterprise", [1, 0, 0, 0]),
            l("free", [1, 0, 0, 0]),
            l("free", [0, 0, 0, 0]),
            l("free", [0, 0, 0, 0]),
            l("free", [0, 0, 0, 0]),
        ]
    );
}

#[tokio::test]
async fn distinct_target_and_returning_events_and_weeks() {
    let f = Fixture::new(&[]).await;
    f.events(&[
        ("2024-01-01T10:00:00Z", "u5", "signup", ["", ""], "{}"),
        ("2024-01-03T10:00:00Z", "u5", "pv", ["", ""], "{}"),
        // A return that is not a target does not make a cohort.
        ("2024-01-02T10:00:00Z", "u6", "pv", ["", ""], "{}"),
        // Weeks: Mon 2024-01-08 and Mon 2024-01-15.
        ("2024-01-09T10:00:00Z", "u5", "pv", ["", ""], "{}"),
    ])
    .await;
    let mut q = query(3, "2024-01-03");
    q.target = RetentionEntity {
        event: Some("signup".into()),
        ..RetentionEntity::default()
    };
    assert_eq!(
        table(&run(&f, &q).await),
        [vec![1, 0, 1], vec![0, 0, 0], vec![0, 0, 0]]
    );
    q.period = Some(Interval::Week);
    q.week_start = herd_query::WeekStart::Monday;
    q.date_to = "2024-01-10".into();
    let r = run(&f, &q).await;
    assert_eq!(r.cohorts[0].date, "2023-12-25");
    assert_eq!(table(&r), [vec![0, 0, 0], vec![1, 1, 0], vec![0, 0, 0]]);
}

#[tokio::test]
async fn an_actor_counts_under_the_value_of_its_first_target_event() {
    let f = Fixture::new(&[]).await;
    f.events(&[
        // Target on chrome, comes back on firefox the next day: a chrome return.
        (
            "2024-01-01T10:00:00Z",
            "u1",
            "pv",
            ["", ""],
            r#"{"$browser":"chrome"}"#,
        ),
        (
            "2024-01-02T10:00:00Z",
            "u1",
            "pv",
            ["", ""],
            r#"{"$browser":"firefox"}"#,
        ),
        (
            "2024-01-01T11:00:00Z",
            "u2",
            "pv",
            ["", ""],
            r#"{"$browser":"firefox"}"#,
        ),
    ])
    .await;
    let mut q = query(2, "2024-01-02");
    q.breakdown = Some(Breakdown {
        property: "$browser".into(),
        source: PropertySource::Event,
        limit: 0,
        hide_other: false,
    });
    let r = run(&f, &q).await;
    let lines = lines(&r);
    let l = |v: &str, c: [u64; 2]| (v.to_string(), c.to_vec());
    assert_eq!(
        lines,
        [
            l("chrome", [1, 1]),
            l("chrome", [1, 0]),
            l("firefox", [1, 0]),
            l("firefox", [0, 0]),
        ]
    );
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let f = Fixture::new(&["company"]).await;
    let err = |r: Result<RetentionResult, Error>| match r {
        Err(Error::Invalid { field, message }) => (field, message),
        other => panic!("expected invalid, got {other:?}"),
    };
    let mut q = query(10_000, "2024-01-04");
    let (field, _) = err(f.engine.retention(f.project, &q, 0).await);
    assert_eq!(field, "periods");
    q.periods = 7;
    q.aggregation_group_type = Some("planet".into());
    let (field, msg) = err(f.engine.retention(f.project, &q, 0).await);
    assert_eq!(field, "aggregation_group_type");
    assert!(msg.contains("unknown group type"), "{msg}");
    q.aggregation_group_type = None;
    q.target.event = Some(String::new());
    let (field, _) = err(f.engine.retention(f.project, &q, 0).await);
    assert_eq!(field, "target.event");
}

#[derive(Debug, Clone)]
struct Case {
    periods: usize,
    /// Last day of the range, days after 2024-01-01.
    to_day: i64,
    first_time: bool,
    by_company: bool,
    /// (hour after 2023-12-29, user, company (0 = none), event: 0 = target, 1 = return, 2 = both kinds? no: other)
    events: Vec<(i64, u8, u8, u8)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..8,
        0i64..10,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((0i64..(16 * 24), 0u8..5, 0u8..4, 0u8..3), 0..60),
    )
        .prop_map(|(periods, to_day, first_time, by_company, events)| Case {
            periods,
            to_day,
            first_time,
            by_company,
            events,
        })
}

const H: i64 = 3_600_000_000;
const START: i64 = 1_703_808_000_000_000; // 2023-12-29T00:00:00Z
const JAN1: i64 = 1_704_067_200_000_000;

fn check(c: Case) {
    const NAMES: [&str; 3] = ["signup", "pv", "other"];
    let day = |t: i64| (t - JAN1).div_euclid(24 * H);
    let first_day = c.to_day - c.periods as i64 + 1;
    // Brute force: per actor, days with a target and days with a return.
    let mut targets: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut returns: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut rows = Vec::new();
    for (i, (h, u, co, e)) in c.events.iter().enumerate() {
        let t = START + h * H;
        let company = if *co == 0 {
            String::new()
        } else {
            format!("c{co}")
        };
        let actor = if c.by_company {
            company.clone()
        } else {
            format!("u{u}")
        };
        if !actor.is_empty() && day(t) <= c.to_day {
            match e {
                0 => {
                    targets.entry(actor).or_default().insert(day(t));
                }
                1 => {
                    returns.entry(actor).or_default().insert(day(t));
                }
                _ => {}
            }
        }
        rows.push(Event {
            uuid: uuid::Uuid::from_u128(i as u128 + 1),
            event: NAMES[usize::from(*e)].to_string(),
            distinct_id: format!("u{u}"),
            timestamp: t,
            properties: "{}".into(),
            groups: [
                company,
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
            created_at: t,
        });
    }
    let n = c.periods;
    let mut want = vec![vec![0u64; n]; n];
    for (actor, days) in &targets {
        let cohorts: Vec<i64> = if c.first_time {
            days.iter().next().copied().into_iter().collect()
        } else {
            days.iter().copied().collect()
        };
        for d in cohorts {
            if d < first_day || d > c.to_day {
                continue;
            }
            let i = (d - first_day) as usize;
            let row = &mut want[i];
            row[0] += 1;
            for (k, slot) in row.iter_mut().enumerate().take(n - i).skip(1) {
                if returns
                    .get(actor)
                    .is_some_and(|r| r.contains(&(d + k as i64)))
                {
                    *slot += 1;
                }
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let f = Fixture::new(&["company"]).await;
        if !rows.is_empty() {
            f.write(rows).await;
        }
        let to = chrono::DateTime::from_timestamp_micros(JAN1 + c.to_day * 24 * H)
            .expect("date")
            .format("%Y-%m-%d")
            .to_string();
        let q = RetentionQuery {
            target: RetentionEntity {
                event: Some("signup".into()),
                ..RetentionEntity::default()
            },
            returning: pv(),
            period: Some(Interval::Day),
            periods: n,
            retention_type: if c.first_time {
                RetentionType::FirstTime
            } else {
                RetentionType::Recurring
            },
            aggregation_group_type: c.by_company.then(|| "company".to_string()),
            date_to: to,
            ..RetentionQuery::default()
        };
        let r = f
            .engine
            .retention(f.project, &q, 0)
            .await
            .expect("retention");
        assert_eq!(table(&r), want, "{c:?}");
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn retention_matches_brute_force(c in case()) {
        check(c);
    }
}

#[tokio::test]
async fn more_actors_than_one_output_batch_are_each_counted_once() {
    let f = Fixture::new(&[]).await;
    let day1 = common::micros("2024-01-01T10:00:00Z");
    let mut rows = Vec::new();
    for i in 0..20_000u64 {
        for d in 0..2i64 {
            if d == 1 && i % 4 == 0 {
                continue;
            }
            let t = day1 + d * 86_400_000_000 + i as i64;
            rows.push(Event {
                uuid: uuid::Uuid::from_u128(u128::from(i * 2 + d as u64 + 1)),
                event: "pv".into(),
                distinct_id: format!("u{i}"),
                timestamp: t,
                properties: "{}".into(),
                groups: Default::default(),
                created_at: t,
            });
        }
    }
    f.write(rows).await;
    let r = run(&f, &query(2, "2024-01-02")).await;
    assert_eq!(table(&r), [vec![20_000, 15_000], vec![15_000, 0]]);
}
