//! Server-side evaluation of flags for one actor (protocol spec §3.3, insight semantics §6).
//!
//! ```text
//!  deleted / inactive ─────────────────────────────► false  flag_disabled
//!  group flag, no key for its group type ──────────► false  no_group_type
//!  super condition (early access) whose person property is known ─► super_condition_value
//!  holdout: holdout_hash(id) <= exclusion% ────────► "holdout-<id>"  holdout_condition_value
//!  conditions, in order (the first match wins):
//!     group condition, group missing ─► skipped (no_group_type)
//!     a filter false ─────────────────► no_condition_match
//!     a filter's property missing ────► Inconclusive (if properties are partial)
//!     rollout_hash > rollout% ────────► out_of_rollout_bound
//!     otherwise ──────────────────────► true / variant   condition_match
//!  none matched ───────────────────────────────────► false, the highest-ranked reason
//! ```
//!
//! Evaluation reads only what the caller gives it: the request's properties
//! ([`PropertyMode::Partial`]), or those merged with stored ones ([`PropertyMode::Complete`]).
//! With partial properties, a condition that needs a property the caller did not send makes
//! the flag [`Evaluation::Inconclusive`]; the server then loads the stored person/group
//! properties, merges the request's over them and evaluates again with complete ones.
//!
//! Preparing a flag ([`CompiledFlag::compile`]) is also its validation: the same pass checks
//! the definition against the group types and compiles regexes, dates and versions once.

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::definition::{
    Condition, FeatureFlag, GroupTypes, Operator, Problem, PropertyFilter, PropertyType,
    ValidationError,
};
use crate::hash;
use crate::property::{Match, PreparedMatch};
use crate::{Error, Result};

/// Whether the properties in an [`EvalContext`] are all there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PropertyMode {
    /// Only what the request carried: a property a condition needs and the request lacks
    /// makes the flag inconclusive.
    #[default]
    Partial,
    /// Stored properties merged with the request's: an absent property is unset.
    Complete,
}

/// Who a flag is evaluated for.
#[derive(Debug, Clone)]
pub struct EvalContext {
    /// The person's distinct id; person flags bucket on it.
    pub distinct_id: String,
    /// The device id, for flags with `bucketing_identifier: "device_id"`.
    pub device_id: Option<String>,
    /// For `ensure_experience_continuity` flags: the id to bucket on instead of
    /// `distinct_id` (the anonymous id the person had before identifying).
    pub hash_key_override: Option<String>,
    /// Group type name → group key (numbers already turned into their text).
    pub groups: BTreeMap<String, String>,
    /// The person's properties. `distinct_id` is added when absent, as the SDKs do.
    pub person_properties: Map<String, Value>,
    /// Group type name → that group's properties. `$group_key` is added when absent.
    pub group_properties: BTreeMap<String, Map<String, Value>>,
    /// See [`PropertyMode`].
    pub property_mode: PropertyMode,
    /// The instant relative dates (`-7d`) count back from.
    pub now: DateTime<Utc>,
}

impl EvalContext {
    /// A context for a person with no groups and no properties, partial, at the current time.
    pub fn new(distinct_id: impl Into<String>) -> Self {
        Self {
            distinct_id: distinct_id.into(),
            device_id: None,
            hash_key_override: None,
            groups: BTreeMap::new(),
            person_properties: Map::new(),
            group_properties: BTreeMap::new(),
            property_mode: PropertyMode::Partial,
            now: Utc::now(),
        }
    }

