//! Seeing what a query ran: its physical plans recorded while it runs (for `EXPLAIN` and
//! `EXPLAIN ANALYZE` of insights whose plan is only known once run) and printed with their
//! metrics when [`EXPLAIN_ENV`] is set; the helpers that run a DataFrame through that.

use std::future::Future;
use std::sync::Arc;

use datafusion::prelude::DataFrame;

use crate::Result;

/// Environment variable: when set (to anything but `0`), every insight query prints its
/// physical plan with DataFusion's execution metrics (rows, time, bytes scanned, pruning) to
/// standard error once it has run. For finding where a query's time goes.
pub const EXPLAIN_ENV: &str = "HERD_EXPLAIN_ANALYZE";

fn explain_enabled() -> bool {
    std::env::var_os(EXPLAIN_ENV).is_some_and(|v| v != "0")
}

tokio::task_local! {
    /// The physical plans an insight query ran, when it runs under [`record_plans`].
    static RECORDED: std::cell::RefCell<Vec<Arc<dyn datafusion::physical_plan::ExecutionPlan>>>;
}

/// Runs `query` and returns its answer and the physical plans it ran, in order, with their
/// execution metrics. For insights whose later plans depend on what earlier ones found (a
/// trend's breakdown values are ranked first, then counted), so their plans can only be shown
/// by running them, and for `EXPLAIN ANALYZE`.
pub(crate) async fn record_plans<T>(
    query: impl Future<Output = Result<T>>,
) -> Result<(T, Vec<Arc<dyn datafusion::physical_plan::ExecutionPlan>>)> {
    RECORDED
        .scope(std::cell::RefCell::new(Vec::new()), async {
            let answer = query.await?;
            Ok((answer, RECORDED.with(|r| r.take())))
        })
        .await
}

/// Runs `query` (`EXPLAIN ANALYZE`): its answer and the physical plans it ran with their
/// execution metrics; for a plan run on a cluster, the metrics its workers reported (each
/// stage's rows, time and the bytes its shuffles moved).
pub async fn analyze<T>(query: impl Future<Output = Result<T>>) -> Result<(T, String)> {
    let (answer, plans) = record_plans(query).await?;
    let mut shown = Vec::with_capacity(plans.len());
    for plan in plans {
        shown.push(
            datafusion_distributed::explain_analyze(
                plan,
                datafusion_distributed::DistributedMetricsFormat::Aggregated,
            )
            .await?,
        );
    }
    Ok((answer, shown.join("\n")))
}

/// Plans one per line as `EXPLAIN` shows them (children indented), a blank line between;
/// with `metrics`, as `EXPLAIN ANALYZE` does.
pub(crate) fn show_plans(
    plans: &[Arc<dyn datafusion::physical_plan::ExecutionPlan>],
    metrics: bool,
) -> String {
    use datafusion::physical_plan::display::DisplayableExecutionPlan;
    let shown: Vec<String> = plans
        .iter()
        .map(
            |p| match p.is::<datafusion_distributed::DistributedExec>() {
                // Stages, their tasks and the network boundaries between them.
                true => datafusion_distributed::display_plan_ascii(p.as_ref(), metrics),
                false => match metrics {
                    true => DisplayableExecutionPlan::with_metrics(p.as_ref()),
                    false => DisplayableExecutionPlan::new(p.as_ref()),
                }
                .indent(true)
                .to_string(),
            },
        )
        .collect();
    shown.join("\n")
}

/// Prints its plan with metrics to standard error when dropped (after the stream is drained)
/// when [`EXPLAIN_ENV`] is set, and records it under [`record_plans`].
pub(crate) struct Explain(Option<Arc<dyn datafusion::physical_plan::ExecutionPlan>>);

impl Explain {
    /// A guard for `plan`.
    pub(crate) fn new(plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> Self {
        let recording = RECORDED.try_with(|_| ()).is_ok();
        Self((explain_enabled() || recording).then_some(plan))
    }
}

impl Drop for Explain {
    fn drop(&mut self) {
        let Some(plan) = &self.0 else { return };
        let _ = RECORDED.try_with(|r| r.borrow_mut().push(plan.clone()));
        if explain_enabled() {
            eprintln!(
                "{EXPLAIN_ENV}:\n{}",
                show_plans(std::slice::from_ref(plan), true)
            );
        }
    }
}

/// Runs `df` as a stream; the returned guard prints the plan's metrics when
/// [`EXPLAIN_ENV`] is set.
pub(crate) async fn execute_stream(
    df: DataFrame,
) -> Result<(
    datafusion::physical_plan::SendableRecordBatchStream,
    Explain,
)> {
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let stream = datafusion::physical_plan::execute_stream(plan.clone(), task)?;
    Ok((stream, Explain::new(plan)))
}

/// Runs `df` to completion (see [`execute_stream`]).
pub(crate) async fn collect(df: DataFrame) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
    use futures::TryStreamExt;
    let (stream, _explain) = execute_stream(df).await?;
    Ok(stream.try_collect().await?)
}
