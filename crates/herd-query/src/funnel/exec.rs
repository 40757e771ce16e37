//! Runs the funnel aggregate straight over a plan's partitions, without DataFusion's
//! aggregation operator, in bounded memory.
//!
//! A funnel groups by actor, and its "partial state" is every row of the actor: a two-phase
//! aggregate cannot reduce anything, and repartitioning the rows as one-element list states
//! (plus hashing each actor string twice, once to repartition and once to group) was a fifth
//! of a funnel's time. Here each input partition sends every row to one of a few (at most
//! [`BUCKETS`]) flat [`FunnelAccumulator`]s by a hash of its actor, numbering actors per
//! bucket ([`crate::actors`]: strings of at most 12 bytes keyed by their 16-byte view); a row
//! with the previous row's actor (files keep one actor's rows together) skips the lookup.
//!
//! Rows are 32 bytes, and a funnel over 100M events keeps most of them: when the rows held by
//! all partitions pass the memory budget, a partition writes its buckets' rows to spill files
//! (one per bucket, from the session's disk manager) and goes on; only actor ids and interned
//! breakdown values stay in memory. When all partitions are done, buckets are evaluated a few
//! at a time (as many as the session's target partitions): each reads its rows back, merges
//! its partitions (actors renumbered into the first) and runs the state machine. Each actor
//! lives in exactly one bucket, so buckets evaluate independently and the answer does not
//! depend on partitioning, batch boundaries or spilling.

use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, UInt32Type};
use datafusion::common::DataFusionError;
use datafusion::execution::disk_manager::DiskManager;
use datafusion::execution::{SpillFile, SpillWriter, TaskContext};
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, StatisticsArgs, StatisticsContext,
};
use datafusion::prelude::DataFrame;
use futures::{StreamExt, TryStreamExt};

use super::machine::Params;
use super::udaf::{FunnelAccumulator, Mode, ROW_BYTES};
use crate::actors::{ActorIds, Key, hash_key, key_of, shard_of};
use crate::{Error, Explain, Result};

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

/// The memory budget shared by the partitions of one funnel.
struct Budget {
    /// Row bytes held by all partitions.
    held: AtomicUsize,
    limit: usize,
    disk: Arc<DiskManager>,
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

    /// Moves the rows in memory to this bucket's spill file.
    fn spill(&mut self, disk: &Arc<DiskManager>) -> Result<()> {
        if self.acc.row_bytes() == 0 {
            return Ok(());
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
            .map_err(|e| io_error("write", e))?;
        Ok(())
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

/// Feeds one partition's stream into its shards, spilling them when all partitions together
/// hold more than the budget.
async fn run_partition(
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    task: Arc<TaskContext>,
    mut shards: Vec<Shard>,
    budget: Arc<Budget>,
) -> Result<Vec<Shard>> {
    let mut stream = plan.execute(partition, task)?;
    // Row bytes this partition holds (its share of `budget.held`).
    let mut mine = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        number(batch.column(0), &mut shards)?;
        let values = &batch.columns()[1..];
        for s in &mut shards {
            if !s.rows.is_empty() {
                s.acc.push(values, &s.rows, s.ids.count as usize)?;
            }
        }
        let now: usize = shards.iter().map(|s| s.acc.row_bytes()).sum();
        let held = if now >= mine {
            budget.held.fetch_add(now - mine, Ordering::Relaxed) + (now - mine)
        } else {
            budget.held.fetch_sub(mine - now, Ordering::Relaxed) - (mine - now)
        };
        mine = now;
        if held > budget.limit {
            for s in &mut shards {
                s.spill(&budget.disk)?;
            }
            budget.held.fetch_sub(mine, Ordering::Relaxed);
            mine = 0;
        }
    }
    Ok(shards)
}

/// Runs the funnel aggregate over `df`, whose columns are `(actor, ts Int64, steps UInt32,
/// excl UInt32, breakdown Utf8, bucket Int32)`: one list of output structs per actor (see
/// [`super::udaf::FunnelUdaf`]), in arrays of any length. Rows beyond `memory` bytes spill to
/// disk; `parallel` buckets are evaluated at a time. The guard prints the input plan's
/// metrics when [`crate::EXPLAIN_ENV`] is set.
pub(crate) async fn run(
    df: DataFrame,
    params: Params,
    mode: Mode,
    parallel: usize,
    memory: usize,
) -> Result<(Vec<ArrayRef>, Explain)> {
    let parallel = parallel.max(1);
    let task = Arc::new(df.task_ctx());
    let budget = Arc::new(Budget {
        held: AtomicUsize::new(0),
        limit: memory,
        disk: task.runtime_env().disk_manager.clone(),
    });
    let plan = df.create_physical_plan().await?;
    let explain = Explain::new(plan.clone());
    let partitions = plan.output_partitioning().partition_count();
    // Evaluation reads `parallel` buckets back at a time and copies each while sorting it:
    // enough buckets that those fit the budget even if every source row were kept.
    let buckets = match source_rows(&plan) {
        Some(rows) => {
            let worst = rows.saturating_mul(ROW_BYTES).saturating_mul(2 * parallel);
            (worst / memory.max(1)).saturating_add(1)
        }
        None => BUCKETS,
    }
    .clamp(parallel, BUCKETS.max(parallel));
    // A JoinSet aborts the partition tasks if this future is dropped (a cancelled request).
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..partitions {
        let own = (0..buckets).map(|_| Shard::new(&params, &mode)).collect();
        let (plan, task, budget) = (plan.clone(), task.clone(), budget.clone());
        tasks.spawn(async move { (p, run_partition(plan, p, task, own, budget).await) });
    }
    let mut done = Vec::with_capacity(partitions);
    while let Some(joined) = tasks.join_next().await {
        let (p, shards) = joined.map_err(|e| Error::Internal(format!("funnel partition: {e}")))?;
        done.push((p, shards?));
    }
    // Partition order, so that merging does not depend on which finished first.
    done.sort_by_key(|(p, _)| *p);
    // per_bucket[b] = bucket b of every partition.
    let mut per_bucket: Vec<Vec<Shard>> = (0..buckets).map(|_| Vec::new()).collect();
    for (_, partition) in done {
        for (b, shard) in partition.into_iter().enumerate() {
            per_bucket[b].push(shard);
        }
    }
    let evaluations = futures::stream::iter(per_bucket.into_iter().map(|mut parts| async move {
        for part in &mut parts {
            part.unspill().await?;
        }
        tokio::task::spawn_blocking(move || -> Result<ArrayRef> {
            let mut parts = parts.into_iter();
            let Some(mut base) = parts.next() else {
                return Err(Error::Internal("funnel bucket without partitions".into()));
            };
            for other in parts {
                let map = base.ids.absorb(&other.ids);
                base.acc.absorb(other.acc, &map)?;
            }
            Ok(base.acc.evaluate_all()?)
        })
        .await
        .map_err(|e| Error::Internal(format!("funnel evaluation: {e}")))?
    }))
    .buffered(parallel);
    let out: Vec<ArrayRef> = evaluations.try_collect().await?;
    Ok((out, explain))
}