    /// The second pass of server-side evaluation: this request's properties merged over the
    /// stored ones (the request's win, key by key), now [`PropertyMode::Complete`].
    pub fn with_stored_properties(
        &self,
        stored_person: &Map<String, Value>,
        stored_groups: &BTreeMap<String, Map<String, Value>>,
    ) -> Self {
        let mut person = stored_person.clone();
        person.extend(
            self.person_properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let mut group_properties = stored_groups.clone();
        for (group_type, props) in &self.group_properties {
            group_properties
                .entry(group_type.clone())
                .or_default()
                .extend(props.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Self {
            person_properties: person,
            group_properties,
            property_mode: PropertyMode::Complete,
            ..self.clone()
        }
    }

    fn complete(&self) -> bool {
        self.property_mode == PropertyMode::Complete
    }

    /// The key of a group type for this actor, if it has a non-empty one.
    fn group_key(&self, group_type: &str) -> Option<&str> {
        self.groups
            .get(group_type)
            .map(String::as_str)
            .filter(|k| !k.is_empty())
    }

    fn lookup(&self, source: &Source, key: &str) -> Option<Cow<'_, Value>> {
        match source {
            Source::Person => match self.person_properties.get(key) {
                Some(v) => Some(Cow::Borrowed(v)),
                None if key == "distinct_id" => {
                    Some(Cow::Owned(Value::String(self.distinct_id.clone())))
                }
                None => None,
            },
            Source::Group { name, .. } => {
                match self.group_properties.get(name).and_then(|p| p.get(key)) {
                    Some(v) => Some(Cow::Borrowed(v)),
                    None if key == "$group_key" => self
                        .groups
                        .get(name)
                        .map(|k| Cow::Owned(Value::String(k.clone()))),
                    None => None,
                }
            }
        }
    }
}

/// A property a condition needed and the caller did not send.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PropertyRef {
    /// A person property.
    Person {
        /// Property name.
        key: String,
    },
    /// A property of the actor's group of this type.
    Group {
        /// Group type name.
        group_type: String,
        /// Property name.
        key: String,
    },
}

/// Why a flag has the value it has; serialises as the `reason` of a `/flags` v2 record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// The reason code.
    pub code: ReasonCode,
    /// The deciding condition set, 0-based (None when no condition decided).
    pub condition_index: Option<usize>,
    /// Human text: "Matched condition set 1", "Out of rollout bound", ….
    pub description: String,
}

/// PostHog's reason codes (protocol spec §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// A condition set matched.
    ConditionMatch,
    /// No condition set matched.
    NoConditionMatch,
    /// A condition's properties matched but the actor is outside its rollout.
    OutOfRolloutBound,
    /// A group flag and the actor has no group of its type.
    NoGroupType,
    /// Decided by the early-access super condition.
    SuperConditionValue,
    /// The actor is in the experiment's holdout.
    HoldoutConditionValue,
    /// The flag is inactive (or deleted).
    FlagDisabled,
}

impl ReasonCode {
    /// The code as JSON spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConditionMatch => "condition_match",
            Self::NoConditionMatch => "no_condition_match",
            Self::OutOfRolloutBound => "out_of_rollout_bound",
            Self::NoGroupType => "no_group_type",
            Self::SuperConditionValue => "super_condition_value",
            Self::HoldoutConditionValue => "holdout_condition_value",
            Self::FlagDisabled => "flag_disabled",
        }
    }
}

/// A flag's value for one actor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagResult {
    /// Flag key.
    pub key: String,
    /// Flag id (for `$feature_flag_id` and `metadata.id`).
    pub id: u64,
    /// Flag version (for `metadata.version`).
    pub version: u64,
    /// Whether the flag is on.
    pub enabled: bool,
    /// The variant, for multivariate flags (and holdouts).
    pub variant: Option<String>,
    /// Why.
    pub reason: Reason,
    /// The payload for the value, as JSON text; only when enabled.
    pub payload: Option<String>,
}

impl FlagResult {
    /// The value SDKs see: the variant if any, else `enabled`.
    pub fn value(&self) -> Value {
        match &self.variant {
            Some(v) => Value::String(v.clone()),
            None => Value::Bool(self.enabled),
        }
    }

    /// The v2 record of a `/flags?v=2` (or v=4) response (protocol spec §3.2).
    pub fn to_v2_record(&self) -> Value {
        json!({
            "key": self.key,
            "enabled": self.enabled,
            "variant": self.variant,
            "reason": self.reason,
            "metadata": {
                "id": self.id,
                "version": self.version,
                "payload": self.payload,
                "description": null,
            },
        })
    }
}

/// The outcome of evaluating one flag.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Evaluation {
    /// The value is known.
    Decided(FlagResult),
    /// The value depends on properties the caller did not send (only with
    /// [`PropertyMode::Partial`]): load them and evaluate again.
    Inconclusive {
        /// Flag key.
        key: String,
        /// What was missing, sorted and without duplicates.
        missing: Vec<PropertyRef>,
    },
}

