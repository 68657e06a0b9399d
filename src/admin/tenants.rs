//! Tenant and token routes: create, list, get, update, disable, delete tenants; issue,
//! list and revoke tokens. A token's secret appears only in the response that issues it.
//!
//! A tenant's version is its strong `ETag` (`"<version>"`) on GET, POST and PATCH; PATCH
//! and DELETE honour `If-Match` (RFC 9110 §13.1.1) and answer 412 when it does not hold.
//! PATCH is a partial update: only the fields in the body change, applied to what the
//! database holds, so concurrent changes through other replicas are kept.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::parse_json;
use crate::config::units::HumanDuration;
use crate::config::LimitOverrides;
use crate::error::{AppError, JsonError};
use crate::series::relabel::RelabelConfig;
use crate::server::SharedState;
use crate::tenant::registry::RegistryError;
use crate::tenant::{validate_tenant_id, Precondition, Tenant, TenantStatus, TokenRecord};

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/v1/tenants/{id}",
            get(get_tenant).patch(update_tenant).delete(delete_tenant),
        )
        .route(
            "/v1/tenants/{id}/tokens",
            get(list_tokens).post(issue_token),
        )
        .route("/v1/tenants/{id}/tokens/{token_id}", delete(revoke_token))
        .route("/v1/tenants/{id}/ha", get(super::ha::tenant_ha))
}

/// The writable fields of a tenant; POST needs `id`, PATCH takes any subset.
#[derive(Debug, Default, Deserialize)]
struct TenantSpec {
    id: Option<String>,
    label_value: Option<String>,
    extra_labels: Option<BTreeMap<String, String>>,
    limits: Option<LimitOverrides>,
    identities: Option<Vec<String>>,
    backends: Option<Vec<String>>,
    status: Option<TenantStatus>,
    write_relabel_configs: Option<Vec<RelabelConfig>>,
}

impl TenantSpec {
    /// Sets the fields present in the body, and only those.
    fn apply(&self, tenant: &mut Tenant) {
        if let Some(label_value) = &self.label_value {
            tenant.label_value.clone_from(label_value);
        }
        if let Some(extra_labels) = &self.extra_labels {
            tenant.extra_labels.clone_from(extra_labels);
        }
        if let Some(limits) = &self.limits {
            tenant.limits.clone_from(limits);
        }
        if let Some(identities) = &self.identities {
            tenant.identities.clone_from(identities);
        }
        if let Some(backends) = &self.backends {
            tenant.backends.clone_from(backends);
        }
        if let Some(status) = self.status {
            tenant.status = status;
        }
        if let Some(rules) = &self.write_relabel_configs {
            tenant.write_relabel_configs.clone_from(rules);
        }
    }
}

#[derive(Debug, Serialize)]
struct TenantView {
    id: String,
    label_value: String,
    extra_labels: BTreeMap<String, String>,
    limits: LimitOverrides,
    identities: Vec<String>,
    backends: Vec<String>,
    status: TenantStatus,
    write_relabel_configs: Vec<RelabelConfig>,
    created_at: String,
    updated_at: String,
    /// Bumped by every change; the same figure as the `ETag`.
    version: i64,
    /// In a single tenant's answer: its active series across replicas (as of the last
    /// sync) and its effective `max_active_series` (DESIGN §14).
    #[serde(skip_serializing_if = "Option::is_none")]
    active_series: Option<ActiveSeriesView>,
}

#[derive(Debug, Serialize)]
struct ActiveSeriesView {
    active: u64,
    limit: u64,
}

impl From<Tenant> for TenantView {
    fn from(tenant: Tenant) -> Self {
        TenantView {
            created_at: rfc3339(tenant.created_at),
            updated_at: rfc3339(tenant.updated_at),
            version: tenant.version,
            id: tenant.id,
            label_value: tenant.label_value,
            extra_labels: tenant.extra_labels,
            limits: tenant.limits,
            identities: tenant.identities,
            backends: tenant.backends,
            status: tenant.status,
            write_relabel_configs: tenant.write_relabel_configs,
            active_series: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct TokenSpec {
    ttl: Option<HumanDuration>,
    description: Option<String>,
}

#[derive(Debug, Serialize)]
struct TokenView {
    id: String,
    tenant_id: String,
    description: String,
    created_at: String,
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    /// `active`, `revoked` or `expired`.
    status: &'static str,
}

impl TokenView {
    fn new(token: TokenRecord, now: i64) -> TokenView {
        let status = if token.revoked_at.is_some() {
            "revoked"
        } else if token.expires_at <= now {
            "expired"
        } else {
            "active"
        };
        TokenView {
            id: token.id,
            tenant_id: token.tenant_id,
            description: token.description,
            created_at: rfc3339(token.created_at),
            expires_at: rfc3339(token.expires_at),
            revoked_at: token.revoked_at.map(rfc3339),
            status,
        }
    }
}

#[derive(Debug, Serialize)]
struct IssuedToken {
    id: String,
    token: String,
    tenant_id: String,
    description: String,
    expires_at: String,
}

impl From<RegistryError> for AppError {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::Invalid(_) => AppError::BadRequest(err.to_string()),
            RegistryError::Conflict(message) => AppError::Conflict(message),
            RegistryError::NotFound(what) => AppError::NotFound(format!("{what} not found")),
            RegistryError::PreconditionFailed(message) => AppError::PreconditionFailed(message),
            RegistryError::Contended(message) => AppError::Unavailable {
                message,
                retry_after_seconds: 1,
            },
            RegistryError::Store(store) => {
                tracing::error!(error = %store, "registry database failed");
                AppError::Unavailable {
                    message: "the registry database is unavailable".into(),
                    retry_after_seconds: 5,
                }
            }
        }
    }
}

type ApiResult = Result<Response, JsonError>;

impl From<RegistryError> for JsonError {
    fn from(err: RegistryError) -> Self {
        JsonError(AppError::from(err))
    }
}

/// A tenant's strong entity tag: its version, quoted.
fn etag(version: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("\"{version}\"")).ok()
}

