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

/// Query API answers held at once, process-wide, in bytes: an answer reserves its room
/// as it arrives (three times its size: the backend's answer, its buffer's room to grow,
/// and the tenant's copy of it) and
/// holds it until the tenant's copy is sent. Reserving never waits (answers that each
/// hold part of the budget and wait for more would stall one another): an answer that
/// does not fit is answered 503 and retried, so memory stays bounded however many large
/// answers run at once.
pub struct AnswerBytes {
    permits: Arc<Semaphore>,
    whole: u32,
}

/// What one answer holds of [`AnswerBytes`].
#[derive(Debug, Default)]
pub struct AnswerHold {
    permit: Option<OwnedSemaphorePermit>,
    permits: u32,
}

/// Each answer byte held also needs room for its buffer to grow and for the tenant's
/// copy of it.
const ANSWER_COPIES: u64 = 3;

impl AnswerBytes {
    pub fn new(max_bytes: u64) -> AnswerBytes {
        let permits = usize::try_from(max_bytes / BYTES_PER_PERMIT)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        AnswerBytes {
            permits: Arc::new(Semaphore::new(permits)),
            whole: u32::try_from(permits).unwrap_or(u32::MAX),
        }
    }

    /// Grows `hold` to cover an answer of `bytes` so far, without waiting. An answer
    /// larger than the whole budget (a tenant's answer cap above it) may hold all of it.
    pub fn hold(&self, hold: &mut AnswerHold, bytes: u64) -> Result<(), BudgetError> {
        let wanted = (bytes.saturating_mul(ANSWER_COPIES))
            .div_ceil(BYTES_PER_PERMIT)
            .max(1);
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX).min(self.whole);
        if wanted <= hold.permits {
            return Ok(());
        }
        let more = Arc::clone(&self.permits)
            .try_acquire_many_owned(wanted - hold.permits)
            .map_err(|_| BudgetError::Busy)?;
        match &mut hold.permit {
            Some(held) => held.merge(more),
            None => hold.permit = Some(more),
        }
        hold.permits = wanted;
        Ok(())
    }

    /// Bytes free now (for tests and metrics).
    pub fn available_bytes(&self) -> u64 {
        self.permits.available_permits() as u64 * BYTES_PER_PERMIT
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

    #[test]
    fn answers_hold_twice_their_size_and_never_wait() {
        let budget = AnswerBytes::new(10 * 1024);
        let mut first = AnswerHold::default();
        budget.hold(&mut first, 1024).expect("fits");
        assert_eq!(budget.available_bytes(), 7 * 1024);
        budget.hold(&mut first, 2048).expect("grows");
        assert_eq!(budget.available_bytes(), 4 * 1024);
        let mut second = AnswerHold::default();
        budget.hold(&mut second, 1365).expect("the rest");
        assert_eq!(
            budget.hold(&mut second, 1366),
            Err(BudgetError::Busy),
            "full: refused at once"
        );
        drop(first);
        assert_eq!(budget.available_bytes(), 6 * 1024);
        drop(second);
        let mut huge = AnswerHold::default();
        budget
            .hold(&mut huge, 1 << 30)
            .expect("larger than the budget: holds all of it");
        assert_eq!(budget.available_bytes(), 0);
    }
}
