//! The leaves of insight plans on a cluster: how many tasks a scan of herd's events files
//! (or of rows in memory: the write buffer, a groups table) asks for, how its files or
//! batches are shared out among them, and [`EventsScanExec`], the leaf a task runs.
//!
//! Every leaf is split so that each row is read by exactly one task; the distributed
//! planner's shuffles, broadcasts and coalesces above it then see every row once.
//!
//! A single-process scan is a `DataSourceExec` whose files carry the row selection the
//! coordinator computed from its file index (a `ParquetAccessPlan` per file) and whose
//! reader takes each footer from that index. DataFusion's protobuf form of a
//! `DataSourceExec` keeps neither, so a task's share of the scan travels as an
//! [`EventsScanExec`]: the `DataSourceExec` (files, projection, predicate, limit, Parquet
//! options) in its protobuf form plus each file's selection ([`Selection`]). On the worker
//! the reader takes footers from the worker's own index ([`WorkerReaderFactory`]).

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccess};
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfig, FileScanConfigBuilder, ParquetSource,
};
use datafusion::datasource::source::DataSource;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion_distributed::{
    DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedLeafExec,
    ScaleUpLeafNodeEvent, ScaleUpLeafNodeEventResponse,
};
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use serde::{Deserialize, Serialize};

use crate::STORE_URL;
use crate::files::balance;

/// A task's share of an events scan: a `DataSourceExec` over herd's events files whose
/// files may carry row selections. Runs exactly as the scan it wraps.
#[derive(Debug)]
pub(crate) struct EventsScanExec {
    scan: Arc<dyn ExecutionPlan>,
}

impl EventsScanExec {
    pub(crate) fn new(scan: Arc<dyn ExecutionPlan>) -> Self {
        Self { scan }
    }

    /// The wrapped scan.
    pub(crate) fn scan(&self) -> &Arc<dyn ExecutionPlan> {
        &self.scan
    }

    fn config(&self) -> Option<&FileScanConfig> {
        scan_config(&self.scan)
    }
}

impl DisplayAs for EventsScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let files = self
            .config()
            .map_or(0, |c| c.file_groups.iter().map(FileGroup::len).sum());
        let selected = self.config().map_or(0, |c| {
            c.file_groups
                .iter()
                .flat_map(|g| g.iter())
                .filter(|f| f.extension::<ParquetAccessPlan>().is_some())
                .count()
        });
        match t {
            DisplayFormatType::TreeRender => write!(f, "files={files}"),
            _ => write!(
                f,
                "EventsScanExec: files={files}, with row selections={selected}"
            ),
        }
    }
}

impl ExecutionPlan for EventsScanExec {
    fn name(&self) -> &'static str {
        "EventsScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.scan.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.scan.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match children.is_empty() {
            true => Ok(self),
            false => Err(DataFusionError::Internal("EventsScanExec is a leaf".into())),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.scan.execute(partition, context)
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        self.scan.statistics_from_inputs(input_stats, args)
    }

    fn metrics(&self) -> Option<datafusion::physical_plan::metrics::MetricsSet> {
        self.scan.metrics()
    }
}

/// The file scan of `plan` when it is a scan of herd's events files.
fn scan_config(plan: &Arc<dyn ExecutionPlan>) -> Option<&FileScanConfig> {
    let scan = plan.downcast_ref::<DataSourceExec>()?;
    let config = scan.data_source().downcast_ref::<FileScanConfig>()?;
    let herd = config.object_store_url.as_str() == STORE_URL
        && config.file_source.downcast_ref::<ParquetSource>().is_some();
    herd.then_some(config)
}

/// Rows a file's scan reads (its statistics, set by the table provider).
fn rows_of(file: &PartitionedFile) -> u64 {
    file.statistics
        .as_ref()
        .and_then(|s| s.num_rows.get_value().copied())
        .map_or(1, |n| n as u64)
}

/// Rows in memory that can be split among tasks (no limit, no declared order).
fn memory_source(plan: &Arc<dyn ExecutionPlan>) -> Option<&MemorySourceConfig> {
    let scan = plan.downcast_ref::<DataSourceExec>()?;
    let memory = scan.data_source().downcast_ref::<MemorySourceConfig>()?;
    (memory.fetch().is_none() && memory.sort_information().is_empty()).then_some(memory)
}

