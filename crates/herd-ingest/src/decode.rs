//! Request bodies → raw events (protocol spec §1.1, §1.2).
//!
//! Accepted: a batch envelope `{"api_key"|"token", "batch": [...], "sent_at"}`, an array of
//! events, or one event object; gzip (detected by its magic bytes, or forced by
//! `compression=gzip|gzip-js`), base64 (`compression=base64|b64`, or a legacy body that is still
//! base64), and form bodies `data=<json or base64>` (also GET `?data=`). Decompressed size is
//! capped at the route's limit.

use std::io::Read;

use base64::Engine;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{Error, Result};

/// Which family of endpoint received the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/batch/`: the server SDKs' path.
    Batch,
    /// `/capture/`, `/e/`, `/i/v0/e/`, `/track/`: browser and legacy libraries.
    Legacy,
    /// `/engage/`: legacy person updates; an event without a name becomes `$identify`.
    Engage,
}

/// The parts of an HTTP request that capture looks at.
#[derive(Debug, Clone, Default)]
pub struct CaptureInput {
    /// The raw body.
    pub body: bytes::Bytes,
    /// `Content-Type`, if sent.
    pub content_type: Option<String>,
    /// `compression` query parameter.
    pub compression: Option<String>,
    /// `data` query parameter (GET on legacy paths).
    pub data: Option<String>,
    /// `_` query parameter: sent_at in ms since the epoch.
    pub sent_at_ms: Option<String>,
}

/// A decoded request: token and sent_at from the envelope, and the raw events.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Token from the envelope (`api_key` or `token`), if any.
    pub envelope_token: Option<Value>,
    /// `sent_at` as sent (envelope field), if any.
    pub sent_at: Option<String>,
    /// The events as raw JSON, not yet validated.
    pub events: Vec<Box<RawValue>>,
    /// Size of the decoded JSON text, bytes (no event can be larger).
    pub json_bytes: usize,
}

const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// Decodes a request body into raw events. `limit` caps the decompressed size.
pub fn decode(input: &CaptureInput, route: Route, limit: usize) -> Result<Decoded> {
    let mut compression = input.compression.clone();
    let mut raw: Vec<u8> = if input.body.is_empty() {
        match &input.data {
            Some(d) => d.clone().into_bytes(),
            None => return Err(Error::bad("request body is empty")),
        }
    } else {
        input.body.to_vec()
    };
    if raw.len() > limit {
        return Err(too_large(limit));
    }

    // A form body carries `data=`; a JSON body sent with a form content type (curl -d) is
    // still JSON.
    let looks_json = matches!(
        raw.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    let form_type = input
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let is_form = raw.starts_with(b"data=") || (form_type && !looks_json);
    if is_form && !raw.starts_with(&GZIP_MAGIC) {
        let mut data = None;
        for (k, v) in url::form_urlencoded::parse(&raw) {
            match k.as_ref() {
                "data" => data = Some(v.into_owned()),
                "compression" => compression = Some(v.into_owned()),
                _ => {}
            }
        }
        raw = data
            .ok_or_else(|| Error::bad("form body has no data= field"))?
            .into_bytes();
    }

    let compression = compression.as_deref().map(str::to_ascii_lowercase);
    if raw.starts_with(&GZIP_MAGIC) || matches!(compression.as_deref(), Some("gzip" | "gzip-js")) {
        raw = gunzip(&raw, limit)?;
    } else {
        match compression.as_deref() {
            Some("base64" | "b64") => raw = base64_decode(&raw)?,
            Some("lz64" | "lz-string") => {
                return Err(Error::bad(
                    "compression lz64 is not supported: send gzip, base64 or plain JSON",
                ));
            }
            Some("" | "none") | None => {}
            Some(other) => {
                return Err(Error::bad(format!("unknown compression {other:?}")));
            }
        }
    }

    let mut decoded = match parse(&raw) {
        Ok(d) => d,
        Err(json_err) => {
            // Legacy bodies may still be base64 after the steps above.
            let retried = (route != Route::Batch)
                .then(|| base64_decode(&raw).ok())
                .flatten()
                .and_then(|b| parse(&b).ok());
            match retried {
                Some(d) => d,
                None => return Err(json_err),
            }
        }
    };
    decoded.json_bytes = raw.len();
    Ok(decoded)
}

/// The fields of a batch envelope; everything else stays unparsed.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    batch: Option<Vec<Box<RawValue>>>,
    #[serde(default)]
    api_key: Option<Value>,
    #[serde(default)]
    token: Option<Value>,
    #[serde(default)]
    sent_at: Option<Value>,
}

