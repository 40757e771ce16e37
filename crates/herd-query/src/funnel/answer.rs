//! A funnel's answer from its fold's final state: the step lines (ranked by the last step,
//! the values beyond the breakdown limit merged into "Other"), the time-to-convert histogram,
//! the conversion rates of a funnel trend.

use std::collections::HashMap;

use super::fold::{Fold, Line};
use super::{
    FUNNEL_OTHER, FunnelLine, FunnelQuery, FunnelStepResult, FunnelTrendPoint, FunnelTrendsLine,
    Order, TimeToConvert,
};
use crate::calendar::Buckets;
use crate::trends::DEFAULT_BREAKDOWN_LIMIT;

pub(super) fn step_lines(fold: Fold, query: &FunnelQuery, breakdown: bool) -> Vec<FunnelLine> {
    let mut fold = fold;
    let step_result = |k: usize, line: &mut Line| {
        let times = &mut line.times[k];
        let (avg, median) = if k == 0 || times.is_empty() {
            (None, None)
        } else {
            times.sort_by(f64::total_cmp);
            let avg = times.iter().sum::<f64>() / times.len() as f64;
            let m = times.len();
            let median = if m % 2 == 1 {
                times[m / 2]
            } else {
                (times[m / 2 - 1] + times[m / 2]) / 2.0
            };
            (Some(avg), Some(median))
        };
        let step = &query.steps[k];
        let (name, event) = if query.order == Order::Unordered {
            (
                format!("Completed {} step{}", k + 1, if k == 0 { "" } else { "s" }),
                None,
            )
        } else {
            (
                step.name
                    .clone()
                    .or_else(|| step.event.clone())
                    .unwrap_or_else(|| "All events".into()),
                step.event.clone(),
            )
        };
        FunnelStepResult {
            order: k,
            name,
            event,
            optional: step.optional,
            count: line.counts[k],
            average_conversion_time: avg,
            median_conversion_time: median,
        }
    };
    let n = query.steps.len();
    if !breakdown {
        let mut line = fold.lines.remove("").unwrap_or_else(|| Line::new(n));
        return vec![FunnelLine {
            breakdown_value: None,
            steps: (0..n).map(|k| step_result(k, &mut line)).collect(),
        }];
    }
    let mut values: Vec<(String, Line)> = fold.lines.into_iter().collect();
    // Ranked by the last step's count, then the earlier ones, descending.
    values.sort_by(|a, b| {
        (0..n)
            .rev()
            .map(|k| b.1.counts[k].cmp(&a.1.counts[k]))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.0.cmp(&b.0))
    });
    let (limit, hide_other) =
        query
            .breakdown
            .as_ref()
            .map_or((DEFAULT_BREAKDOWN_LIMIT, false), |b| {
                (
                    if b.limit == 0 {
                        DEFAULT_BREAKDOWN_LIMIT
                    } else {
                        b.limit
                    },
                    b.hide_other,
                )
            });
    let rest = if values.len() > limit {
        values.split_off(limit)
    } else {
        Vec::new()
    };
    if !rest.is_empty() && !hide_other {
        let mut other = Line::new(n);
        for (_, l) in rest {
            other.absorb(l);
        }
        values.push((FUNNEL_OTHER.to_string(), other));
    }
    values
        .into_iter()
        .map(|(v, mut line)| FunnelLine {
            breakdown_value: Some(v),
            steps: (0..n).map(|k| step_result(k, &mut line)).collect(),
        })
        .collect()
}

pub(super) fn time_to_convert(fold: Fold, bin_count: Option<usize>) -> TimeToConvert {
    // Every actor converting from `from_step` to `to_step`, whatever its breakdown value.
    let mut values: Vec<f64> = fold.lines.into_values().flat_map(|l| l.ttc).collect();
    let values = &mut values;
    if values.is_empty() {
        return TimeToConvert {
            bins: Vec::new(),
            average_conversion_time: None,
        };
    }
    values.sort_by(f64::total_cmp);
    let (min, max) = (values[0], values[values.len() - 1]);
    let bins = match bin_count {
        Some(b) => b.clamp(1, 90),
        None => ((values.len() as f64).cbrt().ceil() as usize).clamp(1, 60),
    };
    let mut width = ((max - min) / bins as f64).ceil();
    if width <= 0.0 {
        width = 60.0;
    }
    let mut counts = vec![0u64; bins + 1];
    for v in values.iter() {
        let i = (((v - min) / width).floor() as usize).min(bins);
        counts[i] += 1;
    }
    TimeToConvert {
        bins: counts
            .into_iter()
            .enumerate()
            .map(|(j, c)| ((min + j as f64 * width).round(), c))
            .collect(),
        average_conversion_time: Some(values.iter().sum::<f64>() / values.len() as f64),
    }
}

/// One line per breakdown value (one without a breakdown) of entered and converted actors per
/// entry bucket, by value.
pub(super) fn trend_lines(
    fold: Fold,
    buckets: &Buckets,
    tz: chrono_tz::Tz,
    breakdown: bool,
) -> Vec<FunnelTrendsLine> {
    let mut per: HashMap<String, Vec<(u64, u64)>> = fold.trends;
    let labels = buckets.labels(tz);
    let mut values: Vec<String> = per.keys().cloned().collect();
    if !breakdown {
        values = vec![String::new()];
    }
    values.sort();
    values
        .into_iter()
        .map(|v| {
            let line = per
                .remove(&v)
                .unwrap_or_else(|| vec![(0, 0); buckets.len()]);
            FunnelTrendsLine {
                breakdown_value: breakdown.then(|| v.clone()),
                data: line
                    .iter()
                    .enumerate()
                    .map(|(i, (from, to))| FunnelTrendPoint {
                        label: labels.get(i).cloned().unwrap_or_default(),
                        start: buckets.starts().get(i).copied().unwrap_or_default(),
                        reached_from_step_count: *from,
                        reached_to_step_count: *to,
                        conversion_rate: if *from == 0 {
                            0.0
                        } else {
                            (*to as f64 / *from as f64 * 10_000.0).round() / 100.0
                        },
                    })
                    .collect(),
            }
        })
        .collect()
}
