//! Property filters (spec §2.5, §3.6 operators) as DataFusion expressions.
//!
//! An event property is read from the event's `properties` JSON text; a group property from the
//! *current* properties of the event's group of that type, joined from the groups table (see
//! [`crate::QueryEngine`]). Values are compared as PostHog's HogQL compares them: a property is
//! its JSON value as text (strings unquoted, numbers as written), `NULL` when absent or null.
//! Positive operators are false on a missing property; negative ones (`is_not`,
//! `not_icontains`, `not_regex`) are true; `is_not_set` is true for events without the group.
//!
//! Every value the user sent becomes a literal in an expression tree; nothing is spliced into
//! SQL text.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::functions::expr_fn::{contains, lower, regexp_like};
use datafusion::logical_expr::{Expr, cast, lit, not, try_cast};
use datafusion::prelude::{coalesce, col};
use datafusion::scalar::ScalarValue;
use datafusion_functions_json::functions::json_as_text;
use herd_core::GroupTypeMapping;

use crate::Error;

/// Comparison of a property with the filter's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// Equal to any of the values.
    Exact,
    /// Equal to none of the values (true when the property is missing).
    IsNot,
    /// Contains the value, case-insensitively.
    IContains,
    /// Does not contain the value (true when missing).
    NotIContains,
    /// Matches the regular expression.
    Regex,
    /// Does not match (true when missing).
    NotRegex,
    /// Numerically greater.
    Gt,
    /// Numerically greater or equal.
    Gte,
    /// Numerically less.
    Lt,
    /// Numerically less or equal.
    Lte,
    /// Present and not null.
    IsSet,
    /// Missing or null.
    IsNotSet,
    /// A date before the value.
    IsDateBefore,
    /// A date after the value.
    IsDateAfter,
}

/// Where a property is read from.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PropertySource {
    /// The event's own properties.
    #[default]
    Event,
    /// The current properties of the event's group of this type (by name).
    Group(String),
}

/// One property filter.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PropertyFilter {
    /// Property name.
    pub key: String,
    /// Event or group property.
    #[serde(default)]
    pub source: PropertySource,
    /// Comparison.
    pub operator: Operator,
    /// Values to compare with: any of them for `exact` / `is_not`, exactly one for the other
    /// comparisons, none for `is_set` / `is_not_set`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// How the members of a [`PropertyGroup`] combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BoolOp {
    /// All must hold.
    #[default]
    And,
    /// At least one must hold.
    Or,
}

/// Filters and nested groups combined with AND or OR. An empty group is true.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PropertyGroup {
    /// AND or OR.
    pub op: BoolOp,
    /// Leaf filters.
    pub filters: Vec<PropertyFilter>,
    /// Nested groups.
    pub groups: Vec<PropertyGroup>,
}

/// Most property filters one request may carry, over all its property groups.
pub const MAX_FILTERS: usize = 200;
/// Most property groups one request may carry (nested ones included).
pub const MAX_FILTER_GROUPS: usize = 100;
/// Deepest nesting of property groups: a request's top group is depth 1, a group in it 2.
pub const MAX_FILTER_DEPTH: usize = 10;
/// Most values of one filter (`exact` / `is_not` take a list).
pub const MAX_FILTER_VALUES: usize = 1000;

/// Counts a request's property groups against [`MAX_FILTERS`], [`MAX_FILTER_GROUPS`],
/// [`MAX_FILTER_DEPTH`] and [`MAX_FILTER_VALUES`] before anything is planned. Each group comes
/// with the field it was sent in; the error names the field where a limit was passed.
#[derive(Debug, Default)]
pub struct FilterBudget {
    filters: usize,
    groups: usize,
}

impl FilterBudget {
    /// Adds one top-level group (at `field`) and everything nested in it.
    pub fn add(&mut self, group: &PropertyGroup, field: &str) -> Result<(), Error> {
        self.add_at(group, field, 1)
    }

