//! The SDK-facing flag endpoints (protocol spec §3):
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `POST /flags[/]?v=N` | `token`, `$token` or `api_key` in the body | v ≥ 2: v2 records; else flat |
//! | `POST /decide[/]?v=N` | same | v ≤ 1: active keys; 2: active map; 3: flat; ≥ 4: v2 records |
//! | `GET /flags/definitions`, `/api/feature_flag/local_evaluation[/]` | `Authorization: Bearer <secret key>` | definitions, `ETag`, `304` on `If-None-Match` |
//!
//! Bodies are JSON, gzip (by magic bytes or `compression=gzip`) or base64
//! (`compression=base64`, or a body that is not JSON). A malformed body is a 400 with a
//! `detail` naming the field; one flag that cannot be evaluated is reported in its own record
//! (`"failed": true`) and sets `errorsWhileComputingFlags`, never failing the response.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use serde_json::{Map, Value, json};

use crate::flags::{Actor, FlagsError, FlagsState, Outcome};

/// Largest accepted `/flags` body, compressed or not.
const BODY_LIMIT: usize = 1 << 20;
/// Largest decompressed body.
const DECODED_LIMIT: usize = 8 << 20;

/// The flag routes.
pub fn router(state: Arc<FlagsState>) -> Router {
    let mut app = Router::new();
    for path in ["/flags", "/flags/"] {
        app = app.route(
            path,
            any(|s, m, q, h, b| evaluate(s, Endpoint::Flags, m, q, h, b)),
        );
    }
    for path in ["/decide", "/decide/"] {
        app = app.route(
            path,
            any(|s, m, q, h, b| evaluate(s, Endpoint::Decide, m, q, h, b)),
        );
    }
    for path in [
        "/flags/definitions",
        "/flags/definitions/",
        "/api/feature_flag/local_evaluation",
        "/api/feature_flag/local_evaluation/",
    ] {
        app = app.route(path, any(definitions));
    }
    app.with_state(state)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Flags,
    Decide,
}

/// The response shapes of protocol spec §3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `{"flags": {key: v2 record}}`.
    Records,
    /// `{"featureFlags": {key: value}, "featureFlagPayloads": {...}}`.
    Flat,
    /// `{"featureFlags": {key: value}}` of enabled flags only.
    ActiveMap,
    /// `{"featureFlags": [key]}` of enabled flags.
    ActiveList,
}

fn shape(endpoint: Endpoint, version: Option<u32>) -> Shape {
    match (endpoint, version.unwrap_or(1)) {
        (Endpoint::Flags, v) if v >= 2 => Shape::Records,
        (Endpoint::Flags, _) => Shape::Flat,
        (Endpoint::Decide, 0 | 1) => Shape::ActiveList,
        (Endpoint::Decide, 2) => Shape::ActiveMap,
        (Endpoint::Decide, 3) => Shape::Flat,
        (Endpoint::Decide, _) => Shape::Records,
    }
}

