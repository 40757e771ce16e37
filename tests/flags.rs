//! Feature flags against `herd serve`, without the SDKs: the gRPC FlagsService (create,
//! update, get, list, delete, refusals that name the problem, secret-key auth), `herd flags`,
//! the `/flags` and `/decide` version table, gzip and base64 bodies, the definitions endpoint
//! with its ETag and 304, 400s with a `detail` for malformed bodies, per-flag errors that
//! never fail the whole response, and definitions that survive a restart.

mod common;

use std::io::Write;

use base64::Engine;
use common::*;
use herd_server::grpc::proto;
use proto::flags_service_client::FlagsServiceClient;
use serde_json::{Value, json};
use tonic::Code;

async fn client(server: &Server) -> FlagsServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    FlagsServiceClient::new(channel)
}

fn create(definition: Value, group_type: &str) -> tonic::Request<proto::CreateFlagRequest> {
    with_key(
        proto::CreateFlagRequest {
            definition_json: definition.to_string(),
            group_type: group_type.to_string(),
        },
        SECRET,
    )
}

async fn post_flags(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = http.post(url).json(&body).send().await.expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON answer"))
}

#[tokio::test]
async fn flags_service_http_endpoints_and_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    create_project(dir.path());
    let server = Server::start(dir.path(), &[]);
    let mut flags = client(&server).await;
    let http = reqwest::Client::new();

    // Auth.
    let err = flags
        .list_flags(tonic::Request::new(proto::ListFlagsRequest {}))
        .await
        .expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Create: a group flag (the project gets a slot for "company"), a person flag.
    let group = flags
        .create_flag(create(
            json!({"key": "group-flag", "filters": {"groups": [{"properties": [
                {"key": "plan", "value": ["enterprise"], "operator": "exact", "type": "group"}],
                "rollout_percentage": 100}], "payloads": {"true": {"x": 1}}}}),
            "company",
        ))
        .await
        .expect("create group flag")
        .into_inner();
    assert_eq!((group.id, group.version), (1, 1));
    assert_eq!(group.group_type, "company");
    let stored: Value = serde_json::from_str(&group.definition_json).expect("json");
    assert_eq!(
        stored["filters"]["groups"][0]["properties"][0]["group_type_index"],
        0
    );
    assert_eq!(stored["filters"]["payloads"]["true"], "{\"x\":1}");
    let person = flags
        .create_flag(create(
            json!({"key": "person-flag", "filters": {"groups": [{"properties": [
                {"key": "email", "value": "@acme.com", "operator": "icontains"}]}]}}),
            "",
        ))
        .await
        .expect("create person flag")
        .into_inner();
    assert_eq!(person.id, 2);

    // Refusals name the problem.
    for (definition, group_type, code, needle) in [
        (
            json!({"key": "g2", "filters": {"aggregation_group_type_index": 0, "groups": [
                {"properties": [{"key": "email", "value": "x", "type": "person"}]}]}}),
            "",
            Code::InvalidArgument,
            "person property \"email\" in a group flag",
        ),
        (
            json!({"key": "mv", "filters": {"groups": [{}], "multivariate": {"variants": [
                {"key": "a", "rollout_percentage": 50}, {"key": "b", "rollout_percentage": 40}]}}}),
            "",
            Code::InvalidArgument,
            "sum to 90",
        ),
        (
            json!({"key": "op", "filters": {"groups": [{"properties": [
                {"key": "email", "value": "x", "operator": "like"}]}]}}),
            "",
            Code::InvalidArgument,
            "unknown operator \"like\"",
        ),
        (
            json!({"key": "re", "filters": {"groups": [{"properties": [
                {"key": "email", "value": "(", "operator": "regex"}]}]}}),
            "",
            Code::InvalidArgument,
            "invalid regex",
        ),
        (
            json!({"key": "person-flag", "filters": {"groups": [{}]}}),
            "",
            Code::AlreadyExists,
            "already has a flag with key \"person-flag\"",
        ),
        (
            json!({"filters": {}}),
            "",
            Code::InvalidArgument,
            "missing field `key`",
        ),
        (
            json!({"key": "idx", "filters": {"aggregation_group_type_index": 3, "groups": [{}]}}),
            "",
            Code::InvalidArgument,
            "unknown group type index 3",
        ),
    ] {
        let err = flags
            .create_flag(create(definition.clone(), group_type))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{definition}: {}", err.message());
        assert!(
            err.message().contains(needle),
            "{definition}: {}",
            err.message()
        );
    }

    // Update, get, list.
    let updated = flags
        .update_flag(with_key(
            proto::UpdateFlagRequest {
                flag: Some(proto::FlagRef {
                    id: 0,
                    key: "person-flag".into(),
                }),
                definition_json: json!({"key": "person-flag", "filters": {"groups": [
                    {"properties": [{"key": "email", "value": "@acme.com",
                                     "operator": "icontains"}],
                     "rollout_percentage": 100}]}})
                .to_string(),
                group_type: String::new(),
            },
            SECRET,
        ))
        .await
        .expect("update")
        .into_inner();
    assert_eq!((updated.id, updated.version), (2, 2));
    let got = flags
        .get_flag(with_key(
            proto::FlagRef {
                id: 2,
                key: String::new(),
            },
            SECRET,
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got, updated);
    let missing = flags
        .get_flag(with_key(
            proto::FlagRef {
                id: 99,
                key: String::new(),
            },
            SECRET,
        ))
        .await
        .expect_err("no flag 99");
    assert_eq!(missing.code(), Code::NotFound);

    // Remote evaluation: every version of the table, gzip and base64 bodies.
    let request = json!({"api_key": TOKEN, "distinct_id": "u1", "groups": {"company": "c1"},
        "person_properties": {"email": "a@acme.com"},
        "group_properties": {"company": {"plan": "enterprise"}}});
    let (status, v2) = post_flags(&http, server.url("/flags/?v=2"), request.clone()).await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["flags"]["group-flag"]["enabled"], true);
    assert_eq!(
        v2["flags"]["group-flag"]["metadata"]["payload"],
        "{\"x\":1}"
    );
    assert_eq!(
        v2["flags"]["person-flag"]["reason"]["code"],
        "condition_match"
    );
    assert_eq!(v2["errorsWhileComputingFlags"], false);
    let (_, flat) = post_flags(&http, server.url("/flags"), request.clone()).await;
    assert_eq!(
        flat["featureFlags"],
        json!({"group-flag": true, "person-flag": true})
    );
    assert_eq!(flat["featureFlagPayloads"]["group-flag"], "{\"x\":1}");
    let (_, d1) = post_flags(&http, server.url("/decide/?v=1"), request.clone()).await;
    assert_eq!(d1["featureFlags"], json!(["group-flag", "person-flag"]));
    let (_, d3) = post_flags(&http, server.url("/decide/?v=3"), request.clone()).await;
    assert_eq!(d3["featureFlags"], flat["featureFlags"]);
    let (_, d4) = post_flags(&http, server.url("/decide/?v=4"), request.clone()).await;
    assert_eq!(d4["flags"]["group-flag"]["enabled"], true);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(request.to_string().as_bytes()).expect("gzip");
    let r = http
        .post(server.url("/flags/?v=2"))
        .body(gz.finish().expect("gzip"))
        .send()
        .await
        .expect("gzip post");
    assert_eq!(r.status(), 200);
    let b64 = base64::engine::general_purpose::STANDARD.encode(request.to_string());
    let r = http
        .post(server.url("/flags/?v=2&compression=base64"))
        .body(b64)
        .send()
        .await
        .expect("base64 post");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["flags"]["person-flag"]["enabled"], true);

    // Group flags: no group → false, no_group_type; stored properties when none are sent.
    let (_, none) = post_flags(
        &http,
        server.url("/flags/?v=2"),
        json!({"token": TOKEN, "distinct_id": "u1", "person_properties": {"email": "x"}}),
    )
    .await;
    assert_eq!(none["flags"]["group-flag"]["enabled"], false);
    assert_eq!(
        none["flags"]["group-flag"]["reason"]["code"],
        "no_group_type"
    );
    let r = http
        .post(server.url("/batch/"))
        .json(
            &json!({"api_key": TOKEN, "batch": [{"event": "$groupidentify",
            "distinct_id": "admin", "properties": {"$group_type": "company",
            "$group_key": "stored-co", "$group_set": {"plan": "enterprise"}}}]}),
        )
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status(), 200);
    let (_, stored) = post_flags(
        &http,
        server.url("/flags/?v=2"),
        json!({"token": TOKEN, "distinct_id": "u1", "groups": {"company": "stored-co"},
               "group_properties": {"company": {"$group_key": "stored-co"}},
               "person_properties": {"email": "x"}}),
    )
    .await;
    assert_eq!(stored["flags"]["group-flag"]["enabled"], true, "{stored}");

    // A person property herd cannot know: that flag alone fails.
    let (status, partial) = post_flags(
        &http,
        server.url("/flags/?v=2"),
        json!({"token": TOKEN, "distinct_id": "u1", "groups": {"company": "stored-co"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(partial["errorsWhileComputingFlags"], true);
    assert_eq!(partial["flags"]["person-flag"]["failed"], true);
    assert_eq!(partial["flags"]["person-flag"]["enabled"], false);
    assert_eq!(partial["flags"]["group-flag"]["enabled"], true);
    let (_, flat) = post_flags(
        &http,
        server.url("/flags"),
        json!({"token": TOKEN, "distinct_id": "u1", "groups": {"company": "stored-co"}}),
    )
    .await;
    assert_eq!(flat["featureFlags"], json!({"group-flag": true}));
    assert_eq!(flat["errorsWhileComputingFlags"], true);
    let grpc = flags
        .evaluate_flags(with_key(
            proto::EvaluateFlagsRequest {
                distinct_id: "u1".into(),
                groups: [("company".to_string(), "stored-co".to_string())].into(),
                flag_keys: vec!["person-flag".into()],
                ..Default::default()
            },
            SECRET,
        ))
        .await
        .expect("evaluate")
        .into_inner();
    assert!(grpc.errors_while_computing_flags);
    assert_eq!(grpc.flags.len(), 1);
    assert!(grpc.flags[0].error.contains("person property \"email\""));

    // Malformed bodies: 400 with a detail.
    for (body, needle) in [
        ("", "empty"),
        ("{\"token\": ", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("@@@", "neither JSON, gzip nor base64"),
        (
            &json!({"token": TOKEN}).to_string(),
            "distinct_id: required",
        ),
        (
            &json!({"token": TOKEN, "distinct_id": "u", "groups": "c1"}).to_string(),
            "groups: must be an object",
        ),
        (
            &json!({"token": TOKEN, "distinct_id": "u", "person_properties": [1]}).to_string(),
            "person_properties: must be an object",
        ),
    ] {
        let r = http
            .post(server.url("/flags/?v=2"))
            .body(body.to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.expect("json");
        assert!(
            v["detail"].as_str().is_some_and(|d| d.contains(needle)),
            "{body}: {v}"
        );
    }
    let (status, v) = post_flags(
        &http,
        server.url("/flags/?v=2"),
        json!({"distinct_id": "u"}),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (401, Some("invalid_api_key")));
    let (status, _) = post_flags(
        &http,
        server.url("/flags/?v=2"),
        json!({"token": "phc_not_a_project", "distinct_id": "u"}),
    )
    .await;
    assert_eq!(status, 401);

    // Definitions: both spellings, Bearer secret key, ETag and 304.
    let mut etag = String::new();
    for path in [
        "/flags/definitions?send_cohorts&token=",
        "/api/feature_flag/local_evaluation?token=",
        "/api/feature_flag/local_evaluation/?send_cohorts&token=",
    ] {
        let r = http
            .get(server.url(&format!("{path}{TOKEN}")))
            .bearer_auth(SECRET)
            .send()
            .await
            .expect("definitions");
        assert_eq!(r.status(), 200, "{path}");
        etag = r.headers()["etag"].to_str().expect("etag").to_string();
        assert!(etag.starts_with("W/\""), "{etag}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["group_type_mapping"], json!({"0": "company"}));
        assert_eq!(v["cohorts"], json!({}));
        assert_eq!(v["flags"].as_array().map(Vec::len), Some(2));
    }
    let r = http
        .get(server.url(&format!("/flags/definitions?token={TOKEN}")))
        .bearer_auth(SECRET)
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("conditional");
    assert_eq!(r.status(), 304);
    for (auth, status) in [(None, 401), (Some("phs_wrong"), 401), (Some(TOKEN), 401)] {
        let mut req = http.get(server.url(&format!("/flags/definitions?token={TOKEN}")));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let r = req.send().await.expect("definitions");
        assert_eq!(r.status(), status, "{auth:?}");
    }

    // Delete through the CLI; the tag changes and the ETag no longer matches.
    let out = herd()
        .args(["flags", "delete", "person-flag", "--server"])
        .arg(format!("http://{}", server.grpc))
        .args(["--key", SECRET])
        .output()
        .expect("herd flags delete");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = http
        .get(server.url(&format!("/flags/definitions?token={TOKEN}")))
        .bearer_auth(SECRET)
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("conditional");
    assert_eq!(r.status(), 200);
    let out = herd()
        .args(["flags", "create", "--flag-key", "bad", "--property"])
        .arg("email like x")
        .arg("--server")
        .arg(format!("http://{}", server.grpc))
        .args(["--key", SECRET])
        .output()
        .expect("herd flags create");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown operator \"like\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Idle client connections would hold the graceful shutdown up.
    drop((flags, http));
    server.terminate();

    // A definition broken on disk (edited by hand) fails alone after a restart.
    let file = dir.path().join("flags/1.json");
    let mut doc: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("flag file")).expect("json");
    let mut broken = doc["flags"][0].clone();
    broken["id"] = json!(7);
    broken["key"] = json!("broken-flag");
    broken["filters"] = json!({"groups": [{"properties": [
        {"key": "email", "value": "(", "operator": "regex"}]}]});
    doc["flags"].as_array_mut().expect("flags").push(broken);
    doc["next_id"] = json!(8);
    std::fs::write(&file, serde_json::to_vec(&doc).expect("json")).expect("write");
    let server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let (status, v) = post_flags(
        &http,
        server.url("/flags/?v=2"),
        json!({"token": TOKEN, "distinct_id": "u1", "groups": {"company": "c1"},
               "group_properties": {"company": {"plan": "enterprise"}},
               "person_properties": {"email": "a"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["errorsWhileComputingFlags"], true);
    assert_eq!(v["flags"]["group-flag"]["enabled"], true, "{v}");
    assert_eq!(v["flags"]["broken-flag"]["failed"], true);
    assert!(
        v["flags"]["broken-flag"]["reason"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("invalid regex")),
        "{v}"
    );
    let list = client(&server)
        .await
        .list_flags(with_key(proto::ListFlagsRequest {}, SECRET))
        .await
        .expect("list")
        .into_inner();
    let keys: Vec<&str> = list.flags.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, ["group-flag", "broken-flag"]);
    drop(http);
    server.terminate();
}
