//! The group rules every ingestion path shares — capture, backfill and the generator run
//! events through [`process_event`], so there is one implementation of them:
//!
//! ```text
//!  $groupidentify with a key > 400 chars or a non-object $group_set ─▶ dropped (+ warning)
//!  uuid already stored for that day ─────────────────────────────────▶ duplicate, dropped
//!  each (type, key) of $groups ─▶ slot of the type (assigned first come, at most 5)
//!        no slot left ─▶ group dropped from the event (+ warning), event kept
//!  $groupidentify ─▶ merge $group_set into the group ($set semantics) ─▶ groups row if changed
//! ```
//! Personless events (`$process_person_profile: false`) get no groups and merge nothing.

use std::borrow::Cow;

use herd_core::group_types::group_key_text;
use herd_core::{
    GroupRow, GroupState, GroupTypeSlot, IngestWarning, MAX_GROUP_KEY_CHARS, MAX_GROUP_TYPES,
};
use herd_storage::ProjectGuard;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::Result;
use crate::decode::json_kind;
use crate::peek::Members;

/// The group-relevant facts of one event, however it arrived.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupInputs {
    /// `(group type, key)` pairs of `$groups`, in the order sent.
    pub groups: Vec<(String, Value)>,
    /// `$process_person_profile == false`.
    pub personless: bool,
    /// `$group_type`, `$group_key`, `$group_set` when the event is a `$groupidentify`.
    pub identify: Option<IdentifyInputs>,
}

/// A group key as the event gave it: a string (most keys), or another JSON value that
/// [`group_key_text`] turns into text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyRef<'a> {
    /// A JSON string.
    Str(&'a str),
    /// Any other JSON value.
    Json(&'a Value),
}

/// What the group rules read of one event, borrowed from wherever it was decoded
/// ([`GroupInputs`], or backfill's spans into the properties text).
#[derive(Debug, Clone, Copy)]
pub struct RuleInputs<'a, 'b> {
    /// `(group type, key)` pairs of `$groups`, in the order sent.
    pub groups: &'b [(&'a str, KeyRef<'a>)],
    /// `$process_person_profile == false`.
    pub personless: bool,
    /// The identify fields when the event is a `$groupidentify`.
    pub identify: Option<&'b IdentifyInputs>,
}

/// The raw fields of a `$groupidentify`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdentifyInputs {
    /// `$group_type`.
    pub group_type: Option<Value>,
    /// `$group_key`.
    pub group_key: Option<Value>,
    /// `$group_set`.
    pub group_set: Option<Value>,
}

impl GroupInputs {
    /// From a parsed properties object. `$groups` that is not an object is refused.
    pub fn from_properties(event: &str, properties: &Map<String, Value>) -> Result<Self, String> {
        Self::build(
            event,
            properties.get("$groups").cloned().map(Members::from),
            properties.get("$process_person_profile").cloned(),
            properties.get("$group_type").cloned(),
            properties.get("$group_key").cloned(),
            properties.get("$group_set").cloned(),
        )
    }

    /// From properties JSON text, reading only the fields above (fast path for backfill:
    /// one pass over the text, see [`crate::peek`]).
    pub fn from_json_text(event: &str, properties: &str) -> Result<Self, String> {
        let p = crate::peek::group_fields(properties)?;
        Self::build(
            event,
            p.groups,
            p.process_person_profile,
            p.group_type,
            p.group_key,
            p.group_set,
        )
    }

