//! Signature checks for addresses over their failed-authentication budget (SECURITY.md
//! T16). The users of an identity provider may share an address (NAT, proxy) with
//! whoever failed from it, and their tokens rotate every few minutes, so each is new to
//! promgate: such a token is still verified, with checks taken from small token buckets,
//! one per address and one for all restricted addresses together. A flood of forged
//! tokens naming the issuer thus costs a bounded number of signature checks, and one
//! address's flood cannot use up another's checks.
//!
//! Pure: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

/// A bucket's refill rate and size.
#[derive(Clone, Copy, Debug)]
pub struct BucketShape {
    pub per_second: f64,
    pub burst: f64,
}

/// Checks one restricted address may start: enough for the users behind a shared address
/// to bring a new token each every few minutes.
pub const PER_ADDRESS: BucketShape = BucketShape {
    per_second: 1.0,
    burst: 10.0,
};
/// Checks every restricted address together may start: a signature check takes well
/// under a millisecond, so this bounds them to a few percent of one core.
pub const OVERALL: BucketShape = BucketShape {
    per_second: 50.0,
    burst: 100.0,
};
/// Addresses whose bucket is remembered; a full bucket is forgotten first (it is the same
/// as a new one), and with every remembered bucket in use, a new address gets no check.
pub const MAX_TRACKED_ADDRESSES: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn full(shape: BucketShape, now: Instant) -> Bucket {
        Bucket {
            tokens: shape.burst,
            refilled: now,
        }
    }

    fn refill(&mut self, shape: BucketShape, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * shape.per_second).min(shape.burst);
        self.refilled = now;
    }
}

pub struct RestrictedVerifications {
    per_address: BucketShape,
    overall: BucketShape,
    max_tracked: usize,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    overall: Option<Bucket>,
    by_address: HashMap<IpAddr, Bucket>,
}

impl Default for RestrictedVerifications {
    fn default() -> Self {
        RestrictedVerifications::new(PER_ADDRESS, OVERALL, MAX_TRACKED_ADDRESSES)
    }
}

impl RestrictedVerifications {
    pub fn new(
        per_address: BucketShape,
        overall: BucketShape,
        max_tracked: usize,
    ) -> RestrictedVerifications {
        RestrictedVerifications {
            per_address,
            overall,
            max_tracked,
            buckets: Mutex::new(Buckets {
                overall: None,
                by_address: HashMap::new(),
            }),
        }
    }

    /// Takes one signature check for `address`, or says there is none left now.
    pub fn try_take(&self, address: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock();
        let Buckets {
            overall,
            by_address,
        } = &mut *buckets;
        let overall = overall.get_or_insert_with(|| Bucket::full(self.overall, now));
        overall.refill(self.overall, now);
        if by_address.len() >= self.max_tracked && !by_address.contains_key(&address) {
            let shape = self.per_address;
            by_address.retain(|_, bucket| {
                bucket.refill(shape, now);
                bucket.tokens < shape.burst
            });
            if by_address.len() >= self.max_tracked {
                return false;
            }
        }
        let bucket = by_address
            .entry(address)
            .or_insert_with(|| Bucket::full(self.per_address, now));
        bucket.refill(self.per_address, now);
        if bucket.tokens < 1.0 || overall.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        overall.tokens -= 1.0;
        true
    }

    pub fn tracked(&self) -> usize {
        self.buckets.lock().by_address.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SMALL: BucketShape = BucketShape {
        per_second: 1.0,
        burst: 3.0,
    };
    const LARGE: BucketShape = BucketShape {
        per_second: 100.0,
        burst: 100.0,
    };

    fn address(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn an_address_gets_its_burst_then_its_rate() {
        let checks = RestrictedVerifications::new(SMALL, LARGE, 10);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(checks.try_take(address(1), start));
        }
        assert!(!checks.try_take(address(1), start), "burst used up");
        assert!(
            checks.try_take(address(2), start),
            "another address: own bucket"
        );
        assert!(!checks.try_take(address(1), start + Duration::from_millis(900)));
        assert!(checks.try_take(address(1), start + Duration::from_millis(1100)));
        assert!(!checks.try_take(address(1), start + Duration::from_millis(1200)));
    }

    #[test]
    fn every_address_together_stays_within_the_overall_bucket() {
        let overall = BucketShape {
            per_second: 1.0,
            burst: 5.0,
        };
        let checks = RestrictedVerifications::new(SMALL, overall, 100);
        let now = Instant::now();
        let granted = (0..20)
            .filter(|index| checks.try_take(address(*index), now))
            .count();
        assert_eq!(granted, 5);
        assert!(checks.try_take(address(99), now + Duration::from_secs(1)));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_full_buckets_first() {
        let checks = RestrictedVerifications::new(SMALL, LARGE, 2);
        let start = Instant::now();
        assert!(checks.try_take(address(1), start));
        assert!(checks.try_take(address(2), start));
        assert!(
            !checks.try_take(address(3), start),
            "every remembered bucket is in use: no check for a new address"
        );
        assert_eq!(checks.tracked(), 2);
        // A second later both buckets are full again, the same as new ones: forgotten.
        let later = start + Duration::from_secs(1);
        assert!(checks.try_take(address(3), later));
        assert_eq!(checks.tracked(), 1);
    }
}
