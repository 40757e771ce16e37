//! Durable per-project flag definitions: `<data dir>/flags/<project id>.json`.
//!
//! Each project's flags are one JSON document, replaced whole on every change:
//!
//! ```text
//!   write <id>.json.tmp ─► fsync file ─► rename over <id>.json ─► fsync dir ─► publish
//! ```
//!
//! A crash leaves either the old or the new file under `<id>.json`, never a mix; a torn
//! `.tmp` from an interrupted write is deleted on open. Memory is updated only after the
//! rename is durable, so a failed write leaves the store as it was. Writers are serialised;
//! readers take an `Arc` snapshot and never wait for disk.
//!
//! The file carries `"format": 1` and its project id. Ids are assigned from a per-project
//! counter that is persisted and never goes back, so a deleted flag's id is never reused.
//! Each change bumps the project's `revision`; `etag` is the SHA-1 of the serialised flags.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::definition::{FeatureFlag, GroupTypes};
use crate::{Error, Result};

/// A project's numeric id (the same as herd-core's `ProjectId`).
pub type ProjectId = u64;

/// Version of the file layout.
const FORMAT: u32 = 1;

const TMP_SUFFIX: &str = ".json.tmp";

/// What `<project>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FlagFile {
    format: u32,
    project_id: ProjectId,
    /// The next id to assign.
    next_id: u64,
    /// Bumped on every change.
    revision: u64,
    flags: Vec<FeatureFlag>,
}

/// One project's flags at one revision; cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Bumped by every create, update and delete; 0 for a project without flags yet.
    pub revision: u64,
    /// Hex SHA-1 of the serialised flags: equal tags, equal definitions.
    pub etag: String,
    /// The flags, in id order.
    pub flags: Arc<[FeatureFlag]>,
}

impl Snapshot {
    fn new(revision: u64, flags: Vec<FeatureFlag>) -> Self {
        let etag = crate::hash::sha1_hex(&serde_json::to_vec(&flags).unwrap_or_default());
        Self {
            revision,
            etag,
            flags: flags.into(),
        }
    }

    /// The flag with this id.
    pub fn get(&self, id: u64) -> Option<&FeatureFlag> {
        self.flags.iter().find(|f| f.id == id)
    }

    /// The flag with this key.
    pub fn get_by_key(&self, key: &str) -> Option<&FeatureFlag> {
        self.flags.iter().find(|f| f.key == key)
    }
}

#[derive(Debug, Clone)]
struct ProjectState {
    next_id: u64,
    snapshot: Snapshot,
}

impl ProjectState {
    fn empty() -> Self {
        Self {
            next_id: 1,
            snapshot: Snapshot::new(0, Vec::new()),
        }
    }
}

