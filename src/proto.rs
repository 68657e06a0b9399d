//! Prost types for remote write 1.0 and remote read (package `prometheus`), generated
//! at build time from `proto/` by protox + prost-build.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
