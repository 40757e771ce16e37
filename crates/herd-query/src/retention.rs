//! Retention (spec §4): of the actors who did a target event in a period (a cohort), how many
//! did a returning event in each following period; recurring or first-time cohorts, by user
//! or by group type, with a breakdown by an event or group property (which PostHog lacks,
//! #36135).
//!
//! One DataFusion plan: events → optional joins to the current groups tables → a projection of
//! the actor, the bucket of target events, the bucket of returning events, the time and the
//! breakdown value of target events → `GROUP BY actor` with the [`RetentionUdaf`] aggregate,
//! whose flat state is two period bitsets, the first target time and the breakdown value of
//! the earliest target event that has one, per actor. An actor's cohorts and returns all count
//! under that one value (first touch), so a return is counted whatever its own value. The
//! cohorts are folded from the per-actor bitsets here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, Int64Array, Int64Builder, StringBuilder,
    StructArray,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Int32Type, Int64Type};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, GroupsAccumulator, Signature,
    Volatility, cast as cast_expr, lit, when,
};
use datafusion::prelude::{DataFrame, col};
use futures::StreamExt;
use herd_core::schema::{DISTINCT_ID, EVENT, TIMESTAMP};

use crate::bucket::BucketUdf;
use crate::calendar::{Buckets, End, Interval, TimeRange, WeekStart, parse_date, parse_timezone};
use crate::filters::{
    FilterBudget, PropertyGroup, PropertySource, event_condition, group_column, group_index,
    property_expr,
};
use crate::trends::{BREAKDOWN_NULL, BREAKDOWN_OTHER, Breakdown, DEFAULT_BREAKDOWN_LIMIT};
use crate::{Error, QueryEngine, Result};

/// Default number of periods.
pub const DEFAULT_PERIODS: usize = 7;
/// Most periods one request may have.
pub const MAX_PERIODS: usize = 512;

/// How cohorts are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetentionType {
    /// An actor joins the cohort of every period in which it did the target event.
    #[default]
    Recurring,
    /// An actor joins the cohort of the period of its first target event ever (matching the
    /// filters); actors whose first time is outside the range are left out.
    FirstTime,
}

/// The target or returning event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetentionEntity {
    /// Event name; `None` for any event.
    pub event: Option<String>,
    /// Filters of the event.
    pub filters: PropertyGroup,
}

