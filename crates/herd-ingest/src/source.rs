//! Backfill sources: which Parquet files a SOURCE names, and reading them as [`SourceRows`].
//!
//! A SOURCE is a Parquet file, a folder (every `*.parquet` below it), a glob, or an
//! object-store URL (`file://…`, `s3://bucket/prefix/`). Two layouts are read: herd's own events
//! schema, and PostHog-style exports (`uuid`, `event`, `distinct_id`, `timestamp`,
//! `properties` JSON text, groups in `properties.$groups` and/or `$group_0..4` columns). Other
//! columns are ignored and never read. A file that lacks a required column, or has one of a type
//! herd cannot read, is refused with the file and column named.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeBinaryArray, FixedSizeBinaryBuilder, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema, TimeUnit};
use futures::StreamExt;
use herd_core::schema::GROUP_COLUMNS;
use herd_core::{GroupTypeMapping, MAX_GROUP_TYPES};
use herd_storage::Storage;
use herd_storage::parquet_files::ObjectReader;
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use parquet::arrow::async_reader::ParquetRecordBatchStream;

use crate::bulk::SourceRows;
use crate::{Error, Result};

/// Rows per batch read from a source.
pub const READ_BATCH_ROWS: usize = 64 * 1024;

/// One Parquet file of a source.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The store it lives in.
    pub storage: Storage,
    /// Its path in that store.
    pub path: Path,
    /// How to name it to a person (and in the checkpoint).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

fn source_err(file: &str, reason: impl Into<String>) -> Error {
    Error::Source {
        file: file.to_string(),
        reason: reason.into(),
    }
}

/// Resolves SOURCE arguments into files, in a stable order.
pub async fn resolve(specs: &[String]) -> Result<Vec<SourceFile>> {
    let mut out = Vec::new();
    for spec in specs {
        let before = out.len();
        if spec.contains("://") {
            let storage = Storage::open(spec).map_err(|e| source_err(spec, e.to_string()))?;
            let metas = storage
                .list(&Path::from(""))
                .await
                .map_err(|e| source_err(spec, format!("cannot list: {e}")))?;
            let mut files: Vec<_> = metas
                .into_iter()
                .filter(|m| m.location.as_ref().ends_with(".parquet"))
                .collect();
            files.sort_by(|a, b| a.location.cmp(&b.location));
            for m in files {
                out.push(SourceFile {
                    name: format!("{}/{}", spec.trim_end_matches('/'), m.location),
                    storage: storage.clone(),
                    path: m.location,
                    size: m.size,
                });
            }
        } else {
            let mut paths = Vec::new();
            let p = std::path::Path::new(spec);
            if p.is_file() {
                paths.push(p.to_path_buf());
            } else if p.is_dir() {
                collect_parquet(p, &mut paths).map_err(|e| source_err(spec, e.to_string()))?;
            } else if spec.contains(['*', '?', '[']) {
                let entries =
                    glob::glob(spec).map_err(|e| source_err(spec, format!("bad glob: {e}")))?;
                for entry in entries {
                    let path = entry.map_err(|e| source_err(spec, e.to_string()))?;
                    if path.is_file() {
                        paths.push(path);
                    }
                }
            } else {
                return Err(source_err(spec, "no such file or folder"));
            }
            paths.sort();
            for path in paths {
                out.push(local_file(&path)?);
            }
        }
        if out.len() == before {
            return Err(source_err(spec, "names no Parquet file"));
        }
    }
    Ok(out)
}

