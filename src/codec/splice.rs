//! The zero-copy write path: a decompressed `WriteRequest` in, the tenant's request out,
//! with no per-label allocation (DESIGN §6 steps 5 and 7).
//!
//! Each series is read in place. Label names and values stay borrowed slices of the
//! input; when a series' labels are already in canonical form (each `Label` holding
//! exactly its name then its value, short and ASCII, sorted, unique, none empty, no
//! enforced name among them) the output is the input's label bytes with the enforced labels' pre-encoded
//! bytes spliced in at their sorted places. Otherwise the series goes through the same
//! checks as the reference path ([`super::write::enforce_labels`]) on borrowed labels and
//! its labels are written out anew. Samples, exemplars and histograms are checked field
//! by field and copied as raw bytes; one holding an unknown field is re-encoded, so
//! unknown fields are never forwarded, at any depth.
//!
//! The output is written once into a caller's buffer, series first and metadata last, so
//! the series-only request for backends that must not receive metadata is a prefix of the
//! same bytes. The prost path in [`super::write`] is the reference: property tests and a
//! fuzz target hold that both accept and refuse the same inputs and that what this path
//! writes decodes to exactly what the reference produces.

use prost::Message;

use super::wire::{self, Reader, WireError, LEN, TOP_DEPTH};
use super::write::{
    check_newest, check_series_count, enforce_labels, newest_allowed_ms, LabelPolicy, LabelRef,
    SplicedLabel, WriteStats,
};
use super::CodecError;
use crate::config::Limits;
use crate::proto::{Exemplar, Histogram, MetricMetadata, Sample};
use crate::series::{SeriesKey, SeriesSpan};

use super::ha::{ha_pair, HaGate};
use crate::series::ha::same_bytes;

impl SeriesLog<'_> {
    /// Notes the series written as `series` (its `TimeSeries` field) at `start`: its
    /// identity is the hash of its label fields, which come first, `labels_len` bytes.
    fn note(
        &mut self,
        series: &[u8],
        labels_len: usize,
        start: usize,
        before: &WriteStats,
        after: &WriteStats,
    ) {
        // The field's key (one byte) and its length's varint come before the labels.
        let header = 1 + series[1..].iter().take_while(|&&byte| byte >= 0x80).count() + 1;
        let labels = series.get(header..header + labels_len).unwrap_or(series);
        let identity = self.key.identity(labels);
        let count = |after: usize, before: usize| u32::try_from(after - before).unwrap_or(u32::MAX);
        self.spans.push(SeriesSpan {
            identity,
            start,
            end: start + series.len(),
            samples: count(after.samples, before.samples),
            histograms: count(after.histograms, before.histograms),
            exemplars: count(after.exemplars, before.exemplars),
        });
    }
}

/// The label fields at the start of a written `TimeSeries` field (`0x0a len …`): every
/// write path writes labels first, each a canonical `Label`.
pub fn label_fields(series: &[u8]) -> &[u8] {
    let mut reader = Reader::new(series);
    let Ok((1, LEN)) = reader.key() else {
        return series;
    };
    let Ok(body) = reader.length_delimited() else {
        return series;
    };
    let mut fields = Reader::new(body);
    while !fields.is_empty() {
        let at = fields.pos();
        match fields.key() {
            Ok((1, LEN)) if fields.length_delimited().is_ok() => {}
            _ => return &body[..at],
        }
    }
    body
}

/// A rewritten request: its counts, and where its series end (the rest is metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub stats: WriteStats,
    pub series_end: usize,
}

/// Rewrites `decoded` for the tenant into `out` (cleared first). On error, whatever
/// `out` holds must not be forwarded.
pub fn rewrite(
    decoded: &[u8],
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
    out: &mut Vec<u8>,
) -> Result<Rewritten, CodecError> {
    rewrite_tracked(decoded, policy, limits, now_ms, out, None)
}

/// Where [`rewrite_tracked`] notes each written series: its identity under `key` and its
/// place in the output (DESIGN §14).
pub struct SeriesLog<'a> {
    pub key: &'a SeriesKey,
    pub spans: &'a mut Vec<SeriesSpan>,
}

/// As [`rewrite`], and with `log` given, each series written is noted in it, in order.
pub fn rewrite_tracked(
    decoded: &[u8],
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
    out: &mut Vec<u8>,
    log: Option<SeriesLog<'_>>,
) -> Result<Rewritten, CodecError> {
    rewrite_gated(decoded, policy, limits, now_ms, out, log, None)
}

