//! A real store in a temporary folder with events and groups written through the storage
//! layer, for planner tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herd_core::{Event, EventBatchBuilder, GroupRow, GroupState, ProjectId};
use herd_query::QueryEngine;
use herd_storage::Db;
use herd_storage::projects::NewProject;

/// One event: `(RFC 3339 time, distinct_id, event, [$group_0, $group_1], properties JSON)`.
pub type Ev<'a> = (&'a str, &'a str, &'a str, [&'a str; 2], &'a str);

pub struct Fixture {
    _dir: Option<tempfile::TempDir>,
    pub db: Arc<Db>,
    pub engine: QueryEngine,
    pub project: ProjectId,
    next_uuid: AtomicU64,
}

pub fn micros(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("rfc3339")
        .timestamp_micros()
}

impl Fixture {
    /// An empty project whose group types are `types` (slots in order).
    pub async fn new(types: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open_local(dir.path()).await.expect("db");
        let engine = QueryEngine::new(db.clone()).expect("engine");
        let mut f = Self::in_db(db, engine, types).await;
        f._dir = Some(dir);
        f
    }

    /// A new project in `db`, queried with `engine`, whose group types are `types`.
    pub async fn in_db(db: Arc<Db>, engine: QueryEngine, types: &[&str]) -> Self {
        let project = db
            .create_project(NewProject::default())
            .await
            .expect("project")
            .id;
        {
            let handle = db.project(project).expect("handle");
            let mut guard = db.lock(&handle).await;
            for t in types {
                guard.resolve_group_type(t).await.expect("group type");
            }
        }
        Self {
            _dir: None,
            db,
            engine,
            project,
            next_uuid: AtomicU64::new(1),
        }
    }

    /// Writes events (to the write buffer; call [`Fixture::flush`] to move them to Parquet).
    pub async fn events(&self, rows: &[Ev<'_>]) {
        let owned: Vec<Event> = rows
            .iter()
            .map(|(ts, who, event, groups, props)| Event {
                uuid: uuid::Uuid::from_u128(u128::from(
                    self.next_uuid.fetch_add(1, Ordering::Relaxed),
                )),
                event: (*event).to_string(),
                distinct_id: (*who).to_string(),
                timestamp: micros(ts),
                properties: (*props).to_string(),
                groups: [
                    groups[0].to_string(),
                    groups[1].to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
                created_at: micros(ts),
            })
            .collect();
        self.write(owned).await;
    }

    /// Writes already-built events.
    pub async fn write(&self, events: Vec<Event>) {
        let handle = self.db.project(self.project).expect("handle");
        let mut guard = self.db.lock(&handle).await;
        let mut b = EventBatchBuilder::with_capacity(events.len());
        for e in &events {
            assert!(
                guard
                    .insert_uuid(e.uuid.as_u128(), e.timestamp)
                    .await
                    .expect("dedup")
            );
            b.push(e);
        }
        let ticket = guard
            .commit(Some(b.finish()), vec![], vec![])
            .expect("commit");
        drop(guard);
        self.db.wait_durable(ticket).await.expect("durable");
    }

    /// Sets the current properties of a group.
    pub async fn group(&self, index: u8, key: &str, properties: serde_json::Value) {
        let handle = self.db.project(self.project).expect("handle");
        let mut guard = self.db.lock(&handle).await;
        let version = guard.group(index, key).map_or(1, |g| g.version + 1);
        let state = GroupState::new(properties.as_object().expect("object"), 0, version);
        let row = GroupRow::from_state(index, key, &state, version);
        guard.set_group(index, key, state);
        let ticket = guard.commit(None, vec![row], vec![]).expect("commit");
        drop(guard);
        self.db.wait_durable(ticket).await.expect("durable");
    }

    pub async fn flush(&self) {
        self.db.flush().await.expect("flush");
    }
}
