//! The trends plan's `(__series, __label, __order, __bucket, __v)` rows as the answer's
//! lines: zero-filled per bucket, in breakdown order (ranked values, then null, then "other"),
//! with running sums for trailing-window changes and cumulative displays.

use std::collections::BTreeMap;

use datafusion::arrow::array::{
    Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::DataType;

use super::plan::Shape;
use super::resolve::Plan;
use super::{Display, SeriesResult};
use crate::{Error, Result};

/// One line being filled.
#[derive(Debug)]
struct Line {
    data: Vec<f64>,
    total: f64,
}

/// The lines of every series, series by series.
pub(super) fn lines(
    batches: &[RecordBatch],
    plans: &[Plan<'_>],
    shapes: &[Shape],
    breakdown: bool,
    display: Display,
    buckets: usize,
) -> Result<Vec<SeriesResult>> {
    let mut per_series: Vec<BTreeMap<(i32, String), Line>> =
        plans.iter().map(|_| BTreeMap::new()).collect();
    for b in batches {
        add_rows(b, &mut per_series, buckets)?;
    }
    let mut out = Vec::new();
    for ((p, shape), mut lines) in plans.iter().zip(shapes).zip(per_series) {
        if !breakdown && lines.is_empty() {
            lines.insert((0, String::new()), empty(buckets));
        }
        let name = p
            .series
            .name
            .clone()
            .or_else(|| p.series.event.clone())
            .unwrap_or_else(|| "All events".to_string());
        for ((_, label), line) in lines {
            out.push(finish(
                line,
                *shape,
                display,
                p.index,
                name.clone(),
                breakdown.then_some(label),
            ));
        }
    }
    Ok(out)
}

fn empty(buckets: usize) -> Line {
    Line {
        data: vec![0.0; buckets],
        total: 0.0,
    }
}

fn add_rows(
    b: &RecordBatch,
    per_series: &mut [BTreeMap<(i32, String), Line>],
    buckets: usize,
) -> Result<()> {
    let series: Int64Array = crate::column_as(b, 0, &DataType::Int64)?;
    let labels: StringArray = crate::column_as(b, 1, &DataType::Utf8)?;
    let order: Int32Array = crate::column_as(b, 2, &DataType::Int32)?;
    let bucket: Int32Array = crate::column_as(b, 3, &DataType::Int32)?;
    let values: Float64Array = crate::column_as(b, 4, &DataType::Float64)?;
    for row in 0..b.num_rows() {
        let lines = usize::try_from(series.value(row))
            .ok()
            .and_then(|s| per_series.get_mut(s))
            .ok_or_else(|| Error::Internal("trends: a row of no series".into()))?;
        let key = match labels.is_null(row) {
            true => (0, String::new()),
            false => (order.value(row), labels.value(row).to_string()),
        };
        let line = lines.entry(key).or_insert_with(|| empty(buckets));
        let v = if values.is_null(row) {
            0.0
        } else {
            values.value(row)
        };
        if bucket.is_null(row) {
            line.total += v;
        } else if let Some(slot) = usize::try_from(bucket.value(row))
            .ok()
            .and_then(|i| line.data.get_mut(i))
        {
            *slot += v;
        }
    }
    Ok(())
}

fn finish(
    mut line: Line,
    shape: Shape,
    display: Display,
    series_index: usize,
    label: String,
    breakdown_value: Option<String>,
) -> SeriesResult {
    let running = |data: &mut [f64]| {
        let mut acc = 0.0;
        for v in data.iter_mut() {
            acc += *v;
            *v = acc;
        }
    };
    if shape == Shape::Changes {
        running(&mut line.data);
    }
    if display == Display::TotalValue {
        return SeriesResult {
            series_index,
            label,
            breakdown_value,
            data: Vec::new(),
            count: line.total,
            aggregated_value: Some(line.total),
        };
    }
    let count = match display {
        Display::Cumulative => {
            running(&mut line.data);
            line.data.last().copied().unwrap_or(0.0)
        }
        _ => line.data.iter().sum(),
    };
    SeriesResult {
        series_index,
        label,
        breakdown_value,
        data: line.data,
        count,
        aggregated_value: None,
    }
}