/// A retention request.
#[derive(Debug, Clone, PartialEq, Default)]
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
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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
        let (mut stream, _explain) = crate::execute_stream(df).await?;

        // Per breakdown value, per cohort, per period.
        // Sparse: (cohort, period) → actors, so many breakdown values stay small.
        let mut per: HashMap<Option<String>, HashMap<(usize, usize), u64>> = HashMap::new();
        let words = periods.div_ceil(64);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let r = batch
                .column(1)
                .as_struct_opt()
                .ok_or_else(|| Error::Internal("retention output is a struct".into()))?;
            let bits = r.column(0).as_binary::<i32>();
            let first = r
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| Error::Internal("retention first time".into()))?;
            let bd = r
                .column(2)
                .as_string_opt::<i32>()
                .ok_or_else(|| Error::Internal("retention breakdown is not text".into()))?;
            for row in 0..batch.num_rows() {
                let key = if !by_value {
                    None
                } else if bd.is_null(row) {
                    Some(BREAKDOWN_NULL.to_string())
                } else {
                    Some(bd.value(row).to_string())
                };
                let raw = bits.value(row);
                let word = |w: usize| -> u64 {
                    raw.get(w * 8..w * 8 + 8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u64::from_le_bytes)
                };
                let has = |set: usize, i: usize| word(set * words + i / 64) & (1 << (i % 64)) != 0;
                let cohorts: Vec<usize> = match query.retention_type {
                    RetentionType::Recurring => (0..periods).filter(|i| has(0, *i)).collect(),
                    RetentionType::FirstTime => {
                        if first.is_null(row) {
                            continue;
                        }
                        let t = first.value(row);
                        if t < from || t >= end {
                            continue;
                        }
                        buckets.index_of(t).into_iter().collect()
                    }
                };
                if cohorts.is_empty() {
                    continue;
                }
                let table = per.entry(key).or_default();
                for i in cohorts {
                    *table.entry((i, 0)).or_default() += 1;
                    for k in 1..periods - i {
                        if has(1, i + k) {
                            *table.entry((i, k)).or_default() += 1;
                        }
                    }
                }
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
        Ok(datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string())
    }

    /// The retention query's one plan (events in range → group joins → filters → per-actor
    /// cohort state), and what folding its rows needs.
    async fn retention_plan(
        &self,
        project: herd_core::ProjectId,
        query: &RetentionQuery,
        now: i64,
    ) -> Result<(DataFrame, RetentionPlan)> {
        let mut budget = FilterBudget::default();
        budget.add(&query.filters, "filters")?;
        budget.add(&query.target.filters, "target.filters")?;
        budget.add(&query.returning.filters, "returning.filters")?;
        let mapping = self.db().group_types(project).await.unwrap_or_default();
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
        let (from, end) = (buckets.scan_from(), *buckets.bounds.last().unwrap_or(&to));
        let actor_group = query
            .aggregation_group_type
            .as_deref()
            .map(|g| group_index(&mapping, "aggregation_group_type", g))
            .transpose()?;
        let mut joins = BTreeSet::new();
        query
            .filters
            .group_indexes(&mapping, "filters", &mut joins)?;
        let entity = |e: &RetentionEntity, field: &str, joins: &mut BTreeSet<u8>| {
            event_condition(&mapping, field, e.event.as_deref(), &e.filters, joins)
        };
        let target = entity(&query.target, "target", &mut joins)?;
        let returning = entity(&query.returning, "returning", &mut joins)?;
        let breakdown = match &query.breakdown {
            None => None,
            Some(b) => {
                if let PropertySource::Group(name) = &b.source {
                    joins.insert(group_index(&mapping, "breakdown.group_type", name)?);
                }
                Some(property_expr(
                    &mapping,
                    "breakdown",
                    &b.source,
                    &b.property,
                )?)
            }
        };
        let global = query.filters.to_expr(&mapping, "filters")?;

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
        let mut pred = match query.retention_type {
            RetentionType::Recurring => in_range.clone(),
            RetentionType::FirstTime => col(TIMESTAMP).lt(ts(end)),
        };
        let names: Option<Vec<&str>> = match (&query.target.event, &query.returning.event) {
            (Some(a), Some(b)) => Some(vec![a.as_str(), b.as_str()]),
            _ => None,
        };
        if let Some(names) = names {
            pred = pred.and(col(EVENT).in_list(names.into_iter().map(lit).collect(), false));
        }
        if let Some(n) = actor_group {
            pred = pred.and(col(group_column(n)).not_eq(lit("")));
        }
        let events = self.events_table(project).await?;
        let mut df = self.context().read_table(events)?.filter(pred)?;
        df = self.join_groups(project, df, &joins).await?;
        if let Some(g) = global {
            df = df.filter(g)?;
        }
        let actor = match actor_group {
            Some(n) => col(group_column(n)),
            None => col(DISTINCT_ID),
        };
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
        let df = df.aggregate(vec![col(ACTOR)], vec![agg.alias("__r")])?;
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

/// `herd_retention(target_bucket, return_bucket, target_time)`: per group, the set of periods
/// with a target event, the set with a returning event (as one little-endian bitset blob,
/// targets then returns) and the earliest target time.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RetentionUdaf {
    periods: usize,
    signature: Signature,
}

impl RetentionUdaf {
    /// The aggregate over `[target bucket: Int32, return bucket: Int32, target time: Int64]`.
    pub fn expr(periods: usize, args: Vec<Expr>) -> Expr {
        AggregateUDF::new_from_impl(Self {
            periods,
            signature: Signature::exact(
                vec![
                    DataType::Int32,
                    DataType::Int32,
                    DataType::Int64,
                    DataType::Utf8,
                ],
                Volatility::Immutable,
            ),
        })
        .call(args)
    }

    fn fields() -> Fields {
        Fields::from(vec![
            Field::new("bits", DataType::Binary, false),
            Field::new("first", DataType::Int64, true),
            Field::new("bd", DataType::Utf8, true),
        ])
    }

    fn state(&self) -> RetentionState {
        RetentionState::new(self.periods)
    }
}

impl AggregateUDFImpl for RetentionUdaf {
    fn name(&self) -> &str {
        "herd_retention"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Struct(Self::fields()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> datafusion::common::Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[bits]", args.name),
                DataType::Binary,
                true,
            )),
            Arc::new(Field::new(
                format!("{}[first]", args.name),
                DataType::Int64,
                true,
            )),
            Arc::new(Field::new(
                format!("{}[bd_time]", args.name),
                DataType::Int64,
                true,
            )),
            Arc::new(Field::new(
                format!("{}[bd]", args.name),
                DataType::Utf8,
                true,
            )),
        ])
    }

    fn accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> datafusion::common::Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleRetention(self.state())))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> datafusion::common::Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.state()))
    }
}

