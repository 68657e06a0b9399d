//! The zero-copy remote write 2.0 path: a decompressed `io.prometheus.write.v2.Request`
//! in, the tenant's request out — as 2.0 for 2.0 backends and converted to 1.0 for the
//! others — without decoding it into owned messages (DESIGN §6, §9).
//!
//! The symbol table stays borrowed from the input; the enforced labels' names and values
//! are appended to it once (or an equal symbol reused), and each series' `labels_refs` is
//! rewritten in sorted order. Samples, histograms and exemplars are checked against their
//! schema ([`wire::check`]) and copied as raw bytes into the 2.0 output; one holding an
//! unknown field, or a series with an rc.3 created timestamp to carry into its start
//! timestamps, is re-encoded, so nothing unknown is ever forwarded. Every check of a
//! series is the reference's own ([`super::rw2::check_series`]), so both paths refuse the same
//! series with the same words.
//!
//! The prost path in [`super::rw2`] is the reference: property tests and a fuzz target
//! hold that both accept and refuse the same inputs and that what this path writes
//! decodes to exactly what the reference produces ([`super::oracle::same_answer_v2`]).

use std::borrow::Cow;
use std::ops::Range;

use prost::encoding::{encode_key, encode_varint, message, WireType};
use prost::Message;

use super::ha::{ha_pair, HaGate};
use super::rw2::{
    check_series, encode_label, enforced_labels, exemplar_to_v1, histogram_problem,
    histogram_to_v1, intern_enforced, metadata_from, sample_to_v1, symbol, SeriesFacts,
};
use super::splice::label_set_span;
use super::wire::{self, Reader, WireError, LEN, TOP_DEPTH};
use super::write::{check_series_count, newest_allowed_ms, LabelPolicy, WriteStats};
use super::CodecError;
use crate::config::Limits;
use crate::proto::write_v2 as v2;
use crate::series::{SeriesKey, SeriesSpan};

/// Which forms of the request the backends need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forms {
    /// 2.0, for 2.0 backends.
    pub v2: bool,
    /// 1.0 with metadata (series first, metadata last: the series-only form for
    /// backends that must not get metadata is its prefix up to `v1_series_end`).
    pub v1: bool,
}

/// The rewritten request in the forms asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewritten2 {
    pub stats: WriteStats,
    pub v2: Option<Vec<u8>>,
    pub v1: Option<Vec<u8>>,
    /// Where the 1.0 form's series end (the rest is metadata).
    pub v1_series_end: usize,
}

/// Depth of prost's recursion budget at a series' own fields, and at the fields of the
/// messages a series holds.
const SERIES_DEPTH: u32 = TOP_DEPTH - 1;
const LEAF_DEPTH: u32 = SERIES_DEPTH - 1;

/// One series as read from the wire: well-formed, not yet checked. Its label references,
/// samples, histograms and exemplars are ranges of the request's [`Store`].
#[derive(Clone, Default)]
struct Parts {
    labels: Range<usize>,
    samples: Range<usize>,
    histograms: Range<usize>,
    exemplars: Range<usize>,
    metadata: Option<(i32, u32, u32)>,
    created: i64,
    newest: Option<i64>,
}

/// Everything the series of one request hold, in flat vectors (no allocation per
/// series).
#[derive(Default)]
struct Store<'a> {
    refs: Vec<u32>,
    samples: Vec<Cow<'a, [u8]>>,
    histograms: Vec<Cow<'a, [u8]>>,
    exemplars: Vec<Cow<'a, [u8]>>,
    /// Each exemplar's label references, by the exemplar's index.
    exemplar_refs: Vec<Vec<u32>>,
    /// The checked label references of every series, and each series' range of them.
    checked: Vec<u32>,
    checked_ranges: Vec<Range<usize>>,
}

/// Validates `decoded` and enforces the tenant's labels, writing the forms asked for.
/// On error nothing may be forwarded.
pub fn rewrite_v2(
    decoded: &[u8],
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
    forms: Forms,
) -> Result<Rewritten2, CodecError> {
    rewrite_v2_gated(decoded, policy, limits, now_ms, forms, None, None)
}

