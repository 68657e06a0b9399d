//! The zero-copy remote write 2.0 path against the prost reference: for any input, both
//! accept or both refuse (for the same reason, and with the same words for an invalid
//! series), the fast 2.0 form decodes to exactly the reference's request and carries no
//! unknown field, and the fast 1.0 forms are byte for byte the reference's conversion
//! ([`promgate::codec::oracle::same_answer_v2`]). Inputs come from a test encoder that
//! varies what prost never writes but clients may send (field order, packed and unpacked
//! label references, repeated scalars and metadata, unknown fields and groups at every
//! depth, rc.3 created timestamps, references out of range or unpaired), then are
//! sometimes damaged byte by byte; pure random bytes besides.

mod common;

use common::protobuf_gen::{apply, damage, maybe_unknown, put_bytes, put_key, put_varint, Choices};
use promgate::codec::oracle::{same_answer_v2, same_answer_v2_ha, tight_limits};
use promgate::codec::write::LabelPolicy;
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::write_v2 as v2;
use proptest::prelude::*;
use prost::Message;

const NOW: i64 = 1_800_000_000_000;

fn with_unknown(message: &impl Message, choices: &mut Choices) -> Vec<u8> {
    let mut out = message.encode_to_vec();
    maybe_unknown(&mut out, choices);
    out
}

#[derive(Debug, Clone)]
struct Series {
    labels_refs: Vec<u32>,
    samples: Vec<v2::Sample>,
    histograms: Vec<v2::Histogram>,
    exemplars: Vec<v2::Exemplar>,
    metadata: Vec<v2::Metadata>,
    created: i64,
}

fn encode_series(series: &Series, choices: &mut Choices) -> Vec<u8> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    if !series.labels_refs.is_empty() {
        if choices.chance(4) {
            for &reference in &series.labels_refs {
                let mut field = Vec::new();
                put_key(&mut field, 1, 0);
                put_varint(&mut field, u64::from(reference));
                fields.push(field);
            }
        } else {
            let mut packed = Vec::new();
            for &reference in &series.labels_refs {
                put_varint(&mut packed, u64::from(reference));
            }
            let mut field = Vec::new();
            put_bytes(&mut field, 1, &packed);
            fields.push(field);
        }
    }
    for sample in &series.samples {
        let mut field = Vec::new();
        put_bytes(&mut field, 2, &with_unknown(sample, choices));
        fields.push(field);
    }
    for histogram in &series.histograms {
        let mut field = Vec::new();
        put_bytes(&mut field, 3, &with_unknown(histogram, choices));
        fields.push(field);
    }
    for exemplar in &series.exemplars {
        let mut field = Vec::new();
        put_bytes(&mut field, 4, &with_unknown(exemplar, choices));
        fields.push(field);
    }
    for metadata in &series.metadata {
        let mut field = Vec::new();
        put_bytes(&mut field, 5, &with_unknown(metadata, choices));
        fields.push(field);
    }
    if series.created != 0 {
        let mut field = Vec::new();
        put_key(&mut field, 6, 0);
        put_varint(&mut field, series.created as u64);
        fields.push(field);
    }
    // Labels stay first unless the encoder shuffles (clients may interleave fields).
    if choices.chance(3) {
        for index in (1..fields.len()).rev() {
            let other = (choices.next() % (index as u64 + 1)) as usize;
            fields.swap(index, other);
        }
    }
    let mut out: Vec<u8> = fields.concat();
    maybe_unknown(&mut out, choices);
    out
}

fn encode_request(symbols: &[String], series: &[Series], seed: u64) -> Vec<u8> {
    let mut choices = Choices(seed | 1);
    let mut out = Vec::new();
    let encoded: Vec<Vec<u8>> = series
        .iter()
        .map(|series| encode_series(series, &mut choices))
        .collect();
    // Symbols first, as senders write them, or interleaved with the series.
    let interleave = choices.chance(3);
    let mut symbols_iter = symbols.iter();
    for series in &encoded {
        if interleave {
            if let Some(symbol) = symbols_iter.next() {
                put_bytes(&mut out, 4, symbol.as_bytes());
            }
        } else {
            for symbol in symbols_iter.by_ref() {
                put_bytes(&mut out, 4, symbol.as_bytes());
            }
        }
        put_bytes(&mut out, 5, series);
        maybe_unknown(&mut out, &mut choices);
    }
    for symbol in symbols_iter {
        put_bytes(&mut out, 4, symbol.as_bytes());
    }
    out
}

