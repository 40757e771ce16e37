//! Feature flags with the real PostHog SDKs against `herd serve`: a group flag (50 % of the
//! companies with `plan = enterprise`), a person flag and a multivariate flag, defined with
//! `herd flags create`; then for 2,000 random (distinct_id, company) pairs herd's own answers
//! (`POST /flags?v=2` and gRPC `EvaluateFlags`), posthog-python's and posthog-node's local
//! evaluation (definitions from `/flags/definitions` with the secret key) and both SDKs' remote
//! evaluation all agree, flag by flag, payloads included. Every member of a company gets the
//! same group-flag value. The SDKs' `$feature_flag_called` events arrive as events.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use common::*;
use herd_server::grpc::proto;
use proto::flags_service_client::FlagsServiceClient;
use serde_json::{Value, json};

const PAIRS: usize = 2000;
const COMPANIES: usize = 120;

/// splitmix64: a fixed, dependency-free stream of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn plan_of(company: usize) -> &'static str {
    ["enterprise", "enterprise", "free", "pro"][company % 4]
}

/// {"flags": {key: value}, "payloads": {key: parsed payload}} from a v2 `/flags` response.
fn from_records(body: &Value) -> Value {
    let mut flags = serde_json::Map::new();
    let mut payloads = serde_json::Map::new();
    for (key, record) in body["flags"].as_object().expect("flags") {
        assert!(record.get("failed").is_none(), "{key} failed: {record}");
        let value = match &record["variant"] {
            Value::String(v) => Value::String(v.clone()),
            _ => record["enabled"].clone(),
        };
        if let Some(p) = record["metadata"]["payload"].as_str()
            && record["enabled"] == true
        {
            payloads.insert(key.clone(), serde_json::from_str(p).expect("payload JSON"));
        }
        flags.insert(key.clone(), value);
    }
    json!({"flags": flags, "payloads": payloads})
}

fn from_grpc(response: &proto::EvaluateFlagsResponse) -> Value {
    assert!(!response.errors_while_computing_flags, "{response:?}");
    let mut flags = serde_json::Map::new();
    let mut payloads = serde_json::Map::new();
    for f in &response.flags {
        let value = if f.variant.is_empty() {
            Value::Bool(f.enabled)
        } else {
            Value::String(f.variant.clone())
        };
        if !f.payload_json.is_empty() {
            payloads.insert(
                f.key.clone(),
                serde_json::from_str(&f.payload_json).expect("payload JSON"),
            );
        }
        flags.insert(f.key.clone(), value);
    }
    json!({"flags": flags, "payloads": payloads})
}

/// Payloads as values: an SDK that hands back a payload as its JSON text (posthog-python's
/// local evaluation does) reads the same as one that parsed it.
fn parsed_payloads(result: &Value) -> Value {
    let mut out = result.clone();
    if let Some(payloads) = out["payloads"].as_object_mut() {
        for p in payloads.values_mut() {
            if let Some(parsed) = p
                .as_str()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
            {
                *p = parsed;
            }
        }
    }
    out
}

fn run_client(program: &str, script: &str, args: &[&str]) -> std::process::Child {
    Command::new(program)
        .arg(repo().join("tests/clients").join(script))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {script}: {e}"))
}

