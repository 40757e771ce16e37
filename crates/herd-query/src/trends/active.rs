//! Weekly and monthly active actors over hour or day buckets, as plan steps (spec §2.2): an
//! actor active in unit `u` (an hour or a day) counts in every visible bucket starting in
//! `[start(u), start(u) + window)`, the bucket range `cover(u) = [lo(u), hi(u)]`.
//!
//! Per actor, ordered by unit, each active unit adds the buckets of its cover not covered by
//! the actor's previous unit (`hi` grows with `u`, so the union of the covers is the union of
//! these increments): `[max(lo(u), hi(prev) + 1), hi(u)]`. Each increment is a `+1` at its
//! first bucket and a `-1` after its last; the plan sums them per bucket and the fold takes
//! the running sum. A window function (`lag`) over the distinct (actor, unit) rows does the
//! per-actor part, so it is all DataFusion.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int32Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result as DFResult, ScalarValue};
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::functions_nested::expr_fn::make_array;
use datafusion::functions_window::expr_fn::lag;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprFunctionExt, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, lit, when,
};
use datafusion::prelude::{DataFrame, col};

use super::{ACTOR, BUCKET, V};
use crate::Result;
use crate::calendar::Buckets;

const LO: &str = "__lo";
const HI: &str = "__hi";
const PREV: &str = "__prev_hi";
const CODE: &str = "__code";

/// `cover(u)` of every unit of `units` over the visible buckets of `visible`, clipped to
/// them (`lo > hi` where a unit covers no visible bucket).
pub(crate) fn covers(units: &Buckets, window: usize, visible: &Buckets) -> Vec<(i32, i32)> {
    let starts = visible.starts();
    let count = units.bounds.len().saturating_sub(1);
    (0..count)
        .map(|u| {
            let s = units.bounds[u];
            let e = units.bounds.get(u + window).copied().unwrap_or(i64::MAX);
            let lo = starts.partition_point(|b| *b < s) as i32;
            let hi = starts.partition_point(|b| *b < e) as i32 - 1;
            (lo, hi)
        })
        .collect()
}

/// `(keys…, __bucket, __v)` rows of `+1`/`-1` changes of the number of active actors from
/// `rows` (`keys…`, `__actor`, `__bucket` = unit index); the fold sums them in bucket order.
pub(crate) fn changes(rows: DataFrame, keys: &[Expr], cover: Vec<(i32, i32)>) -> Result<DataFrame> {
    let lo_table: Vec<i32> = cover.iter().map(|c| c.0).collect();
    let hi_table: Vec<i32> = cover.iter().map(|c| c.1).collect();
    let lo = |unit: Expr| CoverUdf::udf(COVER_LO).call(vec![unit, crate::params::arg(&lo_table)]);
    let hi = |unit: Expr| CoverUdf::udf(COVER_HI).call(vec![unit, crate::params::arg(&hi_table)]);
    let with_actor = |rest: Vec<Expr>| -> Vec<Expr> {
        keys.iter()
            .cloned()
            .chain([col(ACTOR)])
            .chain(rest)
            .collect()
    };
    let units = rows
        .select(with_actor(vec![col(BUCKET)]))?
        .filter(col(BUCKET).is_not_null())?
        .distinct()?
        .select(with_actor(vec![
            col(BUCKET),
            lo(col(BUCKET)).alias(LO),
            hi(col(BUCKET)).alias(HI),
        ]))?
        .filter(col(LO).lt_eq(col(HI)))?;
    let partition: Vec<Expr> = keys.iter().cloned().chain([col(ACTOR)]).collect();
    let prev = lag(col(HI), Some(1), None)
        .partition_by(partition)
        .order_by(vec![col(BUCKET).sort(true, false)])
        .build()?
        .alias(PREV);
    let first = when(col(PREV).is_null().or(col(PREV).lt(col(LO))), col(LO))
        .otherwise(col(PREV) + lit(1))?;
    let increments = units
        .window(vec![prev])?
        .select(
            keys.iter()
                .cloned()
                .chain([first.alias(LO), col(HI)])
                .collect::<Vec<Expr>>(),
        )?
        .filter(col(LO).lt_eq(col(HI)))?;
    // Both ends in one list (even codes +1 at a bucket, odd codes -1 after one), unnested.
    let code = make_array(vec![col(LO) * lit(2), (col(HI) + lit(1)) * lit(2) + lit(1)]);
    let by: Vec<Expr> = keys.iter().cloned().chain([col(BUCKET)]).collect();
    let delta = lit(1i64) - (col(CODE) % lit(2)) * lit(2i64);
    Ok(increments
        .select(
            keys.iter()
                .cloned()
                .chain([code.alias(CODE)])
                .collect::<Vec<Expr>>(),
        )?
        .unnest_columns(&[CODE])?
        .select(
            keys.iter()
                .cloned()
                .chain([(col(CODE) / lit(2)).alias(BUCKET), delta.alias(V)])
                .collect::<Vec<Expr>>(),
        )?
        .aggregate(by, vec![sum(col(V)).alias(V)])?)
}

