//! A breakdown's limit inside the plan: [`BreakdownNode`] (logical) and [`BreakdownExec`]
//! (physical) rank a series' breakdown values by the series' aggregate over the range, keep
//! the top `limit`, and relabel every row: a top value keeps its value, a row without one gets
//! [`BREAKDOWN_NULL`], the rest [`BREAKDOWN_OTHER`] (or are dropped when "other" is hidden or
//! there is nothing beyond the limit). Each row also gets its line's position (`__order`).
//!
//! The operator holds its input (the series rows, already reduced to distinct actors where
//! the math counts them) charged to the session's memory pool, ranks them with DataFusion's
//! own aggregate of the series' math, then emits them relabelled: one pass over the events
//! for both the ranking and the counting, in one plan.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray, StringBuilder,
};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef, DataFusionError, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

use super::{BREAKDOWN_NULL, BREAKDOWN_OTHER, BUCKET, LABEL, ORDER, RAW};

/// What the node ranks by and how many values it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) struct Limit {
    /// Values shown.
    pub limit: usize,
    /// Drop the rows of values beyond the limit instead of labelling them "other".
    pub hide_other: bool,
    /// Only rows with `__bucket >= rank_from` are ranked (a trailing window's look-back
    /// rows count in the window but not in the ranking).
    pub rank_from: i32,
}

/// Relabels `input`'s `__raw` breakdown values as `__label` + `__order`, ranked by `rank`
/// (an aggregate over `input`'s columns).
#[derive(Debug, Clone)]
pub(crate) struct BreakdownNode {
    input: LogicalPlan,
    rank: Expr,
    limit: Limit,
    schema: DFSchemaRef,
}

impl BreakdownNode {
    /// The node over `input` as a logical plan.
    pub(crate) fn plan(input: LogicalPlan, rank: Expr, limit: Limit) -> Result<LogicalPlan> {
        let schema = Arc::new(DFSchema::try_from(
            output_schema(input.schema().inner())?.as_ref().clone(),
        )?);
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(Self {
                input,
                rank,
                limit,
                schema,
            }),
        }))
    }
}

/// `input` with `__raw` replaced by a non-null `__label`, then `__order`.
fn output_schema(input: &Schema) -> Result<SchemaRef> {
    let raw = input.index_of(RAW)?;
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[raw] = Field::new(LABEL, DataType::Utf8, false);
    fields.push(Field::new(ORDER, DataType::Int32, false));
    Ok(Arc::new(Schema::new(fields)))
}

impl PartialEq for BreakdownNode {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input && self.rank == other.rank && self.limit == other.limit
    }
}

impl Eq for BreakdownNode {}

impl Hash for BreakdownNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.rank.hash(state);
        self.limit.hash(state);
    }
}

impl PartialOrd for BreakdownNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for BreakdownNode {
    fn name(&self) -> &str {
        "Breakdown"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![self.rank.clone()]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "Breakdown: rank={}, limit={}, hide_other={}, rank_from={}",
            self.rank, self.limit.limit, self.limit.hide_other, self.limit.rank_from
        )
    }

    fn with_exprs_and_inputs(
        &self,
        mut exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        if exprs.len() != 1 || inputs.len() != 1 {
            return Err(DataFusionError::Internal(
                "Breakdown: one expression and one input".into(),
            ));
        }
        Ok(Self {
            input: inputs.remove(0),
            rank: exprs.remove(0),
            ..self.clone()
        })
    }

    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        Some(vec![(0..self.input.schema().fields().len()).collect()])
    }
}

/// Plans [`BreakdownNode`]s as [`BreakdownExec`]s.
#[derive(Debug, Default)]
pub(crate) struct BreakdownPlanner;

#[async_trait]
impl ExtensionPlanner for BreakdownPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<BreakdownNode>() else {
            return Ok(None);
        };
        let ([logical], [input]) = (logical_inputs, physical_inputs) else {
            return Err(DataFusionError::Internal("Breakdown: one input".into()));
        };
        let rank = LoweredAggregateBuilder::new(
            &node.rank,
            logical.schema(),
            &input.schema(),
            session.execution_props(),
            planning_ctx,
        )
        .build()?
        .aggregate;
        Ok(Some(Arc::new(BreakdownExec::try_new(
            input.clone(),
            rank,
            node.limit.clone(),
        )?)))
    }
}

/// The physical breakdown limit (see the module doc). One output partition.
#[derive(Debug)]
pub(crate) struct BreakdownExec {
    input: Arc<dyn ExecutionPlan>,
    rank: Arc<AggregateFunctionExpr>,
    limit: Limit,
    raw: usize,
    bucket: usize,
    cache: Arc<PlanProperties>,
}

