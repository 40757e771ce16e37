//! `herd backfill`: stream Parquet sources into a project, resumable and idempotent.
//!
//! ```text
//!  sources ─▶ files (stable order) ─▶ skip files the checkpoint marks done
//!     file ─▶ batches ─▶ skip rows the checkpoint counts ─▶ BulkLoader (dedup, groups) ─▶ buffer
//!     every flush (≥ flush_rows buffered): Parquet + catalog, then the checkpoint is rewritten
//!  end: groups export (current state, applied last), flush, checkpoint removed, summary
//! ```
//! An interrupted run (Ctrl-C, `kill -9`, `--limit-events`) resumes from its checkpoint; rows
//! processed after the last checkpoint are read again and dropped as duplicates, so the result
//! is exactly the input. Running a finished backfill again stores nothing new.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herd_core::{GroupTypeMapping, ProjectId};
use herd_storage::Db;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bulk::{BulkLoader, LoadStats};
use crate::source::{self, GroupTypeRef, SourceFile};
use crate::{Error, Result};

/// What to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Target project.
    pub project: ProjectId,
    /// SOURCE arguments.
    pub sources: Vec<String>,
    /// The sources' group-type mapping, for files with `$group_N` columns.
    pub group_types: Option<GroupTypeMapping>,
    /// A groups export to apply after the events.
    pub groups: Option<String>,
    /// Flush to Parquet (and checkpoint) every this many buffered events.
    pub flush_rows: usize,
    /// Stop after reading this many rows in this run (the rest on the next run).
    pub limit_rows: Option<u64>,
}

/// Progress reported while running.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Rows read so far in this run.
    pub read: u64,
    /// Rows to read in total in this run (footers of the files left).
    pub total: u64,
    /// Events stored so far.
    pub events: u64,
}

/// The one-line JSON summary of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Source files considered.
    pub files: usize,
    /// Events stored by this run.
    pub events: u64,
    /// Rows skipped (duplicates, rows missing name/user/time, dropped by a rule).
    pub skipped: u64,
    /// Of those, duplicates.
    pub duplicates: u64,
    /// Groups-table rows written.
    pub groups: u64,
    /// Ingestion warnings.
    pub warnings: u64,
    /// Rows read.
    pub read: u64,
    /// Whether the backfill finished (false when `--limit-events` stopped it).
    pub complete: bool,
    /// Wall time.
    pub seconds: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    project: ProjectId,
    sources: Vec<String>,
    /// Rows already loaded per file; `u64::MAX` once the file is done.
    files: BTreeMap<String, u64>,
}

const DONE: u64 = u64::MAX;

fn checkpoint_path(project: ProjectId, sources: &[String]) -> Path {
    let key = format!("{project}\u{0}{}", sources.join("\u{0}"));
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes()).simple();
    Path::from(format!("backfill/{project}/{id}.json"))
}

async fn load_checkpoint(db: &Db, path: &Path) -> Result<Checkpoint> {
    match db.storage().get_opt(path).await? {
        None => Ok(Checkpoint::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Source {
            file: path.to_string(),
            reason: format!("corrupt backfill checkpoint: {e}"),
        }),
    }
}

async fn save_checkpoint(db: &Db, path: &Path, cp: &Checkpoint) -> Result<()> {
    let bytes = serde_json::to_vec(cp).map_err(|e| Error::BadRequest(e.to_string()))?;
    db.storage().put_durable(path, Bytes::from(bytes)).await?;
    Ok(())
}

