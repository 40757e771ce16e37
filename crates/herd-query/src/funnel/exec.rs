//! [`FunnelExec`], the funnel as a DataFusion operator, and its bounded-memory machinery.
//!
//! A funnel groups by actor, and its "partial state" is every row of the actor: a two-phase
//! aggregate cannot reduce anything (repartitioning rows as one-element list states was a
//! fifth of a funnel's time). So the funnel is one operator over inputs key-partitioned on the
//! actor (DataFusion inserts the hash `RepartitionExec` its distribution requirement asks
//! for): each partition holds every row of its actors and runs alone. Within a partition,
//! rows go to one of a few (at most [`BUCKETS`]) flat [`FunnelAccumulator`]s by a hash of the
//! actor, numbering actors per bucket ([`crate::actors`]: strings of at most 12 bytes keyed by
//! their 16-byte view); a row with the previous row's actor skips the lookup.
//!
//! Rows are 32 bytes, and a funnel over 100M events keeps most of them: they are charged to
//! the session's memory pool and to the funnel's budget; when either refuses, a partition
//! writes its buckets' rows to spill files (one per bucket, from the session's disk manager)
//! and goes on; only actor ids and interned breakdown values stay in memory. Once its input
//! is done, a partition evaluates its buckets one at a time: each reads its rows back and
//! runs the state machine. Each actor lives in exactly one bucket of one partition, so the
//! answer does not depend on partitioning, batch boundaries or spilling.

use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::execution::disk_manager::DiskManager;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, SpillFile, SpillWriter, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, Partitioning, PhysicalExpr, PlanProperties, StatisticsArgs,
    StatisticsContext,
};
use datafusion::prelude::DataFrame;
use futures::{StreamExt, TryStreamExt};

use super::machine::Params;
use super::udaf::{FunnelAccumulator, Mode, ROW_BYTES};
use crate::actors::{ActorIds, Key, hash_key, key_of, shard_of};
use crate::{Error, Result};

/// Most actor hash buckets. Evaluation holds the rows of one bucket per worker, so more
/// buckets mean less memory once rows spill; but spreading each batch over 64 buckets made a
/// 10M-event funnel ~30 % slower than over 2, so a funnel gets as few buckets as its sources'
/// row count allows (at least one per worker).
pub(crate) const BUCKETS: usize = 64;

/// Bytes of funnel rows that all partitions together hold in memory before they spill.
pub const DEFAULT_FUNNEL_MEMORY: usize = 256 << 20;

/// One bucket of one partition: its actors, their rows in memory, and the rows it spilled.
struct Shard {
    ids: ActorIds,
    acc: FunnelAccumulator,
    /// `(row, actor id)` of the current batch (reused).
    rows: Vec<(usize, u32)>,
    spill: Option<Spill>,
}

/// A bucket's spill file and its open writer.
struct Spill {
    file: Arc<dyn SpillFile>,
    writer: BufWriter<Box<dyn SpillWriter>>,
}

/// What a partition may hold: its reservation in the session's memory pool, and its share of
/// the funnel's own budget (all partitions together).
struct Budget {
    /// Row bytes held by all partitions.
    held: Arc<AtomicUsize>,
    limit: usize,
    disk: Arc<DiskManager>,
    reservation: MemoryReservation,
    /// Row bytes this partition holds (its share of `held`).
    mine: usize,
    spills: Count,
    spilled_rows: Count,
}

impl Budget {
    /// Charges the shards' rows; when the pool or the funnel's budget refuses them, they are
    /// spilled and the charge dropped.
    fn account(&mut self, shards: &mut [Shard]) -> Result<()> {
        let now: usize = shards.iter().map(|s| s.acc.row_bytes()).sum();
        let held = self.set_mine(now);
        if held <= self.limit && self.reservation.try_resize(now).is_ok() {
            return Ok(());
        }
        for s in shards.iter_mut() {
            let rows = s.spill(&self.disk)?;
            if rows > 0 {
                self.spills.add(1);
                self.spilled_rows.add(rows);
            }
        }
        self.release();
        Ok(())
    }

