//! Holds the zero-copy write paths to their prost references: 1.0 ([`super::splice`]
//! to [`super::write`]) and 2.0 ([`super::splice_v2`] to [`super::rw2`]); shared by the
//! property tests and the `write_splice` and `write_v2` fuzz targets. Not used by the
//! relay.

use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;

use super::splice::rewrite;
use super::write::{decode, validate_and_enforce, LabelPolicy};
use super::CodecError;
use crate::config::Limits;
use crate::proto::WriteRequest;

/// Limits small enough that generated inputs cross each of them: label name and value
/// lengths, labels per series, series per request.
pub fn tight_limits() -> Limits {
    Limits {
        max_label_name_bytes: 12,
        max_label_value_bytes: 16,
        max_labels_per_series: 7,
        max_series_per_request: 5,
        ..Limits::default()
    }
}

/// Runs both paths on `decoded` and explains how they differ, if they do: one accepts
/// what the other refuses; they refuse for different reasons (or, for an invalid series,
/// in other words); what the fast path wrote does not decode to exactly the reference's
/// request (compared as prost's canonical bytes, so NaN payloads count bit for bit), or
/// its series prefix to that request without metadata; or it carries a field remote
/// write does not define.
pub fn same_answer(
    decoded: &[u8],
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
) -> Result<(), String> {
    let reference = decode(decoded).and_then(|mut request| {
        validate_and_enforce(&mut request, policy, limits, now_ms).map(|stats| (request, stats))
    });
    let mut out = vec![0xff; 3]; // stale bytes must be cleared
    let fast = rewrite(decoded, policy, limits, now_ms, &mut out);
    match (reference, fast) {
        (Ok((request, stats)), Ok(rewritten)) => {
            if rewritten.stats != stats {
                return Err(format!("stats {:?} != {stats:?}", rewritten.stats));
            }
            let written = WriteRequest::decode(out.as_slice())
                .map_err(|err| format!("fast output does not decode: {err}"))?;
            if written.encode_to_vec() != request.encode_to_vec() {
                return Err(format!("fast {written:?}\nreference {request:?}"));
            }
            only_known_fields(&out, "request")?;
            let series_only = WriteRequest::decode(&out[..rewritten.series_end])
                .map_err(|err| format!("series prefix does not decode: {err}"))?;
            let expected = WriteRequest {
                timeseries: request.timeseries,
                metadata: vec![],
            };
            if series_only.encode_to_vec() != expected.encode_to_vec() {
                return Err("series prefix differs".into());
            }
            Ok(())
        }
        (Err(reference), Err(fast)) => same_refusal(&reference, &fast),
        (reference, fast) => Err(format!(
            "paths disagree: reference {:?}, fast {:?}",
            reference.map(|(_, stats)| stats),
            fast.map(|rewritten| rewritten.stats)
        )),
    }
}

/// Both refused: for the same reason, and an invalid series in the same words.
fn same_refusal(reference: &CodecError, fast: &CodecError) -> Result<(), String> {
    let same = match reference {
        CodecError::Invalid(_) => fast == reference,
        _ => fast.reason() == reference.reason(),
    };
    if same {
        Ok(())
    } else {
        Err(format!(
            "fast refused with {fast:?}, reference with {reference:?}"
        ))
    }
}

