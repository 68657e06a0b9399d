//! `POST /otlp/v1/metrics` and `POST /api/v1/otlp/v1/metrics`: OpenTelemetry metrics over
//! OTLP/HTTP (DESIGN §12). The same pipeline as remote write, in the same order:
//! headers → authenticate → the tenant's request rate → its write slot and the global
//! in-flight cap → the body under `max_request_bytes` → the decoded size (a gzip
//! trailer's claim, or the body itself) under `max_decoded_bytes` and the decoded-bytes
//! budgets → inflate, decode, translate ([`crate::codec::otlp`]) and enforce the tenant's
//! labels on the CPU pool → the tenant's sample rate (a data point counts as a sample)
//! → the same fan-out as remote write
//! (each backend in its protocol, queued copies after the sync backends accepted).
//!
//! Answers follow the OTLP/HTTP specification: 200 with a protobuf
//! `ExportMetricsServiceResponse` (with `partial_success` when points were rejected
//! alone), 400 when nothing of the request can be accepted, 415 for a content type or
//! encoding other than protobuf and gzip, 429 (or 503) with `Retry-After` when throttled,
//! 503 with `Retry-After` when a backend is unavailable. Refusals carry a protobuf
//! `google.rpc.Status` body.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use prost::Message;

use super::common::{
    count_request, cpu_unavailable, deadline_exceeded, within_deadline, Endpoint, Failure,
};
use super::series::{count_refused_samples, count_relabel_dropped, Tracking};
use super::usage::{count_write, WriteCounted};
use super::write::{admit_samples, admit_write, forward, now_ms, reserve_decoded, Bodies, HaPass};
use super::{Live, SharedState};
use crate::backend::Written;
use crate::codec::ha::HaGate;
use crate::codec::otlp::{self, Caps, Enforced};
use crate::codec::relabel::Scope;
use crate::codec::splice::label_set_span;
use crate::codec::{snappy, CodecError};
use crate::config::OtlpConfig;
use crate::error::AppError;
use crate::series::ha::{HaOutcome, HaRefusal, HaSettings, Resolved};
use crate::series::limit::{admit_spans, SeriesLimit};
use crate::series::relabel::Dropped;
use crate::series::{SeriesRefusal, SeriesSpan};
use crate::telemetry::{TenantLabel, TenantOutcome};
use crate::tenant::TenantEntry;
use crate::usage::Field;

const PROTOBUF: &str = "application/x-protobuf";

/// Decoded bodies over this are inflated and translated on the CPU pool, and every
/// gzip body is: translation costs more per byte than the remote-write splice.
const OFFLOAD_DECODED_BYTES: u64 = 256 << 10;

/// `google.rpc.Status`, the body of an OTLP/HTTP refusal.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

pub async fn export_metrics(State(state): State<SharedState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let gzip = match check_media_type(&parts.headers) {
        Ok(gzip) => gzip,
        Err(error) => return refusal(&state, Failure::anonymous("unsupported_media_type", error)),
    };
    let mut caller = None;
    let handled = within_deadline(&state, handle(&state, &parts, body, gzip, &mut caller))
        .await
        .unwrap_or_else(|| Err(deadline_exceeded(&state, caller.take())));
    match handled {
        Ok(Exported {
            tenant,
            enforced,
            counted,
        }) => {
            count_write(&tenant, counted);
            let id = &tenant.tenant.id;
            state
                .metrics
                .samples_forwarded
                .get_or_create(&TenantLabel { tenant: id.clone() })
                .inc_by(enforced.stats.total_samples() as u64);
            count_points(&state, id, &enforced);
            count_request(&state, Endpoint::Otlp, id, StatusCode::OK);
            if enforced.rejected_points > 0 {
                tracing::warn!(
                    endpoint = Endpoint::Otlp.as_str(),
                    tenant = %id,
                    rejected_points = enforced.rejected_points,
                    reason = %enforced.message,
                    "data points rejected"
                );
            }
            let answer = ExportMetricsServiceResponse {
                partial_success: (enforced.rejected_points > 0).then(|| {
                    ExportMetricsPartialSuccess {
                        rejected_data_points: i64::try_from(enforced.rejected_points)
                            .unwrap_or(i64::MAX),
                        error_message: enforced.message.clone(),
                    }
                }),
            };
            protobuf_response(StatusCode::OK, answer.encode_to_vec())
        }
        Err(failure) => refusal(&state, failure),
    }
}

