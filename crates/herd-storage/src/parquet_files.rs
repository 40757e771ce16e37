//! Parquet encoding of herd's tables: zstd, large row groups, recorded sort order.
//!
//! Events files are sorted by `(event, $group_0_num, $distinct_id_num, timestamp)`
//! ([`EVENTS_SORT`]): statistics prune by event name, and one actor's rows lie together; the
//! order is recorded as Parquet `sorting_columns` so readers can trust it.

use std::sync::Arc;

use arrow::array::{Array, FixedSizeBinaryArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use herd_core::schema::{
    DISTINCT_ID, DISTINCT_ID_NUM, GROUP_COLUMNS, GROUP_NUM_COLUMNS, UUID, events_col,
    events_schema, stored_events_schema,
};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::{Error, Result};

mod merge;
pub use merge::merge_sorted_events;

/// Rows per row group.
pub const ROW_GROUP_ROWS: usize = 1 << 20;

fn parquet_err(path: &str) -> impl FnOnce(parquet::errors::ParquetError) -> Error + '_ {
    move |source| Error::Parquet {
        path: path.to_string(),
        source,
    }
}

/// The events files' sort order: event, first group type, person, time.
///
/// Event first so that a scan for a few event names reads few pages; then the actors, so
/// that one actor's rows of an event lie together: aggregations by company or by person
/// (unique counts, funnels, retention) then meet the same actor many rows in a row instead of
/// a random one per row (lookups hit the cache, and runs compress); time last. Actors are
/// ordered by their numbers (no strings to rank while writing).
pub const EVENTS_SORT: [usize; 4] = [
    events_col::EVENT,
    events_col::GROUP_0_NUM,
    events_col::DISTINCT_ID_NUM,
    events_col::TIMESTAMP,
];

