//! A streaming k-way merge of events files that are each in the events order
//! ([`EVENTS_SORT`](super::EVENTS_SORT)) into one file in that order.
//!
//! Compaction merges a day's files. They are sorted already, so instead of decoding the whole
//! day and sorting it again, each file is read a batch at a time and the rows are taken in
//! order from the file whose next row is smallest (a binary heap of the files), gathered a
//! slice at a time and encoded as they come. Decoded rows in memory are bounded by
//! [`MERGE_BUFFER_ROWS`] whatever the number of files, plus the slice being gathered.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use bytes::Bytes;
use herd_core::schema::{events_col, stored_events_schema};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{EventsWriter, SORT_GATHER_ROWS, cast_to, gather, parquet_err};
use crate::{Error, Result};

/// Decoded rows held by all inputs together (each reads batches of this divided by the
/// number of inputs, at least [`MIN_BATCH_ROWS`]).
const MERGE_BUFFER_ROWS: usize = 256 * 1024;
/// The smallest batch an input reads.
const MIN_BATCH_ROWS: usize = 256;
/// The largest batch an input reads.
const MAX_BATCH_ROWS: usize = 16 * 1024;

/// One input file: its reader and the batch being merged, with the sort key's columns.
struct Cursor {
    reader: ParquetRecordBatchReader,
    path: String,
    /// Index of the current batch in [`Merge::live`].
    slot: usize,
    row: usize,
    len: usize,
    event: StringArray,
    group: UInt32Array,
    person: UInt32Array,
    time: arrow::array::PrimitiveArray<TimestampMicrosecondType>,
}

impl Cursor {
    /// The sort key of row `r` of the current batch.
    fn key_at(&self, r: usize) -> (&str, u32, u32, i64) {
        (
            self.event.value(r),
            self.group.value(r),
            self.person.value(r),
            self.time.value(r),
        )
    }

    /// Reads the next non-empty batch; `None` when the file is done.
    fn next_batch(&mut self, schema: &SchemaRef) -> Result<Option<RecordBatch>> {
        for batch in self.reader.by_ref() {
            let batch = cast_to(batch?, schema)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let corrupt = |what: &str| Error::corrupt(&self.path, format!("{what} column type"));
            let column = |c: usize| batch.column(c);
            self.event = column(events_col::EVENT)
                .as_string_opt::<i32>()
                .ok_or_else(|| corrupt("event"))?
                .clone();
            self.group = column(events_col::GROUP_0_NUM)
                .as_primitive_opt()
                .ok_or_else(|| corrupt("$group_0_num"))?
                .clone();
            self.person = column(events_col::DISTINCT_ID_NUM)
                .as_primitive_opt()
                .ok_or_else(|| corrupt("$distinct_id_num"))?
                .clone();
            self.time = column(events_col::TIMESTAMP)
                .as_primitive_opt()
                .ok_or_else(|| corrupt("timestamp"))?
                .clone();
            self.row = 0;
            self.len = batch.num_rows();
            return Ok(Some(batch));
        }
        Ok(None)
    }
}

/// The merge's state: the inputs, the heap of inputs by next row, and the decoded batches
/// that rows of the slice being gathered point into.
struct Merge {
    schema: SchemaRef,
    cursors: Vec<Cursor>,
    /// Indices into `cursors`, a min-heap by each cursor's next row (ties: lower index first,
    /// so rows of equal keys keep the inputs' order).
    heap: Vec<usize>,
    live: Vec<RecordBatch>,
}

impl Merge {
    fn less(&self, a: usize, b: usize) -> bool {
        let (ca, cb) = (&self.cursors[a], &self.cursors[b]);
        match ca.key_at(ca.row).cmp(&cb.key_at(cb.row)) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => a < b,
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * at + 1, 2 * at + 2);
            let mut min = at;
            if l < n && self.less(self.heap[l], self.heap[min]) {
                min = l;
            }
            if r < n && self.less(self.heap[r], self.heap[min]) {
                min = r;
            }
            if min == at {
                return;
            }
            self.heap.swap(at, min);
            at = min;
        }
    }

    /// Moves the heap's top cursor past the row just taken; returns false when the input
    /// is not in the events order (a row smaller than the one before it).
    fn advance_top(&mut self) -> Result<bool> {
        let top = self.heap[0];
        let schema = Arc::clone(&self.schema);
        let c = &mut self.cursors[top];
        if c.row + 1 < c.len {
            c.row += 1;
            if c.key_at(c.row) < c.key_at(c.row - 1) {
                return Ok(false);
            }
        } else {
            let (event, group, person, time) = c.key_at(c.row);
            let last = (event.to_string(), group, person, time);
            match c.next_batch(&schema)? {
                Some(batch) => {
                    if c.key_at(0) < (last.0.as_str(), last.1, last.2, last.3) {
                        return Ok(false);
                    }
                    c.slot = self.live.len();
                    self.live.push(batch);
                }
                None => {
                    // The file is done: the heap's last leaf takes the top and sinks.
                    c.row = c.len;
                    let last_leaf = self.heap.len() - 1;
                    self.heap.swap(0, last_leaf);
                    self.heap.pop();
                }
            }
        }
        self.sift_down(0);
        Ok(true)
    }

    /// Gathers `rows` (slot, row) from the live batches into one batch, then keeps only the
    /// batches the cursors are still reading.
    fn gather(&mut self, rows: &mut Vec<(usize, usize)>) -> Result<RecordBatch> {
        let columns = (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    self.live.iter().map(|b| b.column(c).as_ref()).collect();
                gather(&arrays, rows)
            })
            .collect::<Result<Vec<_>>>()?;
        rows.clear();
        let mut kept = Vec::with_capacity(self.cursors.len());
        for c in &mut self.cursors {
            if c.row < c.len {
                kept.push(self.live[c.slot].clone());
                c.slot = kept.len() - 1;
            }
        }
        self.live = kept;
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

