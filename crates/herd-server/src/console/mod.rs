//! The web console on the HTTP port: its page and assets under `/ui/` (embedded in the binary,
//! the chart library vendored; `/` redirects there) and the JSON API the page calls under
//! `/api/v1/` ([`api`]). The API takes the same herd-query requests as the gRPC services, as
//! JSON, with the same validation; every call authenticates with `Authorization: Bearer
//! <project secret key>`, which selects the project (the public token is refused).

mod api;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use herd_query::QueryEngine;
use herd_storage::Db;
use herd_storage::db::ProjectHandle;

use crate::http::ApiError;

/// The page and its assets.
#[derive(rust_embed::Embed)]
#[folder = "console/"]
struct Assets;

/// What the API handlers share.
#[derive(Clone)]
pub(crate) struct Console {
    db: Arc<Db>,
    engine: QueryEngine,
}

/// The console's routes: `/`, `/ui/…` and `/api/v1/…`.
pub fn router(db: Arc<Db>, engine: QueryEngine) -> Router {
    let state = Console { db, engine };
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| asset(Path("index.html".to_string()))))
        .route("/ui/{*path}", get(asset))
        .merge(api::routes().with_state(state))
}

/// An embedded file, with its content type; the page for unknown paths under `/ui/` (the
/// page routes itself from the URL).
async fn asset(Path(path): Path<String>) -> Response {
    let (file, name) = match Assets::get(&path) {
        Some(file) => (file, path),
        None if !path.contains('.') => match Assets::get("index.html") {
            Some(file) => (file, "index.html".to_string()),
            None => return StatusCode::NOT_FOUND.into_response(),
        },
        None => return StatusCode::NOT_FOUND.into_response(),
    };
    let mime = file.metadata.mimetype().to_string();
    let cache = match name.starts_with("vendor/") {
        true => "public, max-age=86400",
        false => "no-cache",
    };
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, cache.into()),
        ],
        file.data.into_owned(),
    )
        .into_response()
}

/// The project a request's `Authorization: Bearer <secret key>` selects.
fn authenticate(db: &Db, headers: &HeaderMap) -> Result<Arc<ProjectHandle>, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <project secret key>`"))?
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized("Authorization must be `Bearer <project secret key>`")
        })?
        .trim();
    db.project_by_secret(key).ok_or_else(|| {
        ApiError::unauthorized(
            "unknown secret key (the console takes a project's secret key, not its public token)",
        )
    })
}
