//! The events files of a catalog snapshot as one DataFusion table, read through an index
//! kept per file.
//!
//! Events files are immutable and sorted by event name first, so each name occupies one run
//! of rows per file. The first scan that touches a file reads its footer (with the page
//! index), which lists those runs ([`EVENT_ROWS_KEY`]; for files written before it did, the
//! `event` column is read once instead), and keeps in [`FileIndexes`] the rows of every
//! event name, the Parquet metadata and the file's Arrow schema. A scan whose filters name
//! the events it wants (`event = 'x'`, `event IN (…)`, or an `OR` of those) then hands the
//! Parquet reader an exact row selection per file ([`ParquetAccessPlan`]): files without
//! those events are not opened, only the pages holding the wanted rows are read, the
//! `event` column is not read unless the query uses it, and no pruning predicate is
//! evaluated against statistics, bloom filters or the page index. Those filters are
//! reported to DataFusion as exact, so nothing re-checks them. Other filters stay with
//! DataFusion: a `FilterExec` above the scan, whose predicate DataFusion's physical filter
//! pushdown hands to the Parquet source for row-group / page pruning (switched off when an
//! event selection applies).
//!
//! The reader gets each file's metadata from the index (no footer read, no Arrow schema
//! decoded per query) and its size from the catalog (no `HEAD` per file).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    ParquetAccessPlan, RowGroupAccess, apply_file_schema_type_coercions,
};
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use herd_core::schema::EVENT;
use herd_storage::catalog::FileEntry;
use herd_storage::parquet_files::{EVENT_ROWS_KEY, EventRuns};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelector};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask, parquet_to_arrow_schema};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use crate::STORE_URL;

/// Bytes of file indexes kept in memory (metadata with page index, event runs). Beyond it
/// the least recently used files' indexes are dropped and read again when next needed.
pub const FILE_INDEX_BUDGET: usize = 128 << 20;

/// How many files' indexes are read at once.
const INDEX_LOAD_CONCURRENCY: usize = 8;

/// What the index knows about one events file.
#[derive(Debug)]
pub(crate) struct FileIndex {
    /// The footer, with the column and offset indexes.
    metadata: Arc<ParquetMetaData>,
    /// The file's Arrow schema as queries read it (strings as views).
    schema: SchemaRef,
    /// Rows of each event name, in file order (ascending, not overlapping).
    events: HashMap<String, Vec<Range<u64>>>,
    /// Estimated bytes held.
    size: usize,
    /// Size of the file the index was read from (a cached index is used only for a file of
    /// the same path and size).
    file_bytes: u64,
}

impl FileIndex {
    /// Reads `file`'s footer, and its `event` column when the footer does not list the rows
    /// of each event ([`EVENT_ROWS_KEY`], written by herd since session 12).
    async fn load(
        store: Arc<dyn ObjectStore>,
        file: &FileEntry,
        table_schema: &SchemaRef,
    ) -> DfResult<Self> {
        let mut reader = StoreReader {
            store,
            path: Path::from(file.path.as_str()),
            size: file.bytes,
            metadata: None,
            bytes_scanned: None,
        };
        let metadata = reader.get_metadata(None).await?;
        reader.metadata = Some(metadata.clone());
        let file_meta = metadata.file_metadata();
        let file_schema =
            parquet_to_arrow_schema(file_meta.schema_descr(), file_meta.key_value_metadata())?;
        let schema = Arc::new(
            apply_file_schema_type_coercions(table_schema, &file_schema)
                .unwrap_or_else(|| file_schema.clone()),
        );
        let events = match footer_event_rows(&metadata) {
            Some(events) => events,
            None => read_event_rows(reader, &metadata, &file_schema, file).await?,
        };
        let size = metadata.memory_size()
            + events
                .iter()
                .map(|(k, v)| k.len() + v.len() * 16 + 64)
                .sum::<usize>();
        Ok(Self {
            metadata,
            schema,
            events,
            size,
            file_bytes: file.bytes,
        })
    }

