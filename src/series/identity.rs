//! A series' identity: XXH3-64 of its labels as written to the backend (each label a
//! protobuf `Label` of name then value, sorted by name, the tenant's labels included),
//! under a 192-byte secret no tenant knows, so that no tenant can craft label sets that
//! collide to pass more series than its limit. The encoding is the canonical one every
//! write path produces, so one label set has one identity whatever protocol carried it.
//! XXH3 is specified, so replicas of any version agree on identities; with a secret it
//! hashes a series' 100 to 300 label bytes in a few tens of nanoseconds, where SipHash-1-3
//! took five times as long and doubled the cost of the write path's rewrite
//! (`benches/active_series.rs`).

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_64_with_secret;

const SECRET_BYTES: usize = 192;

/// The key of series identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesKey {
    secret: [u8; SECRET_BYTES],
}

impl SeriesKey {
    /// Derived from a secret the replicas share (the token-signing key), so every
    /// replica gives a series the same identity and a restart keeps them.
    pub fn derive(secret: &[u8]) -> SeriesKey {
        // SHA-256 in counter mode: 192 bytes that look random to anyone without `secret`.
        let mut derived = [0u8; SECRET_BYTES];
        for (index, block) in derived.chunks_mut(32).enumerate() {
            let digest = Sha256::new()
                .chain_update(b"promgate series identity v2\0")
                .chain_update([index as u8])
                .chain_update(secret)
                .finalize();
            block.copy_from_slice(&digest[..block.len()]);
        }
        SeriesKey { secret: derived }
    }

    /// The identity of the series whose encoded labels are `labels`.
    #[inline]
    pub fn identity(&self, labels: &[u8]) -> u64 {
        xxh3_64_with_secret(labels, &self.secret)
    }
}

/// One series of a rewritten request: its identity, where it lies in the output, and
/// what it carries (for the refused counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesSpan {
    pub identity: u64,
    /// The series' bytes in the output (its `TimeSeries` field, key and length included).
    pub start: usize,
    pub end: usize,
    pub samples: u32,
    pub histograms: u32,
    pub exemplars: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_depend_on_the_key_and_every_byte() {
        let key = SeriesKey::derive(b"secret");
        let other = SeriesKey::derive(b"other secret");
        let labels = b"\x0a\x0c\x0a\x08__name__";
        assert_eq!(key.identity(labels), key.identity(labels));
        assert_ne!(key.identity(labels), other.identity(labels));
        assert_ne!(
            key.identity(labels),
            key.identity(&labels[..labels.len() - 1])
        );
    }
}
