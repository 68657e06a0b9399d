//! Limit keys shared by the `[limits]` config table and each tenant's `limits`
//! override object in the admin API (DESIGN §3, §8; defaults from SECURITY.md §4).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{HumanDuration, HumanSize};

/// Declares [`Limits`] (effective values), [`LimitOverrides`] (the same keys, each
/// optional, as written in `[limits]` or a tenant's `limits` object) and the defaults,
/// from one list so the three cannot drift apart.
macro_rules! limit_keys {
    ($( $(#[doc = $doc:literal])* $name:ident: $ty:ty = $default:expr, written as $raw:ty; )*) => {
        /// The effective limits for one tenant: config defaults with the tenant's overrides applied.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Limits {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $( $name: $default, )* }
            }
        }

        /// A partial set of limits. Unknown keys are reported by the callers, which parse
        /// through `serde_ignored`.
        #[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
        pub struct LimitOverrides {
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<$raw>,
            )*
        }

        impl Limits {
            /// Applies `overrides` on top of `self`.
            pub fn with(&self, overrides: &LimitOverrides) -> Limits {
                Limits { $( $name: overrides.$name.clone().map_or_else(|| self.$name.clone(), Into::into), )* }
            }
        }
    };
}

limit_keys! {
    /// Compressed request body (413 above).
    max_request_bytes: u64 = 32 * 1024 * 1024, written as HumanSize;
    /// Snappy's announced decoded length, checked before decompressing.
    max_decoded_bytes: u64 = 32 * 1024 * 1024, written as HumanSize;
    max_series_per_request: usize = 50_000, written as usize;
    /// Counted after the tenant's labels are added.
    max_labels_per_series: usize = 30, written as usize;
    max_label_name_bytes: usize = 1024, written as usize;
    max_label_value_bytes: usize = 2048, written as usize;
    /// How far ahead of now a sample may be.
    max_future_skew: Duration = Duration::from_secs(600), written as HumanDuration;
    samples_per_second: u64 = 10_000, written as u64;
    burst_samples: u64 = 200_000, written as u64;
    requests_per_second: u64 = 100, written as u64;
    read_requests_per_second: u64 = 10, written as u64;
    /// Remote reads a tenant may make at once before the per-second rate applies: a
    /// dashboard refresh sends dozens together.
    read_requests_burst: u64 = 100, written as u64;
    /// Samples one remote-read request may return, SAMPLES and streamed alike.
    max_read_samples: u64 = 50_000_000, written as u64;
    /// A remote-read request body, compressed and decoded.
    max_read_request_bytes: u64 = 1024 * 1024, written as HumanSize;
    /// A buffered (SAMPLES) remote-read response, compressed and decoded.
    max_read_response_bytes: u64 = 256 * 1024 * 1024, written as HumanSize;
    /// One frame of a streamed remote-read response. Prometheus cuts frames at 1 MiB
    /// before marshalling and may exceed that by one chunk, hence 2 MiB.
    max_read_frame_bytes: u64 = 2 * 1024 * 1024, written as HumanSize;
    /// The longest time range one remote-read query may cover.
    max_read_range: Duration = Duration::from_secs(721 * 3600), written as HumanDuration;
    /// Remote-read requests a tenant may have in flight at once.
    max_concurrent_reads: usize = 4, written as usize;
    /// Remote-read requests a tenant may have waiting for a slot; more get a throttle answer.
    max_queued_reads: usize = 100, written as usize;
    /// Regex matcher bytes one remote-read request may carry, all queries together.
    max_read_regex_bytes: u64 = 64 * 1024, written as HumanSize;
    /// Write requests a tenant may have in flight at once (Prometheus' default queue
    /// sends at most 50 shards at once; more wait their turn).
    max_concurrent_writes: usize = 16, written as usize;
    /// Decoded write bodies a tenant may hold at once, by their announced size; at least
    /// `max_decoded_bytes`, so that every request fits.
    max_in_flight_decoded_bytes: u64 = 64 * 1024 * 1024, written as HumanSize;
    /// Query API requests (DESIGN §13) per second, and at once before that rate applies:
    /// a dashboard opening sends dozens of queries together.
    query_requests_per_second: u64 = 20, written as u64;
    query_requests_burst: u64 = 200, written as u64;
    /// Query API requests a tenant may have at the backend at once.
    max_concurrent_queries: usize = 8, written as usize;
    /// Query API requests a tenant may have waiting for a slot; more get a throttle answer.
    max_queued_queries: usize = 100, written as usize;
    /// The longest a query may run (Prometheus' `--query.timeout` default); also caps the
    /// `timeout` parameter passed to the backend.
    query_timeout: Duration = Duration::from_secs(120), written as HumanDuration;
    /// A query API answer from the backend, as received (422 above).
    max_query_response_bytes: u64 = 64 * 1024 * 1024, written as HumanSize;
    /// 429 (default) or 503 for senders that never retry 429.
    throttle_status: u16 = 429, written as u16;
    /// Distinct series (label sets as they reach the backend) the tenant may have
    /// written within `active_series_idle_timeout` (DESIGN §14; Mimir's
    /// `max_global_series_per_user`); new series past it are refused. 0 = unlimited.
    max_active_series: u64 = 150_000, written as u64;
    /// A series not written for this long stops counting as active.
    active_series_idle_timeout: Duration = Duration::from_secs(20 * 60), written as HumanDuration;
    /// De-duplicate the tenant's Prometheus HA pairs (DESIGN §15): a series carrying
    /// both `ha_cluster_label` and `ha_replica_label` is written only from the elected
    /// replica of its cluster, without the replica label.
    accept_ha_samples: bool = false, written as bool;
    /// The label naming a series' HA cluster (kept on the series).
    ha_cluster_label: String = "cluster".to_string(), written as String;
    /// The label naming a series' HA replica (removed from written series).
    ha_replica_label: String = "__replica__".to_string(), written as String;
    /// After this long without samples from the elected replica, the replica then
    /// sending is elected.
    ha_failover_timeout: Duration = Duration::from_secs(30), written as HumanDuration;
    /// HA clusters the tenant may have; series of a new cluster past it are refused.
    ha_max_clusters: u64 = 100, written as u64;
}

