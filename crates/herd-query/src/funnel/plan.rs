//! The funnel in DataFusion's plans: [`FunnelNode`], a logical extension node over the
//! funnel's rows, and [`FunnelPlanner`], which plans it as a [`FunnelExec`] under the two
//! stages of its fold ([`FunnelFoldExec`]) (see
//! [`crate::planner`] for the session's query planner that knows it).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DFSchemaRef, DataFusionError, Result};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use super::exec::FunnelExec;
use super::fold::{FoldKind, state_schema};
use super::fold_exec::{FunnelFoldExec, Stage};
use super::machine::Params;
use super::udaf::Mode;

/// The funnel over `later` (all rows, or a split funnel's later steps: `(__actor, __ts,
/// __steps, __excl, __bd, __bucket)`) and a split funnel's `entries` (`(__actor, __ts)`).
/// Output: the fold's merged state (see [`super::fold::state_schema`]).
#[derive(Debug, Clone)]
pub(crate) struct FunnelNode {
    later: LogicalPlan,
    entries: Option<LogicalPlan>,
    params: Params,
    mode: Mode,
    fold: FoldKind,
    memory: usize,
    schema: DFSchemaRef,
}

impl FunnelNode {
    /// The node as a logical plan.
    pub(crate) fn plan(
        later: LogicalPlan,
        entries: Option<LogicalPlan>,
        params: Params,
        mode: Mode,
        fold: FoldKind,
        memory: usize,
    ) -> Result<LogicalPlan> {
        let schema = Arc::new(DFSchema::try_from(state_schema(fold).as_ref().clone())?);
        let node = Self {
            later,
            entries,
            params,
            mode,
            fold,
            memory,
            schema,
        };
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        }))
    }
}

impl PartialEq for FunnelNode {
    fn eq(&self, other: &Self) -> bool {
        self.later == other.later
            && self.entries == other.entries
            && self.params == other.params
            && self.mode == other.mode
            && self.fold == other.fold
            && self.memory == other.memory
    }
}

impl Eq for FunnelNode {}

impl Hash for FunnelNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.later.hash(state);
        self.entries.hash(state);
        self.params.hash(state);
        self.mode.hash(state);
        self.fold.hash(state);
        self.memory.hash(state);
    }
}

/// Funnel nodes have no meaningful order (the optimizer only asks whether nodes differ).
impl PartialOrd for FunnelNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for FunnelNode {
    fn name(&self) -> &str {
        "Funnel"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        let mut out = vec![&self.later];
        out.extend(self.entries.iter());
        out
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "Funnel: steps={}, order={:?}, mode={:?}, split={}",
            self.params.steps,
            self.params.order,
            self.mode,
            self.entries.is_some()
        )
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        if !exprs.is_empty() || inputs.len() != 1 + usize::from(self.entries.is_some()) {
            return Err(DataFusionError::Internal(
                "Funnel: unexpected expressions or inputs".into(),
            ));
        }
        let entries = (inputs.len() == 2).then(|| inputs.remove(1));
        Ok(Self {
            later: inputs.remove(0),
            entries,
            ..self.clone()
        })
    }

    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // Every input column is used.
        Some(
            UserDefinedLogicalNodeCore::inputs(self)
                .iter()
                .map(|i| (0..i.schema().fields().len()).collect())
                .collect(),
        )
    }
}

/// Plans [`FunnelNode`]s as [`FunnelExec`]s.
#[derive(Debug, Default)]
pub(crate) struct FunnelPlanner;

#[async_trait]
impl ExtensionPlanner for FunnelPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(funnel) = node.as_any().downcast_ref::<FunnelNode>() else {
            return Ok(None);
        };
        let (later, entries) = match physical_inputs {
            [later] => (later.clone(), None),
            [later, entries] => (later.clone(), Some(entries.clone())),
            _ => {
                return Err(DataFusionError::Internal(
                    "Funnel: one or two inputs".into(),
                ));
            }
        };
        let funnel_exec = Arc::new(FunnelExec::new(
            later,
            entries,
            funnel.params.clone(),
            funnel.mode.clone(),
            funnel.memory,
        ));
        // The fold: a state per partition, merged in one (the optimizer puts the coalescing
        // of partitions between the two, as the final stage requires one partition).
        let partial = Arc::new(FunnelFoldExec::new(
            funnel_exec,
            Stage::Partial,
            funnel.fold,
        ));
        Ok(Some(Arc::new(FunnelFoldExec::new(
            partial,
            Stage::Final,
            funnel.fold,
        ))))
    }
}
