//! Trends (spec §2): per series and time bucket, a count of events, of unique users or groups,
//! of weekly/monthly active actors, or an aggregate of a numeric property; with property
//! filters, breakdowns with a limit and an "other" bucket, and total-value and cumulative
//! displays.
//!
//! Each series is one DataFusion plan over the project's events (files + write buffer):
//! filter on time, event and properties → optional left joins to the current groups tables →
//! projection of the bucket index, the breakdown label, the actor and the numeric value →
//! aggregate. Results are zero-filled into one value per bucket here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono_tz::Tz;
use datafusion::arrow::array::{Array, Float64Array, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::{
    avg, count, max, median, min, percentile_cont, sum,
};
use datafusion::logical_expr::{Expr, JoinType, cast as cast_expr, lit, when};
use datafusion::prelude::{DataFrame, coalesce, col};
use futures::StreamExt;
use herd_core::GroupTypeMapping;
use herd_core::schema::{DISTINCT_ID, DISTINCT_ID_NUM, EVENT, TIMESTAMP};

use crate::bucket::BucketUdf;
use crate::calendar::{Buckets, Interval, TimeRange, WeekStart, parse_range, parse_timezone};
use crate::filters::{
    FilterBudget, PropertyGroup, PropertySource, group_column, group_index, group_key_column,
    group_number_column, numeric, property_expr,
};
use crate::{Error, QueryEngine, Result};

/// Label of the breakdown bucket of events without the property (PostHog's).
pub const BREAKDOWN_NULL: &str = "$$_posthog_breakdown_null_$$";
/// Label of the bucket collecting values beyond the breakdown limit (PostHog's).
pub const BREAKDOWN_OTHER: &str = "$$_posthog_breakdown_other_$$";
/// Breakdown limit when the request gives none.
pub const DEFAULT_BREAKDOWN_LIMIT: usize = 25;
/// The most series one request may have.
pub const MAX_SERIES: usize = 50;

/// What a series computes per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Math {
    /// Number of events.
    Total,
    /// Unique `distinct_id`s, or unique groups with a group type.
    Dau,
    /// Unique keys of a group type (`''` excluded).
    UniqueGroup,
    /// Unique actors in the 7 days ending with each bucket.
    WeeklyActive,
    /// Unique actors in the 30 days ending with each bucket.
    MonthlyActive,
    /// Sum of a numeric property.
    Sum,
    /// Average of a numeric property.
    Avg,
    /// Minimum of a numeric property.
    Min,
    /// Maximum of a numeric property.
    Max,
    /// Median (exact) of a numeric property.
    Median,
    /// 90th percentile (exact, interpolated).
    P90,
    /// 95th percentile.
    P95,
    /// 99th percentile.
    P99,
}

impl Math {
    fn counts_actors(self) -> bool {
        matches!(
            self,
            Math::Dau | Math::UniqueGroup | Math::WeeklyActive | Math::MonthlyActive
        )
    }

    fn uses_property(self) -> bool {
        matches!(
            self,
            Math::Sum
                | Math::Avg
                | Math::Min
                | Math::Max
                | Math::Median
                | Math::P90
                | Math::P95
                | Math::P99
        )
    }
}

/// How the series are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Display {
    /// One value per bucket.
    #[default]
    TimeSeries,
    /// One value over the whole range (unique counts are unique over the range).
    TotalValue,
    /// Running total per bucket; unique actors are counted once, in their first bucket.
    Cumulative,
}

/// One series of a trends query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Event name; `None` for any event.
    pub event: Option<String>,
    /// What to compute.
    pub math: MathSpec,
    /// Filters of this series (ANDed with the query's).
    pub filters: PropertyGroup,
    /// Display name; defaults to the event name.
    pub name: Option<String>,
}

/// A math with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct MathSpec {
    /// The aggregate.
    pub math: Math,
    /// Group type whose keys are the actors (required for `unique_group`; optional for `dau`,
    /// weekly and monthly active).
    pub group_type: Option<String>,
    /// Numeric event property (required for sum … p99).
    pub property: Option<String>,
}

impl Default for MathSpec {
    fn default() -> Self {
        Self {
            math: Math::Total,
            group_type: None,
            property: None,
        }
    }
}

