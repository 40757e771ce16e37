//! [`BulkLoader`]: the write path of backfill and of the generator.
//!
//! Rows arrive as [`SourceRows`] (columns already normalised to herd's types) and go through
//! the same group rules as capture ([`crate::groups::process_event`]): dedup by uuid and day,
//! `$groups` → slots, `$groupidentify` merges. Within a batch, `$groupidentify` rows are applied
//! in timestamp order, so merges follow event time for time-ordered sources.
//! Each row's group inputs are prepared ahead, off the project lock ([`prepare_rows`]): for most
//! rows only where the `$groups` members lie in the properties text, which the rules then
//! read in place; the batch's columns are stored as they came, only uuids and slots are built.
//! Rows skip the WAL (their durability is the source plus the backfill checkpoint, and dedup
//! makes re-processing exact) and reach Parquet at each flush.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::compute::{filter, interleave};
use herd_core::schema::events_schema;
use herd_core::{GroupTypeMapping, IngestWarning, MAX_GROUP_TYPES, ProjectId};
use herd_storage::Db;
use herd_storage::ProjectGuard;
use herd_storage::db::ProjectHandle;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::groups::{
    Disposition, GroupInputs, IdentifyInputs, KeyRef, Produced, RuleInputs, process_event,
};
use crate::peek::{self, GroupSpan};
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

/// How a row's group inputs were prepared.
#[derive(Debug, Clone)]
enum Prep {
    /// `$groups` members at `spans[start..start + len]` of the batch, ranges into the row's
    /// properties text (the common case, see [`peek::group_spans`]).
    Spans {
        start: u32,
        len: u32,
        personless: bool,
    },
    /// From the source's `$group_N` columns, every set slot named by the source's mapping.
    Columns,
    /// Decoded in full (identify events, uncommon texts), or why the inputs are invalid.
    Full(Box<Result<GroupInputs, String>>),
}

/// What a row needs before the project lock: its uuid and its group inputs.
#[derive(Debug, Clone)]
struct RowPrep {
    uuid: Uuid,
    prep: Prep,
}

/// The [`RowPrep`]s of a batch, shared by its slices.
#[derive(Debug, Clone)]
pub struct PreparedRows {
    rows: Arc<Vec<RowPrep>>,
    spans: Arc<Vec<GroupSpan>>,
    offset: usize,
}

impl PreparedRows {
    /// The same rows from `offset` on.
    pub fn slice(&self, offset: usize) -> Self {
        Self {
            rows: self.rows.clone(),
            spans: self.spans.clone(),
            offset: self.offset + offset,
        }
    }

    fn get(&self, i: usize) -> Option<&RowPrep> {
        self.rows.get(self.offset + i)
    }

    /// Row `i`'s group inputs as the rules read them (pairs appended to `pairs`), or why
    /// they are invalid.
    fn inputs<'a>(
        &'a self,
        rows: &'a SourceRows,
        i: usize,
        pairs: &mut Vec<(&'a str, KeyRef<'a>)>,
    ) -> Result<(bool, Option<&'a IdentifyInputs>), String> {
        let Some(row) = self.get(i) else {
            return Err("row was not prepared".to_string());
        };
        match &row.prep {
            Prep::Spans {
                start,
                len,
                personless,
            } => {
                let text = properties_at(rows, i);
                let at = |(a, b): (u32, u32)| text.get(a as usize..b as usize).unwrap_or("");
                let spans = self
                    .spans
                    .get(*start as usize..(*start + *len) as usize)
                    .unwrap_or(&[]);
                pairs.extend(
                    spans
                        .iter()
                        .map(|s| (at(s.group_type), KeyRef::Str(at(s.key)))),
                );
                Ok((*personless, None))
            }
            Prep::Columns => {
                if let Some((columns, mapping)) = &rows.groups {
                    pairs.extend(
                        column_pairs(columns, mapping, i).map(|(t, k)| (t, KeyRef::Str(k))),
                    );
                }
                Ok((false, None))
            }
            Prep::Full(full) => match full.as_ref() {
                Ok(inputs) => {
                    inputs.extend_pairs(pairs);
                    Ok((inputs.personless, inputs.identify.as_ref()))
                }
                Err(reason) => Err(reason.clone()),
            },
        }
    }
}