/// As [`rewrite_tracked`], and with `ha` given, the tenant's HA pairs are de-duplicated
/// (DESIGN §15, [`super::ha`]): a series carrying both HA labels is written without its
/// replica label when `ha` says so and left out otherwise (neither counted nor logged).
pub fn rewrite_gated(
    decoded: &[u8],
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
    out: &mut Vec<u8>,
    mut log: Option<SeriesLog<'_>>,
    mut ha: Option<HaGate<'_>>,
) -> Result<Rewritten, CodecError> {
    if let Some(log) = log.as_mut() {
        log.spans.clear();
    }
    out.clear();
    out.reserve(decoded.len() + decoded.len() / 8);
    let mut splicer = Splicer {
        policy,
        limits,
        enforced: policy
            .enforced
            .iter()
            .map(|label| Borrowed {
                name: &label.name,
                value: &label.value,
            })
            .collect(),
        newest_allowed: newest_allowed_ms(now_ms, limits),
        ha: ha.is_some(),
        labels: Vec::with_capacity(32),
        pieces: Vec::with_capacity(4),
        owned: Vec::new(),
    };
    let mut metadata = Vec::new();
    let mut metadata_owned = Vec::new();
    let mut stats = WriteStats::default();
    // Series left out for HA: taken from the counts once the request's count is checked.
    let mut left_out = 0;
    let mut first_invalid = None;
    let mut reader = Reader::new(decoded);
    while !reader.is_empty() {
        let entry_start = reader.pos();
        let (field, wire_type) = reader.key().map_err(protobuf)?;
        match (field, wire_type) {
            (1, LEN) => {
                let series = reader.length_delimited().map_err(protobuf)?;
                stats.series += 1;
                // After the first invalid series (or one too many) the rest is only
                // checked for well-formedness, as prost would decode it.
                let writing =
                    first_invalid.is_none() && stats.series <= limits.max_series_per_request;
                let start = out.len();
                let before = stats;
                let written = splicer.series(
                    series,
                    &mut stats,
                    writing.then_some(&mut *out),
                    ha.as_mut(),
                );
                match written {
                    Ok((_, _, true)) => {
                        // Left out for HA before it was written.
                        left_out += 1;
                        stats.samples = before.samples;
                        stats.histograms = before.histograms;
                        stats.exemplars = before.exemplars;
                    }
                    Ok((labels_len, pair, false)) => {
                        // A series written anew is decided once written.
                        if let (Some(gate), Some((cluster, replica)), true) =
                            (ha.as_mut(), pair, out.len() > start)
                        {
                            let samples = (stats.samples - before.samples + stats.histograms
                                - before.histograms)
                                as u64;
                            if !(gate.decide)(cluster, replica, samples) {
                                out.truncate(start);
                                left_out += 1;
                                stats.samples = before.samples;
                                stats.histograms = before.histograms;
                                stats.exemplars = before.exemplars;
                                continue;
                            }
                        }
                        if let (Some(log), true) = (log.as_mut(), out.len() > start) {
                            log.note(&out[start..], labels_len, start, &before, &stats);
                        }
                    }
                    Err(Refusal::Protobuf(err)) => return Err(protobuf(err)),
                    Err(Refusal::Invalid(err)) => {
                        first_invalid.get_or_insert(err);
                    }
                }
            }
            (3, LEN) => {
                let payload = reader.length_delimited().map_err(protobuf)?;
                stats.metadata += 1;
                let checked =
                    wire::check(payload, &wire::METADATA, TOP_DEPTH - 1).map_err(protobuf)?;
                if checked.clean {
                    push_piece(&mut metadata, Piece::Input(entry_start, reader.pos()));
                } else {
                    let from = metadata_owned.len();
                    reencode::<MetricMetadata>(3, payload, &mut metadata_owned)?;
                    metadata.push(Piece::Owned(from, metadata_owned.len()));
                }
            }
            (1 | 3, _) => return Err(protobuf(WireError::WrongWireType { field })),
            _ => reader.skip(wire_type, field, TOP_DEPTH).map_err(protobuf)?,
        }
    }
    check_series_count(stats.series, limits)?;
    if let Some(err) = first_invalid {
        return Err(err);
    }
    stats.series -= left_out;
    let series_end = out.len();
    for piece in &metadata {
        out.extend_from_slice(piece.bytes(decoded, &metadata_owned));
    }
    Ok(Rewritten { stats, series_end })
}