/// Breakdown by a property.
#[derive(Debug, Clone, PartialEq)]
pub struct Breakdown {
    /// Property name.
    pub property: String,
    /// Event property or the current property of a group type.
    pub source: PropertySource,
    /// Values shown (ranked by the series' value over the range); 0 = 25.
    pub limit: usize,
    /// Drop values beyond the limit instead of collecting them in the "other" bucket.
    pub hide_other: bool,
}

impl Breakdown {
    /// By the current `property` of each event's group of `group_type`: up to `limit` values,
    /// the rest in "other".
    pub fn group_property(group_type: &str, property: &str, limit: usize) -> Self {
        Self {
            property: property.into(),
            source: PropertySource::Group(group_type.into()),
            limit,
            hide_other: false,
        }
    }
}

/// A trends request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrendsQuery {
    /// One or more series.
    pub series: Vec<Series>,
    /// Bucket width (default day).
    pub interval: Option<Interval>,
    /// Start: a date, local date-time, RFC 3339 time or relative date; empty = `-7d`.
    pub date_from: String,
    /// End (inclusive): as `date_from`; empty = now.
    pub date_to: String,
    /// IANA timezone of the buckets; empty = UTC.
    pub timezone: String,
    /// First day of week buckets.
    pub week_start: WeekStart,
    /// Filters applied to every series.
    pub filters: PropertyGroup,
    /// Optional breakdown.
    pub breakdown: Option<Breakdown>,
    /// Time series, total value or cumulative.
    pub display: Display,
}

/// One result line: a series, or one breakdown value of a series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesResult {
    /// Index of the series in the request.
    pub series_index: usize,
    /// The series' name (or event name, or "All events").
    pub label: String,
    /// The breakdown value (or [`BREAKDOWN_NULL`] / [`BREAKDOWN_OTHER`]); `None` without a
    /// breakdown.
    pub breakdown_value: Option<String>,
    /// One value per bucket (empty in total-value display).
    pub data: Vec<f64>,
    /// Sum of `data` (time series), last value (cumulative) or the aggregated value (total).
    pub count: f64,
    /// The value over the whole range (total-value display only).
    pub aggregated_value: Option<f64>,
}

/// The answer to a [`TrendsQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrendsResult {
    /// Bucket width used.
    pub interval: Interval,
    /// Timezone used.
    pub timezone: String,
    /// Resolved range (µs, inclusive).
    pub date_from: i64,
    /// Resolved end (µs, inclusive).
    pub date_to: i64,
    /// Bucket labels in the timezone.
    pub labels: Vec<String>,
    /// Bucket start instants (µs).
    pub bucket_starts: Vec<i64>,
    /// Result lines, series by series; within a series the breakdown values by rank, then
    /// the null bucket, then "other".
    pub results: Vec<SeriesResult>,
}

/// A validated series.
struct Plan<'a> {
    index: usize,
    series: &'a Series,
    math: Math,
    /// `$group_N` of group actors.
    actor_group: Option<u8>,
    value: Option<Expr>,
    filter: Option<Expr>,
    joins: BTreeSet<u8>,
    /// A group-property breakdown on the actors' own group type, joined after the rows are
    /// reduced to distinct (bucket, group): the join sees one row per group and bucket
    /// instead of one per event.
    late_join: Option<u8>,
}

/// A validated request.
struct Resolved {
    tz: Tz,
    range: TimeRange,
    interval: Interval,
    week_start: WeekStart,
    breakdown: Option<(Expr, Breakdown)>,
}

const LABEL: &str = "__label";
const RAW: &str = "__raw";
const BUCKET: &str = "__bucket";
const ACTOR: &str = "__actor";
const VALUE: &str = "__value";
const V: &str = "__v";

