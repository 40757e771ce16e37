//! Related actors of a group (spec §5): the users (`distinct_id`) and the groups of the other
//! types that shared at least one event with the group in a recent window (PostHog: 90 days),
//! and the group's latest events.

use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::lit;
use datafusion::prelude::col;
use herd_core::ProjectId;
use herd_core::schema::{DISTINCT_ID, EVENT, PROPERTIES, TIMESTAMP};

use crate::filters::group_column;
use crate::{Error, QueryEngine, Result};

/// PostHog's window for related actors.
pub const RELATED_WINDOW_DAYS: i64 = 90;

/// Users and groups that shared an event with one group.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
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

    /// The latest `limit` events of group `key` of type `index`, newest first.
    pub async fn group_events(
        &self,
        project: ProjectId,
        index: u8,
        key: &str,
        limit: usize,
    ) -> Result<Vec<EventRow>> {
        if key.is_empty() {
            return Err(Error::invalid("key", "group key required"));
        }
        let batches = self
            .events(project)
            .await?
            .filter(col(group_column(index)).eq(lit(key)))?
            .select(vec![
                col(TIMESTAMP),
                col(EVENT),
                col(DISTINCT_ID),
                col(PROPERTIES),
            ])?
            .sort(vec![col(TIMESTAMP).sort(false, true)])?
            .limit(0, Some(limit))?
            .collect()
            .await?;
        let mut out = Vec::new();
        for b in &batches {
            let ts: TimestampMicrosecondArray = crate::column_as(
                b,
                0,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )?;
            let text = |i| crate::column_as::<StringArray>(b, i, &DataType::Utf8);
            let (event, user, props) = (text(1)?, text(2)?, text(3)?);
            for row in 0..b.num_rows() {
                out.push(EventRow {
                    timestamp: ts.value(row),
                    event: event.value(row).to_string(),
                    distinct_id: user.value(row).to_string(),
                    properties: props.value(row).to_string(),
                });
            }
        }
        Ok(out)
    }
}

/// One event as a group's page lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventRow {
    /// µs since the epoch.
    pub timestamp: i64,
    /// Event name.
    pub event: String,
    /// The person.
    pub distinct_id: String,
    /// Properties (JSON text).
    pub properties: String,
}
