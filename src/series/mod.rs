//! Per-series work on the write path, after a request is decoded and its labels are
//! enforced: which series a tenant has active and whether a new one may be written
//! (DESIGN §14).
//!
//! - [`identity`]: a series' identity, a keyed hash of its labels exactly as they reach
//!   the backend;
//! - [`tracker`]: each tenant's active series, their idle expiry and the limit;
//! - [`sketch`]: what replicas share of them through the registry, so the limit is
//!   global;
//! - [`limit`]: a request's series admitted or refused, and the refusal's words (the
//!   refused series are cut out of a 1.0 body by `codec::refused`);
//! - [`ha`]: Prometheus HA pairs (DESIGN §15), the elected replica of each (tenant,
//!   cluster) and each series' verdict (the codec removes the replica label and leaves
//!   dropped series out, `codec::ha`);
//! - [`relabel`]: a tenant's `write_relabel_configs` (DESIGN §16), run over each series
//!   before its labels are enforced.

pub mod ha;
pub mod identity;
pub mod limit;
pub mod relabel;
pub mod sketch;
pub mod tracker;

pub use identity::{SeriesKey, SeriesSpan};
pub use limit::SeriesRefusal;
pub use tracker::ActiveSeries;
