//! herd-query: DataFusion over herd's tables.
//!
//! Owns the DataFusion session and the table providers that expose one project's events as a
//! single table: the Parquet files of a catalog snapshot plus the acknowledged rows still in
//! the write buffer, taken from one [`TableSnapshot`] so each event is read exactly once. The
//! insight planners (trends, funnels, retention) build their plans on these providers with
//! DataFusion's APIs; no user input is ever spliced into SQL text.

use std::future::Future;
use std::sync::Arc;

mod actors;
pub mod bucket;
pub mod calendar;
pub mod event_mask;
pub mod files;
pub mod filters;
pub mod funnel;
mod number_set;
mod planner;
pub mod related;
pub mod retention;
pub mod trends;
pub mod unique;

pub use calendar::{Interval, WeekStart};
pub use filters::{BoolOp, Operator, PropertyFilter, PropertyGroup, PropertySource};
pub use funnel::{
    Attribution, FunnelExclusion, FunnelLine, FunnelQuery, FunnelResult, FunnelStep,
    FunnelStepResult, FunnelTrendPoint, FunnelTrendsLine, FunnelViz, Order, TimeToConvert, Window,
    WindowUnit,
};
pub use retention::{Cohort, RetentionEntity, RetentionQuery, RetentionResult, RetentionType};
pub use trends::{
    Breakdown, Display, Math, MathSpec, Series, SeriesResult, TrendsQuery, TrendsResult,
};

use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use herd_core::ProjectId;
use herd_core::schema::stored_events_schema;
use herd_storage::catalog::FileEntry;
use herd_storage::{Db, TableSnapshot};

/// The URL under which the data folder's object store is registered with DataFusion.
pub const STORE_URL: &str = "herd://data/";

/// Errors of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid; `field` names the offending request field.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the field in the request, e.g. `series[0].math_group_type`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// DataFusion failed to plan or run.
    #[error("query: {0}")]
    DataFusion(#[from] DataFusionError),
    /// Arrow failed.
    #[error("query: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// No such project.
    #[error("unknown project {0}")]
    UnknownProject(ProjectId),
    /// A bug: an invariant of the planner does not hold.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// An invalid-request error for `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: herd_core::message::clip(field.to_string()),
            message: herd_core::message::clip(message.into()),
        }
    }
}

/// herd-query's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A DataFusion session over one herd store.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    db: Arc<Db>,
    /// Bytes of funnel rows held in memory before they spill to disk.
    funnel_memory: usize,
    actor_numbers: bool,
    /// Per-file indexes of the events files read so far (see [`files`]).
    indexes: Arc<files::FileIndexes>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("session", &self.ctx.session_id())
            .field("data", &self.db.storage().location())
            .finish()
    }
}

impl QueryEngine {
    /// A session whose object store is the store's data folder.
    pub fn new(db: Arc<Db>) -> Result<Self> {
        Self::with_partitions(db, None)
    }

    /// A session that plans with `partitions` parallel partitions (default: the CPU count).
    pub fn with_partitions(db: Arc<Db>, partitions: Option<usize>) -> Result<Self> {
        Self::with_options(db, partitions, None)
    }

