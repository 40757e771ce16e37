//! One raw event → a validated, normalised event (protocol spec §1.1, §1.3).
//!
//! Rules: `event` is a non-empty string; `distinct_id` (or `$distinct_id`, or
//! `properties.distinct_id`) is required: strings pass through, other JSON is stringified, NUL
//! becomes U+FFFD, and it is cut to 200 characters; `uuid` is kept when valid, generated
//! (UUIDv7) when absent or `""`, and refused when invalid; top-level `$set`/`$set_once` merge
//! into `properties` (top-level keys win); `sent_at` is copied to `properties.$sent_at`; the
//! timestamp follows PostHog's skew and offset rules.

use herd_core::time::{TimeInputs, resolve_timestamp};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::decode::{Route, json_kind};
use crate::groups::GroupInputs;
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

/// A validated event, ready for the project lock: everything that does not depend on the
/// project's state is decided.
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
    /// Properties as JSON object text, without `$group_N` keys (added from the slots later).
    pub properties: String,
    /// What the group rules need.
    pub inputs: GroupInputs,
}

/// The top-level fields of an event; `properties` stays raw text.
#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    event: Option<Value>,
    #[serde(default)]
    distinct_id: Option<Value>,
    #[serde(default, rename = "$distinct_id")]
    dollar_distinct_id: Option<Value>,
    #[serde(default)]
    uuid: Option<Value>,
    #[serde(default)]
    properties: Option<Box<RawValue>>,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    offset: Option<Value>,
    #[serde(default, rename = "$set")]
    set: Option<Value>,
    #[serde(default, rename = "$set_once")]
    set_once: Option<Value>,
    #[serde(default)]
    token: Option<Value>,
    #[serde(default, rename = "$token")]
    dollar_token: Option<Value>,
    #[serde(default)]
    api_key: Option<Value>,
}

/// The properties capture reads, found in one pass that skips everything else.
#[derive(Deserialize, Default)]
struct Peek {
    #[serde(default, rename = "$groups")]
    groups: Option<Value>,
    #[serde(default, rename = "$process_person_profile")]
    process_person_profile: Option<Value>,
    #[serde(default, rename = "$group_type")]
    group_type: Option<Value>,
    #[serde(default, rename = "$group_key")]
    group_key: Option<Value>,
    #[serde(default, rename = "$group_set")]
    group_set: Option<Value>,
    #[serde(default)]
    distinct_id: Option<Value>,
    #[serde(default)]
    token: Option<Value>,
    #[serde(default, rename = "$ignore_sent_at")]
    ignore_sent_at: Option<Value>,
    #[serde(default, rename = "$ip")]
    ip: Option<IgnoredAny>,
    #[serde(default, rename = "$sent_at")]
    sent_at: Option<IgnoredAny>,
    #[serde(default, rename = "$group_0")]
    g0: Option<IgnoredAny>,
    #[serde(default, rename = "$group_1")]
    g1: Option<IgnoredAny>,
    #[serde(default, rename = "$group_2")]
    g2: Option<IgnoredAny>,
    #[serde(default, rename = "$group_3")]
    g3: Option<IgnoredAny>,
    #[serde(default, rename = "$group_4")]
    g4: Option<IgnoredAny>,
}

/// An event parsed just enough to find its token.
#[derive(Debug)]
pub struct ParsedEvent {
    raw: RawEvent,
    peek: Option<Peek>,
}

impl std::fmt::Debug for RawEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawEvent")
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Peek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peek").finish_non_exhaustive()
    }
}

fn properties_text(raw: &RawEvent) -> Option<&str> {
    raw.properties
        .as_deref()
        .map(RawValue::get)
        .filter(|t| t.trim() != "null")
}

impl ParsedEvent {
    /// Parses one raw event's top level (and peeks at its properties).
    pub fn parse(index: usize, raw: &RawValue) -> Result<Self> {
        let at = |msg: String| Error::bad(format!("event {index}: {msg}"));
        let text = raw.get();
        if !text.trim_start().starts_with('{') {
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            return Err(at(format!("must be a JSON object, got {}", json_kind(&v))));
        }
        let raw: RawEvent =
            serde_json::from_str(text).map_err(|e| at(format!("invalid event: {e}")))?;
        // A peek that fails (duplicate keys, not an object) leaves the slow path to decide.
        let peek = properties_text(&raw).and_then(|p| serde_json::from_str::<Peek>(p).ok());
        Ok(Self { raw, peek })
    }

    /// The token the event carries: `token`, `$token`, `api_key`, then `properties.token`.
    pub fn token(&self) -> Option<&Value> {
        [&self.raw.token, &self.raw.dollar_token, &self.raw.api_key]
            .into_iter()
            .find_map(|v| v.as_ref().filter(|v| !v.is_null()))
            .or_else(|| {
                self.peek
                    .as_ref()
                    .and_then(|p| p.token.as_ref())
                    .filter(|v| v.is_string())
            })
    }
}