/// Decides which of a request's checked series are written (DESIGN §14): called once
/// with every series' identity under `key`, in order; it answers whether each may be
/// written. Refused series are left out of every form.
pub struct SeriesGate<'a> {
    pub key: &'a SeriesKey,
    pub admit: &'a mut dyn FnMut(&[SeriesSpan]) -> Vec<bool>,
}

/// As [`rewrite_v2`], with the tenant's HA pairs de-duplicated by `ha` first (DESIGN
/// §15, [`super::ha`]: a series carrying both HA labels loses its replica label, and is
/// left out when `ha` says so), then with the series `gate` admits only.
pub fn rewrite_v2_gated(
    decoded: &[u8],
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
    forms: Forms,
    ha: Option<HaGate<'_>>,
    gate: Option<SeriesGate<'_>>,
) -> Result<Rewritten2, CodecError> {
    let mut symbols: Vec<&str> = Vec::new();
    let mut raw_series: Vec<&[u8]> = Vec::new();
    let mut reader = Reader::new(decoded);
    while !reader.is_empty() {
        let (field, wire_type) = reader.key().map_err(protobuf)?;
        match (field, wire_type) {
            (4, LEN) => {
                let bytes = reader.length_delimited().map_err(protobuf)?;
                symbols.push(std::str::from_utf8(bytes).map_err(|_| protobuf(WireError::Utf8))?);
            }
            (5, LEN) => raw_series.push(reader.length_delimited().map_err(protobuf)?),
            (4 | 5, _) => return Err(protobuf(WireError::WrongWireType { field })),
            _ => reader.skip(wire_type, field, TOP_DEPTH).map_err(protobuf)?,
        }
    }
    // Every series must be well-formed before any is judged: prost refuses the whole
    // request for one malformed byte anywhere.
    let mut store = Store {
        refs: Vec::with_capacity(raw_series.len() * 12),
        samples: Vec::with_capacity(raw_series.len()),
        ..Store::default()
    };
    let mut series = Vec::with_capacity(raw_series.len());
    for bytes in &raw_series {
        series.push(read_series(bytes, &mut store)?);
    }

    check_series_count(series.len(), limits)?;
    if series.is_empty() {
        return Ok(write_forms(
            &symbols,
            &series,
            &store,
            forms,
            WriteStats::default(),
        ));
    }
    match symbols.first() {
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
    let (enforced_refs, appended) = intern_enforced(&symbols, policy);
    symbols.extend(appended);
    let enforced = enforced_labels(policy, &enforced_refs);
    let mut by_name: Vec<(&str, u32, u32)> = enforced
        .iter()
        .map(|label| (label.name, label.refs.0, label.refs.1))
        .collect();
    by_name.sort_unstable();
    let newest_allowed = newest_allowed_ms(now_ms, limits);
    let mut stats = WriteStats {
        series: series.len(),
        ..WriteStats::default()
    };
    store.checked = Vec::with_capacity(store.refs.len() + series.len() * 2 * by_name.len());
    store.checked_ranges = Vec::with_capacity(series.len());
    for parts in &mut series {
        let start = store.checked.len();
        let fast = plain_series(parts, &store, &symbols, &by_name, limits, newest_allowed);
        match fast {
            Some(counts_metadata) => {
                splice_refs(
                    &store.refs[parts.labels.clone()],
                    &symbols,
                    &by_name,
                    &mut store.checked,
                );
                stats.metadata += usize::from(counts_metadata);
            }
            None => {
                let checked = check_series(
                    &SeriesFacts {
                        histogram_problem: first_histogram_problem(parts, &store),
                        labels_refs: &store.refs[parts.labels.clone()],
                        has_samples: !parts.samples.is_empty(),
                        has_histograms: !parts.histograms.is_empty(),
                        metadata: parts.metadata,
                        newest: parts.newest,
                    },
                    store.exemplar_refs[parts.exemplars.clone()]
                        .iter()
                        .map(Vec::as_slice),
                    &symbols,
                    &enforced,
                    policy,
                    limits,
                    newest_allowed,
                )?;
                store.checked.extend_from_slice(&checked.labels_refs);
                stats.metadata += usize::from(checked.counts_metadata);
            }
        }
        store.checked_ranges.push(start..store.checked.len());
        stats.samples += parts.samples.len();
        stats.histograms += parts.histograms.len();
        stats.exemplars += parts.exemplars.len();
        carry_created_timestamp(parts, &mut store)?;
    }
    if let Some(ha) = ha {
        dedupe_series(ha, limits, &symbols, &mut series, &mut store, &mut stats);
    }
    if let Some(gate) = gate {
        admit_series(gate, &symbols, &mut series, &mut store, &mut stats);
    }
    Ok(write_forms(&symbols, &series, &store, forms, stats))
}

/// Takes the replica label out of the checked labels of each series carrying both HA
/// labels, and leaves out the series `ha` refuses (as [`admit_series`] does).
fn dedupe_series(
    ha: HaGate<'_>,
    limits: &Limits,
    symbols: &[&str],
    series: &mut Vec<Parts>,
    store: &mut Store<'_>,
    stats: &mut WriteStats,
) {
    let mut kept = Vec::with_capacity(series.len());
    for (index, parts) in series.iter().enumerate() {
        let range = store.checked_ranges[index].clone();
        let pairs = store.checked[range.clone()]
            .chunks_exact(2)
            .map(|pair| (symbols[pair[0] as usize], symbols[pair[1] as usize]));
        let Some((cluster, replica)) = ha_pair(limits, pairs) else {
            kept.push(true);
            continue;
        };
        // Blank the replica label's pair (a name reference of 0 never names a label:
        // the table starts with the empty string); the pairs are compacted below.
        let replica_name = limits.ha_replica_label.as_str();
        for pair in store.checked[range].chunks_exact_mut(2) {
            if symbols[pair[0] as usize] == replica_name {
                pair[0] = 0;
            }
        }
        let samples = (parts.samples.len() + parts.histograms.len()) as u64;
        let keep = (ha.decide)(cluster.as_bytes(), replica.as_bytes(), samples);
        if !keep {
            stats.series -= 1;
            stats.samples -= parts.samples.len();
            stats.histograms -= parts.histograms.len();
            stats.exemplars -= parts.exemplars.len();
        }
        kept.push(keep);
    }
    // Compact: every checked range without its blanked pairs.
    let mut compacted = Vec::with_capacity(store.checked.len());
    for range in &mut store.checked_ranges {
        let start = compacted.len();
        for pair in store.checked[range.clone()].chunks_exact(2) {
            if pair[0] != 0 {
                compacted.extend_from_slice(pair);
            }
        }
        *range = start..compacted.len();
    }
    store.checked = compacted;
    if kept.iter().all(|&keep| keep) {
        return;
    }
    let mut keep = kept.iter();
    series.retain(|_| *keep.next().unwrap_or(&true));
    let mut keep = kept.iter();
    store
        .checked_ranges
        .retain(|_| *keep.next().unwrap_or(&true));
}

/// Leaves out the series `gate` refuses, from the series, their checked labels' ranges
/// and the counts. A series' identity is that of its labels written as 1.0 writes them.
fn admit_series(
    gate: SeriesGate<'_>,
    symbols: &[&str],
    series: &mut Vec<Parts>,
    store: &mut Store<'_>,
    stats: &mut WriteStats,
) {
    let mut scratch = Vec::with_capacity(256);
    let spans: Vec<SeriesSpan> = series
        .iter()
        .enumerate()
        .map(|(index, parts)| {
            let labels = checked_refs(store, index)
                .chunks_exact(2)
                .map(|pair| (symbols[pair[0] as usize], symbols[pair[1] as usize]));
            let counts = [
                parts.samples.len(),
                parts.histograms.len(),
                parts.exemplars.len(),
            ];
            label_set_span(gate.key, index, labels, &mut scratch, counts)
        })
        .collect();
    let admitted = (gate.admit)(&spans);
    if admitted.iter().all(|&ok| ok) {
        return;
    }
    let mut kept = admitted.iter();
    for span in spans
        .iter()
        .zip(&admitted)
        .filter(|(_, ok)| !**ok)
        .map(|(span, _)| span)
    {
        stats.series -= 1;
        stats.samples -= span.samples as usize;
        stats.histograms -= span.histograms as usize;
        stats.exemplars -= span.exemplars as usize;
    }
    series.retain(|_| *kept.next().unwrap_or(&true));
    let mut kept = admitted.iter();
    store
        .checked_ranges
        .retain(|_| *kept.next().unwrap_or(&true));
}

/// The common series, judged without building label lists: label references in range
/// and in pairs, names non-empty, ascending and within the limits, values non-empty and
/// within the limits, `__name__` among them, no enforced name among them, room for the
/// enforced labels; samples or histograms (not both), exemplar and metadata references in
/// range, nothing too new. For such a series [`check_series`] would only insert the
/// enforced labels; it gives `Some(counts_metadata)`. Anything else (valid or not) gives
/// `None`, and the full checks decide and word the refusal.
fn plain_series(
    parts: &Parts,
    store: &Store<'_>,
    symbols: &[&str],
    enforced_by_name: &[(&str, u32, u32)],
    limits: &Limits,
    newest_allowed: i64,
) -> Option<bool> {
    let refs = &store.refs[parts.labels.clone()];
    if refs.is_empty()
        || refs.len() % 2 != 0
        || refs.len() / 2 + enforced_by_name.len() > limits.max_labels_per_series
        || (!parts.samples.is_empty() && !parts.histograms.is_empty())
        || parts.newest.is_some_and(|newest| newest > newest_allowed)
    {
        return None;
    }
    let mut previous = "";
    let mut has_metric_name = false;
    for pair in refs.chunks_exact(2) {
        let name = *symbols.get(pair[0] as usize)?;
        let value = *symbols.get(pair[1] as usize)?;
        if name.is_empty()
            || value.is_empty()
            || name.len() > limits.max_label_name_bytes
            || value.len() > limits.max_label_value_bytes
            || (!previous.is_empty() && name <= previous)
            || enforced_by_name
                .iter()
                .any(|(enforced, _, _)| *enforced == name)
        {
            return None;
        }
        has_metric_name |= name == "__name__";
        previous = name;
    }
    let in_range = |reference: u32| (reference as usize) < symbols.len();
    let exemplars_fine = store.exemplar_refs[parts.exemplars.clone()]
        .iter()
        .all(|refs| refs.len() % 2 == 0 && refs.iter().all(|&reference| in_range(reference)));
    let metadata_fine = parts
        .metadata
        .is_none_or(|(_, help, unit)| in_range(help) && in_range(unit));
    let histograms_fine = first_histogram_problem(parts, store).is_none();
    (has_metric_name && exemplars_fine && metadata_fine && histograms_fine).then(|| {
        parts
            .metadata
            .is_some_and(|(kind, help, unit)| kind != 0 || help != 0 || unit != 0)
    })
}

/// The first inconsistent histogram of a series ([`super::rw2::histogram_problem`]).
fn first_histogram_problem(parts: &Parts, store: &Store<'_>) -> Option<String> {
    store.histograms[parts.histograms.clone()]
        .iter()
        .find_map(|payload| {
            // Checked: it decodes.
            histogram_problem(&v2::Histogram::decode(payload.as_ref()).unwrap_or_default())
        })
}

/// Appends a plain series' label references with the enforced labels merged in at their
/// places by name (the input's names ascend and none is enforced).
fn splice_refs(
    refs: &[u32],
    symbols: &[&str],
    enforced_by_name: &[(&str, u32, u32)],
    out: &mut Vec<u32>,
) {
    let mut enforced = enforced_by_name.iter().peekable();
    for pair in refs.chunks_exact(2) {
        let name = symbols[pair[0] as usize];
        while let Some((_, name_ref, value_ref)) =
            enforced.next_if(|(enforced_name, _, _)| *enforced_name < name)
        {
            out.extend_from_slice(&[*name_ref, *value_ref]);
        }
        out.extend_from_slice(pair);
    }
    for (_, name_ref, value_ref) in enforced {
        out.extend_from_slice(&[*name_ref, *value_ref]);
    }
}

fn protobuf(err: WireError) -> CodecError {
    CodecError::Protobuf(format!("failed to decode Protobuf message: {err}"))
}

fn reencode<M: Message + Default>(payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    M::decode(payload)
        .map(|message| message.encode_to_vec())
        .map_err(|err| CodecError::Protobuf(err.to_string()))
}

/// Reads a `TimeSeries` as prost would into `store`: known fields only with their wire
/// type (label references also unpacked), the last scalar wins, a repeated metadata
/// field merges.
fn read_series<'a>(bytes: &'a [u8], store: &mut Store<'a>) -> Result<Parts, CodecError> {
    let mut parts = Parts::default();
    let (refs_start, samples_start) = (store.refs.len(), store.samples.len());
    let (histograms_start, exemplars_start) = (store.histograms.len(), store.exemplars.len());
    let saw = |timestamp: i64, newest: &mut Option<i64>| {
        *newest = Some(newest.map_or(timestamp, |newest: i64| newest.max(timestamp)));
    };
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let (field, wire_type) = reader.key().map_err(protobuf)?;
        match (field, wire_type) {
            (1, 0) => store.refs.push(reader.varint().map_err(protobuf)? as u32),
            (1, LEN) => {
                let mut packed = Reader::new(reader.length_delimited().map_err(protobuf)?);
                while !packed.is_empty() {
                    let value = packed
                        .varint()
                        .map_err(|_| protobuf(WireError::PackedLength))?;
                    store.refs.push(value as u32);
                }
            }
            (2, LEN) => {
                let payload = reader.length_delimited().map_err(protobuf)?;
                let timestamp = match wire::canonical_sample_timestamp(payload) {
                    Some(timestamp) => {
                        store.samples.push(Cow::Borrowed(payload));
                        timestamp
                    }
                    None => {
                        let checked =
                            wire::check(payload, &wire::SAMPLE_V2, LEAF_DEPTH).map_err(protobuf)?;
                        store.samples.push(if checked.clean {
                            Cow::Borrowed(payload)
                        } else {
                            Cow::Owned(reencode::<v2::Sample>(payload)?)
                        });
                        checked.timestamp
                    }
                };
                saw(timestamp, &mut parts.newest);
            }
            (3, LEN) => {
                let payload = reader.length_delimited().map_err(protobuf)?;
                let checked =
                    wire::check(payload, &wire::HISTOGRAM_V2, LEAF_DEPTH).map_err(protobuf)?;
                saw(checked.timestamp, &mut parts.newest);
                store.histograms.push(if checked.clean {
                    Cow::Borrowed(payload)
                } else {
                    Cow::Owned(reencode::<v2::Histogram>(payload)?)
                });
            }
            (4, LEN) => {
                let payload = reader.length_delimited().map_err(protobuf)?;
                let checked =
                    wire::check(payload, &wire::EXEMPLAR_V2, LEAF_DEPTH).map_err(protobuf)?;
                let exemplar = v2::Exemplar::decode(payload)
                    .map_err(|err| CodecError::Protobuf(err.to_string()))?;
                store.exemplars.push(if checked.clean {
                    Cow::Borrowed(payload)
                } else {
                    Cow::Owned(exemplar.encode_to_vec())
                });
                store.exemplar_refs.push(exemplar.labels_refs);
            }
            (5, LEN) => {
                let payload = reader.length_delimited().map_err(protobuf)?;
                wire::check(payload, &wire::METADATA_V2, LEAF_DEPTH).map_err(protobuf)?;
                let (mut kind, mut help, mut unit) = parts.metadata.unwrap_or_default();
                let mut fields = Reader::new(payload);
                while !fields.is_empty() {
                    let (field, wire_type) = fields.key().map_err(protobuf)?;
                    match (field, wire_type) {
                        (1, 0) => kind = fields.varint().map_err(protobuf)? as i32,
                        (3, 0) => help = fields.varint().map_err(protobuf)? as u32,
                        (4, 0) => unit = fields.varint().map_err(protobuf)? as u32,
                        _ => fields
                            .skip(wire_type, field, LEAF_DEPTH)
                            .map_err(protobuf)?,
                    }
                }
                parts.metadata = Some((kind, help, unit));
            }
            (6, 0) => parts.created = reader.varint().map_err(protobuf)? as i64,
            (1..=6, _) => return Err(protobuf(WireError::WrongWireType { field })),
            _ => reader
                .skip(wire_type, field, SERIES_DEPTH)
                .map_err(protobuf)?,
        }
    }
    parts.labels = refs_start..store.refs.len();
    parts.samples = samples_start..store.samples.len();
    parts.histograms = histograms_start..store.histograms.len();
    parts.exemplars = exemplars_start..store.exemplars.len();
    Ok(parts)
}

