//! Remote write 2.0 (`io.prometheus.write.v2.Request`, spec 2.0-rc.4), the reference
//! path: decode with prost, validate, enforce the tenant's labels in the symbol table,
//! and convert to remote write 1.0 for backends that only speak 1.0 (DESIGN §6, §9;
//! PROTOCOL.md §1.2, §2 items 12–43).
//!
//! Validation mirrors the 1.0 path and shares its series checks ([`super::write`]), so
//! both versions refuse the same series with the same words. What 2.0 adds:
//! - the symbol table must be present when there are series, and `symbols[0]` must be
//!   the empty string; every reference (labels, exemplar labels, metadata help and
//!   unit) must index it, and label references come in (name, value) pairs;
//! - a series carries samples or histograms, never both (exemplar-only series, which
//!   Prometheus sends, are accepted);
//! - rc.3 senders (Prometheus 2.54–3.7) put the created timestamp in `TimeSeries`
//!   field 6, rc.4 reserves it and has `start_timestamp` on each sample and histogram:
//!   a field-6 value fills the zero `start_timestamp`s of its series and is then
//!   cleared, so what promgate forwards is rc.4.
//!
//! Enforcement appends each enforced label's name and value to the symbol table once
//! (reusing an equal symbol when there is one), removes a client-sent tenant label (or
//! refuses it under `on_conflict = "reject"`), and rewrites `labels_refs` sorted by the
//! resolved names. Exemplar labels, sample bits (stale markers) and histogram buckets
//! are untouched. The relay's request path does not use this module yet: 2.0 bodies are
//! still answered 415 there.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::write::{
    check_newest, check_series_count, enforce_labels, newest_allowed_ms, LabelPolicy, LabelRef,
    WriteStats,
};
use super::CodecError;
use crate::config::Limits;
use crate::proto::write_v2::{self as v2, Request};
use crate::proto::{self as v1, WriteRequest};

/// Decodes a decompressed 2.0 request. Unknown fields are dropped by prost and never
/// forwarded.
pub fn decode(decoded: &[u8]) -> Result<Request, CodecError> {
    Request::decode(decoded).map_err(|err| CodecError::Protobuf(err.to_string()))
}

/// A series label as the shared checks see it: the resolved strings and their symbols.
#[derive(Clone, Debug)]
pub(crate) struct SymbolLabel<'a> {
    pub name: &'a str,
    pub value: &'a str,
    pub refs: (u32, u32),
}

impl LabelRef for SymbolLabel<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn value(&self) -> &str {
        self.value
    }
}

/// Validates every series and enforces the tenant's labels in place. On error nothing of
/// the request may be forwarded.
pub fn validate_and_enforce(
    request: &mut Request,
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
) -> Result<WriteStats, CodecError> {
    check_series_count(request.timeseries.len(), limits)?;
    if request.timeseries.is_empty() {
        return Ok(WriteStats::default());
    }
    match request.symbols.first() {
        None => {
            return Err(CodecError::Invalid(
                "request has series but no symbol table".into(),
            ))
        }
        Some(first) if !first.is_empty() => {
            return Err(CodecError::Invalid(
                "the symbol table must start with the empty string".into(),
            ))
        }
        Some(_) => {}
    }
    let (enforced_refs, appended) = intern_enforced(&request.symbols, policy);
    request
        .symbols
        .extend(appended.into_iter().map(str::to_string));
    let Request {
        symbols,
        timeseries,
    } = request;
    let symbols: &[String] = symbols;
    let enforced = enforced_labels(policy, &enforced_refs);
    let newest_allowed = newest_allowed_ms(now_ms, limits);
    let mut stats = WriteStats {
        series: timeseries.len(),
        ..WriteStats::default()
    };
    for series in timeseries.iter_mut() {
        let newest = series
            .samples
            .iter()
            .map(|sample| sample.timestamp)
            .chain(
                series
                    .histograms
                    .iter()
                    .map(|histogram| histogram.timestamp),
            )
            .max();
        let checked = check_series(
            &SeriesFacts {
                histogram_problem: series.histograms.iter().find_map(histogram_problem),
                labels_refs: &series.labels_refs,
                has_samples: !series.samples.is_empty(),
                has_histograms: !series.histograms.is_empty(),
                metadata: series
                    .metadata
                    .as_ref()
                    .map(|metadata| (metadata.r#type, metadata.help_ref, metadata.unit_ref)),
                newest,
            },
            series
                .exemplars
                .iter()
                .map(|exemplar| exemplar.labels_refs.as_slice()),
            symbols,
            &enforced,
            policy,
            limits,
            newest_allowed,
        )?;
        series.labels_refs = checked.labels_refs;
        stats.metadata += usize::from(checked.counts_metadata);
        carry_created_timestamp(series);
        stats.samples += series.samples.len();
        stats.histograms += series.histograms.len();
        stats.exemplars += series.exemplars.len();
    }
    Ok(stats)
}

/// The enforced labels with their symbol references.
pub(crate) fn enforced_labels<'p>(
    policy: &'p LabelPolicy,
    refs: &[(u32, u32)],
) -> Vec<SymbolLabel<'p>> {
    policy
        .enforced
        .iter()
        .zip(refs)
        .map(|(label, &refs)| SymbolLabel {
            name: &label.name,
            value: &label.value,
            refs,
        })
        .collect()
}

