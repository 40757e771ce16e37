//! Shared helpers of the end-to-end tests: run the real `herd` binary on 127.0.0.1 with
//! ephemeral ports and a temporary data folder, and read back what it stored.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use herd_core::event::events_from_batch;
use herd_core::groups::groups_from_batch;
use herd_core::schema::{events_schema, groups_schema};
use herd_core::warning::{warnings_from_batch, warnings_schema};
use herd_core::{Event, GroupRow, IngestWarning};
use herd_storage::{Storage, catalog, parquet_files};
use serde_json::Value;

pub const TOKEN: &str = "phc_e2e_test_token";
pub const SECRET: &str = "phs_e2e_test_secret";

/// The `herd` binary under test: this build's, or `HERD_TEST_BIN` (to run the end-to-end
/// tests against another build, e.g. to show a regression test fails on an older one).
pub fn herd() -> Command {
    let bin = std::env::var_os("HERD_TEST_BIN")
        .unwrap_or_else(|| std::ffi::OsString::from(env!("CARGO_BIN_EXE_herd")));
    Command::new(bin)
}

/// Runs `herd flags ARGS` against the server with the test secret key; its one JSON line.
pub fn herd_flags(args: &[&str], server: &Server) -> Value {
    let out = herd()
        .arg("flags")
        .args(args)
        .args([
            "--server",
            &format!("http://{}", server.grpc),
            "--key",
            SECRET,
        ])
        .output()
        .expect("run herd flags");
    assert!(
        out.status.success(),
        "herd flags {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("herd flags prints one JSON line")
}

/// A gRPC request carrying `authorization: Bearer <key>`.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii"),
    );
    r
}

/// Creates a project with the test token in `data` and returns its JSON line.
pub fn create_project(data: &Path) -> Value {
    let out = herd()
        .args(["project", "create", "--data"])
        .arg(data)
        .args(["--name", "e2e", "--token", TOKEN, "--secret-key", SECRET])
        .output()
        .expect("run herd project create");
    assert!(
        out.status.success(),
        "project create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("project create prints one JSON line")
}

/// A running `herd serve`.
pub struct Server {
    child: Option<Child>,
    pub http: String,
    pub grpc: String,
    /// JSON lines printed before the listening line (the created project, if any).
    pub printed: Vec<Value>,
    pub data: PathBuf,
}

/// The `listening` object a herd process prints on `stdout` once bound, and the JSON lines
/// it printed before it.
pub fn listening(stdout: std::process::ChildStdout) -> (Value, Vec<Value>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("herd did not print its listening line within 60 s");
        let v: Value = serde_json::from_str(&line).expect("herd prints JSON lines");
        if let Some(l) = v.get("listening") {
            return (l.clone(), printed);
        }
        printed.push(v);
    }
}

impl Server {
    /// Starts `herd serve` on `data` with ephemeral ports.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        let mut child = herd()
            .args(["serve", "--data"])
            .arg(data)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(extra)
            .env("HERD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn herd serve");
        let stdout = child.stdout.take();
        // Owned by the Server from here on, so a failed start still kills and reaps it.
        let mut server = Server {
            child: Some(child),
            http: String::new(),
            grpc: String::new(),
            printed: Vec::new(),
            data: data.to_path_buf(),
        };
        let (l, printed) = listening(stdout.expect("stdout"));
        server.http = format!("http://{}", l["http"].as_str().expect("http addr"));
        server.grpc = l["grpc"].as_str().expect("grpc addr").to_string();
        server.printed = printed;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no flush, no goodbye.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// SIGTERM and wait for a clean exit (which flushes the buffer to Parquet).
    pub fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let mut child = self.child.take().expect("running");
        for _ in 0..600 {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "herd serve exited with {status} after SIGTERM"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("herd serve did not exit within 30 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn read_table<T>(
    data: &Path,
    project: u64,
    pick: impl Fn(&catalog::Catalog) -> Vec<String>,
    schema: arrow::datatypes::SchemaRef,
    rows: impl Fn(&arrow::array::RecordBatch) -> Vec<T>,
) -> Vec<T> {
    let storage = Storage::open(data.to_str().expect("utf8 path")).expect("open storage");
    let catalog = catalog::load_latest(&storage, project)
        .await
        .expect("catalog");
    let mut out = Vec::new();
    for path in pick(&catalog) {
        let bytes = storage.get(&path.as_str().into()).await.expect("read file");
        for batch in parquet_files::decode(bytes, &path, &schema).expect("decode") {
            out.extend(rows(&batch));
        }
    }
    out
}

/// Every event in the project's committed Parquet files.
pub async fn read_events(data: &Path, project: u64) -> Vec<Event> {
    read_table(
        data,
        project,
        |c| c.events.iter().map(|f| f.path.clone()).collect(),
        events_schema(),
        |b| events_from_batch(b).expect("events"),
    )
    .await
}

/// Every groups row in the project's committed Parquet files.
pub async fn read_groups(data: &Path, project: u64) -> Vec<GroupRow> {
    read_table(
        data,
        project,
        |c| c.groups.iter().map(|f| f.path.clone()).collect(),
        groups_schema(),
        |b| groups_from_batch(b).expect("groups"),
    )
    .await
}

/// Every ingestion warning in the project's committed Parquet files.
pub async fn read_warnings(data: &Path, project: u64) -> Vec<IngestWarning> {
    read_table(
        data,
        project,
        |c| c.warnings.iter().map(|f| f.path.clone()).collect(),
        warnings_schema(),
        |b| warnings_from_batch(b).expect("warnings"),
    )
    .await
}

/// The project's group_types.json.
pub fn read_group_types(data: &Path, project: u64) -> Value {
    let path = data.join(format!("projects/{project}/group_types.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("group_types.json")).expect("json")
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python of the test virtualenv (`scripts/test` creates it): `HERD_TEST_PYTHON`, else
/// `.venv/bin/python`. Its absence fails the test: the client tests are not optional.
pub fn python() -> PathBuf {
    let p = std::env::var_os("HERD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/test (it creates the virtualenv with posthog and grpcio)",
        p.display()
    );
    p
}

/// A µs timestamp from RFC 3339 text.
pub fn ts(text: &str) -> i64 {
    herd_core::time::parse_timestamp(text).expect("timestamp")
}

/// Parses an event's properties.
pub fn props(e: &Event) -> Value {
    serde_json::from_str(&e.properties).expect("properties are JSON")
}
