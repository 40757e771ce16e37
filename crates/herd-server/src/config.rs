//! `herd serve` configuration: a plain struct with defaults; the CLI fills it from flags and
//! `HERD_*` environment variables.

use std::path::PathBuf;
use std::time::Duration;

use herd_storage::Storage;

use crate::{Error, Result};

/// Everything `herd serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data location: a folder path or a URL (`file://`, `memory://`, `s3://`).
    pub data: String,
    /// WAL folder; default `<data>/wal` when the data location is a local folder.
    pub wal_dir: Option<PathBuf>,
    /// HTTP listen address.
    pub http: String,
    /// gRPC listen address.
    pub grpc: String,
    /// Flush the write buffer when its oldest row is this old.
    pub flush_interval: Duration,
    /// Flush the write buffer when it holds this many events.
    pub flush_rows: usize,
    /// How often the server looks for day partitions to compact.
    pub compact_interval: Duration,
    /// Files a day partition collects before the server merges them into one (0: never).
    pub compact_min_files: usize,
    /// Capture answers 503 while the write buffers hold more than this many bytes.
    pub max_buffer_bytes: usize,
    /// Workers to plan insights for (`http://host:port`, comma-separated); none: in process.
    pub workers: Option<String>,
    /// The secret sent with every task to the workers (their `--cluster-secret`).
    pub cluster_secret: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            data: "./herd-data".into(),
            wal_dir: None,
            http: "127.0.0.1:8000".into(),
            grpc: "127.0.0.1:50051".into(),
            flush_interval: Duration::from_secs(5),
            flush_rows: 500_000,
            compact_interval: Duration::from_secs(60),
            compact_min_files: 8,
            max_buffer_bytes: herd_storage::db::DEFAULT_MAX_BUFFER_BYTES,
            workers: None,
            cluster_secret: None,
        }
    }
}

impl ServeConfig {
    /// The WAL folder to use with this storage.
    pub fn resolve_wal_dir(&self, storage: &Storage) -> Result<PathBuf> {
        match (&self.wal_dir, storage.local_root()) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, Some(root)) => Ok(root.join("wal")),
            (None, None) => Err(Error::Config(format!(
                "--wal-dir is required when --data is not a local folder ({}): the WAL needs a local disk for fsync",
                self.data
            ))),
        }
    }

    /// The folder that holds `flags/` (the flag definitions): the data folder when it is
    /// local, else the folder the WAL folder is in (definitions need a local disk too).
    pub fn resolve_flags_dir(&self, storage: &Storage, wal_dir: &std::path::Path) -> PathBuf {
        match storage.local_root() {
            Some(root) => root.to_path_buf(),
            None => wal_dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf),
        }
    }
}
