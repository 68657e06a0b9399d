//! Writes cut to fit a backend (DESIGN §9): a body over the backend's
//! `max_request_bytes` (snappy-compressed) or `max_samples_per_request` is sent as
//! several requests cut at series boundaries, in order; a part the backend answers 413
//! is halved and sent again, down to a single series, which is then a permanent refusal
//! (counted and logged) while the rest of the write is still delivered. A sender never
//! sees a 413 for a write that fitted promgate's own limits.

use std::collections::VecDeque;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{BackendClient, Outcome, Written};
use crate::codec::snappy;
use crate::codec::split::{self, Caps};
use crate::config::WriteProtocol;
use crate::telemetry::{BackendLabel, Metrics};

/// What sending one write (in one request or several) came to.
pub(super) struct SentWrite {
    pub outcome: Outcome,
    /// What a remote write 2.0 backend said it wrote, summed over the parts; `None` when
    /// an accepted part did not say.
    pub written: Option<Written>,
}

/// Parts are planned by decoded size at this fraction of what the compressed cap allows
/// (the compression ratio varies along a body); a part still over is halved.
const PLAN_MARGIN: f64 = 0.9;
/// A body promgate built is decompressed up to this to be cut (promgate's own request
/// caps keep bodies far below it).
const MAX_CUT_DECODED_BYTES: u64 = 1 << 30;

fn too_large(head: &Option<(StatusCode, HeaderMap)>) -> bool {
    head.as_ref()
        .is_some_and(|(status, _)| *status == StatusCode::PAYLOAD_TOO_LARGE)
}

fn written_of(head: &Option<(StatusCode, HeaderMap)>) -> Option<Written> {
    head.as_ref()
        .and_then(|(_, headers)| Written::from_headers(headers))
}

impl BackendClient {
    /// Sends a snappy-compressed write body, cut into parts when it is over the
    /// backend's caps or the backend answers 413.
    pub(super) async fn send_write(
        &self,
        tenant_id: &str,
        body: Bytes,
        protocol: WriteProtocol,
        metrics: &Metrics,
    ) -> SentWrite {
        let over_bytes =
            self.config.max_request_bytes > 0 && body.len() as u64 > self.config.max_request_bytes;
        if over_bytes || self.config.max_samples_per_request > 0 {
            if let Some(sent) = self
                .send_parts(tenant_id, &body, protocol, metrics, false)
                .await
            {
                return sent;
            }
        }
        let (outcome, head) = self.send(tenant_id, body.clone(), protocol, metrics).await;
        if too_large(&head) {
            if let Some(sent) = self
                .send_parts(tenant_id, &body, protocol, metrics, true)
                .await
            {
                return sent;
            }
        }
        SentWrite {
            written: written_of(&head),
            outcome,
        }
    }

    /// Sends `body` in parts: planned from the caps, or (`refused_whole`, after a 413)
    /// its two halves. `None` when it need not or cannot be cut (within the caps, or not
    /// a body that reads), so it is sent as it is.
    async fn send_parts(
        &self,
        tenant_id: &str,
        body: &Bytes,
        protocol: WriteProtocol,
        metrics: &Metrics,
        refused_whole: bool,
    ) -> Option<SentWrite> {
        let decoded = snappy::decompress_capped(body, MAX_CUT_DECODED_BYTES).ok()?;
        let fields = split::fields(&decoded, protocol).ok()?;
        let max_bytes = self.config.max_request_bytes;
        let mut runs: VecDeque<_> = if refused_whole {
            match split::halves(0..fields.series_count()) {
                Some((first, second)) => [first, second].into(),
                None => {
                    self.count_oversized(tenant_id, metrics, fields.series_count().max(1));
                    return Some(SentWrite {
                        outcome: oversized(fields.series_count().max(1)),
                        written: None,
                    });
                }
            }
        } else {
            let compressed_per_decoded = body.len() as f64 / decoded.len().max(1) as f64;
            let decoded_cap = if max_bytes > 0 {
                ((max_bytes as f64 / compressed_per_decoded.max(1e-3)) * PLAN_MARGIN).max(1.0)
                    as u64
            } else {
                0
            };
            let plan = fields.plan(Caps {
                max_bytes: decoded_cap,
                max_samples: self.config.max_samples_per_request,
            });
            let fits = body.len() as u64 <= max_bytes || max_bytes == 0;
            if plan.len() <= 1 && fits {
                return None;
            }
            plan.into()
        };
        metrics
            .backend_split_writes
            .get_or_create(&BackendLabel::of(&self.config.name))
            .inc();
        let mut written = Some(Written::default());
        let mut refused_series = 0;
        while let Some(run) = runs.pop_front() {
            let part = Bytes::from(snappy::compress(&fields.part(run.clone())));
            if max_bytes > 0 && part.len() as u64 > max_bytes {
                if let Some((first, second)) = split::halves(run.clone()) {
                    runs.push_front(second);
                    runs.push_front(first);
                    continue;
                }
            }
            let (outcome, head) = self.send(tenant_id, part, protocol, metrics).await;
            if too_large(&head) {
                match split::halves(run.clone()) {
                    Some((first, second)) => {
                        runs.push_front(second);
                        runs.push_front(first);
                    }
                    None => {
                        self.count_oversized(tenant_id, metrics, 1);
                        refused_series += 1;
                    }
                }
                continue;
            }
            if outcome != Outcome::Accepted {
                return Some(SentWrite {
                    outcome,
                    written: None,
                });
            }
            written = written
                .zip(written_of(&head))
                .map(|(sum, part)| sum.plus(part));
        }
        let outcome = if refused_series > 0 {
            oversized(refused_series)
        } else {
            Outcome::Accepted
        };
        Some(SentWrite { outcome, written })
    }

    fn count_oversized(&self, tenant_id: &str, metrics: &Metrics, series: usize) {
        tracing::warn!(
            backend = %self.config.name,
            tenant = %tenant_id,
            series,
            "the backend refuses a single series as too large (413); it is dropped"
        );
        metrics
            .backend_oversized_series
            .get_or_create(&BackendLabel::of(&self.config.name))
            .inc_by(series as u64);
    }
}

fn oversized(series: usize) -> Outcome {
    Outcome::Rejected {
        message: format!(
            "{series} series refused by the backend as too large (413) even alone; the rest of the write was delivered"
        ),
    }
}
