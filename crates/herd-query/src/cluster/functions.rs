//! herd's functions as a worker looks them up by name: every scalar and aggregate function
//! herd's plans use besides DataFusion's own (the JSON functions of
//! `datafusion-functions-json` included). Their parameters travel as arguments
//! ([`crate::params`]), so a name is all a worker needs.

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

use crate::bucket::BucketUdf;
use crate::event_mask::EventMaskUdf;
use crate::retention::{CellsUdf, RetentionUdaf};
use crate::trends::CoverUdf;
use crate::unique::UniqueUdaf;

/// herd's scalar functions.
pub(crate) fn scalar() -> Vec<Arc<ScalarUDF>> {
    let herd = [BucketUdf::udf(), EventMaskUdf::udf(), CellsUdf::udf()]
        .into_iter()
        .chain(CoverUdf::udfs())
        .map(Arc::new);
    use datafusion_functions_json::udfs;
    herd.chain([
        udfs::json_as_text_udf(),
        udfs::json_get_udf(),
        udfs::json_get_str_udf(),
        udfs::json_get_int_udf(),
        udfs::json_get_float_udf(),
        udfs::json_get_bool_udf(),
        udfs::json_get_json_udf(),
        udfs::json_contains_udf(),
        udfs::json_length_udf(),
    ])
    .collect()
}

/// herd's aggregate functions.
pub(crate) fn aggregate() -> Vec<Arc<AggregateUDF>> {
    vec![
        Arc::new(UniqueUdaf::udaf()),
        Arc::new(RetentionUdaf::udaf()),
    ]
}

/// `builder` with herd's functions registered next to DataFusion's.
pub(crate) fn register(mut builder: SessionStateBuilder) -> SessionStateBuilder {
    builder
        .scalar_functions()
        .get_or_insert_with(Vec::new)
        .extend(scalar());
    builder
        .aggregate_functions()
        .get_or_insert_with(Vec::new)
        .extend(aggregate());
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_has_its_own_name() {
        let mut names: Vec<String> = scalar().iter().map(|f| f.name().to_string()).collect();
        names.extend(aggregate().iter().map(|f| f.name().to_string()));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(names.contains(&"herd_bucket".to_string()));
        assert!(names.contains(&"herd_retention".to_string()));
    }
}
