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

/// The buckets one call of the function puts timestamps in: `[first, end)` in equally long
/// buckets (a division per row, nothing built per batch), or listed starts (a binary search).
#[derive(Debug)]
enum Bucketing {
    Uniform { first: i64, end: i64, width: i64 },
    Listed(Vec<i64>),
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
            } if width > 0 => Self::Uniform {
                first,
                end: first.saturating_add((buckets as i64).saturating_mul(width)),
                width,
            },
            Bounds::Uniform { first, .. } => Self::Listed(vec![first]),
            Bounds::Listed(bounds) => Self::Listed(bounds),
        }
    }

    fn index(&self, t: i64) -> Option<i32> {
        let i = match self {
            Self::Uniform { first, end, width } => {
                if t < *first || t >= *end {
                    return None;
                }
                (t - first) / width
            }
            Self::Listed(bounds) => {
                let (first, last) = (*bounds.first()?, *bounds.last()?);
                if t < first || t >= last {
                    return None;
                }
                bounds.partition_point(|b| *b <= t) as i64 - 1
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equally_long_buckets_index_as_listed_ones() {
        let (first, width, buckets) = (1_000i64, 60i64, 24usize);
        let bounds: Vec<i64> = (0..=buckets as i64).map(|i| first + i * width).collect();
        let uniform = Bucketing::new(Bounds::Uniform {
            first,
            width,
            buckets,
        });
        let listed = Bucketing::new(Bounds::Listed(bounds));
        for t in (first - 2 * width)..(first + (buckets as i64 + 2) * width) {
            assert_eq!(uniform.index(t), listed.index(t), "t = {t}");
        }
        assert_eq!(uniform.index(first), Some(0));
        assert_eq!(uniform.index(first + 24 * width - 1), Some(23));
        assert_eq!(uniform.index(first + 24 * width), None);
        assert_eq!(uniform.index(first - 1), None);
    }

    #[test]
    fn bounds_travel_as_json() {
        let json = serde_json::to_string(&Bounds::Listed(vec![0, 5, 9])).expect("json");
        let back: Bounds = serde_json::from_str(&json).expect("parse");
        assert_eq!(Bucketing::new(back).index(6), Some(1));
    }
}
