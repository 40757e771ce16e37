//! Related actors of a group (spec §5): the users (`distinct_id`) and the groups of the other
//! types that shared at least one event with the group in a recent window (PostHog: 90 days).

use datafusion::common::ScalarValue;
use datafusion::logical_expr::lit;
use datafusion::prelude::col;
use herd_core::ProjectId;
use herd_core::schema::{DISTINCT_ID, TIMESTAMP};

use crate::filters::group_column;
use crate::{Error, QueryEngine, Result};

/// PostHog's window for related actors.
pub const RELATED_WINDOW_DAYS: i64 = 90;

/// Users and groups that shared an event with one group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RelatedActors {
    /// `distinct_id`s, sorted.
    pub users: Vec<String>,
    /// `(group type index, key)` of groups of the other types, sorted.
    pub groups: Vec<(u8, String)>,
    /// Whether a list was cut at the limit.
    pub truncated: bool,
}

impl QueryEngine {
    /// The users and other groups that shared an event with group `key` of type `index` in
    /// the [`RELATED_WINDOW_DAYS`] before `now` (µs); at most `limit` of each.
    pub async fn related_actors(
        &self,
        project: ProjectId,
        index: u8,
        key: &str,
        now: i64,
        limit: usize,
    ) -> Result<RelatedActors> {
        if key.is_empty() {
            return Err(Error::invalid("key", "group key required"));
        }
        let from = now - RELATED_WINDOW_DAYS * 86_400_000_000;
        let ts = |v: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(v),
                Some("UTC".into()),
            ))
        };
        let events = self.events(project).await?.filter(
            col(group_column(index))
                .eq(lit(key))
                .and(col(TIMESTAMP).gt_eq(ts(from)))
                .and(col(TIMESTAMP).lt_eq(ts(now))),
        )?;
        let mut out = RelatedActors::default();
        let users = events
            .clone()
            .select(vec![col(DISTINCT_ID)])?
            .distinct()?
            .sort(vec![col(DISTINCT_ID).sort(true, false)])?
            .limit(0, Some(limit + 1))?
            .collect()
            .await?;
        out.users = crate::strings(&users, 0)?;
        if out.users.len() > limit {
            out.users.truncate(limit);
            out.truncated = true;
        }
        // Only the slots the project has assigned: an unused `$group_N` is '' everywhere.
        let assigned = self.db().group_types(project).await.map_or(0, |m| m.len()) as u8;
        for other in 0..assigned {
            if other == index {
                continue;
            }
            let c = group_column(other);
            let batches = events
                .clone()
                .filter(col(c).not_eq(lit("")))?
                .select(vec![col(c)])?
                .distinct()?
                .sort(vec![col(c).sort(true, false)])?
                .limit(0, Some(limit + 1))?
                .collect()
                .await?;
            let mut keys = crate::strings(&batches, 0)?;
            if keys.len() > limit {
                keys.truncate(limit);
                out.truncated = true;
            }
            out.groups.extend(keys.into_iter().map(|k| (other, k)));
        }
        Ok(out)
    }
}