    /// A session with `partitions` parallel partitions (default: the CPU count) whose
    /// operators share a memory pool of `memory_limit` bytes (default: unbounded); an operator
    /// that can spill (the funnel's) spills when its fair share is used up.
    pub fn with_options(
        db: Arc<Db>,
        partitions: Option<usize>,
        memory_limit: Option<usize>,
    ) -> Result<Self> {
        // DATAFUSION_* environment variables override DataFusion's defaults (for experiments,
        // e.g. DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS=false).
        let mut config = SessionConfig::from_env()?.with_information_schema(false);
        if let Some(n) = partitions {
            config = config.with_target_partitions(n.max(1));
        }
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = memory_limit {
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
        }
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime.build_arc()?)
            .with_default_features()
            .with_query_planner(Arc::new(planner::HerdQueryPlanner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let url = url::Url::parse(STORE_URL).map_err(|e| DataFusionError::External(Box::new(e)))?;
        ctx.register_object_store(&url, db.storage().object_store());
        Ok(Self {
            ctx,
            db,
            funnel_memory: funnel::DEFAULT_FUNNEL_MEMORY,
            actor_numbers: true,
            indexes: Arc::default(),
        })
    }

    /// Whether queries may count and group actors by their numbers (`$distinct_id_num`,
    /// `$group_N_num`) when every events file has them (the default), or always by the
    /// strings. For comparing the two; answers are the same.
    pub fn with_actor_numbers(mut self, on: bool) -> Self {
        self.actor_numbers = on;
        self
    }

    /// Sets how many bytes of rows a funnel holds in memory (all partitions together)
    /// before it writes them to spill files ([`funnel::DEFAULT_FUNNEL_MEMORY`] unless set).
    pub fn with_funnel_memory(mut self, bytes: usize) -> Self {
        self.funnel_memory = bytes;
        self
    }

    /// The session.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The store.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The project's events as one DataFrame (files of the current catalog + write buffer).
    pub async fn events(&self, project: ProjectId) -> Result<DataFrame> {
        let provider = self.events_table(project).await?;
        Ok(self.ctx.read_table(provider)?)
    }

    /// The project's events as a table: the files of the current catalog and the write
    /// buffer, taken from one snapshot.
    pub async fn events_table(&self, project: ProjectId) -> Result<Arc<dyn TableProvider>> {
        let snapshot = self
            .db
            .snapshot(project)
            .ok_or(Error::UnknownProject(project))?;
        self.events_provider(&snapshot).await
    }

    /// `df` left-joined, for each group type index in `indexes`, to the current groups table
    /// of that type on `$group_N` (see [`Self::groups_table`]): what group-property filters
    /// and breakdowns read.
    pub(crate) async fn join_groups<'a>(
        &self,
        project: ProjectId,
        mut df: DataFrame,
        indexes: impl IntoIterator<Item = &'a u8>,
    ) -> Result<DataFrame> {
        for &n in indexes {
            let right = self
                .context()
                .read_table(self.groups_table(project, n).await?)?;
            let key = filters::group_key_column(n);
            df = df.join(
                right,
                datafusion::logical_expr::JoinType::Left,
                &[filters::group_column(n)],
                &[key.as_str()],
                None,
            )?;
        }
        Ok(df)
    }

    /// The current properties of the project's groups of type `index`, as a table with the
    /// columns `__g<index>_key` and `__g<index>_properties` (JSON text), for left joins from
    /// `$group_<index>`.
    pub async fn groups_table(
        &self,
        project: ProjectId,
        index: u8,
    ) -> Result<Arc<dyn TableProvider>> {
        use datafusion::arrow::array::{RecordBatch, StringBuilder};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let groups = self
            .db
            .current_groups_of_type(project, index)
            .await
            .ok_or(Error::UnknownProject(project))?;
        let mut keys = StringBuilder::new();
        let mut props = StringBuilder::new();
        for (key, state) in &groups {
            keys.append_value(key);
            props.append_value(state.properties_json());
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new(filters::group_key_column(index), DataType::Utf8, false),
            Field::new(
                filters::group_properties_column(index),
                DataType::Utf8,
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(keys.finish()), Arc::new(props.finish())],
        )?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }

    async fn events_provider(&self, snapshot: &TableSnapshot) -> Result<Arc<dyn TableProvider>> {
        let buffered = buffered_table(snapshot)?;
        if snapshot.catalog.events.is_empty() {
            return Ok(buffered);
        }
        let files = self.files_table(snapshot.catalog.events.iter())?;
        let union = self
            .ctx
            .read_table(files)?
            .union(self.ctx.read_table(buffered)?)?;
        Ok(union.into_view())
    }