/// The tenant as JSON with its `ETag`, and its active series (DESIGN §14).
fn tenant_response(state: &SharedState, status: StatusCode, tenant: Tenant) -> Response {
    let tag = etag(tenant.version);
    let limit = state.registry.tenant(&tenant.id).map_or_else(
        || {
            state
                .live
                .load()
                .config
                .limits
                .with(&tenant.limits)
                .max_active_series
        },
        |entry| entry.limits.max_active_series,
    );
    let active = state.active_series.count(&tenant.id).active;
    let mut view = TenantView::from(tenant);
    view.active_series = Some(ActiveSeriesView { active, limit });
    let mut response = (status, Json(view)).into_response();
    if let Some(tag) = tag {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// `If-Match` (RFC 9110 §13.1.1): absent → no precondition; `*` → the tenant must exist;
/// otherwise entity tags compared strongly with `"<version>"`, so a weak tag (`W/"3"`)
/// or one that is no version never matches. Several `If-Match` lines form one list.
fn precondition(headers: &HeaderMap) -> Result<Precondition, AppError> {
    let malformed =
        || AppError::BadRequest("If-Match must be \"*\" or entity tags such as \"3\"".into());
    let mut present = false;
    let mut any = false;
    let mut versions = Vec::new();
    for value in headers.get_all(header::IF_MATCH) {
        present = true;
        let text = value.to_str().map_err(|_| malformed())?;
        for tag in text.split(',').map(str::trim).filter(|tag| !tag.is_empty()) {
            if tag == "*" {
                any = true;
                continue;
            }
            let (weak, quoted) = match tag.strip_prefix("W/") {
                Some(quoted) => (true, quoted),
                None => (false, tag),
            };
            let opaque = quoted
                .strip_prefix('"')
                .and_then(|rest| rest.strip_suffix('"'))
                .filter(|opaque| !opaque.contains('"'))
                .ok_or_else(malformed)?;
            let version = opaque
                .parse::<i64>()
                .ok()
                .filter(|version| version.to_string() == opaque);
            if let (false, Some(version)) = (weak, version) {
                versions.push(version);
            }
        }
    }
    Ok(if !present {
        Precondition::Unconditional
    } else if any {
        Precondition::Exists
    } else {
        Precondition::AtVersion(versions)
    })
}

async fn list_tenants(State(state): State<SharedState>) -> ApiResult {
    let tenants: Vec<TenantView> = state
        .registry
        .tenants()
        .into_iter()
        .map(TenantView::from)
        .collect();
    Ok(Json(serde_json::json!({ "tenants": tenants })).into_response())
}

async fn create_tenant(State(state): State<SharedState>, body: Bytes) -> ApiResult {
    let spec: TenantSpec = parse_json(&body)?;
    let id = spec
        .id
        .clone()
        .ok_or_else(|| AppError::BadRequest("\"id\" is required".into()))?;
    validate_tenant_id(&id).map_err(AppError::BadRequest)?;
    let now = unix_now();
    let mut tenant = Tenant {
        label_value: id.clone(),
        id,
        extra_labels: BTreeMap::new(),
        limits: LimitOverrides::default(),
        identities: Vec::new(),
        backends: Vec::new(),
        status: TenantStatus::Active,
        write_relabel_configs: Vec::new(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    spec.apply(&mut tenant);
    let tenant = state.registry.create_tenant(tenant).await?;
    tracing::info!(tenant = %tenant.id, "tenant created");
    Ok(tenant_response(&state, StatusCode::CREATED, tenant))
}

async fn get_tenant(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult {
    validate_tenant_id(&id).map_err(AppError::BadRequest)?;
    let entry = state
        .registry
        .tenant(&id)
        .ok_or_else(|| AppError::NotFound(format!("tenant {id:?} not found")))?;
    Ok(tenant_response(
        &state,
        StatusCode::OK,
        entry.tenant.clone(),
    ))
}

async fn update_tenant(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    validate_tenant_id(&id).map_err(AppError::BadRequest)?;
    let precondition = precondition(&headers)?;
    let spec: TenantSpec = parse_json(&body)?;
    if spec.id.as_ref().is_some_and(|new_id| *new_id != id) {
        return Err(AppError::BadRequest("a tenant's id cannot change".into()).into());
    }
    let now = unix_now();
    let tenant = state
        .registry
        .update_tenant(&id, &precondition, |tenant| {
            spec.apply(tenant);
            tenant.updated_at = now;
            Ok(())
        })
        .await?;
    tracing::info!(tenant = %tenant.id, status = tenant.status.as_str(), version = tenant.version, "tenant updated");
    Ok(tenant_response(&state, StatusCode::OK, tenant))
}

async fn delete_tenant(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    validate_tenant_id(&id).map_err(AppError::BadRequest)?;
    let precondition = precondition(&headers)?;
    state.registry.delete_tenant(&id, &precondition).await?;
    state.rate_limits.forget(&id);
    state.tenant_budgets.forget(&id);
    tracing::info!(tenant = %id, "tenant deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn issue_token(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    validate_tenant_id(&id).map_err(AppError::BadRequest)?;
    let spec: TokenSpec = if body.iter().all(u8::is_ascii_whitespace) {
        TokenSpec::default()
    } else {
        parse_json(&body)?
    };
    if state.registry.tenant(&id).is_none() {
        return Err(AppError::NotFound(format!("tenant {id:?} not found")).into());
    }
    let ttl = spec
        .ttl
        .map_or(state.live.load().config.tokens.default_ttl, |ttl| ttl.0);
    if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(10 * 365 * 86_400) {
        return Err(AppError::BadRequest("ttl must be between 1m and 10y".into()).into());
    }
    let description = spec.description.unwrap_or_default();
    if description.len() > 256 {
        return Err(AppError::BadRequest("description must be at most 256 bytes".into()).into());
    }
    let now = unix_now();
    let expires_at = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let (token_id, secret) = state
        .auth
        .signer()
        .issue(&id, now, expires_at)
        .map_err(|err| AppError::Internal(format!("signing failed: {err}")))?;
    let record = TokenRecord {
        id: token_id.clone(),
        tenant_id: id.clone(),
        description: description.clone(),
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    state
        .registry
        .add_token(record)
        .await
        .map_err(AppError::from)?;
    tracing::info!(tenant = %id, token_id = %token_id, "token issued");
    let issued = IssuedToken {
        id: token_id,
        token: secret,
        tenant_id: id,
        description,
        expires_at: rfc3339(expires_at),
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

async fn list_tokens(State(state): State<SharedState>, Path(id): Path<String>) -> ApiResult {
    validate_tenant_id(&id).map_err(AppError::BadRequest)?;
    if state.registry.tenant(&id).is_none() {
        return Err(AppError::NotFound(format!("tenant {id:?} not found")).into());
    }
    let now = unix_now();
    let tokens: Vec<TokenView> = state
        .registry
        .tokens_of(&id)
        .into_iter()
        .map(|token| TokenView::new(token, now))
        .collect();
    Ok(Json(serde_json::json!({ "tokens": tokens })).into_response())
}

async fn revoke_token(
    State(state): State<SharedState>,
    Path((id, token_id)): Path<(String, String)>,
) -> ApiResult {
    validate_tenant_id(&id).map_err(AppError::BadRequest)?;
    state
        .registry
        .revoke_token(&id, &token_id, unix_now())
        .await
        .map_err(AppError::from)?;
    tracing::info!(tenant = %id, token_id = %token_id, "token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

fn rfc3339(unix_seconds: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix_seconds).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(values: &[&str]) -> Result<Precondition, AppError> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::IF_MATCH,
                HeaderValue::from_str(value).expect("ascii"),
            );
        }
        precondition(&headers)
    }

    #[test]
    fn if_match_becomes_a_precondition() {
        assert_eq!(parsed(&[]).ok(), Some(Precondition::Unconditional));
        assert_eq!(parsed(&["*"]).ok(), Some(Precondition::Exists));
        assert_eq!(
            parsed(&["\"3\""]).ok(),
            Some(Precondition::AtVersion(vec![3]))
        );
        assert_eq!(
            parsed(&["\"3\", \"5\"", "\"8\""]).ok(),
            Some(Precondition::AtVersion(vec![3, 5, 8]))
        );
    }

    #[test]
    fn weak_and_foreign_tags_never_match() {
        for value in ["W/\"3\"", "\"03\"", "\"abc\"", "\"\""] {
            assert_eq!(
                parsed(&[value]).ok(),
                Some(Precondition::AtVersion(vec![])),
                "{value}"
            );
        }
    }

    #[test]
    fn malformed_if_match_is_a_bad_request() {
        for value in ["3", "\"3", "W/3", "\"a\"b\""] {
            assert!(
                matches!(parsed(&[value]), Err(AppError::BadRequest(_))),
                "{value}"
            );
        }
    }

    #[test]
    fn the_etag_is_the_quoted_version() {
        assert_eq!(etag(42).expect("header"), "\"42\"");
    }
}