/// Merges events files (stored events schema, each in the events order) into one events
/// file. Returns `None`, writing nothing useful, when an input turns out not to be in the
/// events order (the caller then sorts the rows instead).
pub fn merge_sorted_events(inputs: Vec<(Bytes, String)>, path: &str) -> Result<Option<Bytes>> {
    let batch_rows =
        (MERGE_BUFFER_ROWS / inputs.len().max(1)).clamp(MIN_BATCH_ROWS, MAX_BATCH_ROWS);
    merge_in_slices(inputs, path, batch_rows, SORT_GATHER_ROWS)
}

/// [`merge_sorted_events`] reading `batch_rows` rows of an input at a time and gathering
/// `gather_rows` rows at a time.
pub(super) fn merge_in_slices(
    inputs: Vec<(Bytes, String)>,
    path: &str,
    batch_rows: usize,
    gather_rows: usize,
) -> Result<Option<Bytes>> {
    let schema = stored_events_schema();
    let input_bytes: usize = inputs.iter().map(|(b, _)| b.len()).sum();
    let mut merge = Merge {
        schema: Arc::clone(&schema),
        cursors: Vec::with_capacity(inputs.len()),
        heap: Vec::with_capacity(inputs.len()),
        live: Vec::new(),
    };
    for (bytes, file) in inputs {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(parquet_err(&file))?
            .with_batch_size(batch_rows)
            .build()
            .map_err(parquet_err(&file))?;
        let mut cursor = Cursor {
            reader,
            path: file,
            slot: 0,
            row: 0,
            len: 0,
            event: StringArray::from(Vec::<&str>::new()),
            group: UInt32Array::from(Vec::<u32>::new()),
            person: UInt32Array::from(Vec::<u32>::new()),
            time: Vec::<i64>::new().into(),
        };
        if let Some(batch) = cursor.next_batch(&schema)? {
            cursor.slot = merge.live.len();
            merge.live.push(batch);
            merge.heap.push(merge.cursors.len());
            merge.cursors.push(cursor);
        }
    }
    for at in (0..merge.heap.len() / 2).rev() {
        merge.sift_down(at);
    }
    // Encoding (zstd, dictionaries) runs on a second thread while this one merges; a few
    // gathered slices wait between them.
    std::thread::scope(|scope| {
        let (slices, merged) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
        let encoder = scope.spawn(move || -> Result<Bytes> {
            let mut writer = EventsWriter::new(input_bytes + 1024, path)?;
            for batch in merged {
                writer.write(&batch)?;
            }
            writer.finish()
        });
        // Ok(false): an input out of order; a failed send: the encoder stopped (its error
        // comes from the join below).
        let sorted = (|| -> Result<bool> {
            let mut rows = Vec::with_capacity(gather_rows);
            while let Some(&top) = merge.heap.first() {
                let c = &merge.cursors[top];
                rows.push((c.slot, c.row));
                if !merge.advance_top()? {
                    return Ok(false);
                }
                if rows.len() == gather_rows && slices.send(merge.gather(&mut rows)?).is_err() {
                    return Ok(true);
                }
            }
            if !rows.is_empty() {
                // A failed send shows as the encoder's error below.
                let _ = slices.send(merge.gather(&mut rows)?);
            }
            Ok(true)
        })();
        drop(slices);
        let encoded = encoder.join().map_err(|_| {
            Error::io(
                path,
                std::io::Error::other("the merge's encoder thread panicked"),
            )
        })?;
        match sorted? {
            true => encoded.map(Some),
            false => Ok(None),
        }
    })
}
