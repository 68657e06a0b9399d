//! Defence in depth on what a backend returns (DESIGN §7 steps 5–6): a series whose
//! tenant label is not the caller's is dropped and counted (it means the backend ignored
//! the matcher promgate added); the tenant label is stripped when configured; the sample
//! budget is enforced while streaming. Chunk bytes pass through untouched.

use bytes::{Bytes, BytesMut};
use prost::Message;

use super::frame::{encode_frame, FrameDecoder};
use super::ReadError;
use crate::proto::{ChunkedReadResponse, Label, ReadResponse};

/// Whose series a response may contain, and whether to hide the tenant label.
#[derive(Clone, Debug)]
pub struct ReadScope {
    pub label: String,
    pub value: String,
    pub strip: bool,
}

/// What filtering did to one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterStats {
    pub series: u64,
    pub foreign_series: u64,
    pub samples: u64,
}

impl ReadScope {
    /// Keeps the series when it carries exactly the caller's tenant label; strips it
    /// when configured. Labels stay sorted: removing one label keeps the order.
    fn admit(&self, labels: &mut Vec<Label>) -> bool {
        let mut tenant_values = labels.iter().filter(|label| label.name == self.label);
        let is_callers = matches!(
            (tenant_values.next(), tenant_values.next()),
            (Some(label), None) if label.value == self.value
        );
        if is_callers && self.strip {
            labels.retain(|label| label.name != self.label);
        }
        is_callers
    }
}

/// Filters a decoded SAMPLES `ReadResponse`; returns it encoded (not compressed).
pub fn filter_samples_response(
    decoded: &[u8],
    scope: &ReadScope,
    expected_results: usize,
    max_samples: u64,
) -> Result<(Vec<u8>, FilterStats), ReadError> {
    let mut response = ReadResponse::decode(decoded).map_err(|err| {
        ReadError::Backend(format!("backend sent an undecodable ReadResponse: {err}"))
    })?;
    if response.results.len() != expected_results {
        return Err(ReadError::Backend(format!(
            "backend answered {} results for {expected_results} queries",
            response.results.len()
        )));
    }
    let mut stats = FilterStats::default();
    for result in &mut response.results {
        result.timeseries.retain_mut(|series| {
            let keep = scope.admit(&mut series.labels);
            if keep {
                stats.series += 1;
                stats.samples += (series.samples.len() + series.histograms.len()) as u64;
            } else {
                stats.foreign_series += 1;
            }
            keep
        });
        if stats.samples > max_samples {
            return Err(ReadError::TooManySamples { limit: max_samples });
        }
    }
    Ok((response.encode_to_vec(), stats))
}

/// Filters a STREAMED_XOR_CHUNKS response frame by frame, as bytes arrive.
pub struct StreamFilter {
    decoder: FrameDecoder,
    scope: ReadScope,
    max_samples: u64,
    pub stats: FilterStats,
}

impl StreamFilter {
    pub fn new(scope: ReadScope, max_frame_bytes: u64, max_samples: u64) -> StreamFilter {
        StreamFilter {
            decoder: FrameDecoder::new(max_frame_bytes),
            scope,
            max_samples,
            stats: FilterStats::default(),
        }
    }

    /// Feeds backend bytes; appends every complete, admitted frame to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut BytesMut) -> Result<(), ReadError> {
        self.decoder.push(bytes);
        while let Some(frame) = self.decoder.next_frame()? {
            if let Some(data) = self.filter_frame(frame)? {
                encode_frame(&data, out);
            }
        }
        Ok(())
    }

    /// At the end of the backend stream: a partial frame left over is an error.
    pub fn finish(&self) -> Result<(), ReadError> {
        Ok(self.decoder.finish()?)
    }

    /// `None` when nothing of the frame is the caller's: no frame may carry zero series
    /// (Prometheus' client indexes the first series of every frame).
    fn filter_frame(&mut self, frame: Bytes) -> Result<Option<Vec<u8>>, ReadError> {
        let mut response = ChunkedReadResponse::decode(frame).map_err(|err| {
            ReadError::Backend(format!("backend sent an undecodable frame: {err}"))
        })?;
        let scope = &self.scope;
        let stats = &mut self.stats;
        response.chunked_series.retain_mut(|series| {
            let keep = scope.admit(&mut series.labels);
            if keep {
                stats.series += 1;
                stats.samples += series
                    .chunks
                    .iter()
                    .map(|chunk| chunk_samples(&chunk.data))
                    .sum::<u64>();
            } else {
                stats.foreign_series += 1;
            }
            keep
        });
        if self.stats.samples > self.max_samples {
            return Err(ReadError::TooManySamples {
                limit: self.max_samples,
            });
        }
        if response.chunked_series.is_empty() {
            return Ok(None);
        }
        Ok(Some(response.encode_to_vec()))
    }
}