    /// Charges one bucket read back for evaluation. It cannot spill again, so it is charged
    /// even past the pool's limit (buckets are sized for the budget, see
    /// [`FunnelExec::buckets`]): the answer rather than an error.
    fn account_one(&mut self, shard: &Shard) {
        let now = shard.acc.row_bytes();
        self.set_mine(now);
        self.reservation.resize(now);
    }

    /// Drops this partition's charge.
    fn release(&mut self) {
        self.set_mine(0);
        self.reservation.free();
    }

    /// Sets this partition's share of `held`; returns the new total.
    fn set_mine(&mut self, now: usize) -> usize {
        let held = if now >= self.mine {
            self.held.fetch_add(now - self.mine, Ordering::Relaxed) + (now - self.mine)
        } else {
            self.held.fetch_sub(self.mine - now, Ordering::Relaxed) - (self.mine - now)
        };
        self.mine = now;
        held
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.set_mine(0);
    }
}

/// A spill file that could not be written (a full or unwritable temporary folder): an I/O
/// error of the query, not a bug.
fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::DataFusion(DataFusionError::IoError(e).context(format!("funnel spill: {what}")))
}

impl Shard {
    fn new(params: &Params, mode: &Mode) -> Self {
        Self {
            ids: ActorIds::default(),
            acc: FunnelAccumulator::new(params.clone(), mode.clone()),
            rows: Vec::new(),
            spill: None,
        }
    }

    /// Moves the rows in memory to this bucket's spill file; returns how many.
    fn spill(&mut self, disk: &Arc<DiskManager>) -> Result<usize> {
        if self.acc.row_bytes() == 0 {
            return Ok(0);
        }
        let spill = match &mut self.spill {
            Some(s) => s,
            None => {
                let file = disk.create_tmp_file("herd funnel rows")?;
                let writer = BufWriter::with_capacity(64 << 10, file.open_writer()?);
                self.spill.insert(Spill { file, writer })
            }
        };
        self.acc
            .spill(&mut spill.writer)
            .map_err(|e| io_error("write", e))
    }

    /// Reads this bucket's spilled rows back into memory.
    async fn unspill(&mut self) -> Result<()> {
        let Some(Spill { file, writer }) = self.spill.take() else {
            return Ok(());
        };
        let mut writer = writer
            .into_inner()
            .map_err(|e| io_error("flush", e.into_error()))?;
        writer.flush().map_err(|e| io_error("flush", e))?;
        writer.finish()?;
        drop(writer);
        let mut pieces = file.read_stream()?;
        let mut partial = Vec::new();
        while let Some(piece) = pieces.next().await {
            self.acc.unspill(&piece?, &mut partial);
        }
        if !partial.is_empty() {
            return Err(Error::Internal(
                "funnel spill: a spill file ends inside a row".into(),
            ));
        }
        Ok(())
    }
}