/// Ranks of a string column's values in byte order, per batch: `ranks[batch][row]`.
fn string_ranks(batches: &[RecordBatch], column: usize, name: &str) -> Result<Vec<Vec<u32>>> {
    use arrow::array::StringArray;
    use std::collections::HashMap;
    let arrays = batches
        .iter()
        .map(|b| {
            b.column(column)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| Error::corrupt("events batch", format!("{name} is not Utf8")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut ids: HashMap<&str, u32, foldhash::fast::RandomState> = HashMap::default();
    let mut per_batch = Vec::with_capacity(arrays.len());
    for a in &arrays {
        let mut row_ids = Vec::with_capacity(a.len());
        for row in 0..a.len() {
            let v = if a.is_null(row) { "" } else { a.value(row) };
            let next = ids.len() as u32;
            row_ids.push(*ids.entry(v).or_insert(next));
        }
        per_batch.push(row_ids);
    }
    let mut names: Vec<(&str, u32)> = ids.into_iter().collect();
    names.sort_unstable();
    let mut rank = vec![0u32; names.len()];
    for (r, (_, id)) in names.iter().enumerate() {
        rank[*id as usize] = r as u32;
    }
    for row_ids in &mut per_batch {
        for id in row_ids.iter_mut() {
            *id = rank[*id as usize];
        }
    }
    Ok(per_batch)
}

/// The events files' order ([`EVENTS_SORT`]) of the rows of `batches`, as `(batch, row)`.
///
/// String columns are ranked once per distinct value and rows are sorted on integer keys.
fn sort_order(batches: &[RecordBatch]) -> Result<Vec<(usize, usize)>> {
    use arrow::array::{TimestampMicrosecondArray, UInt32Array};
    let events = string_ranks(batches, events_col::EVENT, "event")?;
    let mut keys: Vec<(u32, u32, u32, i64, u32, u32)> =
        Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for (bi, b) in batches.iter().enumerate() {
        let ts = b
            .column(events_col::TIMESTAMP)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| Error::corrupt("events batch", "timestamp column type"))?;
        let number = |c: usize| {
            b.columns()
                .get(c)
                .and_then(|a| a.as_any().downcast_ref::<UInt32Array>())
                .ok_or_else(|| Error::corrupt("events batch", "actor numbers missing"))
        };
        let (groups, persons) = (
            number(events_col::GROUP_0_NUM)?,
            number(events_col::DISTINCT_ID_NUM)?,
        );
        for (row, &event) in events[bi].iter().enumerate() {
            keys.push((
                event,
                groups.value(row),
                persons.value(row),
                ts.value(row),
                bi as u32,
                row as u32,
            ));
        }
    }
    keys.sort_unstable();
    Ok(keys.iter().map(|k| (k.4 as usize, k.5 as usize)).collect())
}

/// Rows `(array, row)` of `arrays` gathered into one array. Fixed-size binary columns without
/// nulls (the uuids) are copied value by value; arrow's `interleave` takes a generic,
/// much slower path for them.
fn gather(arrays: &[&dyn Array], rows: &[(usize, usize)]) -> Result<arrow::array::ArrayRef> {
    use arrow::array::AsArray;
    let fixed: Option<Vec<&FixedSizeBinaryArray>> = arrays
        .iter()
        .map(|a| a.as_fixed_size_binary_opt().filter(|f| f.null_count() == 0))
        .collect();
    let Some(fixed) = fixed.filter(|f| !f.is_empty()) else {
        return Ok(arrow::compute::interleave(arrays, rows)?);
    };
    let width = fixed[0].value_length();
    if fixed.iter().any(|f| f.value_length() != width) {
        return Ok(arrow::compute::interleave(arrays, rows)?);
    }
    let mut values = Vec::with_capacity(rows.len() * width as usize);
    for &(a, row) in rows {
        let array = fixed
            .get(a)
            .ok_or_else(|| Error::corrupt("sort order", "array index out of range"))?;
        values.extend_from_slice(array.value(row));
    }
    Ok(Arc::new(FixedSizeBinaryArray::try_new(
        width,
        values.into(),
        None,
    )?))
}

/// Key of an events file's footer metadata that lists the rows of each event name: a JSON
/// array of `[name, first row, rows]` in file order (files are sorted by event, so a name
/// has one run). Readers index a file from its footer instead of reading its `event` column;
/// files written before it existed lack it.
pub const EVENT_ROWS_KEY: &str = "herd.event_rows";

/// The runs of event names down a file's rows, as `(name, first row, rows)` in file order:
/// what the writer lists under [`EVENT_ROWS_KEY`], and what a reader builds from the `event`
/// column of a file written without it.
#[derive(Debug, Default)]
pub struct EventRuns {
    runs: Vec<(String, u64, u64)>,
    rows: u64,
    /// Whether rows without an event were seen (they are in no run).
    gaps: bool,
}

impl EventRuns {
    /// The next `rows` rows are all `name` (`None`: no event).
    pub fn push(&mut self, name: Option<&str>, rows: u64) {
        match (self.runs.last_mut(), name) {
            (_, None) => self.gaps = true,
            (Some((last, start, n)), Some(name)) if last == name && *start + *n == self.rows => {
                *n += rows;
            }
            (_, Some(name)) => self.runs.push((name.to_string(), self.rows, rows)),
        }
        self.rows += rows;
    }

    /// The runs, in file order.
    pub fn into_runs(self) -> Vec<(String, u64, u64)> {
        self.runs
    }

    /// Follows the rows of `batch` (stored events schema), written next.
    fn observe(&mut self, batch: &RecordBatch) {
        use arrow::array::AsArray;
        match batch.column(events_col::EVENT).as_string_opt::<i32>() {
            Some(events) => {
                for name in events {
                    self.push(name, 1);
                }
            }
            None => self.push(None, batch.num_rows() as u64),
        }
    }

    /// The footer entry listing the runs; none when some rows are in no run.
    fn key_value(&self) -> Option<parquet::file::metadata::KeyValue> {
        if self.gaps {
            return None;
        }
        let value = serde_json::to_string(&self.runs).ok()?;
        Some(parquet::file::metadata::KeyValue::new(
            EVENT_ROWS_KEY.to_string(),
            value,
        ))
    }
}

/// Writes one events file: sorted batches in, the file's bytes out, with the runs of event
/// names listed in its footer ([`EVENT_ROWS_KEY`]).
pub(crate) struct EventsWriter<'p> {
    writer: ArrowWriter<Vec<u8>>,
    runs: EventRuns,
    path: &'p str,
}

impl<'p> EventsWriter<'p> {
    /// A writer for the file at `path` (for errors), its buffer sized for `capacity` bytes.
    pub(crate) fn new(capacity: usize, path: &'p str) -> Result<Self> {
        let writer = ArrowWriter::try_new(
            Vec::with_capacity(capacity),
            stored_events_schema(),
            Some(events_props()),
        )
        .map_err(parquet_err(path))?;
        Ok(Self {
            writer,
            runs: EventRuns::default(),
            path,
        })
    }

    /// Appends `batch`, whose rows follow the ones written so far in the events order.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.runs.observe(batch);
        self.writer.write(batch).map_err(parquet_err(self.path))
    }

    /// The whole file.
    pub(crate) fn finish(mut self) -> Result<Bytes> {
        if let Some(kv) = self.runs.key_value() {
            self.writer.append_key_value_metadata(kv);
        }
        let buf = self.writer.into_inner().map_err(parquet_err(self.path))?;
        Ok(Bytes::from(buf))
    }
}

