//! Insights over a real socket against `herd serve`: events captured over HTTP are visible to
//! Trends at once (from the write buffer); a Python `grpcio` client with stubs generated from
//! `proto/` at test time checks Trends, ListGroups and reflection; bad requests get the right
//! status and a message naming the field, and the server keeps serving.

mod common;

use std::time::Duration;

use common::*;
use herd_server::grpc::proto;
use proto::groups_service_client::GroupsServiceClient;
use proto::insights_service_client::InsightsServiceClient;
use tonic::Code;

/// Spec §8 example A as `signed_up` events with company groups, plus the groups' properties.
async fn capture_example_a(server: &Server) {
    let ev = |ts: &str, who: &str, company: Option<&str>| {
        let mut props = serde_json::json!({});
        if let Some(c) = company {
            props["$groups"] = serde_json::json!({ "company": c });
        }
        serde_json::json!({"event": "signed_up", "distinct_id": who, "timestamp": ts, "properties": props})
    };
    let identify = |ts: &str, key: &str, plan: &str| {
        serde_json::json!({"event": "$groupidentify", "distinct_id": format!("$company_{key}"), "timestamp": ts,
            "properties": {"$group_type": "company", "$group_key": key, "$group_set": {"plan": plan}}})
    };
    let batch = serde_json::json!({"api_key": TOKEN, "batch": [
        ev("2024-01-01T10:00:00Z", "u1", Some("acme")),
        ev("2024-01-01T11:00:00Z", "u2", Some("acme")),
        ev("2024-01-01T12:00:00Z", "u3", None),
        ev("2024-01-02T09:00:00Z", "u1", Some("globex")),
        ev("2024-01-02T23:30:00Z", "u4", Some("acme")),
        ev("2024-01-03T00:10:00Z", "u4", Some("acme")),
        identify("2024-01-01T09:00:00Z", "acme", "pro"),
        identify("2024-01-02T09:00:00Z", "acme", "enterprise"),
        identify("2024-01-01T09:00:00Z", "globex", "free"),
    ]});
    let r = reqwest::Client::new()
        .post(server.url("/batch/"))
        .json(&batch)
        .send()
        .await
        .expect("capture");
    assert_eq!(r.status(), 200);
}