impl Evaluation {
    /// The result, if decided.
    pub fn decided(&self) -> Option<&FlagResult> {
        match self {
            Self::Decided(r) => Some(r),
            Self::Inconclusive { .. } => None,
        }
    }
}

/// Where a prepared filter reads its property.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Person,
    Group { index: u8, name: String },
}

#[derive(Debug, Clone)]
struct CompiledFilter {
    key: String,
    source: Source,
    matcher: PreparedMatch,
}

/// How a condition is aggregated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Aggregation {
    Person,
    Group { index: u8, name: String },
}

#[derive(Debug, Clone)]
struct CompiledCondition {
    aggregation: Aggregation,
    filters: Vec<CompiledFilter>,
    /// Percent, 0..=100.
    rollout: f64,
    variant: Option<String>,
}

/// A flag checked against a project's group types and prepared for evaluation.
#[derive(Debug, Clone)]
pub struct CompiledFlag {
    flag: Arc<FeatureFlag>,
    aggregation: Aggregation,
    super_condition: Option<CompiledCondition>,
    conditions: Vec<CompiledCondition>,
    /// Variant key with its cumulative `[min, max)` range of the variant hash.
    variants: Vec<(String, f64, f64)>,
}

/// Internal ranking of non-matching reasons; a higher rank wins (PostHog's
/// `FeatureFlagMatchReason` ordering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    NoGroupType = 1,
    NoConditionMatch = 2,
    OutOfRolloutBound = 3,
}

fn percent_in_range(path: &str, value: f64) -> Result<(), ValidationError> {
    if (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(ValidationError::new(
            path,
            Problem::PercentOutOfRange(value),
        ))
    }
}

fn resolve_group(
    path: String,
    index: u8,
    groups: &GroupTypes,
) -> Result<Aggregation, ValidationError> {
    match groups.name(index) {
        Some(name) => Ok(Aggregation::Group {
            index,
            name: name.to_owned(),
        }),
        None => Err(ValidationError::new(
            path,
            Problem::UnknownGroupTypeIndex {
                index,
                known: groups.describe(),
            },
        )),
    }
}

fn compile_filter(
    path: &str,
    filter: &PropertyFilter,
    aggregation: &Aggregation,
    groups: &GroupTypes,
) -> Result<CompiledFilter, ValidationError> {
    if filter.key.is_empty() {
        return Err(ValidationError::new(format!("{path}.key"), Problem::Empty));
    }
    let type_path = format!("{path}.type");
    let source = match (&filter.property_type, aggregation) {
        (PropertyType::Cohort, _) => {
            return Err(ValidationError::new(type_path, Problem::CohortUnsupported));
        }
        (PropertyType::Flag, _) => {
            return Err(ValidationError::new(
                type_path,
                Problem::FlagDependencyUnsupported,
            ));
        }
        (PropertyType::Other(t), _) => {
            return Err(ValidationError::new(
                type_path,
                Problem::UnknownPropertyType(t.clone()),
            ));
        }
        (PropertyType::Person, Aggregation::Person) => Source::Person,
        (PropertyType::Person, Aggregation::Group { index, name }) => {
            return Err(ValidationError::new(
                type_path,
                Problem::PersonPropertyInGroupFlag {
                    key: filter.key.clone(),
                    index: *index,
                    group_type: name.clone(),
                },
            ));
        }
        (PropertyType::Group, Aggregation::Person) => {
            return Err(ValidationError::new(
                type_path,
                Problem::GroupPropertyInPersonFlag {
                    key: filter.key.clone(),
                },
            ));
        }
        (PropertyType::Group, Aggregation::Group { index, name }) => {
            if let Some(found) = filter.group_type_index {
                let gti_path = format!("{path}.group_type_index");
                resolve_group(gti_path.clone(), found, groups)?;
                if found != *index {
                    return Err(ValidationError::new(
                        gti_path,
                        Problem::GroupTypeMismatch {
                            key: filter.key.clone(),
                            found,
                            expected: *index,
                        },
                    ));
                }
            }
            Source::Group {
                index: *index,
                name: name.clone(),
            }
        }
    };
    let operator = filter.operator.clone().unwrap_or(Operator::Exact);
    let matcher = PreparedMatch::new(&operator, &filter.value).map_err(|problem| {
        let field = match problem {
            Problem::UnknownOperator(_) => "operator",
            _ => "value",
        };
        ValidationError::new(format!("{path}.{field}"), problem)
    })?;
    Ok(CompiledFilter {
        key: filter.key.clone(),
        source,
        matcher,
    })
}

