//! `herd_retention_cells(state, params)`: the cells of the cohort table one actor counts in, from its
//! [`super::udaf::RetentionUdaf`] state, as a list of codes `cohort × periods + period`
//! (period 0 is the cohort itself). Unnested and counted per code in the plan, these are the
//! table.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Builder, Int64Array, ListBuilder};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::RetentionType;
use crate::calendar::Buckets;

/// `herd_retention_cells(state, params)`: the function, registered by name; the query's
/// periods, cohort type and cohort buckets are its second argument ([`crate::params`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct CellsUdf {
    signature: Signature,
}

/// What one call of the function needs of the query.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Cells {
    periods: usize,
    first_time: bool,
    buckets: Buckets,
}

impl CellsUdf {
    pub(super) fn expr(
        periods: usize,
        kind: RetentionType,
        buckets: &Buckets,
        state: Expr,
    ) -> Expr {
        let params = Cells {
            periods,
            first_time: kind == RetentionType::FirstTime,
            buckets: buckets.clone(),
        };
        Self::udf().call(vec![state, crate::params::arg(&params)])
    }

    /// The function.
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::any(2, Volatility::Immutable),
        })
    }
}

impl Cells {
    /// The cells of one actor: `has(set, period)` reads its bitsets (0 targets, 1 returns).
    fn cells(&self, has: impl Fn(usize, usize) -> bool, first: Option<i64>, out: &mut Vec<i32>) {
        let n = self.periods;
        let cohorts: Vec<usize> = match (self.first_time, first) {
            (false, _) => (0..n).filter(|i| has(0, *i)).collect(),
            (true, None) => Vec::new(),
            (true, Some(t)) => self.buckets.index_of(t).into_iter().collect(),
        };
        for i in cohorts {
            out.push((i * n) as i32);
            out.extend(
                (1..n - i)
                    .filter(|k| has(1, i + k))
                    .map(|k| (i * n + k) as i32),
            );
        }
    }
}

impl ScalarUDFImpl for CellsUdf {
    fn name(&self) -> &str {
        "herd_retention_cells"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Int32,
            true,
        ))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let internal = |m: &str| DataFusionError::Internal(format!("herd_retention_cells: {m}"));
        let [ColumnarValue::Array(state), params] = args.args.as_slice() else {
            return Err(internal("the state and the parameters"));
        };
        let cells: Cells = crate::params::of("herd_retention_cells", params)?;
        let state = state
            .as_struct_opt()
            .ok_or_else(|| internal("the state is a struct"))?;
        let bits = state
            .column(0)
            .as_binary_opt::<i32>()
            .ok_or_else(|| internal("bits are binary"))?;
        let first = state
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| internal("the first time is Int64"))?;
        let words = cells.periods.div_ceil(64);
        let mut out = ListBuilder::new(Int32Builder::new());
        let mut codes = Vec::new();
        for row in 0..state.len() {
            let raw = bits.value(row);
            let word = |w: usize| -> u64 {
                raw.get(w * 8..w * 8 + 8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes)
            };
            let has = |set: usize, i: usize| word(set * words + i / 64) & (1 << (i % 64)) != 0;
            codes.clear();
            cells.cells(
                has,
                first.is_valid(row).then(|| first.value(row)),
                &mut codes,
            );
            out.append_value(codes.iter().map(|c| Some(*c)));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}