/// rc.3's series-wide created timestamp fills the zero start timestamps of the series'
/// samples and histograms (as `rw2::carry_created_timestamp` does); those are
/// re-encoded.
fn carry_created_timestamp(parts: &mut Parts, store: &mut Store<'_>) -> Result<(), CodecError> {
    let created = std::mem::take(&mut parts.created);
    if created == 0 {
        return Ok(());
    }
    for payload in &mut store.samples[parts.samples.clone()] {
        let mut sample = v2::Sample::decode(payload.as_ref())
            .map_err(|err| CodecError::Protobuf(err.to_string()))?;
        if sample.start_timestamp == 0 {
            sample.start_timestamp = created;
            *payload = Cow::Owned(sample.encode_to_vec());
        }
    }
    for payload in &mut store.histograms[parts.histograms.clone()] {
        let mut histogram = v2::Histogram::decode(payload.as_ref())
            .map_err(|err| CodecError::Protobuf(err.to_string()))?;
        if histogram.start_timestamp == 0 {
            histogram.start_timestamp = created;
            *payload = Cow::Owned(histogram.encode_to_vec());
        }
    }
    Ok(())
}

fn write_forms(
    symbols: &[&str],
    series: &[Parts],
    store: &Store<'_>,
    forms: Forms,
    stats: WriteStats,
) -> Rewritten2 {
    let mut rewritten = Rewritten2 {
        stats,
        ..Rewritten2::default()
    };
    if forms.v2 {
        rewritten.v2 = Some(write_v2(symbols, series, store));
    }
    if forms.v1 {
        let (v1, series_end) = write_v1(symbols, series, store);
        rewritten.v1 = Some(v1);
        rewritten.v1_series_end = series_end;
    }
    rewritten
}