fn count_points(state: &SharedState, tenant: &str, enforced: &Enforced) {
    for (outcome, points) in [
        ("accepted", enforced.accepted_points),
        ("rejected", enforced.rejected_points),
    ] {
        if points > 0 {
            state
                .metrics
                .otlp_data_points
                .get_or_create(&TenantOutcome {
                    tenant: tenant.to_string(),
                    outcome: outcome.to_string(),
                })
                .inc_by(points);
        }
    }
}

fn protobuf_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, Body::from(body)).into_response();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(PROTOBUF),
    );
    response
}

/// Logs, counts and answers a refusal with its status and headers (`Retry-After`,
/// `WWW-Authenticate`) and a `google.rpc.Status` body.
fn refusal(state: &SharedState, failure: Failure) -> Response {
    let message = failure.error.public_message();
    let mut response = failure.respond(state, Endpoint::Otlp);
    let code = grpc_code(response.status());
    let body = RpcStatus { code, message }.encode_to_vec();
    *response.body_mut() = Body::from(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(PROTOBUF),
    );
    response
}

/// The gRPC status code matching an HTTP refusal (the OTLP/HTTP specification's
/// `Status.code`).
fn grpc_code(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 | 413 | 415 => 3, // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        429 => 8,             // RESOURCE_EXHAUSTED
        501 => 12,            // UNIMPLEMENTED
        502..=504 => 14,      // UNAVAILABLE
        _ => 13,              // INTERNAL
    }
}

/// Content-Type must be `application/x-protobuf` (OTLP/JSON is not accepted: 415);
/// Content-Encoding `gzip`, `identity` or absent. Returns whether the body is gzip.
fn check_media_type(headers: &HeaderMap) -> Result<bool, AppError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or_default())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case(PROTOBUF) {
        return Err(AppError::UnsupportedMediaType(format!(
            "Content-Type {media_type:?} is not supported; send OTLP/HTTP protobuf ({PROTOBUF})"
        )));
    }
    match headers.get(http::header::CONTENT_ENCODING) {
        None => Ok(false),
        Some(encoding) => {
            let encoding = encoding.to_str().unwrap_or_default().trim();
            if encoding.eq_ignore_ascii_case("gzip") {
                Ok(true)
            } else if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
                Ok(false)
            } else {
                Err(AppError::UnsupportedMediaType(format!(
                    "Content-Encoding {encoding:?} is not supported; send gzip or no encoding"
                )))
            }
        }
    }
}

/// An export that went through: its points, and what usage accounting counts of it.
struct Exported {
    tenant: Arc<TenantEntry>,
    enforced: Enforced,
    counted: WriteCounted,
}