async fn evaluate(
    State(state): State<Arc<FlagsState>>,
    endpoint: Endpoint,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match evaluate_inner(&state, endpoint, &method, &query, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn evaluate_inner(
    state: &FlagsState,
    endpoint: Endpoint,
    method: &Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, FlagsError> {
    if method == Method::OPTIONS {
        return Ok(StatusCode::OK.into_response());
    }
    if method != Method::POST {
        return Err(FlagsError::BadRequest(format!(
            "{method} is not accepted here: send POST with a JSON body"
        )));
    }
    let raw = crate::http::read_limited(body, BODY_LIMIT)
        .await
        .map_err(|e| match e {
            crate::http::BodyError::TooLarge(limit) => {
                FlagsError::TooLarge(format!("the body is over {limit} bytes"))
            }
            crate::http::BodyError::Read(e) => {
                FlagsError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let request = decode_body(
        &raw,
        query.get("compression").map(String::as_str),
        content_type,
    )?;
    let token = ["token", "$token", "api_key"]
        .iter()
        .find_map(|k| request.get(*k).and_then(Value::as_str))
        .or_else(|| query.get("token").map(String::as_str))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            FlagsError::Unauthorized(
                "no project token: send it as `api_key` or `token` in the body".into(),
            )
        })?
        .to_owned();
    let actor = actor_from(&request)?;
    let project = state
        .db()
        .project_by_token(&token)
        .await?
        .ok_or_else(|| FlagsError::Unauthorized("unknown project token".into()))?
        .project()
        .id;
    let version = query.get("v").and_then(|v| v.trim().parse::<u32>().ok());
    let outcomes = state.evaluate(project, actor).await;
    let body = respond(shape(endpoint, version), &outcomes);
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Body bytes → the JSON object of a `/flags` request.
fn decode_body(
    raw: &[u8],
    compression: Option<&str>,
    content_type: &str,
) -> Result<Map<String, Value>, FlagsError> {
    let bad = |m: String| FlagsError::BadRequest(m);
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("request body is empty: send a JSON object".into()));
    }
    let compression = compression.map(str::to_ascii_lowercase);
    let mut bytes: Vec<u8> = raw.to_vec();
    // A form body (`data=<json or base64>`), as older browser libraries send.
    if content_type.starts_with("application/x-www-form-urlencoded")
        && let Some(data) = url_form_data(&bytes)
    {
        bytes = data;
    }
    let gzip = bytes.starts_with(&GZIP_MAGIC)
        || matches!(compression.as_deref(), Some("gzip" | "gzip-js"));
    if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .take(DECODED_LIMIT as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("the body is not valid gzip: {e}")))?;
        if out.len() > DECODED_LIMIT {
            return Err(FlagsError::TooLarge(format!(
                "the decompressed body is over {DECODED_LIMIT} bytes"
            )));
        }
        bytes = out;
    }
    let looks_json = matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    if matches!(compression.as_deref(), Some("base64" | "b64")) || !looks_json {
        let text: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        bytes = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&text))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&text))
            .map_err(|_| {
                bad("the body is neither JSON, gzip nor base64: send a JSON object".into())
            })?;
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(bad(format!(
            "the body must be a JSON object, not {}",
            kind(&other)
        ))),
    }
}

/// The `data` field of a form body, percent-decoded.
fn url_form_data(body: &[u8]) -> Option<Vec<u8>> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "data")
        .map(|(_, v)| v.into_owned().into_bytes())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The first present, non-null field among aliases.
fn field<'a>(request: &'a Map<String, Value>, names: &[&str]) -> Option<(&'a Value, String)> {
    names.iter().find_map(|n| {
        request
            .get(*n)
            .filter(|v| !v.is_null())
            .map(|v| (v, (*n).to_owned()))
    })
}

fn object<'a>(value: &'a Value, name: &str) -> Result<&'a Map<String, Value>, FlagsError> {
    value.as_object().ok_or_else(|| {
        FlagsError::BadRequest(format!("{name}: must be an object, not {}", kind(value)))
    })
}