    /// The borrowed view the rules read; `pairs` is a reusable buffer for the pairs.
    pub fn view<'a>(&'a self, pairs: &'a mut Vec<(&'a str, KeyRef<'a>)>) -> RuleInputs<'a, 'a> {
        pairs.clear();
        self.extend_pairs(pairs);
        RuleInputs {
            groups: pairs,
            personless: self.personless,
            identify: self.identify.as_ref(),
        }
    }

    /// Appends the `$groups` pairs, borrowed.
    pub fn extend_pairs<'a>(&'a self, pairs: &mut Vec<(&'a str, KeyRef<'a>)>) {
        pairs.extend(self.groups.iter().map(|(t, k)| {
            let key = match k {
                Value::String(s) => KeyRef::Str(s.as_str()),
                other => KeyRef::Json(other),
            };
            (t.as_str(), key)
        }));
    }

    pub(crate) fn build(
        event: &str,
        groups: Option<Members>,
        process_person_profile: Option<Value>,
        group_type: Option<Value>,
        group_key: Option<Value>,
        group_set: Option<Value>,
    ) -> Result<Self, String> {
        let groups = match groups {
            None | Some(Members::Other(Value::Null)) => Vec::new(),
            Some(Members::Pairs(pairs)) => pairs,
            Some(Members::Other(other)) => {
                return Err(format!(
                    "properties.$groups must be an object of group type to group key, got {}",
                    json_kind(&other)
                ));
            }
        };
        Ok(Self {
            groups,
            personless: process_person_profile == Some(Value::Bool(false)),
            identify: (event == "$groupidentify").then_some(IdentifyInputs {
                group_type,
                group_key,
                group_set,
            }),
        })
    }
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition<'a> {
    /// Store it with these `$group_0..4` values (borrowed from the inputs where they were
    /// strings).
    Store([Cow<'a, str>; MAX_GROUP_TYPES]),
    /// Its uuid is already stored for that day.
    Duplicate,
    /// A rule dropped it (a warning says which).
    Dropped,
}

/// Rows produced while processing events, committed together.
#[derive(Debug, Default)]
pub struct Produced {
    /// Groups-table rows.
    pub groups: Vec<GroupRow>,
    /// Ingestion warnings.
    pub warnings: Vec<IngestWarning>,
}

/// Group types a `group_type_limit_reached` warning names (it counts the rest).
const DROPPED_TYPES_NAMED: usize = 10;

/// The event a warning is about.
#[derive(Debug, Clone, Copy)]
pub struct WarningSource<'a> {
    /// The event's uuid.
    pub uuid: Uuid,
    /// Its name.
    pub event: &'a str,
    /// When the warning is raised (µs).
    pub now: i64,
}

impl WarningSource<'_> {
    /// Records and logs a warning of `kind` unless the project's rate limit for that kind is
    /// spent ([`ProjectGuard::admit_warning`]); a recorded warning says in its details how
    /// many of its kind were suppressed before it (`suppressed`).
    pub fn raise(
        &self,
        guard: &mut ProjectGuard<'_>,
        produced: &mut Produced,
        kind: &str,
        mut details: Value,
    ) {
        let Some(suppressed) = guard.admit_warning(kind, self.now) else {
            return;
        };
        if suppressed > 0
            && let Some(o) = details.as_object_mut()
        {
            o.insert("suppressed".into(), json!(suppressed));
        }
        let (uuid, event) = (self.uuid, self.event);
        tracing::warn!(kind, %uuid, event, %details, "ingestion warning");
        produced.warnings.push(IngestWarning {
            kind: kind.to_string(),
            event_uuid: uuid.to_string(),
            details: details.to_string(),
            timestamp: self.now,
        });
    }
}

/// A `$groupidentify` that passed the checks.
struct Merge {
    group_type: String,
    key: String,
    set: Map<String, Value>,
}

