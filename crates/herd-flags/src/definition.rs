//! Flag definitions in PostHog's filter format (protocol spec §3.5), the project's group types,
//! and the definitions document that SDKs poll for local evaluation.
//!
//! The serde types here are the contract with posthog-python and posthog-node: the same
//! [`FeatureFlag`] that herd stores is what `/flags/definitions` serves, so every field the
//! SDKs read is always written (nulls included), and fields they treat as optional are left
//! out when unset. Reading is lenient the way PostHog's own service is: a `null` where a list,
//! map or string is expected means empty.
//!
//! [`FeatureFlag::validate`] checks a definition against a project's group types; the checks
//! live in [`crate::eval`] because validating a flag *is* preparing it for evaluation (regexes
//! compiled, dates and versions parsed), so a flag that validates can always be evaluated.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

use crate::eval::CompiledFlag;

/// `null` reads as the type's default (PostHog writes `null` for empty lists and names).
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Tells "absent" (`None`) from "present and null" (`Some(None)`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Some(Option::<T>::deserialize(deserializer)?))
}

/// Writes a whole percentage as an integer (`50`, not `50.0`), the way PostHog stores them, so
/// a definition reads back byte-for-byte.
fn percent<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        serializer.serialize_i64(*value as i64)
    } else {
        serializer.serialize_f64(*value)
    }
}

fn optional_percent<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => percent(v, serializer),
        None => serializer.serialize_none(),
    }
}

fn default_true() -> bool {
    true
}

fn default_version() -> u64 {
    1
}

fn default_runtime() -> String {
    "all".to_owned()
}

/// One feature flag, as PostHog's definitions endpoint returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureFlag {
    /// Assigned by the store, monotonically per project; never reused.
    #[serde(default)]
    pub id: u64,
    /// The project (PostHog "team") the flag belongs to; set by the store.
    #[serde(default)]
    pub team_id: u64,
    /// Free text; PostHog shows it as the flag's description.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// What SDKs ask for; unique within a project.
    pub key: String,
    /// Targeting.
    #[serde(default, deserialize_with = "null_default")]
    pub filters: FlagFilters,
    /// Soft-deleted flags are never served nor evaluated.
    #[serde(default, deserialize_with = "null_default")]
    pub deleted: bool,
    /// An inactive flag evaluates to false (`flag_disabled`). Absent on create means active.
    #[serde(default = "default_true")]
    pub active: bool,
    /// Bucket on the anonymous id a person had before identifying (SDKs then ask the server).
    #[serde(default, deserialize_with = "null_default")]
    pub ensure_experience_continuity: bool,
    /// Always false in herd (no encrypted remote-config payloads); SDKs read it.
    #[serde(default, deserialize_with = "null_default")]
    pub has_encrypted_payloads: bool,
    /// Bumped by the store on every update.
    #[serde(default = "default_version")]
    pub version: u64,
    /// `all`, `server` or `client`; herd evaluates every flag whatever the runtime.
    #[serde(default = "default_runtime")]
    pub evaluation_runtime: String,
    /// Evaluation tags (environments); carried, not interpreted.
    #[serde(default, deserialize_with = "null_default")]
    pub evaluation_tags: Vec<String>,
    /// `distinct_id` (default) or `device_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucketing_identifier: Option<String>,
}

/// `filters` of a flag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlagFilters {
    /// Condition sets, OR-ed in order: the first that matches decides.
    #[serde(default, deserialize_with = "null_default")]
    pub groups: Vec<Condition>,
    /// Set: a group flag, bucketed on the key of this group type. Null: a person flag.
    #[serde(default)]
    pub aggregation_group_type_index: Option<u8>,
    /// Variants of a multivariate flag; null for a boolean flag.
    #[serde(default)]
    pub multivariate: Option<Multivariate>,
    /// Payload per value: `"true"` for a boolean flag, the variant key otherwise. Values are
    /// JSON *text* (strings), as PostHog stores them; see [`FeatureFlag::normalized`].
    #[serde(default, deserialize_with = "null_default")]
    pub payloads: BTreeMap<String, Value>,
    /// Experiment holdout, checked before the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<Holdout>,
    /// Early-access gate: the first set is evaluated first when its person properties are known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub super_groups: Option<Vec<Condition>>,
    /// Early-access gate on the person property `$feature_enrollment/<flag key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_enrollment: Option<bool>,
}

