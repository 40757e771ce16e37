//! herd's hot operators against a plain DataFusion formulation of the same question, measured
//! in the same run on the same data folder (one made by `herd generate`):
//!
//! - funnel (the suite's Q2: 4 ordered steps, 14 days, by company): herd's funnel, whose
//!   operator shards actors over the plan's partitions (`funnel/exec.rs`), against the very
//!   same `herd_funnel` aggregate run through DataFusion's GROUP BY (two-phase hash aggregate);
//! - unique companies per day doing `$pageview`: herd's trends against DataFusion's
//!   `count(DISTINCT $group_0)` grouped by `date_trunc('day', timestamp)`;
//! - the group-property join (the suite's Q4: unique companies per Monday week doing
//!   `$pageview`, by the company's current `plan`): herd's trends, which reduce to distinct
//!   (week, company) before joining the cached groups table, against the plain plan that joins
//!   every event to the groups table, extracts `plan` and counts distinct companies per
//!   (week, plan). Compared as the sorted list of counts.
//!
//! Both sides check they give the same answer. Prints median seconds of `--runs` after a
//! warm-up and the ratio herd / DataFusion.
//!
//! `cargo bench --bench operators -- --data DIR [--runs 5] [--threads 2]`
//! (the folder's write-ahead log is opened, so no `herd serve` may run on it meanwhile).

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type, UInt32Type};
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::count_distinct;
use datafusion::logical_expr::JoinType;
use datafusion::logical_expr::{cast, lit, when};
use datafusion::prelude::{DataFrame, col, date_trunc};
use herd_query::filters::property_expr;
use herd_query::funnel::machine::Params;
use herd_query::funnel::udaf::{FunnelUdaf, Mode};
use herd_query::{
    Breakdown, FunnelQuery, FunnelStep, Interval, Math, MathSpec, Order, PropertySource,
    QueryEngine, Series, TrendsQuery, WeekStart, Window, WindowUnit,
};
use herd_storage::{Db, DbConfig, Storage};

/// The same allocator as the `herd` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STEPS: [&str; 4] = ["$pageview", "signed_up", "created_project", "upgraded_plan"];
const DAY_US: i64 = 86_400_000_000;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn median<T, F>(runs: usize, mut f: F) -> (f64, T)
where
    F: FnMut() -> T,
{
    let first = f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let _ = f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], first)
}

/// Companies reaching each step, herd's funnel.
async fn herd_funnel(engine: &QueryEngine, project: u64) -> Vec<u64> {
    let q = FunnelQuery {
        steps: STEPS
            .iter()
            .map(|e| FunnelStep {
                event: Some((*e).to_string()),
                ..FunnelStep::default()
            })
            .collect(),
        window: Some(Window {
            value: 14,
            unit: WindowUnit::Day,
        }),
        aggregation_group_type: Some("company".into()),
        date_from: "1970-01-01".into(),
        date_to: "2999-12-31".into(),
        ..FunnelQuery::default()
    };
    let r = engine.funnel(project, &q, 0).await.expect("funnel");
    r.lines[0].steps.iter().map(|s| s.count).collect()
}

