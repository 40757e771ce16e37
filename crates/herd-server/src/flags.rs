//! Feature flags at the server edge: the state the HTTP routes ([`crate::http::flags`]) and the
//! gRPC service ([`crate::grpc::flags`]) share, and the one mapping of flag errors to HTTP
//! statuses and gRPC codes ([`FlagsError`]).
//!
//! Server-side evaluation of one request (protocol spec §3.3):
//!
//! ```text
//!  request properties ──► pass 1 (Partial) ──► Decided ─────────────────────────► value
//!                                     │
//!                                     └──► Inconclusive ─┬─ a person property missing
//!                                                        │     ─► failed (herd keeps no
//!                                                        │        person profiles)
//!                                                        └─ only group properties missing
//!                                                              ─► load the stored group
//!                                                                 state, pass 2 (Complete)
//! ```
//!
//! A flag that does not compile (a definition file edited by hand) fails alone; the others
//! are answered. Compiled flags and the definitions document are cached per project and
//! rebuilt when the flag store's revision or the project's group types change.
//!
//! Must not parse HTTP or protobuf: the edges turn requests into an [`Actor`] and
//! [`Outcome`]s into responses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herd_core::ProjectId;
use herd_flags::{
    Definitions, EvalContext, Evaluation, FeatureFlag, FlagResult, FlagSet, FlagStore, GroupTypes,
    PropertyRef,
};
use herd_storage::Db;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

/// Everything that can go wrong serving flags, mapped once to HTTP and gRPC.
#[derive(Debug, thiserror::Error)]
pub enum FlagsError {
    /// A request or definition the client must fix; the text names the field.
    #[error("{0}")]
    BadRequest(String),
    /// No or an unknown token / key.
    #[error("{0}")]
    Unauthorized(String),
    /// No such flag.
    #[error("{0}")]
    NotFound(String),
    /// A flag with this key exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The body is over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// The flag store or the data store failed.
    #[error("{0}")]
    Internal(String),
}

impl From<herd_flags::Error> for FlagsError {
    fn from(e: herd_flags::Error) -> Self {
        use herd_flags::Error as E;
        match &e {
            E::InvalidFlag { .. } => Self::BadRequest(e.to_string()),
            E::DuplicateKey { .. } => Self::AlreadyExists(e.to_string()),
            E::NotFound { .. } => Self::NotFound(e.to_string()),
            E::Io { .. } | E::Corrupt { .. } => Self::Internal(e.to_string()),
        }
    }
}

impl From<herd_storage::Error> for FlagsError {
    fn from(e: herd_storage::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

impl FlagsError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "validation_error",
                "invalid_payload",
            ),
            Self::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
            ),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request", "not_found"),
            Self::AlreadyExists(_) => (StatusCode::CONFLICT, "validation_error", "unique"),
            Self::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "validation_error",
                "payload_too_large",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal",
            ),
        }
    }

    pub(crate) fn log(&self) {
        if matches!(self, Self::Internal(_)) {
            tracing::error!(error = %self, "flags request failed");
        } else {
            tracing::debug!(error = %self, "flags request refused");
        }
    }
}

impl IntoResponse for FlagsError {
    fn into_response(self) -> Response {
        self.log();
        let (status, kind, code) = self.parts();
        let body = json!({"type": kind, "code": code, "detail": herd_core::message::clip(self.to_string())});
        (status, axum::Json(body)).into_response()
    }
}

/// Who flags are evaluated for, as a request described them.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// The person.
    pub distinct_id: String,
    /// For `bucketing_identifier: "device_id"` flags.
    pub device_id: Option<String>,
    /// Group type name → key.
    pub groups: BTreeMap<String, String>,
    /// The person's properties, as sent.
    pub person_properties: Map<String, Value>,
    /// Group type name → properties, as sent.
    pub group_properties: BTreeMap<String, Map<String, Value>>,
    /// Only these flags (`flag_keys_to_evaluate`); None = all.
    pub flag_keys: Option<BTreeSet<String>>,
}

/// One flag's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Evaluated.
    Value(FlagResult),
    /// Could not be evaluated; reported in its own slot.
    Failed {
        /// Flag key.
        key: String,
        /// Flag id (0 if unknown).
        id: u64,
        /// Flag version.
        version: u64,
        /// `missing_person_properties` or `invalid_definition`.
        code: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl Outcome {
    /// The flag's key.
    pub fn key(&self) -> &str {
        match self {
            Self::Value(r) => &r.key,
            Self::Failed { key, .. } => key,
        }
    }
}

/// A project's flags prepared for one revision of the store and one group-type mapping.
#[derive(Debug)]
struct Compiled {
    revision: u64,
    group_types: GroupTypes,
    flags: Arc<[FeatureFlag]>,
    set: FlagSet,
    definitions: Definitions,
}

/// Flags of every project: the durable store plus per-project caches.
#[derive(Debug)]
pub struct FlagsState {
    db: Arc<Db>,
    store: FlagStore,
    compiled: Mutex<HashMap<ProjectId, Arc<Compiled>>>,
}

/// A project's group types as herd-flags sees them.
pub fn group_types_of(mapping: &herd_core::GroupTypeMapping) -> GroupTypes {
    GroupTypes::new(
        mapping
            .types()
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u8)),
    )
}