/// One condition set (PostHog calls these "groups" of `filters.groups`; not analytics groups).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// Property filters, AND-ed.
    #[serde(default, deserialize_with = "null_default")]
    pub properties: Vec<PropertyFilter>,
    /// Percentage of matching actors that get the flag; null means 100.
    #[serde(default, serialize_with = "optional_percent")]
    pub rollout_percentage: Option<f64>,
    /// Forces this variant when the condition matches (if it names a variant of the flag).
    #[serde(default)]
    pub variant: Option<String>,
    /// Per-condition aggregation (mixed targeting): absent inherits the flag's, `null` means
    /// person, a number means that group type.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub aggregation_group_type_index: Option<Option<u8>>,
}

impl Condition {
    /// The aggregation this condition buckets and reads properties by.
    pub fn effective_aggregation(&self, flag_level: Option<u8>) -> Option<u8> {
        match self.aggregation_group_type_index {
            Some(own) => own,
            None => flag_level,
        }
    }
}

/// `filters.multivariate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Multivariate {
    /// In order: the variant hash walks them cumulatively.
    #[serde(default, deserialize_with = "null_default")]
    pub variants: Vec<Variant>,
}

/// One variant of a multivariate flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// The value SDKs get.
    pub key: String,
    /// Display name.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Share of the flag's matches, in percent; all variants sum to 100.
    #[serde(serialize_with = "percent")]
    pub rollout_percentage: f64,
}

/// `filters.holdout`: a share of actors excluded from an experiment, who get the value
/// `holdout-<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holdout {
    /// Holdout id; the held-out value is `holdout-<id>`.
    pub id: u64,
    /// Percentage held out, 0..=100.
    #[serde(serialize_with = "percent")]
    pub exclusion_percentage: f64,
}

/// One property filter of a condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertyFilter {
    /// Property name.
    pub key: String,
    /// Compared value: a scalar, or a list for `exact`/`is_not`. Unused by `is_set`/`is_not_set`.
    #[serde(default)]
    pub value: Value,
    /// Null or absent means `exact`.
    #[serde(default)]
    pub operator: Option<Operator>,
    /// `person` (default) or `group`.
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub property_type: PropertyType,
    /// For `group` properties: which group type's properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_type_index: Option<u8>,
    /// Only meaningful inside cohorts; carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negation: Option<bool>,
}

