//! Series refused for the active series limit (DESIGN §14) cut out of a rewritten
//! remote write 1.0 body, so the rest of the request is written: the body is compacted
//! in place and its counts reduced.

use super::write::WriteStats;
use crate::series::limit::{admit_spans, SeriesLimit};
use crate::series::{SeriesRefusal, SeriesSpan};

/// Admits `spans` (in the order they lie in `out`, all before `series_end`), cuts the
/// refused ones out of `out` and out of `stats`, and returns the new `series_end` and
/// what was refused.
pub fn apply_limit(
    limit: &SeriesLimit<'_>,
    spans: &[SeriesSpan],
    out: &mut Vec<u8>,
    series_end: usize,
    stats: &mut WriteStats,
) -> (usize, Option<SeriesRefusal>) {
    let (decisions, refusal) = admit_spans(limit, spans);
    if refusal.is_none() {
        return (series_end, None);
    }
    let refused_spans: Vec<SeriesSpan> = spans
        .iter()
        .zip(&decisions)
        .filter(|(_, ok)| !**ok)
        .map(|(span, _)| *span)
        .collect();
    // Compact in place: keep everything between refused spans.
    let mut write = refused_spans[0].start;
    let mut read = write;
    for span in &refused_spans {
        out.copy_within(read..span.start, write);
        write += span.start - read;
        read = span.end;
        stats.samples -= span.samples as usize;
        stats.histograms -= span.histograms as usize;
        stats.exemplars -= span.exemplars as usize;
        stats.series -= 1;
    }
    out.copy_within(read.., write);
    let cut = read - write;
    out.truncate(out.len() - cut);
    (series_end - cut, refusal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::series::ActiveSeries;

    #[test]
    fn refused_series_are_cut_out_and_the_rest_kept_in_order() {
        let tracker = ActiveSeries::new();
        let limit = SeriesLimit {
            tracker: &tracker,
            tenant: "a",
            max_active_series: 2,
            idle_timeout: Duration::from_secs(60),
        };
        // Four one-byte "series" and two bytes of metadata.
        let mut out = b"ABCDmm".to_vec();
        let spans: Vec<SeriesSpan> = (0..4)
            .map(|i| SeriesSpan {
                identity: (i as u64 + 1) << 40,
                start: i,
                end: i + 1,
                samples: 1,
                histograms: 0,
                exemplars: 1,
            })
            .collect();
        let mut stats = WriteStats {
            series: 4,
            samples: 4,
            exemplars: 4,
            ..WriteStats::default()
        };
        let (series_end, refusal) = apply_limit(&limit, &spans, &mut out, 4, &mut stats);
        assert_eq!(out, b"ABmm");
        assert_eq!(series_end, 2);
        assert_eq!((stats.series, stats.samples, stats.exemplars), (2, 2, 2));
        let refusal = refusal.expect("two refused");
        assert_eq!((refusal.refused, refusal.new, refusal.samples), (2, 4, 4));
        assert_eq!(
            refusal.reason(),
            "per-tenant active series limit of 2 reached: 2 of 4 series in this request are new and were refused"
        );
        // B is active now: a request of B, C writes B and refuses C.
        let mut out = b"BC".to_vec();
        let spans = [
            spans[1],
            SeriesSpan {
                start: 1,
                end: 2,
                ..spans[2]
            },
        ];
        let spans = [
            SeriesSpan {
                start: 0,
                end: 1,
                ..spans[0]
            },
            spans[1],
        ];
        let mut stats = WriteStats {
            series: 2,
            samples: 2,
            exemplars: 2,
            ..WriteStats::default()
        };
        let (end, refusal) = apply_limit(&limit, &spans, &mut out, 2, &mut stats);
        assert_eq!((out.as_slice(), end), (&b"B"[..], 1));
        assert_eq!(refusal.map(|r| (r.refused, r.new)), Some((1, 1)));
    }
}
