//! The web console against `herd serve` on the committed sample (`data/`): its JSON API gives
//! the gRPC services' answers and errors, and in headless Chromium a person signs in, lists
//! and searches companies, opens one, and runs a trend, a funnel and a retention whose drawn
//! numbers equal the gRPC answers; a wrong key and a refused request show their errors.
//! `HERD_UPDATE_SCREENSHOTS=1` copies the pages' screenshots into `docs/console/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use herd_server::grpc::proto;
use proto::insights_service_client::InsightsServiceClient;
use serde_json::{Value, json};

const SAMPLE_SECRET: &str = "phs_herd_sample_secret_key";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The console's three insights, as the JSON the page puts in its links.
fn queries() -> Value {
    json!({
        "trends": {"series": [{"event": "signed_up", "math": {"math": "unique_group", "group_type": "company"}}],
                   "interval": "week", "date_from": "2024-01-01", "date_to": "2024-03-31", "timezone": "UTC"},
        "funnel": {"steps": [{"event": "$pageview"}, {"event": "signed_up"}, {"event": "created_project"}],
                   "aggregation_group_type": "company", "window": {"value": 14, "unit": "day"},
                   "date_from": "2024-01-01", "date_to": "2024-03-31", "timezone": "UTC"},
        "retention": {"target": {"event": "signed_up"}, "returning": {"event": "$pageview"}, "period": "week",
                      "periods": 8, "aggregation_group_type": "company", "date_to": "2024-03-31", "timezone": "UTC"},
    })
}

/// The answers over gRPC the page must draw.
struct Answers {
    trend: Vec<f64>,
    funnel: Vec<u64>,
    /// (label, entered, converted) per week of a funnel trend.
    funnel_trend: Vec<(String, u64, u64)>,
    /// Bins of the time-to-convert histogram.
    bins: usize,
    retention: Vec<Vec<u64>>,
}

/// The console's insights over gRPC.
async fn grpc_answers(server: &Server) -> Answers {
    let mut insights = InsightsServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("connect");
    let trend = insights
        .trends(with_key(
            proto::TrendsRequest {
                series: vec![proto::Series {
                    event: "signed_up".into(),
                    math: proto::Math::UniqueGroup as i32,
                    math_group_type: "company".into(),
                    ..Default::default()
                }],
                interval: proto::Interval::Week as i32,
                date_from: "2024-01-01".into(),
                date_to: "2024-03-31".into(),
                timezone: "UTC".into(),
                ..Default::default()
            },
            SAMPLE_SECRET,
        ))
        .await
        .expect("trends")
        .into_inner();
    let step = |e: &str| proto::FunnelStep {
        event: e.into(),
        ..Default::default()
    };
    let request = proto::FunnelRequest {
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
        date_from: "2024-01-01".into(),
        date_to: "2024-03-31".into(),
        timezone: "UTC".into(),
        interval: proto::Interval::Week as i32,
        ..Default::default()
    };
    let mut funnels = Vec::new();
    for viz in [
        proto::FunnelViz::Steps,
        proto::FunnelViz::Trends,
        proto::FunnelViz::TimeToConvert,
    ] {
        let request = proto::FunnelRequest {
            viz: viz as i32,
            ..request.clone()
        };
        let r = insights
            .funnel(with_key(request, SAMPLE_SECRET))
            .await
            .expect("funnel")
            .into_inner();
        funnels.push(r);
    }
    let [steps, trend_of_funnel, ttc] = <[_; 3]>::try_from(funnels).expect("three funnels");
    let entity = |e: &str| proto::RetentionEntity {
        event: e.into(),
        ..Default::default()
    };
    let retention = insights
        .retention(with_key(
            proto::RetentionRequest {
                target: Some(entity("signed_up")),
                returning: Some(entity("$pageview")),
                period: proto::Interval::Week as i32,
                periods: 8,
                aggregation_group_type: "company".into(),
                date_to: "2024-03-31".into(),
                timezone: "UTC".into(),
                ..Default::default()
            },
            SAMPLE_SECRET,
        ))
        .await
        .expect("retention")
        .into_inner();
    Answers {
        trend: trend.results[0].data.clone(),
        funnel: steps.lines[0].steps.iter().map(|s| s.count).collect(),
        funnel_trend: trend_of_funnel.trends[0]
            .data
            .iter()
            .map(|p| {
                (
                    p.label.clone(),
                    p.reached_from_step_count,
                    p.reached_to_step_count,
                )
            })
            .collect(),
        bins: ttc.time_to_convert.map_or(0, |t| t.bins.len()),
        retention: retention.cohorts.iter().map(|c| c.values.clone()).collect(),
    }
}

async fn post(server: &Server, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("post");
    (r.status().as_u16(), r.json().await.expect("json"))
}

