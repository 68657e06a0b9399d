//! Admission: what a request must pass before promgate spends work on it (DESIGN §8;
//! SECURITY.md T12–T17): per-tenant token buckets ([`rate`]), per-tenant read slots and
//! per-address failed-authentication counting ([`guards`]), and the global in-flight
//! budgets ([`budget`]). Memory stays bounded; clocks are injectable for tests.

pub mod budget;
pub mod client_address;
pub mod cpu_pool;
pub mod guards;
pub mod rate;
pub mod tenant_budget;

pub use budget::{BudgetError, InFlight};
pub use cpu_pool::{CpuPool, PoolError};
pub use guards::{AuthFailureLimiter, ReadGate, ReadGateError};
pub use rate::{RateLimits, Verdict};
pub use tenant_budget::TenantBudgets;