fn put_len_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// The checked label references of series `index`.
fn checked_refs<'s>(store: &'s Store<'_>, index: usize) -> &'s [u32] {
    store
        .checked_ranges
        .get(index)
        .map_or(&[], |range| &store.checked[range.clone()])
}

/// The 2.0 request as prost would write the reference's: symbols, then series with
/// their fields in number order; the created timestamp is never written (rc.4).
fn write_v2(symbols: &[&str], series: &[Parts], store: &Store<'_>) -> Vec<u8> {
    let payloads: usize = store
        .samples
        .iter()
        .chain(&store.histograms)
        .chain(&store.exemplars)
        .map(|payload| payload.len() + 3)
        .sum();
    let size = symbols.iter().map(|symbol| symbol.len() + 3).sum::<usize>()
        + payloads
        + store.checked.len() * 2
        + series.len() * 16;
    let mut out = Vec::with_capacity(size);
    for symbol in symbols {
        put_len_field(4, symbol.as_bytes(), &mut out);
    }
    let mut body = Vec::new();
    let mut packed = Vec::new();
    for (index, parts) in series.iter().enumerate() {
        body.clear();
        let refs = checked_refs(store, index);
        if !refs.is_empty() {
            packed.clear();
            for &reference in refs {
                wire::put_varint(&mut packed, u64::from(reference));
            }
            put_len_field(1, &packed, &mut body);
        }
        for payload in &store.samples[parts.samples.clone()] {
            put_len_field(2, payload, &mut body);
        }
        for payload in &store.histograms[parts.histograms.clone()] {
            put_len_field(3, payload, &mut body);
        }
        for payload in &store.exemplars[parts.exemplars.clone()] {
            put_len_field(4, payload, &mut body);
        }
        if let Some((kind, help_ref, unit_ref)) = parts.metadata {
            let metadata = v2::Metadata {
                r#type: kind,
                help_ref,
                unit_ref,
            };
            message::encode(5, &metadata, &mut body);
        }
        put_len_field(5, &body, &mut out);
    }
    out
}

