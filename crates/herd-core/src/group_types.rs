//! Group type → slot index mapping, per project (protocol spec §2.1).
//!
//! Types get indices in the order they are first seen, `0..5`; an index never changes. A sixth
//! type gets no slot: the event is kept, the group is dropped and a warning is raised by the
//! caller. Persisted as `group_types.json`: `{"company": 0, "project": 1}`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{Error, MAX_GROUP_TYPES, Result};

/// The group types of one project, in slot order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupTypeMapping {
    types: Vec<String>,
}

/// Where a group type lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupTypeSlot {
    /// Already mapped to this index.
    Existing(u8),
    /// Newly assigned this index: the mapping must be persisted before acknowledging.
    Assigned(u8),
    /// All five slots are taken by other types.
    Full,
}

impl GroupTypeMapping {
    /// The index of a type, if it has one.
    pub fn index_of(&self, group_type: &str) -> Option<u8> {
        self.types
            .iter()
            .position(|t| t == group_type)
            .map(|i| i as u8)
    }

    /// The type at an index.
    pub fn type_at(&self, index: u8) -> Option<&str> {
        self.types.get(index as usize).map(String::as_str)
    }

    /// The index of a type, assigning the next free one when it is new.
    pub fn resolve_or_assign(&mut self, group_type: &str) -> GroupTypeSlot {
        if let Some(i) = self.index_of(group_type) {
            return GroupTypeSlot::Existing(i);
        }
        if self.types.len() >= MAX_GROUP_TYPES {
            return GroupTypeSlot::Full;
        }
        self.types.push(group_type.to_string());
        GroupTypeSlot::Assigned((self.types.len() - 1) as u8)
    }

    /// The types in slot order.
    pub fn types(&self) -> &[String] {
        &self.types
    }

    /// Number of mapped types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether no type is mapped yet.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// `{"company": 0, …}` as persisted in `group_types.json`.
    pub fn to_json(&self) -> Value {
        let map: serde_json::Map<String, Value> = self
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), Value::from(i)))
            .collect();
        Value::Object(map)
    }

    /// Parses `group_types.json`. Indices must be exactly `0..n`, each used once.
    pub fn from_json(value: &Value) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidDocument {
            what: "group_types.json",
            reason,
        };
        let object = value
            .as_object()
            .ok_or_else(|| invalid("not a JSON object".into()))?;
        let mut by_index = BTreeMap::new();
        for (name, index) in object {
            let index = index
                .as_u64()
                .filter(|i| (*i as usize) < MAX_GROUP_TYPES)
                .ok_or_else(|| invalid(format!("index of {name:?} is not 0..4")))?;
            if by_index.insert(index, name.clone()).is_some() {
                return Err(invalid(format!("index {index} is used twice")));
            }
        }
        if by_index.keys().copied().ne(0..by_index.len() as u64) {
            return Err(invalid("indices are not contiguous from 0".into()));
        }
        Ok(Self {
            types: by_index.into_values().collect(),
        })
    }
}

/// The text stored in `$group_N` and `group_key` for a JSON group key: strings as they are,
/// numbers as their digits, booleans as `true`/`false`, arrays and objects as JSON text.
/// `null` means no group.
pub fn group_key_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_come_first_served_and_at_most_five() {
        let mut m = GroupTypeMapping::default();
        assert_eq!(m.resolve_or_assign("company"), GroupTypeSlot::Assigned(0));
        assert_eq!(m.resolve_or_assign("project"), GroupTypeSlot::Assigned(1));
        assert_eq!(m.resolve_or_assign("company"), GroupTypeSlot::Existing(0));
        for t in ["a", "b", "c"] {
            assert!(matches!(m.resolve_or_assign(t), GroupTypeSlot::Assigned(_)));
        }
        assert_eq!(m.resolve_or_assign("sixth"), GroupTypeSlot::Full);
        assert_eq!(m.index_of("c"), Some(4));
        assert_eq!(m.type_at(1), Some("project"));
    }

    #[test]
    fn json_round_trip_and_rejects_gaps() {
        let mut m = GroupTypeMapping::default();
        m.resolve_or_assign("company");
        m.resolve_or_assign("project");
        let back = GroupTypeMapping::from_json(&m.to_json()).expect("valid");
        assert_eq!(back, m);
        assert!(GroupTypeMapping::from_json(&json!({"a": 0, "b": 2})).is_err());
        assert!(GroupTypeMapping::from_json(&json!({"a": 0, "b": 0})).is_err());
        assert!(GroupTypeMapping::from_json(&json!({"a": 9})).is_err());
        assert!(GroupTypeMapping::from_json(&json!([1])).is_err());
    }

    #[test]
    fn keys_become_text() {
        assert_eq!(group_key_text(&json!("id:5")).as_deref(), Some("id:5"));
        assert_eq!(group_key_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(group_key_text(&json!(4.5)).as_deref(), Some("4.5"));
        assert_eq!(group_key_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(group_key_text(&json!(null)), None);
    }
}
