//! The funnel's outcomes folded into what the answer shows: per breakdown value, the actors
//! reaching each step and their conversion times (steps and time-to-convert), or per entry
//! bucket the actors entering and converting (trends).
//!
//! A fold is mergeable, so it runs in the plan in two stages ([`super::fold_exec`]): each
//! partition folds its actors' outcomes into a partial state, written as rows of
//! [`state_schema`], and one final stage merges those rows into the same schema. The engine
//! reads the final rows back into a [`Fold`] to rank, limit and format the lines.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, Int32Array, Int64Array,
    ListBuilder, RecordBatch, StringArray, StringBuilder, UInt32Array, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};

use crate::{Error, Result};

/// What a fold computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) enum FoldKind {
    /// Step counts and conversion times per breakdown value; the time to convert from
    /// `from_step` to `to_step`.
    Steps {
        steps: usize,
        from_step: usize,
        to_step: usize,
    },
    /// Entered and converted actors per breakdown value and entry bucket.
    Trends { buckets: usize },
}

const BD: &str = "__bd";

/// Rows of a fold's state: for steps `(__bd, __counts, __times, __ttc)`, for trends
/// `(__bd, __entered, __converted)` (per-bucket lists).
pub(crate) fn state_schema(kind: FoldKind) -> SchemaRef {
    let list = |name: &str, t: DataType| {
        Field::new(
            name,
            DataType::List(Arc::new(Field::new_list_field(t, true))),
            false,
        )
    };
    let f64_list = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
    let mut fields = vec![Field::new(BD, DataType::Utf8, false)];
    match kind {
        FoldKind::Steps { .. } => fields.extend([
            list("__counts", DataType::UInt64),
            list("__times", f64_list),
            list("__ttc", DataType::Float64),
        ]),
        FoldKind::Trends { .. } => fields.extend([
            list("__entered", DataType::UInt64),
            list("__converted", DataType::UInt64),
        ]),
    }
    Arc::new(Schema::new(fields))
}

/// Per breakdown value: step counts and conversion times (seconds).
#[derive(Debug, Default, Clone)]
pub(super) struct Line {
    pub counts: Vec<u64>,
    pub times: Vec<Vec<f64>>,
    /// Seconds from `from_step` to `to_step` of converting actors.
    pub ttc: Vec<f64>,
}

impl Line {
    pub(super) fn new(steps: usize) -> Self {
        Self {
            counts: vec![0; steps],
            times: vec![Vec::new(); steps],
            ttc: Vec::new(),
        }
    }

    pub(super) fn absorb(&mut self, other: Line) {
        for (k, (c, t)) in other.counts.into_iter().zip(other.times).enumerate() {
            if let Some(mine) = self.counts.get_mut(k) {
                *mine += c;
            }
            if let Some(mine) = self.times.get_mut(k) {
                mine.extend(t);
            }
        }
        self.ttc.extend(other.ttc);
    }
}

/// A fold in progress.
#[derive(Debug)]
pub(crate) struct Fold {
    kind: FoldKind,
    /// Steps: per breakdown value ("" without one).
    pub(super) lines: HashMap<String, Line>,
    /// Trends: per breakdown value, (entered, converted) per bucket.
    pub(super) trends: HashMap<String, Vec<(u64, u64)>>,
}

impl Fold {
    pub(crate) fn new(kind: FoldKind) -> Self {
        Self {
            kind,
            lines: HashMap::new(),
            trends: HashMap::new(),
        }
    }

    /// Adds the outcomes of a batch of actors (the funnel's list column).
    pub(crate) fn add_outcomes(&mut self, list: &ArrayRef) -> Result<()> {
        let list = list
            .as_list_opt::<i32>()
            .ok_or_else(|| Error::Internal("funnel output is a list".into()))?;
        let items = list_items(list);
        match self.kind {
            FoldKind::Steps {
                steps,
                from_step,
                to_step,
            } => self.add_steps(&items, steps, (from_step, to_step)),
            FoldKind::Trends { buckets } => self.add_trends(&items, buckets),
        }
    }

