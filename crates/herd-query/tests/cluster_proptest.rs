//! Property test: random events (some in Parquet files, some still in the write buffer),
//! random group properties and a random insight (trends by unique companies or users,
//! broken down by the company's plan or not; a funnel by company or user with a random
//! order and maybe an exclusion, in a random view; retention by company or user,
//! recurring or first-time) → the answer planned for two workers (real gRPC servers on
//! 127.0.0.1, datafusion-distributed) equals the answer planned in process. The in-process
//! answers themselves are checked against brute-force references in the other proptests.

mod common;

use std::sync::{Arc, OnceLock};

use common::Fixture;
use herd_query::cluster::Workers;
use herd_query::{
    Breakdown, FunnelExclusion, FunnelQuery, FunnelStep, FunnelViz, Interval, Math, MathSpec,
    Order, QueryEngine, RetentionEntity, RetentionQuery, RetentionType, Series, TrendsQuery,
};
use herd_storage::Db;
use proptest::prelude::*;

const NAMES: [&str; 4] = ["signup", "install", "purchase", "uninstall"];

/// One store, two workers reading it and two engines over it, for every case (each case
/// writes its own project).
struct Cluster {
    runtime: tokio::runtime::Runtime,
    db: Arc<Db>,
    local: QueryEngine,
    distributed: QueryEngine,
    _dir: tempfile::TempDir,
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, local, distributed) = runtime.block_on(async {
            let db = Db::open_local(dir.path()).await.expect("db");
            let mut urls = Vec::new();
            for _ in 0..2 {
                let worker = herd_query::cluster::worker(
                    db.storage().object_store(),
                    Some(2),
                    None,
                    Some("proptest".into()),
                )
                .expect("worker");
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(worker.into_worker_server())
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                            listener,
                        )),
                );
                urls.push(url::Url::parse(&format!("http://{addr}")).expect("url"));
            }
            let local = QueryEngine::with_partitions(db.clone(), Some(2)).expect("engine");
            let workers = Workers::new(urls).with_secret(Some("proptest".into()));
            let distributed = QueryEngine::with_cluster(db.clone(), Some(2), None, Some(workers))
                .expect("engine");
            (db, local, distributed)
        });
        Cluster {
            runtime,
            db,
            local,
            distributed,
            _dir: dir,
        }
    })
}

#[derive(Debug, Clone)]
struct Case {
    /// (hours after 2024-01-01, user, company 0 = none, event name)
    events: Vec<(u16, u8, u8, usize)>,
    /// Events before this index are flushed to Parquet; the rest stay in the buffer.
    flush_after: usize,
    /// Per company c1..c4: 0 no group row, 1 free, 2 pro.
    plans: Vec<u8>,
    insight: Insight,
}

#[derive(Debug, Clone)]
enum Insight {
    Trends {
        by_company: bool,
        breakdown: bool,
        interval: Interval,
    },
    Funnel {
        by_company: bool,
        order: Order,
        steps: usize,
        exclusion: bool,
        viz: FunnelViz,
        breakdown: bool,
    },
    Retention {
        by_company: bool,
        first_time: bool,
        breakdown: bool,
    },
}

fn interval() -> impl Strategy<Value = Interval> {
    prop_oneof![
        Just(Interval::Hour),
        Just(Interval::Day),
        Just(Interval::Week)
    ]
}

fn insight() -> impl Strategy<Value = Insight> {
    let order = prop_oneof![
        Just(Order::Ordered),
        Just(Order::Strict),
        Just(Order::Unordered)
    ];
    let viz = prop_oneof![
        Just(FunnelViz::Steps),
        Just(FunnelViz::Trends),
        Just(FunnelViz::TimeToConvert)
    ];
    prop_oneof![
        (any::<bool>(), any::<bool>(), interval()).prop_map(|(by_company, breakdown, interval)| {
            Insight::Trends {
                by_company,
                breakdown,
                interval,
            }
        }),
        (
            any::<bool>(),
            order,
            2usize..4,
            any::<bool>(),
            viz,
            any::<bool>()
        )
            .prop_map(|(by_company, order, steps, exclusion, viz, breakdown)| {
                Insight::Funnel {
                    by_company,
                    // Trends and time to convert need an ordered or strict funnel.
                    order: match (viz, order) {
                        (FunnelViz::Steps, order) => order,
                        (_, Order::Unordered) => Order::Ordered,
                        (_, order) => order,
                    },
                    steps,
                    exclusion,
                    viz,
                    breakdown: breakdown && viz == FunnelViz::Steps,
                }
            }),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(by_company, first_time, breakdown)| Insight::Retention {
                by_company,
                first_time,
                breakdown
            }
        ),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((0u16..(10 * 24), 0u8..8, 0u8..5, 0..NAMES.len()), 1..120),
        0usize..120,
        prop::collection::vec(0u8..3, 4),
        insight(),
    )
        .prop_map(|(events, flush_after, plans, insight)| Case {
            events,
            flush_after,
            plans,
            insight,
        })
}

