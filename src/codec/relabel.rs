//! A tenant's rules over whole requests, for tenants that have rules (the others never
//! come here and keep the zero-copy paths): a decompressed remote write 1.0 or 2.0 body
//! is decoded with prost (the reference path), each series relabeled, dropped series
//! left out, and the body encoded again for the zero-copy path that validates it and
//! enforces the tenant's labels. Translated OTLP series are relabeled in place
//! ([`Scope::series`]).

use prost::Message;

use crate::codec::write::LabelPolicy;
use crate::codec::{rw2, write, CodecError};
use crate::config::Limits;
use crate::proto::write_v2::Request;
use crate::proto::{Label, TimeSeries};
use crate::series::relabel::{Bounds, Dropped, RelabelRules, Relabeled};

/// What a tenant's series are relabeled with: its rules, the labels enforcement owns
/// (which the rules cannot change), and its label limits.
pub struct Scope<'a> {
    rules: &'a RelabelRules,
    protected: Vec<&'a str>,
    bounds: Bounds,
}

impl<'a> Scope<'a> {
    /// `None` when the tenant has no rules.
    pub fn of(rules: &'a RelabelRules, policy: &'a LabelPolicy, limits: &Limits) -> Option<Self> {
        if rules.is_empty() {
            return None;
        }
        Some(Scope {
            rules,
            protected: policy
                .enforced
                .iter()
                .map(|label| label.name.as_str())
                .collect(),
            bounds: Bounds {
                max_labels: limits.max_labels_per_series,
                max_name_bytes: limits.max_label_name_bytes,
                max_value_bytes: limits.max_label_value_bytes,
            },
        })
    }

    /// Relabels one series' labels; false when it is dropped.
    fn labels(&self, labels: &mut Vec<Label>) -> Result<bool, CodecError> {
        // As validation will see them: empty values are absent labels, and the order is
        // by name. A name sent twice is refused by validation whatever the rules do.
        labels.retain(|label| !label.value.is_empty());
        if !labels.is_sorted_by(|a, b| a.name <= b.name) {
            labels.sort_by(|a, b| a.name.cmp(&b.name));
        }
        if labels.windows(2).any(|pair| pair[0].name == pair[1].name) {
            return Ok(true);
        }
        match self.rules.apply(labels, &self.protected, self.bounds) {
            Ok(Relabeled::Keep) => Ok(true),
            Ok(Relabeled::Dropped) => Ok(false),
            Err(overgrown) => Err(CodecError::Invalid(overgrown.to_string())),
        }
    }

    /// Relabels a translated or decoded series; false when it is dropped (and then
    /// counted in `dropped`).
    pub fn series(
        &self,
        series: &mut TimeSeries,
        dropped: &mut Dropped,
    ) -> Result<bool, CodecError> {
        let kept = self.labels(&mut series.labels)?;
        if !kept {
            dropped.series += 1;
            dropped.samples +=
                (series.samples.len() + series.histograms.len() + series.exemplars.len()) as u64;
        }
        Ok(kept)
    }

    /// A decompressed remote write 1.0 body, relabeled into `out`.
    pub fn v1(&self, decoded: &[u8], out: &mut Vec<u8>) -> Result<Dropped, CodecError> {
        let mut request = write::decode(decoded)?;
        let mut dropped = Dropped::default();
        let mut failure = None;
        request.timeseries.retain_mut(|series| {
            if failure.is_some() {
                return false;
            }
            self.series(series, &mut dropped).unwrap_or_else(|err| {
                failure = Some(err);
                false
            })
        });
        if let Some(err) = failure {
            return Err(err);
        }
        out.clear();
        request
            .encode(out)
            .map_err(|err| CodecError::Protobuf(err.to_string()))?;
        Ok(dropped)
    }

    /// A decompressed remote write 2.0 body, relabeled into `out`. The symbol table keeps
    /// every symbol it had (exemplars and metadata refer to them) and gains the names
    /// and values the rules made.
    pub fn v2(&self, decoded: &[u8], out: &mut Vec<u8>) -> Result<Dropped, CodecError> {
        let mut request: Request = rw2::decode(decoded)?;
        let mut dropped = Dropped::default();
        let mut added: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        let mut kept = Vec::with_capacity(request.timeseries.len());
        for mut series in std::mem::take(&mut request.timeseries) {
            if series.labels_refs.len() % 2 != 0 {
                // Left for the zero-copy path to refuse in its own words.
                kept.push(series);
                continue;
            }
            let mut labels = Vec::with_capacity(series.labels_refs.len() / 2);
            let mut resolvable = true;
            for pair in series.labels_refs.chunks_exact(2) {
                match (
                    rw2::symbol(&request.symbols, pair[0]),
                    rw2::symbol(&request.symbols, pair[1]),
                ) {
                    (Some(name), Some(value)) => labels.push(Label {
                        name: name.to_string(),
                        value: value.to_string(),
                    }),
                    _ => resolvable = false,
                }
            }
            if !resolvable {
                kept.push(series);
                continue;
            }
            if !self.labels(&mut labels)? {
                dropped.series += 1;
                dropped.samples += (series.samples.len()
                    + series.histograms.len()
                    + series.exemplars.len()) as u64;
                continue;
            }
            series.labels_refs.clear();
            for label in labels {
                for text in [label.name, label.value] {
                    let reference = intern(&mut request.symbols, &mut added, text)?;
                    series.labels_refs.push(reference);
                }
            }
            kept.push(series);
        }
        request.timeseries = kept;
        out.clear();
        request
            .encode(out)
            .map_err(|err| CodecError::Protobuf(err.to_string()))?;
        Ok(dropped)
    }
}

