//! The per-project catalog: which Parquet files make up each table, swapped atomically.
//!
//! Each commit writes a new immutable version `catalog/<project>/<version:020>.json` with
//! create-only semantics (`PutMode::Create`), so two writers can never both win the same
//! version, and a reader that picks the highest version sees whole files only: a data file is
//! written (and fsynced) before the version that names it. Old versions are pruned after a
//! commit; a reader that loses the race simply retries.

use bytes::Bytes;
use herd_core::ProjectId;
use serde::{Deserialize, Serialize};

use crate::layout;
use crate::store::Storage;
use crate::{Error, Result};

/// How many catalog versions are kept behind the newest.
const KEEP_VERSIONS: usize = 4;

/// One live data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Object path below the storage root.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Day partition (`YYYY-MM-DD`), for events files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// Smallest `timestamp` in the file (events), µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ts: Option<i64>,
    /// Largest `timestamp` in the file (events), µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ts: Option<i64>,
    /// Whether an events file carries actor numbers (`$distinct_id_num`, `$group_N_num`);
    /// files written before herd numbered actors do not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub numbered: bool,
}

/// One version of a project's catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Format version of this document.
    #[serde(default = "format_version")]
    pub format: u32,
    /// Monotonic version; 0 means nothing committed yet.
    pub version: u64,
    /// Events files.
    pub events: Vec<FileEntry>,
    /// Groups files (every change row; the latest version per group is current).
    pub groups: Vec<FileEntry>,
    /// Ingestion-warnings files.
    #[serde(default)]
    pub warnings: Vec<FileEntry>,
    /// Actor-numbers files, in the order their numbers were given ([`crate::numbers`]).
    #[serde(default)]
    pub numbers: Vec<FileEntry>,
}

fn format_version() -> u32 {
    1
}

impl Catalog {
    /// Events files of one day partition.
    pub fn events_of_day<'a>(&'a self, day: &'a str) -> impl Iterator<Item = &'a FileEntry> + 'a {
        self.events
            .iter()
            .filter(move |f| f.day.as_deref() == Some(day))
    }

    /// Whether every events file carries actor numbers (then queries may count and group
    /// actors by number; the write buffer always has them).
    pub fn all_numbered(&self) -> bool {
        self.events.iter().all(|f| f.numbered)
    }

    /// Total events rows.
    pub fn event_rows(&self) -> u64 {
        self.events.iter().map(|f| f.rows).sum()
    }

    /// Every path this version references.
    pub fn all_paths(&self) -> impl Iterator<Item = &str> {
        self.events
            .iter()
            .chain(&self.groups)
            .chain(&self.warnings)
            .chain(&self.numbers)
            .map(|f| f.path.as_str())
    }
}

/// Loads the newest catalog version of a project (version 0 when there is none).
pub async fn load_latest(storage: &Storage, project: ProjectId) -> Result<Catalog> {
    for _attempt in 0..5 {
        let mut versions: Vec<u64> = storage
            .list(&layout::catalog_dir(project))
            .await?
            .iter()
            .filter_map(|m| layout::parse_catalog_version(&m.location))
            .collect();
        versions.sort_unstable();
        let Some(&latest) = versions.last() else {
            return Ok(Catalog {
                format: format_version(),
                ..Default::default()
            });
        };
        let path = layout::catalog_version(project, latest);
        // Pruned between list and get: list again.
        let Some(bytes) = storage.get_opt(&path).await? else {
            continue;
        };
        let catalog: Catalog = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(path.to_string(), e.to_string()))?;
        if catalog.version != latest {
            return Err(Error::corrupt(
                path.to_string(),
                format!("names version {}", catalog.version),
            ));
        }
        return Ok(catalog);
    }
    Err(Error::corrupt(
        format!("catalog of project {project}"),
        "versions kept disappearing while reading",
    ))
}

/// Commits `next` (whose version must be the previous one plus one), then prunes old versions.
/// Once the version is written the commit has happened: a failure to prune is logged, not
/// returned (a caller that took an error for "not committed" would throw away files the new
/// version names).
pub async fn commit(storage: &Storage, project: ProjectId, next: &Catalog) -> Result<()> {
    let bytes = serde_json::to_vec(next).map_err(|e| Error::corrupt("catalog", e.to_string()))?;
    let path = layout::catalog_version(project, next.version);
    if !storage.put_new_durable(&path, Bytes::from(bytes)).await? {
        return Err(Error::CatalogConflict {
            project,
            version: next.version,
        });
    }
    if next.version as usize > KEEP_VERSIONS
        && let Err(e) = prune(storage, project, next.version).await
    {
        tracing::warn!(project, error = %e, "pruning old catalog versions failed; the next commit retries");
    }
    Ok(())
}

/// Deletes the versions more than [`KEEP_VERSIONS`] behind `newest`.
async fn prune(storage: &Storage, project: ProjectId, newest: u64) -> Result<()> {
    let mut old: Vec<_> = storage
        .list(&layout::catalog_dir(project))
        .await?
        .into_iter()
        .filter(|m| {
            layout::parse_catalog_version(&m.location)
                .is_some_and(|v| v + (KEEP_VERSIONS as u64) < newest)
        })
        .collect();
    old.sort_by(|a, b| a.location.cmp(&b.location));
    for m in old {
        storage.delete(&m.location).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_advance_conflicts_are_refused_and_old_ones_pruned() {
        let storage = Storage::open("memory://").expect("memory");
        assert_eq!(load_latest(&storage, 1).await.expect("empty").version, 0);
        let mut c = Catalog::default();
        for v in 1..=10 {
            c.version = v;
            c.events.push(FileEntry {
                path: format!("f{v}"),
                rows: v,
                bytes: 1,
                day: Some("2024-01-01".into()),
                min_ts: Some(0),
                max_ts: Some(1),
                numbered: v % 2 == 0,
            });
            commit(&storage, 1, &c).await.expect("commit");
        }
        let latest = load_latest(&storage, 1).await.expect("load");
        assert_eq!(latest, c);
        assert_eq!(latest.event_rows(), 55);
        assert!(matches!(
            commit(&storage, 1, &c).await,
            Err(Error::CatalogConflict { version: 10, .. })
        ));
        let kept = storage
            .list(&layout::catalog_dir(1))
            .await
            .expect("list")
            .len();
        assert_eq!(kept, KEEP_VERSIONS + 1);
        assert_eq!(
            load_latest(&storage, 2)
                .await
                .expect("other project")
                .version,
            0
        );
    }
}
