//! The session's query planner: DataFusion's, plus herd's own logical nodes (the funnel's,
//! [`crate::funnel::plan`]), so that an insight is one plan from the scan to its rows and
//! `EXPLAIN` shows all of it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

use crate::funnel::plan::FunnelPlanner;
use crate::trends::breakdown::BreakdownPlanner;

/// DataFusion's physical planner with herd's extension planners.
#[derive(Debug, Default)]
pub(crate) struct HerdQueryPlanner;

#[async_trait]
impl QueryPlanner for HerdQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(FunnelPlanner),
            Arc::new(BreakdownPlanner),
        ])
        .create_physical_plan(logical_plan, session)
        .await
    }
}