/// Declares `$name` as an enum of known spellings plus `Other` for anything else, so an
/// unknown spelling survives reading and is reported by validation with its JSON path.
macro_rules! spelled_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A spelling herd does not know; rejected by validation.
            Other(String),
        }

        impl $name {
            /// The JSON spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(s) => s,
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match s.as_str() {
                    $($text => Self::$variant,)*
                    _ => Self::Other(s),
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.as_str().to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

spelled_enum! {
    /// A property filter's operator (protocol spec §3.6).
    Operator {
        /// Equal (case-insensitive text; a list value means "any of").
        Exact = "exact",
        /// Not equal to the value / to any of the list.
        IsNot = "is_not",
        /// Contains, ASCII case-insensitive.
        IContains = "icontains",
        /// Does not contain.
        NotIContains = "not_icontains",
        /// Regular expression search.
        Regex = "regex",
        /// Regular expression does not match.
        NotRegex = "not_regex",
        /// Starts with, ASCII case-insensitive.
        StartsWith = "starts_with",
        /// Does not start with.
        NotStartsWith = "not_starts_with",
        /// Ends with, ASCII case-insensitive.
        EndsWith = "ends_with",
        /// Does not end with.
        NotEndsWith = "not_ends_with",
        /// Numerically greater.
        Gt = "gt",
        /// Numerically greater or equal.
        Gte = "gte",
        /// Numerically less.
        Lt = "lt",
        /// Numerically less or equal.
        Lte = "lte",
        /// The property is present (even if null).
        IsSet = "is_set",
        /// The property is absent.
        IsNotSet = "is_not_set",
        /// A date before the value (ISO date/time or relative like `-7d`).
        IsDateBefore = "is_date_before",
        /// A date after the value.
        IsDateAfter = "is_date_after",
        /// The same instant as the value.
        IsDateExact = "is_date_exact",
        /// Semantic version equal.
        SemverEq = "semver_eq",
        /// Semantic version not equal.
        SemverNeq = "semver_neq",
        /// Semantic version greater.
        SemverGt = "semver_gt",
        /// Semantic version greater or equal.
        SemverGte = "semver_gte",
        /// Semantic version less.
        SemverLt = "semver_lt",
        /// Semantic version less or equal.
        SemverLte = "semver_lte",
        /// `~1.2.3`: same minor.
        SemverTilde = "semver_tilde",
        /// `^1.2.3`: same major (npm/cargo caret rules).
        SemverCaret = "semver_caret",
        /// `1.2.*`.
        SemverWildcard = "semver_wildcard",
    }
}

spelled_enum! {
    /// Where a property filter reads its property from.
    #[derive(Default)]
    PropertyType {
        /// The person's properties (`person_properties`).
        #[default]
        Person = "person",
        /// The properties of a group (`group_properties[type]`).
        Group = "group",
        /// A cohort (not supported by herd: it has no cohorts).
        Cohort = "cohort",
        /// Another flag's value (not supported yet).
        Flag = "flag",
    }
}

impl FeatureFlag {
    /// A flag with this key, active, no conditions (it matches no one until given some).
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            id: 0,
            team_id: 0,
            name: String::new(),
            key: key.into(),
            filters: FlagFilters::default(),
            deleted: false,
            active: true,
            ensure_experience_continuity: false,
            has_encrypted_payloads: false,
            version: 1,
            evaluation_runtime: default_runtime(),
            evaluation_tags: Vec::new(),
            bucketing_identifier: None,
        }
    }

    /// Checks the definition against the project's group types; the error names the JSON
    /// path of the first problem, e.g. `filters.groups[0].properties[1].operator: unknown
    /// operator "like"`.
    pub fn validate(&self, groups: &GroupTypes) -> Result<(), ValidationError> {
        CompiledFlag::compile(self, groups).map(|_| ())
    }

    /// Whether this is a group flag.
    pub fn is_group_flag(&self) -> bool {
        self.filters.aggregation_group_type_index.is_some()
    }

    /// The same flag with every payload stored as JSON text, the form PostHog keeps and the
    /// SDKs parse: a payload given as a JSON object or number becomes its serialised text; a
    /// string is kept as it is (it already is the text).
    pub fn normalized(mut self) -> Self {
        for payload in self.filters.payloads.values_mut() {
            if !payload.is_string() {
                *payload = Value::String(payload.to_string());
            }
        }
        self
    }

    /// The payload text for a value (`"true"` or a variant key).
    pub fn payload_for(&self, value_key: &str) -> Option<String> {
        self.filters.payloads.get(value_key).map(|p| match p {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// A project's group types: index (0..=4) ↔ type name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupTypes {
    by_index: BTreeMap<u8, String>,
}

impl GroupTypes {
    /// From `(type name, index)` pairs.
    pub fn new<I, S>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (S, u8)>,
        S: Into<String>,
    {
        Self {
            by_index: pairs
                .into_iter()
                .map(|(name, index)| (index, name.into()))
                .collect(),
        }
    }

    /// The type name at an index.
    pub fn name(&self, index: u8) -> Option<&str> {
        self.by_index.get(&index).map(String::as_str)
    }

    /// The index of a type name.
    pub fn index(&self, name: &str) -> Option<u8> {
        self.by_index
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(i, _)| *i)
    }

    /// `{"0": "company", "1": "project"}`, the `group_type_mapping` of the definitions document.
    pub fn to_mapping_json(&self) -> Value {
        Value::Object(
            self.by_index
                .iter()
                .map(|(i, n)| (i.to_string(), Value::String(n.clone())))
                .collect(),
        )
    }

    /// For error messages: `0 "company", 1 "project"`, or `no group types`.
    pub(crate) fn describe(&self) -> String {
        if self.by_index.is_empty() {
            return "no group types".to_owned();
        }
        self.by_index
            .iter()
            .map(|(i, n)| format!("{i} {n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A definition problem, with the JSON path where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ValidationError {
    /// JSON path inside the flag, e.g. `filters.groups[0].properties[1].value`.
    pub path: String,
    /// What is wrong.
    pub problem: Problem,
}

impl ValidationError {
    pub(crate) fn new(path: impl Into<String>, problem: Problem) -> Self {
        Self {
            path: path.into(),
            problem,
        }
    }
}

/// What is wrong with a definition.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    /// An empty key (flag, variant or property).
    #[error("must not be empty")]
    Empty,
    /// A flag key longer than PostHog allows.
    #[error("{got} characters, over the {max}-character limit")]
    TooLong {
        /// The limit ([`crate::eval::MAX_FLAG_KEY_CHARS`]).
        max: usize,
        /// The key's length.
        got: usize,
    },
    /// A flag key with characters PostHog does not allow.
    #[error("{0:?} may contain only letters, digits, '-' and '_'")]
    BadKey(String),
    /// A percentage outside 0..=100.
    #[error("{0} is outside 0..=100")]
    PercentOutOfRange(f64),
    /// A group type index the project does not have.
    #[error("unknown group type index {index} (this project has {known})")]
    UnknownGroupTypeIndex {
        /// The index used.
        index: u8,
        /// The project's group types.
        known: String,
    },
    /// A person property in a condition that aggregates by a group type.
    #[error(
        "person property {key:?} in a group flag: conditions aggregated by group type {index} \
         ({group_type:?}) take only properties with \"type\": \"group\" and \
         \"group_type_index\": {index}"
    )]
    PersonPropertyInGroupFlag {
        /// The property.
        key: String,
        /// The condition's aggregation.
        index: u8,
        /// Its type name.
        group_type: String,
    },
    /// A group property in a condition that aggregates by person.
    #[error(
        "group property {key:?} in a person flag: set the flag's aggregation_group_type_index \
         to target groups"
    )]
    GroupPropertyInPersonFlag {
        /// The property.
        key: String,
    },
    /// A group property of another group type than the condition aggregates by.
    #[error(
        "group property {key:?} has group_type_index {found}, but the condition aggregates by \
         group type {expected}"
    )]
    GroupTypeMismatch {
        /// The property.
        key: String,
        /// Its group_type_index.
        found: u8,
        /// The condition's aggregation.
        expected: u8,
    },
    /// A cohort filter: herd has no cohorts.
    #[error("cohort filters are not supported (herd has no cohorts)")]
    CohortUnsupported,
    /// A flag-dependency filter.
    #[error("flag dependency filters (\"type\": \"flag\") are not supported")]
    FlagDependencyUnsupported,
    /// An unknown property `type`.
    #[error("unknown property type {0:?} (expected \"person\" or \"group\")")]
    UnknownPropertyType(String),
    /// An unknown operator.
    #[error("unknown operator {0:?}")]
    UnknownOperator(String),
    /// An operator that compares with a value, and no value.
    #[error("operator {0} needs a value")]
    MissingValue(String),
    /// A regex the engine cannot compile.
    #[error("invalid regex {pattern:?}: {message}")]
    BadRegex {
        /// The pattern.
        pattern: String,
        /// The compiler's message.
        message: String,
    },
    /// A numeric operator with a value that is not a number.
    #[error("operator {operator} needs a number, got {value}")]
    NotANumber {
        /// The operator.
        operator: String,
        /// The value as JSON.
        value: String,
    },
    /// A date operator with a value that is not a date.
    #[error(
        "operator {operator} needs a date (ISO 8601 like \"2024-01-31\" or relative like \
         \"-7d\"), got {value}"
    )]
    NotADate {
        /// The operator.
        operator: String,
        /// The value as JSON.
        value: String,
    },
    /// A semver operator with a value that is not a version (or version pattern).
    #[error("operator {operator} needs a semantic version, got {value}")]
    NotASemver {
        /// The operator.
        operator: String,
        /// The value as JSON.
        value: String,
    },
    /// Variant percentages that do not sum to 100.
    #[error("variant rollout percentages sum to {0}, not 100")]
    VariantSum(f64),
    /// Two variants with one key.
    #[error("duplicate variant key {0:?}")]
    DuplicateVariant(String),
    /// A condition's variant override that is not a variant.
    #[error("variant override {0:?} is not a variant of this flag")]
    UnknownVariant(String),
    /// A bucketing identifier other than `distinct_id`/`device_id`.
    #[error("must be \"distinct_id\" or \"device_id\", got {0:?}")]
    BadBucketingIdentifier(String),
}

