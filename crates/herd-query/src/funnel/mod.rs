//! Funnels (spec §3): how many actors (users, or groups of one type) get through a sequence of
//! steps within a conversion window, with exclusions, optional steps, breakdowns with
//! attribution, conversion times, the time-to-convert histogram and funnel trends.
//!
//! One DataFusion plan: the project's events in range (files + write buffer) → optional left
//! joins to the current groups tables → a projection of the actor, the time, the bitmask of
//! matched steps, the bitmask of matched exclusion spans, the breakdown value and the trends
//! bucket → a hash repartition on the actor → [`exec::FunnelExec`] (planned from the logical
//! [`plan::FunnelNode`]), which runs the per-actor state machine of [`machine`].
//! [`QueryEngine::explain_funnel`] shows that plan. The per-actor outcomes are then folded
//! into step counts and conversion times here. [`udaf::FunnelUdaf`] is the same state machine
//! as an aggregate function (its tests hold it to the same answers).

mod answer;
mod exec;
mod fold;
mod fold_exec;
pub mod machine;
pub(crate) mod plan;
mod resolve;
pub mod udaf;

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, cast as cast_expr, lit, when};
use datafusion::prelude::{DataFrame, col};
use herd_core::schema::{EVENT, TIMESTAMP};

use crate::bucket::BucketUdf;
use crate::calendar::{Buckets, Interval, WeekStart};
use crate::event_mask::EventMaskUdf;
use crate::filters::PropertyGroup;
use crate::trends::Breakdown;
use crate::{Error, QueryEngine, Result};

pub use exec::DEFAULT_FUNNEL_MEMORY;
pub(crate) use exec::{FunnelExec, FunnelWire};
pub(crate) use fold::FoldKind;
pub(crate) use fold_exec::{FunnelFoldExec, Stage as FoldStage};
use machine::Params;
pub use machine::{Attribution, MAX_STEPS, Order};
use resolve::{Resolved, resolve};
use udaf::Mode;

/// Breakdown line collecting the values beyond the limit (PostHog's funnel label).
pub const FUNNEL_OTHER: &str = "Other";

/// Unit of a conversion window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowUnit {
    /// Seconds.
    Second,
    /// Minutes.
    Minute,
    /// Hours.
    Hour,
    /// Days.
    #[default]
    Day,
    /// 7 days.
    Week,
    /// 31 days (PostHog's month).
    Month,
}

impl WindowUnit {
    fn micros(self) -> i64 {
        const S: i64 = 1_000_000;
        match self {
            WindowUnit::Second => S,
            WindowUnit::Minute => 60 * S,
            WindowUnit::Hour => 3600 * S,
            WindowUnit::Day => 86_400 * S,
            WindowUnit::Week => 7 * 86_400 * S,
            WindowUnit::Month => 31 * 86_400 * S,
        }
    }
}

/// A window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// How many units (> 0).
    pub value: i64,
    /// The unit.
    #[serde(default)]
    pub unit: WindowUnit,
}

impl Window {
    fn micros(&self, field: &str) -> Result<i64> {
        if self.value <= 0 {
            return Err(Error::invalid(
                field,
                format!("the window must be positive (got {})", self.value),
            ));
        }
        self.value
            .checked_mul(self.unit.micros())
            .filter(|w| *w <= 3650 * WindowUnit::Day.micros())
            .ok_or_else(|| Error::invalid(field, "the window is longer than 10 years"))
    }
}

/// One step of a funnel.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunnelStep {
    /// Event name; `None` for any event.
    pub event: Option<String>,
    /// Filters the event must pass.
    pub filters: PropertyGroup,
    /// Display name; defaults to the event name.
    pub name: Option<String>,
    /// The step may be skipped (never the first step).
    pub optional: bool,
    /// Extra window from the previous reached step to this one (beyond PostHog, #37418).
    pub window: Option<Window>,
}

/// An exclusion: an event that disqualifies an attempt between two steps.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunnelExclusion {
    /// Event name; `None` for any event.
    pub event: Option<String>,
    /// Filters of the excluding event.
    pub filters: PropertyGroup,
    /// The attempt is disqualified once it reached this step (0-based)…
    pub from_step: usize,
    /// …and before it reached this one.
    pub to_step: usize,
}

/// What the funnel answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FunnelViz {
    /// Counts and conversion times per step.
    #[default]
    Steps,
    /// Conversion rate per interval of entry.
    Trends,
    /// Histogram of the time from one step to another.
    TimeToConvert,
}

