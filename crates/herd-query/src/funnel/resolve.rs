//! A funnel request checked and resolved (spec §3.1): its steps' and exclusions' conditions,
//! the group joins they need, the window, the breakdown, and every rule on which options go
//! together. Every error names its field.

use std::collections::BTreeSet;

use datafusion::logical_expr::Expr;
use herd_core::GroupTypeMapping;

use super::machine::Params;
use super::{Attribution, FunnelQuery, FunnelViz, MAX_STEPS, Order, Window, WindowUnit};
use crate::calendar::{TimeRange, parse_range, parse_timezone};
use crate::filters::{
    FilterBudget, PropertyGroup, PropertySource, event_condition, group_index, property_expr,
};
use crate::{Error, Result};

/// A validated request.
pub(super) struct Resolved {
    pub params: Params,
    pub tz: chrono_tz::Tz,
    pub range: TimeRange,
    /// Last instant scanned (after `date_to` with `window_past_date_to`).
    pub scan_to: i64,
    pub actor_group: Option<u8>,
    pub joins: BTreeSet<u8>,
    pub step_exprs: Vec<Expr>,
    pub exclusion_exprs: Vec<(Expr, u32)>,
    /// Event names to pre-filter on; `None` when every event must be seen.
    pub event_names: Option<Vec<String>>,
    pub global: Option<Expr>,
    pub breakdown: Option<Expr>,
    pub from_step: usize,
    pub to_step: usize,
}

/// The event names the steps and exclusions name, and whether one takes any event.
#[derive(Default)]
struct Names {
    names: BTreeSet<String>,
    any_event: bool,
}

impl Names {
    fn add(&mut self, event: Option<&String>) {
        match event {
            Some(e) => {
                self.names.insert(e.clone());
            }
            None => self.any_event = true,
        }
    }
}

/// The steps' conditions, optional-step mask and per-step windows.
struct Steps {
    exprs: Vec<Expr>,
    optional: u32,
    windows: Vec<Option<i64>>,
}

pub(super) fn resolve(
    query: &FunnelQuery,
    mapping: &GroupTypeMapping,
    now: i64,
) -> Result<Resolved> {
    let n = check_sizes(query)?;
    let window = query
        .window
        .unwrap_or(Window {
            value: 14,
            unit: WindowUnit::Day,
        })
        .micros("window")?;
    let tz = parse_timezone(&query.timezone)?;
    let (from, to) = parse_range(&query.date_from, &query.date_to, tz, now)?;
    let actor_group = query
        .aggregation_group_type
        .as_deref()
        .map(|g| group_index(mapping, "aggregation_group_type", g))
        .transpose()?;
    let mut joins = BTreeSet::new();
    query
        .filters
        .group_indexes(mapping, "filters", &mut joins)?;
    let global = query.filters.to_expr(mapping, "filters")?;
    let mut names = Names::default();
    let steps = steps(query, mapping, &mut joins, &mut names)?;
    let exclusion_exprs = exclusions(query, mapping, &mut joins, &mut names)?;
    let breakdown = breakdown(query, mapping, &mut joins)?;
    let (from_step, to_step) = check_options(query, &steps)?;
    let scan_to = match query.window_past_date_to {
        true => to.saturating_add(window),
        false => to,
    };
    let event_names = (!names.any_event && query.order != Order::Strict)
        .then(|| names.names.into_iter().collect());
    Ok(Resolved {
        params: Params {
            steps: n,
            order: query.order,
            window,
            step_windows: steps.windows,
            optional: steps.optional,
            attribution: query.breakdown.as_ref().map(|_| query.attribution),
        },
        tz,
        range: TimeRange { tz, from, to },
        scan_to,
        actor_group,
        joins,
        step_exprs: steps.exprs,
        exclusion_exprs,
        event_names,
        global,
        breakdown,
        from_step,
        to_step,
    })
}

/// The number of steps, checked, and the filters within their budget.
fn check_sizes(query: &FunnelQuery) -> Result<usize> {
    let n = query.steps.len();
    if n < 2 {
        return Err(Error::invalid(
            "steps",
            format!("a funnel needs at least 2 steps (got {n})"),
        ));
    }
    if n > MAX_STEPS {
        return Err(Error::invalid(
            "steps",
            format!("a funnel has at most {MAX_STEPS} steps (got {n})"),
        ));
    }
    let mut budget = FilterBudget::default();
    budget.add(&query.filters, "filters")?;
    for (k, s) in query.steps.iter().enumerate() {
        budget.add(&s.filters, &format!("steps[{k}].filters"))?;
    }
    for (k, e) in query.exclusions.iter().enumerate() {
        budget.add(&e.filters, &format!("exclusions[{k}].filters"))?;
    }
    Ok(n)
}

fn steps(
    query: &FunnelQuery,
    mapping: &GroupTypeMapping,
    joins: &mut BTreeSet<u8>,
    names: &mut Names,
) -> Result<Steps> {
    let n = query.steps.len();
    let mut out = Steps {
        exprs: Vec::with_capacity(n),
        optional: 0,
        windows: Vec::with_capacity(n),
    };
    for (k, s) in query.steps.iter().enumerate() {
        let field = format!("steps[{k}]");
        if s.optional {
            let why = match (k, query.order) {
                (0, _) => Some("the first step cannot be optional"),
                (_, Order::Unordered) => Some("optional steps need an ordered or strict funnel"),
                _ if k == n - 1 => Some("the last step cannot be optional"),
                _ => None,
            };
            if let Some(why) = why {
                return Err(Error::invalid(&format!("{field}.optional"), why));
            }
            out.optional |= 1 << k;
        }
        out.windows.push(match &s.window {
            None => None,
            Some(_) if k == 0 => {
                return Err(Error::invalid(
                    &format!("{field}.window"),
                    "the first step has no window (it starts the attempt)",
                ));
            }
            Some(w) => Some(w.micros(&format!("{field}.window"))?),
        });
        let cond = event_condition(mapping, &field, s.event.as_deref(), &s.filters, joins)?;
        names.add(s.event.as_ref());
        out.exprs.push(cond);
    }
    Ok(out)
}

