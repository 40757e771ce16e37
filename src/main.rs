//! `herd`: the one binary. Thin over the libraries: parse flags, call a crate, print.

mod commands;

/// mimalloc: capture and bulk loads allocate many small JSON values; glibc malloc was a
/// quarter of the capture profile. Built with `no_thp`: scans allocate and free large decode
/// buffers continually, and with transparent huge pages every fresh buffer faulted in a zeroed
/// 2 MiB page (~30 % of a selective query's time in the kernel's `clear_page`, and 2–3× the
/// peak RSS on the 10M benchmark set; README, "Memory tuning").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herd_server::ServeConfig;
use herd_storage::Storage;
use herd_storage::projects::{self, NewProject};

#[derive(Debug, Parser)]
#[command(
    name = "herd",
    version,
    about = "Group analytics on Arrow and DataFusion"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP capture and gRPC on a data folder (creates a default project when empty).
    Serve(ServeArgs),
    /// Run insight plan stages for `herd serve --workers` (reads the same data location).
    Worker(WorkerArgs),
    /// Load Parquet history (herd's layout or PostHog-style exports) into a project.
    Backfill(commands::backfill::BackfillArgs),
    /// Generate a deterministic PostHog-like dataset (through the backfill path).
    Generate(commands::generate::GenerateArgs),
    /// Merge each day partition's events files into one (bulk loads do this at the end).
    Compact(commands::compact::CompactArgs),
    /// Run the benchmark queries in-process on a data folder.
    Bench(commands::bench::BenchArgs),
    /// Ask a running server (gRPC): trends, funnels, retention, groups, group types, info.
    Query {
        #[command(subcommand)]
        command: commands::query::QueryCommand,
    },
    /// Manage a project's feature flags on a running server (gRPC).
    Flags {
        #[command(subcommand)]
        command: commands::flags::FlagsCommand,
    },
    /// Manage projects and their keys.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Data location: a folder, file://…, memory:// or s3://bucket/prefix.
    #[arg(long, env = "HERD_DATA", default_value = "./herd-data")]
    data: String,
    /// Write-ahead log folder (local disk); default: <data>/wal for a local data folder.
    #[arg(long, env = "HERD_WAL_DIR")]
    wal_dir: Option<PathBuf>,
    /// HTTP capture listen address.
    #[arg(long, env = "HERD_HTTP", default_value = "127.0.0.1:8000")]
    http: String,
    /// gRPC listen address.
    #[arg(long, env = "HERD_GRPC", default_value = "127.0.0.1:50051")]
    grpc: String,
    /// Flush the write buffer to Parquet when its oldest event is this many milliseconds old.
    #[arg(long, env = "HERD_FLUSH_INTERVAL_MS", default_value_t = 5000)]
    flush_interval_ms: u64,
    /// Flush the write buffer when it holds this many events.
    #[arg(long, env = "HERD_FLUSH_ROWS", default_value_t = 500_000)]
    flush_rows: usize,
    /// How often, in milliseconds, to look for day partitions to compact.
    #[arg(long, env = "HERD_COMPACT_INTERVAL_MS", default_value_t = 60_000)]
    compact_interval_ms: u64,
    /// Merge a day partition's events files into one once it has this many (0: never).
    #[arg(long, env = "HERD_COMPACT_MIN_FILES", default_value_t = 8)]
    compact_min_files: usize,
    /// Capture answers 503 (clients retry) while the write buffers hold more than this many
    /// MiB: flushes failing (a full disk) or behind. Half of it starts a flush.
    #[arg(long, env = "HERD_MAX_BUFFER_MB", default_value_t = 1024)]
    max_buffer_mb: usize,
    /// Plan insights for these herd workers (`http://host:port`, comma-separated); without
    /// any, or while none is reachable, insights run in this process.
    #[arg(long, env = "HERD_WORKERS")]
    workers: Option<String>,
    /// A secret sent with every task to the workers, which refuse tasks without theirs.
    #[arg(long, env = "HERD_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "HERD_LOG_JSON")]
    log_json: bool,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// Data location, the same as the coordinating `herd serve --data`.
    #[arg(long, env = "HERD_DATA", default_value = "./herd-data")]
    data: String,
    /// gRPC listen address of the worker service.
    #[arg(long, env = "HERD_WORKER_LISTEN", default_value = "127.0.0.1:50061")]
    listen: String,
    /// Parallel partitions per task (default: the CPU count).
    #[arg(long)]
    partitions: Option<usize>,
    /// Memory the worker's queries share, in MiB; operators that can spill do (default:
    /// unbounded).
    #[arg(long)]
    memory_limit_mib: Option<usize>,
    /// Run only tasks that carry this secret (the server's `--cluster-secret`); without it,
    /// any client that reaches the port can run plans over the data.
    #[arg(long, env = "HERD_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "HERD_LOG_JSON")]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum ProjectCommand {
    /// Create a project and print it as one JSON line.
    Create {
        /// Data location.
        #[arg(long, env = "HERD_DATA", default_value = "./herd-data")]
        data: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Public token to use (keep the one baked into your apps when migrating).
        #[arg(long)]
        token: Option<String>,
        /// Secret key to use.
        #[arg(long)]
        secret_key: Option<String>,
    },
    /// List projects as JSON lines.
    List {
        /// Data location.
        #[arg(long, env = "HERD_DATA", default_value = "./herd-data")]
        data: String,
    },
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Threads of the runtime's blocking pool (local object-store reads and funnel evaluation
/// run there): the CPU count, at least 4. Tokio's default (512) let a scan over a thousand
/// files start ~170 threads, each with its own allocator heap, and buffers read on one thread
/// and freed on another left pages behind in all of them: at 100M events RSS grew with the
/// number of files read (Q1 1.3 GiB with the default, 641 MiB with 16 threads, 506 MiB with 4,
/// and the funnels ~20 % faster).
fn blocking_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().max(4))
}

