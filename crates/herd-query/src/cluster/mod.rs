//! Insights on a cluster of herd workers, with datafusion-distributed: a coordinator plans
//! each insight as usual, then the distributed planner cuts the physical plan into stages
//! at its repartitions and coalesces and sends each stage's tasks to workers over Arrow
//! Flight. This module holds what herd adds to that: the codec for herd's nodes and
//! nodes ([`codec`]), herd's functions by name ([`functions`]), how an events scan is shared
//! out among tasks ([`scan`]), the live set of workers ([`workers`]), and the worker's
//! session ([`worker`]).

mod channels;
mod codec;
pub(crate) mod functions;
mod scan;
mod workers;

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_distributed::{
    DistributedExt, SessionStateBuilderExt, Worker, WorkerPlanRewriteEvent,
    WorkerPlanRewriteEventResponse, WorkerQueryContext,
};
use object_store::ObjectStore;
use tonic::codegen::http::{HeaderMap, HeaderValue};

pub use codec::HerdCodec;
pub use workers::Workers;

use crate::files::FileIndexes;
use crate::{Result, STORE_URL};

/// The header that carries a cluster's shared secret with every task, from the coordinator
/// to its workers and from worker to worker.
const SECRET_HEADER: &str = "x-herd-cluster-secret";

/// Headers that carry `secret`.
fn secret_headers(secret: Option<&str>) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    if let Some(s) = secret {
        let value = HeaderValue::from_str(s).map_err(|_| {
            crate::Error::invalid("cluster_secret", "use printable ASCII characters only")
        })?;
        headers.insert(SECRET_HEADER, value);
    }
    Ok(headers)
}

/// `builder` (herd's session, its query planner set) planning every query for `workers`.
pub(crate) fn distributed(
    builder: SessionStateBuilder,
    workers: Workers,
    indexes: Arc<FileIndexes>,
) -> Result<SessionStateBuilder> {
    let headers = secret_headers(workers.secret())?;
    Ok(builder
        .with_distributed_passthrough_headers(headers)?
        .with_distributed_channel_resolver(workers.channels())
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
        .map(SessionStateBuilderExt::with_distributed_planner)?)
}

/// The worker service of `herd worker`: runs the stages coordinators send it, reading
/// events files from `store` (the same data the coordinators read), with `partitions`
/// parallel partitions per task (default: the CPU count) and an optional memory pool of
/// `memory_limit` bytes shared by its queries. With `secret`, it runs only tasks that carry
/// it (the coordinator's `--cluster-secret`) and passes it on to the workers it reads from.
pub fn worker(
    store: Arc<dyn ObjectStore>,
    partitions: Option<usize>,
    memory_limit: Option<usize>,
    secret: Option<String>,
) -> Result<Worker> {
    let secret: Option<Arc<str>> = secret.filter(|s| !s.is_empty()).map(Arc::from);
    let forwarded = secret_headers(secret.as_deref())?;
    // The data location and nothing else: no `file://` (DataFusion's default registry has
    // the local filesystem), so a plan cannot name another store.
    let mut runtime =
        RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(OnlyData::new(store)?));
    if let Some(limit) = memory_limit {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
    }
    let runtime = runtime.build_arc()?;
    let codec = Arc::new(HerdCodec::new(Arc::default()));
    let channels = channels::Channels::default();
    let session = move |ctx: WorkerQueryContext| {
        let (codec, runtime, channels) = (codec.clone(), runtime.clone(), channels.clone());
        let allowed = admits(secret.as_deref(), &ctx.headers);
        let forwarded = forwarded.clone();
        async move {
            if !allowed {
                return Err(DataFusionError::Execution(
                    "herd worker: the task's cluster secret is missing or wrong (--cluster-secret)"
                        .into(),
                ));
            }
            let mut builder = functions::register(ctx.builder)
                .with_distributed_worker_plan_rewrite_handler(refuse_outside_plans)
                .with_distributed_channel_resolver(channels)
                .with_distributed_passthrough_headers(forwarded)?
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

/// A worker's only object store: the data location, at [`STORE_URL`].
#[derive(Debug)]
struct OnlyData {
    url: url::Url,
    store: Arc<dyn ObjectStore>,
}

impl OnlyData {
    fn new(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let url = url::Url::parse(STORE_URL).map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Self { url, store })
    }
}

impl ObjectStoreRegistry for OnlyData {
    fn register_store(
        &self,
        _url: &url::Url,
        _store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        None
    }

    fn get_store(&self, url: &url::Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        match url.scheme() == self.url.scheme() && url.host_str() == self.url.host_str() {
            true => Ok(self.store.clone()),
            false => Err(DataFusionError::Execution(format!(
                "herd worker: no object store for {url} (a worker reads only the data location)"
            ))),
        }
    }
}

/// Refuses a task that writes (a sink) or reads files outside the data location: a worker
/// runs herd's insight stages only.
fn refuse_outside_plans(
    ev: WorkerPlanRewriteEvent,
) -> datafusion::error::Result<WorkerPlanRewriteEventResponse> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::sink::DataSinkExec;
    use datafusion::datasource::source::DataSourceExec;
    ev.plan.apply(|node| {
        if node.is::<DataSinkExec>() {
            return Err(DataFusionError::Execution(
                "herd worker: a task may not write".into(),
            ));
        }
        let outside = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|s| s.data_source().downcast_ref::<FileScanConfig>())
            .is_some_and(|c| c.object_store_url.as_str() != STORE_URL);
        match outside {
            true => Err(DataFusionError::Execution(
                "herd worker: a task may read only the data location".into(),
            )),
            false => Ok(TreeNodeRecursion::Continue),
        }
    })?;
    Ok(WorkerPlanRewriteEventResponse::new(ev.plan))
}

/// Whether a task with `headers` may run on a worker that requires `secret`.
fn admits(secret: Option<&str>, headers: &HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    match secret {
        None => true,
        Some(s) => headers
            .get(SECRET_HEADER)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(s.as_bytes()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_reads_only_the_data_location() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let only = OnlyData::new(store).expect("registry");
        let url = |u: &str| url::Url::parse(u).expect("url");
        assert!(only.get_store(&url(STORE_URL)).is_ok());
        assert!(only.get_store(&url("file:///etc/")).is_err());
        assert!(only.get_store(&url("s3://other-bucket/")).is_err());
        assert!(
            only.register_store(&url("file:///"), only.store.clone())
                .is_none()
        );
        assert!(only.get_store(&url("file:///")).is_err());
    }

    #[test]
    fn tasks_need_the_cluster_secret_when_one_is_set() {
        let with = secret_headers(Some("s3cret")).expect("headers");
        let wrong = secret_headers(Some("other")).expect("headers");
        assert!(admits(None, &HeaderMap::new()));
        assert!(admits(Some("s3cret"), &with));
        assert!(!admits(Some("s3cret"), &wrong));
        assert!(!admits(Some("s3cret"), &HeaderMap::new()));
        assert!(secret_headers(Some("new\nline")).is_err());
    }
}