fn collect_parquet(
    dir: &std::path::Path,
    out: &mut Vec<std::path::PathBuf>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_parquet(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// A local file as a [`SourceFile`] (its folder becomes the store).
pub fn local_file(path: &std::path::Path) -> Result<SourceFile> {
    let name = path.display().to_string();
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let file_name = path
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| source_err(&name, "file name is not UTF-8"))?;
    let storage =
        Storage::local(parent.to_path_buf()).map_err(|e| source_err(&name, e.to_string()))?;
    let size = std::fs::metadata(path)
        .map_err(|e| source_err(&name, e.to_string()))?
        .len();
    Ok(SourceFile {
        storage,
        path: Path::from(file_name),
        name,
        size,
    })
}

/// How a file's columns map to herd's.
#[derive(Debug, Clone)]
struct Layout {
    uuid: usize,
    event: usize,
    distinct_id: usize,
    timestamp: usize,
    properties: usize,
    groups: Option<[usize; MAX_GROUP_TYPES]>,
    created_at: Option<usize>,
}

/// An open events source: a stream of [`SourceRows`].
pub struct EventsReader {
    name: String,
    stream: ParquetRecordBatchStream<ObjectReader>,
    layout: Layout,
    mapping: Option<GroupTypeMapping>,
    /// Rows in the file (from its footer).
    pub rows: u64,
}

impl std::fmt::Debug for EventsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsReader")
            .field("name", &self.name)
            .field("rows", &self.rows)
            .finish()
    }
}

async fn open_builder(file: &SourceFile) -> Result<ParquetRecordBatchStreamBuilder<ObjectReader>> {
    let reader = ObjectReader::new(file.storage.object_store(), file.path.clone(), file.size);
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| source_err(&file.name, format!("not a readable Parquet file: {e}")))
}

fn find(schema: &Schema, file: &str, name: &str) -> Result<usize> {
    schema
        .index_of(name)
        .map_err(|_| source_err(file, format!("missing required column {name:?}")))
}

fn check_type(
    schema: &Schema,
    file: &str,
    idx: usize,
    ok: fn(&DataType) -> bool,
    want: &str,
) -> Result<()> {
    let field = schema.field(idx);
    if ok(field.data_type()) {
        Ok(())
    } else {
        Err(source_err(
            file,
            format!(
                "column {:?} has type {}, expected {want}",
                field.name(),
                field.data_type()
            ),
        ))
    }
}

fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

/// Opens an events file. `mapping` is the source's group-type mapping, needed when the file
/// has `$group_N` columns with values.
pub async fn open_events(
    file: &SourceFile,
    mapping: Option<GroupTypeMapping>,
) -> Result<EventsReader> {
    let builder = open_builder(file).await?;
    let schema = builder.schema().clone();
    let name = file.name.as_str();
    let layout = Layout {
        uuid: find(&schema, name, "uuid")?,
        event: find(&schema, name, "event")?,
        distinct_id: find(&schema, name, "distinct_id")?,
        timestamp: find(&schema, name, "timestamp")?,
        properties: find(&schema, name, "properties")?,
        groups: {
            let found: Vec<Option<usize>> = GROUP_COLUMNS
                .iter()
                .map(|c| schema.index_of(c).ok())
                .collect();
            if found.iter().all(Option::is_some) {
                Some(std::array::from_fn(|i| found[i].unwrap_or_default()))
            } else if found.iter().any(Option::is_some) {
                return Err(source_err(
                    name,
                    "has some but not all of the $group_0..$group_4 columns",
                ));
            } else {
                None
            }
        },
        created_at: schema
            .index_of("created_at")
            .ok()
            .filter(|i| matches!(schema.field(*i).data_type(), DataType::Timestamp(_, _))),
    };
    check_type(
        &schema,
        name,
        layout.uuid,
        |t| matches!(t, DataType::FixedSizeBinary(16)) || is_string(t),
        "FixedSizeBinary(16) or a string",
    )?;
    for idx in [layout.event, layout.distinct_id, layout.properties] {
        check_type(&schema, name, idx, is_string, "a string")?;
    }
    check_type(
        &schema,
        name,
        layout.timestamp,
        |t| matches!(t, DataType::Timestamp(_, _)) || is_string(t),
        "a timestamp or an ISO 8601 string",
    )?;
    if let Some(groups) = layout.groups {
        for idx in groups {
            check_type(&schema, name, idx, is_string, "a string")?;
        }
    }
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    // Read only the columns herd uses, in this order.
    let mut wanted = vec![
        layout.uuid,
        layout.event,
        layout.distinct_id,
        layout.timestamp,
        layout.properties,
    ];
    if let Some(g) = layout.groups {
        wanted.extend(g);
    }
    wanted.extend(layout.created_at);
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted.iter().copied());
    let stream = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| source_err(name, e.to_string()))?;
    // Projected columns come back in file order; remember where each landed.
    let mut sorted = wanted.clone();
    sorted.sort_unstable();
    let pos = |i: usize| sorted.iter().position(|x| *x == i).unwrap_or_default();
    let layout = Layout {
        uuid: pos(layout.uuid),
        event: pos(layout.event),
        distinct_id: pos(layout.distinct_id),
        timestamp: pos(layout.timestamp),
        properties: pos(layout.properties),
        groups: layout.groups.map(|g| g.map(pos)),
        created_at: layout.created_at.map(pos),
    };
    Ok(EventsReader {
        name: file.name.clone(),
        stream,
        layout,
        mapping,
        rows,
    })
}

