//! [`FunnelFoldExec`]: the funnel's fold (see [`super::fold`]) as plan operators above the
//! [`super::exec::FunnelExec`]. The partial stage runs in each of the funnel's partitions and
//! turns its actors' outcome lists into one small state per breakdown value; the final stage
//! (one partition) merges the states. Only the states cross partitions (or, later, machines),
//! and both charge what they hold to the session's memory pool.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, Partitioning, PlanProperties,
};
use futures::StreamExt;

use super::fold::{Fold, FoldKind, state_schema};

/// Which half of the fold an operator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) enum Stage {
    /// Outcome lists → states, per partition.
    Partial,
    /// States → one merged state, in one partition.
    Final,
}

/// One stage of the funnel's fold.
#[derive(Debug)]
pub(crate) struct FunnelFoldExec {
    input: Arc<dyn ExecutionPlan>,
    stage: Stage,
    kind: FoldKind,
    cache: Arc<PlanProperties>,
}

impl FunnelFoldExec {
    /// The fold's stage and kind (what [`FunnelFoldExec::new`] takes besides the input).
    pub(crate) fn parts(&self) -> (Stage, FoldKind) {
        (self.stage, self.kind)
    }

    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, stage: Stage, kind: FoldKind) -> Self {
        let partitions = match stage {
            Stage::Partial => input.output_partitioning().partition_count(),
            Stage::Final => 1,
        };
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(state_schema(kind)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            input.boundedness(),
        ));
        Self {
            input,
            stage,
            kind,
            cache,
        }
    }
}

impl DisplayAs for FunnelFoldExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let kind = match self.kind {
            FoldKind::Steps { .. } => "steps",
            FoldKind::Trends { .. } => "trends",
        };
        write!(f, "FunnelFoldExec: stage={:?}, fold={kind}", self.stage)
    }
}

impl ExecutionPlan for FunnelFoldExec {
    fn name(&self) -> &'static str {
        "FunnelFoldExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        InputDistributionRequirements::new(vec![match self.stage {
            Stage::Partial => Distribution::UnspecifiedDistribution,
            Stage::Final => Distribution::SinglePartition,
        }])
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "FunnelFoldExec: one child".into(),
            ));
        }
        Ok(Arc::new(Self::new(
            children.remove(0),
            self.stage,
            self.kind,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let reservation = MemoryConsumer::new(format!("FunnelFoldExec[{partition}]"))
            .register(context.memory_pool());
        let (stage, kind) = (self.stage, self.kind);
        let fold = async move {
            let mut input = input;
            let mut fold = Fold::new(kind);
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let added = match stage {
                    Stage::Partial => fold.add_outcomes(batch.column(0)),
                    Stage::Final => fold.merge(&batch),
                };
                added.map_err(external)?;
                reservation.try_resize(fold.size())?;
            }
            fold.to_batch().map_err(external)
        };
        let schema = self.schema();
        let stream = futures::stream::once(fold);
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

fn external(e: crate::Error) -> DataFusionError {
    match e {
        crate::Error::DataFusion(e) => e,
        other => DataFusionError::External(Box::new(other)),
    }
}

/// The final stage's rows read back into a fold.
pub(crate) fn read_back(kind: FoldKind, batches: &[RecordBatch]) -> crate::Result<Fold> {
    let mut fold = Fold::new(kind);
    for b in batches {
        fold.merge(b)?;
    }
    Ok(fold)
}