/// The local-evaluation document of protocol spec §3.5 (`GET /flags/definitions`,
/// `/api/feature_flag/local_evaluation`), serialised once, with its entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definitions {
    /// The JSON body.
    pub body: Vec<u8>,
    /// An opaque tag of exactly this body (hex SHA-1). Send it as `ETag: W/"<etag>"`.
    pub etag: String,
}

impl Definitions {
    /// Builds the document for a project: every non-deleted flag (inactive ones too, so SDKs
    /// answer `false` for them without asking the server), the group type mapping, and an
    /// empty `cohorts` (python drops the whole update when a key is missing).
    pub fn build(flags: &[FeatureFlag], groups: &GroupTypes) -> Self {
        let served: Vec<&FeatureFlag> = flags.iter().filter(|f| !f.deleted).collect();
        let doc = json!({
            "flags": served,
            "group_type_mapping": groups.to_mapping_json(),
            "cohorts": {},
        });
        // Serialising a Value built from strings, numbers and maps with string keys cannot
        // fail; an empty body would still be well-formed for the tag below.
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        let etag = crate::hash::sha1_hex(&body);
        Self { body, etag }
    }

    /// Whether an `If-None-Match` header value names this body (`*`, `"tag"`, `W/"tag"`, or
    /// a comma-separated list of them), so the server can answer 304.
    pub fn matches_if_none_match(&self, header: &str) -> bool {
        header.split(',').map(str::trim).any(|candidate| {
            if candidate == "*" {
                return true;
            }
            let tag = candidate.strip_prefix("W/").unwrap_or(candidate);
            let tag = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(tag);
            tag == self.etag
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_example() -> Value {
        json!({"id": 1, "team_id": 1, "name": "", "key": "group-flag", "active": true,
               "deleted": false, "ensure_experience_continuity": false,
               "has_encrypted_payloads": false, "version": 1, "evaluation_runtime": "all",
               "evaluation_tags": [],
               "filters": {"aggregation_group_type_index": 0,
                   "groups": [{"properties": [{"key": "plan", "value": ["enterprise"],
                                 "operator": "exact", "type": "group", "group_type_index": 0}],
                               "rollout_percentage": 100, "variant": null}],
                   "multivariate": {"variants": [
                       {"key": "control", "name": "", "rollout_percentage": 50},
                       {"key": "test", "name": "", "rollout_percentage": 50}]},
                   "payloads": {"true": "{\"x\":1}", "test": "\"t\""}}})
    }

    #[test]
    fn spec_example_round_trips_unchanged() {
        let flag: FeatureFlag = serde_json::from_value(spec_example()).unwrap();
        assert_eq!(flag.filters.aggregation_group_type_index, Some(0));
        assert_eq!(
            flag.filters.groups[0].properties[0].operator,
            Some(Operator::Exact)
        );
        assert_eq!(
            flag.filters.groups[0].properties[0].property_type,
            PropertyType::Group
        );
        let back = serde_json::to_value(&flag).unwrap();
        assert_eq!(back, spec_example());
    }

    #[test]
    fn nulls_read_as_empty_and_absent_fields_get_defaults() {
        let flag: FeatureFlag = serde_json::from_value(json!({
            "key": "k", "name": null, "filters": {"groups": null, "payloads": null,
            "multivariate": null, "aggregation_group_type_index": null},
            "ensure_experience_continuity": null, "evaluation_tags": null
        }))
        .unwrap();
        assert!(flag.active);
        assert_eq!(flag.version, 1);
        assert_eq!(flag.name, "");
        assert!(flag.filters.groups.is_empty());
        let v = serde_json::to_value(&flag).unwrap();
        // What the SDKs read is always there.
        assert_eq!(v["filters"]["aggregation_group_type_index"], Value::Null);
        assert_eq!(v["filters"]["multivariate"], Value::Null);
        assert_eq!(v["filters"]["payloads"], json!({}));
        assert!(v["filters"].get("holdout").is_none());
        assert!(v.get("bucketing_identifier").is_none());
    }

    #[test]
    fn unknown_operator_and_type_survive_reading() {
        let f: PropertyFilter = serde_json::from_value(
            json!({"key": "a", "value": 1, "operator": "like", "type": "event"}),
        )
        .unwrap();
        assert_eq!(f.operator, Some(Operator::Other("like".into())));
        assert_eq!(f.property_type, PropertyType::Other("event".into()));
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"key": "a", "value": 1, "operator": "like", "type": "event"})
        );
    }

