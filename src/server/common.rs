//! What the data handlers share, in the order a request meets it (SECURITY.md T16,
//! T23): authentication first, with its metric and the per-address failure limit that
//! never throttles a credential known good; then the tenant's own admission (the
//! throttle answer, its budgets); then the process-wide in-flight cap as the last-resort
//! shed; the capped and timed body read; the request deadline; and one way to log,
//! count and answer a refused request.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::SharedState;
use crate::admission::client_address::client_ip;
use crate::admission::{BudgetError, PoolError};
use crate::auth::mtls::ClientCertificate;
use crate::auth::Restriction;
use crate::error::AppError;
use crate::telemetry::{CauseLabel, EndpointTenantCode, EndpointTenantReason, ThrottleLabels};
use crate::tenant::TenantEntry;

#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    Write,
    Read,
    Query,
    /// OTLP/HTTP metrics (DESIGN §12).
    Otlp,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Write => "write",
            Endpoint::Read => "read",
            Endpoint::Query => "query",
            Endpoint::Otlp => "otlp",
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
        self.record(state, endpoint).into_response()
    }

    /// Logs one line and counts the request and the refusal; the error to answer with.
    pub fn record(self, state: &SharedState, endpoint: Endpoint) -> AppError {
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
        self.error
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

/// How long promgate took to answer a request of `tenant` (empty when unknown), from the
/// handler's start to the response head.
pub fn observe_duration(
    state: &SharedState,
    endpoint: Endpoint,
    tenant: &str,
    started: std::time::Instant,
) {
    state
        .metrics
        .request_duration
        .get_or_create(&crate::telemetry::EndpointTenant {
            endpoint: endpoint.as_str().to_string(),
            tenant: tenant.to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
}

/// The tenant id a failure is counted under (empty before the caller is known).
pub fn failure_tenant(failure: &Failure) -> String {
    failure
        .tenant
        .as_ref()
        .map(|tenant| tenant.tenant.id.clone())
        .unwrap_or_default()
}

/// The peer's address, as the accept loop recorded it.
pub fn peer_ip(extensions: &http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip())
}

/// The caller's tenant, from the request's credentials alone. Nothing shared is held
/// yet: a stranger's request costs header parsing and, at most, one signature check.
/// An address that failed too often lately is not refused outright: its credentials
/// are only accepted when already known good, or a configured issuer's token within a
/// few signature checks, so tenants that share the address with a stranger (behind a
/// load balancer or NAT) keep working.
pub async fn authenticate(state: &SharedState, parts: &Parts) -> Result<Arc<TenantEntry>, Failure> {
    let (headers, extensions) = (&parts.headers, &parts.extensions);
    // The real client behind a trusted proxy (X-Forwarded-For, or the PROXY header the
    // accept loop already put in place of the peer); anyone else is the client.
    let source = client_ip(
        &state.config.server.trusted_proxies,
        peer_ip(extensions),
        headers,
    );
    let now = Instant::now();
    let restriction =
        state
            .data_auth_failures
            .check(source, now)
            .err()
            .map(|retry_after_seconds| Restriction {
                retry_after_seconds,
                address: source,
            });
    let certificate = extensions.get::<ClientCertificate>();
    state
        .auth
        .authenticate(headers, certificate, restriction)
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
                state.data_auth_failures.record_failure(source, now);
            }
            Failure::anonymous(err.cause(), error)
        })
}

/// A tenant none of whose backends is configured any more is refused, never answered
/// 2xx for data that goes nowhere (DESIGN §9).
pub fn require_backends(tenant: &Arc<TenantEntry>) -> Result<(), Failure> {
    if !tenant.backends.is_empty() {
        return Ok(());
    }
    tracing::error!(
        tenant = %tenant.tenant.id,
        backends = ?tenant.tenant.backends,
        "tenant names no configured backend; refusing its requests until its backends are fixed"
    );
    Err(Failure::new(
        tenant,
        "no_backend",
        AppError::Unavailable {
            message: "no configured backend serves this tenant".into(),
            retry_after_seconds: 30,
        },
    ))
}

/// The answer when one of the tenant's own budgets stayed full for the whole wait.
pub fn budget_exhausted(tenant: &Arc<TenantEntry>, budget: &'static str) -> Failure {
    Failure::new(
        tenant,
        budget,
        AppError::Unavailable {
            message: format!(
                "tenant {} is at its {} limit; retry later",
                tenant.tenant.id,
                budget.replace('_', " ")
            ),
            retry_after_seconds: 1,
        },
    )
}

/// The CPU pool refused or lost a job: the tenant has too much heavy work waiting, or
/// promgate is shutting down. Transient either way.
pub fn cpu_unavailable(tenant: &Arc<TenantEntry>, err: PoolError) -> Failure {
    Failure::new(
        tenant,
        "cpu_pool",
        AppError::Unavailable {
            message: format!("{err}; retry later"),
            retry_after_seconds: 1,
        },
    )
}

/// Runs a handler under the request deadline (`server.request_timeout`); `None` when it
/// ran out. The handler is then dropped, and every guard it held gives its share back.
pub async fn within_deadline<T>(
    state: &SharedState,
    handler: impl Future<Output = Result<T, Failure>>,
) -> Option<Result<T, Failure>> {
    tokio::time::timeout(state.config.server.request_timeout, handler)
        .await
        .ok()
}

/// The answer when the deadline ran out: 503 + Retry-After, before the sender's own
/// `remote_timeout`. `caller` is the tenant, when the handler got as far as knowing it.
pub fn deadline_exceeded(state: &SharedState, caller: Option<Arc<TenantEntry>>) -> Failure {
    Failure {
        tenant: caller,
        reason: "deadline",
        error: AppError::Unavailable {
            message: format!(
                "the request did not complete within {}; retry later",
                humantime::format_duration(state.config.server.request_timeout)
            ),
            retry_after_seconds: 1,
        },
    }
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

/// A place among the process-wide requests in flight, taken after authentication and
/// after the tenant's own share: the last-resort shed. 503 when none frees up within
/// `in_flight_wait`.
pub async fn global_slot<'a>(
    state: &'a SharedState,
    tenant: &Arc<TenantEntry>,
) -> Result<InFlightGauge<'a>, Failure> {
    match state.in_flight.request().await {
        Ok(permit) => Ok(InFlightGauge::enter(state, permit)),
        Err(BudgetError::Busy) => Err(Failure::new(
            tenant,
            "in_flight",
            AppError::Unavailable {
                message: "promgate is at its in-flight request limit; retry later".into(),
                retry_after_seconds: 1,
            },
        )),
    }
}

/// One request in the in-flight gauge and holding its permit, until dropped (a guard,
/// not a decrement after an await: a client that hangs up drops the request's future
/// mid-way, and the gauge must come down then too).
pub struct InFlightGauge<'a> {
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
/// a byte is read (413), and a body that runs past it is cut off. The body must arrive
/// within `body_read_timeout` and, after a grace second, at `min_body_bytes_per_second`
/// or faster; a slow or incomplete body is a transient fault of the network or the
/// sender, answered 503 + Retry-After so the sender retries rather than dropping it.
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
            AppError::Unavailable {
                message: format!("request body {what}; retry"),
                retry_after_seconds: 1,
            },
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
                    "body_incomplete",
                    AppError::Unavailable {
                        message: "the request body broke off before it was complete; retry".into(),
                        retry_after_seconds: 1,
                    },
                ))
            }
        }
    }
}

/// Before the minimum body rate applies.
const GRACE: Duration = Duration::from_secs(1);
