//! `herd_event_mask(event)`: the OR of the bit masks of the event names an event equals, as a
//! DataFusion scalar function configured with one request's `(name, mask)` pairs.
//!
//! A funnel marks each event with the steps it matches; for a step that is an event name
//! alone, this replaces one `CASE WHEN event = name` per step (every row compared with every
//! name, twice when the filter above is pushed down). Event files are sorted by event name,
//! so a row whose view equals the previous row's reuses its mask: almost every row costs one
//! 16-byte comparison.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The mask function of one request.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EventMaskUdf {
    masks: Vec<(String, u32)>,
    signature: Signature,
}

impl EventMaskUdf {
    /// `herd_event_mask(event)` → UInt32: the OR of the masks of the names equal to the event
    /// (0 when none is, or the event is null).
    pub fn expr(masks: Vec<(String, u32)>, event: Expr) -> Expr {
        let udf = ScalarUDF::new_from_impl(Self {
            masks,
            signature: Signature::uniform(
                1,
                vec![DataType::Utf8View, DataType::Utf8, DataType::LargeUtf8],
                Volatility::Immutable,
            ),
        });
        udf.call(vec![event])
    }

    fn mask(&self, event: &str) -> u32 {
        self.masks
            .iter()
            .filter(|(name, _)| name == event)
            .fold(0, |m, (_, bits)| m | bits)
    }
}

impl ScalarUDFImpl for EventMaskUdf {
    fn name(&self) -> &str {
        "herd_event_mask"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return Err(DataFusionError::Internal(
                "herd_event_mask takes one argument".into(),
            ));
        };
        let array = match arg {
            ColumnarValue::Scalar(s) => {
                let mask = match s {
                    ScalarValue::Utf8View(v) | ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) => {
                        v.as_deref().map_or(0, |e| self.mask(e))
                    }
                    other => {
                        return Err(DataFusionError::Internal(format!(
                            "herd_event_mask: expected a string, got {other:?}"
                        )));
                    }
                };
                return Ok(ColumnarValue::Scalar(ScalarValue::UInt32(Some(mask))));
            }
            ColumnarValue::Array(a) => a,
        };
        let out: UInt32Array = match array.data_type() {
            DataType::Utf8View => {
                let events = array.as_string_view();
                let mut last: Option<(u128, u32)> = None;
                events
                    .views()
                    .iter()
                    .enumerate()
                    .map(|(row, &view)| {
                        if events.is_null(row) {
                            return 0;
                        }
                        // Equal views of one array are equal values.
                        match last {
                            Some((v, m)) if v == view => m,
                            _ => {
                                let m = self.mask(events.value(row));
                                last = Some((view, m));
                                m
                            }
                        }
                    })
                    .collect()
            }
            _ => {
                let cast = datafusion::arrow::compute::cast(array, &DataType::Utf8)?;
                cast.as_string::<i32>()
                    .iter()
                    .map(|e| e.map_or(0, |e| self.mask(e)))
                    .collect()
            }
        };
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{StringArray, StringViewArray};
    use datafusion::arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    fn run(udf: &EventMaskUdf, array: ArrayRef) -> Vec<u32> {
        let n = array.len();
        let args = ScalarFunctionArgs {
            arg_fields: vec![Arc::new(Field::new("e", array.data_type().clone(), true))],
            args: vec![ColumnarValue::Array(array)],
            number_rows: n,
            return_field: Arc::new(Field::new("m", DataType::UInt32, false)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let ColumnarValue::Array(out) = udf.invoke_with_args(args).expect("invoke") else {
            panic!("an array");
        };
        out.as_primitive::<datafusion::arrow::datatypes::UInt32Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn masks_by_name_over_views_and_plain_strings() {
        let udf = EventMaskUdf {
            masks: vec![
                ("$pageview".into(), 1),
                ("a_rather_long_event_name".into(), 2),
                ("$pageview".into(), 8),
            ],
            signature: Signature::any(1, Volatility::Immutable),
        };
        let values = vec![
            Some("$pageview"),
            Some("$pageview"),
            Some("a_rather_long_event_name"),
            Some("a_rather_long_event_name"),
            Some("a_rather_long_event_nam"),
            None,
            Some("$pageview"),
        ];
        let want = vec![9, 9, 2, 2, 0, 0, 9];
        assert_eq!(
            run(&udf, Arc::new(StringViewArray::from(values.clone()))),
            want
        );
        assert_eq!(run(&udf, Arc::new(StringArray::from(values))), want);
    }
}
