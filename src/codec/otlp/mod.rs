//! OpenTelemetry metrics (OTLP/HTTP, `ExportMetricsServiceRequest`) to remote write 1.0
//! series (DESIGN §12). Pure and synchronous, like the rest of `codec`: the body is
//! inflated under a cap checked before a byte is inflated ([`gzip_claimed_len`],
//! [`gunzip`]), decoded ([`decode`]), translated ([`translate`]) and then scoped to the
//! tenant by the remote-write label enforcement itself ([`enforce`]), so a translated
//! series meets exactly the checks a remote-written one does.
//!
//! The translation is Prometheus' OTLP receiver's
//! (`storage/remote/otlptranslator/prometheusremotewrite` in prometheus/prometheus, with
//! the names of `github.com/prometheus/otlptranslator`, see [`names`]), under its
//! default settings unless `[otlp]` says otherwise:
//!
//! - metric names per `translation_strategy` (default `UnderscoreEscapingWithSuffixes`:
//!   unit words such as `_seconds`/`_bytes`, `_total` on monotonic sums, `_ratio` on
//!   gauges of unit `1`, `{…}` annotations dropped) — `MetricNamer.Build`;
//! - attribute names sanitised to label names; attributes that collide after
//!   sanitising are joined with `;` in key order — `createAttributes`;
//! - `job` = `service.namespace/service.name` (or `service.name`), `instance` =
//!   `service.instance.id`, overriding attributes of those names — `createAttributes`;
//! - `promote_resource_attributes` (or all but `ignore_resource_attributes`) copied to
//!   every series unless a data-point attribute of that name is set —
//!   `addPromotedAttributes`;
//! - gauges and sums one sample per point (sums with exemplars); histograms `_sum`
//!   (when set), `_count`, cumulative `_bucket{le}` and `le="+Inf"` with exemplars in
//!   their bucket — `addHistogramDataPoints`; exponential histograms as native
//!   histograms ([`histogram`]); summaries `_sum`, `_count` and `{quantile}` —
//!   `addSummaryDataPoints`; a point flagged "no recorded value" is a Prometheus stale
//!   marker;
//! - `target_info{job, instance, <other resource attributes>} 1` for a resource with
//!   attributes besides `service.name`, `service.namespace` and `service.instance.id`,
//!   every 2½ minutes (half the default lookback delta) from its earliest to its latest
//!   point and at the latest, de-duplicated across the request — `addResourceTargetInfo`;
//! - sums and histograms of delta (or unspecified) temporality are refused unless
//!   `allow_delta_temporality` — `FromMetrics`.
//!
//! Where promgate differs, it refuses less: a point whose attributes or metric cannot be
//! named, or whose temporality is refused, is rejected alone (counted for the
//! `partial_success` answer) where Prometheus fails the request; and `target_info`
//! spans only the points that were accepted. Scope attributes are not promoted and no
//! metadata is sent (Prometheus' defaults: `promote_scope_metadata` off; remote write
//! 1.0 metadata cannot be scoped to a tenant by label).

mod histogram;
pub mod names;

use std::collections::{BTreeSet, HashMap};
use std::io::Read;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValueKind;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, metric::Data, number_data_point, AggregationTemporality, Exemplar as OtelExemplar,
    HistogramDataPoint, NumberDataPoint, SummaryDataPoint,
};
use prost::Message;

use self::names::{LabelNamer, MetricKind};
use super::write::{self, LabelPolicy, WriteStats};
use super::CodecError;
use crate::config::{Limits, OtlpConfig};
use crate::proto::{Exemplar, Label, Sample, TimeSeries, WriteRequest};

/// Prometheus' stale marker (`value.StaleNaN`).
pub(crate) const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;
/// `DataPointFlags.FLAG_NO_RECORDED_VALUE_MASK`.
pub(crate) const NO_RECORDED_VALUE: u32 = 1;

const SERVICE_NAME: &str = "service.name";
const SERVICE_NAMESPACE: &str = "service.namespace";
const SERVICE_INSTANCE_ID: &str = "service.instance.id";
const IDENTIFYING: [&str; 3] = [SERVICE_NAMESPACE, SERVICE_NAME, SERVICE_INSTANCE_ID];
const TARGET_INFO: &str = "target_info";
/// Half of Prometheus' default lookback delta (5m): `target_info`'s sample interval.
const TARGET_INFO_INTERVAL_NS: u64 = 150 * 1_000_000_000;
/// At most this many `target_info` samples per resource (six hours at 2½ minutes): a
/// point dated at the epoch next to one dated now must not make millions of samples.
const TARGET_INFO_MAX_SAMPLES: u64 = 144;
/// Exemplar labels longer than this (in characters) keep only trace and span id
/// (OpenMetrics' limit, `maxExemplarRunes`).
const MAX_EXEMPLAR_RUNES: usize = 128;
/// Reasons quoted in one answer.
const MAX_REASONS: usize = 5;

