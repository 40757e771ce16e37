//! The per-project catalog: which Parquet files make up each table, swapped atomically.
//!
//! Each commit writes a new immutable version `catalog/<project>/<version:020>.json` with
//! create-only semantics (`PutMode::Create`), so two writers can never both win the same
//! version, and a reader that picks the highest version sees whole files only: a data file is
//! written (and fsynced) before the version that names it.
//!
//! A version is either a *checkpoint*, every live file of every table, or a *delta*: the files
//! removed and added since the version before it, on a chain that starts at a checkpoint.
//! A commit writes a delta while the chain is short (at most [`MAX_DELTAS`] versions) and its
//! deltas together are smaller than the checkpoint; otherwise it writes a checkpoint. So a
//! commit costs what it changes, amortised (a store of 20,000 day files no longer rewrites
//! its whole file list at every flush), and a reader reads one checkpoint and a bounded chain.
//! Versions older than the newest chain (and than [`KEEP_VERSIONS`] behind the newest) are
//! pruned after a commit; a reader that loses the race simply retries.
//!
//! Format 1 (every version a checkpoint) is read as it is. A delta has no top-level file
//! lists, so a build that knows only format 1 refuses it rather than reading an empty table.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures::StreamExt;
use herd_core::ProjectId;
use serde::{Deserialize, Serialize};

use crate::layout;
use crate::store::Storage;
use crate::{Error, Result};

/// How many catalog versions are kept behind the newest (at least; the newest chain is kept
/// whole).
const KEEP_VERSIONS: u64 = 4;

/// The longest chain of deltas behind a checkpoint.
pub const MAX_DELTAS: u64 = 32;

/// The format written now (deltas and checkpoints).
const FORMAT: u32 = 2;

/// Catalog versions a reader fetches at once.
const READS_IN_FLIGHT: usize = 8;
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
    /// Format version of the document this was read from or is written as.
    #[serde(default = "first_format")]
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
    /// Where this version stands on its chain of deltas (not stored: read off the chain).
    #[serde(skip)]
    pub chain: Chain,
}

/// A version's place on its chain: the checkpoint it builds on and what was written since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// The checkpoint version the chain starts at.
    pub checkpoint: u64,
    /// Size of that checkpoint, bytes.
    pub checkpoint_bytes: u64,
    /// Deltas after the checkpoint, up to this version.
    pub deltas: u64,
    /// Their size together, bytes.
    pub delta_bytes: u64,
}

fn first_format() -> u32 {
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

/// A version as stored: a checkpoint has the file lists, a delta has `delta` instead.
#[derive(Deserialize)]
struct Stored {
    #[serde(default = "first_format")]
    format: u32,
    version: u64,
    events: Option<Vec<FileEntry>>,
    groups: Option<Vec<FileEntry>>,
    #[serde(default)]
    warnings: Vec<FileEntry>,
    #[serde(default)]
    numbers: Vec<FileEntry>,
    delta: Option<Delta>,
}

/// What a delta version changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Delta {
    /// The checkpoint its chain starts at.
    checkpoint: u64,
    /// Paths of files no longer live (any table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<Added>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<Added>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<Added>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    numbers: Vec<Added>,
}

/// A file a delta adds, and where in its table's list: after the file `after` (the list's
/// start when `None`), which is a file kept from before or one added ahead of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Added {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<String>,
    file: FileEntry,
}

/// A delta version as written.
#[derive(Serialize)]
struct DeltaVersion<'a> {
    format: u32,
    version: u64,
    delta: &'a Delta,
}

/// The delta that turns the list `base` into `next`, as far as additions in place and
/// removals can (the caller checks that applying it gives `next`).
fn diff_list(base: &[FileEntry], next: &[FileEntry], removed: &mut Vec<String>) -> Vec<Added> {
    let kept: HashMap<&str, &FileEntry> = base.iter().map(|f| (f.path.as_str(), f)).collect();
    let live: HashSet<&str> = next.iter().map(|f| f.path.as_str()).collect();
    removed.extend(
        base.iter()
            .filter(|f| !live.contains(f.path.as_str()))
            .map(|f| f.path.clone()),
    );
    let mut added = Vec::new();
    for (i, f) in next.iter().enumerate() {
        match kept.get(f.path.as_str()) {
            Some(old) if *old == f => {}
            Some(_) => {
                // The same path with other figures: remove it, add it again.
                removed.push(f.path.clone());
                added.push(Added {
                    after: i.checked_sub(1).map(|p| next[p].path.clone()),
                    file: f.clone(),
                });
            }
            None => added.push(Added {
                after: i.checked_sub(1).map(|p| next[p].path.clone()),
                file: f.clone(),
            }),
        }
    }
    added
}