/// Rows gathered into sorted order at a time while encoding: the sorted copy of a flush never
/// exists whole, only a slice of it, and its buffers are reused by the allocator.
const SORT_GATHER_ROWS: usize = 32 * 1024;

/// Sorts events batches ([`EVENTS_SORT`]; stored events schema, with actor numbers) and
/// encodes them as one events file, gathering the sorted rows a slice at a time.
pub fn encode_sorted_events(batches: &[RecordBatch], path: &str) -> Result<Bytes> {
    let order = sort_order(batches)?;
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    let schema = stored_events_schema();
    let mut writer = EventsWriter::new(bytes / 4 + 1024, path)?;
    for part in order.chunks(SORT_GATHER_ROWS) {
        let columns = (0..schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> = refs.iter().map(|b| b.column(c).as_ref()).collect();
                gather(&arrays, part)
            })
            .collect::<Result<Vec<_>>>()?;
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    writer.finish()
}

/// Rows per data page of events files (Parquet's default is 20,000). A scan for a rare event
/// reads only the pages its rows are on (page index), so smaller pages mean fewer rows
/// decoded around them.
pub const EVENTS_PAGE_ROWS: usize = 4096;

fn writer_props(
    sorting: Option<Vec<SortingColumn>>,
    plain_columns: &[&str],
    no_dictionary: &[&str],
    page_rows: Option<usize>,
) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(sorting);
    // Columns unique per row: no dictionary, no statistics.
    for col in plain_columns {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(*col), false)
            .set_column_statistics_enabled(ColumnPath::from(*col), EnabledStatistics::None);
    }
    for col in no_dictionary {
        b = b.set_column_dictionary_enabled(ColumnPath::from(*col), false);
    }
    if let Some(rows) = page_rows {
        b = b.set_data_page_row_count_limit(rows);
    }
    b.build()
}

