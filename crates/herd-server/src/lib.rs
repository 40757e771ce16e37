//! herd-server: herd's network edge.
//!
//! Owns the HTTP edge ([`http`]: capture, the SDKs' flag endpoints in [`http::flags`],
//! posthog-js's remote config in [`http::remote_config`]), the gRPC edge ([`grpc`]: auth, the
//! insights, groups and flags services, health, reflection), configuration ([`config`]), the
//! background flusher, and graceful shutdown: stop accepting, finish in-flight requests, flush
//! the write buffer, stop the WAL. Feature flags' shared state and its error mapping live in
//! [`flags`]. Every library error is mapped to a status exactly once at each edge
//! ([`http::ApiError`] for HTTP, [`grpc::status`] for every gRPC service).

pub mod codec;
pub mod config;
pub mod console;
pub mod flags;
pub mod groups;
pub mod grpc;
pub mod http;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_ingest::Ingestor;
use herd_storage::projects::{NewProject, Project};
use herd_storage::{Db, DbConfig, Storage};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::ServeConfig;
pub use worker::{RunningWorker, WorkerConfig, start_worker};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened or flushed.
    #[error(transparent)]
    Storage(#[from] herd_storage::Error),
    /// A listener could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(String),
    /// The flag definitions could not be opened.
    #[error("flags: {0}")]
    Flags(#[from] herd_flags::Error),
}

/// herd-server's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A started server: its addresses and a handle to stop it.
#[derive(Debug)]
pub struct RunningServer {
    /// Where HTTP capture listens.
    pub http_addr: SocketAddr,
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// The default project created because the data folder was empty, if any.
    pub created_project: Option<Project>,
    db: Arc<Db>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
}

impl RunningServer {
    /// The store behind the server.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Stops accepting, waits for in-flight requests, flushes the buffer to Parquet, and
    /// stops the WAL writer.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after [`RunningServer::stop_handle`] fires), then
    /// flushes and closes the store.
    pub async fn wait(self) -> Result<()> {
        let mut first_error = None;
        for task in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(Error::Grpc(format!("task failed: {e}")));
                }
            }
        }
        let stats = self.db.close().await?;
        tracing::info!(
            events = stats.events,
            files = stats.files,
            "flushed on shutdown"
        );
        first_error.map_or(Ok(()), Err)
    }

    /// A sender that stops the server when `true` is sent.
    pub fn stop_handle(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Opens the store, creates a default project on an empty folder, binds both listeners and
/// starts serving.
pub async fn start(config: ServeConfig) -> Result<RunningServer> {
    let storage = Storage::open(&config.data)?;
    let wal_dir = config.resolve_wal_dir(&storage)?;
    let flags_dir = config.resolve_flags_dir(&storage, &wal_dir);
    let mut db_config = DbConfig::new(wal_dir);
    db_config.flush_interval = config.flush_interval;
    db_config.flush_rows = config.flush_rows;
    db_config.max_buffer_bytes = config.max_buffer_bytes;
    let db = Db::open(storage, db_config).await?;
    let created_project = if db.projects().is_empty() {
        Some(db.create_project(NewProject::default()).await?)
    } else {
        None
    };

    let http_listener = TcpListener::bind(&config.http)
        .await
        .map_err(|source| Error::Bind {
            addr: config.http.clone(),
            source,
        })?;
    let grpc_listener = TcpListener::bind(&config.grpc)
        .await
        .map_err(|source| Error::Bind {
            addr: config.grpc.clone(),
            source,
        })?;
    let http_addr = http_listener.local_addr().map_err(|source| Error::Bind {
        addr: config.http.clone(),
        source,
    })?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| Error::Bind {
        addr: config.grpc.clone(),
        source,
    })?;

    let flags = Arc::new(flags::FlagsState::open(db.clone(), &flags_dir)?);

    let (stop, stop_rx) = watch::channel(false);
    let ingestor = Arc::new(Ingestor::new(db.clone()));
    // One query session for the gRPC services and the console (they share its caches).
    let workers = match &config.workers {
        Some(list) => Some(
            herd_query::cluster::Workers::parse(list)
                .map_err(Error::Config)?
                .with_secret(config.cluster_secret.clone()),
        ),
        None => None,
    };
    let engine = herd_query::QueryEngine::with_cluster(db.clone(), None, None, workers.clone())
        .map_err(|e| Error::Grpc(format!("query engine: {e}")))?;
    let mut tasks = vec![
        tokio::spawn(with_grace(
            http::serve(
                http_listener,
                ingestor,
                http::flags::router(flags.clone())
                    .merge(http::remote_config::router(flags.clone()))
                    .merge(console::router(db.clone(), engine.clone())),
                stopped(stop_rx.clone()),
            ),
            stopped(stop_rx.clone()),
        )),
        tokio::spawn(with_grace(
            grpc::serve(
                grpc_listener,
                db.clone(),
                engine,
                flags,
                stopped(stop_rx.clone()),
            ),
            stopped(stop_rx.clone()),
        )),
        tokio::spawn(flusher(db.clone(), stopped(stop_rx.clone()))),
        tokio::spawn(compactor(
            db.clone(),
            config.compact_interval,
            config.compact_min_files,
            stopped(stop_rx.clone()),
        )),
    ];
    if let Some(workers) = workers {
        workers.probe().await;
        tracing::info!(
            live = workers.live().len(),
            configured = workers.configured().len(),
            "planning insights for workers"
        );
        let probe = workers.spawn_probe(WORKER_PROBE_INTERVAL);
        let stop = stopped(stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            stop.await;
            probe.abort();
            Ok(())
        }));
    }
    tracing::info!(%http_addr, %grpc_addr, data = db.storage().location(), "herd serving");
    Ok(RunningServer {
        http_addr,
        grpc_addr,
        created_project,
        db,
        stop,
        tasks,
    })
}

