//! herd-ingest: what an incoming event means, and getting it into the store exactly once.
//!
//! [`decode`] turns an HTTP body (JSON, gzip by magic bytes, base64, form `data=`) into raw
//! events and a token; [`event`] validates and normalises each one (PostHog's rules for
//! `distinct_id`, `uuid`, `$set`, timestamps); [`capture`] maps `$groups` to slots, merges
//! `$groupidentify` into the groups table, drops duplicates, and commits to the store.
//!
//! It owns no storage format (herd-storage) and no network edge (herd-server).

pub mod backfill;
pub mod bulk;
pub mod capture;
pub mod decode;
pub mod error;
pub mod event;
pub mod generate;
pub mod groups;
mod peek;
pub mod source;

pub use capture::{CaptureOutcome, Ingestor};
pub use decode::{CaptureInput, Route};
pub use error::{Error, Result};
