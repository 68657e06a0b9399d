//! Cutting a decoded remote-write body into smaller ones at series boundaries, for a
//! backend that accepts less than the sender sent (DESIGN §9: `max_request_bytes`,
//! `max_samples_per_request`, a 413). Pure: the backend client decides when to cut.
//!
//! A part is a valid message of the same kind, each field copied as its raw bytes:
//! - remote write 1.0 (`WriteRequest`): a run of consecutive series; metadata and any
//!   other field ride with the first part;
//! - remote write 2.0 (`Request`): the whole symbol table and a run of consecutive
//!   series (their label and metadata references point into the table, so every part
//!   carries it); other fields ride with the first part.
//!
//! Parts keep the series' order, and together hold every series exactly once.

use std::ops::Range;

use super::wire::{Reader, WireError, LEN, TOP_DEPTH};
use crate::config::WriteProtocol;

/// A body's fields, ready to be cut.
#[derive(Debug)]
pub struct Fields<'a> {
    /// Fields every part carries (2.0: the symbols).
    shared: Vec<&'a [u8]>,
    /// Each series field and the samples it holds (float samples and histograms).
    series: Vec<(&'a [u8], u64)>,
    /// Fields only the first part carries.
    first_only: Vec<&'a [u8]>,
}

/// The body does not read as its protocol's message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot cut the body into parts: {0}")]
pub struct SplitError(String);

impl From<WireError> for SplitError {
    fn from(err: WireError) -> SplitError {
        SplitError(err.to_string())
    }
}

/// What each part must fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// Decoded bytes per part (0: no cap).
    pub max_bytes: u64,
    /// Float samples plus histogram samples per part (0: no cap).
    pub max_samples: u64,
}

/// The field numbers of one protocol: series, and the fields every part needs.
fn layout(protocol: WriteProtocol) -> (u32, Option<u32>, u32, u32) {
    // (series field, shared field, samples field in a series, histograms field in a series)
    match protocol {
        WriteProtocol::V1 => (1, None, 2, 4),
        WriteProtocol::V2 => (5, Some(4), 2, 3),
    }
}

/// Reads the top-level fields of a decoded body.
pub fn fields(decoded: &[u8], protocol: WriteProtocol) -> Result<Fields<'_>, SplitError> {
    let (series_field, shared_field, samples_field, histograms_field) = layout(protocol);
    let mut reader = Reader::new(decoded);
    let mut fields = Fields {
        shared: Vec::new(),
        series: Vec::new(),
        first_only: Vec::new(),
    };
    while !reader.is_empty() {
        let start = reader.pos();
        let (field, wire_type) = reader.key()?;
        if wire_type == LEN && field == series_field {
            let payload = reader.length_delimited()?;
            let samples = count_samples(payload, samples_field, histograms_field)?;
            fields.series.push((&decoded[start..reader.pos()], samples));
            continue;
        }
        reader.skip(wire_type, field, TOP_DEPTH)?;
        let raw = &decoded[start..reader.pos()];
        if Some(field) == shared_field {
            fields.shared.push(raw);
        } else {
            fields.first_only.push(raw);
        }
    }
    Ok(fields)
}

/// The float samples and histograms of one series message.
fn count_samples(
    series: &[u8],
    samples_field: u32,
    histograms_field: u32,
) -> Result<u64, SplitError> {
    let mut reader = Reader::new(series);
    let mut count = 0;
    while !reader.is_empty() {
        let (field, wire_type) = reader.key()?;
        if wire_type == LEN && (field == samples_field || field == histograms_field) {
            count += 1;
        }
        reader.skip(wire_type, field, TOP_DEPTH - 1)?;
    }
    Ok(count)
}

impl Fields<'_> {
    /// How many series the body holds.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The samples of the series in `range`.
    pub fn samples(&self, range: Range<usize>) -> u64 {
        self.series[range].iter().map(|(_, samples)| samples).sum()
    }

    /// The decoded part holding the series in `range` (and, for the part that starts
    /// at the first series, the fields that ride with it).
    pub fn part(&self, range: Range<usize>) -> Vec<u8> {
        let first = range.start == 0;
        let shared: usize = self.shared.iter().map(|field| field.len()).sum();
        let series: usize = self.series[range.clone()]
            .iter()
            .map(|(field, _)| field.len())
            .sum();
        let mut out = Vec::with_capacity(shared + series);
        for field in &self.shared {
            out.extend_from_slice(field);
        }
        if first {
            for field in &self.first_only {
                out.extend_from_slice(field);
            }
        }
        for (field, _) in &self.series[range] {
            out.extend_from_slice(field);
        }
        out
    }

    /// The series cut into consecutive runs, each within `caps` where a single series
    /// allows it (a series larger than a cap is a run of its own).
    pub fn plan(&self, caps: Caps) -> Vec<Range<usize>> {
        let shared: u64 = self.shared.iter().map(|field| field.len() as u64).sum();
        let first_only: u64 = self.first_only.iter().map(|field| field.len() as u64).sum();
        let mut runs = Vec::new();
        let mut start = 0;
        let mut bytes = shared + first_only;
        let mut samples = 0;
        for (index, (field, count)) in self.series.iter().enumerate() {
            let (field_bytes, count) = (field.len() as u64, *count);
            let over_bytes = caps.max_bytes > 0 && bytes + field_bytes > caps.max_bytes;
            let over_samples = caps.max_samples > 0 && samples + count > caps.max_samples;
            if index > start && (over_bytes || over_samples) {
                runs.push(start..index);
                start = index;
                bytes = shared;
                samples = 0;
            }
            bytes += field_bytes;
            samples += count;
        }
        if start < self.series.len() || runs.is_empty() {
            runs.push(start..self.series.len());
        }
        runs
    }
}