/// Companies reaching each step, the same aggregate through DataFusion's GROUP BY.
async fn datafusion_funnel(engine: &QueryEngine, project: u64) -> Vec<u64> {
    let mut steps = lit(ScalarValue::UInt32(Some(0)));
    for (k, e) in STEPS.iter().enumerate() {
        let bit = when(
            col("event").eq(lit(*e)),
            lit(ScalarValue::UInt32(Some(1 << k))),
        )
        .otherwise(lit(ScalarValue::UInt32(Some(0))))
        .expect("case");
        steps = datafusion::logical_expr::binary_expr(
            steps,
            datafusion::logical_expr::Operator::BitwiseOr,
            bit,
        );
    }
    let params = Params {
        steps: STEPS.len(),
        order: Order::Ordered,
        window: 14 * DAY_US,
        step_windows: vec![],
        optional: 0,
        attribution: None,
    };
    let agg = FunnelUdaf::expr(
        params,
        Mode::Steps,
        vec![
            cast(col("timestamp"), DataType::Int64),
            steps,
            lit(ScalarValue::UInt32(Some(0))),
            lit(ScalarValue::Utf8(None)),
            lit(0i32),
        ],
    );
    let names = STEPS.iter().map(|e| lit(*e)).collect();
    let batches = engine
        .events(project)
        .await
        .expect("events")
        .filter(
            col("event")
                .in_list(names, false)
                .and(col("$group_0").not_eq(lit(""))),
        )
        .expect("filter")
        .aggregate(vec![col("$group_0")], vec![agg.alias("f")])
        .expect("aggregate")
        .collect()
        .await
        .expect("collect");
    let mut counts = vec![0u64; STEPS.len()];
    for b in &batches {
        let list = b.column(1).as_list::<i32>();
        for row in 0..list.len() {
            let items = list.value(row);
            let items = items.as_struct();
            let bits = items.column(1).as_primitive::<UInt32Type>();
            for i in 0..bits.len() {
                for (k, c) in counts.iter_mut().enumerate() {
                    if bits.value(i) & (1 << k) != 0 {
                        *c += 1;
                    }
                }
            }
        }
    }
    counts
}

/// Unique companies doing `$pageview` per `interval` over the generated range, herd's
/// trends request.
fn companies_doing_pageview(interval: Interval) -> TrendsQuery {
    TrendsQuery {
        series: vec![Series {
            event: Some("$pageview".into()),
            math: MathSpec {
                math: Math::UniqueGroup,
                group_type: Some("company".into()),
                property: None,
            },
            ..Series::default()
        }],
        interval: Some(interval),
        date_from: "2023-12-31".into(),
        date_to: "2024-03-31".into(),
        ..TrendsQuery::default()
    }
}

/// Unique companies per day doing `$pageview` (days with any), herd's trends.
async fn herd_uniques(engine: &QueryEngine, project: u64) -> Vec<u64> {
    let q = companies_doing_pageview(Interval::Day);
    let r = engine.trends(project, &q, 0).await.expect("trends");
    r.results[0]
        .data
        .iter()
        .filter(|v| **v != 0.0)
        .map(|v| *v as u64)
        .collect()
}

/// `$pageview` events that name a company, as a plain DataFrame.
async fn pageviews_with_company(engine: &QueryEngine, project: u64) -> DataFrame {
    engine
        .events(project)
        .await
        .expect("events")
        .filter(
            col("event")
                .eq(lit("$pageview"))
                .and(col("$group_0").not_eq(lit(""))),
        )
        .expect("filter")
}

/// The same with DataFusion's `count(DISTINCT …)` per `date_trunc('day', …)`.
async fn datafusion_uniques(engine: &QueryEngine, project: u64) -> Vec<u64> {
    let batches = pageviews_with_company(engine, project)
        .await
        .aggregate(
            vec![date_trunc(lit("day"), col("timestamp")).alias("day")],
            vec![count_distinct(col("$group_0")).alias("n")],
        )
        .expect("aggregate")
        .sort(vec![col("day").sort(true, false)])
        .expect("sort")
        .collect()
        .await
        .expect("collect");
    batches
        .iter()
        .flat_map(|b| {
            let n = b.column(1).as_primitive::<Int64Type>();
            (0..n.len()).map(|i| n.value(i) as u64).collect::<Vec<_>>()
        })
        .collect()
}

