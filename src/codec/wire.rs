//! Protobuf wire-format reading for the zero-copy write path: varints, field keys,
//! skipping unknown fields, and a table-driven check of the small messages that are
//! copied as raw bytes (samples, exemplars, histograms, metadata).
//!
//! Every rule mirrors prost's decoder (the reference path), so the two accept and refuse
//! the same bytes: varints of at most 10 bytes that fit in 64 bits, keys that fit in 32
//! bits with a wire type of 0–5 and a field number of at least 1, a known field only with
//! its own wire type (a repeated number also packed), strings that are UTF-8, lengths
//! that stay inside their message, groups skipped with prost's recursion limit of 100.

use std::fmt;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
pub(crate) const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// prost's recursion limit: the depth at which a `WriteRequest`'s own fields are read.
pub(crate) const TOP_DEPTH: u32 = 100;

/// Why bytes are not a valid message. Mapped to a 400 `bad_protobuf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireError {
    Varint,
    Key,
    WireType,
    FieldZero,
    Truncated,
    WrongWireType { field: u32 },
    Utf8,
    EndGroup,
    Recursion,
    PackedLength,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Varint => f.write_str("invalid varint"),
            WireError::Key => f.write_str("invalid key value"),
            WireError::WireType => f.write_str("invalid wire type value"),
            WireError::FieldZero => f.write_str("invalid tag value: 0"),
            WireError::Truncated => f.write_str("buffer underflow"),
            WireError::WrongWireType { field } => {
                write!(f, "invalid wire type for field {field}")
            }
            WireError::Utf8 => f.write_str("invalid string value: data is not UTF-8 encoded"),
            WireError::EndGroup => f.write_str("unexpected end group tag"),
            WireError::Recursion => f.write_str("recursion limit reached"),
            WireError::PackedLength => f.write_str("delimited length exceeded"),
        }
    }
}

/// A cursor over one message's bytes; nothing it returns reaches past them.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Moves to `pos` (at most the end).
    pub fn seek(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    pub fn varint(&mut self) -> Result<u64, WireError> {
        match self.buf.get(self.pos) {
            Some(&byte) if byte < 0x80 => {
                self.pos += 1;
                Ok(u64::from(byte))
            }
            Some(_) => self.varint_long(),
            None => Err(WireError::Varint),
        }
    }

    #[inline]
    fn varint_long(&mut self) -> Result<u64, WireError> {
        // Up to eight bytes at once when eight are there: the first byte without its top
        // bit ends the varint, and the 7-bit groups are gathered without a branch per byte
        // (millisecond timestamps take six).
        if let Some(bytes) = self.buf.get(self.pos..self.pos + 8) {
            let word = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
            let stops = !word & 0x8080_8080_8080_8080;
            if stops != 0 {
                let len = (stops.trailing_zeros() / 8 + 1) as usize;
                let word = if len == 8 {
                    word
                } else {
                    word & ((1u64 << (8 * len)) - 1)
                };
                self.pos += len;
                return Ok((word & 0x7f)
                    | ((word >> 1) & (0x7f << 7))
                    | ((word >> 2) & (0x7f << 14))
                    | ((word >> 3) & (0x7f << 21))
                    | ((word >> 4) & (0x7f << 28))
                    | ((word >> 5) & (0x7f << 35))
                    | ((word >> 6) & (0x7f << 42))
                    | ((word >> 7) & (0x7f << 49)));
            }
        }
        let mut value = 0u64;
        for index in 0..10 {
            let Some(&byte) = self.buf.get(self.pos + index) else {
                return Err(WireError::Varint);
            };
            value |= u64::from(byte & 0x7f) << (index * 7);
            if byte < 0x80 {
                // The tenth byte may only carry the 64th bit.
                if index == 9 && byte >= 0x02 {
                    return Err(WireError::Varint);
                }
                self.pos += index + 1;
                return Ok(value);
            }
        }
        Err(WireError::Varint)
    }

    /// A field key: (field number, wire type).
    #[inline]
    pub fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| WireError::Key)?;
        let wire_type = (key & 0x07) as u8;
        if wire_type > FIXED32 {
            return Err(WireError::WireType);
        }
        let field = key >> 3;
        if field == 0 {
            return Err(WireError::FieldZero);
        }
        Ok((field, wire_type))
    }

    #[inline]
    pub fn bytes(&mut self, len: u64) -> Result<&'a [u8], WireError> {
        let remaining = self.buf.len() - self.pos;
        if len > remaining as u64 {
            return Err(WireError::Truncated);
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.buf[start..self.pos])
    }

    /// The payload of a length-delimited field whose key was just read.
    #[inline]
    pub fn length_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        self.bytes(len)
    }

    /// Skips the value of an unknown field; `depth` is prost's remaining recursion budget
    /// for the message the field is in.
    pub fn skip(&mut self, wire_type: u8, field: u32, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return Err(WireError::Recursion);
        }
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.bytes(8).map(drop),
            FIXED32 => self.bytes(4).map(drop),
            LEN => self.length_delimited().map(drop),
            START_GROUP => loop {
                let (inner, inner_type) = self.key()?;
                if inner_type == END_GROUP {
                    if inner != field {
                        return Err(WireError::EndGroup);
                    }
                    return Ok(());
                }
                self.skip(inner_type, inner, depth - 1)?;
            },
            _ => Err(WireError::EndGroup),
        }
    }
}