/// Writer settings of events files: sorting columns recorded, no dictionary and no
/// statistics for `uuid` and `properties` (unique per row, never pruned on; min/max of the
/// properties text cost a comparison of every value), no dictionary for `timestamp`, actor
/// numbers uncompressed.
fn events_props() -> WriterProperties {
    let sorting = EVENTS_SORT
        .iter()
        .map(|c| SortingColumn {
            column_idx: *c as i32,
            descending: false,
            nulls_first: false,
        })
        .collect();
    let props = writer_props(
        Some(sorting),
        &["uuid", "properties"],
        // Times are nearly unique: a dictionary saves nothing and costs a hash per row.
        &["timestamp"],
        Some(EVENTS_PAGE_ROWS),
    );
    // Actor numbers are read whole by unique counts and funnels: stored so that decoding
    // is a copy. `$distinct_id_num` is nearly unique per row within a (event, company) run
    // and zstd saved ~20 % of it while taking a third of a distinct count's time: plain and
    // uncompressed. The group numbers follow the sort (long runs): dictionary/RLE, which is
    // small already, uncompressed.
    // Uuids are random bytes: zstd spends time on them (a few % of a bulk load) and saves
    // nothing.
    let mut b = props
        .into_builder()
        .set_column_dictionary_enabled(ColumnPath::from(DISTINCT_ID_NUM), false)
        .set_column_compression(ColumnPath::from(DISTINCT_ID_NUM), Compression::UNCOMPRESSED)
        .set_column_compression(ColumnPath::from(UUID), Compression::UNCOMPRESSED);
    for name in GROUP_NUM_COLUMNS {
        b = b.set_column_compression(ColumnPath::from(name), Compression::UNCOMPRESSED);
    }
    // The actor strings get no statistics: their min/max cost two string comparisons per
    // value written (a tenth of a bulk load's CPU, measured) and prune nothing, since files
    // are sorted by the actors' numbers, not their strings (a page's range spans the
    // alphabet). Queries filter on the numbers, which keep theirs.
    for name in std::iter::once(DISTINCT_ID).chain(GROUP_COLUMNS) {
        b = b.set_column_statistics_enabled(ColumnPath::from(name), EnabledStatistics::None);
    }
    b.build()
}

/// Encodes a groups or warnings batch.
pub fn encode_plain(batch: &RecordBatch, path: &str) -> Result<Bytes> {
    encode(batch, path, writer_props(None, &[], &[], None))
}

fn encode(batch: &RecordBatch, path: &str, props: WriterProperties) -> Result<Bytes> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4 + 1024);
    let mut writer =
        ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).map_err(parquet_err(path))?;
    writer.write(batch).map_err(parquet_err(path))?;
    writer.close().map_err(parquet_err(path))?;
    Ok(Bytes::from(buf))
}

/// Decodes a whole Parquet file into batches of the expected schema.
pub fn decode(bytes: Bytes, path: &str, expected: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(parquet_err(path))?
        .with_batch_size(64 * 1024)
        .build()
        .map_err(parquet_err(path))?;
    reader
        .map(|batch| cast_to(batch?, expected))
        .collect::<Result<Vec<_>>>()
}

/// A decoded batch with the columns of the expected schema. Files may store a column as
/// another Arrow type of the same values (events files' actor columns are dictionaries).
fn cast_to(batch: RecordBatch, expected: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(expected.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(expected.clone(), columns)?)
}

/// Reads only the `uuid` column of an events file, as u128s.
pub fn decode_uuids(bytes: Bytes, path: &str) -> Result<Vec<u128>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet_err(path))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [events_col::UUID]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(parquet_err(path))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        out.extend(uuids_of(batch.column(0).as_ref(), path)?);
    }
    Ok(out)
}

/// The uuids of a `uuid` column as u128s.
pub fn uuids_of<'a>(array: &'a dyn Array, what: &str) -> Result<impl Iterator<Item = u128> + 'a> {
    let uuids = array
        .as_any()
        .downcast_ref::<FixedSizeBinaryArray>()
        .filter(|a| a.value_length() == 16)
        .ok_or_else(|| Error::corrupt(what, "uuid column is not FixedSizeBinary(16)"))?;
    Ok(uuids.iter().map(|v| {
        let mut bytes = [0u8; 16];
        if let Some(v) = v {
            bytes.copy_from_slice(v);
        }
        u128::from_be_bytes(bytes)
    }))
}

