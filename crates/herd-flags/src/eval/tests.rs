//! Evaluation and validation tests. Hash values used below (posthog-python's `_hash`):
//! `person-flag`: user-1 0.5076, user-2 0.8775, dev-9 0.7963, anon-1 0.8777; variant hash of
//! user-1 0.0581. `group-flag`: id:5 0.6579, variant 0.2379. `holdout-user-1` 0.1781.

use chrono::TimeZone;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn groups() -> GroupTypes {
    GroupTypes::new([("company", 0), ("project", 1)])
}

fn flag(v: Value) -> FeatureFlag {
    serde_json::from_value(v).unwrap()
}

fn person_flag(rollout: f64, properties: Value) -> FeatureFlag {
    flag(
        json!({"id": 3, "key": "person-flag", "version": 2, "filters": {
        "groups": [{"properties": properties, "rollout_percentage": rollout}]}}),
    )
}

/// The protocol spec §3.5 example: company (index 0) flag on `plan = enterprise`.
fn group_flag(rollout: f64) -> FeatureFlag {
    flag(json!({"id": 1, "key": "group-flag", "filters": {
        "aggregation_group_type_index": 0,
        "groups": [{"properties": [{"key": "plan", "value": ["enterprise"], "operator": "exact",
                                    "type": "group", "group_type_index": 0}],
                    "rollout_percentage": rollout, "variant": null}],
        "payloads": {"true": "{\"x\":1}"}}}))
}

fn ctx(distinct_id: &str) -> EvalContext {
    let mut c = EvalContext::new(distinct_id);
    c.now = Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0).unwrap();
    c
}

fn with_company(mut c: EvalContext, key: &str, props: Value) -> EvalContext {
    c.groups.insert("company".into(), key.into());
    if let Value::Object(m) = props {
        c.group_properties.insert("company".into(), m);
    }
    c
}

fn with_person(mut c: EvalContext, props: Value) -> EvalContext {
    if let Value::Object(m) = props {
        c.person_properties = m;
    }
    c
}

fn decide(f: &FeatureFlag, c: &EvalContext) -> FlagResult {
    match evaluate(f, &groups(), c).unwrap() {
        Evaluation::Decided(r) => r,
        other => panic!("expected a decision, got {other:?}"),
    }
}

fn missing(f: &FeatureFlag, c: &EvalContext) -> Vec<PropertyRef> {
    match evaluate(f, &groups(), c).unwrap() {
        Evaluation::Inconclusive { missing, .. } => missing,
        other => panic!("expected inconclusive, got {other:?}"),
    }
}

fn reason(r: &FlagResult) -> (&'static str, Option<usize>, &str) {
    (
        r.reason.code.as_str(),
        r.reason.condition_index,
        r.reason.description.as_str(),
    )
}

fn invalid(v: Value) -> String {
    flag(v).validate(&groups()).unwrap_err().to_string()
}

// ---------------------------------------------------------------- validation messages

#[test]
fn validation_empty_and_bad_keys() {
    assert_eq!(invalid(json!({"key": ""})), "key: must not be empty");
    assert_eq!(
        invalid(json!({"key": "a b"})),
        "key: \"a b\" may contain only letters, digits, '-' and '_'"
    );
    assert!(
        flag(json!({"key": "k".repeat(400)}))
            .validate(&groups())
            .is_ok()
    );
    assert_eq!(
        invalid(json!({"key": "k".repeat(1 << 20)})),
        "key: 1048576 characters, over the 400-character limit"
    );
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"groups": [{"properties": [
            {"key": "", "value": "x"}]}]}})),
        "filters.groups[0].properties[0].key: must not be empty"
    );
    assert_eq!(
        invalid(
            json!({"key": "k", "filters": {"multivariate": {"variants": [
            {"key": "", "rollout_percentage": 100}]}}})
        ),
        "filters.multivariate.variants[0].key: must not be empty"
    );
}

#[test]
fn validation_person_property_in_group_flag() {
    assert_eq!(
        invalid(
            json!({"key": "k", "filters": {"aggregation_group_type_index": 0, "groups": [
            {"properties": [{"key": "email", "value": "a@b.c", "type": "person"}]}]}})
        ),
        "filters.groups[0].properties[0].type: person property \"email\" in a group flag: \
         conditions aggregated by group type 0 (\"company\") take only properties with \
         \"type\": \"group\" and \"group_type_index\": 0"
    );
    // No type means person.
    assert!(
        invalid(
            json!({"key": "k", "filters": {"aggregation_group_type_index": 1, "groups": [
            {"properties": [{"key": "email", "value": "a@b.c"}]}]}})
        )
        .contains("person property \"email\" in a group flag")
    );
}