impl EventsReader {
    /// The next batch, or `None` at the end of the file.
    pub async fn next(&mut self) -> Result<Option<SourceRows>> {
        let Some(batch) = self.stream.next().await else {
            return Ok(None);
        };
        let batch =
            batch.map_err(|e| source_err(&self.name, format!("corrupt Parquet data: {e}")))?;
        self.normalise(&batch).map(Some)
    }

    fn normalise(&self, batch: &RecordBatch) -> Result<SourceRows> {
        let name = &self.name;
        let l = &self.layout;
        let groups = match l.groups {
            None => None,
            Some(cols) => {
                let arrays: Vec<StringArray> = cols
                    .iter()
                    .map(|c| to_strings(batch.column(*c), name))
                    .collect::<Result<_>>()?;
                let any_value = arrays
                    .iter()
                    .any(|a| (0..a.len()).any(|i| a.is_valid(i) && !a.value(i).is_empty()));
                match (&self.mapping, any_value) {
                    (Some(m), _) => Some((to_array5(arrays), m.clone())),
                    // Empty group columns say nothing: read $groups from the properties instead.
                    (None, false) => None,
                    (None, true) => {
                        return Err(source_err(
                            name,
                            "has values in $group_N columns but no group-type mapping: pass --group-types company=0,project=1 (or a group_types.json)",
                        ));
                    }
                }
            }
        };
        Ok(SourceRows {
            uuid: to_uuids(batch.column(l.uuid), name)?,
            event: to_strings(batch.column(l.event), name)?,
            distinct_id: to_strings(batch.column(l.distinct_id), name)?,
            timestamp: to_micros(batch.column(l.timestamp), name)?,
            properties: to_strings(batch.column(l.properties), name)?,
            groups,
            created_at: match l.created_at {
                Some(c) => Some(to_micros(batch.column(c), name)?),
                None => None,
            },
            prepared: None,
        })
    }
}

fn to_array5(v: Vec<StringArray>) -> [StringArray; MAX_GROUP_TYPES] {
    let mut it = v.into_iter();
    std::array::from_fn(|_| {
        it.next()
            .unwrap_or_else(|| StringArray::from(Vec::<&str>::new()))
    })
}

fn to_strings(array: &ArrayRef, file: &str) -> Result<StringArray> {
    let utf8 = cast(array, &DataType::Utf8).map_err(|e| source_err(file, e.to_string()))?;
    utf8.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| source_err(file, "string column did not cast to Utf8"))
}

fn to_micros(array: &ArrayRef, file: &str) -> Result<TimestampMicrosecondArray> {
    let micros = match array.data_type() {
        DataType::Timestamp(_, _) => cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))
            .map_err(|e| source_err(file, e.to_string()))?,
        _ => {
            let text = to_strings(array, file)?;
            let parsed: TimestampMicrosecondArray = text
                .iter()
                .map(|v| v.and_then(herd_core::time::parse_timestamp))
                .collect();
            Arc::new(parsed)
        }
    };
    let micros = micros
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| source_err(file, "timestamp did not cast to µs"))?;
    Ok(micros.with_timezone("UTC"))
}

