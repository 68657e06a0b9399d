//! The Prometheus query API on the data listener (DESIGN §5, §13): authenticate → query
//! rate → the tenant's query slot → the process-wide in-flight place → capped body →
//! parameters read and scoped (on the CPU pool) → the tenant's query backend → the
//! answer made the tenant's (on the CPU pool). Errors keep Prometheus' JSON shape, so a
//! Grafana data source shows promgate's reason as it would Prometheus' own.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::common::{
    authenticate, count_request, cpu_unavailable, global_slot, read_body_capped, require_backends,
    throttled, Endpoint, Failure,
};
use super::{Live, SharedState};
use crate::admission::{AnswerHold, ReadGateError, Verdict};
use crate::backend::{BackendClient, QueryAnswer, QueryCall, QueryError};
use crate::config::ConflictPolicy;
use crate::error::{AppError, PrometheusError};
use crate::query::guard;
use crate::query::params::{self, Api};
use crate::query::promql::{tenant_selector, TenantScope};
use crate::query::response::{self, Filtered, ResponseScope};
use crate::telemetry::TenantBackend;
use crate::tenant::TenantEntry;

/// An answer at most this large is filtered on the request's own thread (a
/// millisecond's work), not queued behind other tenants' jobs on the CPU pool.
const SMALL_ANSWER_BYTES: usize = 256 * 1024;
/// Parameters at most this long may be scoped on the request's own thread when every
/// query in them is light ([`guard::is_light`]).
const LIGHT_PARAMS_BYTES: usize = 4096;

/// How long a query may wait for one of its tenant's query slots.
const MAX_QUERY_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// How far past the tenant's query timeout a query may run before promgate answers.
const QUERY_DEADLINE_SLACK: Duration = Duration::from_secs(2);

pub async fn query(State(state): State<SharedState>, request: Request) -> Response {
    serve(state, Api::Query, request).await
}

pub async fn query_range(State(state): State<SharedState>, request: Request) -> Response {
    serve(state, Api::QueryRange, request).await
}

pub async fn query_exemplars(State(state): State<SharedState>, request: Request) -> Response {
    serve(state, Api::QueryExemplars, request).await
}

pub async fn series(State(state): State<SharedState>, request: Request) -> Response {
    serve(state, Api::Series, request).await
}

pub async fn labels(State(state): State<SharedState>, request: Request) -> Response {
    serve(state, Api::Labels, request).await
}

pub async fn label_values(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    serve(state, Api::LabelValues(name), request).await
}

pub async fn metadata(State(state): State<SharedState>, request: Request) -> Response {
    serve(state, Api::Metadata, request).await
}

pub async fn federate(State(state): State<SharedState>, request: Request) -> Response {
    serve(state, Api::Federate, request).await
}

pub async fn buildinfo(State(state): State<SharedState>, request: Request) -> Response {
    serve(state, Api::BuildInfo, request).await
}

async fn serve(state: SharedState, api: Api, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    match handle(&state, &api, &parts, body).await {
        Ok((tenant, response)) => {
            count_request(
                &state,
                Endpoint::Query,
                &tenant.tenant.id,
                response.status(),
            );
            if response.status().is_success() {
                super::usage::count_answered(&tenant, crate::usage::Field::QueryRequests);
            }
            response
        }
        Err(failure) => PrometheusError(failure.record(&state, Endpoint::Query)).into_response(),
    }
}

async fn handle(
    state: &SharedState,
    api: &Api,
    parts: &Parts,
    body: Body,
) -> Result<(Arc<TenantEntry>, Response), Failure> {
    let tenant = authenticate(state, parts).await?;
    require_backends(&tenant)?;
    // The whole query, its waits and its CPU-pool work included, runs within the
    // tenant's query timeout (and a little over it, so the backend's own timeout, which
    // is the same, answers first when it is the backend that is slow).
    let deadline = tenant.limits.query_timeout + QUERY_DEADLINE_SLACK;
    match tokio::time::timeout(deadline, answer(state, api, parts, body, &tenant)).await {
        Ok(answered) => answered.map(|response| (tenant, response)),
        Err(_) => Err(Failure::new(
            &tenant,
            "query_timeout",
            AppError::Unavailable {
                message: format!(
                    "the query did not finish within {}",
                    humantime::format_duration(deadline)
                ),
                retry_after_seconds: 1,
            },
        )),
    }
}

