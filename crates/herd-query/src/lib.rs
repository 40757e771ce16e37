//! herd-query: DataFusion over herd's tables.
//!
//! Owns the DataFusion session and the table providers that expose one project's events as a
//! single table: the Parquet files of a catalog snapshot plus the acknowledged rows still in
//! the write buffer, taken from one [`TableSnapshot`] so each event is read exactly once. The
//! insight planners (trends, funnels, retention) build their plans on these providers with
//! DataFusion's APIs; no user input is ever spliced into SQL text.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use herd_core::ProjectId;
use herd_core::schema::events_schema;
use herd_storage::{Db, TableSnapshot};

/// The URL under which the data folder's object store is registered with DataFusion.
pub const STORE_URL: &str = "herd://data/";

/// Errors of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// DataFusion failed to plan or run.
    #[error("query: {0}")]
    DataFusion(#[from] DataFusionError),
    /// No such project.
    #[error("unknown project {0}")]
    UnknownProject(ProjectId),
}

/// herd-query's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A DataFusion session over one herd store.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    db: Arc<Db>,
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
        let config = SessionConfig::new().with_information_schema(false);
        let ctx = SessionContext::new_with_config(config);
        let url = url::Url::parse(STORE_URL).map_err(|e| DataFusionError::External(Box::new(e)))?;
        ctx.register_object_store(&url, db.storage().object_store());
        Ok(Self { ctx, db })
    }

    /// The session.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The project's events as one DataFrame (files of the current catalog + write buffer).
    pub async fn events(&self, project: ProjectId) -> Result<DataFrame> {
        let snapshot = self
            .db
            .snapshot(project)
            .ok_or(Error::UnknownProject(project))?;
        let provider = self.events_provider(&snapshot).await?;
        Ok(self.ctx.read_table(provider)?)
    }

    async fn events_provider(&self, snapshot: &TableSnapshot) -> Result<Arc<dyn TableProvider>> {
        let schema = events_schema();
        let buffered: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(
            schema.clone(),
            vec![snapshot.buffered_events.clone()],
        )?);
        if snapshot.catalog.events.is_empty() {
            return Ok(buffered);
        }
        let urls = snapshot
            .catalog
            .events
            .iter()
            .map(|f| ListingTableUrl::parse(format!("{STORE_URL}{}", f.path)))
            .collect::<Result<Vec<_>, _>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(schema);
        let files: Arc<dyn TableProvider> = Arc::new(ListingTable::try_new(config)?);
        let union = self
            .ctx
            .read_table(files)?
            .union(self.ctx.read_table(buffered)?)?;
        Ok(union.into_view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::functions_aggregate::expr_fn::{count, count_distinct};
    use datafusion::prelude::{col, lit};
    use herd_core::{Event, EventBatchBuilder};
    use herd_storage::DbConfig;
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
        let storage = herd_storage::Storage::open(dir.path().join("data").to_str().expect("utf8"))
            .expect("storage");
        let db = Db::open(storage, DbConfig::new(dir.path().join("wal")))
            .await
            .expect("db");
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