/// [`same_answer`] for remote write 2.0: both paths accept or refuse alike (for the same
/// reason; an invalid series in the same words), with the same counts; the fast 2.0
/// form decodes to exactly the reference's request and carries no unknown field; the
/// fast 1.0 form is byte for byte what the reference converts to, with metadata and
/// (its prefix) without.
pub fn same_answer_v2(
    decoded: &[u8],
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
) -> Result<(), String> {
    use super::{rw2, splice_v2};
    use crate::proto::write_v2::Request;
    let reference = rw2::decode(decoded).and_then(|mut request| {
        rw2::validate_and_enforce(&mut request, policy, limits, now_ms)
            .map(|stats| (request, stats))
    });
    let forms = splice_v2::Forms { v2: true, v1: true };
    let fast = splice_v2::rewrite_v2(decoded, policy, limits, now_ms, forms);
    match (reference, fast) {
        (Ok((request, stats)), Ok(rewritten)) => {
            if rewritten.stats != stats {
                return Err(format!("stats {:?} != {stats:?}", rewritten.stats));
            }
            let v2_bytes = rewritten.v2.unwrap_or_default();
            let written = Request::decode(v2_bytes.as_slice())
                .map_err(|err| format!("fast 2.0 output does not decode: {err}"))?;
            if written.encode_to_vec() != request.encode_to_vec() {
                return Err(format!("fast {written:?}\nreference {request:?}"));
            }
            only_known_v2_fields(&v2_bytes, "request")?;
            let v1_bytes = rewritten.v1.unwrap_or_default();
            if v1_bytes != rw2::encode_v1(&request, true) {
                return Err("the 1.0 forms differ".into());
            }
            if v1_bytes[..rewritten.v1_series_end] != rw2::encode_v1(&request, false) {
                return Err("the 1.0 series-only forms differ".into());
            }
            Ok(())
        }
        (Err(reference), Err(fast)) => same_refusal(&reference, &fast),
        (reference, fast) => Err(format!(
            "paths disagree: reference {:?}, fast {:?}",
            reference.map(|(_, stats)| stats),
            fast.map(|rewritten| rewritten.stats)
        )),
    }
}

/// The HA decision the HA oracles use (DESIGN §15): a replica whose name ends in an
/// even byte is the elected one. Each call is recorded, so the paths must also ask about
/// the same series in the same order.
fn recorded_decide(
    asked: &mut Vec<(String, String, u64)>,
) -> impl FnMut(&[u8], &[u8], u64) -> bool + '_ {
    move |cluster: &[u8], replica: &[u8], samples: u64| {
        asked.push((
            String::from_utf8_lossy(cluster).into_owned(),
            String::from_utf8_lossy(replica).into_owned(),
            samples,
        ));
        replica.last().is_some_and(|byte| byte % 2 == 0)
    }
}

/// [`same_answer`] with HA pairs de-duplicated (`limits`' HA labels): the fast path's
/// [`super::splice::rewrite_gated`] against the reference validated, then
/// [`super::ha::apply`]: same answer, same output, same decisions asked.
pub fn same_answer_ha(
    decoded: &[u8],
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
) -> Result<(), String> {
    use super::ha::{apply, HaGate};
    let mut reference_asked = Vec::new();
    let reference = decode(decoded).and_then(|mut request| {
        let mut stats = validate_and_enforce(&mut request, policy, limits, now_ms)?;
        let mut decide = recorded_decide(&mut reference_asked);
        apply(
            &mut request.timeseries,
            limits,
            &mut HaGate {
                decide: &mut decide,
            },
            &mut stats,
        );
        Ok((request, stats))
    });
    let mut fast_asked = Vec::new();
    let mut out = Vec::new();
    let mut decide = recorded_decide(&mut fast_asked);
    let fast = super::splice::rewrite_gated(
        decoded,
        policy,
        limits,
        now_ms,
        &mut out,
        None,
        Some(HaGate {
            decide: &mut decide,
        }),
    );
    drop(decide);
    match (reference, fast) {
        (Ok((request, stats)), Ok(rewritten)) => {
            if rewritten.stats != stats {
                return Err(format!("stats {:?} != {stats:?}", rewritten.stats));
            }
            if fast_asked != reference_asked {
                return Err(format!(
                    "asked {fast_asked:?}, the reference asked {reference_asked:?}"
                ));
            }
            let written = WriteRequest::decode(out.as_slice())
                .map_err(|err| format!("fast output does not decode: {err}"))?;
            if written.encode_to_vec() != request.encode_to_vec() {
                return Err(format!("fast {written:?}\nreference {request:?}"));
            }
            let series_only = WriteRequest::decode(&out[..rewritten.series_end])
                .map_err(|err| format!("series prefix does not decode: {err}"))?;
            // Compared as prost's bytes, so NaN payloads count bit for bit.
            if series_only.encode_to_vec() != series_only_of(&request) {
                return Err("series prefix differs".into());
            }
            Ok(())
        }
        (Err(reference), Err(fast)) => same_refusal(&reference, &fast),
        (reference, fast) => Err(format!(
            "paths disagree: reference {:?}, fast {:?}",
            reference.map(|(_, stats)| stats),
            fast.map(|rewritten| rewritten.stats)
        )),
    }
}

