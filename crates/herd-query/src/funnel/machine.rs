//! The per-actor funnel state machines of spec §3.3 (ordered and strict), §3.3.8 (unordered)
//! and §3.7 (funnel trends), over one actor's events sorted by time.
//!
//! Events carry bitmasks: bit `k` of [`Ev::steps`] says the event matches step `k` (0-based);
//! bit `k` of [`Ev::excl`] says it matches an exclusion whose span covers step `k`, i.e. it
//! breaks an attempt that has reached step `k − 1` but not yet step `k`. Times are µs.
//!
//! These functions are pure: the aggregate (`udaf.rs`) groups rows by actor, sorts them and
//! calls them; the property tests compare them with a plain reference.

use std::collections::BTreeMap;

/// Most steps a funnel may have.
pub const MAX_STEPS: usize = 20;

/// Breakdown id of "no value".
pub const NO_VALUE: u32 = u32::MAX;

/// Step order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Steps in order; other events in between are allowed.
    #[default]
    Ordered,
    /// Steps in order with no other event of the actor in between.
    Strict,
    /// Steps in any order.
    Unordered,
}

/// How an actor's breakdown value is chosen (spec §3.5).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// The value of the actor's earliest event that has one.
    #[default]
    FirstTouch,
    /// The value of the actor's latest event that has one.
    LastTouch,
    /// The funnel is run once per value over the events with that value.
    AllEvents,
    /// The funnel is run once per value of the events matching this step; that step must be
    /// done by an event with the value.
    Step(usize),
}

/// The parameters of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Number of steps (2..=[`MAX_STEPS`]).
    pub steps: usize,
    /// Order type.
    pub order: Order,
    /// Conversion window from the attempt's first step, inclusive (µs).
    pub window: i64,
    /// Optional extra window per step `k ≥ 1`, from the previous reached step (µs).
    pub step_windows: Vec<Option<i64>>,
    /// Bit `k`: step `k` is optional.
    pub optional: u32,
    /// Breakdown attribution; `None` without a breakdown.
    pub attribution: Option<Attribution>,
}

impl Params {
    fn step_window(&self, k: usize) -> Option<i64> {
        self.step_windows.get(k).copied().flatten()
    }

    fn is_optional(&self, k: usize) -> bool {
        self.optional & (1 << k) != 0
    }
}

/// One event of an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ev {
    /// Time (µs).
    pub ts: i64,
    /// Matched steps.
    pub steps: u32,
    /// Matched exclusion spans.
    pub excl: u32,
    /// Interned breakdown value, or [`NO_VALUE`].
    pub bd: u32,
    /// Interval bucket (funnel trends).
    pub bucket: i32,
}

/// The furthest progress of an actor under one breakdown value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Breakdown value id ([`NO_VALUE`] without a breakdown or when the actor has none).
    pub bd: u32,
    /// Bit `k`: the counted attempt reached step `k`.
    pub bits: u32,
    /// Time the counted attempt reached each step (µs), `None` where it did not.
    pub at: Vec<Option<i64>>,
}

/// An actor's result in one trends bucket: it entered in `bucket` and converted or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TrendOutcome {
    /// Breakdown value id.
    pub bd: u32,
    /// Bucket of the entry.
    pub bucket: i32,
    /// Whether the entry reached the last step.
    pub converted: bool,
}

/// The breakdown values an actor is run under, per the attribution.
fn values_of(p: &Params, events: &[Ev]) -> Vec<u32> {
    match p.attribution {
        None => vec![NO_VALUE],
        Some(Attribution::FirstTouch) => {
            vec![
                events
                    .iter()
                    .find(|e| e.bd != NO_VALUE)
                    .map_or(NO_VALUE, |e| e.bd),
            ]
        }
        Some(Attribution::LastTouch) => {
            vec![
                events
                    .iter()
                    .rev()
                    .find(|e| e.bd != NO_VALUE)
                    .map_or(NO_VALUE, |e| e.bd),
            ]
        }
        Some(Attribution::AllEvents) => {
            let mut v: Vec<u32> = events.iter().map(|e| e.bd).collect();
            v.sort_unstable();
            v.dedup();
            v
        }
        Some(Attribution::Step(k)) => {
            let mut v: Vec<u32> = events
                .iter()
                .filter(|e| e.steps & (1 << k) != 0)
                .map(|e| e.bd)
                .collect();
            if v.is_empty() {
                // Never did step k: counted up to where it got, under "no value".
                v.push(NO_VALUE);
            }
            v.sort_unstable();
            v.dedup();
            v
        }
    }
}