impl BreakdownExec {
    /// The ranking aggregate and the limit (what [`BreakdownExec::try_new`] takes besides
    /// the input).
    pub(crate) fn parts(&self) -> (&Arc<AggregateFunctionExpr>, &Limit) {
        (&self.rank, &self.limit)
    }

    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        rank: Arc<AggregateFunctionExpr>,
        limit: Limit,
    ) -> Result<Self> {
        let schema = input.schema();
        let (raw, bucket) = (schema.index_of(RAW)?, schema.index_of(BUCKET)?);
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(output_schema(&schema)?),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            input.boundedness(),
        ));
        Ok(Self {
            input,
            rank,
            limit,
            raw,
            bucket,
            cache,
        })
    }
}

impl DisplayAs for BreakdownExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::TreeRender => write!(f, "limit={}", self.limit.limit),
            _ => write!(
                f,
                "BreakdownExec: rank={}, limit={}, hide_other={}, rank_from={}",
                self.rank.name(),
                self.limit.limit,
                self.limit.hide_other,
                self.limit.rank_from
            ),
        }
    }
}

impl ExecutionPlan for BreakdownExec {
    fn name(&self) -> &'static str {
        "BreakdownExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        InputDistributionRequirements::new(vec![Distribution::SinglePartition])
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for e in self.rank.expressions() {
            if f(&e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("BreakdownExec: one child".into()));
        }
        Ok(Arc::new(Self::try_new(
            children.remove(0),
            self.rank.clone(),
            self.limit.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "BreakdownExec has one partition, not {partition}"
            )));
        }
        let reservation = MemoryConsumer::new("BreakdownExec").register(context.memory_pool());
        let input = self.input.execute(0, context.clone())?;
        let run = Run {
            rank: self.rank.clone(),
            limit: self.limit.clone(),
            raw: self.raw,
            bucket: self.bucket,
            schema: self.schema(),
            reservation,
        };
        let batches = futures::stream::once(run.run(input, context))
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            batches,
        )))
    }
}

/// One execution of a [`BreakdownExec`].
struct Run {
    rank: Arc<AggregateFunctionExpr>,
    limit: Limit,
    raw: usize,
    bucket: usize,
    schema: SchemaRef,
    reservation: MemoryReservation,
}

impl Run {
    async fn run(
        self,
        mut input: SendableRecordBatchStream,
        context: Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        let input_schema = input.schema();
        let mut held = Vec::new();
        let mut bytes = HeldBytes::default();
        while let Some(batch) = input.next().await {
            let batch = batch?;
            let now = bytes.add(&batch);
            self.reservation.try_resize(now)?;
            held.push(batch);
        }
        let ranked = self.rank_values(&held, &input_schema, context).await?;
        let labels = Labels::new(ranked, &self.limit);
        held.iter()
            .map(|b| labels.relabel(b, self.raw, &self.schema))
            .filter(|b| !matches!(b, Ok(b) if b.num_rows() == 0))
            .collect()
    }

    /// `(value, rank value)` of every non-null breakdown value, by DataFusion's aggregate of
    /// the series' math over the ranked rows.
    async fn rank_values(
        &self,
        held: &[RecordBatch],
        schema: &SchemaRef,
        context: Arc<TaskContext>,
    ) -> Result<Vec<(String, f64)>> {
        let rows = match self.limit.rank_from {
            0 => held.to_vec(),
            from => held
                .iter()
                .map(|b| {
                    let bucket = cast(b.column(self.bucket), &DataType::Int32)?;
                    let bucket = bucket
                        .as_any()
                        .downcast_ref::<Int32Array>()
                        .ok_or_else(|| DataFusionError::Internal("bucket not Int32".into()))?;
                    let keep = datafusion::arrow::compute::kernels::cmp::gt_eq(
                        bucket,
                        &Int32Array::new_scalar(from),
                    )?;
                    Ok(filter_record_batch(b, &keep)?)
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let source = MemorySourceConfig::try_new_exec(&[rows], schema.clone(), None)?;
        let raw: Arc<dyn PhysicalExpr> = Arc::new(Column::new(RAW, self.raw));
        let aggregate = AggregateExec::try_new(
            AggregateMode::Single,
            PhysicalGroupBy::new_single(vec![(raw, RAW.to_string())]),
            vec![self.rank.clone()],
            vec![None],
            source,
            schema.clone(),
        )?;
        let out = datafusion::physical_plan::collect(Arc::new(aggregate), context).await?;
        let mut ranked = Vec::new();
        for b in out {
            let values = cast(b.column(0), &DataType::Utf8)?;
            let values = as_strings(&values)?;
            let ranks = cast(b.column(1), &DataType::Float64)?;
            let ranks = ranks
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| DataFusionError::Internal("rank not Float64".into()))?;
            for row in 0..b.num_rows() {
                if values.is_null(row) {
                    continue;
                }
                // PostHog's ifNull(agg, 0).
                let rank = if ranks.is_null(row) {
                    0.0
                } else {
                    ranks.value(row)
                };
                ranked.push((values.value(row).to_string(), rank));
            }
        }
        Ok(ranked)
    }
}

fn as_strings(a: &ArrayRef) -> Result<&StringArray> {
    a.as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| DataFusionError::Internal("breakdown value not Utf8".into()))
}

/// The label and line position of every breakdown value.
struct Labels {
    top: HashMap<String, i32>,
    /// Position of the null line; "other" is the one after it.
    null_order: i32,
    /// Values beyond the limit are shown as "other" (otherwise dropped).
    other: bool,
}

impl Labels {
    fn new(mut ranked: Vec<(String, f64)>, limit: &Limit) -> Self {
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let more = ranked.len() > limit.limit;
        ranked.truncate(limit.limit);
        let null_order = i32::try_from(ranked.len()).unwrap_or(i32::MAX - 1);
        let top = ranked
            .into_iter()
            .enumerate()
            .map(|(i, (v, _))| (v, i as i32))
            .collect();
        Self {
            top,
            null_order,
            other: more && !limit.hide_other,
        }
    }

