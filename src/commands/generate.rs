//! `herd generate`: a deterministic synthetic dataset, written through the backfill path.

use std::time::Instant;

use clap::Args;
use herd_ingest::bulk::BulkLoader;
use herd_ingest::generate::{Exporter, GenerateOptions, Generator};

use super::progress::Progress;

/// Arguments of `herd generate`.
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    pub(crate) store: super::StoreArgs,
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) events: u64,
    /// Seed: the same seed and sizes give the same events.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Users (default events/50).
    #[arg(long)]
    pub(crate) users: Option<u64>,
    /// Companies (default users/20).
    #[arg(long)]
    pub(crate) companies: Option<u64>,
    /// Days of history.
    #[arg(long, default_value_t = 90)]
    pub(crate) days: u32,
    /// First day, YYYY-MM-DD.
    #[arg(long, default_value = "2024-01-01")]
    pub(crate) start: chrono::NaiveDate,
    /// Also write a plain PostHog-style export (events/*.parquet, groups.parquet) here.
    #[arg(long)]
    pub(crate) export: Option<std::path::PathBuf>,
    /// Write Parquet every this many events.
    #[arg(long, default_value_t = 250_000)]
    pub(crate) flush_rows: usize,
    #[command(flatten)]
    pub(crate) compact: super::compact::CompactAfterLoad,
}

/// Runs `herd generate` and prints the summary line.
pub(crate) async fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (db, project) = args.store.open(args.flush_rows).await?;
    let mut generator = Generator::new(GenerateOptions {
        events: args.events,
        seed: args.seed,
        users: args.users,
        companies: args.companies,
        days: args.days,
        start: args.start,
    })?;
    let mut exporter = args.export.as_deref().map(Exporter::new).transpose()?;
    let mut loader = BulkLoader::new(db.clone(), project, args.flush_rows)?;
    let progress = Progress::new("events", args.events);
    let now = chrono::Utc::now().timestamp_micros();
    while let Some(rows) = generator.next_batch() {
        if let Some(e) = exporter.as_mut() {
            e.write(&rows)?;
        }
        loader.load(&rows, now, generator.emitted()).await?;
        progress.update(generator.emitted(), args.events);
    }
    loader.flush().await?;
    progress.finish();
    if let Some(e) = exporter {
        let mapping = db.group_types(project).await.unwrap_or_default();
        let mut groups: Vec<(String, String, serde_json::Value, i64)> = db
            .current_groups(project)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|((index, key), state)| {
                let group_type = mapping.type_at(index)?.to_string();
                Some((
                    group_type,
                    key,
                    serde_json::Value::Object(state.properties()),
                    state.created_at,
                ))
            })
            .collect();
        groups.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        e.finish(&groups)?;
    }
    let compacted = args.compact.run(&db, project).await?;
    db.close().await?;
    let stats = loader.stats();
    println!(
        "{}",
        serde_json::json!({
            "project": project,
            "events": stats.events,
            "skipped": stats.skipped,
            "groups": stats.groups,
            "warnings": stats.warnings,
            "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            "compacted": compacted,
        })
    );
    Ok(())
}
