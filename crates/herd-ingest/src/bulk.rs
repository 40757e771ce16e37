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
use herd_core::{GroupTypeMapping, MAX_GROUP_TYPES, ProjectId};
use herd_storage::Db;
use herd_storage::ProjectGuard;
use herd_storage::db::{FlushStats, ProjectHandle};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::groups::{
    Disposition, GroupInputs, IdentifyInputs, KeyRef, Produced, RuleInputs, WarningSource,
    process_event,
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

    /// Rows `offset..` (at most `max_len` of them), sharing the buffers.
    pub fn slice(&self, offset: usize, max_len: usize) -> Self {
        let len = self.len().saturating_sub(offset).min(max_len);
        let s = |a: &StringArray| a.slice(offset, len);
        Self {
            uuid: self.uuid.slice(offset, len),
            event: s(&self.event),
            distinct_id: s(&self.distinct_id),
            timestamp: self.timestamp.slice(offset, len),
            properties: s(&self.properties),
            groups: self
                .groups
                .as_ref()
                .map(|(cols, m)| (cols.clone().map(|c| c.slice(offset, len)), m.clone())),
            created_at: self.created_at.as_ref().map(|c| c.slice(offset, len)),
            prepared: self.prepared.as_ref().map(|p| p.slice(offset)),
        }
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
    pending: Option<(
        tokio::task::JoinHandle<herd_storage::Result<FlushStats>>,
        u64,
    )>,
    /// The latest day of the rows loaded since the last flush started: a due flush waits for
    /// the input to pass it. Forgotten at every flush, so that one row far in the future
    /// holds the day cuts off for one flush at most, not for the rest of the load.
    latest_day: Option<i32>,
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
            latest_day: None,
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
    /// From half `flush_rows` buffered on, a flush starts where the input passes to a later
    /// day (at `flush_rows` wherever it is): time-ordered input (exports, the generator) then
    /// writes each day of up to half `flush_rows` events in one flush, to one file, instead of
    /// splitting days across flushes for compaction to merge again. That flush covers the rows
    /// loaded before the change, and `position` minus the rest of the batch is its mark.
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
        let mut durable = None;
        let mut start = 0;
        while start < n {
            let rest = if start == 0 {
                rows.clone()
            } else {
                rows.slice(start, n)
            };
            let Some(cut) = self.day_change(&rest) else {
                self.load_rows(&rest, now).await?;
                break;
            };
            if cut > 0 {
                self.load_rows(&rest.slice(0, cut), now).await?;
            }
            start += cut;
            let previous = self
                .start_flush(position.saturating_sub((n - start) as u64))
                .await?;
            durable = durable.max(previous);
        }
        // No change of day in sight: the buffer is full.
        if self.buffered() >= self.flush_rows {
            let previous = self.start_flush(position).await?;
            durable = durable.max(previous);
        }
        Ok(durable)
    }

    /// Events in the project's write buffer: loaded since the last flush started, which took
    /// the buffer before returning ([`Db::start_flush`]).
    fn buffered(&self) -> usize {
        self.db.active_rows(self.handle.project().id)
    }

    /// Where in `rows` a flush should start: the first row, once half `flush_rows` events would
    /// be buffered before it, on a later day than every row before it since the last flush
    /// started (a late row of an earlier day is no change: the day it interrupts goes on
    /// after it). The rows before it, which the caller loads next, count towards the latest
    /// day.
    fn day_change(&mut self, rows: &SourceRows) -> Option<usize> {
        let buffered = self.buffered();
        let from = (self.flush_rows / 2).saturating_sub(buffered);
        for i in 0..rows.len() {
            if rows.timestamp.is_null(i) {
                continue;
            }
            let day = herd_core::time::day_of(rows.timestamp.value(i));
            if i >= from && self.latest_day.is_some_and(|l| day > l) && buffered + i > 0 {
                return Some(i);
            }
            self.latest_day = self.latest_day.max(Some(day));
        }
        None
    }

    /// Starts a background flush of everything buffered, covering `position`, after waiting
    /// for the previous one: the position that one made durable.
    async fn start_flush(&mut self, position: u64) -> Result<Option<u64>> {
        let durable = self.wait_pending().await?;
        self.pending = Some((self.db.start_flush().await?, position));
        self.latest_day = None;
        Ok(durable)
    }

    /// Processes `rows` into the write buffer.
    async fn load_rows(&mut self, rows: &SourceRows, now: i64) -> Result<()> {
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
        Ok(())
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
            let source = WarningSource {
                uuid,
                event: rows.event.value(i),
                now,
            };
            source.raise(guard, produced, "invalid_groups", json!({"reason": reason}));
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use herd_storage::projects::NewProject;

    const DAY_US: i64 = 86_400_000_000;

    /// One `e` event per entry of `days` (days since 1970, in input order), uuids counting
    /// from `first`.
    fn rows_on(days: &[i64], first: u128) -> SourceRows {
        let n = days.len();
        let uuids = (0..n).map(|i| (first + i as u128 + 1).to_be_bytes());
        SourceRows {
            uuid: FixedSizeBinaryArray::try_from_iter(uuids).expect("uuids"),
            event: StringArray::from(vec!["e"; n]),
            distinct_id: (0..n).map(|i| Some(format!("u{}", i % 7))).collect(),
            timestamp: days
                .iter()
                .enumerate()
                .map(|(i, d)| d * DAY_US + i as i64)
                .collect::<Vec<_>>()
                .into(),
            properties: StringArray::from(vec!["{}"; n]),
            groups: None,
            created_at: None,
            prepared: None,
        }
    }

    /// Events rows per day in the project's files, file by file; their total; the flushes
    /// (catalog versions) so far.
    fn files_by_day(db: &Db, project: ProjectId) -> (BTreeMap<String, Vec<u64>>, u64, u64) {
        let snapshot = db.snapshot(project).expect("snapshot");
        let mut days: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for f in &snapshot.catalog.events {
            let day = f.day.clone().expect("day");
            days.entry(day).or_default().push(f.rows);
        }
        let total = snapshot.catalog.events.iter().map(|f| f.rows).sum();
        (days, total, snapshot.catalog.version)
    }

    /// A fresh store with one project, and a loader for it that flushes at `flush_rows`.
    async fn loader(flush_rows: usize) -> (tempfile::TempDir, Arc<Db>, ProjectId, BulkLoader) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open_local(dir.path()).await.expect("db");
        let project = db
            .create_project(NewProject::default())
            .await
            .expect("project")
            .id;
        let loader = BulkLoader::new(db.clone(), project, flush_rows).expect("loader");
        (dir, db, project, loader)
    }

    /// Loads one event per entry of `days` in batches of 45, then flushes: the positions `load`
    /// reported durable (each checked against the rows in committed files at that moment),
    /// the files' rows by day, and the number of flushes.
    async fn load_and_flush(
        db: &Db,
        project: ProjectId,
        loader: &mut BulkLoader,
        days: &[i64],
    ) -> (Vec<u64>, BTreeMap<String, Vec<u64>>, u64) {
        let mut loaded = 0u64;
        let mut reported = Vec::new();
        for batch in days.chunks(45) {
            let rows = rows_on(batch, loaded as u128);
            loaded += batch.len() as u64;
            if let Some(durable) = loader.load(&rows, 0, loaded).await.expect("load") {
                let (_, committed, _) = files_by_day(db, project);
                assert!(
                    durable <= committed,
                    "{durable} reported, {committed} in files"
                );
                reported.push(durable);
            }
        }
        loader.flush().await.expect("flush");
        let (by_day, total, flushes) = files_by_day(db, project);
        assert_eq!(total, days.len() as u64);
        (reported, by_day, flushes)
    }

    /// Time-ordered input is flushed where it passes to a later day, once half `flush_rows`
    /// are buffered: each day small enough lands in one file, small days share a flush. A late
    /// row of an earlier day does not cut its day short; a day larger than `flush_rows` is cut
    /// where the buffer is full. Every position `load` reports durable is covered by the
    /// files then committed.
    #[tokio::test]
    async fn flushes_start_where_the_input_passes_to_a_later_day() {
        let (_dir, db, project, mut loader) = loader(100).await;
        let d = 19_723; // 2024-01-01
        let mut input: Vec<i64> = Vec::new();
        input.extend([d; 60]);
        input.extend([d + 1; 55]);
        input.push(d); // late, with 50 or more rows buffered
        input.extend([d + 1; 10]);
        input.extend([d + 2; 20]);
        input.extend([d + 3; 20]);
        input.extend([d + 4; 20]);
        input.extend([d + 5; 160]);
        input.extend([d + 6; 20]);
        let (reported, days, flushes) = load_and_flush(&db, project, &mut loader, &input).await;
        // Each flush's mark (its cut: rows 60, 126, 186) once the next one starts; the one
        // at row 315 (the full buffer) completes in the final flush.
        assert_eq!(reported, vec![60, 126, 186]);
        let rows = |day: &str| days.get(day).cloned().unwrap_or_default();
        // The first day, then its late row (written with the second day).
        assert_eq!(rows("2024-01-01"), vec![60, 1]);
        assert_eq!(rows("2024-01-02"), vec![65]);
        // Three small days in one flush.
        assert_eq!(rows("2024-01-03"), vec![20]);
        assert_eq!(rows("2024-01-04"), vec![20]);
        assert_eq!(rows("2024-01-05"), vec![20]);
        // 160 rows: the buffer is full at the end of the batch that reaches 100 (row 315 of
        // the input); the rest goes with the last day.
        assert_eq!(rows("2024-01-06"), vec![129, 31]);
        assert_eq!(rows("2024-01-07"), vec![20]);
        assert_eq!(flushes, 5);
    }

    /// A row far in the future (a client with a wrong clock) holds the day cuts off until
    /// the next flush only: from there on, days are flushed whole again.
    #[tokio::test]
    async fn a_row_far_in_the_future_holds_day_cuts_off_for_one_flush() {
        let (_dir, db, project, mut loader) = loader(100).await;
        let d = 19_723; // 2024-01-01
        let mut input: Vec<i64> = Vec::new();
        input.extend([d; 60]);
        input.push(d + 1000);
        for day in d + 1..=d + 5 {
            input.extend([day; 60]);
        }
        let (reported, days, flushes) = load_and_flush(&db, project, &mut loader, &input).await;
        // The cuts at rows 60 (the future row), 180 (the full buffer), 241 (the 4th day).
        assert_eq!(reported, vec![60, 180, 241]);
        let rows = |day: &str| days.get(day).cloned().unwrap_or_default();
        // Cut where the future row comes; then it is the latest day, so the buffer fills
        // (rows 60..180: the future row, the 2nd day, all but one row of the 3rd).
        assert_eq!(rows("2024-01-01"), vec![60]);
        assert_eq!(
            days.values().last(),
            Some(&vec![1]),
            "the future row: {days:?}"
        );
        assert_eq!(rows("2024-01-02"), vec![60]);
        assert_eq!(rows("2024-01-03"), vec![59, 1]);
        // After that flush, days are cut at their ends again.
        assert_eq!(rows("2024-01-04"), vec![60]);
        assert_eq!(rows("2024-01-05"), vec![60]);
        assert_eq!(rows("2024-01-06"), vec![60]);
        assert_eq!(flushes, 5);
    }
}
