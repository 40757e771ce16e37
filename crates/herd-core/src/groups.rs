//! Group property state and the `$groupidentify` merge (protocol spec §2.3).
//!
//! ```text
//!   $groupidentify(type, key, $group_set, ts)
//!        │  resolve type → index (no slot: no merge)
//!        ▼
//!   current state? ──no──▶ new: props = $group_set, created_at = min(now, ts), version 1
//!        │yes
//!        ▼
//!   props' = props ⊕ $group_set (shallow, keys overwrite, never unset)
//!   created_at' = min(created_at, ts)
//!   unchanged? ──yes──▶ no row written, version stays
//!        │no
//!        ▼
//!   version + 1, one groups row with the full merged properties
//! ```

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringBuilder, TimestampMicrosecondArray, UInt8Array,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::schema::groups_schema;

/// The current state of one group.
///
/// The merged properties are kept as the text of a JSON object: a data folder holds hundreds
/// of thousands of current groups, and a parsed map of a few properties costs about five times
/// its text in memory. Merges and readers parse it when they need the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    properties: Box<str>,
    /// Earliest event timestamp seen for the group, µs UTC.
    pub created_at: i64,
    /// Incremented on every change; 1 for a new group.
    pub version: i64,
}

impl GroupState {
    /// A state with these properties.
    pub fn new(properties: &Map<String, Value>, created_at: i64, version: i64) -> Self {
        Self {
            // A map of string keys always serialises.
            properties: serde_json::to_string(properties)
                .unwrap_or_else(|_| "{}".into())
                .into(),
            created_at,
            version,
        }
    }

    /// The merged properties.
    pub fn properties(&self) -> Map<String, Value> {
        match serde_json::from_str::<Value>(&self.properties) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    /// The merged properties as JSON object text.
    pub fn properties_json(&self) -> &str {
        &self.properties
    }

    /// Applies one `$groupidentify`. Returns the new state when anything changed (or the group
    /// is new), `None` when the event changes nothing.
    pub fn merge(
        current: Option<&GroupState>,
        set: &Map<String, Value>,
        event_ts: i64,
        now: i64,
    ) -> Option<GroupState> {
        match current {
            None => Some(GroupState::new(set, now.min(event_ts), 1)),
            Some(current) => {
                let mut properties = current.properties();
                let mut changed = false;
                for (k, v) in set {
                    if properties.get(k) != Some(v) {
                        properties.insert(k.clone(), v.clone());
                        changed = true;
                    }
                }
                let created_at = current.created_at.min(event_ts);
                let version = current.version + 1;
                if changed {
                    Some(GroupState::new(&properties, created_at, version))
                } else if created_at != current.created_at {
                    Some(GroupState {
                        properties: current.properties.clone(),
                        created_at,
                        version,
                    })
                } else {
                    None
                }
            }
        }
    }
}

/// One row of the groups table: a group after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRow {
    /// Slot of the group type, 0..4.
    pub group_type_index: u8,
    /// The group key.
    pub group_key: String,
    /// The full merged properties, JSON text.
    pub group_properties: String,
    /// Earliest event timestamp seen, µs UTC.
    pub created_at: i64,
    /// Version after this change.
    pub version: i64,
    /// When this version was written, µs UTC.
    pub updated_at: i64,
}

impl GroupRow {
    /// The row for a group state.
    pub fn from_state(index: u8, key: &str, state: &GroupState, updated_at: i64) -> Self {
        Self {
            group_type_index: index,
            group_key: key.to_string(),
            group_properties: state.properties_json().to_string(),
            created_at: state.created_at,
            version: state.version,
            updated_at,
        }
    }

    /// The state this row records. Properties that are not a JSON object read as empty.
    pub fn to_state(&self) -> GroupState {
        let is_object = self.group_properties.trim_start().starts_with('{')
            && serde_json::from_str::<serde::de::IgnoredAny>(&self.group_properties).is_ok();
        GroupState {
            properties: if is_object {
                self.group_properties.as_str().into()
            } else {
                "{}".into()
            },
            created_at: self.created_at,
            version: self.version,
        }
    }
}