fn by_plan() -> Option<Breakdown> {
    Some(Breakdown::group_property("company", "plan", 25))
}

/// Both engines' answers to the case's insight, as text.
async fn answers(f: &Fixture, c: &Case) -> [String; 2] {
    let cl = cluster();
    let group = |by_company: bool| by_company.then(|| "company".to_string());
    let mut out = Vec::new();
    for engine in [&cl.local, &cl.distributed] {
        let text = match &c.insight {
            Insight::Trends {
                by_company,
                breakdown,
                interval,
            } => {
                let math = match by_company {
                    true => MathSpec {
                        math: Math::UniqueGroup,
                        group_type: group(true),
                        ..MathSpec::default()
                    },
                    false => MathSpec {
                        math: Math::Dau,
                        ..MathSpec::default()
                    },
                };
                let q = TrendsQuery {
                    series: vec![Series {
                        event: Some("signup".into()),
                        math,
                        ..Series::default()
                    }],
                    interval: Some(*interval),
                    date_from: "2024-01-01".into(),
                    date_to: "2024-01-10".into(),
                    breakdown: if *breakdown { by_plan() } else { None },
                    ..TrendsQuery::default()
                };
                format!(
                    "{:?}",
                    engine.trends(f.project, &q, 0).await.expect("trends")
                )
            }
            Insight::Funnel {
                by_company,
                order,
                steps,
                exclusion,
                viz,
                breakdown,
            } => {
                let q = FunnelQuery {
                    steps: NAMES[..*steps]
                        .iter()
                        .map(|n| FunnelStep {
                            event: Some((*n).into()),
                            ..FunnelStep::default()
                        })
                        .collect(),
                    order: *order,
                    aggregation_group_type: group(*by_company),
                    exclusions: match exclusion {
                        true => vec![FunnelExclusion {
                            event: Some("uninstall".into()),
                            filters: Default::default(),
                            from_step: 0,
                            to_step: *steps - 1,
                        }],
                        false => vec![],
                    },
                    viz: *viz,
                    interval: Some(Interval::Day),
                    breakdown: if *breakdown { by_plan() } else { None },
                    date_from: "2024-01-01".into(),
                    date_to: "2024-01-10".into(),
                    ..FunnelQuery::default()
                };
                format!(
                    "{:?}",
                    engine.funnel(f.project, &q, 0).await.expect("funnel")
                )
            }
            Insight::Retention {
                by_company,
                first_time,
                breakdown,
            } => {
                let entity = |n: &str| RetentionEntity {
                    event: Some(n.into()),
                    ..RetentionEntity::default()
                };
                let q = RetentionQuery {
                    target: entity("signup"),
                    returning: entity("purchase"),
                    period: Some(Interval::Day),
                    periods: 5,
                    retention_type: if *first_time {
                        RetentionType::FirstTime
                    } else {
                        RetentionType::Recurring
                    },
                    aggregation_group_type: group(*by_company),
                    breakdown: if *breakdown { by_plan() } else { None },
                    date_to: "2024-01-10".into(),
                    ..RetentionQuery::default()
                };
                format!(
                    "{:?}",
                    engine.retention(f.project, &q, 0).await.expect("retention")
                )
            }
        };
        out.push(text);
    }
    [out.remove(0), out.remove(0)]
}

fn check(c: Case) {
    let cl = cluster();
    let [local, distributed] = cl.runtime.block_on(async {
        let f = Fixture::in_db(cl.db.clone(), cl.local.clone(), &["company"]).await;
        let ts = |h: u16| {
            (chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").expect("ts")
                + chrono::Duration::minutes(i64::from(h) * 60 + 7))
            .to_rfc3339()
        };
        let rows: Vec<(String, String, String, String)> = c
            .events
            .iter()
            .map(|&(h, u, co, n)| {
                let company = if co == 0 {
                    String::new()
                } else {
                    format!("c{co}")
                };
                (ts(h), format!("u{u}"), NAMES[n].to_string(), company)
            })
            .collect();
        let evs: Vec<common::Ev<'_>> = rows
            .iter()
            .map(|(t, u, n, co)| (t.as_str(), u.as_str(), n.as_str(), [co.as_str(), ""], "{}"))
            .collect();
        let split = c.flush_after.min(evs.len());
        f.events(&evs[..split]).await;
        for (i, p) in c.plans.iter().enumerate() {
            let plan = match p {
                1 => "free",
                2 => "pro",
                _ => continue,
            };
            f.group(
                0,
                &format!("c{}", i + 1),
                serde_json::json!({ "plan": plan }),
            )
            .await;
        }
        f.flush().await;
        f.events(&evs[split..]).await;
        answers(&f, &c).await
    });
    assert_eq!(local, distributed, "{c:?}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn distributed_answers_equal_the_in_process_ones(c in case()) {
        check(c);
    }
}
