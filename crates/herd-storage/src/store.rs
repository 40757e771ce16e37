//! [`Storage`]: one object_store root, opened from a folder path or a URL.
//!
//! A plain path or `file://` URL is a local folder (created if missing); `memory://` an
//! in-process store for tests; `s3://bucket/prefix` an S3-compatible store configured from the
//! usual `AWS_*` environment variables. On a local folder, [`Storage::put_durable`] also
//! fsyncs the file and its folder, so that deleting WAL segments after a flush is safe.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::layout::{Twin, twin};
use crate::twin_store::TwinStore;
use crate::{Error, Result};

/// An object store and, when it is a local folder, that folder.
#[derive(Debug, Clone)]
pub struct Storage {
    /// Reads fall back to a data file's twins ([`TwinStore`]).
    store: Arc<dyn ObjectStore>,
    /// The store itself, for checks that must not see twins.
    raw: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    location: String,
}

impl Storage {
    /// Opens a location: a folder path, `file://…`, `memory://`, or `s3://bucket/prefix`.
    pub fn open(location: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        if location.is_empty() {
            return Err(invalid("empty".into()));
        }
        if location == "memory://" || location.starts_with("memory://") {
            return Ok(Self::with_store(
                Arc::new(InMemory::new()),
                None,
                location.to_string(),
            ));
        }
        if let Some(rest) = location.strip_prefix("s3://") {
            let url = url::Url::parse(location).map_err(|e| invalid(e.to_string()))?;
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| invalid("no bucket".into()))?;
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            let prefix = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
            let prefix = prefix.trim_matches('/');
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, Path::from(prefix)))
            };
            return Ok(Self::with_store(store, None, location.to_string()));
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(invalid(
                "unsupported scheme (use a folder path, file://, memory:// or s3://)".into(),
            ));
        }
        let path = match location.strip_prefix("file://") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(location),
        };
        Self::local(path)
    }

    /// A local folder, created when missing.
    pub fn local(path: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("create data folder {}", path.display()), e))?;
        let path = path
            .canonicalize()
            .map_err(|e| Error::io(format!("resolve data folder {}", path.display()), e))?;
        let store = LocalFileSystem::new_with_prefix(&path)?;
        let location = path.display().to_string();
        Ok(Self::with_store(Arc::new(store), Some(path), location))
    }

    fn with_store(
        raw: Arc<dyn ObjectStore>,
        local_root: Option<PathBuf>,
        location: String,
    ) -> Self {
        Self {
            store: Arc::new(TwinStore::new(raw.clone())),
            raw,
            local_root,
            location,
        }
    }

    /// The object store (for readers such as DataFusion).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The local folder behind this store, if it is one.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// The location as opened.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes an object atomically; on a local folder it is fsynced before returning.
    pub async fn put_durable(&self, path: &Path, bytes: Bytes) -> Result<()> {
        self.store.put(path, PutPayload::from(bytes)).await?;
        self.sync_local(path).await
    }

    /// Writes a data file as its pending twin (fsynced on a local folder): readers that glob
    /// `*.parquet` do not see it until [`Storage::publish`] gives it its name, after the
    /// catalog version naming it is committed.
    pub async fn put_pending(&self, path: &Path, bytes: Bytes) -> Result<()> {
        self.put_durable(&twin(path, Twin::Pending), bytes).await
    }

    /// Renames a committed data file's pending twin to its name (nothing to do when that
    /// was done already).
    pub async fn publish(&self, path: &Path) -> Result<()> {
        self.rename_durable(&twin(path, Twin::Pending), path).await
    }

    /// Renames a data file merged away to its retired twin (queries still reading it find it
    /// there; see [`TwinStore`]).
    pub async fn retire(&self, path: &Path) -> Result<()> {
        self.rename_durable(path, &twin(path, Twin::Retired)).await
    }

    /// Whether an object exists under exactly this name (no twin fallback).
    pub async fn exists(&self, path: &Path) -> Result<bool> {
        match self.raw.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn rename_durable(&self, from: &Path, to: &Path) -> Result<()> {
        match self.raw.rename(from, to).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) if self.exists(to).await? => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.on_local_file(to, sync_parent).await
    }

    /// Writes an object only if it does not exist yet (the catalog's compare-and-swap).
    /// Returns `false` when it already existed.
    pub async fn put_new_durable(&self, path: &Path, bytes: Bytes) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        self.sync_local(path).await?;
        Ok(true)
    }

    /// Reads a whole object; `None` when it does not exist.
    pub async fn get_opt(&self, path: &Path) -> Result<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, path: &Path) -> Result<Bytes> {
        Ok(self.store.get(path).await?.bytes().await?)
    }

    /// Lists every object below a prefix.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        Ok(self.store.list(Some(prefix)).try_collect().await?)
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn sync_local(&self, path: &Path) -> Result<()> {
        self.on_local_file(path, sync_file_and_parent).await
    }

    /// Runs `sync` on the local file behind `path` on a blocking thread (nothing to do when
    /// the store is not a local folder).
    async fn on_local_file(
        &self,
        path: &Path,
        sync: fn(&std::path::Path) -> Result<()>,
    ) -> Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(path.as_ref());
        tokio::task::spawn_blocking(move || sync(&file))
            .await
            .map_err(|e| Error::io("fsync task", std::io::Error::other(e)))?
    }
}

/// fsyncs a file and the folder that names it.
pub(crate) fn sync_file_and_parent(file: &std::path::Path) -> Result<()> {
    std::fs::File::open(file)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", file.display()), e))?;
    sync_parent(file)
}

/// fsyncs the folder that names `file` (after a create or a rename in it).
fn sync_parent(file: &std::path::Path) -> Result<()> {
    let Some(parent) = file.parent() else {
        return Ok(());
    };
    std::fs::File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", parent.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_and_memory_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        for storage in [
            Storage::open(dir.path().to_str().expect("utf8")).expect("local"),
            Storage::open("memory://").expect("memory"),
        ] {
            let p = Path::from("a/b.json");
            assert_eq!(storage.get_opt(&p).await.expect("get"), None);
            storage
                .put_durable(&p, Bytes::from_static(b"1"))
                .await
                .expect("put");
            assert!(
                !storage
                    .put_new_durable(&p, Bytes::from_static(b"2"))
                    .await
                    .expect("cas")
            );
            assert_eq!(
                storage.get(&p).await.expect("get"),
                Bytes::from_static(b"1")
            );
            assert_eq!(storage.list(&Path::from("a")).await.expect("list").len(), 1);
            storage.delete(&p).await.expect("delete");
            storage.delete(&p).await.expect("delete twice");
        }
        assert!(Storage::open("ftp://x").is_err());
    }
}
