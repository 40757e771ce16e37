//! The store end to end, in process: visibility before and after a flush, dedup across
//! restarts and evictions, undo of failed requests, and replay after a crash at the worst
//! moment (Parquet written, WAL not yet deleted).

use std::path::Path;
use std::sync::Arc;

use herd_core::event::events_from_batch;
use herd_core::schema::events_schema;
use herd_core::{Event, EventBatchBuilder, GroupRow, GroupState};
use herd_storage::projects::NewProject;
use herd_storage::{Db, DbConfig, Storage, catalog, parquet_files};

const DAY: i64 = 86_400_000_000;

fn event(n: u128, ts: i64) -> Event {
    Event {
        uuid: uuid::Uuid::from_u128(n),
        event: if n.is_multiple_of(2) {
            "a".into()
        } else {
            "b".into()
        },
        distinct_id: format!("u{n}"),
        timestamp: ts,
        properties: "{}".into(),
        groups: [
            format!("c{}", n % 3),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ],
        created_at: ts,
    }
}

async fn open(dir: &Path, max_uuids: usize) -> Arc<Db> {
    let storage = Storage::open(dir.join("data").to_str().expect("utf8")).expect("storage");
    let mut config = DbConfig::new(dir.join("wal"));
    config.dedup_max_uuids = max_uuids;
    Db::open(storage, config).await.expect("open db")
}

async fn new_project(db: &Db) -> u64 {
    db.create_project(NewProject::default())
        .await
        .expect("project")
        .id
}

/// Commits the events whose uuid is new; returns how many were new.
async fn ingest(db: &Db, project: u64, events: &[Event], groups: Vec<GroupRow>) -> usize {
    let handle = db.project(project).expect("project");
    let mut guard = db.lock(&handle).await;
    let mut b = EventBatchBuilder::with_capacity(events.len());
    for e in events {
        if guard
            .insert_uuid(e.uuid.as_u128(), e.timestamp)
            .await
            .expect("dedup")
        {
            b.push(e);
        }
    }
    let n = b.len();
    let ticket = guard
        .commit(Some(b.finish()), groups, vec![])
        .expect("commit");
    drop(guard);
    db.wait_durable(ticket).await.expect("durable");
    n
}

async fn stored(db: &Db, project: u64) -> Vec<Event> {
    let snap = db.snapshot(project).expect("snapshot");
    let mut out = Vec::new();
    for f in &snap.catalog.events {
        let bytes = db
            .storage()
            .get(&f.path.as_str().into())
            .await
            .expect("get");
        for b in parquet_files::decode(bytes, &f.path, &events_schema()).expect("decode") {
            out.extend(events_from_batch(&b).expect("events"));
        }
    }
    for b in &snap.buffered_events {
        out.extend(events_from_batch(b).expect("events"));
    }
    out.sort_by_key(|e| e.uuid);
    out
}

#[tokio::test]
async fn acknowledged_rows_are_visible_at_once_and_exactly_once_across_a_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), 1_000_000).await;
    let p = new_project(&db).await;
    let events: Vec<Event> = (0..50).map(|n| event(n, n as i64 * DAY / 7)).collect();
    assert_eq!(ingest(&db, p, &events, vec![]).await, 50);

    let snap = db.snapshot(p).expect("snapshot");
    assert_eq!(snap.catalog.events.len(), 0);
    assert_eq!(
        stored(&db, p).await,
        events,
        "visible from the buffer before any flush"
    );

    let stats = db.flush().await.expect("flush");
    assert_eq!(stats.events, 50);
    let snap = db.snapshot(p).expect("snapshot");
    assert!(snap.buffered_events.is_empty());
    assert_eq!(snap.catalog.events.len(), 8, "one file per UTC day");
    assert_eq!(stored(&db, p).await, events, "same rows, now from Parquet");
    // The catalog on disk is the one in memory.
    let on_disk = catalog::load_latest(db.storage(), p)
        .await
        .expect("catalog");
    assert_eq!(on_disk, *snap.catalog);
}