    /// The events files `files` as one table.
    fn files_table<'a>(
        &self,
        files: impl Iterator<Item = &'a FileEntry>,
    ) -> Result<Arc<dyn TableProvider>> {
        Ok(Arc::new(files::EventFiles::new(
            files.cloned().collect(),
            query_events_schema(),
            self.indexes.clone(),
        )))
    }

    /// The project's events (one snapshot), to be read by time range with
    /// [`QueryEngine::events_between`].
    pub async fn events_source(&self, project: ProjectId) -> Result<Events> {
        let snapshot = self
            .db
            .snapshot(project)
            .ok_or(Error::UnknownProject(project))?;
        let buffered = match snapshot.buffered_events.iter().all(|b| b.num_rows() == 0) {
            true => None,
            false => Some(buffered_table(&snapshot)?),
        };
        Ok(Events {
            numbered: self.actor_numbers && snapshot.catalog.all_numbered(),
            files: snapshot.catalog.events.clone(),
            buffered,
        })
    }

    /// The events of `events` with `from <= timestamp <= to` (µs). Files whose recorded
    /// time range lies inside `[from, to]` are read without a time predicate (nothing to
    /// evaluate per row, the timestamp column is read only when used, and a bare count
    /// comes from the files' row counts); files outside it are not read; the other files
    /// and the write buffer are filtered.
    pub fn events_between(&self, events: &Events, from: i64, to: i64) -> Result<DataFrame> {
        use datafusion::common::ScalarValue;
        use datafusion::prelude::{col, lit};
        let ts = |v: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(v),
                Some("UTC".into()),
            ))
        };
        let column = herd_core::schema::TIMESTAMP;
        let in_range = col(column).gt_eq(ts(from)).and(col(column).lt_eq(ts(to)));
        let (mut inside, mut straddling) = (Vec::new(), Vec::new());
        for f in &events.files {
            match (f.min_ts, f.max_ts) {
                (Some(lo), Some(hi)) if hi < from || lo > to => {}
                (Some(lo), Some(hi)) if from <= lo && hi <= to => inside.push(f),
                _ => straddling.push(f),
            }
        }
        let mut parts = Vec::new();
        if !inside.is_empty() {
            parts.push(self.ctx.read_table(self.files_table(inside.into_iter())?)?);
        }
        if !straddling.is_empty() {
            let files = self.files_table(straddling.into_iter())?;
            parts.push(self.ctx.read_table(files)?.filter(in_range.clone())?);
        }
        if let Some(b) = &events.buffered {
            parts.push(self.ctx.read_table(b.clone())?.filter(in_range)?);
        }
        let mut parts = parts.into_iter();
        let Some(first) = parts.next() else {
            let empty = MemTable::try_new(query_events_schema(), vec![vec![]])?;
            return Ok(self.ctx.read_table(Arc::new(empty))?);
        };
        parts.try_fold(first, |all, part| Ok(all.union(part)?))
    }
}

/// One snapshot of a project's events: the catalog's files (with their recorded time
/// ranges) and the write buffer (`None` when empty).
#[derive(Clone)]
pub struct Events {
    files: Vec<FileEntry>,
    buffered: Option<Arc<dyn TableProvider>>,
    numbered: bool,
}

impl Events {
    /// Whether every row carries its actor numbers (`$distinct_id_num`, `$group_N_num`):
    /// every file was written by a build that numbers actors (the write buffer always is).
    pub fn numbered(&self) -> bool {
        self.numbered
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("files", &self.files.len())
            .field("buffered", &self.buffered.is_some())
            .finish()
    }
}

/// The write buffer of `snapshot` as a table of [`query_events_schema`].
fn buffered_table(snapshot: &TableSnapshot) -> Result<Arc<dyn TableProvider>> {
    let schema = query_events_schema();
    let buffered = snapshot
        .buffered_events
        .iter()
        .map(|b| as_query_batch(b, &schema))
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(MemTable::try_new(schema, vec![buffered])?))
}

/// Environment variable: when set (to anything but `0`), every insight query prints its
/// physical plan with DataFusion's execution metrics (rows, time, bytes scanned, pruning) to
/// standard error once it has run. For finding where a query's time goes.
pub const EXPLAIN_ENV: &str = "HERD_EXPLAIN_ANALYZE";

fn explain_enabled() -> bool {
    std::env::var_os(EXPLAIN_ENV).is_some_and(|v| v != "0")
}

