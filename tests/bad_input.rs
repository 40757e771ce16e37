//! Bad input gets the documented status and a `detail` naming the problem; the server keeps
//! serving; everything accepted before is intact. Rules that keep the event (a sixth group
//! type) or drop it (a group key over 400 characters) record ingestion warnings.

mod common;

use std::io::Write;

use common::*;
use serde_json::{Value, json};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Value) {
    let r = client.post(url).body(body).send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn batch(events: Value) -> Vec<u8> {
    json!({"api_key": TOKEN, "batch": events})
        .to_string()
        .into_bytes()
}

fn ev(n: u32, extra: Value) -> Value {
    let mut e = json!({
        "event": "signed_up",
        "distinct_id": format!("u{n}"),
        "uuid": format!("00000000-0000-4000-8000-{n:012}"),
        "timestamp": "2024-02-01T10:00:00Z",
        "properties": {"$groups": {"company": "acme"}},
    });
    if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            e.insert(k.clone(), v.clone());
        }
    }
    e
}

#[tokio::test]
async fn bad_requests_are_refused_clearly_and_nothing_accepted_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = create_project(dir.path())["id"].as_u64().expect("id");
    let server = Server::start(dir.path(), &["--flush-interval-ms", "100"]);
    let client = reqwest::Client::new();
    let url = server.url("/batch/");

    let good: Vec<Value> = (1..=5).map(|n| ev(n, json!({}))).collect();
    let (status, body) = post(&client, &url, batch(Value::Array(good))).await;
    assert_eq!((status, body), (200, json!({"status": 1})));

    let valid = batch(json!([ev(90, json!({}))]));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"api_key\": ".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "truncated gzip",
            gzip(&valid)[..40].to_vec(),
            400,
            "not valid gzip",
        ),
        (
            "missing event name",
            batch(json!([{"distinct_id": "u", "properties": {}}])),
            400,
            "event 0: missing event name",
        ),
        (
            "missing distinct_id",
            batch(json!([ev(91, json!({})), {"event": "a"}])),
            400,
            "event 1: missing distinct_id",
        ),
        (
            "invalid uuid",
            batch(json!([ev(92, json!({"uuid": "not-a-uuid"}))])),
            400,
            "invalid uuid \"not-a-uuid\"",
        ),
        (
            "wrong token",
            json!({"api_key": "phc_wrong", "batch": [ev(93, json!({}))]})
                .to_string()
                .into_bytes(),
            401,
            "no project has this token",
        ),
        (
            "no token",
            json!({"batch": [ev(94, json!({}))]})
                .to_string()
                .into_bytes(),
            401,
            "no api key",
        ),
        (
            "personal key",
            json!({"api_key": "phx_personal", "batch": [ev(95, json!({}))]})
                .to_string()
                .into_bytes(),
            401,
            "personal API key",
        ),
        (
            "$groups not an object",
            batch(json!([ev(96, json!({"properties": {"$groups": "acme"}}))])),
            400,
            "properties.$groups must be an object",
        ),
        (
            "oversize event",
            batch(json!([ev(
                97,
                json!({"properties": {"blob": "x".repeat(1_000_001)}})
            )])),
            413,
            "event limit",
        ),
        (
            "oversize body",
            vec![b' '; 21 << 20],
            413,
            "maximum event size exceeded",
        ),
        ("empty batch", batch(json!([])), 400, "batch is empty"),
    ];
    for (name, body, want_status, want_detail) in cases {
        let (status, resp) = post(&client, &url, body).await;
        assert_eq!(status, want_status, "{name}: {resp}");
        let detail = resp["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(want_detail),
            "{name}: detail {detail:?} should mention {want_detail:?}"
        );
    }
    // Single-event paths have a 2 MiB limit, and /batch/ takes no GET.
    let (status, resp) = post(&client, &server.url("/e/"), vec![b' '; 3 << 20]).await;
    assert_eq!(status, 413, "{resp}");
    let r = client.get(&url).send().await.expect("send");
    assert_eq!(r.status(), 405);

    // Accepted with warnings: five group types fill the slots; a sixth is dropped from the
    // event; a 401-character key drops that $groupidentify; a non-object $group_set too.
    let mut groups = serde_json::Map::new();
    for t in ["company", "project", "team", "org", "workspace", "sixth"] {
        groups.insert(t.into(), json!(format!("{t}-1")));
    }
    let long_key = "k".repeat(401);
    let accepted_with_warnings = batch(json!([
        ev(100, json!({"properties": {"$groups": groups}})),
        ev(
            101,
            json!({"event": "$groupidentify", "properties": {"$group_type": "company", "$group_key": long_key, "$group_set": {"a": 1}}})
        ),
        ev(
            102,
            json!({"event": "$groupidentify", "properties": {"$group_type": "company", "$group_key": "acme", "$group_set": "nope"}})
        ),
        ev(
            103,
            json!({"event": "$groupidentify", "properties": {"$group_type": "company", "$group_key": "acme", "$group_set": {"plan": "pro"}}})
        ),
    ]));
    let (status, body) = post(&client, &url, accepted_with_warnings).await;
    assert_eq!((status, body), (200, json!({"status": 1})));

    // Legacy paths: a single event with its own token, and GET ?data= with base64.
    let single = json!(ev(104, json!({"token": TOKEN}))).to_string();
    let (status, _) = post(&client, &server.url("/capture"), single.into_bytes()).await;
    assert_eq!(status, 200);
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .encode(json!([ev(105, json!({"token": TOKEN}))]).to_string());
    let r = client
        .get(server.url("/e/"))
        .query(&[("data", data), ("compression", "base64".to_string())])
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);

    // Still serving after all of that.
    let r = client
        .get(server.url("/_health"))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), 200);
    server.terminate();

    let events = read_events(dir.path(), id).await;
    let mut ids: Vec<String> = events.iter().map(|e| e.distinct_id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["u1", "u100", "u103", "u104", "u105", "u2", "u3", "u4", "u5"],
        "the good events, and only them"
    );
    let sixth = events
        .iter()
        .find(|e| e.distinct_id == "u100")
        .expect("u100");
    assert_eq!(
        sixth.groups,
        ["company-1", "project-1", "team-1", "org-1", "workspace-1"].map(String::from),
        "five slots filled, the sixth type dropped"
    );
    assert_eq!(
        props(sixth)["$groups"]["sixth"],
        "sixth-1",
        "the raw $groups is kept"
    );
    assert_eq!(
        read_group_types(dir.path(), id)
            .as_object()
            .map(|o| o.len()),
        Some(5)
    );

    let mut kinds: Vec<String> = read_warnings(dir.path(), id)
        .await
        .into_iter()
        .map(|w| w.kind)
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "group_key_too_long",
            "group_type_limit_reached",
            "invalid_group_set"
        ]
    );
    let groups = read_groups(dir.path(), id).await;
    assert_eq!(
        groups.len(),
        1,
        "only the valid $groupidentify wrote a group"
    );
    assert_eq!(groups[0].group_key, "acme");
    assert_eq!(groups[0].group_properties, r#"{"plan":"pro"}"#);
}