    fn add_at(&mut self, group: &PropertyGroup, field: &str, depth: usize) -> Result<(), Error> {
        if depth > MAX_FILTER_DEPTH {
            return Err(Error::invalid(
                field,
                format!("property groups nest at most {MAX_FILTER_DEPTH} levels deep"),
            ));
        }
        self.filters += group.filters.len();
        if self.filters > MAX_FILTERS {
            return Err(Error::invalid(
                &format!("{field}.filters"),
                format!("at most {MAX_FILTERS} property filters per request"),
            ));
        }
        for (i, f) in group.filters.iter().enumerate() {
            if f.values.len() > MAX_FILTER_VALUES {
                return Err(Error::invalid(
                    &format!("{field}.filters[{i}].values"),
                    format!("at most {MAX_FILTER_VALUES} values per filter"),
                ));
            }
        }
        self.groups += group.groups.len();
        if self.groups > MAX_FILTER_GROUPS {
            return Err(Error::invalid(
                &format!("{field}.groups"),
                format!("at most {MAX_FILTER_GROUPS} nested property groups per request"),
            ));
        }
        for (i, g) in group.groups.iter().enumerate() {
            self.add_at(g, &format!("{field}.groups[{i}]"), depth + 1)?;
        }
        Ok(())
    }
}

/// `parts` joined with AND or OR as a balanced tree: depth log2(n), so planning and every
/// recursive rewrite DataFusion applies stay shallow however many filters a request has (a
/// left-deep chain of ~700 overflowed a 2 MiB worker stack).
fn balanced(mut parts: Vec<Expr>, op: BoolOp) -> Option<Expr> {
    while parts.len() > 1 {
        let mut next = Vec::with_capacity(parts.len().div_ceil(2));
        let mut it = parts.into_iter();
        while let Some(a) = it.next() {
            next.push(match (it.next(), op) {
                (Some(b), BoolOp::And) => a.and(b),
                (Some(b), BoolOp::Or) => a.or(b),
                (None, _) => a,
            });
        }
        parts = next;
    }
    parts.pop()
}

impl PropertyGroup {
    /// Whether the group has no filters at all.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.groups.iter().all(PropertyGroup::is_empty)
    }

    /// Group-type indexes whose properties the filters read.
    pub fn group_indexes(
        &self,
        mapping: &GroupTypeMapping,
        field: &str,
        out: &mut BTreeSet<u8>,
    ) -> Result<(), Error> {
        for (i, f) in self.filters.iter().enumerate() {
            if let PropertySource::Group(name) = &f.source {
                out.insert(group_index(
                    mapping,
                    &format!("{field}.filters[{i}].group_type"),
                    name,
                )?);
            }
        }
        for (i, g) in self.groups.iter().enumerate() {
            g.group_indexes(mapping, &format!("{field}.groups[{i}]"), out)?;
        }
        Ok(())
    }

    /// The predicate, or `None` when the group is empty.
    pub fn to_expr(&self, mapping: &GroupTypeMapping, field: &str) -> Result<Option<Expr>, Error> {
        let mut parts = Vec::new();
        for (i, f) in self.filters.iter().enumerate() {
            parts.push(f.to_expr(mapping, &format!("{field}.filters[{i}]"))?);
        }
        for (i, g) in self.groups.iter().enumerate() {
            if let Some(e) = g.to_expr(mapping, &format!("{field}.groups[{i}]"))? {
                parts.push(e);
            }
        }
        Ok(balanced(parts, self.op))
    }
}

/// "The event is `event` (any event when `None`) and passes `filters`" for a step, exclusion
/// or retention entity at `field`; the group types its filters read are added to `joins`.
pub fn event_condition(
    mapping: &GroupTypeMapping,
    field: &str,
    event: Option<&str>,
    filters: &PropertyGroup,
    joins: &mut BTreeSet<u8>,
) -> Result<Expr, Error> {
    if event == Some("") {
        return Err(Error::invalid(
            &format!("{field}.event"),
            "empty event name (leave it unset for any event)",
        ));
    }
    let filters_field = format!("{field}.filters");
    filters.group_indexes(mapping, &filters_field, joins)?;
    let mut cond = match event {
        Some(e) => col(herd_core::schema::EVENT).eq(lit(e)),
        None => lit(true),
    };
    if let Some(f) = filters.to_expr(mapping, &filters_field)? {
        cond = cond.and(f);
    }
    Ok(cond)
}