/// Flat state: `2 · words` bitset words per group (targets, then returns), the first target
/// time per group (`i64::MAX` for none), and the time and value of the earliest target event
/// with a breakdown value.
#[derive(Debug)]
struct RetentionState {
    words: usize,
    periods: usize,
    bits: Vec<u64>,
    first: Vec<i64>,
    bd_time: Vec<i64>,
    bd: Vec<Option<String>>,
}

fn internal(message: &str) -> DataFusionError {
    DataFusionError::Internal(format!("herd_retention: {message}"))
}

impl RetentionState {
    fn new(periods: usize) -> Self {
        Self {
            words: periods.div_ceil(64),
            periods,
            bits: Vec::new(),
            first: Vec::new(),
            bd_time: Vec::new(),
            bd: Vec::new(),
        }
    }

    fn resize(&mut self, groups: usize) {
        if self.first.len() < groups {
            self.bits.resize(groups * 2 * self.words, 0);
            self.first.resize(groups, i64::MAX);
            self.bd_time.resize(groups, i64::MAX);
            self.bd.resize(groups, None);
        }
    }

    fn set(&mut self, group: usize, set: usize, bucket: i32) {
        if let Ok(b) = usize::try_from(bucket)
            && b < self.periods
        {
            self.bits[group * 2 * self.words + set * self.words + b / 64] |= 1 << (b % 64);
        }
    }

    /// Keeps the value of the earliest event (the smaller value on a tie).
    fn offer(&mut self, group: usize, time: i64, value: &str) {
        let better = match &self.bd[group] {
            None => true,
            Some(v) => (time, value) < (self.bd_time[group], v.as_str()),
        };
        if better {
            self.bd_time[group] = time;
            self.bd[group] = Some(value.to_string());
        }
    }

    #[allow(clippy::type_complexity)]
    fn take(&mut self, emit_to: EmitTo) -> (Vec<u64>, Vec<i64>, Vec<i64>, Vec<Option<String>>) {
        let n = match emit_to {
            EmitTo::All => self.first.len(),
            EmitTo::First(n) => n.min(self.first.len()),
        };
        let first: Vec<i64> = self.first.drain(..n).collect();
        let bits: Vec<u64> = self.bits.drain(..n * 2 * self.words).collect();
        let bd_time: Vec<i64> = self.bd_time.drain(..n).collect();
        let bd: Vec<Option<String>> = self.bd.drain(..n).collect();
        (bits, first, bd_time, bd)
    }

    /// `[bits, first, bd_time, bd]` for the state; the output is `[bits, first, bd]`.
    fn arrays(&mut self, emit_to: EmitTo) -> datafusion::common::Result<Vec<ArrayRef>> {
        let (bits, first, bd_time, bd) = self.take(emit_to);
        let stride = 2 * self.words;
        let mut blobs = BinaryBuilder::with_capacity(first.len(), bits.len() * 8);
        let mut firsts = Int64Builder::with_capacity(first.len());
        let mut times = Int64Builder::with_capacity(first.len());
        let mut values = StringBuilder::new();
        for (g, f) in first.iter().enumerate() {
            let bytes: Vec<u8> = bits[g * stride..(g + 1) * stride]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            blobs.append_value(bytes);
            firsts.append_option((*f != i64::MAX).then_some(*f));
            times.append_option(bd[g].as_ref().map(|_| bd_time[g]));
            values.append_option(bd[g].as_deref());
        }
        Ok(vec![
            Arc::new(blobs.finish()),
            Arc::new(firsts.finish()),
            Arc::new(times.finish()),
            Arc::new(values.finish()),
        ])
    }

    fn output(&mut self, emit_to: EmitTo) -> datafusion::common::Result<StructArray> {
        let mut a = self.arrays(emit_to)?;
        a.remove(2);
        Ok(StructArray::try_new(RetentionUdaf::fields(), a, None)?)
    }

