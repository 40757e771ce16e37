//! The one place where every error a herd gRPC service returns becomes a `tonic::Status`:
//! a request the client must fix is INVALID_ARGUMENT naming the field, a missing key or
//! project UNAUTHENTICATED / NOT_FOUND, a query over its memory RESOURCE_EXHAUSTED, a store
//! that cannot be read UNAVAILABLE, and a bug INTERNAL (logged). Messages are clipped to a
//! bounded length.

use herd_core::message::clip;
use tonic::Status;

use crate::flags::FlagsError;

/// A query error.
pub fn query(e: herd_query::Error) -> Status {
    use herd_query::Error as E;
    let text = clip(e.to_string());
    match e {
        E::Invalid { .. } => Status::invalid_argument(text),
        E::UnknownProject(_) => Status::not_found(text),
        E::Unavailable(_) => Status::unavailable(text),
        E::DataFusion(datafusion_error)
            if matches!(
                datafusion_error.find_root(),
                datafusion::error::DataFusionError::ResourcesExhausted(_)
            ) =>
        {
            Status::resource_exhausted(text)
        }
        other => {
            tracing::error!(error = %other, "query failed");
            Status::internal(text)
        }
    }
}

/// A flags error (the same kinds as its HTTP mapping in [`crate::flags`]).
pub fn flags(e: FlagsError) -> Status {
    e.log();
    let message = clip(e.to_string());
    match e {
        FlagsError::BadRequest(_) => Status::invalid_argument(message),
        FlagsError::Unauthorized(_) => Status::unauthenticated(message),
        FlagsError::NotFound(_) => Status::not_found(message),
        FlagsError::AlreadyExists(_) => Status::already_exists(message),
        FlagsError::TooLarge(_) => Status::resource_exhausted(message),
        FlagsError::Internal(_) => Status::internal(message),
    }
}

/// Request field `field` is wrong.
pub fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(clip(format!("{field}: {message}")))
}

/// Something the request names does not exist.
pub fn not_found(message: impl Into<String>) -> Status {
    Status::not_found(clip(message.into()))
}

/// No, a malformed or an unknown key.
pub fn unauthenticated(message: &str) -> Status {
    Status::unauthenticated(message.to_string())
}

/// The store could not be read.
pub fn unavailable(what: &str, e: impl std::fmt::Display) -> Status {
    Status::unavailable(clip(format!("{what}: {e}")))
}

impl From<FlagsError> for Status {
    fn from(e: FlagsError) -> Self {
        flags(e)
    }
}
