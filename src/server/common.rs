//! What the data handlers share: authentication with its metric and per-address
//! failure limit, the throttle answer, the in-flight request cap, the capped and timed
//! body read, and one way to log, count and answer a refused request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::SharedState;
use crate::auth::mtls::ClientCertificate;
use crate::error::AppError;
use crate::telemetry::{CauseLabel, EndpointTenantCode, EndpointTenantReason, ThrottleLabels};
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

/// The peer's address, as the accept loop recorded it.
pub fn peer_ip(extensions: &http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip())
}

/// The caller's tenant, from the request's credentials alone. An address that failed
/// too often lately is refused before its credential is even looked at.
pub async fn authenticate(state: &SharedState, parts: &Parts) -> Result<Arc<TenantEntry>, Failure> {
    let (headers, extensions) = (&parts.headers, &parts.extensions);
    let peer = peer_ip(extensions);
    let now = Instant::now();
    if let Err(wait) = state.data_auth_failures.check(peer, now) {
        return Err(Failure::anonymous(
            "auth_failures_throttled",
            AppError::TooManyRequests {
                message: "too many failed authentications from this address; retry later".into(),
                retry_after_seconds: wait,
            },
        ));
    }
    let certificate = extensions.get::<ClientCertificate>();
    state
        .auth
        .authenticate(headers, certificate)
        .await
        .map_err(|err| {
            state
                .metrics
                .auth_failures
                .get_or_create(&CauseLabel {
                    cause: err.cause().to_string(),
                })
                .inc();
            let error = AppError::from(err.clone());
            if error.status() == StatusCode::UNAUTHORIZED {
                state.data_auth_failures.record_failure(peer, now);
            }
            Failure::anonymous(err.cause(), error)
        })
}

/// The tenant's throttle answer: 429 (or 503 with `throttle_status = 503`) with an
/// integer `Retry-After`, counted per tenant and limit.
pub fn throttled(
    state: &SharedState,
    endpoint: Endpoint,
    tenant: &Arc<TenantEntry>,
    limit: &'static str,
    retry_after_seconds: u64,
) -> Failure {
    state
        .metrics
        .throttled_requests
        .get_or_create(&ThrottleLabels {
            endpoint: endpoint.as_str().to_string(),
            tenant: tenant.tenant.id.clone(),
            limit: limit.to_string(),
        })
        .inc();
    let message = format!(
        "tenant {} is over its {limit} limit; retry later",
        tenant.tenant.id
    );
    let error = if tenant.limits.throttle_status == 503 {
        AppError::Unavailable {
            message,
            retry_after_seconds,
        }
    } else {
        AppError::TooManyRequests {
            message,
            retry_after_seconds,
        }
    };
    Failure::new(tenant, "throttled", error)
}

/// Holds a place among the requests in flight for the rest of the request; 503 when
/// none frees up within `in_flight_wait`.
pub async fn limit_in_flight(
    State(state): State<SharedState>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let Some(permit) = state.in_flight.request().await else {
        tracing::warn!(path = %request.uri().path(), "request refused: too many requests in flight");
        return AppError::Unavailable {
            message: "promgate is at its in-flight request limit; retry later".into(),
            retry_after_seconds: 1,
        }
        .into_response();
    };
    // A guard, not a decrement after the await: a client that hangs up drops this
    // future mid-request, and the gauge must come down then too.
    let _in_flight = InFlightGauge::enter(&state, permit);
    next.run(request).await
}

/// One request in the in-flight gauge and holding its permit, until dropped.
struct InFlightGauge<'a> {
    state: &'a SharedState,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<'a> InFlightGauge<'a> {
    fn enter(state: &'a SharedState, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        state.metrics.in_flight_requests.inc();
        InFlightGauge {
            state,
            _permit: permit,
        }
    }
}

impl Drop for InFlightGauge<'_> {
    fn drop(&mut self) {
        self.state.metrics.in_flight_requests.dec();
    }
}

/// Reads the body under `limit` bytes: a Content-Length over the limit is refused before
/// a byte is read, and a body that runs past it is cut off. The body must arrive within
/// `body_read_timeout` and, after a grace second, at `min_body_bytes_per_second` or
/// faster (408 otherwise).
pub async fn read_body_capped(
    state: &SharedState,
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
    let too_slow = |what: &str| {
        Failure::new(
            tenant,
            "body_too_slow",
            AppError::RequestTimeout(format!("request body {what}")),
        )
    };
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let connections = &state.config.server.connections;
    let started = tokio::time::Instant::now();
    let deadline = started + connections.body_read_timeout;
    let min_rate = connections.min_body_bytes_per_second;
    let mut body = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let mut collected = BytesMut::new();
    loop {
        // The next chunk must come before the overall deadline and before the average
        // rate falls under the minimum.
        let received = collected.len() as u64;
        let rate_deadline =
            started + GRACE + Duration::from_secs_f64((received as f64) / (min_rate.max(1) as f64));
        let wait_until = if min_rate == 0 {
            deadline
        } else {
            deadline.min(rate_deadline.max(started + GRACE))
        };
        let frame = match tokio::time::timeout_at(wait_until, body.frame()).await {
            Ok(frame) => frame,
            Err(_) if wait_until >= deadline => {
                return Err(too_slow(&format!(
                    "did not arrive within {:?}",
                    connections.body_read_timeout
                )))
            }
            Err(_) => return Err(too_slow(&format!("arrived slower than {min_rate} bytes/s"))),
        };
        match frame {
            None => return Ok(collected.freeze()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    collected.extend_from_slice(&data);
                }
            }
            Some(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(too_large())
            }
            Some(Err(_)) => {
                return Err(Failure::new(
                    tenant,
                    "body_read_failed",
                    AppError::BadRequest("the request body could not be read".into()),
                ))
            }
        }
    }
}

/// Before the minimum body rate applies.
const GRACE: Duration = Duration::from_secs(1);