    fn add_steps(&mut self, items: &RecordBatch, n: usize, (f, t): (usize, usize)) -> Result<()> {
        let bd: StringArray = crate::column_as(items, 0, &DataType::Utf8)?;
        let bits: UInt32Array = crate::column_as(items, 1, &DataType::UInt32)?;
        let times = (0..n)
            .map(|k| crate::column_as::<Int64Array>(items, 2 + k, &DataType::Int64))
            .collect::<Result<Vec<_>>>()?;
        for i in 0..items.num_rows() {
            let line = self.line(if bd.is_null(i) { "" } else { bd.value(i) }, n)?;
            let b = bits.value(i);
            let at = |k: usize| (!times[k].is_null(i)).then(|| times[k].value(i));
            let mut prev: Option<i64> = None;
            for k in (0..n).filter(|k| b & (1 << k) != 0) {
                line.counts[k] += 1;
                let t = at(k);
                if let (Some(p), Some(t)) = (prev, t) {
                    let dt = (t - p) as f64 / 1e6;
                    if dt > 0.0 {
                        line.times[k].push(dt);
                    }
                }
                prev = t;
            }
            if b & (1 << f) != 0
                && b & (1 << t) != 0
                && let (Some(a), Some(z)) = (at(f), at(t))
            {
                line.ttc.push((z - a) as f64 / 1e6);
            }
        }
        Ok(())
    }

    /// The line of `value`, made when new (a lookup without an allocation otherwise).
    fn line(&mut self, value: &str, steps: usize) -> Result<&mut Line> {
        if !self.lines.contains_key(value) {
            self.lines.insert(value.to_string(), Line::new(steps));
        }
        self.lines
            .get_mut(value)
            .ok_or_else(|| Error::Internal("funnel fold: a line just made is missing".into()))
    }

    fn add_trends(&mut self, items: &RecordBatch, buckets: usize) -> Result<()> {
        let bd: StringArray = crate::column_as(items, 0, &DataType::Utf8)?;
        let bucket: Int32Array = crate::column_as(items, 1, &DataType::Int32)?;
        let conv: BooleanArray = crate::column_as(items, 2, &DataType::Boolean)?;
        for i in 0..items.num_rows() {
            let value = if bd.is_null(i) { "" } else { bd.value(i) };
            let line = self
                .trends
                .entry(value.to_string())
                .or_insert_with(|| vec![(0, 0); buckets]);
            if let Some(slot) = usize::try_from(bucket.value(i))
                .ok()
                .and_then(|b| line.get_mut(b))
            {
                slot.0 += 1;
                slot.1 += u64::from(conv.value(i));
            }
        }
        Ok(())
    }

    /// Merges rows of [`state_schema`].
    pub(crate) fn merge(&mut self, batch: &RecordBatch) -> Result<()> {
        let bd: StringArray = crate::column_as(batch, 0, &DataType::Utf8)?;
        let lists = |i: usize| {
            batch
                .column(i)
                .as_list_opt::<i32>()
                .cloned()
                .ok_or_else(|| Error::Internal(format!("fold state column {i} is not a list")))
        };
        match self.kind {
            FoldKind::Steps { steps, .. } => {
                let (counts, times, ttc) = (lists(1)?, lists(2)?, lists(3)?);
                for row in 0..batch.num_rows() {
                    let mut other = Line::new(steps);
                    other.counts = u64s(&counts.value(row))?;
                    let per_step = times.value(row);
                    let per_step = per_step
                        .as_list_opt::<i32>()
                        .ok_or_else(|| Error::Internal("times are lists".into()))?;
                    other.times = (0..per_step.len())
                        .map(|k| f64s(&per_step.value(k)))
                        .collect::<Result<_>>()?;
                    other.ttc = f64s(&ttc.value(row))?;
                    self.line(bd.value(row), steps)?.absorb(other);
                }
            }
            FoldKind::Trends { buckets } => {
                let (entered, converted) = (lists(1)?, lists(2)?);
                for row in 0..batch.num_rows() {
                    let line = self
                        .trends
                        .entry(bd.value(row).to_string())
                        .or_insert_with(|| vec![(0, 0); buckets]);
                    let (e, c) = (u64s(&entered.value(row))?, u64s(&converted.value(row))?);
                    for (slot, (e, c)) in line.iter_mut().zip(e.into_iter().zip(c)) {
                        slot.0 += e;
                        slot.1 += c;
                    }
                }
            }
        }
        Ok(())
    }

