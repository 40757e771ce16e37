//! [`BulkLoader`]: the write path of backfill and of the generator.
//!
//! Rows arrive as [`SourceRows`] (columns already normalised to herd's types) and go through
//! the same group rules as capture ([`crate::groups::process_event`]): dedup by uuid and day,
//! `$groups` → slots, `$groupidentify` merges. Within a batch, `$groupidentify` rows are applied
//! in timestamp order, so merges follow event time for time-ordered sources.
//! Rows skip the WAL (their durability is the source plus the backfill checkpoint, and dedup
//! makes re-processing exact) and reach Parquet at each flush.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder, RecordBatch,
    StringArray, StringBuilder, TimestampMicrosecondArray,
};
use arrow::compute::filter;
use herd_core::schema::events_schema;
use herd_core::{EventBatchBuilder, GroupTypeMapping, IngestWarning, MAX_GROUP_TYPES, ProjectId};
use herd_storage::Db;
use herd_storage::db::ProjectHandle;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::groups::{Disposition, GroupInputs, IdentifyInputs, Produced, process_event};
use crate::{Error, Result};

/// One batch of source rows in herd's types.
#[derive(Debug, Clone)]
pub struct SourceRows {
    /// 16-byte uuids.
    pub uuid: FixedSizeBinaryArray,
    /// Event names.
    pub event: StringArray,
    /// User ids.
    pub distinct_id: StringArray,
    /// µs UTC.
    pub timestamp: TimestampMicrosecondArray,
    /// Properties JSON text.
    pub properties: StringArray,
    /// `$group_0..4` as written by the source system, with that system's type mapping.
    pub groups: Option<([StringArray; MAX_GROUP_TYPES], GroupTypeMapping)>,
    /// When the source received the events; `now` when absent.
    pub created_at: Option<TimestampMicrosecondArray>,
    /// Per-row uuids and group inputs computed ahead (see [`prepare_rows`]), if any.
    pub prepared: Option<PreparedRows>,
}

/// What a row needs before the project lock: its uuid and its group inputs (or why they are
/// invalid).
pub type RowPrep = (Uuid, Result<GroupInputs, String>);

/// [`RowPrep`]s of a batch, shared by its slices.
#[derive(Debug, Clone)]
pub struct PreparedRows {
    all: Arc<Vec<RowPrep>>,
    offset: usize,
}

impl PreparedRows {
    /// The same rows from `offset` on.
    pub fn slice(&self, offset: usize) -> Self {
        Self {
            all: self.all.clone(),
            offset: self.offset + offset,
        }
    }

    fn get(&self, i: usize) -> Option<&RowPrep> {
        self.all.get(self.offset + i)
    }
}

/// Computes every row's uuid and group inputs: pure work (JSON peeks) that can run on another
/// thread while the loader holds the project lock for the previous batch.
pub fn prepare_rows(rows: &SourceRows) -> PreparedRows {
    let all = (0..rows.len())
        .map(|i| {
            if rows.event.is_null(i) || rows.distinct_id.is_null(i) || rows.timestamp.is_null(i) {
                return (Uuid::nil(), Ok(GroupInputs::default()));
            }
            let event = rows.event.value(i);
            let properties = properties_at(rows, i);
            (
                row_uuid(rows, i, event, properties),
                group_inputs(rows, i, event, properties),
            )
        })
        .collect();
    PreparedRows {
        all: Arc::new(all),
        offset: 0,
    }
}

impl SourceRows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.event.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.event.is_empty()
    }
}

/// Counts of a bulk load.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct LoadStats {
    /// Rows read from sources.
    pub read: u64,
    /// Events stored.
    pub events: u64,
    /// Rows skipped: duplicates, rows without a name/user/time, rows a rule dropped.
    pub skipped: u64,
    /// Of the skipped, duplicates.
    pub duplicates: u64,
    /// Groups-table rows written.
    pub groups: u64,
    /// Ingestion warnings.
    pub warnings: u64,
}