/// A funnel request.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunnelQuery {
    /// Two or more steps.
    pub steps: Vec<FunnelStep>,
    /// Step order.
    pub order: Order,
    /// Conversion window (default 14 days).
    pub window: Option<Window>,
    /// Group type whose keys are the actors; `None` for users (`distinct_id`).
    pub aggregation_group_type: Option<String>,
    /// Exclusion steps.
    pub exclusions: Vec<FunnelExclusion>,
    /// Optional breakdown.
    pub breakdown: Option<Breakdown>,
    /// How an actor's breakdown value is chosen.
    pub attribution: Attribution,
    /// Start (see trends); empty = `-7d`.
    pub date_from: String,
    /// End (inclusive); empty = now.
    pub date_to: String,
    /// IANA timezone; empty = UTC.
    pub timezone: String,
    /// Filters on every event of the funnel.
    pub filters: PropertyGroup,
    /// Steps, trends or time to convert.
    pub viz: FunnelViz,
    /// Trends bucket width (default day).
    pub interval: Option<Interval>,
    /// First day of week buckets.
    pub week_start: WeekStart,
    /// Trends / time to convert: from this step (default 0).
    pub from_step: Option<usize>,
    /// Trends / time to convert: to this step (default the last).
    pub to_step: Option<usize>,
    /// Time to convert: number of bins (1..=90; default automatic).
    pub bin_count: Option<usize>,
    /// Let conversions complete after `date_to` for entries made before it (PostHog #33605).
    pub window_past_date_to: bool,
}

/// One step of a result line.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FunnelStepResult {
    /// 0-based position.
    pub order: usize,
    /// Display name ("Completed N steps" in unordered funnels).
    pub name: String,
    /// Event of the step (`None` for any event or unordered funnels).
    pub event: Option<String>,
    /// Whether the step is optional.
    pub optional: bool,
    /// Actors that reached the step.
    pub count: u64,
    /// Mean seconds from the previous reached step, over non-zero conversions.
    pub average_conversion_time: Option<f64>,
    /// Median of the same.
    pub median_conversion_time: Option<f64>,
}

/// The steps of one breakdown value (or of the whole funnel).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FunnelLine {
    /// Breakdown value (`''` when missing, [`FUNNEL_OTHER`] beyond the limit); `None` without
    /// a breakdown.
    pub breakdown_value: Option<String>,
    /// The steps.
    pub steps: Vec<FunnelStepResult>,
}

/// Time-to-convert histogram.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TimeToConvert {
    /// `(bin start in seconds, actors)`; one more entry than bins (spec §3.6).
    pub bins: Vec<(f64, u64)>,
    /// Mean seconds over all converting actors (zero included).
    pub average_conversion_time: Option<f64>,
}

/// One bucket of funnel trends.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FunnelTrendPoint {
    /// Bucket label.
    pub label: String,
    /// Bucket start (µs).
    pub start: i64,
    /// Entries that reached the from step.
    pub reached_from_step_count: u64,
    /// Entries that reached the to step.
    pub reached_to_step_count: u64,
    /// `round(to / from · 100, 2)`, 0 when from is 0.
    pub conversion_rate: f64,
}

/// Funnel trends of one breakdown value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FunnelTrendsLine {
    /// Breakdown value; `None` without a breakdown.
    pub breakdown_value: Option<String>,
    /// One point per bucket, zero-filled.
    pub data: Vec<FunnelTrendPoint>,
}

/// The answer to a [`FunnelQuery`].
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct FunnelResult {
    /// Resolved start (µs).
    pub date_from: i64,
    /// Resolved end (µs, inclusive).
    pub date_to: i64,
    /// Timezone used.
    pub timezone: String,
    /// Steps viz: one line, or one per breakdown value ranked by conversions.
    pub lines: Vec<FunnelLine>,
    /// Time-to-convert viz.
    pub time_to_convert: Option<TimeToConvert>,
    /// Trends viz.
    pub trends: Vec<FunnelTrendsLine>,
}

const ACTOR: &str = "__actor";

impl QueryEngine {
    /// Answers a funnel query on `project`; `now` (µs) resolves relative dates.
    pub async fn funnel(
        &self,
        project: herd_core::ProjectId,
        query: &FunnelQuery,
        now: i64,
    ) -> Result<FunnelResult> {
        self.on_cluster(|| self.funnel_once(project, query, now))
            .await
    }

