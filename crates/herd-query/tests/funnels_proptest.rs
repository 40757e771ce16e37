//! Property tests for funnels.
//!
//! 1. Random event streams → a 3-step funnel `A → B → C` in all three orders, with and
//!    without an exclusion `X`, by user and by company, through the whole engine (buffer and
//!    Parquet), equals a brute-force reference written plainly from the spec: every step-0
//!    event starts an independent attempt, an attempt takes the earliest next step within the
//!    window, an exclusion between two steps of an attempt inside its window spoils it, and
//!    an actor counts at the furthest step reached unless every attempt that got that far was
//!    spoiled (then it is dropped).
//! 2. The `herd_funnel` aggregate gives the same per-actor outcomes for the same rows fed in
//!    different orders, batch sizes and partition counts as the state machine run directly.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::Fixture;
use datafusion::arrow::array::{
    Array, AsArray, Int32Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext, col};
use herd_core::Event;
use herd_query::funnel::machine::{self, Attribution, Ev, NO_VALUE, Order, Params};
use herd_query::funnel::udaf::{FunnelUdaf, Mode};
use herd_query::{FunnelExclusion, FunnelQuery, FunnelStep, Window, WindowUnit};
use proptest::prelude::*;

const MIN: i64 = 60_000_000;
const T0: i64 = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z
const NAMES: [&str; 5] = ["A", "B", "C", "X", "Y"];

#[derive(Debug, Clone)]
struct Case {
    order: Order,
    /// Window in minutes.
    window: i64,
    /// Exclusion span (from, to), if any.
    exclusion: Option<(usize, usize)>,
    by_company: bool,
    /// (minute, user, company (0 = none), event name index)
    events: Vec<(i64, u8, u8, usize)>,
    flush_after: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![
            Just(Order::Ordered),
            Just(Order::Strict),
            Just(Order::Unordered)
        ],
        prop_oneof![Just(30i64), Just(120), Just(24 * 60)],
        prop_oneof![
            Just(None),
            Just(Some((0usize, 1usize))),
            Just(Some((1, 2))),
            Just(Some((0, 2)))
        ],
        any::<bool>(),
        // Minutes on a coarse grid so that equal timestamps are common.
        prop::collection::vec((0i64..300, 0u8..4, 0u8..4, 0usize..5), 0..60),
        0usize..60,
    )
        .prop_map(
            |(order, window, exclusion, by_company, events, flush_after)| Case {
                order,
                window,
                // Unordered funnels only take exclusions over all steps.
                exclusion: match (order, exclusion) {
                    (Order::Unordered, Some(_)) => Some((0, 2)),
                    (_, x) => x,
                },
                by_company,
                events: events
                    .into_iter()
                    .map(|(m, u, c, e)| ((m / 10) * 10, u, c, e))
                    .collect(),
                flush_after,
            },
        )
}

/// One actor's events for the reference: (time µs, name index), sorted.
type Stream = Vec<(i64, usize)>;

fn step_of(name: usize) -> Option<usize> {
    (name < 3).then_some(name)
}

