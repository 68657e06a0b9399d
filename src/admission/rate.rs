//! Per-tenant token buckets (governor's GCRA): samples per second with a burst
//! (samples + histogram samples + exemplars), write requests per second, read requests
//! per second with a burst of their own (a dashboard refresh sends dozens at once).
//! Generic over the clock so tests run on a fake one.
//!
//! A tenant's buckets are rebuilt when the figures they are built from change: its limits,
//! or this replica's share of them when the number of live replicas changes (DESIGN §8).
//! The new rate applies to the next request, but the new buckets keep the fill the old
//! ones had, as a fraction of the burst: a tenant that used up its burst does not get a
//! fresh one because a replica joined or left, or because an operator changed its limits.
//! (Were every replica count change to hand out full buckets, a rolling restart would let
//! every tenant send its whole burst again on every replica, every time a pod came or went.)

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use crate::config::Limits;

/// A GCRA bucket's state: its theoretical arrival time (nanoseconds after the limiter's
/// start; 0 for a bucket never used), shared with governor's limiter so the fill can be
/// read and handed to a rebuilt bucket. The same compare-and-swap loop as governor's own
/// in-memory state.
#[derive(Clone, Default)]
struct TatState(Arc<AtomicU64>);

impl StateStore for TatState {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &Self::Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut previous = self.0.load(Ordering::Acquire);
        loop {
            let tat = (previous != 0).then(|| Nanos::from(previous));
            let (result, next) = f(tat)?;
            match self.0.compare_exchange_weak(
                previous,
                next.into(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(result),
                Err(current) => previous = current,
            }
        }
    }
}

/// One token bucket, with what is needed to read and carry its fill.
struct Bucket<C: Clock> {
    limiter: RateLimiter<NotKeyed, TatState, C, NoOpMiddleware<C::Instant>>,
    state: TatState,
    /// The limiter's start (taken with the same clock right after it was built).
    start: C::Instant,
    /// Nanoseconds per cell.
    period: u64,
    /// Cells the full bucket holds.
    burst: u64,
}

impl<C: Clock + Clone> Bucket<C> {
    fn new(rate: NonZeroU32, burst: NonZeroU32, clock: &C) -> Bucket<C> {
        let quota = Quota::per_second(rate).allow_burst(burst);
        let state = TatState::default();
        let limiter = RateLimiter::new(quota, state.clone(), clock.clone());
        Bucket {
            limiter,
            state,
            start: clock.now(),
            period: Nanos::from(quota.replenish_interval()).as_u64().max(1),
            burst: u64::from(burst.get()),
        }
    }

    /// Nanoseconds from the limiter's start to `now`.
    fn offset(&self, now: C::Instant) -> u64 {
        now.duration_since(self.start).as_u64()
    }

    /// The fraction of the burst available at `now`, 0 to 1.
    fn fill(&self, now: C::Instant) -> f64 {
        let tat = self.state.0.load(Ordering::Acquire);
        let now = self.offset(now);
        if tat <= now {
            return 1.0;
        }
        // GCRA: the bucket is empty when the arrival time is a whole burst ahead of now.
        let capacity = self.burst.saturating_mul(self.period) as f64;
        (1.0 - (tat - now) as f64 / capacity).clamp(0.0, 1.0)
    }

    /// Starts a fresh bucket at `fill` of its burst (1 leaves it full).
    fn set_fill(&self, fill: f64, now: C::Instant) {
        if fill >= 1.0 {
            return;
        }
        let capacity = self.burst.saturating_mul(self.period) as f64;
        let debt = ((1.0 - fill.max(0.0)) * capacity) as u64;
        let tat = self.offset(now).saturating_add(debt);
        if tat > 0 {
            self.state.0.store(tat, Ordering::Release);
        }
    }
}

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
    /// The tenant's own figures (global, before sharing).
    samples_per_second: u64,
    burst_samples: u64,
    requests_per_second: u64,
    read_requests_per_second: u64,
    read_requests_burst: u64,
    query_requests_per_second: u64,
    query_requests_burst: u64,
    /// Live replicas the rates are shared among.
    replicas: usize,
}

