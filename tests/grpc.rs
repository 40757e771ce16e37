//! gRPC next to capture: `herd.v1.ServerInfoService` with secret-key auth, the standard health
//! service, and server reflection listing both — over a real socket against `herd serve`.

mod common;

use common::*;
use herd_server::grpc::proto::GetServerInfoRequest;
use herd_server::grpc::proto::server_info_service_client::ServerInfoServiceClient;
use tonic::Code;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn server_info_health_and_reflection_over_grpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = create_project(dir.path())["id"].as_u64().expect("id");
    let server = Server::start(dir.path(), &["--flush-interval-ms", "100"]);
    // A capture that assigns two group types, so the project has some.
    let body = serde_json::json!({"api_key": TOKEN, "batch": [
        {"event": "signed_up", "distinct_id": "u1", "properties": {"$groups": {"company": "id:5", "project": 42}}},
        {"event": "$groupidentify", "distinct_id": "u1", "properties": {"$group_type": "company", "$group_key": "k".repeat(401)}}
    ]});
    let r = reqwest::Client::new()
        .post(server.url("/batch/"))
        .json(&body)
        .send()
        .await
        .expect("capture");
    assert_eq!(r.status(), 200);

    // Wait (up to 30 s) for the flusher to write the warning to the warnings table: the server
    // reads warnings from files and buffer alike.
    let warnings_dir = dir.path().join(format!("projects/{id}/warnings"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_dir(&warnings_dir).is_ok_and(|mut d| d.next().is_some()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the warning never reached a warnings file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let url = format!("http://{}", server.grpc);
    let mut info = ServerInfoServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let resp = info
        .get_server_info(with_key(GetServerInfoRequest {}, SECRET))
        .await
        .expect("server info")
        .into_inner();
    assert_eq!(resp.version, env!("CARGO_PKG_VERSION"));
    assert!(resp.started_at_unix_micros > 0);
    let project = resp.project.expect("project");
    assert_eq!((project.id, project.name.as_str()), (id, "e2e"));
    assert_eq!(project.group_types, vec!["company", "project"]);
    assert_eq!(
        project.ingestion_warnings.get("group_key_too_long"),
        Some(&1),
        "warnings are queryable"
    );

    for (request, what) in [
        (
            tonic::Request::new(GetServerInfoRequest {}),
            "missing authorization",
        ),
        (
            with_key(GetServerInfoRequest {}, "phs_wrong_key"),
            "unknown secret key",
        ),
        (
            with_key(GetServerInfoRequest {}, TOKEN),
            "unknown secret key",
        ),
    ] {
        let err = info.get_server_info(request).await.expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().contains(what), "{}", err.message());
    }

    let channel = tonic::transport::Channel::from_shared(url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let message = stream
        .message()
        .await
        .expect("response")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = message.message_response else {
        panic!(
            "expected a service list, got {:?}",
            message.message_response
        );
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "herd.v1.ServerInfoService",
        "herd.v1.GroupsService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} listed in {names:?}"
        );
    }
    // Clients hang up; the server then shuts down without waiting out its grace period.
    drop((info, health, reflection, stream));
    server.terminate();
}

#[tokio::test]
async fn groups_service_lists_searches_pages_and_gets_groups() {
    use herd_server::grpc::proto::groups_service_client::GroupsServiceClient;
    use herd_server::grpc::proto::{GetGroupRequest, ListGroupTypesRequest, ListGroupsRequest};

    // Serve a copy of the committed sample (the test must not write into the repository).
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(repo().join("data"))
        .arg(&data)
        .status()
        .expect("cp");
    assert!(status.success());
    let _ = std::fs::remove_dir_all(data.join("wal"));
    let server = Server::start(&data, &[]);
    let key = "phs_herd_sample_secret_key";
    let mut groups = GroupsServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("connect");

    let types = groups
        .list_group_types(with_key(ListGroupTypesRequest {}, key))
        .await
        .expect("types")
        .into_inner()
        .group_types;
    let names: Vec<(u32, String)> = types.into_iter().map(|t| (t.index, t.name)).collect();
    assert_eq!(
        names,
        vec![
            (0, "company".into()),
            (1, "project".into()),
            (2, "team".into())
        ]
    );

    // Every company, page by page, equals the current groups of slot 0 in the groups table.
    let stored = read_groups(&data, 1).await;
    let mut want: Vec<String> = stored
        .iter()
        .filter(|g| g.group_type_index == 0)
        .map(|g| g.group_key.clone())
        .collect();
    want.sort();
    want.dedup();
    let mut got = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = groups
            .list_groups(with_key(
                ListGroupsRequest {
                    group_type: "company".into(),
                    search: String::new(),
                    page_size: 7,
                    cursor: cursor.clone(),
                },
                key,
            ))
            .await
            .expect("page")
            .into_inner();
        assert!(page.groups.len() <= 7);
        got.extend(page.groups.into_iter().map(|g| g.key));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert!(want.len() > 7, "several pages");
    assert_eq!(got, want);

    // Search matches property values, case-insensitively.
    let found = groups
        .list_groups(with_key(
            ListGroupsRequest {
                group_type: "company".into(),
                search: "ENTERPRISE".into(),
                page_size: 1000,
                cursor: String::new(),
            },
            key,
        ))
        .await
        .expect("search")
        .into_inner()
        .groups;
    assert!(!found.is_empty() && found.len() < want.len());
    let plan = |g: &herd_server::grpc::proto::Group| -> Option<String> {
        let field = g.properties.as_ref()?.fields.get("plan")?;
        match &field.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        }
    };
    assert!(
        found
            .iter()
            .all(|g| plan(g).as_deref() == Some("enterprise"))
    );

    let one = groups
        .get_group(with_key(
            GetGroupRequest {
                group_type: "company".into(),
                key: found[0].key.clone(),
            },
            key,
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (one.key.as_str(), one.group_type_index),
        (found[0].key.as_str(), 0)
    );
    assert_eq!(plan(&one).as_deref(), Some("enterprise"));
    assert!(one.version >= 1);

    let err = groups
        .get_group(with_key(
            GetGroupRequest {
                group_type: "company".into(),
                key: "nope".into(),
            },
            key,
        ))
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    let err = groups
        .list_groups(with_key(
            ListGroupsRequest {
                group_type: "planet".into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .expect_err("unknown type");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("group_type: unknown group type \"planet\""),
        "{}",
        err.message()
    );
    let err = groups
        .list_groups(with_key(
            ListGroupsRequest {
                group_type: "company".into(),
                page_size: 5000,
                ..Default::default()
            },
            key,
        ))
        .await
        .expect_err("page too big");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = groups
        .list_group_types(tonic::Request::new(ListGroupTypesRequest {}))
        .await
        .expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated);
    drop(groups);
    server.terminate();
}

/// A server flushing often collects a file per flush in today's partition; the background
/// compactor merges them into one while capture goes on, losing and duplicating nothing.
#[tokio::test]
async fn the_server_compacts_a_day_of_many_flushes_into_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = create_project(dir.path())["id"].as_u64().expect("id");
    let server = Server::start(
        dir.path(),
        &[
            "--flush-interval-ms",
            "50",
            "--compact-interval-ms",
            "300",
            "--compact-min-files",
            "2",
        ],
    );
    let client = reqwest::Client::new();
    let mut sent = Vec::new();
    for batch in 0..6 {
        let events: Vec<_> = (0..20)
            .map(|i| {
                let uuid = uuid::Uuid::from_u128(1000 * batch + i);
                sent.push(uuid);
                serde_json::json!({
                    "event": if i % 2 == 0 { "signed_up" } else { "$pageview" },
                    "distinct_id": format!("u{i}"),
                    "uuid": uuid.to_string(),
                    "timestamp": "2024-01-10T12:00:00Z",
                    "properties": {"$groups": {"company": format!("c{}", i % 3)}},
                })
            })
            .collect();
        let r = client
            .post(server.url("/batch/"))
            .json(&serde_json::json!({"api_key": TOKEN, "batch": events}))
            .send()
            .await
            .expect("capture");
        assert_eq!(r.status(), 200);
        // Past the flush interval, so each batch lands in a file of its own.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    let storage = herd_storage::Storage::open(dir.path().to_str().expect("utf8")).expect("open");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let catalog = herd_storage::catalog::load_latest(&storage, id)
            .await
            .expect("catalog");
        let rows: u64 = catalog.events.iter().map(|f| f.rows).sum();
        if catalog.events.len() == 1 && rows == sent.len() as u64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not compacted to one file within 30 s: {} files, {rows} rows",
            catalog.events.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut stored: Vec<_> = read_events(dir.path(), id)
        .await
        .into_iter()
        .map(|e| e.uuid)
        .collect();
    stored.sort();
    sent.sort();
    assert_eq!(stored, sent, "every event exactly once after compaction");
    server.terminate();
}
