//! `herd.v1.GroupsService`: a project's group types and the current state of its groups,
//! read from the store's in-memory group state (the merge of every `$groupidentify`).

use std::sync::Arc;

use herd_core::{GroupState, GroupTypeMapping};
use herd_query::QueryEngine;
use herd_storage::Db;
use tonic::{Request, Response, Status};

use crate::grpc::status;

use crate::grpc::authenticate;
use crate::grpc::proto::groups_service_server::GroupsService;
use crate::grpc::proto::{
    GetGroupRequest, Group, GroupType, ListGroupTypesRequest, ListGroupTypesResponse,
    ListGroupsRequest, ListGroupsResponse, RelatedActorsRequest, RelatedActorsResponse,
    RelatedGroup,
};

/// The groups service over one store.
#[derive(Debug)]
pub struct Groups {
    db: Arc<Db>,
    engine: QueryEngine,
}

impl Groups {
    /// A service over `db`; related actors are queried with `engine`.
    pub fn new(db: Arc<Db>, engine: QueryEngine) -> Self {
        Self { db, engine }
    }

    async fn mapping(&self, project: u64) -> GroupTypeMapping {
        self.db.group_types(project).await.unwrap_or_default()
    }
}

fn type_index(mapping: &GroupTypeMapping, group_type: &str) -> Result<u8, Status> {
    herd_query::filters::group_index(mapping, "group_type", group_type).map_err(status::query)
}

/// serde_json → google.protobuf.Value.
fn to_proto(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_proto).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn to_struct(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
    }
}

fn group(index: u8, group_type: &str, key: &str, state: &GroupState) -> Group {
    Group {
        group_type_index: u32::from(index),
        group_type: group_type.to_string(),
        key: key.to_string(),
        properties: Some(to_struct(&state.properties())),
        created_at_unix_micros: state.created_at,
        version: state.version,
    }
}

/// Case-insensitive match of the key or any property value (as text).
#[tonic::async_trait]
impl GroupsService for Groups {
    async fn list_group_types(
        &self,
        request: Request<ListGroupTypesRequest>,
    ) -> Result<Response<ListGroupTypesResponse>, Status> {
        let project = authenticate(&self.db, &request)?.project().id;
        let mapping = self.mapping(project).await;
        let group_types = mapping
            .types()
            .iter()
            .enumerate()
            .map(|(i, name)| GroupType {
                index: i as u32,
                name: name.clone(),
            })
            .collect();
        Ok(Response::new(ListGroupTypesResponse { group_types }))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let project = authenticate(&self.db, &request)?.project().id;
        let req = request.into_inner();
        let mapping = self.mapping(project).await;
        let index = type_index(&mapping, &req.group_type)?;
        let page = crate::groups::page(
            &self.db,
            project,
            index,
            &req.search,
            &req.cursor,
            req.page_size as usize,
        )
        .await
        .map_err(status::query)?;
        Ok(Response::new(ListGroupsResponse {
            groups: page
                .groups
                .iter()
                .map(|(k, s)| group(index, &req.group_type, k, s))
                .collect(),
            next_cursor: page.next_cursor,
        }))
    }

    async fn get_group(
        &self,
        request: Request<GetGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        let project = authenticate(&self.db, &request)?.project().id;
        let req = request.into_inner();
        let mapping = self.mapping(project).await;
        let index = type_index(&mapping, &req.group_type)?;
        let state = self.db.current_group(project, index, &req.key).await;
        let state = state.ok_or_else(|| {
            status::not_found(format!(
                "no {} group with key {:?}",
                req.group_type, req.key
            ))
        })?;
        Ok(Response::new(group(
            index,
            &req.group_type,
            &req.key,
            &state,
        )))
    }

    async fn related_actors(
        &self,
        request: Request<RelatedActorsRequest>,
    ) -> Result<Response<RelatedActorsResponse>, Status> {
        let project = authenticate(&self.db, &request)?.project().id;
        let req = request.into_inner();
        let mapping = self.mapping(project).await;
        let index = type_index(&mapping, &req.group_type)?;
        if req.key.is_empty() {
            return Err(status::invalid("key", "required"));
        }
        let limit = match req.limit as usize {
            0 => 1000,
            n if n > 10_000 => {
                return Err(status::invalid("limit", "at most 10000"));
            }
            n => n,
        };
        let now = chrono::Utc::now().timestamp_micros();
        let related = self
            .engine
            .related_actors(project, index, &req.key, now, limit)
            .await
            .map_err(status::query)?;
        Ok(Response::new(RelatedActorsResponse {
            users: related.users,
            groups: related
                .groups
                .into_iter()
                .map(|(i, key)| RelatedGroup {
                    group_type_index: u32::from(i),
                    group_type: mapping.type_at(i).unwrap_or_default().to_string(),
                    key,
                })
                .collect(),
            truncated: related.truncated,
        }))
    }
}