/// What the checks of one series look at (both paths read it their own way).
pub(crate) struct SeriesFacts<'x> {
    pub labels_refs: &'x [u32],
    pub has_samples: bool,
    pub has_histograms: bool,
    /// (type, help_ref, unit_ref)
    pub metadata: Option<(i32, u32, u32)>,
    /// The newest sample or histogram timestamp.
    pub newest: Option<i64>,
    /// The first inconsistent histogram's problem ([`histogram_problem`]).
    pub histogram_problem: Option<String>,
}

/// A series that passed its checks: its label references, enforced and sorted, and
/// whether its metadata counts.
pub(crate) struct CheckedSeries {
    pub labels_refs: Vec<u32>,
    pub counts_metadata: bool,
}

/// Every check of one series, in the order the reference has always made them, and the
/// tenant's labels enforced: the one place both 2.0 paths refuse a series.
pub(crate) fn check_series<'e, S: AsRef<str>>(
    facts: &SeriesFacts<'_>,
    exemplar_refs: impl Iterator<Item = &'e [u32]>,
    symbols: &[S],
    enforced: &[SymbolLabel<'_>],
    policy: &LabelPolicy,
    limits: &Limits,
    newest_allowed: i64,
) -> Result<CheckedSeries, CodecError> {
    let mut labels = resolve_pairs(facts.labels_refs, symbols, "label")?;
    enforce_labels(&mut labels, enforced, policy.on_conflict, limits)?;
    if facts.has_samples && facts.has_histograms {
        return Err(CodecError::Invalid(format!(
            "series {} has both samples and histograms; send them as two series",
            describe(&labels)
        )));
    }
    for refs in exemplar_refs {
        resolve_pairs(refs, symbols, "exemplar label")?;
    }
    let mut counts_metadata = false;
    if let Some((kind, help_ref, unit_ref)) = facts.metadata {
        for (what, reference) in [("help", help_ref), ("unit", unit_ref)] {
            if symbol(symbols, reference).is_none() {
                return Err(CodecError::Invalid(format!(
                    "series {} has a metadata {what} reference {reference} outside the symbol table of {} entries",
                    describe(&labels),
                    symbols.len()
                )));
            }
        }
        counts_metadata = kind != 0 || help_ref != 0 || unit_ref != 0;
    }
    check_newest(&labels, facts.newest, newest_allowed, limits)?;
    if let Some(problem) = &facts.histogram_problem {
        return Err(CodecError::Invalid(format!(
            "series {} has a histogram {problem}",
            describe(&labels)
        )));
    }
    Ok(CheckedSeries {
        labels_refs: labels
            .iter()
            .flat_map(|label| [label.refs.0, label.refs.1])
            .collect(),
        counts_metadata,
    })
}

/// The symbols of each enforced label's name and value: an equal existing symbol (the
/// first), or one appended (once) to the table. Returns the references and the texts to
/// append, in order.
pub(crate) fn intern_enforced<'p, S: AsRef<str>>(
    symbols: &[S],
    policy: &'p LabelPolicy,
) -> (Vec<(u32, u32)>, Vec<&'p str>) {
    let wanted: HashSet<&str> = policy
        .enforced
        .iter()
        .flat_map(|label| [label.name.as_str(), label.value.as_str()])
        .collect();
    let mut known: HashMap<&str, u32> = HashMap::new();
    for (index, symbol) in symbols.iter().enumerate() {
        let symbol = symbol.as_ref();
        if wanted.contains(symbol) && !known.contains_key(symbol) {
            if let Some(&text) = wanted.get(symbol) {
                known.insert(text, u32::try_from(index).unwrap_or(u32::MAX));
            }
        }
    }
    let mut appended: Vec<&'p str> = Vec::new();
    let mut reference = |text: &'p str| -> u32 {
        if let Some(&found) = known.get(text) {
            return found;
        }
        let index = u32::try_from(symbols.len() + appended.len()).unwrap_or(u32::MAX);
        appended.push(text);
        known.insert(text, index);
        index
    };
    let refs = policy
        .enforced
        .iter()
        .map(|label| {
            let name = reference(&label.name);
            let value = reference(&label.value);
            (name, value)
        })
        .collect();
    (refs, appended)
}

