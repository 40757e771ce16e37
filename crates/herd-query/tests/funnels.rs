//! Funnels against hand-worked examples: spec §8 examples B, C and E, and cases for
//! exclusions, re-entry, strict order, same-timestamp events, optional steps, breakdown
//! attribution, time to convert, per-step windows, the open window and bad requests.

mod common;

use common::Fixture;
use herd_query::{
    Attribution, Breakdown, Error, FunnelExclusion, FunnelQuery, FunnelResult, FunnelStep,
    FunnelViz, Interval, Order, PropertySource, QueryEngine, Window, WindowUnit,
};

fn steps(names: &[&str]) -> Vec<FunnelStep> {
    names
        .iter()
        .map(|n| FunnelStep {
            event: Some((*n).to_string()),
            ..FunnelStep::default()
        })
        .collect()
}

fn funnel(names: &[&str], window: Window) -> FunnelQuery {
    FunnelQuery {
        steps: steps(names),
        window: Some(window),
        date_from: "2024-01-01".into(),
        date_to: "2024-01-31".into(),
        ..FunnelQuery::default()
    }
}

fn days(n: i64) -> Window {
    Window {
        value: n,
        unit: WindowUnit::Day,
    }
}

/// Runs `q`, and again with a funnel budget of 0 bytes (every batch's rows spill to disk
/// and are read back for evaluation): both must give the same answer.
async fn run(f: &Fixture, q: &FunnelQuery) -> FunnelResult {
    let r = f.engine.funnel(f.project, q, 0).await.expect("funnel");
    let spilling = f.engine.clone().with_funnel_memory(0);
    let s = spilling
        .funnel(f.project, q, 0)
        .await
        .expect("spilled funnel");
    assert_eq!(r, s, "the same funnel with its rows spilled");
    r
}

fn counts(r: &FunnelResult) -> Vec<u64> {
    r.lines[0].steps.iter().map(|s| s.count).collect()
}

fn invalid(e: Error) -> (String, String) {
    match e {
        Error::Invalid { field, message } => (field, message),
        other => panic!("expected invalid, got {other}"),
    }
}

/// Spec §8 example B.
async fn example_b() -> Fixture {
    let f = Fixture::new(&["company"]).await;
    f.events(&[
        ("2024-01-01T10:00:00Z", "u1", "signup", ["acme", ""], "{}"),
        ("2024-01-01T12:00:00Z", "u2", "install", ["acme", ""], "{}"),
        ("2024-01-03T09:00:00Z", "u3", "purchase", ["acme", ""], "{}"),
        ("2024-01-01T08:00:00Z", "u4", "signup", ["globex", ""], "{}"),
        (
            "2024-01-01T09:00:00Z",
            "u4",
            "install",
            ["globex", ""],
            "{}",
        ),
        (
            "2024-01-01T20:00:00Z",
            "u5",
            "purchase",
            ["globex", ""],
            "{}",
        ),
        (
            "2024-01-02T10:00:00Z",
            "u6",
            "install",
            ["initech", ""],
            "{}",
        ),
        ("2024-01-01T07:00:00Z", "u7", "signup", ["", ""], "{}"),
    ])
    .await;
    f
}

#[tokio::test]
async fn example_b_by_company_and_by_person() {
    let f = example_b().await;
    let mut q = funnel(&["signup", "install", "purchase"], days(1));
    q.aggregation_group_type = Some("company".into());
    let r = run(&f, &q).await;
    assert_eq!(counts(&r), [2, 2, 1]);
    let s = &r.lines[0].steps;
    assert_eq!(s[0].average_conversion_time, None);
    assert_eq!(s[1].average_conversion_time, Some(5400.0));
    assert_eq!(s[1].median_conversion_time, Some(5400.0));
    assert_eq!(s[2].average_conversion_time, Some(39600.0));
    assert_eq!(s[2].median_conversion_time, Some(39600.0));
    assert_eq!(s[0].name, "signup");

    q.aggregation_group_type = None;
    let r = run(&f, &q).await;
    assert_eq!(counts(&r), [3, 1, 0]);
    assert_eq!(r.lines[0].steps[1].average_conversion_time, Some(3600.0));
    assert_eq!(r.lines[0].steps[2].average_conversion_time, None);

    // The same answers from Parquet files as from the write buffer.
    f.flush().await;
    q.aggregation_group_type = Some("company".into());
    assert_eq!(counts(&run(&f, &q).await), [2, 2, 1]);
}

