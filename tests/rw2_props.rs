//! Property tests of remote write 2.0 enforcement against the 1.0 reference: for any
//! request, a 2.0 request that carries the same series (with any symbol order, duplicate
//! symbols and shuffled label order) is accepted exactly when the 1.0 one is, refused
//! with the same words, and, converted back to 1.0, holds exactly the labels, samples
//! (bit for bit) the 1.0 path produced. The symbol table keeps `""` first.

use promgate::codec::{rw2, write};
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::write_v2 as v2;
use promgate::proto::{Label, Sample, TimeSeries, WriteRequest};
use proptest::prelude::*;

const NOW: i64 = 1_800_000_000_000;

fn label_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("__name__".to_string()),
        Just("tenant_id".to_string()),
        Just("env".to_string()),
        Just("job".to_string()),
        Just(String::new()),
        "[a-z_]{1,6}",
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("alpha".to_string()),
        Just("prod".to_string()),
        "[a-z0-9]{1,5}"
    ]
}

fn sample() -> impl Strategy<Value = Sample> {
    let value = prop_oneof![
        any::<f64>(),
        Just(f64::from_bits(0x7ff0_0000_0000_0002)),
        Just(-0.0),
    ];
    let timestamp = prop_oneof![0..NOW, Just(NOW + 3_600_000)];
    (value, timestamp).prop_map(|(value, timestamp)| Sample { value, timestamp })
}

fn series() -> impl Strategy<Value = TimeSeries> {
    (
        prop::collection::vec((label_name(), label_value()), 0..7),
        prop::collection::vec(sample(), 0..3),
    )
        .prop_map(|(labels, samples)| TimeSeries {
            labels: labels
                .into_iter()
                .map(|(name, value)| Label { name, value })
                .collect(),
            samples,
            ..TimeSeries::default()
        })
}

/// The same series as 2.0: symbols interned in an order set by `seed`, sometimes with a
/// duplicate symbol, label pairs in their 1.0 order.
fn to_v2(request: &WriteRequest, seed: u64) -> v2::Request {
    let mut symbols = vec![String::new()];
    let mut intern = |text: &str, nth: usize| -> u32 {
        let duplicate = (seed >> (nth % 60)) & 1 == 1;
        match symbols.iter().position(|symbol| symbol == text) {
            Some(index) if !duplicate => index as u32,
            _ => {
                symbols.push(text.to_string());
                (symbols.len() - 1) as u32
            }
        }
    };
    let mut nth = 0;
    let timeseries = request
        .timeseries
        .iter()
        .map(|series| v2::TimeSeries {
            labels_refs: series
                .labels
                .iter()
                .flat_map(|label| {
                    nth += 2;
                    [intern(&label.name, nth), intern(&label.value, nth + 1)]
                })
                .collect(),
            samples: series
                .samples
                .iter()
                .map(|sample| v2::Sample {
                    value: sample.value,
                    timestamp: sample.timestamp,
                    start_timestamp: 0,
                })
                .collect(),
            ..v2::TimeSeries::default()
        })
        .collect();
    v2::Request {
        symbols,
        timeseries,
    }
}

/// A series' labels and its samples as (value bits, timestamp).
type SeriesBits = (Vec<Label>, Vec<(u64, i64)>);

fn bits(request: &WriteRequest) -> Vec<SeriesBits> {
    request
        .timeseries
        .iter()
        .map(|series| {
            (
                series.labels.clone(),
                series
                    .samples
                    .iter()
                    .map(|sample| (sample.value.to_bits(), sample.timestamp))
                    .collect(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn v2_enforcement_agrees_with_v1(
        timeseries in prop::collection::vec(series(), 1..5),
        seed in any::<u64>(),
        reject in any::<bool>(),
    ) {
        let on_conflict = if reject { ConflictPolicy::Reject } else { ConflictPolicy::Override };
        let policy = write::LabelPolicy::new(
            "tenant_id",
            "alpha",
            [("env".to_string(), "prod".to_string())],
            on_conflict,
        );
        let limits = Limits::default();
        let mut reference = WriteRequest { timeseries, metadata: vec![] };
        let mut second = to_v2(&reference, seed);
        let first = write::validate_and_enforce(&mut reference, &policy, &limits, NOW);
        let other = rw2::validate_and_enforce(&mut second, &policy, &limits, NOW);
        match (first, other) {
            (Ok(first), Ok(other)) => {
                prop_assert_eq!(first.samples, other.samples);
                prop_assert_eq!(first.series, other.series);
                prop_assert_eq!(&second.symbols[0], "");
                prop_assert_eq!(bits(&reference), bits(&rw2::to_v1(&second, false)));
                prop_assert_eq!(
                    rw2::encode_v1(&second, true),
                    prost::Message::encode_to_vec(&rw2::to_v1(&second, true))
                );
            }
            (Err(first), Err(other)) => prop_assert_eq!(first, other),
            (first, other) => prop_assert!(false, "v1 {:?} but v2 {:?}", first, other),
        }
    }
}