/// Loads rows into one project.
#[derive(Debug)]
pub struct BulkLoader {
    db: Arc<Db>,
    handle: Arc<ProjectHandle>,
    flush_rows: usize,
    stats: LoadStats,
    /// The flush running in the background, and the caller's position it covers.
    pending: Option<(tokio::task::JoinHandle<herd_storage::Result<()>>, u64)>,
}

impl BulkLoader {
    /// A loader for `project` that flushes whenever `flush_rows` events are buffered.
    pub fn new(db: Arc<Db>, project: ProjectId, flush_rows: usize) -> Result<Self> {
        let handle = db
            .project(project)
            .ok_or_else(|| Error::BadRequest(format!("project {project} does not exist")))?;
        Ok(Self {
            db,
            handle,
            flush_rows: flush_rows.max(1),
            stats: LoadStats::default(),
            pending: None,
        })
    }

    /// Counts so far.
    pub fn stats(&self) -> LoadStats {
        self.stats
    }

    /// The store.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Loads one batch. `position` is the caller's mark for "everything up to the end of this
    /// batch". Once enough rows are buffered, a flush starts in the background (at most one at a
    /// time) and loading goes on; the return value is the position that the previous flush
    /// made durable, when one completed during this call.
    ///
    /// Ordinary events are processed in input order and their string columns are reused as
    /// they are (filtered only when rows were dropped); `$groupidentify` rows, whose merges
    /// depend on order, are processed after them in timestamp order.
    pub async fn load(
        &mut self,
        rows: &SourceRows,
        now: i64,
        position: u64,
    ) -> Result<Option<u64>> {
        let n = rows.len();
        self.stats.read += n as u64;
        let mut keep = Vec::with_capacity(n);
        let mut uuids = FixedSizeBinaryBuilder::with_capacity(n, 16);
        let mut slots_out: [StringBuilder; MAX_GROUP_TYPES] =
            std::array::from_fn(|_| StringBuilder::with_capacity(n, n * 8));
        let mut created: Vec<i64> = Vec::with_capacity(n);
        let mut identifies = Vec::new();
        let mut produced = Produced::default();
        let mut guard = self.db.lock(&self.handle).await;
        for i in 0..n {
            if rows.event.is_null(i) || rows.distinct_id.is_null(i) || rows.timestamp.is_null(i) {
                self.stats.skipped += 1;
                keep.push(false);
                continue;
            }
            let event = rows.event.value(i);
            if event == "$groupidentify" {
                identifies.push(i);
                keep.push(false);
                continue;
            }
            let properties = properties_at(rows, i);
            let (uuid, inputs) = row_prep(rows, i, event, properties, now, &mut produced);
            let disposition = process_event(
                &mut guard,
                uuid,
                event,
                rows.timestamp.value(i),
                now,
                &inputs,
                &mut produced,
            )
            .await?;
            match disposition {
                Disposition::Store(slots) => {
                    let _ = uuids.append_value(uuid.as_bytes());
                    for (b, key) in slots_out.iter_mut().zip(&slots) {
                        b.append_value(key);
                    }
                    created.push(created_at(rows, i, now));
                    keep.push(true);
                    self.stats.events += 1;
                }
                other => {
                    count_skip(&mut self.stats, &other);
                    keep.push(false);
                }
            }
        }
        let ordinary = self.ordinary_batch(rows, keep, uuids, slots_out, created)?;

        // $groupidentify rows: merges apply in event-time order.
        identifies.sort_by_key(|&i| (rows.timestamp.value(i), i));
        let mut builder = EventBatchBuilder::with_capacity(identifies.len());
        for i in identifies {
            let properties = properties_at(rows, i);
            let (uuid, inputs) =
                row_prep(rows, i, "$groupidentify", properties, now, &mut produced);
            let timestamp = rows.timestamp.value(i);
            match process_event(
                &mut guard,
                uuid,
                "$groupidentify",
                timestamp,
                now,
                &inputs,
                &mut produced,
            )
            .await?
            {
                Disposition::Store(slots) => {
                    builder.push_parts(
                        uuid,
                        "$groupidentify",
                        rows.distinct_id.value(i),
                        timestamp,
                        properties,
                        &slots,
                        created_at(rows, i, now),
                    );
                    self.stats.events += 1;
                }
                other => count_skip(&mut self.stats, &other),
            }
        }
        self.stats.groups += produced.groups.len() as u64;
        self.stats.warnings += produced.warnings.len() as u64;
        guard.commit_unlogged(ordinary, Vec::new(), Vec::new());
        let identify_batch = (!builder.is_empty()).then(|| builder.finish());
        guard.commit_unlogged(identify_batch, produced.groups, produced.warnings);
        drop(guard);
        if self.db.buffered_rows(self.handle.project().id) < self.flush_rows {
            return Ok(None);
        }
        let durable = self.wait_pending().await?;
        let db = self.db.clone();
        self.pending = Some((
            tokio::spawn(async move { db.flush().await.map(|_| ()) }),
            position,
        ));
        Ok(durable)
    }