/// The two halves of a run, for a backend that refused it as too large.
pub fn halves(range: Range<usize>) -> Option<(Range<usize>, Range<usize>)> {
    if range.len() < 2 {
        return None;
    }
    let middle = range.start + range.len() / 2;
    Some((range.start..middle, middle..range.end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Label, MetricMetadata, Sample, TimeSeries, WriteRequest};
    use prost::Message;

    fn request(series: usize, samples_each: usize) -> WriteRequest {
        WriteRequest {
            timeseries: (0..series)
                .map(|i| TimeSeries {
                    labels: vec![Label {
                        name: "__name__".into(),
                        value: format!("series_{i}"),
                    }],
                    samples: (0..samples_each)
                        .map(|t| Sample {
                            value: t as f64,
                            timestamp: t as i64,
                        })
                        .collect(),
                    ..TimeSeries::default()
                })
                .collect(),
            metadata: vec![MetricMetadata {
                metric_family_name: "series_0".into(),
                ..MetricMetadata::default()
            }],
        }
    }

    #[test]
    fn parts_hold_every_series_once_in_order_within_the_caps() {
        let whole = request(100, 3);
        let decoded = whole.encode_to_vec();
        let fields = fields(&decoded, WriteProtocol::V1).expect("a WriteRequest");
        assert_eq!(fields.series_count(), 100);
        assert_eq!(fields.samples(0..100), 300);
        for caps in [
            Caps {
                max_bytes: 500,
                max_samples: 0,
            },
            Caps {
                max_bytes: 0,
                max_samples: 10,
            },
            Caps {
                max_bytes: 1,
                max_samples: 0,
            },
        ] {
            let plan = fields.plan(caps);
            assert!(plan.len() > 1, "{caps:?}");
            let mut joined = WriteRequest::default();
            for (index, run) in plan.iter().enumerate() {
                let part = WriteRequest::decode(fields.part(run.clone()).as_slice()).expect("part");
                if caps.max_bytes > 1 {
                    assert!(fields.part(run.clone()).len() as u64 <= caps.max_bytes);
                }
                if caps.max_samples > 0 {
                    assert!(fields.samples(run.clone()) <= caps.max_samples);
                }
                assert_eq!(
                    part.metadata.is_empty(),
                    index > 0,
                    "metadata rides with the first"
                );
                joined.timeseries.extend(part.timeseries);
                joined.metadata.extend(part.metadata);
            }
            assert_eq!(joined, whole, "{caps:?}");
        }
        assert_eq!(fields.plan(Caps::default()), vec![0..100]);
    }

    #[test]
    fn two_point_zero_parts_carry_the_symbol_table() {
        use crate::proto::write_v2 as v2;
        let whole = v2::Request {
            symbols: vec!["".into(), "__name__".into(), "up".into()],
            timeseries: (0..10)
                .map(|i| v2::TimeSeries {
                    labels_refs: vec![1, 2],
                    samples: vec![v2::Sample {
                        value: 1.0,
                        timestamp: i,
                        ..v2::Sample::default()
                    }],
                    ..v2::TimeSeries::default()
                })
                .collect(),
        };
        let decoded = whole.encode_to_vec();
        let fields = fields(&decoded, WriteProtocol::V2).expect("a 2.0 request");
        let plan = fields.plan(Caps {
            max_bytes: 0,
            max_samples: 3,
        });
        assert_eq!(plan, vec![0..3, 3..6, 6..9, 9..10]);
        let mut series = Vec::new();
        for run in plan {
            let part = v2::Request::decode(fields.part(run).as_slice()).expect("part");
            assert_eq!(part.symbols, whole.symbols);
            series.extend(part.timeseries);
        }
        assert_eq!(series, whole.timeseries);
        assert_eq!(halves(0..1), None);
        assert_eq!(halves(4..9), Some((4..6, 6..9)));
    }

    #[test]
    fn bodies_that_do_not_read_are_not_cut() {
        assert!(fields(&[0x0a, 0x05, 0x01], WriteProtocol::V1).is_err());
    }
}