/// The request's series alone, as prost writes them.
fn series_only_of(request: &WriteRequest) -> Vec<u8> {
    WriteRequest {
        timeseries: request.timeseries.clone(),
        metadata: vec![],
    }
    .encode_to_vec()
}

/// [`same_answer_v2`] with HA pairs de-duplicated: the fast path against the reference
/// validated, then de-duplicated on its 2.0 series (each series' label references
/// resolved, the replica label's pair taken out, the same decision asked): same counts,
/// same decisions asked, and the fast 2.0 and 1.0 forms decode to the reference's.
pub fn same_answer_v2_ha(
    decoded: &[u8],
    policy: &LabelPolicy,
    limits: &Limits,
    now_ms: i64,
) -> Result<(), String> {
    use super::ha::{ha_pair, HaGate};
    use super::{rw2, splice_v2};
    use crate::proto::write_v2::Request;
    let mut reference_asked = Vec::new();
    let reference = rw2::decode(decoded).and_then(|mut request| {
        let mut stats = rw2::validate_and_enforce(&mut request, policy, limits, now_ms)?;
        let mut decide = recorded_decide(&mut reference_asked);
        let symbols = request.symbols.clone();
        let text = |index: u32| symbols.get(index as usize).map_or("", String::as_str);
        request.timeseries.retain_mut(|series| {
            let pairs = series
                .labels_refs
                .chunks_exact(2)
                .map(|pair| (text(pair[0]), text(pair[1])));
            let Some((cluster, replica)) = ha_pair(limits, pairs) else {
                return true;
            };
            let refs: Vec<u32> = series
                .labels_refs
                .chunks_exact(2)
                .filter(|pair| text(pair[0]) != limits.ha_replica_label)
                .flatten()
                .copied()
                .collect();
            let samples = (series.samples.len() + series.histograms.len()) as u64;
            if decide(cluster.as_bytes(), replica.as_bytes(), samples) {
                series.labels_refs = refs;
                return true;
            }
            stats.series -= 1;
            stats.samples -= series.samples.len();
            stats.histograms -= series.histograms.len();
            stats.exemplars -= series.exemplars.len();
            false
        });
        Ok((request, stats))
    });
    let mut fast_asked = Vec::new();
    let mut decide = recorded_decide(&mut fast_asked);
    let forms = splice_v2::Forms { v2: true, v1: true };
    let fast = splice_v2::rewrite_v2_gated(
        decoded,
        policy,
        limits,
        now_ms,
        forms,
        Some(HaGate {
            decide: &mut decide,
        }),
        None,
    );
    drop(decide);
    let counts = |stats: &super::write::WriteStats| {
        (
            stats.series,
            stats.samples,
            stats.histograms,
            stats.exemplars,
        )
    };
    match (reference, fast) {
        (Ok((request, stats)), Ok(rewritten)) => {
            if counts(&rewritten.stats) != counts(&stats) {
                return Err(format!("stats {:?} != {stats:?}", rewritten.stats));
            }
            if fast_asked != reference_asked {
                return Err(format!(
                    "asked {fast_asked:?}, the reference asked {reference_asked:?}"
                ));
            }
            let v1 = rewritten.v1.unwrap_or_default();
            if v1[..rewritten.v1_series_end] != rw2::encode_v1(&request, false) {
                return Err("the 1.0 series-only forms differ".into());
            }
            let v2 = rewritten.v2.unwrap_or_default();
            let written = Request::decode(v2.as_slice())
                .map_err(|err| format!("fast 2.0 form does not decode: {err}"))?;
            // The symbol tables may differ (the fast path keeps the replica's symbols);
            // compare the series with their labels resolved.
            if written.timeseries.len() != request.timeseries.len() {
                return Err("the 2.0 form holds other series".into());
            }
            for (fast, reference) in written.timeseries.iter().zip(&request.timeseries) {
                let resolve = |symbols: &[String], refs: &[u32]| -> Vec<String> {
                    refs.iter()
                        .map(|index| symbols.get(*index as usize).cloned().unwrap_or_default())
                        .collect()
                };
                if resolve(&written.symbols, &fast.labels_refs)
                    != resolve(&request.symbols, &reference.labels_refs)
                {
                    return Err("a 2.0 series has other labels".into());
                }
            }
            Ok(())
        }
        (Err(reference), Err(fast)) => same_refusal(&reference, &fast),
        (reference, fast) => Err(format!(
            "paths disagree: reference {:?}, fast {:?}",
            reference.map(|(_, stats)| stats),
            fast.map(|rewritten| rewritten.stats)
        )),
    }
}