/// How long in-flight requests and open connections get after a stop before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often `herd serve --workers` checks which workers are live.
const WORKER_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Runs a server until it finishes its graceful shutdown, or until [`SHUTDOWN_GRACE`] after
/// `stop` (clients that keep idle connections open must not hold the process up).
async fn with_grace(
    serve: impl std::future::Future<Output = Result<()>>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result,
        () = async {
            stop.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("connections still open {SHUTDOWN_GRACE:?} after the stop: closing them");
            Ok(())
        }
    }
}

/// Resolves when `true` is sent (or the sender is dropped).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// How long files merged away by compaction stay on disk: queries that started from an
/// older snapshot may still be reading them.
const RETIRED_GRACE: Duration = Duration::from_secs(300);

/// Every `every`, merges the events files of each day partition that has `min_files` or
/// more (every flush writes a file per day it holds rows of, so today's partition collects
/// one every few seconds, and each query opens them all), then deletes the files retired
/// more than [`RETIRED_GRACE`] ago. `min_files == 0` turns it off. A compaction that has
/// started finishes before the task stops.
async fn compactor(
    db: Arc<Db>,
    every: Duration,
    min_files: usize,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(stop);
    if min_files == 0 {
        stop.await;
        return Ok(());
    }
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => {
                for project in db.projects() {
                    match db.compact_events(project.id, min_files).await {
                        Ok(s) if s.days > 0 => tracing::info!(
                            project = project.id,
                            days = s.days,
                            files_merged = s.files_merged,
                            rows = s.rows,
                            "compacted"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::error!(
                            project = project.id,
                            error = %e,
                            "background compaction failed; will retry"
                        ),
                    }
                }
                if let Err(e) = db.delete_retired(RETIRED_GRACE).await {
                    tracing::warn!(error = %e, "deleting compacted files failed; will retry");
                }
            }
        }
    }
}

/// How often a failed WAL is checked for a writable disk again.
const HEAL_EVERY: Duration = Duration::from_secs(1);

/// Flushes due buffers (every 100 ms it looks), retries failed flushes with a backoff, and
/// brings a failed WAL back once its disk takes writes ([`Db::heal`]).
async fn flusher(db: Arc<Db>, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    tokio::pin!(stop);
    let mut last_heal = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => {
                if last_heal.elapsed() >= HEAL_EVERY {
                    last_heal = std::time::Instant::now();
                    if let Err(e) = db.heal().await {
                        tracing::warn!(error = %e, "WAL still failed; will retry");
                    }
                }
                if db.flush_due() && let Err(e) = db.flush().await {
                    tracing::error!(error = %e, "background flush failed; will retry");
                }
            }
        }
    }
}