/// What a known field holds, as far as checking its bytes goes.
pub(crate) enum Kind {
    Varint,
    Fixed64,
    Str,
    Message(&'static Schema),
    /// A repeated varint: one value, or packed.
    PackedVarint,
    /// A repeated double: one value, or packed.
    PackedFixed64,
}

/// The known fields of a message, and which varint field (if any) is its timestamp.
pub(crate) struct Schema {
    pub fields: &'static [(u32, Kind)],
    pub timestamp_field: u32,
}

pub(crate) static LABEL: Schema = Schema {
    fields: &[(1, Kind::Str), (2, Kind::Str)],
    timestamp_field: 0,
};

pub(crate) static SAMPLE: Schema = Schema {
    fields: &[(1, Kind::Fixed64), (2, Kind::Varint)],
    timestamp_field: 2,
};

pub(crate) static EXEMPLAR: Schema = Schema {
    fields: &[
        (1, Kind::Message(&LABEL)),
        (2, Kind::Fixed64),
        (3, Kind::Varint),
    ],
    timestamp_field: 0,
};

pub(crate) static BUCKET_SPAN: Schema = Schema {
    fields: &[(1, Kind::Varint), (2, Kind::Varint)],
    timestamp_field: 0,
};

pub(crate) static HISTOGRAM: Schema = Schema {
    fields: &[
        (1, Kind::Varint),
        (2, Kind::Fixed64),
        (3, Kind::Fixed64),
        (4, Kind::Varint),
        (5, Kind::Fixed64),
        (6, Kind::Varint),
        (7, Kind::Fixed64),
        (8, Kind::Message(&BUCKET_SPAN)),
        (9, Kind::PackedVarint),
        (10, Kind::PackedFixed64),
        (11, Kind::Message(&BUCKET_SPAN)),
        (12, Kind::PackedVarint),
        (13, Kind::PackedFixed64),
        (14, Kind::Varint),
        (15, Kind::Varint),
        (16, Kind::PackedFixed64),
    ],
    timestamp_field: 15,
};

/// Remote write 2.0 `Sample`: value, timestamp, start timestamp.
pub(crate) static SAMPLE_V2: Schema = Schema {
    fields: &[(1, Kind::Fixed64), (2, Kind::Varint), (3, Kind::Varint)],
    timestamp_field: 2,
};

/// Remote write 2.0 `Exemplar`: label references, value, timestamp.
pub(crate) static EXEMPLAR_V2: Schema = Schema {
    fields: &[
        (1, Kind::PackedVarint),
        (2, Kind::Fixed64),
        (3, Kind::Varint),
    ],
    timestamp_field: 0,
};

/// Remote write 2.0 `Histogram`: 1.0's fields and a start timestamp.
pub(crate) static HISTOGRAM_V2: Schema = Schema {
    fields: &[
        (1, Kind::Varint),
        (2, Kind::Fixed64),
        (3, Kind::Fixed64),
        (4, Kind::Varint),
        (5, Kind::Fixed64),
        (6, Kind::Varint),
        (7, Kind::Fixed64),
        (8, Kind::Message(&BUCKET_SPAN)),
        (9, Kind::PackedVarint),
        (10, Kind::PackedFixed64),
        (11, Kind::Message(&BUCKET_SPAN)),
        (12, Kind::PackedVarint),
        (13, Kind::PackedFixed64),
        (14, Kind::Varint),
        (15, Kind::Varint),
        (16, Kind::PackedFixed64),
        (17, Kind::Varint),
    ],
    timestamp_field: 15,
};

/// Remote write 2.0 `Metadata`: type, help and unit references.
pub(crate) static METADATA_V2: Schema = Schema {
    fields: &[(1, Kind::Varint), (3, Kind::Varint), (4, Kind::Varint)],
    timestamp_field: 0,
};

pub(crate) static METADATA: Schema = Schema {
    fields: &[
        (1, Kind::Varint),
        (2, Kind::Str),
        (4, Kind::Str),
        (5, Kind::Str),
    ],
    timestamp_field: 0,
};

/// The outcome of checking one message.
pub(crate) struct Checked {
    /// No unknown field anywhere inside: the bytes can be forwarded as they are.
    pub clean: bool,
    /// The last value of the schema's timestamp field, 0 when absent (proto3 default).
    pub timestamp: i64,
}

/// Checks a message against its schema exactly as prost would decode it. `depth` is
/// prost's recursion budget for the message's own fields.
pub(crate) fn check(buf: &[u8], schema: &Schema, depth: u32) -> Result<Checked, WireError> {
    let mut reader = Reader::new(buf);
    let mut checked = Checked {
        clean: true,
        timestamp: 0,
    };
    while !reader.is_empty() {
        let (field, wire_type) = reader.key()?;
        let Some((_, kind)) = schema.fields.iter().find(|(number, _)| *number == field) else {
            checked.clean = false;
            reader.skip(wire_type, field, depth)?;
            continue;
        };
        match (kind, wire_type) {
            (Kind::Varint | Kind::PackedVarint, VARINT) => {
                let value = reader.varint()?;
                if field == schema.timestamp_field {
                    checked.timestamp = value as i64;
                }
            }
            (Kind::Fixed64 | Kind::PackedFixed64, FIXED64) => {
                reader.bytes(8)?;
            }
            (Kind::Str, LEN) => {
                let bytes = reader.length_delimited()?;
                if !is_utf8(bytes) {
                    return Err(WireError::Utf8);
                }
            }
            (Kind::Message(inner), LEN) => {
                if depth == 0 {
                    return Err(WireError::Recursion);
                }
                let bytes = reader.length_delimited()?;
                checked.clean &= check(bytes, inner, depth - 1)?.clean;
            }
            (Kind::PackedVarint, LEN) => {
                let mut packed = Reader::new(reader.length_delimited()?);
                while !packed.is_empty() {
                    packed.varint().map_err(|_| WireError::PackedLength)?;
                }
            }
            (Kind::PackedFixed64, LEN) => {
                if reader.length_delimited()?.len() % 8 != 0 {
                    return Err(WireError::PackedLength);
                }
            }
            _ => return Err(WireError::WrongWireType { field }),
        }
    }
    Ok(checked)
}

/// The timestamp of a `Sample` in the forms clients write (value then timestamp, either
/// left out when zero, no other field), or `None` for [`check`] to look at.
#[inline]
pub(crate) fn canonical_sample_timestamp(payload: &[u8]) -> Option<i64> {
    let timestamp = match payload {
        [] => return Some(0),
        [0x09, _, _, _, _, _, _, _, _] => return Some(0),
        [0x09, _, _, _, _, _, _, _, _, 0x10, timestamp @ ..] | [0x10, timestamp @ ..] => timestamp,
        _ => return None,
    };
    let mut reader = Reader::new(timestamp);
    let value = reader.varint().ok()?;
    reader.is_empty().then_some(value as i64)
}

/// UTF-8 check with a fast path for the ASCII that label names and values nearly
/// always are.
#[inline]
pub(crate) fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// Appends `value` as a varint.
#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// How many bytes `value` takes as a varint.
#[inline]
pub(crate) fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_prost() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            1_763_830_083_325,
            (1 << 56) - 1,
            1 << 56,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            // Also with bytes after it, for the word-at-a-time path.
            let mut padded = out.clone();
            padded.extend_from_slice(&[0xff; 9]);
            let mut reader = Reader::new(&padded);
            assert_eq!(reader.varint(), Ok(value));
            assert_eq!(reader.pos(), out.len());
            assert_eq!(out.len(), varint_len(value));
            let mut reader = Reader::new(&out);
            assert_eq!(reader.varint(), Ok(value));
            assert!(reader.is_empty());
            let mut prost_buf = out.as_slice();
            assert_eq!(
                prost::encoding::decode_varint(&mut prost_buf).expect("prost"),
                value
            );
        }
        // Ten bytes whose last carries more than the 64th bit; eleven bytes; truncated.
        for bad in [
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..],
            &[0x80; 11][..],
            &[0x80][..],
        ] {
            assert_eq!(Reader::new(bad).varint(), Err(WireError::Varint));
            assert!(prost::encoding::decode_varint(&mut &bad[..]).is_err());
        }
    }

    #[test]
    fn groups_are_skipped_up_to_the_recursion_limit() {
        // field 5 start group, field 6 varint, field 5 end group
        let group = [0x2b, 0x30, 0x01, 0x2c];
        let mut reader = Reader::new(&group[1..]);
        reader.skip(START_GROUP, 5, 2).expect("one level");
        assert!(reader.is_empty());
        assert_eq!(
            Reader::new(&group[1..]).skip(START_GROUP, 5, 1),
            Err(WireError::Recursion)
        );
        // An end group for another field.
        assert_eq!(
            Reader::new(&[0x34]).skip(START_GROUP, 5, 10),
            Err(WireError::EndGroup)
        );
    }

    #[test]
    fn wrong_wire_types_and_bad_strings_are_refused() {
        // Sample.value sent as a varint.
        assert_eq!(
            check(&[0x08, 0x01], &SAMPLE, 10).err(),
            Some(WireError::WrongWireType { field: 1 })
        );
        // Label.name that is not UTF-8.
        assert_eq!(
            check(&[0x0a, 0x01, 0xff], &LABEL, 10).err(),
            Some(WireError::Utf8)
        );
        // Packed doubles whose length is not a multiple of 8.
        assert_eq!(
            check(&[0x52, 0x03, 0, 0, 0], &HISTOGRAM, 10).err(),
            Some(WireError::PackedLength)
        );
        let sample = check(&[0x10, 0x05, 0x40, 0x01], &SAMPLE, 10).expect("unknown field 8");
        assert!(!sample.clean);
        assert_eq!(sample.timestamp, 5);
    }
}