/// The events seen under breakdown value `value`.
fn events_for<'a>(p: &Params, events: &'a [Ev], value: u32) -> std::borrow::Cow<'a, [Ev]> {
    match p.attribution {
        Some(Attribution::AllEvents) => events.iter().filter(|e| e.bd == value).copied().collect(),
        _ => std::borrow::Cow::Borrowed(events),
    }
}

/// Runs the funnel over one actor's events, sorted by time. Returns one outcome per
/// breakdown value under which the actor entered the funnel and was not excluded.
pub fn run(p: &Params, events: &[Ev]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for value in values_of(p, events) {
        let evs = events_for(p, events, value);
        let outcome = match p.order {
            Order::Unordered => unordered(p, &evs, value),
            Order::Ordered | Order::Strict => ordered(p, &evs, value),
        };
        out.extend(outcome);
    }
    out
}

/// One attempt: the state of a slot. `N` ≥ the number of steps; attempts are copied on every
/// accepted step, so short funnels use short arrays.
#[derive(Debug, Clone, Copy)]
struct Attempt<const N: usize> {
    start: i64,
    excluded: bool,
    bits: u32,
    at: [i64; N],
    ids: [u32; N],
}

const UNSET: i64 = i64::MIN;

impl<const N: usize> Attempt<N> {
    fn entry(ts: i64) -> Self {
        Self {
            start: ts,
            excluded: false,
            bits: 0,
            at: [UNSET; N],
            ids: [u32::MAX; N],
        }
    }

    /// The time of the latest step this attempt reached (its start when none).
    fn last_time(&self) -> i64 {
        (0..N)
            .rev()
            .find(|k| self.bits & (1 << k) != 0)
            .map_or(self.start, |k| self.at[k])
    }
}

/// A pseudo-event of the machine: one event, or one matched step of it (same-time mode).
#[derive(Debug, Clone, Copy)]
struct Item {
    ts: i64,
    id: u32,
    steps: u32,
    excl: u32,
    bd: u32,
}

struct Ordered<'a, const N: usize> {
    p: &'a Params,
    value: u32,
    /// `slots[0]` is the entry slot; `slots[s]` holds the attempt that reached step `s − 1`.
    slots: Vec<Option<Attempt<N>>>,
    max: Option<(usize, Attempt<N>)>,
}