#[test]
fn validation_group_property_in_person_flag_and_mismatched_index() {
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"groups": [{"properties": [
            {"key": "plan", "value": "pro", "type": "group", "group_type_index": 0}]}]}})),
        "filters.groups[0].properties[0].type: group property \"plan\" in a person flag: set \
         the flag's aggregation_group_type_index to target groups"
    );
    assert_eq!(
        invalid(
            json!({"key": "k", "filters": {"aggregation_group_type_index": 0, "groups": [
            {"properties": []},
            {"properties": [{"key": "plan", "value": "pro", "type": "group",
                             "group_type_index": 1}]}]}})
        ),
        "filters.groups[1].properties[0].group_type_index: group property \"plan\" has \
         group_type_index 1, but the condition aggregates by group type 0"
    );
}

#[test]
fn validation_unknown_group_type_index() {
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"aggregation_group_type_index": 3}})),
        "filters.aggregation_group_type_index: unknown group type index 3 (this project has \
         0 \"company\", 1 \"project\")"
    );
    assert_eq!(
        invalid(
            json!({"key": "k", "filters": {"aggregation_group_type_index": 0, "groups": [
            {"properties": [{"key": "plan", "value": "pro", "type": "group",
                             "group_type_index": 4}]}]}})
        ),
        "filters.groups[0].properties[0].group_type_index: unknown group type index 4 (this \
         project has 0 \"company\", 1 \"project\")"
    );
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"groups": [
            {"aggregation_group_type_index": 2}]}})),
        "filters.groups[0].aggregation_group_type_index: unknown group type index 2 (this \
         project has 0 \"company\", 1 \"project\")"
    );
    let err = flag(json!({"key": "k", "filters": {"aggregation_group_type_index": 0}}))
        .validate(&GroupTypes::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "filters.aggregation_group_type_index: unknown group type index 0 (this project has \
         no group types)"
    );
}

#[test]
fn validation_variants() {
    assert_eq!(
        invalid(
            json!({"key": "k", "filters": {"multivariate": {"variants": [
            {"key": "a", "rollout_percentage": 50}, {"key": "b", "rollout_percentage": 40}]}}})
        ),
        "filters.multivariate.variants: variant rollout percentages sum to 90, not 100"
    );
    assert_eq!(
        invalid(
            json!({"key": "k", "filters": {"multivariate": {"variants": [
            {"key": "a", "rollout_percentage": 50}, {"key": "a", "rollout_percentage": 50}]}}})
        ),
        "filters.multivariate.variants[1].key: duplicate variant key \"a\""
    );
    assert_eq!(
        invalid(
            json!({"key": "k", "filters": {"multivariate": {"variants": [
            {"key": "a", "rollout_percentage": 150}, {"key": "b", "rollout_percentage": -50}]}}})
        ),
        "filters.multivariate.variants[0].rollout_percentage: 150 is outside 0..=100"
    );
    assert_eq!(
        invalid(json!({"key": "k", "filters": {
            "multivariate": {"variants": [{"key": "a", "rollout_percentage": 100}]},
            "groups": [{"variant": "b"}]}})),
        "filters.groups[0].variant: variant override \"b\" is not a variant of this flag"
    );
    // Thirds that sum to 100 within float error are fine.
    flag(
        json!({"key": "k", "filters": {"multivariate": {"variants": [
        {"key": "a", "rollout_percentage": 33.3}, {"key": "b", "rollout_percentage": 33.3},
        {"key": "c", "rollout_percentage": 33.4}]}}}),
    )
    .validate(&groups())
    .unwrap();
}

