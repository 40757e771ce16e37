//! herd-query's one error type: an invalid request naming its field, DataFusion and Arrow
//! failures, an unknown project, and broken planner invariants.

use datafusion::error::DataFusionError;
use herd_core::ProjectId;

/// Errors of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid; `field` names the offending request field.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the field in the request, e.g. `series[0].math_group_type`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// DataFusion failed to plan or run.
    #[error("query: {0}")]
    DataFusion(#[from] DataFusionError),
    /// Arrow failed.
    #[error("query: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// No such project.
    #[error("unknown project {0}")]
    UnknownProject(ProjectId),
    /// A worker of the cluster failed during the query and running it again failed too.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug: an invariant of the planner does not hold.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// An invalid-request error for `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: herd_core::message::clip(field.to_string()),
            message: herd_core::message::clip(message.into()),
        }
    }
}

/// herd-query's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