#[tokio::test]
async fn duplicates_are_dropped_across_restarts_and_dedup_evictions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<Event> = (0..60).map(|n| event(n, (n as i64 % 6) * DAY)).collect();
    let p = {
        // A cap of 15 uuids forces whole days out of the index as six days arrive.
        let db = open(dir.path(), 15).await;
        let p = db
            .create_project(NewProject::default())
            .await
            .expect("project")
            .id;
        assert_eq!(ingest(&db, p, &events[..30], vec![]).await, 30);
        db.flush().await.expect("flush");
        assert_eq!(
            ingest(&db, p, &events, vec![]).await,
            30,
            "the first 30 are duplicates"
        );
        assert_eq!(
            ingest(&db, p, &events, vec![]).await,
            0,
            "evicted days reload exactly"
        );
        db.close().await.expect("close");
        p
    };
    let db = open(dir.path(), 15).await;
    assert_eq!(
        ingest(&db, p, &events, vec![]).await,
        0,
        "after a restart, too"
    );
    // A bulk load gives the index's memory back before it compacts; writes after that
    // reload the days they need.
    assert!(db.release_dedup(p).await > 0);
    assert_eq!(db.release_dedup(p).await, 0, "nothing left to release");
    assert_eq!(
        ingest(&db, p, &events, vec![]).await,
        0,
        "after the index is released, too"
    );
    // Same uuid on another day is another event (PostHog dedups within a day's partition).
    let moved = event(3, 40 * DAY);
    assert_eq!(ingest(&db, p, &[moved], vec![]).await, 1);
    assert_eq!(stored(&db, p).await.len(), 61);
}

/// Dedup stays exact when one request spans hundreds of days (a backfill through capture):
/// a day reloaded after eviction finds its uuids through the catalog's per-day index and the
/// day ranges of the buffered batches, before and after a flush.
#[tokio::test]
async fn dedup_is_exact_over_hundreds_of_days_in_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A cap of 50 uuids: nearly every day is evicted and reloaded.
    let db = open(dir.path(), 50).await;
    let p = new_project(&db).await;
    let first: Vec<Event> = (0..500).map(|n| event(n, n as i64 * DAY)).collect();
    assert_eq!(ingest(&db, p, &first, vec![]).await, 500);
    assert_eq!(ingest(&db, p, &first, vec![]).await, 0, "from the buffer");
    db.flush().await.expect("flush");
    assert_eq!(db.snapshot(p).expect("snapshot").catalog.events.len(), 500);
    assert_eq!(ingest(&db, p, &first, vec![]).await, 0, "from the files");
    // Days 250..750: half on days that have a file, half on new ones.
    let second: Vec<Event> = (500..1000)
        .map(|n| event(n, (n as i64 - 250) * DAY))
        .collect();
    assert_eq!(ingest(&db, p, &second, vec![]).await, 500);
    // The first batch's days reload from their files and push the second's out of the
    // index; those then reload from the buffered batch, found by its day range.
    assert_eq!(ingest(&db, p, &first, vec![]).await, 0);
    assert_eq!(
        ingest(&db, p, &second, vec![]).await,
        0,
        "from the buffer again"
    );
    assert_eq!(stored(&db, p).await.len(), 1000);
}

#[tokio::test]
async fn a_request_that_fails_before_commit_leaves_no_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), 1_000).await;
    let p = new_project(&db).await;
    let handle = db.project(p).expect("project");
    {
        let mut guard = db.lock(&handle).await;
        assert!(guard.insert_uuid(7, 0).await.expect("insert"));
        let state = GroupState::merge(None, &serde_json::Map::new(), 0, 0).expect("new");
        guard.set_group(0, "acme", state);
        assert!(guard.group(0, "acme").is_some());
        // Dropped without commit, as when the WAL refuses a record.
    }
    let mut guard = db.lock(&handle).await;
    assert!(
        guard.insert_uuid(7, 0).await.expect("insert"),
        "uuid was released"
    );
    assert!(guard.group(0, "acme").is_none(), "group change was undone");
}