/// A label borrowed from the input (or from the policy).
#[derive(Clone, Copy, Debug)]
struct Borrowed<'a> {
    name: &'a str,
    value: &'a str,
}

impl LabelRef for Borrowed<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn value(&self) -> &str {
        self.value
    }
}

/// Bytes to copy into a series or the metadata: a range of the input, or a range of
/// re-encoded bytes.
#[derive(Clone, Copy, Debug)]
enum Piece {
    Input(usize, usize),
    Owned(usize, usize),
}

impl Piece {
    fn len(&self) -> usize {
        match *self {
            Piece::Input(start, end) | Piece::Owned(start, end) => end - start,
        }
    }

    fn bytes<'b>(&self, input: &'b [u8], owned: &'b [u8]) -> &'b [u8] {
        match *self {
            Piece::Input(start, end) => &input[start..end],
            Piece::Owned(start, end) => &owned[start..end],
        }
    }
}

/// Appends an input range, merging it with the previous one when they touch.
fn push_piece(pieces: &mut Vec<Piece>, piece: Piece) {
    if let (Some(Piece::Input(_, last_end)), Piece::Input(start, end)) = (pieces.last_mut(), piece)
    {
        if *last_end == start {
            *last_end = end;
            return;
        }
    }
    pieces.push(piece);
}

enum Refusal {
    Protobuf(WireError),
    Invalid(CodecError),
}

impl From<WireError> for Refusal {
    fn from(err: WireError) -> Refusal {
        Refusal::Protobuf(err)
    }
}

fn protobuf(err: WireError) -> CodecError {
    CodecError::Protobuf(format!("failed to decode Protobuf message: {err}"))
}

/// Decodes a message that holds unknown fields and writes it back without them, as
/// field `field` of its parent.
fn reencode<M: Message + Default>(
    field: u32,
    payload: &[u8],
    owned: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let message = M::decode(payload).map_err(|err| CodecError::Protobuf(err.to_string()))?;
    prost::encoding::message::encode(field, &message, owned);
    Ok(())
}

/// Per-request state, with buffers reused from series to series.
struct Splicer<'a> {
    policy: &'a LabelPolicy,
    limits: &'a Limits,
    enforced: Vec<Borrowed<'a>>,
    newest_allowed: i64,
    /// Whether series carrying both HA labels lose their replica label.
    ha: bool,
    labels: Vec<Borrowed<'a>>,
    pieces: Vec<Piece>,
    owned: Vec<u8>,
}

/// Depth of prost's recursion budget at a series' own fields.
const SERIES_DEPTH: u32 = TOP_DEPTH - 1;
/// Depth at the fields of a series' labels, samples, exemplars and histograms.
const LEAF_DEPTH: u32 = SERIES_DEPTH - 1;

impl<'a> Splicer<'a> {
    /// Reads one `TimeSeries` and, when `out` is given and the series is valid, writes
    /// the tenant's version of it; returns the bytes of label fields written (0 when
    /// nothing was), with HA on its cluster and replica when it carries both and is yet
    /// to be decided, and whether `ha` left it out. A series with canonical labels is
    /// decided before it is written, so a dropped one costs no copy.
    fn series(
        &mut self,
        series: &'a [u8],
        stats: &mut WriteStats,
        out: Option<&mut Vec<u8>>,
        ha: Option<&mut HaGate<'_>>,
    ) -> Result<(usize, Option<HaPair<'a>>, bool), Refusal> {
        let ha_names = self.ha.then_some((
            self.limits.ha_cluster_label.as_bytes(),
            self.limits.ha_replica_label.as_bytes(),
        ));
        let canonical = match out {
            Some(_) => canonical_labels(series, &self.policy.spliced, self.limits, ha_names),
            None => None,
        };
        // Canonical labels come first; a label field after other fields sends the series
        // down the full path after all.
        let fast = match canonical {
            Some(labels) => match self.lone_sample(series, labels.end) {
                Some(fields) => Some((labels, fields)),
                None => self
                    .fields(series, labels.end, false)?
                    .map(|fields| (labels, fields)),
            },
            None => None,
        };
        let (canonical, fields) = match fast {
            Some((labels, fields)) => (Some(labels), fields),
            None => (None, self.fields(series, 0, true)?.unwrap_or_default()),
        };
        stats.samples += fields.samples;
        stats.exemplars += fields.exemplars;
        stats.histograms += fields.histograms;
        let Some(out) = out else {
            return Ok((0, None, false));
        };
        let result = match canonical {
            Some(labels) => {
                if let (Some(gate), Some((cluster, replica))) = (ha, labels.ha_pair()) {
                    // Checked as when written, then decided.
                    self.check_spliced_newest(&labels, fields.newest)
                        .map_err(Refusal::Invalid)?;
                    let samples = (fields.samples + fields.histograms) as u64;
                    if !(gate.decide)(cluster, replica, samples) {
                        return Ok((0, None, true));
                    }
                }
                self.write_spliced(series, labels, fields.newest, out)
                    .map(|len| (len, None, false))
            }
            None => self
                .write_enforced(series, fields.newest, out)
                .map(|(len, pair)| (len, pair, false)),
        };
        result.map_err(Refusal::Invalid)
    }