/// Plain reference for ordered funnels (spec §3.3 restated as attempts): every step-0 event
/// starts an attempt; an attempt takes the earliest next step within the window from its
/// start; it stops when a newer, unspoiled attempt reaches the step it is waiting at (later
/// steps chain from the most recent entry); an exclusion covering the step it waits for,
/// inside its window, spoils it, and a spoiled attempt gets at most that one step further.
fn reference_ordered(c: &Case, evs: &Stream) -> Option<usize> {
    let w = c.window * MIN;
    let covers =
        |name: usize, k: usize| name == 3 && c.exclusion.is_some_and(|(a, b)| a < k && k <= b);
    // Sort: time, then exclusions before steps, then steps ascending (same-time rule).
    let mut sorted: Vec<(i64, i64, usize)> = evs
        .iter()
        .map(|(t, n)| (*t, step_of(*n).map_or(-1, |k| k as i64), *n))
        .collect();
    sorted.sort();
    // Starts: one per distinct time.
    let mut starts: Vec<usize> = Vec::new();
    for (i, (t, _, n)) in sorted.iter().enumerate() {
        if *n == 0 && starts.last().is_none_or(|j| sorted[*j].0 != *t) {
            starts.push(i);
        }
    }
    // Newest first: (positions reaching each step, index of the spoiling exclusion).
    let mut done: Vec<(Vec<usize>, Option<usize>)> = Vec::new();
    for &i in starts.iter().rev() {
        let s = sorted[i].0;
        let mut pos = vec![i];
        let mut spoiled_at = None;
        while pos.len() < 3 {
            let k = pos.len();
            let from = pos[k - 1] + 1;
            let next = (from..sorted.len())
                .find(|j| step_of(sorted[*j].2) == Some(k) && sorted[*j].0 - s <= w);
            let until = next.unwrap_or(sorted.len());
            if spoiled_at.is_none() {
                spoiled_at =
                    (from..until).find(|j| covers(sorted[*j].2, k) && sorted[*j].0 - s <= w);
            }
            // Superseded: a newer attempt, unspoiled then, reached step k − 1 in between.
            let superseded = done.iter().any(|(p, sp)| {
                p.get(k - 1)
                    .is_some_and(|q| *q >= from && *q < until && sp.is_none_or(|x| x > *q))
            });
            match next {
                Some(j) if !superseded => pos.push(j),
                _ => break,
            }
            // A spoiled attempt records the step it was waiting for, and no more.
            if spoiled_at.is_some() {
                break;
            }
        }
        done.push((pos, spoiled_at));
    }
    let mut best: Option<(usize, bool)> = None; // (level, every attempt at it spoiled)
    for (pos, sp) in done.iter().rev() {
        let level = pos.len();
        let spoiled = sp.is_some();
        best = match best {
            None => Some((level, spoiled)),
            Some((l, _)) if level > l => Some((level, spoiled)),
            Some((l, b)) if level == l => Some((l, b && spoiled)),
            keep => keep,
        };
    }
    match best {
        Some((_, true)) | None => None,
        Some((l, false)) => Some(l),
    }
}

/// Plain reference for strict funnels: an attempt's steps must be consecutive events of the
/// actor (repeats of the step just reached keep it alive, except a repeat of step 0, which
/// starts a newer attempt in its place). An exclusion covering the next
/// step of an attempt, inside its window, spoils it when some attempt is still alive at
/// that step in its own window (PostHog keeps one slot per step, and an exclusion only acts
/// through a live slot). Timestamps are distinct here.
fn reference_strict(c: &Case, evs: &Stream) -> Option<usize> {
    let w = c.window * MIN;
    // Per attempt: start time, index of the event reaching each step, index breaking it.
    struct Attempt {
        start: i64,
        pos: Vec<usize>,
        broken: usize,
    }
    let mut attempts = Vec::new();
    for (i, (s, n)) in evs.iter().enumerate() {
        if *n != 0 {
            continue;
        }
        let mut pos = vec![i];
        let mut broken = evs.len();
        for (j, (t, m)) in evs.iter().enumerate().skip(i + 1) {
            let level = pos.len();
            if level == 3 {
                break;
            }
            if step_of(*m) == Some(level) && t - s <= w {
                pos.push(j);
                continue;
            }
            if step_of(*m) == Some(level - 1) {
                if level == 1 {
                    // A newer step-0 event re-enters: it takes the entry slot over, and this
                    // attempt (still waiting for step 1) is gone (spec §3.3 step 3).
                    broken = j;
                    break;
                }
                continue;
            }
            broken = j;
            break;
        }
        attempts.push(Attempt {
            start: *s,
            pos,
            broken,
        });
    }
    // The attempt's level just before event j.
    let level_before = |a: &Attempt, j: usize| a.pos.iter().filter(|p| **p < j).count();
    let covers = |level: usize| c.exclusion.is_some_and(|(a, b)| a < level && level <= b);
    let mut best: Option<(usize, bool)> = None;
    for a in &attempts {
        let level = a.pos.len();
        let spoiled = evs.iter().enumerate().any(|(j, (x, m))| {
            let p = level_before(a, j);
            *m == 3
                && j > a.pos[0]
                && p < 3
                && covers(p)
                && x - a.start <= w
                && attempts.iter().any(|b| {
                    b.broken >= j && b.pos[0] < j && level_before(b, j) == p && x - b.start <= w
                })
        });
        best = match best {
            None => Some((level, spoiled)),
            Some((l, _)) if level > l => Some((level, spoiled)),
            Some((l, sp)) if level == l => Some((l, sp && spoiled)),
            keep => keep,
        };
    }
    match best {
        Some((_, true)) | None => None,
        Some((l, false)) => Some(l),
    }
}

