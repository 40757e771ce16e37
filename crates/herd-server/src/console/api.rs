//! The console's JSON API (`/api/v1/`): the project and its group types, pages of groups,
//! one group with its related actors and latest events, and the three insights. Insight
//! bodies are herd-query's request types as JSON (`TrendsQuery`, `FunnelQuery`,
//! `RetentionQuery`: snake_case fields and values, unknown fields refused); answers are its
//! result types. A body that does not parse names the field (`series[0].math.math: unknown
//! variant …`); a request herd-query refuses gets its message, as gRPC's INVALID_ARGUMENT does.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use herd_core::{GroupState, GroupTypeMapping};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{Console, authenticate};
use crate::http::ApiError;

/// The latest events shown on a group's page.
const GROUP_EVENTS: usize = 50;
/// Related users and groups shown on a group's page.
const RELATED: usize = 200;

pub(super) fn routes() -> Router<Console> {
    Router::new()
        .route("/api/v1/project", get(project))
        .route("/api/v1/groups/{group_type}", get(groups))
        .route("/api/v1/groups/{group_type}/{key}", get(group))
        .route("/api/v1/insights/trends", post(trends))
        .route("/api/v1/insights/funnel", post(funnel))
        .route("/api/v1/insights/retention", post(retention))
}

type Answer = Result<Json<Value>, ApiError>;

async fn mapping(c: &Console, project: u64) -> GroupTypeMapping {
    c.db.group_types(project).await.unwrap_or_default()
}

fn index(mapping: &GroupTypeMapping, group_type: &str) -> Result<u8, ApiError> {
    Ok(herd_query::filters::group_index(
        mapping,
        "group_type",
        group_type,
    )?)
}

fn group_json(key: &str, state: &GroupState) -> Value {
    json!({
        "key": key,
        "properties": state.properties(),
        "created_at": state.created_at,
        "version": state.version,
    })
}

/// `{id, name, group_types: [{index, name}]}` of the key's project.
async fn project(State(c): State<Console>, headers: HeaderMap) -> Answer {
    let handle = authenticate(&c.db, &headers)?;
    let p = handle.project();
    let types: Vec<Value> = mapping(&c, p.id)
        .await
        .types()
        .iter()
        .enumerate()
        .map(|(i, name)| json!({"index": i, "name": name}))
        .collect();
    Ok(Json(
        json!({"id": p.id, "name": p.name, "group_types": types}),
    ))
}

#[derive(Debug, Deserialize)]
struct PageParams {
    #[serde(default)]
    search: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    page_size: usize,
}

/// A page of groups of one type: `{groups: [{key, properties, created_at, version}],
/// next_cursor}`.
async fn groups(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(group_type): Path<String>,
    Query(params): Query<PageParams>,
) -> Answer {
    let project = authenticate(&c.db, &headers)?.project().id;
    let index = index(&mapping(&c, project).await, &group_type)?;
    let page = crate::groups::page(
        &c.db,
        project,
        index,
        &params.search,
        &params.cursor,
        params.page_size,
    )
    .await?;
    let groups: Vec<Value> = page.groups.iter().map(|(k, s)| group_json(k, s)).collect();
    Ok(Json(
        json!({"groups": groups, "next_cursor": page.next_cursor}),
    ))
}

/// One group: `{group, related: {users, groups: [{group_type, key}], truncated}, events}`.
async fn group(
    State(c): State<Console>,
    headers: HeaderMap,
    Path((group_type, key)): Path<(String, String)>,
) -> Answer {
    let project = authenticate(&c.db, &headers)?.project().id;
    let mapping = mapping(&c, project).await;
    let index = index(&mapping, &group_type)?;
    let state = c.db.current_group(project, index, &key).await;
    let now = chrono::Utc::now().timestamp_micros();
    let related = c
        .engine
        .related_actors(project, index, &key, now, RELATED)
        .await?;
    let events = c
        .engine
        .group_events(project, index, &key, GROUP_EVENTS)
        .await?;
    if state.is_none() && events.is_empty() {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "invalid_request",
            "not_found",
            format!("no {group_type} group with key {key:?}"),
        ));
    }
    let related_groups: Vec<Value> = related
        .groups
        .iter()
        .map(|(i, k)| json!({"group_type": mapping.type_at(*i).unwrap_or_default(), "key": k}))
        .collect();
    Ok(Json(json!({
        "group_type": group_type,
        "group": state.map(|s| group_json(&key, &s)),
        "related": {"users": related.users, "groups": related_groups, "truncated": related.truncated},
        "events": events,
    })))
}

/// `body` as `T`, or a 400 naming the field that does not fit.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." | "" => ApiError::invalid(format!("body: {inner}")),
            _ => ApiError::invalid(format!("{path}: {inner}")),
        }
    })
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

async fn trends(State(c): State<Console>, headers: HeaderMap, body: Bytes) -> Answer {
    let project = authenticate(&c.db, &headers)?.project().id;
    let q: herd_query::TrendsQuery = parse(&body)?;
    let r = c.engine.trends(project, &q, now()).await?;
    Ok(Json(json!(r)))
}

async fn funnel(State(c): State<Console>, headers: HeaderMap, body: Bytes) -> Answer {
    let project = authenticate(&c.db, &headers)?.project().id;
    let q: herd_query::FunnelQuery = parse(&body)?;
    let r = c.engine.funnel(project, &q, now()).await?;
    Ok(Json(json!(r)))
}

async fn retention(State(c): State<Console>, headers: HeaderMap, body: Bytes) -> Answer {
    let project = authenticate(&c.db, &headers)?.project().id;
    let q: herd_query::RetentionQuery = parse(&body)?;
    let r = c.engine.retention(project, &q, now()).await?;
    Ok(Json(json!(r)))
}
