//! The admin listener: the tenant and token API and the usage report under `/admin/v1`
//! (DESIGN §5, §17), its OpenAPI document, `/metrics` and the probes. Everything under
//! `/admin/` needs the admin bearer token, compared in constant time; there are no
//! cookies and no CORS.

mod ha;
mod tenants;
mod usage;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, OriginalUri, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::admission::client_address::client_ip;
use crate::admission::AuthFailureLimiter;
use crate::auth::bearer_token;
use crate::error::{AppError, JsonError};
use crate::server::{healthy, ready, SharedState};
use crate::tenant::store::AuditEntry;

/// The admin API's OpenAPI 3.0 document, kept beside the routes it describes.
pub const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

/// Admin request bodies are small JSON objects.
const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;

pub fn admin_router(state: SharedState) -> Router {
    let api = tenants::routes()
        .merge(usage::routes())
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/audit", get(list_audit))
        .fallback(|| async { JsonError(AppError::NotFound("no such admin route".into())) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ADMIN_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_token,
        ));
    // Prometheus serves this behind --web.enable-lifecycle; here the admin token guards it.
    let lifecycle = Router::new()
        .route("/-/reload", post(reload).put(reload))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_token,
        ));
    Router::new()
        .nest("/admin", api)
        .merge(lifecycle)
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .with_state(state)
}

pub fn admin_token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Addresses whose failed admin authentications are remembered at once.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// `failures_per_minute` failed admin authentications per source address, then 429.
pub fn auth_failure_limiter(failures_per_minute: u32) -> AuthFailureLimiter {
    AuthFailureLimiter::new(
        failures_per_minute,
        Duration::from_secs(60),
        MAX_TRACKED_ADDRESSES,
    )
}

async fn require_admin_token(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
    // Behind a trusted proxy, the client it names: throttling and the audit log must
    // not lump every operator behind one load balancer together (SECURITY.md T16).
    let source = client_ip(&state.config.admin.trusted_proxies, peer, request.headers());
    let now = Instant::now();
    let presented = bearer_token(request.headers()).map(admin_token_digest);
    let authorised = match presented {
        Ok(digest) => bool::from(digest.ct_eq(&state.admin_token_digest)),
        Err(_) => false,
    };
    // The valid admin token is checked first and never throttled: someone else's failed
    // guesses from the same address (a bastion, a NAT) must not lock the operator out.
    if !authorised {
        if let Err(wait) = state.admin_auth_failures.check(source, now) {
            tracing::warn!(%source, "admin authentication throttled after repeated failures");
            let body = serde_json::json!({ "error": "too many failed admin authentications; retry later" });
            let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return response;
        }
    }
    // The full path: inside the nested router the URI has lost its `/admin` prefix.
    let target = request.extensions().get::<OriginalUri>().map_or_else(
        || request.uri().path().to_string(),
        |uri| uri.path().to_string(),
    );
    let action = format!("{} {target}", request.method());
    let changes_state = request.method() != Method::GET;
    if !authorised {
        state.admin_auth_failures.record_failure(source, now);
        tracing::warn!(%source, path = %request.uri().path(), "admin request without a valid admin token");
        audit(
            &state,
            "unauthenticated".into(),
            action,
            target,
            source,
            StatusCode::UNAUTHORIZED,
        )
        .await;
        return JsonError(AppError::Unauthenticated(
            "a valid admin bearer token is required".into(),
        ))
        .into_response();
    }
    let response = next.run(request).await;
    if changes_state {
        let actor = format!("admin:{}", hex::encode(&state.admin_token_digest[..4]));
        audit(&state, actor, action, target, source, response.status()).await;
    }
    response
}

/// Appends to the audit log; a failure to do so is logged, never hidden.
async fn audit(
    state: &SharedState,
    actor: String,
    action: String,
    target: String,
    source: IpAddr,
    result: StatusCode,
) {
    let entry = AuditEntry {
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
            }),
        actor,
        action,
        target,
        source: source.to_string(),
        result: result.as_u16(),
    };
    if let Err(err) = state.registry.store().insert_audit(&entry).await {
        tracing::error!(error = %err, action = %entry.action, "could not write the admin audit log");
    }
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
}

/// `GET /admin/v1/audit?limit=N`: the newest entries first (at most 1000).
async fn list_audit(
    State(state): State<SharedState>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, JsonError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = state
        .registry
        .store()
        .list_audit(limit)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "could not read the admin audit log");
            AppError::Unavailable {
                message: "the registry database is unavailable".into(),
                retry_after_seconds: 5,
            }
        })?;
    Ok(axum::Json(serde_json::json!({ "entries": entries })).into_response())
}

/// `POST /-/reload`: reads the config file again (as SIGHUP does). 200 once applied; 500
/// with every problem, one a line, when refused (Prometheus answers the same way).
async fn reload(State(state): State<SharedState>) -> Response {
    match crate::server::reload::reload(&state).await {
        Ok(()) => (StatusCode::OK, "configuration reloaded\n").into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload the configuration: {err}\n"),
        )
            .into_response(),
    }
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_DOCUMENT,
    )
        .into_response()
}

async fn metrics(State(state): State<SharedState>) -> Response {
    state.queued.refresh_metrics(&state.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Parses a JSON body, refusing unknown keys anywhere in it.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    let mut unknown = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> =
        serde_ignored::deserialize(&mut deserializer, |path| unknown.push(path.to_string()));
    let parsed = parsed.map_err(|err| AppError::BadRequest(format!("invalid JSON body: {err}")))?;
    deserializer
        .end()
        .map_err(|err| AppError::BadRequest(format!("invalid JSON body: {err}")))?;
    if !unknown.is_empty() {
        return Err(AppError::BadRequest(format!(
            "unknown field(s): {}",
            unknown.join(", ")
        )));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_document_is_json_and_lists_every_route() {
        let document: serde_json::Value =
            serde_json::from_str(OPENAPI_DOCUMENT).expect("valid JSON");
        let paths = document["paths"].as_object().expect("paths");
        for path in [
            "/admin/v1/tenants",
            "/admin/v1/tenants/{id}",
            "/admin/v1/tenants/{id}/tokens",
            "/admin/v1/tenants/{id}/tokens/{token_id}",
            "/admin/v1/tenants/{id}/ha",
            "/admin/v1/openapi.json",
            "/admin/v1/audit",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
    }

    #[test]
    fn openapi_document_describes_versions_and_preconditions() {
        let document: serde_json::Value =
            serde_json::from_str(OPENAPI_DOCUMENT).expect("valid JSON");
        let tenant = &document["paths"]["/admin/v1/tenants/{id}"];
        for method in ["patch", "delete"] {
            assert!(
                tenant[method]["responses"]["412"].is_object(),
                "{method}: 412"
            );
            assert_eq!(
                tenant[method]["parameters"][0]["$ref"], "#/components/parameters/IfMatch",
                "{method}: If-Match"
            );
        }
        for response in [
            &tenant["get"]["responses"]["200"],
            &tenant["patch"]["responses"]["200"],
            &document["paths"]["/admin/v1/tenants"]["post"]["responses"]["201"],
        ] {
            assert!(response["headers"]["ETag"].is_object(), "{response}");
        }
        assert!(tenant["patch"]["responses"]["409"]["description"]
            .as_str()
            .is_some_and(|text| text.contains("label_value")));
        assert_eq!(
            document["components"]["schemas"]["Tenant"]["allOf"][1]["properties"]["version"]
                ["type"],
            "integer"
        );
    }
}
