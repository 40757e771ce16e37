//! The capture pipeline: decode → validate → (under the project lock) map groups, drop
//! duplicates, merge `$groupidentify` → commit to the WAL → wait until durable.
//!
//! A request is all or nothing: any invalid event refuses the whole request with 400 before
//! anything is stored (PostHog does the same). Things herd accepts but cannot fully honour
//! become ingestion warnings: a sixth group type (the event is kept, that group dropped), a
//! group key over 400 characters or a non-object `$group_set` on `$groupidentify` (that event
//! is dropped, as PostHog does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herd_core::group_types::group_key_text;
use herd_core::time::parse_timestamp;
use herd_core::{
    EventBatchBuilder, GroupRow, GroupState, GroupTypeSlot, IngestWarning, MAX_GROUP_KEY_CHARS,
    MAX_GROUP_TYPES,
};
use herd_storage::{Db, ProjectGuard};
use serde_json::{Map, Value};

use crate::decode::{CaptureInput, Decoded, Route, decode, event_token};
use crate::event::{PreparedEvent, RequestContext, prepare};
use crate::{Error, Result};

/// Largest single event, serialised (PostHog's Kafka message limit).
pub const MAX_EVENT_BYTES: usize = 1_000_000;
/// Body limit of `/batch/`.
pub const BATCH_LIMIT: usize = 20 << 20;
/// Body limit of the single-event paths.
pub const SINGLE_LIMIT: usize = 2 << 20;

/// What a request did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CaptureOutcome {
    /// The project.
    pub project: u64,
    /// Events stored.
    pub accepted: usize,
    /// Events dropped because their uuid was already stored.
    pub duplicates: usize,
    /// Events dropped by a rule (with a warning).
    pub dropped: usize,
    /// Warnings raised.
    pub warnings: usize,
}

/// Counters since start.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events stored.
    pub accepted: AtomicU64,
    /// Duplicates dropped.
    pub duplicates: AtomicU64,
    /// Events dropped by a rule.
    pub dropped: AtomicU64,
    /// Warnings raised.
    pub warnings: AtomicU64,
}

/// Runs capture requests against a [`Db`].
#[derive(Debug)]
pub struct Ingestor {
    db: Arc<Db>,
    counters: Counters,
}

impl Ingestor {
    /// An ingestor over a store.
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            db,
            counters: Counters::default(),
        }
    }

    /// The store.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Counters since start.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Handles one HTTP capture request end to end; returns once its events are durable.
    pub async fn capture(
        &self,
        route: Route,
        input: &CaptureInput,
        client_ip: Option<String>,
        now: i64,
    ) -> Result<CaptureOutcome> {
        let limit = if route == Route::Batch {
            BATCH_LIMIT
        } else {
            SINGLE_LIMIT
        };
        let decoded = decode(input, route, limit)?;
        let token = resolve_token(&decoded)?;
        let sent_at = decoded
            .sent_at
            .as_deref()
            .and_then(parse_timestamp)
            .or_else(|| query_sent_at(input.sent_at_ms.as_deref()));
        let ctx = RequestContext {
            route: Some(route),
            sent_at,
            sent_at_text: decoded.sent_at.clone(),
            now,
            client_ip,
        };
        let handle = self.db.project_by_token(&token).await?.ok_or_else(|| {
            Error::Unauthorized("invalid api key: no project has this token".into())
        })?;
        let mut prepared = Vec::with_capacity(decoded.events.len());
        // Only a body over the event limit can hold an event over it.
        let check_sizes = decoded.json_bytes > MAX_EVENT_BYTES;
        for (i, raw) in decoded.events.into_iter().enumerate() {
            if check_sizes {
                let size = raw.to_string().len();
                if size > MAX_EVENT_BYTES {
                    return Err(Error::PayloadTooLarge(format!(
                        "event {i}: {size} bytes is over the {MAX_EVENT_BYTES}-byte event limit"
                    )));
                }
            }
            prepared.push(prepare(i, raw, &ctx)?);
        }
        for e in &prepared {
            check_groups_shape(e)?;
        }
        let (ticket, outcome) = {
            let mut guard = self.db.lock(&handle).await;
            let outcome = self.apply(&mut guard, prepared, now).await?;
            (outcome.0, outcome.1)
        };
        self.db.wait_durable(ticket).await?;
        self.counters
            .accepted
            .fetch_add(outcome.accepted as u64, Ordering::Relaxed);
        self.counters
            .duplicates
            .fetch_add(outcome.duplicates as u64, Ordering::Relaxed);
        self.counters
            .dropped
            .fetch_add(outcome.dropped as u64, Ordering::Relaxed);
        self.counters
            .warnings
            .fetch_add(outcome.warnings as u64, Ordering::Relaxed);
        Ok(outcome)
    }

    /// Applies prepared events to a locked project; returns the WAL ticket and the outcome.
    /// Used by capture and by backfill alike.
    pub async fn apply(
        &self,
        guard: &mut ProjectGuard<'_>,
        prepared: Vec<PreparedEvent>,
        now: i64,
    ) -> Result<(u64, CaptureOutcome)> {
        apply_events(guard, prepared, now).await
    }
}