/// Plain reference for unordered funnels: the most distinct steps seen within one window
/// ending at a step event, counting only events at or after the latest earlier exclusion
/// (steps at the same time as an exclusion are counted before it clears the queues).
fn reference_unordered(c: &Case, evs: &Stream) -> Option<usize> {
    let w = c.window * MIN;
    let mut best = 0;
    for (t, n) in evs {
        if step_of(*n).is_none() {
            continue;
        }
        let last_excl = evs
            .iter()
            .filter(|(x, m)| *m == 3 && c.exclusion.is_some() && x < t)
            .map(|(x, _)| *x)
            .max();
        let lo = (t - w).max(last_excl.unwrap_or(i64::MIN));
        let mut seen = [false; 3];
        for (u, m) in evs {
            if let Some(k) = step_of(*m)
                && *u >= lo
                && u <= t
            {
                seen[k] = true;
            }
        }
        best = best.max(seen.iter().filter(|s| **s).count());
    }
    (best > 0).then_some(best)
}

fn check(c: Case) {
    let mut streams: BTreeMap<String, Stream> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut seen_ts = std::collections::BTreeSet::new();
    for (i, (m, u, co, n)) in c.events.iter().enumerate() {
        let mut t = T0 + m * MIN;
        if c.order == Order::Strict {
            // Distinct times per actor for the strict reference (same-time rules are covered
            // by the hand-worked tests).
            while !seen_ts.insert(t) {
                t += 1;
            }
        }
        let company = if *co == 0 {
            String::new()
        } else {
            format!("c{co}")
        };
        let user = format!("u{u}");
        let actor = if c.by_company {
            company.clone()
        } else {
            user.clone()
        };
        if !actor.is_empty() {
            streams.entry(actor).or_default().push((t, *n));
        }
        rows.push(Event {
            uuid: uuid::Uuid::from_u128(i as u128 + 1),
            event: NAMES[*n].to_string(),
            distinct_id: user,
            timestamp: t,
            properties: "{}".into(),
            groups: [
                company,
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
            created_at: t,
        });
    }
    let mut want = [0u64; 3];
    for evs in streams.values_mut() {
        evs.sort();
        let level = match c.order {
            Order::Ordered => reference_ordered(&c, evs),
            Order::Strict => reference_strict(&c, evs),
            Order::Unordered => reference_unordered(&c, evs),
        };
        for w in want.iter_mut().take(level.unwrap_or(0)) {
            *w += 1;
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let f = Fixture::new(&["company"]).await;
        let split = c.flush_after.min(rows.len());
        let rest = rows.split_off(split);
        if !rows.is_empty() {
            f.write(rows).await;
            f.flush().await;
        }
        if !rest.is_empty() {
            f.write(rest).await;
        }
        let q = FunnelQuery {
            steps: ["A", "B", "C"]
                .iter()
                .map(|e| FunnelStep {
                    event: Some((*e).to_string()),
                    ..FunnelStep::default()
                })
                .collect(),
            order: c.order,
            window: Some(Window {
                value: c.window,
                unit: WindowUnit::Minute,
            }),
            aggregation_group_type: c.by_company.then(|| "company".to_string()),
            exclusions: c
                .exclusion
                .map(|(a, b)| FunnelExclusion {
                    event: Some("X".into()),
                    from_step: a,
                    to_step: b,
                    ..FunnelExclusion::default()
                })
                .into_iter()
                .collect(),
            date_from: "2024-01-01".into(),
            date_to: "2024-01-02".into(),
            ..FunnelQuery::default()
        };
        let r = f.engine.funnel(f.project, &q, 0).await.expect("funnel");
        let got: Vec<u64> = r.lines[0].steps.iter().map(|s| s.count).collect();
        assert_eq!(got, want, "{c:?}");
        // Rows spilled to disk after every batch and read back: the same answer.
        let spilled = f
            .engine
            .clone()
            .with_funnel_memory(0)
            .funnel(f.project, &q, 0)
            .await
            .expect("spilled funnel");
        assert_eq!(spilled, r, "spilled {c:?}");
        // Actors by their strings instead of their numbers: the same answer.
        let by_strings = f
            .engine
            .clone()
            .with_actor_numbers(false)
            .funnel(f.project, &q, 0)
            .await
            .expect("funnel by strings");
        assert_eq!(by_strings, r, "by strings {c:?}");
    });
}

#[derive(Debug, Clone)]
struct Split {
    order: Order,
    attribution: Option<Attribution>,
    trends: bool,
    /// (actor, minute, steps, excl, breakdown value)
    rows: Vec<(u8, i64, u32, u32, u8)>,
    partitions: usize,
    batch: usize,
    shuffle: u64,
}

fn split() -> impl Strategy<Value = Split> {
    (
        prop_oneof![
            Just(Order::Ordered),
            Just(Order::Strict),
            Just(Order::Unordered)
        ],
        prop_oneof![
            Just(None),
            Just(Some(Attribution::FirstTouch)),
            Just(Some(Attribution::LastTouch)),
            Just(Some(Attribution::AllEvents)),
            Just(Some(Attribution::Step(0)))
        ],
        any::<bool>(),
        prop::collection::vec((0u8..12, 0i64..200, 0u32..8, 0u32..2, 0u8..4), 0..200),
        1usize..5,
        1usize..40,
        any::<u64>(),
    )
        .prop_map(
            |(order, attribution, trends, rows, partitions, batch, shuffle)| Split {
                order,
                attribution,
                trends,
                rows: rows
                    .into_iter()
                    .map(|(a, m, s, x, b)| (a, (m / 5) * 5, s, x << 1, b))
                    .collect(),
                partitions,
                batch,
                shuffle,
            },
        )
}

/// Per-actor outcomes of the aggregate, as sorted debug strings.
async fn aggregate_outcomes(
    s: &Split,
    params: &Params,
    mode: &Mode,
) -> BTreeMap<String, Vec<String>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("actor", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("steps", DataType::UInt32, false),
        Field::new("excl", DataType::UInt32, false),
        Field::new("bd", DataType::Utf8, true),
        Field::new("bucket", DataType::Int32, false),
    ]));
    // A deterministic shuffle, then round-robin into partitions of small batches.
    let mut rows = s.rows.clone();
    let mut state = s.shuffle | 1;
    for i in (1..rows.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        rows.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let mut partitions: Vec<Vec<RecordBatch>> = vec![Vec::new(); s.partitions];
    for (n, chunk) in rows.chunks(s.batch).enumerate() {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    chunk.iter().map(|r| format!("a{}", r.0)),
                )),
                Arc::new(Int64Array::from_iter_values(
                    chunk.iter().map(|r| T0 + r.1 * MIN),
                )),
                Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|r| r.2))),
                Arc::new(UInt32Array::from_iter_values(chunk.iter().map(|r| r.3))),
                Arc::new(StringArray::from_iter(
                    chunk.iter().map(|r| (r.4 > 0).then(|| format!("v{}", r.4))),
                )),
                Arc::new(Int32Array::from_iter_values(
                    chunk.iter().map(|r| (r.1 / 60) as i32),
                )),
            ],
        )
        .expect("batch");
        partitions[n % s.partitions].push(batch);
    }
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(s.partitions)
            .with_batch_size(s.batch.max(2)),
    );
    let table = MemTable::try_new(schema, partitions).expect("memtable");
    let df = ctx.read_table(Arc::new(table)).expect("read");
    let agg = FunnelUdaf::expr(
        params.clone(),
        mode.clone(),
        vec![
            col("ts"),
            col("steps"),
            col("excl"),
            col("bd"),
            col("bucket"),
        ],
    );
    let batches = df
        .aggregate(vec![col("actor")], vec![agg.alias("r")])
        .expect("aggregate")
        .collect()
        .await
        .expect("collect");
    let mut out = BTreeMap::new();
    for b in batches {
        let actors = b.column(0).as_string::<i32>();
        let lists = b.column(1).as_list::<i32>();
        for r in 0..b.num_rows() {
            let items = lists.value(r);
            let items = items.as_struct();
            let mut lines = Vec::new();
            for i in 0..items.len() {
                let bd = items.column(0).as_string::<i32>();
                let bd = (!bd.is_null(i)).then(|| bd.value(i).to_string());
                let rest: Vec<String> = (1..items.num_columns())
                    .map(|c| {
                        let a = items.column(c);
                        if a.is_null(i) {
                            "-".to_string()
                        } else {
                            datafusion::arrow::util::display::array_value_to_string(a, i)
                                .expect("display")
                        }
                    })
                    .collect();
                lines.push(format!("{bd:?} {}", rest.join(" ")));
            }
            lines.sort();
            out.insert(actors.value(r).to_string(), lines);
        }
    }
    out
}

