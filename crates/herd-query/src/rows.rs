//! The start every insight shares (spec §2.5, §3.2, §4.1): a project's events in range → the
//! insight's event names and only rows that have its actor → left joins to the current groups
//! tables its filters and breakdown read → its filters; and the actor itself (a user, or one
//! group type's key; by number where every row has them). Trends, funnels and retention build
//! on [`QueryEngine::insight_rows`] and [`actor`], then add what is their own.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::logical_expr::{Expr, JoinType, lit};
use datafusion::prelude::{DataFrame, col};
use herd_core::ProjectId;
use herd_core::schema::{DISTINCT_ID, DISTINCT_ID_NUM, EVENT};

use crate::filters::{group_column, group_key_column, group_number_column};
use crate::{Error, QueryEngine, Result};

/// The current groups tables one request joins, each loaded once.
#[derive(Default)]
pub(crate) struct GroupTables {
    tables: HashMap<u8, Arc<dyn TableProvider>>,
}

impl GroupTables {
    /// `df` left-joined to the groups table of type `n` on its column `left` (a `$group_N`,
    /// or an already projected actor).
    pub(crate) fn join(
        &self,
        engine: &QueryEngine,
        df: DataFrame,
        n: u8,
        left: &str,
    ) -> Result<DataFrame> {
        let table = self
            .tables
            .get(&n)
            .ok_or_else(|| Error::Internal(format!("groups table {n} not loaded")))?;
        let right = engine.context().read_table(table.clone())?;
        let key = group_key_column(n);
        Ok(df.join(right, JoinType::Left, &[left], &[key.as_str()], None)?)
    }
}

/// What an insight keeps of the events before its own projection.
pub(crate) struct RowSpec<'a> {
    /// Event names kept (empty: every event).
    pub names: &'a [String],
    /// Only rows with a key of this group type (`None`: every row has a user).
    pub actor_group: Option<u8>,
    /// Whether actors are read as numbers (every row has them).
    pub numbered: bool,
    /// Group types whose current properties are joined.
    pub joins: &'a BTreeSet<u8>,
    /// The insight's property filters (after the joins).
    pub filter: Option<&'a Expr>,
}

impl QueryEngine {
    /// The current groups tables of `indexes`.
    pub(crate) async fn group_tables<'a>(
        &self,
        project: ProjectId,
        indexes: impl IntoIterator<Item = &'a u8>,
    ) -> Result<GroupTables> {
        let mut out = GroupTables::default();
        for &n in indexes {
            if let std::collections::hash_map::Entry::Vacant(slot) = out.tables.entry(n) {
                slot.insert(self.groups_table(project, n).await?);
            }
        }
        Ok(out)
    }

    /// `events` narrowed as `spec` says: names and actor presence, joins, filters.
    pub(crate) fn insight_rows(
        &self,
        events: DataFrame,
        spec: &RowSpec<'_>,
        tables: &GroupTables,
    ) -> Result<DataFrame> {
        let mut pred = Vec::new();
        match spec.names {
            [] => {}
            [one] => pred.push(col(EVENT).eq(lit(one.as_str()))),
            many => {
                let list = many.iter().map(|n| lit(n.as_str())).collect();
                pred.push(col(EVENT).in_list(list, false));
            }
        }
        if let Some(n) = spec.actor_group {
            pred.push(match spec.numbered {
                true => col(group_number_column(n)).not_eq(lit(0u32)),
                false => col(group_column(n)).not_eq(lit("")),
            });
        }
        let mut df = events;
        if let Some(pred) = pred.into_iter().reduce(Expr::and) {
            df = df.filter(pred)?;
        }
        for &n in spec.joins {
            df = tables.join(self, df, n, group_column(n))?;
        }
        if let Some(f) = spec.filter {
            df = df.filter(f.clone())?;
        }
        Ok(df)
    }
}

/// The actor column: the group type's key (or number), or the user's `distinct_id` (or
/// number).
pub(crate) fn actor(actor_group: Option<u8>, numbered: bool) -> Expr {
    match (actor_group, numbered) {
        (Some(n), true) => col(group_number_column(n)),
        (None, true) => col(DISTINCT_ID_NUM),
        (Some(n), false) => col(group_column(n)),
        (None, false) => col(DISTINCT_ID),
    }
}