/// The request fields of protocol spec §3.1, with PostHog's aliases.
fn actor_from(request: &Map<String, Value>) -> Result<Actor, FlagsError> {
    let bad = |m: String| FlagsError::BadRequest(m);
    let distinct_id = match field(request, &["distinct_id", "$distinct_id"]) {
        Some((Value::String(s), _)) => s.chars().take(200).collect(),
        Some((Value::Number(n), _)) => n.to_string(),
        Some((other, name)) => {
            return Err(bad(format!(
                "{name}: must be a string or a number, not {}",
                kind(other)
            )));
        }
        None => return Err(bad("distinct_id: required".into())),
    };
    let mut actor = Actor {
        distinct_id,
        ..Actor::default()
    };
    if let Some((groups, name)) = field(request, &["groups", "$groups"]) {
        for (group_type, key) in object(groups, &name)? {
            match key {
                Value::Array(_) | Value::Object(_) => {
                    return Err(bad(format!(
                        "{name}.{group_type}: a group key must be a string or a number, not {}",
                        kind(key)
                    )));
                }
                _ => {
                    if let Some(text) = herd_core::group_types::group_key_text(key) {
                        actor.groups.insert(group_type.clone(), text);
                    }
                }
            }
        }
    }
    if let Some((props, name)) = field(request, &["person_properties", "$properties"]) {
        actor.person_properties = object(props, &name)?.clone();
    }
    if let Some((all, name)) = field(request, &["group_properties", "$group_properties"]) {
        let mut by_type = BTreeMap::new();
        for (group_type, props) in object(all, &name)? {
            if props.is_null() {
                continue;
            }
            let props = object(props, &format!("{name}.{group_type}"))?;
            by_type.insert(group_type.clone(), props.clone());
        }
        actor.group_properties = by_type;
    }
    if let Some((keys, name)) = field(request, &["flag_keys_to_evaluate", "flag_keys"]) {
        let list = keys.as_array().ok_or_else(|| {
            bad(format!(
                "{name}: must be an array of flag keys, not {}",
                kind(keys)
            ))
        })?;
        let mut wanted = BTreeSet::new();
        for k in list {
            let k = k
                .as_str()
                .ok_or_else(|| bad(format!("{name}: flag keys must be strings")))?;
            wanted.insert(k.to_owned());
        }
        actor.flag_keys = Some(wanted);
    }
    actor.device_id = match field(request, &["device_id", "$device_id"]) {
        Some((Value::String(s), _)) => Some(s.clone()),
        Some((other, name)) => {
            return Err(bad(format!(
                "{name}: must be a string, not {}",
                kind(other)
            )));
        }
        None => actor
            .person_properties
            .get("$device_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    Ok(actor)
}

/// The v2 record of a flag that could not be evaluated.
fn failed_record(key: &str, id: u64, version: u64, code: &str, message: &str) -> Value {
    json!({
        "key": key,
        "enabled": false,
        "variant": null,
        "failed": true,
        "reason": {"code": code, "condition_index": null, "description": message},
        "metadata": {"id": id, "version": version, "payload": null, "description": null},
    })
}

fn respond(shape: Shape, outcomes: &[Outcome]) -> Value {
    let errors = outcomes.iter().any(|o| matches!(o, Outcome::Failed { .. }));
    for o in outcomes {
        if let Outcome::Failed { key, message, .. } = o {
            tracing::debug!(
                flag = key.as_str(),
                error = message.as_str(),
                "flag not evaluated"
            );
        }
    }
    let values = || {
        outcomes.iter().filter_map(|o| match o {
            Outcome::Value(r) => Some(r),
            Outcome::Failed { .. } => None,
        })
    };
    let mut body = Map::new();
    match shape {
        Shape::Records => {
            let flags: Map<String, Value> = outcomes
                .iter()
                .map(|o| {
                    let record = match o {
                        Outcome::Value(r) => r.to_v2_record(),
                        Outcome::Failed {
                            key,
                            id,
                            version,
                            code,
                            message,
                        } => failed_record(key, *id, *version, code, message),
                    };
                    (o.key().to_owned(), record)
                })
                .collect();
            body.insert("flags".into(), Value::Object(flags));
        }
        Shape::Flat => {
            let flags: Map<String, Value> = values().map(|r| (r.key.clone(), r.value())).collect();
            let payloads: Map<String, Value> = values()
                .filter(|r| r.enabled)
                .filter_map(|r| {
                    r.payload
                        .as_ref()
                        .map(|p| (r.key.clone(), Value::String(p.clone())))
                })
                .collect();
            body.insert("featureFlags".into(), Value::Object(flags));
            body.insert("featureFlagPayloads".into(), Value::Object(payloads));
        }
        Shape::ActiveMap => {
            let flags: Map<String, Value> = values()
                .filter(|r| r.enabled)
                .map(|r| (r.key.clone(), r.value()))
                .collect();
            body.insert("featureFlags".into(), Value::Object(flags));
        }
        Shape::ActiveList => {
            let keys: Vec<Value> = values()
                .filter(|r| r.enabled)
                .map(|r| Value::String(r.key.clone()))
                .collect();
            body.insert("featureFlags".into(), Value::Array(keys));
        }
    }
    body.insert("errorsWhileComputingFlags".into(), Value::Bool(errors));
    body.insert(
        "requestId".into(),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    body.insert(
        "evaluatedAt".into(),
        Value::from(chrono::Utc::now().timestamp_millis()),
    );
    Value::Object(body)
}

async fn definitions(
    State(state): State<Arc<FlagsState>>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match definitions_inner(&state, &method, &query, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn definitions_inner(
    state: &FlagsState,
    method: &Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, FlagsError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(FlagsError::BadRequest(format!(
            "{method} is not accepted here: send GET"
        )));
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            FlagsError::Unauthorized(
                "missing Authorization header: send `Authorization: Bearer <project secret key>`"
                    .into(),
            )
        })?;
    let key = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .ok_or_else(|| {
            FlagsError::Unauthorized("Authorization must be `Bearer <project secret key>`".into())
        })?
        .trim();
    let handle = state
        .db()
        .project_by_secret(key)
        .ok_or_else(|| FlagsError::Unauthorized("unknown secret key".into()))?;
    let project = handle.project();
    if let Some(token) = query.get("token").filter(|t| !t.is_empty())
        && *token != project.token
    {
        return Err(FlagsError::Unauthorized(
            "token: not the token of the secret key's project".into(),
        ));
    }
    let defs = state.definitions(project.id).await;
    let etag = HeaderValue::from_str(&format!("W/\"{}\"", defs.etag))
        .map_err(|e| FlagsError::Internal(format!("etag header: {e}")))?;
    let cache = HeaderValue::from_static("private, must-revalidate");
    if let Some(tags) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && defs.matches_if_none_match(tags)
    {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        defs.body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    #[test]
    fn version_table() {
        use Endpoint::*;
        use Shape::*;
        for (endpoint, v, want) in [
            (Flags, None, Flat),
            (Flags, Some(1), Flat),
            (Flags, Some(2), Records),
            (Flags, Some(4), Records),
            (Decide, None, ActiveList),
            (Decide, Some(1), ActiveList),
            (Decide, Some(2), ActiveMap),
            (Decide, Some(3), Flat),
            (Decide, Some(4), Records),
        ] {
            assert_eq!(shape(endpoint, v), want, "{endpoint:?} v={v:?}");
        }
    }

    #[test]
    fn bodies_json_gzip_base64_form() {
        let json = br#"{"distinct_id": "u", "api_key": "t"}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json).unwrap();
        let gz = gz.finish().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        let form = format!("data={}", b64.replace('+', "%2B").replace('=', "%3D"));
        for (body, compression, ct) in [
            (json.to_vec(), None, "application/json"),
            (gz.clone(), None, "text/plain"),
            (gz, Some("gzip"), "application/json"),
            (b64.clone().into_bytes(), Some("base64"), "text/plain"),
            (b64.into_bytes(), None, "text/plain"),
            (form.into_bytes(), None, "application/x-www-form-urlencoded"),
        ] {
            let map = decode_body(&body, compression, ct).unwrap();
            assert_eq!(map["distinct_id"], "u");
        }
        for bad in [&b""[..], b"  ", b"[1]", b"{", b"%%%"] {
            assert!(
                matches!(
                    decode_body(bad, None, "application/json"),
                    Err(FlagsError::BadRequest(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn request_fields_and_aliases() {
        let req = json!({"$distinct_id": 42, "$groups": {"company": 5, "team": null},
            "$properties": {"email": "a@b"}, "group_properties": {"company": {"plan": "x"}},
            "flag_keys": ["a"], "$device_id": "d"});
        let actor = actor_from(req.as_object().unwrap()).unwrap();
        assert_eq!(actor.distinct_id, "42");
        assert_eq!(actor.groups.get("company").map(String::as_str), Some("5"));
        assert!(!actor.groups.contains_key("team"));
        assert_eq!(actor.person_properties["email"], "a@b");
        assert_eq!(actor.group_properties["company"]["plan"], "x");
        assert_eq!(actor.flag_keys.unwrap().len(), 1);
        assert_eq!(actor.device_id.as_deref(), Some("d"));
        for (bad, field) in [
            (json!({}), "distinct_id"),
            (json!({"distinct_id": []}), "distinct_id"),
            (json!({"distinct_id": "u", "groups": []}), "groups"),
            (json!({"distinct_id": "u", "groups": {"c": {}}}), "groups.c"),
            (
                json!({"distinct_id": "u", "person_properties": "x"}),
                "person_properties",
            ),
            (
                json!({"distinct_id": "u", "group_properties": {"c": 1}}),
                "group_properties.c",
            ),
            (
                json!({"distinct_id": "u", "flag_keys_to_evaluate": "a"}),
                "flag_keys_to_evaluate",
            ),
        ] {
            match actor_from(bad.as_object().unwrap()) {
                Err(FlagsError::BadRequest(m)) => assert!(m.starts_with(field), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
