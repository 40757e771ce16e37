//! A trends request checked and resolved: its range, interval and breakdown, and per series
//! the actor, value, filters and group joins its plan needs. Every error names its field.

use std::collections::BTreeSet;

use chrono_tz::Tz;
use datafusion::logical_expr::Expr;
use herd_core::GroupTypeMapping;

use super::{Breakdown, MAX_SERIES, Math, Series, TrendsQuery};
use crate::calendar::{Interval, TimeRange, WeekStart, parse_range, parse_timezone};
use crate::filters::{FilterBudget, PropertySource, group_index, numeric, property_expr};
use crate::{Error, Result};

/// A validated series.
pub(super) struct Plan<'a> {
    pub index: usize,
    pub series: &'a Series,
    pub math: Math,
    /// `$group_N` of group actors.
    pub actor_group: Option<u8>,
    pub value: Option<Expr>,
    pub filter: Option<Expr>,
    pub joins: BTreeSet<u8>,
    /// A group-property breakdown on the actors' own group type, joined after the rows are
    /// reduced to distinct (bucket, group): the join sees one row per group and bucket
    /// instead of one per event.
    pub late_join: Option<u8>,
}

/// A validated request.
pub(super) struct Resolved {
    pub tz: Tz,
    pub range: TimeRange,
    pub interval: Interval,
    pub week_start: WeekStart,
    pub breakdown: Option<(Expr, Breakdown)>,
}

pub(super) fn resolve(
    query: &TrendsQuery,
    mapping: &GroupTypeMapping,
    now: i64,
) -> Result<Resolved> {
    if query.series.is_empty() {
        return Err(Error::invalid("series", "at least one series is required"));
    }
    if query.series.len() > MAX_SERIES {
        return Err(Error::invalid(
            "series",
            format!("at most {MAX_SERIES} series per request"),
        ));
    }
    let mut budget = FilterBudget::default();
    budget.add(&query.filters, "filters")?;
    for (i, s) in query.series.iter().enumerate() {
        budget.add(&s.filters, &format!("series[{i}].filters"))?;
    }
    let tz = parse_timezone(&query.timezone)?;
    let (from, to) = parse_range(&query.date_from, &query.date_to, tz, now)?;
    let breakdown = match &query.breakdown {
        None => None,
        Some(b) => Some((
            property_expr(mapping, "breakdown", &b.source, &b.property)?,
            b.clone(),
        )),
    };
    Ok(Resolved {
        tz,
        range: TimeRange { tz, from, to },
        interval: query.interval.unwrap_or(Interval::Day),
        week_start: query.week_start,
        breakdown,
    })
}

pub(super) fn plan_series<'a>(
    index: usize,
    series: &'a Series,
    query: &TrendsQuery,
    mapping: &GroupTypeMapping,
    resolved: &Resolved,
) -> Result<Plan<'a>> {
    let field = format!("series[{index}]");
    let m = &series.math;
    if series.event.as_deref() == Some("") {
        return Err(Error::invalid(
            &format!("{field}.event"),
            "empty event name (leave it unset for any event)",
        ));
    }
    let actor_group = match (&m.group_type, m.math) {
        (Some(g), math) if math.counts_actors() => Some(group_index(
            mapping,
            &format!("{field}.math_group_type"),
            g,
        )?),
        (None, Math::UniqueGroup) => {
            return Err(Error::invalid(
                &format!("{field}.math_group_type"),
                "required for unique_group math",
            ));
        }
        _ => None,
    };
    let value = if m.math.uses_property() {
        let key = m.property.as_deref().unwrap_or("");
        if key.is_empty() {
            return Err(Error::invalid(
                &format!("{field}.math_property"),
                format!("required for {:?} math", m.math),
            ));
        }
        Some(numeric(property_expr(
            mapping,
            &format!("{field}.math_property"),
            &PropertySource::Event,
            key,
        )?))
    } else {
        None
    };
    let mut joins = BTreeSet::new();
    query
        .filters
        .group_indexes(mapping, "filters", &mut joins)?;
    series
        .filters
        .group_indexes(mapping, &format!("{field}.filters"), &mut joins)?;
    let mut late_join = None;
    if let Some((_, b)) = &resolved.breakdown
        && let PropertySource::Group(name) = &b.source
    {
        let n = group_index(mapping, "breakdown.group_type", name)?;
        if m.math.counts_actors() && actor_group == Some(n) && !joins.contains(&n) {
            late_join = Some(n);
        } else {
            joins.insert(n);
        }
    }
    let filter = match (
        query.filters.to_expr(mapping, "filters")?,
        series
            .filters
            .to_expr(mapping, &format!("{field}.filters"))?,
    ) {
        (Some(a), Some(b)) => Some(a.and(b)),
        (a, b) => a.or(b),
    };
    Ok(Plan {
        index,
        series,
        math: m.math,
        actor_group,
        value,
        filter,
        joins,
        late_join,
    })
}