impl From<HumanSize> for u64 {
    fn from(size: HumanSize) -> u64 {
        size.0
    }
}

impl From<HumanDuration> for Duration {
    fn from(duration: HumanDuration) -> Duration {
        duration.0
    }
}

/// The hard ceiling for request and decoded sizes: backends (VictoriaMetrics,
/// Prometheus 3.x) refuse more than 32 MiB, Mimir 100 MiB; promgate buffers the body.
const MAX_CONFIGURABLE_BYTES: u64 = 256 * 1024 * 1024;

/// The shortest HA failover timeout: the election is refreshed every third of it, and
/// a remote-write sender sends at least every few seconds.
pub const MIN_HA_FAILOVER_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest HA failover timeout.
pub const MAX_HA_FAILOVER_TIMEOUT: Duration = Duration::from_secs(86_400);

/// The longest idle timeout: the tracker's second stamps wrap after 194 days.
pub const MAX_ACTIVE_SERIES_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);

impl Limits {
    /// This replica's share of the tenant's rates when `replicas` share them (the way
    /// Mimir's distributors share a global ingestion rate): the per-second rates are
    /// divided, rounded up; the burst stays whole, as Mimir's does.
    pub fn shared_by(&self, replicas: usize) -> Limits {
        let replicas = replicas.max(1) as u64;
        let share = |rate: u64| rate.div_ceil(replicas);
        Limits {
            samples_per_second: share(self.samples_per_second),
            requests_per_second: share(self.requests_per_second),
            read_requests_per_second: share(self.read_requests_per_second),
            query_requests_per_second: share(self.query_requests_per_second),
            ..self.clone()
        }
    }

    /// The HA labels may not be the tenancy label, which promgate owns.
    pub fn ha_label_problems(&self, tenant_label: &str) -> Vec<String> {
        [
            ("ha_cluster_label", &self.ha_cluster_label),
            ("ha_replica_label", &self.ha_replica_label),
        ]
        .into_iter()
        .filter(|(_, name)| name.as_str() == tenant_label)
        .map(|(key, name)| {
            format!("limits.{key} {name:?} is the tenancy label, which promgate owns")
        })
        .collect()
    }

