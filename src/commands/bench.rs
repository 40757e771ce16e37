//! `herd bench`: the named queries of the benchmark suite (`../shared/bench.md`), run
//! in-process on a data folder after a warm-up, N times each; prints min/median/max seconds,
//! peak RSS and the answer (so a comparison script can check other engines against it).

use std::time::Instant;

use anyhow::{Context, bail};
use herd_query::{
    Breakdown, Display, FunnelQuery, FunnelStep, Interval, Math, MathSpec, QueryEngine, Series,
    TrendsQuery, TrendsResult, WeekStart, Window, WindowUnit,
};
use serde_json::{Value, json};

/// Arguments of `herd bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    store: super::StoreArgs,
    /// Queries to run (Q1 … Q5).
    #[arg(long, value_delimiter = ',', default_value = "Q1,Q2,Q3,Q4,Q5")]
    queries: Vec<String>,
    /// Timed runs per query (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Parallel partitions of the query engine (the other engines are pinned to as many
    /// threads by the comparison script).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// MiB of funnel rows held in memory (all partitions together) before they spill to
    /// disk.
    #[arg(long, default_value_t = herd_query::funnel::DEFAULT_FUNNEL_MEMORY >> 20)]
    funnel_memory_mib: usize,
    /// MiB of the query session's memory pool, shared by its operators (default: unbounded);
    /// the funnel spills when its share is used up.
    #[arg(long)]
    memory_limit_mib: Option<usize>,
    /// Count and group actors by their strings even where every file has actor numbers
    /// (`$distinct_id_num`, `$group_N_num`): to compare the two in one session.
    #[arg(long)]
    by_strings: bool,
    /// Run the queries on these herd workers (`http://host:port`, comma-separated), as
    /// `herd serve --workers` does.
    #[arg(long)]
    workers: Option<String>,
    /// The workers' `--cluster-secret`.
    #[arg(long, env = "HERD_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Print each query's plans with their execution metrics (EXPLAIN ANALYZE; on a
    /// cluster, the stages and the bytes their shuffles moved) to standard error.
    #[arg(long)]
    explain_analyze: bool,
    /// First day of Q1 and Q4 (the generator writes a few `$groupidentify` events just
    /// before its start day).
    #[arg(long, default_value = "2023-12-31")]
    from: String,
    /// Last day of Q1 and Q4.
    #[arg(long, default_value = "2024-03-31")]
    to: String,
    /// Output: a table, or one JSON document.
    #[arg(long, default_value = "table")]
    format: String,
}

fn series(event: Option<&str>, math: Math, group: Option<&str>) -> Series {
    Series {
        event: event.map(str::to_string),
        math: MathSpec {
            math,
            group_type: group.map(str::to_string),
            property: None,
        },
        ..Series::default()
    }
}

/// A named query: a trends or a funnel request.
enum Job {
    Trends(TrendsQuery),
    Funnel(FunnelQuery),
}

/// Q2 / Q3: the 4-step funnel over all events, 14-day window, by company or by user.
fn funnel(group: Option<&str>) -> FunnelQuery {
    FunnelQuery {
        steps: ["$pageview", "signed_up", "created_project", "upgraded_plan"]
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
        aggregation_group_type: group.map(str::to_string),
        // All events (the anchors have no time filter).
        date_from: "1970-01-01".into(),
        date_to: "2999-12-31".into(),
        ..FunnelQuery::default()
    }
}

impl Job {
    async fn run(
        &self,
        engine: &QueryEngine,
        project: u64,
        now: i64,
        name: &str,
    ) -> anyhow::Result<Value> {
        Ok(match self {
            Job::Trends(q) => answer(name, &engine.trends(project, q, now).await?),
            Job::Funnel(q) => {
                let r = engine.funnel(project, q, now).await?;
                json!(r.lines[0].steps.iter().map(|s| s.count).collect::<Vec<_>>())
            }
        })
    }
}

fn job(name: &str, from: &str, to: &str) -> anyhow::Result<Job> {
    Ok(match name {
        "Q2" => Job::Funnel(funnel(Some("company"))),
        "Q3" => Job::Funnel(funnel(None)),
        _ => Job::Trends(request(name, from, to)?),
    })
}