    /// The state as rows of [`state_schema`].
    pub(crate) fn to_batch(&self) -> Result<RecordBatch> {
        let schema = state_schema(self.kind);
        let mut bd = StringBuilder::new();
        let columns: Vec<ArrayRef> = match self.kind {
            FoldKind::Steps { .. } => {
                let mut counts = ListBuilder::new(UInt64Builder::new());
                let mut times = ListBuilder::new(ListBuilder::new(Float64Builder::new()));
                let mut ttc = ListBuilder::new(Float64Builder::new());
                for (value, line) in &self.lines {
                    bd.append_value(value);
                    counts.append_value(line.counts.iter().map(|c| Some(*c)));
                    for step in &line.times {
                        times.values().append_value(step.iter().map(|t| Some(*t)));
                    }
                    times.append(true);
                    ttc.append_value(line.ttc.iter().map(|t| Some(*t)));
                }
                vec![
                    Arc::new(bd.finish()),
                    Arc::new(counts.finish()),
                    Arc::new(times.finish()),
                    Arc::new(ttc.finish()),
                ]
            }
            FoldKind::Trends { .. } => {
                let mut entered = ListBuilder::new(UInt64Builder::new());
                let mut converted = ListBuilder::new(UInt64Builder::new());
                for (value, line) in &self.trends {
                    bd.append_value(value);
                    entered.append_value(line.iter().map(|s| Some(s.0)));
                    converted.append_value(line.iter().map(|s| Some(s.1)));
                }
                vec![
                    Arc::new(bd.finish()),
                    Arc::new(entered.finish()),
                    Arc::new(converted.finish()),
                ]
            }
        };
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// Bytes the state holds (about).
    pub(crate) fn size(&self) -> usize {
        let line = |l: &Line| {
            l.counts.len() * 8
                + l.ttc.len() * 8
                + l.times.iter().map(|t| t.len() * 8).sum::<usize>()
        };
        let steps: usize = self.lines.iter().map(|(k, l)| k.len() + 64 + line(l)).sum();
        let trends: usize = self
            .trends
            .iter()
            .map(|(k, v)| k.len() + 64 + v.len() * 16)
            .sum();
        steps + trends
    }
}

fn u64s(a: &ArrayRef) -> Result<Vec<u64>> {
    let a = a
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| Error::Internal("fold counts are UInt64".into()))?;
    Ok(a.iter().map(|v| v.unwrap_or(0)).collect())
}

fn f64s(a: &ArrayRef) -> Result<Vec<f64>> {
    let a = a
        .as_any()
        .downcast_ref::<Float64Array>()
        .ok_or_else(|| Error::Internal("fold times are Float64".into()))?;
    Ok(a.iter().flatten().collect())
}

/// The items of the rows of a list of structs as one batch: only the range its offsets cover
/// (an output batch may be a slice of a larger array, sharing all of its values).
pub(super) fn list_items(list: &datafusion::arrow::array::ListArray) -> RecordBatch {
    let offsets = list.value_offsets();
    let (start, end) = (
        offsets.first().copied().unwrap_or(0) as usize,
        offsets.last().copied().unwrap_or(0) as usize,
    );
    RecordBatch::from(list.values().as_struct().slice(start, end - start))
}