/// Each exclusion's condition and the mask of the steps it spans.
fn exclusions(
    query: &FunnelQuery,
    mapping: &GroupTypeMapping,
    joins: &mut BTreeSet<u8>,
    names: &mut Names,
) -> Result<Vec<(Expr, u32)>> {
    let n = query.steps.len();
    let mut out = Vec::new();
    for (j, x) in query.exclusions.iter().enumerate() {
        let field = format!("exclusions[{j}]");
        if x.from_step >= x.to_step || x.to_step >= n {
            return Err(Error::invalid(
                &field,
                format!(
                    "from_step {} and to_step {} must satisfy 0 ≤ from_step < to_step ≤ {} (the last step)",
                    x.from_step,
                    x.to_step,
                    n - 1
                ),
            ));
        }
        if query.order == Order::Unordered && (x.from_step != 0 || x.to_step != n - 1) {
            return Err(Error::invalid(
                &field,
                format!(
                    "unordered funnels only accept exclusions over all steps (from_step 0, to_step {})",
                    n - 1
                ),
            ));
        }
        for k in x.from_step..=x.to_step {
            let s = &query.steps[k];
            let same_event = x.event.is_none() || x.event == s.event;
            if same_event && filters_subset(&x.filters, &s.filters) {
                return Err(Error::invalid(
                    &field,
                    format!(
                        "the exclusion matches every event of step {k} inside its range, so no attempt could pass"
                    ),
                ));
            }
        }
        let cond = event_condition(mapping, &field, x.event.as_deref(), &x.filters, joins)?;
        names.add(x.event.as_ref());
        let mask = ((x.from_step + 1)..=x.to_step).fold(0u32, |m, k| m | (1 << k));
        out.push((cond, mask));
    }
    Ok(out)
}

fn breakdown(
    query: &FunnelQuery,
    mapping: &GroupTypeMapping,
    joins: &mut BTreeSet<u8>,
) -> Result<Option<Expr>> {
    let Some(b) = &query.breakdown else {
        return Ok(None);
    };
    if let PropertySource::Group(name) = &b.source {
        joins.insert(group_index(mapping, "breakdown.group_type", name)?);
    }
    if query.viz == FunnelViz::TimeToConvert {
        return Err(Error::invalid(
            "breakdown",
            "time to convert has no breakdown",
        ));
    }
    Ok(Some(property_expr(
        mapping,
        "breakdown",
        &b.source,
        &b.property,
    )?))
}

/// The options that depend on the order, the viz and the steps; the resolved
/// `(from_step, to_step)`.
fn check_options(query: &FunnelQuery, steps: &Steps) -> Result<(usize, usize)> {
    let n = query.steps.len();
    let unordered = query.order == Order::Unordered;
    if let Attribution::Step(k) = query.attribution {
        if k >= n {
            return Err(Error::invalid(
                "attribution.step",
                format!(
                    "step {k} is out of range (the funnel has steps 0..={})",
                    n - 1
                ),
            ));
        }
        if unordered && k != 0 {
            return Err(Error::invalid(
                "attribution.step",
                "unordered funnels only accept step 0 for breakdown attribution",
            ));
        }
    }
    let from_step = query.from_step.unwrap_or(0);
    let to_step = query.to_step.unwrap_or(n - 1);
    if from_step >= to_step || to_step >= n {
        return Err(Error::invalid(
            "from_step",
            format!(
                "from_step {from_step} and to_step {to_step} must satisfy 0 ≤ from_step < to_step ≤ {}",
                n - 1
            ),
        ));
    }
    let windows = steps.windows.iter().any(Option::is_some);
    let refusal = match query.viz {
        FunnelViz::Trends if unordered => {
            Some(("viz", "funnel trends need an ordered or strict funnel"))
        }
        FunnelViz::Trends if steps.optional != 0 || windows => Some((
            "viz",
            "funnel trends take no optional steps and no per-step windows",
        )),
        _ if unordered && windows => {
            Some(("steps", "per-step windows need an ordered or strict funnel"))
        }
        _ if unordered && query.window_past_date_to => Some((
            "window_past_date_to",
            "needs an ordered or strict funnel (any step may start an unordered one)",
        )),
        FunnelViz::TimeToConvert if unordered => {
            Some(("viz", "time to convert needs an ordered or strict funnel"))
        }
        _ => None,
    };
    if let Some((field, why)) = refusal {
        return Err(Error::invalid(field, why));
    }
    if let Some(b) = query.bin_count
        && !(1..=90).contains(&b)
    {
        return Err(Error::invalid(
            "bin_count",
            format!("bins must be 1..=90 (got {b})"),
        ));
    }
    Ok((from_step, to_step))
}

/// Whether filters `a` are a subset of filters `b` (an event passing `b` passes `a`).
fn filters_subset(a: &PropertyGroup, b: &PropertyGroup) -> bool {
    if a.is_empty() {
        return true;
    }
    a.groups.is_empty()
        && b.groups.is_empty()
        && a.op == crate::BoolOp::And
        && b.op == crate::BoolOp::And
        && a.filters.iter().all(|f| b.filters.contains(f))
}