    async fn wait_pending(&mut self) -> Result<Option<u64>> {
        match self.pending.take() {
            None => Ok(None),
            Some((task, position)) => {
                task.await.map_err(|e| {
                    Error::Storage(herd_storage::Error::WalUnavailable(format!(
                        "flush task: {e}"
                    )))
                })??;
                Ok(Some(position))
            }
        }
    }

    /// The kept ordinary rows as an events batch, reusing the source's columns.
    fn ordinary_batch(
        &self,
        rows: &SourceRows,
        keep: Vec<bool>,
        mut uuids: FixedSizeBinaryBuilder,
        mut slots: [StringBuilder; MAX_GROUP_TYPES],
        created: Vec<i64>,
    ) -> Result<Option<RecordBatch>> {
        let mask = BooleanArray::from(keep);
        let kept = mask.true_count();
        if kept == 0 {
            return Ok(None);
        }
        let all = kept == rows.len();
        let pick =
            |a: ArrayRef| -> Result<ArrayRef> { Ok(if all { a } else { filter(&a, &mask)? }) };
        // Stored properties are never null.
        let properties: ArrayRef = if rows.properties.null_count() > 0 {
            Arc::new(
                rows.properties
                    .iter()
                    .map(|p| Some(p.unwrap_or("{}")))
                    .collect::<StringArray>(),
            )
        } else {
            Arc::new(rows.properties.clone())
        };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(uuids.finish()),
            pick(Arc::new(rows.event.clone()))?,
            pick(Arc::new(rows.distinct_id.clone()))?,
            pick(Arc::new(rows.timestamp.clone().with_timezone("UTC")))?,
            pick(properties)?,
        ];
        for b in &mut slots {
            columns.push(Arc::new(b.finish()));
        }
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(created).with_timezone("UTC"),
        ));
        Ok(Some(RecordBatch::try_new(events_schema(), columns)?))
    }
    /// Writes everything buffered to Parquet (waiting for a background flush first).
    pub async fn flush(&mut self) -> Result<()> {
        self.wait_pending().await?;
        self.db.flush().await?;
        Ok(())
    }

    /// Merges one groups-table row of a source (its full properties at `created_at`) with
    /// `$set` semantics, as if it were a `$groupidentify`.
    pub async fn load_group(
        &mut self,
        group_type: &str,
        key: &str,
        properties: serde_json::Map<String, Value>,
        created_at: i64,
        now: i64,
    ) -> Result<()> {
        let mut produced = Produced::default();
        let mut guard = self.db.lock(&self.handle).await;
        // A synthetic identify whose uuid is derived from the row: loading the same groups
        // file again is a duplicate, and a merge of unchanged properties writes nothing.
        let uuid = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("{group_type}\u{0}{key}\u{0}{created_at}").as_bytes(),
        );
        let inputs = GroupInputs {
            groups: Vec::new(),
            personless: false,
            identify: Some(IdentifyInputs {
                group_type: Some(Value::String(group_type.to_string())),
                group_key: Some(Value::String(key.to_string())),
                group_set: Some(Value::Object(properties)),
            }),
        };
        let _ = process_event(
            &mut guard,
            uuid,
            "$groupidentify",
            created_at,
            now,
            &inputs,
            &mut produced,
        )
        .await?;
        self.stats.groups += produced.groups.len() as u64;
        self.stats.warnings += produced.warnings.len() as u64;
        guard.commit_unlogged(None, produced.groups, produced.warnings);
        Ok(())
    }
}

