//! Retention (spec §4): of the actors who did a target event in a period (a cohort), how many
//! did a returning event in each following period; recurring or first-time cohorts, by user
//! or by group type, with a breakdown by an event or group property (which PostHog lacks,
//! #36135).
//!
//! One DataFusion plan: events → optional joins to the current groups tables → a projection of
//! the actor, the bucket of target events, the bucket of returning events, the time and the
//! breakdown value of target events → `GROUP BY actor` with the [`RetentionUdaf`] aggregate,
//! whose flat state is two period bitsets, the first target time and the breakdown value of
//! the earliest target event that has one, per actor → the cohort-table cells each actor
//! counts in ([`cells`]), unnested → a count per (breakdown value, cell). An actor's cohorts
//! and returns all count under that one value (first touch), so a return is counted whatever
//! its own value. Here the values are only ranked and the tables laid out.

use std::collections::{BTreeSet, HashMap};

mod cells;
mod udaf;
pub(crate) use cells::CellsUdf;

use datafusion::arrow::array::{Array, Int32Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{Expr, cast as cast_expr, lit, when};
use datafusion::prelude::{DataFrame, col};

use herd_core::schema::TIMESTAMP;
pub use udaf::RetentionUdaf;

use crate::bucket::BucketUdf;
use crate::calendar::{Buckets, End, Interval, TimeRange, WeekStart, parse_date, parse_timezone};
use crate::filters::{
    FilterBudget, PropertyGroup, PropertySource, event_condition, group_index, property_expr,
};
use crate::trends::{BREAKDOWN_NULL, BREAKDOWN_OTHER, Breakdown, DEFAULT_BREAKDOWN_LIMIT};
use crate::{Error, QueryEngine, Result};

/// Default number of periods.
pub const DEFAULT_PERIODS: usize = 7;
/// Most periods one request may have.
pub const MAX_PERIODS: usize = 512;

/// How cohorts are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionType {
    /// An actor joins the cohort of every period in which it did the target event.
    #[default]
    Recurring,
    /// An actor joins the cohort of the period of its first target event ever (matching the
    /// filters); actors whose first time is outside the range are left out.
    FirstTime,
}

/// The target or returning event.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionEntity {
    /// Event name; `None` for any event.
    pub event: Option<String>,
    /// Filters of the event.
    pub filters: PropertyGroup,
}

/// A retention request.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionQuery {
    /// The event that puts an actor in a cohort.
    pub target: RetentionEntity,
    /// The event that counts as a return.
    pub returning: RetentionEntity,
    /// Period length (hour, day, week or month; default day).
    pub period: Option<Interval>,
    /// Number of cohorts and of periods per cohort (default 7).
    pub periods: usize,
    /// Recurring or first time.
    pub retention_type: RetentionType,
    /// Group type whose keys are the actors; `None` for users.
    pub aggregation_group_type: Option<String>,
    /// Optional breakdown (event property, or a group's current property).
    pub breakdown: Option<Breakdown>,
    /// The last period is the one containing this date; empty = now.
    pub date_to: String,
    /// IANA timezone; empty = UTC.
    pub timezone: String,
    /// First day of week periods.
    pub week_start: WeekStart,
    /// Filters on every event.
    pub filters: PropertyGroup,
}

/// One cohort.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cohort {
    /// "Day 0", "Week 3", …
    pub label: String,
    /// Start of the cohort's period (µs).
    pub start: i64,
    /// Label of the start in the timezone.
    pub date: String,
    /// Breakdown value; `None` without a breakdown.
    pub breakdown_value: Option<String>,
    /// Actors per period after the cohort's (index 0 = the cohort itself); periods after
    /// the range are 0.
    pub values: Vec<u64>,
}