/// A session whose memory pool holds 16 KiB: the pool refuses the funnel's rows (a bucket's
/// first chunk is 32 KiB), so they spill, and the answers are the same.
#[tokio::test]
async fn a_small_memory_pool_makes_the_funnel_spill_with_the_same_answers() {
    let f = example_b().await;
    f.flush().await;
    let small = QueryEngine::with_options(f.db.clone(), Some(2), Some(16 << 10)).expect("engine");
    let spills = regex::Regex::new(r"FunnelExec: .*spill_count=([1-9][0-9]*),").expect("re");
    for group in [Some("company"), None] {
        let mut q = funnel(&["signup", "install", "purchase"], days(1));
        q.aggregation_group_type = group.map(str::to_string);
        let (want, plan) = f
            .engine
            .analyze_funnel(f.project, &q, 0)
            .await
            .expect("funnel");
        assert!(
            plan.contains("spill_count=0,"),
            "no spills unbounded: {plan}"
        );
        let (got, plan) = small
            .analyze_funnel(f.project, &q, 0)
            .await
            .expect("small pool");
        assert_eq!(got, want, "{group:?}");
        assert!(spills.is_match(&plan), "the small pool spills: {plan}");
    }
}

/// Spec §8 example C: one actor, A→B→C, window 14 days.
#[tokio::test]
async fn example_c_order_types() {
    type Case<'a> = (&'a [&'a str], [u64; 3], [u64; 3], [u64; 3]);
    let cases: &[Case<'_>] = &[
        // events, ordered, strict, unordered
        (&["A", "X", "B", "C"], [1, 1, 1], [1, 0, 0], [1, 1, 1]),
        (&["B", "A", "C"], [1, 0, 0], [1, 0, 0], [1, 1, 1]),
        // Strict: the second B matches step B itself, so the chain survives.
        (&["A", "B", "B", "C"], [1, 1, 1], [1, 1, 1], [1, 1, 1]),
        (&["A", "B", "X", "C"], [1, 1, 1], [1, 1, 0], [1, 1, 1]),
    ];
    for (events, ordered, strict, unordered) in cases {
        let f = Fixture::new(&[]).await;
        let rows: Vec<(String, &str)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("2024-01-02T{:02}:00:00Z", 10 + i), *e))
            .collect();
        let evs: Vec<common::Ev<'_>> = rows
            .iter()
            .map(|(ts, e)| (ts.as_str(), "p", *e, ["", ""], "{}"))
            .collect();
        f.events(&evs).await;
        for (order, want) in [
            (Order::Ordered, ordered),
            (Order::Strict, strict),
            (Order::Unordered, unordered),
        ] {
            let mut q = funnel(&["A", "B", "C"], days(14));
            q.order = order;
            assert_eq!(counts(&run(&f, &q).await), *want, "{events:?} {order:?}");
        }
    }
    // A and B at the same second, then C: 3 steps, the zero-second A→B left out of the
    // step-2 average.
    let f = Fixture::new(&[]).await;
    f.events(&[
        ("2024-01-02T10:00:00Z", "p", "B", ["", ""], "{}"),
        ("2024-01-02T10:00:00Z", "p", "A", ["", ""], "{}"),
        ("2024-01-02T11:00:00Z", "p", "C", ["", ""], "{}"),
        // A second person converts A→B in 60 s.
        ("2024-01-02T10:00:00Z", "q", "A", ["", ""], "{}"),
        ("2024-01-02T10:01:00Z", "q", "B", ["", ""], "{}"),
    ])
    .await;
    let r = run(&f, &funnel(&["A", "B", "C"], days(14))).await;
    assert_eq!(counts(&r), [2, 2, 1]);
    assert_eq!(r.lines[0].steps[1].average_conversion_time, Some(60.0));
    assert_eq!(r.lines[0].steps[2].average_conversion_time, Some(3600.0));
    // Unordered funnels name their steps by how many were completed.
    let mut q = funnel(&["A", "B", "C"], days(14));
    q.order = Order::Unordered;
    let r = run(&f, &q).await;
    assert_eq!(r.lines[0].steps[1].name, "Completed 2 steps");
}