impl QueryEngine {
    /// Answers a trends query on `project`; `now` (µs) resolves relative dates.
    pub async fn trends(
        &self,
        project: herd_core::ProjectId,
        query: &TrendsQuery,
        now: i64,
    ) -> Result<TrendsResult> {
        let mapping = self.db().group_types(project).await.unwrap_or_default();
        let resolved = resolve(query, &mapping, now)?;
        let plans = query
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| plan_series(i, s, query, &mapping, &resolved))
            .collect::<Result<Vec<_>>>()?;
        let events = self.events_source(project).await?;
        let mut groups = HashMap::new();
        for p in &plans {
            for n in p.joins.iter().chain(&p.late_join) {
                if !groups.contains_key(n) {
                    groups.insert(*n, self.groups_table(project, *n).await?);
                }
            }
        }
        let buckets = Buckets::new(resolved.range, resolved.interval, resolved.week_start, 0)?;
        let mut results = Vec::new();
        for p in &plans {
            results.extend(
                self.run_series(&events, &groups, &resolved, &buckets, p, query.display)
                    .await?,
            );
        }
        Ok(TrendsResult {
            interval: resolved.interval,
            timezone: resolved.tz.name().to_string(),
            date_from: resolved.range.from,
            date_to: resolved.range.to,
            labels: buckets.labels(resolved.tz),
            bucket_starts: buckets.starts().to_vec(),
            results,
        })
    }

    /// The physical plans a trends query runs, in order (each as `EXPLAIN` shows it): the
    /// query runs, since a breakdown's values are ranked by one plan before another counts
    /// them.
    pub async fn explain_trends(
        &self,
        project: herd_core::ProjectId,
        query: &TrendsQuery,
        now: i64,
    ) -> Result<String> {
        let (_, plans) = crate::record_plans(self.trends(project, query, now)).await?;
        Ok(crate::show_plans(&plans, false))
    }

    /// The rows of one series from `from` on, with `__bucket`, `__raw` (breakdown value),
    /// `__actor` and `__value`.
    fn series_frame(
        &self,
        events: &crate::Events,
        groups: &HashMap<u8, Arc<dyn TableProvider>>,
        r: &Resolved,
        buckets: &Buckets,
        p: &Plan<'_>,
        from: i64,
    ) -> Result<DataFrame> {
        let mut df = self.events_between(events, from, r.range.to)?;
        let mut pred = Vec::new();
        if let Some(e) = &p.series.event {
            pred.push(col(EVENT).eq(lit(e.as_str())));
        }
        // Unique actors are counted by their numbers when every row has them; a breakdown
        // joined after reduction needs the group keys themselves.
        let numbered = events.numbered()
            && p.late_join.is_none()
            && matches!(p.math, Math::Dau | Math::UniqueGroup);
        if let Some(n) = p.actor_group {
            pred.push(match numbered {
                true => col(group_number_column(n)).not_eq(lit(0u32)),
                false => col(group_column(n)).not_eq(lit("")),
            });
        }
        if let Some(pred) = pred.into_iter().reduce(Expr::and) {
            df = df.filter(pred)?;
        }
        let join = |df: DataFrame, n: u8, left: &str| -> Result<DataFrame> {
            let table = groups
                .get(&n)
                .ok_or_else(|| Error::Internal(format!("groups table {n} not loaded")))?;
            let right = self.context().read_table(table.clone())?;
            let right_col = group_key_column(n);
            Ok(df.join(right, JoinType::Left, &[left], &[right_col.as_str()], None)?)
        };
        for n in &p.joins {
            df = join(df, *n, group_column(*n))?;
        }
        if let Some(f) = &p.filter {
            df = df.filter(f.clone())?;
        }
        let actor = match (p.actor_group, numbered) {
            (Some(n), true) => col(group_number_column(n)),
            (None, true) => col(DISTINCT_ID_NUM),
            (Some(n), false) => col(group_column(n)),
            (None, false) => col(DISTINCT_ID),
        };
        let raw = match &r.breakdown {
            Some((e, _)) => cast_expr(e.clone(), DataType::Utf8),
            None => lit(ScalarValue::Utf8(None)),
        };
        let bucket = BucketUdf::expr(buckets, col(TIMESTAMP)).alias(BUCKET);
        if let Some(n) = p.late_join {
            // Only unique actors are counted: distinct (bucket, actor) first, then the join.
            let reduced = df.select(vec![bucket, actor.alias(ACTOR)])?.distinct()?;
            return Ok(join(reduced, n, ACTOR)?.select(vec![
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

    async fn run_series(
        &self,
        events: &crate::Events,
        groups: &HashMap<u8, Arc<dyn TableProvider>>,
        r: &Resolved,
        visible: &Buckets,
        p: &Plan<'_>,
        display: Display,
    ) -> Result<Vec<SeriesResult>> {
        let n = visible.len();
        // Weekly/monthly active over buckets at least as long as the period is plain unique
        // actors (PostHog falls back to dau).
        let window_days = match p.math {
            Math::WeeklyActive => Some(7),
            Math::MonthlyActive => Some(30),
            _ => None,
        };
        // (unit, units in the window) of the trailing window, or None when the buckets are at
        // least as long as the window.
        let window = window_days.and_then(|days| match r.interval {
            Interval::Hour => Some((Interval::Hour, days * 24)),
            Interval::Day => Some((Interval::Day, days)),
            Interval::Week if days > 7 => Some((Interval::Day, days)),
            Interval::Week | Interval::Month => None,
        });
        let math = match (p.math, window) {
            (Math::WeeklyActive | Math::MonthlyActive, None) => Math::Dau,
            (m, _) => m,
        };

        // The series rows over the visible buckets, when both the ranking below and the
        // series itself read them and they can be reduced to distinct actors: then they are
        // computed once and kept (see `reduce_actor_rows`).
        let reusable = window.is_none()
            && math.counts_actors()
            && !(display == Display::TotalValue && window_days.is_some());
        let mut kept: Option<DataFrame> = None;

        // Labels: rank breakdown values over the range, keep the top ones.
        let (label_expr, order) = match &r.breakdown {
            None => (lit(""), vec![String::new()]),
            Some((_, b)) => {
                let frame =
                    self.series_frame(events, groups, r, visible, p, visible.scan_from())?;
                let frame = match reusable {
                    true => match self.reduce_actor_rows(frame).await? {
                        Some(reduced) => {
                            kept = Some(reduced.clone());
                            reduced
                        }
                        None => {
                            self.series_frame(events, groups, r, visible, p, visible.scan_from())?
                        }
                    },
                    false => frame,
                };
                let rank_math = if window.is_some() { Math::Dau } else { math };
                let ranked = frame.aggregate(vec![col(RAW)], vec![aggregate(rank_math)])?;
                let mut values = collect_labelled(crate::collect(ranked).await?, RAW)?;
                values.retain(|(v, _)| v.is_some());
                values.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let limit = if b.limit == 0 {
                    DEFAULT_BREAKDOWN_LIMIT
                } else {
                    b.limit
                };
                let more = values.len() > limit;
                let top: Vec<String> = values
                    .into_iter()
                    .take(limit)
                    .filter_map(|(v, _)| v)
                    .collect();
                let mut label = when(col(RAW).is_null(), lit(BREAKDOWN_NULL));
                if !top.is_empty() {
                    let list = top.iter().map(|v| lit(v.as_str())).collect();
                    label = label.when(col(RAW).in_list(list, false), col(RAW));
                }
                let label = if b.hide_other {
                    label.end()?
                } else {
                    label.otherwise(lit(BREAKDOWN_OTHER))?
                };
                let mut order = top;
                order.push(BREAKDOWN_NULL.to_string());
                if more && !b.hide_other {
                    order.push(BREAKDOWN_OTHER.to_string());
                }
                (label, order)
            }
        };

        let label_of = |frame: DataFrame| -> Result<DataFrame> {
            let frame = frame.with_column(LABEL, label_expr.clone())?;
            // Hidden "other" values have a NULL label.
            Ok(frame.filter(col(LABEL).is_not_null())?)
        };
        // Group-by keys: the label only with a breakdown (a constant key would turn a
        // one-column distinct count into a slower two-column group-by).
        let has_breakdown = r.breakdown.is_some();
        let by = |rest: Vec<Expr>| -> Vec<Expr> {
            if has_breakdown {
                std::iter::once(col(LABEL)).chain(rest).collect()
            } else {
                rest
            }
        };

        let mut per_label: HashMap<String, Vec<f64>> = HashMap::new();
        let mut totals: HashMap<String, f64> = HashMap::new();
        match (display, window) {
            (Display::TotalValue, _) => {
                let from = match window_days {
                    // Active actors in the period ending at date_to.
                    Some(days) => {
                        let local_end = crate::calendar::instant_to_local(r.tz, r.range.to).date();
                        let start = (local_end - chrono::Duration::days(days - 1))
                            .and_time(chrono::NaiveTime::MIN);
                        crate::calendar::local_to_instant(r.tz, start).max(visible.scan_from())
                    }
                    None => visible.scan_from(),
                };
                let frame = match &kept {
                    Some(rows) if from == visible.scan_from() => rows.clone(),
                    _ => self.series_frame(events, groups, r, visible, p, from)?,
                };
                let frame = label_of(frame)?;
                let agg_math = if window_days.is_some() {
                    Math::Dau
                } else {
                    math
                };
                let out = frame.aggregate(by(vec![]), vec![aggregate(agg_math)])?;
                for (label, v) in collect_labelled(crate::collect(out).await?, LABEL)? {
                    totals.insert(label.unwrap_or_default(), v);
                }
            }
            (_, Some((unit, w))) => {
                // Trailing-window actives: events are truncated to the unit (hour or day);
                // an actor active in unit u counts in every bucket starting in
                // [start(u), start(u) + window). One actor's ranges are merged, then counted
                // with a difference array.
                let range = TimeRange {
                    from: visible.scan_from(),
                    ..r.range
                };
                let units = Buckets::new(range, unit, r.week_start, w as usize)?;
                let starts = visible.starts();
                let cover: Vec<(i64, i64)> = (0..units.bounds.len())
                    .map(|u| {
                        let s = units.bounds[u];
                        let e = units
                            .bounds
                            .get(u + w as usize)
                            .copied()
                            .unwrap_or(i64::MAX);
                        let lo = starts.partition_point(|b| *b < s) as i64;
                        let hi = starts.partition_point(|b| *b < e) as i64 - 1;
                        (lo, hi)
                    })
                    .collect();
                let frame = label_of(self.series_frame(
                    events,
                    groups,
                    r,
                    &units,
                    p,
                    units.scan_from(),
                )?)?;
                let pairs = frame
                    .select(vec![col(LABEL), col(ACTOR), col(BUCKET)])?
                    .filter(col(BUCKET).is_not_null())?
                    .distinct()?
                    .sort(vec![
                        col(LABEL).sort(true, false),
                        col(ACTOR).sort(true, false),
                        col(BUCKET).sort(true, false),
                    ])?;
                let (mut stream, _explain) = crate::execute_stream(pairs).await?;
                let mut diff: HashMap<String, Vec<i64>> = HashMap::new();
                let mut current: Option<(String, String, i64, i64)> = None;
                let flush = |c: &Option<(String, String, i64, i64)>,
                             diff: &mut HashMap<String, Vec<i64>>| {
                    if let Some((label, _, lo, hi)) = c {
                        let lo = (*lo).max(0);
                        let hi = (*hi).min(n as i64 - 1);
                        if lo <= hi {
                            let d = diff.entry(label.clone()).or_insert_with(|| vec![0; n + 1]);
                            d[lo as usize] += 1;
                            d[hi as usize + 1] -= 1;
                        }
                    }
                };
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    let labels = string_column(&batch, 0)?;
                    let actors = string_column(&batch, 1)?;
                    let idx = int_column(&batch, 2)?;
                    for row in 0..batch.num_rows() {
                        let (label, actor) = (labels.value(row), actors.value(row));
                        let Some(&(lo, hi)) = usize::try_from(idx.value(row))
                            .ok()
                            .and_then(|u| cover.get(u))
                        else {
                            continue;
                        };
                        if lo > hi {
                            continue;
                        }
                        match &mut current {
                            Some((l, a, _, chi)) if l == label && a == actor && lo <= *chi + 1 => {
                                *chi = (*chi).max(hi);
                            }
                            _ => {
                                flush(&current, &mut diff);
                                current = Some((label.to_string(), actor.to_string(), lo, hi));
                            }
                        }
                    }
                }
                flush(&current, &mut diff);
                for (label, d) in diff {
                    let mut acc = 0i64;
                    let data = d[..n]
                        .iter()
                        .map(|x| {
                            acc += x;
                            acc as f64
                        })
                        .collect();
                    per_label.insert(label, data);
                }
            }
            (Display::Cumulative, None) if math.counts_actors() => {
                let frame = label_of(match kept.take() {
                    Some(rows) => rows,
                    None => {
                        self.series_frame(events, groups, r, visible, p, visible.scan_from())?
                    }
                })?;
                let first = frame
                    .aggregate(
                        by(vec![col(ACTOR)]),
                        vec![
                            datafusion::functions_aggregate::expr_fn::min(col(BUCKET))
                                .alias(BUCKET),
                        ],
                    )?
                    .aggregate(by(vec![col(BUCKET)]), vec![aggregate(Math::Total)])?;
                fill(&mut per_label, crate::collect(first).await?, n)?;
            }
            (Display::TimeSeries | Display::Cumulative, None) => {
                let frame = label_of(match kept.take() {
                    Some(rows) => rows,
                    None => {
                        self.series_frame(events, groups, r, visible, p, visible.scan_from())?
                    }
                })?;
                let out = frame.aggregate(by(vec![col(BUCKET)]), vec![aggregate(math)])?;
                fill(&mut per_label, crate::collect(out).await?, n)?;
            }
        }

        let series_label = p
            .series
            .name
            .clone()
            .or_else(|| p.series.event.clone())
            .unwrap_or_else(|| "All events".to_string());
        let mut out = Vec::new();
        for label in order {
            let breakdown_value = r.breakdown.as_ref().map(|_| label.clone());
            // A ranked value with no rows shows zeros; the null and "other" lines only appear
            // when they have rows.
            let present = totals.contains_key(&label) || per_label.contains_key(&label);
            if !present && (label == BREAKDOWN_NULL || label == BREAKDOWN_OTHER) {
                continue;
            }
            let line = if display == Display::TotalValue {
                let v = totals.get(&label).copied().unwrap_or(0.0);
                SeriesResult {
                    series_index: p.index,
                    label: series_label.clone(),
                    breakdown_value,
                    data: Vec::new(),
                    count: v,
                    aggregated_value: Some(v),
                }
            } else {
                let mut data = per_label.remove(&label).unwrap_or_else(|| vec![0.0; n]);
                let count = if display == Display::Cumulative {
                    let mut acc = 0.0;
                    for v in data.iter_mut() {
                        acc += *v;
                        *v = acc;
                    }
                    acc
                } else {
                    data.iter().sum()
                };
                SeriesResult {
                    series_index: p.index,
                    label: series_label.clone(),
                    breakdown_value,
                    data,
                    count,
                    aggregated_value: None,
                }
            };
            out.push(line);
        }
        Ok(out)
    }
}

/// Bytes of reduced series rows kept in memory to be read twice (breakdown ranking and
/// series); past this the series is computed again from the events instead.
const KEPT_ROWS_BYTES: usize = 256 << 20;

impl QueryEngine {
    /// The distinct `(__bucket, __raw, __actor)` rows of a series frame whose math counts
    /// actors, collected into memory (with a NULL `__value`) so that the breakdown ranking
    /// and the series read them without scanning the events twice. `None` when they exceed
    /// [`KEPT_ROWS_BYTES`]; the caller then plans the series frame again.
    async fn reduce_actor_rows(&self, frame: DataFrame) -> Result<Option<DataFrame>> {
        let reduced = frame
            .select(vec![col(BUCKET), col(RAW), col(ACTOR)])?
            .distinct()?;
        let (mut stream, _explain) = crate::execute_stream(reduced).await?;
        let schema = stream.schema();
        let mut batches = Vec::new();
        let mut held = HeldBytes::default();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if held.add(&batch) > KEPT_ROWS_BYTES {
                return Ok(None);
            }
            batches.push(batch);
        }
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        Ok(Some(self.context().read_table(Arc::new(table))?.select(
            vec![
                col(BUCKET),
                col(RAW),
                col(ACTOR),
                lit(ScalarValue::Float64(None)).alias(VALUE),
            ],
        )?))
    }
}

/// Bytes held by a sequence of batches, each buffer counted once: an aggregate emits its
/// output as slices of one array, and `get_array_memory_size` of every slice counts the
/// whole buffer again (at 100M events the kept rows of a breakdown "weighed" gigabytes).
#[derive(Debug, Default)]
struct HeldBytes {
    seen: std::collections::HashSet<usize>,
    bytes: usize,
}

impl HeldBytes {
    /// Adds the buffers of `batch` not seen before; the total so far.
    fn add(&mut self, batch: &RecordBatch) -> usize {
        fn walk(data: &datafusion::arrow::array::ArrayData, held: &mut HeldBytes) {
            let buffers = data
                .buffers()
                .iter()
                .chain(data.nulls().map(|n| n.buffer()));
            for b in buffers {
                if held.seen.insert(b.data_ptr().as_ptr() as usize) {
                    held.bytes += b.capacity();
                }
            }
            for child in data.child_data() {
                walk(child, held);
            }
        }
        for column in batch.columns() {
            walk(&column.to_data(), self);
        }
        self.bytes
    }
}

/// The aggregate of a math over `__actor` / `__value`, as Float64 named `__v`.
fn aggregate(math: Math) -> Expr {
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
    // PostHog's ifNull(agg, 0).
    coalesce(vec![cast_expr(e, DataType::Float64), lit(0.0)]).alias(V)
}

fn string_column(batch: &RecordBatch, i: usize) -> Result<StringArray> {
    crate::column_as(batch, i, &DataType::Utf8)
}

fn int_column(batch: &RecordBatch, i: usize) -> Result<Int32Array> {
    crate::column_as(batch, i, &DataType::Int32)
}

fn float_column(batch: &RecordBatch, i: usize) -> Result<Float64Array> {
    crate::column_as(batch, i, &DataType::Float64)
}

/// `(label, value)` rows of batches whose columns are `[name, __v]`.
fn collect_labelled(batches: Vec<RecordBatch>, name: &str) -> Result<Vec<(Option<String>, f64)>> {
    let mut out = Vec::new();
    for b in batches {
        // Without a breakdown there is no label column: every row is the one line "".
        let labels = match b.schema().index_of(name) {
            Ok(i) => Some(string_column(&b, i)?),
            Err(_) => None,
        };
        let values = float_column(&b, b.schema().index_of(V)?)?;
        for row in 0..b.num_rows() {
            let label = match &labels {
                Some(l) => (!l.is_null(row)).then(|| l.value(row).to_string()),
                None => Some(String::new()),
            };
            out.push((label, values.value(row)));
        }
    }
    Ok(out)
}

/// Adds `[__label, __bucket, __v]` rows to zero-filled per-label vectors.
fn fill(
    per_label: &mut HashMap<String, Vec<f64>>,
    batches: Vec<RecordBatch>,
    n: usize,
) -> Result<()> {
    for b in batches {
        let labels = match b.schema().index_of(LABEL) {
            Ok(i) => Some(string_column(&b, i)?),
            Err(_) => None,
        };
        let buckets = int_column(&b, b.schema().index_of(BUCKET)?)?;
        let values = float_column(&b, b.schema().index_of(V)?)?;
        for row in 0..b.num_rows() {
            if buckets.is_null(row) {
                continue;
            }
            let i = buckets.value(row);
            if i < 0 || i as usize >= n {
                continue;
            }
            let label = labels.as_ref().map_or("", |l| l.value(row));
            let data = per_label
                .entry(label.to_string())
                .or_insert_with(|| vec![0.0; n]);
            data[i as usize] += values.value(row);
        }
    }
    Ok(())
}

fn resolve(query: &TrendsQuery, mapping: &GroupTypeMapping, now: i64) -> Result<Resolved> {
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

fn plan_series<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, StringViewArray};

    #[test]
    fn held_bytes_count_a_shared_buffer_once() {
        let values: ArrayRef = Arc::new(StringViewArray::from_iter_values(
            (0..10_000).map(|n| format!("a value longer than twelve bytes {n}")),
        ));
        let batch = RecordBatch::try_from_iter([("v", values)]).expect("batch");
        let whole = HeldBytes::default().add(&batch);
        let mut held = HeldBytes::default();
        let mut total = 0;
        for i in 0..10 {
            total = held.add(&batch.slice(i * 1000, 1000));
        }
        assert_eq!(total, whole);
        // What a sum of get_array_memory_size would have said.
        let naive: usize = (0..10)
            .map(|i| batch.slice(i * 1000, 1000).get_array_memory_size())
            .sum();
        assert!(naive > 5 * whole, "{naive} vs {whole}");
    }
}