/// `base` without the `removed` files, with `added` put in place; `None` when an addition's
/// place is not in the list (a corrupt or mismatched delta).
fn apply_list(
    base: &[FileEntry],
    removed: &HashSet<&str>,
    added: &[Added],
) -> Option<Vec<FileEntry>> {
    let mut after: HashMap<Option<&str>, &FileEntry> = HashMap::with_capacity(added.len());
    for a in added {
        if after.insert(a.after.as_deref(), &a.file).is_some() {
            return None;
        }
    }
    /// Pushes the additions that follow `at`, one after another.
    fn follow<'a>(
        after: &HashMap<Option<&'a str>, &'a FileEntry>,
        mut at: Option<&'a str>,
        out: &mut Vec<FileEntry>,
    ) {
        while let Some(f) = after.get(&at) {
            out.push((*f).clone());
            at = Some(f.path.as_str());
        }
    }
    let mut out = Vec::with_capacity(base.len() + added.len());
    follow(&after, None, &mut out);
    for f in base.iter().filter(|f| !removed.contains(f.path.as_str())) {
        out.push(f.clone());
        follow(&after, Some(f.path.as_str()), &mut out);
    }
    let kept = base
        .iter()
        .filter(|f| !removed.contains(f.path.as_str()))
        .count();
    (out.len() == kept + added.len()).then_some(out)
}

impl Delta {
    /// The delta from `base` to `next`, if applying it gives `next` exactly.
    fn between(base: &Catalog, next: &Catalog) -> Option<Delta> {
        let mut removed = Vec::new();
        let delta = Delta {
            checkpoint: base.chain.checkpoint,
            events: diff_list(&base.events, &next.events, &mut removed),
            groups: diff_list(&base.groups, &next.groups, &mut removed),
            warnings: diff_list(&base.warnings, &next.warnings, &mut removed),
            numbers: diff_list(&base.numbers, &next.numbers, &mut removed),
            removed,
        };
        let applied = delta.apply(base, next.version)?;
        (applied.events == next.events
            && applied.groups == next.groups
            && applied.warnings == next.warnings
            && applied.numbers == next.numbers)
            .then_some(delta)
    }

    /// `base` changed by this delta into `version`; `None` when it does not fit `base`.
    fn apply(&self, base: &Catalog, version: u64) -> Option<Catalog> {
        let removed: HashSet<&str> = self.removed.iter().map(String::as_str).collect();
        Some(Catalog {
            format: FORMAT,
            version,
            events: apply_list(&base.events, &removed, &self.events)?,
            groups: apply_list(&base.groups, &removed, &self.groups)?,
            warnings: apply_list(&base.warnings, &removed, &self.warnings)?,
            numbers: apply_list(&base.numbers, &removed, &self.numbers)?,
            chain: base.chain.clone(),
        })
    }
}

/// Reads one stored version; `None` when it is gone (pruned since it was listed).
async fn read_version(
    storage: &Storage,
    project: ProjectId,
    version: u64,
) -> Result<Option<(Stored, u64)>> {
    let path = layout::catalog_version(project, version);
    let Some(bytes) = storage.get_opt(&path).await? else {
        return Ok(None);
    };
    let stored: Stored = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(path.to_string(), e.to_string()))?;
    if stored.version != version {
        return Err(Error::corrupt(
            path.to_string(),
            format!("names version {}", stored.version),
        ));
    }
    Ok(Some((stored, bytes.len() as u64)))
}

/// The catalog of a checkpoint version.
fn checkpoint_of(stored: Stored, bytes: u64, project: ProjectId) -> Result<Catalog> {
    let path = || layout::catalog_version(project, stored.version).to_string();
    let (Some(events), Some(groups)) = (stored.events, stored.groups) else {
        return Err(Error::corrupt(path(), "neither a checkpoint nor a delta"));
    };
    Ok(Catalog {
        format: stored.format,
        version: stored.version,
        events,
        groups,
        warnings: stored.warnings,
        numbers: stored.numbers,
        chain: Chain {
            checkpoint: stored.version,
            checkpoint_bytes: bytes,
            deltas: 0,
            delta_bytes: 0,
        },
    })
}