/// The reference of `text` in the symbol table: one the rules already added, else a new
/// one at the end. Symbols the sender sent are not searched (that would cost a map of
/// the whole table); a repeated string costs a few bytes.
fn intern(
    symbols: &mut Vec<String>,
    added: &mut std::collections::HashMap<String, u32>,
    text: String,
) -> Result<u32, CodecError> {
    if let Some(&reference) = added.get(&text) {
        return Ok(reference);
    }
    let reference = u32::try_from(symbols.len())
        .map_err(|_| CodecError::Invalid("symbol table too large".into()))?;
    symbols.push(text.clone());
    added.insert(text, reference);
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConflictPolicy;
    use crate::proto::write_v2 as v2;

    fn scope_parts() -> (RelabelRules, LabelPolicy, Limits) {
        let configs: Vec<crate::series::relabel::RelabelConfig> =
            serde_json::from_value(serde_json::json!([
                {"source_labels": ["__name__"], "regex": "noisy", "action": "drop"},
                {"regex": "pod", "action": "labeldrop"},
                {"source_labels": ["job"], "target_label": "service", "replacement": "svc-$1"}
            ]))
            .expect("configs");
        (
            RelabelRules::compile(&configs).expect("rules"),
            LabelPolicy::new("tenant_id", "t", [], ConflictPolicy::Override),
            Limits::default(),
        )
    }

    #[test]
    fn a_tenant_without_rules_has_no_scope() {
        let (_, policy, limits) = scope_parts();
        assert!(Scope::of(&RelabelRules::default(), &policy, &limits).is_none());
    }

    #[test]
    fn remote_write_2_keeps_exemplar_and_metadata_references() {
        let (rules, policy, limits) = scope_parts();
        let scope = Scope::of(&rules, &policy, &limits).expect("rules");
        let symbols: Vec<String> = [
            "", "__name__", "up", "job", "api", "pod", "p1", "trace_id", "abc", "noisy", "help",
        ]
        .iter()
        .map(|text| text.to_string())
        .collect();
        let request = v2::Request {
            symbols,
            timeseries: vec![
                v2::TimeSeries {
                    labels_refs: vec![1, 2, 3, 4, 5, 6],
                    samples: vec![v2::Sample {
                        value: 1.0,
                        timestamp: 5,
                        start_timestamp: 0,
                    }],
                    exemplars: vec![v2::Exemplar {
                        labels_refs: vec![7, 8],
                        value: 1.0,
                        timestamp: 5,
                    }],
                    metadata: Some(v2::Metadata {
                        help_ref: 10,
                        ..v2::Metadata::default()
                    }),
                    ..v2::TimeSeries::default()
                },
                v2::TimeSeries {
                    labels_refs: vec![1, 9],
                    samples: vec![v2::Sample::default(), v2::Sample::default()],
                    ..v2::TimeSeries::default()
                },
            ],
        };
        let mut out = Vec::new();
        let dropped = scope
            .v2(&request.encode_to_vec(), &mut out)
            .expect("relabeled");
        assert_eq!(
            dropped,
            Dropped {
                series: 1,
                samples: 2
            }
        );
        let back = v2::Request::decode(out.as_slice()).expect("v2");
        assert_eq!(back.timeseries.len(), 1);
        let series = &back.timeseries[0];
        let resolved: Vec<(&str, &str)> = series
            .labels_refs
            .chunks_exact(2)
            .map(|pair| {
                (
                    back.symbols[pair[0] as usize].as_str(),
                    back.symbols[pair[1] as usize].as_str(),
                )
            })
            .collect();
        assert_eq!(
            resolved,
            [("__name__", "up"), ("job", "api"), ("service", "svc-api")]
        );
        // The sender's symbols are where they were: exemplars and metadata still point
        // at the same strings.
        assert_eq!(&back.symbols[..11], &request.symbols[..]);
        assert_eq!(series.exemplars, request.timeseries[0].exemplars);
        assert_eq!(
            back.symbols[series.metadata.as_ref().expect("metadata").help_ref as usize],
            "help"
        );
    }
}
