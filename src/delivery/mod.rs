//! Delivery to backends (DESIGN §9). Today it holds the durable per-backend queue; when
//! the delivery worker lands, this room absorbs `backend/` (the HTTP client, sync
//! fan-out, retries) so everything between an accepted write and a backend lives here.

pub mod queue;