    async fn funnel_once(
        &self,
        project: herd_core::ProjectId,
        query: &FunnelQuery,
        now: i64,
    ) -> Result<FunnelResult> {
        let mapping = self.db().group_types(project).await.unwrap_or_default();
        let r = resolve(query, &mapping, now)?;
        let (input, mode, buckets) = self.funnel_input(project, query, &r).await?;
        let kind = fold_kind(&r, &mode, buckets.as_ref());
        let fold = self.run_funnel(input, &r.params, &mode, kind).await?;
        let mut result = FunnelResult {
            date_from: r.range.from,
            date_to: r.range.to,
            timezone: r.tz.name().to_string(),
            ..Default::default()
        };
        let breakdown = r.breakdown.is_some();
        match (query.viz, buckets) {
            (FunnelViz::Steps, _) => result.lines = answer::step_lines(fold, query, breakdown),
            (FunnelViz::TimeToConvert, _) => {
                result.time_to_convert = Some(answer::time_to_convert(fold, query.bin_count))
            }
            (FunnelViz::Trends, Some(b)) => {
                result.trends = answer::trend_lines(fold, &b, r.tz, breakdown)
            }
            (FunnelViz::Trends, None) => return Err(Error::Internal("no buckets".into())),
        }
        Ok(result)
    }
}

/// What the plan's fold computes for `mode`.
fn fold_kind(r: &Resolved, mode: &Mode, buckets: Option<&Buckets>) -> fold::FoldKind {
    match mode {
        Mode::Steps => fold::FoldKind::Steps {
            steps: r.params.steps,
            from_step: r.from_step,
            to_step: r.to_step,
        },
        Mode::Trends { .. } => fold::FoldKind::Trends {
            buckets: buckets.map_or(0, Buckets::len),
        },
    }
}

impl QueryEngine {
    /// The physical plan of a funnel query, as `EXPLAIN` shows it (one line per operator,
    /// children indented), from the events scan to the [`exec::FunnelExec`].
    pub async fn explain_funnel(
        &self,
        project: herd_core::ProjectId,
        query: &FunnelQuery,
        now: i64,
    ) -> Result<String> {
        let mapping = self.db().group_types(project).await.unwrap_or_default();
        let r = resolve(query, &mapping, now)?;
        let (input, mode, buckets) = self.funnel_input(project, query, &r).await?;
        let kind = fold_kind(&r, &mode, buckets.as_ref());
        let plan = self.funnel_plan(input, &r.params, &mode, kind).await?;
        Ok(crate::show_plans(std::slice::from_ref(&plan), false))
    }

    /// Runs a funnel query (`EXPLAIN ANALYZE`): its answer and its physical plan with each
    /// operator's execution metrics (rows, time, the funnel's spills).
    pub async fn analyze_funnel(
        &self,
        project: herd_core::ProjectId,
        query: &FunnelQuery,
        now: i64,
    ) -> Result<(FunnelResult, String)> {
        let (answer, plans) = crate::record_plans(self.funnel(project, query, now)).await?;
        Ok((answer, crate::show_plans(&plans, true)))
    }

    /// The funnel's rows as logical plans (see [`exec::Input`]), what the aggregate computes,
    /// and the buckets of a funnel trend.
    async fn funnel_input(
        &self,
        project: herd_core::ProjectId,
        query: &FunnelQuery,
        r: &Resolved,
    ) -> Result<(exec::Input, Mode, Option<Buckets>)> {
        let events = self.events_source(project).await?;
        // Actors by their numbers when every row has them (no strings to hash).
        let numbered = events.numbered();
        // An ordered funnel without exclusions or breakdown over actor numbers keeps only the
        // first-step rows that can start a counted attempt (`exec::Input::Split`).
        let split = numbered
            && query.order == Order::Ordered
            && !matches!(query.viz, FunnelViz::Trends)
            && r.breakdown.is_none()
            && query.exclusions.is_empty();
        let df = self.events_between(&events, r.range.from, r.scan_to)?;
        let df = self.funnel_events(project, df, r, numbered, split).await?;
        let masks = Masks::new(query, r)?;
        let (mode, buckets) = mode_of(query, r)?;
        let columns = row_columns(r, numbered, &masks, buckets.as_ref());
        // A split funnel's parts are each narrowed by their steps' event names, so that files
        // sorted by event are read only where those are.
        debug_assert!(!split || mode == Mode::Steps);
        let input = if split {
            split_input(df, query, columns, masks.first_by_name)?
        } else {
            let mut df = df.select(columns)?;
            if query.order != Order::Strict && !masks.exact {
                // Events of the funnel's names that pass none of the step or exclusion
                // filters.
                df = df.filter(
                    col("__steps")
                        .not_eq(u32_lit(0))
                        .or(col("__excl").not_eq(u32_lit(0))),
                )?;
            }
            exec::Input::All(df)
        };
        Ok((input, mode, buckets))
    }

