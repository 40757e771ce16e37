//! `herd compact`, and the compaction that ends a bulk load: each day partition's events
//! files merged into one (see `herd_storage::db::compact`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use herd_core::ProjectId;
use herd_storage::Db;

/// Arguments of `herd compact`.
#[derive(Debug, Args)]
pub(crate) struct CompactArgs {
    #[command(flatten)]
    pub(crate) store: super::StoreArgs,
    /// Merge a day's files when it has at least this many.
    #[arg(long, default_value_t = 2)]
    pub(crate) min_files: usize,
}

/// Options of the compaction that ends `herd generate` and `herd backfill`.
#[derive(Debug, Args)]
pub(crate) struct CompactAfterLoad {
    /// Leave the files as the flushes wrote them (one per day per flush) instead of merging
    /// each day's into one at the end.
    #[arg(long)]
    pub(crate) no_compact: bool,
}

impl CompactAfterLoad {
    /// The compaction that ends a bulk load into `project`, unless `--no-compact`: its
    /// summary, or null.
    pub(crate) async fn run(
        &self,
        db: &Arc<Db>,
        project: ProjectId,
    ) -> anyhow::Result<serde_json::Value> {
        if self.no_compact {
            return Ok(serde_json::Value::Null);
        }
        // The load's dedup index (up to 20M uuids, ~0.6 GB at 100M events) is not needed to
        // compact: its memory goes to the merges instead of adding to them.
        db.release_dedup(project).await;
        compact(db, project, 2).await
    }
}

/// Compacts `project` and deletes the merged files at once (no query runs in this
/// process); returns the summary to print.
pub(crate) async fn compact(
    db: &Arc<Db>,
    project: ProjectId,
    min_files: usize,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let stats = db.compact_events(project, min_files).await?;
    db.delete_retired(Duration::ZERO).await?;
    let mut out = serde_json::to_value(stats)?;
    out["seconds"] = serde_json::json!((started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0);
    Ok(out)
}

/// Runs `herd compact` and prints the summary line.
pub(crate) async fn run(args: CompactArgs) -> anyhow::Result<()> {
    let (db, project) = args.store.open(250_000).await?;
    let summary = compact(&db, project, args.min_files).await?;
    db.close().await?;
    println!(
        "{}",
        serde_json::json!({ "project": project, "compacted": summary })
    );
    Ok(())
}
