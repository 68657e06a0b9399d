//! OTel exponential histograms to Prometheus native histograms, by the rules of
//! Prometheus' OTLP receiver (`exponentialToNativeHistogram` and `convertBucketsLayout`
//! in `storage/remote/otlptranslator/prometheusremotewrite/histograms.go`):
//!
//! - the OTel scale is the native schema; scales above 8 are merged down to 8 (2^(scale-8)
//!   buckets into one), scales below -4 and above 20 (OpenTelemetry's finest) are refused;
//! - OTel bucket index `i` covers `(base^i, base^(i+1)]`, Prometheus index `i` covers
//!   `(base^(i-1), base^i]`: indexes shift by one;
//! - dense bucket counts become spans and deltas; a gap of up to two empty buckets is
//!   filled with zero buckets, a longer one opens a new span (client_golang's rule);
//! - the zero threshold is Prometheus' default 1e-128 (upstream does not read OTel's
//!   `zero_threshold` yet); the reset hint is UNKNOWN, GAUGE for delta temporality;
//! - a point flagged "no recorded value" becomes a stale marker: sum and count hold the
//!   stale-NaN bits.

use super::STALE_NAN_BITS;
use crate::proto::histogram::{Count, ResetHint, ZeroCount};
use crate::proto::{BucketSpan, Histogram};
use opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint;

/// Native histogram schemas Prometheus stores (`ExponentialSchemaMin/Max`).
const SCHEMA_MIN: i32 = -4;
const SCHEMA_MAX: i32 = 8;
/// The finest scale OpenTelemetry's exponential histograms define.
const OTEL_SCALE_MAX: i32 = 20;
const DEFAULT_ZERO_THRESHOLD: f64 = 1e-128;
const MAX_BUCKET_INDEX: i64 = 1 << 30;

/// One exponential-histogram point as a native histogram sample at `timestamp_ms`.
pub fn to_native(
    point: &ExponentialHistogramDataPoint,
    delta: bool,
    timestamp_ms: i64,
) -> Result<Histogram, String> {
    let mut scale = point.scale;
    if scale < SCHEMA_MIN {
        return Err(format!(
            "cannot convert exponential to native histogram: scale must be >= {SCHEMA_MIN}, was {scale}"
        ));
    }
    if scale > OTEL_SCALE_MAX {
        return Err(format!(
            "cannot convert exponential to native histogram: scale must be <= {OTEL_SCALE_MAX}, was {scale}"
        ));
    }
    // Bucket indexes far beyond any real histogram (2^30 buckets from zero) would only
    // overflow the index arithmetic.
    for buckets in [&point.positive, &point.negative].into_iter().flatten() {
        let len = i64::try_from(buckets.bucket_counts.len()).unwrap_or(i64::MAX);
        let offset = i64::from(buckets.offset);
        if offset.abs() > MAX_BUCKET_INDEX || offset.saturating_add(len) > MAX_BUCKET_INDEX {
            return Err(format!(
                "exponential histogram bucket offset {} with {} buckets is out of range",
                buckets.offset, len
            ));
        }
    }
    let mut scale_down = 0;
    if scale > SCHEMA_MAX {
        scale_down = scale.abs_diff(SCHEMA_MAX);
        scale = SCHEMA_MAX;
    }
    let (positive_spans, positive_deltas) = point
        .positive
        .as_ref()
        .map(|buckets| bucket_layout(&buckets.bucket_counts, buckets.offset, scale_down))
        .unwrap_or_default();
    let (negative_spans, negative_deltas) = point
        .negative
        .as_ref()
        .map(|buckets| bucket_layout(&buckets.bucket_counts, buckets.offset, scale_down))
        .unwrap_or_default();
    let stale = point.flags & super::NO_RECORDED_VALUE != 0;
    let (sum, count) = if stale {
        (f64::from_bits(STALE_NAN_BITS), STALE_NAN_BITS)
    } else {
        (point.sum.unwrap_or(0.0), point.count)
    };
    Ok(Histogram {
        count: Some(Count::CountInt(count)),
        sum,
        schema: scale,
        zero_threshold: DEFAULT_ZERO_THRESHOLD,
        zero_count: Some(ZeroCount::ZeroCountInt(point.zero_count)),
        negative_spans,
        negative_deltas,
        negative_counts: Vec::new(),
        positive_spans,
        positive_deltas,
        positive_counts: Vec::new(),
        reset_hint: if delta {
            ResetHint::Gauge
        } else {
            ResetHint::Unknown
        } as i32,
        timestamp: timestamp_ms,
        custom_values: Vec::new(),
    })
}