fn finish(child: std::process::Child, what: &str) {
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_local_and_remote_evaluation_agree_with_herd() {
    let node_dir = repo().join("tests/clients");
    assert!(
        node_dir.join("node_modules/posthog-node").exists(),
        "posthog-node is not installed: run scripts/test (npm ci in tests/clients)"
    );
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let project = create_project(dir.path());
    let project_id = project["id"].as_u64().expect("id");
    let server = Server::start(dir.path(), &["--flush-interval-ms", "200"]);
    let http = reqwest::Client::new();

    // Companies and their stored plans.
    let batch: Vec<Value> = (0..COMPANIES)
        .map(|c| {
            json!({"event": "$groupidentify", "distinct_id": "admin",
                   "properties": {"$group_type": "company", "$group_key": format!("company-{c}"),
                                  "$group_set": {"plan": plan_of(c), "seats": c}}})
        })
        .collect();
    let r = http
        .post(server.url("/batch/"))
        .json(&json!({"api_key": TOKEN, "batch": batch}))
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status(), 200);

    // The three flags: two from flags, one from a JSON file in PostHog's format.
    let group = herd_flags(
        &[
            "create",
            "--flag-key",
            "group-flag",
            "--group-type",
            "company",
            "--property",
            "plan exact enterprise",
            "--rollout",
            "50",
            "--payload",
            r#"{"tier": "gold"}"#,
        ],
        &server,
    );
    assert_eq!(group["group_type"], "company");
    assert_eq!(
        group["definition"]["filters"]["aggregation_group_type_index"],
        0
    );
    let person = herd_flags(
        &[
            "create",
            "--flag-key",
            "person-flag",
            "--property",
            "email icontains @ACME",
            "--property",
            "age gte 30",
            "--rollout",
            "60",
        ],
        &server,
    );
    assert_eq!(person["group_type"], "");
    let multivariate_file = dir.path().join("multivariate.json");
    std::fs::write(
        &multivariate_file,
        serde_json::to_vec(&json!({
            "key": "multivariate-flag",
            "name": "checkout experiment",
            "filters": {
                "groups": [
                    {"properties": [{"key": "email", "operator": "regex",
                                     "value": "@(acme|example)\\.", "type": "person"}],
                     "rollout_percentage": 80},
                    {"properties": [{"key": "age", "operator": "lt", "value": "25",
                                     "type": "person"}],
                     "rollout_percentage": 100, "variant": "control"}
                ],
                "multivariate": {"variants": [
                    {"key": "control", "name": "", "rollout_percentage": 34},
                    {"key": "test", "name": "", "rollout_percentage": 33},
                    {"key": "other", "name": "", "rollout_percentage": 33}
                ]},
                "payloads": {"test": {"color": "green"}, "other": "\"plain\""}
            }
        }))
        .expect("json"),
    )
    .expect("write definition");
    let mv = herd_flags(
        &[
            "create",
            "--file",
            multivariate_file.to_str().expect("utf8"),
        ],
        &server,
    );
    assert_eq!(mv["version"], 1);

    // The random pairs.
    let mut rng = Rng(0x5EED_F1A6);
    let domains = ["acme.com", "Acme.io", "example.org", "mail.net"];
    let pairs: Vec<Value> = (0..PAIRS)
        .map(|i| {
            let company = rng.below(COMPANIES);
            json!({
                "distinct_id": format!("user-{:012x}", rng.next() >> 16),
                "company": format!("company-{company}"),
                "plan": plan_of(company),
                "email": format!("u{i}@{}", domains[rng.below(domains.len())]),
                "age": 18 + rng.below(50),
                // Odd pairs leave group properties out of remote requests: herd reads the
                // stored plan instead.
                "send_group_properties": i % 2 == 0,
            })
        })
        .collect();
    let pairs_file = dir.path().join("pairs.json");
    std::fs::write(&pairs_file, serde_json::to_vec(&pairs).expect("json")).expect("write pairs");

    // Both SDKs run while herd answers directly.
    let py_out = dir.path().join("python.json");
    let node_out = dir.path().join("node.json");
    let common_args = |out: &std::path::Path| {
        vec![
            server.http.clone(),
            TOKEN.to_string(),
            SECRET.to_string(),
            pairs_file.to_str().expect("utf8").to_string(),
            out.to_str().expect("utf8").to_string(),
        ]
    };
    let py_args = common_args(&py_out);
    let node_args = common_args(&node_out);
    let py = run_client(
        python.to_str().expect("utf8"),
        "flags_python.py",
        &py_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let node = run_client(
        "node",
        "flags_node.js",
        &node_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = FlagsServiceClient::new(channel);
    let mut herd_http = Vec::with_capacity(PAIRS);
    let mut herd_grpc = Vec::with_capacity(PAIRS);
    for p in &pairs {
        let mut body = json!({
            "api_key": TOKEN,
            "distinct_id": p["distinct_id"],
            "groups": {"company": p["company"]},
            "person_properties": {"email": p["email"], "age": p["age"]},
        });
        if p["send_group_properties"] == true {
            body["group_properties"] = json!({"company": {"plan": p["plan"]}});
        }
        let r: Value = http
            .post(server.url("/flags/?v=2"))
            .json(&body)
            .send()
            .await
            .expect("/flags")
            .json()
            .await
            .expect("/flags JSON");
        herd_http.push(from_records(&r));

        let s = |v: &Value| prost_types::Value {
            kind: Some(match v {
                Value::Number(n) => {
                    prost_types::value::Kind::NumberValue(n.as_f64().expect("number"))
                }
                other => prost_types::value::Kind::StringValue(
                    other.as_str().expect("string").to_string(),
                ),
            }),
        };
        let request = proto::EvaluateFlagsRequest {
            distinct_id: p["distinct_id"].as_str().expect("id").to_string(),
            groups: HashMap::from([(
                "company".to_string(),
                p["company"].as_str().expect("company").to_string(),
            )]),
            person_properties: Some(prost_types::Struct {
                fields: BTreeMap::from([
                    ("email".to_string(), s(&p["email"])),
                    ("age".to_string(), s(&p["age"])),
                ]),
            }),
            // gRPC never sends the plan: herd uses the stored group properties.
            group_properties: HashMap::new(),
            flag_keys: Vec::new(),
            device_id: String::new(),
        };
        let response = grpc
            .evaluate_flags(with_key(request, SECRET))
            .await
            .expect("EvaluateFlags")
            .into_inner();
        herd_grpc.push(from_grpc(&response));
    }

    finish(py, "posthog-python");
    finish(node, "posthog-node");
    let read = |path: &std::path::Path| -> Vec<Value> {
        serde_json::from_slice(&std::fs::read(path).expect("client output")).expect("JSON")
    };
    let py_results = read(&py_out);
    let node_results = read(&node_out);
    assert_eq!(py_results.len(), PAIRS);
    assert_eq!(node_results.len(), PAIRS);

    let mut agreed = 0;
    let mut group_value: HashMap<String, Value> = HashMap::new();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        let want = &herd_http[i];
        assert_eq!(
            want["flags"].as_object().map(|m| m.len()),
            Some(3),
            "pair {i}: {want}"
        );
        for (what, got) in [
            ("herd gRPC", &herd_grpc[i]),
            ("posthog-python local", &py_results[i]["local"]),
            ("posthog-python remote", &py_results[i]["remote"]),
            ("posthog-node local", &node_results[i]["local"]),
            ("posthog-node remote", &node_results[i]["remote"]),
        ] {
            assert_eq!(
                &parsed_payloads(got),
                want,
                "pair {i} {p}: {what} disagrees with herd /flags"
            );
        }
        agreed += 1;
        let g = want["flags"]["group-flag"].clone();
        let company = p["company"].as_str().expect("company").to_string();
        if let Some(previous) = group_value.insert(company.clone(), g.clone()) {
            assert_eq!(previous, g, "members of {company} disagree on group-flag");
        }
        for (key, value) in want["flags"].as_object().expect("flags") {
            *tally.entry(format!("{key}={value}")).or_default() += 1;
        }
    }
    assert_eq!(agreed, PAIRS);
    // The flags really split the population (a constant answer would agree trivially).
    for key in [
        "group-flag=true",
        "group-flag=false",
        "person-flag=true",
        "person-flag=false",
        "multivariate-flag=\"control\"",
        "multivariate-flag=\"test\"",
        "multivariate-flag=\"other\"",
        "multivariate-flag=false",
    ] {
        assert!(
            tally.get(key).copied().unwrap_or(0) > 20,
            "{key}: {tally:?}"
        );
    }
    // Enterprise companies split about half and half; others never get the group flag.
    let enterprise_on = group_value
        .iter()
        .filter(|(c, v)| {
            let n: usize = c["company-".len()..].parse().expect("n");
            assert!(
                plan_of(n) == "enterprise" || **v == false,
                "{c} is not enterprise"
            );
            **v == true
        })
        .count();
    let enterprise = group_value
        .keys()
        .filter(|c| plan_of(c["company-".len()..].parse().expect("n")) == "enterprise")
        .count();
    assert!(
        enterprise_on > enterprise / 4 && enterprise_on < enterprise * 3 / 4,
        "{enterprise_on} of {enterprise} enterprise companies have the group flag"
    );
    eprintln!(
        "{PAIRS} pairs ({} companies): herd /flags, herd gRPC, posthog-python local+remote and \
         posthog-node local+remote agree on all of them; {tally:?}",
        group_value.len()
    );

    server.terminate();
    let events = read_events(dir.path(), project_id).await;
    let called: Vec<Value> = events
        .iter()
        .filter(|e| e.event == "$feature_flag_called")
        .map(props)
        .collect();
    for lib in ["posthog-python", "posthog-node"] {
        let of_lib: Vec<&Value> = called.iter().filter(|p| p["$lib"] == lib).collect();
        let local = of_lib
            .iter()
            .filter(|p| p["locally_evaluated"] == true)
            .count();
        assert_eq!(
            (of_lib.len(), local),
            (6, 3),
            "{lib}: three local and three remote $feature_flag_called: {of_lib:#?}"
        );
        for p in of_lib {
            assert_eq!(p["$feature_flag"], "group-flag");
            assert!(p["$groups"]["company"].is_string(), "{p}");
        }
    }
}
