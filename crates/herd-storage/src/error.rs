//! The error type of herd-storage.

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store failed.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// A local file operation (WAL, fsync) failed.
    #[error("{context}: {source}")]
    Io {
        /// What herd was doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Parquet encoding or decoding failed.
    #[error("parquet {path}: {source}")]
    Parquet {
        /// The file.
        path: String,
        /// The Parquet error.
        source: parquet::errors::ParquetError,
    },
    /// Arrow failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A persisted document is corrupt or has the wrong shape.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// Which document.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A storage URL or path could not be used.
    #[error("invalid storage location {location:?}: {reason}")]
    InvalidLocation {
        /// The location as given.
        location: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Another writer committed a catalog version first.
    #[error("catalog of project {project} was changed by another writer (version {version})")]
    CatalogConflict {
        /// The project.
        project: u64,
        /// The version that already existed.
        version: u64,
    },
    /// A project id or token is already in use.
    #[error("project {0}")]
    ProjectExists(String),
    /// No project with this id.
    #[error("unknown project {0}")]
    UnknownProject(herd_core::ProjectId),
    /// Another process holds the data folder's write lock.
    #[error("{0} is in use by another herd process (serve or backfill): stop it first")]
    Locked(String),
    /// The write-ahead log stopped accepting records after an I/O failure.
    #[error("write-ahead log unavailable: {0}")]
    WalUnavailable(String),
    /// The write buffer is over its limit (flushes are failing or behind): retry later.
    #[error("write buffer full: {0}")]
    BufferFull(String),
    /// Core rules rejected a persisted document.
    #[error(transparent)]
    Core(#[from] herd_core::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// herd-storage's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
