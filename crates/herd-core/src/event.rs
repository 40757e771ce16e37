//! One stored event, and the builder that turns events into an events-table record batch.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeBinaryArray, FixedSizeBinaryBuilder, RecordBatch, StringArray,
    StringBuilder, TimestampMicrosecondArray,
};
use uuid::Uuid;

use crate::MAX_GROUP_TYPES;
use crate::schema::{events_col, events_schema};

/// An event as it is stored: every field final (timestamp corrected, groups mapped to slots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Deduplication key within a project.
    pub uuid: Uuid,
    /// Event name.
    pub event: String,
    /// The user id as sent.
    pub distinct_id: String,
    /// µs since the Unix epoch, UTC.
    pub timestamp: i64,
    /// The properties object, serialised as JSON text.
    pub properties: String,
    /// `$group_0..4`: the key of each slot's group, `""` when absent.
    pub groups: [String; MAX_GROUP_TYPES],
    /// µs since the Unix epoch when herd received the event.
    pub created_at: i64,
}

/// Accumulates [`Event`]s column by column into an events-table [`RecordBatch`].
#[derive(Debug)]
pub struct EventBatchBuilder {
    uuid: FixedSizeBinaryBuilder,
    event: StringBuilder,
    distinct_id: StringBuilder,
    timestamp: Vec<i64>,
    properties: StringBuilder,
    groups: [StringBuilder; MAX_GROUP_TYPES],
    created_at: Vec<i64>,
}

impl EventBatchBuilder {
    /// A builder with room for `capacity` events.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            uuid: FixedSizeBinaryBuilder::with_capacity(capacity, 16),
            event: StringBuilder::with_capacity(capacity, capacity * 12),
            distinct_id: StringBuilder::with_capacity(capacity, capacity * 16),
            timestamp: Vec::with_capacity(capacity),
            properties: StringBuilder::with_capacity(capacity, capacity * 256),
            groups: std::array::from_fn(|_| StringBuilder::with_capacity(capacity, capacity * 4)),
            created_at: Vec::with_capacity(capacity),
        }
    }

    /// Number of events appended so far.
    pub fn len(&self) -> usize {
        self.timestamp.len()
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.timestamp.is_empty()
    }

    /// Appends one event.
    pub fn push(&mut self, event: &Event) {
        self.push_parts(
            event.uuid,
            &event.event,
            &event.distinct_id,
            event.timestamp,
            &event.properties,
            &event.groups,
            event.created_at,
        );
    }

    /// Appends one event given by its parts (avoids building an [`Event`] on hot paths).
    #[allow(clippy::too_many_arguments)]
    pub fn push_parts<S: AsRef<str>>(
        &mut self,
        uuid: Uuid,
        event: &str,
        distinct_id: &str,
        timestamp: i64,
        properties: &str,
        groups: &[S; MAX_GROUP_TYPES],
        created_at: i64,
    ) {
        // A 16-byte value into a 16-byte builder cannot fail.
        let _ = self.uuid.append_value(uuid.as_bytes());
        self.event.append_value(event);
        self.distinct_id.append_value(distinct_id);
        self.timestamp.push(timestamp);
        self.properties.append_value(properties);
        for (builder, key) in self.groups.iter_mut().zip(groups) {
            builder.append_value(key.as_ref());
        }
        self.created_at.push(created_at);
    }

    /// Finishes the batch, leaving the builder empty.
    pub fn finish(&mut self) -> RecordBatch {
        let ts = |values: Vec<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
        };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.uuid.finish()),
            Arc::new(self.event.finish()),
            Arc::new(self.distinct_id.finish()),
            ts(std::mem::take(&mut self.timestamp)),
            Arc::new(self.properties.finish()),
        ];
        for builder in &mut self.groups {
            columns.push(Arc::new(builder.finish()));
        }
        columns.push(ts(std::mem::take(&mut self.created_at)));
        // The columns are built to match the schema exactly, so this cannot fail.
        RecordBatch::try_new(events_schema(), columns)
            .unwrap_or_else(|e| unreachable!("events batch does not match its schema: {e}"))
    }
}

/// Reads the events of a batch in the events schema back into [`Event`]s (tests, replay tools).
pub fn events_from_batch(batch: &RecordBatch) -> crate::Result<Vec<Event>> {
    let col = |i: usize| batch.column(i);
    let uuid = downcast::<FixedSizeBinaryArray>(col(events_col::UUID), "uuid")?;
    let event = downcast::<StringArray>(col(events_col::EVENT), "event")?;
    let distinct_id = downcast::<StringArray>(col(events_col::DISTINCT_ID), "distinct_id")?;
    let timestamp = downcast::<TimestampMicrosecondArray>(col(events_col::TIMESTAMP), "timestamp")?;
    let properties = downcast::<StringArray>(col(events_col::PROPERTIES), "properties")?;
    let mut groups = Vec::with_capacity(MAX_GROUP_TYPES);
    for n in 0..MAX_GROUP_TYPES {
        groups.push(downcast::<StringArray>(
            col(events_col::GROUP_0 + n),
            "$group_N",
        )?);
    }
    let created_at =
        downcast::<TimestampMicrosecondArray>(col(events_col::CREATED_AT), "created_at")?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let bytes: [u8; 16] =
            uuid.value(row)
                .try_into()
                .map_err(|_| crate::Error::InvalidDocument {
                    what: "events batch",
                    reason: "uuid is not 16 bytes".into(),
                })?;
        out.push(Event {
            uuid: Uuid::from_bytes(bytes),
            event: event.value(row).to_string(),
            distinct_id: distinct_id.value(row).to_string(),
            timestamp: timestamp.value(row),
            properties: properties.value(row).to_string(),
            groups: std::array::from_fn(|n| groups[n].value(row).to_string()),
            created_at: created_at.value(row),
        });
    }
    Ok(out)
}

fn downcast<'a, T: Array + 'static>(
    array: &'a ArrayRef,
    name: &'static str,
) -> crate::Result<&'a T> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| crate::Error::InvalidDocument {
            what: "events batch",
            reason: format!("column {name} has type {}", array.data_type()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_round_trips() {
        let e = Event {
            uuid: Uuid::from_u128(7),
            event: "signed_up".into(),
            distinct_id: "user-1".into(),
            timestamp: 1_700_000_000_000_000,
            properties: r#"{"plan":"pro"}"#.into(),
            groups: [
                "id:5".into(),
                "42".into(),
                String::new(),
                String::new(),
                String::new(),
            ],
            created_at: 1_700_000_000_000_001,
        };
        let mut b = EventBatchBuilder::with_capacity(1);
        b.push(&e);
        let batch = b.finish();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(events_from_batch(&batch).expect("read back"), vec![e]);
        assert!(b.is_empty());
    }
}