/// Dense OTel bucket counts starting at OTel index `offset` as Prometheus spans and
/// deltas, `2^scale_down` OTel buckets merged into one.
fn bucket_layout(counts: &[u64], offset: i32, scale_down: u32) -> (Vec<BucketSpan>, Vec<i64>) {
    if counts.is_empty() {
        return (Vec::new(), Vec::new());
    }
    // The Prometheus index of OTel index `otel` after merging.
    let index = |otel: i32| merged_index(otel, scale_down) + 1;
    let mut layout = Layout {
        spans: vec![BucketSpan {
            offset: index(offset),
            length: 0,
        }],
        deltas: Vec::with_capacity(counts.len()),
        previous: 0,
    };
    let mut current = index(offset);
    let mut count = 0i64;
    for (i, &bucket) in counts.iter().enumerate() {
        let bucket = i64::try_from(bucket).unwrap_or(i64::MAX);
        let next = index(offset.saturating_add(i32::try_from(i).unwrap_or(i32::MAX)));
        if next == current {
            count = count.saturating_add(bucket);
            continue;
        }
        if count == 0 {
            // Nothing for `current` yet: no bucket is written for it now; the gap to
            // the next written bucket is measured from it (filled or spanned over).
            count = bucket;
            continue;
        }
        layout.bridge(next - current - 1);
        layout.push(count);
        count = bucket;
        current = next;
    }
    let last = index(offset.saturating_add(i32::try_from(counts.len() - 1).unwrap_or(i32::MAX)));
    layout.bridge(last - current);
    layout.push(count);
    (layout.spans, layout.deltas)
}

/// OTel index `otel` with `2^scale_down` buckets merged into one: `otel >> scale_down`
/// (rounding down), which for shifts of 32 or more is 0 or -1 instead of a wrapped shift.
fn merged_index(otel: i32, scale_down: u32) -> i32 {
    otel.checked_shr(scale_down)
        .unwrap_or(if otel < 0 { -1 } else { 0 })
}

/// Spans and deltas being written.
struct Layout {
    spans: Vec<BucketSpan>,
    deltas: Vec<i64>,
    previous: i64,
}

impl Layout {
    fn push(&mut self, count: i64) {
        if let Some(last) = self.spans.last_mut() {
            last.length += 1;
        }
        self.deltas.push(count - self.previous);
        self.previous = count;
    }

