//! What replicas tell each other about a tenant's active series through the registry
//! (DESIGN §14), built from the tracker's stored keys (the top 40 bits of identities):
//! - [`Cardinality`]: a HyperLogLog of 4 096 one-byte registers (about 1.6 % standard
//!   error); the union of every replica's sketch counts a series once however many
//!   replicas saw it, which is what a load balancer spreading one sender needs;
//! - [`Members`]: a Bloom filter of the series, sized to them at 10 bits a series (about
//!   1 % false positives), published only for tenants near their limit, so that a replica
//!   that never saw a series (a restarted one, or one a spread sender reaches later) does
//!   not refuse a series active elsewhere.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

const PRECISION: u32 = 12;
const REGISTERS: usize = 1 << PRECISION;
/// Bits of the stored key (`identity >> 24`).
const KEY_BITS: u32 = 40;
/// The largest Bloom filter: 2^23 bits (1 MiB), 1.8 % false positives at a million series.
const MAX_MEMBER_BITS: u64 = 1 << 23;
const MEMBER_HASHES: u64 = 7;

/// A HyperLogLog sketch of series keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cardinality {
    registers: Vec<u8>,
}

impl Default for Cardinality {
    fn default() -> Self {
        Cardinality {
            registers: vec![0; REGISTERS],
        }
    }
}

impl Cardinality {
    pub fn insert(&mut self, key: u64) {
        // Keys are uniform over 40 bits: the first 12 choose the register, the rest the rank.
        let index = (key >> (KEY_BITS - PRECISION)) as usize & (REGISTERS - 1);
        let rest_bits = KEY_BITS - PRECISION;
        let rest = key & ((1 << rest_bits) - 1);
        let rank = (rest_bits - (64 - rest.leading_zeros()) + 1) as u8;
        if self.registers[index] < rank {
            self.registers[index] = rank;
        }
    }

    /// The union of two sketches: each register's maximum.
    pub fn merge(&mut self, other: &Cardinality) {
        for (mine, theirs) in self.registers.iter_mut().zip(&other.registers) {
            *mine = (*mine).max(*theirs);
        }
    }

    /// The estimated number of distinct keys inserted.
    pub fn estimate(&self) -> u64 {
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self
            .registers
            .iter()
            .map(|&rank| 2f64.powi(-i32::from(rank)))
            .sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|&&rank| rank == 0).count();
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            // Linear counting for small sets.
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }

    pub fn encode(&self) -> String {
        STANDARD.encode(&self.registers)
    }

    pub fn decode(text: &str) -> Option<Cardinality> {
        let registers = STANDARD.decode(text).ok()?;
        (registers.len() == REGISTERS).then_some(Cardinality { registers })
    }
}

/// The bits `key` sets in a filter of `bits` bits (a power of two): double hashing.
fn positions(bits: u64, key: u64) -> impl Iterator<Item = u64> {
    let mask = bits - 1;
    let first = key.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    let step = key.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(17) | 1;
    (0..MEMBER_HASHES).map(move |i| first.wrapping_add(i.wrapping_mul(step)) & mask)
}

/// A Bloom filter of series keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    bits: Vec<u64>,
}

impl Members {
    /// A filter for about `series` keys.
    pub fn with_room_for(series: u64) -> Members {
        let bits = (series.max(64) * 10)
            .next_power_of_two()
            .min(MAX_MEMBER_BITS);
        Members {
            bits: vec![0; (bits / 64) as usize],
        }
    }

    fn bit_count(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    pub fn insert(&mut self, key: u64) {
        for bit in positions(self.bit_count(), key) {
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    pub fn contains(&self, key: u64) -> bool {
        positions(self.bit_count(), key)
            .all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    pub fn encode(&self) -> String {
        let bytes: Vec<u8> = self
            .bits
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect();
        STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Option<Members> {
        let bytes = STANDARD.decode(text).ok()?;
        let words = bytes.len() / 8;
        if bytes.len() % 8 != 0 || !words.is_power_of_two() || words as u64 * 64 > MAX_MEMBER_BITS {
            return None;
        }
        let bits = bytes
            .chunks_exact(8)
            .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap_or_default()))
            .collect();
        Some(Members { bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> u64 {
        // Uniform 40-bit keys, as the tracker stores them (splitmix64).
        let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) >> 24
    }

    #[test]
    fn estimates_are_within_a_few_percent_and_unions_count_once() {
        for n in [100u64, 10_000, 150_000, 1_000_000] {
            let mut sketch = Cardinality::default();
            (0..n).for_each(|i| sketch.insert(key(i)));
            let error = (sketch.estimate() as f64 - n as f64).abs() / n as f64;
            assert!(error < 0.05, "{n}: {} ({error})", sketch.estimate());
        }
        // Two replicas that each saw the same 100 000 series and 10 000 of their own.
        let (mut a, mut b) = (Cardinality::default(), Cardinality::default());
        (0..100_000).for_each(|i| {
            a.insert(key(i));
            b.insert(key(i));
        });
        (100_000..110_000).for_each(|i| a.insert(key(i)));
        (110_000..120_000).for_each(|i| b.insert(key(i)));
        a.merge(&b);
        let error = (a.estimate() as f64 - 120_000.0).abs() / 120_000.0;
        assert!(error < 0.05, "{}", a.estimate());
        assert_eq!(Cardinality::decode(&a.encode()), Some(a));
    }

    #[test]
    fn members_are_found_and_strangers_rarely() {
        let mut members = Members::with_room_for(150_000);
        (0..150_000).for_each(|i| members.insert(key(i)));
        assert!((0..150_000).all(|i| members.contains(key(i))));
        let false_positives = (1_000_000..1_100_000)
            .filter(|&i| members.contains(key(i)))
            .count();
        assert!(false_positives < 2_000, "{false_positives} of 100 000");
        assert_eq!(Members::decode(&members.encode()), Some(members));
        assert_eq!(Members::decode("AAAA"), None);
    }
}
