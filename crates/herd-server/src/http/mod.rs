//! HTTP capture (protocol spec §1, §4): `/batch/`, `/capture/`, `/e/`, `/i/v0/e/`, `/track/`,
//! `/engage/`, with and without the trailing slash; POST everywhere, GET `?data=` on the legacy
//! paths. Success is exactly `200 {"status": 1}` (`204` for `beacon=1`); errors are JSON
//! `{"type", "code", "detail"}` with 400, 401, 413 or 503. Every HTTP route answers CORS
//! (preflights included) as PostHog's capture does.

pub mod flags;
pub mod remote_config;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use herd_ingest::capture::{BATCH_LIMIT, SINGLE_LIMIT};
use herd_ingest::{CaptureInput, Ingestor, Route};
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::Result;

/// The longest query string capture reads (`GET ?data=` payloads), decoded; a longer one is
/// a JSON 414. hyper refuses a request line over 64 KiB itself, with a bare 414, before any
/// handler runs.
pub const MAX_QUERY_BYTES: usize = 32 << 10;

/// An error on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    detail: String,
}

impl From<herd_ingest::Error> for ApiError {
    fn from(e: herd_ingest::Error) -> Self {
        use herd_ingest::Error as E;
        let (status, kind, code) = match &e {
            E::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "validation_error",
                "invalid_payload",
            ),
            E::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
            ),
            E::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "validation_error",
                "payload_too_large",
            ),
            E::Storage(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "storage_unavailable",
            ),
            E::Source { .. } | E::Arrow(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal",
            ),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "capture failed");
        } else {
            tracing::debug!(error = %e, %status, "capture refused");
        }
        Self {
            status,
            kind,
            code,
            detail: herd_core::message::clip(e.to_string()),
        }
    }
}

impl ApiError {
    /// An error with PostHog's `{type, code, detail}` body.
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            detail: herd_core::message::clip(detail.into()),
        }
    }

    /// A request field the client must fix.
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "validation_error",
            "invalid_request",
            detail,
        )
    }

    /// No, a malformed or an unknown key.
    pub(crate) fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            detail,
        )
    }
}