impl BucketKey {
    fn new(limits: &Limits, replicas: usize) -> BucketKey {
        BucketKey {
            samples_per_second: limits.samples_per_second,
            burst_samples: limits.burst_samples,
            requests_per_second: limits.requests_per_second,
            read_requests_per_second: limits.read_requests_per_second,
            read_requests_burst: limits.read_requests_burst,
            query_requests_per_second: limits.query_requests_per_second,
            query_requests_burst: limits.query_requests_burst,
            replicas: replicas.max(1),
        }
    }

    /// The same limits, shared among another number of replicas.
    fn only_share_differs(&self, other: &BucketKey) -> bool {
        BucketKey {
            replicas: other.replicas,
            ..*self
        } == *other
    }
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

    /// One write request of `tenant` against its requests-per-second bucket. `limits` are
    /// the tenant's own (global) figures; this replica enforces its share of them among
    /// `replicas` live replicas ([`Limits::shared_by`]), here and in every check below.
    pub fn check_write_request(&self, tenant: &str, limits: &Limits, replicas: usize) -> Verdict {
        let buckets = self.buckets(tenant, limits, replicas);
        let burst = buckets.requests.as_ref().map_or(0, |bucket| bucket.burst);
        self.take(buckets.requests.as_ref(), 1, burst)
    }

    /// One read request of `tenant` against its read-requests-per-second bucket.
    pub fn check_read_request(&self, tenant: &str, limits: &Limits, replicas: usize) -> Verdict {
        let buckets = self.buckets(tenant, limits, replicas);
        let burst = buckets.reads.as_ref().map_or(0, |bucket| bucket.burst);
        self.take(buckets.reads.as_ref(), 1, burst)
    }

    /// One query API request of `tenant` against its query-requests-per-second bucket.
    pub fn check_query_request(&self, tenant: &str, limits: &Limits, replicas: usize) -> Verdict {
        let buckets = self.buckets(tenant, limits, replicas);
        let burst = buckets.queries.as_ref().map_or(0, |bucket| bucket.burst);
        self.take(buckets.queries.as_ref(), 1, burst)
    }

    /// `samples` (samples + histogram samples + exemplars) of one write request.
    pub fn check_samples(
        &self,
        tenant: &str,
        limits: &Limits,
        replicas: usize,
        samples: u64,
    ) -> Verdict {
        if samples == 0 {
            return Verdict::Allowed;
        }
        let buckets = self.buckets(tenant, limits, replicas);
        let burst = buckets.samples.as_ref().map_or(0, |bucket| bucket.burst);
        let verdict = self.take(buckets.samples.as_ref(), samples, burst);
        if let Verdict::Throttled { retry_after } = verdict {
            *buckets.samples_blocked_until.lock() = Some(self.clock.now() + retry_after.into());
        }
        verdict
    }

