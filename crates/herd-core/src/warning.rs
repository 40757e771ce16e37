//! Ingestion warnings: things herd accepted but could not fully honour (a sixth group type, a
//! group key that is too long, an invalid `$group_set`). They are counted, logged, and stored in
//! the project's `warnings` table so they can be queried later.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// One ingestion warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestWarning {
    /// Machine-readable kind, PostHog's names: `group_type_limit_reached`,
    /// `group_key_too_long`, `invalid_group_set`, `invalid_group_identify`.
    pub kind: String,
    /// The event's uuid.
    pub event_uuid: String,
    /// Details as a JSON object (text).
    pub details: String,
    /// When it was raised, µs UTC.
    pub timestamp: i64,
}

/// Schema of the warnings table.
pub fn warnings_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("kind", DataType::Utf8, false),
                Field::new("event_uuid", DataType::Utf8, false),
                Field::new("details", DataType::Utf8, false),
                Field::new(
                    "timestamp",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
            ]))
        })
        .clone()
}

/// A warnings-table batch.
pub fn warnings_batch(rows: &[IngestWarning]) -> RecordBatch {
    let mut kind = StringBuilder::new();
    let mut uuid = StringBuilder::new();
    let mut details = StringBuilder::new();
    for w in rows {
        kind.append_value(&w.kind);
        uuid.append_value(&w.event_uuid);
        details.append_value(&w.details);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(kind.finish()),
        Arc::new(uuid.finish()),
        Arc::new(details.finish()),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|w| w.timestamp))
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(warnings_schema(), columns)
        .unwrap_or_else(|e| unreachable!("warnings batch does not match its schema: {e}"))
}

/// Reads warnings back from a batch in the warnings schema.
pub fn warnings_from_batch(batch: &RecordBatch) -> crate::Result<Vec<IngestWarning>> {
    let bad = || crate::Error::InvalidDocument {
        what: "warnings batch",
        reason: "unexpected column types".into(),
    };
    let s = |i: usize| {
        batch
            .column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(bad)
    };
    let (kind, uuid, details) = (s(0)?, s(1)?, s(2)?);
    let ts = batch
        .column(3)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(bad)?;
    Ok((0..batch.num_rows())
        .map(|i| IngestWarning {
            kind: kind.value(i).to_string(),
            event_uuid: uuid.value(i).to_string(),
            details: details.value(i).to_string(),
            timestamp: ts.value(i),
        })
        .collect())
}
