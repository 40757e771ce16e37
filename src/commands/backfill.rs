//! `herd backfill`: load Parquet history into a project.

use clap::Args;
use herd_ingest::backfill::{self, BackfillOptions};

use super::progress::Progress;

/// Arguments of `herd backfill`.
#[derive(Debug, Args)]
pub(crate) struct BackfillArgs {
    #[command(flatten)]
    pub(crate) store: super::StoreArgs,
    /// Group types of sources with `$group_N` columns: `company=0,project=1`. Default: the
    /// source folder's group_types.json when it is a herd data folder.
    #[arg(long, conflicts_with = "group_types_file")]
    pub(crate) group_types: Option<String>,
    /// The same as a JSON file: {"company": 0, "project": 1}.
    #[arg(long)]
    pub(crate) group_types_file: Option<std::path::PathBuf>,
    /// A groups table export (group_type or group_type_index, group_key, group_properties,
    /// created_at), applied after the events.
    #[arg(long)]
    pub(crate) groups: Option<String>,
    /// Stop after this many source rows (run again to continue).
    #[arg(long)]
    pub(crate) limit_events: Option<u64>,
    /// Write Parquet (and a checkpoint) every this many events.
    #[arg(long, default_value_t = 250_000)]
    pub(crate) flush_rows: usize,
    #[command(flatten)]
    pub(crate) compact: super::compact::CompactAfterLoad,
    /// Parquet files, folders, globs, or object-store URLs (s3://bucket/prefix/, file://…).
    #[arg(required = true)]
    pub(crate) sources: Vec<String>,
}

/// Runs `herd backfill` and prints the summary line.
pub(crate) async fn run(args: BackfillArgs) -> anyhow::Result<()> {
    let group_types = match (&args.group_types, &args.group_types_file) {
        (Some(text), _) => Some(backfill::parse_group_types(text)?),
        (None, Some(file)) => {
            let bytes =
                std::fs::read(file).map_err(|e| anyhow::anyhow!("read {}: {e}", file.display()))?;
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", file.display()))?;
            Some(herd_core::GroupTypeMapping::from_json(&value)?)
        }
        (None, None) => None,
    };
    let (db, project) = args.store.open(args.flush_rows).await?;
    let opts = BackfillOptions {
        project,
        sources: args.sources,
        group_types,
        groups: args.groups,
        flush_rows: args.flush_rows,
        limit_rows: args.limit_events,
    };
    let progress = Progress::new("events", 0);
    let summary = backfill::run(&db, &opts, &|p| progress.update(p.read, p.total)).await;
    progress.finish();
    let summary = summary?;
    // An interrupted (resumable) backfill is compacted when it completes.
    let compacted = match summary.complete {
        true => args.compact.run(&db, project).await?,
        false => serde_json::Value::Null,
    };
    db.close().await?;
    let mut out = serde_json::to_value(&summary)?;
    out["compacted"] = compacted;
    println!("{out}");
    Ok(())
}