async fn handle(
    state: &SharedState,
    parts: &Parts,
    body: Body,
    gzip: bool,
    caller: &mut Option<Arc<TenantEntry>>,
) -> Result<Exported, Failure> {
    let (tenant, _admission, body) =
        admit_write(state, parts, body, Endpoint::Otlp, caller).await?;
    let limits = &tenant.limits;
    let codec_failure = |err: CodecError| {
        Failure::new(&tenant, err.reason(), AppError::BadRequest(err.to_string()))
    };
    // The decoded size, checked before anything is inflated or allocated from it.
    let claimed = if gzip {
        otlp::gzip_claimed_len(&body, limits.max_decoded_bytes).map_err(codec_failure)?
    } else {
        let length = body.len() as u64;
        if length > limits.max_decoded_bytes {
            return Err(codec_failure(CodecError::DecodedTooLarge {
                claimed: length,
                limit: limits.max_decoded_bytes,
            }));
        }
        length
    };
    let compressed_bytes = body.len() as u64;
    let _decoded = reserve_decoded(state, &tenant, claimed).await?;
    // One view of the config in force (`[otlp]` and the backends) for the whole request,
    // whatever a reload does meanwhile.
    let live = state.live.load_full();
    let now = now_ms();
    // HA pairs (DESIGN §15), on the translated series: as for remote write, a second
    // pass with the registry's answers when the cache cannot judge a cluster.
    let mut resolved: Option<Arc<HashMap<String, Resolved>>> = None;
    let (compressed, enforced, refused, ha_outcome, relabel_dropped) = loop {
        let prepared = prepare_export(
            state,
            &tenant,
            &live,
            &body,
            gzip,
            claimed,
            now,
            resolved.clone(),
        )
        .await?
        .map_err(codec_failure)?;
        match &prepared.3 {
            Some(outcome) if !outcome.asks.is_empty() && resolved.is_none() => {
                let answers = super::ha::resolve(state, &tenant, &outcome.asks, now).await?;
                resolved = Some(Arc::new(answers));
            }
            _ => break prepared,
        }
    };
    if let Some(refused) = &refused {
        count_refused_samples(state, &tenant, "series_limit", refused.samples);
    }
    count_relabel_dropped(state, &tenant, relabel_dropped);
    if let Some(outcome) = &ha_outcome {
        super::ha::commit(state, &tenant, outcome, now);
    }
    let ha_refused = ha_outcome.is_some_and(|outcome| outcome.refused_series > 0);
    // Points refused for the series limit are answered in `partial_success` (DESIGN
    // §14), even when no point is left; other refusals of every point are a 400.
    if enforced.accepted_points == 0
        && enforced.rejected_points > 0
        && refused.is_none()
        && !ha_refused
    {
        count_points(state, &tenant.tenant.id, &enforced);
        return Err(Failure::new(
            &tenant,
            "points_rejected",
            AppError::BadRequest(format!(
                "all {} data points were rejected: {}",
                enforced.rejected_points, enforced.message
            )),
        ));
    }
    let mut counted = WriteCounted {
        request: Field::OtlpRequests,
        written: Written::default(),
        refused_series_limit: refused.map_or(0, |refused| refused.samples),
        compressed_bytes,
        decoded_bytes: claimed,
    };
    let Some(compressed) = compressed else {
        // Nothing to forward (an empty export, or every series refused).
        return Ok(Exported {
            tenant,
            enforced,
            counted,
        });
    };
    // Each data point counts as one sample against the tenant's sample rate (a
    // histogram point too, however many series it makes).
    let points = enforced.accepted_points;
    let samples = enforced.stats.total_samples() as u64;
    admit_samples(state, Endpoint::Otlp, &tenant, points, samples, |burst| {
        format!(
            "request holds {points} data points, more than the tenant's burst of {burst} samples: \
             it can never be accepted; export smaller batches"
        )
    })?;
    state
        .metrics
        .samples_received
        .get_or_create(&TenantLabel {
            tenant: tenant.tenant.id.clone(),
        })
        .inc_by(samples);
    counted.written = forward(
        state,
        &live,
        &tenant,
        Bodies::v1(compressed),
        &enforced.stats,
    )
    .await
    .map_err(|error| Failure::new(&tenant, "backend", error))?;
    Ok(Exported {
        tenant,
        enforced,
        counted,
    })
}

/// An export prepared for the backends: the compressed body (`None` when no series is
/// left), the translated request's counts, what the active series limit refused and,
/// for a tenant with HA on, what the HA decisions came to.
type Prepared = (
    Option<Bytes>,
    Enforced,
    Option<SeriesRefusal>,
    Option<HaOutcome>,
    Dropped,
);