/// The row's uuid; a missing or empty one is derived from the row's content, so that loading
/// the same source twice gives the same uuid (and dedup works).
fn row_uuid(rows: &SourceRows, i: usize, event: &str, properties: &str) -> Uuid {
    if !rows.uuid.is_null(i) {
        let bytes = rows.uuid.value(i);
        if bytes.iter().any(|b| *b != 0)
            && let Ok(b) = <[u8; 16]>::try_from(bytes)
        {
            return Uuid::from_bytes(b);
        }
    }
    let mut key = Vec::with_capacity(event.len() + properties.len() + 64);
    key.extend_from_slice(event.as_bytes());
    key.push(0);
    key.extend_from_slice(rows.distinct_id.value(i).as_bytes());
    key.push(0);
    key.extend_from_slice(&rows.timestamp.value(i).to_le_bytes());
    key.extend_from_slice(properties.as_bytes());
    Uuid::new_v5(&Uuid::NAMESPACE_OID, &key)
}

fn group_inputs(
    rows: &SourceRows,
    i: usize,
    event: &str,
    properties: &str,
) -> Result<GroupInputs, String> {
    let Some((columns, mapping)) = &rows.groups else {
        return GroupInputs::from_json_text(event, properties);
    };
    // Groups were already resolved by the source system: translate its slots by type name.
    let mut inputs = if event == "$groupidentify" {
        GroupInputs::from_json_text(event, properties)?
    } else {
        GroupInputs::default()
    };
    inputs.groups.clear();
    for (slot, column) in columns.iter().enumerate() {
        if column.is_null(i) || column.value(i).is_empty() {
            continue;
        }
        let Some(group_type) = mapping.type_at(slot as u8) else {
            return Err(format!(
                "$group_{slot} is set but the source's group types name no type for slot {slot}"
            ));
        };
        inputs.groups.push((
            group_type.to_string(),
            Value::String(column.value(i).to_string()),
        ));
    }
    Ok(inputs)
}

fn properties_at(rows: &SourceRows, i: usize) -> &str {
    if rows.properties.is_null(i) {
        "{}"
    } else {
        rows.properties.value(i)
    }
}

fn created_at(rows: &SourceRows, i: usize, now: i64) -> i64 {
    rows.created_at
        .as_ref()
        .filter(|c| !c.is_null(i))
        .map_or(now, |c| c.value(i))
}

fn count_skip(stats: &mut LoadStats, d: &Disposition) {
    stats.skipped += 1;
    if *d == Disposition::Duplicate {
        stats.duplicates += 1;
    }
}

/// A row's uuid and group inputs: computed ahead when the batch carries them, else now.
/// Invalid group inputs become a warning and no groups.
fn row_prep<'a>(
    rows: &'a SourceRows,
    i: usize,
    event: &str,
    properties: &str,
    now: i64,
    produced: &mut Produced,
) -> (Uuid, std::borrow::Cow<'a, GroupInputs>) {
    use std::borrow::Cow;
    let (uuid, inputs) = match rows.prepared.as_ref().and_then(|p| p.get(i)) {
        Some((uuid, Ok(inputs))) => return (*uuid, Cow::Borrowed(inputs)),
        Some((uuid, Err(reason))) => (*uuid, Err(reason.clone())),
        None => {
            let uuid = row_uuid(rows, i, event, properties);
            (uuid, group_inputs(rows, i, event, properties))
        }
    };
    match inputs {
        Ok(inputs) => (uuid, Cow::Owned(inputs)),
        Err(reason) => {
            produced.warnings.push(IngestWarning {
                kind: "invalid_groups".into(),
                event_uuid: uuid.to_string(),
                details: json!({"reason": reason}).to_string(),
                timestamp: now,
            });
            (uuid, Cow::Owned(GroupInputs::default()))
        }
    }
}
