//! The parameters of herd's functions (a request's bucket bounds, a funnel's step masks, a
//! trailing window's cover table…), passed as the function's last argument: a text literal
//! holding JSON. The functions themselves are stateless and registered by name, so a plan
//! that crosses to a worker carries its parameters in its expressions, in DataFusion's own
//! protobuf form, and `EXPLAIN` shows them.

use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Expr, lit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The literal argument carrying `params`.
pub(crate) fn arg<T: Serialize>(params: &T) -> Expr {
    // Serializing plain data (numbers, strings, vectors) cannot fail.
    lit(serde_json::to_string(params).unwrap_or_default())
}

/// The parameters of `function` from its argument `value`.
pub(crate) fn of<T: DeserializeOwned>(function: &str, value: &ColumnarValue) -> Result<T> {
    match value {
        ColumnarValue::Scalar(s) => from_scalar(function, s),
        ColumnarValue::Array(_) => Err(bad(function, "not a literal")),
    }
}

/// The parameters of aggregate `function` from its argument expression `expr`.
pub(crate) fn of_expr<T: DeserializeOwned>(
    function: &str,
    expr: Option<&std::sync::Arc<dyn PhysicalExpr>>,
) -> Result<T> {
    let literal = expr
        .and_then(|e| e.downcast_ref::<Literal>())
        .ok_or_else(|| bad(function, "missing, or not a literal"))?;
    from_scalar(function, literal.value())
}

fn from_scalar<T: DeserializeOwned>(function: &str, value: &ScalarValue) -> Result<T> {
    match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => {
            serde_json::from_str(s).map_err(|e| bad(function, &e.to_string()))
        }
        _ => Err(bad(function, "not text")),
    }
}

fn bad(function: &str, what: &str) -> DataFusionError {
    DataFusionError::Execution(format!("{function}: parameters argument: {what}"))
}