    /// The rows of `names` in this file, in order, merged.
    fn rows_of(&self, names: &BTreeSet<String>) -> Vec<Range<u64>> {
        let mut rows: Vec<Range<u64>> = names
            .iter()
            .filter_map(|n| self.events.get(n))
            .flatten()
            .cloned()
            .collect();
        rows.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(rows.len());
        for r in rows {
            match merged.last_mut() {
                Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    /// An access plan reading exactly `rows` (ascending, not overlapping) of the file.
    fn access_plan(&self, rows: &[Range<u64>]) -> ParquetAccessPlan {
        let groups = self.metadata.row_groups();
        let mut plan = ParquetAccessPlan::new_none(groups.len());
        let mut next = rows.iter().peekable();
        let mut group_start = 0u64;
        for (i, group) in groups.iter().enumerate() {
            let group_end = group_start + group.num_rows().max(0) as u64;
            let mut selectors = Vec::new();
            let (mut at, mut selected) = (group_start, 0u64);
            while let Some(r) = next.peek() {
                if r.start >= group_end {
                    break;
                }
                let (start, end) = (r.start.max(group_start), r.end.min(group_end));
                if start > at {
                    selectors.push(RowSelector::skip((start - at) as usize));
                }
                if end > start {
                    selectors.push(RowSelector::select((end - start) as usize));
                    selected += end - start;
                }
                at = end.max(at);
                if r.end > group_end {
                    break; // the range goes on in the next row group
                }
                next.next();
            }
            if selected == group_end - group_start {
                plan.scan(i);
            } else if selected > 0 {
                if group_end > at {
                    selectors.push(RowSelector::skip((group_end - at) as usize));
                }
                plan.set(i, RowGroupAccess::Selection(selectors.into()));
            }
            group_start = group_end;
        }
        plan
    }
}

/// The rows of each event name as the writer listed them in the footer
/// ([`EVENT_ROWS_KEY`]), when present and consistent with the file.
fn footer_event_rows(metadata: &ParquetMetaData) -> Option<HashMap<String, Vec<Range<u64>>>> {
    let file_meta = metadata.file_metadata();
    let value = file_meta
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == EVENT_ROWS_KEY)?
        .value
        .as_deref()?;
    let runs: Vec<(String, u64, u64)> = serde_json::from_str(value).ok()?;
    // The runs must tile the file, in order.
    let mut next = 0u64;
    for (_, start, rows) in &runs {
        if *start != next {
            return None;
        }
        next = start.checked_add(*rows)?;
    }
    (i64::try_from(next).ok()? == file_meta.num_rows()).then(|| by_name(runs))
}

/// The rows of each event name read from the file's `event` column (files written before
/// the footer listed them).
async fn read_event_rows(
    reader: StoreReader,
    metadata: &Arc<ParquetMetaData>,
    file_schema: &Schema,
    file: &FileEntry,
) -> DfResult<HashMap<String, Vec<Range<u64>>>> {
    let file_meta = metadata.file_metadata();
    let event_leaf = file_meta
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [EVENT])
        .ok_or_else(|| bad_event_column(file, "missing"))?;
    // Read as a dictionary: the names of a column chunk are its dictionary's, and a run
    // ends where the key changes, so no string is built or compared per row.
    let hint = Schema::new_with_metadata(
        file_schema
            .fields()
            .iter()
            .map(|f| match f.name() == EVENT {
                true => Field::new(EVENT, dictionary(), f.is_nullable()),
                false => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
        file_schema.metadata().clone(),
    );
    let options = ArrowReaderOptions::new().with_schema(Arc::new(hint));
    let reader_meta = ArrowReaderMetadata::try_new(metadata.clone(), options)?;
    let mask = ProjectionMask::leaves(file_meta.schema_descr(), [event_leaf]);
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, reader_meta)
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()?;
    let mut runs = EventRuns::default();
    while let Some(batch) = stream.try_next().await? {
        let Some(column) = batch.column(0).as_dictionary_opt::<Int32Type>() else {
            return Err(bad_event_column(file, "not read as a dictionary"));
        };
        let Some(names) = column.values().as_string_opt::<i32>() else {
            return Err(bad_event_column(file, "its dictionary is not text"));
        };
        let keys = column.keys();
        let mut i = 0;
        while i < keys.len() {
            let (valid, key) = (keys.is_valid(i), keys.value(i));
            let mut j = i + 1;
            while j < keys.len() && keys.is_valid(j) == valid && keys.value(j) == key {
                j += 1;
            }
            let name = match valid {
                false => None,
                true => match usize::try_from(key) {
                    Ok(k) if k < names.len() && names.is_valid(k) => Some(names.value(k)),
                    _ => return Err(bad_event_column(file, "a key outside its dictionary")),
                },
            };
            runs.push(name, (j - i) as u64);
            i = j;
        }
    }
    Ok(by_name(runs.into_runs()))
}

/// The error for an `event` column that cannot be indexed.
fn bad_event_column(file: &FileEntry, reason: &str) -> DataFusionError {
    DataFusionError::Execution(format!("{}: `{EVENT}` column: {reason}", file.path))
}

/// The Arrow type the `event` column is read as to index it.
fn dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Runs as `(name, first row, rows)` grouped by name.
fn by_name(runs: Vec<(String, u64, u64)>) -> HashMap<String, Vec<Range<u64>>> {
    let mut events: HashMap<String, Vec<Range<u64>>> = HashMap::new();
    for (name, start, rows) in runs {
        events
            .entry(name)
            .or_default()
            .push(start..start.saturating_add(rows));
    }
    events
}

/// The indexes of the files queries have read, shared by a [`crate::QueryEngine`]'s
/// queries, least recently used dropped beyond [`FILE_INDEX_BUDGET`].
#[derive(Default)]
pub(crate) struct FileIndexes {
    entries: Mutex<HashMap<String, (Arc<FileIndex>, u64)>>,
    tick: AtomicU64,
}

impl fmt::Debug for FileIndexes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or_default();
        f.debug_struct("FileIndexes").field("files", &n).finish()
    }
}

