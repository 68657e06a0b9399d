//! Limit keys shared by the `[limits]` config table and each tenant's `limits`
//! override object in the admin API (DESIGN §3, §8; defaults from SECURITY.md §4).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{HumanDuration, HumanSize};

/// The effective limits for one tenant: config defaults with the tenant's overrides applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_request_bytes: u64,
    pub max_decoded_bytes: u64,
    pub max_series_per_request: usize,
    pub max_labels_per_series: usize,
    pub max_label_name_bytes: usize,
    pub max_label_value_bytes: usize,
    pub max_future_skew: Duration,
    pub samples_per_second: u64,
    pub burst_samples: u64,
    pub requests_per_second: u64,
    pub read_requests_per_second: u64,
    pub max_read_samples: u64,
    pub throttle_status: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 32 * 1024 * 1024,
            max_decoded_bytes: 32 * 1024 * 1024,
            max_series_per_request: 50_000,
            max_labels_per_series: 30,
            max_label_name_bytes: 1024,
            max_label_value_bytes: 2048,
            max_future_skew: Duration::from_secs(600),
            samples_per_second: 10_000,
            burst_samples: 200_000,
            requests_per_second: 100,
            read_requests_per_second: 10,
            max_read_samples: 50_000_000,
            throttle_status: 429,
        }
    }
}

/// A partial set of limits, as written in `[limits]` or a tenant's `limits` object.
/// Unknown keys are reported by the callers, which parse through `serde_ignored`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<HumanSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_decoded_bytes: Option<HumanSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_series_per_request: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_labels_per_series: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_label_name_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_label_value_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_future_skew: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_requests_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_read_samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_status: Option<u16>,
}

/// The hard ceiling for request and decoded sizes: backends (VictoriaMetrics,
/// Prometheus 3.x) refuse more than 32 MiB, Mimir 100 MiB; promgate buffers the body.
const MAX_CONFIGURABLE_BYTES: u64 = 256 * 1024 * 1024;

impl Limits {
    /// Applies `overrides` on top of `self`.
    pub fn with(&self, overrides: &LimitOverrides) -> Limits {
        Limits {
            max_request_bytes: overrides
                .max_request_bytes
                .map_or(self.max_request_bytes, |v| v.0),
            max_decoded_bytes: overrides
                .max_decoded_bytes
                .map_or(self.max_decoded_bytes, |v| v.0),
            max_series_per_request: overrides
                .max_series_per_request
                .unwrap_or(self.max_series_per_request),
            max_labels_per_series: overrides
                .max_labels_per_series
                .unwrap_or(self.max_labels_per_series),
            max_label_name_bytes: overrides
                .max_label_name_bytes
                .unwrap_or(self.max_label_name_bytes),
            max_label_value_bytes: overrides
                .max_label_value_bytes
                .unwrap_or(self.max_label_value_bytes),
            max_future_skew: overrides
                .max_future_skew
                .map_or(self.max_future_skew, |v| v.0),
            samples_per_second: overrides
                .samples_per_second
                .unwrap_or(self.samples_per_second),
            burst_samples: overrides.burst_samples.unwrap_or(self.burst_samples),
            requests_per_second: overrides
                .requests_per_second
                .unwrap_or(self.requests_per_second),
            read_requests_per_second: overrides
                .read_requests_per_second
                .unwrap_or(self.read_requests_per_second),
            max_read_samples: overrides.max_read_samples.unwrap_or(self.max_read_samples),
            throttle_status: overrides.throttle_status.unwrap_or(self.throttle_status),
        }
    }

    /// Every problem with these limits, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("max_request_bytes", self.max_request_bytes),
            ("max_decoded_bytes", self.max_decoded_bytes),
        ] {
            if value == 0 || value > MAX_CONFIGURABLE_BYTES {
                problems.push(format!("limits.{key} must be between 1 byte and 256MiB"));
            }
        }
        for (key, value) in [
            ("max_series_per_request", self.max_series_per_request),
            ("max_labels_per_series", self.max_labels_per_series),
            ("max_label_name_bytes", self.max_label_name_bytes),
            ("max_label_value_bytes", self.max_label_value_bytes),
        ] {
            if value == 0 {
                problems.push(format!("limits.{key} must be at least 1"));
            }
        }
        if self.max_labels_per_series < 2 {
            problems.push(
                "limits.max_labels_per_series must leave room for __name__ and the tenant label"
                    .into(),
            );
        }
        if self.throttle_status != 429 && self.throttle_status != 503 {
            problems.push(format!(
                "limits.throttle_status must be 429 or 503, not {}",
                self.throttle_status
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_only_the_keys_they_name() {
        let overrides: LimitOverrides =
            serde_json::from_str(r#"{"max_request_bytes": "1MiB", "samples_per_second": 5}"#)
                .expect("valid");
        let limits = Limits::default().with(&overrides);
        assert_eq!(limits.max_request_bytes, 1024 * 1024);
        assert_eq!(limits.samples_per_second, 5);
        assert_eq!(limits.burst_samples, Limits::default().burst_samples);
    }

    #[test]
    fn throttle_status_must_be_429_or_503() {
        let limits = Limits {
            throttle_status: 418,
            ..Limits::default()
        };
        assert_eq!(limits.problems().len(), 1);
    }
}
