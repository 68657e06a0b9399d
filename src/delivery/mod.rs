//! Delivery to backends (DESIGN §9): the durable per-backend queue ([`queue`]), what one
//! queued record holds ([`envelope`]), when to retry ([`backoff`]) and the worker that
//! drains a queue in order ([`worker`]). Not yet wired into the write path; when it is,
//! this room absorbs `backend/` (the HTTP client, sync fan-out) so everything between an
//! accepted write and a backend lives here.

pub mod backoff;
pub mod envelope;
pub mod queue;
pub mod worker;