/// Each message's fields, and which hold a message (by the message's name).
type Fields = &'static [(u32, Option<&'static str>)];
type SchemaOf = fn(&str) -> Fields;

/// The fields each message of remote write 2.0 has, and which hold a message.
fn schema_v2(message: &str) -> Fields {
    match message {
        "request" => &[(4, None), (5, Some("series"))],
        "series" => &[
            (1, None),
            (2, Some("sample")),
            (3, Some("histogram")),
            (4, Some("exemplar")),
            (5, Some("metadata")),
        ],
        "sample" => &[(1, None), (2, None), (3, None)],
        "exemplar" => &[(1, None), (2, None), (3, None)],
        "metadata" => &[(1, None), (3, None), (4, None)],
        "span" => &[(1, None), (2, None)],
        _ => &[
            (1, None),
            (2, None),
            (3, None),
            (4, None),
            (5, None),
            (6, None),
            (7, None),
            (8, Some("span")),
            (9, None),
            (10, None),
            (11, Some("span")),
            (12, None),
            (13, None),
            (14, None),
            (15, None),
            (16, None),
            (17, None),
        ],
    }
}

fn only_known_v2_fields(bytes: &[u8], message: &str) -> Result<(), String> {
    only_known_fields_in(bytes, message, schema_v2)
}

/// The fields each message of remote write 1.0 has, and which hold a message.
fn schema(message: &str) -> Fields {
    match message {
        "request" => &[(1, Some("series")), (3, Some("metadata"))],
        "series" => &[
            (1, Some("label")),
            (2, Some("sample")),
            (3, Some("exemplar")),
            (4, Some("histogram")),
        ],
        "label" => &[(1, None), (2, None)],
        "sample" => &[(1, None), (2, None)],
        "exemplar" => &[(1, Some("label")), (2, None), (3, None)],
        "span" => &[(1, None), (2, None)],
        "metadata" => &[(1, None), (2, None), (4, None), (5, None)],
        _ => &[
            (1, None),
            (2, None),
            (3, None),
            (4, None),
            (5, None),
            (6, None),
            (7, None),
            (8, Some("span")),
            (9, None),
            (10, None),
            (11, Some("span")),
            (12, None),
            (13, None),
            (14, None),
            (15, None),
            (16, None),
        ],
    }
}

/// Fails when any message at any depth holds a field its schema does not know: what
/// the relay forwards must carry nothing a client smuggled in.
fn only_known_fields(bytes: &[u8], message: &str) -> Result<(), String> {
    only_known_fields_in(bytes, message, schema)
}

fn only_known_fields_in(mut bytes: &[u8], message: &str, schema: SchemaOf) -> Result<(), String> {
    while !bytes.is_empty() {
        let (field, wire_type) = decode_key(&mut bytes).map_err(|err| err.to_string())?;
        let Some((_, inner)) = schema(message).iter().find(|(number, _)| *number == field) else {
            return Err(format!("{message} carries unknown field {field}"));
        };
        let skip = match wire_type {
            WireType::Varint => {
                decode_varint(&mut bytes).map_err(|err| err.to_string())?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::LengthDelimited => {
                decode_varint(&mut bytes).map_err(|err| err.to_string())? as usize
            }
            other => return Err(format!("{message} field {field} has wire type {other:?}")),
        };
        let (value, rest) = bytes.split_at(skip);
        if let Some(inner) = inner {
            only_known_fields_in(value, inner, schema)?;
        }
        bytes = rest;
    }
    Ok(())
}