    /// Before a write's body is read: still inside the wait the tenant was last given
    /// for its samples? Then refuse at once with the time left.
    pub fn check_samples_blocked(&self, tenant: &str, limits: &Limits, replicas: usize) -> Verdict {
        let buckets = self.buckets(tenant, limits, replicas);
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
        match bucket.limiter.check_n(cells) {
            Ok(Ok(())) => Verdict::Allowed,
            Ok(Err(not_until)) => Verdict::Throttled {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
            Err(_) => Verdict::NeverFits { burst },
        }
    }

    fn buckets(&self, tenant: &str, limits: &Limits, replicas: usize) -> Arc<TenantBuckets<C>> {
        let key = BucketKey::new(limits, replicas);
        // Only a change of share keeps the fill: new limits an operator set apply as set.
        let previous = match self.tenants.get(tenant) {
            Some(existing) if existing.key == key => return Arc::clone(existing.value()),
            Some(existing) if existing.key.only_share_differs(&key) => {
                Some(Arc::clone(existing.value()))
            }
            _ => None,
        };
        let shared = limits.shared_by(key.replicas);
        let now = self.clock.now();
        let bucket = |rate: u64, burst: u64, before: Option<&Bucket<C>>| -> Option<Bucket<C>> {
            let rate = NonZeroU32::new(clamp_u32(rate))?;
            let burst = NonZeroU32::new(clamp_u32(burst)).unwrap_or(rate);
            let bucket = Bucket::new(rate, burst, &self.clock);
            if let Some(before) = before {
                bucket.set_fill(before.fill(now), now);
            }
            Some(bucket)
        };
        let before = previous.as_deref();
        let buckets = Arc::new(TenantBuckets {
            key,
            samples: bucket(
                shared.samples_per_second,
                shared.burst_samples,
                before.and_then(|b| b.samples.as_ref()),
            ),
            requests: bucket(
                shared.requests_per_second,
                shared.requests_per_second,
                before.and_then(|b| b.requests.as_ref()),
            ),
            // Reads come in bursts (a dashboard refresh): the burst is its own key.
            reads: bucket(
                shared.read_requests_per_second,
                shared
                    .read_requests_burst
                    .max(shared.read_requests_per_second),
                before.and_then(|b| b.reads.as_ref()),
            ),
            queries: bucket(
                shared.query_requests_per_second,
                shared
                    .query_requests_burst
                    .max(shared.query_requests_per_second),
                before.and_then(|b| b.queries.as_ref()),
            ),
            // A wait the tenant was told stays told when only the share changed.
            samples_blocked_until: parking_lot::Mutex::new(
                before.and_then(|b| *b.samples_blocked_until.lock()),
            ),
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
        assert_eq!(rates.check_samples("a", &limits, 1, 5000), Verdict::Allowed);
        // Empty bucket: 2000 samples fit after 2 s at 1000/s.
        match rates.check_samples("a", &limits, 1, 2000) {
            Verdict::Throttled { retry_after } => {
                assert_eq!(retry_after, Duration::from_secs(2));
                assert_eq!(Verdict::retry_after_seconds(retry_after), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rates.check_samples_blocked("a", &limits, 1),
            Verdict::Throttled {
                retry_after: Duration::from_secs(2)
            },
            "told to wait: refused before reading the next body"
        );
        clock.advance(Duration::from_millis(500));
        assert!(matches!(
            rates.check_samples_blocked("b", &limits, 1),
            Verdict::Allowed
        ));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(
            rates.check_samples_blocked("a", &limits, 1),
            Verdict::Allowed
        );
        assert_eq!(rates.check_samples("a", &limits, 1, 2000), Verdict::Allowed);
        assert_eq!(
            rates.check_samples("a", &limits, 1, 5001),
            Verdict::NeverFits { burst: 5000 }
        );
        assert_eq!(
            rates.check_samples("b", &limits, 1, 5000),
            Verdict::Allowed,
            "tenants are independent"
        );
    }

    #[test]
    fn new_limits_apply_at_once_and_zero_means_unlimited() {
        let clock = FakeRelativeClock::default();
        let rates = RateLimits::with_clock(clock);
        assert_eq!(
            rates.check_samples("a", &limits(10, 10), 1, 10),
            Verdict::Allowed
        );
        assert!(matches!(
            rates.check_samples("a", &limits(10, 10), 1, 10),
            Verdict::Throttled { .. }
        ));
        assert_eq!(
            rates.check_samples("a", &limits(100, 100), 1, 100),
            Verdict::Allowed
        );
        for _ in 0..100 {
            assert_eq!(
                rates.check_samples("a", &limits(0, 0), 1, 1_000_000),
                Verdict::Allowed
            );
        }
        let requests = Limits {
            requests_per_second: 2,
            ..Limits::default()
        };
        assert_eq!(
            rates.check_write_request("r", &requests, 1),
            Verdict::Allowed
        );
        assert_eq!(
            rates.check_write_request("r", &requests, 1),
            Verdict::Allowed
        );
        assert!(matches!(
            rates.check_write_request("r", &requests, 1),
            Verdict::Throttled { .. }
        ));
        let reads = Limits {
            read_requests_per_second: 1,
            read_requests_burst: 50,
            ..requests.clone()
        };
        for _ in 0..50 {
            assert_eq!(rates.check_read_request("r", &reads, 1), Verdict::Allowed);
        }
        assert!(matches!(
            rates.check_read_request("r", &reads, 1),
            Verdict::Throttled { .. }
        ));
    }

    #[test]
    fn a_change_in_replica_count_keeps_an_empty_bucket_empty() {
        let clock = FakeRelativeClock::default();
        let rates = RateLimits::with_clock(clock.clone());
        let limits = limits(1000, 5000);
        assert_eq!(rates.check_samples("a", &limits, 2, 5000), Verdict::Allowed);
        assert!(matches!(
            rates.check_samples("a", &limits, 2, 1),
            Verdict::Throttled { .. }
        ));
        // A replica leaves: the share doubles, but the used-up burst is not handed out again.
        assert!(
            matches!(
                rates.check_samples("a", &limits, 1, 1000),
                Verdict::Throttled { .. }
            ),
            "a fresh burst after the replica count changed"
        );
        // The new share refills at its own rate: 1000/s now, not 500/s.
        clock.advance(Duration::from_secs(1));
        assert_eq!(rates.check_samples("a", &limits, 1, 1000), Verdict::Allowed);
        assert!(matches!(
            rates.check_samples("a", &limits, 1, 1),
            Verdict::Throttled { .. }
        ));
        // Back and forth between counts (a rolling restart) never refills it either.
        for replicas in [3, 1, 2, 1, 4] {
            assert!(
                matches!(
                    rates.check_samples("a", &limits, replicas, 100),
                    Verdict::Throttled { .. }
                ),
                "{replicas} replicas"
            );
        }
    }

    #[test]
    fn a_change_in_replica_count_keeps_the_fill_in_proportion() {
        let clock = FakeRelativeClock::default();
        let rates = RateLimits::with_clock(clock.clone());
        let limits = Limits {
            requests_per_second: 100,
            ..limits(1000, 5000)
        };
        // Half of each burst used on one replica.
        assert_eq!(rates.check_samples("a", &limits, 1, 2500), Verdict::Allowed);
        for _ in 0..50 {
            assert_eq!(rates.check_write_request("a", &limits, 1), Verdict::Allowed);
        }
        // Two replicas now: the request burst (its rate) halves to 50, of which half is left.
        for _ in 0..25 {
            assert_eq!(rates.check_write_request("a", &limits, 2), Verdict::Allowed);
        }
        assert!(matches!(
            rates.check_write_request("a", &limits, 2),
            Verdict::Throttled { .. }
        ));
        // The sample burst is not shared: still half of 5000 left.
        assert_eq!(rates.check_samples("a", &limits, 2, 2500), Verdict::Allowed);
        assert!(matches!(
            rates.check_samples("a", &limits, 2, 1),
            Verdict::Throttled { .. }
        ));
        // A tenant never seen gets its whole burst.
        assert_eq!(rates.check_samples("b", &limits, 2, 5000), Verdict::Allowed);
    }

    #[test]
    fn a_wait_told_stays_told_when_the_share_changes() {
        let clock = FakeRelativeClock::default();
        let rates = RateLimits::with_clock(clock.clone());
        let limits = limits(1000, 1000);
        assert_eq!(rates.check_samples("a", &limits, 1, 1000), Verdict::Allowed);
        assert!(matches!(
            rates.check_samples("a", &limits, 1, 1000),
            Verdict::Throttled { .. }
        ));
        assert!(matches!(
            rates.check_samples_blocked("a", &limits, 2),
            Verdict::Throttled { .. }
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// However the replica count changes, one replica never admits more than the
        /// highest share's rate × elapsed + one burst.
        #[test]
        fn replica_count_changes_never_add_a_burst(
            rate in 1u64..5000,
            steps in prop::collection::vec((0u64..500, 1u64..3000, 1usize..4), 1..100),
        ) {
            let burst = rate * 2;
            let clock = FakeRelativeClock::default();
            let rates = RateLimits::with_clock(clock.clone());
            let limits = limits(rate, burst);
            let mut elapsed_ms = 0u64;
            let mut admitted = 0u64;
            for (advance_ms, amount, replicas) in steps {
                clock.advance(Duration::from_millis(advance_ms));
                elapsed_ms += advance_ms;
                if rates.check_samples("t", &limits, replicas, amount) == Verdict::Allowed {
                    admitted += amount;
                }
                // The largest share is the whole rate (1 replica); one burst at most, plus
                // rounding of the carried fill (at most one cell per change).
                let ceiling = rate * elapsed_ms / 1000 + burst + 100;
                prop_assert!(admitted <= ceiling, "admitted {} > {} after {} ms", admitted, ceiling, elapsed_ms);
            }
        }

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
                match rates.check_samples("t", &limits, 1, amount) {
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
            let _ = rates.check_samples("t", &limits, 1, first);
            if let Verdict::Throttled { retry_after } = rates.check_samples("t", &limits, 1, second) {
                clock.advance(retry_after);
                prop_assert_eq!(rates.check_samples("t", &limits, 1, second), Verdict::Allowed);
            }
        }
    }
}
