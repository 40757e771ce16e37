//! Compaction: the events files of one day partition merged into one.
//!
//! Every flush writes one file per day it holds rows of, so a day gets a file per flush that
//! touched it (a bulk load of 250k-row flushes splits each day of a large dataset over
//! several files; a server flushing every few seconds, over thousands). A query pays for
//! every file it opens (metadata, pruning, one reader per column chunk), so compaction
//! rewrites a day's files as one, rows in the events order. The new file is written and made
//! durable before the catalog version that swaps it in for the old ones is committed (under
//! the flush lock, the only other writer of the catalog); the old files are then retired:
//! queries that started from an older snapshot may still be reading them, so they are deleted
//! only by [`Db::delete_retired`] once old enough, or at the next open as files no catalog
//! names.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_core::ProjectId;
use herd_core::schema::stored_events_schema;

use bytes::Bytes;
use futures::StreamExt;

use super::{Db, ProjectHandle};
use crate::catalog::{self, FileEntry};
use crate::parquet_files;
use crate::{Error, Result, layout};

/// Bytes of input files that the merges running at once may hold together (one merge of a
/// larger day runs alone). A merge's peak memory is ~4x its inputs: at 100M events (~55 MB of
/// files per day) merges run one at a time, at 10M (~6 MB) in parallel.
pub(crate) const MERGE_INPUT_BUDGET: usize = 64 << 20;

/// What a compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CompactStats {
    /// Day partitions rewritten.
    pub days: usize,
    /// Files merged away.
    pub files_merged: usize,
    /// Files written.
    pub files_written: usize,
    /// Rows rewritten.
    pub rows: u64,
}

impl Db {
    /// Merges the events files of every day partition of `project` that has at least
    /// `min_files` of them (at least 2) into one file per day. Days holding a file without
    /// actor numbers (written before herd numbered actors) are left as they are. The merged
    /// files are retired, not deleted (see the module documentation).
    pub async fn compact_events(
        &self,
        project: ProjectId,
        min_files: usize,
    ) -> Result<CompactStats> {
        let handle = self
            .project(project)
            .ok_or(Error::UnknownProject(project))?;
        let min_files = min_files.max(2);
        let days = {
            let t = handle.tables.lock();
            let mut per_day: std::collections::BTreeMap<&str, (usize, bool)> = Default::default();
            for f in &t.catalog.events {
                if let Some(day) = f.day.as_deref() {
                    let e = per_day.entry(day).or_insert((0, true));
                    e.0 += 1;
                    e.1 &= f.numbered;
                }
            }
            per_day
                .into_iter()
                .filter(|(_, (n, numbered))| *n >= min_files && *numbered)
                .map(|(day, _)| day.to_string())
                .collect::<Vec<_>>()
        };
        // One compaction at a time (two could merge the same files); days in parallel while
        // the merges' inputs fit [`MERGE_INPUT_BUDGET`].
        let _one_compaction = self.compact_lock.lock().await;
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let memory = tokio::sync::Semaphore::new(MERGE_INPUT_BUDGET >> 20);
        let mut merged_days = futures::stream::iter(days)
            .map(|day| {
                let (handle, memory) = (&handle, &memory);
                async move { self.compact_day(handle, memory, &day, min_files).await }
            })
            .buffer_unordered(parallel);
        let mut stats = CompactStats::default();
        while let Some(day) = merged_days.next().await {
            let (merged, rows) = day?;
            if merged > 0 {
                stats.days += 1;
                stats.files_merged += merged;
                stats.files_written += 1;
                stats.rows += rows;
            }
        }
        Ok(stats)
    }