fn label_name() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("tenant_id".to_string()),
        1 => Just("env".to_string()),
        2 => Just("job".to_string()),
        2 => Just("cluster".to_string()),
        2 => Just("__replica__".to_string()),
        2 => Just("instance".to_string()),
        1 => Just(String::new()),
        6 => "[a-z_]{1,6}",
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("alpha".to_string()),
        1 => Just("prod".to_string()),
        1 => Just(String::new()),
        6 => "[a-z0-9]{1,5}",
        1 => "[A-Za-z0-9 ]{10,20}",
    ]
}

/// Resolved labels: mostly a metric name and a few distinct names (sometimes not).
fn labels() -> impl Strategy<Value = Vec<(String, String)>> {
    (
        "[a-z_]{1,8}",
        prop::collection::vec((label_name(), label_value()), 0..5),
        any::<bool>(),
    )
        .prop_map(|(metric, extra, dedupe)| {
            let mut labels = vec![("__name__".to_string(), metric)];
            for (name, value) in extra {
                if !dedupe || labels.iter().all(|(seen, _)| *seen != name) {
                    labels.push((name, value));
                }
            }
            labels
        })
}

/// A symbol table (`""` first, equal symbols sometimes repeated) for the series' texts,
/// and each text's reference.
struct Table {
    symbols: Vec<String>,
    choices: Choices,
}

impl Table {
    fn intern(&mut self, text: &str) -> u32 {
        let duplicate = self.choices.chance(2);
        match self.symbols.iter().position(|symbol| symbol == text) {
            Some(index) if !duplicate => index as u32,
            _ => {
                self.symbols.push(text.to_string());
                (self.symbols.len() - 1) as u32
            }
        }
    }
}

/// An exemplar's labels, value and timestamp before its references are made.
type DrawnExemplar = (Vec<(String, String)>, f64, i64);

/// What a generated series holds before its references are made.
#[derive(Debug, Clone)]
struct Drawn {
    labels: Vec<(String, String)>,
    samples: Vec<v2::Sample>,
    histograms: Vec<v2::Histogram>,
    exemplars: Vec<DrawnExemplar>,
    metadata: Vec<(i32, String, String)>,
    created: i64,
}

/// The request's symbols and series, then (rarely) a broken reference or table.
fn build(drawn: &[Drawn], seed: u64, breakage: u8) -> (Vec<String>, Vec<Series>) {
    let mut table = Table {
        symbols: vec![String::new()],
        choices: Choices(seed | 1),
    };
    let mut series: Vec<Series> = drawn
        .iter()
        .map(|drawn| Series {
            labels_refs: drawn
                .labels
                .iter()
                .flat_map(|(name, value)| [table.intern(name), table.intern(value)])
                .collect(),
            samples: drawn.samples.clone(),
            histograms: drawn.histograms.clone(),
            exemplars: drawn
                .exemplars
                .iter()
                .map(|(labels, value, timestamp)| v2::Exemplar {
                    labels_refs: labels
                        .iter()
                        .flat_map(|(name, value)| [table.intern(name), table.intern(value)])
                        .collect(),
                    value: *value,
                    timestamp: *timestamp,
                })
                .collect(),
            metadata: drawn
                .metadata
                .iter()
                .map(|(kind, help, unit)| v2::Metadata {
                    r#type: *kind,
                    help_ref: table.intern(help),
                    unit_ref: table.intern(unit),
                })
                .collect(),
            created: drawn.created,
        })
        .collect();
    let mut symbols = table.symbols;
    let out_of_range = symbols.len() as u32 + 3;
    match (breakage, series.first_mut()) {
        (1, Some(first)) => first.labels_refs.push(1),
        (2, Some(first)) => first.labels_refs.extend([out_of_range, 1]),
        (3, Some(first)) => {
            if let Some(exemplar) = first.exemplars.first_mut() {
                exemplar.labels_refs.push(out_of_range);
            }
        }
        (4, Some(first)) => first.metadata.push(v2::Metadata {
            r#type: 1,
            help_ref: out_of_range,
            unit_ref: 0,
        }),
        (5, _) => symbols[0] = "x".to_string(),
        (6, _) => symbols.clear(),
        _ => {}
    }
    (symbols, series)
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0..NOW, 1 => Just(NOW + 3_600_000), 1 => Just(0)]
}

