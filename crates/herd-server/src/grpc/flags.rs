//! `herd.v1.FlagsService`: create, update, list, get and delete a project's flag definitions,
//! and evaluate them for one actor. Errors go through [`crate::flags::FlagsError`]'s one mapping.

use std::collections::BTreeSet;
use std::sync::Arc;

use herd_core::GroupTypeSlot;
use herd_core::ProjectId;
use herd_flags::{FeatureFlag, GroupTypes, PropertyType};
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use crate::flags::{Actor, FlagsError, FlagsState, Outcome};
use crate::grpc::authenticate;
use crate::grpc::proto::flags_service_server::FlagsService;
use crate::grpc::proto::{
    CreateFlagRequest, EvaluateFlagsRequest, EvaluateFlagsResponse, Flag, FlagRef, FlagValue,
    ListFlagsRequest, ListFlagsResponse, UpdateFlagRequest,
};

/// The flags service over the shared flag state.
#[derive(Debug)]
pub struct Flags {
    state: Arc<FlagsState>,
}

impl Flags {
    /// A service over `state`.
    pub fn new(state: Arc<FlagsState>) -> Self {
        Self { state }
    }

    fn project<T>(&self, request: &Request<T>) -> Result<ProjectId, Status> {
        Ok(authenticate(self.state.db(), request)?.project().id)
    }

    /// Parses a definition and applies `group_type` (assigning the project a slot for it when
    /// needed). Returns the flag and the group types to validate it against.
    async fn definition(
        &self,
        project: ProjectId,
        json: &str,
        group_type: &str,
    ) -> Result<(FeatureFlag, GroupTypes), FlagsError> {
        if json.trim().is_empty() {
            return Err(FlagsError::BadRequest(
                "definition_json: required (the flag as JSON)".into(),
            ));
        }
        let mut flag: FeatureFlag = serde_json::from_str(json)
            .map_err(|e| FlagsError::BadRequest(format!("definition_json: {e}")))?;
        let group_type = group_type.trim();
        if !group_type.is_empty() {
            let index = self.resolve_group_type(project, group_type).await?;
            match flag.filters.aggregation_group_type_index {
                Some(i) if i != index => {
                    return Err(FlagsError::BadRequest(format!(
                        "group_type: {group_type:?} is group type index {index}, but the \
                         definition's filters.aggregation_group_type_index is {i}"
                    )));
                }
                _ => flag.filters.aggregation_group_type_index = Some(index),
            }
        }
        fill_group_type_indexes(&mut flag);
        Ok((flag, self.state.group_types(project).await))
    }

    async fn resolve_group_type(&self, project: ProjectId, name: &str) -> Result<u8, FlagsError> {
        let db = self.state.db();
        let handle = db
            .project(project)
            .ok_or_else(|| FlagsError::NotFound(format!("project {project} is gone")))?;
        let mut guard = db.lock(&handle).await;
        match guard.resolve_group_type(name).await? {
            GroupTypeSlot::Existing(i) | GroupTypeSlot::Assigned(i) => Ok(i),
            GroupTypeSlot::Full => Err(FlagsError::BadRequest(format!(
                "group_type: the project already has five group types ({}); {name:?} cannot \
                 be added",
                guard.mapping().types().join(", ")
            ))),
        }
    }

    async fn flag_of(&self, project: ProjectId, r: &FlagRef) -> Result<FeatureFlag, FlagsError> {
        let store = self.state.store();
        let found = if r.id != 0 {
            store.get(project, r.id)
        } else if !r.key.is_empty() {
            store.get_by_key(project, &r.key)
        } else {
            return Err(FlagsError::BadRequest(
                "flag: give its id or its key".into(),
            ));
        };
        found.ok_or_else(|| {
            FlagsError::NotFound(if r.id != 0 {
                format!("no flag with id {}", r.id)
            } else {
                format!("no flag with key {:?}", r.key)
            })
        })
    }

    async fn to_proto(&self, project: ProjectId, flag: &FeatureFlag) -> Result<Flag, FlagsError> {
        let groups = self.state.group_types(project).await;
        let definition_json = serde_json::to_string(flag)
            .map_err(|e| FlagsError::Internal(format!("serialising flag {}: {e}", flag.key)))?;
        Ok(Flag {
            id: flag.id,
            key: flag.key.clone(),
            version: flag.version,
            active: flag.active,
            group_type: flag
                .filters
                .aggregation_group_type_index
                .and_then(|i| groups.name(i))
                .unwrap_or_default()
                .to_owned(),
            definition_json,
        })
    }
}

/// Group property filters without a `group_type_index` get the one their condition
/// aggregates by, so the SDKs (which read it) see the same targeting herd evaluates.
fn fill_group_type_indexes(flag: &mut FeatureFlag) {
    let flag_level = flag.filters.aggregation_group_type_index;
    for condition in &mut flag.filters.groups {
        let Some(index) = condition.effective_aggregation(flag_level) else {
            continue;
        };
        for filter in &mut condition.properties {
            if filter.property_type == PropertyType::Group && filter.group_type_index.is_none() {
                filter.group_type_index = Some(index);
            }
        }
    }
}

/// google.protobuf.Struct → JSON object.
fn from_struct(s: &prost_types::Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), from_proto(v)))
        .collect()
}

fn from_proto(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers read back as integers, as a JSON request would carry them.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_proto).collect()),
        Some(Kind::StructValue(s)) => Value::Object(from_struct(s)),
    }
}

