//! Per-tenant token buckets (governor's GCRA): samples per second with a burst
//! (samples + histogram samples + exemplars), write requests per second, read requests
//! per second with a burst of their own (a dashboard refresh sends dozens at once). A tenant's buckets are rebuilt when its limits change, so new limits
//! apply to its next request. Generic over the clock so tests run on a fake one.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::Limits;

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// What a limiter says about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the rate: retry after this long (the time until the request would fit).
    Throttled {
        retry_after: Duration,
    },
    /// Larger than the whole burst: no wait can ever admit it.
    NeverFits {
        burst: u64,
    },
}

impl Verdict {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_seconds(retry_after: Duration) -> u64 {
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        seconds.max(1)
    }
}

/// The figures a tenant's buckets were built from; a change rebuilds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BucketKey {
    samples_per_second: u64,
    burst_samples: u64,
    requests_per_second: u64,
    read_requests_per_second: u64,
    read_requests_burst: u64,
    query_requests_per_second: u64,
    query_requests_burst: u64,
}

struct TenantBuckets<C: Clock> {
    key: BucketKey,
    samples: Option<Bucket<C>>,
    requests: Option<Bucket<C>>,
    reads: Option<Bucket<C>>,
    queries: Option<Bucket<C>>,
    /// Until when the tenant was told to wait after its last sample throttle: writes
    /// before then are refused before their bodies are read, so a flood costs headers only.
    samples_blocked_until: parking_lot::Mutex<Option<C::Instant>>,
}

pub struct RateLimits<C: Clock = DefaultClock> {
    clock: C,
    tenants: DashMap<String, Arc<TenantBuckets<C>>>,
}

impl Default for RateLimits<DefaultClock> {
    fn default() -> Self {
        RateLimits::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(clock: C) -> RateLimits<C> {
        RateLimits {
            clock,
            tenants: DashMap::new(),
        }
    }

    /// One write request of `tenant` against its requests-per-second bucket.
    pub fn check_write_request(&self, tenant: &str, limits: &Limits) -> Verdict {
        let buckets = self.buckets(tenant, limits);
        self.take(buckets.requests.as_ref(), 1, limits.requests_per_second)
    }

    /// One read request of `tenant` against its read-requests-per-second bucket.
    pub fn check_read_request(&self, tenant: &str, limits: &Limits) -> Verdict {
        let buckets = self.buckets(tenant, limits);
        self.take(buckets.reads.as_ref(), 1, limits.read_requests_per_second)
    }

    /// One query API request of `tenant` against its query-requests-per-second bucket.
    pub fn check_query_request(&self, tenant: &str, limits: &Limits) -> Verdict {
        let buckets = self.buckets(tenant, limits);
        self.take(
            buckets.queries.as_ref(),
            1,
            limits.query_requests_per_second,
        )
    }

    /// `samples` (samples + histogram samples + exemplars) of one write request.
    pub fn check_samples(&self, tenant: &str, limits: &Limits, samples: u64) -> Verdict {
        if samples == 0 {
            return Verdict::Allowed;
        }
        let buckets = self.buckets(tenant, limits);
        let verdict = self.take(buckets.samples.as_ref(), samples, limits.burst_samples);
        if let Verdict::Throttled { retry_after } = verdict {
            *buckets.samples_blocked_until.lock() = Some(self.clock.now() + retry_after.into());
        }
        verdict
    }

    /// Before a write's body is read: still inside the wait the tenant was last given
    /// for its samples? Then refuse at once with the time left.
    pub fn check_samples_blocked(&self, tenant: &str, limits: &Limits) -> Verdict {
        let buckets = self.buckets(tenant, limits);
        let blocked_until = *buckets.samples_blocked_until.lock();
        match blocked_until {
            Some(until) => {
                let now = self.clock.now();
                let left: Duration = until.duration_since(now).into();
                if left.is_zero() {
                    Verdict::Allowed
                } else {
                    Verdict::Throttled { retry_after: left }
                }
            }
            None => Verdict::Allowed,
        }
    }

    /// Forgets a tenant's buckets (it was deleted).
    pub fn forget(&self, tenant: &str) {
        self.tenants.remove(tenant);
    }

    fn take(&self, bucket: Option<&Bucket<C>>, amount: u64, burst: u64) -> Verdict {
        let Some(bucket) = bucket else {
            return Verdict::Allowed;
        };
        let Some(cells) = u32::try_from(amount).ok().and_then(NonZeroU32::new) else {
            return Verdict::NeverFits { burst };
        };
        match bucket.check_n(cells) {
            Ok(Ok(())) => Verdict::Allowed,
            Ok(Err(not_until)) => Verdict::Throttled {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
            Err(_) => Verdict::NeverFits { burst },
        }
    }

    fn buckets(&self, tenant: &str, limits: &Limits) -> Arc<TenantBuckets<C>> {
        let key = BucketKey {
            samples_per_second: limits.samples_per_second,
            burst_samples: limits.burst_samples,
            requests_per_second: limits.requests_per_second,
            read_requests_per_second: limits.read_requests_per_second,
            read_requests_burst: limits.read_requests_burst,
            query_requests_per_second: limits.query_requests_per_second,
            query_requests_burst: limits.query_requests_burst,
        };
        if let Some(existing) = self.tenants.get(tenant) {
            if existing.key == key {
                return Arc::clone(existing.value());
            }
        }
        let bucket = |rate: u64, burst: u64| -> Option<Bucket<C>> {
            let rate = NonZeroU32::new(clamp_u32(rate))?;
            let burst = NonZeroU32::new(clamp_u32(burst)).unwrap_or(rate);
            Some(RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                self.clock.clone(),
            ))
        };
        let buckets = Arc::new(TenantBuckets {
            key,
            samples: bucket(key.samples_per_second, key.burst_samples),
            requests: bucket(key.requests_per_second, key.requests_per_second),
            // Reads come in bursts (a dashboard refresh): the burst is its own key.
            reads: bucket(
                key.read_requests_per_second,
                key.read_requests_burst.max(key.read_requests_per_second),
            ),
            queries: bucket(
                key.query_requests_per_second,
                key.query_requests_burst.max(key.query_requests_per_second),
            ),
            samples_blocked_until: parking_lot::Mutex::new(None),
        });
        self.tenants
            .insert(tenant.to_string(), Arc::clone(&buckets));
        buckets
    }
}

fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use proptest::prelude::*;