fn sample() -> impl Strategy<Value = v2::Sample> {
    let value = prop_oneof![
        any::<f64>(),
        Just(f64::from_bits(0x7ff0_0000_0000_0002)),
        Just(-0.0),
    ];
    (value, timestamp(), prop_oneof![Just(0i64), 0..NOW]).prop_map(
        |(value, timestamp, start_timestamp)| v2::Sample {
            value,
            timestamp,
            start_timestamp,
        },
    )
}

fn histogram() -> impl Strategy<Value = v2::Histogram> {
    (
        timestamp(),
        0u64..100,
        prop::collection::vec(-3i64..3, 0..4),
        prop_oneof![Just(0i64), 0..NOW],
    )
        .prop_map(|(timestamp, count, deltas, start_timestamp)| {
            // Mostly consistent (the count is what the buckets and the zero bucket hold),
            // sometimes not.
            let mut bucket = 0i64;
            let mut held = 1u64;
            for delta in &deltas {
                bucket += delta;
                held = held.wrapping_add(bucket as u64);
            }
            let count = if count % 4 == 0 { count } else { held };
            v2::Histogram {
                count: Some(v2::histogram::Count::CountInt(count)),
                sum: count as f64 * 1.5,
                schema: 1,
                zero_threshold: 0.001,
                zero_count: Some(v2::histogram::ZeroCount::ZeroCountInt(1)),
                positive_spans: vec![v2::BucketSpan {
                    offset: -1,
                    length: deltas.len() as u32,
                }],
                positive_deltas: deltas,
                timestamp,
                start_timestamp,
                ..v2::Histogram::default()
            }
        })
}

fn drawn() -> impl Strategy<Value = Drawn> {
    (
        labels(),
        prop::collection::vec(sample(), 0..3),
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(histogram(), 1..2)],
        prop::collection::vec(
            (
                prop::collection::vec((label_name(), label_value()), 0..3),
                any::<f64>(),
                timestamp(),
            ),
            0..2,
        ),
        prop::collection::vec((0i32..8, label_value(), label_value()), 0..3),
        prop_oneof![3 => Just(0i64), 1 => 1..NOW],
    )
        .prop_map(
            |(labels, samples, histograms, exemplars, metadata, created)| Drawn {
                labels,
                samples,
                histograms,
                exemplars,
                metadata,
                created,
            },
        )
}

fn policy() -> impl Strategy<Value = LabelPolicy> {
    (
        prop_oneof![Just(ConflictPolicy::Override), Just(ConflictPolicy::Reject)],
        prop_oneof![
            Just(vec![]),
            Just(vec![("env".to_string(), "prod".to_string())]),
            Just(vec![
                ("Zone".to_string(), "z1".to_string()),
                ("zz".to_string(), "alpha".to_string())
            ]),
        ],
    )
        .prop_map(|(on_conflict, extra)| LabelPolicy::new("tenant_id", "alpha", extra, on_conflict))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn fast_path_matches_reference(
        drawn in prop::collection::vec(drawn(), 0..6),
        seed in any::<u64>(),
        breakage in prop_oneof![6 => Just(0u8), 1 => 1u8..7],
        damage in damage(),
        policy in policy(),
    ) {
        let (symbols, series) = build(&drawn, seed, breakage);
        let bytes = apply(encode_request(&symbols, &series, seed), &damage);
        same_answer_v2(&bytes, &policy, &tight_limits(), NOW).map_err(TestCaseError::fail)?;
        same_answer_v2(&bytes, &policy, &Limits::default(), NOW).map_err(TestCaseError::fail)?;
        same_answer_v2_ha(&bytes, &policy, &tight_limits(), NOW).map_err(TestCaseError::fail)?;
        same_answer_v2_ha(&bytes, &policy, &Limits::default(), NOW).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn random_bytes_get_the_same_answer(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
        same_answer_v2(&bytes, &policy, &Limits::default(), NOW).map_err(TestCaseError::fail)?;
    }
}
