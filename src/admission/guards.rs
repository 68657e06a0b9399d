//! Guards with bounded memory: each tenant's concurrent remote reads with a bounded queue
//! (SECURITY.md T14/T15), and failed authentications per source address (T16/T17).
//! Time is passed in, so tests drive it without sleeping.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Each tenant's remote reads: at most `max_concurrent` at once, at most `max_queued`
/// waiting, and a waiter gives up after `max_wait`.
#[derive(Default)]
pub struct ReadGate {
    tenants: DashMap<String, Arc<TenantReadGate>>,
}

struct TenantReadGate {
    max_concurrent: usize,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadGateError {
    QueueFull,
    WaitedTooLong,
}

impl ReadGate {
    pub async fn acquire(
        &self,
        tenant: &str,
        max_concurrent: usize,
        max_queued: usize,
        max_wait: Duration,
    ) -> Result<OwnedSemaphorePermit, ReadGateError> {
        let gate = self.gate(tenant, max_concurrent);
        if let Ok(permit) = Arc::clone(&gate.slots).try_acquire_owned() {
            return Ok(permit);
        }
        // A guard, not a decrement after the await: a client that hangs up while queued
        // drops this future mid-wait, and its place in the queue must come back then too.
        let Some(_queued) = QueuedRead::enter(&gate.waiting, max_queued) else {
            return Err(ReadGateError::QueueFull);
        };
        match tokio::time::timeout(max_wait, Arc::clone(&gate.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ReadGateError::WaitedTooLong),
        }
    }

    /// Reads of `tenant` waiting for a slot right now.
    pub fn queued(&self, tenant: &str) -> usize {
        self.tenants
            .get(tenant)
            .map_or(0, |gate| gate.waiting.load(Ordering::SeqCst))
    }

    /// The tenant's gate, replaced when its concurrency limit changed (permits held on
    /// the old one stay valid until released).
    fn gate(&self, tenant: &str, max_concurrent: usize) -> Arc<TenantReadGate> {
        if let Some(gate) = self.tenants.get(tenant) {
            if gate.max_concurrent == max_concurrent {
                return Arc::clone(gate.value());
            }
        }
        let gate = Arc::new(TenantReadGate {
            max_concurrent,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            waiting: AtomicUsize::new(0),
        });
        self.tenants.insert(tenant.to_string(), Arc::clone(&gate));
        gate
    }
}

/// One read's place in its tenant's queue, given back when dropped.
struct QueuedRead<'a> {
    waiting: &'a AtomicUsize,
}

impl<'a> QueuedRead<'a> {
    fn enter(waiting: &'a AtomicUsize, max_queued: usize) -> Option<QueuedRead<'a>> {
        if waiting.fetch_add(1, Ordering::SeqCst) >= max_queued {
            waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(QueuedRead { waiting })
    }
}

impl Drop for QueuedRead<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts failed authentications per source address in fixed windows.
pub struct AuthFailureLimiter {
    max_failures: u32,
    window: Duration,
    max_tracked: usize,
    windows: DashMap<IpAddr, FailureWindow>,
}

#[derive(Clone, Copy, Debug)]
struct FailureWindow {
    started: Instant,
    failures: u32,
}

impl AuthFailureLimiter {
    /// `max_failures` per `window` per address; at most `max_tracked` addresses are
    /// remembered (expired windows are evicted first, then everything).
    pub fn new(max_failures: u32, window: Duration, max_tracked: usize) -> AuthFailureLimiter {
        AuthFailureLimiter {
            max_failures,
            window,
            max_tracked,
            windows: DashMap::new(),
        }
    }

    /// `Err(seconds to wait)` when `address` used up its failures in the current window.
    pub fn check(&self, address: IpAddr, now: Instant) -> Result<(), u64> {
        let Some(entry) = self.windows.get(&address) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(entry.started);
        if elapsed < self.window && entry.failures >= self.max_failures {
            let wait = self.window - elapsed;
            return Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        }
        Ok(())
    }

    pub fn record_failure(&self, address: IpAddr, now: Instant) {
        if self.windows.len() >= self.max_tracked && !self.windows.contains_key(&address) {
            self.evict(now);
        }
        let mut entry = self.windows.entry(address).or_insert(FailureWindow {
            started: now,
            failures: 0,
        });
        if now.saturating_duration_since(entry.started) >= self.window {
            *entry = FailureWindow {
                started: now,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    pub fn tracked(&self) -> usize {
        self.windows.len()
    }

    fn evict(&self, now: Instant) {
        self.windows
            .retain(|_, entry| now.saturating_duration_since(entry.started) < self.window);
        if self.windows.len() >= self.max_tracked {
            tracing::warn!(
                tracked = self.windows.len(),
                "auth-failure table full; forgetting every address"
            );
            self.windows.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_gate_bounds_concurrency_and_queue_per_tenant() {
        let gate = ReadGate::default();
        let wait = Duration::from_millis(50);
        let first = gate.acquire("a", 1, 1, wait).await.expect("free slot");
        assert_eq!(
            gate.acquire("a", 1, 1, wait).await.err(),
            Some(ReadGateError::WaitedTooLong)
        );
        assert!(
            gate.acquire("b", 1, 1, wait).await.is_ok(),
            "other tenants are unaffected"
        );
        let gate = Arc::new(gate);
        let queued = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                gate.acquire("a", 1, 1, Duration::from_secs(5))
                    .await
                    .is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            gate.acquire("a", 1, 1, wait).await.err(),
            Some(ReadGateError::QueueFull),
            "one waiter is the queue's limit"
        );
        drop(first);
        assert!(
            queued.await.expect("join"),
            "the waiter gets the released slot"
        );
    }

    #[tokio::test]
    async fn a_waiter_that_hangs_up_gives_its_queue_place_back() {
        let gate = ReadGate::default();
        let held = gate
            .acquire("a", 1, 2, Duration::from_secs(5))
            .await
            .expect("free slot");
        for _ in 0..10 {
            // Queued, then abandoned (the client hung up) before a slot freed.
            let abandoned = tokio::time::timeout(
                Duration::from_millis(5),
                gate.acquire("a", 1, 2, Duration::from_secs(5)),
            )
            .await;
            assert!(abandoned.is_err(), "still waiting when abandoned");
            assert_eq!(gate.queued("a"), 0, "the place came back");
        }
        drop(held);
        assert!(gate
            .acquire("a", 1, 2, Duration::from_millis(50))
            .await
            .is_ok());
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn blocks_after_the_allowed_failures_until_the_window_ends() {
        let limiter = AuthFailureLimiter::new(3, Duration::from_secs(60), 100);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(ip(1), start).is_ok());
            limiter.record_failure(ip(1), start);
        }
        assert_eq!(
            limiter.check(ip(1), start + Duration::from_secs(10)),
            Err(50)
        );
        assert!(
            limiter.check(ip(2), start).is_ok(),
            "other addresses are unaffected"
        );
        assert!(limiter
            .check(ip(1), start + Duration::from_secs(60))
            .is_ok());
        limiter.record_failure(ip(1), start + Duration::from_secs(60));
        assert!(
            limiter
                .check(ip(1), start + Duration::from_secs(61))
                .is_ok(),
            "a new window"
        );
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = AuthFailureLimiter::new(3, Duration::from_secs(60), 10);
        let start = Instant::now();
        for last in 0..=255u8 {
            limiter.record_failure(ip(last), start);
            assert!(limiter.tracked() <= 10);
        }
    }
}