/// A schema-checked empty events batch (handy for callers that must return something).
pub fn empty_events() -> RecordBatch {
    RecordBatch::new_empty(Arc::clone(&events_schema()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_core::{Event, EventBatchBuilder};
    use parquet::basic::LogicalType;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn ev(n: u128, name: &str, ts: i64) -> Event {
        Event {
            uuid: uuid::Uuid::from_u128(n),
            event: name.into(),
            distinct_id: format!("u{n}"),
            timestamp: ts,
            properties: "{}".into(),
            groups: [
                "c".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
            created_at: ts,
        }
    }

    fn numbered(batch: RecordBatch) -> RecordBatch {
        crate::numbers::ActorNumbers::default()
            .number(&batch, &mut Vec::new())
            .expect("number")
    }

    /// `(event, $group_0_num, $distinct_id_num, timestamp, uuid)` of each row.
    fn sort_keys(b: &RecordBatch) -> Vec<(String, u32, u32, i64, u128)> {
        use arrow::array::AsArray;
        use arrow::datatypes::UInt32Type;
        let events = herd_core::event::events_from_batch(b).expect("events");
        let g = b
            .column(events_col::GROUP_0_NUM)
            .as_primitive::<UInt32Type>();
        let d = b
            .column(events_col::DISTINCT_ID_NUM)
            .as_primitive::<UInt32Type>();
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    e.event,
                    g.value(i),
                    d.value(i),
                    e.timestamp,
                    e.uuid.as_u128(),
                )
            })
            .collect()
    }

    #[test]
    fn events_file_is_sorted_zstd_uuid_typed_and_records_its_order() {
        let mut b = EventBatchBuilder::with_capacity(3);
        b.push(&ev(1, "b", 30));
        b.push(&ev(2, "a", 20));
        b.push(&ev(3, "a", 10));
        let mut other_company = ev(4, "a", 40);
        other_company.groups[0] = "b".into();
        b.push(&other_company);
        let bytes = encode_sorted_events(&[numbered(b.finish())], "t.parquet").expect("encode");

        let reader = SerializedFileReader::new(bytes.clone()).expect("open");
        let meta = reader.metadata();
        let rg = meta.row_group(0);
        assert_eq!(rg.sorting_columns().map(|s| s.len()), Some(4));
        assert!(matches!(
            rg.column(events_col::PROPERTIES).compression(),
            Compression::ZSTD(_)
        ));
        // Uuids (random bytes) are stored uncompressed.
        assert_eq!(
            rg.column(events_col::UUID).compression(),
            Compression::UNCOMPRESSED
        );
        // Actor numbers are stored uncompressed (decoding them is a copy).
        let numbers = rg.column(events_col::DISTINCT_ID_NUM);
        assert_eq!(numbers.column_path().string(), DISTINCT_ID_NUM);
        assert_eq!(numbers.compression(), Compression::UNCOMPRESSED);
        // The footer lists each event's rows (sorted: a, a, a, b).
        let kv = meta
            .file_metadata()
            .key_value_metadata()
            .expect("footer metadata");
        let rows = kv
            .iter()
            .find(|k| k.key == EVENT_ROWS_KEY)
            .and_then(|k| k.value.clone())
            .expect("event rows");
        assert_eq!(rows, r#"[["a",0,3],["b",3,1]]"#);
        // Statistics for what queries prune on (event, time, actor numbers), none for the
        // actor strings (files are not sorted by them).
        for c in [
            events_col::EVENT,
            events_col::TIMESTAMP,
            events_col::GROUP_0_NUM,
        ] {
            assert!(rg.column(c).statistics().is_some(), "column {c}");
        }
        for c in [events_col::DISTINCT_ID, events_col::GROUP_0] {
            assert!(rg.column(c).statistics().is_none(), "column {c}");
        }
        let uuid_col = meta.file_metadata().schema_descr().column(0);
        assert_eq!(uuid_col.logical_type_ref(), Some(&LogicalType::Uuid));

        let back = decode(bytes.clone(), "t.parquet", &events_schema()).expect("decode");
        let events = herd_core::event::events_from_batch(&back[0]).expect("events");
        // (event, $group_0_num, $distinct_id_num, timestamp), numbers in order of arrival:
        // company "c" (1) before "b" (2), u2 (at 20) before u3 (at 10), event "b" last.
        let order: Vec<u128> = events.iter().map(|e| e.uuid.as_u128()).collect();
        assert_eq!(order, vec![2, 3, 4, 1]);
        assert_eq!(
            decode_uuids(bytes, "t.parquet").expect("uuids"),
            vec![2, 3, 4, 1]
        );
    }

    #[test]
    fn sorted_encoding_in_slices_keeps_the_file_order_across_batches() {
        // Three batches, more rows than one gather slice, keys out of order.
        let batches: Vec<RecordBatch> = (0..3u128)
            .map(|bi| {
                let mut b = EventBatchBuilder::with_capacity(30_000);
                for i in 0..30_000u128 {
                    let n = bi * 30_000 + i;
                    let mut e = ev(
                        n + 1,
                        ["a", "b", "c"][(n * 7 % 3) as usize],
                        (n * 7919 % 1000) as i64,
                    );
                    e.groups[0] = format!("g{}", n * 31 % 97);
                    e.distinct_id = format!("u{}", n * 13 % 501);
                    b.push(&e);
                }
                b.finish()
            })
            .collect();
        let mut numbers = crate::numbers::ActorNumbers::default();
        let batches: Vec<RecordBatch> = batches
            .iter()
            .map(|b| numbers.number(b, &mut Vec::new()).expect("number"))
            .collect();
        // Reference: a stable sort of all rows by the file order's key (ties keep input order).
        let mut all: Vec<(String, u32, u32, i64, u128)> =
            batches.iter().flat_map(sort_keys).collect();
        all.sort_by(|a, b| (&a.0, a.1, a.2, a.3).cmp(&(&b.0, b.1, b.2, b.3)));
        let expected: Vec<u128> = all.iter().map(|k| k.4).collect();
        let sliced = encode_sorted_events(&batches, "t").expect("encode");
        let uuids = decode_uuids(sliced.clone(), "t").expect("uuids");
        assert_eq!(uuids.len(), 90_000);
        assert_eq!(uuids, expected);
        let back = decode(sliced.clone(), "t", &stored_events_schema()).expect("decode");
        let keys: Vec<(String, u32, u32, i64)> = back
            .iter()
            .flat_map(sort_keys)
            .map(|k| (k.0, k.1, k.2, k.3))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "not in file order");
        // Per-row columns carry no statistics; the sort columns do.
        let reader = SerializedFileReader::new(sliced).expect("open");
        let rg = reader.metadata().row_group(0);
        let stats = |name: &str| {
            (0..rg.num_columns())
                .find(|&c| rg.column(c).column_path().string() == name)
                .map(|c| rg.column(c).statistics().is_some())
        };
        assert_eq!(stats("properties"), Some(false));
        assert_eq!(stats("uuid"), Some(false));
        assert_eq!(stats("event"), Some(true));
    }

    /// Events with keys drawn from small ranges (many ties), numbered in one numbering.
    fn random_events(seed: u64, n: usize) -> Vec<Event> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let mut e = ev(
                    (seed as u128) << 32 | i as u128,
                    ["a", "bb", "b", "$pageview"][rng.random_range(0..4)],
                    rng.random_range(0..50),
                );
                e.groups[0] = format!("g{}", rng.random_range(0..4));
                e.distinct_id = format!("u{}", rng.random_range(0..6));
                e
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Merging sorted files gives what sorting all their rows gives, row for row (ties
        /// in the order of the files), whatever the batch and gather sizes.
        #[test]
        fn merging_sorted_files_equals_sorting_their_rows(
            sizes in proptest::collection::vec(0usize..300, 1..7),
            seed in 0u64..1_000_000,
            batch_rows in 1usize..64,
            gather_rows in 1usize..200,
        ) {
            let mut numbers = crate::numbers::ActorNumbers::default();
            let batches: Vec<RecordBatch> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let mut b = EventBatchBuilder::with_capacity(n);
                    for e in random_events(seed + i as u64, n) {
                        b.push(&e);
                    }
                    numbers.number(&b.finish(), &mut Vec::new()).expect("number")
                })
                .collect();
            let files: Vec<(Bytes, String)> = batches
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let path = format!("f{i}");
                    (encode_sorted_events(std::slice::from_ref(b), &path).expect("encode"), path)
                })
                .collect();
            // The files' rows, in file order, sorted stably: what the merge must give.
            let file_rows: Vec<RecordBatch> = files
                .iter()
                .flat_map(|(b, p)| decode(b.clone(), p, &stored_events_schema()).expect("decode"))
                .collect();
            let expected = encode_sorted_events(&file_rows, "all").expect("sort");
            let merged = merge::merge_in_slices(files, "m", batch_rows, gather_rows)
                .expect("merge")
                .expect("inputs are sorted");
            let back = |b: Bytes| -> Vec<RecordBatch> {
                decode(b, "x", &stored_events_schema()).expect("decode")
            };
            let footer = |b: &Bytes| -> Option<String> {
                use parquet::file::reader::{FileReader, SerializedFileReader};
                let r = SerializedFileReader::new(b.clone()).expect("open");
                r.metadata()
                    .file_metadata()
                    .key_value_metadata()
                    .and_then(|kv| kv.iter().find(|k| k.key == EVENT_ROWS_KEY).cloned())
                    .and_then(|k| k.value)
            };
            proptest::prop_assert_eq!(footer(&expected), footer(&merged));
            let (want, got) = (back(expected), back(merged));
            let rows = |bs: &[RecordBatch]| -> Vec<RecordBatch> {
                bs.iter().filter(|b| b.num_rows() > 0).cloned().collect()
            };
            let concat = |bs: Vec<RecordBatch>| {
                arrow::compute::concat_batches(&stored_events_schema(), &bs).expect("concat")
            };
            proptest::prop_assert_eq!(concat(rows(&want)), concat(rows(&got)));
        }
    }

    #[test]
    fn merging_a_file_out_of_the_events_order_is_refused() {
        // Written without sorting: event "b" before "a".
        let mut b = EventBatchBuilder::with_capacity(2);
        b.push(&ev(1, "b", 1));
        b.push(&ev(2, "a", 2));
        let unsorted = numbered(b.finish());
        let props = events_props();
        let bytes = encode(&unsorted, "u", props).expect("encode");
        let mut s = EventBatchBuilder::with_capacity(1);
        s.push(&ev(3, "a", 3));
        let sorted = encode_sorted_events(&[numbered(s.finish())], "s").expect("encode");
        let inputs = vec![(sorted, "s".to_string()), (bytes, "u".to_string())];
        assert_eq!(
            merge::merge_in_slices(inputs, "m", 1, 8).expect("merge"),
            None
        );
    }
}

/// Reads a Parquet object of known size from an object store, for parquet's async reader.
#[derive(Debug, Clone)]
pub struct ObjectReader {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    size: u64,
}

impl ObjectReader {
    /// A reader of `path` (of `size` bytes) in `store`.
    pub fn new(
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        path: object_store::path::Path,
        size: u64,
    ) -> Self {
        Self { store, path, size }
    }
}

fn store_err(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl parquet::arrow::async_reader::AsyncFileReader for ObjectReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        use futures::FutureExt;
        use object_store::ObjectStoreExt;
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(store_err)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        use futures::FutureExt;
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(store_err)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        parquet::errors::Result<std::sync::Arc<parquet::file::metadata::ParquetMetaData>>,
    > {
        use futures::FutureExt;
        async move {
            let size = self.size;
            let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(std::sync::Arc::new(metadata))
        }
        .boxed()
    }
}