/// A gzip body's claimed decoded size: its trailer's ISIZE (the size modulo 2^32, exact
/// for anything under the cap), checked against `max_decoded` before anything is
/// inflated. [`gunzip`] then holds the stream to it.
pub fn gzip_claimed_len(body: &[u8], max_decoded: u64) -> Result<u64, CodecError> {
    if body.len() < 18 || body[0] != 0x1f || body[1] != 0x8b {
        return Err(CodecError::Gzip("body is not a gzip stream".into()));
    }
    let trailer: [u8; 4] = body[body.len() - 4..]
        .try_into()
        .map_err(|_| CodecError::Gzip("truncated gzip trailer".into()))?;
    let claimed = u64::from(u32::from_le_bytes(trailer));
    if claimed > max_decoded {
        return Err(CodecError::DecodedTooLarge {
            claimed,
            limit: max_decoded,
        });
    }
    Ok(claimed)
}

/// Inflates one gzip member into at most `claimed` bytes (from [`gzip_claimed_len`]):
/// a stream that would inflate further is refused after `claimed + 1` bytes, never
/// inflated to the end, so a gzip bomb costs what its claim was allowed to cost.
pub fn gunzip(body: &[u8], claimed: u64) -> Result<Vec<u8>, CodecError> {
    let capacity = usize::try_from(claimed).unwrap_or(usize::MAX);
    let mut decoded = Vec::with_capacity(capacity);
    flate2::read::GzDecoder::new(body)
        .take(claimed.saturating_add(1))
        .read_to_end(&mut decoded)
        .map_err(|err| CodecError::Gzip(err.to_string()))?;
    if decoded.len() as u64 != claimed {
        return Err(CodecError::Gzip(format!(
            "the stream inflates to {} bytes, not the {claimed} its trailer states",
            if decoded.len() as u64 > claimed {
                format!("more than {claimed}")
            } else {
                decoded.len().to_string()
            }
        )));
    }
    Ok(decoded)
}

/// Decodes an `ExportMetricsServiceRequest`.
pub fn decode(decoded: &[u8]) -> Result<ExportMetricsServiceRequest, CodecError> {
    ExportMetricsServiceRequest::decode(decoded)
        .map_err(|err| CodecError::Protobuf(err.to_string()))
}

/// What one request may translate into, so a small body cannot expand without bound
/// (a histogram copies its point's labels onto every bucket).
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// `max_series_per_request`.
    pub max_series: usize,
    /// Bytes of label names and values in all translated series.
    pub max_label_bytes: usize,
}

impl Caps {
    /// The tenant's series cap, and label bytes up to four times its decoded-body cap.
    pub fn of(limits: &Limits) -> Caps {
        Caps {
            max_series: limits.max_series_per_request,
            max_label_bytes: usize::try_from(limits.max_decoded_bytes.saturating_mul(4))
                .unwrap_or(usize::MAX),
        }
    }
}

/// A translated request, before the tenant's labels are enforced.
#[derive(Debug, Default)]
pub struct Translated {
    pub request: WriteRequest,
    /// The data point each series of `request` came from (`None`: `target_info`).
    origin: Vec<Option<usize>>,
    /// Data points translated (numbered `0..points`).
    points: usize,
    /// Data points refused, and why (the first few distinct reasons).
    rejected: u64,
    reasons: Vec<String>,
    more_reasons: bool,
}

impl Translated {
    /// Data points turned into series.
    pub fn accepted_points(&self) -> u64 {
        self.points as u64
    }

    pub fn rejected_points(&self) -> u64 {
        self.rejected
    }

    fn reject(&mut self, points: u64, reason: String) {
        self.rejected += points;
        if self.reasons.contains(&reason) {
            return;
        }
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(reason);
        } else {
            self.more_reasons = true;
        }
    }

    /// Keeps the series `keep` says yes to (it may change their labels), each still tied
    /// to the data point it came from; the first error stops it and is returned.
    pub fn try_retain_series<E>(
        &mut self,
        mut keep: impl FnMut(&mut crate::proto::TimeSeries) -> Result<bool, E>,
    ) -> Result<(), E> {
        let mut kept = Vec::with_capacity(self.request.timeseries.len());
        let mut origin = Vec::with_capacity(self.origin.len());
        let series = std::mem::take(&mut self.request.timeseries);
        for (mut series, from) in series.into_iter().zip(self.origin.iter().copied()) {
            if keep(&mut series)? {
                kept.push(series);
                origin.push(from);
            }
        }
        self.request.timeseries = kept;
        self.origin = origin;
        Ok(())
    }

    /// The `partial_success.error_message`: the distinct reasons, `; `-separated.
    pub fn message(&self) -> String {
        let mut message = self.reasons.join("; ");
        if self.more_reasons {
            message.push_str("; and more");
        }
        message
    }
}