    fn merge(
        &mut self,
        values: &[ArrayRef],
        group_of: &dyn Fn(usize) -> datafusion::common::Result<usize>,
    ) -> datafusion::common::Result<()> {
        let [blobs, firsts, times, bds] = values else {
            return Err(internal("state has 4 columns"));
        };
        let blobs = blobs
            .as_binary_opt::<i32>()
            .ok_or_else(|| internal("bits"))?;
        let firsts = firsts
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| internal("first"))?;
        let times = times
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| internal("bd_time"))?;
        let bds = bds.as_string_opt::<i32>().ok_or_else(|| internal("bd"))?;
        let stride = 2 * self.words;
        for r in 0..blobs.len() {
            let g = group_of(r)?;
            if !blobs.is_null(r) {
                for (w, chunk) in blobs.value(r).chunks_exact(8).take(stride).enumerate() {
                    let word = u64::from_le_bytes(chunk.try_into().map_err(|_| internal("word"))?);
                    self.bits[g * stride + w] |= word;
                }
            }
            if !firsts.is_null(r) {
                self.first[g] = self.first[g].min(firsts.value(r));
            }
            if !bds.is_null(r) && !times.is_null(r) {
                self.offer(g, times.value(r), bds.value(r));
            }
        }
        Ok(())
    }

    fn update(
        &mut self,
        values: &[ArrayRef],
        group_of: &dyn Fn(usize) -> Option<usize>,
    ) -> datafusion::common::Result<()> {
        let [target, returning, first, bd] = values else {
            return Err(internal("takes 4 arguments"));
        };
        let target = target
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| internal("target"))?;
        let returning = returning
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| internal("return"))?;
        let first = first
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| internal("first"))?;
        let bd = bd.as_string_opt::<i32>().ok_or_else(|| internal("bd"))?;
        for r in 0..target.len() {
            let Some(g) = group_of(r) else { continue };
            if !target.is_null(r) {
                self.set(g, 0, target.value(r));
            }
            if !returning.is_null(r) {
                self.set(g, 1, returning.value(r));
            }
            if !first.is_null(r) {
                let t = first.value(r);
                self.first[g] = self.first[g].min(t);
                if !bd.is_null(r) {
                    self.offer(g, t, bd.value(r));
                }
            }
        }
        Ok(())
    }
}

impl GroupsAccumulator for RetentionState {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> datafusion::common::Result<()> {
        self.resize(total_num_groups);
        self.update(values, &|r| {
            let keep = opt_filter.is_none_or(|f| f.is_valid(r) && f.value(r));
            keep.then(|| group_indices[r])
        })
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> datafusion::common::Result<ArrayRef> {
        Ok(Arc::new(self.output(emit_to)?))
    }

    fn state(&mut self, emit_to: EmitTo) -> datafusion::common::Result<Vec<ArrayRef>> {
        self.arrays(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> datafusion::common::Result<()> {
        self.resize(total_num_groups);
        self.merge(values, &|r| {
            group_indices
                .get(r)
                .copied()
                .ok_or_else(|| internal("state row without a group"))
        })
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> datafusion::common::Result<Vec<ArrayRef>> {
        let n = values.first().map_or(0, |v| v.len());
        let mut one = RetentionState::new(self.periods);
        one.resize(n);
        one.update(values, &|r| {
            opt_filter
                .is_none_or(|f| f.is_valid(r) && f.value(r))
                .then_some(r)
        })?;
        one.arrays(EmitTo::All)
    }

    fn size(&self) -> usize {
        self.bits.capacity() * 8
            + self.first.capacity() * 16
            + self.bd.capacity() * 24
            + self
                .bd
                .iter()
                .flatten()
                .map(String::capacity)
                .sum::<usize>()
    }
}

/// The row accumulator: one group.
#[derive(Debug)]
struct SingleRetention(RetentionState);

impl Accumulator for SingleRetention {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::common::Result<()> {
        self.0.resize(1);
        self.0.update(values, &|_| Some(0))
    }

    fn evaluate(&mut self) -> datafusion::common::Result<ScalarValue> {
        self.0.resize(1);
        let s = self.0.output(EmitTo::All)?;
        ScalarValue::try_from_array(&s, 0)
    }

    fn size(&self) -> usize {
        self.0.size() + std::mem::size_of::<Self>()
    }

    fn state(&mut self) -> datafusion::common::Result<Vec<ScalarValue>> {
        self.0.resize(1);
        self.0
            .arrays(EmitTo::All)?
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::common::Result<()> {
        self.0.resize(1);
        self.0.merge(states, &|_| Ok(0))
    }
}
