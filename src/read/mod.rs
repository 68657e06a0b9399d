//! Remote read scoped to the caller's tenant (DESIGN §7; PROTOCOL.md §1.3, §4): the
//! request side ([`request`]: validation, matcher injection, negotiation), the response
//! side ([`filter`]: defence-in-depth filtering and label stripping) and the streamed
//! framing ([`frame`]). Pure and synchronous, like `codec`.

pub mod filter;
pub mod frame;
pub mod request;

use crate::codec::CodecError;
use frame::FrameError;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// The client's request is invalid: 400.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The response would exceed `max_read_samples`: 400 before it began, an aborted
    /// stream after.
    #[error("read exceeds the limit of {limit} samples; narrow the query")]
    TooManySamples { limit: u64 },
    /// The backend's answer is unusable.
    #[error("{0}")]
    Backend(String),
    #[error("backend stream: {0}")]
    Frame(#[from] FrameError),
}