#[test]
fn validation_operators_values_and_percentages() {
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"groups": [{"properties": [
            {"key": "a", "value": "x", "operator": "like"}]}]}})),
        "filters.groups[0].properties[0].operator: unknown operator \"like\""
    );
    let msg = invalid(
        json!({"key": "k", "filters": {"groups": [{}, {"properties": [
        {"key": "email", "value": "[a-", "operator": "regex"}]}]}}),
    );
    assert!(
        msg.starts_with("filters.groups[1].properties[0].value: invalid regex \"[a-\": "),
        "{msg}"
    );
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"groups": [{"properties": [
            {"key": "n", "value": "many", "operator": "gte"}]}]}})),
        "filters.groups[0].properties[0].value: operator gte needs a number, got \"many\""
    );
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"groups": [{"properties": [
            {"key": "n", "operator": "icontains"}]}]}})),
        "filters.groups[0].properties[0].value: operator icontains needs a value"
    );
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"groups": [
            {"rollout_percentage": 100}, {"rollout_percentage": 101}]}})),
        "filters.groups[1].rollout_percentage: 101 is outside 0..=100"
    );
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"groups": [{"rollout_percentage": -1}]}})),
        "filters.groups[0].rollout_percentage: -1 is outside 0..=100"
    );
    assert_eq!(
        invalid(
            json!({"key": "k", "filters": {"holdout": {"id": 1, "exclusion_percentage": 100.5}}})
        ),
        "filters.holdout.exclusion_percentage: 100.5 is outside 0..=100"
    );
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"groups": [{"properties": [
            {"key": "id", "value": 4, "type": "cohort", "operator": "in"}]}]}})),
        "filters.groups[0].properties[0].type: cohort filters are not supported (herd has no \
         cohorts)"
    );
    assert_eq!(
        invalid(json!({"key": "k", "filters": {"groups": [{"properties": [
            {"key": "a", "value": 1, "type": "event"}]}]}})),
        "filters.groups[0].properties[0].type: unknown property type \"event\" (expected \
         \"person\" or \"group\")"
    );
    assert_eq!(
        invalid(json!({"key": "k", "bucketing_identifier": "ip"})),
        "bucketing_identifier: must be \"distinct_id\" or \"device_id\", got \"ip\""
    );
    assert_eq!(
        invalid(
            json!({"key": "k", "filters": {"super_groups": [{"properties": [
            {"key": "$feature_enrollment/k", "value": ["true"], "operator": "nope"}]}]}})
        ),
        "filters.super_groups[0].properties[0].operator: unknown operator \"nope\""
    );
}

#[test]
fn invalid_flag_error_names_the_flag() {
    let f = flag(json!({"key": "k", "filters": {"groups": [{"rollout_percentage": 200}]}}));
    let err = evaluate(&f, &groups(), &ctx("u")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "flag \"k\": filters.groups[0].rollout_percentage: 200 is outside 0..=100"
    );
}

// ---------------------------------------------------------------- person flags

