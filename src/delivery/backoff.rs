//! When to try a backend again (SECURITY.md §4 "Backend retry backoff"; DESIGN §9):
//! exponential from 30 ms to 5 s with full jitter, as Prometheus' own queue does, and
//! never sooner than the backend's `Retry-After`.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(30),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (1 for the first retry). `jitter` is a
    /// uniform draw in [0, 1): the wait is drawn from the upper half of the exponential
    /// step, so retries spread out but never collapse to zero. A backend's `Retry-After`
    /// is a floor.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let step = self
            .min
            .saturating_mul(1u32 << exponent)
            .min(self.max)
            .max(self.min);
        let jittered = step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(floor) => jittered.max(floor),
            None => jittered,
        }
    }
}

/// A uniform draw in [0, 1) from the OS's randomness (no PRNG state to share).
pub fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_within_jitter_and_honours_retry_after() {
        let backoff = Backoff::default();
        assert!(backoff.wait(1, None, 0.999) < Duration::from_millis(30));
        assert_eq!(backoff.wait(1, None, 0.0), Duration::from_millis(15));
        assert_eq!(backoff.wait(3, None, 0.0), Duration::from_millis(60));
        assert_eq!(backoff.wait(30, None, 0.0), Duration::from_millis(2500));
        assert!(backoff.wait(30, None, 0.999) <= Duration::from_secs(5));
        assert_eq!(
            backoff.wait(1, Some(Duration::from_secs(11)), 0.3),
            Duration::from_secs(11),
            "Retry-After is a floor"
        );
        for _ in 0..100 {
            let draw = jitter();
            assert!((0.0..1.0).contains(&draw));
        }
    }
}
