//! posthog-js in a real browser against `herd serve`: CORS as PostHog's capture answers it,
//! posthog-js's remote config (`/array/<token>/config[.js]`), and the npm package's browser
//! bundle in headless Chromium on a page from another origin — PostHog's group set-up
//! (identify, two `group()` calls), custom events, a pageview, an autocaptured click, a group
//! flag, `reset()` — checked against the stored rows, herd's own flag evaluation and the
//! browser's network log.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use common::*;
use serde_json::{Value, json};

const USER: &str = "user-42";
/// 50 % of companies: `id:5` hashes in (0.107), `id:6` out (0.817).
const FLAG: &str = "group-rollout";

#[tokio::test]
async fn cors_and_remote_config_answer_as_posthog_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    create_project(dir.path());
    let server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let origin = "http://app.example:3000";

    // Preflights on capture and flags routes: origin mirrored, credentials, headers allowed.
    for path in ["/e/", "/i/v0/e/", "/batch/", "/flags/?v=2", "/decide/"] {
        let r = http
            .request(reqwest::Method::OPTIONS, server.url(path))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type,x-custom")
            .send()
            .await
            .expect("preflight");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], origin, "{path}");
        assert_eq!(h["access-control-allow-credentials"], "true", "{path}");
        assert_eq!(
            h["access-control-allow-headers"], "content-type,x-custom",
            "{path}"
        );
        let methods = h["access-control-allow-methods"].to_str().expect("ascii");
        assert!(methods.contains("POST"), "{path}: {methods}");
    }
    // A simple request gets the origin back too.
    let r = http
        .post(server.url("/e/"))
        .header("Origin", origin)
        .json(&json!({"api_key": TOKEN, "event": "e", "distinct_id": "u"}))
        .send()
        .await
        .expect("capture");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], origin);

    // Remote config: JSON, the script, and the errors PostHog gives.
    let r = http
        .get(server.url(&format!("/array/{TOKEN}/config")))
        .header("Origin", origin)
        .send()
        .await
        .expect("config");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], origin);
    let vary: Vec<_> = r.headers().get_all("vary").iter().collect();
    assert!(
        vary.iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("Referer"))),
        "{vary:?}"
    );
    let config: Value = r.json().await.expect("config JSON");
    assert_eq!(config["token"], TOKEN);
    assert_eq!(config["hasFeatureFlags"], false, "no flags yet");
    assert_eq!(config["supportedCompression"], json!(["gzip", "gzip-js"]));
    assert_eq!(config["sessionRecording"], false);
    create_flag(&server);
    let config: Value = http
        .get(server.url(&format!("/array/{TOKEN}/config")))
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("JSON");
    assert_eq!(config["hasFeatureFlags"], true, "{config}");
    let r = http
        .get(server.url(&format!("/array/{TOKEN}/config.js")))
        .send()
        .await
        .expect("config.js");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/javascript");
    let script = r.text().await.expect("text");
    assert!(
        script.contains(&format!("window._POSTHOG_REMOTE_CONFIG[\"{TOKEN}\"]")),
        "{script}"
    );
    for (path, status) in [
        ("/array/phc_no_such_project_token/config", 404),
        ("/array/phc_no_such_project_token/config.js", 404),
        ("/array/not%20a%20token/config", 400),
    ] {
        let r = http.get(server.url(path)).send().await.expect("get");
        assert_eq!(r.status(), status, "{path}");
        let body: Value = r.json().await.expect("a JSON error");
        assert!(body["detail"].is_string(), "{path}: {body}");
    }
    server.terminate();
}

/// `FLAG`: a 50 % rollout to companies.
fn create_flag(server: &Server) {
    let args = ["create", "--flag-key", FLAG, "--group-type", "company"];
    herd_flags(&[&args[..], &["--rollout", "50"]].concat(), server);
}

/// herd's own answer for `FLAG` with these groups (`POST /flags?v=2`).
async fn herd_flag(server: &Server, company: &str) -> bool {
    let body: Value = reqwest::Client::new()
        .post(server.url("/flags/?v=2"))
        .json(&json!({"token": TOKEN, "distinct_id": USER, "groups": {"company": company}}))
        .send()
        .await
        .expect("flags")
        .json()
        .await
        .expect("JSON");
    body["flags"][FLAG]["enabled"]
        .as_bool()
        .unwrap_or_else(|| panic!("{body}"))
}

