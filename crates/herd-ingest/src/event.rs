//! One raw event → a validated, normalised event (protocol spec §1.1, §1.3).
//!
//! Rules: `event` is a non-empty string; `distinct_id` (or `$distinct_id`, or
//! `properties.distinct_id`) is required: strings pass through, other JSON is stringified, NUL
//! becomes U+FFFD, and it is cut to 200 characters; `uuid` is kept when valid, generated
//! (UUIDv7) when absent or `""`, and refused when invalid; top-level `$set`/`$set_once` merge
//! into `properties` (top-level keys win); `sent_at` is copied to `properties.$sent_at`; the
//! timestamp follows PostHog's skew and offset rules.

use herd_core::time::{TimeInputs, resolve_timestamp};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::decode::{Route, json_kind};
use crate::{Error, Result};

/// Longest `distinct_id` kept, in characters.
pub const MAX_DISTINCT_ID_CHARS: usize = 200;

/// What the request says about every event in it.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// Which endpoint.
    pub route: Option<Route>,
    /// `sent_at` in µs (envelope field, or `_` query parameter).
    pub sent_at: Option<i64>,
    /// `sent_at` as sent, copied to `properties.$sent_at`.
    pub sent_at_text: Option<String>,
    /// Server receive time, µs.
    pub now: i64,
    /// The client's address, stored as `$ip` when the event has none.
    pub client_ip: Option<String>,
}

/// A validated event whose groups are not resolved yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedEvent {
    /// Its position in the request (for error messages).
    pub index: usize,
    /// Deduplication key.
    pub uuid: Uuid,
    /// Event name.
    pub event: String,
    /// User id.
    pub distinct_id: String,
    /// Corrected timestamp, µs.
    pub timestamp: i64,
    /// Properties after the merges above.
    pub properties: Map<String, Value>,
}