/// Translates a request under `config`, refusing it whole only when it would expand
/// past `caps`.
pub fn translate(
    request: &ExportMetricsServiceRequest,
    config: &OtlpConfig,
    caps: Caps,
) -> Result<Translated, CodecError> {
    let mut translator = Translator {
        config,
        caps,
        namer: LabelNamer {
            utf8: !config.translation_strategy.escapes(),
            underscore_sanitization: config.label_name_underscore_sanitization,
            preserve_multiple_underscores: config.label_name_preserve_multiple_underscores,
        },
        label_names: HashMap::new(),
        out: Translated::default(),
        label_bytes: 0,
        target_info: HashMap::new(),
    };
    for resource_metrics in &request.resource_metrics {
        translator.resource(resource_metrics)?;
    }
    let mut out = translator.out;
    let mut target_info: Vec<(Vec<Label>, BTreeSet<i64>)> =
        translator.target_info.into_iter().collect();
    target_info.sort_by(|a, b| {
        let key = |labels: &[Label]| -> Vec<(String, String)> {
            labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect()
        };
        key(&a.0).cmp(&key(&b.0))
    });
    for (labels, timestamps) in target_info {
        out.request.timeseries.push(TimeSeries {
            labels,
            samples: timestamps
                .into_iter()
                .map(|timestamp| Sample {
                    value: 1.0,
                    timestamp,
                })
                .collect(),
            ..TimeSeries::default()
        });
        out.origin.push(None);
    }
    if out.request.timeseries.len() > caps.max_series {
        return Err(too_many_series(caps));
    }
    Ok(out)
}

fn too_many_series(caps: Caps) -> CodecError {
    CodecError::Invalid(format!(
        "the request translates to more than {} series (max_series_per_request); send smaller batches",
        caps.max_series
    ))
}

/// The labels every series of one resource gets.
struct ResourceLabels {
    job: Option<String>,
    instance: Option<String>,
    promoted: LabelSet,
}

struct Translator<'a> {
    config: &'a OtlpConfig,
    caps: Caps,
    namer: LabelNamer,
    /// Sanitised names seen in this request.
    label_names: HashMap<String, String>,
    out: Translated,
    label_bytes: usize,
    /// `target_info` label sets and their sample timestamps.
    target_info: HashMap<Vec<Label>, BTreeSet<i64>>,
}

/// A metric's data points, whatever their type.
fn point_count(data: &Data) -> usize {
    match data {
        Data::Gauge(gauge) => gauge.data_points.len(),
        Data::Sum(sum) => sum.data_points.len(),
        Data::Histogram(histogram) => histogram.data_points.len(),
        Data::ExponentialHistogram(histogram) => histogram.data_points.len(),
        Data::Summary(summary) => summary.data_points.len(),
    }
}