/// The catalog of version `latest`, a delta at the end of its chain; `None` when a version
/// of the chain was pruned while it was read.
async fn load_chain(
    storage: &Storage,
    project: ProjectId,
    latest: u64,
    last: Delta,
    last_bytes: u64,
) -> Result<Option<Catalog>> {
    let corrupt =
        |v: u64, what: &str| Error::corrupt(layout::catalog_version(project, v).to_string(), what);
    if last.checkpoint >= latest || latest - last.checkpoint > MAX_DELTAS {
        return Err(corrupt(latest, "names a checkpoint outside its chain"));
    }
    let mut earlier = futures::stream::iter(last.checkpoint..latest)
        .map(|v| read_version(storage, project, v))
        .buffered(READS_IN_FLIGHT);
    let Some((first, first_bytes)) = earlier.next().await.transpose()?.flatten() else {
        return Ok(None);
    };
    if first.delta.is_some() {
        return Err(corrupt(
            last.checkpoint,
            "a delta where its chain has a checkpoint",
        ));
    }
    let mut catalog = checkpoint_of(first, first_bytes, project)?;
    let step = |catalog: &mut Catalog, delta: &Delta, version: u64, bytes: u64| {
        if delta.checkpoint != last.checkpoint {
            return Err(corrupt(version, "a delta of another chain"));
        }
        let mut next = delta
            .apply(catalog, version)
            .ok_or_else(|| corrupt(version, "a delta that does not fit the version before it"))?;
        next.chain.deltas += 1;
        next.chain.delta_bytes += bytes;
        *catalog = next;
        Ok(())
    };
    while let Some(read) = earlier.next().await {
        let Some((stored, bytes)) = read? else {
            return Ok(None);
        };
        let delta = stored
            .delta
            .ok_or_else(|| corrupt(stored.version, "a checkpoint inside a chain of deltas"))?;
        step(&mut catalog, &delta, stored.version, bytes)?;
    }
    step(&mut catalog, &last, latest, last_bytes)?;
    Ok(Some(catalog))
}

/// Loads the newest catalog version of a project (version 0 when there is none).
pub async fn load_latest(storage: &Storage, project: ProjectId) -> Result<Catalog> {
    for _attempt in 0..5 {
        let Some(latest) = storage
            .list(&layout::catalog_dir(project))
            .await?
            .iter()
            .filter_map(|m| layout::parse_catalog_version(&m.location))
            .max()
        else {
            return Ok(Catalog {
                format: FORMAT,
                ..Default::default()
            });
        };
        // Pruned between list and get: list again.
        let Some((stored, bytes)) = read_version(storage, project, latest).await? else {
            continue;
        };
        let catalog = match stored.delta {
            None => Some(checkpoint_of(stored, bytes, project)?),
            Some(delta) => load_chain(storage, project, latest, delta, bytes).await?,
        };
        if let Some(catalog) = catalog {
            return Ok(catalog);
        }
    }
    Err(Error::corrupt(
        format!("catalog of project {project}"),
        "versions kept disappearing while reading",
    ))
}

/// Commits `next`, which must be `base`'s version plus one, as a delta or a checkpoint (see
/// the module doc), and records where it stands on its chain in `next.chain`; then prunes
/// old versions. Once the version is written the commit has happened: a failure to prune is
/// logged, not returned (a caller that took an error for "not committed" would throw away
/// files the new version names).
pub async fn commit(
    storage: &Storage,
    project: ProjectId,
    base: &Catalog,
    next: &mut Catalog,
) -> Result<()> {
    if next.version != base.version + 1 {
        return Err(Error::corrupt(
            "catalog",
            format!("version {} committed on {}", next.version, base.version),
        ));
    }
    let encode = |e: serde_json::Error| Error::corrupt("catalog", e.to_string());
    let delta = (base.version > 0 && base.chain.deltas < MAX_DELTAS)
        .then(|| Delta::between(base, next))
        .flatten()
        .map(|delta| {
            serde_json::to_vec(&DeltaVersion {
                format: FORMAT,
                version: next.version,
                delta: &delta,
            })
        })
        .transpose()
        .map_err(encode)?
        .filter(|bytes| base.chain.delta_bytes + bytes.len() as u64 <= base.chain.checkpoint_bytes);
    let (bytes, chain) = match delta {
        Some(bytes) => {
            let chain = Chain {
                deltas: base.chain.deltas + 1,
                delta_bytes: base.chain.delta_bytes + bytes.len() as u64,
                ..base.chain.clone()
            };
            (bytes, chain)
        }
        None => {
            next.format = FORMAT;
            let bytes = serde_json::to_vec(&*next).map_err(encode)?;
            let chain = Chain {
                checkpoint: next.version,
                checkpoint_bytes: bytes.len() as u64,
                deltas: 0,
                delta_bytes: 0,
            };
            (bytes, chain)
        }
    };
    let path = layout::catalog_version(project, next.version);
    if !storage.put_new_durable(&path, Bytes::from(bytes)).await? {
        return Err(Error::CatalogConflict {
            project,
            version: next.version,
        });
    }
    next.format = FORMAT;
    next.chain = chain;
    let keep_from = next
        .chain
        .checkpoint
        .min(next.version.saturating_sub(KEEP_VERSIONS));
    if keep_from > 1
        && let Err(e) = prune(storage, project, keep_from).await
    {
        tracing::warn!(project, error = %e, "pruning old catalog versions failed; the next commit retries");
    }
    Ok(())
}

