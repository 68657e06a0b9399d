//! The active series limit applied to one rewritten request: each series is admitted or
//! refused by the tenant's tracker, and the refused ones are cut out of the request's
//! bytes, so the rest of the request is written (DESIGN §14).

use std::time::Duration;

use super::identity::SeriesSpan;
use super::tracker::ActiveSeries;
use crate::codec::write::WriteStats;

/// New series a request held past the tenant's limit (the request is answered 400 with
/// [`SeriesRefusal::reason`] once the rest is written).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeriesRefusal {
    pub limit: u64,
    /// New series refused.
    pub refused: u64,
    /// New series in the request, admitted or not.
    pub new: u64,
    /// Samples, histogram samples and exemplars of the refused series.
    pub samples: u64,
}

impl SeriesRefusal {
    /// The 400's reason, in DESIGN §14's words.
    pub fn reason(&self) -> String {
        format!(
            "per-tenant active series limit of {} reached: {} of {} series in this request are new and were refused",
            self.limit, self.refused, self.new
        )
    }
}

/// The tenant's limit and idle timeout, and where to count.
pub struct SeriesLimit<'a> {
    pub tracker: &'a ActiveSeries,
    pub tenant: &'a str,
    pub max_active_series: u64,
    pub idle_timeout: Duration,
}

/// Admits `spans` in order: whether each may be written, and what was refused.
pub fn admit_spans(
    limit: &SeriesLimit<'_>,
    spans: &[SeriesSpan],
) -> (Vec<bool>, Option<SeriesRefusal>) {
    let mut decisions = Vec::with_capacity(spans.len());
    let admitted = limit.tracker.admit(
        limit.tenant,
        limit.max_active_series,
        limit.idle_timeout,
        spans.iter().map(|span| span.identity),
        |ok| decisions.push(ok),
    );
    if admitted.refused == 0 {
        return (decisions, None);
    }
    let samples = spans
        .iter()
        .zip(&decisions)
        .filter(|(_, ok)| !**ok)
        .map(|(span, _)| {
            u64::from(span.samples) + u64::from(span.histograms) + u64::from(span.exemplars)
        })
        .sum();
    let refusal = SeriesRefusal {
        limit: limit.max_active_series,
        refused: admitted.refused,
        new: admitted.new + admitted.refused,
        samples,
    };
    (decisions, Some(refusal))
}

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
