//! Acknowledged means durable: events sent in batches while `herd serve` is `kill -9`ed in the
//! middle are all there after a restart, exactly once, and nothing that was never sent appears.
//! Resending every batch afterwards (what SDKs do after a timeout) adds no duplicates.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;

const WORKERS: u128 = 4;
const BATCHES_PER_WORKER: u128 = 40;
const BATCH: u128 = 100;
/// Kill once this many events were acknowledged.
const KILL_AFTER: usize = 6_000;

fn event_uuid(worker: u128, batch: u128, i: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(0xC0FFEE << 64 | worker << 40 | batch << 20 | i)
}

fn batch_body(worker: u128, batch: u128) -> serde_json::Value {
    let events: Vec<_> = (0..BATCH)
        .map(|i| {
            let n = batch * BATCH + i;
            json!({
                "event": if n.is_multiple_of(7) { "signed_up" } else { "$pageview" },
                "distinct_id": format!("user-{worker}-{}", n % 50),
                "uuid": event_uuid(worker, batch, i).to_string(),
                // Spread over a few days so several day partitions are involved.
                "timestamp": format!("2024-01-0{}T{:02}:00:00Z", 1 + n % 3, n % 24),
                "properties": {"$groups": {"company": format!("c{}", n % 13)}, "n": n as u64},
            })
        })
        .collect();
    json!({"api_key": TOKEN, "batch": events})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_event_and_invents_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = create_project(dir.path())["id"].as_u64().expect("id");
    // Flush often so that at the kill some events are in Parquet, some only in the WAL.
    let server = Server::start(dir.path(), &["--flush-interval-ms", "150"]);
    let url = server.url("/batch/");
    let client = reqwest::Client::new();
    let acked: Arc<Mutex<HashSet<uuid::Uuid>>> = Default::default();
    let sent: Arc<Mutex<HashSet<uuid::Uuid>>> = Default::default();
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let kill_tx = Arc::new(Mutex::new(Some(kill_tx)));

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (client, url, acked, sent, kill_tx) = (
            client.clone(),
            url.clone(),
            acked.clone(),
            sent.clone(),
            kill_tx.clone(),
        );
        workers.push(tokio::spawn(async move {
            for b in 0..BATCHES_PER_WORKER {
                sent.lock()
                    .expect("lock")
                    .extend((0..BATCH).map(|i| event_uuid(w, b, i)));
                let resp = client.post(&url).json(&batch_body(w, b)).send().await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let mut a = acked.lock().expect("lock");
                        a.extend((0..BATCH).map(|i| event_uuid(w, b, i)));
                        if a.len() >= KILL_AFTER
                            && let Some(tx) = kill_tx.lock().expect("lock").take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    // The server is gone: this worker stops, as a client would give up.
                    _ => return,
                }
            }
        }));
    }
    kill_rx.await.expect("enough events were acknowledged");
    server.kill9();
    for w in workers {
        w.await.expect("worker");
    }
    // The kill left acknowledged records that only the WAL holds: the restart must replay them.
    let wal_bytes: u64 = std::fs::read_dir(dir.path().join("wal"))
        .expect("wal folder")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();
    assert!(wal_bytes > 0, "the WAL held records at the kill");
    let acked = acked.lock().expect("lock").clone();
    let sent = sent.lock().expect("lock").clone();
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        sent.len() > acked.len(),
        "some batches were in flight or unsent at the kill"
    );

    // Restart on the same folder: the WAL is replayed. Then stop cleanly to flush.
    let server = Server::start(dir.path(), &["--flush-interval-ms", "150"]);
    server.terminate();
    let events = read_events(dir.path(), id).await;
    let mut counts: HashMap<uuid::Uuid, usize> = HashMap::new();
    for e in &events {
        *counts.entry(e.uuid).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events stored more than once: {twice:?}");
    let missing: Vec<_> = acked.iter().filter(|u| !counts.contains_key(u)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let invented: Vec<_> = counts.keys().filter(|u| !sent.contains(u)).collect();
    assert!(
        invented.is_empty(),
        "events that were never sent: {invented:?}"
    );

    // Clients retry whatever they did not get a 200 for (and may resend the rest): resend all
    // batches, all of them, to the restarted server. Every event then exists exactly once.
    let server = Server::start(dir.path(), &["--flush-interval-ms", "150"]);
    let url = server.url("/batch/");
    for w in 0..WORKERS {
        for b in 0..BATCHES_PER_WORKER {
            let r = client
                .post(&url)
                .json(&batch_body(w, b))
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 200);
        }
    }
    server.terminate();
    let events = read_events(dir.path(), id).await;
    let expected = (WORKERS * BATCHES_PER_WORKER * BATCH) as usize;
    assert!(expected >= 10_000);
    assert_eq!(
        events.len(),
        expected,
        "every sent event exactly once after the retries"
    );
    let unique: HashSet<_> = events.iter().map(|e| e.uuid).collect();
    assert_eq!(unique.len(), expected);
    let sample = events
        .iter()
        .find(|e| e.uuid == event_uuid(1, 3, 5))
        .expect("sample event");
    assert_eq!(sample.groups[0], format!("c{}", (3 * BATCH + 5) % 13));
}