/// The answer to a [`RetentionQuery`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RetentionResult {
    /// Period length used.
    pub period: Interval,
    /// Timezone used.
    pub timezone: String,
    /// First instant of the first period.
    pub date_from: i64,
    /// End (exclusive) of the last period.
    pub date_to: i64,
    /// Period labels ("Day 0", …).
    pub labels: Vec<String>,
    /// Cohorts, by breakdown value (ranked by cohort size) and then by period.
    pub cohorts: Vec<Cohort>,
}

const ACTOR: &str = "__actor";

/// What folding a retention plan's rows needs.
struct RetentionPlan {
    periods: usize,
    period: Interval,
    buckets: Buckets,
    /// The scanned range, `[from, end)`, µs.
    from: i64,
    end: i64,
    tz: chrono_tz::Tz,
    /// Whether there is a breakdown.
    by_value: bool,
}
const BD: &str = "__bd";
const CELL: &str = "__cell";

fn period_name(p: Interval) -> &'static str {
    match p {
        Interval::Hour => "Hour",
        Interval::Day => "Day",
        Interval::Week => "Week",
        Interval::Month => "Month",
    }
}

impl QueryEngine {
    /// Answers a retention query on `project`; `now` (µs) resolves relative dates.
    pub async fn retention(
        &self,
        project: herd_core::ProjectId,
        query: &RetentionQuery,
        now: i64,
    ) -> Result<RetentionResult> {
        self.on_cluster(|| self.retention_once(project, query, now))
            .await
    }

    async fn retention_once(
        &self,
        project: herd_core::ProjectId,
        query: &RetentionQuery,
        now: i64,
    ) -> Result<RetentionResult> {
        let (df, plan) = self.retention_plan(project, query, now).await?;
        let RetentionPlan {
            periods,
            period,
            buckets,
            from,
            end,
            tz,
            by_value,
        } = plan;
        // Per breakdown value, (cohort, period) → actors: sparse, so many values stay small.
        let mut per: HashMap<Option<String>, HashMap<(usize, usize), u64>> = HashMap::new();
        for batch in crate::collect(df).await? {
            let bd: StringArray = crate::column_as(&batch, 0, &DataType::Utf8)?;
            let code: Int32Array = crate::column_as(&batch, 1, &DataType::Int32)?;
            let n: Int64Array = crate::column_as(&batch, 2, &DataType::Int64)?;
            for row in 0..batch.num_rows() {
                let key = match (by_value, bd.is_null(row)) {
                    (false, _) => None,
                    (true, true) => Some(BREAKDOWN_NULL.to_string()),
                    (true, false) => Some(bd.value(row).to_string()),
                };
                let Ok(c) = usize::try_from(code.value(row)) else {
                    continue;
                };
                let cell = (c / periods, c % periods);
                *per.entry(key).or_default().entry(cell).or_default() += n.value(row) as u64;
            }
        }

        // Rank breakdown values by their cohorts' total size.
        type Sparse = HashMap<(usize, usize), u64>;
        let mut values: Vec<(Option<String>, Sparse)> = per.into_iter().collect();
        if !by_value && values.is_empty() {
            values.push((None, HashMap::new()));
        }
        let size = |t: &Sparse| {
            t.iter()
                .filter(|((_, k), _)| *k == 0)
                .map(|(_, v)| *v)
                .sum::<u64>()
        };
        values.sort_by(|a, b| size(&b.1).cmp(&size(&a.1)).then_with(|| a.0.cmp(&b.0)));
        if let Some(b) = &query.breakdown {
            let limit = if b.limit == 0 {
                DEFAULT_BREAKDOWN_LIMIT
            } else {
                b.limit
            };
            if values.len() > limit {
                let rest = values.split_off(limit);
                if !b.hide_other {
                    let mut other = Sparse::new();
                    for (_, t) in rest {
                        for (cell, v) in t {
                            *other.entry(cell).or_default() += v;
                        }
                    }
                    values.push((Some(BREAKDOWN_OTHER.to_string()), other));
                }
            }
        }
        let dates = buckets.labels(tz);
        let name = period_name(period);
        let mut cohorts = Vec::new();
        for (value, sparse) in values {
            let mut table = vec![vec![0u64; periods]; periods];
            for ((i, k), v) in sparse {
                table[i][k] = v;
            }
            for (i, c) in table.into_iter().enumerate() {
                cohorts.push(Cohort {
                    label: format!("{name} {i}"),
                    start: buckets.starts().get(i).copied().unwrap_or_default(),
                    date: dates.get(i).cloned().unwrap_or_default(),
                    breakdown_value: value.clone(),
                    values: c,
                });
            }
        }
        Ok(RetentionResult {
            period,
            timezone: tz.name().to_string(),
            date_from: from,
            date_to: end,
            labels: (0..periods).map(|k| format!("{name} {k}")).collect(),
            cohorts,
        })
    }