#[tokio::test]
async fn replay_after_a_crash_between_parquet_and_wal_deletion_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<Event> = (0..40).map(|n| event(n, (n as i64 % 4) * DAY)).collect();
    let row = |v: i64, props: &str| GroupRow {
        group_type_index: 0,
        group_key: "c1".into(),
        group_properties: props.into(),
        created_at: 5,
        version: v,
        updated_at: 10 + v,
    };
    let p = {
        let db = open(dir.path(), 1_000_000).await;
        let p = db
            .create_project(NewProject::default())
            .await
            .expect("project")
            .id;
        ingest(&db, p, &events[..20], vec![row(1, r#"{"plan":"free"}"#)]).await;
        {
            let handle = db.project(p).expect("project");
            let mut guard = db.lock(&handle).await;
            let warning = herd_core::IngestWarning {
                kind: "group_type_limit_reached".into(),
                event_uuid: "00000000-0000-4000-8000-000000000001".into(),
                details: "{}".into(),
                timestamp: 7,
            };
            let t = guard.commit(None, vec![], vec![warning]).expect("commit");
            drop(guard);
            db.wait_durable(t).await.expect("durable");
        }
        ingest(&db, p, &events[20..], vec![row(2, r#"{"plan":"pro"}"#)]).await;
        // Keep a copy of the WAL as it is before the flush deletes it...
        copy_dir(
            &dir.path().join("wal"),
            &dir.path().join("wal-before-flush"),
        );
        db.close().await.expect("close");
        p
    };
    // ...and put it back: as if the process died right after the catalog commit.
    std::fs::remove_dir_all(dir.path().join("wal")).expect("rm wal");
    std::fs::rename(dir.path().join("wal-before-flush"), dir.path().join("wal")).expect("restore");

    for _ in 0..2 {
        let db = open(dir.path(), 1_000_000).await;
        assert_eq!(stored(&db, p).await, {
            let mut e = events.clone();
            e.sort_by_key(|e| e.uuid);
            e
        });
        let groups = db.current_groups(p).await.expect("groups");
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[&(0, "c1".to_string())].version, 2);
        let snap = db.snapshot(p).expect("snapshot");
        assert_eq!(
            snap.catalog.groups.iter().map(|f| f.rows).sum::<u64>(),
            2,
            "group rows not written twice"
        );
        assert_eq!(
            db.warnings(p).await.expect("warnings").len(),
            1,
            "warnings not written twice"
        );
        db.close().await.expect("close");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[tokio::test]
async fn projects_never_see_each_others_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), 1_000).await;
    let a = db
        .create_project(NewProject::default())
        .await
        .expect("a")
        .id;
    let b = db
        .create_project(NewProject::default())
        .await
        .expect("b")
        .id;
    let shared = event(1, 0);
    assert_eq!(
        ingest(&db, a, &[shared.clone(), event(2, 0)], vec![]).await,
        2
    );
    assert_eq!(
        ingest(&db, b, std::slice::from_ref(&shared), vec![]).await,
        1,
        "dedup is per project"
    );
    db.flush().await.expect("flush");
    assert_eq!(stored(&db, a).await.len(), 2);
    assert_eq!(stored(&db, b).await, vec![shared]);
    let snap_b = db.snapshot(b).expect("b");
    assert!(
        snap_b
            .catalog
            .all_paths()
            .all(|p| p.starts_with(&format!("projects/{b}/")))
    );
    assert_ne!(
        db.project(a).expect("a").project().token,
        db.project(b).expect("b").project().token
    );
}

#[tokio::test]
async fn files_no_catalog_names_are_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<Event> = (0..10).map(|n| event(n, 0)).collect();
    let (p, stray) = {
        let db = open(dir.path(), 1_000).await;
        let p = new_project(&db).await;
        ingest(&db, p, &events, vec![]).await;
        db.close().await.expect("close");
        // What a crash between writing a file and committing the catalog leaves behind.
        let stray = dir.path().join(format!(
            "data/projects/{p}/events/date=1970-01-01/stray.parquet"
        ));
        std::fs::write(&stray, b"half a file").expect("write");
        (p, stray)
    };
    let db = open(dir.path(), 1_000).await;
    assert!(!stray.exists(), "orphan removed");
    assert_eq!(stored(&db, p).await.len(), 10, "committed files kept");
}

/// `(value, number)` of `distinct_id` and `$group_0` of every stored row (files and buffer).
async fn stored_numbers(db: &Db, project: u64) -> Vec<((String, u32), (String, u32))> {
    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::UInt32Type;
    use herd_core::schema::{events_col, stored_events_schema};
    let snap = db.snapshot(project).expect("snapshot");
    let mut batches: Vec<RecordBatch> = snap.buffered_events.clone();
    for f in &snap.catalog.events {
        assert!(f.numbered, "{} is marked numbered", f.path);
        let bytes = db
            .storage()
            .get(&f.path.as_str().into())
            .await
            .expect("get");
        batches.extend(
            parquet_files::decode(bytes, &f.path, &stored_events_schema()).expect("decode"),
        );
    }
    let mut out = Vec::new();
    for b in &batches {
        let ids = b.column(events_col::DISTINCT_ID).as_string::<i32>();
        let id_nums = b
            .column(events_col::DISTINCT_ID_NUM)
            .as_primitive::<UInt32Type>();
        let groups = b.column(events_col::GROUP_0).as_string::<i32>();
        let group_nums = b
            .column(events_col::GROUP_0_NUM)
            .as_primitive::<UInt32Type>();
        for row in 0..b.num_rows() {
            out.push((
                (ids.value(row).to_string(), id_nums.value(row)),
                (groups.value(row).to_string(), group_nums.value(row)),
            ));
        }
    }
    out
}

/// Each value has one number and each number one value; `''` is 0 and the others are
/// 1..=n with no gaps.
fn assert_one_number_per_value(pairs: impl Iterator<Item = (String, u32)>) {
    use std::collections::BTreeMap;
    let (mut by_value, mut by_number) = (BTreeMap::new(), BTreeMap::new());
    for (value, number) in pairs {
        assert_eq!(
            value.is_empty(),
            number == 0,
            "{value:?} has number {number}"
        );
        assert_eq!(
            *by_value.entry(value.clone()).or_insert(number),
            number,
            "{value:?}"
        );
        assert_eq!(
            *by_number.entry(number).or_insert(value.clone()),
            value,
            "{number}"
        );
    }
    let numbers: Vec<u32> = by_number.keys().copied().filter(|n| *n != 0).collect();
    let want: Vec<u32> = (1..=numbers.len() as u32).collect();
    assert_eq!(numbers, want, "numbers are dense from 1");
}

#[tokio::test]
async fn actor_numbers_stay_one_per_value_across_flushes_restarts_and_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Users u0..u59 over three writes; companies c0..c2 and none.
    let mut events: Vec<Event> = (0..90).map(|n| event(n, (n as i64 % 5) * DAY)).collect();
    for e in events.iter_mut().skip(1).step_by(4) {
        e.groups[0] = String::new();
    }
    for e in events.iter_mut() {
        e.distinct_id = format!("u{}", e.uuid.as_u128() % 60);
    }
    let crashed = tempfile::tempdir().expect("tempdir");
    let p = {
        let db = open(dir.path(), 1_000_000).await;
        let p = new_project(&db).await;
        ingest(&db, p, &events[..30], vec![]).await;
        db.flush().await.expect("flush");
        ingest(&db, p, &events[30..60], vec![]).await;
        // Acknowledged but not flushed: the copy is what a `kill -9` leaves, and it
        // replays rows 30..60 onto the files of the first flush.
        for sub in walk(dir.path()) {
            let to = crashed
                .path()
                .join(sub.strip_prefix(dir.path()).expect("prefix"));
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::copy(&sub, &to).expect("copy");
        }
        db.close().await.expect("close");
        p
    };
    for root in [dir.path(), crashed.path()] {
        let db = open(root, 1_000_000).await;
        ingest(&db, p, &events[60..], vec![]).await;
        let before_flush = stored_numbers(&db, p).await;
        assert_eq!(before_flush.len(), 90);
        db.flush().await.expect("flush");
        let pairs = stored_numbers(&db, p).await;
        assert_eq!(pairs.len(), 90);
        assert_one_number_per_value(pairs.iter().map(|p| p.0.clone()));
        assert_one_number_per_value(pairs.iter().map(|p| p.1.clone()));
        db.close().await.expect("close");
        drop(db);
        // Reopened: the numbers files give the same numbers to known values.
        let db = open(root, 1_000_000).await;
        let mut more = event(1000, DAY);
        more.distinct_id = "u7".into();
        more.groups[0] = "c2".into();
        let mut new = event(1001, DAY);
        new.distinct_id = "someone new".into();
        ingest(&db, p, &[more, new], vec![]).await;
        let pairs = stored_numbers(&db, p).await;
        assert_eq!(pairs.len(), 92);
        assert_one_number_per_value(pairs.iter().map(|p| p.0.clone()));
        assert_one_number_per_value(pairs.iter().map(|p| p.1.clone()));
        db.close().await.expect("close");
    }
}

/// The `*.parquet` files below `dir` (what an outside engine's glob reads), relative.
fn parquet_globbed(dir: &Path) -> std::collections::BTreeSet<String> {
    walk(dir)
        .into_iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(dir).ok()?.to_str()?.to_string();
            rel.ends_with(".parquet").then_some(rel)
        })
        .collect()
}

