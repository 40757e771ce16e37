//! Capture throughput over loopback: concurrent clients POST `/batch/` bodies of 100 events to
//! an in-process `herd serve` (fsync WAL, default flush settings), against a baseline measured
//! in the same run: the same requests to a bare axum endpoint that only reads the body and
//! answers 200 (the HTTP stack's ceiling on this machine).
//!
//! `cargo bench --bench capture [-- --events N --clients C]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use herd_server::ServeConfig;
use serde_json::json;

/// The same allocator as the `herd` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Batch bodies shaped like posthog-python's: 100 events, each with its own uuid.
fn bodies(token: &str, batches: usize, seed: u128) -> Vec<Bytes> {
    (0..batches)
        .map(|b| {
            let events: Vec<_> = (0..100u128)
                .map(|i| {
                    let n = b as u128 * 100 + i;
                    json!({
                        "event": if n.is_multiple_of(10) { "signed_up" } else { "$pageview" },
                        "distinct_id": format!("user-{}", n % 5000),
                        "uuid": uuid::Uuid::from_u128(seed << 64 | n).to_string(),
                        "timestamp": "2024-03-01T12:00:00+00:00",
                        "properties": {
                            "$lib": "posthog-python", "$lib_version": "7.91.1",
                            "$current_url": format!("https://example.com/page/{}", n % 40),
                            "$browser": "Chrome", "plan": "pro",
                            "$groups": {"company": format!("id:{}", n % 800), "project": (n % 2400) as u64},
                            "$geoip_disable": true, "$is_server": true,
                        },
                    })
                })
                .collect();
            let body = json!({"api_key": token, "batch": events, "historical_migration": false,
                              "sent_at": "2024-03-01T12:00:01+00:00"});
            Bytes::from(body.to_string())
        })
        .collect()
}

async fn drive(url: &str, bodies: Vec<Bytes>, clients: usize) -> Duration {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, queue, url) = (client.clone(), queue.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(body) = queue.lock().expect("lock").pop() else {
                    return;
                };
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    start.elapsed()
}

fn main() {
    let events = arg("--events", 300_000);
    let clients = arg("--clients", 16);
    let batches = events / 100;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Baseline: the HTTP stack alone.
        let app =
            Router::new().route(
                "/batch/",
                post(|body: Bytes| async move {
                    (axum::http::StatusCode::OK, format!("{}", body.len()))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base_url = format!("http://{addr}/batch/");
        drive(&base_url, bodies("phc_x", batches / 10, 1), clients).await; // warm-up
        let base = drive(&base_url, bodies("phc_x", batches, 2), clients).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let server = herd_server::start(ServeConfig {
            data: dir.path().display().to_string(),
            http: "127.0.0.1:0".into(),
            grpc: "127.0.0.1:0".into(),
            ..Default::default()
        })
        .await
        .expect("start herd");
        let token = server
            .created_project
            .clone()
            .expect("default project")
            .token;
        let url = format!("http://{}/batch/", server.http_addr);
        drive(&url, bodies(&token, batches / 10, 3), clients).await; // warm-up
        let herd = drive(&url, bodies(&token, batches, 4), clients).await;
        server.shutdown().await.expect("shutdown");

        let rate = |d: Duration| events as f64 / d.as_secs_f64();
        println!(
            "{}",
            json!({
                "bench": "capture",
                "events": events, "batch": 100, "clients": clients,
                "herd_events_per_s": rate(herd).round(),
                "baseline_http_events_per_s": rate(base).round(),
                "ratio_herd_to_baseline": (rate(herd) / rate(base) * 1000.0).round() / 1000.0,
                "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            })
        );
    });
}