impl Translator<'_> {
    fn label_name(&mut self, attribute: &str) -> Result<String, String> {
        if let Some(name) = self.label_names.get(attribute) {
            return Ok(name.clone());
        }
        let name = self.namer.build(attribute).map_err(|err| err.0)?;
        if self.label_names.len() < 4096 {
            self.label_names.insert(attribute.to_string(), name.clone());
        }
        Ok(name)
    }

    fn resource(
        &mut self,
        resource_metrics: &opentelemetry_proto::tonic::metrics::v1::ResourceMetrics,
    ) -> Result<(), CodecError> {
        let attributes: &[KeyValue] = resource_metrics
            .resource
            .as_ref()
            .map_or(&[], |resource| &resource.attributes);
        let find = |key: &str| {
            attributes
                .iter()
                .find(|kv| kv.key == key)
                .map(|kv| value_string(kv.value.as_ref()))
        };
        // `setResourceContext`
        let job = find(SERVICE_NAME).map(|name| match find(SERVICE_NAMESPACE) {
            Some(namespace) => format!("{namespace}/{name}"),
            None => name,
        });
        let instance = find(SERVICE_INSTANCE_ID);
        let mut promoted = LabelSet::default();
        if !self.config.promotion.is_empty() {
            for kv in attributes {
                if !self.config.promotion.promotes(&kv.key) {
                    continue;
                }
                match self.label_name(&kv.key) {
                    Ok(name) => promoted.set(name, value_string(kv.value.as_ref())),
                    Err(reason) => {
                        let points = resource_metrics
                            .scope_metrics
                            .iter()
                            .flat_map(|scope| &scope.metrics)
                            .filter_map(|metric| metric.data.as_ref())
                            .map(point_count)
                            .sum::<usize>();
                        self.out.reject(points as u64, reason);
                        return Ok(());
                    }
                }
            }
        }
        let labels = ResourceLabels {
            job: job.filter(|job| !job.is_empty()),
            instance: instance.filter(|instance| !instance.is_empty()),
            promoted,
        };
        let mut span: Option<(u64, u64)> = None;
        for scope in &resource_metrics.scope_metrics {
            for metric in &scope.metrics {
                if let Some(accepted) = self.metric(metric, &labels)? {
                    span = Some(match span {
                        Some((earliest, latest)) => {
                            (earliest.min(accepted.0), latest.max(accepted.1))
                        }
                        None => accepted,
                    });
                }
            }
        }
        if let Some((earliest, latest)) = span {
            self.target_info(attributes, &labels, earliest, latest)?;
        }
        Ok(())
    }

    /// Translates one metric; returns the earliest and latest timestamp (ns) of the
    /// points it accepted.
    fn metric(
        &mut self,
        metric: &opentelemetry_proto::tonic::metrics::v1::Metric,
        resource: &ResourceLabels,
    ) -> Result<Option<(u64, u64)>, CodecError> {
        let Some(data) = &metric.data else {
            self.out
                .reject(0, format!("metric {:?} has no data", metric.name));
            return Ok(None);
        };
        let points = point_count(data) as u64;
        if points == 0 {
            return Ok(None);
        }
        let (kind, temporality) = match data {
            Data::Gauge(_) => (MetricKind::Gauge, None),
            Data::Sum(sum) if sum.is_monotonic => {
                (MetricKind::MonotonicSum, Some(sum.aggregation_temporality))
            }
            Data::Sum(sum) => (
                MetricKind::NonMonotonicSum,
                Some(sum.aggregation_temporality),
            ),
            Data::Histogram(h) => (MetricKind::Histogram, Some(h.aggregation_temporality)),
            Data::ExponentialHistogram(h) => (
                MetricKind::ExponentialHistogram,
                Some(h.aggregation_temporality),
            ),
            Data::Summary(_) => (MetricKind::Summary, None),
        };
        let delta = temporality == Some(AggregationTemporality::Delta as i32);
        if let Some(temporality) = temporality {
            let cumulative = temporality == AggregationTemporality::Cumulative as i32;
            if !(cumulative || (delta && self.config.allow_delta_temporality)) {
                let reason = if delta {
                    format!(
                        "metric {:?} has delta temporality, which is refused (as by Prometheus): export \
                         cumulative temporality (OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative)",
                        metric.name
                    )
                } else {
                    format!(
                        "metric {:?} has an unspecified aggregation temporality",
                        metric.name
                    )
                };
                self.out.reject(points, reason);
                return Ok(None);
            }
        }
        let name = match names::metric_name(
            &metric.name,
            &metric.unit,
            kind,
            self.config.translation_strategy,
        ) {
            Ok(name) if !name.is_empty() => name,
            Ok(_) => {
                self.out.reject(points, "metric name is empty".into());
                return Ok(None);
            }
            Err(err) => {
                self.out.reject(points, err.0);
                return Ok(None);
            }
        };
        let mut span: Option<(u64, u64)> = None;
        macro_rules! each_point {
            ($points:expr, $translate:ident) => {
                for point in $points {
                    match self.point_labels(&point.attributes, resource) {
                        Ok(labels) => {
                            self.$translate(&name, labels, point, delta)?;
                            let t = point.time_unix_nano;
                            span = Some(span.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
                        }
                        Err(reason) => self.out.reject(1, reason),
                    }
                }
            };
        }
        match data {
            Data::Gauge(gauge) => each_point!(&gauge.data_points, gauge_point),
            Data::Sum(sum) => each_point!(&sum.data_points, sum_point),
            Data::Histogram(h) => each_point!(&h.data_points, histogram_point),
            Data::ExponentialHistogram(h) => {
                for point in &h.data_points {
                    let native = match histogram::to_native(point, delta, ms(point.time_unix_nano))
                    {
                        Ok(native) => native,
                        Err(reason) => {
                            self.out.reject(1, reason);
                            continue;
                        }
                    };
                    match self.point_labels(&point.attributes, resource) {
                        Ok(mut labels) => {
                            labels.insert("__name__".into(), name.clone());
                            let exemplars = exemplars(&point.exemplars);
                            let id = self.next_point();
                            self.push(
                                labels,
                                TimeSeries {
                                    histograms: vec![native],
                                    exemplars,
                                    ..TimeSeries::default()
                                },
                                id,
                            )?;
                            let t = point.time_unix_nano;
                            span = Some(span.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
                        }
                        Err(reason) => self.out.reject(1, reason),
                    }
                }
            }
            Data::Summary(summary) => each_point!(&summary.data_points, summary_point),
        }
        Ok(span)
    }

    fn next_point(&mut self) -> usize {
        let id = self.out.points;
        self.out.points += 1;
        id
    }

    /// A point's labels before its name (`createAttributes`): its attributes (but
    /// `__name__`) sanitised in key order, colliding names' values joined with `;`;
    /// promoted resource attributes where unset; `job` and `instance` over all.
    fn point_labels(
        &mut self,
        attributes: &[KeyValue],
        resource: &ResourceLabels,
    ) -> Result<LabelSet, String> {
        let mut labels = self.attribute_labels(attributes, &["__name__"])?;
        for label in &resource.promoted.0 {
            if labels.get(&label.name).is_none() {
                labels.insert(label.name.clone(), label.value.clone());
            }
        }
        if let Some(job) = &resource.job {
            labels.insert("job".into(), job.clone());
        }
        if let Some(instance) = &resource.instance {
            labels.insert("instance".into(), instance.clone());
        }
        Ok(labels)
    }

    fn attribute_labels(
        &mut self,
        attributes: &[KeyValue],
        ignore: &[&str],
    ) -> Result<LabelSet, String> {
        let mut sorted: Vec<&KeyValue> = attributes
            .iter()
            .filter(|kv| !ignore.contains(&kv.key.as_str()))
            .collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        let mut named = Vec::with_capacity(sorted.len());
        for kv in sorted {
            let name = if self.namer.utf8 {
                kv.key.clone()
            } else {
                self.label_name(&kv.key)?
            };
            named.push(Label {
                name,
                value: value_string(kv.value.as_ref()),
            });
        }
        // Stable: attributes whose names collide stay in key order, and their values
        // are joined with `;` in that order (an empty one contributes nothing until a
        // value is set, as `labels.Builder` does).
        named.sort_by(|a, b| a.name.cmp(&b.name));
        let mut labels: Vec<Label> = Vec::with_capacity(named.len());
        for label in named {
            match labels.last_mut() {
                Some(last) if last.name == label.name => {
                    if last.value.is_empty() || self.namer.utf8 {
                        last.value = label.value;
                    } else {
                        last.value.push(';');
                        last.value.push_str(&label.value);
                    }
                }
                _ => labels.push(label),
            }
        }
        labels.retain(|label| !label.value.is_empty());
        Ok(LabelSet(labels))
    }

    /// Appends one series, holding the request to its caps.
    fn push(
        &mut self,
        labels: LabelSet,
        mut series: TimeSeries,
        origin: usize,
    ) -> Result<(), CodecError> {
        if self.out.request.timeseries.len() >= self.caps.max_series {
            return Err(too_many_series(self.caps));
        }
        self.label_bytes += labels
            .0
            .iter()
            .map(|label| label.name.len() + label.value.len())
            .sum::<usize>();
        series.labels = labels.0;
        if self.label_bytes > self.caps.max_label_bytes {
            return Err(CodecError::Invalid(format!(
                "the request translates to more than {} bytes of labels; send smaller batches",
                self.caps.max_label_bytes
            )));
        }
        self.out.request.timeseries.push(series);
        self.out.origin.push(Some(origin));
        Ok(())
    }

    /// A series of one sample.
    fn push_sample(
        &mut self,
        labels: LabelSet,
        value: f64,
        timestamp: i64,
        exemplars: Vec<Exemplar>,
        origin: usize,
    ) -> Result<(), CodecError> {
        self.push(
            labels,
            TimeSeries {
                samples: vec![Sample { value, timestamp }],
                exemplars,
                ..TimeSeries::default()
            },
            origin,
        )
    }

    /// `addGaugeNumberDataPoints`
    fn gauge_point(
        &mut self,
        name: &str,
        mut labels: LabelSet,
        point: &NumberDataPoint,
        _delta: bool,
    ) -> Result<(), CodecError> {
        labels.insert("__name__".into(), name.to_string());
        let id = self.next_point();
        let value = stale_or(point.flags, number_value(point));
        self.push_sample(labels, value, ms(point.time_unix_nano), Vec::new(), id)
    }

    /// `addSumNumberDataPoints`: as a gauge, with exemplars.
    fn sum_point(
        &mut self,
        name: &str,
        mut labels: LabelSet,
        point: &NumberDataPoint,
        _delta: bool,
    ) -> Result<(), CodecError> {
        labels.insert("__name__".into(), name.to_string());
        let id = self.next_point();
        let value = stale_or(point.flags, number_value(point));
        let exemplars = exemplars(&point.exemplars);
        self.push_sample(labels, value, ms(point.time_unix_nano), exemplars, id)
    }

    /// `addHistogramDataPoints`: `_sum` (when set), `_count`, a cumulative
    /// `_bucket{le}` per bound and `le="+Inf"` holding the count; each exemplar on the
    /// first bucket whose bound is not below its value.
    fn histogram_point(
        &mut self,
        name: &str,
        labels: LabelSet,
        point: &HistogramDataPoint,
        _delta: bool,
    ) -> Result<(), CodecError> {
        let id = self.next_point();
        let timestamp = ms(point.time_unix_nano);
        let with = |suffix: &str, extra: Option<(&str, String)>| {
            let mut labels = labels.clone();
            if let Some((name, value)) = extra {
                labels.insert(name.to_string(), value);
            }
            labels.insert("__name__".into(), format!("{name}{suffix}"));
            labels
        };
        if let Some(sum) = point.sum {
            let value = stale_or(point.flags, sum);
            self.push_sample(with("_sum", None), value, timestamp, Vec::new(), id)?;
        }
        let count = stale_or(point.flags, point.count as f64);
        self.push_sample(with("_count", None), count, timestamp, Vec::new(), id)?;
        let mut exemplars = exemplars(&point.exemplars);
        exemplars.sort_by(|a, b| a.value.total_cmp(&b.value));
        let mut exemplars = exemplars.into_iter().peekable();
        let mut cumulative = 0u64;
        for (&bound, &bucket) in point.explicit_bounds.iter().zip(&point.bucket_counts) {
            cumulative = cumulative.saturating_add(bucket);
            let mut in_bucket = Vec::new();
            while let Some(exemplar) = exemplars.next_if(|exemplar| exemplar.value <= bound) {
                in_bucket.push(exemplar);
            }
            let value = stale_or(point.flags, cumulative as f64);
            self.push_sample(
                with("_bucket", Some(("le", format_float(bound)))),
                value,
                timestamp,
                in_bucket,
                id,
            )?;
        }
        let value = stale_or(point.flags, point.count as f64);
        self.push_sample(
            with("_bucket", Some(("le", "+Inf".into()))),
            value,
            timestamp,
            exemplars.collect(),
            id,
        )
    }

    /// `addSummaryDataPoints`: `_sum`, `_count`, and a `{quantile}` series each.
    fn summary_point(
        &mut self,
        name: &str,
        labels: LabelSet,
        point: &SummaryDataPoint,
        _delta: bool,
    ) -> Result<(), CodecError> {
        let id = self.next_point();
        let timestamp = ms(point.time_unix_nano);
        let with = |suffix: &str, quantile: Option<f64>| {
            let mut labels = labels.clone();
            if let Some(quantile) = quantile {
                labels.insert("quantile".into(), format_float(quantile));
            }
            labels.insert("__name__".into(), format!("{name}{suffix}"));
            labels
        };
        let sum = stale_or(point.flags, point.sum);
        self.push_sample(with("_sum", None), sum, timestamp, Vec::new(), id)?;
        let count = stale_or(point.flags, point.count as f64);
        self.push_sample(with("_count", None), count, timestamp, Vec::new(), id)?;
        for quantile in &point.quantile_values {
            let value = stale_or(point.flags, quantile.value);
            self.push_sample(
                with("", Some(quantile.quantile)),
                value,
                timestamp,
                Vec::new(),
                id,
            )?;
        }
        Ok(())
    }

    /// `addResourceTargetInfo`: only for a resource with attributes besides the
    /// identifying ones, and only when `job` or `instance` results.
    fn target_info(
        &mut self,
        attributes: &[KeyValue],
        resource: &ResourceLabels,
        earliest_ns: u64,
        latest_ns: u64,
    ) -> Result<(), CodecError> {
        let identifying = attributes
            .iter()
            .filter(|kv| IDENTIFYING.contains(&kv.key.as_str()))
            .count();
        if attributes.len() == identifying {
            return Ok(());
        }
        let ignore: &[&str] = if self.config.keep_identifying_resource_attributes {
            &[]
        } else {
            &IDENTIFYING
        };
        let mut labels = match self.attribute_labels(attributes, ignore) {
            Ok(labels) => labels,
            Err(reason) => {
                self.out.reject(0, format!("target_info: {reason}"));
                return Ok(());
            }
        };
        if let Some(job) = &resource.job {
            labels.insert("job".into(), job.clone());
        }
        if let Some(instance) = &resource.instance {
            labels.insert("instance".into(), instance.clone());
        }
        if !labels.contains_key("job") && !labels.contains_key("instance") {
            return Ok(());
        }
        labels.insert("__name__".into(), TARGET_INFO.into());
        let labels: Vec<Label> = labels.0;
        let bytes: usize = labels.iter().map(|l| l.name.len() + l.value.len()).sum();
        let new_series = !self.target_info.contains_key(&labels);
        if new_series {
            self.label_bytes += bytes;
            if self.label_bytes > self.caps.max_label_bytes {
                return Err(CodecError::Invalid(format!(
                    "the request translates to more than {} bytes of labels; send smaller batches",
                    self.caps.max_label_bytes
                )));
            }
        }
        let timestamps = self.target_info.entry(labels).or_default();
        let window = TARGET_INFO_INTERVAL_NS * (TARGET_INFO_MAX_SAMPLES - 1);
        let mut t = earliest_ns.max(latest_ns.saturating_sub(window));
        while t < latest_ns {
            timestamps.insert(ms(t));
            t = t.saturating_add(TARGET_INFO_INTERVAL_NS);
        }
        timestamps.insert(ms(latest_ns));
        Ok(())
    }
}

/// Labels sorted by name, each name once (what `labels.Builder` keeps).
#[derive(Clone, Debug, Default)]
struct LabelSet(Vec<Label>);

impl LabelSet {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|label| label.name.as_str().cmp(name))
    }

    /// Sets `name` to `value`, replacing any value it had.
    fn insert(&mut self, name: String, value: String) {
        match self.position(&name) {
            Ok(index) => self.0[index].value = value,
            Err(index) => self.0.insert(index, Label { name, value }),
        }
    }

    /// `labels.Builder.Set`: an empty value removes the label.
    fn set(&mut self, name: String, value: String) {
        if value.is_empty() {
            if let Ok(index) = self.position(&name) {
                self.0.remove(index);
            }
        } else {
            self.insert(name, value);
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.position(name)
            .ok()
            .map(|index| self.0[index].value.as_str())
    }

    fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }
}