impl FileIndexes {
    /// The indexes of `files`, read for those not held.
    async fn get(
        &self,
        store: &Arc<dyn ObjectStore>,
        files: &[FileEntry],
        table_schema: &SchemaRef,
    ) -> DfResult<Vec<Arc<FileIndex>>> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let mut found: Vec<Option<Arc<FileIndex>>> = {
            let mut entries = self.lock();
            files
                .iter()
                .map(|f| {
                    entries
                        .get_mut(&f.path)
                        .filter(|(index, _)| index.file_bytes == f.bytes)
                        .map(|(index, used)| {
                            *used = tick;
                            index.clone()
                        })
                })
                .collect()
        };
        let missing: Vec<usize> = (0..files.len()).filter(|&i| found[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(found.into_iter().flatten().collect());
        }
        let loaded: Vec<(usize, FileIndex)> = futures::stream::iter(missing)
            .map(|i| {
                let store = store.clone();
                async move {
                    Ok::<_, DataFusionError>((
                        i,
                        FileIndex::load(store, &files[i], table_schema).await?,
                    ))
                }
            })
            .buffer_unordered(INDEX_LOAD_CONCURRENCY)
            .try_collect()
            .await?;
        let mut entries = self.lock();
        for (i, index) in loaded {
            let index = Arc::new(index);
            entries.insert(files[i].path.clone(), (index.clone(), tick));
            found[i] = Some(index);
        }
        evict(&mut entries, tick);
        tracing::debug!(
            files = entries.len(),
            bytes = entries.values().map(|(i, _)| i.size).sum::<usize>(),
            "file indexes held"
        );
        Ok(found.into_iter().flatten().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<FileIndex>, u64)>> {
        // The map is consistent after any panic of a holder (inserts and removes only).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drops the least recently used entries, other than those used at `tick`, while the
/// entries hold more than [`FILE_INDEX_BUDGET`].
fn evict(entries: &mut HashMap<String, (Arc<FileIndex>, u64)>, tick: u64) {
    let mut total: usize = entries.values().map(|(i, _)| i.size).sum();
    if total <= FILE_INDEX_BUDGET {
        return;
    }
    let mut by_age: Vec<(u64, String, usize)> = entries
        .iter()
        .filter(|(_, (_, used))| *used < tick)
        .map(|(path, (index, used))| (*used, path.clone(), index.size))
        .collect();
    by_age.sort();
    for (_, path, size) in by_age {
        if total <= FILE_INDEX_BUDGET {
            break;
        }
        entries.remove(&path);
        total -= size;
    }
}

/// The event names a filter keeps when it tests only `event` against names
/// (`event = 'x'`, `event IN ('x', 'y')`, `OR`s of those); `None` for any other filter.
fn event_names(filter: &Expr) -> Option<BTreeSet<String>> {
    fn name(e: &Expr) -> Option<Option<String>> {
        match e {
            Expr::Literal(
                ScalarValue::Utf8(s) | ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s),
                _,
            ) => Some(s.clone()),
            _ => None,
        }
    }
    let is_event = |e: &Expr| matches!(e, Expr::Column(c) if c.name == EVENT);
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::Eq => {
                let value = match (left.as_ref(), right.as_ref()) {
                    (c, v) if is_event(c) => name(v)?,
                    (v, c) if is_event(c) => name(v)?,
                    _ => return None,
                };
                Some(value.into_iter().collect())
            }
            Operator::Or => {
                let mut names = event_names(left)?;
                names.extend(event_names(right)?);
                Some(names)
            }
            _ => None,
        },
        Expr::InList(list) if !list.negated && is_event(&list.expr) => {
            let mut names = BTreeSet::new();
            for v in &list.list {
                names.extend(name(v)?);
            }
            Some(names)
        }
        _ => None,
    }
}