    /// The common case after canonical labels: exactly one sample in canonical form.
    fn lone_sample(&mut self, series: &[u8], from: usize) -> Option<Fields> {
        let [0x12, len, payload @ ..] = series.get(from..)? else {
            return None;
        };
        if *len >= 0x80 || usize::from(*len) != payload.len() {
            return None;
        }
        let timestamp = wire::canonical_sample_timestamp(payload)?;
        self.pieces.clear();
        self.owned.clear();
        self.pieces.push(Piece::Input(from, series.len()));
        Some(Fields {
            samples: 1,
            newest: Some(timestamp),
            ..Fields::default()
        })
    }

    /// Reads a series' fields from `from` on, keeping its samples, exemplars and
    /// histograms as pieces and (with `with_labels`) its labels as borrowed slices.
    /// Without `with_labels`, a label field gives `None`.
    fn fields(
        &mut self,
        series: &'a [u8],
        from: usize,
        with_labels: bool,
    ) -> Result<Option<Fields>, Refusal> {
        self.labels.clear();
        self.pieces.clear();
        self.owned.clear();
        let mut fields = Fields::default();
        let mut reader = Reader::new(series);
        reader.seek(from);
        while !reader.is_empty() {
            let start = reader.pos();
            let (field, wire_type) = reader.key()?;
            if wire_type != LEN && (1..=4).contains(&field) {
                return Err(Refusal::Protobuf(WireError::WrongWireType { field }));
            }
            match field {
                1 if !with_labels => return Ok(None),
                1 => {
                    let payload = reader.length_delimited()?;
                    self.label(payload)?;
                }
                2 => {
                    let payload = reader.length_delimited()?;
                    fields.samples += 1;
                    let timestamp = match wire::canonical_sample_timestamp(payload) {
                        Some(timestamp) => {
                            push_piece(&mut self.pieces, Piece::Input(start, reader.pos()));
                            timestamp
                        }
                        None => {
                            self.leaf::<Sample>(2, payload, start, reader.pos(), &wire::SAMPLE)?
                        }
                    };
                    fields.saw(timestamp);
                }
                3 => {
                    let payload = reader.length_delimited()?;
                    fields.exemplars += 1;
                    self.leaf::<Exemplar>(3, payload, start, reader.pos(), &wire::EXEMPLAR)?;
                }
                4 => {
                    let payload = reader.length_delimited()?;
                    fields.histograms += 1;
                    let timestamp =
                        self.leaf::<Histogram>(4, payload, start, reader.pos(), &wire::HISTOGRAM)?;
                    fields.saw(timestamp);
                }
                _ => reader.skip(wire_type, field, SERIES_DEPTH)?,
            }
        }
        Ok(Some(fields))
    }

    /// Reads one `Label` as prost would (the last name and value win).
    fn label(&mut self, payload: &'a [u8]) -> Result<(), WireError> {
        let mut reader = Reader::new(payload);
        let (mut name, mut value) = ("", "");
        while !reader.is_empty() {
            let (field, wire_type) = reader.key()?;
            match (field, wire_type) {
                (1, LEN) => name = utf8(reader.length_delimited()?)?,
                (2, LEN) => value = utf8(reader.length_delimited()?)?,
                (1 | 2, _) => return Err(WireError::WrongWireType { field }),
                _ => reader.skip(wire_type, field, LEAF_DEPTH)?,
            }
        }
        self.labels.push(Borrowed { name, value });
        Ok(())
    }

