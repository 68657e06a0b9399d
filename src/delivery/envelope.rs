//! What one queued record holds (DESIGN §9): the write as it goes to the backend — the
//! tenant it belongs to (for the backend's tenant header), the remote-write version of the
//! body, and the snappy-compressed body itself, already scoped to the tenant. Encoded as
//! `[format u8 = 1][protocol u8][tenant length u16 LE][tenant][body]`; the queue's own
//! record checksum covers it all.

use bytes::Bytes;

use crate::config::WriteProtocol;

/// The layout byte of this version of the envelope.
const FORMAT: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedWrite {
    pub tenant_id: String,
    pub protocol: WriteProtocol,
    /// Snappy-compressed, as the backend receives it.
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("queued record is {0} bytes, shorter than an envelope header")]
    Truncated(usize),
    #[error("queued record has envelope format {0}, which this promgate does not read")]
    UnknownFormat(u8),
    #[error("queued record names protocol byte {0}")]
    UnknownProtocol(u8),
    #[error("queued record's tenant id is not UTF-8")]
    BadTenant,
}

impl QueuedWrite {
    pub fn encode(&self) -> Vec<u8> {
        let tenant = self.tenant_id.as_bytes();
        // Tenant ids are at most 150 bytes (DESIGN §4); the cast cannot truncate one.
        let tenant_len = u16::try_from(tenant.len()).unwrap_or(u16::MAX);
        let tenant = &tenant[..usize::from(tenant_len)];
        let mut out = Vec::with_capacity(4 + tenant.len() + self.body.len());
        out.push(FORMAT);
        out.push(match self.protocol {
            WriteProtocol::V1 => 1,
            WriteProtocol::V2 => 2,
        });
        out.extend_from_slice(&tenant_len.to_le_bytes());
        out.extend_from_slice(tenant);
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(record: &[u8]) -> Result<QueuedWrite, EnvelopeError> {
        let [format, protocol, len_low, len_high, rest @ ..] = record else {
            return Err(EnvelopeError::Truncated(record.len()));
        };
        if *format != FORMAT {
            return Err(EnvelopeError::UnknownFormat(*format));
        }
        let protocol = match protocol {
            1 => WriteProtocol::V1,
            2 => WriteProtocol::V2,
            other => return Err(EnvelopeError::UnknownProtocol(*other)),
        };
        let tenant_len = usize::from(u16::from_le_bytes([*len_low, *len_high]));
        if rest.len() < tenant_len {
            return Err(EnvelopeError::Truncated(record.len()));
        }
        let (tenant, body) = rest.split_at(tenant_len);
        Ok(QueuedWrite {
            tenant_id: std::str::from_utf8(tenant)
                .map_err(|_| EnvelopeError::BadTenant)?
                .to_string(),
            protocol,
            body: Bytes::copy_from_slice(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn damaged_envelopes_are_named() {
        assert_eq!(
            QueuedWrite::decode(&[1, 1]),
            Err(EnvelopeError::Truncated(2))
        );
        assert_eq!(
            QueuedWrite::decode(&[9, 1, 0, 0]),
            Err(EnvelopeError::UnknownFormat(9))
        );
        assert_eq!(
            QueuedWrite::decode(&[1, 3, 0, 0]),
            Err(EnvelopeError::UnknownProtocol(3))
        );
        assert_eq!(
            QueuedWrite::decode(&[1, 1, 5, 0, b'a']),
            Err(EnvelopeError::Truncated(5))
        );
        assert_eq!(
            QueuedWrite::decode(&[1, 1, 1, 0, 0xff]),
            Err(EnvelopeError::BadTenant)
        );
    }

    proptest! {
        #[test]
        fn round_trips(tenant in "[a-zA-Z0-9_.-]{1,150}", v2 in any::<bool>(), body in prop::collection::vec(any::<u8>(), 0..512)) {
            let write = QueuedWrite {
                tenant_id: tenant,
                protocol: if v2 { WriteProtocol::V2 } else { WriteProtocol::V1 },
                body: Bytes::from(body),
            };
            prop_assert_eq!(QueuedWrite::decode(&write.encode()), Ok(write));
        }

        #[test]
        fn random_bytes_never_panic(record in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = QueuedWrite::decode(&record);
        }
    }
}
