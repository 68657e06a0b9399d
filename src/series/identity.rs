//! A series' identity: SipHash-1-3 of its labels as written to the backend (each label
//! a protobuf `Label` of name then value, sorted by name, the tenant's labels included),
//! under a 128-bit key no tenant knows, so that no tenant can craft label sets that
//! collide to pass more series than its limit. The encoding is the canonical one every
//! write path produces, so one label set has one identity whatever protocol carried it.
//! SipHash is specified, so replicas of any version agree on identities.

use std::hash::Hasher;

use sha2::{Digest, Sha256};
use siphasher::sip::SipHasher13;

/// The key of series identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesKey {
    k0: u64,
    k1: u64,
}

impl SeriesKey {
    /// Derived from a secret the replicas share (the token-signing key), so every
    /// replica gives a series the same identity and a restart keeps them.
    pub fn derive(secret: &[u8]) -> SeriesKey {
        let digest = Sha256::new()
            .chain_update(b"promgate series identity v1\0")
            .chain_update(secret)
            .finalize();
        let word = |range: std::ops::Range<usize>| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&digest[range]);
            u64::from_le_bytes(bytes)
        };
        SeriesKey {
            k0: word(0..8),
            k1: word(8..16),
        }
    }

    /// The identity of the series whose encoded labels are `labels`.
    #[inline]
    pub fn identity(&self, labels: &[u8]) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write(labels);
        hasher.finish()
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
