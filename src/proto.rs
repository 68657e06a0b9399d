//! Prost types for remote write 1.0 and remote read (package `prometheus`) and remote
//! write 2.0 ([`write_v2`], package `io.prometheus.write.v2`), generated at build time
//! from `proto/` by protox + prost-build.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));

/// Remote write 2.0 (`io.prometheus.write.v2.Request`).
pub mod write_v2 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/io.prometheus.write.v2.rs"));
}
