//! The query engine: one DataFusion session over a herd store (its object store registered,
//! herd's query planner, an optional memory pool), and the tables insights read: one
//! project's events as the Parquet files of a catalog snapshot plus the acknowledged rows
//! still in the write buffer, taken from one [`TableSnapshot`] so each event is read exactly
//! once, and the current groups tables.

use std::sync::Arc;

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

use crate::cluster::{self, Workers};
use crate::{Error, Result, files, filters, funnel, planner};

/// The URL under which the data folder's object store is registered with DataFusion.
pub const STORE_URL: &str = "herd://data/";

/// A DataFusion session over one herd store.
#[derive(Clone)]
pub struct QueryEngine {
    /// The session that plans in this process.
    ctx: SessionContext,
    /// With workers: the session that plans for them, and which are live.
    cluster: Option<(SessionContext, Workers)>,
    db: Arc<Db>,
    /// Bytes of funnel rows held in memory before they spill to disk.
    pub(crate) funnel_memory: usize,
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
        Self::with_cluster(db, partitions, memory_limit, None)
    }

    /// As [`QueryEngine::with_options`], planning every query for `workers` (see
    /// [`crate::cluster`]) while any of them is live, and in this process when none is.
    pub fn with_cluster(
        db: Arc<Db>,
        partitions: Option<usize>,
        memory_limit: Option<usize>,
        workers: Option<Workers>,
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
        let runtime = runtime.build_arc()?;
        let url = url::Url::parse(STORE_URL).map_err(|e| DataFusionError::External(Box::new(e)))?;
        runtime.register_object_store(&url, db.storage().object_store());
        let builder = || {
            let builder = SessionStateBuilder::new()
                .with_config(config.clone())
                .with_runtime_env(runtime.clone())
                .with_default_features()
                .with_query_planner(Arc::new(planner::HerdQueryPlanner));
            cluster::functions::register(builder)
        };
        let indexes: Arc<files::FileIndexes> = Arc::default();
        let ctx = SessionContext::new_with_state(builder().build());
        let cluster = match workers {
            Some(w) => {
                let state = cluster::distributed(builder(), w.clone(), indexes.clone())?.build();
                Some((SessionContext::new_with_state(state), w))
            }
            None => None,
        };
        Ok(Self {
            ctx,
            cluster,
            db,
            funnel_memory: funnel::DEFAULT_FUNNEL_MEMORY,
            actor_numbers: true,
            indexes,
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

    /// The session queries are planned in: the cluster's while any worker is live, else
    /// this process's. Within one insight ([`QueryEngine::on_cluster`]) the choice made at
    /// its start holds for all its parts.
    pub fn context(&self) -> &SessionContext {
        match &self.cluster {
            Some((ctx, workers)) => {
                let on = ON_CLUSTER
                    .try_with(|on| *on)
                    .unwrap_or_else(|_| workers.any_live());
                if on { ctx } else { &self.ctx }
            }
            None => &self.ctx,
        }
    }

    /// The workers, when the engine plans for a cluster.
    pub fn workers(&self) -> Option<&Workers> {
        self.cluster.as_ref().map(|(_, w)| w)
    }

    /// Runs `query`. On a cluster, when it fails and a probe then finds a worker that was
    /// live gone (it died under the query), runs it once more on the workers left (in this
    /// process when none is); if that fails too and another worker has gone meanwhile, the
    /// error is [`Error::Unavailable`], else the retry's own.
    pub(crate) async fn on_cluster<T, F, Fut>(&self, query: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let Some(workers) = self.workers() else {
            return query().await;
        };
        let once = || ON_CLUSTER.scope(workers.any_live(), query());
        let before = workers.live();
        let first = match once().await {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        if matches!(first, Error::Invalid { .. } | Error::UnknownProject(_)) {
            return Err(first);
        }
        workers.probe().await;
        let after = workers.live();
        if !lost(&before, &after) {
            return Err(first);
        }
        tracing::warn!(error = %first, live = after.len(), "a worker left during a query; running it again");
        match once().await {
            Ok(answer) => Ok(answer),
            Err(again) => {
                workers.probe().await;
                match lost(&after, &workers.live()) {
                    true => Err(Error::Unavailable(format!(
                        "workers failed during the query ({first}) and during its retry ({again})"
                    ))),
                    false => Err(again),
                }
            }
        }
    }

    /// The store.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The project's events as one DataFrame (files of the current catalog + write buffer).
    pub async fn events(&self, project: ProjectId) -> Result<DataFrame> {
        let provider = self.events_table(project).await?;
        Ok(self.context().read_table(provider)?)
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
            .context()
            .read_table(files)?
            .union(self.context().read_table(buffered)?)?;
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
            parts.push(
                self.context()
                    .read_table(self.files_table(inside.into_iter())?)?,
            );
        }
        if !straddling.is_empty() {
            let files = self.files_table(straddling.into_iter())?;
            parts.push(self.context().read_table(files)?.filter(in_range.clone())?);
        }
        if let Some(b) = &events.buffered {
            parts.push(self.context().read_table(b.clone())?.filter(in_range)?);
        }
        let mut parts = parts.into_iter();
        let Some(first) = parts.next() else {
            let empty = MemTable::try_new(query_events_schema(), vec![vec![]])?;
            return Ok(self.context().read_table(Arc::new(empty))?);
        };
        parts.try_fold(first, |all, part| Ok(all.union(part)?))
    }
}

tokio::task_local! {
    /// Whether the insight running in this task plans for the cluster (see
    /// [`QueryEngine::context`]).
    static ON_CLUSTER: bool;
}

/// Whether a worker live in `before` is not in `now`.
fn lost(before: &[url::Url], now: &[url::Url]) -> bool {
    before.iter().any(|u| !now.contains(u))
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