impl FlagsState {
    /// Opens the flag store under `dir` (`<dir>/flags/<project>.json`).
    pub fn open(db: Arc<Db>, dir: &Path) -> Result<Self, herd_flags::Error> {
        Ok(Self {
            db,
            store: FlagStore::open(dir)?,
            compiled: Mutex::new(HashMap::new()),
        })
    }

    /// The data store.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The flag store.
    pub fn store(&self) -> &FlagStore {
        &self.store
    }

    /// The project's group types.
    pub async fn group_types(&self, project: ProjectId) -> GroupTypes {
        self.db
            .group_types(project)
            .await
            .map(|m| group_types_of(&m))
            .unwrap_or_default()
    }

    async fn compiled(&self, project: ProjectId) -> Arc<Compiled> {
        let group_types = self.group_types(project).await;
        let snapshot = self.store.snapshot(project);
        if let Some(c) = self.compiled.lock().get(&project)
            && c.revision == snapshot.revision
            && c.group_types == group_types
        {
            return c.clone();
        }
        let compiled = Arc::new(Compiled {
            revision: snapshot.revision,
            set: FlagSet::compile(&snapshot.flags, &group_types),
            definitions: Definitions::build(&snapshot.flags, &group_types),
            flags: snapshot.flags,
            group_types,
        });
        self.compiled.lock().insert(project, compiled.clone());
        compiled
    }

    /// The local-evaluation document of the project (protocol spec §3.5).
    pub async fn definitions(&self, project: ProjectId) -> Definitions {
        self.compiled(project).await.definitions.clone()
    }

    /// Evaluates the project's flags (or those the actor names) in id order.
    pub async fn evaluate(&self, project: ProjectId, actor: Actor) -> Vec<Outcome> {
        let compiled = self.compiled(project).await;
        let mut ctx = EvalContext::new(actor.distinct_id);
        ctx.device_id = actor.device_id.filter(|d| !d.is_empty());
        ctx.groups = actor.groups;
        ctx.person_properties = actor.person_properties;
        ctx.group_properties = actor.group_properties;
        let wanted = |key: &str| actor.flag_keys.as_ref().is_none_or(|k| k.contains(key));
        let first = compiled.set.evaluate_where(&ctx, wanted);

        // Flags that only lack group properties get a second pass over the stored state.
        let mut retry: BTreeSet<String> = BTreeSet::new();
        let mut stored_types: BTreeSet<String> = BTreeSet::new();
        for (key, outcome) in &first {
            if let Ok(Evaluation::Inconclusive { missing, .. }) = outcome
                && missing
                    .iter()
                    .all(|m| matches!(m, PropertyRef::Group { .. }))
            {
                retry.insert(key.clone());
                for m in missing {
                    if let PropertyRef::Group { group_type, .. } = m {
                        stored_types.insert(group_type.clone());
                    }
                }
            }
        }
        let second = if retry.is_empty() {
            HashMap::new()
        } else {
            let mut stored = BTreeMap::new();
            for group_type in &stored_types {
                let (Some(index), Some(key)) = (
                    compiled.group_types.index(group_type),
                    ctx.groups.get(group_type),
                ) else {
                    continue;
                };
                if let Some(state) = self.db.current_group(project, index, key).await {
                    stored.insert(group_type.clone(), state.properties());
                }
            }
            let complete = ctx.with_stored_properties(&Map::new(), &stored);
            compiled
                .set
                .evaluate_where(&complete, |k| retry.contains(k))
                .into_iter()
                .collect::<HashMap<_, _>>()
        };

        let mut second = second;
        first
            .into_iter()
            .map(|(key, outcome)| {
                let outcome = match second.remove(&key) {
                    Some(again) => again,
                    None => outcome,
                };
                let flag = compiled.flags.iter().find(|f| f.key == key && !f.deleted);
                let (id, version) = flag.map_or((0, 0), |f| (f.id, f.version));
                match outcome {
                    Ok(Evaluation::Decided(result)) => Outcome::Value(result),
                    Ok(Evaluation::Inconclusive { missing, .. }) => Outcome::Failed {
                        key,
                        id,
                        version,
                        code: "missing_person_properties",
                        message: missing_message(&missing),
                    },
                    Err(e) => Outcome::Failed {
                        key,
                        id,
                        version,
                        code: "invalid_definition",
                        message: e.to_string(),
                    },
                }
            })
            .collect()
    }
}

fn missing_message(missing: &[PropertyRef]) -> String {
    let names: Vec<String> = missing
        .iter()
        .map(|m| match m {
            PropertyRef::Person { key } => format!("person property {key:?}"),
            PropertyRef::Group { group_type, key } => {
                format!("{group_type} property {key:?}")
            }
        })
        .collect();
    format!(
        "needs {} (herd keeps no person profiles: send them in person_properties)",
        names.join(", ")
    )
}