/// Runs a Python grpcio client from `tests/clients/` (stubs generated from `proto/` into a
/// temporary folder) against `server`; the JSON document it prints.
fn python_grpc_client(script: &str, server: &Server) -> serde_json::Value {
    let out = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(python())
        .arg(repo().join("tests/clients").join(script))
        .arg(repo().join("proto"))
        .arg(out.path())
        .arg(&server.grpc)
        .arg(SECRET)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python client {script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json")
}

/// `herd query ARGS` against the server at `url`; its standard output.
fn herd_query(url: &str, args: &[&str]) -> String {
    let out = herd()
        .args(["query"])
        .args(args)
        .args(["--server", url, "--key", SECRET])
        .output()
        .expect("run herd query");
    assert!(
        out.status.success(),
        "herd query {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn unique_companies_per_day() -> proto::TrendsRequest {
    proto::TrendsRequest {
        series: vec![proto::Series {
            event: "signed_up".into(),
            math: proto::Math::UniqueGroup as i32,
            math_group_type: "company".into(),
            ..Default::default()
        }],
        interval: proto::Interval::Day as i32,
        date_from: "2024-01-01".into(),
        date_to: "2024-01-03".into(),
        timezone: "UTC".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn trends_groups_and_reflection_from_python_grpcio() {
    let dir = tempfile::tempdir().expect("tempdir");
    create_project(dir.path());
    // A long flush interval: the answers below come from the write buffer.
    let server = Server::start(dir.path(), &["--flush-interval-ms", "600000"]);
    capture_example_a(&server).await;

    // Acknowledged → visible: query right after the 200.
    let url = format!("http://{}", server.grpc);
    let mut insights = InsightsServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let r = insights
        .trends(with_key(unique_companies_per_day(), SECRET))
        .await
        .expect("trends")
        .into_inner();
    assert_eq!(r.labels, ["2024-01-01", "2024-01-02", "2024-01-03"]);
    assert_eq!(r.results[0].data, [1.0, 2.0, 1.0]);

    let got = python_grpc_client("grpc_insights.py", &server);
    assert_eq!(
        got["daily"],
        serde_json::json!({"labels": ["2024-01-01", "2024-01-02", "2024-01-03"], "data": [1.0, 2.0, 1.0]})
    );
    assert_eq!(
        got["by_plan"],
        serde_json::json!([
            ["enterprise", [2.0, 1.0, 1.0]],
            ["free", [0.0, 1.0, 0.0]],
            ["$$_posthog_breakdown_null_$$", [1.0, 0.0, 0.0]]
        ])
    );
    assert_eq!(got["total"], 2.0);
    assert_eq!(got["bad"][0], "INVALID_ARGUMENT");
    let message = got["bad"][1].as_str().expect("message");
    assert!(
        message.starts_with("series[0].math_group_type") && message.contains("planet"),
        "{message}"
    );
    assert_eq!(
        got["groups"],
        serde_json::json!([["acme", {"plan": "enterprise"}], ["globex", {"plan": "free"}]])
    );
    assert_eq!(got["next_cursor"], "acme");
    let services: Vec<&str> = got["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for s in [
        "herd.v1.InsightsService",
        "herd.v1.GroupsService",
        "herd.v1.ServerInfoService",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&s), "{s} not in {services:?}");
    }

    // Related actors of acme: its users and no other group types.
    let mut groups = GroupsServiceClient::connect(url).await.expect("connect");
    let related = groups
        .related_actors(with_key(
            proto::RelatedActorsRequest {
                group_type: "company".into(),
                key: "acme".into(),
                limit: 0,
            },
            SECRET,
        ))
        .await;
    // The events are from 2024, far more than 90 days ago: nothing is related now.
    let related = related.expect("related").into_inner();
    assert!(related.users.is_empty() && related.groups.is_empty());
}

#[tokio::test]
async fn herd_query_prints_trends_and_groups_as_json_and_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    create_project(dir.path());
    let server = Server::start(dir.path(), &[]);
    capture_example_a(&server).await;
    let url = format!("http://{}", server.grpc);
    let query = |args: &[&str]| herd_query(&url, args);
    let plan = query(&[
        "trends",
        "--event",
        "signed_up",
        "--math",
        "unique_group",
        "--group-type",
        "company",
        "--from",
        "2024-01-01",
        "--to",
        "2024-01-03",
        "--explain",
    ]);
    assert!(
        plan.contains("AggregateExec") && plan.contains("herd_unique"),
        "{plan}"
    );
    let doc: serde_json::Value = serde_json::from_str(&query(&[
        "trends",
        "--event",
        "signed_up",
        "--math",
        "unique_group",
        "--group-type",
        "company",
        "--interval",
        "day",
        "--from",
        "2024-01-01",
        "--to",
        "2024-01-03",
        "--tz",
        "Europe/Berlin",
        "--format",
        "json",
    ]))
    .expect("json");
    assert_eq!(doc["interval"], "day");
    assert_eq!(doc["timezone"], "Europe/Berlin");
    assert_eq!(doc["date_from"], "2023-12-31T23:00:00.000000Z");
    assert_eq!(
        doc["labels"],
        serde_json::json!(["2024-01-01", "2024-01-02", "2024-01-03"])
    );
    // Berlin: 01-02 23:30Z is 01-03 00:30, so acme moves to the third day.
    assert_eq!(
        doc["results"][0]["data"],
        serde_json::json!([1.0, 1.0, 1.0])
    );
    assert_eq!(
        doc["results"][0]["breakdown_value"],
        serde_json::Value::Null
    );

    let table = query(&[
        "trends",
        "--event",
        "signed_up",
        "--from",
        "2024-01-01",
        "--to",
        "2024-01-03",
        "--breakdown",
        "company:plan",
        "--filter",
        "company:plan is_set",
    ]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("signed_up [enterprise]") && lines[0].contains("signed_up [free]"),
        "{table}"
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["2024-01-01", "2", "0"]
    );

    let groups: serde_json::Value = serde_json::from_str(&query(&[
        "groups",
        "--group-type",
        "company",
        "--search",
        "ENTER",
        "--format",
        "json",
    ]))
    .expect("json");
    assert_eq!(groups["groups"][0]["key"], "acme");
    assert_eq!(
        groups["groups"][0]["properties"],
        serde_json::json!({"plan": "enterprise"})
    );
    assert_eq!(groups["groups"].as_array().map(Vec::len), Some(1));

    // A bad request fails with the server's message.
    let out = herd()
        .args([
            "query",
            "trends",
            "--tz",
            "Nowhere/Land",
            "--server",
            &url,
            "--key",
            SECRET,
        ])
        .output()
        .expect("run herd query");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("timezone: unknown IANA timezone"));
}