/// uuids as 16 bytes; a null, empty or unparsable one becomes all zeros (the loader derives a
/// stable uuid from the row for those).
fn to_uuids(array: &ArrayRef, file: &str) -> Result<FixedSizeBinaryArray> {
    if let Some(fixed) = array.as_any().downcast_ref::<FixedSizeBinaryArray>() {
        return Ok(fixed.clone());
    }
    let text = to_strings(array, file)?;
    let mut b = FixedSizeBinaryBuilder::with_capacity(text.len(), 16);
    for v in text.iter() {
        let bytes = v
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .map_or([0u8; 16], |u| *u.as_bytes());
        b.append_value(bytes)
            .map_err(|e| source_err(file, e.to_string()))?;
    }
    Ok(b.finish())
}

/// One row of a groups export.
#[derive(Debug, Clone)]
pub struct SourceGroup {
    /// The group type by name, or by the source's index.
    pub group_type: GroupTypeRef,
    /// The key.
    pub key: String,
    /// Properties JSON text.
    pub properties: String,
    /// First seen, µs.
    pub created_at: i64,
}

/// A group type as a groups export names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupTypeRef {
    /// `group_type` column.
    Name(String),
    /// `group_type_index` column.
    Index(u8),
}

/// Reads a whole groups export (`group_type` or `group_type_index`, `group_key`,
/// `group_properties`, `created_at`), sorted by `created_at` then key.
pub async fn read_groups(file: &SourceFile) -> Result<Vec<SourceGroup>> {
    let builder = open_builder(file).await?;
    let schema = builder.schema().clone();
    let name = file.name.as_str();
    let by_name = schema.index_of("group_type").ok();
    let by_index = schema.index_of("group_type_index").ok();
    if by_name.is_none() && by_index.is_none() {
        return Err(source_err(
            name,
            "missing required column \"group_type\" (or \"group_type_index\")",
        ));
    }
    let key = find(&schema, name, "group_key")?;
    let props = find(&schema, name, "group_properties")?;
    let created = find(&schema, name, "created_at")?;
    check_type(&schema, name, key, is_string, "a string")?;
    check_type(&schema, name, props, is_string, "a string")?;
    check_type(
        &schema,
        name,
        created,
        |t| matches!(t, DataType::Timestamp(_, _)) || is_string(t),
        "a timestamp",
    )?;
    let mut stream = builder
        .build()
        .map_err(|e| source_err(name, e.to_string()))?;
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| source_err(name, format!("corrupt Parquet data: {e}")))?;
        let keys = to_strings(batch.column(key), name)?;
        let propss = to_strings(batch.column(props), name)?;
        let created = to_micros(batch.column(created), name)?;
        let types = match (by_name, by_index) {
            (Some(c), _) => TypeColumn::Names(to_strings(batch.column(c), name)?),
            (None, Some(c)) => {
                let ints = cast(batch.column(c), &DataType::UInt8)
                    .map_err(|e| source_err(name, format!("group_type_index: {e}")))?;
                let ints = ints
                    .as_any()
                    .downcast_ref::<arrow::array::UInt8Array>()
                    .cloned()
                    .ok_or_else(|| source_err(name, "group_type_index is not an integer"))?;
                TypeColumn::Indices(ints)
            }
            (None, None) => {
                return Err(source_err(name, "missing required column \"group_type\""));
            }
        };
        for i in 0..batch.num_rows() {
            if keys.is_null(i) {
                continue;
            }
            let group_type = match &types {
                TypeColumn::Names(n) if n.is_valid(i) => GroupTypeRef::Name(n.value(i).to_string()),
                TypeColumn::Indices(n) if n.is_valid(i) => GroupTypeRef::Index(n.value(i)),
                _ => continue,
            };
            out.push(SourceGroup {
                group_type,
                key: keys.value(i).to_string(),
                properties: if propss.is_null(i) {
                    "{}".into()
                } else {
                    propss.value(i).to_string()
                },
                created_at: if created.is_null(i) {
                    0
                } else {
                    created.value(i)
                },
            });
        }
    }
    out.sort_by(|a, b| (a.created_at, &a.key).cmp(&(b.created_at, &b.key)));
    Ok(out)
}

enum TypeColumn {
    Names(StringArray),
    Indices(arrow::array::UInt8Array),
}