tokio::task_local! {
    /// The physical plans an insight query ran, when it runs under [`record_plans`].
    static RECORDED: std::cell::RefCell<Vec<Arc<dyn datafusion::physical_plan::ExecutionPlan>>>;
}

/// Runs `query` and returns its answer and the physical plans it ran, in order, with their
/// execution metrics. For insights whose later plans depend on what earlier ones found (a
/// trend's breakdown values are ranked first, then counted), so their plans can only be shown
/// by running them, and for `EXPLAIN ANALYZE`.
pub(crate) async fn record_plans<T>(
    query: impl Future<Output = Result<T>>,
) -> Result<(T, Vec<Arc<dyn datafusion::physical_plan::ExecutionPlan>>)> {
    RECORDED
        .scope(std::cell::RefCell::new(Vec::new()), async {
            let answer = query.await?;
            Ok((answer, RECORDED.with(|r| r.take())))
        })
        .await
}

/// Plans one per line as `EXPLAIN` shows them (children indented), a blank line between;
/// with `metrics`, as `EXPLAIN ANALYZE` does.
pub(crate) fn show_plans(
    plans: &[Arc<dyn datafusion::physical_plan::ExecutionPlan>],
    metrics: bool,
) -> String {
    use datafusion::physical_plan::display::DisplayableExecutionPlan;
    let shown: Vec<String> = plans
        .iter()
        .map(|p| match metrics {
            true => DisplayableExecutionPlan::with_metrics(p.as_ref()),
            false => DisplayableExecutionPlan::new(p.as_ref()),
        })
        .map(|d| d.indent(true).to_string())
        .collect();
    shown.join("\n")
}

/// Prints its plan with metrics to standard error when dropped (after the stream is drained)
/// when [`EXPLAIN_ENV`] is set, and records it under [`record_plans`].
pub(crate) struct Explain(Option<Arc<dyn datafusion::physical_plan::ExecutionPlan>>);

impl Explain {
    /// A guard for `plan`.
    pub(crate) fn new(plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> Self {
        let recording = RECORDED.try_with(|_| ()).is_ok();
        Self((explain_enabled() || recording).then_some(plan))
    }
}

impl Drop for Explain {
    fn drop(&mut self) {
        let Some(plan) = &self.0 else { return };
        let _ = RECORDED.try_with(|r| r.borrow_mut().push(plan.clone()));
        if explain_enabled() {
            eprintln!(
                "{EXPLAIN_ENV}:\n{}",
                show_plans(std::slice::from_ref(plan), true)
            );
        }
    }
}

/// Runs `df` as a stream; the returned guard prints the plan's metrics when
/// [`EXPLAIN_ENV`] is set.
pub(crate) async fn execute_stream(
    df: DataFrame,
) -> Result<(
    datafusion::physical_plan::SendableRecordBatchStream,
    Explain,
)> {
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let stream = datafusion::physical_plan::execute_stream(plan.clone(), task)?;
    Ok((stream, Explain::new(plan)))
}

/// Runs `df` to completion (see [`execute_stream`]).
pub(crate) async fn collect(df: DataFrame) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
    use futures::TryStreamExt;
    let (stream, _explain) = execute_stream(df).await?;
    Ok(stream.try_collect().await?)
}

/// The events table as queries see it: the stored schema with its strings read as
/// `Utf8View` (the Parquet reader then points views into each column chunk's dictionary
/// instead of copying every value, and DataFusion's string kernels take views natively).
/// The actor numbers are nullable here: files written before herd numbered actors read
/// them as nulls, and queries use them only when every file has them
/// ([`Events::numbered`]).
pub fn query_events_schema() -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let stored = stored_events_schema();
    let fields: Vec<Field> = stored
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match f.data_type() {
            DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
            _ if i >= herd_core::schema::events_col::INGESTED => {
                f.as_ref().clone().with_nullable(true)
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, stored.metadata().clone()))
}