fn group_inputs_of(event: &str, peek: Peek) -> Result<GroupInputs, String> {
    GroupInputs::build(
        event,
        peek.groups.map(crate::peek::Members::from),
        peek.process_person_profile,
        peek.group_type,
        peek.group_key,
        peek.group_set,
    )
}

/// Validates and normalises one event.
pub fn prepare(index: usize, parsed: ParsedEvent, ctx: &RequestContext) -> Result<PreparedEvent> {
    let at = |msg: String| Error::bad(format!("event {index}: {msg}"));
    let ParsedEvent { raw, peek } = parsed;
    let event = match raw.event {
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
    let props_text = raw
        .properties
        .as_deref()
        .map(RawValue::get)
        .filter(|t| t.trim() != "null");
    if let Some(t) = props_text
        && !t.trim_start().starts_with('{')
    {
        let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
        return Err(at(format!(
            "properties must be an object, got {}",
            json_kind(&v)
        )));
    }

    let distinct_value = raw
        .distinct_id
        .filter(|v| !v.is_null())
        .or(raw.dollar_distinct_id.filter(|v| !v.is_null()))
        .or_else(|| {
            peek.as_ref()
                .and_then(|p| p.distinct_id.clone())
                .filter(|v| !v.is_null())
        });
    let distinct_id = match distinct_value {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    if distinct_id.is_empty() {
        return Err(at("missing distinct_id".into()));
    }
    let distinct_id: String =
        if distinct_id.contains('\0') || distinct_id.chars().count() > MAX_DISTINCT_ID_CHARS {
            distinct_id
                .replace('\0', "\u{FFFD}")
                .chars()
                .take(MAX_DISTINCT_ID_CHARS)
                .collect()
        } else {
            distinct_id
        };

    let uuid = match raw.uuid {
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

    let top_set = matches!(raw.set, Some(Value::Object(_)));
    let top_set_once = matches!(raw.set_once, Some(Value::Object(_)));
    let timestamp_text = match &raw.timestamp {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let offset_ms = raw.offset.as_ref().and_then(Value::as_i64);

    // Fast path: the properties text is kept as sent and the few keys herd adds are appended.
    // It needs a successful peek and nothing to merge or replace.
    let fast = match (&peek, props_text) {
        (_, None) => !top_set && !top_set_once,
        (Some(p), Some(_)) => {
            !(top_set || top_set_once || ctx.sent_at_text.is_some() && p.sent_at.is_some())
                && [&p.g0, &p.g1, &p.g2, &p.g3, &p.g4]
                    .iter()
                    .all(|g| g.is_none())
        }
        (None, Some(_)) => false,
    };
    let (properties, ignore_sent_at, inputs) = if fast {
        let peek = peek.unwrap_or_default();
        let ignore_sent_at = peek
            .ignore_sent_at
            .as_ref()
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let has_ip = peek.ip.is_some();
        let inputs = group_inputs_of(&event, peek).map_err(&at)?;
        let mut text = props_text.unwrap_or("{}").trim().to_string();
        if let Some(ip) = ctx.client_ip.as_ref().filter(|_| !has_ip) {
            append_key(&mut text, "$ip", &Value::String(ip.clone()));
        }
        if let Some(sent_at) = &ctx.sent_at_text {
            append_key(&mut text, "$sent_at", &Value::String(sent_at.clone()));
        }
        (text, ignore_sent_at, inputs)
    } else {
        let mut props: Map<String, Value> = match props_text {
            None => Map::new(),
            Some(t) => match serde_json::from_str::<Value>(t) {
                Ok(Value::Object(m)) => m,
                Ok(other) => {
                    return Err(at(format!(
                        "properties must be an object, got {}",
                        json_kind(&other)
                    )));
                }
                Err(e) => return Err(at(format!("properties are not valid JSON: {e}"))),
            },
        };
        for (key, top) in [("$set", raw.set), ("$set_once", raw.set_once)] {
            if let Some(Value::Object(top)) = top {
                let entry = props
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                match entry {
                    Value::Object(existing) => existing.extend(top),
                    other => *other = Value::Object(top),
                }
            }
        }
        if let Some(ip) = &ctx.client_ip {
            props
                .entry("$ip".to_string())
                .or_insert_with(|| Value::String(ip.clone()));
        }
        if let Some(sent_at) = &ctx.sent_at_text {
            props.insert("$sent_at".into(), Value::String(sent_at.clone()));
        }
        let ignore_sent_at = props
            .get("$ignore_sent_at")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let inputs = GroupInputs::from_properties(&event, &props).map_err(&at)?;
        for slot in 0..herd_core::MAX_GROUP_TYPES {
            props.shift_remove(&format!("$group_{slot}"));
        }
        (Value::Object(props).to_string(), ignore_sent_at, inputs)
    };

    let timestamp = resolve_timestamp(
        TimeInputs {
            timestamp: timestamp_text,
            offset_ms,
            sent_at: ctx.sent_at,
            ignore_sent_at,
        },
        ctx.now,
    );
    Ok(PreparedEvent {
        index,
        uuid,
        event,
        distinct_id,
        timestamp,
        properties,
        inputs,
    })
}

/// Appends `"key": value` to a JSON object's text.
fn append_key(text: &mut String, key: &str, value: &Value) {
    if !text.ends_with('}') {
        return;
    }
    text.pop();
    let empty = text.trim_end() == "{";
    if !empty {
        text.push(',');
    }
    text.push_str(&Value::String(key.to_string()).to_string());
    text.push(':');
    text.push_str(&value.to_string());
    text.push('}');
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

    fn prep(index: usize, v: Value, ctx: &RequestContext) -> Result<PreparedEvent> {
        let raw = RawValue::from_string(v.to_string()).expect("raw");
        prepare(index, ParsedEvent::parse(index, &raw)?, ctx)
    }

    fn props(e: &PreparedEvent) -> Value {
        serde_json::from_str(&e.properties).expect("properties JSON")
    }

    fn err(v: Value) -> String {
        match prep(3, v, &ctx()) {
            Err(e) => e.to_string(),
            Ok(_) => "accepted".into(),
        }
    }

    #[test]
    fn normalises_what_the_sdks_send() {
        let e = prep(
            0,
            json!({"event": "$set", "distinct_id": 42, "$set": {"email": "a@b.c"},
                   "properties": {"$set": {"email": "old", "name": "n"}},
                   "timestamp": "2024-01-01T10:00:00+00:00",
                   "uuid": "01890dd5-0b3a-7d4c-8a5c-9f0b3c1d2e3f"}),
            &ctx(),
        )
        .expect("valid");
        assert_eq!(e.distinct_id, "42");
        assert_eq!(props(&e)["$set"], json!({"email": "a@b.c", "name": "n"}));
        assert_eq!(e.uuid.to_string(), "01890dd5-0b3a-7d4c-8a5c-9f0b3c1d2e3f");
        assert_eq!(
            e.timestamp,
            herd_core::time::parse_timestamp("2024-01-01T10:00:00Z").expect("ts")
        );
        let long = prep(
            0,
            json!({"event": "a", "$distinct_id": "x\u{0}".repeat(300)}),
            &ctx(),
        )
        .expect("valid");
        assert_eq!(long.distinct_id.chars().count(), 200);
        assert!(long.distinct_id.starts_with("x\u{FFFD}"));
        let from_props = prep(
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
    fn fast_and_slow_paths_agree() {
        let mut c = ctx();
        c.client_ip = Some("10.1.2.3".into());
        c.sent_at_text = Some("2024-01-02T00:00:00Z".into());
        // Fast path: nothing to merge; $ip and $sent_at are appended to the text as sent.
        let fast = prep(
            0,
            json!({"event": "a", "distinct_id": "u", "properties": {"plan": "pro", "$groups": {"company": "id:5"}}}),
            &c,
        )
        .expect("valid");
        assert_eq!(
            props(&fast),
            json!({"plan": "pro", "$groups": {"company": "id:5"}, "$ip": "10.1.2.3", "$sent_at": "2024-01-02T00:00:00Z"})
        );
        assert_eq!(
            fast.inputs.groups,
            vec![("company".to_string(), json!("id:5"))]
        );
        // Slow path (a top-level $set, a client-sent $group_0 and $sent_at): same shape.
        let slow = prep(
            0,
            json!({"event": "a", "distinct_id": "u", "$set": {"x": 1},
                   "properties": {"plan": "pro", "$groups": {"company": "id:5"}, "$group_0": "stale", "$sent_at": "old", "$ip": "1.1.1.1"}}),
            &c,
        )
        .expect("valid");
        assert_eq!(
            props(&slow),
            json!({"plan": "pro", "$groups": {"company": "id:5"}, "$sent_at": "2024-01-02T00:00:00Z", "$ip": "1.1.1.1", "$set": {"x": 1}})
        );
        assert_eq!(slow.inputs, fast.inputs);
        // No properties at all.
        let bare = prep(
            0,
            json!({"event": "a", "distinct_id": "u", "properties": null}),
            &ctx(),
        )
        .expect("valid");
        assert_eq!(props(&bare), json!({}));
    }

    #[test]
    fn engage_events_default_to_identify() {
        let mut c = ctx();
        c.route = Some(Route::Engage);
        let e = prep(0, json!({"$set": {"a": 1}, "$distinct_id": "u"}), &c).expect("valid");
        assert_eq!(e.event, "$identify");
    }
}