/// Splits a JSON body into raw events without building a tree of their contents.
fn parse(raw: &[u8]) -> Result<Decoded> {
    let not_json =
        |e: &dyn std::fmt::Display| Error::bad(format!("request body is not valid JSON: {e}"));
    let text = std::str::from_utf8(raw).map_err(|e| not_json(&e))?;
    let decoded = match text.trim_start().as_bytes().first() {
        Some(b'[') => {
            let events: Vec<Box<RawValue>> =
                serde_json::from_str(text).map_err(|e| not_json(&e))?;
            Decoded {
                envelope_token: None,
                sent_at: None,
                events,
                json_bytes: 0,
            }
        }
        Some(b'{') => {
            // One pass splits the envelope's batch into raw events.
            let env: Envelope = match serde_json::from_str(text) {
                Ok(env) => env,
                Err(e) => {
                    let batch_not_array = serde_json::from_str::<Value>(text)
                        .ok()
                        .and_then(|v| v.get("batch").map(|b| !b.is_array()))
                        .unwrap_or(false);
                    if batch_not_array {
                        return Err(Error::bad("batch must be an array of events"));
                    }
                    return Err(not_json(&e));
                }
            };
            match env.batch {
                Some(events) => Decoded {
                    envelope_token: env
                        .api_key
                        .filter(|v| !v.is_null())
                        .or(env.token.filter(|v| !v.is_null())),
                    sent_at: match env.sent_at {
                        Some(Value::String(s)) => Some(s),
                        _ => None,
                    },
                    events,
                    json_bytes: 0,
                },
                None => {
                    let event =
                        RawValue::from_string(text.to_string()).map_err(|e| not_json(&e))?;
                    Decoded {
                        envelope_token: None,
                        sent_at: None,
                        events: vec![event],
                        json_bytes: 0,
                    }
                }
            }
        }
        _ => {
            let v: Value = serde_json::from_str(text).map_err(|e| not_json(&e))?;
            return Err(Error::bad(format!(
                "request body must be a JSON object or array, got {}",
                json_kind(&v)
            )));
        }
    };
    if decoded.events.is_empty() {
        return Err(Error::bad("batch is empty"));
    }
    Ok(decoded)
}

/// A short name for a JSON value's kind, for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn too_large(limit: usize) -> Error {
    Error::PayloadTooLarge(format!(
        "maximum event size exceeded: the decoded body is over {limit} bytes"
    ))
}

fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len() * 4);
    let mut decoder = flate2::read::MultiGzDecoder::new(raw).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| Error::bad(format!("body is not valid gzip: {e}")))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(out)
}

fn base64_decode(raw: &[u8]) -> Result<Vec<u8>> {
    let trimmed: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for engine in engines {
        if let Ok(b) = engine.decode(&trimmed) {
            return Ok(b);
        }
    }
    Err(Error::bad("body is not valid base64"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn input(body: &[u8]) -> CaptureInput {
        CaptureInput {
            body: bytes::Bytes::copy_from_slice(body),
            ..Default::default()
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    const BATCH: &str = r#"{"api_key":"phc_x","sent_at":"2024-01-01T00:00:00Z","batch":[{"event":"a","distinct_id":"u"}]}"#;

    #[test]
    fn envelope_array_and_single_event() {
        let d = decode(&input(BATCH.as_bytes()), Route::Batch, 1 << 20).expect("batch");
        assert_eq!(d.envelope_token, Some(Value::from("phc_x")));
        assert_eq!(d.sent_at.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_eq!(d.events.len(), 1);
        let d = decode(
            &input(br#"[{"event":"a"},{"event":"b"}]"#),
            Route::Legacy,
            1 << 20,
        )
        .expect("array");
        assert_eq!((d.events.len(), d.envelope_token), (2, None));
        let d = decode(
            &input(br#"{"event":"a","token":"t"}"#),
            Route::Legacy,
            1 << 20,
        )
        .expect("single");
        assert_eq!(d.events.len(), 1);
    }

    #[test]
    fn gzip_by_magic_base64_and_form_bodies() {
        let d = decode(&input(&gzip(BATCH.as_bytes())), Route::Batch, 1 << 20).expect("gzip");
        assert_eq!(d.events.len(), 1);
        let b64 = base64::engine::general_purpose::STANDARD.encode(BATCH);
        let mut i = input(b64.as_bytes());
        i.compression = Some("base64".into());
        assert_eq!(
            decode(&i, Route::Batch, 1 << 20).expect("b64").events.len(),
            1
        );
        // A legacy body that is still base64.
        assert_eq!(
            decode(&input(b64.as_bytes()), Route::Legacy, 1 << 20)
                .expect("legacy b64")
                .events
                .len(),
            1
        );
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("data", &b64)
            .finish();
        let mut i = input(form.as_bytes());
        i.content_type = Some("application/x-www-form-urlencoded".into());
        assert_eq!(
            decode(&i, Route::Legacy, 1 << 20)
                .expect("form")
                .events
                .len(),
            1
        );
        let i = CaptureInput {
            data: Some(BATCH.into()),
            ..Default::default()
        };
        assert_eq!(
            decode(&i, Route::Legacy, 1 << 20)
                .expect("GET data")
                .events
                .len(),
            1
        );
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let msg = |r: Result<Decoded>| match r {
            Err(e) => e.to_string(),
            Ok(_) => "ok".into(),
        };
        assert!(msg(decode(&input(b"{nope"), Route::Batch, 1 << 20)).contains("not valid JSON"));
        let gz = gzip(BATCH.as_bytes());
        assert!(msg(decode(&input(&gz[..gz.len() / 2]), Route::Batch, 1 << 20)).contains("gzip"));
        assert!(msg(decode(&input(br#"{"batch":[]}"#), Route::Batch, 1 << 20)).contains("empty"));
        assert!(msg(decode(&input(br#"{"batch":{}}"#), Route::Batch, 1 << 20)).contains("array"));
        assert!(msg(decode(&input(b"42"), Route::Batch, 1 << 20)).contains("a number"));
        assert!(msg(decode(&input(b""), Route::Batch, 1 << 20)).contains("empty"));
        // A small gzip body that inflates past the limit.
        let bomb = gzip(&vec![b' '; 4096]);
        assert!(matches!(
            decode(&input(&bomb), Route::Batch, 1024),
            Err(Error::PayloadTooLarge(_))
        ));
    }
}
