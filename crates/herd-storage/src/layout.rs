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
//! ```

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