    #[test]
    fn condition_aggregation_absent_null_and_set_are_distinct() {
        let absent: Condition = serde_json::from_value(json!({})).unwrap();
        let null: Condition =
            serde_json::from_value(json!({"aggregation_group_type_index": null})).unwrap();
        let set: Condition =
            serde_json::from_value(json!({"aggregation_group_type_index": 1})).unwrap();
        assert_eq!(absent.effective_aggregation(Some(0)), Some(0));
        assert_eq!(null.effective_aggregation(Some(0)), None);
        assert_eq!(set.effective_aggregation(None), Some(1));
        assert!(
            serde_json::to_value(&absent)
                .unwrap()
                .get("aggregation_group_type_index")
                .is_none()
        );
        assert_eq!(
            serde_json::to_value(&null).unwrap()["aggregation_group_type_index"],
            Value::Null
        );
    }

    #[test]
    fn normalized_turns_payload_values_into_json_text() {
        let mut flag = FeatureFlag::new("k");
        flag.filters.payloads.insert("true".into(), json!({"x": 1}));
        flag.filters.payloads.insert("a".into(), json!("plain"));
        let flag = flag.normalized();
        assert_eq!(flag.filters.payloads["true"], json!("{\"x\":1}"));
        assert_eq!(flag.filters.payloads["a"], json!("plain"));
        assert_eq!(flag.payload_for("true").as_deref(), Some("{\"x\":1}"));
        assert_eq!(flag.payload_for("b"), None);
    }