const COVER_LO: &str = "herd_cover_lo";
const COVER_HI: &str = "herd_cover_hi";

/// `herd_cover_lo(unit, table)` / `herd_cover_hi(unit, table)`: the first and last visible
/// bucket a trailing window starting at `unit` covers (Int32; NULL outside the table, the
/// second argument, see [`crate::params`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct CoverUdf {
    name: &'static str,
    signature: Signature,
}

impl CoverUdf {
    /// The function named `name` (`herd_cover_lo` or `herd_cover_hi`).
    fn udf(name: &'static str) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            name,
            signature: Signature::exact(
                vec![DataType::Int32, DataType::Utf8],
                Volatility::Immutable,
            ),
        })
    }

    /// Both functions.
    pub(crate) fn udfs() -> [ScalarUDF; 2] {
        [Self::udf(COVER_LO), Self::udf(COVER_HI)]
    }
}

fn at(table: &[i32], unit: i32) -> Option<i32> {
    usize::try_from(unit)
        .ok()
        .and_then(|u| table.get(u))
        .copied()
}

impl ScalarUDFImpl for CoverUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let table: Vec<i32> = match args.args.get(1) {
            Some(t) => crate::params::of(self.name, t)?,
            None => Vec::new(),
        };
        match args.args.as_slice() {
            [ColumnarValue::Scalar(ScalarValue::Int32(u)), _] => Ok(ColumnarValue::Scalar(
                ScalarValue::Int32(u.and_then(|u| at(&table, u))),
            )),
            [ColumnarValue::Array(a), _] => {
                let units = a.as_any().downcast_ref::<Int32Array>().ok_or_else(|| {
                    DataFusionError::Internal(format!("{}: expected Int32", self.name))
                })?;
                let out: Int32Array = units
                    .iter()
                    .map(|u| u.and_then(|u| at(&table, u)))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
            }
            other => Err(DataFusionError::Internal(format!(
                "{}: an Int32 and the table, got {other:?}",
                self.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{Interval, TimeRange, WeekStart};

    #[test]
    fn a_day_covers_the_seven_days_from_it() {
        let tz = chrono_tz::UTC;
        let day = 86_400_000_000i64;
        let range = TimeRange {
            tz,
            from: 10 * day,
            to: 13 * day,
        };
        let visible = Buckets::new(range, Interval::Day, WeekStart::Sunday, 0).expect("days");
        let units = Buckets::new(range, Interval::Day, WeekStart::Sunday, 7).expect("units");
        let c = covers(&units, 7, &visible);
        // Unit 0 is day 3: its window [3, 10) ends before the first visible day (10).
        assert!(c[0].0 > c[0].1);
        // Day 4 covers [4, 11): visible day 10 only.
        assert_eq!(c[1], (0, 0));
        // Day 10 (unit 7) covers days 10..=13 (all visible ones).
        assert_eq!(c[7], (0, 3));
        assert_eq!(c.len(), 11);
    }
}