/// Events files as a table of [`crate::query_events_schema`].
pub(crate) struct EventFiles {
    files: Vec<FileEntry>,
    schema: SchemaRef,
    indexes: Arc<FileIndexes>,
}

impl fmt::Debug for EventFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventFiles")
            .field("files", &self.files.len())
            .finish()
    }
}

impl EventFiles {
    pub(crate) fn new(files: Vec<FileEntry>, schema: SchemaRef, indexes: Arc<FileIndexes>) -> Self {
        Self {
            files,
            schema,
            indexes,
        }
    }
}

#[async_trait::async_trait]
impl datafusion::catalog::TableProvider for EventFiles {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match event_names(f) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Inexact,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // The wanted names: those every event filter keeps.
        let wanted = filters
            .iter()
            .filter_map(event_names)
            .reduce(|a, b| a.intersection(&b).cloned().collect());
        let url = ObjectStoreUrl::parse(STORE_URL)?;
        let store = state.runtime_env().object_store(&url)?;
        let indexes = self.indexes.get(&store, &self.files, &self.schema).await?;

        // Each file with the rows it reads; files with none are left out.
        let mut chosen: Vec<(PartitionedFile, u64)> = Vec::with_capacity(self.files.len());
        let mut metadata = HashMap::with_capacity(self.files.len());
        for (file, index) in self.files.iter().zip(&indexes) {
            let mut part = PartitionedFile::new(file.path.clone(), file.bytes)
                .with_arrow_schema(index.schema.clone());
            let rows = match &wanted {
                Some(names) => {
                    let rows = index.rows_of(names);
                    let n: u64 = rows.iter().map(|r| r.end.saturating_sub(r.start)).sum();
                    if n == 0 {
                        continue;
                    }
                    part = part.with_extension(index.access_plan(&rows));
                    n
                }
                None => u64::try_from(index.metadata.file_metadata().num_rows()).unwrap_or(0),
            };
            let mut stats = Statistics::new_unknown(&self.schema);
            stats.num_rows = Precision::Exact(rows as usize);
            part = part.with_statistics(Arc::new(stats));
            metadata.insert(
                part.object_meta.location.to_string(),
                index.metadata.clone(),
            );
            chosen.push((part, rows));
        }
        if chosen.is_empty() {
            let schema = datafusion::physical_plan::project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let total_rows: u64 = chosen.iter().map(|(_, n)| n).sum();

        // Files spread over the partitions, balanced by rows read.
        let partitions = state.config().target_partitions().clamp(1, chosen.len());
        let groups = balance(chosen, partitions);

        let mut options = state.table_options().parquet.clone();
        if wanted.is_some() {
            // The selection is exact: nothing for statistics or indexes to prune.
            options.global.pruning = false;
            options.global.enable_page_index = false;
            options.global.bloom_filter_on_read = false;
        }
        let source = ParquetSource::new(self.schema.clone())
            .with_table_parquet_options(options)
            .with_parquet_file_reader_factory(Arc::new(IndexedReaderFactory { store, metadata }));
        let mut stats = Statistics::new_unknown(&self.schema);
        stats.num_rows = Precision::Exact(total_rows as usize);
        let config = FileScanConfigBuilder::new(url, Arc::new(source))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_statistics(stats)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// `items` with their weights (rows read) spread over `groups` groups (at least one), each
/// to the lightest group so far, heaviest first.
pub(crate) fn balance<T>(mut items: Vec<(T, u64)>, groups: usize) -> Vec<Vec<T>> {
    items.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let mut out: Vec<(u64, Vec<T>)> = (0..groups.max(1)).map(|_| (0, Vec::new())).collect();
    for (item, n) in items {
        if let Some(g) = out.iter_mut().min_by_key(|(load, _)| *load) {
            g.0 += n;
            g.1.push(item);
        }
    }
    out.into_iter().map(|(_, g)| g).collect()
}

/// Hands the Parquet reader each file's metadata from the index.
#[derive(Debug)]
struct IndexedReaderFactory {
    store: Arc<dyn ObjectStore>,
    metadata: HashMap<String, Arc<ParquetMetaData>>,
}

impl ParquetFileReaderFactory for IndexedReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        let metadata = self
            .metadata
            .get(file.object_meta.location.as_ref())
            .cloned();
        Ok(Box::new(StoreReader::of(
            &self.store,
            file,
            metadata,
            partition_index,
            metrics,
        )))
    }
}