impl<const N: usize> Ordered<'_, N> {
    fn in_window(&self, a: &Attempt<N>, ts: i64) -> bool {
        ts - a.start <= self.p.window
    }

    /// Spec §3.3 step 2–5 for one (pseudo-)event.
    fn process(&mut self, e: &Item, same_time: bool) {
        let n = self.p.steps;
        // Matched items, visited in descending order: exclusions (as negative steps) first
        // from the highest, then steps from the highest.
        let exclusions = (1..n)
            .rev()
            .filter(|k| e.excl & (1 << k) != 0)
            .map(|k| (k + 1, true));
        let steps = (0..n)
            .rev()
            .filter(|k| e.steps & (1 << k) != 0)
            .map(|k| (k + 1, false));
        for (slot, exclusion) in exclusions.chain(steps) {
            let mut prev = slot - 1;
            let ok = |s: &Self, prev: usize| s.slots[prev].is_some_and(|a| s.in_window(&a, e.ts));
            let mut in_window = ok(self, prev);
            // Walk back over optional steps without a valid entry.
            while prev > 0 && !in_window && self.p.is_optional(prev - 1) {
                prev -= 1;
                in_window = ok(self, prev);
            }
            let Some(previous) = self.slots[prev] else {
                continue;
            };
            let already = self.slots[slot].is_some_and(|a| a.start == previous.start);
            if !in_window || already {
                continue;
            }
            if exclusion {
                if !previous.excluded {
                    if let Some(a) = self.slots[prev].as_mut() {
                        a.excluded = true;
                    }
                    if let Some((m, a)) = self.max.as_mut()
                        && *m == prev
                        && e.ts - a.start <= self.p.window
                    {
                        a.excluded = true;
                    }
                }
                continue;
            }
            let k = slot - 1;
            let unmatched_attribution = matches!(self.p.attribution, Some(Attribution::Step(s)) if s == k)
                && e.bd != self.value;
            let used = same_time && previous.ids[..].contains(&e.id);
            if unmatched_attribution || used {
                continue;
            }
            // Per-step window from the previous reached step.
            if k > 0
                && let Some(w) = self.p.step_window(k)
                && e.ts - previous.last_time() > w
            {
                continue;
            }
            let mut next = previous;
            next.bits |= 1 << k;
            next.at[k] = e.ts;
            next.ids[k] = e.id;
            if !previous.excluded {
                self.slots[slot] = Some(next);
            }
            let better = match &self.max {
                None => true,
                Some((m, a)) => slot > *m || (slot == *m && a.excluded),
            };
            if better {
                self.max = Some((slot, next));
            }
        }
        if !same_time && self.p.order == Order::Strict {
            for s in 1..=n {
                if e.steps & (1 << (s - 1)) == 0 {
                    self.slots[s] = None;
                }
            }
        }
    }
}

fn ordered(p: &Params, events: &[Ev], value: u32) -> Option<Outcome> {
    match p.steps {
        0..=4 => ordered_n::<4>(p, events, value),
        5..=8 => ordered_n::<8>(p, events, value),
        _ => ordered_n::<MAX_STEPS>(p, events, value),
    }
}

fn ordered_n<const N: usize>(p: &Params, events: &[Ev], value: u32) -> Option<Outcome> {
    let n = p.steps;
    let mut m: Ordered<'_, N> = Ordered {
        p,
        value,
        slots: vec![None; n + 1],
        max: None,
    };
    let mut i = 0;
    while i < events.len() {
        let ts = events[i].ts;
        let mut j = i;
        while j < events.len() && events[j].ts == ts {
            j += 1;
        }
        let group = &events[i..j];
        m.slots[0] = Some(Attempt::entry(ts));
        let item = |idx: usize, e: &Ev| Item {
            ts: e.ts,
            id: idx as u32,
            steps: e.steps,
            excl: e.excl,
            bd: e.bd,
        };
        if group
            .iter()
            .all(|e| e.steps == group[0].steps && e.excl == group[0].excl)
        {
            for (o, e) in group.iter().enumerate() {
                m.process(&item(i + o, e), false);
            }
        } else {
            // Different events at one time: one pseudo-event per matched step, exclusions
            // first, then the steps in ascending order; one event fills at most one step.
            let mut items: Vec<(i64, Item)> = Vec::new();
            for (o, e) in group.iter().enumerate() {
                let base = item(i + o, e);
                for k in 1..n {
                    if e.excl & (1 << k) != 0 {
                        items.push((
                            -(k as i64 + 1),
                            Item {
                                steps: 0,
                                excl: 1 << k,
                                ..base
                            },
                        ));
                    }
                }
                for k in 0..n {
                    if e.steps & (1 << k) != 0 {
                        items.push((
                            k as i64 + 1,
                            Item {
                                steps: 1 << k,
                                excl: 0,
                                ..base
                            },
                        ));
                    }
                }
            }
            items.sort_by_key(|(rank, _)| *rank);
            for (_, it) in &items {
                m.process(it, true);
            }
        }
        i = j;
        if m.slots[n].is_some() {
            break;
        }
    }
    let (_, a) = m.max?;
    if a.excluded {
        return None;
    }
    Some(Outcome {
        bd: value,
        bits: a.bits,
        at: (0..n)
            .map(|k| (a.bits & (1 << k) != 0).then_some(a.at[k]))
            .collect(),
    })
}

