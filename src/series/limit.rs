//! The active series limit applied to one request's series: each is admitted or refused
//! by the tenant's tracker, and the refusal is worded (DESIGN §14). Cutting the refused
//! series out of a rewritten body is `codec::refused`.

use std::time::Duration;

use super::identity::SeriesSpan;
use super::tracker::ActiveSeries;

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