/// Every Prometheus chunk encoding (XOR, histogram, float histogram) starts with its
/// sample count as a big-endian u16; chunks too short to have one count as zero.
fn chunk_samples(data: &[u8]) -> u64 {
    match data {
        [high, low, ..] => u64::from(u16::from_be_bytes([*high, *low])),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Chunk, ChunkedSeries, QueryResult, Sample, TimeSeries};

    fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
        pairs
            .iter()
            .map(|(name, value)| Label {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect()
    }

    fn scope(strip: bool) -> ReadScope {
        ReadScope {
            label: "tenant_id".into(),
            value: "alpha".into(),
            strip,
        }
    }

    /// The XOR chunk of PROTOCOL.md §1.4: four samples.
    const XOR_CHUNK: [u8; 18] = [
        0x00, 0x04, 0xd0, 0x0f, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0xe8, 0x07, 0x30, 0x97, 0xff, 0xc0,
    ];

    fn frame(tenant: Option<&str>) -> Vec<u8> {
        let mut pairs = vec![("__name__", "up")];
        if let Some(tenant) = tenant {
            pairs.push(("tenant_id", tenant));
        }
        let response = ChunkedReadResponse {
            chunked_series: vec![ChunkedSeries {
                labels: labels(&pairs),
                chunks: vec![Chunk {
                    min_time_ms: 1000,
                    max_time_ms: 4000,
                    r#type: 1,
                    data: Bytes::from_static(&XOR_CHUNK),
                }],
            }],
            query_index: 0,
        };
        let mut out = BytesMut::new();
        encode_frame(&response.encode_to_vec(), &mut out);
        out.to_vec()
    }

    #[test]
    fn admit_keeps_only_the_callers_series() {
        let scope = scope(true);
        let mut mine = labels(&[("__name__", "up"), ("tenant_id", "alpha")]);
        assert!(scope.admit(&mut mine));
        assert_eq!(mine, labels(&[("__name__", "up")]));
        for pairs in [
            vec![("__name__", "up"), ("tenant_id", "beta")],
            vec![("__name__", "up")],
            vec![
                ("__name__", "up"),
                ("tenant_id", "alpha"),
                ("tenant_id", "beta"),
            ],
        ] {
            assert!(!scope.admit(&mut labels(&pairs)), "{pairs:?}");
        }
    }

    #[test]
    fn samples_response_keeps_result_count_and_drops_foreign_series() {
        let series = |tenant: &str| TimeSeries {
            labels: labels(&[("__name__", "up"), ("tenant_id", tenant)]),
            samples: vec![Sample {
                value: 1.0,
                timestamp: 1,
            }],
            ..TimeSeries::default()
        };
        let response = ReadResponse {
            results: vec![
                QueryResult {
                    timeseries: vec![series("alpha"), series("beta")],
                },
                QueryResult {
                    timeseries: vec![series("beta")],
                },
            ],
        };
        let (encoded, stats) =
            filter_samples_response(&response.encode_to_vec(), &scope(true), 2, 100)
                .expect("filtered");
        let filtered = ReadResponse::decode(encoded.as_slice()).expect("decodes");
        assert_eq!(filtered.results.len(), 2);
        assert_eq!(filtered.results[0].timeseries.len(), 1);
        assert_eq!(
            filtered.results[0].timeseries[0].labels,
            labels(&[("__name__", "up")])
        );
        assert!(filtered.results[1].timeseries.is_empty());
        assert_eq!(
            stats,
            FilterStats {
                series: 1,
                foreign_series: 2,
                samples: 1
            }
        );
        assert!(filter_samples_response(&response.encode_to_vec(), &scope(true), 3, 100).is_err());
        assert_eq!(
            filter_samples_response(&response.encode_to_vec(), &scope(true), 2, 0),
            Err(ReadError::TooManySamples { limit: 0 })
        );
    }

    #[test]
    fn stream_filter_drops_foreign_frames_and_keeps_chunk_bytes() {
        let mut input = frame(Some("alpha"));
        input.extend(frame(Some("beta")));
        input.extend(frame(None));
        let mut filter = StreamFilter::new(scope(true), 1 << 20, 100);
        let mut out = BytesMut::new();
        for piece in input.chunks(7) {
            filter.push(piece, &mut out).expect("valid");
        }
        filter.finish().expect("complete");
        assert_eq!(
            filter.stats,
            FilterStats {
                series: 1,
                foreign_series: 2,
                samples: 4
            }
        );
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&out);
        let data = decoder.next_frame().expect("valid").expect("one frame");
        assert_eq!(decoder.next_frame(), Ok(None));
        let response = ChunkedReadResponse::decode(data).expect("decodes");
        assert_eq!(
            response.chunked_series[0].labels,
            labels(&[("__name__", "up")])
        );
        assert_eq!(&response.chunked_series[0].chunks[0].data[..], &XOR_CHUNK);
    }

    #[test]
    fn stream_sample_budget_is_enforced_mid_stream() {
        let mut input = frame(Some("alpha"));
        input.extend(frame(Some("alpha")));
        let mut filter = StreamFilter::new(scope(false), 1 << 20, 6);
        let mut out = BytesMut::new();
        assert_eq!(
            filter.push(&input, &mut out),
            Err(ReadError::TooManySamples { limit: 6 })
        );
    }
}