/// The same outcomes from the state machine run directly on each actor's sorted events.
fn direct_outcomes(s: &Split, params: &Params, mode: &Mode) -> BTreeMap<String, Vec<String>> {
    let mut per: BTreeMap<String, Vec<Ev>> = BTreeMap::new();
    for r in &s.rows {
        per.entry(format!("a{}", r.0)).or_default().push(Ev {
            ts: T0 + r.1 * MIN,
            steps: r.2,
            excl: r.3,
            bd: if r.4 > 0 { u32::from(r.4) } else { NO_VALUE },
            bucket: (r.1 / 60) as i32,
        });
    }
    let name = |bd: u32| (bd != NO_VALUE).then(|| format!("v{bd}"));
    per.into_iter()
        .map(|(actor, mut evs)| {
            evs.sort();
            let mut lines: Vec<String> = match mode {
                Mode::Steps => machine::run(params, &evs)
                    .into_iter()
                    .map(|o| {
                        let times: Vec<String> =
                            o.at.iter()
                                .map(|t| t.map_or("-".to_string(), |t| t.to_string()))
                                .collect();
                        format!("{:?} {} {}", name(o.bd), o.bits, times.join(" "))
                    })
                    .collect(),
                Mode::Trends { from_step, to_step } => {
                    machine::run_trends(params, &evs, *from_step, *to_step)
                        .into_iter()
                        .map(|o| format!("{:?} {} {}", name(o.bd), o.bucket, o.converted))
                        .collect()
                }
            };
            lines.sort();
            (actor, lines)
        })
        .collect()
}

fn check_split(s: Split) {
    let params = Params {
        steps: 3,
        order: s.order,
        window: 60 * MIN,
        step_windows: vec![],
        optional: 0,
        attribution: s.attribution,
    };
    let mode = if s.trends {
        Mode::Trends {
            from_step: 0,
            to_step: 2,
        }
    } else {
        Mode::Steps
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let got = rt.block_on(aggregate_outcomes(&s, &params, &mode));
    let mut want = direct_outcomes(&s, &params, &mode);
    // Actors without any outcome have an empty list in the aggregate.
    for actor in got.keys() {
        want.entry(actor.clone()).or_default();
    }
    assert_eq!(got, want, "{s:?}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn funnels_match_the_brute_force_reference(c in case()) {
        check(c);
    }

    #[test]
    fn the_aggregate_is_independent_of_batches_order_and_partitions(s in split()) {
        check_split(s);
    }
}