/// Query errors as the console's JSON API answers them: the same kinds as gRPC's map
/// ([`crate::grpc::status::query`]).
impl From<herd_query::Error> for ApiError {
    fn from(e: herd_query::Error) -> Self {
        use herd_query::Error as E;
        let text = e.to_string();
        match e {
            E::Invalid { .. } => Self::invalid(text),
            E::UnknownProject(_) => {
                Self::new(StatusCode::NOT_FOUND, "invalid_request", "not_found", text)
            }
            E::DataFusion(d)
                if matches!(
                    d.find_root(),
                    datafusion::error::DataFusionError::ResourcesExhausted(_)
                ) =>
            {
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "resources_exhausted",
                    text,
                )
            }
            other => {
                tracing::error!(error = %other, "console query failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal",
                    other.to_string(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"type": self.kind, "code": self.code, "detail": self.detail});
        (self.status, axum::Json(body)).into_response()
    }
}

/// The capture routes.
pub fn router(ingestor: Arc<Ingestor>) -> Router {
    let mut app = Router::new().route("/_health", get(health));
    for (path, route) in [
        ("/batch", Route::Batch),
        ("/capture", Route::Legacy),
        ("/e", Route::Legacy),
        ("/i/v0/e", Route::Legacy),
        ("/track", Route::Legacy),
        ("/engage", Route::Engage),
    ] {
        let handler = move |state, method, query, headers, addr, body| {
            capture(state, route, method, query, headers, addr, body)
        };
        app = app
            .route(path, any(handler))
            .route(&format!("{path}/"), any(handler));
    }
    // Limits are enforced per route inside the handler, with a JSON 413.
    app.layer(DefaultBodyLimit::disable()).with_state(ingestor)
}

/// `200 ok` while the store works normally; `503` with what is wrong (a failed WAL, failing
/// flushes, a full write buffer) while it does not, for load balancers and operators.
async fn health(State(ingestor): State<Arc<Ingestor>>) -> Response {
    let problems = ingestor.db().problems();
    if problems.is_empty() {
        return "ok".into_response();
    }
    let body = json!({"status": "degraded", "problems": problems});
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

#[allow(clippy::too_many_arguments)]
async fn capture(
    State(ingestor): State<Arc<Ingestor>>,
    route: Route,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    match capture_inner(&ingestor, route, &method, query, &headers, addr, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn capture_inner(
    ingestor: &Ingestor,
    route: Route,
    method: &Method,
    mut query: HashMap<String, String>,
    headers: &HeaderMap,
    addr: SocketAddr,
    body: Body,
) -> Result<Response, ApiError> {
    if method == Method::OPTIONS {
        return Ok(StatusCode::OK.into_response());
    }
    let allowed = method == Method::POST || (method == Method::GET && route != Route::Batch);
    if !allowed {
        return Err(ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            kind: "validation_error",
            code: "method_not_allowed",
            detail: format!("{method} is not accepted here: send POST"),
        });
    }
    let query_bytes: usize = query.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if query_bytes > MAX_QUERY_BYTES {
        return Err(ApiError {
            status: StatusCode::URI_TOO_LONG,
            kind: "validation_error",
            code: "uri_too_long",
            detail: format!(
                "the query string is over {MAX_QUERY_BYTES} bytes: send the events in a POST body"
            ),
        });
    }
    let limit = if route == Route::Batch {
        BATCH_LIMIT
    } else {
        SINGLE_LIMIT
    };
    let body = read_body(body, limit).await?;
    let beacon = query.get("beacon").is_some_and(|b| b == "1");
    let input = CaptureInput {
        body,
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        compression: query.remove("compression"),
        data: query.remove("data"),
        sent_at_ms: query.remove("_"),
    };
    let now = chrono::Utc::now().timestamp_micros();
    ingestor
        .capture(route, &input, Some(addr.ip().to_string()), now)
        .await?;
    if beacon {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok((StatusCode::OK, axum::Json(json!({"status": 1}))).into_response())
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Over the limit (bytes).
    TooLarge(usize),
    /// The connection failed mid-body.
    Read(String),
}

/// Reads a body of at most `limit` bytes. A larger one is read on (and discarded) up to a hard
/// cap before the 413 goes out, so the client sees the answer instead of a reset connection
/// in the middle of its upload.
pub(crate) async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, BodyError> {
    use http_body_util::BodyExt;
    const DRAIN_CAP: usize = 256 << 20;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > DRAIN_CAP {
            break;
        }
    }
    if seen > limit {
        return Err(BodyError::TooLarge(limit));
    }
    Ok(buf.freeze())
}

async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    read_limited(body, limit).await.map_err(|e| match e {
        BodyError::TooLarge(limit) => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "validation_error",
            code: "payload_too_large",
            detail: format!("maximum event size exceeded: the body is over {limit} bytes"),
        },
        BodyError::Read(e) => ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "validation_error",
            code: "invalid_payload",
            detail: format!("could not read the request body: {e}"),
        },
    })
}

/// CORS as PostHog's capture service answers it: any origin mirrored with credentials allowed,
/// the request's headers allowed, GET/POST/OPTIONS; preflights are answered here, before any
/// handler, so a browser on another origin can send posthog-js's JSON and gzip requests.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_credentials(true)
        .allow_headers(AllowHeaders::mirror_request())
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
}

/// Serves HTTP on `listener` until `stop` resolves, then lets in-flight requests finish.
/// `extra` routes (the flag endpoints) are served beside capture.
pub async fn serve(
    listener: TcpListener,
    ingestor: Arc<Ingestor>,
    extra: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = router(ingestor).merge(extra).layer(cors());
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
    .map_err(|e| crate::Error::Grpc(format!("HTTP server: {e}")))
}
