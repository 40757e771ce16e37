//! The capture pipeline: decode → validate → (under the project lock) map groups, drop
//! duplicates, merge `$groupidentify` → commit to the WAL → wait until durable.
//!
//! A request is all or nothing: any invalid event refuses the whole request with 400 before
//! anything is stored (PostHog does the same). Things herd accepts but cannot fully honour
//! become ingestion warnings: a sixth group type (the event is kept, that group dropped), a
//! group key over 400 characters or a non-object `$group_set` on `$groupidentify` (that event
//! is dropped, as PostHog does).

use std::sync::Arc;

use herd_core::EventBatchBuilder;
use herd_core::time::parse_timestamp;
use herd_storage::{Db, ProjectGuard};
use serde_json::Value;

use crate::decode::{CaptureInput, Route, decode};
use crate::event::{ParsedEvent, PreparedEvent, RequestContext, prepare};
use crate::groups::{Disposition, Produced, process_event};
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

/// Runs capture requests against a [`Db`].
#[derive(Debug)]
pub struct Ingestor {
    db: Arc<Db>,
}

impl Ingestor {
    /// An ingestor over a store.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// The store.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
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
        let mut parsed = Vec::with_capacity(decoded.events.len());
        for (i, raw) in decoded.events.iter().enumerate() {
            let size = raw.get().len();
            if size > MAX_EVENT_BYTES {
                return Err(Error::PayloadTooLarge(format!(
                    "event {i}: {size} bytes is over the {MAX_EVENT_BYTES}-byte event limit"
                )));
            }
            parsed.push(ParsedEvent::parse(i, raw)?);
        }
        let token = resolve_token(decoded.envelope_token.as_ref(), &parsed)?;
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
        // Everything that does not depend on the project's state happens before its lock.
        let mut prepared = Vec::with_capacity(parsed.len());
        for (i, p) in parsed.into_iter().enumerate() {
            prepared.push(prepare(i, p, &ctx)?);
        }
        // A full write buffer or a failed WAL refuses the request before it changes anything.
        self.db.check_capacity()?;
        let (ticket, outcome) = {
            let mut guard = self.db.lock(&handle).await;
            apply_events(&mut guard, prepared, now).await?
        };
        self.db.wait_durable(ticket).await?;
        Ok(outcome)
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

fn resolve_token(envelope: Option<&Value>, events: &[ParsedEvent]) -> Result<String> {
    if let Some(t) = envelope {
        return token_text(t);
    }
    let mut found: Option<String> = None;
    for e in events {
        let Some(t) = e.token() else {
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

/// Adds `"$group_N": key` for every filled slot to a JSON object's text (PostHog writes the
/// slot keys into the properties too). The text must be a serialised object without those keys.
fn with_group_keys(
    mut text: String,
    slots: &[std::borrow::Cow<'_, str>; herd_core::MAX_GROUP_TYPES],
) -> String {
    if slots.iter().all(|s| s.is_empty()) || !text.ends_with('}') {
        return text;
    }
    text.pop();
    let mut empty = text.trim_end() == "{";
    for (i, key) in slots.iter().enumerate().filter(|(_, k)| !k.is_empty()) {
        if !empty {
            text.push(',');
        }
        empty = false;
        text.push_str(&format!("\"$group_{i}\":"));
        text.push_str(&Value::String(key.to_string()).to_string());
    }
    text.push('}');
    text
}

/// Applies ready events to a locked project; returns the WAL ticket and the outcome.
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
    let mut produced = Produced::default();
    for e in prepared {
        let mut pairs = Vec::new();
        match process_event(
            guard,
            e.uuid,
            &e.event,
            e.timestamp,
            now,
            e.inputs.view(&mut pairs),
            &mut produced,
        )
        .await?
        {
            Disposition::Duplicate => outcome.duplicates += 1,
            Disposition::Dropped => outcome.dropped += 1,
            Disposition::Store(slots) => {
                let properties = with_group_keys(e.properties, &slots);
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
        }
    }
    outcome.warnings = produced.warnings.len();
    let events = (!builder.is_empty()).then(|| builder.finish());
    let ticket = guard.commit(events, produced.groups, produced.warnings)?;
    Ok((ticket, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_are_spliced_into_the_properties_text() {
        let slots =
            |a: &'static str, c: &'static str| [a, "", c, "", ""].map(std::borrow::Cow::Borrowed);
        let text = with_group_keys(r#"{"plan":"pro"}"#.into(), &slots("id:5", "t\"1"));
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            v,
            serde_json::json!({"plan": "pro", "$group_0": "id:5", "$group_2": "t\"1"})
        );
        assert_eq!(
            with_group_keys("{}".into(), &slots("a", "")),
            r#"{"$group_0":"a"}"#
        );
        assert_eq!(with_group_keys("{}".into(), &slots("", "")), "{}");
    }
}
