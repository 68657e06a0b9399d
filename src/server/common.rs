//! What the data handlers share: authentication with its metric, the capped body
//! read, and one way to log, count and answer a refused request.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::SharedState;
use crate::error::AppError;
use crate::telemetry::{CauseLabel, EndpointTenantCode, EndpointTenantReason};
use crate::tenant::TenantEntry;

#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    Write,
    Read,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Write => "write",
            Endpoint::Read => "read",
        }
    }
}

/// Why a request failed, with what the logs and metrics need to say about it.
pub struct Failure {
    pub tenant: Option<Arc<TenantEntry>>,
    /// A fixed, low-cardinality label.
    pub reason: &'static str,
    pub error: AppError,
}

impl Failure {
    pub fn new(tenant: &Arc<TenantEntry>, reason: &'static str, error: AppError) -> Failure {
        Failure {
            tenant: Some(Arc::clone(tenant)),
            reason,
            error,
        }
    }

    /// A failure before the caller is known.
    pub fn anonymous(reason: &'static str, error: AppError) -> Failure {
        Failure {
            tenant: None,
            reason,
            error,
        }
    }

    /// Logs one line, counts the request and the refusal, and answers.
    pub fn respond(self, state: &SharedState, endpoint: Endpoint) -> Response {
        let tenant = self
            .tenant
            .as_ref()
            .map(|t| t.tenant.id.as_str())
            .unwrap_or_default();
        let status = self.error.status();
        tracing::warn!(
            endpoint = endpoint.as_str(),
            tenant,
            status = status.as_u16(),
            reason = self.reason,
            error = %self.error,
            "request rejected"
        );
        count_request(state, endpoint, tenant, status);
        state
            .metrics
            .rejected_requests
            .get_or_create(&EndpointTenantReason {
                endpoint: endpoint.as_str().to_string(),
                tenant: tenant.to_string(),
                reason: self.reason.to_string(),
            })
            .inc();
        self.error.into_response()
    }
}

pub fn count_request(state: &SharedState, endpoint: Endpoint, tenant: &str, status: StatusCode) {
    state
        .metrics
        .requests
        .get_or_create(&EndpointTenantCode {
            endpoint: endpoint.as_str().to_string(),
            tenant: tenant.to_string(),
            code: status.as_u16(),
        })
        .inc();
}

/// The caller's tenant, from the request's credentials alone.
pub fn authenticate(state: &SharedState, headers: &HeaderMap) -> Result<Arc<TenantEntry>, Failure> {
    state.auth.authenticate(headers).map_err(|err| {
        state
            .metrics
            .auth_failures
            .get_or_create(&CauseLabel {
                cause: err.cause().to_string(),
            })
            .inc();
        Failure::anonymous(err.cause(), err.into())
    })
}

/// Reads the body under `limit` bytes: a Content-Length over the limit is refused before
/// a byte is read, and a body that runs past it is cut off.
pub async fn read_body_capped(
    tenant: &Arc<TenantEntry>,
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Bytes, Failure> {
    let too_large = || {
        Failure::new(
            tenant,
            "body_too_large",
            AppError::PayloadTooLarge(format!("request body is over the {limit}-byte limit")),
        )
    };
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(Failure::new(
            tenant,
            "body_read_failed",
            AppError::BadRequest("the request body could not be read".into()),
        )),
    }
}