/// Desired tasks of a leaf: one per events file or batch in memory (the planner caps it
/// at the workers).
pub(crate) fn desired_task_count(
    ev: DesiredTaskCountEvent,
) -> Option<Result<DesiredTaskCountEventResponse>> {
    let units: usize = match (scan_config(ev.plan), memory_source(ev.plan)) {
        // A scan with a limit is not split: each task would apply it.
        (Some(config), _) if config.limit.is_some() => {
            return Some(Ok(DesiredTaskCountEventResponse::maximum(1)));
        }
        (Some(config), _) => config.file_groups.iter().map(FileGroup::len).sum(),
        (None, Some(memory)) => memory.partitions().iter().map(Vec::len).sum(),
        (None, None) => return None,
    };
    Some(Ok(DesiredTaskCountEventResponse::desired(units.max(1))))
}

/// Shares the batches of rows in memory out among `ev.task_count` tasks, round-robin, each
/// task with the source's partition count.
pub(crate) fn scale_up_memory(
    ev: ScaleUpLeafNodeEvent,
) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    let memory = memory_source(ev.plan)?;
    let partitions = memory.partitions().len().max(1);
    let tasks = ev.task_count.max(1);
    let mut shares = vec![vec![Vec::new(); partitions]; tasks];
    let batches = memory.partitions().iter().flatten().cloned();
    for (i, batch) in batches.enumerate() {
        shares[i % tasks][(i / tasks) % partitions].push(batch);
    }
    let variants = shares
        .into_iter()
        .map(|parts| {
            MemorySourceConfig::try_new(
                &parts,
                memory.original_schema(),
                memory.projection().clone(),
            )
            .map(|m| {
                DataSourceExec::from_data_source(m.with_show_sizes(memory.show_sizes()))
                    as Arc<dyn ExecutionPlan>
            })
        })
        .collect::<Result<Vec<_>>>();
    Some(variants.and_then(|v| {
        DistributedLeafExec::try_new(ev.plan.clone(), v)
            .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf)))
    }))
}

/// Shares an events scan's files out among `task_count` tasks, whole files balanced by the
/// rows they read, each task with the scan's partition count; every file keeps its row
/// selection.
pub(crate) fn scale_up(ev: ScaleUpLeafNodeEvent) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    let config = scan_config(ev.plan)?;
    let partitions = config.file_groups.len().max(1);
    let tasks = match config.limit {
        Some(_) => 1,
        None => ev.task_count.max(1),
    };
    let files: Vec<(PartitionedFile, u64)> = config
        .file_groups
        .iter()
        .flat_map(|g| g.iter().map(|f| (f.clone(), rows_of(f))))
        .collect();
    // Whole files balanced over the tasks, then each task's over its partitions.
    let variants = balance(files, tasks).into_iter().map(|share| {
        let share = share.into_iter().map(|f| {
            let n = rows_of(&f);
            (f, n)
        });
        // `balance` gives every partition a group (maybe empty): the variants agree.
        let groups: Vec<FileGroup> = balance(share.collect(), partitions)
            .into_iter()
            .map(FileGroup::new)
            .collect();
        let config = FileScanConfigBuilder::from(config.clone())
            .with_file_groups(groups)
            .build();
        Arc::new(EventsScanExec::new(DataSourceExec::from_data_source(
            config,
        ))) as Arc<dyn ExecutionPlan>
    });
    let variants: Vec<_> = variants.collect();
    Some(
        DistributedLeafExec::try_new(ev.plan.clone(), variants)
            .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf))),
    )
}

/// One row group's access in a [`Selection`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum RowGroup {
    Skip,
    Scan,
    /// Alternating runs `(skip, rows)`.
    Select(Vec<(bool, usize)>),
}

/// A file's row selection as it travels: one entry per row group.
pub(crate) type Selection = Vec<RowGroup>;

/// The row selection of every file of `scan`, by file group then file (`None`: all rows).
pub(crate) fn selections(scan: &EventsScanExec) -> Result<Vec<Vec<Option<Selection>>>> {
    let config = scan
        .config()
        .ok_or_else(|| DataFusionError::Internal("EventsScanExec without a file scan".into()))?;
    Ok(config
        .file_groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|f| f.extension::<ParquetAccessPlan>().map(to_selection))
                .collect()
        })
        .collect())
}