#[tokio::test]
async fn related_actors_of_a_group_in_the_last_90_days() {
    let dir = tempfile::tempdir().expect("tempdir");
    create_project(dir.path());
    let server = Server::start(dir.path(), &[]);
    let now = chrono::Utc::now();
    let ev = |days_ago: i64, who: &str, groups: serde_json::Value| {
        serde_json::json!({"event": "e", "distinct_id": who,
            "timestamp": (now - chrono::Duration::days(days_ago)).to_rfc3339(),
            "properties": {"$groups": groups}})
    };
    let batch = serde_json::json!({"api_key": TOKEN, "batch": [
        ev(1, "u1", serde_json::json!({"company": "acme", "project": "p1"})),
        ev(10, "u2", serde_json::json!({"company": "acme"})),
        ev(100, "u3", serde_json::json!({"company": "acme", "project": "old"})),
        ev(1, "u4", serde_json::json!({"company": "globex", "project": "p2"})),
    ]});
    let r = reqwest::Client::new()
        .post(server.url("/batch/"))
        .json(&batch)
        .send()
        .await
        .expect("capture");
    assert_eq!(r.status(), 200);
    let mut groups = GroupsServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("connect");
    let related = groups
        .related_actors(with_key(
            proto::RelatedActorsRequest {
                group_type: "company".into(),
                key: "acme".into(),
                limit: 0,
            },
            SECRET,
        ))
        .await
        .expect("related")
        .into_inner();
    assert_eq!(related.users, ["u1", "u2"]);
    let g: Vec<(String, String)> = related
        .groups
        .into_iter()
        .map(|g| (g.group_type, g.key))
        .collect();
    assert_eq!(g, [("project".to_string(), "p1".to_string())]);
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    create_project(dir.path());
    let server = Server::start(dir.path(), &[]);
    capture_example_a(&server).await;
    let mut client = InsightsServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("connect");

    let cases: Vec<(&str, proto::TrendsRequest, &str)> = vec![
        (
            "unknown group type",
            {
                let mut r = unique_companies_per_day();
                r.series[0].math_group_type = "planet".into();
                r
            },
            "series[0].math_group_type: unknown group type \"planet\"",
        ),
        (
            "unknown timezone",
            {
                let mut r = unique_companies_per_day();
                r.timezone = "Mars/Olympus_Mons".into();
                r
            },
            "timezone: unknown IANA timezone \"Mars/Olympus_Mons\"",
        ),
        (
            "from > to",
            {
                let mut r = unique_companies_per_day();
                r.date_from = "2024-02-01".into();
                r
            },
            "date_from:",
        ),
        (
            "empty series",
            {
                let mut r = unique_companies_per_day();
                r.series.clear();
                r
            },
            "series: at least one series",
        ),
        (
            "unknown operator",
            {
                let mut r = unique_companies_per_day();
                r.filters = Some(proto::PropertyGroup {
                    filters: vec![proto::PropertyFilter {
                        key: "plan".into(),
                        operator: 99,
                        values: vec!["x".into()],
                        group_type: "company".into(),
                    }],
                    ..Default::default()
                });
                r
            },
            "filters.filters[0].operator: unknown operator 99",
        ),
        (
            "unknown math",
            {
                let mut r = unique_companies_per_day();
                r.series[0].math = 42;
                r
            },
            "series[0].math: unknown math 42",
        ),
        (
            "bad date",
            {
                let mut r = unique_companies_per_day();
                r.date_to = "last tuesday".into();
                r
            },
            "date_to:",
        ),
        (
            "numeric operator with text",
            {
                let mut r = unique_companies_per_day();
                r.filters = Some(proto::PropertyGroup {
                    filters: vec![proto::PropertyFilter {
                        key: "n".into(),
                        operator: proto::Operator::Gt as i32,
                        values: vec!["ten".into()],
                        group_type: String::new(),
                    }],
                    ..Default::default()
                });
                r
            },
            "filters.filters[0].values: \"ten\" is not a number",
        ),
    ];
    for (what, request, expected) in cases {
        let err = client
            .trends(with_key(request, SECRET))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().starts_with(expected),
            "{what}: {:?} does not start with {expected:?}",
            err.message()
        );
    }
    // Wrong and missing keys.
    let err = client
        .trends(with_key(unique_companies_per_day(), "phs_wrong"))
        .await
        .expect_err("wrong key");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .trends(tonic::Request::new(unique_companies_per_day()))
        .await
        .expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated);

    // A deadline that cannot be met ends the call; the server keeps serving.
    let mut r = with_key(unique_companies_per_day(), SECRET);
    r.set_timeout(Duration::from_nanos(1));
    let err = client.trends(r).await.expect_err("deadline");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    let ok = client
        .trends(with_key(unique_companies_per_day(), SECRET))
        .await
        .expect("still serving")
        .into_inner();
    assert_eq!(ok.results[0].data, [1.0, 2.0, 1.0]);
}

