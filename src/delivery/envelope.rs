//! What one queued record holds (DESIGN §9): the write as it goes to the backend — the
//! tenant it belongs to (for the backend's tenant header), the remote-write version of the
//! body, what it holds (a 2.0 backend's written counts are checked against it), and the
//! snappy-compressed body itself, already scoped to the tenant. Encoded as
//! `[format u8 = 1][protocol u8][tenant length u16 LE][tenant][samples u64 LE]
//! [histograms u64 LE][exemplars u64 LE][body]`; the queue's own record checksum covers
//! it all.

use bytes::Bytes;

use crate::backend::Written;
use crate::codec::{snappy, CodecError};
use crate::config::WriteProtocol;

/// The layout byte of this version of the envelope.
const FORMAT: u8 = 1;
/// The three counts of what the body holds.
const COUNTS_BYTES: usize = 24;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedWrite {
    pub tenant_id: String,
    pub protocol: WriteProtocol,
    /// What the body holds.
    pub sent: Written,
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
        let mut out = Vec::with_capacity(4 + tenant.len() + COUNTS_BYTES + self.body.len());
        out.push(FORMAT);
        out.push(match self.protocol {
            WriteProtocol::V1 => 1,
            WriteProtocol::V2 => 2,
        });
        out.extend_from_slice(&tenant_len.to_le_bytes());
        out.extend_from_slice(tenant);
        for count in [self.sent.samples, self.sent.histograms, self.sent.exemplars] {
            out.extend_from_slice(&count.to_le_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// One remote-write 1.0 request holding everything `writes` hold, in order: a
    /// protobuf message's repeated fields concatenate, and so do snappy blocks
    /// ([`snappy::concat_blocks`]), so nothing is decompressed. For consecutive 1.0
    /// writes of one tenant.
    pub fn merge_v1(writes: &[&QueuedWrite]) -> Result<QueuedWrite, CodecError> {
        let bodies: Vec<&[u8]> = writes.iter().map(|write| write.body.as_ref()).collect();
        let sent = writes
            .iter()
            .fold(Written::default(), |sum, write| Written {
                samples: sum.samples + write.sent.samples,
                histograms: sum.histograms + write.sent.histograms,
                exemplars: sum.exemplars + write.sent.exemplars,
            });
        Ok(QueuedWrite {
            tenant_id: writes
                .first()
                .map(|write| write.tenant_id.clone())
                .unwrap_or_default(),
            protocol: WriteProtocol::V1,
            sent,
            body: Bytes::from(snappy::concat_blocks(&bodies)?),
        })
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
        let (tenant, rest) = rest.split_at(tenant_len);
        let Some((counts, body)) = rest.split_first_chunk::<COUNTS_BYTES>() else {
            return Err(EnvelopeError::Truncated(record.len()));
        };
        let count = |index: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&counts[index * 8..index * 8 + 8]);
            u64::from_le_bytes(bytes)
        };
        Ok(QueuedWrite {
            tenant_id: std::str::from_utf8(tenant)
                .map_err(|_| EnvelopeError::BadTenant)?
                .to_string(),
            protocol,
            sent: Written {
                samples: count(0),
                histograms: count(1),
                exemplars: count(2),
            },
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
        let mut bad_tenant = vec![1, 1, 1, 0, 0xff];
        bad_tenant.extend_from_slice(&[0; COUNTS_BYTES]);
        assert_eq!(
            QueuedWrite::decode(&bad_tenant),
            Err(EnvelopeError::BadTenant)
        );
        assert_eq!(
            QueuedWrite::decode(&[1, 1, 1, 0, b'a', 0, 0]),
            Err(EnvelopeError::Truncated(7)),
            "the counts are cut short"
        );
    }

    #[test]
    fn merged_writes_decode_to_every_series_and_metadata_in_order() {
        use crate::proto::{Label, MetricMetadata, Sample, TimeSeries, WriteRequest};
        use prost::Message;
        let write = |name: &str, with_metadata: bool| {
            let request = WriteRequest {
                timeseries: vec![TimeSeries {
                    labels: vec![Label {
                        name: "__name__".into(),
                        value: name.into(),
                    }],
                    samples: vec![Sample {
                        value: 1.0,
                        timestamp: 7,
                    }],
                    ..TimeSeries::default()
                }],
                metadata: with_metadata
                    .then(|| MetricMetadata {
                        metric_family_name: name.into(),
                        ..MetricMetadata::default()
                    })
                    .into_iter()
                    .collect(),
            };
            QueuedWrite {
                tenant_id: "alpha".into(),
                protocol: WriteProtocol::V1,
                sent: Written {
                    samples: 1,
                    ..Written::default()
                },
                body: Bytes::from(snappy::compress(&request.encode_to_vec())),
            }
        };
        let (a, b, c) = (write("a", true), write("b", false), write("c", true));
        let merged = QueuedWrite::merge_v1(&[&a, &b, &c]).expect("merge");
        let decoded = WriteRequest::decode(
            snappy::decompress_capped(&merged.body, 1 << 20)
                .expect("snappy")
                .as_slice(),
        )
        .expect("one WriteRequest");
        let names: Vec<&str> = decoded
            .timeseries
            .iter()
            .map(|series| series.labels[0].value.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let families: Vec<&str> = decoded
            .metadata
            .iter()
            .map(|metadata| metadata.metric_family_name.as_str())
            .collect();
        assert_eq!(families, ["a", "c"]);
        assert_eq!(merged.sent.samples, 3);
        assert_eq!(merged.tenant_id, "alpha");
    }

    proptest! {
        #[test]
        fn round_trips(
            tenant in "[a-zA-Z0-9_.-]{1,150}",
            v2 in any::<bool>(),
            counts in any::<(u64, u64, u64)>(),
            body in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let write = QueuedWrite {
                tenant_id: tenant,
                protocol: if v2 { WriteProtocol::V2 } else { WriteProtocol::V1 },
                sent: Written { samples: counts.0, histograms: counts.1, exemplars: counts.2 },
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