fn number(text: &str) -> f64 {
    text.replace(',', "")
        .trim_end_matches('%')
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn the_console_shows_the_grpc_answers_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&repo().join("data"), dir.path());
    let server = Server::start(dir.path(), &[]);
    let answers = grpc_answers(&server).await;
    let (trend, funnel, retention) = (&answers.trend, &answers.funnel, &answers.retention);
    let q = queries();

    // The JSON API: the same answers, the same refusals, no public token.
    let (status, r) = post(
        &server,
        "/api/v1/insights/trends",
        SAMPLE_SECRET,
        &q["trends"],
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["results"][0]["data"], json!(trend));
    let (status, r) = post(
        &server,
        "/api/v1/insights/funnel",
        SAMPLE_SECRET,
        &q["funnel"],
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let counts: Vec<u64> = r["lines"][0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["count"].as_u64().expect("count"))
        .collect();
    assert_eq!(&counts, funnel);
    let (status, r) = post(
        &server,
        "/api/v1/insights/retention",
        SAMPLE_SECRET,
        &q["retention"],
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["cohorts"][0]["values"], json!(retention[0]));
    let (status, r) = post(
        &server,
        "/api/v1/insights/trends",
        SAMPLE_SECRET,
        &json!({"series": [{"event": "e", "math": {"math": "unique_group"}}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        r["detail"], "series[0].math_group_type: required for unique_group math",
        "herd-query's own message, as gRPC gives it"
    );
    let (status, r) = post(
        &server,
        "/api/v1/insights/funnel",
        SAMPLE_SECRET,
        &json!({"steps": [{"event": "a"}, {"event": "b"}], "window": {"value": 1, "unit": "fortnight"}}),
    )
    .await;
    assert_eq!(status, 400);
    let detail = r["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with("window.unit: unknown variant `fortnight`"),
        "{detail}"
    );
    for key in ["", "phc_herd_sample_token", "phs_wrong"] {
        let (status, r) = post(&server, "/api/v1/insights/trends", key, &q["trends"]).await;
        assert_eq!(status, 401, "{key:?}: {r}");
    }
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(server.url("/"))
        .send()
        .await
        .expect("get /");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/");

    // The page in Chromium.
    let work = tempfile::tempdir().expect("tempdir");
    let queries_file = work.path().join("queries.json");
    std::fs::write(&queries_file, q.to_string()).expect("write");
    let shots = work.path().join("shots");
    let out = Command::new(python())
        .arg(repo().join("tests/clients/browser_console.py"))
        .args(["--herd", &server.http])
        .args(["--key", SAMPLE_SECRET])
        .arg("--queries")
        .arg(&queries_file)
        .arg("--shots")
        .arg(&shots)
        .output()
        .expect("run the browser");
    assert!(
        out.status.success(),
        "browser_console.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).expect("json");
    eprintln!("console: {page}");

    assert!(
        page["bad_key_error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown secret key")),
        "{page}"
    );
    assert_eq!(page["first_groups"][0], "id:0", "companies listed by key");
    let rows = page["search_rows"].as_array().expect("rows");
    assert!(!rows.is_empty());
    for row in rows {
        assert!(row.to_string().to_lowercase().contains("media"), "{row}");
    }
    assert_eq!(page["group_key"], rows[0][0], "the first match opened");
    assert!(page["group_events"].as_u64().is_some_and(|n| n > 1));

    // The numbers drawn: the trend's row (then its total), the funnel's counts, each cohort.
    let drawn: Vec<f64> = page["trends"][0]
        .as_array()
        .expect("trend row")
        .iter()
        .skip(1)
        .map(|c| number(c.as_str().expect("cell")))
        .collect();
    assert_eq!(&drawn[..trend.len()], &trend[..], "trend cells");
    assert_eq!(drawn[trend.len()], trend.iter().sum::<f64>(), "total");
    let drawn: Vec<u64> = page["funnel"]
        .as_array()
        .expect("funnel rows")
        .iter()
        .map(|r| number(r[2].as_str().expect("count")) as u64)
        .collect();
    assert_eq!(&drawn, funnel, "funnel counts");
    let drawn: Vec<(String, u64, u64)> = page["funnel_trends"]
        .as_array()
        .expect("funnel trend rows")
        .iter()
        .map(|r| {
            let cell = |i: usize| r[i].as_str().expect("cell").to_string();
            (cell(0), number(&cell(1)) as u64, number(&cell(2)) as u64)
        })
        .collect();
    assert_eq!(
        drawn, answers.funnel_trend,
        "funnel trend: entered and converted per week"
    );
    assert_eq!(
        page["time_to_convert_bins"].as_u64(),
        Some(answers.bins as u64),
        "one bar per time-to-convert bin"
    );
    let cohorts = page["retention"].as_array().expect("cohorts");
    assert_eq!(cohorts.len(), retention.len());
    for (row, values) in cohorts.iter().zip(retention) {
        let size = number(row[1].as_str().expect("size")) as u64;
        assert_eq!(size, values[0], "cohort size {row}");
        // Each later period as a percentage of the cohort, to one decimal.
        for (k, v) in values.iter().enumerate().skip(1) {
            let cell = row[k + 1].as_str().expect("cell");
            if cell.is_empty() {
                continue;
            }
            let want = if size == 0 {
                0.0
            } else {
                100.0 * *v as f64 / size as f64
            };
            assert!((number(cell) - want).abs() < 0.051, "{cell} vs {want}");
        }
    }
    assert!(
        page["bad_request_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("interval: unknown variant `fortnight`")),
        "{page}"
    );
    assert_eq!(page["console_errors"], json!([]), "no script errors");
    assert!(page["weight_bytes"].as_u64().is_some_and(|b| b < 200_000));

    if std::env::var_os("HERD_UPDATE_SCREENSHOTS").is_some() {
        let docs = repo().join("docs/console");
        std::fs::create_dir_all(&docs).expect("mkdir docs/console");
        for f in std::fs::read_dir(&shots).expect("shots") {
            let f = f.expect("shot");
            std::fs::copy(f.path(), docs.join(f.file_name())).expect("copy shot");
        }
    }
}