/// Nanoseconds to milliseconds (`convertTimeStamp`).
fn ms(unix_nano: u64) -> i64 {
    i64::try_from(unix_nano / 1_000_000).unwrap_or(i64::MAX)
}

/// A point flagged "no recorded value" is a stale marker.
fn stale_or(flags: u32, value: f64) -> f64 {
    if flags & NO_RECORDED_VALUE != 0 {
        f64::from_bits(STALE_NAN_BITS)
    } else {
        value
    }
}

/// An int or double point's value; an unset one is 0, as upstream.
fn number_value(point: &NumberDataPoint) -> f64 {
    match point.value {
        Some(number_data_point::Value::AsDouble(value)) => value,
        Some(number_data_point::Value::AsInt(value)) => value as f64,
        None => 0.0,
    }
}

/// `getPromExemplars`: value and time, `trace_id` and `span_id` in hex, and the
/// filtered attributes unless they would take the labels past 128 characters. An
/// exemplar without a value is skipped.
fn exemplars(exemplars: &[OtelExemplar]) -> Vec<Exemplar> {
    exemplars
        .iter()
        .filter_map(|exemplar| {
            let value = match exemplar.value? {
                exemplar::Value::AsDouble(value) => value,
                exemplar::Value::AsInt(value) => value as f64,
            };
            let mut labels = Vec::new();
            let mut runes = 0;
            for (name, id) in [
                ("trace_id", &exemplar.trace_id),
                ("span_id", &exemplar.span_id),
            ] {
                if !id.is_empty() && id.iter().any(|&byte| byte != 0) {
                    let value = hex::encode(id);
                    runes += name.len() + value.len();
                    labels.push(Label {
                        name: name.into(),
                        value,
                    });
                }
            }
            let attributes: Vec<(String, String)> = exemplar
                .filtered_attributes
                .iter()
                .map(|kv| (kv.key.clone(), value_string(kv.value.as_ref())))
                .collect();
            runes += attributes
                .iter()
                .map(|(k, v)| k.chars().count() + v.chars().count())
                .sum::<usize>();
            if runes <= MAX_EXEMPLAR_RUNES {
                labels.extend(
                    attributes
                        .into_iter()
                        .map(|(name, value)| Label { name, value }),
                );
            }
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            Some(Exemplar {
                labels,
                value,
                timestamp: ms(exemplar.time_unix_nano),
            })
        })
        .collect()
}