    fn limits(rate: u64, burst: u64) -> Limits {
        Limits {
            samples_per_second: rate,
            burst_samples: burst,
            requests_per_second: 10,
            ..Limits::default()
        }
    }

    #[test]
    fn burst_then_rate_with_exact_retry_after() {
        let clock = FakeRelativeClock::default();
        let rates = RateLimits::with_clock(clock.clone());
        let limits = limits(1000, 5000);
        assert_eq!(rates.check_samples("a", &limits, 5000), Verdict::Allowed);
        // Empty bucket: 2000 samples fit after 2 s at 1000/s.
        match rates.check_samples("a", &limits, 2000) {
            Verdict::Throttled { retry_after } => {
                assert_eq!(retry_after, Duration::from_secs(2));
                assert_eq!(Verdict::retry_after_seconds(retry_after), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rates.check_samples_blocked("a", &limits),
            Verdict::Throttled {
                retry_after: Duration::from_secs(2)
            },
            "told to wait: refused before reading the next body"
        );
        clock.advance(Duration::from_millis(500));
        assert!(matches!(
            rates.check_samples_blocked("b", &limits),
            Verdict::Allowed
        ));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(rates.check_samples_blocked("a", &limits), Verdict::Allowed);
        assert_eq!(rates.check_samples("a", &limits, 2000), Verdict::Allowed);
        assert_eq!(
            rates.check_samples("a", &limits, 5001),
            Verdict::NeverFits { burst: 5000 }
        );
        assert_eq!(
            rates.check_samples("b", &limits, 5000),
            Verdict::Allowed,
            "tenants are independent"
        );
    }

    #[test]
    fn new_limits_apply_at_once_and_zero_means_unlimited() {
        let clock = FakeRelativeClock::default();
        let rates = RateLimits::with_clock(clock);
        assert_eq!(
            rates.check_samples("a", &limits(10, 10), 10),
            Verdict::Allowed
        );
        assert!(matches!(
            rates.check_samples("a", &limits(10, 10), 10),
            Verdict::Throttled { .. }
        ));
        assert_eq!(
            rates.check_samples("a", &limits(100, 100), 100),
            Verdict::Allowed
        );
        for _ in 0..100 {
            assert_eq!(
                rates.check_samples("a", &limits(0, 0), 1_000_000),
                Verdict::Allowed
            );
        }
        let requests = Limits {
            requests_per_second: 2,
            ..Limits::default()
        };
        assert_eq!(rates.check_write_request("r", &requests), Verdict::Allowed);
        assert_eq!(rates.check_write_request("r", &requests), Verdict::Allowed);
        assert!(matches!(
            rates.check_write_request("r", &requests),
            Verdict::Throttled { .. }
        ));
        let reads = Limits {
            read_requests_per_second: 1,
            read_requests_burst: 50,
            ..requests.clone()
        };
        for _ in 0..50 {
            assert_eq!(rates.check_read_request("r", &reads), Verdict::Allowed);
        }
        assert!(matches!(
            rates.check_read_request("r", &reads),
            Verdict::Throttled { .. }
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Over any schedule of requests, the admitted samples never exceed
        /// rate × elapsed + burst.
        #[test]
        fn never_admits_more_than_rate_times_time_plus_burst(
            rate in 1u64..5000,
            burst_factor in 1u64..5,
            steps in prop::collection::vec((0u64..2000, 1u64..4000), 1..200),
        ) {
            let burst = rate * burst_factor;
            let clock = FakeRelativeClock::default();
            let rates = RateLimits::with_clock(clock.clone());
            let limits = limits(rate, burst);
            let mut elapsed_ms = 0u64;
            let mut admitted = 0u64;
            for (advance_ms, amount) in steps {
                clock.advance(Duration::from_millis(advance_ms));
                elapsed_ms += advance_ms;
                match rates.check_samples("t", &limits, amount) {
                    Verdict::Allowed => admitted += amount,
                    Verdict::Throttled { retry_after } => {
                        prop_assert!(retry_after > Duration::ZERO);
                    }
                    Verdict::NeverFits { .. } => prop_assert!(amount > burst),
                }
                let ceiling = rate * elapsed_ms / 1000 + burst;
                prop_assert!(admitted <= ceiling, "admitted {} > {} after {} ms", admitted, ceiling, elapsed_ms);
            }
        }

        /// Waiting exactly the Retry-After duration admits the request.
        #[test]
        fn retry_after_is_enough(rate in 1u64..5000, first in 1u64..5000, second in 1u64..5000) {
            let burst = 5000;
            let clock = FakeRelativeClock::default();
            let rates = RateLimits::with_clock(clock.clone());
            let limits = limits(rate, burst);
            let _ = rates.check_samples("t", &limits, first);
            if let Verdict::Throttled { retry_after } = rates.check_samples("t", &limits, second) {
                clock.advance(retry_after);
                prop_assert_eq!(rates.check_samples("t", &limits, second), Verdict::Allowed);
            }
        }
    }
}