/// Flag definitions of every project, kept in memory and on disk.
#[derive(Debug)]
pub struct FlagStore {
    dir: PathBuf,
    state: RwLock<BTreeMap<ProjectId, ProjectState>>,
    /// Held for a whole read-modify-persist-publish cycle.
    writer: Mutex<()>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

impl FlagStore {
    /// Opens (creating it if needed) `<data_dir>/flags` and loads every project's flags.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("flags");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let mut projects = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(TMP_SUFFIX) {
                // An interrupted write: the rename never happened, the .json is intact.
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            let Some(project) = name
                .strip_suffix(".json")
                .and_then(|id| id.parse::<ProjectId>().ok())
            else {
                continue;
            };
            projects.insert(project, load(&path, project)?);
        }
        Ok(Self {
            dir,
            state: RwLock::new(projects),
            writer: Mutex::new(()),
        })
    }

    /// The folder the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The project's flags now (empty, revision 0, for a project without any).
    pub fn snapshot(&self, project: ProjectId) -> Snapshot {
        self.state
            .read()
            .get(&project)
            .map(|p| p.snapshot.clone())
            .unwrap_or_else(|| ProjectState::empty().snapshot)
    }

    /// The project's flags, in id order.
    pub fn list(&self, project: ProjectId) -> Vec<FeatureFlag> {
        self.snapshot(project).flags.to_vec()
    }

    /// One flag by id.
    pub fn get(&self, project: ProjectId, id: u64) -> Option<FeatureFlag> {
        self.snapshot(project).get(id).cloned()
    }

    /// One flag by key.
    pub fn get_by_key(&self, project: ProjectId, key: &str) -> Option<FeatureFlag> {
        self.snapshot(project).get_by_key(key).cloned()
    }

    /// Adds a flag: validated against `groups`, payloads normalised to JSON text, a new id,
    /// version 1, `team_id` = project. Fails on a key the project already has.
    pub fn create(
        &self,
        project: ProjectId,
        flag: FeatureFlag,
        groups: &GroupTypes,
    ) -> Result<FeatureFlag> {
        self.modify(project, |next_id, flags| {
            let mut flag = flag.normalized();
            flag.id = *next_id;
            flag.team_id = project;
            flag.version = 1;
            flag.deleted = false;
            check(&flag, project, flags, groups)?;
            *next_id += 1;
            flags.push(flag.clone());
            Ok(flag)
        })
    }

    /// Replaces flag `id`'s definition; the id and project stay, the version goes up by one.
    pub fn update(
        &self,
        project: ProjectId,
        id: u64,
        flag: FeatureFlag,
        groups: &GroupTypes,
    ) -> Result<FeatureFlag> {
        self.modify(project, |_, flags| {
            let at = flags
                .iter()
                .position(|f| f.id == id)
                .ok_or(Error::NotFound { project, id })?;
            let mut flag = flag.normalized();
            flag.id = id;
            flag.team_id = project;
            flag.version = flags[at].version.saturating_add(1);
            flag.deleted = false;
            check(&flag, project, flags, groups)?;
            flags[at] = flag.clone();
            Ok(flag)
        })
    }

    /// Removes flag `id` and returns it. Its id is not reused.
    pub fn delete(&self, project: ProjectId, id: u64) -> Result<FeatureFlag> {
        self.modify(project, |_, flags| {
            let at = flags
                .iter()
                .position(|f| f.id == id)
                .ok_or(Error::NotFound { project, id })?;
            Ok(flags.remove(at))
        })
    }

    /// Runs `change` on a copy of the project's flags, persists the result durably, then
    /// publishes it. Nothing changes when `change` or the write fails.
    fn modify<T>(
        &self,
        project: ProjectId,
        change: impl FnOnce(&mut u64, &mut Vec<FeatureFlag>) -> Result<T>,
    ) -> Result<T> {
        let _writer = self.writer.lock();
        let current = self
            .state
            .read()
            .get(&project)
            .cloned()
            .unwrap_or_else(ProjectState::empty);
        let mut next_id = current.next_id;
        let mut flags = current.snapshot.flags.to_vec();
        let out = change(&mut next_id, &mut flags)?;
        let revision = current.snapshot.revision + 1;
        let file = FlagFile {
            format: FORMAT,
            project_id: project,
            next_id,
            revision,
            flags,
        };
        self.persist(&file)?;
        self.state.write().insert(
            project,
            ProjectState {
                next_id,
                snapshot: Snapshot::new(revision, file.flags),
            },
        );
        Ok(out)
    }

    fn persist(&self, file: &FlagFile) -> Result<()> {
        let path = self.dir.join(format!("{}.json", file.project_id));
        let tmp = self.dir.join(format!("{}{TMP_SUFFIX}", file.project_id));
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| Error::Corrupt {
            path: path.clone(),
            message: format!("cannot serialise: {e}"),
        })?;
        let mut out = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        out.write_all(&bytes).map_err(io_err("write", &tmp))?;
        out.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(out);
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir)
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    let d = fs::File::open(dir).map_err(io_err("open", dir))?;
    d.sync_all().map_err(io_err("fsync", dir))
}