/// Spec §3.3.8: one queue of event times per step; the count is the number of non-empty
/// queues.
fn unordered(p: &Params, events: &[Ev], value: u32) -> Option<Outcome> {
    let n = p.steps;
    let mut queues: Vec<std::collections::VecDeque<i64>> = vec![Default::default(); n];
    let mut best: Option<(usize, Vec<i64>)> = None;
    let update = |queues: &[std::collections::VecDeque<i64>],
                  best: &mut Option<(usize, Vec<i64>)>| {
        let count = queues.iter().filter(|q| !q.is_empty()).count();
        if count > 0 && best.as_ref().is_none_or(|(c, _)| count > *c) {
            let mut firsts: Vec<i64> = queues.iter().filter_map(|q| q.front().copied()).collect();
            firsts.sort_unstable();
            *best = Some((count, firsts));
        }
    };
    let push = |queues: &mut Vec<std::collections::VecDeque<i64>>,
                best: &mut Option<(usize, Vec<i64>)>,
                e: &Ev| {
        if e.steps == 0 {
            return;
        }
        // Evict events that fell out of the window, recording the best state first (which
        // reads every queue, hence the index).
        let mut k = 0;
        while k < n {
            while queues[k]
                .front()
                .is_some_and(|front| front + p.window < e.ts)
            {
                update(queues, best);
                queues[k].pop_front();
            }
            k += 1;
        }
        // The matched step whose most recent queued event is oldest (empty = oldest).
        let mut chosen: Option<(usize, i64)> = None;
        for (k, queue) in queues.iter().enumerate() {
            if e.steps & (1 << k) == 0 {
                continue;
            }
            let recent = queue.back().copied().unwrap_or(i64::MIN);
            if chosen.is_none_or(|(_, t)| recent < t) {
                chosen = Some((k, recent));
            }
        }
        if let Some((k, _)) = chosen {
            queues[k].push_back(e.ts);
        }
        update(queues, best);
    };
    let mut i = 0;
    while i < events.len() {
        let ts = events[i].ts;
        let mut j = i;
        while j < events.len() && events[j].ts == ts {
            j += 1;
        }
        let group = &events[i..j];
        let excluded = group.iter().any(|e| e.excl != 0);
        for e in group {
            push(&mut queues, &mut best, e);
        }
        if excluded {
            // An exclusion clears every queue; the steps at the same time then count again.
            for q in queues.iter_mut() {
                q.clear();
            }
            for e in group {
                push(&mut queues, &mut best, e);
            }
        }
        i = j;
    }
    let (count, firsts) = best?;
    // "Completed N steps": the first N bits, times from the sorted earliest queued events.
    Some(Outcome {
        bd: value,
        bits: if count >= 32 {
            u32::MAX
        } else {
            (1 << count) - 1
        },
        at: (0..n).map(|k| firsts.get(k).copied()).collect(),
    })
}