    /// The events that can enter the funnel: of its names (unless split: each part narrows
    /// by its own), with an actor, joined to the groups tables it needs, past the global
    /// filters.
    async fn funnel_events(
        &self,
        project: herd_core::ProjectId,
        df: DataFrame,
        r: &Resolved,
        numbered: bool,
        split: bool,
    ) -> Result<DataFrame> {
        // A split funnel's parts are each narrowed by their own steps' names (below): the
        // list of all names would be one more string lookup per row.
        let names = r.event_names.as_deref().filter(|_| !split).unwrap_or(&[]);
        let tables = self.group_tables(project, &r.joins).await?;
        let spec = crate::rows::RowSpec {
            names,
            actor_group: r.actor_group,
            numbered,
            joins: &r.joins,
            filter: r.global.as_ref(),
        };
        let df = self.insight_rows(df, &spec, &tables)?;
        Ok(df)
    }

    /// The funnel's one physical plan: its rows and the [`exec::FunnelExec`] over them.
    async fn funnel_plan(
        &self,
        input: exec::Input,
        params: &Params,
        mode: &Mode,
        kind: fold::FoldKind,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let (later, entries) = match input {
            exec::Input::All(df) => (df, None),
            exec::Input::Split { later, entries } => (later, Some(entries)),
        };
        let plan = plan::FunnelNode::plan(
            later.into_unoptimized_plan(),
            entries.map(DataFrame::into_unoptimized_plan),
            params.clone(),
            mode.clone(),
            kind,
            self.funnel_memory,
        )?;
        let df = DataFrame::new(self.context().state(), plan);
        Ok(df.create_physical_plan().await?)
    }

    /// Runs the funnel's plan: its fold's final state.
    async fn run_funnel(
        &self,
        input: exec::Input,
        params: &Params,
        mode: &Mode,
        kind: fold::FoldKind,
    ) -> Result<fold::Fold> {
        let physical = self.funnel_plan(input, params, mode, kind).await?;
        let _explain = crate::Explain::new(physical.clone());
        let batches =
            datafusion::physical_plan::collect(physical, self.context().task_ctx()).await?;
        fold_exec::read_back(kind, &batches)
    }
}

fn u32_lit(v: u32) -> Expr {
    lit(ScalarValue::UInt32(Some(v)))
}

/// The steps and exclusions matched by each row, as bitmasks. Steps and exclusions that are an
/// event name alone go through one name → mask lookup; the others (property filters, any
/// event, the bounded first step) through their condition.
struct Masks {
    steps: Expr,
    excl: Expr,
    /// Every event the scan keeps matches a step or exclusion.
    exact: bool,
    /// The first step is a plain event name (matched by name alone).
    first_by_name: bool,
}

impl Masks {
    fn new(query: &FunnelQuery, r: &Resolved) -> Result<Self> {
        let mut exact = r.event_names.is_some();
        let mut step_names = Vec::new();
        let mut steps = u32_lit(0);
        for (k, cond) in r.step_exprs.iter().enumerate() {
            let step = &query.steps[k];
            let bounded = k == 0 && r.scan_to > r.range.to;
            match &step.event {
                Some(name) if step.filters.is_empty() && !bounded => {
                    step_names.push((name.clone(), 1 << k));
                    continue;
                }
                _ => exact = false,
            }
            let mut cond = cond.clone();
            if bounded {
                // Entries only before date_to; later events can only complete them.
                let to = ScalarValue::TimestampMicrosecond(Some(r.range.to), Some("UTC".into()));
                cond = cond.and(col(TIMESTAMP).lt_eq(lit(to)));
            }
            steps = bit_or(steps, when(cond, u32_lit(1 << k)).otherwise(u32_lit(0))?);
        }
        let first_by_name = step_names.iter().any(|(_, bit)| *bit == 1);
        if !step_names.is_empty() {
            steps = bit_or(steps, EventMaskUdf::expr(step_names, col(EVENT)));
        }
        let mut excl_names = Vec::new();
        let mut excl = u32_lit(0);
        for (x, (cond, mask)) in query.exclusions.iter().zip(&r.exclusion_exprs) {
            match &x.event {
                Some(name) if x.filters.is_empty() => {
                    excl_names.push((name.clone(), *mask));
                    continue;
                }
                _ => exact = false,
            }
            excl = bit_or(
                excl,
                when(cond.clone(), u32_lit(*mask)).otherwise(u32_lit(0))?,
            );
        }
        if !excl_names.is_empty() {
            excl = bit_or(excl, EventMaskUdf::expr(excl_names, col(EVENT)));
        }
        Ok(Self {
            steps,
            excl,
            exact,
            first_by_name,
        })
    }
}