/// Numbers the rows of a batch: `(row, id)` into each shard's `rows`.
fn number(actor: &ArrayRef, shards: &mut [Shard]) -> Result<()> {
    for s in shards.iter_mut() {
        s.rows.clear();
    }
    if let Some(numbers) = actor.as_primitive_opt::<UInt32Type>() {
        number_numbers(numbers, shards);
        return Ok(());
    }
    let actor: ArrayRef = match actor.data_type() {
        DataType::Utf8View => actor.clone(),
        _ => datafusion::arrow::compute::cast(actor, &DataType::Utf8View)?,
    };
    let actors = actor.as_string_view();
    // One actor's rows often follow each other: a row with the previous row's actor
    // skips the lookup.
    let mut last: Option<(Key<'_>, usize, u32)> = None;
    for i in 0..actors.len() {
        let key = key_of(actors, i);
        if let Some((k, s, id)) = &last
            && k.same(&key)
        {
            shards[*s].rows.push((i, *id));
            continue;
        }
        let hash = hash_key(&key);
        let s = shard_of(hash, shards.len());
        let id = shards[s].ids.id(key.clone(), hash);
        shards[s].rows.push((i, id));
        last = Some((key, s, id));
    }
    Ok(())
}

/// [`number`] for actor numbers: number `n` lives in shard `n % shards`, in its slot
/// `n / shards` (a direct index, no hashing).
fn number_numbers(numbers: &UInt32Array, shards: &mut [Shard]) {
    let count = shards.len();
    let mut last: Option<(u32, usize, u32)> = None;
    for i in 0..numbers.len() {
        if numbers.is_null(i) {
            let id = shards[0].ids.id(Key::Null, 0);
            shards[0].rows.push((i, id));
            last = None;
            continue;
        }
        let n = numbers.value(i);
        if let Some((m, s, id)) = last
            && m == n
        {
            shards[s].rows.push((i, id));
            continue;
        }
        let s = n as usize % count;
        let id = shards[s].ids.number_id((n as usize / count) as u32);
        shards[s].rows.push((i, id));
        last = Some((n, s, id));
    }
}

/// Rows of the plan's sources (before any filter), where every source knows its count (from
/// Parquet metadata or memory): an upper bound on the funnel's rows.
fn source_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let children = plan.children();
    if children.is_empty() {
        let stats = StatisticsContext::new()
            .compute(plan.as_ref(), &StatisticsArgs::new())
            .ok()?;
        return stats.num_rows.get_value().copied();
    }
    children.into_iter().map(source_rows).sum()
}

/// Appends `(actor number, time)` of the rows with both.
fn collect_times(actor: &ArrayRef, ts: &ArrayRef, out: &mut Vec<(u32, i64)>) -> Result<()> {
    let (Some(actor), Some(ts)) = (
        actor.as_primitive_opt::<UInt32Type>(),
        ts.as_primitive_opt::<Int64Type>(),
    ) else {
        return Err(Error::Internal(
            "split funnel: actors are numbers and times Int64".into(),
        ));
    };
    out.extend(
        (0..actor.len())
            .filter(|&i| actor.is_valid(i) && ts.is_valid(i))
            .map(|i| (actor.value(i), ts.value(i))),
    );
    Ok(())
}

/// The times of the later steps' rows of each actor of a split funnel, sorted: actor `n`'s
/// are `times[offsets[n]..offsets[n + 1]]`.
struct LaterTimes {
    offsets: Vec<usize>,
    times: Vec<i64>,
}

impl LaterTimes {
    fn new(mut pairs: Vec<(u32, i64)>) -> Self {
        pairs.sort_unstable();
        pairs.dedup();
        let actors = pairs.last().map_or(0, |(n, _)| *n as usize + 1);
        let mut offsets = vec![0usize; actors + 1];
        for (n, _) in &pairs {
            offsets[*n as usize + 1] += 1;
        }
        for n in 0..actors {
            offsets[n + 1] += offsets[n];
        }
        Self {
            offsets,
            times: pairs.into_iter().map(|(_, t)| t).collect(),
        }
    }

    /// Where actor `n`'s times start in `times`, and how many there are.
    fn span(&self, n: usize) -> (usize, usize) {
        match (self.offsets.get(n), self.offsets.get(n + 1)) {
            (Some(&a), Some(&b)) => (a, b - a),
            _ => (0, 0),
        }
    }
}

/// What a split funnel keeps of the rows that match only the first step: per actor its
/// earliest such time, and for each of its later steps' times `T` the latest such time at or
/// before `T` (after the previous one). The state machine (ordered, no exclusions, no
/// breakdown) only ever starts the attempt that reaches a later step from the latest entry
/// before it, and an actor that reaches no later step counts from its earliest entry: the
/// answer from these rows (plus all later steps' rows) is the answer from all rows.
struct Entries {
    /// Earliest entry per actor number (`i64::MAX`: none).
    first: Vec<i64>,
    /// Latest entry per later time of [`LaterTimes::times`] (`i64::MIN`: none).
    last: Vec<i64>,
}

