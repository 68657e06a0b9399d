//! Encoders for the property tests of the zero-copy write paths: a small deterministic
//! generator of choices, protobuf wire pieces, unknown fields and groups that neither
//! remote-write version defines (19, 22, 27, 1000), and byte-level damage.

use proptest::prelude::*;

/// A small deterministic generator the encoders draw their choices from.
pub struct Choices(pub u64);

impl Choices {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn chance(&mut self, in_16: u64) -> bool {
        self.next() % 16 < in_16
    }
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn put_key(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    put_varint(out, field << 3 | wire_type);
}

pub fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Sometimes an unknown field: a varint, a string, a fixed32 or a group.
pub fn maybe_unknown(out: &mut Vec<u8>, choices: &mut Choices) {
    if !choices.chance(2) {
        return;
    }
    match choices.next() % 4 {
        0 => {
            put_key(out, 19, 0);
            put_varint(out, choices.next() % 1000);
        }
        1 => put_bytes(out, 1000, b"smuggled"),
        2 => {
            put_key(out, 27, 5);
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        _ => {
            put_key(out, 22, 3);
            put_key(out, 1, 0);
            put_varint(out, 7);
            put_key(out, 22, 4);
        }
    }
}

/// Damage to apply to encoded bytes: (kind, position, byte).
pub fn damage() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    prop_oneof![
        3 => Just(vec![]),
        1 => prop::collection::vec((0u8..4, any::<usize>(), any::<u8>()), 1..4),
    ]
}

pub fn apply(mut bytes: Vec<u8>, damage: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(kind, position, byte) in damage {
        if bytes.is_empty() {
            break;
        }
        let at = position % bytes.len();
        match kind {
            0 => bytes[at] = byte,
            1 => bytes.truncate(at),
            2 => bytes.insert(at, byte),
            _ => {
                bytes.remove(at);
            }
        }
    }
    bytes
}