/// Builds a groups-table batch from rows.
pub fn groups_batch(rows: &[GroupRow]) -> RecordBatch {
    let mut keys = StringBuilder::new();
    let mut props = StringBuilder::new();
    for r in rows {
        keys.append_value(&r.group_key);
        props.append_value(&r.group_properties);
    }
    let ts = |f: fn(&GroupRow) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt8Array::from_iter_values(
            rows.iter().map(|r| r.group_type_index),
        )),
        Arc::new(keys.finish()),
        Arc::new(props.finish()),
        ts(|r| r.created_at),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.version))),
        ts(|r| r.updated_at),
    ];
    RecordBatch::try_new(groups_schema(), columns)
        .unwrap_or_else(|e| unreachable!("groups batch does not match its schema: {e}"))
}

/// Reads groups-table rows back from a batch in the groups schema.
pub fn groups_from_batch(batch: &RecordBatch) -> crate::Result<Vec<GroupRow>> {
    use arrow::array::{Array, StringArray};
    fn col<T: Array + 'static>(b: &RecordBatch, i: usize) -> crate::Result<&T> {
        b.column(i)
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| crate::Error::InvalidDocument {
                what: "groups batch",
                reason: format!("column {i} has type {}", b.column(i).data_type()),
            })
    }
    let index = col::<UInt8Array>(batch, 0)?;
    let key = col::<StringArray>(batch, 1)?;
    let props = col::<StringArray>(batch, 2)?;
    let created = col::<TimestampMicrosecondArray>(batch, 3)?;
    let version = col::<Int64Array>(batch, 4)?;
    let updated = col::<TimestampMicrosecondArray>(batch, 5)?;
    Ok((0..batch.num_rows())
        .map(|i| GroupRow {
            group_type_index: index.value(i),
            group_key: key.value(i).to_string(),
            group_properties: props.value(i).to_string(),
            created_at: created.value(i),
            version: version.value(i),
            updated_at: updated.value(i),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn new_group_gets_version_one_and_earliest_created_at() {
        let s = GroupState::merge(None, &obj(json!({"name": "Acme"})), 100, 500).expect("new");
        assert_eq!(s.version, 1);
        assert_eq!(s.created_at, 100);
        let s = GroupState::merge(None, &obj(json!({})), 900, 500).expect("new");
        assert_eq!(s.created_at, 500, "created_at is min(now, ts)");
    }

    #[test]
    fn set_semantics_and_version_bumps_only_on_change() {
        let s1 = GroupState::merge(
            None,
            &obj(json!({"name": "Acme", "plan": "free"})),
            100,
            100,
        )
        .expect("new");
        assert_eq!(
            GroupState::merge(Some(&s1), &obj(json!({"plan": "free"})), 200, 200),
            None,
            "same value: no change"
        );
        let s2 = GroupState::merge(
            Some(&s1),
            &obj(json!({"plan": "pro", "seats": 3})),
            200,
            200,
        )
        .expect("changed");
        assert_eq!(s2.version, 2);
        assert_eq!(
            s2.properties(),
            obj(json!({"name": "Acme", "plan": "pro", "seats": 3}))
        );
        assert_eq!(s2.created_at, 100);
        let s3 = GroupState::merge(Some(&s2), &obj(json!({})), 50, 300).expect("earlier ts");
        assert_eq!((s3.created_at, s3.version), (50, 3));
    }

    #[test]
    fn rows_round_trip_through_a_batch() {
        let s = GroupState::merge(None, &obj(json!({"a": 1})), 1, 2).expect("new");
        let row = GroupRow::from_state(0, "id:5", &s, 9);
        let back = groups_from_batch(&groups_batch(std::slice::from_ref(&row))).expect("read");
        assert_eq!(back, vec![row.clone()]);
        assert_eq!(row.to_state(), s);
    }
}