/// `_` query parameter: ms since the epoch, used only when it is after 2020.
fn query_sent_at(ms: Option<&str>) -> Option<i64> {
    let ms: i64 = ms?.trim().parse().ok()?;
    (ms > 1_577_836_800_000).then_some(ms.saturating_mul(1000))
}

fn token_text(v: &Value) -> Result<String> {
    match v {
        Value::String(s) if s.is_empty() => Err(Error::Unauthorized("api key is empty".into())),
        Value::String(s) if s.starts_with("phx_") => Err(Error::Unauthorized(
            "a personal API key (phx_) cannot send events: use the project token (phc_)".into(),
        )),
        Value::String(s) => Ok(s.clone()),
        _ => Err(Error::Unauthorized("api key must be a string".into())),
    }
}

fn resolve_token(decoded: &Decoded) -> Result<String> {
    if let Some(t) = &decoded.envelope_token {
        return token_text(t);
    }
    let mut found: Option<String> = None;
    for raw in &decoded.events {
        let Some(t) = raw.as_object().and_then(event_token) else {
            continue;
        };
        let t = token_text(t)?;
        match &found {
            Some(f) if *f != t => {
                return Err(Error::Unauthorized(
                    "batch submitted with inconsistent api_key values".into(),
                ));
            }
            _ => found = Some(t),
        }
    }
    found.ok_or_else(|| {
        Error::Unauthorized(
            "no api key: send the project token as api_key in the body (or token in each event)"
                .into(),
        )
    })
}

fn personless(e: &PreparedEvent) -> bool {
    e.properties.get("$process_person_profile") == Some(&Value::Bool(false))
}

fn check_groups_shape(e: &PreparedEvent) -> Result<()> {
    match e.properties.get("$groups") {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(other) => Err(Error::bad(format!(
            "event {}: properties.$groups must be an object of group type to group key, got {}",
            e.index,
            crate::decode::json_kind(other)
        ))),
    }
}

fn warning(kind: &str, e: &PreparedEvent, details: Value, now: i64) -> IngestWarning {
    tracing::warn!(kind, uuid = %e.uuid, event = %e.event, %details, "ingestion warning");
    IngestWarning {
        kind: kind.to_string(),
        event_uuid: e.uuid.to_string(),
        details: details.to_string(),
        timestamp: now,
    }
}

/// What to do with a `$groupidentify`.
enum Identify {
    /// Not a `$groupidentify`, or nothing to merge.
    None,
    /// Drop the event with this warning.
    Drop(IngestWarning),
    /// Merge `set` into group (type, key).
    Merge {
        group_type: String,
        key: String,
        set: Map<String, Value>,
    },
}

