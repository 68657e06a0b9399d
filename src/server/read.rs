//! `POST /api/v1/read`: authenticate → read slot → decode → validate → scope to the
//! tenant → forward → filter → answer (DESIGN §7). SAMPLES responses are decoded,
//! filtered and re-encoded whole; STREAMED_XOR_CHUNKS responses are filtered frame by
//! frame as they arrive, so memory does not grow with the response. A backend stream
//! that breaks after the answer began aborts the client's connection: it never ends
//! cleanly on a frame boundary.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::OwnedSemaphorePermit;

use super::common::{
    authenticate, count_request, cpu_unavailable, deadline_exceeded, failure_tenant, global_slot,
    observe_duration, read_body_capped, require_backends, throttled, within_deadline, Endpoint,
    Failure,
};
use super::{Live, SharedState};
use crate::admission::{ReadGateError, Verdict};
use crate::backend::{self, BackendClient, ReadBody};
use crate::codec::snappy;
use crate::config::Limits;
use crate::error::AppError;
use crate::read::filter::{filter_samples_response, FilterStats, ReadScope, StreamFilter};
use crate::read::request::{self, ResponseType};
use crate::read::ReadError;
use crate::telemetry::{TenantBackend, TenantLabel};
use crate::tenant::TenantEntry;

/// The exact Content-Type Prometheus' clients dispatch on (with the space).
pub const STREAMED_CONTENT_TYPE: &str =
    "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse";
/// How long a read may wait for one of its tenant's read slots.
const MAX_READ_QUEUE_WAIT: Duration = Duration::from_secs(10);

pub async fn remote_read(State(state): State<SharedState>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let mut caller = None;
    let handled = within_deadline(&state, handle(&state, &parts, body, &mut caller))
        .await
        .unwrap_or_else(|| Err(deadline_exceeded(&state, caller.take())));
    match handled {
        Ok((tenant, response)) => {
            count_request(&state, Endpoint::Read, &tenant.tenant.id, response.status());
            if response.status().is_success() {
                super::usage::count_answered(&tenant, crate::usage::Field::ReadRequests);
            }
            observe_duration(&state, Endpoint::Read, &tenant.tenant.id, started);
            response
        }
        Err(failure) => {
            let tenant = failure_tenant(&failure);
            let response = failure.respond(&state, Endpoint::Read);
            observe_duration(&state, Endpoint::Read, &tenant, started);
            response
        }
    }
}

/// A read request decoded, checked and scoped to its tenant, ready for the backend.
struct ScopedRead {
    response_type: ResponseType,
    query_count: usize,
    upstream_body: Bytes,
}

/// Decodes, validates (regexes parsed, within the request's regex budget), scopes to the
/// tenant and re-encodes a read request: on the CPU pool, in the tenant's turn.
fn scope_read(
    body: &[u8],
    limits: &Limits,
    label: &str,
    value: &str,
) -> Result<ScopedRead, ReadError> {
    let mut read_request = request::decode(body, limits)?;
    let response_type = request::validate(&read_request, limits)?;
    request::scope_to_tenant(&mut read_request, label, value, response_type);
    Ok(ScopedRead {
        response_type,
        query_count: read_request.queries.len(),
        upstream_body: Bytes::from(snappy::compress(&read_request.encode_to_vec())),
    })
}