impl Entries {
    fn new(later: &LaterTimes) -> Self {
        Self {
            first: Vec::new(),
            last: vec![i64::MIN; later.times.len()],
        }
    }

    fn add(&mut self, later: &LaterTimes, n: u32, ts: i64) {
        let n = n as usize;
        if n >= self.first.len() {
            let len = (n + 1).max(self.first.len() * 2).max(1024);
            self.first.resize(len, i64::MAX);
        }
        self.first[n] = self.first[n].min(ts);
        let (start, len) = later.span(n);
        if len == 0 {
            return;
        }
        let times = &later.times[start..start + len];
        let j = times.partition_point(|&t| t < ts);
        if j < len {
            let slot = &mut self.last[start + j];
            *slot = (*slot).max(ts);
        }
    }

    /// Takes in another partition's entries.
    #[cfg(test)]
    fn merge(&mut self, other: Entries) {
        if other.first.len() > self.first.len() {
            self.first.resize(other.first.len(), i64::MAX);
        }
        for (a, b) in self.first.iter_mut().zip(other.first) {
            *a = (*a).min(b);
        }
        for (a, b) in self.last.iter_mut().zip(other.last) {
            *a = (*a).max(b);
        }
    }

    /// The kept entries: actor numbers and their times.
    fn rows(&self, later: &LaterTimes) -> (UInt32Array, Int64Array) {
        let mut actors = Vec::new();
        let mut times = Vec::new();
        for (n, &first) in self.first.iter().enumerate() {
            if first == i64::MAX {
                continue;
            }
            actors.push(n as u32);
            times.push(first);
            let (start, len) = later.span(n);
            for &t in &self.last[start..start + len] {
                if t != i64::MIN && t != first {
                    actors.push(n as u32);
                    times.push(t);
                }
            }
        }
        (UInt32Array::from(actors), Int64Array::from(times))
    }
}

/// Pushes rows `values` (the aggregate's five argument columns) of actors `actor` into
/// `shards`.
fn push_batch(actor: &ArrayRef, values: &[ArrayRef], shards: &mut [Shard]) -> Result<()> {
    number(actor, shards)?;
    for s in shards.iter_mut() {
        if !s.rows.is_empty() {
            s.acc.push(values, &s.rows, s.ids.count as usize)?;
        }
    }
    Ok(())
}

/// The rows of a funnel, as logical plans (see [`super::plan::FunnelNode`]).
pub(crate) enum Input {
    /// All rows, columns `(actor, ts Int64, steps UInt32, excl UInt32, breakdown Utf8,
    /// bucket Int32)`.
    All(DataFrame),
    /// An ordered funnel without exclusions or breakdown, over actor numbers, as two parts:
    /// `later` holds the rows matching a step after the first (columns as [`Input::All`]),
    /// `entries` the `(actor, ts Int64)` of those matching only the first step (their other
    /// columns are known: steps = 1, excl = 0, no breakdown, bucket 0). Only the entries
    /// that can matter are kept (see [`Entries`]): a first step that is most events (page
    /// views) is then neither stored nor sorted.
    Split {
        /// Rows matching a later step.
        later: DataFrame,
        /// Rows matching the first step only.
        entries: DataFrame,
    },
}