    /// Every problem with these limits, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("max_request_bytes", self.max_request_bytes),
            ("max_decoded_bytes", self.max_decoded_bytes),
            ("max_read_request_bytes", self.max_read_request_bytes),
            ("max_read_response_bytes", self.max_read_response_bytes),
            ("max_read_frame_bytes", self.max_read_frame_bytes),
            ("max_read_regex_bytes", self.max_read_regex_bytes),
            ("max_query_response_bytes", self.max_query_response_bytes),
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
            ("max_concurrent_reads", self.max_concurrent_reads),
            ("max_concurrent_writes", self.max_concurrent_writes),
            ("max_concurrent_queries", self.max_concurrent_queries),
        ] {
            if value == 0 {
                problems.push(format!("limits.{key} must be at least 1"));
            }
        }
        if self.max_decoded_bytes > self.max_in_flight_decoded_bytes {
            problems.push(format!(
                "limits.max_decoded_bytes ({}) is larger than limits.max_in_flight_decoded_bytes ({}): \
                 such a request could never be admitted",
                HumanSize(self.max_decoded_bytes),
                HumanSize(self.max_in_flight_decoded_bytes)
            ));
        }
        if self.max_labels_per_series < 2 {
            problems.push(
                "limits.max_labels_per_series must leave room for __name__ and the tenant label"
                    .into(),
            );
        }
        if self.query_timeout < Duration::from_secs(1) {
            problems.push("limits.query_timeout must be at least 1s".into());
        }
        if self.active_series_idle_timeout < Duration::from_secs(1)
            || self.active_series_idle_timeout > MAX_ACTIVE_SERIES_IDLE_TIMEOUT
        {
            problems.push("limits.active_series_idle_timeout must be between 1s and 30d".into());
        }
        if self.ha_failover_timeout < MIN_HA_FAILOVER_TIMEOUT
            || self.ha_failover_timeout > MAX_HA_FAILOVER_TIMEOUT
        {
            problems.push("limits.ha_failover_timeout must be between 1s and 1d".into());
        }
        for (key, name) in [
            ("ha_cluster_label", &self.ha_cluster_label),
            ("ha_replica_label", &self.ha_replica_label),
        ] {
            if !valid_label_name(name) {
                problems.push(format!(
                    "limits.{key} {name:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"
                ));
            }
        }
        if self.ha_cluster_label == self.ha_replica_label {
            problems.push("limits.ha_cluster_label and limits.ha_replica_label must differ".into());
        }
        for (key, name) in [
            ("ha_cluster_label", &self.ha_cluster_label),
            ("ha_replica_label", &self.ha_replica_label),
        ] {
            if name == "__name__" {
                problems.push(format!("limits.{key} must not be __name__"));
            }
        }
        if self.ha_max_clusters == 0 {
            problems.push("limits.ha_max_clusters must be at least 1".into());
        }
        if self.max_read_range.is_zero() {
            problems.push("limits.max_read_range must be longer than 0s".into());
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

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
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
    fn rates_are_shared_among_replicas_and_the_burst_is_not() {
        let limits = Limits {
            samples_per_second: 3000,
            burst_samples: 9000,
            requests_per_second: 10,
            ..Limits::default()
        };
        let share = limits.shared_by(3);
        assert_eq!(
            (share.samples_per_second, share.requests_per_second),
            (1000, 4)
        );
        assert_eq!(share.burst_samples, 9000);
        assert_eq!(limits.shared_by(0), limits.shared_by(1));
        assert_eq!(limits.shared_by(1), limits);
    }

    #[test]
    fn a_request_size_the_in_flight_budget_cannot_hold_is_a_problem() {
        let limits = Limits {
            max_decoded_bytes: 64 * 1024 * 1024,
            max_in_flight_decoded_bytes: 32 * 1024 * 1024,
            ..Limits::default()
        };
        let problems = limits.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("could never be admitted"),
            "{problems:?}"
        );
        assert!(Limits::default().problems().is_empty());
    }

    #[test]
    fn ha_keys_are_checked() {
        let overrides: LimitOverrides = serde_json::from_str(
            r#"{"accept_ha_samples": true, "ha_cluster_label": "pair", "ha_failover_timeout": "10s"}"#,
        )
        .expect("valid");
        let limits = Limits::default().with(&overrides);
        assert!(limits.accept_ha_samples);
        assert_eq!(limits.ha_cluster_label, "pair");
        assert_eq!(limits.ha_replica_label, "__replica__");
        assert_eq!(limits.ha_failover_timeout, Duration::from_secs(10));
        assert!(limits.problems().is_empty());
        for bad in [
            r#"{"ha_failover_timeout": "500ms"}"#,
            r#"{"ha_cluster_label": "1cluster"}"#,
            r#"{"ha_replica_label": "re-plica"}"#,
            r#"{"ha_replica_label": "cluster"}"#,
            r#"{"ha_cluster_label": "__name__"}"#,
            r#"{"ha_max_clusters": 0}"#,
        ] {
            let overrides: LimitOverrides = serde_json::from_str(bad).expect("parses");
            assert_eq!(
                Limits::default().with(&overrides).problems().len(),
                1,
                "{bad}"
            );
        }
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
