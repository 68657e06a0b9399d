//! Remote write 1.0, the reference path: decode a `WriteRequest` with prost, validate
//! every series against the tenant's limits, enforce the tenant's labels, and encode
//! the result (DESIGN §6 steps 5 and 7; PROTOCOL.md §2.C–2.G, §2.I).
//!
//! The relay itself runs the zero-copy path in [`super::splice`]; this one stays as the
//! oracle it is tested against, and the series checks below are shared by both, so the
//! two give the same answer and the same words for every invalid series.
//!
//! Validation happens before injection, so a series with no labels never turns into
//! `{tenant_id="t"}`. Sample values and timestamps are copied untouched (stale-marker
//! NaN bits included); exemplar labels are never rewritten.

use prost::Message;

use super::CodecError;
use crate::config::{ConflictPolicy, Limits};
use crate::proto::{Label, TimeSeries, WriteRequest};

/// The labels a tenant's series must carry, and what to do when a client sends one of
/// them with another value.
#[derive(Clone, Debug)]
pub struct LabelPolicy {
    /// The tenant label first, then `extra_labels`; names unique.
    pub(crate) enforced: Vec<Label>,
    /// The same labels sorted by name, each with its encoded `TimeSeries.labels` field,
    /// ready to be spliced into a series.
    pub(crate) spliced: Vec<SplicedLabel>,
    pub(crate) on_conflict: ConflictPolicy,
}

/// An enforced label as the zero-copy path inserts it.
#[derive(Clone, Debug)]
pub(crate) struct SplicedLabel {
    pub name: String,
    /// Field 1 of `TimeSeries`: key, length, and the encoded `Label`.
    pub field: Vec<u8>,
}

impl LabelPolicy {
    pub fn new(
        tenant_label: &str,
        tenant_value: &str,
        extra_labels: impl IntoIterator<Item = (String, String)>,
        on_conflict: ConflictPolicy,
    ) -> LabelPolicy {
        let mut enforced = vec![Label {
            name: tenant_label.to_string(),
            value: tenant_value.to_string(),
        }];
        for (name, value) in extra_labels {
            if enforced.iter().all(|label| label.name != name) {
                enforced.push(Label { name, value });
            }
        }
        let mut spliced: Vec<SplicedLabel> = enforced
            .iter()
            .map(|label| {
                let mut field = Vec::new();
                prost::encoding::message::encode(1, label, &mut field);
                SplicedLabel {
                    name: label.name.clone(),
                    field,
                }
            })
            .collect();
        spliced.sort_by(|a, b| a.name.cmp(&b.name));
        LabelPolicy {
            enforced,
            spliced,
            on_conflict,
        }
    }
}

/// What a validated request contains, for limits and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub series: usize,
    pub samples: usize,
    pub histograms: usize,
    pub exemplars: usize,
    pub metadata: usize,
}

impl WriteStats {
    /// Samples + histogram samples + exemplars: what a tenant's sample budget counts.
    pub fn total_samples(&self) -> usize {
        self.samples + self.histograms + self.exemplars
    }
}

/// Decodes a decompressed `WriteRequest`. Unknown fields are dropped by prost, so a
/// client-supplied Mimir field 1000 or Cortex field 2 is never forwarded.
pub fn decode(decoded: &[u8]) -> Result<WriteRequest, CodecError> {
    WriteRequest::decode(decoded).map_err(|err| CodecError::Protobuf(err.to_string()))
}

/// Encodes and snappy-compresses a request for the backends.
pub fn encode_compressed(request: &WriteRequest) -> Vec<u8> {
    super::snappy::compress(&request.encode_to_vec())
}

/// Validates every series and enforces the tenant's labels in place. On error nothing
/// of the request may be forwarded.
pub fn validate_and_enforce(
    request: &mut WriteRequest,
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
) -> Result<WriteStats, CodecError> {
    check_series_count(request.timeseries.len(), limits)?;
    let newest_allowed = newest_allowed_ms(now_ms, limits);
    let mut stats = WriteStats {
        series: request.timeseries.len(),
        metadata: request.metadata.len(),
        ..WriteStats::default()
    };
    for series in &mut request.timeseries {
        enforce_series(series, policy, limits, newest_allowed)?;
        stats.samples += series.samples.len();
        stats.histograms += series.histograms.len();
        stats.exemplars += series.exemplars.len();
    }
    Ok(stats)
}

/// Checks one series and enforces the tenant's labels on it (shared with the OTLP
/// path, which translates into series first).
pub(crate) fn enforce_series(
    series: &mut TimeSeries,
    policy: &LabelPolicy,
    limits: &Limits,
    newest_allowed_ms: i64,
) -> Result<(), CodecError> {
    enforce_labels(
        &mut series.labels,
        &policy.enforced,
        policy.on_conflict,
        limits,
    )?;
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
    check_newest(&series.labels, newest, newest_allowed_ms, limits)
}

/// A label as the series checks see it: the prost path's owned [`Label`], or the
/// zero-copy path's borrowed slices.
pub(crate) trait LabelRef {
    fn name(&self) -> &str;
    fn value(&self) -> &str;
}

