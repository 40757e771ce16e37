//! herd-flags: feature flags, PostHog-compatible.
//!
//! Owns the flag definition format ([`definition`], PostHog's `filters` JSON, validated
//! against a project's group types), the bucketing hashes the SDKs use ([`hash`]), evaluation
//! of flags for a person or a group ([`eval`], every operator of protocol spec §3.6 with the
//! SDKs' coercions, PostHog's reason codes), and durable per-project storage of definitions
//! ([`store`], one atomically replaced JSON file per project).
//!
//! It must not do I/O beyond its own data folder, know about HTTP or gRPC (the server maps
//! [`Error`] and [`eval::Evaluation`] to responses), nor read events or stored person/group
//! properties: when a flag needs properties the caller did not pass, evaluation answers
//! [`eval::Evaluation::Inconclusive`] and the caller loads them.

// Tests unwrap freely; the library build (checked by clippy without `cfg(test)`) may not.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::path::PathBuf;

pub mod definition;
pub mod eval;
pub mod hash;
mod property;
pub mod store;

pub use definition::{
    Condition, Definitions, FeatureFlag, FlagFilters, GroupTypes, Holdout, Multivariate, Operator,
    Problem, PropertyFilter, PropertyType, ValidationError, Variant,
};
pub use eval::{
    CompiledFlag, EvalContext, Evaluation, FlagResult, FlagSet, PropertyMode, PropertyRef, Reason,
    ReasonCode, evaluate, evaluate_all,
};
pub use store::{FlagStore, ProjectId, Snapshot};

/// Everything that can go wrong in herd-flags.
/// A flag key as error messages show it: quoted, and cut after 64 characters (a key over
/// the limit must not come back as a megabyte of error text).
fn shown_key(key: &str) -> String {
    const SHOWN: usize = 64;
    match key.char_indices().nth(SHOWN) {
        None => format!("{key:?}"),
        Some((end, _)) => format!("{:?}… ({} characters)", &key[..end], key.chars().count()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A definition that does not validate (the message names the JSON path).
    #[error("flag {}: {source}", shown_key(.key))]
    InvalidFlag {
        /// The flag's key.
        key: String,
        /// What is wrong, and where.
        source: ValidationError,
    },
    /// Another flag of the project already has this key.
    #[error("project {project} already has a flag with key {key:?}")]
    DuplicateKey {
        /// Project.
        project: ProjectId,
        /// The key.
        key: String,
    },
    /// No flag with this id in the project.
    #[error("project {project} has no flag with id {id}")]
    NotFound {
        /// Project.
        project: ProjectId,
        /// The id asked for.
        id: u64,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A flag file that cannot be read back.
    #[error("corrupt flag file {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// herd-flags' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
