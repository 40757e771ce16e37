//! A trends request as one DataFusion plan. Per series: the events in range → the series'
//! event and actor predicates → group-property joins → filters → `(__bucket, __raw, __actor,
//! __value)` → distinct actors when the math counts them and there is a breakdown →
//! [`BreakdownNode`] (ranking and relabelling) → the math per line and bucket. The series'
//! plans are united, each row tagged with its series index, so the answer is one stream of
//! `(__series, __label, __order, __bucket, __v)` rows that [`super::fold`] turns into lines.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::{
    avg, count, max, median, min, percentile_cont, sum,
};
use datafusion::logical_expr::{Expr, ExprFunctionExt, cast as cast_expr, lit};
use datafusion::prelude::{DataFrame, coalesce, col};
use herd_core::schema::TIMESTAMP;

use super::breakdown::{BreakdownNode, Limit};
use super::resolve::{Plan, Resolved};
use super::{
    ACTOR, BUCKET, DEFAULT_BREAKDOWN_LIMIT, Display, LABEL, Math, ORDER, RAW, SERIES, V, VALUE,
    active,
};
use crate::bucket::BucketUdf;
use crate::calendar::{Buckets, Interval, TimeRange};
use crate::rows::{self, GroupTables, RowSpec};
use crate::{Error, QueryEngine, Result};

/// How the fold reads a series' `__v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// The value of a line in a bucket (or over the range, without a bucket).
    Values,
    /// Changes of the number of active actors, summed from the first bucket on.
    Changes,
}

/// What a series' plan computes after its rows.
enum Kind {
    /// One value per line: the math over the rows with `__bucket >= from_bucket`.
    Total { from_bucket: i32 },
    /// Trailing-window actives: rows are per unit (hour or day) with these covers.
    Active { cover: Vec<(i32, i32)> },
    /// Unique actors, each counted in its first bucket (cumulative display).
    FirstSeen,
    /// The math per bucket.
    PerBucket,
}

/// A series' plan, decided from its math, the interval and the display.
struct How {
    kind: Kind,
    /// The math the rows are aggregated (and ranked) with.
    math: Math,
    /// The buckets `__bucket` indexes; the rows start at their first.
    buckets: Buckets,
    /// Rows before this bucket are not ranked.
    rank_from: i32,
}

impl How {
    fn of(p: &Plan<'_>, r: &Resolved, visible: &Buckets, display: Display) -> Result<Self> {
        // Weekly/monthly active over buckets at least as long as the period is plain unique
        // actors (PostHog falls back to dau).
        let window_days = match p.math {
            Math::WeeklyActive => Some(7),
            Math::MonthlyActive => Some(30),
            _ => None,
        };
        // (unit, units in the window) of the trailing window, or None when the buckets are
        // at least as long as the window.
        let window = window_days.and_then(|days| match r.interval {
            Interval::Hour => Some((Interval::Hour, days * 24)),
            Interval::Day => Some((Interval::Day, days)),
            Interval::Week if days > 7 => Some((Interval::Day, days)),
            Interval::Week | Interval::Month => None,
        });
        let plain = |kind, math| How {
            kind,
            math,
            buckets: visible.clone(),
            rank_from: 0,
        };
        Ok(match (display, window_days, window) {
            (Display::TotalValue, Some(days), _) => Self::period(r, visible, days),
            (Display::TotalValue, None, _) => plain(Kind::Total { from_bucket: 0 }, p.math),
            (_, _, Some((unit, w))) => {
                let range = TimeRange {
                    from: visible.scan_from(),
                    ..r.range
                };
                let units = Buckets::new(range, unit, r.week_start, w as usize)?;
                How {
                    kind: Kind::Active {
                        cover: active::covers(&units, w as usize, visible),
                    },
                    math: Math::Dau,
                    rank_from: i32::try_from(units.lookback).unwrap_or(i32::MAX),
                    buckets: units,
                }
            }
            (_, Some(_), None) => plain(Self::per_bucket(display, Math::Dau), Math::Dau),
            (_, None, None) => plain(Self::per_bucket(display, p.math), p.math),
        })
    }

    fn per_bucket(display: Display, math: Math) -> Kind {
        match display == Display::Cumulative && math.counts_actors() {
            true => Kind::FirstSeen,
            false => Kind::PerBucket,
        }
    }