/// The slot of a group type, or INVALID_ARGUMENT naming `field`.
pub fn group_index(mapping: &GroupTypeMapping, field: &str, name: &str) -> Result<u8, Error> {
    if name.is_empty() {
        return Err(Error::invalid(field, "group type required"));
    }
    mapping.index_of(name).ok_or_else(|| {
        let known = mapping.types().join(", ");
        Error::invalid(
            field,
            format!(
                "unknown group type {name:?} (known: {})",
                if known.is_empty() { "none" } else { &known }
            ),
        )
    })
}

/// The events column `$group_<index>`.
pub fn group_column(index: u8) -> &'static str {
    herd_core::schema::GROUP_COLUMNS[usize::from(index) % herd_core::MAX_GROUP_TYPES]
}

/// The events column `$group_<index>_num`: the group keys' actor numbers.
pub fn group_number_column(index: u8) -> &'static str {
    herd_core::schema::GROUP_NUM_COLUMNS[usize::from(index) % herd_core::MAX_GROUP_TYPES]
}

/// Column of the joined groups table holding the current properties of `$group_<index>`.
pub fn group_properties_column(index: u8) -> String {
    format!("__g{index}_properties")
}

/// Column of the joined groups table holding the key of `$group_<index>`.
pub fn group_key_column(index: u8) -> String {
    format!("__g{index}_key")
}

/// The property as text (`NULL` when missing or JSON null).
pub fn property_expr(
    mapping: &GroupTypeMapping,
    field: &str,
    source: &PropertySource,
    key: &str,
) -> Result<Expr, Error> {
    if key.is_empty() {
        return Err(Error::invalid(field, "property key required"));
    }
    let json = match source {
        PropertySource::Event => col(herd_core::schema::PROPERTIES),
        PropertySource::Group(name) => {
            let index = group_index(mapping, &format!("{field}.group_type"), name)?;
            col(group_properties_column(index))
        }
    };
    Ok(json_as_text(json, lit(key)))
}

/// A property cast to a float (`NULL` when it is not a number or numeric text).
pub fn numeric(expr: Expr) -> Expr {
    try_cast(expr, DataType::Float64)
}

fn micros_literal(v: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(v),
        Some("UTC".into()),
    ))
}

impl PropertyFilter {
    fn one_value(&self, field: &str) -> Result<&str, Error> {
        match self.values.as_slice() {
            [v] => Ok(v),
            _ => Err(Error::invalid(
                &format!("{field}.values"),
                format!(
                    "operator {:?} takes exactly one value, got {}",
                    self.operator,
                    self.values.len()
                ),
            )),
        }
    }

    fn number(&self, field: &str) -> Result<f64, Error> {
        let v = self.one_value(field)?;
        v.trim().parse::<f64>().map_err(|_| {
            Error::invalid(
                &format!("{field}.values"),
                format!("{v:?} is not a number (operator {:?})", self.operator),
            )
        })
    }

    fn date(&self, field: &str) -> Result<i64, Error> {
        let v = self.one_value(field)?;
        herd_core::time::parse_timestamp(v).ok_or_else(|| {
            Error::invalid(
                &format!("{field}.values"),
                format!("{v:?} is not a date (operator {:?})", self.operator),
            )
        })
    }

    fn regex(&self, field: &str) -> Result<String, Error> {
        let v = self.one_value(field)?;
        regex::Regex::new(v).map_err(|e| {
            Error::invalid(
                &format!("{field}.values"),
                format!("invalid regular expression {v:?}: {e}"),
            )
        })?;
        Ok(v.to_string())
    }