pub(crate) fn symbol<S: AsRef<str>>(symbols: &[S], reference: u32) -> Option<&str> {
    symbols
        .get(usize::try_from(reference).ok()?)
        .map(AsRef::as_ref)
}

/// Resolves (name, value) reference pairs against the symbol table.
fn resolve_pairs<'a, S: AsRef<str>>(
    refs: &[u32],
    symbols: &'a [S],
    what: &str,
) -> Result<Vec<SymbolLabel<'a>>, CodecError> {
    if refs.len() % 2 != 0 {
        return Err(CodecError::Invalid(format!(
            "a series has an odd number of {what} references ({}); they come in name/value pairs",
            refs.len()
        )));
    }
    refs.chunks_exact(2)
        .map(|pair| {
            let (name_ref, value_ref) = (pair[0], pair[1]);
            match (symbol(symbols, name_ref), symbol(symbols, value_ref)) {
                (Some(name), Some(value)) => Ok(SymbolLabel {
                    name,
                    value,
                    refs: (name_ref, value_ref),
                }),
                _ => Err(CodecError::Invalid(format!(
                    "a series has a {what} reference outside the symbol table of {} entries",
                    symbols.len()
                ))),
            }
        })
        .collect()
}

/// `{name="value", …}` for error messages (at most the first few labels).
fn describe(labels: &[SymbolLabel<'_>]) -> String {
    let shown: Vec<String> = labels
        .iter()
        .take(8)
        .map(|label| format!("{}={:?}", label.name, label.value))
        .collect();
    format!("{{{}}}", shown.join(", "))
}

/// rc.3's series-wide created timestamp becomes rc.4's per-sample start timestamp where
/// that is unset; field 6 is then cleared (rc.4 reserves it).
pub(crate) fn carry_created_timestamp(series: &mut v2::TimeSeries) {
    let created = std::mem::take(&mut series.created_timestamp);
    if created == 0 {
        return;
    }
    for sample in &mut series.samples {
        if sample.start_timestamp == 0 {
            sample.start_timestamp = created;
        }
    }
    for histogram in &mut series.histograms {
        if histogram.start_timestamp == 0 {
            histogram.start_timestamp = created;
        }
    }
}

/// Converts a validated, enforced 2.0 request into 1.0 for a backend that speaks only
/// 1.0: labels resolved, samples, histograms (every bucket and both oneof arms as sent)
/// and exemplars copied. 1.0 has no start timestamp, so start timestamps are not
/// carried. Metadata becomes 1.0 `MetricMetadata` (one per metric name, first seen wins)
/// only when `with_metadata`: 1.0 metadata has no labels and cannot be scoped by the
/// tenant label, so only backends that get the tenant in a header may receive it.
pub fn to_v1(request: &Request, with_metadata: bool) -> WriteRequest {
    let symbols = &request.symbols;
    let text = |reference: u32| symbol(symbols, reference).unwrap_or_default().to_string();
    let labels = |refs: &[u32]| -> Vec<v1::Label> {
        refs.chunks_exact(2)
            .map(|pair| v1::Label {
                name: text(pair[0]),
                value: text(pair[1]),
            })
            .collect()
    };
    let timeseries = request
        .timeseries
        .iter()
        .flat_map(|series| {
            let exemplars: Vec<v1::Exemplar> = series
                .exemplars
                .iter()
                .map(|exemplar| exemplar_to_v1(exemplar, symbols))
                .collect();
            let apart = exemplars_apart(series);
            let first = v1::TimeSeries {
                labels: labels(&series.labels_refs),
                samples: series.samples.iter().map(sample_to_v1).collect(),
                exemplars: if apart { Vec::new() } else { exemplars.clone() },
                histograms: series.histograms.iter().map(histogram_to_v1).collect(),
            };
            let second = apart.then(|| v1::TimeSeries {
                labels: labels(&series.labels_refs),
                exemplars,
                ..v1::TimeSeries::default()
            });
            std::iter::once(first).chain(second)
        })
        .collect();
    WriteRequest {
        timeseries,
        metadata: if with_metadata {
            metadata_of(request)
        } else {
            Vec::new()
        },
    }
}

/// The encoded 1.0 request [`to_v1`] would give, byte for byte, written straight from
/// the symbol table: no owned label strings are built for the series (the relay's path
/// for 1.0 backends; `to_v1` is its reference).
pub fn encode_v1(request: &Request, with_metadata: bool) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, message, WireType};
    let symbols = &request.symbols;
    let mut out = Vec::with_capacity(request.encoded_len() + request.encoded_len() / 2);
    let mut series_bytes = Vec::new();
    for series in &request.timeseries {
        series_bytes.clear();
        for pair in series.labels_refs.chunks_exact(2) {
            let name = symbol(symbols, pair[0]).unwrap_or_default();
            let value = symbol(symbols, pair[1]).unwrap_or_default();
            encode_label(name, value, &mut series_bytes);
        }
        for sample in &series.samples {
            message::encode(2, &sample_to_v1(sample), &mut series_bytes);
        }
        let labels_end = series_bytes.len();
        let apart = exemplars_apart(series);
        if !apart {
            for exemplar in &series.exemplars {
                message::encode(3, &exemplar_to_v1(exemplar, symbols), &mut series_bytes);
            }
        }
        for histogram in &series.histograms {
            message::encode(4, &histogram_to_v1(histogram), &mut series_bytes);
        }
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(series_bytes.len() as u64, &mut out);
        out.extend_from_slice(&series_bytes);
        if apart {
            series_bytes.truncate(labels_end);
            for exemplar in &series.exemplars {
                message::encode(3, &exemplar_to_v1(exemplar, symbols), &mut series_bytes);
            }
            encode_key(1, WireType::LengthDelimited, &mut out);
            encode_varint(series_bytes.len() as u64, &mut out);
            out.extend_from_slice(&series_bytes);
        }
    }
    if with_metadata {
        for metadata in metadata_of(request) {
            message::encode(3, &metadata, &mut out);
        }
    }
    out
}