/// The funnel operator: per output partition, the outcomes of the actors of that partition.
///
/// Its inputs are key-partitioned on the actor (`__actor`, column 0 of each): every row of an
/// actor is in one partition, so partitions evaluate independently, and a split funnel's two
/// inputs are co-partitioned (an actor's entries meet its later steps). No input ordering is
/// required: rows are numbered per actor and sorted per actor when evaluated. A partition
/// holds its rows in a few hash buckets, charged to the session's memory pool and to the
/// funnel's own budget (`memory`, all partitions together); when either refuses more, the
/// buckets are written to spill files from the session's disk manager. Buckets are then
/// evaluated one at a time, each emitting one batch: a column `outcomes`, one list of
/// outcome structs per actor (see [`super::udaf::FunnelUdaf`] for their fields).
#[derive(Debug)]
pub(crate) struct FunnelExec {
    later: Arc<dyn ExecutionPlan>,
    entries: Option<Arc<dyn ExecutionPlan>>,
    params: Params,
    mode: Mode,
    /// Bytes of rows all partitions together hold before they spill.
    memory: usize,
    /// Row bytes held by all partitions of one execution.
    held: Arc<AtomicUsize>,
    /// Hash buckets per partition (see [`FunnelExec::buckets`]).
    buckets: usize,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

/// Name of [`FunnelExec`]'s output column.
pub(crate) const OUTCOMES: &str = "outcomes";

/// The schema of [`FunnelExec`]'s output.
pub(crate) fn output_schema(params: &Params, mode: &Mode) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        OUTCOMES,
        super::udaf::output_type(params, mode),
        true,
    )]))
}

/// A [`FunnelExec`] besides its inputs, as it travels to a worker.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct FunnelWire {
    params: Params,
    mode: Mode,
    memory: usize,
    buckets: usize,
}

impl FunnelExec {
    /// This node besides its inputs.
    pub(crate) fn wire(&self) -> FunnelWire {
        FunnelWire {
            params: self.params.clone(),
            mode: self.mode.clone(),
            memory: self.memory,
            buckets: self.buckets,
        }
    }

    /// The node `wire` describes over `inputs` (as [`ExecutionPlan::children`] lists them).
    pub(crate) fn from_wire(wire: FunnelWire, inputs: &[Arc<dyn ExecutionPlan>]) -> DFResult<Self> {
        let (later, entries) = match inputs {
            [later] => (later.clone(), None),
            [later, entries] => (later.clone(), Some(entries.clone())),
            _ => {
                return Err(DataFusionError::Internal(
                    "FunnelExec: one or two inputs".into(),
                ));
            }
        };
        let mut exec = Self::new(later, entries, wire.params, wire.mode, wire.memory);
        exec.buckets = wire.buckets.clamp(1, BUCKETS);
        Ok(exec)
    }

    /// The funnel over `later` (all rows, or a split funnel's later steps) and a split
    /// funnel's `entries`.
    pub(crate) fn new(
        later: Arc<dyn ExecutionPlan>,
        entries: Option<Arc<dyn ExecutionPlan>>,
        params: Params,
        mode: Mode,
        memory: usize,
    ) -> Self {
        let cache = Arc::new(Self::properties_of(&later, &params, &mode));
        let buckets = Self::buckets(&later, entries.as_ref(), memory);
        Self {
            later,
            entries,
            params,
            mode,
            memory,
            held: Arc::default(),
            buckets,
            cache,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn properties_of(
        later: &Arc<dyn ExecutionPlan>,
        params: &Params,
        mode: &Mode,
    ) -> PlanProperties {
        let schema = output_schema(params, mode);
        PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(later.output_partitioning().partition_count()),
            EmissionType::Final,
            later.boundedness(),
        )
    }

    /// The partitioning key: the actor, column 0 of each input.
    fn actor_key() -> Vec<Arc<dyn PhysicalExpr>> {
        vec![Arc::new(Column::new(super::ACTOR, 0))]
    }

    /// Hash buckets per partition: enough that evaluating one bucket per partition at once
    /// (rows copied while sorted) fits the budget even if every source row were kept.
    fn buckets(
        later: &Arc<dyn ExecutionPlan>,
        entries: Option<&Arc<dyn ExecutionPlan>>,
        memory: usize,
    ) -> usize {
        let rows = match entries {
            Some(e) => source_rows(later).zip(source_rows(e)).map(|(a, b)| a + b),
            None => source_rows(later),
        };
        match rows {
            Some(rows) => {
                let worst = rows.saturating_mul(ROW_BYTES).saturating_mul(2);
                (worst / memory.max(1)).saturating_add(1)
            }
            None => BUCKETS,
        }
        .clamp(1, BUCKETS)
    }

    fn order_name(&self) -> &'static str {
        match self.params.order {
            super::Order::Ordered => "ordered",
            super::Order::Strict => "strict",
            super::Order::Unordered => "unordered",
        }
    }
}

