//! `POST /api/v1/write`: authenticate → cap → decode → enforce → forward → answer
//! (DESIGN §6). Cheap checks come first; nothing is allocated from a size the client
//! claims before the claim is checked, and the body is not read before the caller is
//! known.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::FutureExt;

use super::common::{
    authenticate, budget_exhausted, count_request, cpu_unavailable, deadline_exceeded,
    failure_tenant, global_slot, observe_duration, read_body_capped, require_backends, throttled,
    within_deadline, Endpoint, Failure,
};
use super::series::{count_refused_samples, count_relabel_dropped, Tracking};
use super::usage::{count_throttled, count_write, WriteCounted};
use super::{Live, SharedState};
use crate::admission::{BudgetError, Verdict};
use crate::backend::{self, Outcome, Written};
use crate::codec::ha::HaGate;
use crate::codec::refused::apply_limit;
use crate::codec::relabel::Scope;
use crate::codec::splice::{self, Rewritten, SeriesLog};
use crate::codec::write::WriteStats;
use crate::codec::{snappy, splice_v2, CodecError};
use crate::config::{BackendConfig, WriteProtocol};
use crate::delivery::envelope::QueuedWrite;
use crate::delivery::queue::QueueError;
use crate::error::AppError;
use crate::series::ha::{HaDecisions, HaOutcome, HaRefusal, HaSettings, HaTracker, Resolved};
use crate::series::limit::admit_spans;
use crate::series::limit::SeriesLimit;
use crate::series::relabel::Dropped;
use crate::series::{SeriesRefusal, SeriesSpan};
use crate::telemetry::TenantLabel;
use crate::tenant::TenantEntry;
use crate::usage::Field;