fn classify_identify(e: &PreparedEvent, now: i64) -> (Identify, Option<IngestWarning>) {
    if e.event != "$groupidentify" || personless(e) {
        return (Identify::None, None);
    }
    let p = &e.properties;
    let group_type = match p.get("$group_type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => {
            let w = warning(
                "invalid_group_identify",
                e,
                serde_json::json!({"reason": "missing $group_type"}),
                now,
            );
            return (Identify::None, Some(w));
        }
    };
    let Some(key) = p.get("$group_key").and_then(group_key_text) else {
        let w = warning(
            "invalid_group_identify",
            e,
            serde_json::json!({"reason": "missing $group_key"}),
            now,
        );
        return (Identify::None, Some(w));
    };
    if key.chars().count() > MAX_GROUP_KEY_CHARS {
        let w = warning(
            "group_key_too_long",
            e,
            serde_json::json!({"group_type": group_type, "length": key.chars().count()}),
            now,
        );
        return (Identify::Drop(w), None);
    }
    let set = match p.get("$group_set") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            let w = warning(
                "invalid_group_set",
                e,
                serde_json::json!({"group_type": group_type, "group_key": key,
                                   "got": crate::decode::json_kind(other)}),
                now,
            );
            return (Identify::Drop(w), None);
        }
    };
    (
        Identify::Merge {
            group_type,
            key,
            set,
        },
        None,
    )
}

async fn apply_events(
    guard: &mut ProjectGuard<'_>,
    prepared: Vec<PreparedEvent>,
    now: i64,
) -> Result<(u64, CaptureOutcome)> {
    let mut outcome = CaptureOutcome {
        project: guard.project().id,
        ..Default::default()
    };
    let mut builder = EventBatchBuilder::with_capacity(prepared.len());
    let mut group_rows: Vec<GroupRow> = Vec::new();
    let mut warnings: Vec<IngestWarning> = Vec::new();

    for mut e in prepared {
        let (identify, identify_warning) = classify_identify(&e, now);
        warnings.extend(identify_warning);
        if let Identify::Drop(w) = identify {
            warnings.push(w);
            outcome.dropped += 1;
            continue;
        }
        if !guard.insert_uuid(e.uuid.as_u128(), e.timestamp).await? {
            outcome.duplicates += 1;
            continue;
        }

        let mut slots: [String; MAX_GROUP_TYPES] = Default::default();
        if !personless(&e)
            && let Some(Value::Object(groups)) = e.properties.get("$groups").cloned()
        {
            for (group_type, key) in &groups {
                let Some(key) = group_key_text(key) else {
                    continue;
                };
                if key.chars().count() > MAX_GROUP_KEY_CHARS {
                    warnings.push(warning(
                        "group_key_too_long",
                        &e,
                        serde_json::json!({"group_type": group_type, "length": key.chars().count()}),
                        now,
                    ));
                    continue;
                }
                match guard.resolve_group_type(group_type).await? {
                    GroupTypeSlot::Existing(i) | GroupTypeSlot::Assigned(i) => {
                        e.properties
                            .insert(format!("$group_{i}"), Value::String(key.clone()));
                        slots[i as usize] = key;
                    }
                    GroupTypeSlot::Full => warnings.push(warning(
                        "group_type_limit_reached",
                        &e,
                        serde_json::json!({"group_type": group_type,
                                           "limit": MAX_GROUP_TYPES}),
                        now,
                    )),
                }
            }
        }

        if let Identify::Merge {
            group_type,
            key,
            set,
        } = identify
        {
            match guard.resolve_group_type(&group_type).await? {
                GroupTypeSlot::Existing(i) | GroupTypeSlot::Assigned(i) => {
                    if let Some(next) =
                        GroupState::merge(guard.group(i, &key), &set, e.timestamp, now)
                    {
                        group_rows.push(GroupRow::from_state(i, &key, &next, now));
                        guard.set_group(i, &key, next);
                    }
                }
                GroupTypeSlot::Full => warnings.push(warning(
                    "group_type_limit_reached",
                    &e,
                    serde_json::json!({"group_type": group_type, "limit": MAX_GROUP_TYPES}),
                    now,
                )),
            }
        }

        let properties = Value::Object(std::mem::take(&mut e.properties)).to_string();
        builder.push_parts(
            e.uuid,
            &e.event,
            &e.distinct_id,
            e.timestamp,
            &properties,
            &slots,
            now,
        );
        outcome.accepted += 1;
    }
    outcome.warnings = warnings.len();
    let events = (!builder.is_empty()).then(|| builder.finish());
    let ticket = guard.commit(events, group_rows, warnings)?;
    Ok((ticket, outcome))
}