async fn handle(
    state: &SharedState,
    parts: &Parts,
    body: Body,
    caller: &mut Option<Arc<TenantEntry>>,
) -> Result<(Arc<TenantEntry>, Response), Failure> {
    let headers = &parts.headers;
    check_encoding(headers).map_err(|error| Failure::anonymous("unsupported_media_type", error))?;
    let tenant = authenticate(state, parts).await?;
    *caller = Some(Arc::clone(&tenant));
    require_backends(&tenant)?;
    let limits = &tenant.limits;
    let replicas = state.registry.live_replicas();
    if let Verdict::Throttled { retry_after } =
        state
            .rate_limits
            .check_read_request(&tenant.tenant.id, limits, replicas)
    {
        let seconds = Verdict::retry_after_seconds(retry_after);
        return Err(throttled(
            state,
            Endpoint::Read,
            &tenant,
            "read_requests",
            seconds,
        ));
    }
    // The tenant's own read slots first (queued reads wait there, holding nothing
    // shared), then the process-wide in-flight place.
    let permit = state
        .read_gate
        .acquire(
            &tenant.tenant.id,
            limits.max_concurrent_reads,
            limits.max_queued_reads,
            MAX_READ_QUEUE_WAIT,
        )
        .await
        .map_err(|_: ReadGateError| throttled(state, Endpoint::Read, &tenant, "read_slots", 1))?;
    let global = global_slot(state, &tenant).await?;
    let body =
        read_body_capped(state, &tenant, headers, body, limits.max_read_request_bytes).await?;
    let live = state.live.load_full();
    let scope = ReadScope {
        label: live.config.tenancy.label.clone(),
        value: tenant.tenant.label_value.clone(),
        strip: live.config.tenancy.strip_label_on_read,
    };
    let scoped = {
        let (limits, label, value) = (limits.clone(), scope.label.clone(), scope.value.clone());
        state
            .cpu
            .run(&tenant.tenant.id, move || {
                scope_read(&body, &limits, &label, &value)
            })
            .await
            .map_err(|err| cpu_unavailable(&tenant, err))?
            .map_err(|err| Failure::new(&tenant, "invalid_read", read_error(err)))?
    };
    let backend = read_backend(&live, &tenant).ok_or_else(|| {
        Failure::new(
            &tenant,
            "no_read_backend",
            AppError::NotImplemented("no backend with a read_url serves this tenant".into()),
        )
    })?;
    let upstream = backend
        .read(&tenant.tenant.id, scoped.upstream_body, &state.metrics)
        .await
        .map_err(|outcome| {
            let error = backend::combine(&[(backend.config.name.as_str(), outcome)])
                .err()
                .unwrap_or_else(|| AppError::Internal("backend outcome without error".into()));
            Failure::new(&tenant, "backend", error)
        })?;
    let report = ReadReport {
        state: Arc::clone(state),
        tenant: Arc::clone(&tenant),
        backend: backend.config.name.clone(),
        stats: FilterStats::default(),
    };
    let response = match scoped.response_type {
        ResponseType::Samples => {
            samples_response(state, &tenant, upstream, scope, scoped.query_count, report).await?
        }
        ResponseType::StreamedXorChunks => {
            streamed_response(&tenant, upstream, scope, report, permit).await?
        }
    };
    drop(global);
    Ok((tenant, response))
}

/// Remote-read requests are snappy-compressed (or, leniently, unlabelled).
fn check_encoding(headers: &HeaderMap) -> Result<(), AppError> {
    match headers.get(header::CONTENT_ENCODING) {
        None => Ok(()),
        Some(value)
            if value
                .to_str()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("snappy") =>
        {
            Ok(())
        }
        Some(value) => Err(AppError::UnsupportedMediaType(format!(
            "Content-Encoding {:?} is not supported; send snappy",
            value.to_str().unwrap_or_default()
        ))),
    }
}

fn read_error(err: ReadError) -> AppError {
    match err {
        ReadError::Backend(message) => AppError::BadGateway(message),
        ReadError::Frame(frame) => AppError::BadGateway(frame.to_string()),
        other => AppError::BadRequest(other.to_string()),
    }
}

/// The first of the tenant's backends that has a read URL.
fn read_backend<'a>(live: &'a Live, tenant: &'a TenantEntry) -> Option<&'a BackendClient> {
    live.backends_of(tenant)
        .map(|backend| &**backend)
        .find(|backend| backend.config.read_url.is_some())
}

/// Reads the backend's SAMPLES answer (capped), then decompresses, filters and
/// re-encodes it on the CPU pool in the tenant's turn.
async fn samples_response(
    state: &SharedState,
    tenant: &Arc<TenantEntry>,
    upstream: ReadBody,
    scope: ReadScope,
    query_count: usize,
    mut report: ReadReport,
) -> Result<Response, Failure> {
    let limits = &tenant.limits;
    let backend_failure =
        |message: String| Failure::new(tenant, "backend", AppError::BadGateway(message));
    let compressed = read_upstream_capped(upstream, limits.max_read_response_bytes)
        .await
        .map_err(backend_failure)?;
    let (max_bytes, max_samples) = (limits.max_read_response_bytes, limits.max_read_samples);
    let filtered = state
        .cpu
        .run(&tenant.tenant.id, move || {
            let decoded = snappy::decompress_capped(&compressed, max_bytes)
                .map_err(|err| ReadError::Backend(format!("backend SAMPLES response: {err}")))?;
            filter_samples_response(&decoded, &scope, query_count, max_samples)
                .map(|(encoded, stats)| (snappy::compress(&encoded), stats))
        })
        .await
        .map_err(|err| cpu_unavailable(tenant, err))?;
    let (compressed, stats) = filtered.map_err(|err| match err {
        ReadError::Backend(message) => backend_failure(message),
        other => Failure::new(tenant, "read_filter", read_error(other)),
    })?;
    report.stats = stats;
    drop(report);
    let mut response = compressed.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("snappy"));
    Ok(response)
}

