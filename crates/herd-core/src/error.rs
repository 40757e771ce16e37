//! The error type of herd-core.

/// Errors raised by herd-core's pure functions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An Arrow array could not be built or read.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A persisted JSON document did not have the expected shape.
    #[error("invalid {what}: {reason}")]
    InvalidDocument {
        /// Which document (for example `group_types.json`).
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
}

/// herd-core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