fn compile_condition(
    path: &str,
    condition: &Condition,
    aggregation: Aggregation,
    variant_keys: &[String],
    groups: &GroupTypes,
) -> Result<CompiledCondition, ValidationError> {
    let rollout = condition.rollout_percentage.unwrap_or(100.0);
    percent_in_range(&format!("{path}.rollout_percentage"), rollout)?;
    if let Some(v) = &condition.variant
        && !variant_keys.contains(v)
    {
        return Err(ValidationError::new(
            format!("{path}.variant"),
            Problem::UnknownVariant(v.clone()),
        ));
    }
    let filters = condition
        .properties
        .iter()
        .enumerate()
        .map(|(j, f)| compile_filter(&format!("{path}.properties[{j}]"), f, &aggregation, groups))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CompiledCondition {
        aggregation,
        filters,
        rollout,
        variant: condition.variant.clone(),
    })
}

/// Keeps the highest-ranked non-match; ties go to the later condition, as in PostHog.
fn note(best: &mut Option<(Rank, usize)>, rank: Rank, index: usize) {
    if best.is_none_or(|(r, _)| r <= rank) {
        *best = Some((rank, index));
    }
}

/// The longest flag key, in characters (PostHog's `FeatureFlag.key` is a 400-character field).
pub const MAX_FLAG_KEY_CHARS: usize = 400;