    /// The predicate of this filter.
    pub fn to_expr(&self, mapping: &GroupTypeMapping, field: &str) -> Result<Expr, Error> {
        let p = property_expr(mapping, field, &self.source, &self.key)?;
        let or_true = |e: Expr| coalesce(vec![e, lit(true)]);
        let any_of = |p: Expr| -> Result<Expr, Error> {
            if self.values.is_empty() {
                return Err(Error::invalid(
                    &format!("{field}.values"),
                    format!("operator {:?} needs at least one value", self.operator),
                ));
            }
            let list = self.values.iter().map(|v| lit(v.as_str())).collect();
            Ok(p.in_list(list, false))
        };
        Ok(match self.operator {
            Operator::Exact => any_of(p)?,
            Operator::IsNot => or_true(not(any_of(p)?)),
            Operator::IContains => contains(lower(p), lit(self.one_value(field)?.to_lowercase())),
            Operator::NotIContains => or_true(not(contains(
                lower(p),
                lit(self.one_value(field)?.to_lowercase()),
            ))),
            Operator::Regex => regexp_like(p, lit(self.regex(field)?), None),
            Operator::NotRegex => or_true(not(regexp_like(p, lit(self.regex(field)?), None))),
            Operator::Gt => numeric(p).gt(lit(self.number(field)?)),
            Operator::Gte => numeric(p).gt_eq(lit(self.number(field)?)),
            Operator::Lt => numeric(p).lt(lit(self.number(field)?)),
            Operator::Lte => numeric(p).lt_eq(lit(self.number(field)?)),
            Operator::IsSet => p.is_not_null(),
            Operator::IsNotSet => p.is_null(),
            Operator::IsDateBefore => timestamp_of(p).lt(micros_literal(self.date(field)?)),
            Operator::IsDateAfter => timestamp_of(p).gt(micros_literal(self.date(field)?)),
        })
    }
}