    /// Merges the files of one day; returns how many it merged and their rows.
    async fn compact_day(
        &self,
        handle: &ProjectHandle,
        memory: &tokio::sync::Semaphore,
        day: &str,
        min_files: usize,
    ) -> Result<(usize, u64)> {
        let project = handle.project.id;
        // Only compaction removes files from the catalog (and one runs at a time): the files
        // listed here are still the day's files when the new version is committed, although
        // flushes may add others meanwhile.
        let files: Vec<FileEntry> = handle
            .tables
            .lock()
            .catalog
            .events_of_day(day)
            .cloned()
            .collect();
        if files.len() < min_files || !files.iter().all(|f| f.numbered) {
            return Ok((0, 0));
        }
        // A merge holds its inputs, its output and the row group being encoded, and the
        // allocator keeps some of what it frees: ~4x its inputs (measured at 100M events).
        let input_bytes: u64 = files.iter().map(|f| f.bytes).sum();
        let mib = u32::try_from((input_bytes >> 20).max(1))
            .unwrap_or(u32::MAX)
            .min((MERGE_INPUT_BUDGET >> 20) as u32);
        let _memory = memory
            .acquire_many(mib)
            .await
            .map_err(|e| Error::io("compaction", std::io::Error::other(e)))?;
        let inputs = futures::future::try_join_all(files.iter().map(|f| async move {
            let bytes = self.storage.get(&f.path.as_str().into()).await?;
            Ok::<_, Error>((bytes, f.path.clone()))
        }))
        .await?;
        let path = layout::new_events_file(project, day);
        let encode_path = path.clone();
        let bytes =
            tokio::task::spawn_blocking(move || merge_or_sort(inputs, encode_path.as_ref()))
                .await
                .map_err(|e| Error::io("compaction task", std::io::Error::other(e)))??;
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let entry = FileEntry {
            path: path.to_string(),
            rows,
            bytes: bytes.len() as u64,
            day: Some(day.to_string()),
            min_ts: files.iter().filter_map(|f| f.min_ts).min(),
            max_ts: files.iter().filter_map(|f| f.max_ts).max(),
            numbered: true,
        };
        self.storage.put_pending(&path, bytes).await?;
        // The catalog's other writer is the flush.
        let _one_writer = self.flush_lock.lock().await;
        let base = handle.tables.lock().catalog.clone();
        let mut next = (*base).clone();
        next.version += 1;
        let gone: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        if next
            .events
            .iter()
            .filter(|f| gone.contains(f.path.as_str()))
            .count()
            != gone.len()
        {
            // Not while one compaction runs at a time; the new file is named by no catalog.
            let _ = self
                .storage
                .delete(&layout::twin(&path, layout::Twin::Pending))
                .await;
            return Err(Error::corrupt(
                "compaction",
                format!("the files of {day} changed while they were merged"),
            ));
        }
        // In place of the first merged file, so the files keep their order.
        let at = next
            .events
            .iter()
            .position(|f| gone.contains(f.path.as_str()))
            .unwrap_or(next.events.len());
        next.events.retain(|f| !gone.contains(f.path.as_str()));
        // Every file before `at` stays, so `at` is still in bounds.
        next.events.insert(at, entry);
        catalog::commit(&self.storage, project, &base, &mut next).await?;
        // Outside readers globbing `*.parquet` see the merged file in place of its inputs;
        // queries still reading an input find it under its retired twin until it is deleted.
        // Inputs first: between the renames a glob misses the day's rows for a moment rather
        // than counting them twice.
        for f in &files {
            if let Err(e) = self.storage.retire(&f.path.as_str().into()).await {
                tracing::warn!(path = f.path, error = %e, "retiring a merged file failed; it is deleted later");
            }
        }
        if let Err(e) = self.storage.publish(&path).await {
            tracing::warn!(%path, error = %e, "renaming a committed file failed; the next start retries");
        }
        handle.tables.lock().set_catalog(Arc::new(next));
        let merged = gone.len();
        let now = Instant::now();
        self.retired
            .lock()
            .extend(files.into_iter().map(|f| (now, f.path)));
        Ok((merged, rows))
    }

    /// Deletes the files retired by compaction at least `older_than` ago (queries started
    /// before the compaction may still be reading younger ones); returns how many.
    pub async fn delete_retired(&self, older_than: Duration) -> Result<usize> {
        let due: Vec<String> = {
            let mut retired = self.retired.lock();
            let (due, keep) = retired
                .drain(..)
                .partition(|(at, _)| at.elapsed() >= older_than);
            *retired = keep;
            due.into_iter().map(|(_, path)| path).collect()
        };
        for (i, path) in due.iter().enumerate() {
            let live = object_store::path::Path::from(path.as_str());
            let retired = layout::twin(&live, layout::Twin::Retired);
            // The file itself too, in case retiring it failed.
            let deleted = match self.storage.delete(&retired).await {
                Ok(()) => self.storage.delete(&live).await,
                Err(e) => Err(e),
            };
            if let Err(e) = deleted {
                // Keep the rest for a later try; the next open removes them in any case.
                let now = Instant::now();
                self.retired
                    .lock()
                    .extend(due[i..].iter().map(|p| (now, p.clone())));
                return Err(e);
            }
        }
        Ok(due.len())
    }
}

/// The day's files merged into one in the events order; if one of them is not in that order
/// after all, all their rows decoded and sorted instead.
fn merge_or_sort(inputs: Vec<(Bytes, String)>, path: &str) -> Result<Bytes> {
    if let Some(bytes) = parquet_files::merge_sorted_events(inputs.clone(), path)? {
        return Ok(bytes);
    }
    tracing::warn!(
        path,
        "compaction: an input is not in the events order; sorting instead"
    );
    let schema = stored_events_schema();
    let mut batches = Vec::new();
    for (bytes, file) in inputs {
        batches.extend(parquet_files::decode(bytes, &file, &schema)?);
    }
    parquet_files::encode_sorted_events(&batches, path)
}
