//! `herd_event_mask(event, masks)`: the OR of the bit masks of the event names an event
//! equals, as a DataFusion scalar function given one request's `(name, mask)` pairs.
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

/// `herd_event_mask(event, masks)`: the function, registered by name; the `(name, mask)`
/// pairs are its second argument ([`crate::params`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EventMaskUdf {
    signature: Signature,
}

/// The masks one call of the function applies.
#[derive(Debug)]
struct Masks(Vec<(String, u32)>);

impl EventMaskUdf {
    /// `herd_event_mask(event, masks)` → UInt32: the OR of the masks of the names equal to
    /// the event (0 when none is, or the event is null).
    pub fn expr(masks: Vec<(String, u32)>, event: Expr) -> Expr {
        Self::udf().call(vec![event, crate::params::arg(&masks)])
    }

    /// The function.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::any(2, Volatility::Immutable),
        })
    }
}

impl Masks {
    fn mask(&self, event: &str) -> u32 {
        self.0
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
        let [arg, masks] = args.args.as_slice() else {
            return Err(DataFusionError::Internal(
                "herd_event_mask takes an event and the masks".into(),
            ));
        };
        let masks = Masks(crate::params::of("herd_event_mask", masks)?);
        let array = match arg {
            ColumnarValue::Scalar(s) => {
                let mask = match s {
                    ScalarValue::Utf8View(v) | ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) => {
                        v.as_deref().map_or(0, |e| masks.mask(e))
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
                                let m = masks.mask(events.value(row));
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
                    .map(|e| e.map_or(0, |e| masks.mask(e)))
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

    fn run(masks: &[(String, u32)], array: ArrayRef) -> Vec<u32> {
        let n = array.len();
        let udf = EventMaskUdf::udf();
        let masks = ScalarValue::Utf8(Some(serde_json::to_string(masks).expect("json")));
        let args = ScalarFunctionArgs {
            arg_fields: vec![
                Arc::new(Field::new("e", array.data_type().clone(), true)),
                Arc::new(Field::new("m", DataType::Utf8, false)),
            ],
            args: vec![ColumnarValue::Array(array), ColumnarValue::Scalar(masks)],
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
        let udf = vec![
            ("$pageview".to_string(), 1),
            ("a_rather_long_event_name".to_string(), 2),
            ("$pageview".to_string(), 8),
        ];
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