impl DisplayAs for FunnelExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Steps => "steps".to_string(),
            Mode::Trends { from_step, to_step } => format!("trends {from_step}->{to_step}"),
        };
        match t {
            DisplayFormatType::TreeRender => write!(f, "steps={}", self.params.steps),
            _ => write!(
                f,
                "FunnelExec: steps={}, order={}, window={}s, mode={mode}, split={}, memory={} MiB",
                self.params.steps,
                self.order_name(),
                self.params.window / 1_000_000,
                self.entries.is_some(),
                self.memory >> 20
            ),
        }
    }
}

impl ExecutionPlan for FunnelExec {
    fn name(&self) -> &'static str {
        "FunnelExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        let mut out = vec![&self.later];
        out.extend(self.entries.iter());
        out
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        let per_child: Vec<Distribution> = self
            .children()
            .into_iter()
            .map(|_| Distribution::KeyPartitioned(Self::actor_key()))
            .collect();
        // A split funnel's two inputs: partition i of both holds the same actors.
        match per_child.len() {
            1 => InputDistributionRequirements::new(per_child),
            _ => InputDistributionRequirements::co_partitioned(per_child),
        }
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![true; self.children().len()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let expected = self.children().len();
        if children.len() != expected {
            return Err(DataFusionError::Internal(format!(
                "FunnelExec takes {expected} children, got {}",
                children.len()
            )));
        }
        let entries = (expected == 2).then(|| children.remove(1));
        let later = children.remove(0);
        let mut exec = Self::new(
            later,
            entries,
            self.params.clone(),
            self.mode.clone(),
            self.memory,
        );
        // Sized once, at planning (a worker's inputs are shuffles without row counts).
        exec.buckets = self.buckets;
        Ok(Arc::new(exec))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if let Some(e) = &self.entries
            && e.output_partitioning().partition_count()
                != self.later.output_partitioning().partition_count()
        {
            return Err(DataFusionError::Internal(
                "FunnelExec: its two inputs are not co-partitioned".into(),
            ));
        }
        let reservation = MemoryConsumer::new(format!("FunnelExec[{partition}]"))
            .with_can_spill(true)
            .register(context.memory_pool());
        let run = PartitionRun {
            later: self.later.clone(),
            entries: self.entries.clone(),
            partition,
            shards: (0..self.buckets)
                .map(|_| Shard::new(&self.params, &self.mode))
                .collect(),
            budget: Budget {
                held: self.held.clone(),
                limit: self.memory,
                disk: context.runtime_env().disk_manager.clone(),
                reservation,
                mine: 0,
                spills: MetricBuilder::new(&self.metrics).spill_count(partition),
                spilled_rows: MetricBuilder::new(&self.metrics).spilled_rows(partition),
            },
            baseline: BaselineMetrics::new(&self.metrics, partition),
        };
        let schema = self.schema();
        let batches = futures::stream::once(run.run(context, schema.clone()))
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One partition of a [`FunnelExec`] at work.
struct PartitionRun {
    later: Arc<dyn ExecutionPlan>,
    entries: Option<Arc<dyn ExecutionPlan>>,
    partition: usize,
    shards: Vec<Shard>,
    budget: Budget,
    baseline: BaselineMetrics,
}

impl PartitionRun {
    /// Consumes the partition's rows, then evaluates its buckets one at a time.
    async fn run(self, task: Arc<TaskContext>, schema: SchemaRef) -> DFResult<Vec<RecordBatch>> {
        self.run_inner(task, schema).await.map_err(|e| match e {
            Error::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        })
    }

    async fn run_inner(
        mut self,
        task: Arc<TaskContext>,
        schema: SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        let later = self.later.clone();
        let collect = self.entries.is_some();
        let mut stream = later.execute(self.partition, task.clone())?;
        let mut times = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let _timer = self.baseline.elapsed_compute().timer();
            if collect {
                collect_times(batch.column(0), batch.column(1), &mut times)?;
            }
            push_batch(batch.column(0), &batch.columns()[1..], &mut self.shards)?;
            self.budget.account(&mut self.shards)?;
        }
        if let Some(entries) = self.entries.take() {
            let later = LaterTimes::new(times);
            let (kept, whole) = run_entries(entries, self.partition, task, &later).await?;
            let _timer = self.baseline.elapsed_compute().timer();
            feed_entries(kept, whole, &later, &mut self.shards)?;
            self.budget.account(&mut self.shards)?;
        }
        let mut out = Vec::with_capacity(self.shards.len());
        for mut shard in std::mem::take(&mut self.shards) {
            shard.unspill().await?;
            let _timer = self.baseline.elapsed_compute().timer();
            self.budget.account_one(&shard);
            let outcomes = shard.acc.evaluate_all()?;
            drop(shard);
            self.budget.release();
            let batch = RecordBatch::try_new(schema.clone(), vec![outcomes])?;
            self.baseline.record_output(batch.num_rows());
            out.push(batch);
        }
        self.baseline.done();
        Ok(out)
    }
}

/// Runs one partition of a split funnel's first-step rows (`plan`) into its [`Entries`];
/// batches whose actors are not all numbers are returned whole, to be pushed row for row.
async fn run_entries(
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    task: Arc<TaskContext>,
    later: &LaterTimes,
) -> Result<(Entries, Vec<RecordBatch>)> {
    let mut stream = plan.execute(partition, task)?;
    let mut entries = Entries::new(later);
    let mut whole = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let actor = batch.column(0).as_primitive_opt::<UInt32Type>();
        let ts = batch.column(1).as_primitive_opt::<Int64Type>();
        match (actor, ts) {
            (Some(actor), Some(ts)) if actor.null_count() == 0 => {
                for (i, &n) in actor.values().iter().enumerate() {
                    if ts.is_valid(i) {
                        entries.add(later, n, ts.value(i));
                    }
                }
            }
            _ => whole.push(batch),
        }
    }
    Ok((entries, whole))
}