/// On a local data folder, removes what a kill during a checkpoint write left behind: the
/// object store writes `<name>#<n>` and renames it, and its listings never show such files.
fn remove_staging_leftovers(db: &Db, path: &Path) {
    let Some(root) = db.storage().local_root() else {
        return;
    };
    let full = root.join(path.as_ref());
    let (Some(dir), Some(name)) = (full.parent(), full.file_name()) else {
        return;
    };
    let prefix = format!("{}#", name.to_string_lossy());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            // Best effort: a leftover only takes space.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Finds the group-type mapping of a herd data folder a file sits in
/// (`projects/<id>/events/date=…/x.parquet` → `projects/<id>/group_types.json`).
async fn herd_layout_mapping(file: &SourceFile) -> Option<GroupTypeMapping> {
    let local = file.storage.local_root()?;
    let path = local.join(file.path.as_ref());
    let project_dir = path.parent()?.parent()?.parent()?;
    let bytes = tokio::fs::read(project_dir.join("group_types.json"))
        .await
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    GroupTypeMapping::from_json(&value).ok()
}

/// Runs a backfill. `progress` is called after every batch.
pub async fn run(
    db: &Arc<Db>,
    opts: &BackfillOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Summary> {
    let started = Instant::now();
    let files = source::resolve(&opts.sources).await?;
    let groups_file = match &opts.groups {
        Some(spec) => {
            let mut g = source::resolve(std::slice::from_ref(spec)).await?;
            if g.len() != 1 {
                return Err(Error::Source {
                    file: spec.clone(),
                    reason: format!("names {} files; give one groups file", g.len()),
                });
            }
            g.pop()
        }
        None => None,
    };
    let cp_path = checkpoint_path(opts.project, &opts.sources);
    let mut cp = load_checkpoint(db, &cp_path).await?;
    cp.project = opts.project;
    cp.sources = opts.sources.clone();
    if !cp.files.is_empty() {
        tracing::info!(checkpoint = %cp_path, "resuming an interrupted backfill");
    }

    let mut loader = BulkLoader::new(db.clone(), opts.project, opts.flush_rows)?;
    // Open every file first: a missing column or a corrupt footer fails before any work.
    let mut total = 0u64;
    let mut readers = Vec::new();
    for file in &files {
        let done = cp.files.get(&file.name).copied().unwrap_or(0);
        if done == DONE {
            continue;
        }
        let mapping = match &opts.group_types {
            Some(m) => Some(m.clone()),
            None => herd_layout_mapping(file).await,
        };
        let reader = source::open_events(file, mapping).await?;
        total += reader.rows.saturating_sub(done);
        readers.push((file.name.clone(), done, reader));
    }
    let limit = opts.limit_rows.unwrap_or(u64::MAX);
    let now = chrono::Utc::now().timestamp_micros();
    let mut read_this_run = 0u64;
    let mut complete = true;
    // Checkpoint entries by position (rows read in this run): a flush that completes makes
    // every entry up to its position durable.
    let mut marks: Vec<(u64, String, u64)> = Vec::new();
    let apply_marks = |cp: &mut Checkpoint, marks: &mut Vec<(u64, String, u64)>, durable: u64| {
        marks.retain(|(pos, name, rows)| {
            if *pos <= durable {
                cp.files.insert(name.clone(), *rows);
                false
            } else {
                true
            }
        });
    };
    'files: for (name, skip, reader) in readers {
        // Decode ahead in another task while this one loads.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<crate::bulk::SourceRows>>(1);
        let read_ahead = tokio::spawn(async move {
            let mut reader = reader;
            loop {
                // The pure per-row work (uuids, JSON peeks) happens here, in parallel with loading.
                let next = reader.next().await.transpose().map(|r| {
                    r.map(|mut rows| {
                        rows.prepared = Some(crate::bulk::prepare_rows(&rows));
                        rows
                    })
                });
                let Some(item) = next else { break };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        let mut seen = 0u64;
        while let Some(rows) = rx.recv().await {
            let rows = rows?;
            let n = rows.len() as u64;
            // Rows loaded before the checkpoint: skip without processing.
            if seen + n <= skip {
                seen += n;
                continue;
            }
            let mut rows = if seen < skip {
                rows.slice((skip - seen) as usize, usize::MAX)
            } else {
                rows
            };
            let first = seen.max(skip);
            // Stop exactly at the limit.
            let room = limit.saturating_sub(read_this_run);
            if (rows.len() as u64) > room {
                rows = rows.slice(0, room as usize);
            }
            // Load in chunks of at most flush_rows, so checkpoints follow the flushes closely.
            let chunk = opts.flush_rows.clamp(1, source::READ_BATCH_ROWS);
            let mut offset = 0;
            while offset < rows.len() {
                let part = rows.slice(offset, chunk);
                offset += part.len();
                read_this_run += part.len() as u64;
                marks.push((read_this_run, name.clone(), first + offset as u64));
                if let Some(durable) = loader.load(&part, now, read_this_run).await? {
                    apply_marks(&mut cp, &mut marks, durable);
                    save_checkpoint(db, &cp_path, &cp).await?;
                }
                progress(Progress {
                    read: read_this_run,
                    total,
                    events: loader.stats().events,
                });
            }
            seen = first + rows.len() as u64;
            if read_this_run >= limit {
                read_ahead.abort();
                loader.flush().await?;
                apply_marks(&mut cp, &mut marks, u64::MAX);
                save_checkpoint(db, &cp_path, &cp).await?;
                complete = false;
                break 'files;
            }
        }
        // A reader that died without sending its error must not mark the file done.
        read_ahead.await.map_err(|e| Error::Source {
            file: name.clone(),
            reason: format!("reader stopped: {e}"),
        })?;
        marks.push((read_this_run, name.clone(), DONE));
    }
    if complete {
        if let Some(file) = &groups_file {
            load_groups(&mut loader, file, opts.group_types.as_ref(), now).await?;
        }
        loader.flush().await?;
        db.storage().delete(&cp_path).await?;
        remove_staging_leftovers(db, &cp_path);
    }
    let s: LoadStats = loader.stats();
    Ok(Summary {
        files: files.len(),
        events: s.events,
        skipped: s.skipped,
        duplicates: s.duplicates,
        groups: s.groups,
        warnings: s.warnings,
        read: s.read,
        complete,
        seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    })
}

async fn load_groups(
    loader: &mut BulkLoader,
    file: &SourceFile,
    mapping: Option<&GroupTypeMapping>,
    now: i64,
) -> Result<()> {
    for g in source::read_groups(file).await? {
        let group_type = match &g.group_type {
            GroupTypeRef::Name(n) => n.clone(),
            GroupTypeRef::Index(i) => match mapping.and_then(|m| m.type_at(*i)) {
                Some(t) => t.to_string(),
                None => {
                    return Err(Error::Source {
                        file: file.name.clone(),
                        reason: format!(
                            "group_type_index {i} has no type name: pass --group-types"
                        ),
                    });
                }
            },
        };
        let properties = match serde_json::from_str::<Value>(&g.properties) {
            Ok(Value::Object(m)) => m,
            _ => {
                tracing::warn!(file = %file.name, key = %g.key, "group_properties is not a JSON object; group skipped");
                continue;
            }
        };
        loader
            .load_group(&group_type, &g.key, properties, g.created_at, now)
            .await?;
    }
    Ok(())
}

/// Parses `company=0,project=1` into a mapping.
pub fn parse_group_types(text: &str) -> Result<GroupTypeMapping> {
    let mut map = serde_json::Map::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, index) = part.split_once('=').ok_or_else(|| {
            Error::BadRequest(format!("--group-types: {part:?} is not type=index"))
        })?;
        let index: u64 = index.trim().parse().map_err(|_| {
            Error::BadRequest(format!("--group-types: index of {name:?} is not a number"))
        })?;
        map.insert(name.trim().to_string(), Value::from(index));
    }
    GroupTypeMapping::from_json(&Value::Object(map))
        .map_err(|e| Error::BadRequest(format!("--group-types: {e}")))
}