    /// The physical plan of a retention query, as `EXPLAIN` shows it (one line per operator,
    /// children indented), from the events scan to the per-actor aggregate.
    pub async fn explain_retention(
        &self,
        project: herd_core::ProjectId,
        query: &RetentionQuery,
        now: i64,
    ) -> Result<String> {
        let (df, _) = self.retention_plan(project, query, now).await?;
        let plan = df.create_physical_plan().await?;
        Ok(crate::show_plans(std::slice::from_ref(&plan), false))
    }

    /// The retention query's one plan (events in range → group joins → filters → per-actor
    /// cohort state), and what folding its rows needs.
    async fn retention_plan(
        &self,
        project: herd_core::ProjectId,
        query: &RetentionQuery,
        now: i64,
    ) -> Result<(DataFrame, RetentionPlan)> {
        let mapping = self.db().group_types(project).await.unwrap_or_default();
        let Resolved {
            periods,
            period,
            tz,
            buckets,
            actor_group,
            joins,
            target,
            returning,
            breakdown,
            global,
        } = resolve(query, &mapping, now)?;
        let (from, end) = (buckets.scan_from(), *buckets.bounds.last().unwrap_or(&0));
        let ts = |v: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(v),
                Some("UTC".into()),
            ))
        };
        let in_range = col(TIMESTAMP)
            .gt_eq(ts(from))
            .and(col(TIMESTAMP).lt(ts(end)));
        // First-time cohorts need every earlier target event too.
        let pred = match query.retention_type {
            RetentionType::Recurring => in_range.clone(),
            RetentionType::FirstTime => col(TIMESTAMP).lt(ts(end)),
        };
        let names: Vec<String> = match (&query.target.event, &query.returning.event) {
            (Some(a), Some(b)) => vec![a.clone(), b.clone()],
            _ => Vec::new(),
        };
        let events = self.events_table(project).await?;
        let tables = self.group_tables(project, &joins).await?;
        let spec = crate::rows::RowSpec {
            names: &names,
            actor_group,
            numbered: false,
            joins: &joins,
            filter: global.as_ref(),
        };
        let events = self.context().read_table(events)?.filter(pred)?;
        let mut df = self.insight_rows(events, &spec, &tables)?;
        let actor = crate::rows::actor(actor_group, false);
        let bucket = BucketUdf::expr(&buckets, col(TIMESTAMP));
        let null_bucket = lit(ScalarValue::Int32(None));
        let bd = match &breakdown {
            Some(e) => cast_expr(e.clone(), DataType::Utf8),
            None => lit(ScalarValue::Utf8(None)),
        };
        df = df.select(vec![
            actor.alias(ACTOR),
            when(target.clone(), bd)
                .otherwise(lit(ScalarValue::Utf8(None)))?
                .alias(BD),
            when(target.clone(), bucket.clone())
                .otherwise(null_bucket.clone())?
                .alias("__target"),
            when(returning.and(in_range), bucket)
                .otherwise(null_bucket)?
                .alias("__return"),
            when(target, cast_expr(col(TIMESTAMP), DataType::Int64))
                .otherwise(lit(ScalarValue::Int64(None)))?
                .alias("__first"),
        ])?;
        let agg = RetentionUdaf::expr(
            periods,
            vec![col("__target"), col("__return"), col("__first"), col(BD)],
        );
        // Per actor its state, then the cells it counts in, counted per breakdown value.
        let state = col("__r");
        let df = df
            .aggregate(vec![col(ACTOR)], vec![agg.alias("__r")])?
            .select(vec![
                get_field(state.clone(), "bd").alias(BD),
                cells::CellsUdf::expr(periods, query.retention_type, &buckets, state).alias(CELL),
            ])?
            .unnest_columns(&[CELL])?
            .aggregate(vec![col(BD), col(CELL)], vec![count(lit(1)).alias("__n")])?;
        let plan = RetentionPlan {
            periods,
            period,
            buckets,
            from,
            end,
            tz,
            by_value: breakdown.is_some(),
        };
        Ok((df, plan))
    }
}

