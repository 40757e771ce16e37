//! herd-storage: where herd's data lives and how it gets there safely.
//!
//! Owns the object_store layout of design §2 ([`layout`]), the Parquet encoding of both tables
//! ([`parquet_files`]), the per-project catalog that is swapped atomically ([`catalog`]), the
//! project registry ([`projects`]), the write-ahead log with group commit ([`wal`]), and the
//! write buffer that makes acknowledged events queryable before they reach Parquet
//! ([`buffer`]). [`Db`](db::Db) ties them together.
//!
//! It must not decide *what* an event means (that is herd-ingest) nor plan queries (herd-query).

pub mod buffer;
pub mod catalog;
pub mod db;
pub mod error;
pub mod layout;
pub mod numbers;
pub mod parquet_files;
pub mod projects;
pub mod record;
pub mod store;
pub mod twin_store;
pub mod wal;

pub use db::{CompactStats, Db, DbConfig, ProjectGuard, TableSnapshot};
pub use error::{Error, Result};
pub use projects::Project;
pub use store::Storage;
