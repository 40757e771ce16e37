//! Actor numbers: a project's dictionary from `distinct_id`s and group keys to dense `u32`s.
//!
//! Every stored event carries, next to `distinct_id` and `$group_0` … `$group_4`, the
//! project's number of each value (`$distinct_id_num`, `$group_N_num`; see
//! [`herd_core::schema::stored_events_schema`]). Numbers are given in order of first arrival,
//! per column, starting at 1; `0` is the empty string (an event without a group of that
//! type). Queries then count distinct actors and group rows by actor on small integers.
//!
//! Numbers are given when rows enter the write buffer (capture, bulk loads and WAL replay go
//! through one path, [`ActorNumbers::number`]) and the new ones travel with their rows: a
//! flush writes them to a numbers file in the same catalog commit as the events files that
//! use them. So a committed events file only holds numbers of committed numbers files, and
//! a number given to a row that was never committed (a crash before its flush) is given
//! again on replay, to whatever value then arrives first.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, RecordBatch, StringArray, StringBuilder, UInt8Array, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hashbrown::HashTable;
use herd_core::MAX_GROUP_TYPES;
use herd_core::schema::{events_col, stored_events_schema};

use crate::{Error, Result};

/// Numbered columns: `distinct_id`, then `$group_0` … `$group_4`.
pub const NUMBERED: usize = 1 + MAX_GROUP_TYPES;

/// The events column numbered by dictionary `column` (0 = `distinct_id`, 1 + N = `$group_N`).
fn source_column(column: usize) -> usize {
    match column {
        0 => events_col::DISTINCT_ID,
        n => events_col::GROUP_0 + n - 1,
    }
}

/// A number given by a write that is not in a numbers file yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberRow {
    /// 0 = `distinct_id`, 1 + N = `$group_N`.
    pub column: u8,
    /// The number.
    pub number: u32,
    /// The value it stands for.
    pub value: String,
}

fn hasher() -> foldhash::fast::FixedState {
    foldhash::fast::FixedState::with_seed(0x6e75_6d73)
}

/// The longest value kept whole in its table entry.
const INLINE: usize = 12;

/// A value's length and its first [`INLINE`] bytes: the whole value when it is that short
/// (most ids are), so finding it needs no look at the stored bytes.
fn key_of(value: &[u8]) -> [u32; 4] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&(value.len() as u32).to_le_bytes());
    let n = value.len().min(INLINE);
    b[4..4 + n].copy_from_slice(&value[..n]);
    std::array::from_fn(|i| {
        u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    })
}

fn is_inline(key: &[u32; 4]) -> bool {
    key[0] as usize <= INLINE
}

/// Short values hash by their key, longer ones by their bytes.
fn hash(key: &[u32; 4], value: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    if is_inline(key) {
        hasher().hash_one(key)
    } else {
        hasher().hash_one(value)
    }
}

/// A table entry: a value's key and its number, in 20 bytes.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: [u32; 4],
    number: u32,
}

/// One column's values, numbered 1, 2, … in order of arrival.
#[derive(Debug, Default)]
struct Dictionary {
    /// Numbers, found by the hash of their value.
    table: HashTable<Entry>,
    /// Values, end to end.
    bytes: Vec<u8>,
    /// `ends[n - 1]`: where the value of number `n` ends in `bytes`.
    ends: Vec<usize>,
}

/// The value of `number` in `bytes` / `ends`.
fn stored<'a>(bytes: &'a [u8], ends: &[usize], number: u32) -> &'a [u8] {
    let i = number as usize - 1;
    let start = if i == 0 { 0 } else { ends[i - 1] };
    &bytes[start..ends[i]]
}

impl Dictionary {
    /// Numbers given so far (not counting 0).
    fn len(&self) -> u32 {
        self.ends.len() as u32
    }

    fn value(&self, number: u32) -> &[u8] {
        stored(&self.bytes, &self.ends, number)
    }

    fn find(&self, key: &[u32; 4], value: &[u8], h: u64) -> Option<u32> {
        self.table
            .find(h, |e| {
                e.key == *key && (is_inline(key) || self.value(e.number) == value)
            })
            .map(|e| e.number)
    }

