//! Snapshots of the physical plans of representative insight requests, so that a plan change
//! is a visible diff: `tests/plans/<name>.txt` holds `EXPLAIN`'s text of each (the data
//! folder written as `<data>`), planned with 2 partitions. After an intended change, rerun
//! with `HERD_UPDATE_PLANS=1` and review the diff.

mod common;

use common::Fixture;
use herd_query::{
    Breakdown, FunnelExclusion, FunnelQuery, FunnelStep, Interval, Math, MathSpec, QueryEngine,
    RetentionEntity, RetentionQuery, RetentionType, Series, TrendsQuery, Window, WindowUnit,
};

/// Compares `plan` with the snapshot `name` (or writes it, with `HERD_UPDATE_PLANS=1`).
fn check(f: &Fixture, name: &str, plan: &str) {
    let data = f.db.storage().location().to_string();
    let plan = plan.replace(data.trim_end_matches('/'), "<data>");
    // File names are random (UUIDv7s).
    let files = regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
        .expect("regex");
    let plan = files.replace_all(&plan, "<uuid>").into_owned();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/plans/{name}.txt"));
    if std::env::var_os("HERD_UPDATE_PLANS").is_some() {
        std::fs::write(&path, &plan).expect("write snapshot");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == plan,
        "the plan of {name} changed (HERD_UPDATE_PLANS=1 rewrites {}):\n--- want\n{want}\n--- got\n{plan}",
        path.display()
    );
}

fn steps(names: &[&str]) -> Vec<FunnelStep> {
    names
        .iter()
        .map(|n| FunnelStep {
            event: Some((*n).to_string()),
            ..FunnelStep::default()
        })
        .collect()
}

async fn fixture() -> (Fixture, QueryEngine) {
    let f = Fixture::new(&["company"]).await;
    f.events(&[
        ("2024-01-01T10:00:00Z", "u1", "signup", ["acme", ""], "{}"),
        ("2024-01-01T12:00:00Z", "u2", "install", ["acme", ""], "{}"),
        (
            "2024-01-02T12:00:00Z",
            "u2",
            "uninstall",
            ["acme", ""],
            "{}",
        ),
        ("2024-01-03T09:00:00Z", "u3", "purchase", ["acme", ""], "{}"),
    ])
    .await;
    f.flush().await;
    let engine = QueryEngine::with_partitions(f.db.clone(), Some(2)).expect("engine");
    (f, engine)
}

#[tokio::test]
async fn funnel_by_company_with_an_exclusion() {
    let (f, engine) = fixture().await;
    let q = FunnelQuery {
        steps: steps(&["signup", "install", "purchase"]),
        window: Some(Window {
            value: 7,
            unit: WindowUnit::Day,
        }),
        aggregation_group_type: Some("company".into()),
        exclusions: vec![FunnelExclusion {
            event: Some("uninstall".into()),
            filters: Default::default(),
            from_step: 1,
            to_step: 2,
        }],
        date_from: "2024-01-01".into(),
        date_to: "2024-01-31".into(),
        ..FunnelQuery::default()
    };
    let plan = engine
        .explain_funnel(f.project, &q, 0)
        .await
        .expect("explain");
    assert!(plan.contains("FunnelExec"), "{plan}");
    check(&f, "funnel_by_company_with_an_exclusion", &plan);
}

#[tokio::test]
async fn ordered_funnel_by_user_split_in_two_inputs() {
    let (f, engine) = fixture().await;
    let q = FunnelQuery {
        steps: steps(&["signup", "install"]),
        date_from: "2024-01-01".into(),
        date_to: "2024-01-31".into(),
        ..FunnelQuery::default()
    };
    let plan = engine
        .explain_funnel(f.project, &q, 0)
        .await
        .expect("explain");
    assert!(plan.contains("split=true"), "{plan}");
    check(&f, "ordered_funnel_by_user_split", &plan);
}

#[tokio::test]
async fn first_time_retention_by_company() {
    let (f, engine) = fixture().await;
    let entity = |name: &str| RetentionEntity {
        event: Some(name.to_string()),
        ..RetentionEntity::default()
    };
    let q = RetentionQuery {
        target: entity("signup"),
        returning: entity("purchase"),
        period: Some(Interval::Day),
        periods: 3,
        retention_type: RetentionType::FirstTime,
        aggregation_group_type: Some("company".into()),
        date_to: "2024-01-03".into(),
        ..RetentionQuery::default()
    };
    let plan = engine
        .explain_retention(f.project, &q, 0)
        .await
        .expect("explain");
    assert!(plan.contains("AggregateExec"), "{plan}");
    check(&f, "first_time_retention_by_company", &plan);
}

#[tokio::test]
async fn unique_companies_by_their_plan() {
    let (f, engine) = fixture().await;
    f.group(0, "acme", serde_json::json!({"plan": "enterprise"}))
        .await;
    f.flush().await;
    let q = TrendsQuery {
        series: vec![Series {
            event: Some("signup".into()),
            math: MathSpec {
                math: Math::UniqueGroup,
                group_type: Some("company".into()),
                ..MathSpec::default()
            },
            ..Series::default()
        }],
        interval: Some(Interval::Day),
        date_from: "2024-01-01".into(),
        date_to: "2024-01-07".into(),
        breakdown: Some(Breakdown::group_property("company", "plan", 25)),
        ..TrendsQuery::default()
    };
    let plan = engine
        .explain_trends(f.project, &q, 0)
        .await
        .expect("explain");
    assert!(plan.contains("DataSourceExec"), "{plan}");
    check(&f, "unique_companies_by_their_plan", &plan);
}