fn is_valid_flag_key(key: &str) -> bool {
    key.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What one condition said.
enum ConditionOutcome {
    Matched,
    NoMatch(Rank),
    Missing(Vec<PropertyRef>),
}

impl CompiledFlag {
    /// Validates `flag` against the project's group types and prepares it. The error names
    /// the JSON path of the first problem.
    pub fn compile(flag: &FeatureFlag, groups: &GroupTypes) -> Result<Self, ValidationError> {
        if flag.key.is_empty() {
            return Err(ValidationError::new("key", Problem::Empty));
        }
        let chars = flag.key.chars().count();
        if chars > MAX_FLAG_KEY_CHARS {
            return Err(ValidationError::new(
                "key",
                Problem::TooLong {
                    max: MAX_FLAG_KEY_CHARS,
                    got: chars,
                },
            ));
        }
        if !is_valid_flag_key(&flag.key) {
            return Err(ValidationError::new(
                "key",
                Problem::BadKey(flag.key.clone()),
            ));
        }
        if let Some(b) = &flag.bucketing_identifier
            && b != "distinct_id"
            && b != "device_id"
        {
            return Err(ValidationError::new(
                "bucketing_identifier",
                Problem::BadBucketingIdentifier(b.clone()),
            ));
        }
        let filters = &flag.filters;
        let aggregation = match filters.aggregation_group_type_index {
            Some(i) => resolve_group("filters.aggregation_group_type_index".to_owned(), i, groups)?,
            None => Aggregation::Person,
        };

        let mut variants = Vec::new();
        if let Some(mv) = &filters.multivariate {
            let mut seen = HashSet::new();
            let mut sum = 0.0;
            let mut min = 0.0;
            for (i, v) in mv.variants.iter().enumerate() {
                let path = format!("filters.multivariate.variants[{i}]");
                if v.key.is_empty() {
                    return Err(ValidationError::new(format!("{path}.key"), Problem::Empty));
                }
                if !seen.insert(v.key.as_str()) {
                    return Err(ValidationError::new(
                        format!("{path}.key"),
                        Problem::DuplicateVariant(v.key.clone()),
                    ));
                }
                percent_in_range(&format!("{path}.rollout_percentage"), v.rollout_percentage)?;
                sum += v.rollout_percentage;
                // Same float steps as the SDKs' lookup table: min + pct / 100.
                let max = min + v.rollout_percentage / 100.0;
                variants.push((v.key.clone(), min, max));
                min = max;
            }
            if !mv.variants.is_empty() && (sum - 100.0).abs() > 1e-9 {
                return Err(ValidationError::new(
                    "filters.multivariate.variants",
                    Problem::VariantSum(sum),
                ));
            }
        }
        let variant_keys: Vec<String> = variants.iter().map(|(k, _, _)| k.clone()).collect();

        if let Some(h) = &filters.holdout {
            percent_in_range(
                "filters.holdout.exclusion_percentage",
                h.exclusion_percentage,
            )?;
        }

        let mut conditions = Vec::with_capacity(filters.groups.len());
        for (i, condition) in filters.groups.iter().enumerate() {
            let path = format!("filters.groups[{i}]");
            let agg = match condition.aggregation_group_type_index {
                None => aggregation.clone(),
                Some(None) => Aggregation::Person,
                Some(Some(index)) => resolve_group(
                    format!("{path}.aggregation_group_type_index"),
                    index,
                    groups,
                )?,
            };
            conditions.push(compile_condition(
                &path,
                condition,
                agg,
                &variant_keys,
                groups,
            )?);
        }

        // Early access: `feature_enrollment: true` wins over legacy `super_groups`; both are
        // person conditions whatever the flag's aggregation (enrollment is per person).
        let super_condition = if filters.feature_enrollment == Some(true) {
            let enrollment = Condition {
                properties: vec![PropertyFilter {
                    key: format!("$feature_enrollment/{}", flag.key),
                    value: json!(["true"]),
                    operator: Some(Operator::Exact),
                    property_type: PropertyType::Person,
                    group_type_index: None,
                    negation: None,
                }],
                rollout_percentage: Some(100.0),
                variant: None,
                aggregation_group_type_index: None,
            };
            Some(compile_condition(
                "filters.feature_enrollment",
                &enrollment,
                Aggregation::Person,
                &[],
                groups,
            )?)
        } else {
            let mut first = None;
            for (i, sg) in filters.super_groups.iter().flatten().enumerate() {
                let compiled = compile_condition(
                    &format!("filters.super_groups[{i}]"),
                    sg,
                    Aggregation::Person,
                    &variant_keys,
                    groups,
                )?;
                if i == 0 && !compiled.filters.is_empty() {
                    first = Some(compiled);
                }
            }
            first
        };

        Ok(Self {
            flag: Arc::new(flag.clone()),
            aggregation,
            super_condition,
            conditions,
            variants,
        })
    }

    /// The definition.
    pub fn flag(&self) -> &FeatureFlag {
        &self.flag
    }

    fn result(
        &self,
        enabled: bool,
        variant: Option<String>,
        code: ReasonCode,
        condition_index: Option<usize>,
        description: String,
    ) -> Evaluation {
        let payload = if enabled {
            self.flag.payload_for(variant.as_deref().unwrap_or("true"))
        } else {
            None
        };
        Evaluation::Decided(FlagResult {
            key: self.flag.key.clone(),
            id: self.flag.id,
            version: self.flag.version,
            enabled,
            variant,
            reason: Reason {
                code,
                condition_index,
                description,
            },
            payload,
        })
    }

    /// The id a condition with this aggregation buckets on; None when the actor has none.
    fn bucketing_id<'a>(&self, aggregation: &Aggregation, ctx: &'a EvalContext) -> Option<&'a str> {
        match aggregation {
            Aggregation::Group { name, .. } => ctx.group_key(name),
            Aggregation::Person => {
                if self.flag.bucketing_identifier.as_deref() == Some("device_id") {
                    return ctx.device_id.as_deref().filter(|d| !d.is_empty());
                }
                if self.flag.ensure_experience_continuity
                    && let Some(h) = ctx.hash_key_override.as_deref().filter(|h| !h.is_empty())
                {
                    return Some(h);
                }
                Some(ctx.distinct_id.as_str())
            }
        }
    }

    fn evaluate_condition(
        &self,
        condition: &CompiledCondition,
        bucketing_id: &str,
        ctx: &EvalContext,
        complete: bool,
    ) -> ConditionOutcome {
        let mut missing = Vec::new();
        for filter in &condition.filters {
            let value = ctx.lookup(&filter.source, &filter.key);
            match filter.matcher.matches(value.as_deref(), complete, ctx.now) {
                Match::Yes => {}
                // One false filter decides the condition, whatever else is missing.
                Match::No => return ConditionOutcome::NoMatch(Rank::NoConditionMatch),
                Match::Missing => missing.push(match &filter.source {
                    Source::Person => PropertyRef::Person {
                        key: filter.key.clone(),
                    },
                    Source::Group { name, .. } => PropertyRef::Group {
                        group_type: name.clone(),
                        key: filter.key.clone(),
                    },
                }),
            }
        }
        if !missing.is_empty() {
            return ConditionOutcome::Missing(missing);
        }
        if condition.rollout >= 100.0
            || hash::rollout_hash(&self.flag.key, bucketing_id) <= condition.rollout / 100.0
        {
            ConditionOutcome::Matched
        } else {
            ConditionOutcome::NoMatch(Rank::OutOfRolloutBound)
        }
    }

    fn variant_for(&self, bucketing_id: &str) -> Option<String> {
        let h = hash::variant_hash(&self.flag.key, bucketing_id);
        self.variants
            .iter()
            .find(|(_, min, max)| *min <= h && h < *max)
            .map(|(k, _, _)| k.clone())
    }

    /// Evaluates the flag for one actor.
    pub fn evaluate(&self, ctx: &EvalContext) -> Evaluation {
        let flag = &*self.flag;
        if flag.deleted || !flag.active {
            return self.result(
                false,
                None,
                ReasonCode::FlagDisabled,
                None,
                "Feature flag is disabled".to_owned(),
            );
        }
        let Some(flag_bucket) = self.bucketing_id(&self.aggregation, ctx) else {
            if let Aggregation::Group { .. } = self.aggregation {
                return self.result(
                    false,
                    None,
                    ReasonCode::NoGroupType,
                    None,
                    "No group type".to_owned(),
                );
            }
            // A device-id flag without a device id: every person condition is skipped below.
            return self.evaluate_conditions(ctx);
        };

        if let Some(sc) = &self.super_condition {
            let known = sc
                .filters
                .iter()
                .any(|f| ctx.lookup(&f.source, &f.key).is_some());
            if known {
                let person_bucket = self.bucketing_id(&Aggregation::Person, ctx);
                // Super conditions treat absent properties as unset.
                let matched = person_bucket.is_some_and(|b| {
                    matches!(
                        self.evaluate_condition(sc, b, ctx, true),
                        ConditionOutcome::Matched
                    )
                });
                return self.result(
                    matched,
                    None,
                    ReasonCode::SuperConditionValue,
                    Some(0),
                    "Super condition value".to_owned(),
                );
            }
            if !ctx.complete() {
                // The stored person may be enrolled: only their properties can tell.
                let mut missing: Vec<PropertyRef> = sc
                    .filters
                    .iter()
                    .map(|f| PropertyRef::Person { key: f.key.clone() })
                    .collect();
                missing.sort();
                missing.dedup();
                return Evaluation::Inconclusive {
                    key: flag.key.clone(),
                    missing,
                };
            }
        }

        if let Some(holdout) = &flag.filters.holdout {
            let pct = holdout.exclusion_percentage.clamp(0.0, 100.0);
            if pct >= 100.0 || hash::holdout_hash(flag_bucket) <= pct / 100.0 {
                return self.result(
                    true,
                    Some(format!("holdout-{}", holdout.id)),
                    ReasonCode::HoldoutConditionValue,
                    None,
                    "Holdout condition value".to_owned(),
                );
            }
        }
        self.evaluate_conditions(ctx)
    }

    fn evaluate_conditions(&self, ctx: &EvalContext) -> Evaluation {
        let mut best: Option<(Rank, usize)> = None;
        let mut skipped_group = false;
        let mut missing: Vec<PropertyRef> = Vec::new();

        for (index, condition) in self.conditions.iter().enumerate() {
            let Some(bucket) = self.bucketing_id(&condition.aggregation, ctx) else {
                match condition.aggregation {
                    Aggregation::Group { .. } => {
                        skipped_group = true;
                        note(&mut best, Rank::NoGroupType, index);
                    }
                    // Device-id bucketing without a device id.
                    Aggregation::Person => note(&mut best, Rank::OutOfRolloutBound, index),
                }
                continue;
            };
            match self.evaluate_condition(condition, bucket, ctx, ctx.complete()) {
                ConditionOutcome::Missing(m) => missing.extend(m),
                ConditionOutcome::NoMatch(rank) => note(&mut best, rank, index),
                ConditionOutcome::Matched => {
                    if !missing.is_empty() {
                        // An earlier condition might have matched first; only its
                        // properties can tell.
                        break;
                    }
                    let variant = condition
                        .variant
                        .clone()
                        .or_else(|| self.variant_for(bucket));
                    return self.result(
                        true,
                        variant,
                        ReasonCode::ConditionMatch,
                        Some(index),
                        format!("Matched condition set {}", index + 1),
                    );
                }
            }
        }

        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return Evaluation::Inconclusive {
                key: self.flag.key.clone(),
                missing,
            };
        }
        let (code, index, description) = match best {
            None => (
                ReasonCode::NoConditionMatch,
                None,
                "No matching condition set".to_owned(),
            ),
            Some((Rank::NoGroupType, i)) => {
                (ReasonCode::NoGroupType, Some(i), "No group type".to_owned())
            }
            Some((Rank::OutOfRolloutBound, i)) => (
                ReasonCode::OutOfRolloutBound,
                Some(i),
                "Out of rollout bound".to_owned(),
            ),
            Some((Rank::NoConditionMatch, i)) => (
                ReasonCode::NoConditionMatch,
                Some(i),
                if skipped_group {
                    "No matching condition set (group conditions were not evaluated because \
                     no group type was provided)"
                        .to_owned()
                } else {
                    "No matching condition set".to_owned()
                },
            ),
        };
        self.result(false, None, code, index, description)
    }
}

