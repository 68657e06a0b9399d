//! Delivery to backends (DESIGN §9): the durable queue ([`queue`]), one per tenant and
//! queued backend ([`lanes`]), what one queued record holds ([`envelope`]), when to retry
//! ([`backoff`]) and the worker that drains a queue in order ([`worker`]), and the relay's
//! set of queued backends with their workers ([`queued`]). The HTTP client and the sync fan-out live in `backend`.

pub mod backoff;
pub mod envelope;
pub mod lanes;
pub mod queue;
pub mod queued;
pub mod worker;
