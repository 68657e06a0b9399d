//! The Prometheus query API scoped to the caller's tenant (DESIGN §13): which
//! parameters each endpoint takes and how they are read ([`params`]), the PromQL
//! rewrite that puts the tenant matcher on every selector ([`promql`]), and the answers
//! made the tenant's ([`response`]). Pure and synchronous; the handler is
//! `server::query`. Remote read lives in `read`.

pub mod guard;
pub mod params;
pub mod promql;
pub mod response;