/// Computes every row's uuid and group inputs: pure work (JSON peeks) that can run on another
/// thread while the loader holds the project lock for the previous batch.
pub fn prepare_rows(rows: &SourceRows) -> PreparedRows {
    let mut spans = Vec::with_capacity(rows.len() * 2);
    let all = (0..rows.len())
        .map(|i| prep_row(rows, i, &mut spans))
        .collect();
    PreparedRows {
        rows: Arc::new(all),
        spans: Arc::new(spans),
        offset: 0,
    }
}

fn prep_row(rows: &SourceRows, i: usize, spans: &mut Vec<GroupSpan>) -> RowPrep {
    if rows.event.is_null(i) || rows.distinct_id.is_null(i) || rows.timestamp.is_null(i) {
        // Skipped by the loader; never read.
        return RowPrep {
            uuid: Uuid::nil(),
            prep: Prep::Columns,
        };
    }
    let event = rows.event.value(i);
    let properties = properties_at(rows, i);
    let uuid = row_uuid(rows, i, event, properties);
    let full = |inputs| Prep::Full(Box::new(inputs));
    let prep = if event == "$groupidentify" {
        full(identify_inputs(rows, i, event, properties))
    } else if let Some((columns, mapping)) = &rows.groups {
        match unnamed_slot(columns, mapping, i) {
            None => Prep::Columns,
            Some(reason) => full(Err(reason)),
        }
    } else {
        let start = spans.len();
        match peek::group_spans(properties, spans) {
            Some(personless) => Prep::Spans {
                start: start as u32,
                len: (spans.len() - start) as u32,
                personless,
            },
            None => full(GroupInputs::from_json_text(event, properties)),
        }
    };
    RowPrep { uuid, prep }
}

/// Row `i`'s set `$group_N` values with the type the source's mapping names for each slot
/// (slots it names no type for are left out: [`unnamed_slot`] refuses those rows first).
fn column_pairs<'a>(
    columns: &'a [StringArray; MAX_GROUP_TYPES],
    mapping: &'a GroupTypeMapping,
    i: usize,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    columns
        .iter()
        .enumerate()
        .filter_map(move |(slot, column)| {
            let key = (!column.is_null(i)).then(|| column.value(i))?;
            if key.is_empty() {
                return None;
            }
            Some((mapping.type_at(slot as u8)?, key))
        })
}