/// Stack of the runtime's threads: DataFusion plans and evaluates expressions recursively,
/// and an ANDed filter costs ~3 KB of stack in a debug build (700 overflow tokio's default
/// 2 MiB); 8 MiB keeps the largest request the limits allow (200 filters) over 10x away.
const THREAD_STACK: usize = 8 << 20;

/// An error and its causes on one line, each cause once (many errors already include their
/// source's text in their own).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Set to print an error's full chain and backtrace (for reporting a bug) instead of one line.
const BACKTRACE_ENV: &str = "HERD_BACKTRACE";

fn main() -> std::process::ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .max_blocking_threads(blocking_threads())
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever RUST_BACKTRACE says: the causes after the message.
            eprintln!("error: {}", one_line(&e));
            if std::env::var_os(BACKTRACE_ENV).is_some_and(|v| v != "0") {
                eprintln!("{e:?}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Backfill(args) => {
            init_logs(false);
            commands::backfill::run(args).await
        }
        Command::Generate(args) => {
            init_logs(false);
            commands::generate::run(args).await
        }
        Command::Compact(args) => {
            init_logs(false);
            commands::compact::run(args).await
        }
        Command::Bench(args) => {
            init_logs(false);
            commands::bench::run(args).await
        }
        Command::Query { command } => {
            init_logs(false);
            commands::query::run(command).await
        }
        Command::Flags { command } => {
            init_logs(false);
            commands::flags::run(command).await
        }
        Command::Project { command } => {
            init_logs(false);
            match command {
                ProjectCommand::Create {
                    data,
                    name,
                    token,
                    secret_key,
                } => {
                    let storage = Storage::open(&data)?;
                    let project = projects::create(
                        &storage,
                        NewProject {
                            name,
                            token,
                            secret_key,
                        },
                    )
                    .await
                    .context("create project")?;
                    print_json(&project)
                }
                ProjectCommand::List { data } => {
                    let storage = Storage::open(&data)?;
                    for p in projects::load_all(&storage).await? {
                        print_json(&p)?;
                    }
                    Ok(())
                }
            }
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(args.log_json);
    let config = ServeConfig {
        data: args.data,
        wal_dir: args.wal_dir,
        http: args.http,
        grpc: args.grpc,
        flush_interval: Duration::from_millis(args.flush_interval_ms),
        flush_rows: args.flush_rows,
        compact_interval: Duration::from_millis(args.compact_interval_ms),
        compact_min_files: args.compact_min_files,
        max_buffer_bytes: args.max_buffer_mb.saturating_mul(1 << 20),
        workers: args.workers,
        cluster_secret: args.cluster_secret,
    };
    // Handlers first: a SIGTERM that arrives right after the listening line must shut down
    // gracefully, not kill the process.
    let signal = shutdown_signal()?;
    let server = herd_server::start(config)
        .await
        .context("start herd serve")?;
    if let Some(project) = &server.created_project {
        print_json(project)?;
    }
    print_json(&serde_json::json!({
        "listening": {"http": server.http_addr.to_string(), "grpc": server.grpc_addr.to_string()}
    }))?;
    let stop = server.stop_handle();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down: finishing requests, flushing the write buffer");
        let _ = stop.send(true);
    });
    server.wait().await.context("herd serve")?;
    Ok(())
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    init_logs(args.log_json);
    let config = herd_server::WorkerConfig {
        data: args.data,
        listen: args.listen,
        partitions: args.partitions,
        memory_limit: args.memory_limit_mib.map(|m| m.saturating_mul(1 << 20)),
        secret: args.cluster_secret,
    };
    let signal = shutdown_signal()?;
    let worker = herd_server::start_worker(config, signal)
        .await
        .context("start herd worker")?;
    print_json(&serde_json::json!({ "listening": { "worker": worker.addr.to_string() } }))?;
    worker.wait().await.context("herd worker")?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called (not when it
/// is first polled), so call it before announcing that the server listens.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