/// A stored-schema batch (the write buffer) cast to [`query_events_schema`].
fn as_query_batch(
    batch: &datafusion::arrow::array::RecordBatch,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<datafusion::arrow::array::RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(datafusion::arrow::array::RecordBatch::try_new(
        schema.clone(),
        columns,
    )?)
}

/// Column `i` of `batch` cast to `data_type` and downcast to its array type `A`.
pub(crate) fn column_as<A: datafusion::arrow::array::Array + Clone + 'static>(
    batch: &datafusion::arrow::array::RecordBatch,
    i: usize,
    data_type: &datafusion::arrow::datatypes::DataType,
) -> Result<A> {
    let a = datafusion::arrow::compute::cast(batch.column(i), data_type)?;
    a.as_any()
        .downcast_ref::<A>()
        .cloned()
        .ok_or_else(|| Error::Internal(format!("column {i} is not {data_type}")))
}

/// The non-null values of string column `i` of `batches`.
pub(crate) fn strings(
    batches: &[datafusion::arrow::array::RecordBatch],
    i: usize,
) -> Result<Vec<String>> {
    use datafusion::arrow::array::{Array, StringArray};
    let mut out = Vec::new();
    for b in batches {
        let a: StringArray = column_as(b, i, &datafusion::arrow::datatypes::DataType::Utf8)?;
        out.extend(
            (0..a.len())
                .filter(|r| !a.is_null(*r))
                .map(|r| a.value(r).to_string()),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::functions_aggregate::expr_fn::{count, count_distinct};
    use datafusion::prelude::{col, lit};
    use herd_core::{Event, EventBatchBuilder};
    use herd_storage::projects::NewProject;

    async fn counts(engine: &QueryEngine, project: ProjectId) -> (i64, i64) {
        let df = engine
            .events(project)
            .await
            .expect("events")
            .filter(col("$group_0").not_eq(lit("")))
            .expect("filter")
            .aggregate(
                vec![],
                vec![
                    count(lit(1)).alias("n"),
                    count_distinct(col("$group_0")).alias("companies"),
                ],
            )
            .expect("aggregate");
        let batches = df.collect().await.expect("collect");
        let n = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        let c = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64");
        assert_eq!(n.len(), 1);
        (n.value(0), c.value(0))
    }

    #[tokio::test]
    async fn events_are_queryable_from_the_buffer_and_from_parquet_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open_local(dir.path()).await.expect("db");
        let p = db
            .create_project(NewProject::default())
            .await
            .expect("project")
            .id;
        let engine = QueryEngine::new(db.clone()).expect("engine");

        let add = |range: std::ops::Range<u128>| {
            let db = db.clone();
            async move {
                let handle = db.project(p).expect("project");
                let mut guard = db.lock(&handle).await;
                let mut b = EventBatchBuilder::with_capacity(100);
                for n in range {
                    let ts = (n as i64) * 3_600_000_000;
                    assert!(guard.insert_uuid(n, ts).await.expect("dedup"));
                    b.push(&Event {
                        uuid: uuid::Uuid::from_u128(n),
                        event: "signed_up".into(),
                        distinct_id: format!("u{n}"),
                        timestamp: ts,
                        properties: "{}".into(),
                        // Every fifth event has no company.
                        groups: [
                            if n % 5 == 0 {
                                String::new()
                            } else {
                                format!("c{}", n % 7)
                            },
                            String::new(),
                            String::new(),
                            String::new(),
                            String::new(),
                        ],
                        created_at: ts,
                    });
                }
                let t = guard
                    .commit(Some(b.finish()), vec![], vec![])
                    .expect("commit");
                drop(guard);
                db.wait_durable(t).await.expect("durable");
            }
        };
        add(0..50).await;
        assert_eq!(counts(&engine, p).await, (40, 7), "buffer only");
        db.flush().await.expect("flush");
        assert_eq!(counts(&engine, p).await, (40, 7), "files only");
        add(50..100).await;
        assert_eq!(counts(&engine, p).await, (80, 7), "files and buffer");
        assert!(matches!(
            engine.events(99).await,
            Err(Error::UnknownProject(99))
        ));
    }
}