/// Applies the group rules to one event under the project lock.
#[allow(clippy::too_many_arguments)]
pub async fn process_event<'a>(
    guard: &mut ProjectGuard<'_>,
    uuid: Uuid,
    event: &str,
    timestamp: i64,
    now: i64,
    inputs: RuleInputs<'a, '_>,
    produced: &mut Produced,
) -> Result<Disposition<'a>> {
    let source = WarningSource { uuid, event, now };
    let mut merge = None;
    if let Some(identify) = inputs.identify.filter(|_| !inputs.personless) {
        match check_identify(identify.clone()) {
            Ok(m) => merge = m,
            Err((kind, details, drop)) => {
                source.raise(guard, produced, kind, details);
                if drop {
                    return Ok(Disposition::Dropped);
                }
            }
        }
    }
    if !guard.insert_uuid(uuid.as_u128(), timestamp).await? {
        return Ok(Disposition::Duplicate);
    }

    let mut slots: [Cow<'a, str>; MAX_GROUP_TYPES] = Default::default();
    // Group types past the project's five, for one warning per event however many.
    let mut dropped: Vec<&str> = Vec::new();
    let mut dropped_count = 0usize;
    if !inputs.personless {
        for &(group_type, key) in inputs.groups {
            let key = match key {
                KeyRef::Str(s) => Cow::Borrowed(s),
                KeyRef::Json(other) => match group_key_text(other) {
                    Some(text) => Cow::Owned(text),
                    None => continue,
                },
            };
            // A char is at least a byte: short keys need no count.
            if key.len() > MAX_GROUP_KEY_CHARS && key.chars().count() > MAX_GROUP_KEY_CHARS {
                source.raise(
                    guard,
                    produced,
                    "group_key_too_long",
                    json!({"group_type": group_type, "length": key.chars().count()}),
                );
                continue;
            }
            match guard.resolve_group_type(group_type).await? {
                GroupTypeSlot::Existing(i) | GroupTypeSlot::Assigned(i) => slots[i as usize] = key,
                GroupTypeSlot::Full => {
                    dropped_count += 1;
                    if dropped.len() < DROPPED_TYPES_NAMED {
                        dropped.push(group_type);
                    }
                }
            }
        }
    }
    if dropped_count > 0 {
        source.raise(
            guard,
            produced,
            "group_type_limit_reached",
            json!({"group_types": dropped, "dropped": dropped_count, "limit": MAX_GROUP_TYPES}),
        );
    }

    if let Some(Merge {
        group_type,
        key,
        set,
    }) = merge
    {
        match guard.resolve_group_type(&group_type).await? {
            GroupTypeSlot::Existing(i) | GroupTypeSlot::Assigned(i) => {
                if let Some(next) = GroupState::merge(guard.group(i, &key), &set, timestamp, now) {
                    produced
                        .groups
                        .push(GroupRow::from_state(i, &key, &next, now));
                    guard.set_group(i, &key, next);
                }
            }
            GroupTypeSlot::Full => source.raise(
                guard,
                produced,
                "group_type_limit_reached",
                json!({"group_types": [group_type], "dropped": 1, "limit": MAX_GROUP_TYPES}),
            ),
        }
    }
    Ok(Disposition::Store(slots))
}

/// `Ok(Some)`: merge; `Ok(None)`: nothing to merge; `Err((kind, details, drop_event))`.
#[allow(clippy::type_complexity)]
fn check_identify(i: IdentifyInputs) -> Result<Option<Merge>, (&'static str, Value, bool)> {
    let group_type = match i.group_type {
        Some(Value::String(t)) if !t.is_empty() => t,
        _ => {
            return Err((
                "invalid_group_identify",
                json!({"reason": "missing $group_type"}),
                false,
            ));
        }
    };
    let Some(key) = i.group_key.as_ref().and_then(group_key_text) else {
        return Err((
            "invalid_group_identify",
            json!({"reason": "missing $group_key"}),
            false,
        ));
    };
    if key.chars().count() > MAX_GROUP_KEY_CHARS {
        return Err((
            "group_key_too_long",
            json!({"group_type": group_type, "length": key.chars().count()}),
            true,
        ));
    }
    let set = match i.group_set {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err((
                "invalid_group_set",
                json!({"group_type": group_type, "group_key": key, "got": json_kind(&other)}),
                true,
            ));
        }
    };
    Ok(Some(Merge {
        group_type,
        key,
        set,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_parse_reads_only_the_group_fields() {
        let text = r#"{"$browser":"Chrome","$groups":{"company":"id:5","project":42},"nested":{"$groups":1}}"#;
        let g = GroupInputs::from_json_text("signed_up", text).expect("valid");
        assert_eq!(
            g.groups,
            vec![
                ("company".to_string(), json!("id:5")),
                ("project".to_string(), json!(42))
            ]
        );
        assert!(!g.personless && g.identify.is_none());
        let same = GroupInputs::from_properties(
            "signed_up",
            serde_json::from_str::<Value>(text)
                .expect("json")
                .as_object()
                .expect("object"),
        )
        .expect("valid");
        assert_eq!(same, g);
        let none = GroupInputs::from_json_text("$pageview", r#"{"$browser":"x"}"#).expect("valid");
        assert_eq!(none, GroupInputs::default());
        let id = GroupInputs::from_json_text(
            "$groupidentify",
            r#"{"$group_type":"company","$group_key":"id:5","$group_set":{"a":1},"$process_person_profile":false}"#,
        )
        .expect("valid");
        assert!(id.personless);
        assert_eq!(
            id.identify.expect("identify").group_set,
            Some(json!({"a": 1}))
        );
        assert!(GroupInputs::from_json_text("e", r#"{"$groups":"x"}"#).is_err());
        assert!(GroupInputs::from_json_text("e", r#"{"$groups": [1]"#).is_err());
    }
}