/// What the aggregate computes, and a funnel trend's buckets.
fn mode_of(query: &FunnelQuery, r: &Resolved) -> Result<(Mode, Option<Buckets>)> {
    Ok(match query.viz {
        FunnelViz::Trends => {
            let interval = query.interval.unwrap_or(Interval::Day);
            let b = Buckets::new(r.range, interval, query.week_start, 0)?;
            let mode = Mode::Trends {
                from_step: r.from_step,
                to_step: r.to_step,
            };
            (mode, Some(b))
        }
        _ => (Mode::Steps, None),
    })
}

/// The funnel's row: `(__actor, __ts, __steps, __excl, __bd, __bucket)`.
fn row_columns(
    r: &Resolved,
    numbered: bool,
    masks: &Masks,
    buckets: Option<&Buckets>,
) -> Vec<Expr> {
    let actor = crate::rows::actor(r.actor_group, numbered);
    let bd = match &r.breakdown {
        Some(e) => cast_expr(e.clone(), DataType::Utf8),
        None => lit(ScalarValue::Utf8(None)),
    };
    let bucket = match buckets {
        Some(b) => BucketUdf::expr(b, col(TIMESTAMP)),
        None => lit(0i32),
    };
    vec![
        actor.alias(ACTOR),
        cast_expr(col(TIMESTAMP), DataType::Int64).alias("__ts"),
        masks.steps.clone().alias("__steps"),
        masks.excl.clone().alias("__excl"),
        bd.alias("__bd"),
        bucket.alias("__bucket"),
    ]
}

/// A split funnel's two parts (see [`exec::Input::Split`]), each narrowed by its steps'
/// event names.
fn split_input(
    df: DataFrame,
    query: &FunnelQuery,
    columns: Vec<Expr>,
    first_by_name: bool,
) -> Result<exec::Input> {
    let named = |steps: &[FunnelStep]| -> Option<Expr> {
        let names: Option<Vec<Expr>> = steps.iter().map(|s| s.event.as_deref().map(lit)).collect();
        names.map(|n| col(EVENT).in_list(n, false))
    };
    let narrow = |df: DataFrame, e: Option<Expr>| match e {
        Some(e) => df.filter(e),
        None => Ok(df),
    };
    let later = narrow(df.clone(), named(&query.steps[1..]))?
        .select(columns.clone())?
        .filter(col("__steps").gt_eq(u32_lit(2)))?;
    // Only the entries' actors and times are used (their other columns are known). When the
    // first step is a plain event name that no later step can match, its rows are exactly the
    // events of that name: no step mask to compute per row.
    let first = &query.steps[0];
    let plain_first = first.event.as_ref().filter(|name| {
        first_by_name
            && query.steps[1..]
                .iter()
                .all(|s| s.event.as_ref().is_some_and(|later| later != *name))
    });
    let entries = match plain_first {
        Some(name) => df
            .filter(col(EVENT).eq(lit(name.as_str())))?
            .select(columns[..2].to_vec())?,
        None => narrow(df, named(&query.steps[..1]))?
            .select(columns)?
            .filter(col("__steps").eq(u32_lit(1)))?
            .select_columns(&[ACTOR, "__ts"])?,
    };
    Ok(exec::Input::Split { later, entries })
}

fn bit_or(a: Expr, b: Expr) -> Expr {
    Expr::BinaryExpr(BinaryExpr::new(
        Box::new(a),
        Operator::BitwiseOr,
        Box::new(b),
    ))
}