#[test]
fn person_flag_rollout_follows_the_hash() {
    // hash("person-flag", "user-1") = 0.5076: out at 50 %, in at 51 % (insight spec §6 item 13).
    let out = decide(&person_flag(50.0, json!([])), &ctx("user-1"));
    assert!(!out.enabled);
    assert_eq!(
        reason(&out),
        ("out_of_rollout_bound", Some(0), "Out of rollout bound")
    );
    assert_eq!(out.value(), json!(false));
    let r#in = decide(&person_flag(51.0, json!([])), &ctx("user-1"));
    assert!(r#in.enabled);
    assert_eq!(
        reason(&r#in),
        ("condition_match", Some(0), "Matched condition set 1")
    );
    assert_eq!((r#in.id, r#in.version), (3, 2));
    assert_eq!(r#in.value(), json!(true));
    assert!(!decide(&person_flag(0.0, json!([])), &ctx("user-1")).enabled);
}

#[test]
fn null_rollout_with_properties_matches_outright() {
    let f = flag(json!({"key": "person-flag", "filters": {"groups": [
        {"properties": [{"key": "plan", "value": "pro"}], "rollout_percentage": null}]}}));
    assert!(decide(&f, &with_person(ctx("user-2"), json!({"plan": "PRO"}))).enabled);
}

#[test]
fn first_matching_condition_wins_and_reasons_rank() {
    let f = flag(json!({"key": "person-flag", "filters": {"groups": [
        {"properties": [{"key": "plan", "value": "pro"}], "rollout_percentage": 10},
        {"properties": [{"key": "plan", "value": "free"}]},
        {"properties": [{"key": "plan", "value": "pro"}], "rollout_percentage": 100}]}}));
    let r = decide(&f, &with_person(ctx("user-1"), json!({"plan": "pro"})));
    assert_eq!(
        reason(&r),
        ("condition_match", Some(2), "Matched condition set 3")
    );

    // Out of rollout outranks no match.
    let f = flag(json!({"key": "person-flag", "filters": {"groups": [
        {"properties": [{"key": "plan", "value": "pro"}], "rollout_percentage": 10},
        {"properties": [{"key": "plan", "value": "free"}]}]}}));
    let r = decide(&f, &with_person(ctx("user-1"), json!({"plan": "pro"})));
    assert_eq!(
        reason(&r),
        ("out_of_rollout_bound", Some(0), "Out of rollout bound")
    );
    let r = decide(&f, &with_person(ctx("user-1"), json!({"plan": "team"})));
    assert_eq!(
        reason(&r),
        ("no_condition_match", Some(1), "No matching condition set")
    );
}

#[test]
fn flag_without_conditions_matches_no_one() {
    let r = decide(&flag(json!({"key": "k"})), &ctx("u"));
    assert!(!r.enabled);
    assert_eq!(
        reason(&r),
        ("no_condition_match", None, "No matching condition set")
    );
}

#[test]
fn inactive_flag_is_disabled() {
    let mut f = person_flag(100.0, json!([]));
    f.active = false;
    let r = decide(&f, &ctx("user-1"));
    assert!(!r.enabled);
    assert_eq!(
        reason(&r),
        ("flag_disabled", None, "Feature flag is disabled")
    );
}

#[test]
fn distinct_id_is_a_person_property() {
    let f = person_flag(
        100.0,
        json!([{"key": "distinct_id", "value": ["user-1", "user-9"]}]),
    );
    assert!(decide(&f, &ctx("user-1")).enabled);
    assert!(!decide(&f, &ctx("user-2")).enabled);
}

// ---------------------------------------------------------------- group flags

#[test]
fn group_flag_as_observed_with_posthog_python() {
    // Spec §6 item 13: matching group props → true; plan=free → false; no groups → false.
    let f = group_flag(100.0);
    let r = decide(
        &f,
        &with_company(ctx("user-1"), "id:5", json!({"plan": "enterprise"})),
    );
    assert!(r.enabled);
    assert_eq!(reason(&r).0, "condition_match");
    assert_eq!(r.payload.as_deref(), Some("{\"x\":1}"));

    let r = decide(
        &f,
        &with_company(ctx("user-1"), "id:5", json!({"plan": "free"})),
    );
    assert!(!r.enabled);
    assert_eq!(r.payload, None);
    assert_eq!(
        reason(&r),
        ("no_condition_match", Some(0), "No matching condition set")
    );

    let r = decide(
        &f,
        &with_person(ctx("user-1"), json!({"plan": "enterprise"})),
    );
    assert!(!r.enabled);
    assert_eq!(reason(&r), ("no_group_type", None, "No group type"));

    // An empty group key is no group.
    let r = decide(
        &f,
        &with_company(ctx("user-1"), "", json!({"plan": "enterprise"})),
    );
    assert_eq!(reason(&r).0, "no_group_type");
}

#[test]
fn group_flag_buckets_on_the_group_key() {
    // hash("group-flag", "id:5") = 0.6579.
    let c = |d: &str| with_company(ctx(d), "id:5", json!({"plan": "enterprise"}));
    for d in ["user-1", "user-2", "someone-else"] {
        assert!(!decide(&group_flag(65.0), &c(d)).enabled, "{d}");
        assert!(decide(&group_flag(66.0), &c(d)).enabled, "{d}");
    }
}

#[test]
fn group_key_is_a_group_property() {
    let f = flag(
        json!({"key": "group-flag", "filters": {"aggregation_group_type_index": 1,
        "groups": [{"properties": [{"key": "$group_key", "value": "p-1", "type": "group",
                                    "group_type_index": 1}]}]}}),
    );
    let mut c = ctx("u");
    c.groups.insert("project".into(), "p-1".into());
    assert!(decide(&f, &c).enabled);
    c.groups.insert("project".into(), "p-2".into());
    assert!(!decide(&f, &c).enabled);
}

#[test]
fn group_flag_without_group_properties_is_inconclusive_until_complete() {
    let f = group_flag(100.0);
    let c = with_company(ctx("user-1"), "id:5", json!({}));
    assert_eq!(
        missing(&f, &c),
        vec![PropertyRef::Group {
            group_type: "company".into(),
            key: "plan".into()
        }]
    );
    let mut complete = c.clone();
    complete.property_mode = PropertyMode::Complete;
    let r = decide(&f, &complete);
    assert_eq!(reason(&r).0, "no_condition_match");
}

#[test]
fn mixed_targeting_skips_conditions_without_their_group() {
    let f = flag(json!({"key": "mixed", "filters": {"groups": [
        {"aggregation_group_type_index": 0, "properties": [
            {"key": "plan", "value": "enterprise", "type": "group", "group_type_index": 0}]},
        {"aggregation_group_type_index": null, "properties": [
            {"key": "email", "value": "@acme.com", "operator": "icontains"}]}]}}));
    let person = |email: &str| with_person(ctx("user-1"), json!({"email": email}));
    let r = decide(&f, &person("a@acme.com"));
    assert_eq!(
        reason(&r),
        ("condition_match", Some(1), "Matched condition set 2")
    );
    let r = decide(&f, &person("a@other.com"));
    assert_eq!(
        reason(&r),
        (
            "no_condition_match",
            Some(1),
            "No matching condition set (group conditions were not evaluated because no group \
             type was provided)"
        )
    );
    let r = decide(
        &f,
        &with_company(person("a@other.com"), "id:5", json!({"plan": "enterprise"})),
    );
    assert_eq!(
        reason(&r),
        ("condition_match", Some(0), "Matched condition set 1")
    );

    // Only group conditions, no group: no_group_type at the last skipped condition.
    let only_group = flag(json!({"key": "mixed", "filters": {"groups": [
        {"aggregation_group_type_index": 0}, {"aggregation_group_type_index": 1}]}}));
    let r = decide(&only_group, &ctx("u"));
    assert_eq!(reason(&r), ("no_group_type", Some(1), "No group type"));
}

// ---------------------------------------------------------------- variants, payloads

#[test]
fn variants_follow_the_variant_hash_in_listed_order() {
    // Variant hash of user-1 is 0.0581.
    let mv = |a: f64, b: f64| {
        flag(json!({"key": "person-flag", "filters": {
            "groups": [{"rollout_percentage": 100}],
            "multivariate": {"variants": [{"key": "control", "rollout_percentage": a},
                                          {"key": "test", "rollout_percentage": b}]},
            "payloads": {"test": "\"t\"", "control": "{\"c\":true}", "true": "1"}}}))
    };
    let r = decide(&mv(10.0, 90.0), &ctx("user-1"));
    assert_eq!(r.variant.as_deref(), Some("control"));
    assert_eq!(r.value(), json!("control"));
    assert_eq!(r.payload.as_deref(), Some("{\"c\":true}"));
    let r = decide(&mv(5.0, 95.0), &ctx("user-1"));
    assert_eq!(r.variant.as_deref(), Some("test"));
    assert_eq!(r.payload.as_deref(), Some("\"t\""));
}

#[test]
fn condition_variant_override_wins() {
    let f = flag(json!({"key": "person-flag", "filters": {
        "groups": [{"properties": [{"key": "beta", "value": true}], "variant": "test"},
                   {"rollout_percentage": 100}],
        "multivariate": {"variants": [{"key": "control", "rollout_percentage": 50},
                                      {"key": "test", "rollout_percentage": 50}]}}}));
    let r = decide(&f, &with_person(ctx("user-1"), json!({"beta": "true"})));
    assert_eq!(r.variant.as_deref(), Some("test"));
    let r = decide(&f, &with_person(ctx("user-1"), json!({"beta": false})));
    assert_eq!(r.variant.as_deref(), Some("control"));
    assert_eq!(r.reason.condition_index, Some(1));
}

#[test]
fn group_flag_variant_uses_the_group_key() {
    // Variant hash of id:5 under group-flag is 0.2379.
    let mut f = group_flag(100.0);
    f.filters.multivariate = Some(crate::Multivariate {
        variants: vec![
            crate::Variant {
                key: "a".into(),
                name: String::new(),
                rollout_percentage: 23.0,
            },
            crate::Variant {
                key: "b".into(),
                name: String::new(),
                rollout_percentage: 77.0,
            },
        ],
    });
    let r = decide(
        &f,
        &with_company(ctx("whoever"), "id:5", json!({"plan": "enterprise"})),
    );
    assert_eq!(r.variant.as_deref(), Some("b"));
}

#[test]
fn v2_record_shape() {
    let r = decide(
        &group_flag(100.0),
        &with_company(ctx("user-1"), "id:5", json!({"plan": "enterprise"})),
    );
    assert_eq!(
        r.to_v2_record(),
        json!({"key": "group-flag", "enabled": true, "variant": null,
               "reason": {"code": "condition_match", "condition_index": 0,
                          "description": "Matched condition set 1"},
               "metadata": {"id": 1, "version": 1, "payload": "{\"x\":1}",
                            "description": null}})
    );
}

// ---------------------------------------------------------------- holdout, super conditions

#[test]
fn holdout_comes_before_conditions() {
    // holdout hash of user-1 is 0.1781.
    let f = |pct: f64| {
        flag(json!({"key": "person-flag", "filters": {
            "groups": [{"rollout_percentage": 100}],
            "holdout": {"id": 7, "exclusion_percentage": pct},
            "payloads": {"holdout-7": "\"held\""}}}))
    };
    let r = decide(&f(18.0), &ctx("user-1"));
    assert_eq!(r.variant.as_deref(), Some("holdout-7"));
    assert!(r.enabled);
    assert_eq!(
        reason(&r),
        ("holdout_condition_value", None, "Holdout condition value")
    );
    assert_eq!(r.payload.as_deref(), Some("\"held\""));
    let r = decide(&f(17.0), &ctx("user-1"));
    assert_eq!(reason(&r).0, "condition_match");
    assert_eq!(r.variant, None);
    assert_eq!(
        decide(&f(100.0), &ctx("user-2")).variant.as_deref(),
        Some("holdout-7")
    );
}

#[test]
fn feature_enrollment_gates_first() {
    let f = flag(
        json!({"key": "beta", "filters": {"feature_enrollment": true,
        "groups": [{"properties": [{"key": "plan", "value": "pro"}]}]}}),
    );
    let enrolled = with_person(ctx("u"), json!({"$feature_enrollment/beta": true}));
    let r = decide(&f, &enrolled);
    assert!(r.enabled);
    assert_eq!(
        reason(&r),
        ("super_condition_value", Some(0), "Super condition value")
    );
    let opted_out = with_person(ctx("u"), json!({"$feature_enrollment/beta": false}));
    let r = decide(&f, &opted_out);
    assert!(!r.enabled);
    assert_eq!(reason(&r).0, "super_condition_value");
    // Partial properties without the enrollment: the stored person may be enrolled.
    let c = with_person(ctx("u"), json!({"plan": "pro"}));
    assert_eq!(
        missing(&f, &c),
        vec![PropertyRef::Person {
            key: "$feature_enrollment/beta".into()
        }]
    );
    let mut complete = c;
    complete.property_mode = PropertyMode::Complete;
    assert_eq!(reason(&decide(&f, &complete)).0, "condition_match");
}

#[test]
fn legacy_super_groups_gate_too() {
    let f = flag(json!({"key": "beta", "filters": {
        "super_groups": [{"properties": [{"key": "$feature_enrollment/beta",
                                          "value": ["true"], "operator": "exact"}]}],
        "groups": [{"rollout_percentage": 0}]}}));
    let r = decide(
        &f,
        &with_person(ctx("u"), json!({"$feature_enrollment/beta": "true"})),
    );
    assert!(r.enabled);
    assert_eq!(r.reason.code, ReasonCode::SuperConditionValue);
}

// ---------------------------------------------------------------- bucketing identifiers

#[test]
fn device_id_bucketing() {
    // person-flag at 80 %: user-1 (0.5076) and dev-9 (0.7963) in, user-2 (0.8775) out.
    let mut f = person_flag(80.0, json!([]));
    f.bucketing_identifier = Some("device_id".into());
    let r = decide(&f, &ctx("user-1"));
    assert_eq!(
        reason(&r),
        ("out_of_rollout_bound", Some(0), "Out of rollout bound")
    );
    let mut c = ctx("user-2");
    c.device_id = Some("dev-9".into());
    assert!(decide(&f, &c).enabled);
    let mut c = ctx("user-1");
    c.device_id = Some("user-2".into());
    assert!(!decide(&f, &c).enabled);
}

#[test]
fn experience_continuity_buckets_on_the_override() {
    let mut f = person_flag(80.0, json!([]));
    let mut c = ctx("user-1");
    c.hash_key_override = Some("anon-1".into());
    assert!(decide(&f, &c).enabled);
    f.ensure_experience_continuity = true;
    assert!(!decide(&f, &c).enabled);
    c.hash_key_override = None;
    assert!(decide(&f, &c).enabled);
}

// ---------------------------------------------------------------- inconclusive

#[test]
fn missing_person_property_is_inconclusive_then_decided_when_complete() {
    let f = person_flag(
        100.0,
        json!([{"key": "email", "value": "@acme.com", "operator": "not_icontains"}]),
    );
    let c = with_person(ctx("user-1"), json!({"plan": "pro"}));
    assert_eq!(
        missing(&f, &c),
        vec![PropertyRef::Person {
            key: "email".into()
        }]
    );
    let mut complete = c;
    complete.property_mode = PropertyMode::Complete;
    // not_icontains on an unset property matches.
    assert!(decide(&f, &complete).enabled);
}

#[test]
fn a_false_filter_decides_despite_missing_ones() {
    let f = person_flag(
        100.0,
        json!([{"key": "email", "value": "x"}, {"key": "plan", "value": "pro"}]),
    );
    let r = decide(&f, &with_person(ctx("u"), json!({"plan": "free"})));
    assert_eq!(reason(&r).0, "no_condition_match");
}

#[test]
fn an_earlier_inconclusive_condition_makes_a_later_match_inconclusive() {
    let f = flag(json!({"key": "k", "filters": {"groups": [
        {"properties": [{"key": "email", "value": "x"}], "variant": null},
        {"properties": [{"key": "plan", "value": "pro"}]},
        {"properties": [{"key": "country", "value": "de"}]}]}}));
    let c = with_person(ctx("u"), json!({"plan": "pro"}));
    // Condition 1 matches, but condition 0 might have matched first.
    assert_eq!(
        missing(&f, &c),
        vec![PropertyRef::Person {
            key: "email".into()
        }]
    );
    // A match before any missing property decides.
    let c = with_person(ctx("u"), json!({"email": "x"}));
    assert_eq!(reason(&decide(&f, &c)).1, Some(0));
    // Missing properties of every condition are reported together.
    let c = with_person(ctx("u"), json!({"plan": "free"}));
    assert_eq!(
        missing(&f, &c),
        vec![
            PropertyRef::Person {
                key: "country".into()
            },
            PropertyRef::Person {
                key: "email".into()
            }
        ]
    );
}

#[test]
fn is_not_set_needs_complete_properties() {
    let f = person_flag(100.0, json!([{"key": "email", "operator": "is_not_set"}]));
    assert_eq!(missing(&f, &ctx("u")).len(), 1);
    let mut c = ctx("u");
    c.property_mode = PropertyMode::Complete;
    assert!(decide(&f, &c).enabled);
    let c = with_person(ctx("u"), json!({"email": null}));
    assert!(!decide(&f, &c).enabled);
}

#[test]
fn relative_dates_use_the_context_clock() {
    // now = 2024-06-01.
    let f = person_flag(
        100.0,
        json!([{"key": "signed_up", "value": "-7d", "operator": "is_date_after"}]),
    );
    assert!(
        decide(
            &f,
            &with_person(ctx("u"), json!({"signed_up": "2024-05-28"}))
        )
        .enabled
    );
    assert!(
        !decide(
            &f,
            &with_person(ctx("u"), json!({"signed_up": "2024-05-20"}))
        )
        .enabled
    );
}

// ---------------------------------------------------------------- many flags

#[test]
fn evaluate_all_isolates_broken_flags_and_skips_deleted_ones() {
    let broken = flag(
        json!({"key": "broken", "filters": {"groups": [{"properties": [
        {"key": "a", "value": "(", "operator": "regex"}]}]}}),
    );
    let mut deleted = person_flag(100.0, json!([]));
    deleted.key = "deleted".into();
    deleted.deleted = true;
    let flags = vec![
        person_flag(100.0, json!([])),
        broken,
        deleted,
        group_flag(100.0),
    ];
    let out = evaluate_all(&flags, &groups(), &ctx("user-1"));
    let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["person-flag", "broken", "group-flag"]);
    assert!(out[0].1.as_ref().unwrap().decided().unwrap().enabled);
    let err = out[1].1.as_ref().unwrap_err().to_string();
    assert!(
        err.starts_with("flag \"broken\": filters.groups[0].properties[0].value: invalid regex"),
        "{err}"
    );
    assert_eq!(
        out[2].1.as_ref().unwrap().decided().unwrap().reason.code,
        ReasonCode::NoGroupType
    );

    let set = FlagSet::compile(&flags, &groups());
    assert_eq!(set.len(), 3);
    let only = set.evaluate_where(&ctx("user-1"), |k| k == "group-flag");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].0, "group-flag");
}

#[test]
fn evaluation_serialises_with_an_outcome_tag() {
    let f = person_flag(100.0, json!([{"key": "plan", "value": "pro"}]));
    let v = serde_json::to_value(evaluate(&f, &groups(), &ctx("u")).unwrap()).unwrap();
    assert_eq!(
        v,
        json!({"outcome": "inconclusive", "key": "person-flag",
               "missing": [{"type": "person", "key": "plan"}]})
    );
}

// ---------------------------------------------------------------- properties

fn rollout_flag(key: &str, pct: f64) -> CompiledFlag {
    let f = flag(json!({"key": key, "filters": {"groups": [{"rollout_percentage": pct}]}}));
    CompiledFlag::compile(&f, &groups()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn bucketing_is_deterministic(
        key in "[a-zA-Z0-9_-]{1,30}",
        id in ".{0,40}",
        pct in 0.0..=100.0_f64,
    ) {
        let a = rollout_flag(&key, pct);
        let b = rollout_flag(&key, pct);
        let c = ctx(&id);
        prop_assert_eq!(a.evaluate(&c), b.evaluate(&c));
        prop_assert_eq!(a.evaluate(&c), a.evaluate(&c));
        let h = hash::rollout_hash(&key, &id);
        let enabled = a.evaluate(&c).decided().map(|r| r.enabled);
        prop_assert_eq!(enabled, Some(pct >= 100.0 || h <= pct / 100.0));
    }

    #[test]
    fn every_member_of_a_group_gets_the_same_answer(
        group_key in "[a-z0-9:_-]{1,20}",
        members in prop::collection::vec("[a-zA-Z0-9@._-]{1,30}", 1..20),
        emails in prop::collection::vec("[a-z]{1,8}@[a-z]{1,8}\\.com", 1..20),
        pct in 0.0..=100.0_f64,
    ) {
        let f = flag(json!({"key": "gf", "filters": {"aggregation_group_type_index": 0,
            "groups": [{"properties": [{"key": "plan", "value": "enterprise",
                                         "type": "group", "group_type_index": 0}],
                        "rollout_percentage": pct}],
            "multivariate": {"variants": [{"key": "a", "rollout_percentage": 30},
                                          {"key": "b", "rollout_percentage": 70}]}}}));
        let compiled = CompiledFlag::compile(&f, &groups()).unwrap();
        let answer = |member: &str, email: &str| {
            let c = with_person(
                with_company(ctx(member), &group_key, json!({"plan": "enterprise"})),
                json!({"email": email}),
            );
            compiled.evaluate(&c)
        };
        let first = answer(&members[0], &emails[0]);
        for (m, e) in members.iter().zip(emails.iter().cycle()) {
            prop_assert_eq!(&answer(m, e), &first);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn half_rollout_takes_about_half_of_random_ids(
        key in "[a-z][a-z0-9-]{0,20}",
        ids in prop::collection::vec("[a-zA-Z0-9_-]{4,32}", 10_000),
    ) {
        let compiled = rollout_flag(&key, 50.0);
        let enabled = ids
            .iter()
            .filter(|id| {
                compiled
                    .evaluate(&ctx(id))
                    .decided()
                    .is_some_and(|r| r.enabled)
            })
            .count();
        prop_assert!((4_500..=5_500).contains(&enabled), "{} of 10000", enabled);
    }
}

#[test]
fn second_pass_merges_request_properties_over_stored_ones() {
    let f = flag(
        json!({"key": "group-flag", "filters": {"aggregation_group_type_index": 0,
        "groups": [{"properties": [
            {"key": "plan", "value": "enterprise", "type": "group", "group_type_index": 0},
            {"key": "seats", "value": 10, "operator": "gte", "type": "group",
             "group_type_index": 0}]}]}}),
    );
    let request = with_company(ctx("u"), "id:5", json!({"plan": "enterprise"}));
    assert_eq!(missing(&f, &request).len(), 1);

    let mut stored = BTreeMap::new();
    stored.insert(
        "company".to_owned(),
        json!({"plan": "free", "seats": 12})
            .as_object()
            .unwrap()
            .clone(),
    );
    let second = request.with_stored_properties(&Map::new(), &stored);
    assert_eq!(second.property_mode, PropertyMode::Complete);
    // The request's plan wins over the stored one; seats comes from storage.
    assert!(decide(&f, &second).enabled);
    assert_eq!(
        second.group_properties["company"]["plan"],
        json!("enterprise")
    );
    assert_eq!(second.groups["company"], "id:5");
}