/// A tenant's query, from its parameters to its answer.
async fn answer(
    state: &SharedState,
    api: &Api,
    parts: &Parts,
    body: Body,
    tenant: &Arc<TenantEntry>,
) -> Result<Response, Failure> {
    let invalid = |reason: &'static str, message: String| {
        Failure::new(tenant, reason, AppError::BadRequest(message))
    };
    if let Api::LabelValues(name) = api {
        if !params::valid_label_name(name) {
            return Err(invalid(
                "invalid_query",
                format!("invalid label name: {name:?}"),
            ));
        }
    }
    // One view of the config for the whole request, whatever a reload does meanwhile.
    let live = state.live.load_full();
    let backend = query_backend(&live, tenant).ok_or_else(|| {
        Failure::new(
            tenant,
            "no_query_backend",
            AppError::NotImplemented("no backend with a query_url serves this tenant".into()),
        )
    })?;
    let limits = &tenant.limits;
    let replicas = state.registry.live_replicas();
    if let Verdict::Throttled { retry_after } =
        state
            .rate_limits
            .check_query_request(&tenant.tenant.id, limits, replicas)
    {
        let seconds = Verdict::retry_after_seconds(retry_after);
        return Err(throttled(
            state,
            Endpoint::Query,
            tenant,
            "query_requests",
            seconds,
        ));
    }
    // The tenant's own query slots first (queued queries wait there, holding nothing
    // shared), then the process-wide in-flight place.
    let _slot = state
        .query_gate
        .acquire(
            &tenant.tenant.id,
            limits.max_concurrent_queries,
            limits.max_queued_queries,
            MAX_QUERY_QUEUE_WAIT,
        )
        .await
        .map_err(|_: ReadGateError| throttled(state, Endpoint::Query, tenant, "query_slots", 1))?;
    let _global = global_slot(state, tenant).await?;

    let (url_query, form) = read_params(state, tenant, parts, body).await?;
    let label = live.config.tenancy.label.clone();
    let value = tenant.tenant.label_value.clone();
    let reject_conflicts = live.config.tenancy.on_conflict == ConflictPolicy::Reject;
    let query_timeout = limits.query_timeout;
    let scope = TenantScope {
        label: &label,
        value: &value,
        reject_conflicts,
    };
    let scoped = scope_params(state, tenant, api, &scope, url_query, form, query_timeout).await?;

    let call = |path, form_post, params| QueryCall {
        tenant_id: &tenant.tenant.id,
        path,
        form_post,
        params,
        timeout: query_timeout,
        max_bytes: limits.max_query_response_bytes,
        answer_bytes: &state.answer_bytes,
    };
    let path = api.backend_path();
    let answer = backend
        .query(call(&path, api.posts_form(), &scoped), &state.metrics)
        .await
        .map_err(|err| query_failure(tenant, err))?;
    if !answer.status.is_success() {
        return backend_error(tenant, backend, answer);
    }
    // `metadata` is per metric name, not per series: keep the names the tenant has series of.
    let tenant_names = if *api == Api::Metadata {
        let names_params = [("match[]".to_string(), tenant_selector(&scope))];
        let names = backend
            .query(
                call("api/v1/label/__name__/values", false, &names_params),
                &state.metrics,
            )
            .await
            .map_err(|err| query_failure(tenant, err))?;
        if !names.status.is_success() {
            return backend_error(tenant, backend, names);
        }
        Some(response::label_values(&names.body).map_err(|err| unexpected(tenant, err))?)
    } else {
        None
    };

    let scope = ResponseScope {
        label,
        value,
        strip: live.config.tenancy.strip_label_on_read,
    };
    let response = scoped_answer(state, tenant, backend, api, answer, scope, tenant_names).await?;
    Ok(response)
}