/// The 1.0 request [`super::rw2::encode_v1`] writes for the reference's request, with
/// metadata last; returns it and where its series end.
fn write_v1(symbols: &[&str], series: &[Parts], store: &Store<'_>) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(
        store
            .samples
            .iter()
            .map(|payload| payload.len() + 2)
            .sum::<usize>()
            + store.checked.len() * 16,
    );
    let mut body = Vec::new();
    for (index, parts) in series.iter().enumerate() {
        body.clear();
        for pair in checked_refs(store, index).chunks_exact(2) {
            let name = symbol(symbols, pair[0]).unwrap_or_default();
            let value = symbol(symbols, pair[1]).unwrap_or_default();
            encode_label(name, value, &mut body);
        }
        for payload in &store.samples[parts.samples.clone()] {
            // Checked above: these decode.
            let sample = v2::Sample::decode(payload.as_ref()).unwrap_or_default();
            message::encode(2, &sample_to_v1(&sample), &mut body);
        }
        let labels_end = body.len();
        // As `rw2::exemplars_apart`: a histogram series' exemplars in an entry of their own.
        let apart = !parts.histograms.is_empty() && !parts.exemplars.is_empty();
        let exemplars = &store.exemplars[parts.exemplars.clone()];
        let write_exemplars = |body: &mut Vec<u8>| {
            for payload in exemplars {
                let exemplar = v2::Exemplar::decode(payload.as_ref()).unwrap_or_default();
                message::encode(3, &exemplar_to_v1(&exemplar, symbols), body);
            }
        };
        if !apart {
            write_exemplars(&mut body);
        }
        for payload in &store.histograms[parts.histograms.clone()] {
            let histogram = v2::Histogram::decode(payload.as_ref()).unwrap_or_default();
            message::encode(4, &histogram_to_v1(&histogram), &mut body);
        }
        put_len_field(1, &body, &mut out);
        if apart {
            body.truncate(labels_end);
            write_exemplars(&mut body);
            put_len_field(1, &body, &mut out);
        }
    }
    let series_end = out.len();
    let metadata = metadata_from(
        symbols,
        series
            .iter()
            .enumerate()
            .map(|(index, parts)| (checked_refs(store, index), parts.metadata)),
    );
    for metadata in metadata {
        message::encode(3, &metadata, &mut out);
    }
    (out, series_end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::rw2;
    use crate::config::ConflictPolicy;

    const NOW: i64 = 1_700_000_000_000;

    fn request() -> v2::Request {
        v2::Request {
            symbols: ["", "__name__", "up", "job", "a", "tenant_id", "evil"]
                .map(String::from)
                .to_vec(),
            timeseries: vec![v2::TimeSeries {
                labels_refs: vec![1, 2, 3, 4, 5, 6],
                samples: vec![v2::Sample {
                    value: 1.0,
                    timestamp: NOW,
                    start_timestamp: 0,
                }],
                metadata: Some(v2::Metadata {
                    r#type: 1,
                    help_ref: 4,
                    unit_ref: 0,
                }),
                created_timestamp: NOW - 1000,
                ..v2::TimeSeries::default()
            }],
        }
    }

    #[test]
    fn both_forms_match_the_reference() {
        let policy = LabelPolicy::new(
            "tenant_id",
            "alpha",
            [("env".to_string(), "prod".to_string())],
            ConflictPolicy::Override,
        );
        let limits = Limits::default();
        let bytes = request().encode_to_vec();
        let fast =
            rewrite_v2(&bytes, &policy, &limits, NOW, Forms { v2: true, v1: true }).expect("valid");
        let mut reference = request();
        let stats =
            rw2::validate_and_enforce(&mut reference, &policy, &limits, NOW).expect("valid");
        assert_eq!(fast.stats, stats);
        let v2_out = v2::Request::decode(fast.v2.as_deref().expect("v2")).expect("decodes");
        assert_eq!(v2_out, reference);
        assert_eq!(
            fast.v1.as_deref().expect("v1"),
            rw2::encode_v1(&reference, true).as_slice()
        );
        assert_eq!(
            &fast.v1.as_deref().expect("v1")[..fast.v1_series_end],
            rw2::encode_v1(&reference, false).as_slice()
        );
    }
}