/// Why row `i`'s `$group_N` values cannot be read: a set slot the mapping names no type for.
fn unnamed_slot(
    columns: &[StringArray; MAX_GROUP_TYPES],
    mapping: &GroupTypeMapping,
    i: usize,
) -> Option<String> {
    columns.iter().enumerate().find_map(|(slot, column)| {
        let set = !column.is_null(i) && !column.value(i).is_empty();
        (set && mapping.type_at(slot as u8).is_none()).then(|| {
            format!(
                "$group_{slot} is set but the source's group types name no type for slot {slot}"
            )
        })
    })
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
    /// Ordinary events are processed in input order, then `$groupidentify` rows, whose merges
    /// depend on order, in timestamp order. The batch's columns are stored as they are (filtered
    /// only when rows were dropped); only the uuids and the group slots are built.
    pub async fn load(
        &mut self,
        rows: &SourceRows,
        now: i64,
        position: u64,
    ) -> Result<Option<u64>> {
        let n = rows.len();
        self.stats.read += n as u64;
        let prepared = match &rows.prepared {
            Some(p) => p.clone(),
            None => prepare_rows(rows),
        };
        let mut keep = vec![false; n];
        let mut uuids = vec![0u8; n * 16];
        // Slot values of kept rows: the ordinary rows' in row order here, the identify rows'
        // beside them; `stored_batch` puts them back in row order.
        let mut slots_out: [StringBuilder; MAX_GROUP_TYPES] =
            std::array::from_fn(|_| StringBuilder::with_capacity(n, n * 8));
        let mut identify_slots: Vec<(usize, [String; MAX_GROUP_TYPES])> = Vec::new();
        let mut identifies = Vec::new();
        let mut produced = Produced::default();
        let mut pairs: Vec<(&str, KeyRef)> = Vec::with_capacity(8);
        let mut guard = self.db.lock(&self.handle).await;
        for i in 0..n {
            if rows.event.is_null(i) || rows.distinct_id.is_null(i) || rows.timestamp.is_null(i) {
                self.stats.skipped += 1;
                continue;
            }
            let event = rows.event.value(i);
            if event == "$groupidentify" {
                identifies.push(i);
                continue;
            }
            let (uuid, disposition) = process_row(
                &mut guard,
                &prepared,
                rows,
                i,
                now,
                &mut pairs,
                &mut produced,
            )
            .await?;
            match disposition {
                Disposition::Store(slots) => {
                    uuids[i * 16..(i + 1) * 16].copy_from_slice(uuid.as_bytes());
                    for (b, key) in slots_out.iter_mut().zip(&slots) {
                        b.append_value(key);
                    }
                    keep[i] = true;
                    self.stats.events += 1;
                }
                other => count_skip(&mut self.stats, &other),
            }
        }

        // $groupidentify rows: merges apply in event-time order.
        identifies.sort_by_key(|&i| (rows.timestamp.value(i), i));
        for i in identifies {
            let (uuid, disposition) = process_row(
                &mut guard,
                &prepared,
                rows,
                i,
                now,
                &mut pairs,
                &mut produced,
            )
            .await?;
            match disposition {
                Disposition::Store(slots) => {
                    uuids[i * 16..(i + 1) * 16].copy_from_slice(uuid.as_bytes());
                    identify_slots.push((i, slots.map(|s| s.into_owned())));
                    keep[i] = true;
                    self.stats.events += 1;
                }
                other => count_skip(&mut self.stats, &other),
            }
        }
        let batch = stored_batch(rows, now, keep, uuids, slots_out, identify_slots)?;
        self.stats.groups += produced.groups.len() as u64;
        self.stats.warnings += produced.warnings.len() as u64;
        guard.commit_unlogged(batch, produced.groups, produced.warnings)?;
        drop(guard);
        // Loading goes on while a flush encodes: the next one is due when as many rows
        // again have arrived, so at most two flushes' rows are held.
        if self.db.active_rows(self.handle.project().id) < self.flush_rows {
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
        let mut pairs = Vec::new();
        let _ = process_event(
            &mut guard,
            uuid,
            "$groupidentify",
            created_at,
            now,
            inputs.view(&mut pairs),
            &mut produced,
        )
        .await?;
        self.stats.groups += produced.groups.len() as u64;
        self.stats.warnings += produced.warnings.len() as u64;
        guard.commit_unlogged(None, produced.groups, produced.warnings)?;
        Ok(())
    }
}

/// The kept rows as an events batch: the source's columns as they are (filtered when rows
/// were dropped), with the uuids and group slots built while loading.
fn stored_batch(
    rows: &SourceRows,
    now: i64,
    keep: Vec<bool>,
    uuids: Vec<u8>,
    mut ordinary_slots: [StringBuilder; MAX_GROUP_TYPES],
    mut identify_slots: Vec<(usize, [String; MAX_GROUP_TYPES])>,
) -> Result<Option<RecordBatch>> {
    let n = rows.len();
    let mask = BooleanArray::from(keep);
    let kept = mask.true_count();
    if kept == 0 {
        return Ok(None);
    }
    let all = kept == n;
    let pick = |a: ArrayRef| -> Result<ArrayRef> { Ok(if all { a } else { filter(&a, &mask)? }) };
    let uuid_array = FixedSizeBinaryArray::try_new(16, uuids.into(), None)?;
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
    let created = match &rows.created_at {
        Some(c) if c.null_count() == 0 => c.clone(),
        Some(c) => TimestampMicrosecondArray::from_iter_values(c.iter().map(|v| v.unwrap_or(now))),
        None => TimestampMicrosecondArray::from_value(now, n),
    };
    let mut columns: Vec<ArrayRef> = vec![
        pick(Arc::new(uuid_array))?,
        pick(Arc::new(rows.event.clone()))?,
        pick(Arc::new(rows.distinct_id.clone()))?,
        pick(Arc::new(rows.timestamp.clone().with_timezone("UTC")))?,
        pick(properties)?,
    ];
    let ordinary: Vec<StringArray> = ordinary_slots.iter_mut().map(|b| b.finish()).collect();
    if identify_slots.is_empty() {
        columns.extend(ordinary.into_iter().map(|a| Arc::new(a) as ArrayRef));
    } else {
        // Kept rows in row order: the next ordinary value, or the identify row's own.
        identify_slots.sort_unstable_by_key(|(row, _)| *row);
        let mut next_ordinary = 0;
        let mut next_identify = 0;
        let mut order = Vec::with_capacity(kept);
        for (row, keep) in mask.values().iter().enumerate() {
            if !keep {
                continue;
            }
            if identify_slots.get(next_identify).map(|(r, _)| *r) == Some(row) {
                order.push((1, next_identify));
                next_identify += 1;
            } else {
                order.push((0, next_ordinary));
                next_ordinary += 1;
            }
        }
        for (slot, ordinary) in ordinary.iter().enumerate() {
            let identify: StringArray = identify_slots
                .iter()
                .map(|(_, s)| Some(s[slot].as_str()))
                .collect();
            columns.push(interleave(&[ordinary, &identify], &order)?);
        }
    }
    columns.push(pick(Arc::new(created.with_timezone("UTC")))?);
    Ok(Some(RecordBatch::try_new(events_schema(), columns)?))
}

/// Row `i` (name, user and time not null) through the group rules: its uuid and what became
/// of it. Invalid group inputs become a warning and no groups. `pairs` is a reused buffer.
async fn process_row<'a>(
    guard: &mut ProjectGuard<'_>,
    prepared: &'a PreparedRows,
    rows: &'a SourceRows,
    i: usize,
    now: i64,
    pairs: &mut Vec<(&'a str, KeyRef<'a>)>,
    produced: &mut Produced,
) -> Result<(Uuid, Disposition<'a>)> {
    pairs.clear();
    let uuid = prepared.get(i).map_or_else(Uuid::nil, |r| r.uuid);
    let (personless, identify) = match prepared.inputs(rows, i, pairs) {
        Ok(rule) => rule,
        Err(reason) => {
            pairs.clear();
            produced.warnings.push(IngestWarning {
                kind: "invalid_groups".into(),
                event_uuid: uuid.to_string(),
                details: json!({"reason": reason}).to_string(),
                timestamp: now,
            });
            (false, None)
        }
    };
    let rules = RuleInputs {
        groups: pairs,
        personless,
        identify,
    };
    let event = rows.event.value(i);
    let disposition = process_event(
        guard,
        uuid,
        event,
        rows.timestamp.value(i),
        now,
        rules,
        produced,
    )
    .await?;
    Ok((uuid, disposition))
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

/// The group inputs of a `$groupidentify` row: its identify fields from the properties text,
/// its groups from `$groups` there or, when the source has them, from its `$group_N` columns.
fn identify_inputs(
    rows: &SourceRows,
    i: usize,
    event: &str,
    properties: &str,
) -> Result<GroupInputs, String> {
    let mut inputs = GroupInputs::from_json_text(event, properties)?;
    if let Some((columns, mapping)) = &rows.groups {
        // Groups were already resolved by the source system: translate its slots by name.
        if let Some(reason) = unnamed_slot(columns, mapping, i) {
            return Err(reason);
        }
        inputs.groups = column_pairs(columns, mapping, i)
            .map(|(t, k)| (t.to_string(), Value::String(k.to_string())))
            .collect();
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

fn count_skip(stats: &mut LoadStats, d: &Disposition) {
    stats.skipped += 1;
    if *d == Disposition::Duplicate {
        stats.duplicates += 1;
    }
}