fn run_browser(server: &Server) -> Value {
    let clients = repo().join("tests/clients");
    assert!(
        clients
            .join("node_modules/posthog-js/dist/array.js")
            .exists(),
        "posthog-js is not installed: run scripts/test (npm ci in tests/clients)"
    );
    let out = Command::new(python())
        .arg(clients.join("browser_posthog_js.py"))
        .args(["--herd", &server.http, "--token", TOKEN, "--user", USER])
        .args(["--flag", FLAG])
        .output()
        .expect("run browser_posthog_js.py");
    assert!(
        out.status.success(),
        "the browser session failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posthog_js_in_chromium_lands_groups_flags_and_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = create_project(dir.path())["id"].as_u64().expect("id");
    let server = Server::start(dir.path(), &["--flush-interval-ms", "200"]);
    create_flag(&server);
    let session = run_browser(&server);
    println!("browser session: {session:#}");

    // The browser saw no failure: every request answered below 400, nothing in the console.
    assert_eq!(session["failed"], json!([]), "failed requests");
    assert_eq!(session["console"], json!([]), "console errors");
    let network = session["network"].as_array().expect("network log");
    for r in network {
        let status = r["status"].as_u64().unwrap_or(0);
        assert!((200..400).contains(&status), "{r}");
    }
    let hit = |fragment: &str| {
        network
            .iter()
            .any(|r| r["url"].as_str().is_some_and(|u| u.contains(fragment)))
    };
    assert!(
        hit(&format!("/array/{TOKEN}/config.js")),
        "remote config loaded"
    );
    assert!(hit("/i/v0/e/"), "events sent to the config's endpoint");
    // posthog-js sent every event it captured, once.
    let sorted = |k: &str| {
        let mut v: Vec<String> = session[k]
            .as_array()
            .unwrap_or_else(|| panic!("{k}"))
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(sorted("sent"), sorted("captured"));
    // A flags request carried both groups and the playlist's properties.
    assert!(
        network.iter().any(|r| r["body"]["groups"]
            == json!({"company": "id:5", "playlist": "id:77"})
            && r["body"]["group_properties"]["playlist"]["length"] == 77),
        "no /flags request with the groups"
    );

    // The flag as herd evaluates it for that company (and it is a real 50 % rollout).
    assert!(herd_flag(&server, "id:5").await);
    assert!(!herd_flag(&server, "id:6").await);
    assert_eq!(session["flag"], true);

    server.terminate();
    check_rows(dir.path(), project, &session).await;
}

async fn check_rows(data: &std::path::Path, project: u64, session: &Value) {
    let events = read_events(data, project).await;
    let types = read_group_types(data, project);
    let slot = |name: &str| -> usize {
        types[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} in {types}")) as usize
    };
    let (company, playlist) = (slot("company"), slot("playlist"));
    println!("stored events (event, distinct_id, $group_{company}, $group_{playlist}):");
    for e in &events {
        println!(
            "  {:<22} {:<38} {:<6} {}",
            e.event, e.distinct_id, e.groups[company], e.groups[playlist]
        );
    }

    // Nothing stored twice, and exactly what posthog-js captured.
    let mut uuids: Vec<_> = events.iter().map(|e| e.uuid).collect();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), events.len(), "an event stored twice");
    let mut stored: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *stored.entry(e.event.as_str()).or_default() += 1;
    }
    let mut captured: BTreeMap<&str, usize> = BTreeMap::new();
    for e in session["captured"].as_array().expect("captured") {
        *captured.entry(e.as_str().expect("name")).or_default() += 1;
    }
    assert_eq!(stored, captured, "stored vs captured by posthog-js");
    for name in [
        "$pageview",
        "report_viewed",
        "invite_sent",
        "$autocapture",
        "after_reset",
    ] {
        assert_eq!(stored.get(name), Some(&1), "{name}: {stored:?}");
    }
    assert!(stored.contains_key("$identify") && stored.contains_key("$groupidentify"));
    assert!(stored.contains_key("$feature_flag_called"));

    // Every event after the group() calls carries both groups in their columns.
    let by_name: HashMap<&str, Vec<&herd_core::Event>> =
        events.iter().fold(HashMap::new(), |mut m, e| {
            m.entry(e.event.as_str()).or_default().push(e);
            m
        });
    for name in [
        "$pageview",
        "report_viewed",
        "invite_sent",
        "$autocapture",
        "$feature_flag_called",
    ] {
        for e in &by_name[name] {
            assert_eq!(e.groups[company], "id:5", "{name}");
            assert_eq!(e.groups[playlist], "id:77", "{name}");
            assert_eq!(e.distinct_id, USER, "{name}");
        }
    }
    let flag_called = props(by_name["$feature_flag_called"][0]);
    assert_eq!(flag_called["$feature_flag"], FLAG);
    assert_eq!(flag_called["$feature_flag_response"], true);
    // After reset(): a new anonymous id and no groups.
    let last = by_name["after_reset"][0];
    assert!(
        last.groups.iter().all(String::is_empty),
        "{:?}",
        last.groups
    );
    assert_eq!(last.distinct_id, session["distinct_id_after_reset"]);
    assert_ne!(last.distinct_id, USER);

    // The playlist's properties in the groups table.
    let groups = read_groups(data, project).await;
    let row = groups
        .iter()
        .filter(|g| usize::from(g.group_type_index) == playlist && g.group_key == "id:77")
        .max_by_key(|g| g.version)
        .expect("the playlist's group row");
    let properties: Value = serde_json::from_str(&row.group_properties).expect("JSON");
    println!(
        "groups row: $group_{playlist} {} {properties}",
        row.group_key
    );
    assert_eq!(properties, json!({"length": 77, "some": "properties"}));
}