    /// The number of `value`, giving the next one when it is new (`true`).
    fn number(&mut self, value: &[u8]) -> (u32, bool) {
        if value.is_empty() {
            return (0, false);
        }
        let key = key_of(value);
        let h = hash(&key, value);
        if let Some(n) = self.find(&key, value, h) {
            return (n, false);
        }
        self.bytes.extend_from_slice(value);
        self.ends.push(self.bytes.len());
        let number = self.len();
        let (bytes, ends) = (&self.bytes, &self.ends);
        self.table.insert_unique(h, Entry { key, number }, |e| {
            hash(&e.key, stored(bytes, ends, e.number))
        });
        (number, true)
    }

    /// Forgets the numbers after the first `len`.
    fn truncate(&mut self, len: u32) {
        while self.len() > len {
            let n = self.len();
            let value = self.value(n);
            let h = hash(&key_of(value), value);
            if let Ok(entry) = self.table.find_entry(h, |e| e.number == n) {
                entry.remove();
            }
            self.ends.pop();
            self.bytes.truncate(self.ends.last().copied().unwrap_or(0));
        }
    }

    fn size(&self) -> usize {
        self.table.capacity() * (std::mem::size_of::<Entry>() + 1)
            + self.bytes.capacity()
            + self.ends.capacity() * 8
    }
}

/// A project's numbers of every numbered column.
#[derive(Debug, Default)]
pub struct ActorNumbers {
    columns: [Dictionary; NUMBERED],
}

/// How many numbers each column had: what [`ActorNumbers::truncate`] goes back to.
pub type Mark = [u32; NUMBERED];

impl ActorNumbers {
    /// Numbers given so far, per column.
    pub fn mark(&self) -> Mark {
        std::array::from_fn(|c| self.columns[c].len())
    }

    /// Forgets every number given after `mark` (a write that failed before it was stored).
    pub fn truncate(&mut self, mark: &Mark) {
        for (d, &len) in self.columns.iter_mut().zip(mark) {
            d.truncate(len);
        }
    }

    /// Approximate heap bytes.
    pub fn size(&self) -> usize {
        self.columns.iter().map(Dictionary::size).sum()
    }

    /// The number of `value` in `column`, if it has one (`Some(0)` for the empty string).
    pub fn get(&self, column: usize, value: &str) -> Option<u32> {
        if value.is_empty() {
            return Some(0);
        }
        let d = self.columns.get(column)?;
        let key = key_of(value.as_bytes());
        d.find(&key, value.as_bytes(), hash(&key, value.as_bytes()))
    }

    /// Takes numbers from a numbers file. They must continue each column's numbers in order
    /// (files are written that way); anything else is a corrupt file.
    pub fn load(&mut self, batch: &RecordBatch, path: &str) -> Result<()> {
        let corrupt = |reason: String| Error::corrupt(path, reason);
        let columns = column_as::<UInt8Array>(batch, 0, path)?;
        let numbers = column_as::<UInt32Array>(batch, 1, path)?;
        let values = column_as::<StringArray>(batch, 2, path)?;
        for row in 0..batch.num_rows() {
            let c = columns.value(row) as usize;
            let Some(d) = self.columns.get_mut(c) else {
                return Err(corrupt(format!("numbered column {c} out of range")));
            };
            let want = d.len() + 1;
            let number = numbers.value(row);
            if number != want {
                return Err(corrupt(format!(
                    "column {c}: number {number} where {want} was expected"
                )));
            }
            let (given, new) = d.number(values.value(row).as_bytes());
            if !new || given != number {
                return Err(corrupt(format!(
                    "column {c}: value of number {number} is empty or numbered twice"
                )));
            }
        }
        Ok(())
    }