/// An attribute value as a label value (pdata's `Value.AsString`): strings as they
/// are, numbers in decimal (doubles as JavaScript prints them), bytes in base64,
/// arrays and maps as JSON.
pub fn value_string(value: Option<&AnyValue>) -> String {
    use base64::Engine;
    match value.and_then(|value| value.value.as_ref()) {
        None => String::new(),
        Some(AnyValueKind::StringValue(text)) => text.clone(),
        Some(AnyValueKind::BoolValue(flag)) => flag.to_string(),
        Some(AnyValueKind::IntValue(number)) => number.to_string(),
        Some(AnyValueKind::DoubleValue(number)) => format_es6(*number),
        Some(AnyValueKind::BytesValue(bytes)) => {
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
        Some(AnyValueKind::StringValueStrindex(index)) => index.to_string(),
        Some(other @ (AnyValueKind::ArrayValue(_) | AnyValueKind::KvlistValue(_))) => {
            json_value(Some(other)).to_string()
        }
    }
}

fn json_value(value: Option<&AnyValueKind>) -> serde_json::Value {
    use base64::Engine;
    use serde_json::Value as Json;
    match value {
        None => Json::Null,
        Some(AnyValueKind::StringValue(text)) => Json::String(text.clone()),
        Some(AnyValueKind::BoolValue(flag)) => Json::Bool(*flag),
        Some(AnyValueKind::IntValue(number)) => Json::from(*number),
        Some(AnyValueKind::DoubleValue(number)) => {
            serde_json::Number::from_f64(*number).map_or(Json::Null, Json::Number)
        }
        Some(AnyValueKind::BytesValue(bytes)) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Some(AnyValueKind::StringValueStrindex(index)) => Json::from(*index),
        Some(AnyValueKind::ArrayValue(array)) => Json::Array(
            array
                .values
                .iter()
                .map(|value| json_value(value.value.as_ref()))
                .collect(),
        ),
        Some(AnyValueKind::KvlistValue(list)) => Json::Object(
            list.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        json_value(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                    )
                })
                .collect(),
        ),
    }
}

