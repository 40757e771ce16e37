//! herd-core: the shapes every other herd crate agrees on.
//!
//! Owns the events and groups schemas (design §2), the rules that map `$groups` to the
//! `$group_0..4` slots, the `$set` merge of group properties, PostHog's timestamp rules, and the
//! shared id types. It does no I/O: nothing here touches a file, a socket or a clock other than
//! through arguments.

pub mod error;
pub mod event;
pub mod group_types;
pub mod groups;
pub mod message;
pub mod schema;
pub mod time;
pub mod warning;

pub use error::{Error, Result};
pub use event::{Event, EventBatchBuilder};
pub use group_types::{GroupTypeMapping, GroupTypeSlot};
pub use groups::{GroupRow, GroupState};
pub use warning::IngestWarning;

/// A project's numeric id (PostHog's team id).
pub type ProjectId = u64;

/// At most this many group types per project; their indices are `0..MAX_GROUP_TYPES`.
pub const MAX_GROUP_TYPES: usize = 5;

/// A group key longer than this many characters is refused (PostHog: `group_key_too_long`).
pub const MAX_GROUP_KEY_CHARS: usize = 400;