/// Validates and normalises one raw event.
pub fn prepare(index: usize, raw: Value, ctx: &RequestContext) -> Result<PreparedEvent> {
    let at = |msg: String| Error::bad(format!("event {index}: {msg}"));
    let Value::Object(mut obj) = raw else {
        return Err(at(format!(
            "must be a JSON object, got {}",
            json_kind(&raw)
        )));
    };
    let mut properties = match obj.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(other) => {
            return Err(at(format!(
                "properties must be an object, got {}",
                json_kind(&other)
            )));
        }
    };

    let event = match obj.remove("event") {
        Some(Value::String(s)) if !s.is_empty() => s,
        None | Some(Value::Null) | Some(Value::String(_)) if ctx.route == Some(Route::Engage) => {
            "$identify".to_string()
        }
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(at("missing event name (field \"event\")".into()));
        }
        Some(other) => {
            return Err(at(format!(
                "event name must be a string, got {}",
                json_kind(&other)
            )));
        }
    };

    let distinct_value = obj
        .remove("distinct_id")
        .filter(|v| !v.is_null())
        .or_else(|| obj.remove("$distinct_id").filter(|v| !v.is_null()))
        .or_else(|| {
            properties
                .get("distinct_id")
                .filter(|v| !v.is_null())
                .cloned()
        });
    let distinct_id = match distinct_value {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    if distinct_id.is_empty() {
        return Err(at("missing distinct_id".into()));
    }
    let distinct_id: String = distinct_id
        .replace('\0', "\u{FFFD}")
        .chars()
        .take(MAX_DISTINCT_ID_CHARS)
        .collect();

    let uuid = match obj.remove("uuid") {
        None | Some(Value::Null) => Uuid::now_v7(),
        Some(Value::String(s)) if s.is_empty() => Uuid::now_v7(),
        Some(Value::String(s)) => {
            Uuid::parse_str(&s).map_err(|_| at(format!("invalid uuid {s:?}")))?
        }
        Some(other) => {
            return Err(at(format!(
                "uuid must be a string, got {}",
                json_kind(&other)
            )));
        }
    };

    for key in ["$set", "$set_once"] {
        if let Some(Value::Object(top)) = obj.remove(key) {
            let entry = properties
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(existing) => existing.extend(top),
                other => *other = Value::Object(top),
            }
        }
    }

    let timestamp_text = match obj.get("timestamp") {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let offset_ms = obj.get("offset").and_then(Value::as_i64);
    let ignore_sent_at = properties
        .get("$ignore_sent_at")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let timestamp = resolve_timestamp(
        TimeInputs {
            timestamp: timestamp_text,
            offset_ms,
            sent_at: ctx.sent_at,
            ignore_sent_at,
        },
        ctx.now,
    );

    if let Some(ip) = &ctx.client_ip {
        properties
            .entry("$ip".to_string())
            .or_insert_with(|| Value::String(ip.clone()));
    }
    if let Some(sent_at) = &ctx.sent_at_text {
        properties.insert("$sent_at".into(), Value::String(sent_at.clone()));
    }

    Ok(PreparedEvent {
        index,
        uuid,
        event,
        distinct_id,
        timestamp,
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> RequestContext {
        RequestContext {
            route: Some(Route::Batch),
            now: herd_core::time::parse_timestamp("2024-01-02T00:00:00Z").expect("ts"),
            ..Default::default()
        }
    }

    fn err(v: Value) -> String {
        match prepare(3, v, &ctx()) {
            Err(e) => e.to_string(),
            Ok(_) => "accepted".into(),
        }
    }

    #[test]
    fn normalises_what_the_sdks_send() {
        let e = prepare(
            0,
            json!({"event": "$set", "distinct_id": 42, "$set": {"email": "a@b.c"},
                   "properties": {"$set": {"email": "old", "name": "n"}},
                   "timestamp": "2024-01-01T10:00:00+00:00",
                   "uuid": "01890dd5-0b3a-7d4c-8a5c-9f0b3c1d2e3f"}),
            &ctx(),
        )
        .expect("valid");
        assert_eq!(e.distinct_id, "42");
        assert_eq!(e.properties["$set"], json!({"email": "a@b.c", "name": "n"}));
        assert_eq!(e.uuid.to_string(), "01890dd5-0b3a-7d4c-8a5c-9f0b3c1d2e3f");
        assert_eq!(
            e.timestamp,
            herd_core::time::parse_timestamp("2024-01-01T10:00:00Z").expect("ts")
        );
        let long = prepare(
            0,
            json!({"event": "a", "$distinct_id": "x\u{0}".repeat(300)}),
            &ctx(),
        )
        .expect("valid");
        assert_eq!(long.distinct_id.chars().count(), 200);
        assert!(long.distinct_id.starts_with("x\u{FFFD}"));
        let from_props = prepare(
            0,
            json!({"event": "a", "properties": {"distinct_id": "p"}, "uuid": ""}),
            &ctx(),
        )
        .expect("valid");
        assert_eq!(from_props.distinct_id, "p");
        assert_eq!(
            from_props.uuid.get_version_num(),
            7,
            "generated uuids are v7"
        );
    }

    #[test]
    fn refuses_bad_events_naming_the_problem() {
        assert!(err(json!({"distinct_id": "u"})).contains("event 3: missing event name"));
        assert!(err(json!({"event": "", "distinct_id": "u"})).contains("missing event name"));
        assert!(err(json!({"event": "a"})).contains("missing distinct_id"));
        assert!(err(json!({"event": "a", "distinct_id": ""})).contains("missing distinct_id"));
        assert!(
            err(json!({"event": "a", "distinct_id": "u", "uuid": "nope"}))
                .contains("invalid uuid \"nope\"")
        );
        assert!(
            err(json!({"event": "a", "distinct_id": "u", "properties": [1]}))
                .contains("properties must be an object")
        );
        assert!(err(json!([1])).contains("must be a JSON object"));
    }

    #[test]
    fn engage_events_default_to_identify() {
        let mut c = ctx();
        c.route = Some(Route::Engage);
        let e = prepare(0, json!({"$set": {"a": 1}, "$distinct_id": "u"}), &c).expect("valid");
        assert_eq!(e.event, "$identify");
    }
}