    /// `batch` with column `raw` replaced by the label and `__order` appended; rows of
    /// dropped values removed.
    fn relabel(&self, batch: &RecordBatch, raw: usize, schema: &SchemaRef) -> Result<RecordBatch> {
        let values = cast(batch.column(raw), &DataType::Utf8)?;
        let values = as_strings(&values)?;
        let mut label = StringBuilder::with_capacity(values.len(), values.len() * 8);
        let mut order = Vec::with_capacity(values.len());
        let mut keep = Vec::with_capacity(values.len());
        for row in 0..values.len() {
            let (text, at) = match (values.is_null(row), self.top.get(values.value(row))) {
                (true, _) => (BREAKDOWN_NULL, self.null_order),
                (false, Some(at)) => (values.value(row), *at),
                (false, None) if self.other => (BREAKDOWN_OTHER, self.null_order + 1),
                (false, None) => {
                    keep.push(false);
                    continue;
                }
            };
            keep.push(true);
            label.append_value(text);
            order.push(at);
        }
        let kept = datafusion::arrow::array::BooleanArray::from(keep);
        let mut columns = Vec::with_capacity(batch.num_columns() + 1);
        for (i, c) in batch.columns().iter().enumerate() {
            if i == raw {
                columns.push(Arc::new(label.finish()) as ArrayRef);
            } else {
                columns.push(datafusion::arrow::compute::filter(c, &kept)?);
            }
        }
        columns.push(Arc::new(Int32Array::from(order)));
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// Bytes held by a sequence of batches, each buffer counted once: an aggregate emits its
/// output as slices of one array, and `get_array_memory_size` of every slice counts the
/// whole buffer again (at 100M events the kept rows of a breakdown "weighed" gigabytes).
#[derive(Debug, Default)]
pub(crate) struct HeldBytes {
    seen: HashSet<usize>,
    bytes: usize,
}

impl HeldBytes {
    /// Adds the buffers of `batch` not seen before; the total so far.
    pub(crate) fn add(&mut self, batch: &RecordBatch) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringViewArray;

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

    #[test]
    fn labels_keep_the_top_values_by_rank_then_name() {
        let ranked = vec![
            ("b".to_string(), 3.0),
            ("a".to_string(), 3.0),
            ("c".to_string(), 5.0),
            ("d".to_string(), 1.0),
        ];
        let limit = Limit {
            limit: 2,
            hide_other: false,
            rank_from: 0,
        };
        let labels = Labels::new(ranked.clone(), &limit);
        assert_eq!(labels.top.get("c"), Some(&0));
        assert_eq!(labels.top.get("a"), Some(&1));
        assert_eq!(labels.top.get("b"), None);
        assert!(labels.other);
        let hidden = Labels::new(
            ranked.clone(),
            &Limit {
                hide_other: true,
                ..limit.clone()
            },
        );
        assert!(!hidden.other);
        let all = Labels::new(ranked, &Limit { limit: 4, ..limit });
        assert!(!all.other, "nothing beyond the limit: no other line");
        assert_eq!(all.null_order, 4);
    }
}