/// A project's flags, each prepared once; a flag that does not validate is kept with its
/// error so it is reported on every evaluation without failing the others.
#[derive(Debug, Clone, Default)]
pub struct FlagSet {
    flags: Vec<(String, std::result::Result<CompiledFlag, ValidationError>)>,
}

impl FlagSet {
    /// Prepares every non-deleted flag.
    pub fn compile(flags: &[FeatureFlag], groups: &GroupTypes) -> Self {
        Self {
            flags: flags
                .iter()
                .filter(|f| !f.deleted)
                .map(|f| (f.key.clone(), CompiledFlag::compile(f, groups)))
                .collect(),
        }
    }

    /// Number of flags (valid or not).
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Evaluates every flag for one actor; each flag's error is its own.
    pub fn evaluate(&self, ctx: &EvalContext) -> Vec<(String, Result<Evaluation>)> {
        self.evaluate_where(ctx, |_| true)
    }

    /// Evaluates the flags whose keys pass `wanted` (`flag_keys_to_evaluate`).
    pub fn evaluate_where(
        &self,
        ctx: &EvalContext,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<(String, Result<Evaluation>)> {
        self.flags
            .iter()
            .filter(|(key, _)| wanted(key))
            .map(|(key, compiled)| {
                let outcome = match compiled {
                    Ok(flag) => Ok(flag.evaluate(ctx)),
                    Err(e) => Err(Error::InvalidFlag {
                        key: key.clone(),
                        source: e.clone(),
                    }),
                };
                (key.clone(), outcome)
            })
            .collect()
    }
}

/// Evaluates one flag for one actor (validating it first).
pub fn evaluate(flag: &FeatureFlag, groups: &GroupTypes, ctx: &EvalContext) -> Result<Evaluation> {
    let compiled = CompiledFlag::compile(flag, groups).map_err(|source| Error::InvalidFlag {
        key: flag.key.clone(),
        source,
    })?;
    Ok(compiled.evaluate(ctx))
}

/// Evaluates every non-deleted flag; a broken flag is an error in its own slot only.
pub fn evaluate_all(
    flags: &[FeatureFlag],
    groups: &GroupTypes,
    ctx: &EvalContext,
) -> Vec<(String, Result<Evaluation>)> {
    FlagSet::compile(flags, groups).evaluate(ctx)
}