/// Reads a backend body of at most `limit` bytes.
async fn read_upstream_capped(mut upstream: ReadBody, limit: u64) -> Result<Vec<u8>, String> {
    if upstream.content_length.is_some_and(|length| length > limit) {
        return Err(format!("backend response is over the {limit}-byte limit"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = upstream.chunks.next().await {
        let chunk = chunk.map_err(|err| format!("backend response broke off: {err}"))?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(format!("backend response is over the {limit}-byte limit"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Starts the streamed answer once the first filtered frames are ready: a backend
/// stream that breaks before anything was sent becomes a clean 502 (or 400 for the
/// sample budget); once bytes went out, a break aborts the connection.
async fn streamed_response(
    tenant: &Arc<TenantEntry>,
    upstream: ReadBody,
    scope: ReadScope,
    report: ReadReport,
    permit: OwnedSemaphorePermit,
) -> Result<Response, Failure> {
    let content_type = &upstream.content_type;
    if !content_type.starts_with("application/x-streamed-protobuf") {
        return Err(Failure::new(
            tenant,
            "backend",
            AppError::BadGateway(format!(
                "backend answered {content_type:?} to a streamed read"
            )),
        ));
    }
    let filter = StreamFilter::new(
        scope,
        tenant.limits.max_read_frame_bytes,
        tenant.limits.max_read_samples,
    );
    // Fused: the body may be polled again after the frames ended.
    let mut frames = filtered_frames(upstream.chunks, filter, report, permit)
        .boxed()
        .fuse();
    let body = match frames.next().await {
        Some(Ok(first)) => {
            let aborting = |err: ReadError| std::io::Error::other(err.to_string());
            let rest = frames.map(move |item| item.map_err(aborting));
            Body::from_stream(futures::stream::once(async { Ok(first) }).chain(rest))
        }
        Some(Err(err)) => return Err(Failure::new(tenant, "backend_stream", read_error(err))),
        // Nothing of the caller's: a complete, empty stream.
        None => Body::empty(),
    };
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(STREAMED_CONTENT_TYPE),
    );
    Ok(response)
}

/// The backend's frames, filtered; ends after the first error. An error passed on to
/// the response body makes hyper abort the connection instead of ending it cleanly.
fn filtered_frames(
    upstream: impl Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static,
    filter: StreamFilter,
    report: ReadReport,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static {
    struct Relay<S> {
        upstream: S,
        filter: StreamFilter,
        report: ReadReport,
        /// Held until the stream ends: the read's slot stays taken while it streams.
        _permit: OwnedSemaphorePermit,
        done: bool,
    }
    let relay = Relay {
        upstream,
        filter,
        report,
        _permit: permit,
        done: false,
    };
    futures::stream::unfold(relay, |mut relay| async move {
        if relay.done {
            return None;
        }
        loop {
            let step = match relay.upstream.next().await {
                Some(Ok(chunk)) => {
                    let mut out = BytesMut::new();
                    relay
                        .filter
                        .push(&chunk, &mut out)
                        .map(|()| Some(out.freeze()))
                }
                Some(Err(err)) => Err(ReadError::Backend(format!(
                    "backend stream broke off: {err}"
                ))),
                None => relay.filter.finish().map(|()| None),
            };
            relay.report.stats = relay.filter.stats;
            match step {
                Ok(Some(frames)) if frames.is_empty() => continue,
                Ok(Some(frames)) => return Some((Ok(frames), relay)),
                Ok(None) => return None,
                Err(err) => {
                    relay.done = true;
                    tracing::warn!(
                        tenant = %relay.report.tenant.tenant.id,
                        backend = %relay.report.backend,
                        error = %err,
                        "streamed read failed"
                    );
                    return Some((Err(err), relay));
                }
            }
        }
    })
}

/// Counts what a read returned and reports foreign series, once, however the read ends.
struct ReadReport {
    state: SharedState,
    tenant: Arc<TenantEntry>,
    backend: String,
    stats: FilterStats,
}

impl Drop for ReadReport {
    fn drop(&mut self) {
        let tenant = &self.tenant.tenant.id;
        self.state
            .metrics
            .read_samples
            .get_or_create(&TenantLabel {
                tenant: tenant.clone(),
            })
            .inc_by(self.stats.samples);
        if self.stats.foreign_series > 0 {
            self.state
                .metrics
                .read_foreign_series
                .get_or_create(&TenantBackend {
                    tenant: tenant.clone(),
                    backend: self.backend.clone(),
                })
                .inc_by(self.stats.foreign_series);
            tracing::error!(
                tenant = %tenant,
                backend = %self.backend,
                dropped = self.stats.foreign_series,
                "backend returned series of another tenant; dropped (it ignored the tenant matcher)"
            );
        }
    }
}