/// A double as pdata prints an attribute (ES6 number to string): plain decimal, and
/// exponent form below 1e-6 and from 1e21 (`1e-7`, `1e+21`).
fn format_es6(number: f64) -> String {
    if !number.is_finite() {
        // What pdata's AsString gives, JSON having no such number.
        let go = if number.is_nan() {
            "NaN"
        } else if number > 0.0 {
            "+Inf"
        } else {
            "-Inf"
        };
        return format!("json: unsupported value: {go}");
    }
    let magnitude = number.abs();
    if magnitude != 0.0 && !(1e-6..1e21).contains(&magnitude) {
        let text = format!("{number:e}");
        match text.split_once('e') {
            Some((mantissa, exponent)) if !exponent.starts_with('-') => {
                format!("{mantissa}e+{exponent}")
            }
            _ => text,
        }
    } else {
        number.to_string()
    }
}

/// A bound or quantile as a label value (Go's `FormatFloat(f, 'f', -1, 64)`): the
/// shortest decimal that reads back the same, `+Inf`, `-Inf`, `NaN`.
fn format_float(number: f64) -> String {
    if number.is_nan() {
        "NaN".into()
    } else if number == f64::INFINITY {
        "+Inf".into()
    } else if number == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        number.to_string()
    }
}

/// A translated request scoped to the tenant.
#[derive(Debug)]
pub struct Enforced {
    pub request: WriteRequest,
    pub stats: WriteStats,
    pub accepted_points: u64,
    pub rejected_points: u64,
    /// Why points were rejected; empty when none were.
    pub message: String,
}

