//! `herd_bucket(timestamp, bounds)`: the index of the time bucket an event falls in, as a
//! DataFusion scalar function given one request's [`Buckets`] as its second argument.
//!
//! Bucket starts are computed once per request in the request's timezone, so the per-row work
//! is a division when all buckets have the same length (UTC days, hours, weeks in a zone
//! without DST in the range) and a binary search in a short sorted list otherwise.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int32Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::calendar::Buckets;

/// `herd_bucket(timestamp, bounds)`: the function, registered by name; the bounds are
/// its second argument ([`crate::params`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BucketUdf {
    signature: Signature,
}

/// Bucket bounds as they travel: equally long buckets as their first start, length and
/// count; others listed.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Bounds {
    Uniform {
        first: i64,
        width: i64,
        buckets: usize,
    },
    Listed(Vec<i64>),
}

/// The buckets one call of the function puts timestamps in.
#[derive(Debug)]
struct Bucketing {
    bounds: Vec<i64>,
    /// Bucket length when all buckets are equally long.
    uniform: Option<i64>,
}

impl BucketUdf {
    /// `herd_bucket(timestamp, bounds)` → bucket index (Int32, counted from the first
    /// lookback bucket), `NULL` outside the buckets.
    pub fn expr(buckets: &Buckets, timestamp: Expr) -> Expr {
        let bounds = &buckets.bounds;
        let width = bounds.get(1).zip(bounds.first()).map(|(b, a)| b - a);
        let uniform = width.filter(|w| *w > 0 && bounds.windows(2).all(|p| p[1] - p[0] == *w));
        let param = match (uniform, bounds.first()) {
            (Some(width), Some(&first)) => Bounds::Uniform {
                first,
                width,
                buckets: bounds.len() - 1,
            },
            _ => Bounds::Listed(bounds.clone()),
        };
        Self::udf().call(vec![timestamp, crate::params::arg(&param)])
    }

    /// The function.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::any(2, Volatility::Immutable),
        })
    }
}

impl Bucketing {
    fn new(bounds: Bounds) -> Self {
        match bounds {
            Bounds::Uniform {
                first,
                width,
                buckets,
            } => Self {
                bounds: (0..=buckets as i64)
                    .map(|i| first.saturating_add(i.saturating_mul(width)))
                    .collect(),
                uniform: (width > 0).then_some(width),
            },
            Bounds::Listed(bounds) => Self {
                bounds,
                uniform: None,
            },
        }
    }

    fn index(&self, t: i64) -> Option<i32> {
        let first = *self.bounds.first()?;
        let last = *self.bounds.last()?;
        if t < first || t >= last {
            return None;
        }
        let i = match self.uniform {
            Some(w) => (t - first) / w,
            None => self.bounds.partition_point(|b| *b <= t) as i64 - 1,
        };
        i32::try_from(i).ok()
    }
}

impl ScalarUDFImpl for BucketUdf {
    fn name(&self) -> &str {
        "herd_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg, bounds] = args.args.as_slice() else {
            return Err(DataFusionError::Internal(
                "herd_bucket takes a timestamp and its bounds".into(),
            ));
        };
        let bucketing = Bucketing::new(crate::params::of("herd_bucket", bounds)?);
        match arg {
            ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(t, _)) => Ok(
                ColumnarValue::Scalar(ScalarValue::Int32(t.and_then(|t| bucketing.index(t)))),
            ),
            ColumnarValue::Scalar(other) => Err(DataFusionError::Internal(format!(
                "herd_bucket: expected a µs timestamp, got {other:?}"
            ))),
            ColumnarValue::Array(array) => {
                let ts = array
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .ok_or_else(|| {
                        DataFusionError::Internal(format!(
                            "herd_bucket: expected a µs timestamp array, got {}",
                            array.data_type()
                        ))
                    })?;
                let out: Int32Array = if ts.null_count() == 0 {
                    ts.values().iter().map(|t| bucketing.index(*t)).collect()
                } else {
                    ts.iter()
                        .map(|t| t.and_then(|t| bucketing.index(t)))
                        .collect()
                };
                Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
            }
        }
    }
}
