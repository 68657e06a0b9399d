//! The zero-copy write path against the prost reference: for any input, both accept or
//! both refuse (for the same reason, and with the same words for an invalid series), and
//! what the fast path writes decodes to exactly what the reference produces, its series
//! prefix to the same request without metadata. Inputs are written by a test encoder that
//! varies what prost never writes but clients may send (field order, explicit empty
//! strings, repeated fields, unknown fields and groups at every depth, interleaved series
//! fields), then sometimes damaged byte by byte; and pure random bytes besides.

mod common;

use common::protobuf_gen::{apply, damage, maybe_unknown, put_bytes, put_key, put_varint, Choices};
use promgate::codec::oracle::{same_answer, same_answer_ha, tight_limits};
use promgate::codec::snappy::decompress_capped;
use promgate::codec::splice::rewrite;
use promgate::codec::write::{decode, validate_and_enforce, LabelPolicy};
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::{histogram, BucketSpan, Exemplar, Histogram, Label, MetricMetadata, Sample};
use proptest::prelude::*;
use prost::Message;

const NOW: i64 = 1_800_000_000_000;

fn encode_label(label: &Label, choices: &mut Choices) -> Vec<u8> {
    let mut out = Vec::new();
    if choices.chance(1) {
        // An earlier name or value that a later field overwrites.
        put_bytes(&mut out, 1 + choices.next() % 2, b"overwritten");
    }
    let fields = [(1, &label.name), (2, &label.value)];
    let order = if choices.chance(2) { [1, 0] } else { [0, 1] };
    for index in order {
        let (field, value) = fields[index];
        if !value.is_empty() || choices.chance(2) {
            put_bytes(&mut out, field, value.as_bytes());
        }
    }
    maybe_unknown(&mut out, choices);
    out
}

fn encode_message_with_unknown(message: &impl Message, choices: &mut Choices) -> Vec<u8> {
    let mut out = message.encode_to_vec();
    maybe_unknown(&mut out, choices);
    out
}

#[derive(Debug, Clone)]
struct SeriesParts {
    labels: Vec<Label>,
    samples: Vec<Sample>,
    exemplars: Vec<Exemplar>,
    histograms: Vec<Histogram>,
}

fn encode_series(series: &SeriesParts, choices: &mut Choices) -> Vec<u8> {
    let mut entries: Vec<Vec<u8>> = Vec::new();
    for label in &series.labels {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, &encode_label(label, choices));
        entries.push(entry);
    }
    for sample in &series.samples {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 2, &encode_message_with_unknown(sample, choices));
        entries.push(entry);
    }
    for exemplar in &series.exemplars {
        let mut payload = Vec::new();
        for label in &exemplar.labels {
            put_bytes(&mut payload, 1, &encode_label(label, choices));
        }
        let rest = Exemplar {
            labels: vec![],
            ..exemplar.clone()
        };
        payload.extend_from_slice(&rest.encode_to_vec());
        let mut entry = Vec::new();
        put_bytes(&mut entry, 3, &payload);
        entries.push(entry);
    }
    for histogram in &series.histograms {
        let mut entry = Vec::new();
        put_bytes(
            &mut entry,
            4,
            &encode_message_with_unknown(histogram, choices),
        );
        entries.push(entry);
    }
    if choices.chance(2) && entries.len() > 1 {
        // Interleave: move one entry to the front.
        let from = (choices.next() as usize) % entries.len();
        let entry = entries.remove(from);
        entries.insert(0, entry);
    }
    let mut out = entries.concat();
    maybe_unknown(&mut out, choices);
    out
}

fn encode_request(series: &[SeriesParts], metadata: &[MetricMetadata], seed: u64) -> Vec<u8> {
    let mut choices = Choices(seed | 1);
    let mut entries = Vec::new();
    for one in series {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, &encode_series(one, &mut choices));
        entries.push(entry);
    }
    for one in metadata {
        let mut entry = Vec::new();
        put_bytes(
            &mut entry,
            3,
            &encode_message_with_unknown(one, &mut choices),
        );
        entries.push(entry);
    }
    if choices.chance(4) && !entries.is_empty() {
        let at = (choices.next() as usize) % entries.len();
        let entry = entries.remove(at);
        entries.push(entry);
    }
    let mut out = Vec::new();
    for entry in entries {
        if choices.chance(2) {
            // Cortex/Mimir's source field, never to be forwarded.
            put_key(&mut out, 2, 0);
            put_varint(&mut out, 1);
        }
        out.extend_from_slice(&entry);
    }
    maybe_unknown(&mut out, &mut choices);
    out
}

