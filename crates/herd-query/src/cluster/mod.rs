//! Insights on a cluster of herd workers, with datafusion-distributed: a coordinator plans
//! each insight as usual, then the distributed planner cuts the physical plan into stages
//! at its repartitions and coalesces and sends each stage's tasks to workers over Arrow
//! Flight. This module holds what herd adds to that: the codec for herd's nodes and
//! nodes ([`codec`]), herd's functions by name ([`functions`]), how an events scan is shared
//! out among tasks ([`scan`]), the live set of workers ([`workers`]), and the worker's
//! session ([`worker`]).

mod codec;
pub(crate) mod functions;
mod scan;
mod workers;

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_distributed::{DistributedExt, SessionStateBuilderExt, Worker, WorkerQueryContext};
use object_store::ObjectStore;

pub use codec::HerdCodec;
pub use workers::Workers;

use crate::files::FileIndexes;
use crate::{Result, STORE_URL};

/// `builder` (herd's session, its query planner set) planning every query for `workers`.
pub(crate) fn distributed(
    builder: SessionStateBuilder,
    workers: Workers,
    indexes: Arc<FileIndexes>,
) -> Result<SessionStateBuilder> {
    builder
        .with_distributed_worker_resolver(workers)
        .with_distributed_user_codec(HerdCodec::new(indexes))
        .with_distributed_desired_task_count_handler(scan::desired_task_count)
        .with_distributed_scale_up_leaf_node_handler(scan::scale_up)
        .with_distributed_scale_up_leaf_node_handler(scan::scale_up_memory)
        // Every task runs every input of a union, each input's leaf split among all the
        // tasks (rather than each input on some of them): the write buffer's few rows do
        // not take a task from the files.
        .with_distributed_children_isolator_unions(false)
        .and_then(|b| b.with_distributed_metrics_collection(true))
        .map(SessionStateBuilderExt::with_distributed_planner)
        .map_err(Into::into)
}

/// The worker service of `herd worker`: runs the stages coordinators send it, reading
/// events files from `store` (the same data the coordinators read), with `partitions`
/// parallel partitions per task (default: the CPU count) and an optional memory pool of
/// `memory_limit` bytes shared by its queries.
pub fn worker(
    store: Arc<dyn ObjectStore>,
    partitions: Option<usize>,
    memory_limit: Option<usize>,
) -> Result<Worker> {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(limit) = memory_limit {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
    }
    let runtime = runtime.build_arc()?;
    let url = url::Url::parse(STORE_URL).map_err(|e| DataFusionError::External(Box::new(e)))?;
    runtime.register_object_store(&url, store);
    let codec = Arc::new(HerdCodec::new(Arc::default()));
    let session = move |ctx: WorkerQueryContext| {
        let (codec, runtime) = (codec.clone(), runtime.clone());
        async move {
            let mut builder = functions::register(ctx.builder)
                .with_runtime_env(runtime)
                .with_distributed_user_codec_arc(codec);
            if let Some(n) = partitions {
                let config = builder.config().get_or_insert_with(SessionConfig::new);
                config.options_mut().execution.target_partitions = n.max(1);
            }
            Ok(builder.build())
        }
    };
    Ok(Worker::from_session_builder(session))
}