/// The request's parameters: the URL's query string and a form body, each under the
/// tenant's request limit.
async fn read_params(
    state: &SharedState,
    tenant: &Arc<TenantEntry>,
    parts: &Parts,
    body: Body,
) -> Result<(Option<String>, Bytes), Failure> {
    let limits = &tenant.limits;
    let url_query = parts.uri.query().map(str::to_string);
    if url_query
        .as_ref()
        .is_some_and(|query| query.len() as u64 > limits.max_request_bytes)
    {
        return Err(Failure::new(
            tenant,
            "body_too_large",
            AppError::PayloadTooLarge("the URL's parameters are over the request limit".into()),
        ));
    }
    let form = if parts.method == Method::POST {
        let form = read_body_capped(
            state,
            tenant,
            &parts.headers,
            body,
            limits.max_request_bytes,
        )
        .await?;
        if !form.is_empty() && !is_form(&parts.headers) {
            return Err(Failure::new(
                tenant,
                "unsupported_media_type",
                AppError::UnsupportedMediaType(
                    "send the parameters as application/x-www-form-urlencoded".into(),
                ),
            ));
        }
        form
    } else {
        Bytes::new()
    };

    Ok((url_query, form))
}

/// The parameters to send to the backend, scoped to the tenant: light ones on this
/// thread, the rest on the CPU pool.
async fn scope_params(
    state: &SharedState,
    tenant: &Arc<TenantEntry>,
    api: &Api,
    scope: &TenantScope<'_>,
    url_query: Option<String>,
    form: Bytes,
    query_timeout: Duration,
) -> Result<Vec<(String, String)>, Failure> {
    let light = is_light_request(url_query.as_deref(), &form);
    let (api, label, value) = (
        api.clone(),
        scope.label.to_string(),
        scope.value.to_string(),
    );
    let reject_conflicts = scope.reject_conflicts;
    let scope_params = move || {
        let scope = TenantScope {
            label: &label,
            value: &value,
            reject_conflicts,
        };
        let given = params::collect(url_query.as_deref(), &form)?;
        params::scope(&api, &given, &scope, query_timeout)
    };
    if light {
        scope_params()
    } else {
        state
            .cpu
            .run(&tenant.tenant.id, scope_params)
            .await
            .map_err(|err| cpu_unavailable(tenant, err))?
    }
    .map_err(|err| {
        Failure::new(
            tenant,
            "invalid_query",
            AppError::BadRequest(err.to_string()),
        )
    })
}

/// The backend's successful answer, made the tenant's on the CPU pool.
async fn scoped_answer(
    state: &SharedState,
    tenant: &Arc<TenantEntry>,
    backend: &BackendClient,
    api: &Api,
    mut answer: QueryAnswer,
    scope: ResponseScope,
    tenant_names: Option<HashSet<String>>,
) -> Result<Response, Failure> {
    let hold = std::mem::take(&mut answer.hold);
    if *api == Api::BuildInfo {
        // The backend's own version: Grafana picks its features from it.
        return Ok(with_content_type(
            answer.body.into_response(),
            "application/json",
        ));
    }
    let api_owned = api.clone();
    let small = answer.body.len() <= SMALL_ANSWER_BYTES;
    let filter = move || {
        if api_owned == Api::Federate {
            let text = String::from_utf8_lossy(&answer.body);
            let (text, filtered) = response::scope_federate(&text, &scope);
            Ok((text.into_bytes(), filtered, federate_content_type()))
        } else {
            response::scope_json(&api_owned, &answer.body, &scope, tenant_names.as_ref())
                .map(|(body, filtered)| (body, filtered, "application/json"))
        }
    };
    let (body, filtered, content_type) = if small {
        filter()
    } else {
        state
            .cpu
            .run(&tenant.tenant.id, filter)
            .await
            .map_err(|err| cpu_unavailable(tenant, err))?
    }
    .map_err(|err| unexpected(tenant, err))?;
    report_foreign(state, tenant, backend, api, filtered);
    let body = Body::new(HeldBody {
        bytes: Some(Bytes::from(body)),
        _hold: hold,
    });
    Ok(with_content_type(body.into_response(), content_type))
}

/// An answer's body that keeps the answer's room in the process-wide budget until it
/// is sent (or the client goes away).
struct HeldBody {
    bytes: Option<Bytes>,
    _hold: AnswerHold,
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.bytes
                .take()
                .map(|bytes| Ok(http_body::Frame::data(bytes))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes.as_ref().map_or(0, |bytes| bytes.len() as u64))
    }
}