    /// Checks a sample, exemplar or histogram, keeps it as a raw range (or re-encoded
    /// without its unknown fields) and returns its timestamp.
    fn leaf<M: Message + Default>(
        &mut self,
        field: u32,
        payload: &[u8],
        start: usize,
        end: usize,
        schema: &wire::Schema,
    ) -> Result<i64, Refusal> {
        let checked = wire::check(payload, schema, LEAF_DEPTH)?;
        if checked.clean {
            push_piece(&mut self.pieces, Piece::Input(start, end));
        } else {
            let from = self.owned.len();
            reencode::<M>(field, payload, &mut self.owned).map_err(Refusal::Invalid)?;
            self.pieces.push(Piece::Owned(from, self.owned.len()));
        }
        Ok(checked.timestamp)
    }

    /// Writes a series whose labels are canonical: its label bytes with the enforced
    /// labels spliced in.
    fn write_spliced(
        &self,
        series: &[u8],
        labels: CanonicalLabels<'_>,
        newest: Option<i64>,
        out: &mut Vec<u8>,
    ) -> Result<usize, CodecError> {
        self.check_spliced_newest(&labels, newest)?;
        let spliced = &self.policy.spliced;
        let inserted: usize = spliced.iter().map(|label| label.field.len()).sum();
        // The replica label of an HA series is left out.
        let cut = match labels.ha_pair() {
            Some(_) => labels.replica.start..labels.replica.end,
            None => 0..0,
        };
        let label_bytes = labels.end - cut.len() + inserted;
        let len = label_bytes + self.pieces_len();
        out.push(0x0a);
        wire::put_varint(out, len as u64);
        let mut from = 0;
        for (label, &at) in spliced.iter().zip(&labels.splice_at) {
            copy_but(out, &series[..at], from, &cut);
            out.extend_from_slice(&label.field);
            from = at;
        }
        copy_but(out, &series[..labels.end], from, &cut);
        self.write_pieces(series, out);
        Ok(label_bytes)
    }

    /// The one check of a series with canonical labels left for when it is written: its
    /// newest sample not too far ahead.
    #[inline]
    fn check_spliced_newest(
        &self,
        labels: &CanonicalLabels<'_>,
        newest: Option<i64>,
    ) -> Result<(), CodecError> {
        if newest.is_some_and(|newest| newest > self.newest_allowed) {
            let metric_name = [Borrowed {
                name: "__name__",
                value: utf8(labels.metric_name).unwrap_or_default(),
            }];
            check_newest(&metric_name, newest, self.newest_allowed, self.limits)?;
        }
        Ok(())
    }

    /// Writes a series after the full checks, its labels encoded anew.
    fn write_enforced(
        &mut self,
        series: &[u8],
        newest: Option<i64>,
        out: &mut Vec<u8>,
    ) -> Result<(usize, Option<HaPair<'a>>), CodecError> {
        enforce_labels(
            &mut self.labels,
            &self.enforced,
            self.policy.on_conflict,
            self.limits,
        )?;
        check_newest(&self.labels, newest, self.newest_allowed, self.limits)?;
        let pair = if self.ha {
            ha_pair(
                self.limits,
                self.labels.iter().map(|label| (label.name, label.value)),
            )
            .map(|(cluster, replica)| (cluster.as_bytes(), replica.as_bytes()))
        } else {
            None
        };
        if pair.is_some() {
            let replica = self.limits.ha_replica_label.as_str();
            self.labels.retain(|label| label.name != replica);
        }
        let labels_len: usize = self
            .labels
            .iter()
            .map(|label| {
                let inner = label_len(label);
                1 + wire::varint_len(inner as u64) + inner
            })
            .sum();
        out.push(0x0a);
        wire::put_varint(out, (labels_len + self.pieces_len()) as u64);
        for label in &self.labels {
            out.push(0x0a);
            wire::put_varint(out, label_len(label) as u64);
            put_string(out, 0x0a, label.name);
            put_string(out, 0x12, label.value);
        }
        self.write_pieces(series, out);
        Ok((labels_len, pair))
    }