/// Pushes a split funnel's kept entries (and the `whole` batches, every row) into `shards`
/// with their known columns.
fn feed_entries(
    kept: Entries,
    whole: Vec<RecordBatch>,
    later: &LaterTimes,
    shards: &mut [Shard],
) -> Result<()> {
    const BATCH: usize = 8192;
    let steps: ArrayRef = Arc::new(UInt32Array::from(vec![1u32; BATCH]));
    let excl: ArrayRef = Arc::new(UInt32Array::from(vec![0u32; BATCH]));
    let bd: ArrayRef = Arc::new(StringArray::new_null(BATCH));
    let bucket: ArrayRef = Arc::new(Int32Array::from(vec![0i32; BATCH]));
    // Entry rows `(actors, times)` with their known columns, a batch at a time.
    let mut push = |actors: &ArrayRef, times: &ArrayRef| -> Result<()> {
        for offset in (0..actors.len()).step_by(BATCH) {
            let len = BATCH.min(actors.len() - offset);
            let values = [
                times.slice(offset, len),
                steps.slice(0, len),
                excl.slice(0, len),
                bd.slice(0, len),
                bucket.slice(0, len),
            ];
            push_batch(&actors.slice(offset, len), &values, shards)?;
        }
        Ok(())
    };
    let (actors, times) = kept.rows(later);
    push(
        &(Arc::new(actors) as ArrayRef),
        &(Arc::new(times) as ArrayRef),
    )?;
    // Batches with actors that are not all numbers (not expected): every row, as an
    // unsplit funnel would.
    for batch in whole {
        push(batch.column(0), batch.column(1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::machine::{self, Ev, NO_VALUE, Order};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn ev(ts: i64, steps: u32) -> Ev {
        Ev {
            ts,
            steps,
            excl: 0,
            bd: NO_VALUE,
            bucket: 0,
        }
    }

    /// The kept entries of `events` (all actors), per actor, with the later steps' rows.
    fn reduced(events: &[(u32, Ev)]) -> BTreeMap<u32, Vec<Ev>> {
        let later = LaterTimes::new(
            events
                .iter()
                .filter(|(_, e)| e.steps >= 2)
                .map(|(n, e)| (*n, e.ts))
                .collect(),
        );
        // Two partitions, merged.
        let (mut a, mut b) = (Entries::new(&later), Entries::new(&later));
        for (i, (n, e)) in events.iter().enumerate() {
            if e.steps == 1 {
                let part = if i % 2 == 0 { &mut a } else { &mut b };
                part.add(&later, *n, e.ts);
            }
        }
        a.merge(b);
        let mut out: BTreeMap<u32, Vec<Ev>> = BTreeMap::new();
        for (n, e) in events.iter().filter(|(_, e)| e.steps >= 2) {
            out.entry(*n).or_default().push(*e);
        }
        let (actors, times) = a.rows(&later);
        for (n, t) in actors.values().iter().zip(times.values()) {
            out.entry(*n).or_default().push(ev(*t, 1));
        }
        out
    }

    #[test]
    fn entries_keep_the_first_and_the_last_before_each_later_step() {
        // Actor 0: entries at 1, 2, 5 (later step at 5), 7, later step at 9, entries at 10, 11.
        // Actor 2: entries only. Actor 1: nothing.
        let events = [
            (0, ev(1, 1)),
            (0, ev(2, 1)),
            (0, ev(5, 1)),
            (0, ev(5, 2)),
            (0, ev(7, 1)),
            (0, ev(9, 4)),
            (0, ev(10, 1)),
            (0, ev(11, 1)),
            (2, ev(4, 1)),
            (2, ev(3, 1)),
        ];
        let mut got = reduced(&events);
        for evs in got.values_mut() {
            evs.sort_unstable();
        }
        let want: BTreeMap<u32, Vec<Ev>> = [
            (0, vec![ev(1, 1), ev(5, 1), ev(5, 2), ev(7, 1), ev(9, 4)]),
            (2, vec![ev(3, 1)]),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
    }

    fn params() -> impl Strategy<Value = machine::Params> {
        (
            2usize..=4,
            1i64..40,
            0u32..16,
            proptest::collection::vec(proptest::option::of(1i64..20), 4),
        )
            .prop_map(|(steps, window, optional, windows)| machine::Params {
                steps,
                order: Order::Ordered,
                window,
                step_windows: std::iter::once(None)
                    .chain(windows.into_iter().skip(1))
                    .take(steps)
                    .collect(),
                // Never the first step.
                optional: optional & !1 & ((1 << steps) - 1),
                attribution: None,
            })
    }

    proptest! {
        /// The split funnel's claim: the machine gives every actor the same outcome from the
        /// kept entries (plus all later steps' rows) as from all of its rows.
        #[test]
        fn the_kept_entries_give_the_same_outcomes(
            p in params(),
            rows in proptest::collection::vec((0u32..3, 0i64..60, 1u32..16), 0..60),
        ) {
            let mask = (1u32 << p.steps) - 1;
            let events: Vec<(u32, Ev)> = rows
                .into_iter()
                .filter(|(_, _, s)| s & mask != 0)
                .map(|(n, t, s)| (n, ev(t, s & mask)))
                .collect();
            let mut all: BTreeMap<u32, Vec<Ev>> = BTreeMap::new();
            for (n, e) in &events {
                all.entry(*n).or_default().push(*e);
            }
            let mut kept = reduced(&events);
            prop_assert_eq!(all.keys().collect::<Vec<_>>(), kept.keys().collect::<Vec<_>>());
            for (n, evs) in &mut all {
                evs.sort_unstable();
                let k = kept.get_mut(n).expect("same actors");
                k.sort_unstable();
                prop_assert_eq!(machine::run(&p, evs), machine::run(&p, k), "actor {}", n);
            }
        }
    }
}
