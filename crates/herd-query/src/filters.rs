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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertySource {
    /// The event's own properties.
    Event,
    /// The current properties of the event's group of this type (by name).
    Group(String),
}

/// One property filter.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyFilter {
    /// Property name.
    pub key: String,
    /// Event or group property.
    pub source: PropertySource,
    /// Comparison.
    pub operator: Operator,
    /// Values to compare with: any of them for `exact` / `is_not`, exactly one for the other
    /// comparisons, none for `is_set` / `is_not_set`.
    pub values: Vec<String>,
}

/// How the members of a [`PropertyGroup`] combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoolOp {
    /// All must hold.
    #[default]
    And,
    /// At least one must hold.
    Or,
}

/// Filters and nested groups combined with AND or OR. An empty group is true.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PropertyGroup {
    /// AND or OR.
    pub op: BoolOp,
    /// Leaf filters.
    pub filters: Vec<PropertyFilter>,
    /// Nested groups.
    pub groups: Vec<PropertyGroup>,
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
        Ok(parts.into_iter().reduce(|a, b| match self.op {
            BoolOp::And => a.and(b),
            BoolOp::Or => a.or(b),
        }))
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
