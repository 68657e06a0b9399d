//! Wire formats: snappy (and, for OTLP, gzip) with caps checked before allocating,
//! remote-write decoding, OTLP translation,
//! validation, tenant-label enforcement and re-encoding (DESIGN §6 steps 4, 5, 7;
//! PROTOCOL.md §2). Pure and synchronous: no I/O, no clocks (callers pass `now`).

pub mod ha;
pub mod oracle;
pub mod otlp;
pub mod refused;
pub mod relabel;
pub mod rw2;
pub mod snappy;
pub mod splice;
pub mod splice_v2;
pub mod split;
mod wire;
pub mod write;

/// Why a request body could not be accepted. Each variant is a permanent client error:
/// retrying the same bytes can never succeed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("body is empty; an empty write request is the single snappy byte 0x00")]
    EmptyBody,
    #[error("body uses the snappy framed format; remote write requires the block format")]
    FramedSnappy,
    #[error("snappy: {0}")]
    Snappy(String),
    #[error("decoded body would be {claimed} bytes, over the {limit}-byte limit")]
    DecodedTooLarge { claimed: u64, limit: u64 },
    #[error("gzip: {0}")]
    Gzip(String),
    #[error("protobuf: {0}")]
    Protobuf(String),
    #[error("{0}")]
    Invalid(String),
}

impl CodecError {
    /// A short, fixed label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::EmptyBody => "empty_body",
            CodecError::FramedSnappy => "framed_snappy",
            CodecError::Snappy(_) => "bad_snappy",
            CodecError::DecodedTooLarge { .. } => "decoded_too_large",
            CodecError::Gzip(_) => "bad_gzip",
            CodecError::Protobuf(_) => "bad_protobuf",
            CodecError::Invalid(_) => "invalid_series",
        }
    }
}