/// Unique companies per Monday week doing `$pageview` by current `plan` (the suite's Q4),
/// herd's trends: the nonzero counts, sorted.
async fn herd_by_plan(engine: &QueryEngine, project: u64) -> Vec<u64> {
    let q = TrendsQuery {
        week_start: WeekStart::Monday,
        breakdown: Some(Breakdown::group_property("company", "plan", 1000)),
        ..companies_doing_pageview(Interval::Week)
    };
    let r = engine.trends(project, &q, 0).await.expect("trends");
    let mut counts: Vec<u64> = r
        .results
        .iter()
        .flat_map(|s| s.data.iter().filter(|v| **v != 0.0).map(|v| *v as u64))
        .collect();
    counts.sort_unstable();
    counts
}

/// The same as a plain plan: every `$pageview` joined to the groups table, `plan` extracted,
/// `count(DISTINCT $group_0)` per (`date_trunc('week', …)`, plan).
async fn datafusion_by_plan(engine: &QueryEngine, project: u64) -> Vec<u64> {
    let mapping = engine.db().group_types(project).await.expect("project");
    let plan = property_expr(
        &mapping,
        "breakdown",
        &PropertySource::Group("company".into()),
        "plan",
    )
    .expect("plan");
    let groups = engine.groups_table(project, 0).await.expect("groups");
    let groups = engine.context().read_table(groups).expect("groups table");
    let batches = pageviews_with_company(engine, project)
        .await
        .join(groups, JoinType::Left, &["$group_0"], &["__g0_key"], None)
        .expect("join")
        .aggregate(
            vec![
                date_trunc(lit("week"), col("timestamp")).alias("week"),
                plan.alias("plan"),
            ],
            vec![count_distinct(col("$group_0")).alias("n")],
        )
        .expect("aggregate")
        .collect()
        .await
        .expect("collect");
    let mut counts: Vec<u64> = batches
        .iter()
        .flat_map(|b| {
            let n = b.column(2).as_primitive::<Int64Type>();
            (0..n.len()).map(|i| n.value(i) as u64).collect::<Vec<_>>()
        })
        .collect();
    counts.sort_unstable();
    counts
}

/// Times both sides, checks they agree, prints the row.
fn compare(
    runs: usize,
    name: &str,
    herd: impl FnMut() -> Vec<u64>,
    plain: impl FnMut() -> Vec<u64>,
) {
    let (h, ha) = median(runs, herd);
    let (d, da) = median(runs, plain);
    assert_eq!(ha, da, "{name}: answers differ");
    println!("{name:<28} {h:>10.3} {d:>14.3} {:>8.2}", h / d);
}

fn main() {
    let Some(data) = arg("--data") else {
        eprintln!("usage: cargo bench --bench operators -- --data DIR [--runs N] [--threads T]");
        return;
    };
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(5);
    let threads: usize = arg("--threads").and_then(|v| v.parse().ok()).unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let storage = Storage::open(&data).expect("storage");
        let wal = storage.local_root().expect("a local folder").join("wal");
        let db = Db::open(storage, DbConfig::new(wal)).await.expect("open");
        let project = db.projects().first().expect("a project").id;
        let engine = QueryEngine::with_partitions(Arc::clone(&db), Some(threads)).expect("engine");
        let handle = tokio::runtime::Handle::current();
        let block = |f: std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u64>> + '_>>| {
            tokio::task::block_in_place(|| handle.block_on(f))
        };
        println!(
            "{:<28} {:>10} {:>14} {:>8}",
            "operator", "herd s", "DataFusion s", "ratio"
        );
        compare(
            runs,
            "funnel Q2 by company",
            || block(Box::pin(herd_funnel(&engine, project))),
            || block(Box::pin(datafusion_funnel(&engine, project))),
        );
        compare(
            runs,
            "unique companies per day",
            || block(Box::pin(herd_uniques(&engine, project))),
            || block(Box::pin(datafusion_uniques(&engine, project))),
        );
        compare(
            runs,
            "companies per week by plan",
            || block(Box::pin(herd_by_plan(&engine, project))),
            || block(Box::pin(datafusion_by_plan(&engine, project))),
        );
        db.close().await.expect("close");
    });
}