/// Prepares the export on the CPU pool when it is compressed or large, here otherwise.
#[allow(clippy::too_many_arguments)]
async fn prepare_export(
    state: &SharedState,
    tenant: &Arc<TenantEntry>,
    live: &Arc<Live>,
    body: &Bytes,
    gzip: bool,
    claimed: u64,
    now: i64,
    resolved: Option<Arc<HashMap<String, Resolved>>>,
) -> Result<Result<Prepared, CodecError>, Failure> {
    let tracker = Arc::clone(&state.active_series);
    let ha_tracker = Arc::clone(&state.ha);
    let key = state.series_key;
    let job = move |body: &[u8], tenant: &TenantEntry, live: &Live| {
        let no_answers = HashMap::new();
        let ha = tenant.limits.accept_ha_samples.then(|| HaPass {
            tracker: &ha_tracker,
            resolved: resolved.as_deref().unwrap_or(&no_answers),
        });
        let tracking = Tracking {
            tracker: &tracker,
            key: &key,
        };
        prepare(
            body,
            gzip,
            claimed,
            &live.config.otlp,
            tenant,
            now,
            tracking,
            ha,
        )
    };
    if gzip || claimed > OFFLOAD_DECODED_BYTES {
        let job_tenant = Arc::clone(tenant);
        let job_live = Arc::clone(live);
        let job_body = body.clone();
        state
            .cpu
            .run(&tenant.tenant.id, move || {
                job(&job_body, &job_tenant, &job_live)
            })
            .await
            .map_err(|err| cpu_unavailable(tenant, err))
    } else {
        Ok(job(body, tenant, live))
    }
}

/// Inflates (under the checked claim), decodes, translates and scopes to the tenant;
/// the snappy-compressed remote write 1.0 body for the backends, `None` when there
/// is no series to send.
#[allow(clippy::too_many_arguments)]
fn prepare(
    body: &[u8],
    gzip: bool,
    claimed: u64,
    config: &OtlpConfig,
    tenant: &TenantEntry,
    now_ms: i64,
    tracking: Tracking<'_>,
    ha: Option<HaPass<'_>>,
) -> Result<Prepared, CodecError> {
    let inflated;
    let decoded = if gzip {
        inflated = otlp::gunzip(body, claimed)?;
        &inflated[..]
    } else {
        body
    };
    let request = otlp::decode(decoded)?;
    let limits = &tenant.limits;
    let mut translated = otlp::translate(&request, config, Caps::of(limits))?;
    drop(request);
    // The tenant's rules (DESIGN §16) see the translated labels before enforcement.
    let mut relabel_dropped = Dropped::default();
    if let Some(scope) = Scope::of(&tenant.relabel, &tenant.policy, limits) {
        translated.try_retain_series(|series| scope.series(series, &mut relabel_dropped))?;
    }
    let mut enforced = otlp::enforce(translated, &tenant.policy, limits, now_ms)?;
    let ha_outcome = ha.map(|ha| dedupe_pairs(&mut enforced, tenant, &ha, now_ms));
    let refused = limit_series(&mut enforced, tenant, &tracking);
    let compressed = (!enforced.request.timeseries.is_empty())
        .then(|| Bytes::from(snappy::compress(&enforced.request.encode_to_vec())));
    Ok((compressed, enforced, refused, ha_outcome, relabel_dropped))
}

/// The tenant's HA pairs (DESIGN §15) on translated series: the replica label taken off,
/// series of non-elected replicas dropped (still answered as accepted, as remote write
/// answers 2xx), series of new clusters past `ha_max_clusters` answered as rejected.
fn dedupe_pairs(
    enforced: &mut Enforced,
    tenant: &TenantEntry,
    ha: &HaPass<'_>,
    now_ms: i64,
) -> HaOutcome {
    let mut decisions = ha.decisions(tenant, now_ms);
    let mut decide =
        |cluster: &[u8], replica: &[u8], samples: u64| decisions.decide(cluster, replica, samples);
    let before = enforced.stats;
    crate::codec::ha::apply(
        &mut enforced.request.timeseries,
        &tenant.limits,
        &mut HaGate {
            decide: &mut decide,
        },
        &mut enforced.stats,
    );
    let outcome = decisions.outcome;
    let dropped = (before.samples - enforced.stats.samples + before.histograms
        - enforced.stats.histograms) as u64;
    enforced.accepted_points = enforced.accepted_points.saturating_sub(dropped);
    if outcome.refused_series > 0 {
        enforced.rejected_points += outcome.refused_samples;
        if !enforced.message.is_empty() {
            enforced.message.push_str("; ");
        }
        let refusal = HaRefusal::of(&outcome, HaSettings::of(&tenant.limits));
        if let Some(refusal) = refusal {
            enforced.message.push_str(&refusal.reason());
        }
    }
    outcome
}