/// The files the project's catalog names.
fn live_paths(db: &Db, p: u64) -> std::collections::BTreeSet<String> {
    let snap = db.snapshot(p).expect("snapshot");
    snap.catalog.all_paths().map(str::to_string).collect()
}

/// What an outside reader globbing `*.parquet` sees is exactly the catalog, through flushes,
/// a crash between a commit and its renames (the next open names the committed files), and
/// files a crash left uncommitted or retired (deleted at the next open).
#[tokio::test]
async fn parquet_globs_read_exactly_the_live_files_across_a_crash() {
    use herd_storage::layout::{Twin, twin};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let events: Vec<Event> = (0..40).map(|n| event(n, (n as i64 % 2) * DAY)).collect();
    let db = open(dir.path(), 1_000_000).await;
    let p = new_project(&db).await;
    for part in events.chunks(20) {
        ingest(&db, p, part, vec![]).await;
        db.flush().await.expect("flush");
    }
    let live = live_paths(&db, p);
    assert_eq!(parquet_globbed(&data), live);
    assert!(
        walk(&data)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".pending"))
    );
    db.close().await.expect("close");
    drop(db);

    // As if the process died after committing but before renaming one file, while another
    // flush had written a file it never committed, and with a retired file left over.
    let committed = live.iter().next().expect("a file").clone();
    let pending = twin(&committed.as_str().into(), Twin::Pending).to_string();
    std::fs::rename(data.join(&committed), data.join(&pending)).expect("rename");
    let stray = format!("projects/{p}/events/date=1970-01-01/.0000.parquet.pending");
    let old = format!("projects/{p}/events/date=1970-01-01/.0001.parquet.retired");
    std::fs::write(data.join(&stray), b"x").expect("stray");
    std::fs::write(data.join(&old), b"x").expect("old");

    let db = open(dir.path(), 1_000_000).await;
    assert_eq!(
        parquet_globbed(&data),
        live,
        "the committed file has its name back"
    );
    assert!(
        !data.join(&pending).exists() && !data.join(&stray).exists() && !data.join(&old).exists()
    );
    assert_eq!(stored(&db, p).await, events);
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Compaction merges each day's files into one, in the events order, with the same rows
/// and numbers; the new catalog survives a restart; the merged files are deleted only when
/// retired long enough (a query may still read them), or at the next open.
#[tokio::test]
async fn compaction_merges_each_days_files_into_one_with_the_same_rows() {
    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::UInt32Type;
    use herd_core::schema::{events_col, stored_events_schema};
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tempdir");
    // Three flushes over days 0..3: three files on each day, one left alone on day 3.
    let events: Vec<Event> = (0..90)
        .map(|n| event(n, (n as i64 % 3) * DAY + n as i64))
        .collect();
    let db = open(dir.path(), 1_000_000).await;
    let p = new_project(&db).await;
    for part in events.chunks(30) {
        ingest(&db, p, part, vec![]).await;
        db.flush().await.expect("flush");
    }
    ingest(&db, p, &[event(500, 3 * DAY)], vec![]).await;
    db.flush().await.expect("flush");
    let before = stored(&db, p).await;
    let numbers_before = stored_numbers(&db, p).await;
    let files_before: Vec<String> = db
        .snapshot(p)
        .expect("snapshot")
        .catalog
        .events
        .iter()
        .map(|f| f.path.clone())
        .collect();
    assert_eq!(files_before.len(), 10);

    let stats = db.compact_events(p, 2).await.expect("compact");
    assert_eq!(
        (
            stats.days,
            stats.files_merged,
            stats.files_written,
            stats.rows
        ),
        (3, 9, 3, 90)
    );
    let snap = db.snapshot(p).expect("snapshot");
    assert_eq!(snap.catalog.events.len(), 4);
    let mut days: Vec<_> = snap
        .catalog
        .events
        .iter()
        .filter_map(|f| f.day.clone())
        .collect();
    days.sort();
    days.dedup();
    assert_eq!(days.len(), 4, "one file per day");
    for f in snap.catalog.events.iter().filter(|f| f.rows == 30) {
        // Day d holds events n ≡ d (mod 3) at d·DAY + n: n from d to 87 + d.
        let d = f.min_ts.expect("min") / DAY;
        assert_eq!(f.min_ts, Some(d * DAY + d));
        assert_eq!(f.max_ts, Some(d * DAY + 87 + d));
        // Rows in the events order: event, then company number, then user number.
        let bytes = db
            .storage()
            .get(&f.path.as_str().into())
            .await
            .expect("get");
        let batches: Vec<RecordBatch> =
            parquet_files::decode(bytes, &f.path, &stored_events_schema()).expect("decode");
        let mut keys = Vec::new();
        for b in &batches {
            let ev = b.column(events_col::EVENT).as_string::<i32>();
            let g = b
                .column(events_col::GROUP_0_NUM)
                .as_primitive::<UInt32Type>();
            let d = b
                .column(events_col::DISTINCT_ID_NUM)
                .as_primitive::<UInt32Type>();
            for r in 0..b.num_rows() {
                keys.push((ev.value(r).to_string(), g.value(r), d.value(r)));
            }
        }
        assert!(keys.is_sorted(), "{keys:?}");
    }
    assert_eq!(stored(&db, p).await, before);
    let mut numbers_after = stored_numbers(&db, p).await;
    let mut numbers_before = numbers_before;
    numbers_after.sort();
    numbers_before.sort();
    assert_eq!(numbers_after, numbers_before);
    // Nothing more to merge.
    assert_eq!(db.compact_events(p, 2).await.expect("again").days, 0);

    // Retired files stay until old enough.
    let exists = |path: &str| dir.path().join("data").join(path).exists();
    let merged: Vec<&String> = files_before
        .iter()
        .filter(|f| !snap.catalog.events.iter().any(|e| &e.path == *f))
        .collect();
    assert_eq!(merged.len(), 9);
    assert_eq!(
        db.delete_retired(Duration::from_secs(3600))
            .await
            .expect("keep"),
        0
    );
    // Under their retired twins, out of `*.parquet` globs, and still readable by the name
    // an older snapshot knows them by.
    let retired = |f: &str| {
        herd_storage::layout::twin(&f.into(), herd_storage::layout::Twin::Retired).to_string()
    };
    assert!(merged.iter().all(|f| !exists(f) && exists(&retired(f))));
    assert!(db.storage().get(&merged[0].as_str().into()).await.is_ok());
    assert_eq!(
        parquet_globbed(&dir.path().join("data")),
        live_paths(&db, p)
    );
    db.close().await.expect("close");
    drop(db);

    // Reopened: the compacted catalog, the same rows, and the merged files gone.
    let db = open(dir.path(), 1_000_000).await;
    assert_eq!(db.snapshot(p).expect("snapshot").catalog.events.len(), 4);
    assert_eq!(stored(&db, p).await, before);
    assert!(merged.iter().all(|f| !exists(f) && !exists(&retired(f))));
    // Retired files are deleted by `delete_retired` when due.
    for part in events.chunks(45) {
        let moved: Vec<Event> = part
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.uuid = uuid::Uuid::from_u128(e.uuid.as_u128() + 10_000);
                e
            })
            .collect();
        ingest(&db, p, &moved, vec![]).await;
        db.flush().await.expect("flush");
    }
    let stats = db.compact_events(p, 2).await.expect("compact");
    assert_eq!(stats.days, 3);
    assert_eq!(
        db.delete_retired(Duration::ZERO).await.expect("delete"),
        stats.files_merged
    );
    let snap = db.snapshot(p).expect("snapshot");
    let live: std::collections::HashSet<String> =
        snap.catalog.all_paths().map(str::to_string).collect();
    for f in walk(&dir.path().join("data")) {
        let rel = f.strip_prefix(dir.path().join("data")).expect("prefix");
        let rel = rel.to_str().expect("utf8");
        if rel.ends_with(".parquet") {
            assert!(live.contains(rel), "{rel} is named by the catalog");
        }
    }
    assert_eq!(stored(&db, p).await.len(), 181);
    db.close().await.expect("close");
}