/// Funnel trends (spec §3.7): per bucket entered, whether that entry converted.
/// `to_step` is the last step that must be reached (0-based); only entries that reached
/// `from_step` count.
pub fn run_trends(
    p: &Params,
    events: &[Ev],
    from_step: usize,
    to_step: usize,
) -> Vec<TrendOutcome> {
    let mut out = Vec::new();
    for value in values_of(p, events) {
        let evs = events_for(p, events, value);
        out.extend(trends_one(p, &evs, value, from_step, to_step));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exclusion {
    Not,
    Partial,
    Full,
}

#[derive(Debug, Clone)]
struct Entry {
    bucket: i32,
    /// `slots[s]` = (start time, excluded) of the entry's progress to step `s − 1`.
    slots: Vec<Option<(i64, bool)>>,
    max_step: usize,
    max_start: i64,
    max_excluded: Exclusion,
}

fn trends_one(
    p: &Params,
    events: &[Ev],
    value: u32,
    from_step: usize,
    to_step: usize,
) -> Vec<TrendOutcome> {
    // Steps beyond `to_step` are not part of the funnel.
    let n = to_step + 1;
    let mut entries: Vec<Entry> = Vec::new();
    // Entries that can no longer change: their bucket is over and their window has closed.
    let mut finished: Vec<Entry> = Vec::new();
    let mut results: BTreeMap<i32, bool> = BTreeMap::new();
    for e in events {
        retire(&mut entries, &mut finished, e, p.window);
        for (step, exclusion) in matched_steps(e, n) {
            let unmatched = matches!(p.attribution, Some(Attribution::Step(s)) if s + 1 == step)
                && e.bd != value;
            if step == 1 {
                if !unmatched && !results.contains_key(&e.bucket) {
                    enter(&mut entries, e, n);
                }
                continue;
            }
            let step = Step {
                step,
                exclusion,
                unmatched,
                n,
            };
            advance(&mut entries, e, &step, p.window, &mut results);
        }
        if p.order == Order::Strict {
            for x in entries.iter_mut() {
                for s in 1..=n {
                    if e.steps & (1 << (s - 1)) == 0 {
                        x.slots[s] = None;
                    }
                }
            }
        }
    }
    entries.extend(finished);
    if !entries.iter().any(|x| x.max_excluded == Exclusion::Full) {
        for x in &entries {
            if !results.contains_key(&x.bucket)
                && x.max_step > from_step
                && x.max_excluded != Exclusion::Partial
            {
                results.insert(x.bucket, false);
            }
        }
    }
    results
        .into_iter()
        .map(|(bucket, converted)| TrendOutcome {
            bd: value,
            bucket,
            converted,
        })
        .collect()
}

/// Moves the entries whose bucket is before `e`'s and whose window has closed to `finished`.
fn retire(entries: &mut Vec<Entry>, finished: &mut Vec<Entry>, e: &Ev, window: i64) {
    let mut i = 0;
    while i < entries.len() {
        let x = &entries[i];
        let latest = x.slots.iter().flatten().map(|(s, _)| *s).max();
        if x.bucket < e.bucket && latest.is_none_or(|s| e.ts - s > window) {
            finished.push(entries.swap_remove(i));
        } else {
            i += 1;
        }
    }
}

/// The (1-based step, is an exclusion) pairs `e` matches among the first `n` steps,
/// exclusions first, each from the last step down.
fn matched_steps(e: &Ev, n: usize) -> Vec<(usize, bool)> {
    let exclusions = (1..n).rev().filter(|k| e.excl & (1 << k) != 0);
    let steps = (0..n).rev().filter(|k| e.steps & (1 << k) != 0);
    exclusions
        .map(|k| (k + 1, true))
        .chain(steps.map(|k| (k + 1, false)))
        .collect()
}

/// `e` enters the funnel in its bucket: a new entry, or the bucket's entry restarted.
fn enter(entries: &mut Vec<Entry>, e: &Ev, n: usize) {
    let existing = entries.iter().position(|x| x.bucket == e.bucket);
    match existing {
        Some(i) if !(entries[i].max_step == 1 && entries[i].max_excluded != Exclusion::Not) => {
            entries[i].slots[1] = Some((e.ts, false));
        }
        _ => {
            let mut slots = vec![None; n + 1];
            slots[1] = Some((e.ts, false));
            let entry = Entry {
                bucket: e.bucket,
                slots,
                max_step: 1,
                max_start: e.ts,
                max_excluded: Exclusion::Not,
            };
            match existing {
                Some(i) => entries[i] = entry,
                None => entries.push(entry),
            }
        }
    }
}

/// A later step (or exclusion) an event matched.
struct Step {
    step: usize,
    exclusion: bool,
    /// The step's breakdown value is not the one evaluated (step attribution).
    unmatched: bool,
    n: usize,
}

/// Every entry that reached the step before `m.step` within the window moves on (or, for an
/// exclusion, is marked); entries reaching the last step convert in their bucket.
fn advance(
    entries: &mut Vec<Entry>,
    e: &Ev,
    m: &Step,
    window: i64,
    results: &mut BTreeMap<i32, bool>,
) {
    let step = m.step;
    let mut done = Vec::new();
    for (idx, x) in entries.iter_mut().enumerate() {
        let Some((prev_start, prev_excluded)) = x.slots[step - 1] else {
            continue;
        };
        let in_window = e.ts - prev_start <= window;
        let already = x.slots[step].is_some_and(|(s, _)| s == prev_start);
        if !in_window || already {
            continue;
        }
        if m.exclusion {
            if !prev_excluded {
                x.slots[step - 1] = Some((prev_start, true));
                if x.max_step == step - 1 && e.ts - x.max_start <= window {
                    x.max_excluded = Exclusion::Partial;
                }
            }
            continue;
        }
        if m.unmatched {
            continue;
        }
        if !prev_excluded {
            x.slots[step] = Some((prev_start, false));
        }
        if x.slots[m.n].is_some() {
            results.insert(x.bucket, true);
            done.push(idx);
        } else if step > x.max_step || (step == x.max_step && x.max_excluded == Exclusion::Partial)
        {
            x.max_step = step;
            x.max_start = e.ts;
            x.max_excluded = if prev_excluded {
                Exclusion::Full
            } else {
                Exclusion::Not
            };
        }
    }
    for idx in done.into_iter().rev() {
        entries.remove(idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000;
    const D: i64 = 24 * H;

    fn params(steps: usize, order: Order, window: i64) -> Params {
        Params {
            steps,
            order,
            window,
            step_windows: vec![],
            optional: 0,
            attribution: None,
        }
    }

    fn ev(ts: i64, step: Option<usize>) -> Ev {
        Ev {
            ts,
            steps: step.map_or(0, |k| 1 << k),
            excl: 0,
            bd: NO_VALUE,
            bucket: 0,
        }
    }

    fn reached(p: &Params, evs: &[Ev]) -> i32 {
        match run(p, evs).first() {
            None => 0,
            Some(o) => o.bits.count_ones() as i32,
        }
    }

    #[test]
    fn example_c_order_types() {
        // A, X, B, C.
        let axbc = [
            ev(0, Some(0)),
            ev(H, None),
            ev(2 * H, Some(1)),
            ev(3 * H, Some(2)),
        ];
        assert_eq!(reached(&params(3, Order::Ordered, 14 * D), &axbc), 3);
        assert_eq!(reached(&params(3, Order::Strict, 14 * D), &axbc), 1);
        assert_eq!(reached(&params(3, Order::Unordered, 14 * D), &axbc), 3);
        // B, A, C.
        let bac = [ev(0, Some(1)), ev(H, Some(0)), ev(2 * H, Some(2))];
        assert_eq!(reached(&params(3, Order::Ordered, 14 * D), &bac), 1);
        assert_eq!(reached(&params(3, Order::Unordered, 14 * D), &bac), 3);
        assert_eq!(reached(&params(3, Order::Strict, 14 * D), &bac), 1);
        // A, B, B, C.
        let abbc = [
            ev(0, Some(0)),
            ev(H, Some(1)),
            ev(2 * H, Some(1)),
            ev(3 * H, Some(2)),
        ];
        assert_eq!(reached(&params(3, Order::Ordered, 14 * D), &abbc), 3);
        // A and B at the same time, then C: 3 steps, A→B in zero seconds.
        let same = [ev(H, Some(1)), ev(H, Some(0)), ev(2 * H, Some(2))];
        let out = run(&params(3, Order::Ordered, 14 * D), &same);
        assert_eq!(out[0].bits, 0b111);
        assert_eq!(out[0].at, vec![Some(H), Some(H), Some(2 * H)]);
        // A X A B in strict mode: the fresh entry still converts to 2.
        let axab = [
            ev(0, Some(0)),
            ev(H, None),
            ev(2 * H, Some(0)),
            ev(3 * H, Some(1)),
        ];
        assert_eq!(reached(&params(2, Order::Strict, 14 * D), &axab), 2);
    }

    #[test]
    fn window_is_inclusive_from_the_first_step_and_reentry_gives_the_latest_start() {
        let p = params(3, Order::Ordered, D);
        // B exactly one window after A counts; C one µs later does not.
        let evs = [ev(0, Some(0)), ev(D, Some(1)), ev(D + 1, Some(2))];
        assert_eq!(reached(&p, &evs), 2);
        // Re-entry: A, A (later), B, C within the window of the second A.
        let evs = [
            ev(0, Some(0)),
            ev(2 * D, Some(0)),
            ev(2 * D + H, Some(1)),
            ev(2 * D + 2 * H, Some(2)),
        ];
        let out = run(&p, &evs);
        assert_eq!(out[0].bits, 0b111);
        assert_eq!(out[0].at[0], Some(2 * D));
    }

    #[test]
    fn exclusions_remove_the_actor_unless_a_clean_attempt_gets_as_far() {
        let mut p = params(2, Order::Ordered, D);
        p.optional = 0;
        let x = |ts| Ev {
            ts,
            steps: 0,
            excl: 0b10,
            bd: NO_VALUE,
            bucket: 0,
        };
        // A, X, B: excluded, the actor vanishes.
        assert!(run(&p, &[ev(0, Some(0)), x(H), ev(2 * H, Some(1))]).is_empty());
        // A, B, X: converted before the exclusion.
        assert_eq!(reached(&p, &[ev(0, Some(0)), ev(H, Some(1)), x(2 * H)]), 2);
        // A, X, then a clean A, B later (example D).
        let evs = [
            ev(0, Some(0)),
            x(H),
            ev(3 * D, Some(0)),
            ev(3 * D + H, Some(1)),
        ];
        assert_eq!(reached(&p, &evs), 2);
        // A, X only: excluded at step 1, removed from the whole funnel.
        assert!(run(&p, &[ev(0, Some(0)), x(H)]).is_empty());
    }

    #[test]
    fn optional_steps_can_be_skipped() {
        let mut p = params(3, Order::Ordered, D);
        p.optional = 0b010;
        let out = run(&p, &[ev(0, Some(0)), ev(H, Some(2))]);
        assert_eq!(out[0].bits, 0b101);
        let out = run(&p, &[ev(0, Some(0)), ev(H, Some(1)), ev(2 * H, Some(2))]);
        assert_eq!(out[0].bits, 0b111);
    }

    #[test]
    fn example_e_trends() {
        let p = params(2, Order::Ordered, D);
        let e = |ts: i64, step: usize| Ev {
            bucket: (ts / D) as i32,
            ..ev(ts, Some(step))
        };
        let p1 = run_trends(&p, &[e(10 * H, 0), e(12 * H, 1)], 0, 1);
        assert_eq!(p1.len(), 1);
        assert!(p1[0].converted && p1[0].bucket == 0);
        let p2 = run_trends(&p, &[e(9 * H, 0)], 0, 1);
        assert!(!p2[0].converted);
        let p3 = run_trends(&p, &[e(D + 10 * H, 0), e(3 * D + 10 * H, 1)], 0, 1);
        assert_eq!((p3[0].bucket, p3[0].converted), (1, false));
        let p4 = run_trends(
            &p,
            &[e(D + 8 * H, 0), e(2 * D + 8 * H, 0), e(2 * D + 9 * H, 1)],
            0,
            1,
        );
        assert_eq!(
            p4.iter()
                .map(|o| (o.bucket, o.converted))
                .collect::<Vec<_>>(),
            vec![(1, false), (2, true)]
        );
    }
}