/// A validated retention request.
struct Resolved {
    periods: usize,
    period: Interval,
    tz: chrono_tz::Tz,
    /// The cohort periods: the one holding `date_to` and those before it.
    buckets: Buckets,
    actor_group: Option<u8>,
    joins: BTreeSet<u8>,
    target: Expr,
    returning: Expr,
    breakdown: Option<Expr>,
    global: Option<Expr>,
}

fn resolve(
    query: &RetentionQuery,
    mapping: &herd_core::GroupTypeMapping,
    now: i64,
) -> Result<Resolved> {
    let mut budget = FilterBudget::default();
    budget.add(&query.filters, "filters")?;
    budget.add(&query.target.filters, "target.filters")?;
    budget.add(&query.returning.filters, "returning.filters")?;
    let periods = if query.periods == 0 {
        DEFAULT_PERIODS
    } else {
        query.periods
    };
    if periods > MAX_PERIODS {
        return Err(Error::invalid(
            "periods",
            format!("at most {MAX_PERIODS} periods (got {periods})"),
        ));
    }
    let period = query.period.unwrap_or(Interval::Day);
    let tz = parse_timezone(&query.timezone)?;
    let to_text = if query.date_to.is_empty() {
        "now"
    } else {
        &query.date_to
    };
    let to = parse_date("date_to", to_text, End::To, tz, now)?;
    // The period holding date_to and the periods before it, as visible buckets.
    let first = Buckets::new(
        TimeRange { tz, from: to, to },
        period,
        query.week_start,
        periods - 1,
    )?
    .scan_from();
    let buckets = Buckets::new(
        TimeRange {
            tz,
            from: first,
            to,
        },
        period,
        query.week_start,
        0,
    )?;
    let actor_group = query
        .aggregation_group_type
        .as_deref()
        .map(|g| group_index(mapping, "aggregation_group_type", g))
        .transpose()?;
    let mut joins = BTreeSet::new();
    query
        .filters
        .group_indexes(mapping, "filters", &mut joins)?;
    let entity = |e: &RetentionEntity, field: &str, joins: &mut BTreeSet<u8>| {
        event_condition(mapping, field, e.event.as_deref(), &e.filters, joins)
    };
    let target = entity(&query.target, "target", &mut joins)?;
    let returning = entity(&query.returning, "returning", &mut joins)?;
    let breakdown = match &query.breakdown {
        None => None,
        Some(b) => {
            if let PropertySource::Group(name) = &b.source {
                joins.insert(group_index(mapping, "breakdown.group_type", name)?);
            }
            Some(property_expr(mapping, "breakdown", &b.source, &b.property)?)
        }
    };
    let global = query.filters.to_expr(mapping, "filters")?;

    Ok(Resolved {
        periods,
        period,
        tz,
        buckets,
        actor_group,
        joins,
        target,
        returning,
        breakdown,
        global,
    })
}