    /// `batch` (ingested events, [`herd_core::schema::events_schema`]) with its numbers
    /// appended ([`stored_events_schema`]); numbers given to new values are added to `new`.
    /// On error nothing was numbered.
    pub fn number(&mut self, batch: &RecordBatch, new: &mut Vec<NumberRow>) -> Result<RecordBatch> {
        let sources = (0..NUMBERED)
            .map(|c| column_as::<StringArray>(batch, source_column(c), "events batch"))
            .collect::<Result<Vec<_>>>()?;
        if batch.num_columns() != events_col::INGESTED {
            return Err(Error::corrupt(
                "events batch",
                format!(
                    "{} columns, not {}",
                    batch.num_columns(),
                    events_col::INGESTED
                ),
            ));
        }
        let (mark, before) = (self.mark(), new.len());
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for (c, values) in sources.iter().enumerate() {
            // Every value empty or null (a group type these events do not use): all 0.
            let offsets = values.value_offsets();
            if offsets.first() == offsets.last() {
                columns.push(Arc::new(UInt32Array::from(vec![0u32; values.len()])));
                continue;
            }
            let d = &mut self.columns[c];
            let mut out = Vec::with_capacity(values.len());
            // Rows of one actor often follow each other: the previous row's number is reused.
            let mut last: Option<(&str, u32)> = None;
            for row in 0..values.len() {
                let v = if values.is_null(row) {
                    ""
                } else {
                    values.value(row)
                };
                if let Some((prev, n)) = last
                    && prev == v
                {
                    out.push(n);
                    continue;
                }
                let (n, is_new) = d.number(v.as_bytes());
                if is_new {
                    new.push(NumberRow {
                        column: c as u8,
                        number: n,
                        value: v.to_string(),
                    });
                }
                out.push(n);
                last = Some((v, n));
            }
            columns.push(Arc::new(UInt32Array::from(out)));
        }
        RecordBatch::try_new(stored_events_schema(), columns).map_err(|e| {
            // Nothing numbered after all.
            self.truncate(&mark);
            new.truncate(before);
            Error::from(e)
        })
    }
}

fn column_as<'a, A: Array + 'static>(
    batch: &'a RecordBatch,
    i: usize,
    what: &str,
) -> Result<&'a A> {
    batch
        .columns()
        .get(i)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| Error::corrupt(what, format!("column {i} has the wrong type")))
}

/// The numbers files' schema: `column` (0 = `distinct_id`, 1 + N = `$group_N`), `number`,
/// `value`.
pub fn numbers_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("column", DataType::UInt8, false),
        Field::new("number", DataType::UInt32, false),
        Field::new("value", DataType::Utf8, false),
    ]))
}