    #[test]
    fn group_types_lookups_and_mapping_json() {
        let g = GroupTypes::new([("company", 0), ("project", 1)]);
        assert_eq!(g.name(1), Some("project"));
        assert_eq!(g.index("company"), Some(0));
        assert_eq!(g.index("nope"), None);
        assert_eq!(g.to_mapping_json(), json!({"0": "company", "1": "project"}));
        assert_eq!(g.describe(), "0 \"company\", 1 \"project\"");
        assert_eq!(GroupTypes::default().describe(), "no group types");
    }

    #[test]
    fn definitions_document_has_what_python_needs() {
        let mut deleted = FeatureFlag::new("gone");
        deleted.deleted = true;
        let mut inactive = FeatureFlag::new("off");
        inactive.active = false;
        let flags = vec![FeatureFlag::new("on"), deleted, inactive];
        let g = GroupTypes::new([("company", 0)]);
        let defs = Definitions::build(&flags, &g);
        let v: Value = serde_json::from_slice(&defs.body).unwrap();
        let keys: Vec<&str> = v["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["on", "off"]);
        assert_eq!(v["group_type_mapping"], json!({"0": "company"}));
        assert_eq!(v["cohorts"], json!({}));
        assert_eq!(defs.etag.len(), 40);
        // The tag follows the body: a new group type changes it.
        let other = Definitions::build(&flags, &GroupTypes::new([("company", 0), ("x", 1)]));
        assert_ne!(defs.etag, other.etag);
        assert_eq!(defs, Definitions::build(&flags, &g));
    }

    #[test]
    fn if_none_match_forms() {
        let defs = Definitions::build(&[], &GroupTypes::default());
        let tag = defs.etag.clone();
        assert!(defs.matches_if_none_match(&format!("W/\"{tag}\"")));
        assert!(defs.matches_if_none_match(&format!("\"{tag}\"")));
        assert!(defs.matches_if_none_match(&format!("\"x\", W/\"{tag}\"")));
        assert!(defs.matches_if_none_match("*"));
        assert!(!defs.matches_if_none_match("\"defs-v1\""));
        assert!(!defs.matches_if_none_match(""));
    }
}