/// Spec §8 example B as captured events.
async fn capture_example_b(server: &Server) {
    let ev = |ts: &str, who: &str, event: &str, company: &str| {
        let mut props = serde_json::json!({});
        if !company.is_empty() {
            props["$groups"] = serde_json::json!({ "company": company });
        }
        serde_json::json!({"event": event, "distinct_id": who, "timestamp": ts, "properties": props})
    };
    let batch = serde_json::json!({"api_key": TOKEN, "batch": [
        ev("2024-01-01T10:00:00Z", "u1", "signup", "acme"),
        ev("2024-01-01T12:00:00Z", "u2", "install", "acme"),
        ev("2024-01-03T09:00:00Z", "u3", "purchase", "acme"),
        ev("2024-01-01T08:00:00Z", "u4", "signup", "globex"),
        ev("2024-01-01T09:00:00Z", "u4", "install", "globex"),
        ev("2024-01-01T20:00:00Z", "u5", "purchase", "globex"),
        ev("2024-01-02T10:00:00Z", "u6", "install", "initech"),
        ev("2024-01-01T07:00:00Z", "u7", "signup", ""),
    ]});
    let r = reqwest::Client::new()
        .post(server.url("/batch/"))
        .json(&batch)
        .send()
        .await
        .expect("capture");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn funnel_and_retention_by_company_from_python_grpcio_and_herd_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    create_project(dir.path());
    let server = Server::start(dir.path(), &[]);
    capture_example_b(&server).await;

    let got = python_grpc_client("grpc_funnels.py", &server);
    assert_eq!(
        got["by_company"],
        serde_json::json!([
            {"name": "signup", "count": 2, "avg": null, "median": null},
            {"name": "install", "count": 2, "avg": 5400.0, "median": 5400.0},
            {"name": "purchase", "count": 1, "avg": 39600.0, "median": 39600.0},
        ])
    );
    assert_eq!(got["by_person"], serde_json::json!([3, 1, 0]));
    // acme and globex enter on 01-01 and both install within the day.
    assert_eq!(
        got["trends"],
        serde_json::json!([["2024-01-01", 2, 2, 100.0], ["2024-01-02", 0, 0, 0.0]])
    );
    // acme is active on 01-01 and 01-03, globex on 01-01, initech on 01-02.
    assert_eq!(
        got["retention"],
        serde_json::json!([
            ["2024-01-01", [2, 0, 1]],
            ["2024-01-02", [1, 0, 0]],
            ["2024-01-03", [1, 0, 0]]
        ])
    );
    let bad = &got["bad"];
    assert_eq!(bad[0][0], "INVALID_ARGUMENT");
    assert!(
        bad[0][1].as_str().expect("message").starts_with("steps: "),
        "{bad}"
    );
    assert_eq!(bad[1][0], "INVALID_ARGUMENT");
    assert!(
        bad[1][1]
            .as_str()
            .expect("message")
            .starts_with("exclusions[0]: "),
        "{bad}"
    );

    // The same funnel from the command line.
    let url = format!("http://{}", server.grpc);
    let run = |args: &[&str]| herd_query(&url, args);
    let doc: serde_json::Value = serde_json::from_str(&run(&[
        "funnel",
        "--step",
        "signup",
        "--step",
        "install",
        "--step",
        "purchase",
        "--window",
        "1",
        "--group-type",
        "company",
        "--from",
        "2024-01-01",
        "--to",
        "2024-01-07",
        "--format",
        "json",
    ]))
    .expect("json");
    let counts: Vec<u64> = doc["lines"][0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["count"].as_u64().expect("count"))
        .collect();
    assert_eq!(counts, [2, 2, 1]);
    // Its plan (EXPLAIN): one plan from the scan to the funnel operator, partitioned on the
    // company.
    let plan = run(&[
        "funnel",
        "--step",
        "signup",
        "--step",
        "install",
        "--step",
        "purchase",
        "--group-type",
        "company",
        "--from",
        "2024-01-01",
        "--to",
        "2024-01-07",
        "--explain",
    ]);
    println!("herd query funnel --explain:\n{plan}");
    let first = plan.lines().next().unwrap_or_default();
    assert!(first.starts_with("FunnelFoldExec: stage=Final"), "{plan}");
    assert!(plan.contains("FunnelExec: steps=3"), "{plan}");
    assert!(plan.contains("as __actor"), "{plan}");
    assert!(
        plan.contains("$group_0"),
        "actors are the companies: {plan}"
    );
    let table = run(&[
        "retention",
        "--period",
        "day",
        "--periods",
        "3",
        "--group-type",
        "company",
        "--to",
        "2024-01-03",
    ]);
    let first: Vec<&str> = table
        .lines()
        .nth(1)
        .expect("first cohort")
        .split_whitespace()
        .collect();
    assert_eq!(first, ["2024-01-01", "2", "0", "1"]);
}