/// A property holding a date-time (ISO 8601 text) as a UTC timestamp; `NULL` when unparseable.
fn timestamp_of(p: Expr) -> Expr {
    cast(
        try_cast(p, DataType::Timestamp(TimeUnit::Microsecond, None)),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;

    fn filter(key: String, operator: Operator) -> PropertyFilter {
        PropertyFilter {
            key,
            source: PropertySource::Event,
            operator,
            values: Vec::new(),
        }
    }

    /// Plans and runs `group` over three events on a thread with tokio's default worker stack
    /// (2 MiB); the indexes of the rows it keeps.
    fn rows_kept_on_a_small_stack(group: PropertyGroup) -> Vec<usize> {
        let work = move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let schema = Arc::new(Schema::new(vec![
                    Field::new("i", DataType::Utf8, false),
                    Field::new(herd_core::schema::PROPERTIES, DataType::Utf8, true),
                ]));
                let batch = RecordBatch::try_new(
                    schema,
                    vec![
                        Arc::new(StringArray::from(vec!["0", "1", "2"])),
                        Arc::new(StringArray::from(vec![r#"{"k7": 1}"#, "{}", r#"{"x": 2}"#])),
                    ],
                )
                .expect("batch");
                let expr = group
                    .to_expr(&GroupTypeMapping::default(), "filters")
                    .expect("expr")
                    .expect("not empty");
                let ctx = SessionContext::new();
                let df = ctx
                    .read_batch(batch)
                    .expect("read")
                    .filter(expr)
                    .expect("filter");
                let mut kept = Vec::new();
                for b in df.collect().await.expect("collect") {
                    let ids = b
                        .column(0)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .expect("ids");
                    kept.extend(
                        ids.iter()
                            .flatten()
                            .map(|s| s.parse::<usize>().expect("id")),
                    );
                }
                kept.sort_unstable();
                kept
            })
        };
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(work)
            .expect("thread")
            .join()
            .expect("planning overflowed or panicked")
    }

    /// Past the request limits (which every query checks first), planning and running stay
    /// within tokio's default 2 MiB worker stack: 500 ANDed filters (2.5x [`MAX_FILTERS`]),
    /// a flat OR of 2,000, 500 sibling groups and the deepest nesting allowed. Measured in a
    /// debug build (the deepest frames): DataFusion re-chains a conjunction left-deep whatever
    /// shape it was given, ~3 KB of stack a filter, so 700 ANDed filters overflow 2 MiB and
    /// 3,000 overflow 8 MiB; ORs stay balanced. `herd serve` runs with 8 MiB stacks.
    #[test]
    fn filter_trees_past_the_limits_plan_on_a_two_mib_stack() {
        let keys = |n: usize| (0..n).map(|i| format!("k{i}"));
        let and = PropertyGroup {
            op: BoolOp::And,
            filters: keys(500).map(|k| filter(k, Operator::IsNotSet)).collect(),
            groups: Vec::new(),
        };
        assert_eq!(rows_kept_on_a_small_stack(and), vec![1, 2]);
        let or = PropertyGroup {
            op: BoolOp::Or,
            filters: keys(2_000).map(|k| filter(k, Operator::IsSet)).collect(),
            groups: Vec::new(),
        };
        assert_eq!(rows_kept_on_a_small_stack(or), vec![0]);
        let siblings = PropertyGroup {
            op: BoolOp::Or,
            filters: Vec::new(),
            groups: keys(500)
                .map(|k| PropertyGroup {
                    op: BoolOp::And,
                    filters: vec![filter(k, Operator::IsSet)],
                    groups: Vec::new(),
                })
                .collect(),
        };
        assert_eq!(rows_kept_on_a_small_stack(siblings), vec![0]);
        let mut nested = PropertyGroup {
            op: BoolOp::Or,
            filters: vec![filter("k7".into(), Operator::IsSet)],
            groups: Vec::new(),
        };
        for _ in 1..MAX_FILTER_DEPTH {
            nested = PropertyGroup {
                op: BoolOp::And,
                filters: keys(20)
                    .map(|k| filter(k + "x", Operator::IsNotSet))
                    .collect(),
                groups: vec![nested],
            };
        }
        assert_eq!(rows_kept_on_a_small_stack(nested), vec![0]);
    }

    #[test]
    fn balanced_trees_keep_every_part_once_in_order() {
        for n in 1..40 {
            let parts = (0..n).map(|i| col(format!("c{i}"))).collect();
            let e = balanced(parts, BoolOp::And).expect("some");
            let text = e.to_string();
            let cols: Vec<&str> = text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.starts_with('c'))
                .collect();
            let expected: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
            assert_eq!(cols, expected, "n = {n}");
        }
        assert!(balanced(Vec::new(), BoolOp::Or).is_none());
    }

    #[test]
    fn request_limits_name_the_field() {
        let group = |filters: usize, groups: Vec<PropertyGroup>| PropertyGroup {
            op: BoolOp::And,
            filters: (0..filters)
                .map(|i| filter(format!("k{i}"), Operator::IsSet))
                .collect(),
            groups,
        };
        let mut budget = FilterBudget::default();
        budget.add(&group(150, vec![]), "filters").expect("150");
        budget
            .add(&group(50, vec![]), "series[0].filters")
            .expect("200 in all");
        let err = budget
            .add(&group(1, vec![]), "series[1].filters")
            .expect_err("201");
        assert!(
            err.to_string()
                .starts_with("series[1].filters.filters: at most 200 property filters"),
            "{err}"
        );

        let mut deep = group(1, vec![]);
        for _ in 0..MAX_FILTER_DEPTH - 1 {
            deep = group(0, vec![deep]);
        }
        FilterBudget::default()
            .add(&deep, "filters")
            .expect("10 levels");
        let too_deep = group(0, vec![deep]);
        let err = FilterBudget::default()
            .add(&too_deep, "filters")
            .expect_err("11 levels");
        assert!(err.to_string().contains("nest at most 10 levels"), "{err}");

        let siblings = group(0, (0..101).map(|_| group(0, vec![])).collect());
        let err = FilterBudget::default()
            .add(&siblings, "filters")
            .expect_err("101 groups");
        assert!(
            err.to_string().starts_with("filters.groups: at most 100"),
            "{err}"
        );

        let mut values = filter("k".into(), Operator::Exact);
        values.values = vec!["v".into(); MAX_FILTER_VALUES + 1];
        let err = FilterBudget::default()
            .add(
                &PropertyGroup {
                    filters: vec![values],
                    ..Default::default()
                },
                "filters",
            )
            .expect_err("1001 values");
        assert!(
            err.to_string()
                .starts_with("filters.filters[0].values: at most 1000"),
            "{err}"
        );
    }
}