fn label_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("__name__".to_string()),
        2 => Just("tenant_id".to_string()),
        1 => Just("env".to_string()),
        1 => Just("Zone".to_string()),
        2 => Just("job".to_string()),
        2 => Just("cluster".to_string()),
        2 => Just("__replica__".to_string()),
        2 => Just("instance".to_string()),
        1 => Just(String::new()),
        1 => Just("a_name_far_too_long".to_string()),
        4 => "[a-z_]{1,6}",
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        2 => Just("alpha".to_string()),
        1 => Just("beta".to_string()),
        1 => Just("prod".to_string()),
        1 => Just("zürich-ß".to_string()),
        1 => Just("a value that is far too long".to_string()),
        4 => "[a-z0-9]{1,5}",
    ]
}

fn labels() -> impl Strategy<Value = Vec<Label>> {
    prop::collection::vec((label_name(), label_value()), 0..7).prop_map(|pairs| {
        let mut labels: Vec<Label> = pairs
            .into_iter()
            .map(|(name, value)| Label { name, value })
            .collect();
        // Mostly sorted, as Prometheus sends them.
        if labels.len() % 3 != 0 {
            labels.sort_by(|a, b| a.name.cmp(&b.name));
        }
        labels
    })
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => (NOW - 1_000_000)..NOW,
        1 => (NOW + 3_600_000)..(NOW + 7_200_000),
        1 => Just(0i64),
        1 => Just(-1i64),
    ]
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::from_bits(0x7ff0_0000_0000_0002)),
        Just(0.0),
        Just(1.5),
    ]
}

fn sample() -> impl Strategy<Value = Sample> {
    (value(), timestamp()).prop_map(|(value, timestamp)| Sample { value, timestamp })
}

fn exemplar() -> impl Strategy<Value = Exemplar> {
    (labels(), value(), timestamp()).prop_map(|(labels, value, timestamp)| Exemplar {
        labels,
        value,
        timestamp,
    })
}

fn histogram() -> impl Strategy<Value = Histogram> {
    (
        any::<bool>(),
        any::<u32>(),
        -4i32..8,
        prop::collection::vec((-3i32..3, 0u32..4), 0..3),
        prop::collection::vec(-5i64..5, 0..4),
        prop::collection::vec(value(), 0..3),
        timestamp(),
    )
        .prop_map(
            |(integer, count, schema, spans, deltas, counts, timestamp)| Histogram {
                count: Some(if integer {
                    histogram::Count::CountInt(u64::from(count))
                } else {
                    histogram::Count::CountFloat(f64::from(count))
                }),
                sum: f64::from(count) / 2.0,
                schema,
                zero_threshold: 1e-128,
                zero_count: Some(histogram::ZeroCount::ZeroCountInt(1)),
                positive_spans: spans
                    .iter()
                    .map(|&(offset, length)| BucketSpan { offset, length })
                    .collect(),
                positive_deltas: deltas,
                negative_counts: counts,
                reset_hint: (count % 4) as i32,
                timestamp,
                ..Histogram::default()
            },
        )
}

fn series_parts() -> impl Strategy<Value = SeriesParts> {
    (
        labels(),
        prop::collection::vec(sample(), 0..3),
        prop::collection::vec(exemplar(), 0..2),
        prop::collection::vec(histogram(), 0..2),
    )
        .prop_map(|(labels, samples, exemplars, histograms)| SeriesParts {
            labels,
            samples,
            exemplars,
            histograms,
        })
}