impl LabelRef for Label {
    fn name(&self) -> &str {
        &self.name
    }
    fn value(&self) -> &str {
        &self.value
    }
}

/// The request-wide series cap, checked before any series.
pub(crate) fn check_series_count(series: usize, limits: &Limits) -> Result<(), CodecError> {
    if series > limits.max_series_per_request {
        return Err(CodecError::Invalid(format!(
            "request has {series} series, over the limit of {}",
            limits.max_series_per_request
        )));
    }
    Ok(())
}

/// The newest sample timestamp a request may carry.
pub(crate) fn newest_allowed_ms(now_ms: i64, limits: &Limits) -> i64 {
    now_ms.saturating_add(i64::try_from(limits.max_future_skew.as_millis()).unwrap_or(i64::MAX))
}

/// Checks one series' labels and leaves them sorted by name with the enforced labels in
/// place of any the client sent. `enforced` holds the tenant label and extra labels.
pub(crate) fn enforce_labels<L: LabelRef + Clone>(
    labels: &mut Vec<L>,
    enforced: &[L],
    on_conflict: ConflictPolicy,
    limits: &Limits,
) -> Result<(), CodecError> {
    if labels.is_empty() {
        return Err(CodecError::Invalid("series has no labels".into()));
    }
    for label in labels.iter() {
        let (name, value) = (label.name(), label.value());
        if name.is_empty() {
            return Err(invalid(labels, "has a label with an empty name".into()));
        }
        if name.len() > limits.max_label_name_bytes {
            return Err(invalid(
                labels,
                format!(
                    "label name of {} bytes is over the limit of {}",
                    name.len(),
                    limits.max_label_name_bytes
                ),
            ));
        }
        if value.len() > limits.max_label_value_bytes {
            return Err(invalid(
                labels,
                format!(
                    "label {name:?} has a value of {} bytes, over the limit of {}",
                    value.len(),
                    limits.max_label_value_bytes
                ),
            ));
        }
    }
    // Prometheus treats an empty value as an absent label; so does every backend.
    labels.retain(|label| !label.value().is_empty());
    // Stable, so that which of two same-named labels an error names never depends on
    // the sort's whims.
    if !labels.is_sorted_by(|a, b| a.name() <= b.name()) {
        labels.sort_by(|a, b| a.name().cmp(b.name()));
    }
    if let Some(pair) = labels
        .windows(2)
        .find(|pair| pair[0].name() == pair[1].name())
    {
        let name = pair[0].name().to_string();
        return Err(invalid(
            labels,
            format!("has the label name {name:?} more than once"),
        ));
    }
    if !labels.iter().any(|label| label.name() == "__name__") {
        return Err(invalid(labels, "has no __name__ label".into()));
    }
    for wanted in enforced {
        if let Ok(index) = labels.binary_search_by(|label| label.name().cmp(wanted.name())) {
            if on_conflict == ConflictPolicy::Reject && labels[index].value() != wanted.value() {
                return Err(invalid(
                    labels,
                    format!(
                        "sets {}={:?}, which belongs to another tenant (on_conflict = \"reject\")",
                        wanted.name(),
                        labels[index].value()
                    ),
                ));
            }
            labels.remove(index);
        }
    }
    for wanted in enforced {
        let index = labels
            .binary_search_by(|label| label.name().cmp(wanted.name()))
            .unwrap_or_else(|insert_at| insert_at);
        labels.insert(index, wanted.clone());
    }
    check_label_count(labels, limits)
}

/// The per-series label cap, counting the enforced labels.
fn check_label_count<L: LabelRef>(labels: &[L], limits: &Limits) -> Result<(), CodecError> {
    if labels.len() > limits.max_labels_per_series {
        return Err(invalid(
            labels,
            format!(
                "has {} labels with the tenant's labels, over the limit of {}",
                labels.len(),
                limits.max_labels_per_series
            ),
        ));
    }
    Ok(())
}

/// Refuses a series whose newest sample or histogram is too far ahead of now.
pub(crate) fn check_newest<L: LabelRef>(
    labels: &[L],
    newest: Option<i64>,
    newest_allowed_ms: i64,
    limits: &Limits,
) -> Result<(), CodecError> {
    match newest {
        Some(newest) if newest > newest_allowed_ms => Err(invalid(
            labels,
            format!(
                "has a sample at {newest} ms, more than {} ahead of now",
                humantime::format_duration(limits.max_future_skew)
            ),
        )),
        _ => Ok(()),
    }
}

