//! posthog-js's remote config, as PostHog's own `RemoteConfig` views serve it:
//!
//! | route | answer |
//! |---|---|
//! | `GET /array/<token>/config` | the config as JSON |
//! | `GET /array/<token>/config.js` | a script setting `window._POSTHOG_REMOTE_CONFIG[<token>]` |
//!
//! The browser bundle loads `config.js` first and falls back to the JSON. A token that is not
//! 1–200 characters of `[A-Za-z0-9_-]` is a 400, an unknown one a 404, both JSON. The config
//! names what herd serves (gzip, the `/i/v0/e/` endpoint, whether the project has active
//! flags) and switches off what it does not (recordings, surveys, heatmaps, product tours,
//! conversations, exception and console capture, site apps), so posthog-js asks for none of it.
//! `surveys` is left out rather than `false`: posthog-js loads its surveys script for any
//! boolean there (to render nothing when `false`), a script herd does not serve.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herd_core::ProjectId;
use serde_json::{Value, json};

use crate::flags::{FlagsError, FlagsState};

/// The longest token PostHog's config views accept.
const MAX_TOKEN: usize = 200;

/// The remote-config routes.
pub fn router(state: Arc<FlagsState>) -> Router {
    Router::new()
        .route("/array/{token}/config", get(config_json))
        .route("/array/{token}/config.js", get(config_js))
        .with_state(state)
}

async fn config_json(State(state): State<Arc<FlagsState>>, Path(token): Path<String>) -> Response {
    match config_for(&state, &token).await {
        Ok(config) => with_vary(axum::Json(config).into_response()),
        Err(e) => e.into_response(),
    }
}

async fn config_js(State(state): State<Arc<FlagsState>>, Path(token): Path<String>) -> Response {
    match config_for(&state, &token).await {
        Ok(config) => {
            let script = script(&token, &config);
            let js = HeaderValue::from_static("application/javascript");
            with_vary(([(header::CONTENT_TYPE, js)], script).into_response())
        }
        Err(e) => e.into_response(),
    }
}

/// PostHog answers per origin (recording domains), so caches must key on it.
fn with_vary(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Origin, Referer"));
    resp
}

async fn config_for(state: &FlagsState, token: &str) -> Result<Value, FlagsError> {
    check_token(token)?;
    let project = state
        .db()
        .project_by_token(token)
        .await?
        .ok_or_else(|| FlagsError::NotFound("Not found.".into()))?
        .project()
        .id;
    Ok(config(token, has_active_flags(state, project)))
}

fn check_token(token: &str) -> Result<(), FlagsError> {
    let ok = !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FlagsError::BadRequest(format!(
            "Invalid token: a token is 1 to {MAX_TOKEN} characters of A-Z, a-z, 0-9, `_` and `-`"
        )))
    }
}

fn has_active_flags(state: &FlagsState, project: ProjectId) -> bool {
    let snapshot = state.store().snapshot(project);
    snapshot.flags.iter().any(|f| f.active && !f.deleted)
}

/// The config document (PostHog's `RemoteConfig.build_config`, for what herd serves).
fn config(token: &str, has_flags: bool) -> Value {
    json!({
        "token": token,
        "supportedCompression": ["gzip", "gzip-js"],
        "hasFeatureFlags": has_flags,
        "captureDeadClicks": false,
        "capturePerformance": false,
        "autocapture_opt_out": false,
        "autocaptureExceptions": false,
        "analytics": {"endpoint": "/i/v0/e/"},
        "elementsChainAsString": true,
        "errorTracking": {"autocaptureExceptions": false, "suppressionRules": []},
        "logs": {"captureConsoleLogs": false},
        "sessionRecording": false,
        "heatmaps": false,
        "conversations": false,
        "productTours": false,
        "defaultIdentifiedOnly": true,
        "siteApps": [],
    })
}

/// The `config.js` script: the config under the token, no site apps.
fn script(token: &str, config: &Value) -> String {
    let mut config = config.clone();
    if let Some(map) = config.as_object_mut() {
        map.remove("siteApps");
    }
    // The token passed `check_token`; JSON-encoding it keeps the script well-formed anyway.
    let key = Value::String(token.to_owned());
    format!(
        "(function() {{\n  window._POSTHOG_REMOTE_CONFIG = window._POSTHOG_REMOTE_CONFIG || {{}};\n  \
         window._POSTHOG_REMOTE_CONFIG[{key}] = {{\n    config: {config},\n    siteApps: []\n  }}\n}})();"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_as_posthog_checks_them() {
        assert!(check_token("phc_abc-DEF_123").is_ok());
        for bad in ["", "a b", "a/b", "a.b", "<script>", &"x".repeat(201)] {
            let e = check_token(bad).expect_err(bad);
            assert!(matches!(e, FlagsError::BadRequest(_)), "{bad}: {e:?}");
        }
        assert!(check_token(&"x".repeat(200)).is_ok());
    }

    #[test]
    fn config_switches_off_what_herd_lacks() {
        let c = config("phc_t", true);
        assert_eq!(c["hasFeatureFlags"], true);
        assert_eq!(c["supportedCompression"], json!(["gzip", "gzip-js"]));
        assert_eq!(c["analytics"]["endpoint"], "/i/v0/e/");
        for off in ["sessionRecording", "heatmaps", "productTours"] {
            assert_eq!(c[off], false, "{off}");
        }
        assert!(c.get("surveys").is_none(), "no surveys script to load");
        assert_eq!(config("phc_t", false)["hasFeatureFlags"], false);
    }

    #[test]
    fn script_sets_the_global_under_the_token() {
        let s = script("phc_t", &config("phc_t", false));
        assert!(
            s.contains("window._POSTHOG_REMOTE_CONFIG[\"phc_t\"] = {"),
            "{s}"
        );
        assert!(s.contains("\"hasFeatureFlags\":false"), "{s}");
        assert!(!s.contains("\"siteApps\""), "{s}");
        assert!(s.ends_with("})();"), "{s}");
    }
}
