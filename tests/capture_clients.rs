//! The real PostHog SDKs against `herd serve`: posthog-python (PyPI) and posthog-node (npm)
//! capture with groups, group_identify, set/identify and alias, gzip on and off; then the
//! Parquet files hold exactly the expected rows, groups and group-type mapping.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

#[tokio::test]
async fn posthog_python_and_posthog_node_land_exact_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = create_project(dir.path());
    let id = project["id"].as_u64().expect("id");
    let server = Server::start(dir.path(), &["--flush-interval-ms", "200"]);
    assert!(
        server.printed.is_empty(),
        "no default project on a folder that has one"
    );

    let py = Command::new(python())
        .arg(repo().join("tests/clients/posthog_python.py"))
        .args([&server.http, TOKEN])
        .output()
        .expect("run posthog_python.py");
    assert!(
        py.status.success(),
        "posthog-python: {}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );
    let node_dir = repo().join("tests/clients");
    assert!(
        node_dir.join("node_modules/posthog-node").exists(),
        "posthog-node is not installed: run scripts/test (npm ci in tests/clients)"
    );
    let node = Command::new("node")
        .arg(node_dir.join("posthog_node.js"))
        .args([&server.http, TOKEN])
        .output()
        .expect("run posthog_node.js");
    assert!(
        node.status.success(),
        "posthog-node: {}{}",
        String::from_utf8_lossy(&node.stdout),
        String::from_utf8_lossy(&node.stderr)
    );
    server.terminate();

    let events = read_events(dir.path(), id).await;
    assert_eq!(events.len(), 11, "6 from python, 5 from node: {events:#?}");
    let by_uuid = |n: u32| {
        let u = uuid(n);
        let found: Vec<_> = events.iter().filter(|e| e.uuid.to_string() == u).collect();
        assert_eq!(found.len(), 1, "uuid {u} stored once");
        found[0].clone()
    };
    let empty = String::new;

    // posthog-python, gzip off.
    let e = by_uuid(1);
    assert_eq!(
        (e.event.as_str(), e.distinct_id.as_str()),
        ("signed_up", "py-user")
    );
    assert_eq!(e.timestamp, ts("2024-01-02T03:04:05Z"));
    assert_eq!(
        e.groups,
        ["id:5".to_string(), "42".into(), empty(), empty(), empty()]
    );
    let p = props(&e);
    assert_eq!(p["plan"], "pro");
    assert_eq!(p["$lib"], "posthog-python");
    assert_eq!(p["$groups"], json!({"company": "id:5", "project": 42}));
    assert_eq!(p["$group_0"], "id:5");
    assert_eq!(p["$group_1"], "42");
    let e = by_uuid(2);
    assert_eq!(e.event, "$groupidentify");
    assert_eq!(e.groups, [empty(), empty(), empty(), empty(), empty()]);
    assert_eq!(
        props(&e)["$group_set"],
        json!({"name": "Acme", "employees": 11})
    );
    let e = by_uuid(3);
    assert_eq!(e.event, "$set");
    assert_eq!(props(&e)["$set"], json!({"email": "a@b.c"}));
    let e = by_uuid(4);
    assert_eq!(
        (e.event.as_str(), e.distinct_id.as_str()),
        ("$create_alias", "anon-1")
    );
    assert_eq!(props(&e)["alias"], "py-user");
    // posthog-python, gzip on.
    let e = by_uuid(5);
    assert_eq!(e.event, "created_project");
    assert_eq!(
        e.groups,
        ["id:5".to_string(), empty(), empty(), empty(), empty()]
    );
    assert_eq!(by_uuid(6).event, "$groupidentify");

    // posthog-node, compression on.
    let e = by_uuid(11);
    assert_eq!(
        (e.event.as_str(), e.distinct_id.as_str()),
        ("invited_teammate", "node-user")
    );
    assert_eq!(e.timestamp, ts("2024-01-04T00:00:00Z"));
    assert_eq!(
        e.groups,
        ["id:5".to_string(), "42".into(), empty(), empty(), empty()]
    );
    assert_eq!(props(&e)["$lib"], "posthog-node");
    let node_identify: Vec<_> = events
        .iter()
        .filter(|e| e.event == "$groupidentify" && e.distinct_id == "$company_id:5")
        .collect();
    assert_eq!(
        node_identify.len(),
        1,
        "node's $groupidentify uses $<type>_<key> as distinct_id"
    );
    let identify: Vec<_> = events.iter().filter(|e| e.event == "$identify").collect();
    assert_eq!(identify.len(), 1);
    assert_eq!(props(identify[0])["$set"]["email"], "n@b.c");
    // posthog-node, compression off: a third group type takes slot 2.
    let e = by_uuid(12);
    assert_eq!(e.event, "upgraded_plan");
    assert_eq!(
        e.groups,
        [empty(), empty(), "core".to_string(), empty(), empty()]
    );
    let alias: Vec<_> = events
        .iter()
        .filter(|e| e.event == "$create_alias" && e.distinct_id == "node-user")
        .collect();
    assert_eq!(alias.len(), 1);
    assert_eq!(props(alias[0])["alias"], "anon-2");
    for e in &events {
        for g in &e.groups {
            assert!(
                !g.contains('"'),
                "group keys are stored without JSON quotes"
            );
        }
    }

    assert_eq!(
        read_group_types(dir.path(), id),
        json!({"company": 0, "project": 1, "team": 2})
    );

    // Groups table: every change is a row with the full merged properties.
    let mut groups = read_groups(dir.path(), id).await;
    groups.sort_by(|a, b| {
        (a.group_type_index, &a.group_key, a.version).cmp(&(
            b.group_type_index,
            &b.group_key,
            b.version,
        ))
    });
    let summary: Vec<_> = groups
        .iter()
        .map(|g| {
            let p: serde_json::Value = serde_json::from_str(&g.group_properties).expect("json");
            (g.group_type_index, g.group_key.clone(), g.version, p)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                0,
                "id:5".to_string(),
                1,
                json!({"name": "Acme", "employees": 11})
            ),
            (
                0,
                "id:5".to_string(),
                2,
                json!({"name": "Acme", "employees": 11, "plan": "enterprise"})
            ),
            (1, "42".to_string(), 1, json!({"name": "Website"})),
        ]
    );
    // created_at is the earliest event timestamp seen for the group.
    assert_eq!(groups[0].created_at, ts("2024-01-02T03:00:00Z"));
    assert_eq!(groups[1].created_at, ts("2024-01-02T03:00:00Z"));
    assert_eq!(groups[2].created_at, ts("2024-01-03T00:00:01Z"));
    assert!(groups[1].updated_at >= groups[0].updated_at);
}