impl StoreReader {
    /// A reader of `file` counting the bytes it reads in `metrics`.
    fn of(
        store: &Arc<dyn ObjectStore>,
        file: PartitionedFile,
        metadata: Option<Arc<ParquetMetaData>>,
        partition_index: usize,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Self {
        let path = file.object_meta.location;
        let bytes_scanned = MetricBuilder::new(metrics)
            .with_new_label("filename", path.to_string())
            .counter("bytes_scanned", partition_index);
        Self {
            store: store.clone(),
            metadata,
            path,
            size: file.object_meta.size,
            bytes_scanned: Some(bytes_scanned),
        }
    }
}

/// Hands the Parquet reader each file's metadata from a worker's own [`FileIndexes`],
/// read the first time a file is scanned there (a worker runs a scan the coordinator
/// planned: it gets the files and their row selections, not their footers).
#[derive(Debug)]
pub(crate) struct WorkerReaderFactory {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) indexes: Arc<FileIndexes>,
    pub(crate) schema: SchemaRef,
}

impl ParquetFileReaderFactory for WorkerReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        Ok(Box::new(IndexedFileReader {
            reader: StoreReader::of(&self.store, file, None, partition_index, metrics),
            indexes: self.indexes.clone(),
            schema: self.schema.clone(),
        }))
    }
}

/// A [`StoreReader`] whose metadata comes from a [`FileIndexes`] (loaded there if missing).
struct IndexedFileReader {
    reader: StoreReader,
    indexes: Arc<FileIndexes>,
    schema: SchemaRef,
}

impl AsyncFileReader for IndexedFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.reader.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        self.reader.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let entry = FileEntry {
                path: self.reader.path.to_string(),
                rows: 0,
                bytes: self.reader.size,
                day: None,
                min_ts: None,
                max_ts: None,
                numbered: false,
            };
            let store = self.reader.store.clone();
            let index = self
                .indexes
                .get(&store, std::slice::from_ref(&entry), &self.schema)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
            match index.first() {
                Some(index) => Ok(index.metadata.clone()),
                None => Err(parquet::errors::ParquetError::General(format!(
                    "{}: no footer",
                    entry.path
                ))),
            }
        }
        .boxed()
    }
}

/// Bytes read from the end of a file for its footer in one request (the footer of a day's
/// events file with its page index is tens to hundreds of KiB).
const FOOTER_HINT: usize = 256 << 10;

/// Reads one Parquet file from the object store; its metadata comes from the index when
/// known, else from the file (with the page index).
struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    metadata: Option<Arc<ParquetMetaData>>,
    bytes_scanned: Option<Count>,
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        if let Some(c) = &self.bytes_scanned {
            c.add(range.end.saturating_sub(range.start) as usize);
        }
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        if let Some(c) = &self.bytes_scanned {
            c.add(
                ranges
                    .iter()
                    .map(|r| r.end.saturating_sub(r.start) as usize)
                    .sum(),
            );
        }
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        if let Some(m) = &self.metadata {
            return futures::future::ready(Ok(m.clone())).boxed();
        }
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .with_prefetch_hint(Some(FOOTER_HINT))
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

