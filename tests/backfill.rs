//! `herd generate --export` → `herd backfill`: interrupted (by `--limit-events` and by
//! `kill -9`), resumed, run again — and the data folder holds exactly the generated events and
//! groups. Bad sources are refused naming the file and the column.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use common::*;
use herd_core::{Event, GroupRow};
use serde_json::Value;

const EVENTS: u64 = 40_000;

fn run_json(cmd: &mut Command) -> Vec<Value> {
    let out = cmd.output().expect("run herd");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn backfill(target: &Path, export: &Path, extra: &[&str]) -> Command {
    let mut c = herd();
    c.args(["backfill", "--data"])
        .arg(target)
        .args(["--flush-rows", "3000"])
        .args(extra);
    c.arg(export.join("events"));
    c.env("HERD_LOG", "warn");
    c
}

fn current_groups(rows: Vec<GroupRow>) -> HashMap<(u8, String), (i64, String, i64)> {
    let mut out: HashMap<(u8, String), (i64, String, i64)> = HashMap::new();
    for r in rows {
        let key = (r.group_type_index, r.group_key.clone());
        if out.get(&key).is_none_or(|c| c.0 < r.version) {
            let props: Value = serde_json::from_str(&r.group_properties).expect("json");
            out.insert(key, (r.version, props.to_string(), r.created_at));
        }
    }
    out
}

fn by_uuid(events: Vec<Event>) -> HashMap<uuid::Uuid, Event> {
    let n = events.len();
    let map: HashMap<_, _> = events.into_iter().map(|e| (e.uuid, e)).collect();
    assert_eq!(map.len(), n, "no uuid twice");
    map
}

#[tokio::test]
async fn backfill_of_an_export_resumes_after_interruptions_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (generated, export, target) = (
        dir.path().join("gen"),
        dir.path().join("export"),
        dir.path().join("target"),
    );
    let out = run_json(
        herd()
            .args(["generate", "--data"])
            .arg(&generated)
            .args([
                "--events",
                &EVENTS.to_string(),
                "--seed",
                "5",
                "--flush-rows",
                "10000",
                "--export",
            ])
            .arg(&export)
            .env("HERD_LOG", "warn"),
    );
    let summary = out.last().expect("summary");
    assert_eq!(summary["events"], EVENTS);

    // 1. Stopped by --limit-events.
    let s = run_json(&mut backfill(
        &target,
        &export,
        &["--limit-events", "15000"],
    ));
    let s = s.last().expect("summary");
    assert_eq!(
        (s["read"].as_u64(), s["complete"].as_bool()),
        (Some(15_000), Some(false))
    );
    // An interrupted backfill is not compacted (it is when it completes).
    assert!(s["compacted"].is_null(), "{s}");

    // 2. Killed with SIGKILL once it has checkpointed more.
    let mut child = backfill(&target, &export, &[])
        .spawn()
        .expect("spawn backfill");
    let checkpoints = target.join("backfill/1");
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(60) {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        let progressed = std::fs::read_dir(&checkpoints)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
            .any(|cp| {
                cp["files"].as_object().is_some_and(|f| {
                    f.values()
                        .any(|v| v.as_u64().is_some_and(|n| n > 20_000 && n < EVENTS))
                })
            });
        if progressed {
            child.kill().expect("SIGKILL");
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait().expect("reap");
    eprintln!("backfill killed mid-run: {killed}");

    // 3. Resume to the end, with the groups export applied last.
    let groups_file = export.join("groups.parquet");
    let s = run_json(&mut backfill(
        &target,
        &export,
        &["--groups", groups_file.to_str().expect("utf8")],
    ));
    assert_eq!(s.last().expect("summary")["complete"], true);
    assert!(
        !checkpoints.exists()
            || std::fs::read_dir(&checkpoints)
                .expect("dir")
                .next()
                .is_none(),
        "checkpoint removed when done"
    );

    // 4. Again: nothing new.
    let s = run_json(&mut backfill(&target, &export, &[]));
    let s = s.last().expect("summary");
    assert_eq!(
        (s["events"].as_u64(), s["duplicates"].as_u64()),
        (Some(0), Some(EVENTS))
    );

    // Exactly the generated events...
    let want = by_uuid(read_events(&generated, 1).await);
    let got = by_uuid(read_events(&target, 1).await);
    assert_eq!(want.len() as u64, EVENTS);
    assert_eq!(got.len(), want.len());
    for (uuid, w) in &want {
        let g = got
            .get(uuid)
            .unwrap_or_else(|| panic!("event {uuid} missing"));
        assert_eq!(
            (
                &g.event,
                &g.distinct_id,
                g.timestamp,
                &g.properties,
                &g.groups
            ),
            (
                &w.event,
                &w.distinct_id,
                w.timestamp,
                &w.properties,
                &w.groups
            ),
            "event {uuid}"
        );
    }
    // ...the same groups (current properties, versions, first-seen times) and group types.
    let want_groups = current_groups(read_groups(&generated, 1).await);
    assert!(want_groups.len() > 50, "the dataset has groups");
    assert_eq!(current_groups(read_groups(&target, 1).await), want_groups);
    assert_eq!(
        read_group_types(&target, 1),
        read_group_types(&generated, 1)
    );
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .expect("batch");
    let file = std::fs::File::create(path).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

fn strings(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

#[tokio::test]
async fn bad_sources_are_refused_naming_file_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.parquet");
    write_parquet(
        &good,
        vec![
            ("uuid", strings(&["00000000-0000-4000-8000-000000000001"])),
            ("event", strings(&["signed_up"])),
            ("distinct_id", strings(&["u1"])),
            ("timestamp", strings(&["2024-01-01T00:00:00Z"])),
            (
                "properties",
                strings(&[r#"{"$groups":{"company":"acme"}}"#]),
            ),
            ("elements_chain", strings(&[""])),
        ],
    );
    let missing = dir.path().join("missing.parquet");
    write_parquet(
        &missing,
        vec![
            ("uuid", strings(&["x"])),
            ("event", strings(&["e"])),
            ("timestamp", strings(&["2024-01-01"])),
            ("properties", strings(&["{}"])),
        ],
    );
    let wrong = dir.path().join("wrong.parquet");
    write_parquet(
        &wrong,
        vec![
            ("uuid", strings(&["x"])),
            ("event", Arc::new(Int64Array::from(vec![1]))),
            ("distinct_id", strings(&["u"])),
            ("timestamp", strings(&["2024-01-01"])),
            ("properties", strings(&["{}"])),
        ],
    );
    let corrupt = dir.path().join("corrupt.parquet");
    std::fs::write(&corrupt, b"PAR1 this is not parquet at all").expect("write");
    let target = dir.path().join("target");

    let fails = |source: &Path| -> String {
        let out = herd()
            .args(["backfill", "--data"])
            .arg(&target)
            .arg(&good)
            .arg(source)
            .env("HERD_LOG", "error")
            .output()
            .expect("run");
        assert!(
            !out.status.success(),
            "{} should be refused",
            source.display()
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = fails(&missing);
    assert!(
        e.contains("missing.parquet") && e.contains("missing required column \"distinct_id\""),
        "{e}"
    );
    let e = fails(&wrong);
    assert!(
        e.contains("wrong.parquet") && e.contains("column \"event\" has type Int64"),
        "{e}"
    );
    let e = fails(&corrupt);
    assert!(
        e.contains("corrupt.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
    let e = fails(Path::new("/nonexistent/x.parquet"));
    assert!(
        e.contains("/nonexistent/x.parquet") && e.contains("no such file"),
        "{e}"
    );
    let out = herd()
        .args(["backfill", "--data"])
        .arg(&target)
        .arg("s3://")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("s3://"));

    // Nothing half-written became visible; the good file alone loads fine, extra columns ignored.
    assert!(read_events(&target, 1).await.is_empty());
    let out = run_json(
        herd()
            .args(["backfill", "--data"])
            .arg(&target)
            .arg(&good)
            .env("HERD_LOG", "warn"),
    );
    assert_eq!(out.last().expect("summary")["events"], 1);
    let events = read_events(&target, 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].groups[0], "acme");
    assert_eq!(
        events[0].uuid.to_string(),
        "00000000-0000-4000-8000-000000000001"
    );
}

/// `data/` is `herd project create --token phc_herd_sample_token …` + `herd generate --events
/// 50000 --seed 42`: generating again gives exactly its events (same seed and size → same data).
#[tokio::test]
async fn committed_sample_is_exactly_what_generate_makes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let again = dir.path().join("again");
    run_json(
        herd()
            .args(["generate", "--data"])
            .arg(&again)
            .args(["--events", "50000", "--seed", "42"])
            .env("HERD_LOG", "warn"),
    );
    let sample = by_uuid(read_events(&repo().join("data"), 1).await);
    let fresh = by_uuid(read_events(&again, 1).await);
    assert_eq!(sample.len(), 50_000);
    assert_eq!(fresh.len(), sample.len());
    for (uuid, s) in &sample {
        let f = fresh
            .get(uuid)
            .unwrap_or_else(|| panic!("{uuid} not regenerated"));
        assert_eq!(
            (
                &f.event,
                &f.distinct_id,
                f.timestamp,
                &f.properties,
                &f.groups
            ),
            (
                &s.event,
                &s.distinct_id,
                s.timestamp,
                &s.properties,
                &s.groups
            )
        );
    }
    assert_eq!(
        current_groups(read_groups(&again, 1).await),
        current_groups(read_groups(&repo().join("data"), 1).await)
    );
    let sample_project: Value = serde_json::from_slice(
        &std::fs::read(repo().join("data/projects/1/project.json")).expect("project.json"),
    )
    .expect("json");
    assert_eq!(sample_project["token"], "phc_herd_sample_token");
}

/// One batch mixing the cases of the loader's row handling: `$groups` read in place, texts
/// left to the full parse (escapes, a number as key, not JSON), a personless event, a
/// duplicate uuid, and `$groupidentify` rows (one with `$groups` of its own) stored between
/// ordinary rows with their own slots.
#[tokio::test]
async fn mixed_rows_keep_their_own_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let id = |n: u32| format!("00000000-0000-4000-8000-{n:012}");
    let rows: Vec<(u32, &'static str, &'static str, &'static str)> = vec![
        (
            1,
            "$pageview",
            "u1",
            r#"{"$groups":{"company":"acme","project":"p1"}}"#,
        ),
        (
            2,
            "$groupidentify",
            "u2",
            r#"{"$groups":{"team":"t1"},"$group_type":"company","$group_key":"acme","$group_set":{"plan":"pro"}}"#,
        ),
        (
            1,
            "$pageview",
            "u1",
            r#"{"$groups":{"company":"acme","project":"p1"}}"#,
        ),
        (
            3,
            "signed_up",
            "u3",
            r#"{"$groups":{"company":"beta"},"$process_person_profile":false}"#,
        ),
        (4, "x", "u4", r#"{"$groups":{"company":"id\"q"}}"#),
        (5, "y", "u5", r#"{"$groups":{"company":5}}"#),
        (
            6,
            "$groupidentify",
            "u6",
            r#"{"$group_type":"project","$group_key":"p1","$group_set":{"name":"P"}}"#,
        ),
        (7, "z", "u7", "not json"),
    ];
    let uuids: Vec<String> = rows.iter().map(|r| id(r.0)).collect();
    let col =
        |f: fn(&(u32, &'static str, &'static str, &'static str)) -> &'static str| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
    write_parquet(
        &src.join("part-0.parquet"),
        vec![
            (
                "uuid",
                Arc::new(StringArray::from(
                    uuids.iter().map(String::as_str).collect::<Vec<_>>(),
                )),
            ),
            ("event", col(|r| r.1)),
            ("distinct_id", col(|r| r.2)),
            ("timestamp", strings(&["2024-01-01T00:00:00Z"; 8])),
            ("properties", col(|r| r.3)),
        ],
    );
    let target = dir.path().join("data");
    let out = herd()
        .args(["project", "create", "--data"])
        .arg(&target)
        .output()
        .expect("project create");
    assert!(out.status.success());
    let mut cmd = herd();
    cmd.args(["backfill", "--data"])
        .arg(&target)
        .args(["--project", "1"])
        .arg(&src)
        .env("HERD_LOG", "error");
    let s = run_json(&mut cmd);
    let s = s.last().expect("summary");
    assert_eq!(
        (
            s["events"].as_u64(),
            s["duplicates"].as_u64(),
            s["warnings"].as_u64()
        ),
        (Some(7), Some(1), Some(1)),
        "{s}"
    );
    let got = by_uuid(read_events(&target, 1).await);
    let slots = |n: u32| -> Vec<String> {
        let uuid = uuid::Uuid::parse_str(&id(n)).expect("uuid");
        got.get(&uuid).expect("stored").groups.to_vec()
    };
    let want = |v: [&str; 5]| v.map(String::from).to_vec();
    // Types are numbered as first met: ordinary rows before the batch's identify rows.
    assert_eq!(slots(1), want(["acme", "p1", "", "", ""]));
    assert_eq!(slots(2), want(["", "", "t1", "", ""]));
    assert_eq!(slots(3), want(["", "", "", "", ""]), "personless");
    assert_eq!(slots(4), want(["id\"q", "", "", "", ""]));
    assert_eq!(slots(5), want(["5", "", "", "", ""]));
    assert_eq!(slots(6), want(["", "", "", "", ""]));
    assert_eq!(
        slots(7),
        want(["", "", "", "", ""]),
        "not JSON: a warning, no groups"
    );
    let groups = current_groups(read_groups(&target, 1).await);
    assert_eq!(
        groups.get(&(0, "acme".to_string())).map(|g| g.1.as_str()),
        Some(r#"{"plan":"pro"}"#)
    );
    assert_eq!(
        groups.get(&(1, "p1".to_string())).map(|g| g.1.as_str()),
        Some(r#"{"name":"P"}"#)
    );
}

/// Events files per day partition of project 1 of a data folder.
fn files_per_day(data: &Path) -> Vec<usize> {
    let mut days: Vec<_> = std::fs::read_dir(data.join("projects/1/events"))
        .expect("days")
        .map(|d| d.expect("day").path())
        .collect();
    days.sort();
    days.iter()
        .map(|d| std::fs::read_dir(d).expect("files").count())
        .collect()
}

/// 150k events over 2 days in 64k-row batches with 50k-row flushes: days split over files.
/// `herd generate` merges each day's into one at the end; with `--no-compact` it does not,
/// and `herd compact` does it later.
#[test]
fn bulk_loads_end_with_one_file_per_day_and_herd_compact_merges_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generate = |data: &Path, extra: &[&str]| {
        let out = run_json(
            herd()
                .args(["generate", "--data"])
                .arg(data)
                .args(["--events", "150000", "--days", "2", "--flush-rows", "50000"])
                .args(extra)
                .env("HERD_LOG", "warn"),
        );
        out.last().expect("summary").clone()
    };
    let (plain, compacted) = (dir.path().join("plain"), dir.path().join("compacted"));
    let s = generate(&plain, &["--no-compact"]);
    assert!(s["compacted"].is_null(), "{s}");
    let split = files_per_day(&plain);
    assert_eq!(split.len(), 2);
    assert!(split.iter().sum::<usize>() > 2, "{split:?}");

    let s = generate(&compacted, &[]);
    assert_eq!(s["compacted"]["days"], 2, "{s}");
    assert_eq!(s["compacted"]["rows"], 150_000, "{s}");
    assert_eq!(files_per_day(&compacted), vec![1, 1]);

    let out = run_json(
        herd()
            .args(["compact", "--data"])
            .arg(&plain)
            .env("HERD_LOG", "warn"),
    );
    let s = out.last().expect("summary");
    assert_eq!(
        s["compacted"]["files_merged"].as_u64(),
        Some(split.iter().sum::<usize>() as u64),
        "{s}"
    );
    assert_eq!(files_per_day(&plain), vec![1, 1]);
}