pub async fn remote_write(State(state): State<SharedState>, request: Request) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    // Header-only, before anything else: the version picks the message (and, for 2.0,
    // the response headers every answer carries).
    let protocol = match check_media_type(&parts.headers) {
        Ok(protocol) => protocol,
        Err(error) => {
            return Failure::anonymous("unsupported_media_type", error)
                .respond(&state, Endpoint::Write)
        }
    };
    let mut caller = None;
    let handled = within_deadline(&state, handle(&state, &parts, body, protocol, &mut caller))
        .await
        .unwrap_or_else(|| Err(deadline_exceeded(&state, caller.take())));
    let (mut response, written) = match handled {
        Ok(Handled {
            tenant,
            stats,
            written,
            refused,
            compressed_bytes,
            decoded_bytes,
            ha_refused,
        }) => {
            count_write(
                &tenant,
                WriteCounted {
                    request: Field::WriteRequests,
                    written,
                    refused_series_limit: refused.map_or(0, |refused| refused.samples),
                    compressed_bytes,
                    decoded_bytes,
                },
            );
            state
                .metrics
                .samples_forwarded
                .get_or_create(&TenantLabel {
                    tenant: tenant.tenant.id.clone(),
                })
                .inc_by(stats.total_samples() as u64);
            let response = match (refused, ha_refused) {
                // The rest is written; the sender must not retry the refused series.
                (refused, ha_refused) if refused.is_some() || ha_refused.is_some() => {
                    let mut reasons = Vec::new();
                    if let Some(refused) = &refused {
                        tracing::info!(
                            tenant = %tenant.tenant.id,
                            refused_series = refused.refused,
                            limit = refused.limit,
                            "new series refused: the tenant is at its active series limit"
                        );
                        reasons.push(refused.reason());
                    }
                    if let Some(ha_refused) = &ha_refused {
                        tracing::info!(
                            tenant = %tenant.tenant.id,
                            refused_series = ha_refused.series,
                            limit = ha_refused.max_clusters,
                            "series of new HA clusters refused: the tenant is at its ha_max_clusters"
                        );
                        reasons.push(ha_refused.reason());
                    }
                    let reason = if refused.is_some() {
                        "series_limit"
                    } else {
                        "ha_max_clusters"
                    };
                    Failure::new(&tenant, reason, AppError::BadRequest(reasons.join("; ")))
                        .respond(&state, Endpoint::Write)
                }
                _ => {
                    count_request(
                        &state,
                        Endpoint::Write,
                        &tenant.tenant.id,
                        StatusCode::NO_CONTENT,
                    );
                    StatusCode::NO_CONTENT.into_response()
                }
            };
            observe_duration(&state, Endpoint::Write, &tenant.tenant.id, started);
            (response, written)
        }
        // Nothing is known to be written everywhere when promgate refuses.
        Err(failure) => {
            let tenant = failure_tenant(&failure);
            let response = failure.respond(&state, Endpoint::Write);
            observe_duration(&state, Endpoint::Write, &tenant, started);
            (response, Written::default())
        }
    };
    // Remote write 2.0: the written counts on every answer, success or failure; never on
    // 1.0 answers.
    if protocol == WriteProtocol::V2 {
        for (name, value) in written.headers() {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Bodies decoding to more than this are decompressed and rewritten on the CPU pool;
/// smaller ones (Prometheus' usual batches: ≈ 350 KiB for 2000 samples) cost well under
/// a millisecond and stay on the async worker, where the hand-off would cost more.
pub(super) const OFFLOAD_DECODED_BYTES: u64 = 1 << 20;

async fn handle(
    state: &SharedState,
    parts: &Parts,
    body: Body,
    protocol: WriteProtocol,
    caller: &mut Option<Arc<TenantEntry>>,
) -> Result<Handled, Failure> {
    let (tenant, _admission, compressed) =
        admit_write(state, parts, body, Endpoint::Write, caller).await?;
    let limits = &tenant.limits;
    let codec_failure = |err: CodecError| {
        Failure::new(&tenant, err.reason(), AppError::BadRequest(err.to_string()))
    };
    let claimed = snappy::checked_decoded_len(&compressed, limits.max_decoded_bytes)
        .map_err(codec_failure)?;
    let compressed_bytes = compressed.len() as u64;
    let _decoded = reserve_decoded(state, &tenant, claimed).await?;
    // One view of the backends for the whole request, whatever a reload does meanwhile.
    let live = state.live.load_full();
    let targets = Targets::of(&live, &tenant);
    let now = now_ms();
    // HA pairs (DESIGN §15): a first pass judges every series from the cache; when the
    // cache cannot judge a cluster (new, or an election older than the failover
    // timeout), the registry is asked and the request is prepared again with its
    // answers. Only a tenant with HA on can take the second pass.
    let mut resolved: Option<Arc<HashMap<String, Resolved>>> = None;
    let (bodies, stats, refused, ha_outcome, relabel_dropped) = loop {
        let prepared = prepare_write(
            state,
            &tenant,
            &compressed,
            claimed,
            protocol,
            targets,
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
    // Not held while the backends answer.
    drop(compressed);
    if let Some(refused) = &refused {
        count_refused_samples(state, &tenant, "series_limit", refused.samples);
    }
    count_relabel_dropped(state, &tenant, relabel_dropped);
    let ha_refused = ha_outcome.as_ref().and_then(|outcome| {
        super::ha::commit(state, &tenant, outcome, now);
        HaRefusal::of(outcome, HaSettings::of(&tenant.limits))
    });
    let samples = stats.total_samples() as u64;
    admit_samples(state, Endpoint::Write, &tenant, samples, samples, |burst| {
        format!(
            "request holds {samples} samples, more than the tenant's burst of {burst}: it can never be \
             accepted; send smaller batches (queue_config.max_samples_per_send)"
        )
    })?;
    state
        .metrics
        .samples_received
        .get_or_create(&TenantLabel {
            tenant: tenant.tenant.id.clone(),
        })
        .inc_by(samples);
    // A request whose every series was refused or de-duplicated has nothing left to
    // write.
    let ha_dropped = ha_outcome
        .as_ref()
        .is_some_and(|outcome| !outcome.deduplicated.is_empty() || outcome.refused_series > 0);
    let dropped = refused.is_some() || ha_dropped || relabel_dropped.series > 0;
    let written = if dropped && stats.series == 0 {
        Written::default()
    } else {
        forward(state, &live, &tenant, bodies, &stats)
            .await
            .map_err(|error| Failure::new(&tenant, "backend", error))?
    };
    Ok(Handled {
        tenant,
        stats,
        written,
        refused,
        compressed_bytes,
        decoded_bytes: claimed,
        ha_refused,
    })
}

/// A request prepared for the backends: its bodies, counts, what the active series
/// limit refused, for a tenant with HA on what the HA decisions came to, and what the
/// tenant's relabel rules dropped.
type Prepared = (
    Bodies,
    WriteStats,
    Option<SeriesRefusal>,
    Option<HaOutcome>,
    Dropped,
);

/// Prepares the request on the CPU pool when it is large, here otherwise; with
/// `resolved`, the registry's answers for the HA clusters a first pass asked about.
#[allow(clippy::too_many_arguments)]
async fn prepare_write(
    state: &SharedState,
    tenant: &Arc<TenantEntry>,
    compressed: &Bytes,
    claimed: u64,
    protocol: WriteProtocol,
    targets: Targets,
    now: i64,
    resolved: Option<Arc<HashMap<String, Resolved>>>,
) -> Result<Result<Prepared, CodecError>, Failure> {
    let tracker = Arc::clone(&state.active_series);
    let ha_tracker = Arc::clone(&state.ha);
    let key = state.series_key;
    let prepare = move |compressed: &[u8], tenant: &TenantEntry| {
        let tracking = Tracking {
            tracker: &tracker,
            key: &key,
        };
        let no_answers = HashMap::new();
        let ha = tenant.limits.accept_ha_samples.then(|| HaPass {
            tracker: &ha_tracker,
            resolved: resolved.as_deref().unwrap_or(&no_answers),
        });
        match protocol {
            WriteProtocol::V1 => rewrite_body(
                compressed,
                tenant,
                targets.any_by_label,
                now,
                Some(tracking),
                ha,
            ),
            WriteProtocol::V2 => prepare_v2(compressed, tenant, targets, now, tracking, ha),
        }
    };
    if claimed > OFFLOAD_DECODED_BYTES {
        let job_tenant = Arc::clone(tenant);
        let job_body = compressed.clone();
        state
            .cpu
            .run(&tenant.tenant.id, move || prepare(&job_body, &job_tenant))
            .await
            .map_err(|err| cpu_unavailable(tenant, err))
    } else {
        Ok(prepare(compressed, tenant))
    }
}

/// The HA cache and the registry's answers a request is judged with.
pub(super) struct HaPass<'a> {
    pub tracker: &'a HaTracker,
    pub resolved: &'a HashMap<String, Resolved>,
}

impl HaPass<'_> {
    pub(super) fn decisions<'d>(&'d self, tenant: &'d TenantEntry, now: i64) -> HaDecisions<'d> {
        HaDecisions::new(
            self.tracker,
            &tenant.tenant.id,
            HaSettings::of(&tenant.limits),
            now,
            self.resolved,
        )
    }
}

/// A write that reached its backends, whole or with series refused for the tenant's
/// active series limit or its HA cluster limit.
struct Handled {
    tenant: Arc<TenantEntry>,
    stats: WriteStats,
    written: Written,
    refused: Option<SeriesRefusal>,
    /// The body as received, and decoded (usage accounting).
    compressed_bytes: u64,
    decoded_bytes: u64,
    ha_refused: Option<HaRefusal>,
}

/// Which bodies the tenant's backends need.
#[derive(Clone, Copy, Debug)]
struct Targets {
    /// A 1.0 backend that gets the tenant in a header (and so may get metadata).
    v1_by_header: bool,
    /// A 1.0 backend that gets the tenant only from the label (never metadata).
    v1_by_label: bool,
    /// A 2.0 backend.
    v2: bool,
    /// Any backend that gets the tenant only from the label: a 1.0 request's metadata
    /// must be split off for it.
    any_by_label: bool,
}

impl Targets {
    fn of(live: &Live, tenant: &TenantEntry) -> Targets {
        let mut targets = Targets {
            v1_by_header: false,
            v1_by_label: false,
            v2: false,
            any_by_label: false,
        };
        for backend in live.backends_of(tenant) {
            targets.any_by_label |= backend.config.tenant_header.is_none();
            match (
                backend.config.protocol,
                backend.config.tenant_header.is_some(),
            ) {
                (WriteProtocol::V2, _) => targets.v2 = true,
                (WriteProtocol::V1, true) => targets.v1_by_header = true,
                (WriteProtocol::V1, false) => targets.v1_by_label = true,
            }
        }
        targets
    }
}

/// A remote write 2.0 body: decompressed, validated and scoped to the tenant in its
/// symbol table on the zero-copy path ([`splice_v2`]; `codec::rw2` is its reference), and
/// written once per form the backends need: 2.0 for 2.0 backends, 1.0 (with or without
/// metadata) for 1.0 ones.
fn prepare_v2(
    compressed: &[u8],
    tenant: &TenantEntry,
    targets: Targets,
    now_ms: i64,
    tracking: Tracking<'_>,
    ha: Option<HaPass<'_>>,
) -> Result<Prepared, CodecError> {
    let limits = &tenant.limits;
    let mut decoded = snappy::decompress_capped(compressed, limits.max_decoded_bytes)?;
    // A tenant with relabel rules (DESIGN §16) has its series relabeled on the prost
    // path first; the zero-copy path then validates and enforces what the rules left.
    let mut relabel_dropped = Dropped::default();
    if let Some(scope) = Scope::of(&tenant.relabel, &tenant.policy, limits) {
        let mut relabeled = Vec::new();
        relabel_dropped = scope.v2(&decoded, &mut relabeled)?;
        decoded = relabeled;
    }
    let forms = splice_v2::Forms {
        v2: targets.v2,
        v1: targets.v1_by_header || targets.v1_by_label,
    };
    let mut refused = None;
    let mut admit = |spans: &[SeriesSpan]| {
        let limit = SeriesLimit {
            tracker: tracking.tracker,
            tenant: &tenant.tenant.id,
            max_active_series: limits.max_active_series,
            idle_timeout: limits.active_series_idle_timeout,
        };
        let (decisions, refusal) = admit_spans(&limit, spans);
        refused = refusal;
        decisions
    };
    let gate = splice_v2::SeriesGate {
        key: tracking.key,
        admit: &mut admit,
    };
    let gate = (limits.max_active_series > 0).then_some(gate);
    let mut decisions = ha.as_ref().map(|ha| ha.decisions(tenant, now_ms));
    let mut decide = |cluster: &[u8], replica: &[u8], samples: u64| {
        decisions
            .as_mut()
            .is_none_or(|decisions| decisions.decide(cluster, replica, samples))
    };
    let ha_gate = ha.is_some().then_some(HaGate {
        decide: &mut decide,
    });
    let rewritten = splice_v2::rewrite_v2_gated(
        &decoded,
        &tenant.policy,
        limits,
        now_ms,
        forms,
        ha_gate,
        gate,
    )?;
    drop(decoded);
    let ha_outcome = decisions.map(|decisions| decisions.outcome);
    let stats = rewritten.stats;
    let has_metadata = stats.metadata > 0;
    let v1 = rewritten.v1.unwrap_or_default();
    let bodies = Bodies {
        full: (targets.v1_by_header || (targets.v1_by_label && !has_metadata))
            .then(|| Bytes::from(snappy::compress(&v1))),
        series_only: (targets.v1_by_label && has_metadata)
            .then(|| Bytes::from(snappy::compress(&v1[..rewritten.v1_series_end]))),
        has_metadata,
        v2: rewritten.v2.map(|v2| Bytes::from(snappy::compress(&v2))),
    };
    Ok((bodies, stats, refused, ha_outcome, relabel_dropped))
}

thread_local! {
    /// Each worker thread's decompressed request, rewritten request and series spans,
    /// reused from one request to the next: they are only used between two awaits.
    static BUFFERS: RefCell<(Vec<u8>, Vec<u8>, Vec<SeriesSpan>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Buffers grown past this by a large request are freed rather than kept.
const KEEP_BUFFER_BYTES: usize = 4 << 20;

/// Decompresses, rewrites for the tenant and compresses a request body (and, with
/// `split_metadata`, its series alone when it holds metadata too). With `tracking`, the
/// tenant's active series limit applies: new series past it are cut out, and the
/// refusal says how many.
fn rewrite_body(
    compressed: &[u8],
    tenant: &TenantEntry,
    split_metadata: bool,
    now_ms: i64,
    tracking: Option<Tracking<'_>>,
    ha: Option<HaPass<'_>>,
) -> Result<Prepared, CodecError> {
    let mut decisions = ha.as_ref().map(|ha| ha.decisions(tenant, now_ms));
    let mut decide = |cluster: &[u8], replica: &[u8], samples: u64| {
        decisions
            .as_mut()
            .is_none_or(|decisions| decisions.decide(cluster, replica, samples))
    };
    let ha_gate = ha.is_some().then_some(HaGate {
        decide: &mut decide,
    });
    let limits = &tenant.limits;
    // A tenant with relabel rules (DESIGN §16) has its series relabeled on the prost
    // path first; the zero-copy path then validates and enforces what the rules left.
    let scope = Scope::of(&tenant.relabel, &tenant.policy, limits);
    let mut relabeled = Vec::new();
    let mut relabel_dropped = Dropped::default();
    let result = BUFFERS.with(|buffers| {
        let mut buffers = buffers.borrow_mut();
        let (decoded, encoded, spans) = &mut *buffers;
        // An unlimited tenant's series are not tracked: it pays nothing for the limit.
        let tracking = tracking.filter(|_| limits.max_active_series > 0);
        let log = tracking.as_ref().map(|tracking| SeriesLog {
            key: tracking.key,
            spans: &mut *spans,
        });
        let result = snappy::decompress_capped_into(compressed, limits.max_decoded_bytes, decoded)
            .and_then(|()| match &scope {
                Some(scope) => scope
                    .v1(decoded, &mut relabeled)
                    .map(|dropped| relabel_dropped = dropped),
                None => Ok(()),
            })
            .and_then(|()| {
                splice::rewrite_gated(
                    if scope.is_some() { &relabeled } else { decoded },
                    &tenant.policy,
                    limits,
                    now_ms,
                    encoded,
                    log,
                    ha_gate,
                )
            })
            .map(|mut rewritten| {
                let refused = tracking.and_then(|tracking| {
                    let limit = SeriesLimit {
                        tracker: tracking.tracker,
                        tenant: &tenant.tenant.id,
                        max_active_series: limits.max_active_series,
                        idle_timeout: limits.active_series_idle_timeout,
                    };
                    let (series_end, refused) = apply_limit(
                        &limit,
                        spans,
                        encoded,
                        rewritten.series_end,
                        &mut rewritten.stats,
                    );
                    rewritten.series_end = series_end;
                    refused
                });
                let bodies = Bodies::compress(encoded, rewritten, split_metadata);
                (bodies, rewritten.stats, refused)
            });
        if spans.capacity() > KEEP_BUFFER_BYTES / std::mem::size_of::<SeriesSpan>() {
            *spans = Vec::new();
        }
        for buffer in [decoded, encoded] {
            if buffer.capacity() > KEEP_BUFFER_BYTES {
                *buffer = Vec::new();
            }
        }
        result
    });
    let ha_outcome = decisions.map(|decisions| decisions.outcome);
    result.map(|(bodies, stats, refused)| (bodies, stats, refused, ha_outcome, relabel_dropped))
}

/// What a write-like request (remote write, OTLP) holds once admitted: its tenant's write
/// slot and a process-wide in-flight place, until dropped.
pub(super) struct WriteAdmission<'a> {
    _tenant_slot: tokio::sync::OwnedSemaphorePermit,
    _global_slot: super::common::InFlightGauge<'a>,
}

/// The admission every write-like request passes, in this order (DESIGN §6 steps 2–4,
/// SECURITY.md T23): authentication (nothing shared is held yet); the throttles that need
/// no body (the request rate, and a tenant still inside the wait it was given for its
/// samples, so a flood costs headers only); the tenant's own write slot, then the
/// process-wide one (a tenant that fills its share waits on it without holding anything
/// another tenant needs); the body under `max_request_bytes`. `caller` names the tenant as
/// soon as it is known, for the deadline's answer.
pub(super) async fn admit_write<'a>(
    state: &'a SharedState,
    parts: &Parts,
    body: Body,
    endpoint: Endpoint,
    caller: &mut Option<Arc<TenantEntry>>,
) -> Result<(Arc<TenantEntry>, WriteAdmission<'a>, Bytes), Failure> {
    let tenant = authenticate(state, parts).await?;
    *caller = Some(Arc::clone(&tenant));
    require_backends(&tenant)?;
    let limits = &tenant.limits;
    // This replica enforces its share of the tenant's rates.
    let replicas = state.registry.live_replicas();
    for (verdict, limit) in [
        (
            state
                .rate_limits
                .check_write_request(&tenant.tenant.id, limits, replicas),
            "requests",
        ),
        (
            state
                .rate_limits
                .check_samples_blocked(&tenant.tenant.id, limits, replicas),
            "samples",
        ),
    ] {
        if let Verdict::Throttled { retry_after } = verdict {
            let seconds = Verdict::retry_after_seconds(retry_after);
            return Err(throttled(state, endpoint, &tenant, limit, seconds));
        }
    }
    let tenant_slot = state
        .tenant_budgets
        .write_slot(
            &tenant.tenant.id,
            limits.max_concurrent_writes,
            limits.max_in_flight_decoded_bytes,
            state.config.server.in_flight_wait,
        )
        .await
        .map_err(|_: BudgetError| budget_exhausted(&tenant, "concurrent_writes"))?;
    let global_slot = global_slot(state, &tenant).await?;
    let body = read_body_capped(
        state,
        &tenant,
        &parts.headers,
        body,
        limits.max_request_bytes,
    )
    .await?;
    Ok((
        tenant,
        WriteAdmission {
            _tenant_slot: tenant_slot,
            _global_slot: global_slot,
        },
        body,
    ))
}

/// The tenant's samples rate (DESIGN §6 step 6): `charged` against its bucket (throttle
/// answer when over, with `samples` counted as throttled), or 400 with `never_fits`'s
/// reason when the request is larger than the whole burst and no wait could admit it.
pub(super) fn admit_samples(
    state: &SharedState,
    endpoint: Endpoint,
    tenant: &Arc<TenantEntry>,
    charged: u64,
    samples: u64,
    never_fits: impl FnOnce(u64) -> String,
) -> Result<(), Failure> {
    let replicas = state.registry.live_replicas();
    match state
        .rate_limits
        .check_samples(&tenant.tenant.id, &tenant.limits, replicas, charged)
    {
        Verdict::Allowed => Ok(()),
        Verdict::Throttled { retry_after } => {
            state
                .metrics
                .throttled_samples
                .get_or_create(&TenantLabel {
                    tenant: tenant.tenant.id.clone(),
                })
                .inc_by(samples);
            count_throttled(tenant, samples);
            let seconds = Verdict::retry_after_seconds(retry_after);
            Err(throttled(state, endpoint, tenant, "samples", seconds))
        }
        Verdict::NeverFits { burst } => Err(Failure::new(
            tenant,
            "over_burst",
            AppError::BadRequest(never_fits(burst)),
        )),
    }
}

/// A write's decoded bytes, reserved by their checked claim before anything is inflated.
pub(super) struct DecodedReservation {
    _tenant_bytes: tokio::sync::OwnedSemaphorePermit,
    _process: DecodedBudget,
}

/// Reserves `claimed` decoded bytes in the tenant's budget, then in the process-wide one.
pub(super) async fn reserve_decoded(
    state: &SharedState,
    tenant: &Arc<TenantEntry>,
    claimed: u64,
) -> Result<DecodedReservation, Failure> {
    let limits = &tenant.limits;
    let tenant_bytes = state
        .tenant_budgets
        .decoded_bytes(
            &tenant.tenant.id,
            limits.max_concurrent_writes,
            limits.max_in_flight_decoded_bytes,
            claimed,
            state.config.server.in_flight_wait,
        )
        .await
        .map_err(|_: BudgetError| budget_exhausted(tenant, "in_flight_decoded_bytes"))?;
    let process = DecodedBudget::take(state, claimed).await.map_err(|_| {
        Failure::new(
            tenant,
            "decoded_budget",
            AppError::Unavailable {
                message: "promgate is at its in-flight decoded-bytes budget; retry later".into(),
                retry_after_seconds: 1,
            },
        )
    })?;
    Ok(DecodedReservation {
        _tenant_bytes: tenant_bytes,
        _process: process,
    })
}

/// A share of the process-wide decoded-bytes budget, shown in the in-flight gauge while held.
struct DecodedBudget {
    state: SharedState,
    bytes: i64,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl DecodedBudget {
    /// The process-wide share, after the tenant's own.
    async fn take(state: &SharedState, bytes: u64) -> Result<DecodedBudget, BudgetError> {
        let permit = state.in_flight.decoded_bytes(bytes).await?;
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        state.metrics.in_flight_decoded_bytes.inc_by(bytes);
        Ok(DecodedBudget {
            state: Arc::clone(state),
            bytes,
            _permit: permit,
        })
    }
}

impl Drop for DecodedBudget {
    fn drop(&mut self) {
        self.state
            .metrics
            .in_flight_decoded_bytes
            .dec_by(self.bytes);
    }
}

/// Content-Encoding must be snappy (or absent: some 1.0 clients omit it); Content-Type
/// picks the message (remote write 2.0 spec, "Content-Type"): absent, or
/// `application/x-protobuf` without `proto=` or with `proto=prometheus.WriteRequest`, is
/// 1.0; `proto=io.prometheus.write.v2.Request` is 2.0; anything else is 415, before the
/// body is read. Parsed leniently: case, spaces and quotes do not matter.
fn check_media_type(headers: &HeaderMap) -> Result<WriteProtocol, AppError> {
    if let Some(encoding) = headers.get(http::header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or_default().trim();
        if !encoding.eq_ignore_ascii_case("snappy") {
            return Err(AppError::UnsupportedMediaType(format!(
                "Content-Encoding {encoding:?} is not supported; send snappy"
            )));
        }
    }
    let Some(content_type) = headers.get(http::header::CONTENT_TYPE) else {
        return Ok(WriteProtocol::V1);
    };
    let content_type = content_type.to_str().unwrap_or_default();
    let mut parts = content_type.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(AppError::UnsupportedMediaType(format!(
            "Content-Type {media_type:?} is not supported; send application/x-protobuf"
        )));
    }
    let mut protocol = WriteProtocol::V1;
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("proto") {
            protocol = match value.trim().trim_matches('"') {
                "prometheus.WriteRequest" => WriteProtocol::V1,
                "io.prometheus.write.v2.Request" => WriteProtocol::V2,
                proto => {
                    return Err(AppError::UnsupportedMediaType(format!(
                        "proto={proto} is not supported; send prometheus.WriteRequest (remote write 1.0) \
                         or io.prometheus.write.v2.Request (2.0)"
                    )))
                }
            };
        }
    }
    Ok(protocol)
}

/// The compressed request for the backends, in each form they need: 1.0 whole and (when
/// it carries metadata and series) 1.0 series alone; 2.0 for 2.0 backends when the
/// request came as 2.0. A form no backend needs is not made.
pub(super) struct Bodies {
    full: Option<Bytes>,
    series_only: Option<Bytes>,
    has_metadata: bool,
    v2: Option<Bytes>,
}

impl Bodies {
    /// One 1.0 body for every backend (a request that carries no metadata and did not
    /// come as 2.0, such as a translated OTLP request).
    pub(super) fn v1(compressed: Bytes) -> Bodies {
        Bodies {
            full: Some(compressed),
            series_only: None,
            has_metadata: false,
            v2: None,
        }
    }

    /// The form `backend` gets, and its protocol; `None` when it needs none (a
    /// metadata-only request for a backend that cannot be given metadata).
    fn for_backend(&self, backend: &BackendConfig) -> Option<(WriteProtocol, Bytes)> {
        if let (WriteProtocol::V2, Some(body)) = (backend.protocol, &self.v2) {
            return Some((WriteProtocol::V2, body.clone()));
        }
        let body = if backend.tenant_header.is_some() || !self.has_metadata {
            self.full.clone()?
        } else {
            self.series_only.clone()?
        };
        Some((WriteProtocol::V1, body))
    }

    /// Compresses the rewritten request; the series-only body, when asked for, is its
    /// prefix.
    fn compress(encoded: &[u8], rewritten: Rewritten, split_metadata: bool) -> Bodies {
        let has_metadata = rewritten.stats.metadata > 0;
        let series_only = (split_metadata && has_metadata && rewritten.stats.series > 0)
            .then(|| Bytes::from(snappy::compress(&encoded[..rewritten.series_end])));
        Bodies {
            full: Some(Bytes::from(snappy::compress(encoded))),
            series_only,
            has_metadata,
            v2: None,
        }
    }
}

/// Sends the request to the tenant's backends, one request each, all at once; every
/// backend of a kind gets the same bytes, compressed once. Metadata carries no labels and
/// cannot be scoped by the tenant label, so it only goes to backends that receive the
/// tenant in a header (PROTOCOL.md §2.G). A 2.0 request goes as 2.0 to 2.0 backends and
/// converted to 1.0 to the others; a 1.0 request goes as 1.0 everywhere. Returns what
/// every backend wrote (for 2.0 answers): a 1.0 backend's 2xx means all of it.
///
/// Queued backends (DESIGN §9) get their copy appended to their durable queue, and only
/// once every sync backend accepted: a sync backend's outage answers 503 without
/// queueing a copy the sender's retry would queue again. A queue without room answers
/// 503 before any backend is asked.
pub(super) async fn forward(
    state: &SharedState,
    live: &Live,
    tenant: &TenantEntry,
    bodies: Bodies,
    stats: &WriteStats,
) -> Result<Written, AppError> {
    let sent = Written {
        samples: stats.samples as u64,
        histograms: stats.histograms as u64,
        exemplars: stats.exemplars as u64,
    };
    let tenant_id = tenant.tenant.id.as_str();
    if live.backends_of(tenant).next().is_none() {
        // A reload took the tenant's last backend away after it was admitted: never
        // answer 2xx for data that goes nowhere (DESIGN §9).
        return Err(AppError::Unavailable {
            message: "no configured backend serves this tenant".into(),
            retry_after_seconds: 30,
        });
    }
    let mut sync = Vec::new();
    let mut queued = Vec::new();
    for backend in live.backends_of(tenant) {
        let Some((protocol, body)) = bodies.for_backend(&backend.config) else {
            continue;
        };
        match state.queued.named(&backend.config.name) {
            Some(queue) => queued.push((queue, protocol, body)),
            None => sync.push((backend, protocol, body)),
        }
    }
    for (queue, _, body) in &queued {
        queue
            .check_room(tenant_id, body.len())
            .map_err(|err| queue_unavailable(&queue.name, &err))?;
    }
    let sends = sync.into_iter().map(|(backend, protocol, body)| {
        async move {
            let (outcome, written) = match protocol {
                WriteProtocol::V2 => {
                    backend
                        .write_v2(tenant_id, body, sent, &state.metrics)
                        .await
                }
                WriteProtocol::V1 => (backend.write(tenant_id, body, &state.metrics).await, sent),
            };
            (backend.config.name.as_str(), outcome, written)
        }
        .boxed()
    });
    let results: Vec<(&str, Outcome, Written)> = futures::future::join_all(sends).await;
    let written = results
        .iter()
        .fold(sent, |least, (_, _, written)| least.least(*written));
    let outcomes: Vec<(&str, Outcome)> = results
        .into_iter()
        .map(|(name, outcome, _)| (name, outcome))
        .collect();
    backend::combine(&outcomes)?;
    let appends = queued.into_iter().map(|(queue, protocol, body)| {
        let write = QueuedWrite {
            tenant_id: tenant_id.to_string(),
            protocol,
            sent,
            body,
        };
        async move {
            queue
                .append(&write)
                .await
                .map_err(|err| queue_unavailable(&queue.name, &err))
        }
    });
    futures::future::try_join_all(appends).await?;
    Ok(written)
}

/// A queue that cannot take the write: 503 (the sender keeps it and retries), with the
/// reason logged once by the caller; a payload no queue can hold is 413.
fn queue_unavailable(backend: &str, err: &QueueError) -> AppError {
    let retry_after_seconds = match err {
        QueueError::PayloadTooLarge { .. } => {
            return AppError::PayloadTooLarge(format!(
                "the write is too large for backend {backend}'s queue: {err}"
            ))
        }
        QueueError::TenantShareFull { .. } => {
            return AppError::Unavailable {
                message: format!(
                    "backend {backend}'s delivery queue is full for this tenant (its share of queue.max_bytes); retry later"
                ),
                retry_after_seconds: QUEUE_FULL_RETRY_AFTER_SECONDS,
            }
        }
        QueueError::Full { .. } => {
            return AppError::Unavailable {
                message: format!(
                    "backend {backend}'s delivery queue is full (queue.max_bytes); retry later"
                ),
                retry_after_seconds: QUEUE_FULL_RETRY_AFTER_SECONDS,
            }
        }
        QueueError::NoSpace => QUEUE_FULL_RETRY_AFTER_SECONDS,
        _ => QUEUE_BROKEN_RETRY_AFTER_SECONDS,
    };
    AppError::Unavailable {
        message: format!(
            "backend {backend}'s delivery queue cannot take the write ({err}); retry later"
        ),
        retry_after_seconds,
    }
}

/// A full queue empties as fast as its backend takes records once it is back.
const QUEUE_FULL_RETRY_AFTER_SECONDS: u64 = 10;
/// A queue stopped by a failed write or fsync needs an operator (and a restart).
const QUEUE_BROKEN_RETRY_AFTER_SECONDS: u64 = 30;

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(encoding: Option<&str>, content_type: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(encoding) = encoding {
            headers.insert(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_str(encoding).expect("ascii"),
            );
        }
        if let Some(content_type) = content_type {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(content_type).expect("ascii"),
            );
        }
        headers
    }

    #[test]
    fn media_types() {
        for ok in [
            with(None, None),
            with(Some("snappy"), Some("application/x-protobuf")),
            with(
                Some(" Snappy "),
                Some("Application/X-Protobuf; proto=\"prometheus.WriteRequest\""),
            ),
        ] {
            assert_eq!(
                check_media_type(&ok).ok(),
                Some(WriteProtocol::V1),
                "{ok:?}"
            );
        }
        for bad in [
            with(Some("gzip"), Some("application/x-protobuf")),
            with(Some("snappy, gzip"), None),
            with(Some("zstd"), None),
            with(None, Some("application/json")),
            with(
                None,
                Some("application/x-protobuf;proto=io.prometheus.write.v3.Request"),
            ),
            with(
                None,
                Some("application/x-protobuf;proto=prometheus.ReadRequest"),
            ),
        ] {
            let err = check_media_type(&bad).expect_err("415");
            assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        for v2 in [
            with(
                Some("snappy"),
                Some("application/x-protobuf;proto=io.prometheus.write.v2.Request"),
            ),
            with(
                None,
                Some("application/x-protobuf; proto=\"io.prometheus.write.v2.Request\""),
            ),
        ] {
            assert_eq!(
                check_media_type(&v2).ok(),
                Some(WriteProtocol::V2),
                "{v2:?}"
            );
        }
    }
}