/// The request of a named trends query.
fn request(name: &str, from: &str, to: &str) -> anyhow::Result<TrendsQuery> {
    let base = TrendsQuery {
        date_from: from.into(),
        date_to: to.into(),
        ..TrendsQuery::default()
    };
    Ok(match name {
        // Unique companies per day doing signed_up.
        "Q1" => TrendsQuery {
            series: vec![series(
                Some("signed_up"),
                Math::UniqueGroup,
                Some("company"),
            )],
            interval: Some(Interval::Day),
            ..base
        },
        // Unique companies per (Monday) week doing $pageview, by the company's current plan.
        "Q4" => TrendsQuery {
            series: vec![series(
                Some("$pageview"),
                Math::UniqueGroup,
                Some("company"),
            )],
            interval: Some(Interval::Week),
            week_start: WeekStart::Monday,
            breakdown: Some(Breakdown::group_property("company", "plan", 1000)),
            ..base
        },
        // All events, whatever their time: count and exact unique users.
        "Q5" => TrendsQuery {
            series: vec![
                series(None, Math::Total, None),
                series(None, Math::Dau, None),
            ],
            display: Display::TotalValue,
            interval: Some(Interval::Month),
            date_from: "1970-01-01".into(),
            date_to: "now".into(),
            ..base
        },
        other => bail!("unknown query {other:?} (known: Q1, Q2, Q3, Q4, Q5)"),
    })
}

/// The answer in the comparison script's normal form.
fn answer(name: &str, r: &TrendsResult) -> Value {
    match name {
        "Q5" => json!([r.results[0].aggregated_value, r.results[1].aggregated_value]),
        "Q4" => {
            let mut rows = Vec::new();
            for s in &r.results {
                let plan = match s.breakdown_value.as_deref() {
                    Some(herd_query::trends::BREAKDOWN_NULL) | None => Value::Null,
                    Some(v) => json!(v),
                };
                for (label, v) in r.labels.iter().zip(&s.data) {
                    if *v != 0.0 {
                        rows.push(json!([label, plan, v]));
                    }
                }
            }
            rows.sort_by_key(|row| row.to_string());
            json!(rows)
        }
        _ => json!(
            r.labels
                .iter()
                .zip(&r.results[0].data)
                .filter(|(_, v)| **v != 0.0)
                .map(|(l, v)| json!([l, v]))
                .collect::<Vec<_>>()
        ),
    }
}

/// Peak resident set size of this process (kB), and a reset of it where Linux allows.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs `herd bench`.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (db, project) = args.store.open(1_000_000).await?;
    let workers = match &args.workers {
        Some(list) => {
            let workers = herd_query::cluster::Workers::parse(list)
                .map_err(anyhow::Error::msg)?
                .with_secret(args.cluster_secret.clone());
            let live = workers.probe().await;
            anyhow::ensure!(live > 0, "none of the workers {list} is reachable");
            Some(workers)
        }
        None => None,
    };
    let engine = QueryEngine::with_cluster(
        db.clone(),
        Some(args.threads),
        args.memory_limit_mib.map(|m| m << 20),
        workers,
    )?
    .with_funnel_memory(args.funnel_memory_mib << 20)
    .with_actor_numbers(!args.by_strings);
    let now = chrono::Utc::now().timestamp_micros();
    let mut out = Vec::new();
    for name in &args.queries {
        let q = job(name, &args.from, &args.to)?;
        reset_peak_rss();
        let first = match args.explain_analyze {
            false => q.run(&engine, project, now, name).await,
            true => {
                let run = async {
                    q.run(&engine, project, now, name)
                        .await
                        .map_err(|e| herd_query::Error::Internal(format!("{e:#}")))
                };
                let (answer, plans) = herd_query::analyze(run).await?;
                eprintln!("EXPLAIN ANALYZE {name}:\n{plans}");
                Ok(answer)
            }
        }
        .with_context(|| name.clone())?;
        let mut times = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let t = Instant::now();
            let r = q.run(&engine, project, now, name).await?;
            times.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(r == first, "{name}: answers differ between runs");
        }
        times.sort_by(f64::total_cmp);
        let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
        out.push(json!({
            "query": name,
            "runs": args.runs,
            "min_s": times.first(),
            "median_s": median,
            "max_s": times.last(),
            "peak_rss_mib": peak_rss_kb().map(|k| k as f64 / 1024.0),
            "answer": first,
        }));
    }
    db.close().await?;
    if args.format == "json" {
        println!(
            "{}",
            json!({"engine": "herd", "threads": args.threads, "queries": out})
        );
    } else {
        println!(
            "{:<6} {:>10} {:>10} {:>10} {:>10}",
            "query", "min s", "median s", "max s", "peak MiB"
        );
        for q in &out {
            println!(
                "{:<6} {:>10.3} {:>10.3} {:>10.3} {:>10.0}",
                q["query"].as_str().unwrap_or_default(),
                q["min_s"].as_f64().unwrap_or(0.0),
                q["median_s"].as_f64().unwrap_or(0.0),
                q["max_s"].as_f64().unwrap_or(0.0),
                q["peak_rss_mib"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
