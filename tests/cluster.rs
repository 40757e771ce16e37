//! Insights on a cluster of real processes: `herd serve --workers` and two `herd worker`s on
//! 127.0.0.1 that share nothing but an S3 bucket (moto's S3 server, from the test
//! virtualenv). Every insight type answers exactly as the same server does in process (its
//! workers gone), events still in the write buffer included; `EXPLAIN` shows the stages; a
//! worker killed under a query gives UNAVAILABLE or the right answer, the next query runs on
//! the worker left, and a worker started later joins.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use herd_server::grpc::proto;
use proto::insights_service_client::InsightsServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const BUCKET: &str = "herd-cluster";
const CLUSTER_SECRET: &str = "phs_cluster_test_secret";
const CLUSTER_TOKEN: &str = "phc_cluster_test_token";

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }

    fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's S3 server on an ephemeral port, with the bucket created.
struct S3 {
    _server: Proc,
    endpoint: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl S3 {
    async fn start() -> S3 {
        let port = free_port();
        let moto = python().with_file_name("moto_server");
        let child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} (scripts/test installs it): {e}", moto.display()));
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.put(format!("{endpoint}/{BUCKET}")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "moto did not answer within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        S3 {
            _server: Proc(child),
            endpoint,
        }
    }

    /// A `herd` command configured for this S3 server.
    fn herd(&self) -> Command {
        let mut c = herd();
        c.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("HERD_LOG", "warn");
        c
    }

    fn data(&self) -> String {
        format!("s3://{BUCKET}/data")
    }
}

/// Starts `cmd` and returns it with the `listening` object it prints once bound.
fn start_listening(mut cmd: Command) -> (Proc, serde_json::Value) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn herd");
    let stdout = child.stdout.take().expect("stdout");
    let child = Proc(child);
    (child, listening(stdout).0)
}

fn start_worker(s3: &S3, listen: &str) -> (Proc, String) {
    let mut cmd = s3.herd();
    cmd.args([
        "worker",
        "--data",
        &s3.data(),
        "--listen",
        listen,
        "--partitions",
        "2",
    ]);
    cmd.env("HERD_CLUSTER_SECRET", CLUSTER_SECRET);
    let (child, l) = start_listening(cmd);
    let addr = l["worker"].as_str().expect("worker addr").to_string();
    (child, addr)
}