#[cfg(test)]
// Vectors of one row range are what these tests mean.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn balance_spreads_weights_and_keeps_every_item() {
        let groups = balance(vec![("a", 5), ("b", 4), ("c", 3), ("d", 3), ("e", 1)], 2);
        let load = |g: &Vec<&str>| -> u64 {
            g.iter()
                .map(|i| match *i {
                    "a" => 5,
                    "b" => 4,
                    "e" => 1,
                    _ => 3,
                })
                .sum()
        };
        assert_eq!(groups.iter().map(load).collect::<Vec<_>>(), vec![8, 8]);
        let mut all: Vec<&str> = groups.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, ["a", "b", "c", "d", "e"]);
        assert_eq!(
            balance(vec![("x", 1)], 3).len(),
            3,
            "every group present, maybe empty"
        );
    }

    #[test]
    fn event_filters_are_recognised() {
        let names = |e: Expr| event_names(&e).map(|s| s.into_iter().collect::<Vec<_>>());
        assert_eq!(names(col(EVENT).eq(lit("a"))), Some(vec!["a".into()]));
        assert_eq!(names(lit("a").eq(col(EVENT))), Some(vec!["a".into()]));
        assert_eq!(
            names(
                col(EVENT)
                    .eq(lit("b"))
                    .or(col(EVENT).in_list(vec![lit("a")], false))
            ),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(names(col(EVENT).in_list(vec![lit("a")], true)), None);
        assert_eq!(names(col(EVENT).not_eq(lit("a"))), None);
        assert_eq!(names(col("distinct_id").eq(lit("a"))), None);
        assert_eq!(
            names(col(EVENT).eq(lit("a")).or(col("distinct_id").eq(lit("a")))),
            None
        );
        assert_eq!(names(col(EVENT).eq(lit(1))), None);
    }

    #[test]
    fn runs_collect_each_names_rows() {
        let mut runs = EventRuns::default();
        for n in [Some("a"), Some("a"), None, Some("b"), Some("a")] {
            runs.push(n, 1);
        }
        runs.push(Some("a"), 1);
        let events = by_name(runs.into_runs());
        assert_eq!(events["a"], vec![0..2, 4..6]);
        assert_eq!(events["b"], vec![3..4]);
        assert_eq!(events.len(), 2);
    }

    /// A file of `rows` rows in row groups of `group_rows`, as an index with no events.
    fn index_of(rows: usize, group_rows: usize) -> FileIndex {
        use datafusion::arrow::array::Int32Array;
        use datafusion::arrow::datatypes::{Field, Schema};
        use datafusion::arrow::record_batch::RecordBatch;
        use parquet::arrow::ArrowWriter;
        use parquet::file::properties::WriterProperties;
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
        let values = Int32Array::from_iter_values(0..rows as i32);
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).expect("a valid batch");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .build();
        let mut buf = Vec::new();
        let mut writer =
            ArrowWriter::try_new(&mut buf, schema.clone(), Some(props)).expect("a writer");
        writer.write(&batch).expect("written");
        writer.close().expect("closed");
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&Bytes::from(buf))
            .expect("the footer");
        FileIndex {
            metadata: Arc::new(metadata),
            schema,
            events: HashMap::new(),
            size: 0,
            file_bytes: 0,
        }
    }

    #[test]
    fn rows_of_names_are_merged_in_order() {
        let mut index = index_of(10, 4);
        index.events = HashMap::from([
            ("a".to_string(), vec![0..2, 4..6]),
            ("b".to_string(), vec![2..4, 8..9]),
            ("c".to_string(), vec![6..7, 7..8]),
        ]);
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(index.rows_of(&names(&["a", "b"])), vec![0..6, 8..9]);
        assert_eq!(index.rows_of(&names(&["c", "x"])), vec![6..8]);
        assert!(index.rows_of(&names(&["x"])).is_empty());
    }

    /// `events` as a Parquet file in an in-memory store, row groups of two rows, with
    /// `footer` as its [`EVENT_ROWS_KEY`] entry when given.
    async fn stored(events: &[&str], footer: Option<&str>) -> (Arc<dyn ObjectStore>, FileEntry) {
        use datafusion::arrow::array::StringArray;
        use datafusion::arrow::record_batch::RecordBatch;
        use parquet::arrow::ArrowWriter;
        use parquet::file::metadata::KeyValue;
        use parquet::file::properties::WriterProperties;
        let schema = Arc::new(Schema::new(vec![Field::new(EVENT, DataType::Utf8, false)]));
        let column = StringArray::from_iter_values(events.iter().copied());
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(column)]).expect("a valid batch");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(2))
            .build();
        let mut buf = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buf, schema, Some(props)).expect("a writer");
        writer.write(&batch).expect("written");
        if let Some(v) = footer {
            writer.append_key_value_metadata(KeyValue::new(EVENT_ROWS_KEY.into(), v.to_string()));
        }
        writer.close().expect("closed");
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let entry = FileEntry {
            path: "f.parquet".into(),
            rows: events.len() as u64,
            bytes: buf.len() as u64,
            day: None,
            min_ts: None,
            max_ts: None,
            numbered: false,
        };
        store
            .put(&Path::from("f.parquet"), buf.into())
            .await
            .expect("put");
        (store, entry)
    }

    /// The index from a footer that lists the rows, from the `event` column without one, and
    /// from the column when the footer's list does not fit the file: the same runs.
    #[tokio::test]
    async fn an_index_from_the_footer_or_the_column_is_the_same() {
        let events = ["a", "a", "b", "c", "c", "c", "a"];
        let want = HashMap::from([
            ("a".to_string(), vec![0..2, 6..7]),
            ("b".to_string(), vec![2..3]),
            ("c".to_string(), vec![3..6]),
        ]);
        let schema = Arc::new(Schema::new(vec![Field::new(
            EVENT,
            DataType::Utf8View,
            false,
        )]));
        for footer in [
            Some(r#"[["a",0,2],["b",2,1],["c",3,3],["a",6,1]]"#),
            None,
            Some(r#"[["a",0,2]]"#),
            Some(r#"[["a",0,2],["b",3,1],["c",3,3],["a",6,1]]"#),
            Some("not json"),
        ] {
            let (store, entry) = stored(&events, footer).await;
            let index = FileIndex::load(store, &entry, &schema)
                .await
                .expect("index");
            assert_eq!(index.events, want, "footer {footer:?}");
            assert_eq!(index.metadata.num_row_groups(), 4);
            assert!(index.metadata.offset_index().is_some(), "page index loaded");
        }
    }

    proptest::proptest! {
        /// The access plan reads exactly the rows asked for, whatever the row groups.
        #[test]
        fn access_plans_select_exactly_the_rows(
            rows in 1usize..200,
            group_rows in 1usize..50,
            cuts in proptest::collection::vec(0usize..200, 0..12),
        ) {
            let index = index_of(rows, group_rows);
            // Sorted cut points pair up into ranges; empty ranges dropped.
            let mut cuts: Vec<u64> = cuts.into_iter().map(|c| (c % (rows + 1)) as u64).collect();
            cuts.sort();
            cuts.dedup();
            let ranges: Vec<Range<u64>> = cuts.chunks_exact(2).map(|c| c[0]..c[1]).collect();
            let plan = index.access_plan(&ranges);
            let mut read = Vec::new();
            for (access, group) in plan.inner().iter().zip(index.metadata.row_groups()) {
                let n = group.num_rows() as usize;
                match access {
                    RowGroupAccess::Skip => read.extend(std::iter::repeat_n(false, n)),
                    RowGroupAccess::Scan => read.extend(std::iter::repeat_n(true, n)),
                    RowGroupAccess::Selection(selection) => {
                        let selectors: Vec<RowSelector> = selection.clone().into();
                        let covered: usize = selectors.iter().map(|s| s.row_count).sum();
                        proptest::prop_assert_eq!(covered, n, "a selection covers its row group");
                        for s in selectors {
                            read.extend(std::iter::repeat_n(!s.skip, s.row_count));
                        }
                    }
                }
            }
            let expected: Vec<bool> = (0..rows as u64)
                .map(|r| ranges.iter().any(|x| x.contains(&r)))
                .collect();
            proptest::prop_assert_eq!(read, expected);
        }
    }
}