    fn pieces_len(&self) -> usize {
        self.pieces.iter().map(Piece::len).sum()
    }

    fn write_pieces(&self, series: &[u8], out: &mut Vec<u8>) {
        for piece in &self.pieces {
            out.extend_from_slice(piece.bytes(series, &self.owned));
        }
    }
}

/// Enforced labels beyond this many take the full path (the tenant label plus a few
/// extra labels is the norm).
const MAX_SPLICED: usize = 8;

/// A series whose labels come first and are canonical: each `Label` exactly its name
/// then its value, both non-empty, short and ASCII, names strictly ascending, within the
/// tenant's limits, `__name__` among them, no enforced name among them.
#[derive(Clone, Copy)]
struct CanonicalLabels<'a> {
    /// Where the label fields end in the series' bytes (they start at 0).
    end: usize,
    /// Before which offset each enforced label (sorted by name) goes.
    splice_at: [usize; MAX_SPLICED],
    /// The value of `__name__` (ASCII).
    metric_name: &'a [u8],
    /// With HA on: the value of the cluster label (ASCII), and the replica label's
    /// field (`start..end` in the series' bytes) and value.
    cluster: Option<&'a [u8]>,
    replica: ReplicaField<'a>,
}

/// A cluster and a replica, both non-empty.
type HaPair<'a> = (&'a [u8], &'a [u8]);

/// Where a series' replica label lies, and its value (empty when it has none).
#[derive(Clone, Copy, Default)]
struct ReplicaField<'a> {
    start: usize,
    end: usize,
    value: &'a [u8],
}

impl<'a> CanonicalLabels<'a> {
    /// The cluster and replica, when the series carries both.
    #[inline]
    fn ha_pair(&self) -> Option<HaPair<'a>> {
        let cluster = self.cluster?;
        if self.replica.value.is_empty() {
            return None;
        }
        Some((cluster, self.replica.value))
    }
}

/// Appends `bytes[from..]` to `out`, without the part inside `cut`.
#[inline]
fn copy_but(out: &mut Vec<u8>, bytes: &[u8], from: usize, cut: &std::ops::Range<usize>) {
    let to = bytes.len();
    if cut.is_empty() || cut.end <= from || cut.start >= to {
        out.extend_from_slice(&bytes[from..]);
        return;
    }
    out.extend_from_slice(&bytes[from..cut.start.max(from)]);
    out.extend_from_slice(&bytes[cut.end.min(to)..]);
}

/// Recognises canonical labels at the start of a series, or says `None` for the full
/// path.
fn canonical_labels<'a>(
    series: &'a [u8],
    spliced: &[SplicedLabel],
    limits: &Limits,
    ha_names: Option<(&[u8], &[u8])>,
) -> Option<CanonicalLabels<'a>> {
    if spliced.len() > MAX_SPLICED {
        return None;
    }
    let mut splice_at = [0; MAX_SPLICED];
    let mut next = 0;
    let mut pos = 0;
    let mut count = 0;
    let mut previous: &[u8] = &[];
    let mut metric_name = None;
    let mut cluster = None;
    let mut replica = ReplicaField::default();
    while series.get(pos) == Some(&0x0a) {
        let (len, len_bytes) = short_varint(series, pos + 1)?;
        let end = pos + 1 + len_bytes + len;
        let label = series.get(pos + 1 + len_bytes..end)?;
        if label.first() != Some(&0x0a) {
            return None;
        }
        let (name_len, name_bytes) = short_varint(label, 1)?;
        let name = label.get(1 + name_bytes..1 + name_bytes + name_len)?;
        let rest = &label[1 + name_bytes + name_len..];
        if rest.first() != Some(&0x12) {
            return None;
        }
        let (value_len, value_bytes) = short_varint(rest, 1)?;
        if rest.len() != 1 + value_bytes + value_len
            || value_len == 0
            || name_len > limits.max_label_name_bytes
            || value_len > limits.max_label_value_bytes
            || !ascending(previous, name)
        {
            return None;
        }
        while next < spliced.len() && ascending(spliced[next].name.as_bytes(), name) {
            splice_at[next] = pos;
            next += 1;
        }
        if next < spliced.len() && spliced[next].name.as_bytes() == name {
            return None;
        }
        if name == b"__name__" {
            metric_name = Some(&rest[1 + value_bytes..]);
        }
        if let Some((cluster_name, replica_name)) = ha_names {
            if same_bytes(name, cluster_name) {
                cluster = Some(&rest[1 + value_bytes..]);
            } else if same_bytes(name, replica_name) {
                replica = ReplicaField {
                    start: pos,
                    end,
                    value: &rest[1 + value_bytes..],
                };
            }
        }
        previous = name;
        count += 1;
        pos = end;
    }
    for at in &mut splice_at[next..spliced.len()] {
        *at = pos;
    }
    if count + spliced.len() > limits.max_labels_per_series || !all_ascii(&series[..pos]) {
        return None;
    }
    Some(CanonicalLabels {
        end: pos,
        splice_at,
        metric_name: metric_name?,
        cluster,
        replica,
    })
}