/// Puts every translated series through the remote-write checks and label enforcement
/// ([`write::enforce_series`]): the tenant label and extra labels replace whatever a
/// data-point or resource attribute of that name said (or, under
/// `on_conflict = "reject"`, the point is refused). A series that fails takes the data
/// point it came from with it, so a point is forwarded whole or not at all.
pub fn enforce(
    translated: Translated,
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
) -> Result<Enforced, CodecError> {
    let Translated {
        mut request,
        origin,
        points,
        mut rejected,
        mut reasons,
        more_reasons,
    } = translated;
    let mut out = Translated {
        reasons: std::mem::take(&mut reasons),
        more_reasons,
        ..Translated::default()
    };
    let newest_allowed = write::newest_allowed_ms(now_ms, limits);
    let mut failed = vec![false; points];
    let mut keep = vec![true; request.timeseries.len()];
    for (index, series) in request.timeseries.iter_mut().enumerate() {
        if origin[index].is_some_and(|point| failed[point]) {
            keep[index] = false;
            continue;
        }
        if let Err(err) = write::enforce_series(series, policy, limits, newest_allowed) {
            keep[index] = false;
            match origin[index] {
                Some(point) => {
                    failed[point] = true;
                    out.reject(1, err.to_string());
                }
                None => out.reject(0, err.to_string()),
            }
        }
    }
    rejected += out.rejected;
    // Series that came before a failing series of the same point go too.
    let mut index = 0;
    request.timeseries.retain(|_| {
        let kept = keep[index] && origin[index].is_none_or(|point| !failed[point]);
        index += 1;
        kept
    });
    write::check_series_count(request.timeseries.len(), limits)?;
    let mut stats = WriteStats {
        series: request.timeseries.len(),
        ..WriteStats::default()
    };
    for series in &request.timeseries {
        stats.samples += series.samples.len();
        stats.histograms += series.histograms.len();
        stats.exemplars += series.exemplars.len();
    }
    let failed_points = failed.iter().filter(|&&failed| failed).count() as u64;
    Ok(Enforced {
        request,
        stats,
        accepted_points: points as u64 - failed_points,
        rejected_points: rejected,
        message: out.message(),
    })
}

#[cfg(test)]
mod tests;