fn flag_value(outcome: Outcome) -> FlagValue {
    match outcome {
        Outcome::Value(r) => FlagValue {
            enabled: r.enabled,
            variant: r.variant.unwrap_or_default(),
            reason: r.reason.code.as_str().to_owned(),
            reason_description: r.reason.description,
            condition_index: r
                .reason
                .condition_index
                .and_then(|i| i32::try_from(i).ok())
                .unwrap_or(-1),
            payload_json: if r.enabled {
                r.payload.unwrap_or_default()
            } else {
                String::new()
            },
            flag_id: r.id,
            flag_version: r.version,
            error: String::new(),
            key: r.key,
        },
        Outcome::Failed {
            key,
            id,
            version,
            code,
            message,
        } => FlagValue {
            key,
            enabled: false,
            variant: String::new(),
            reason: "error".to_owned(),
            reason_description: code.to_owned(),
            condition_index: -1,
            payload_json: String::new(),
            flag_id: id,
            flag_version: version,
            error: message,
        },
    }
}

#[tonic::async_trait]
impl FlagsService for Flags {
    async fn create_flag(
        &self,
        request: Request<CreateFlagRequest>,
    ) -> Result<Response<Flag>, Status> {
        let project = self.project(&request)?;
        let req = request.into_inner();
        let (flag, groups) = self
            .definition(project, &req.definition_json, &req.group_type)
            .await?;
        let stored = self
            .state
            .store()
            .create(project, flag, &groups)
            .map_err(FlagsError::from)?;
        tracing::info!(project, key = stored.key, id = stored.id, "flag created");
        Ok(Response::new(self.to_proto(project, &stored).await?))
    }

    async fn update_flag(
        &self,
        request: Request<UpdateFlagRequest>,
    ) -> Result<Response<Flag>, Status> {
        let project = self.project(&request)?;
        let req = request.into_inner();
        let target = req.flag.unwrap_or_default();
        let current = self.flag_of(project, &target).await?;
        let (flag, groups) = self
            .definition(project, &req.definition_json, &req.group_type)
            .await?;
        let stored = self
            .state
            .store()
            .update(project, current.id, flag, &groups)
            .map_err(FlagsError::from)?;
        tracing::info!(
            project,
            key = stored.key,
            version = stored.version,
            "flag updated"
        );
        Ok(Response::new(self.to_proto(project, &stored).await?))
    }

    async fn list_flags(
        &self,
        request: Request<ListFlagsRequest>,
    ) -> Result<Response<ListFlagsResponse>, Status> {
        let project = self.project(&request)?;
        let mut flags = Vec::new();
        for f in self.state.store().list(project) {
            flags.push(self.to_proto(project, &f).await?);
        }
        Ok(Response::new(ListFlagsResponse { flags }))
    }

    async fn get_flag(&self, request: Request<FlagRef>) -> Result<Response<Flag>, Status> {
        let project = self.project(&request)?;
        let flag = self.flag_of(project, request.get_ref()).await?;
        Ok(Response::new(self.to_proto(project, &flag).await?))
    }

    async fn delete_flag(&self, request: Request<FlagRef>) -> Result<Response<Flag>, Status> {
        let project = self.project(&request)?;
        let flag = self.flag_of(project, request.get_ref()).await?;
        let removed = self
            .state
            .store()
            .delete(project, flag.id)
            .map_err(FlagsError::from)?;
        tracing::info!(project, key = removed.key, "flag deleted");
        Ok(Response::new(self.to_proto(project, &removed).await?))
    }

    async fn evaluate_flags(
        &self,
        request: Request<EvaluateFlagsRequest>,
    ) -> Result<Response<EvaluateFlagsResponse>, Status> {
        let project = self.project(&request)?;
        let req = request.into_inner();
        let actor = Actor {
            distinct_id: req.distinct_id,
            device_id: Some(req.device_id).filter(|d| !d.is_empty()),
            groups: req
                .groups
                .into_iter()
                .filter(|(_, key)| !key.is_empty())
                .collect(),
            person_properties: req
                .person_properties
                .as_ref()
                .map(from_struct)
                .unwrap_or_default(),
            group_properties: req
                .group_properties
                .iter()
                .map(|(t, s)| (t.clone(), from_struct(s)))
                .collect(),
            flag_keys: if req.flag_keys.is_empty() {
                None
            } else {
                Some(req.flag_keys.into_iter().collect::<BTreeSet<_>>())
            },
        };
        let outcomes = self.state.evaluate(project, actor).await;
        let errors = outcomes.iter().any(|o| matches!(o, Outcome::Failed { .. }));
        Ok(Response::new(EvaluateFlagsResponse {
            flags: outcomes.into_iter().map(flag_value).collect(),
            errors_while_computing_flags: errors,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn group_filters_get_their_condition_index() {
        let mut flag: FeatureFlag = serde_json::from_value(serde_json::json!({
            "key": "g",
            "filters": {"aggregation_group_type_index": 1, "groups": [
                {"properties": [{"key": "plan", "value": "x", "type": "group"}]}]}
        }))
        .unwrap();
        fill_group_type_indexes(&mut flag);
        assert_eq!(
            flag.filters.groups[0].properties[0].group_type_index,
            Some(1)
        );
    }

    #[test]
    fn struct_numbers_read_back_as_json_would() {
        use prost_types::value::Kind;
        let v = |k| prost_types::Value { kind: Some(k) };
        assert_eq!(from_proto(&v(Kind::NumberValue(3.0))), serde_json::json!(3));
        assert_eq!(
            from_proto(&v(Kind::NumberValue(2.5))),
            serde_json::json!(2.5)
        );
    }
}