/// What makes a native histogram inconsistent, as Prometheus' own validation judges it
/// (`ValidateHistogram`, the remote write compliance suite's `bad_count_histogram`): its
/// spans must cover exactly its buckets, and an integer histogram's bucket counts
/// (decoded from their deltas) must not be negative and, with the zero bucket, add up to
/// its count (or at most to it when its sum is NaN). A float histogram's count is not
/// compared: float rounding would refuse honest ones.
pub(crate) fn histogram_problem(histogram: &v2::Histogram) -> Option<String> {
    let covered =
        |spans: &[v2::BucketSpan]| -> u64 { spans.iter().map(|span| u64::from(span.length)).sum() };
    let is_float = matches!(histogram.count, Some(v2::histogram::Count::CountFloat(_)));
    let sides = [
        (
            "negative",
            &histogram.negative_spans,
            histogram.negative_deltas.len(),
            histogram.negative_counts.len(),
        ),
        (
            "positive",
            &histogram.positive_spans,
            histogram.positive_deltas.len(),
            histogram.positive_counts.len(),
        ),
    ];
    for (side, spans, deltas, counts) in sides {
        let buckets = if is_float { counts } else { deltas };
        if covered(spans) != buckets as u64 {
            return Some(format!(
                "whose {side} spans cover {} buckets but which holds {buckets}",
                covered(spans)
            ));
        }
    }
    if is_float {
        return None;
    }
    let count = match histogram.count {
        Some(v2::histogram::Count::CountInt(count)) => count,
        _ => 0,
    };
    let mut total: u128 = match histogram.zero_count {
        Some(v2::histogram::ZeroCount::ZeroCountInt(zero)) => u128::from(zero),
        _ => 0,
    };
    for deltas in [&histogram.negative_deltas, &histogram.positive_deltas] {
        let mut bucket: i128 = 0;
        for delta in deltas {
            bucket += i128::from(*delta);
            if bucket < 0 {
                return Some("with a negative bucket count".into());
            }
            total += bucket as u128;
        }
    }
    let count = u128::from(count);
    if histogram.sum.is_nan() {
        (total > count).then(|| {
            format!("whose buckets hold {total} observations, more than its count {count}")
        })
    } else {
        (total != count).then(|| {
            format!("whose count {count} is not the {total} observations its buckets hold")
        })
    }
}

/// Whether a series' exemplars go to a 1.0 backend as a series entry of their own, right
/// after its histograms: a 1.0 receiver appends an entry's exemplars before its
/// histograms (Prometheus 2.x does), so an exemplar of a histogram series it does not
/// hold yet would find no series and be dropped. Prometheus' own 1.0 sender sends them
/// apart too.
pub(crate) fn exemplars_apart(series: &v2::TimeSeries) -> bool {
    !series.histograms.is_empty() && !series.exemplars.is_empty()
}