fn to_selection(plan: &ParquetAccessPlan) -> Selection {
    plan.inner()
        .iter()
        .map(|access| match access {
            RowGroupAccess::Skip => RowGroup::Skip,
            RowGroupAccess::Scan => RowGroup::Scan,
            RowGroupAccess::Selection(s) => {
                RowGroup::Select(s.iter().map(|r| (r.skip, r.row_count)).collect())
            }
        })
        .collect()
}

fn to_access_plan(selection: &Selection) -> ParquetAccessPlan {
    ParquetAccessPlan::new(
        selection
            .iter()
            .map(|g| match g {
                RowGroup::Skip => RowGroupAccess::Skip,
                RowGroup::Scan => RowGroupAccess::Scan,
                RowGroup::Select(runs) => RowGroupAccess::Selection(RowSelection::from(
                    runs.iter()
                        .map(|&(skip, n)| match skip {
                            true => RowSelector::skip(n),
                            false => RowSelector::select(n),
                        })
                        .collect::<Vec<_>>(),
                )),
            })
            .collect(),
    )
}

/// `scan` (a decoded `DataSourceExec`) with the files' `selections` put back and its
/// reader taking footers from the worker's index (see [`WorkerReaderFactory`]).
pub(crate) fn restore(
    scan: Arc<dyn ExecutionPlan>,
    selections: &[Vec<Option<Selection>>],
    reader: Arc<crate::files::WorkerReaderFactory>,
) -> Result<EventsScanExec> {
    let bad = |what: &str| DataFusionError::Internal(format!("EventsScanExec: {what}"));
    let config = scan_config(&scan).ok_or_else(|| bad("not a scan of events files"))?;
    if config.file_groups.len() != selections.len() {
        return Err(bad("file groups and selections differ"));
    }
    let groups = config
        .file_groups
        .iter()
        .zip(selections)
        .map(|(group, selections)| {
            if group.len() != selections.len() {
                return Err(bad("files and selections differ"));
            }
            Ok(FileGroup::new(
                group
                    .iter()
                    .zip(selections)
                    .map(|(file, selection)| match selection {
                        Some(s) => file.clone().with_extension(to_access_plan(s)),
                        None => file.clone(),
                    })
                    .collect(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let source = config
        .file_source
        .downcast_ref::<ParquetSource>()
        .ok_or_else(|| bad("not Parquet"))?
        .clone()
        .with_parquet_file_reader_factory(reader);
    let config = FileScanConfigBuilder::from(config.clone())
        .with_file_groups(groups)
        .with_source(Arc::new(source))
        .build();
    Ok(EventsScanExec::new(DataSourceExec::from_data_source(
        config,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_batches_are_each_read_by_one_task() {
        use datafusion::arrow::array::{Int64Array, RecordBatch};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::physical_plan::ExecutionPlanProperties;
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = |from: i64| {
            let values: Vec<i64> = (from..from + 3).collect();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))])
                .expect("batch")
        };
        let batches: Vec<RecordBatch> = (0..5).map(|i| batch(i * 3)).collect();
        let plan = MemorySourceConfig::try_new_exec(&[batches], schema.clone(), None)
            .expect("memory") as Arc<dyn ExecutionPlan>;
        let config = datafusion::prelude::SessionConfig::new();
        let ev = ScaleUpLeafNodeEvent {
            plan: &plan,
            task_count: 2,
            session_config: &config,
        };
        let leaf = scale_up_memory(ev).expect("handled").expect("scaled").plan;
        let leaf = leaf
            .downcast_ref::<DistributedLeafExec>()
            .expect("a leaf per task");
        let mut seen = Vec::new();
        for variant in leaf.variants() {
            assert_eq!(variant.output_partitioning().partition_count(), 1);
            let memory = memory_source(variant).expect("memory");
            for b in memory.partitions().iter().flatten() {
                let n = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("i64");
                seen.extend(n.values().iter().copied());
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..15).collect::<Vec<i64>>());
    }

    #[test]
    fn selections_travel_unchanged() {
        let mut plan = ParquetAccessPlan::new_none(3);
        plan.scan(0);
        plan.set(
            2,
            RowGroupAccess::Selection(RowSelection::from(vec![
                RowSelector::skip(5),
                RowSelector::select(7),
                RowSelector::skip(1),
            ])),
        );
        let wire = to_selection(&plan);
        let json = serde_json::to_string(&wire).expect("json");
        let back: Selection = serde_json::from_str(&json).expect("parse");
        assert_eq!(to_access_plan(&back).inner(), plan.inner());
    }
}