/// A series of an HA pair: `__name__`, `cluster` and `__replica__` with short ASCII values
/// (the oracle elects a replica whose name ends in an even byte: "b" and "r2", not "a"),
/// a few other labels, mostly sorted as Prometheus sends them.
fn ha_series() -> impl Strategy<Value = SeriesParts> {
    (
        "[a-z_]{1,6}",
        prop_oneof![Just("c1"), Just("c2")],
        prop_oneof![Just("a"), Just("b"), Just("r2")],
        prop::collection::vec((label_name(), label_value()), 0..3),
        prop::collection::vec(sample(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(metric, cluster, replica, extra, samples, sorted)| {
            let mut labels = vec![
                Label {
                    name: "__name__".into(),
                    value: metric,
                },
                Label {
                    name: "cluster".into(),
                    value: cluster.into(),
                },
                Label {
                    name: "__replica__".into(),
                    value: replica.into(),
                },
            ];
            labels.extend(extra.into_iter().map(|(name, value)| Label { name, value }));
            if sorted {
                labels.sort_by(|a, b| a.name.cmp(&b.name));
            }
            SeriesParts {
                labels,
                samples,
                exemplars: vec![],
                histograms: vec![],
            }
        })
}

fn metadata() -> impl Strategy<Value = MetricMetadata> {
    ("[a-z_]{0,8}", "[ -~]{0,12}", 0i32..9).prop_map(|(family, help, kind)| MetricMetadata {
        r#type: kind,
        metric_family_name: family,
        help,
        unit: String::new(),
    })
}

fn policy() -> impl Strategy<Value = LabelPolicy> {
    (
        prop_oneof![Just(ConflictPolicy::Override), Just(ConflictPolicy::Reject)],
        prop_oneof![
            Just(vec![]),
            Just(vec![("env".to_string(), "prod".to_string())]),
            Just(vec![
                ("Zone".to_string(), "z1".to_string()),
                ("zz".to_string(), "last".to_string())
            ]),
        ],
    )
        .prop_map(|(on_conflict, extra)| LabelPolicy::new("tenant_id", "alpha", extra, on_conflict))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn fast_path_matches_reference(
        series in prop::collection::vec(series_parts(), 0..7),
        metadata in prop::collection::vec(metadata(), 0..3),
        seed in any::<u64>(),
        damage in damage(),
        policy in policy(),
    ) {
        let bytes = apply(encode_request(&series, &metadata, seed), &damage);
        same_answer(&bytes, &policy, &tight_limits(), NOW).map_err(TestCaseError::fail)?;
        same_answer(&bytes, &policy, &Limits::default(), NOW).map_err(TestCaseError::fail)?;
        same_answer_ha(&bytes, &policy, &tight_limits(), NOW).map_err(TestCaseError::fail)?;
        same_answer_ha(&bytes, &policy, &Limits::default(), NOW).map_err(TestCaseError::fail)?;
    }

    /// HA pairs de-duplicated (DESIGN §15) on requests where most series carry both HA
    /// labels: the replica label cut out of spliced and re-encoded series alike, the same
    /// series left out, the same decisions asked.
    #[test]
    fn ha_pairs_match_reference(
        series in prop::collection::vec(prop_oneof![3 => ha_series(), 1 => series_parts()], 0..7),
        seed in any::<u64>(),
        policy in policy(),
    ) {
        let bytes = encode_request(&series, &[], seed);
        same_answer_ha(&bytes, &policy, &tight_limits(), NOW).map_err(TestCaseError::fail)?;
        same_answer_ha(&bytes, &policy, &Limits::default(), NOW).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn random_bytes_get_the_same_answer(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
        same_answer(&bytes, &policy, &Limits::default(), NOW).map_err(TestCaseError::fail)?;
    }
}

fn fixture_bodies() -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for dir in ["prom-2.42", "prom-2.42-metadata", "prom-2.42-mss500"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(dir);
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixture dir")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
            .collect();
        paths.sort();
        for path in paths {
            let body = std::fs::read(&path).expect("body");
            bodies.push(decompress_capped(&body, 64 << 20).expect("snappy"));
        }
    }
    bodies
}

/// On what Prometheus really sends, the fast path writes the very bytes prost would.
#[test]
fn captured_prometheus_bodies_come_out_byte_identical() {
    let bodies = fixture_bodies();
    assert!(bodies.len() >= 40, "{} bodies", bodies.len());
    for extra in [vec![], vec![("env".to_string(), "prod".to_string())]] {
        let policy = LabelPolicy::new("tenant_id", "alpha", extra, ConflictPolicy::Override);
        let limits = Limits::default();
        for decoded in &bodies {
            let mut request = decode(decoded).expect("reference decodes");
            let stats = validate_and_enforce(&mut request, &policy, &limits, NOW).expect("valid");
            let mut out = Vec::new();
            let rewritten = rewrite(decoded, &policy, &limits, NOW, &mut out).expect("fast");
            assert_eq!(rewritten.stats, stats);
            assert!(out == request.encode_to_vec(), "bytes differ");
        }
    }
}