/// `TimeSeries.labels` (field 1) holding one `Label`, as prost writes it: empty strings
/// are left out.
pub(crate) fn encode_label(name: &str, value: &str, out: &mut Vec<u8>) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let field_len = |text: &str| {
        if text.is_empty() {
            0
        } else {
            1 + encoded_len_varint(text.len() as u64) + text.len()
        }
    };
    encode_key(1, WireType::LengthDelimited, out);
    encode_varint((field_len(name) + field_len(value)) as u64, out);
    for (tag, text) in [(1, name), (2, value)] {
        if !text.is_empty() {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(text.len() as u64, out);
            out.extend_from_slice(text.as_bytes());
        }
    }
}

pub(crate) fn sample_to_v1(sample: &v2::Sample) -> v1::Sample {
    v1::Sample {
        value: sample.value,
        timestamp: sample.timestamp,
    }
}

pub(crate) fn exemplar_to_v1<S: AsRef<str>>(
    exemplar: &v2::Exemplar,
    symbols: &[S],
) -> v1::Exemplar {
    v1::Exemplar {
        labels: exemplar
            .labels_refs
            .chunks_exact(2)
            .map(|pair| v1::Label {
                name: symbol(symbols, pair[0]).unwrap_or_default().to_string(),
                value: symbol(symbols, pair[1]).unwrap_or_default().to_string(),
            })
            .collect(),
        value: exemplar.value,
        timestamp: exemplar.timestamp,
    }
}

