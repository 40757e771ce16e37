//! Reading Arrow columns of query results as the concrete array types the folds need.

use crate::{Error, Result};

/// Column `i` of `batch` cast to `data_type` and downcast to its array type `A`.
pub(crate) fn column_as<A: datafusion::arrow::array::Array + Clone + 'static>(
    batch: &datafusion::arrow::array::RecordBatch,
    i: usize,
    data_type: &datafusion::arrow::datatypes::DataType,
) -> Result<A> {
    let a = datafusion::arrow::compute::cast(batch.column(i), data_type)?;
    a.as_any()
        .downcast_ref::<A>()
        .cloned()
        .ok_or_else(|| Error::Internal(format!("column {i} is not {data_type}")))
}

/// The non-null values of string column `i` of `batches`.
pub(crate) fn strings(
    batches: &[datafusion::arrow::array::RecordBatch],
    i: usize,
) -> Result<Vec<String>> {
    use datafusion::arrow::array::{Array, StringArray};
    let mut out = Vec::new();
    for b in batches {
        let a: StringArray = column_as(b, i, &datafusion::arrow::datatypes::DataType::Utf8)?;
        out.extend(
            (0..a.len())
                .filter(|r| !a.is_null(*r))
                .map(|r| a.value(r).to_string()),
        );
    }
    Ok(out)
}
