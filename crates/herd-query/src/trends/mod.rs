//! Trends (spec §2): per series and time bucket, a count of events, of unique users or groups,
//! of weekly/monthly active actors, or an aggregate of a numeric property; with property
//! filters, breakdowns with a limit and an "other" bucket, and total-value and cumulative
//! displays.
//!
//! A request is one DataFusion plan ([`plan`]): each series' events (files + write buffer)
//! through its filters and joins to the math per line and bucket, the breakdown's ranking
//! inside the plan ([`breakdown`]), trailing windows as window functions ([`active`]), the
//! series united. [`resolve`] checks the request; [`fold`] zero-fills the rows into lines.

mod active;
pub(crate) use active::CoverUdf;
pub(crate) mod breakdown;
mod fold;
mod plan;
mod resolve;

use crate::calendar::{Buckets, Interval, WeekStart};
use crate::filters::{PropertyGroup, PropertySource};
use crate::{QueryEngine, Result};

/// Label of the breakdown bucket of events without the property (PostHog's).
pub const BREAKDOWN_NULL: &str = "$$_posthog_breakdown_null_$$";
/// Label of the bucket collecting values beyond the breakdown limit (PostHog's).
pub const BREAKDOWN_OTHER: &str = "$$_posthog_breakdown_other_$$";
/// Breakdown limit when the request gives none.
pub const DEFAULT_BREAKDOWN_LIMIT: usize = 25;
/// The most series one request may have.
pub const MAX_SERIES: usize = 50;

/// What a series computes per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Breakdown {
    /// Property name.
    pub property: String,
    /// Event property or the current property of a group type.
    #[serde(default)]
    pub source: PropertySource,
    /// Values shown (ranked by the series' value over the range); 0 = 25.
    #[serde(default)]
    pub limit: usize,
    /// Drop values beyond the limit instead of collecting them in the "other" bucket.
    #[serde(default)]
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
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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

const LABEL: &str = "__label";
const ORDER: &str = "__order";
const SERIES: &str = "__series";
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
        self.on_cluster(|| self.trends_once(project, query, now))
            .await
    }

    async fn trends_once(
        &self,
        project: herd_core::ProjectId,
        query: &TrendsQuery,
        now: i64,
    ) -> Result<TrendsResult> {
        let mapping = self.db().group_types(project).await.unwrap_or_default();
        let resolved = resolve::resolve(query, &mapping, now)?;
        let plans = query
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| resolve::plan_series(i, s, query, &mapping, &resolved))
            .collect::<Result<Vec<_>>>()?;
        let events = self.events_source(project).await?;
        let joined: Vec<u8> = plans
            .iter()
            .flat_map(|p| p.joins.iter().chain(&p.late_join).copied())
            .collect();
        let groups = self.group_tables(project, &joined).await?;
        let buckets = Buckets::new(resolved.range, resolved.interval, resolved.week_start, 0)?;
        let (plan, shapes) =
            self.trends_plan(&events, &groups, &resolved, &buckets, &plans, query.display)?;
        let rows = crate::collect(plan).await?;
        let results = fold::lines(
            &rows,
            &plans,
            &shapes,
            resolved.breakdown.is_some(),
            query.display,
            buckets.len(),
        )?;
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

    /// The physical plan of a trends query as `EXPLAIN` shows it (the query runs: the plan is
    /// the one that answered).
    pub async fn explain_trends(
        &self,
        project: herd_core::ProjectId,
        query: &TrendsQuery,
        now: i64,
    ) -> Result<String> {
        let (_, plans) = crate::record_plans(self.trends(project, query, now)).await?;
        Ok(crate::show_plans(&plans, false))
    }
}
