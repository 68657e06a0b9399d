//! Admission: what a request must pass before promgate spends work on it, once its
//! tenant is known (DESIGN §8; SECURITY.md T12–T17, T23). Each tenant's own share comes
//! first — token buckets ([`rate`]), write slots and decoded bytes ([`tenant_budget`]),
//! read slots and queue ([`guards`]) — and the process-wide budgets ([`budget`]) are only
//! the last-resort shed. CPU-heavy stages run on a pool that serves tenants in turn
//! ([`cpu_pool`]). Before authentication only the per-address failure count
//! ([`guards`]) applies, on the real client address ([`client_address`]). Memory stays
//! bounded; every share is an RAII guard; clocks are injectable for tests.

pub mod budget;
pub mod client_address;
pub mod cpu_pool;
pub mod guards;
pub mod rate;
pub mod tenant_budget;

pub use budget::{AnswerBytes, AnswerHold, BudgetError, InFlight};
pub use cpu_pool::{CpuPool, PoolError};
pub use guards::{AuthFailureLimiter, ReadGate, ReadGateError};
pub use rate::{RateLimits, Verdict};
pub use tenant_budget::TenantBudgets;