/// The tenant's active series limit (DESIGN §14) on translated series: new ones past it
/// are taken out, and their samples are answered as rejected data points.
fn limit_series(
    enforced: &mut Enforced,
    tenant: &TenantEntry,
    tracking: &Tracking<'_>,
) -> Option<SeriesRefusal> {
    if tenant.limits.max_active_series == 0 {
        return None;
    }
    let mut scratch = Vec::with_capacity(256);
    let spans: Vec<SeriesSpan> = enforced
        .request
        .timeseries
        .iter()
        .enumerate()
        .map(|(index, series)| {
            let labels = series
                .labels
                .iter()
                .map(|label| (label.name.as_str(), label.value.as_str()));
            let counts = [
                series.samples.len(),
                series.histograms.len(),
                series.exemplars.len(),
            ];
            label_set_span(tracking.key, index, labels, &mut scratch, counts)
        })
        .collect();
    let limits = &tenant.limits;
    let limit = SeriesLimit {
        tracker: tracking.tracker,
        tenant: &tenant.tenant.id,
        max_active_series: limits.max_active_series,
        idle_timeout: limits.active_series_idle_timeout,
    };
    let (decisions, refusal) = admit_spans(&limit, &spans);
    let refusal = refusal?;
    let mut kept = decisions.iter();
    enforced
        .request
        .timeseries
        .retain(|_| *kept.next().unwrap_or(&true));
    for (span, _) in spans.iter().zip(&decisions).filter(|(_, ok)| !**ok) {
        enforced.stats.series -= 1;
        enforced.stats.samples -= span.samples as usize;
        enforced.stats.histograms -= span.histograms as usize;
        enforced.stats.exemplars -= span.exemplars as usize;
    }
    let points = refusal.samples
        - spans
            .iter()
            .zip(&decisions)
            .filter(|(_, ok)| !**ok)
            .map(|(span, _)| u64::from(span.exemplars))
            .sum::<u64>();
    enforced.accepted_points = enforced.accepted_points.saturating_sub(points);
    enforced.rejected_points += points;
    if !enforced.message.is_empty() {
        enforced.message.push_str("; ");
    }
    enforced.message.push_str(&refusal.reason());
    Some(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: Option<&str>, encoding: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(value).expect("ascii"),
            );
        }
        if let Some(value) = encoding {
            headers.insert(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_str(value).expect("ascii"),
            );
        }
        headers
    }

    #[test]
    fn media_types() {
        assert_eq!(
            check_media_type(&headers(Some(PROTOBUF), None)).ok(),
            Some(false)
        );
        assert_eq!(
            check_media_type(&headers(Some("Application/X-Protobuf"), Some("GZIP"))).ok(),
            Some(true)
        );
        assert_eq!(
            check_media_type(&headers(Some(PROTOBUF), Some("identity"))).ok(),
            Some(false)
        );
        for bad in [
            headers(Some("application/json"), None),
            headers(None, None),
            headers(Some("text/plain"), Some("gzip")),
            headers(Some(PROTOBUF), Some("snappy")),
            headers(Some(PROTOBUF), Some("zstd")),
        ] {
            let err = check_media_type(&bad).expect_err("415");
            assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad:?}");
        }
    }
}
