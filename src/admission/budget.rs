//! Global budgets of one promgate process: requests in flight and decoded bytes in
//! flight. They are the last-resort shed, taken after authentication and after the
//! tenant's own share ([`super::tenant_budget`]), so a stranger never holds one and one
//! tenant can fill only its own share. Waiting is bounded; a request that cannot get its
//! share in time is answered 503 so the sender retries later and nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// Other requests hold the budget; retry later.
    #[error("busy")]
    Busy,
}

pub struct InFlight {
    requests: Arc<Semaphore>,
    decoded_bytes: Arc<Semaphore>,
    decoded_budget: u64,
    /// The whole decoded-bytes budget in permits.
    decoded_permits: u32,
    max_wait: Duration,
}

/// Budget is measured in KiB so that it fits a semaphore's permit count.
pub(super) const BYTES_PER_PERMIT: u64 = 1024;

impl InFlight {
    pub fn new(max_requests: usize, max_decoded_bytes: u64, max_wait: Duration) -> InFlight {
        let permits = usize::try_from(max_decoded_bytes / BYTES_PER_PERMIT)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        InFlight {
            requests: Arc::new(Semaphore::new(max_requests.max(1))),
            decoded_bytes: Arc::new(Semaphore::new(permits)),
            decoded_budget: max_decoded_bytes,
            decoded_permits: u32::try_from(permits).unwrap_or(u32::MAX),
            max_wait,
        }
    }

    /// A place among the requests in flight, waiting at most `max_wait`.
    pub async fn request(&self) -> Result<OwnedSemaphorePermit, BudgetError> {
        match tokio::time::timeout(self.max_wait, Arc::clone(&self.requests).acquire_owned()).await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(BudgetError::Busy),
        }
    }

    /// `bytes` of the decoded-bytes budget, waiting at most `max_wait`. A request larger
    /// than the whole budget (a tenant override above it) takes the whole budget rather
    /// than failing forever; `check-config` refuses defaults that would need that.
    pub async fn decoded_bytes(&self, bytes: u64) -> Result<OwnedSemaphorePermit, BudgetError> {
        let permits = bytes
            .min(self.decoded_budget)
            .div_ceil(BYTES_PER_PERMIT)
            .max(1);
        let permits = u32::try_from(permits)
            .unwrap_or(u32::MAX)
            .min(self.decoded_permits);
        let decoded_bytes = Arc::clone(&self.decoded_bytes);
        match tokio::time::timeout(self.max_wait, decoded_bytes.acquire_many_owned(permits)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(BudgetError::Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budgets_are_bounded_and_released() {
        let in_flight = InFlight::new(1, 4096, Duration::from_millis(20));
        let first = in_flight.request().await.expect("free");
        assert_eq!(
            in_flight.request().await.err(),
            Some(BudgetError::Busy),
            "full: gives up after the wait"
        );
        drop(first);
        assert!(in_flight.request().await.is_ok());
        let bytes = in_flight.decoded_bytes(3000).await.expect("fits");
        assert_eq!(
            in_flight.decoded_bytes(2000).await.err(),
            Some(BudgetError::Busy),
            "3000 + 2000 > 4096"
        );
        drop(bytes);
        let whole = in_flight
            .decoded_bytes(5000)
            .await
            .expect("larger than the budget: takes all of it");
        assert_eq!(
            in_flight.decoded_bytes(1).await.err(),
            Some(BudgetError::Busy)
        );
        drop(whole);
        assert!(in_flight.decoded_bytes(4096).await.is_ok());
    }
}