/// A length of one or two varint bytes: (value, bytes taken).
#[inline]
fn short_varint(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let first = *buf.get(at)?;
    if first < 0x80 {
        return Some((usize::from(first), 1));
    }
    let second = *buf.get(at + 1)?;
    (second < 0x80).then(|| (usize::from(first & 0x7f) | usize::from(second) << 7, 2))
}

/// `a < b`, byte-wise; the loop beats a `memcmp` call on label-sized names.
#[inline]
fn ascending(a: &[u8], b: &[u8]) -> bool {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x < y;
        }
    }
    a.len() < b.len()
}

/// ASCII check eight bytes at a time (std's `is_ascii` goes byte by byte on spans this
/// short).
#[inline]
fn all_ascii(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let mut seen = 0u64;
    for word in &mut words {
        seen |= u64::from_le_bytes(word.try_into().unwrap_or_default());
    }
    for &byte in words.remainder() {
        seen |= u64::from(byte);
    }
    seen & 0x8080_8080_8080_8080 == 0
}

/// What a series holds besides its labels.
#[derive(Clone, Copy, Default)]
struct Fields {
    samples: usize,
    exemplars: usize,
    histograms: usize,
    /// The newest sample or histogram timestamp.
    newest: Option<i64>,
}

impl Fields {
    fn saw(&mut self, timestamp: i64) {
        self.newest = Some(
            self.newest
                .map_or(timestamp, |newest| newest.max(timestamp)),
        );
    }
}

/// Encoded length of a `Label` message; empty strings are left out, as proto3 does.
fn label_len(label: &Borrowed<'_>) -> usize {
    string_field_len(label.name) + string_field_len(label.value)
}

fn string_field_len(value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        1 + wire::varint_len(value.len() as u64) + value.len()
    }
}

/// Each string is checked where it stands, as prost does, even one a later field
/// overwrites.
fn utf8(bytes: &[u8]) -> Result<&str, WireError> {
    std::str::from_utf8(bytes).map_err(|_| WireError::Utf8)
}

/// The span of series `index` of a request held as label lists (remote write 2.0, OTLP)
/// rather than bytes: its identity is that of its labels written as 1.0 writes them
/// (`scratch` holds them meanwhile), `start..end` is `index..index + 1`.
pub fn label_set_span<'l>(
    key: &SeriesKey,
    index: usize,
    labels: impl IntoIterator<Item = (&'l str, &'l str)>,
    scratch: &mut Vec<u8>,
    counts: [usize; 3],
) -> SeriesSpan {
    scratch.clear();
    for (name, value) in labels {
        put_label_field(scratch, name, value);
    }
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    SeriesSpan {
        identity: key.identity(scratch),
        start: index,
        end: index + 1,
        samples: count(counts[0]),
        histograms: count(counts[1]),
        exemplars: count(counts[2]),
    }
}

/// Appends one `TimeSeries.labels` field as every write path writes it: a `Label` of its
/// name then its value (an empty string left out, as prost leaves it out).
pub fn put_label_field(out: &mut Vec<u8>, name: &str, value: &str) {
    let label = Borrowed { name, value };
    out.push(0x0a);
    wire::put_varint(out, label_len(&label) as u64);
    put_string(out, 0x0a, name);
    put_string(out, 0x12, value);
}

fn put_string(out: &mut Vec<u8>, key: u8, value: &str) {
    if !value.is_empty() {
        out.push(key);
        wire::put_varint(out, value.len() as u64);
        out.extend_from_slice(value.as_bytes());
    }
}