/// Deletes the versions before `keep_from`.
async fn prune(storage: &Storage, project: ProjectId, keep_from: u64) -> Result<()> {
    let mut old: Vec<_> = storage
        .list(&layout::catalog_dir(project))
        .await?
        .into_iter()
        .filter(|m| layout::parse_catalog_version(&m.location).is_some_and(|v| v < keep_from))
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

    fn file(path: &str, rows: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            rows,
            bytes: 1,
            day: Some("2024-01-01".into()),
            min_ts: Some(0),
            max_ts: Some(1),
            numbered: rows.is_multiple_of(2),
        }
    }

    async fn versions(storage: &Storage, project: ProjectId) -> Vec<(u64, serde_json::Value)> {
        let mut out = Vec::new();
        for m in storage
            .list(&layout::catalog_dir(project))
            .await
            .expect("list")
        {
            let v = layout::parse_catalog_version(&m.location).expect("version");
            let bytes = storage
                .get_opt(&m.location)
                .await
                .expect("get")
                .expect("there");
            out.push((v, serde_json::from_slice(&bytes).expect("json")));
        }
        out.sort_by_key(|(v, _)| *v);
        out
    }

    /// Commits `change` of the newest catalog; checks the stored one reads back the same.
    async fn step(storage: &Storage, c: &mut Catalog, change: impl FnOnce(&mut Catalog)) {
        let mut next = c.clone();
        next.version += 1;
        change(&mut next);
        commit(storage, 1, c, &mut next).await.expect("commit");
        assert_eq!(load_latest(storage, 1).await.expect("load"), next);
        *c = next;
    }

    #[tokio::test]
    async fn versions_advance_conflicts_are_refused_and_old_ones_pruned() {
        let storage = Storage::open("memory://").expect("memory");
        assert_eq!(load_latest(&storage, 1).await.expect("empty").version, 0);
        let mut c = Catalog::default();
        for v in 1..=10 {
            step(&storage, &mut c, |n| {
                n.events.push(file(&format!("f{v}"), v))
            })
            .await;
        }
        assert_eq!(c.event_rows(), 55);
        let base = Catalog {
            version: 9,
            ..c.clone()
        };
        assert!(matches!(
            commit(&storage, 1, &base, &mut c.clone()).await,
            Err(Error::CatalogConflict { version: 10, .. })
        ));
        let kept = versions(&storage, 1).await;
        assert!(kept.first().expect("some").0 <= 10 - KEEP_VERSIONS);
        assert!(
            kept.iter()
                .all(|(v, _)| *v >= c.chain.checkpoint.min(10 - KEEP_VERSIONS)),
            "{kept:?}"
        );
        assert_eq!(load_latest(&storage, 2).await.expect("other").version, 0);
    }

    #[tokio::test]
    async fn a_big_catalog_commits_deltas_and_checkpoints_when_they_outgrow_it() {
        let storage = Storage::open("memory://").expect("memory");
        let mut c = Catalog::default();
        step(&storage, &mut c, |n| {
            n.events = (0..500).map(|i| file(&format!("e{i}"), i)).collect();
            n.groups = vec![file("g0", 1)];
        })
        .await;
        assert_eq!(c.chain.checkpoint, 1);
        let full = c.chain.checkpoint_bytes;
        // A flush: two day files, a groups file, an actor-numbers file.
        step(&storage, &mut c, |n| {
            n.events.extend([file("e500", 1), file("e501", 2)]);
            n.groups.push(file("g1", 1));
            n.numbers.push(file("n0", 3));
        })
        .await;
        assert_eq!((c.chain.checkpoint, c.chain.deltas), (1, 1));
        assert!(
            c.chain.delta_bytes * 50 < full,
            "{} of {full}",
            c.chain.delta_bytes
        );
        // A compaction: three files merged in place of the first, one in the middle.
        step(&storage, &mut c, |n| {
            n.events
                .retain(|f| !["e10", "e11", "e250"].contains(&f.path.as_str()));
            n.events.insert(10, file("m0", 7));
        })
        .await;
        // The same path with other figures, and a file added at the very start.
        step(&storage, &mut c, |n| {
            n.events[3].rows = 1000;
            n.events.insert(0, file("first", 1));
        })
        .await;
        assert_eq!(c.chain.deltas, 3);
        let stored = versions(&storage, 1).await;
        let (_, last) = stored.last().expect("newest");
        assert!(
            last.get("events").is_none() && last.get("groups").is_none(),
            "{last}"
        );
        assert!(last.get("delta").is_some());
        // Flushes of 50 files each: the deltas outgrow the checkpoint, so one comes.
        let mut next_file = 0;
        for _ in 0..12 {
            step(&storage, &mut c, |n| {
                for _ in 0..50 {
                    n.events.push(file(&format!("x{next_file}"), 1));
                    next_file += 1;
                }
            })
            .await;
        }
        assert!(c.chain.checkpoint > 1, "{:?}", c.chain);
        assert!(c.chain.delta_bytes <= c.chain.checkpoint_bytes);
        // Old chains are pruned; what is kept still loads.
        let kept = versions(&storage, 1).await;
        assert!(kept.first().expect("some").0 > 1, "pruned");
        assert_eq!(load_latest(&storage, 1).await.expect("load"), c);
    }

    #[tokio::test]
    async fn a_chain_is_at_most_max_deltas_long() {
        let storage = Storage::open("memory://").expect("memory");
        let mut c = Catalog::default();
        step(&storage, &mut c, |n| {
            n.events = (0..2000).map(|i| file(&format!("e{i}"), i)).collect();
        })
        .await;
        for v in 0..MAX_DELTAS + 2 {
            step(&storage, &mut c, |n| {
                n.warnings.push(file(&format!("w{v}"), 1))
            })
            .await;
            assert!(c.chain.deltas <= MAX_DELTAS);
        }
        assert_eq!(c.chain.checkpoint, MAX_DELTAS + 2);
        assert_eq!(c.chain.deltas, 1);
    }

    #[tokio::test]
    async fn format_one_versions_read_as_checkpoints() {
        let storage = Storage::open("memory://").expect("memory");
        let old = r#"{"format":1,"version":7,"events":[{"path":"a","rows":3,"bytes":9,"day":"2024-01-01","min_ts":1,"max_ts":2,"numbered":true}],"groups":[{"path":"g","rows":1,"bytes":2}]}"#;
        storage
            .put_new_durable(&layout::catalog_version(1, 7), Bytes::from(old))
            .await
            .expect("put");
        let c = load_latest(&storage, 1).await.expect("load");
        assert_eq!((c.format, c.version, c.event_rows()), (1, 7, 3));
        assert_eq!(c.chain.checkpoint, 7);
        assert_eq!(c.groups[0].path, "g");
        // A bigger one as format 1 wrote it (the same fields); the next commit builds its
        // chain on it.
        let mut old = Catalog {
            format: 1,
            version: 8,
            events: (0..50).map(|i| file(&format!("e{i}"), i)).collect(),
            ..c
        };
        let bytes = serde_json::to_vec(&old).expect("json");
        storage
            .put_new_durable(&layout::catalog_version(1, 8), Bytes::from(bytes))
            .await
            .expect("put");
        old.chain = load_latest(&storage, 1).await.expect("load").chain;
        assert_eq!(load_latest(&storage, 1).await.expect("load"), old);
        let mut c = old;
        step(&storage, &mut c, |n| n.events.push(file("b", 4))).await;
        assert_eq!((c.chain.checkpoint, c.chain.deltas), (8, 1));
    }

    #[tokio::test]
    async fn a_delta_that_does_not_fit_is_refused_as_corrupt() {
        let storage = Storage::open("memory://").expect("memory");
        let mut c = Catalog::default();
        step(&storage, &mut c, |n| {
            n.events = (0..100).map(|i| file(&format!("e{i}"), i)).collect();
        })
        .await;
        let bad = r#"{"format":2,"version":2,"delta":{"checkpoint":1,"events":[{"after":"nowhere","file":{"path":"z","rows":1,"bytes":1}}]}}"#;
        storage
            .put_new_durable(&layout::catalog_version(1, 2), Bytes::from(bad))
            .await
            .expect("put");
        let err = load_latest(&storage, 1).await.expect_err("corrupt");
        assert!(err.to_string().contains("does not fit"), "{err}");
        let other_chain = r#"{"format":2,"version":3,"delta":{"checkpoint":2}}"#;
        storage
            .put_new_durable(&layout::catalog_version(1, 3), Bytes::from(other_chain))
            .await
            .expect("put");
        let err = load_latest(&storage, 1).await.expect_err("corrupt");
        assert!(err.to_string().contains("delta where its chain"), "{err}");
    }
}
