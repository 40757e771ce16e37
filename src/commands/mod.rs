//! The subcommands: those that work on a data folder directly (backfill, generate) with what
//! they share (opening the store, progress), and `query`, a gRPC client of a running server.

pub(crate) mod backfill;
pub(crate) mod bench;
pub(crate) mod compact;
pub(crate) mod flags;
pub(crate) mod generate;
pub(crate) mod progress;
pub(crate) mod query;
pub(crate) mod query_funnel;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use herd_core::ProjectId;
use herd_storage::projects::{NewProject, Project};
use herd_storage::{Db, DbConfig, Storage};

/// Where a bulk job writes: the data folder, its WAL folder and the project.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    /// Data folder (or URL) to write into.
    #[arg(long, env = "HERD_DATA", default_value = "./herd-data")]
    pub(crate) data: String,
    /// Write-ahead log folder of the data folder (default: <data>/wal).
    #[arg(long, env = "HERD_WAL_DIR")]
    pub(crate) wal_dir: Option<PathBuf>,
    /// Project id (default: the first project; created when there is none).
    #[arg(long)]
    pub(crate) project: Option<u64>,
}

impl StoreArgs {
    /// Opens the store and picks the project; prints the project when it had to be created.
    pub(crate) async fn open(&self, flush_rows: usize) -> anyhow::Result<(Arc<Db>, ProjectId)> {
        let db = open_db(&self.data, self.wal_dir.clone(), flush_rows).await?;
        let (project, created) = target_project(&db, self.project).await?;
        if let Some(p) = created {
            println!("{}", serde_json::to_string(&p)?);
        }
        Ok((db, project))
    }
}

/// Opens the store of `data` for a bulk job.
async fn open_db(
    data: &str,
    wal_dir: Option<PathBuf>,
    flush_rows: usize,
) -> anyhow::Result<Arc<Db>> {
    let storage = Storage::open(data)?;
    let wal_dir = match (wal_dir, storage.local_root()) {
        (Some(d), _) => d,
        (None, Some(root)) => root.join("wal"),
        (None, None) => anyhow::bail!("--wal-dir is required when --data is not a local folder"),
    };
    let mut config = DbConfig::new(wal_dir);
    config.flush_rows = flush_rows;
    // Bulk loads keep fewer days of uuids in memory (RSS stays bounded; inputs are usually
    // time-ordered, so evicted days are rarely needed again).
    config.dedup_max_uuids = 4_000_000;
    Db::open(storage, config)
        .await
        .with_context(|| format!("open data folder {data}"))
}

/// The project to load into: the given id, else the only/first project, else a new default
/// project (returned as created so the caller can print it).
async fn target_project(
    db: &Db,
    id: Option<ProjectId>,
) -> anyhow::Result<(ProjectId, Option<Project>)> {
    if let Some(id) = id {
        anyhow::ensure!(
            db.project(id).is_some(),
            "project {id} does not exist in this data folder"
        );
        return Ok((id, None));
    }
    if let Some(p) = db.projects().first() {
        return Ok((p.id, None));
    }
    let p = db.create_project(NewProject::default()).await?;
    Ok((p.id, Some(p)))
}