/// Validation and key uniqueness for a flag about to be stored among `flags`.
fn check(
    flag: &FeatureFlag,
    project: ProjectId,
    flags: &[FeatureFlag],
    groups: &GroupTypes,
) -> Result<()> {
    flag.validate(groups).map_err(|source| Error::InvalidFlag {
        key: flag.key.clone(),
        source,
    })?;
    if flags.iter().any(|f| f.key == flag.key && f.id != flag.id) {
        return Err(Error::DuplicateKey {
            project,
            key: flag.key.clone(),
        });
    }
    Ok(())
}

fn load(path: &Path, project: ProjectId) -> Result<ProjectState> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    let corrupt = |message: String| Error::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let file: FlagFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.format != FORMAT {
        return Err(corrupt(format!(
            "format {} is not supported (this herd reads format {FORMAT})",
            file.format
        )));
    }
    if file.project_id != project {
        return Err(corrupt(format!(
            "holds project {} but is named for project {project}",
            file.project_id
        )));
    }
    if let Some(f) = file.flags.iter().find(|f| f.id >= file.next_id) {
        return Err(corrupt(format!(
            "flag id {} is not below next_id {}",
            f.id, file.next_id
        )));
    }
    Ok(ProjectState {
        next_id: file.next_id,
        snapshot: Snapshot::new(file.revision, file.flags),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::definition::{Condition, PropertyFilter};

    fn groups() -> GroupTypes {
        GroupTypes::new([("company", 0)])
    }

    fn flag(key: &str) -> FeatureFlag {
        let mut f = FeatureFlag::new(key);
        f.filters.groups.push(Condition {
            rollout_percentage: Some(50.0),
            ..Condition::default()
        });
        f
    }

    #[test]
    fn crud_round_trip_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FlagStore::open(dir.path()).unwrap();
        assert_eq!(store.snapshot(7).revision, 0);
        let a = store.create(7, flag("a"), &groups()).unwrap();
        let b = store.create(7, flag("b"), &groups()).unwrap();
        let other = store.create(8, flag("a"), &groups()).unwrap();
        assert_eq!((a.id, b.id, other.id), (1, 2, 1));
        assert_eq!(a.team_id, 7);
        assert_eq!(a.version, 1);

        let mut changed = b.clone();
        changed.name = "renamed".into();
        changed
            .filters
            .payloads
            .insert("true".into(), json!({"x": 1}));
        let b2 = store.update(7, b.id, changed, &groups()).unwrap();
        assert_eq!(b2.version, 2);
        assert_eq!(b2.filters.payloads["true"], json!("{\"x\":1}"));
        store.delete(7, a.id).unwrap();
        let before = store.snapshot(7);
        assert_eq!(before.revision, 4);
        drop(store);

        let store = FlagStore::open(dir.path()).unwrap();
        let after = store.snapshot(7);
        assert_eq!(after, before);
        assert_eq!(store.list(7), vec![b2.clone()]);
        assert_eq!(store.get(7, b.id), Some(b2.clone()));
        assert_eq!(store.get_by_key(7, "b"), Some(b2));
        assert_eq!(store.get(7, a.id), None);
        assert_eq!(store.list(8).len(), 1);
        // Ids keep counting after a delete and a reopen.
        assert_eq!(store.create(7, flag("c"), &groups()).unwrap().id, 3);
        assert_eq!(store.create(7, flag("a"), &groups()).unwrap().id, 4);
    }

    #[test]
    fn etag_follows_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = FlagStore::open(dir.path()).unwrap();
        let empty = store.snapshot(1).etag;
        let f = store.create(1, flag("a"), &groups()).unwrap();
        let one = store.snapshot(1).etag;
        assert_ne!(empty, one);
        store.update(1, f.id, flag("a"), &groups()).unwrap();
        // The version moved, so the definitions (and tag) did too.
        assert_ne!(store.snapshot(1).etag, one);
        assert_eq!(store.snapshot(1).etag.len(), 40);
    }

    #[test]
    fn torn_temp_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = FlagStore::open(dir.path()).unwrap();
        store.create(3, flag("a"), &groups()).unwrap();
        let before = store.snapshot(3);
        drop(store);
        // A crash half-way through the next write.
        let tmp = dir.path().join("flags").join("3.json.tmp");
        fs::write(
            &tmp,
            b"{\"format\": 1, \"project_id\": 3, \"next_id\": 2, \"fla",
        )
        .unwrap();
        let store = FlagStore::open(dir.path()).unwrap();
        assert_eq!(store.snapshot(3), before);
        assert!(!tmp.exists());
        store.create(3, flag("b"), &groups()).unwrap();
        assert_eq!(store.list(3).len(), 2);
    }

    #[test]
    fn corrupt_files_refuse_to_open_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let flags_dir = dir.path().join("flags");
        fs::create_dir_all(&flags_dir).unwrap();
        fs::write(flags_dir.join("5.json"), b"{not json").unwrap();
        let err = FlagStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("corrupt flag file "), "{err}");
        assert!(err.contains("5.json"), "{err}");

        fs::write(
            flags_dir.join("5.json"),
            br#"{"format": 2, "project_id": 5, "next_id": 1, "revision": 1, "flags": []}"#,
        )
        .unwrap();
        let err = FlagStore::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("format 2 is not supported (this herd reads format 1)"),
            "{err}"
        );

        fs::write(
            flags_dir.join("5.json"),
            br#"{"format": 1, "project_id": 6, "next_id": 1, "revision": 1, "flags": []}"#,
        )
        .unwrap();
        let err = FlagStore::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("holds project 6 but is named for project 5"),
            "{err}"
        );

        // Files that are not a project's are left alone.
        fs::write(
            flags_dir.join("5.json"),
            br#"{"format": 1, "project_id": 5,
            "next_id": 1, "revision": 1, "flags": []}"#,
        )
        .unwrap();
        fs::write(flags_dir.join("README"), b"x").unwrap();
        assert!(FlagStore::open(dir.path()).is_ok());
    }

    #[test]
    fn invalid_duplicate_and_missing_are_refused_without_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = FlagStore::open(dir.path()).unwrap();
        let a = store.create(1, flag("a"), &groups()).unwrap();
        let rev = store.snapshot(1).revision;

        let err = store.create(1, flag("a"), &groups()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "project 1 already has a flag with key \"a\""
        );

        let mut bad = flag("bad");
        bad.filters.groups[0].properties.push(PropertyFilter {
            key: "email".into(),
            value: json!("("),
            operator: Some(crate::Operator::Regex),
            property_type: crate::PropertyType::Person,
            group_type_index: None,
            negation: None,
        });
        let err = store.create(1, bad, &groups()).unwrap_err().to_string();
        assert!(
            err.starts_with("flag \"bad\": filters.groups[0].properties[0].value: invalid regex"),
            "{err}"
        );

        let err = store.update(1, 99, flag("z"), &groups()).unwrap_err();
        assert_eq!(err.to_string(), "project 1 has no flag with id 99");
        assert!(matches!(
            store.delete(1, 99),
            Err(Error::NotFound { id: 99, .. })
        ));

        let b = store.create(1, flag("b"), &groups()).unwrap();
        let err = store.update(1, b.id, flag("a"), &groups()).unwrap_err();
        assert!(matches!(err, Error::DuplicateKey { .. }));
        // Renaming a flag to its own key is fine.
        store.update(1, a.id, flag("a"), &groups()).unwrap();
        assert_eq!(store.snapshot(1).revision, rev + 2);
    }

    #[test]
    fn file_is_readable_json_with_header() {
        let dir = tempfile::tempdir().unwrap();
        let store = FlagStore::open(dir.path()).unwrap();
        store.create(2, flag("a"), &groups()).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("flags/2.json")).unwrap()).unwrap();
        assert_eq!(v["format"], 1);
        assert_eq!(v["project_id"], 2);
        assert_eq!(v["next_id"], 2);
        assert_eq!(v["revision"], 1);
        assert_eq!(v["flags"][0]["key"], "a");
        assert_eq!(
            v["flags"][0]["filters"]["groups"][0]["rollout_percentage"],
            50
        );
    }
}