/// Whether the request's parameters are short and every query or selector in them is
/// light: scoped on the request's own thread, so a tenant's everyday queries never wait
/// behind another tenant's heaviest allowed query on the CPU pool.
fn is_light_request(url_query: Option<&str>, form: &[u8]) -> bool {
    if url_query.map_or(0, str::len) + form.len() > LIGHT_PARAMS_BYTES {
        return false;
    }
    params::collect(url_query, form).is_ok_and(|given| {
        given
            .iter()
            .filter(|(name, _)| name == "query" || name == "match[]")
            .all(|(_, text)| guard::is_light(text))
    })
}

fn federate_content_type() -> &'static str {
    "text/plain; version=0.0.4; charset=utf-8"
}

fn with_content_type(mut response: Response, content_type: &'static str) -> Response {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Series of another tenant in an answer mean the backend ignored the matcher: they are
/// dropped, counted and logged.
fn report_foreign(
    state: &SharedState,
    tenant: &Arc<TenantEntry>,
    backend: &BackendClient,
    api: &Api,
    filtered: Filtered,
) {
    if filtered.foreign_series == 0 {
        return;
    }
    state
        .metrics
        .read_foreign_series
        .get_or_create(&TenantBackend {
            tenant: tenant.tenant.id.clone(),
            backend: backend.config.name.clone(),
        })
        .inc_by(filtered.foreign_series);
    tracing::error!(
        tenant = %tenant.tenant.id,
        backend = %backend.config.name,
        endpoint = api.name(),
        dropped = filtered.foreign_series,
        "backend answered with series of another tenant; dropped (it ignored the tenant matcher)"
    );
}

/// A backend's error answer: Prometheus' own JSON errors (a bad query, an execution
/// limit) pass through with their status; a refusal of promgate's credentials or path is
/// our misconfiguration (502); anything else is the backend being unavailable (503).
fn backend_error(
    tenant: &Arc<TenantEntry>,
    backend: &BackendClient,
    answer: QueryAnswer,
) -> Result<Response, Failure> {
    let status = answer.status;
    let first_line = || {
        String::from_utf8_lossy(&answer.body[..answer.body.len().min(512)])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    match status.as_u16() {
        401 | 403 | 404 => Err(Failure::new(
            tenant,
            "backend",
            AppError::BadGateway(format!(
                "backend {} refused promgate's query: {status}",
                backend.config.name
            )),
        )),
        _ if response::is_prometheus_error(&answer.body) => {
            tracing::info!(
                tenant = %tenant.tenant.id,
                backend = %backend.config.name,
                status = status.as_u16(),
                error = %first_line(),
                "query refused by the backend"
            );
            let mut response = (status, answer.body).into_response();
            if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
            {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            Ok(with_content_type(response, "application/json"))
        }
        400..=499 => Err(Failure::new(
            tenant,
            "backend",
            AppError::BadRequest(format!("backend answered {status}: {}", first_line())),
        )),
        _ => Err(Failure::new(
            tenant,
            "backend",
            AppError::Unavailable {
                message: format!("backend answered {status}: {}", first_line()),
                retry_after_seconds: 1,
            },
        )),
    }
}

fn query_failure(tenant: &Arc<TenantEntry>, err: QueryError) -> Failure {
    let error = match err {
        QueryError::NoQueryUrl => AppError::NotImplemented(err.to_string()),
        QueryError::TooLarge(_) => AppError::Unprocessable(err.to_string()),
        QueryError::Unavailable(_) | QueryError::TimedOut(_) | QueryError::Busy => {
            AppError::Unavailable {
                message: err.to_string(),
                retry_after_seconds: 1,
            }
        }
    };
    let reason = match err {
        QueryError::TooLarge(_) => "query_response_too_large",
        QueryError::TimedOut(_) => "query_timeout",
        QueryError::Busy => "answer_budget",
        _ => "backend",
    };
    Failure::new(tenant, reason, error)
}

fn unexpected(tenant: &Arc<TenantEntry>, err: response::UnexpectedAnswer) -> Failure {
    Failure::new(tenant, "backend", AppError::BadGateway(err.to_string()))
}

fn is_form(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The first of the tenant's backends that has a query URL (DESIGN §13).
fn query_backend<'a>(live: &'a Live, tenant: &'a TenantEntry) -> Option<&'a BackendClient> {
    live.backends_of(tenant)
        .map(|backend| &**backend)
        .find(|backend| backend.config.query_url.is_some())
}