fn run_ok(mut cmd: Command, what: &str) {
    let out = cmd.output().expect(what);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn step(e: &str) -> proto::FunnelStep {
    proto::FunnelStep {
        event: e.into(),
        ..Default::default()
    }
}

fn by_plan() -> Option<proto::Breakdown> {
    Some(proto::Breakdown {
        property: "plan".into(),
        group_type: "company".into(),
        ..Default::default()
    })
}

/// One of each insight the suite and the console ask, with group math, group breakdowns,
/// exclusions and each funnel view.
#[derive(Clone)]
enum Ask {
    Trends(proto::TrendsRequest),
    Funnel(proto::FunnelRequest),
    Retention(proto::RetentionRequest),
}

fn asks() -> Vec<(&'static str, Ask)> {
    let trends = |math: proto::Math, breakdown| proto::TrendsRequest {
        series: vec![proto::Series {
            event: "signed_up".into(),
            math: math as i32,
            math_group_type: "company".into(),
            ..Default::default()
        }],
        interval: proto::Interval::Day as i32,
        date_from: "2024-01-01".into(),
        date_to: "2024-03-31".into(),
        timezone: "UTC".into(),
        breakdown,
        ..Default::default()
    };
    let funnel = proto::FunnelRequest {
        steps: vec![
            step("$pageview"),
            step("signed_up"),
            step("created_project"),
        ],
        aggregation_group_type: "company".into(),
        window: Some(proto::ConversionWindow {
            value: 14,
            unit: proto::WindowUnit::Day as i32,
        }),
        exclusions: vec![proto::FunnelExclusion {
            event: "upgraded_plan".into(),
            from_step: 1,
            to_step: 2,
            ..Default::default()
        }],
        date_from: "2024-01-01".into(),
        date_to: "2024-03-31".into(),
        timezone: "UTC".into(),
        interval: proto::Interval::Week as i32,
        ..Default::default()
    };
    let entity = |e: &str| proto::RetentionEntity {
        event: e.into(),
        ..Default::default()
    };
    let retention = proto::RetentionRequest {
        target: Some(entity("signed_up")),
        returning: Some(entity("$pageview")),
        period: proto::Interval::Week as i32,
        periods: 8,
        aggregation_group_type: "company".into(),
        date_to: "2024-03-31".into(),
        timezone: "UTC".into(),
        ..Default::default()
    };
    vec![
        (
            "trends: unique companies by plan",
            Ask::Trends(trends(proto::Math::UniqueGroup, by_plan())),
        ),
        (
            "trends: weekly active users",
            Ask::Trends(trends(proto::Math::WeeklyActive, None)),
        ),
        (
            "funnel: by company, an exclusion",
            Ask::Funnel(funnel.clone()),
        ),
        (
            "funnel: by company, broken down by plan",
            Ask::Funnel(proto::FunnelRequest {
                breakdown: by_plan(),
                exclusions: vec![],
                ..funnel.clone()
            }),
        ),
        (
            "funnel: trends view",
            Ask::Funnel(proto::FunnelRequest {
                viz: proto::FunnelViz::Trends as i32,
                ..funnel.clone()
            }),
        ),
        (
            "funnel: time to convert",
            Ask::Funnel(proto::FunnelRequest {
                viz: proto::FunnelViz::TimeToConvert as i32,
                ..funnel
            }),
        ),
        (
            "retention: companies by week",
            Ask::Retention(retention.clone()),
        ),
        (
            "retention: first time, by plan",
            Ask::Retention(proto::RetentionRequest {
                retention_type: proto::RetentionType::FirstTime as i32,
                breakdown: by_plan(),
                ..retention
            }),
        ),
    ]
}

/// The answer to `ask` as text (its plan cleared), the plan (with `explain`), and how many
/// actors or events the answer counts in all (0: it found nothing).
async fn answer(
    client: &mut InsightsServiceClient<Channel>,
    ask: &Ask,
    explain: bool,
) -> Result<(String, String), tonic::Status> {
    answer_counted(client, ask, explain)
        .await
        .map(|(a, p, _)| (a, p))
}

async fn answer_counted(
    client: &mut InsightsServiceClient<Channel>,
    ask: &Ask,
    explain: bool,
) -> Result<(String, String, f64), tonic::Status> {
    fn done<A: std::fmt::Debug>(
        mut a: A,
        plan: fn(&mut A) -> &mut String,
        n: f64,
    ) -> (String, String, f64) {
        let plan = std::mem::take(plan(&mut a));
        (format!("{a:?}"), plan, n)
    }
    Ok(match ask.clone() {
        Ask::Trends(r) => {
            let r = proto::TrendsRequest { explain, ..r };
            let a = client
                .trends(with_key(r, CLUSTER_SECRET))
                .await?
                .into_inner();
            let n = a.results.iter().flat_map(|l| &l.data).sum();
            done(a, |a| &mut a.plan, n)
        }
        Ask::Funnel(r) => {
            let r = proto::FunnelRequest { explain, ..r };
            let a = client
                .funnel(with_key(r, CLUSTER_SECRET))
                .await?
                .into_inner();
            let steps = a.lines.iter().flat_map(|l| &l.steps).map(|s| s.count);
            let trends = a
                .trends
                .iter()
                .flat_map(|l| &l.data)
                .map(|p| p.reached_from_step_count);
            let bins = a
                .time_to_convert
                .iter()
                .flat_map(|t| &t.bins)
                .map(|b| b.actors);
            let n = steps.chain(trends).chain(bins).sum::<u64>() as f64;
            done(a, |a| &mut a.plan, n)
        }
        Ask::Retention(r) => {
            let r = proto::RetentionRequest { explain, ..r };
            let a = client
                .retention(with_key(r, CLUSTER_SECRET))
                .await?
                .into_inner();
            let n = a.cohorts.iter().flat_map(|c| &c.values).sum::<u64>() as f64;
            done(a, |a| &mut a.plan, n)
        }
    })
}

/// Waits until the server plans `ask` with `tasks` tasks per stage: 0 in process, 1 without
/// a stage of two tasks (the planner may keep a one-worker plan in process), 2 on both.
async fn wait_for_tasks(client: &mut InsightsServiceClient<Channel>, ask: &Ask, tasks: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let plan = answer(client, ask, true)
            .await
            .map(|(_, p)| p)
            .unwrap_or_default();
        let distributed = plan.contains("DistributedExec");
        let want = match tasks {
            0 => !distributed,
            1 => !plan.is_empty() && !plan.contains("tasks=2,"),
            n => distributed && plan.contains(&format!("tasks={n},")),
        };
        if want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the plan never had {tasks} tasks:\n{plan}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insights_on_two_workers_over_s3_equal_the_single_process_answers() {
    let s3 = S3::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut create = s3.herd();
    create.args([
        "project",
        "create",
        "--data",
        &s3.data(),
        "--token",
        CLUSTER_TOKEN,
    ]);
    create.args(["--secret-key", CLUSTER_SECRET]);
    run_ok(create, "herd project create");
    let mut generate = s3.herd();
    generate.args([
        "generate",
        "--data",
        &s3.data(),
        "--events",
        "30000",
        "--seed",
        "11",
    ]);
    generate
        .arg("--wal-dir")
        .arg(tmp.path().join("generate-wal"));
    run_ok(generate, "herd generate");

    let (w1, a1) = start_worker(&s3, "127.0.0.1:0");
    let (w2, a2) = start_worker(&s3, "127.0.0.1:0");
    let mut serve = s3.herd();
    serve.args([
        "serve",
        "--data",
        &s3.data(),
        "--http",
        "127.0.0.1:0",
        "--grpc",
        "127.0.0.1:0",
    ]);
    serve.arg("--wal-dir").arg(tmp.path().join("wal"));
    serve.args(["--workers", &format!("http://{a1},http://{a2}")]);
    serve.env("HERD_CLUSTER_SECRET", CLUSTER_SECRET);
    let (_serve, listening) = start_listening(serve);
    let http = format!("http://{}", listening["http"].as_str().expect("http"));
    let grpc = listening["grpc"].as_str().expect("grpc").to_string();

    // Acknowledged events still in the write buffer count in distributed answers too.
    let batch = serde_json::json!({"api_key": CLUSTER_TOKEN, "batch": (0..20).map(|i| serde_json::json!({
        "event": "signed_up", "distinct_id": format!("late-{i}"), "timestamp": "2024-03-30T12:00:00Z",
        "properties": {"$groups": {"company": format!("late-co-{}", i % 4)}}
    })).collect::<Vec<_>>()});
    let r = reqwest::Client::new()
        .post(format!("{http}/batch/"))
        .json(&batch)
        .send()
        .await
        .expect("capture");
    assert_eq!(r.status(), 200);

    let mut client = InsightsServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let asks = asks();
    let probe = &asks[2].1;
    wait_for_tasks(&mut client, probe, 2).await;
    let (_, plan) = answer(&mut client, probe, true).await.expect("explain");
    println!("distributed EXPLAIN of a funnel by company:\n{plan}");
    assert!(
        plan.contains("NetworkShuffleExec") && plan.contains("EventsScanExec"),
        "{plan}"
    );

    let mut distributed = Vec::new();
    for (name, ask) in &asks {
        let (_, plan) = answer(&mut client, ask, true)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            plan.contains("DistributedExec"),
            "{name} ran in process:\n{plan}"
        );
        let (a, _, counted) = answer_counted(&mut client, ask, false)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(counted > 0.0, "{name} found nothing: {a}");
        distributed.push(a);
    }

    // A worker killed under a query: UNAVAILABLE or the right answer, never anything else.
    let slow = asks[0].1.clone();
    let mut racing = client.clone();
    let query = tokio::spawn(async move { answer(&mut racing, &slow, false).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    w1.kill9();
    match query.await.expect("join") {
        Ok((a, _)) => assert_eq!(a, distributed[0], "answer after a worker died"),
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s}"),
    }
    // The next queries run on the worker left.
    wait_for_tasks(&mut client, probe, 1).await;
    for ((name, ask), want) in asks.iter().zip(&distributed) {
        let (a, _) = answer(&mut client, ask, false)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&a, want, "{name} on one worker");
    }
    // A worker started later (on the first one's address) joins.
    let (w1, _) = start_worker(&s3, &a1);
    wait_for_tasks(&mut client, probe, 2).await;

    // A worker stopped under a query (SIGSTOP: its port still accepts, nothing answers):
    // the right answer or UNAVAILABLE, within the channels' keep-alive; then it is left out.
    let slow = asks[2].1.clone();
    let mut racing = client.clone();
    let query = tokio::spawn(async move { answer(&mut racing, &slow, false).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    w2.signal("-STOP");
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(60), query).await {
        Ok(Ok(Ok((a, _)))) => assert_eq!(a, distributed[2], "answer while a worker was stopped"),
        Ok(Ok(Err(s))) => assert_eq!(s.code(), Code::Unavailable, "{s}"),
        other => panic!("a query with a stopped worker: {other:?}"),
    }
    println!(
        "a query with a stopped worker ended in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    wait_for_tasks(&mut client, probe, 1).await;
    let (a, _) = answer(&mut client, &asks[2].1, false)
        .await
        .expect("funnel");
    assert_eq!(a, distributed[2], "on the worker left");
    w2.signal("-CONT");
    wait_for_tasks(&mut client, probe, 2).await;

    // In process once every worker is gone: the same answers.
    w1.kill9();
    w2.kill9();
    wait_for_tasks(&mut client, probe, 0).await;
    println!("answers equal (distributed on 2 workers = on 1 worker = in process):");
    for ((name, ask), want) in asks.iter().zip(&distributed) {
        let (a, _) = answer(&mut client, ask, false)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            &a, want,
            "{name}: distributed and in-process answers differ"
        );
        println!("  {name}: equal ({} bytes of answer)", a.len());
    }
}