fn invalid<L: LabelRef>(labels: &[L], what: String) -> CodecError {
    match labels.iter().find(|label| label.name() == "__name__") {
        Some(name) => CodecError::Invalid(format!("series {:?} {what}", name.value())),
        None => CodecError::Invalid(format!("series {what}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Exemplar, Sample};

    const NOW: i64 = 1_700_000_000_000;

    fn label(name: &str, value: &str) -> Label {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }

    fn series(labels: &[(&str, &str)], timestamp: i64) -> TimeSeries {
        TimeSeries {
            labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
            samples: vec![Sample {
                value: 1.0,
                timestamp,
            }],
            ..TimeSeries::default()
        }
    }

    fn policy(on_conflict: ConflictPolicy) -> LabelPolicy {
        LabelPolicy::new("tenant_id", "alpha", [], on_conflict)
    }

    fn enforce_one(
        series: TimeSeries,
        on_conflict: ConflictPolicy,
    ) -> Result<Vec<Label>, CodecError> {
        let mut request = WriteRequest {
            timeseries: vec![series],
            metadata: vec![],
        };
        validate_and_enforce(&mut request, &policy(on_conflict), &Limits::default(), NOW)?;
        Ok(request.timeseries.remove(0).labels)
    }

    #[test]
    fn adds_tenant_label_in_byte_order() {
        let labels = enforce_one(
            series(&[("job", "x"), ("__name__", "up"), ("Zone", "z")], NOW),
            ConflictPolicy::Override,
        )
        .expect("valid");
        let names: Vec<_> = labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["Zone", "__name__", "job", "tenant_id"]);
    }

    #[test]
    fn client_tenant_label_is_replaced_or_rejected() {
        let spoof = series(&[("__name__", "up"), ("tenant_id", "beta")], NOW);
        let labels = enforce_one(spoof.clone(), ConflictPolicy::Override).expect("valid");
        assert_eq!(
            labels,
            vec![label("__name__", "up"), label("tenant_id", "alpha")]
        );
        let err = enforce_one(spoof, ConflictPolicy::Reject).expect_err("rejected");
        assert!(err.to_string().contains("another tenant"), "{err}");
        let same = series(&[("__name__", "up"), ("tenant_id", "alpha")], NOW);
        assert!(enforce_one(same, ConflictPolicy::Reject).is_ok());
    }

    #[test]
    fn invalid_series_are_named() {
        for (labels, needle) in [
            (
                vec![("__name__", "up"), ("a", "1"), ("a", "2")],
                "more than once",
            ),
            (vec![("job", "x")], "no __name__"),
            (vec![("__name__", "up"), ("", "x")], "empty name"),
            (vec![], "no labels"),
        ] {
            let err =
                enforce_one(series(&labels, NOW), ConflictPolicy::Override).expect_err("invalid");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn empty_values_are_dropped_before_checks() {
        let labels = enforce_one(
            series(&[("__name__", "up"), ("job", "")], NOW),
            ConflictPolicy::Override,
        )
        .expect("valid");
        assert_eq!(
            labels,
            vec![label("__name__", "up"), label("tenant_id", "alpha")]
        );
        let err = enforce_one(
            series(&[("__name__", ""), ("job", "x")], NOW),
            ConflictPolicy::Override,
        )
        .expect_err("empty __name__ is no __name__");
        assert!(err.to_string().contains("no __name__"));
    }

    #[test]
    fn future_samples_are_refused() {
        let hour = 3_600_000;
        let err = enforce_one(
            series(&[("__name__", "up")], NOW + hour),
            ConflictPolicy::Override,
        )
        .expect_err("an hour ahead");
        assert!(err.to_string().contains("ahead of now"), "{err}");
        assert!(enforce_one(
            series(&[("__name__", "up")], NOW + 60_000),
            ConflictPolicy::Override
        )
        .is_ok());
    }

    #[test]
    fn label_limits_count_the_tenant_label() {
        let limits = Limits {
            max_labels_per_series: 2,
            ..Limits::default()
        };
        let mut request = WriteRequest {
            timeseries: vec![series(&[("__name__", "up"), ("job", "x")], NOW)],
            metadata: vec![],
        };
        let err = validate_and_enforce(
            &mut request,
            &policy(ConflictPolicy::Override),
            &limits,
            NOW,
        )
        .expect_err("3 labels > 2");
        assert!(err.to_string().contains("over the limit of 2"));
    }

    #[test]
    fn exemplar_labels_and_stale_nan_bits_are_untouched() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let mut one = series(&[("__name__", "up")], NOW);
        one.samples[0].value = stale;
        one.exemplars.push(Exemplar {
            labels: vec![label("tenant_id", "beta"), label("trace_id", "abc")],
            value: 2.0,
            timestamp: NOW,
        });
        let mut request = WriteRequest {
            timeseries: vec![one],
            metadata: vec![],
        };
        validate_and_enforce(
            &mut request,
            &policy(ConflictPolicy::Override),
            &Limits::default(),
            NOW,
        )
        .expect("valid");
        let bytes = encode_compressed(&request);
        let decoded =
            decode(&super::super::snappy::decompress_capped(&bytes, 1 << 20).expect("snappy"))
                .expect("decodes");
        let series = &decoded.timeseries[0];
        assert_eq!(series.samples[0].value.to_bits(), 0x7ff0_0000_0000_0002);
        assert_eq!(series.exemplars[0].labels[0], label("tenant_id", "beta"));
    }
}
