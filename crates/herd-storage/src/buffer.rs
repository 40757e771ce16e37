//! The write buffer: acknowledged rows of one project that are not in Parquet yet.
//!
//! Queries read it next to the catalog's files, so an event is visible as soon as it is
//! acknowledged. A flush *freezes* the active buffer (new rows go to a fresh one), writes the
//! frozen rows to Parquet, and drops them in the same step that swaps in the new catalog, so
//! a reader sees every row exactly once: in a file or in a buffer, never both, never neither.

use std::time::Instant;

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use herd_core::schema::events_col;
use herd_core::time::day_of;
use herd_core::{GroupRow, IngestWarning};

use crate::numbers::NumberRow;
use crate::{Error, Result};

/// Rows waiting for the next flush.
#[derive(Debug, Default, Clone)]
pub struct Buffer {
    /// Events batches (stored events schema: with their actor numbers).
    pub events: Vec<RecordBatch>,
    /// Number of event rows.
    pub rows: usize,
    /// Groups-table rows.
    pub groups: Vec<GroupRow>,
    /// Ingestion warnings.
    pub warnings: Vec<IngestWarning>,
    /// Actor numbers first given to these rows.
    pub numbers: Vec<NumberRow>,
    /// When the oldest row arrived.
    pub oldest: Option<Instant>,
    /// Memory held by the events batches (Arrow's count; groups and warnings are small
    /// next to them and not counted).
    pub bytes: usize,
    /// The first and last UTC day of each events batch (same order as `events`), so finding
    /// a day's rows skips the batches that cannot hold any.
    pub days: Vec<(i32, i32)>,
}

impl Buffer {
    /// Whether there is nothing to flush.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
            && self.groups.is_empty()
            && self.warnings.is_empty()
            && self.numbers.is_empty()
    }

    /// Adds rows.
    pub fn push(
        &mut self,
        events: Option<RecordBatch>,
        groups: Vec<GroupRow>,
        warnings: Vec<IngestWarning>,
        numbers: Vec<NumberRow>,
    ) {
        let added = events.as_ref().map_or(0, RecordBatch::num_rows)
            + groups.len()
            + warnings.len()
            + numbers.len();
        if added == 0 {
            return;
        }
        if let Some(batch) = events.filter(|b| b.num_rows() > 0) {
            self.rows += batch.num_rows();
            self.bytes += batch.get_array_memory_size();
            self.days.push(day_range(&batch));
            self.events.push(batch);
        }
        self.groups.extend(groups);
        self.warnings.extend(warnings);
        self.numbers.extend(numbers);
        self.oldest.get_or_insert_with(Instant::now);
    }
}

/// The first and last UTC day of an events batch's rows (`(i32::MIN, i32::MAX)` when the
/// timestamps cannot be read, so the batch is never skipped).
pub fn day_range(batch: &RecordBatch) -> (i32, i32) {
    let Some(ts) = batch
        .column(events_col::TIMESTAMP)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
    else {
        return (i32::MIN, i32::MAX);
    };
    let (min, max) = ts
        .values()
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    if min > max {
        return (i32::MAX, i32::MIN);
    }
    (day_of(min), day_of(max))
}

/// A batch whose rows change day more often than this is gathered per day instead of sliced.
const MAX_SLICES_PER_BATCH: usize = 64;

/// Splits events batches by UTC day of `timestamp`: `(day, rows of that day)`, days ascending.
pub fn split_by_day(batches: &[RecordBatch]) -> Result<Vec<(i32, Vec<RecordBatch>)>> {
    let mut out: std::collections::BTreeMap<i32, Vec<RecordBatch>> = Default::default();
    for batch in batches {
        let ts = batch
            .column(events_col::TIMESTAMP)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| Error::corrupt("write buffer", "timestamp column has the wrong type"))?;
        // Runs of one day: time-ordered input (backfill of an export) splits into a few
        // slices of the batch, with no copy.
        let days: Vec<i32> = ts.values().iter().map(|&t| day_of(t)).collect();
        let mut runs: Vec<(i32, usize, usize)> = Vec::new();
        for (i, &day) in days.iter().enumerate() {
            match runs.last_mut() {
                Some((d, _, len)) if *d == day => *len += 1,
                _ => {
                    if runs.len() > MAX_SLICES_PER_BATCH {
                        break;
                    }
                    runs.push((day, i, 1));
                }
            }
        }
        if runs.len() <= MAX_SLICES_PER_BATCH {
            for (day, start, len) in runs {
                out.entry(day).or_default().push(batch.slice(start, len));
            }
            continue;
        }
        let mut by_day: std::collections::BTreeMap<i32, Vec<u32>> = Default::default();
        for (i, &day) in days.iter().enumerate() {
            by_day.entry(day).or_default().push(i as u32);
        }
        for (day, rows) in by_day {
            let part = take_record_batch(batch, &UInt32Array::from(rows))?;
            out.entry(day).or_default().push(part);
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_core::{Event, EventBatchBuilder};

    #[test]
    fn splits_rows_by_utc_day() {
        let day = 86_400_000_000i64;
        let mut b = EventBatchBuilder::with_capacity(4);
        for (n, ts) in [(1u128, 5), (2, day + 1), (3, 7), (4, 3 * day)] {
            b.push(&Event {
                uuid: uuid::Uuid::from_u128(n),
                event: "e".into(),
                distinct_id: "d".into(),
                timestamp: ts,
                properties: "{}".into(),
                groups: Default::default(),
                created_at: 0,
            });
        }
        let parts = split_by_day(&[b.finish()]).expect("split");
        let shape: Vec<(i32, usize)> = parts
            .iter()
            .map(|(d, bs)| (*d, bs.iter().map(RecordBatch::num_rows).sum()))
            .collect();
        assert_eq!(shape, vec![(0, 2), (1, 1), (3, 1)]);

        // Rows alternating between days are gathered, one batch per day, order kept.
        let mut b = EventBatchBuilder::with_capacity(200);
        for n in 0..200u128 {
            b.push(&Event {
                uuid: uuid::Uuid::from_u128(n),
                event: "e".into(),
                distinct_id: "d".into(),
                timestamp: (n as i64 % 2) * day + n as i64,
                properties: "{}".into(),
                groups: Default::default(),
                created_at: 0,
            });
        }
        let parts = split_by_day(&[b.finish()]).expect("split");
        assert_eq!(parts.len(), 2);
        for (d, bs) in &parts {
            assert_eq!(bs.len(), 1, "one gathered batch for day {d}");
            let ts = crate::db::buffered_timestamps(&bs[0]).expect("ts");
            let want: Vec<i64> = (0..200i64)
                .filter(|n| n % 2 == *d as i64)
                .map(|n| (n % 2) * day + n)
                .collect();
            assert_eq!(ts.values().to_vec(), want);
        }
    }
}