    /// Skips `gap` empty buckets: a new span after more than two, else zero buckets.
    fn bridge(&mut self, gap: i32) {
        if gap > 2 {
            self.spans.push(BucketSpan {
                offset: gap,
                length: 0,
            });
        } else {
            for _ in 0..gap.max(0) {
                self.push(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;

    fn span(offset: i32, length: u32) -> BucketSpan {
        BucketSpan { offset, length }
    }

    /// Prometheus' `histograms_test.go` (`TestConvertBucketsLayout`): each bucket list at
    /// scale-down 0, 1 and 2.
    #[test]
    fn bucket_layout_follows_upstream_cases() {
        type Want = (Vec<BucketSpan>, Vec<i64>);
        let cases: Vec<(i32, Vec<u64>, [Want; 3])> = vec![
            (
                0,
                vec![4, 3, 2, 1],
                [
                    (vec![span(1, 4)], vec![4, -1, -1, -1]),
                    (vec![span(1, 2)], vec![7, -4]),
                    (vec![span(1, 1)], vec![10]),
                ],
            ),
            (
                1,
                vec![4, 3, 2, 1],
                [
                    (vec![span(2, 4)], vec![4, -1, -1, -1]),
                    (vec![span(1, 3)], vec![4, 1, -4]),
                    (vec![span(1, 2)], vec![9, -8]),
                ],
            ),
            (
                4,
                vec![4, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [
                    (vec![span(5, 4), span(12, 1)], vec![4, -2, -2, 2, -1]),
                    (vec![span(3, 2), span(6, 1)], vec![6, -4, -1]),
                    (vec![span(2, 1), span(3, 1)], vec![8, -7]),
                ],
            ),
            (
                4,
                vec![4, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [
                    (vec![span(5, 4), span(8, 1)], vec![4, -2, -2, 2, -1]),
                    (vec![span(3, 2), span(4, 1)], vec![6, -4, -1]),
                    (vec![span(2, 4)], vec![8, -8, 0, 1]),
                ],
            ),
            (
                -2,
                vec![3, 1, 0, 0, 0, 1],
                [
                    (vec![span(-1, 2), span(3, 1)], vec![3, -2, 0]),
                    (vec![span(0, 3)], vec![4, -4, 1]),
                    (vec![span(0, 2)], vec![4, -3]),
                ],
            ),
            (
                -2,
                vec![3, 1, 0, 1, 0, 1],
                [
                    (vec![span(-1, 6)], vec![3, -2, -1, 1, -1, 1]),
                    (vec![span(0, 3)], vec![4, -3, 0]),
                    (vec![span(0, 2)], vec![4, -2]),
                ],
            ),
            (
                -2,
                vec![3, 0, 0, 1, 0, 0, 1],
                [
                    (vec![span(-1, 7)], vec![3, -3, 0, 1, -1, 0, 1]),
                    (vec![span(0, 4)], vec![3, -2, -1, 1]),
                    (vec![span(0, 3)], vec![3, -2, 0]),
                ],
            ),
        ];
        for (offset, counts, wants) in cases {
            for (scale_down, want) in wants.into_iter().enumerate() {
                assert_eq!(
                    bucket_layout(&counts, offset, scale_down as u32),
                    want,
                    "offset {offset} counts {counts:?} scale-down {scale_down}"
                );
            }
        }
        assert_eq!(bucket_layout(&[], 0, 1), (vec![], vec![]));
    }

    fn point(scale: i32) -> ExponentialHistogramDataPoint {
        ExponentialHistogramDataPoint {
            count: 10,
            sum: Some(30.0),
            scale,
            zero_count: 1,
            positive: Some(Buckets {
                offset: 1,
                bucket_counts: vec![2, 3, 4],
            }),
            negative: Some(Buckets {
                offset: 0,
                bucket_counts: vec![0],
            }),
            ..ExponentialHistogramDataPoint::default()
        }
    }

    #[test]
    fn exponential_point_becomes_a_native_histogram() {
        let native = to_native(&point(2), false, 1234).expect("valid");
        assert_eq!(native.schema, 2);
        assert_eq!(native.count, Some(Count::CountInt(10)));
        assert_eq!(native.zero_count, Some(ZeroCount::ZeroCountInt(1)));
        assert_eq!(native.sum, 30.0);
        assert_eq!(native.zero_threshold, 1e-128);
        assert_eq!(native.positive_spans, vec![span(2, 3)]);
        assert_eq!(native.positive_deltas, vec![2, 1, 1]);
        assert_eq!(native.reset_hint, ResetHint::Unknown as i32);
        assert_eq!(native.timestamp, 1234);
        // Delta temporality: a gauge histogram.
        let delta = to_native(&point(2), true, 0).expect("valid");
        assert_eq!(delta.reset_hint, ResetHint::Gauge as i32);
    }

    #[test]
    fn scales_beyond_the_schemas() {
        // Scale 10 merges four OTel buckets into one at schema 8: OTel indexes 1..=3
        // all fall into Prometheus index (i >> 2) + 1 = 1.
        let merged = to_native(&point(10), false, 0).expect("valid");
        assert_eq!(merged.schema, 8);
        assert_eq!(merged.positive_spans, vec![span(1, 1)]);
        assert_eq!(merged.positive_deltas, vec![9]);
        let err = to_native(&point(-5), false, 0).expect_err("below -4");
        assert!(err.contains("scale must be >= -4"), "{err}");
        for offset in [i32::MAX, i32::MIN, (1 << 30) - 1] {
            let mut hostile = point(2);
            hostile.positive = Some(Buckets {
                offset,
                bucket_counts: vec![1, 2],
            });
            let err = to_native(&hostile, false, 0).expect_err("out of range");
            assert!(err.contains("out of range"), "{err}");
        }
    }

    #[test]
    fn scales_above_twenty_are_refused_and_no_shift_wraps() {
        // Scale 20 is the highest OpenTelemetry defines: merged down by 2^12.
        let finest = to_native(&point(20), false, 0).expect("scale 20 is valid");
        assert_eq!(finest.schema, 8);
        assert_eq!(finest.positive_spans, vec![span(1, 1)]);
        assert_eq!(finest.positive_deltas, vec![9]);
        for scale in [21, 40, 63, 64, i32::MAX] {
            let err = to_native(&point(scale), false, 0).expect_err("above 20");
            assert!(err.contains("scale must be <= 20"), "{scale}: {err}");
        }
        // Merging by 2^32 or more puts every index at or above zero into Prometheus
        // index 1 and every negative one into index 0, never a wrapped shift.
        for scale_down in [31, 32, 40, u32::MAX] {
            assert_eq!(
                bucket_layout(&[1, 2], -1, scale_down),
                (vec![span(0, 2)], vec![1, 1]),
                "scale-down {scale_down}"
            );
            assert_eq!(
                bucket_layout(&[1, 2], 5, scale_down),
                (vec![span(1, 1)], vec![3]),
                "scale-down {scale_down}"
            );
        }
    }

    #[test]
    fn no_recorded_value_is_a_stale_marker() {
        let mut stale = point(0);
        stale.flags = 1;
        let native = to_native(&stale, false, 0).expect("valid");
        assert_eq!(native.sum.to_bits(), STALE_NAN_BITS);
        assert_eq!(native.count, Some(Count::CountInt(STALE_NAN_BITS)));
    }
}