/// A first step whose event a later step names too: its rows are not only entries.
#[tokio::test]
async fn a_first_step_repeated_later_counts_its_events_as_both() {
    let f = Fixture::new(&[]).await;
    f.events(&[
        ("2024-01-02T10:00:00Z", "p", "A", ["", ""], "{}"),
        ("2024-01-02T11:00:00Z", "p", "B", ["", ""], "{}"),
        ("2024-01-02T12:00:00Z", "p", "A", ["", ""], "{}"),
        // One A only: enters, never converts.
        ("2024-01-02T10:00:00Z", "q", "A", ["", ""], "{}"),
        // B before A: enters at A, nothing after it.
        ("2024-01-02T10:00:00Z", "r", "B", ["", ""], "{}"),
        ("2024-01-02T11:00:00Z", "r", "A", ["", ""], "{}"),
    ])
    .await;
    assert_eq!(
        counts(&run(&f, &funnel(&["A", "B", "A"], days(14))).await),
        [3, 1, 1]
    );
}

/// Spec §8 example E: funnel trends, an actor counts once per bucket it entered.
#[tokio::test]
async fn example_e_funnel_trends() {
    let f = Fixture::new(&[]).await;
    f.events(&[
        ("2024-01-01T10:00:00Z", "p1", "A", ["", ""], "{}"),
        ("2024-01-01T12:00:00Z", "p1", "B", ["", ""], "{}"),
        ("2024-01-01T09:00:00Z", "p2", "A", ["", ""], "{}"),
        ("2024-01-02T10:00:00Z", "p3", "A", ["", ""], "{}"),
        ("2024-01-04T10:00:00Z", "p3", "B", ["", ""], "{}"),
        ("2024-01-02T08:00:00Z", "p4", "A", ["", ""], "{}"),
        ("2024-01-03T08:00:00Z", "p4", "A", ["", ""], "{}"),
        ("2024-01-03T09:00:00Z", "p4", "B", ["", ""], "{}"),
    ])
    .await;
    let mut q = funnel(&["A", "B"], days(1));
    q.viz = FunnelViz::Trends;
    q.interval = Some(Interval::Day);
    q.date_to = "2024-01-04".into();
    let r = run(&f, &q).await;
    let d = &r.trends[0].data;
    let got: Vec<(&str, u64, u64, f64)> = d
        .iter()
        .map(|p| {
            (
                p.label.as_str(),
                p.reached_from_step_count,
                p.reached_to_step_count,
                p.conversion_rate,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("2024-01-01", 2, 1, 50.0),
            ("2024-01-02", 2, 0, 0.0),
            ("2024-01-03", 1, 1, 100.0),
            ("2024-01-04", 0, 0, 0.0),
        ]
    );
}

#[tokio::test]
async fn exclusions_drop_the_actor_and_a_clean_attempt_brings_it_back() {
    let f = Fixture::new(&[]).await;
    f.events(&[
        // p1: A, X, B → excluded, gone from every step.
        ("2024-01-02T10:00:00Z", "p1", "A", ["", ""], "{}"),
        ("2024-01-02T11:00:00Z", "p1", "X", ["", ""], "{}"),
        ("2024-01-02T12:00:00Z", "p1", "B", ["", ""], "{}"),
        // p2: A, B, X → converted before the exclusion.
        ("2024-01-02T10:00:00Z", "p2", "A", ["", ""], "{}"),
        ("2024-01-02T11:00:00Z", "p2", "B", ["", ""], "{}"),
        ("2024-01-02T12:00:00Z", "p2", "X", ["", ""], "{}"),
        // p3: A, X, then a clean A, B three days later (spec example D).
        ("2024-01-02T10:00:00Z", "p3", "A", ["", ""], "{}"),
        ("2024-01-02T11:00:00Z", "p3", "X", ["", ""], "{}"),
        ("2024-01-05T10:00:00Z", "p3", "A", ["", ""], "{}"),
        ("2024-01-05T11:00:00Z", "p3", "B", ["", ""], "{}"),
        // p4: A, then X after the window closed, then nothing: a plain drop-off.
        ("2024-01-02T10:00:00Z", "p4", "A", ["", ""], "{}"),
        ("2024-01-04T11:00:00Z", "p4", "X", ["", ""], "{}"),
    ])
    .await;
    let mut q = funnel(&["A", "B"], days(1));
    q.exclusions = vec![FunnelExclusion {
        event: Some("X".into()),
        from_step: 0,
        to_step: 1,
        ..FunnelExclusion::default()
    }];
    assert_eq!(counts(&run(&f, &q).await), [3, 2]);
    // Without the exclusion everyone entered and p1..p3 converted.
    q.exclusions.clear();
    assert_eq!(counts(&run(&f, &q).await), [4, 3]);
}

#[tokio::test]
async fn reentry_takes_the_latest_start_and_the_window_is_inclusive() {
    let f = Fixture::new(&[]).await;
    f.events(&[
        // A, A 2 days later, B an hour after: converts from the second A (1 h).
        ("2024-01-02T10:00:00Z", "p1", "A", ["", ""], "{}"),
        ("2024-01-04T10:00:00Z", "p1", "A", ["", ""], "{}"),
        ("2024-01-04T11:00:00Z", "p1", "B", ["", ""], "{}"),
        // B exactly one window (1 day) after A: inside.
        ("2024-01-02T10:00:00Z", "p2", "A", ["", ""], "{}"),
        ("2024-01-03T10:00:00Z", "p2", "B", ["", ""], "{}"),
        // B one second too late.
        ("2024-01-02T10:00:00Z", "p3", "A", ["", ""], "{}"),
        ("2024-01-03T10:00:01Z", "p3", "B", ["", ""], "{}"),
    ])
    .await;
    let r = run(&f, &funnel(&["A", "B"], days(1))).await;
    assert_eq!(counts(&r), [3, 2]);
    assert_eq!(r.lines[0].steps[1].median_conversion_time, Some(45000.0));
    assert_eq!(r.lines[0].steps[1].average_conversion_time, Some(45000.0));
}

#[tokio::test]
async fn strict_group_funnels_are_broken_only_by_events_of_the_same_group() {
    let f = Fixture::new(&["company"]).await;
    f.events(&[
        ("2024-01-02T10:00:00Z", "u1", "A", ["acme", ""], "{}"),
        // Another company's event in between does not break acme's chain…
        ("2024-01-02T10:30:00Z", "u9", "X", ["globex", ""], "{}"),
        ("2024-01-02T11:00:00Z", "u2", "B", ["acme", ""], "{}"),
        // …but an event of initech's own breaks initech's.
        ("2024-01-02T10:00:00Z", "u3", "A", ["initech", ""], "{}"),
        ("2024-01-02T10:30:00Z", "u3", "X", ["initech", ""], "{}"),
        ("2024-01-02T11:00:00Z", "u3", "B", ["initech", ""], "{}"),
    ])
    .await;
    let mut q = funnel(&["A", "B"], days(1));
    q.order = Order::Strict;
    q.aggregation_group_type = Some("company".into());
    assert_eq!(counts(&run(&f, &q).await), [2, 1]);
}

#[tokio::test]
async fn optional_steps_may_be_skipped_and_count_only_when_done() {
    let f = Fixture::new(&[]).await;
    f.events(&[
        ("2024-01-02T10:00:00Z", "p1", "A", ["", ""], "{}"),
        ("2024-01-02T11:00:00Z", "p1", "C", ["", ""], "{}"),
        ("2024-01-02T10:00:00Z", "p2", "A", ["", ""], "{}"),
        ("2024-01-02T10:30:00Z", "p2", "B", ["", ""], "{}"),
        ("2024-01-02T11:00:00Z", "p2", "C", ["", ""], "{}"),
        ("2024-01-02T10:00:00Z", "p3", "A", ["", ""], "{}"),
    ])
    .await;
    let mut q = funnel(&["A", "B", "C"], days(1));
    q.steps[1].optional = true;
    let r = run(&f, &q).await;
    assert_eq!(counts(&r), [3, 1, 2]);
    assert!(r.lines[0].steps[1].optional);
    // C's time is measured from the previous step reached: 1 h for p1, 30 min for p2.
    assert_eq!(r.lines[0].steps[2].average_conversion_time, Some(2700.0));
}

#[tokio::test]
async fn per_step_windows_and_the_window_past_date_to() {
    let f = Fixture::new(&[]).await;
    f.events(&[
        // B 2 h after A, C 3 h after B.
        ("2024-01-02T10:00:00Z", "p1", "A", ["", ""], "{}"),
        ("2024-01-02T12:00:00Z", "p1", "B", ["", ""], "{}"),
        ("2024-01-02T15:00:00Z", "p1", "C", ["", ""], "{}"),
        // Entered on the last day of the range, converted the day after.
        ("2024-01-31T22:00:00Z", "p2", "A", ["", ""], "{}"),
        ("2024-02-01T01:00:00Z", "p2", "B", ["", ""], "{}"),
        ("2024-02-01T02:00:00Z", "p2", "C", ["", ""], "{}"),
        // Entered after the range: never counts.
        ("2024-02-01T03:00:00Z", "p3", "A", ["", ""], "{}"),
    ])
    .await;
    let q = funnel(&["A", "B", "C"], days(1));
    assert_eq!(counts(&run(&f, &q).await), [2, 1, 1]);
    let mut open = q.clone();
    open.window_past_date_to = true;
    assert_eq!(counts(&run(&f, &open).await), [2, 2, 2]);
    let mut per_step = q.clone();
    per_step.steps[2].window = Some(Window {
        value: 2,
        unit: WindowUnit::Hour,
    });
    assert_eq!(counts(&run(&f, &per_step).await), [2, 1, 0]);
}

#[tokio::test]
async fn breakdown_attribution() {
    let f = Fixture::new(&["company"]).await;
    f.events(&[
        // p1: A on chrome, B on safari.
        (
            "2024-01-02T10:00:00Z",
            "p1",
            "A",
            ["c1", ""],
            r#"{"browser":"chrome"}"#,
        ),
        (
            "2024-01-02T11:00:00Z",
            "p1",
            "B",
            ["c1", ""],
            r#"{"browser":"safari"}"#,
        ),
        // p2: A without a browser, then B on safari.
        ("2024-01-02T10:00:00Z", "p2", "A", ["c2", ""], "{}"),
        (
            "2024-01-02T11:00:00Z",
            "p2",
            "B",
            ["c2", ""],
            r#"{"browser":"safari"}"#,
        ),
        // p3: A on chrome only.
        (
            "2024-01-02T10:00:00Z",
            "p3",
            "A",
            ["c2", ""],
            r#"{"browser":"chrome"}"#,
        ),
    ])
    .await;
    f.group(0, "c1", serde_json::json!({"plan": "pro"})).await;
    let lines = |r: &FunnelResult| -> Vec<(String, Vec<u64>)> {
        r.lines
            .iter()
            .map(|l| {
                (
                    l.breakdown_value.clone().unwrap_or_default(),
                    l.steps.iter().map(|s| s.count).collect(),
                )
            })
            .collect()
    };
    let mut q = funnel(&["A", "B"], days(1));
    q.breakdown = Some(Breakdown {
        property: "browser".into(),
        source: PropertySource::Event,
        limit: 0,
        hide_other: false,
    });
    let v = |s: &str, c: [u64; 2]| (s.to_string(), c.to_vec());
    // First touch: p1 chrome, p2 safari (its first event has no value), p3 chrome.
    assert_eq!(
        lines(&run(&f, &q).await),
        [v("chrome", [2, 1]), v("safari", [1, 1])]
    );
    q.attribution = Attribution::LastTouch;
    assert_eq!(
        lines(&run(&f, &q).await),
        [v("safari", [2, 2]), v("chrome", [1, 0])]
    );
    // All events: each value runs the funnel over its own events.
    q.attribution = Attribution::AllEvents;
    assert_eq!(
        lines(&run(&f, &q).await),
        [v("chrome", [2, 0]), v("", [1, 0])]
    );
    // Step 1 must be done with the value; step 0 may have any. p3 never did step 1: it
    // counts at step 0 under no value.
    q.attribution = Attribution::Step(1);
    assert_eq!(
        lines(&run(&f, &q).await),
        [v("safari", [2, 2]), v("", [1, 0])]
    );
    // The limit merges the rest into "Other".
    q.attribution = Attribution::FirstTouch;
    q.breakdown.as_mut().expect("breakdown").limit = 1;
    assert_eq!(
        lines(&run(&f, &q).await),
        [v("chrome", [2, 1]), v("Other", [1, 1])]
    );
    // Breakdown by the company's current plan; companies without one get ''.
    q.breakdown = Some(Breakdown {
        property: "plan".into(),
        source: PropertySource::Group("company".into()),
        limit: 0,
        hide_other: false,
    });
    q.aggregation_group_type = Some("company".into());
    assert_eq!(lines(&run(&f, &q).await), [v("", [1, 1]), v("pro", [1, 1])]);
}

#[tokio::test]
async fn time_to_convert_histogram() {
    let f = Fixture::new(&[]).await;
    // Conversion times 0, 60, 120, 600 s.
    for (who, secs) in [("p1", 0), ("p2", 60), ("p3", 120), ("p4", 600)] {
        let a = "2024-01-02T10:00:00Z";
        let b = format!("2024-01-02T10:{:02}:{:02}Z", secs / 60, secs % 60);
        f.events(&[
            (a, who, "A", ["", ""], "{}"),
            (&b, who, "B", ["", ""], "{}"),
        ])
        .await;
    }
    let mut q = funnel(&["A", "B"], days(1));
    q.viz = FunnelViz::TimeToConvert;
    q.bin_count = Some(3);
    let r = run(&f, &q).await;
    let t = r.time_to_convert.expect("histogram");
    // width = ceil(600 / 3) = 200; 600 = 3 · 200 lands in the extra last bin.
    assert_eq!(t.bins, [(0.0, 3), (200.0, 0), (400.0, 0), (600.0, 1)]);
    assert_eq!(t.average_conversion_time, Some(195.0));
}

async fn err(q: FunnelQuery) -> (String, String) {
    let f = Fixture::new(&["company"]).await;
    invalid(
        f.engine
            .funnel(f.project, &q, 0)
            .await
            .expect_err("must be refused"),
    )
}

#[tokio::test]
async fn bad_requests_name_the_problem() {
    let base = funnel(&["A", "B", "C"], days(1));

    let (field, msg) = err(funnel(&["A"], days(1))).await;
    assert_eq!(field, "steps");
    assert!(msg.contains("at least 2 steps"), "{msg}");

    let (field, msg) = err(funnel(&["A", "B"], days(0))).await;
    assert_eq!(field, "window");
    assert!(msg.contains("positive"), "{msg}");

    let mut q = base.clone();
    q.exclusions = vec![FunnelExclusion {
        event: Some("X".into()),
        from_step: 1,
        to_step: 3,
        ..FunnelExclusion::default()
    }];
    let (field, msg) = err(q).await;
    assert_eq!(field, "exclusions[0]");
    assert!(msg.contains("to_step 3"), "{msg}");

    let mut q = base.clone();
    q.attribution = Attribution::Step(3);
    q.breakdown = Some(Breakdown {
        property: "browser".into(),
        source: PropertySource::Event,
        limit: 0,
        hide_other: false,
    });
    let (field, msg) = err(q).await;
    assert_eq!(field, "attribution.step");
    assert!(msg.contains("out of range"), "{msg}");

    let mut q = base.clone();
    q.order = Order::Unordered;
    q.exclusions = vec![FunnelExclusion {
        event: Some("X".into()),
        from_step: 0,
        to_step: 1,
        ..FunnelExclusion::default()
    }];
    let (field, msg) = err(q).await;
    assert_eq!(field, "exclusions[0]");
    assert!(msg.contains("unordered"), "{msg}");

    let mut q = base.clone();
    q.exclusions = vec![FunnelExclusion {
        event: Some("B".into()),
        from_step: 0,
        to_step: 1,
        ..FunnelExclusion::default()
    }];
    let (_, msg) = err(q).await;
    assert!(msg.contains("matches every event of step 1"), "{msg}");

    let mut q = base.clone();
    q.steps[0].optional = true;
    let (field, _) = err(q).await;
    assert_eq!(field, "steps[0].optional");

    let mut q = base.clone();
    q.order = Order::Unordered;
    q.viz = FunnelViz::Trends;
    let (field, msg) = err(q).await;
    assert_eq!(field, "viz");
    assert!(msg.contains("ordered or strict"), "{msg}");

    let mut q = base.clone();
    q.order = Order::Unordered;
    q.window_past_date_to = true;
    let (field, _) = err(q).await;
    assert_eq!(field, "window_past_date_to");

    let mut q = base.clone();
    q.aggregation_group_type = Some("planet".into());
    let (field, msg) = err(q).await;
    assert_eq!(field, "aggregation_group_type");
    assert!(msg.contains("unknown group type"), "{msg}");
}

#[tokio::test]
async fn more_actors_than_one_output_batch_are_each_counted_once() {
    // DataFusion slices the aggregate's output into batches that share one list-values
    // array; every actor must still count once.
    let f = Fixture::new(&[]).await;
    let base = common::micros("2024-01-02T10:00:00Z");
    let mut rows = Vec::new();
    for i in 0..20_000u64 {
        for (k, event) in ["A", "B"].iter().enumerate() {
            if k == 1 && i % 4 == 0 {
                continue;
            }
            let t = base + (i as i64) * 1_000 + k as i64 * 60_000_000;
            rows.push(herd_core::Event {
                uuid: uuid::Uuid::from_u128(u128::from(i * 2 + k as u64 + 1)),
                event: (*event).to_string(),
                distinct_id: format!("u{i}"),
                timestamp: t,
                properties: "{}".into(),
                groups: Default::default(),
                created_at: t,
            });
        }
    }
    f.write(rows).await;
    let r = run(&f, &funnel(&["A", "B"], days(1))).await;
    assert_eq!(counts(&r), [20_000, 15_000]);
}
