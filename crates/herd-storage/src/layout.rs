//! Object paths of design §2. Every path herd writes is built here and nowhere else.
//!
//! ```text
//! <root>/
//!   catalog/<project>/<version:020>.json     live files of a project's tables
//!   projects/<project>/project.json          name, token, secret key
//!   projects/<project>/group_types.json      {"company": 0, …}
//!   projects/<project>/events/date=YYYY-MM-DD/<uuidv7>.parquet
//!   projects/<project>/groups/<uuidv7>.parquet
//!   projects/<project>/warnings/<uuidv7>.parquet
//!   …/.<uuidv7>.parquet.pending              written, not yet committed (or not yet renamed)
//!   …/.<uuidv7>.parquet.retired              merged away, kept for queries still reading it
//! ```
//!
//! A folder's `*.parquet` files are live files of the newest catalog version (all of them,
//! but for the moment of a commit's renames), so an outside engine that globs them (DuckDB
//! `read_parquet('…/events/**/*.parquet')`, ClickHouse `file(…)`, Spark, which also skips
//! dot-files) reads the live table: a data file is written as its *pending twin*, renamed to
//! its name once the catalog version naming it is committed, and renamed to its *retired
//! twin* when compaction merges it away.

use herd_core::ProjectId;
use object_store::path::Path;

/// Folder of a project's catalog versions.
pub fn catalog_dir(project: ProjectId) -> Path {
    Path::from(format!("catalog/{project}"))
}

/// One catalog version of a project.
pub fn catalog_version(project: ProjectId, version: u64) -> Path {
    Path::from(format!("catalog/{project}/{version:020}.json"))
}

/// Parses the version out of a catalog version path's file name.
pub fn parse_catalog_version(path: &Path) -> Option<u64> {
    path.filename()?.strip_suffix(".json")?.parse().ok()
}

/// The folder holding every project.
pub fn projects_dir() -> Path {
    Path::from("projects")
}

/// A project's descriptor.
pub fn project_file(project: ProjectId) -> Path {
    Path::from(format!("projects/{project}/project.json"))
}

/// A project's group-type mapping.
pub fn group_types_file(project: ProjectId) -> Path {
    Path::from(format!("projects/{project}/group_types.json"))
}

/// Which twin of a data file a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Twin {
    /// Written, waiting for its catalog commit.
    Pending,
    /// Merged away by compaction.
    Retired,
}

impl Twin {
    fn suffix(self) -> &'static str {
        match self {
            Twin::Pending => ".pending",
            Twin::Retired => ".retired",
        }
    }
}

/// The `twin` of the data file `path`: `<dir>/.<name><suffix>`.
pub fn twin(path: &Path, twin: Twin) -> Path {
    let text = path.as_ref();
    let (dir, name) = text.rsplit_once('/').unwrap_or(("", text));
    let hidden = format!(".{name}{}", twin.suffix());
    if dir.is_empty() {
        Path::from(hidden)
    } else {
        Path::from(format!("{dir}/{hidden}"))
    }
}

/// The data file a twin path stands for, and which twin it is (`None` for other paths).
pub fn twin_of(path: &Path) -> Option<(Path, Twin)> {
    let text = path.as_ref();
    let (dir, name) = text.rsplit_once('/').unwrap_or(("", text));
    let name = name.strip_prefix('.')?;
    let (live, which) = [Twin::Pending, Twin::Retired]
        .into_iter()
        .find_map(|t| name.strip_suffix(t.suffix()).map(|n| (n, t)))?;
    if !live.ends_with(".parquet") {
        return None;
    }
    let live = if dir.is_empty() {
        Path::from(live)
    } else {
        Path::from(format!("{dir}/{live}"))
    };
    Some((live, which))
}

/// A new events file for a day partition (`YYYY-MM-DD`).
pub fn new_events_file(project: ProjectId, day: &str) -> Path {
    Path::from(format!(
        "projects/{project}/events/date={day}/{}.parquet",
        uuid::Uuid::now_v7()
    ))
}

/// A new groups file.
pub fn new_groups_file(project: ProjectId) -> Path {
    Path::from(format!(
        "projects/{project}/groups/{}.parquet",
        uuid::Uuid::now_v7()
    ))
}

/// A new actor-numbers file.
pub fn new_numbers_file(project: ProjectId) -> Path {
    Path::from(format!(
        "projects/{project}/numbers/{}.parquet",
        uuid::Uuid::now_v7()
    ))
}

/// A new ingestion-warnings file.
pub fn new_warnings_file(project: ProjectId) -> Path {
    Path::from(format!(
        "projects/{project}/warnings/{}.parquet",
        uuid::Uuid::now_v7()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_hide_from_parquet_globs_and_map_back() {
        let live = Path::from("projects/1/events/date=2024-01-02/0190.parquet");
        let pending = twin(&live, Twin::Pending);
        assert_eq!(
            pending.as_ref(),
            "projects/1/events/date=2024-01-02/.0190.parquet.pending"
        );
        assert!(!pending.as_ref().ends_with(".parquet"));
        assert_eq!(twin_of(&pending), Some((live.clone(), Twin::Pending)));
        let retired = twin(&live, Twin::Retired);
        assert_eq!(twin_of(&retired), Some((live.clone(), Twin::Retired)));
        assert_eq!(twin_of(&live), None);
        assert_eq!(twin_of(&Path::from("a/.x.json.pending")), None);
        assert_eq!(
            twin(&Path::from("x.parquet"), Twin::Retired).as_ref(),
            ".x.parquet.retired"
        );
    }

    #[test]
    fn catalog_versions_sort_and_parse() {
        let p = catalog_version(3, 12);
        assert_eq!(p.as_ref(), "catalog/3/00000000000000000012.json");
        assert_eq!(parse_catalog_version(&p), Some(12));
        assert!(catalog_version(3, 9).as_ref() < catalog_version(3, 10).as_ref());
        assert!(
            new_events_file(1, "2024-01-02")
                .as_ref()
                .starts_with("projects/1/events/date=2024-01-02/")
        );
    }
}