/// New numbers as a numbers-file batch (read once, not copied first).
pub fn numbers_batch<'a>(rows: impl IntoIterator<Item = &'a NumberRow>) -> Result<RecordBatch> {
    let (mut columns, mut numbers) = (Vec::new(), Vec::new());
    let mut values = StringBuilder::new();
    for r in rows {
        columns.push(r.column);
        numbers.push(r.number);
        values.append_value(&r.value);
    }
    Ok(RecordBatch::try_new(
        numbers_schema(),
        vec![
            Arc::new(UInt8Array::from(columns)),
            Arc::new(UInt32Array::from(numbers)),
            Arc::new(values.finish()),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_core::{Event, EventBatchBuilder};

    fn batch(rows: &[(&str, &str)]) -> RecordBatch {
        let mut b = EventBatchBuilder::with_capacity(rows.len());
        for (n, (person, company)) in rows.iter().enumerate() {
            let mut groups: [String; MAX_GROUP_TYPES] = Default::default();
            groups[0] = company.to_string();
            b.push(&Event {
                uuid: uuid::Uuid::from_u128(n as u128 + 1),
                event: "e".into(),
                distinct_id: person.to_string(),
                timestamp: 0,
                properties: "{}".into(),
                groups,
                created_at: 0,
            });
        }
        b.finish()
    }

    fn numbers(b: &RecordBatch, column: usize) -> Vec<u32> {
        b.column(column)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .expect("u32")
            .values()
            .to_vec()
    }

    #[test]
    fn values_are_numbered_in_order_of_arrival_and_empty_is_zero() {
        let mut n = ActorNumbers::default();
        let mut new = Vec::new();
        let b = n
            .number(
                &batch(&[("u1", "c1"), ("u2", ""), ("u1", "c2"), ("u3", "c1")]),
                &mut new,
            )
            .expect("number");
        assert_eq!(b.schema(), stored_events_schema());
        assert_eq!(numbers(&b, events_col::DISTINCT_ID_NUM), vec![1, 2, 1, 3]);
        assert_eq!(numbers(&b, events_col::GROUP_0_NUM), vec![1, 0, 2, 1]);
        assert_eq!(numbers(&b, events_col::GROUP_0_NUM + 1), vec![0; 4]);
        assert_eq!(new.len(), 5);
        let again = n
            .number(&batch(&[("u3", "c2"), ("u4", "c1")]), &mut new)
            .expect("number");
        assert_eq!(numbers(&again, events_col::DISTINCT_ID_NUM), vec![3, 4]);
        assert_eq!(numbers(&again, events_col::GROUP_0_NUM), vec![2, 1]);
        assert_eq!(new.len(), 6);
        assert_eq!(n.get(0, "u4"), Some(4));
        assert_eq!(n.get(1, ""), Some(0));
        // Slices whose values are all empty, of a column that is not.
        let mixed = batch(&[("u5", "c3"), ("u6", ""), ("u7", "")]);
        let tail = n.number(&mixed.slice(1, 2), &mut new).expect("number");
        assert_eq!(numbers(&tail, events_col::GROUP_0_NUM), vec![0, 0]);
        let head = n.number(&mixed.slice(0, 2), &mut new).expect("number");
        assert_eq!(numbers(&head, events_col::GROUP_0_NUM), vec![3, 0]);
    }

    #[test]
    fn truncate_forgets_later_numbers_and_gives_them_again() {
        let mut n = ActorNumbers::default();
        let mut new = Vec::new();
        n.number(&batch(&[("a", "x")]), &mut new).expect("number");
        let mark = n.mark();
        n.number(&batch(&[("b", "y"), ("c", "x")]), &mut new)
            .expect("number");
        n.truncate(&mark);
        assert_eq!(n.get(0, "b"), None);
        assert_eq!(n.get(0, "c"), None);
        assert_eq!(n.get(1, "y"), None);
        let b = n
            .number(&batch(&[("c", "y")]), &mut Vec::new())
            .expect("number");
        assert_eq!(numbers(&b, events_col::DISTINCT_ID_NUM), vec![2]);
        assert_eq!(numbers(&b, events_col::GROUP_0_NUM), vec![2]);
    }

    #[test]
    fn a_numbers_file_reloads_the_same_numbers_and_gaps_are_corrupt() {
        let mut n = ActorNumbers::default();
        let mut new = Vec::new();
        // Enough values to make the table grow a few times.
        let rows: Vec<(String, String)> = (0..5000)
            .map(|i| match i % 3 {
                // Short ids sit whole in their table entry; longer ones (and ones that share
                // their first 12 bytes) are compared with the stored bytes.
                0 => (format!("u{i}"), format!("c{}", i % 70)),
                1 => (
                    format!("user-with-a-long-id-{i}"),
                    format!("company-{}", i % 70),
                ),
                _ => (format!("abcdefghijkl{i}"), format!("company-{}", i % 70)),
            })
            .collect();
        let refs: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        n.number(&batch(&refs), &mut new).expect("number");
        let file = numbers_batch(&new).expect("batch");
        let mut back = ActorNumbers::default();
        back.load(&file, "numbers.parquet").expect("load");
        assert_eq!(back.mark(), n.mark());
        for (person, company) in &rows {
            assert_eq!(back.get(0, person), n.get(0, person));
            assert_eq!(back.get(1, company), n.get(1, company));
        }
        let gap = numbers_batch(&new[1..]).expect("batch");
        let err = ActorNumbers::default()
            .load(&gap, "numbers.parquet")
            .expect_err("gap");
        assert!(err.to_string().contains("numbers.parquet"), "{err}");
    }
}
