//! Limits that protect promgate itself. For now: failed authentications per source
//! address (SECURITY.md T16/T17: 5 failures a minute, then 429), with bounded memory.
//! Time is passed in, so tests drive it without sleeping.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

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
