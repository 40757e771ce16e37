//! `herd worker`: a process that runs the plan stages a `herd serve --workers …` sends it
//! (datafusion-distributed's worker service over gRPC), reading the same data location.
//! It opens the store's object store only: no WAL, no catalog writes, no project state.

use std::net::SocketAddr;
use std::time::Duration;

use herd_storage::Storage;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{Error, Result};

/// Everything `herd worker` needs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Data location, as `herd serve --data` (a folder, `file://`, `memory://`, `s3://`).
    pub data: String,
    /// gRPC listen address.
    pub listen: String,
    /// Parallel partitions per task (default: the CPU count).
    pub partitions: Option<usize>,
    /// Bytes of memory the worker's queries share (default: unbounded).
    pub memory_limit: Option<usize>,
    /// The secret every task must carry (the coordinators' `--cluster-secret`); none: any.
    pub secret: Option<String>,
}

/// A started worker: its address and its serving task.
#[derive(Debug)]
pub struct RunningWorker {
    /// The bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl RunningWorker {
    /// Waits until the worker stops (its `stop` resolved, or it failed).
    pub async fn wait(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| Error::Grpc(format!("worker task: {e}")))?
    }
}

/// Binds `config.listen` and serves the worker until `stop` resolves.
pub async fn start_worker(
    config: WorkerConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningWorker> {
    let storage = Storage::open(&config.data)?;
    let worker = herd_query::cluster::worker(
        storage.object_store(),
        config.partitions,
        config.memory_limit,
        config.secret.clone(),
    )
    .map_err(|e| Error::Config(format!("worker: {e}")))?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .add_service(worker.into_worker_server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
            .await
            .map_err(|e| Error::Grpc(e.to_string()))
    });
    if config.secret.is_none() {
        if !addr.ip().is_loopback() {
            return Err(Error::Config(format!(
                "--cluster-secret is required to listen on {addr}: without one, anyone who reaches the port can run plans over the data"
            )));
        }
        tracing::warn!(
            "no --cluster-secret: any local client that reaches {addr} can run plans here"
        );
    }
    tracing::info!(%addr, data = storage.location(), "herd worker serving");
    Ok(RunningWorker { addr, task })
}