/// 1.0 metadata: one per metric family with a type, first seen wins.
fn metadata_of(request: &Request) -> Vec<v1::MetricMetadata> {
    metadata_from(
        &request.symbols,
        request.timeseries.iter().map(|series| {
            (
                series.labels_refs.as_slice(),
                series
                    .metadata
                    .as_ref()
                    .map(|meta| (meta.r#type, meta.help_ref, meta.unit_ref)),
            )
        }),
    )
}

/// 1.0 metadata from each series' label references and (type, help_ref, unit_ref).
pub(crate) fn metadata_from<'x, S: AsRef<str>>(
    symbols: &[S],
    series: impl Iterator<Item = (&'x [u32], Option<(i32, u32, u32)>)>,
) -> Vec<v1::MetricMetadata> {
    let mut named = HashSet::new();
    let mut metadata = Vec::new();
    for (labels_refs, meta) in series {
        let Some((kind, help_ref, unit_ref)) = meta else {
            continue;
        };
        if kind == 0 {
            continue;
        }
        let family = labels_refs
            .chunks_exact(2)
            .find(|pair| symbol(symbols, pair[0]) == Some("__name__"))
            .and_then(|pair| symbol(symbols, pair[1]));
        if let Some(family) = family {
            if named.insert(family) {
                metadata.push(v1::MetricMetadata {
                    r#type: kind,
                    metric_family_name: family.to_string(),
                    help: symbol(symbols, help_ref).unwrap_or_default().to_string(),
                    unit: symbol(symbols, unit_ref).unwrap_or_default().to_string(),
                });
            }
        }
    }
    metadata
}

pub(crate) fn histogram_to_v1(histogram: &v2::Histogram) -> v1::Histogram {
    let spans = |spans: &[v2::BucketSpan]| -> Vec<v1::BucketSpan> {
        spans
            .iter()
            .map(|span| v1::BucketSpan {
                offset: span.offset,
                length: span.length,
            })
            .collect()
    };
    v1::Histogram {
        count: histogram.count.map(|count| match count {
            v2::histogram::Count::CountInt(value) => v1::histogram::Count::CountInt(value),
            v2::histogram::Count::CountFloat(value) => v1::histogram::Count::CountFloat(value),
        }),
        sum: histogram.sum,
        schema: histogram.schema,
        zero_threshold: histogram.zero_threshold,
        zero_count: histogram.zero_count.map(|count| match count {
            v2::histogram::ZeroCount::ZeroCountInt(value) => {
                v1::histogram::ZeroCount::ZeroCountInt(value)
            }
            v2::histogram::ZeroCount::ZeroCountFloat(value) => {
                v1::histogram::ZeroCount::ZeroCountFloat(value)
            }
        }),
        negative_spans: spans(&histogram.negative_spans),
        negative_deltas: histogram.negative_deltas.clone(),
        negative_counts: histogram.negative_counts.clone(),
        positive_spans: spans(&histogram.positive_spans),
        positive_deltas: histogram.positive_deltas.clone(),
        positive_counts: histogram.positive_counts.clone(),
        // Same numbers in both versions (UNKNOWN/UNSPECIFIED, YES, NO, GAUGE).
        reset_hint: histogram.reset_hint,
        timestamp: histogram.timestamp,
        custom_values: histogram.custom_values.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConflictPolicy;

    const NOW: i64 = 1_700_000_000_000;

    fn policy(on_conflict: ConflictPolicy) -> LabelPolicy {
        LabelPolicy::new(
            "tenant_id",
            "alpha",
            [("env".to_string(), "prod".to_string())],
            on_conflict,
        )
    }

    /// A request whose series are given as resolved label pairs; symbols in first-seen order.
    fn request(series: &[&[(&str, &str)]]) -> Request {
        let mut symbols = vec![String::new()];
        let mut intern = |text: &str| -> u32 {
            match symbols.iter().position(|symbol| symbol == text) {
                Some(index) => index as u32,
                None => {
                    symbols.push(text.to_string());
                    (symbols.len() - 1) as u32
                }
            }
        };
        let timeseries = series
            .iter()
            .map(|labels| v2::TimeSeries {
                labels_refs: labels
                    .iter()
                    .flat_map(|(name, value)| [intern(name), intern(value)])
                    .collect(),
                samples: vec![v2::Sample {
                    value: 1.5,
                    timestamp: NOW,
                    start_timestamp: 0,
                }],
                ..v2::TimeSeries::default()
            })
            .collect();
        Request {
            symbols,
            timeseries,
        }
    }

    fn resolved(request: &Request, index: usize) -> Vec<(String, String)> {
        request.timeseries[index]
            .labels_refs
            .chunks_exact(2)
            .map(|pair| {
                (
                    request.symbols[pair[0] as usize].clone(),
                    request.symbols[pair[1] as usize].clone(),
                )
            })
            .collect()
    }

    fn pairs(labels: &[(&str, &str)]) -> Vec<(String, String)> {
        labels
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn enforced_labels_are_interned_once_and_refs_sorted_by_name() {
        let mut sent = request(&[
            &[("__name__", "up"), ("job", "node")],
            &[("__name__", "up"), ("zone", "a")],
        ]);
        let symbols_before = sent.symbols.len();
        let stats = validate_and_enforce(
            &mut sent,
            &policy(ConflictPolicy::Override),
            &Limits::default(),
            NOW,
        )
        .expect("valid");
        assert_eq!(stats.series, 2);
        assert_eq!(stats.samples, 2);
        assert_eq!(
            sent.symbols.len(),
            symbols_before + 4,
            "tenant_id, alpha, env, prod once"
        );
        assert_eq!(
            resolved(&sent, 0),
            pairs(&[
                ("__name__", "up"),
                ("env", "prod"),
                ("job", "node"),
                ("tenant_id", "alpha")
            ])
        );
        assert_eq!(
            resolved(&sent, 1),
            pairs(&[
                ("__name__", "up"),
                ("env", "prod"),
                ("tenant_id", "alpha"),
                ("zone", "a")
            ])
        );
        assert_eq!(sent.symbols[0], "");
    }

    #[test]
    fn an_existing_equal_symbol_is_reused() {
        // "alpha" is already a symbol (a label value of the client's).
        let mut sent = request(&[&[("__name__", "up"), ("team", "alpha")]]);
        let before = sent.symbols.len();
        validate_and_enforce(
            &mut sent,
            &policy(ConflictPolicy::Override),
            &Limits::default(),
            NOW,
        )
        .expect("valid");
        assert_eq!(sent.symbols.len(), before + 3);
    }

    #[test]
    fn a_client_sent_tenant_label_is_replaced_or_refused() {
        let spoof: &[(&str, &str)] = &[("__name__", "up"), ("tenant_id", "beta")];
        let mut sent = request(&[spoof]);
        validate_and_enforce(
            &mut sent,
            &policy(ConflictPolicy::Override),
            &Limits::default(),
            NOW,
        )
        .expect("overridden");
        let labels = resolved(&sent, 0);
        assert_eq!(
            labels
                .iter()
                .filter(|(name, _)| name == "tenant_id")
                .count(),
            1
        );
        assert!(labels.contains(&("tenant_id".into(), "alpha".into())));
        let mut sent = request(&[spoof]);
        let err = validate_and_enforce(
            &mut sent,
            &policy(ConflictPolicy::Reject),
            &Limits::default(),
            NOW,
        )
        .expect_err("rejected");
        assert!(
            err.to_string().contains("belongs to another tenant"),
            "{err}"
        );
    }

    #[test]
    fn symbol_table_and_references_are_checked() {
        let limits = Limits::default();
        let enforce = |mut request: Request| {
            validate_and_enforce(
                &mut request,
                &policy(ConflictPolicy::Override),
                &limits,
                NOW,
            )
        };
        let mut missing = request(&[&[("__name__", "up")]]);
        missing.symbols.clear();
        assert!(enforce(missing)
            .expect_err("no table")
            .to_string()
            .contains("no symbol table"));
        let mut first = request(&[&[("__name__", "up")]]);
        first.symbols[0] = "x".into();
        assert!(enforce(first)
            .expect_err("bad first")
            .to_string()
            .contains("empty string"));
        let mut odd = request(&[&[("__name__", "up")]]);
        odd.timeseries[0].labels_refs.push(1);
        assert!(enforce(odd)
            .expect_err("odd")
            .to_string()
            .contains("odd number"));
        let mut out_of_range = request(&[&[("__name__", "up")]]);
        out_of_range.timeseries[0].labels_refs[1] = 99;
        assert!(enforce(out_of_range)
            .expect_err("range")
            .to_string()
            .contains("outside"));
        let mut exemplar = request(&[&[("__name__", "up")]]);
        exemplar.timeseries[0].exemplars.push(v2::Exemplar {
            labels_refs: vec![1, 42],
            value: 1.0,
            timestamp: NOW,
        });
        assert!(enforce(exemplar)
            .expect_err("exemplar")
            .to_string()
            .contains("exemplar label"));
        let mut metadata = request(&[&[("__name__", "up")]]);
        metadata.timeseries[0].metadata = Some(v2::Metadata {
            r#type: 1,
            help_ref: 77,
            unit_ref: 0,
        });
        assert!(enforce(metadata)
            .expect_err("help")
            .to_string()
            .contains("help reference"));
        let mut both = request(&[&[("__name__", "up")]]);
        both.timeseries[0].histograms.push(v2::Histogram::default());
        assert!(enforce(both)
            .expect_err("both")
            .to_string()
            .contains("both samples and histograms"));
        let mut future = request(&[&[("__name__", "up")]]);
        future.timeseries[0].samples[0].timestamp = NOW + 3_600_000;
        assert!(enforce(future).is_err());
        let mut no_name = request(&[&[("job", "x")]]);
        no_name.timeseries[0].samples[0].timestamp = NOW;
        assert!(enforce(no_name)
            .expect_err("name")
            .to_string()
            .contains("__name__"));
        assert_eq!(
            enforce(Request::default()).expect("an empty request is fine"),
            WriteStats::default()
        );
    }

    #[test]
    fn rc3_created_timestamps_become_start_timestamps() {
        let mut sent = request(&[&[("__name__", "requests_total")]]);
        sent.timeseries[0].created_timestamp = NOW - 60_000;
        sent.timeseries[0].samples.push(v2::Sample {
            value: 2.0,
            timestamp: NOW,
            start_timestamp: NOW - 5,
        });
        validate_and_enforce(
            &mut sent,
            &policy(ConflictPolicy::Override),
            &Limits::default(),
            NOW,
        )
        .expect("valid");
        let series = &sent.timeseries[0];
        assert_eq!(series.created_timestamp, 0, "field 6 is not forwarded");
        assert_eq!(series.samples[0].start_timestamp, NOW - 60_000);
        assert_eq!(
            series.samples[1].start_timestamp,
            NOW - 5,
            "a set one is kept"
        );
    }

    #[test]
    fn conversion_to_v1_keeps_values_buckets_exemplars_and_scoped_metadata() {
        let mut sent = request(&[&[("__name__", "latency_seconds")]]);
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        sent.timeseries[0].samples = vec![];
        sent.timeseries[0].histograms = vec![v2::Histogram {
            count: Some(v2::histogram::Count::CountFloat(3.0)),
            sum: 1.25,
            schema: 3,
            zero_threshold: 1e-9,
            zero_count: Some(v2::histogram::ZeroCount::ZeroCountFloat(0.0)),
            positive_spans: vec![v2::BucketSpan {
                offset: -2,
                length: 2,
            }],
            positive_counts: vec![1.0, 2.0],
            reset_hint: 3,
            timestamp: NOW,
            start_timestamp: NOW - 1000,
            ..v2::Histogram::default()
        }];
        sent.symbols.push("trace_id".into());
        sent.symbols.push("abc".into());
        sent.symbols.push("help text".into());
        sent.symbols.push("seconds".into());
        let last = sent.symbols.len() as u32;
        sent.timeseries[0].exemplars = vec![v2::Exemplar {
            labels_refs: vec![last - 4, last - 3],
            value: stale,
            timestamp: NOW,
        }];
        sent.timeseries[0].metadata = Some(v2::Metadata {
            r#type: 3,
            help_ref: last - 2,
            unit_ref: last - 1,
        });
        let stats = validate_and_enforce(
            &mut sent,
            &policy(ConflictPolicy::Override),
            &Limits::default(),
            NOW,
        )
        .expect("valid");
        assert_eq!(
            (stats.histograms, stats.exemplars, stats.metadata),
            (1, 1, 1)
        );
        let converted = to_v1(&sent, true);
        let series = &converted.timeseries[0];
        assert!(series
            .labels
            .iter()
            .any(|l| l.name == "tenant_id" && l.value == "alpha"));
        let histogram = &series.histograms[0];
        assert_eq!(histogram.count, Some(v1::histogram::Count::CountFloat(3.0)));
        assert_eq!(
            histogram.zero_count,
            Some(v1::histogram::ZeroCount::ZeroCountFloat(0.0))
        );
        assert_eq!(histogram.positive_spans[0].offset, -2);
        assert_eq!(histogram.positive_counts, vec![1.0, 2.0]);
        assert_eq!((histogram.schema, histogram.reset_hint), (3, 3));
        // The histogram's exemplar follows in an entry of its own, same labels.
        assert!(series.exemplars.is_empty());
        let apart = &converted.timeseries[1];
        assert_eq!(apart.labels, series.labels);
        assert!(apart.samples.is_empty() && apart.histograms.is_empty());
        let exemplar = &apart.exemplars[0];
        assert_eq!(exemplar.value.to_bits(), stale.to_bits(), "bits untouched");
        assert_eq!(
            exemplar.labels,
            vec![v1::Label {
                name: "trace_id".into(),
                value: "abc".into()
            }]
        );
        assert_eq!(
            converted.metadata,
            vec![v1::MetricMetadata {
                r#type: 3,
                metric_family_name: "latency_seconds".into(),
                help: "help text".into(),
                unit: "seconds".into(),
            }]
        );
        assert!(
            to_v1(&sent, false).metadata.is_empty(),
            "no metadata for label-scoped backends"
        );
    }

    #[test]
    fn a_v1_body_read_as_v2_is_empty_and_v2_bytes_round_trip() {
        let v1_body = v1::WriteRequest {
            timeseries: vec![v1::TimeSeries {
                labels: vec![v1::Label {
                    name: "__name__".into(),
                    value: "up".into(),
                }],
                samples: vec![v1::Sample {
                    value: 1.0,
                    timestamp: NOW,
                }],
                ..v1::TimeSeries::default()
            }],
            metadata: vec![],
        }
        .encode_to_vec();
        assert_eq!(
            decode(&v1_body).expect("reserved fields skipped"),
            Request::default()
        );
        let sent = request(&[&[("__name__", "up")]]);
        assert_eq!(decode(&sent.encode_to_vec()).expect("decodes"), sent);
    }

    #[test]
    fn inconsistent_histograms_are_named() {
        let histogram = |count: u64, sum: f64, deltas: Vec<i64>, length: u32| v2::Histogram {
            count: Some(v2::histogram::Count::CountInt(count)),
            sum,
            zero_count: Some(v2::histogram::ZeroCount::ZeroCountInt(1)),
            positive_spans: vec![v2::BucketSpan { offset: 0, length }],
            positive_deltas: deltas,
            ..v2::Histogram::default()
        };
        // Buckets 2, 3, 1 and the zero bucket's 1: 7 observations.
        assert_eq!(
            histogram_problem(&histogram(7, 1.0, vec![2, 1, -2], 3)),
            None
        );
        assert!(histogram_problem(&histogram(99, 1.0, vec![2, 1, -2], 3))
            .is_some_and(|problem| problem.contains("count 99")));
        assert!(histogram_problem(&histogram(7, 1.0, vec![2, 1, -2], 2))
            .is_some_and(|problem| problem.contains("spans cover 2 buckets")));
        assert!(histogram_problem(&histogram(7, 1.0, vec![2, -3], 2))
            .is_some_and(|problem| problem.contains("negative bucket")));
        // A NaN sum allows more observations than the buckets hold, never fewer.
        assert_eq!(
            histogram_problem(&histogram(9, f64::NAN, vec![2, 1, -2], 3)),
            None
        );
        assert!(histogram_problem(&histogram(5, f64::NAN, vec![2, 1, -2], 3)).is_some());
        // Float counts are not compared (rounding), spans still are.
        let float = v2::Histogram {
            count: Some(v2::histogram::Count::CountFloat(100.0)),
            positive_spans: vec![v2::BucketSpan {
                offset: 0,
                length: 1,
            }],
            positive_counts: vec![1.5],
            ..v2::Histogram::default()
        };
        assert_eq!(histogram_problem(&float), None);
    }
}
