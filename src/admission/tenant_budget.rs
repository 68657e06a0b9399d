//! Each tenant's own share of the relay (SECURITY.md T23): write requests in flight and
//! decoded write bytes in flight, per tenant. A tenant that fills its share waits (at
//! most the in-flight wait) and is then answered 503, while every other tenant's share
//! stays untouched. Taken after authentication and before the process-wide budgets of
//! [`super::budget`], which are only the last-resort shed. Permits are RAII guards: a
//! request that ends in any way, a client hang-up included, gives its share back.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::budget::{BudgetError, BYTES_PER_PERMIT};

/// The figures a tenant's budget was built from; a change rebuilds it (permits held on
/// the old one stay valid until released).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BudgetKey {
    max_concurrent_writes: usize,
    max_decoded_bytes: u64,
}

struct TenantBudget {
    key: BudgetKey,
    writes: Arc<Semaphore>,
    decoded_bytes: Arc<Semaphore>,
    decoded_bytes_permits: usize,
}

#[derive(Default)]
pub struct TenantBudgets {
    tenants: DashMap<String, Arc<TenantBudget>>,
}

impl TenantBudgets {
    /// One of `tenant`'s `max_concurrent_writes` places, waiting at most `max_wait`.
    pub async fn write_slot(
        &self,
        tenant: &str,
        max_concurrent_writes: usize,
        max_decoded_bytes: u64,
        max_wait: Duration,
    ) -> Result<OwnedSemaphorePermit, BudgetError> {
        let budget = self.budget(tenant, max_concurrent_writes, max_decoded_bytes);
        acquire(&budget.writes, 1, max_wait).await
    }

    /// `bytes` of `tenant`'s decoded-bytes budget, waiting at most `max_wait`. The
    /// tenant's `max_decoded_bytes` never exceeds its budget (`check-config` and the admin
    /// API refuse limits that would allow it), so every request fits in time.
    pub async fn decoded_bytes(
        &self,
        tenant: &str,
        max_concurrent_writes: usize,
        max_decoded_bytes: u64,
        bytes: u64,
        max_wait: Duration,
    ) -> Result<OwnedSemaphorePermit, BudgetError> {
        let budget = self.budget(tenant, max_concurrent_writes, max_decoded_bytes);
        let whole = u32::try_from(budget.decoded_bytes_permits).unwrap_or(u32::MAX);
        let permits = u32::try_from(bytes.div_ceil(BYTES_PER_PERMIT).max(1))
            .unwrap_or(u32::MAX)
            .min(whole);
        acquire(&budget.decoded_bytes, permits, max_wait).await
    }

    /// Forgets a tenant's budget (it was deleted).
    pub fn forget(&self, tenant: &str) {
        self.tenants.remove(tenant);
    }

    fn budget(
        &self,
        tenant: &str,
        max_concurrent_writes: usize,
        max_decoded_bytes: u64,
    ) -> Arc<TenantBudget> {
        let key = BudgetKey {
            max_concurrent_writes,
            max_decoded_bytes,
        };
        if let Some(existing) = self.tenants.get(tenant) {
            if existing.key == key {
                return Arc::clone(existing.value());
            }
        }
        let kib = usize::try_from(max_decoded_bytes.div_ceil(BYTES_PER_PERMIT))
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        let budget = Arc::new(TenantBudget {
            key,
            writes: Arc::new(Semaphore::new(max_concurrent_writes.max(1))),
            decoded_bytes: Arc::new(Semaphore::new(kib)),
            decoded_bytes_permits: kib,
        });
        self.tenants.insert(tenant.to_string(), Arc::clone(&budget));
        budget
    }
}

async fn acquire(
    semaphore: &Arc<Semaphore>,
    permits: u32,
    max_wait: Duration,
) -> Result<OwnedSemaphorePermit, BudgetError> {
    if let Ok(permit) = Arc::clone(semaphore).try_acquire_many_owned(permits) {
        return Ok(permit);
    }
    match tokio::time::timeout(max_wait, Arc::clone(semaphore).acquire_many_owned(permits)).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(BudgetError::Busy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(20);

    #[tokio::test]
    async fn each_tenant_has_its_own_write_slots() {
        let budgets = TenantBudgets::default();
        let held: Vec<_> =
            futures::future::join_all((0..3).map(|_| budgets.write_slot("a", 3, 1 << 20, WAIT)))
                .await;
        assert!(held.iter().all(Result::is_ok));
        assert_eq!(
            budgets.write_slot("a", 3, 1 << 20, WAIT).await.err(),
            Some(BudgetError::Busy)
        );
        assert!(
            budgets.write_slot("b", 3, 1 << 20, WAIT).await.is_ok(),
            "another tenant is untouched"
        );
        drop(held);
        assert!(budgets.write_slot("a", 3, 1 << 20, WAIT).await.is_ok());
    }

    #[tokio::test]
    async fn decoded_bytes_are_budgeted_per_tenant() {
        let budgets = TenantBudgets::default();
        let budget = 4096;
        let first = budgets
            .decoded_bytes("a", 4, budget, 3000, WAIT)
            .await
            .expect("fits");
        assert_eq!(
            budgets
                .decoded_bytes("a", 4, budget, 2000, WAIT)
                .await
                .err(),
            Some(BudgetError::Busy)
        );
        assert!(budgets
            .decoded_bytes("b", 4, budget, 4096, WAIT)
            .await
            .is_ok());
        drop(first);
        assert!(budgets
            .decoded_bytes("a", 4, budget, 4096, WAIT)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_waiter_gets_the_share_freed_within_its_wait() {
        let budgets = Arc::new(TenantBudgets::default());
        let held = budgets
            .write_slot("a", 1, 1 << 20, WAIT)
            .await
            .expect("free");
        let waiter = {
            let budgets = Arc::clone(&budgets);
            tokio::spawn(async move {
                budgets
                    .write_slot("a", 1, 1 << 20, Duration::from_secs(5))
                    .await
                    .is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.expect("join"));
    }
}
