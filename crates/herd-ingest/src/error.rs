//! The error type of herd-ingest: every variant says which status a client gets.

/// Why a capture request was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names what was wrong (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// No token, an unknown token, or a personal key (HTTP 401).
    #[error("{0}")]
    Unauthorized(String),
    /// The body or one event is over its size limit (HTTP 413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A backfill source cannot be used; names the file and what is wrong with it.
    #[error("backfill source {file}: {reason}")]
    Source {
        /// The file (or SOURCE argument).
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Arrow failed on rows herd built itself.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The store failed; nothing was acknowledged (HTTP 503, clients retry).
    #[error("storage: {0}")]
    Storage(#[from] herd_storage::Error),
}

impl Error {
    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }
}

/// herd-ingest's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