    /// Active actors in the `days` ending at `date_to`, one value per line. With a
    /// breakdown the values are still ranked over the whole range: bucket 0 is the range
    /// before the period, bucket 1 the period.
    fn period(r: &Resolved, visible: &Buckets, days: i64) -> Self {
        let local_end = crate::calendar::instant_to_local(r.tz, r.range.to).date();
        let start = (local_end - chrono::Duration::days(days - 1)).and_time(chrono::NaiveTime::MIN);
        let from = crate::calendar::local_to_instant(r.tz, start).max(visible.scan_from());
        let end = visible.bounds.last().copied().unwrap_or(r.range.to + 1);
        let (bounds, from_bucket) = match r.breakdown {
            Some(_) => (vec![visible.scan_from(), from, end], 1),
            None => (vec![from, end], 0),
        };
        How {
            kind: Kind::Total { from_bucket },
            math: Math::Dau,
            buckets: Buckets {
                lookback: from_bucket as usize,
                bounds,
                interval: visible.interval,
            },
            rank_from: 0,
        }
    }
}

impl QueryEngine {
    /// The plan of a whole trends request and how to read each series' rows.
    pub(super) fn trends_plan(
        &self,
        events: &crate::Events,
        groups: &GroupTables,
        r: &Resolved,
        visible: &Buckets,
        plans: &[Plan<'_>],
        display: Display,
    ) -> Result<(DataFrame, Vec<Shape>)> {
        let mut shapes = Vec::with_capacity(plans.len());
        let mut union: Option<DataFrame> = None;
        for p in plans {
            let (df, shape) = self.series_plan(events, groups, r, visible, p, display)?;
            shapes.push(shape);
            union = Some(match union {
                None => df,
                Some(all) => all.union(df)?,
            });
        }
        let df =
            union.ok_or_else(|| Error::invalid("series", "at least one series is required"))?;
        Ok((df, shapes))
    }

    /// One series' `(__series, __label, __order, __bucket, __v)` rows.
    fn series_plan(
        &self,
        events: &crate::Events,
        groups: &GroupTables,
        r: &Resolved,
        visible: &Buckets,
        p: &Plan<'_>,
        display: Display,
    ) -> Result<(DataFrame, Shape)> {
        let how = How::of(p, r, visible, display)?;
        let mut rows = self.series_frame(events, groups, r, &how.buckets, p)?;
        // Group-by keys: the label only with a breakdown (a constant key would turn a
        // one-column distinct count into a slower two-column group-by).
        let mut keys = Vec::new();
        if let Some((_, b)) = &r.breakdown {
            if how.math.counts_actors() && p.late_join.is_none() {
                // Only unique actors are counted: one row per (bucket, value, actor).
                rows = rows
                    .select(vec![col(BUCKET), col(RAW), col(ACTOR)])?
                    .distinct()?
                    .with_column(VALUE, lit(ScalarValue::Float64(None)))?;
            }
            let limit = Limit {
                limit: if b.limit == 0 {
                    DEFAULT_BREAKDOWN_LIMIT
                } else {
                    b.limit
                },
                hide_other: b.hide_other,
                rank_from: how.rank_from,
            };
            let (session, plan) = rows.into_parts();
            let node = BreakdownNode::plan(plan, aggregate_of(how.math, None)?, limit)?;
            rows = DataFrame::new(session, node);
            keys = vec![col(LABEL), col(ORDER)];
        }
        let with = |rest: Vec<Expr>| -> Vec<Expr> { keys.iter().cloned().chain(rest).collect() };
        let (out, shape, bucketed) = match how.kind {
            Kind::Total { from_bucket } => {
                let only = (from_bucket > 0).then(|| col(BUCKET).gt_eq(lit(from_bucket)));
                let out = rows.aggregate(with(vec![]), vec![aggregate(how.math, only)?])?;
                (out, Shape::Values, false)
            }
            Kind::Active { cover } => (active::changes(rows, &keys, cover)?, Shape::Changes, true),
            Kind::FirstSeen => {
                let first = min(col(BUCKET)).alias(BUCKET);
                let out = rows
                    .aggregate(with(vec![col(ACTOR)]), vec![first])?
                    .aggregate(with(vec![col(BUCKET)]), vec![aggregate(Math::Total, None)?])?;
                (out, Shape::Values, true)
            }
            Kind::PerBucket => {
                let out =
                    rows.aggregate(with(vec![col(BUCKET)]), vec![aggregate(how.math, None)?])?;
                (out, Shape::Values, true)
            }
        };
        let null = |t: ScalarValue| lit(t);
        let has_keys = !keys.is_empty();
        let out = out.select(vec![
            lit(p.index as i64).alias(SERIES),
            match has_keys {
                true => col(LABEL),
                false => null(ScalarValue::Utf8(None)),
            }
            .alias(LABEL),
            match has_keys {
                true => col(ORDER),
                false => null(ScalarValue::Int32(None)),
            }
            .alias(ORDER),
            match bucketed {
                true => cast_expr(col(BUCKET), DataType::Int32),
                false => null(ScalarValue::Int32(None)),
            }
            .alias(BUCKET),
            cast_expr(col(V), DataType::Float64).alias(V),
        ])?;
        Ok((out, shape))
    }

    /// The rows of one series over `buckets`, with `__bucket`, `__raw` (breakdown value),
    /// `__actor` and `__value`.
    fn series_frame(
        &self,
        events: &crate::Events,
        groups: &GroupTables,
        r: &Resolved,
        buckets: &Buckets,
        p: &Plan<'_>,
    ) -> Result<DataFrame> {
        // Unique actors are counted by their numbers when every row has them; a breakdown
        // joined after reduction needs the group keys themselves.
        let numbered = events.numbered() && p.late_join.is_none() && p.math.counts_actors();
        let names: Vec<String> = p.series.event.iter().cloned().collect();
        let spec = RowSpec {
            names: &names,
            actor_group: p.actor_group,
            numbered,
            joins: &p.joins,
            filter: p.filter.as_ref(),
        };
        let df = self.insight_rows(
            self.events_between(events, buckets.scan_from(), r.range.to)?,
            &spec,
            groups,
        )?;
        let actor = rows::actor(p.actor_group, numbered);
        let raw = match &r.breakdown {
            Some((e, _)) => cast_expr(e.clone(), DataType::Utf8),
            None => lit(ScalarValue::Utf8(None)),
        };
        let bucket = BucketUdf::expr(buckets, col(TIMESTAMP)).alias(BUCKET);
        if let Some(n) = p.late_join {
            // Only unique actors are counted: distinct (bucket, actor) first, then the join.
            let reduced = df.select(vec![bucket, actor.alias(ACTOR)])?.distinct()?;
            return Ok(groups.join(self, reduced, n, ACTOR)?.select(vec![
                col(BUCKET),
                raw.alias(RAW),
                col(ACTOR),
                lit(ScalarValue::Float64(None)).alias(VALUE),
            ])?);
        }
        let value = p.value.clone().unwrap_or(lit(ScalarValue::Float64(None)));
        Ok(df.select(vec![
            bucket,
            raw.alias(RAW),
            actor.alias(ACTOR),
            value.alias(VALUE),
        ])?)
    }
}

/// The aggregate of a math over `__actor` / `__value` (only over rows where `only` holds),
/// as Float64 named `__v`, 0 where SQL's would be NULL (PostHog's `ifNull(agg, 0)`).
fn aggregate(math: Math, only: Option<Expr>) -> Result<Expr> {
    Ok(coalesce(vec![
        cast_expr(aggregate_of(math, only)?, DataType::Float64),
        lit(0.0),
    ])
    .alias(V))
}

/// The bare aggregate of a math (what a breakdown ranks by).
fn aggregate_of(math: Math, only: Option<Expr>) -> Result<Expr> {
    let v = || col(VALUE);
    let e = match math {
        Math::Total => count(lit(1)),
        Math::Dau | Math::UniqueGroup | Math::WeeklyActive | Math::MonthlyActive => {
            crate::unique::UniqueUdaf::expr(col(ACTOR))
        }
        Math::Sum => sum(v()),
        Math::Avg => avg(v()),
        Math::Min => min(v()),
        Math::Max => max(v()),
        Math::Median => median(v()),
        Math::P90 => percentile_cont(v().sort(true, false), lit(0.9)),
        Math::P95 => percentile_cont(v().sort(true, false), lit(0.95)),
        Math::P99 => percentile_cont(v().sort(true, false), lit(0.99)),
    };
    Ok(match only {
        // An aggregate with a FILTER clause.
        Some(f) => e.filter(f).build()?,
        None => e,
    })
}
