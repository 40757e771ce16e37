//! The Arrow schemas of herd's tables (design §2), and their column names.
//!
//! These schemas are a storage contract: other engines read the Parquet files herd writes, so
//! a change here is a format change and needs a reader for the old files.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// `uuid`: 16 bytes, annotated with Arrow's canonical UUID extension type (Parquet `UUID`).
pub const UUID: &str = "uuid";
/// `event`: the event name.
pub const EVENT: &str = "event";
/// `distinct_id`: the user id as sent.
pub const DISTINCT_ID: &str = "distinct_id";
/// `timestamp`: event time after clock-skew correction, µs UTC.
pub const TIMESTAMP: &str = "timestamp";
/// `properties`: the event's properties as a JSON object (text).
pub const PROPERTIES: &str = "properties";
/// `created_at`: when herd received the event (events) or the group's first event (groups).
pub const CREATED_AT: &str = "created_at";
/// The five dense group columns, `$group_0` … `$group_4`.
pub const GROUP_COLUMNS: [&str; crate::MAX_GROUP_TYPES] =
    ["$group_0", "$group_1", "$group_2", "$group_3", "$group_4"];

/// `$distinct_id_num`: the project's dense number of `distinct_id` (see [`stored_events_schema`]).
pub const DISTINCT_ID_NUM: &str = "$distinct_id_num";
/// `$group_0_num` … `$group_4_num`: the project's dense numbers of the group keys.
pub const GROUP_NUM_COLUMNS: [&str; crate::MAX_GROUP_TYPES] = [
    "$group_0_num",
    "$group_1_num",
    "$group_2_num",
    "$group_3_num",
    "$group_4_num",
];

/// `group_type_index` in the groups table.
pub const GROUP_TYPE_INDEX: &str = "group_type_index";
/// `group_key` in the groups table.
pub const GROUP_KEY: &str = "group_key";
/// `group_properties` in the groups table.
pub const GROUP_PROPERTIES: &str = "group_properties";
/// `version` in the groups table.
pub const VERSION: &str = "version";
/// `updated_at` in the groups table.
pub const UPDATED_AT: &str = "updated_at";

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The `uuid` field: `FixedSizeBinary(16)` with the canonical `arrow.uuid` extension, which the
/// Parquet writer stores with the `UUID` logical type.
pub fn uuid_field() -> Field {
    Field::new(UUID, DataType::FixedSizeBinary(16), false)
        .with_extension_type(arrow_schema::extension::Uuid)
}

/// The events table schema. Column order is part of the contract.
pub fn events_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields = vec![
                uuid_field(),
                Field::new(EVENT, DataType::Utf8, false),
                Field::new(DISTINCT_ID, DataType::Utf8, false),
                Field::new(TIMESTAMP, ts_type(), false),
                Field::new(PROPERTIES, DataType::Utf8, false),
            ];
            fields.extend(
                GROUP_COLUMNS
                    .iter()
                    .map(|name| Field::new(*name, DataType::Utf8, false)),
            );
            fields.push(Field::new(CREATED_AT, ts_type(), false));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// The events as herd stores them (write buffer and events files): [`events_schema`]
/// followed by the actor numbers, `UInt32`, never null: `$distinct_id_num` and
/// `$group_0_num` … `$group_4_num`.
///
/// Every distinct `distinct_id` of a project, and every distinct key of each group type, has
/// one number, given in order of first arrival (`0` is the empty string: no group). Counting
/// distinct actors or grouping rows by actor then works on small integers instead of
/// hashing strings. Other engines can ignore these columns.
pub fn stored_events_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields: Vec<Field> = events_schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(DISTINCT_ID_NUM, DataType::UInt32, false));
            fields.extend(
                GROUP_NUM_COLUMNS
                    .iter()
                    .map(|name| Field::new(*name, DataType::UInt32, false)),
            );
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// The groups table schema: one row per change of a group.
pub fn groups_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(GROUP_TYPE_INDEX, DataType::UInt8, false),
                Field::new(GROUP_KEY, DataType::Utf8, false),
                Field::new(GROUP_PROPERTIES, DataType::Utf8, false),
                Field::new(CREATED_AT, ts_type(), false),
                Field::new(VERSION, DataType::Int64, false),
                Field::new(UPDATED_AT, ts_type(), false),
            ]))
        })
        .clone()
}

/// Index of a column in [`events_schema`].
pub mod events_col {
    /// `uuid`
    pub const UUID: usize = 0;
    /// `event`
    pub const EVENT: usize = 1;
    /// `distinct_id`
    pub const DISTINCT_ID: usize = 2;
    /// `timestamp`
    pub const TIMESTAMP: usize = 3;
    /// `properties`
    pub const PROPERTIES: usize = 4;
    /// `$group_0`; `$group_N` is at `GROUP_0 + N`.
    pub const GROUP_0: usize = 5;
    /// `created_at`
    pub const CREATED_AT: usize = 10;
    /// `$distinct_id_num` (stored events only, [`super::stored_events_schema`]).
    pub const DISTINCT_ID_NUM: usize = 11;
    /// `$group_0_num`; `$group_N_num` is at `GROUP_0_NUM + N`.
    pub const GROUP_0_NUM: usize = 12;
    /// Columns of [`super::events_schema`].
    pub const INGESTED: usize = 11;
    /// Columns of [`super::stored_events_schema`].
    pub const STORED: usize = 17;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_schema_has_dense_group_columns() {
        let schema = events_schema();
        for (n, name) in GROUP_COLUMNS.iter().enumerate() {
            let field = schema.field(events_col::GROUP_0 + n);
            assert_eq!(field.name(), name);
            assert!(!field.is_nullable());
            assert_eq!(field.data_type(), &DataType::Utf8);
        }
        assert_eq!(schema.field(events_col::CREATED_AT).name(), CREATED_AT);
        assert_eq!(schema.field(events_col::TIMESTAMP).name(), TIMESTAMP);
        assert_eq!(schema.fields().len(), events_col::INGESTED);
    }

    #[test]
    fn stored_events_append_the_actor_numbers() {
        let stored = stored_events_schema();
        assert_eq!(stored.fields().len(), events_col::STORED);
        for (i, f) in events_schema().fields().iter().enumerate() {
            assert_eq!(stored.field(i), f.as_ref());
        }
        assert_eq!(
            stored.field(events_col::DISTINCT_ID_NUM).name(),
            DISTINCT_ID_NUM
        );
        for (n, name) in GROUP_NUM_COLUMNS.iter().enumerate() {
            let field = stored.field(events_col::GROUP_0_NUM + n);
            assert_eq!(field.name(), name);
            assert_eq!(field.data_type(), &DataType::UInt32);
        }
    }
}
