//! Golden tests on real Prometheus 2.42 bodies (tests/data): decode → enforce → encode
//! keeps every sample, timestamp and value bit-exact, adds exactly the tenant label,
//! and emits byte-sorted labels.

use std::path::Path;

use promgate::codec::snappy::decompress_capped;
use promgate::codec::write::{decode, encode_compressed, validate_and_enforce, LabelPolicy};
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::{Label, WriteRequest};
use prost::Message;

const LIMIT: u64 = 32 << 20;

fn fixtures(folder: &str) -> Vec<(String, Vec<u8>, usize)> {
    let dir = Path::new("tests/data").join(folder);
    let counts = std::fs::read_to_string(dir.join("counts.tsv")).unwrap_or_default();
    let mut bodies = Vec::new();
    for line in counts.lines() {
        let (count, name) = line.split_once('\t').expect("count<TAB>file");
        let body = std::fs::read(dir.join(name)).expect("fixture body");
        bodies.push((name.to_string(), body, count.parse().expect("count")));
    }
    assert!(!bodies.is_empty(), "no fixtures in {}", dir.display());
    bodies
}

fn decode_body(body: &[u8]) -> WriteRequest {
    decode(&decompress_capped(body, LIMIT).expect("snappy")).expect("protobuf")
}

fn round_trip(original: &WriteRequest) -> WriteRequest {
    let mut request = original.clone();
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    validate_and_enforce(&mut request, &policy, &Limits::default(), i64::MAX / 2)
        .expect("real traffic is valid");
    decode_body(&encode_compressed(&request))
}

fn expected_labels(input: &[Label]) -> Vec<Label> {
    let mut labels: Vec<Label> = input
        .iter()
        .filter(|label| !label.value.is_empty() && label.name != "tenant_id")
        .cloned()
        .collect();
    labels.push(Label {
        name: "tenant_id".into(),
        value: "alpha".into(),
    });
    labels.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    labels
}

#[test]
fn fixture_bodies_keep_every_sample_and_gain_only_the_tenant_label() {
    for folder in ["prom-2.42", "prom-2.42-mss500"] {
        for (name, body, expected_samples) in fixtures(folder) {
            let original = decode_body(&body);
            let output = round_trip(&original);
            let samples: usize = output
                .timeseries
                .iter()
                .map(|series| series.samples.len())
                .sum();
            assert_eq!(samples, expected_samples, "{folder}/{name}");
            assert_eq!(
                output.timeseries.len(),
                original.timeseries.len(),
                "{folder}/{name}"
            );
            for (before, after) in original.timeseries.iter().zip(&output.timeseries) {
                assert_eq!(
                    after.labels,
                    expected_labels(&before.labels),
                    "{folder}/{name}"
                );
                assert!(
                    after
                        .labels
                        .windows(2)
                        .all(|pair| pair[0].name < pair[1].name),
                    "sorted, unique"
                );
                assert_eq!(before.samples.len(), after.samples.len());
                for (a, b) in before.samples.iter().zip(&after.samples) {
                    assert_eq!(
                        a.value.to_bits(),
                        b.value.to_bits(),
                        "{folder}/{name}: value bits"
                    );
                    assert_eq!(a.timestamp, b.timestamp, "{folder}/{name}: timestamp");
                }
                assert_eq!(before.exemplars, after.exemplars);
                assert_eq!(before.histograms, after.histograms);
            }
        }
    }
}

#[test]
fn output_is_what_a_fresh_encoding_of_the_enforced_request_gives() {
    // Re-enforcing the output changes nothing: enforcement is idempotent on real data.
    let (_, body, _) = fixtures("prom-2.42").remove(0);
    let once = round_trip(&decode_body(&body));
    let twice = round_trip(&once);
    assert_eq!(
        once.encode_to_vec(),
        twice.encode_to_vec(),
        "compared as bytes: NaN bits included"
    );
}

#[test]
fn metadata_only_request_passes_through_unchanged() {
    let body = std::fs::read("tests/data/prom-2.42-metadata/body-000.bin").expect("fixture");
    let original = decode_body(&body);
    assert!(original.timeseries.is_empty());
    assert_eq!(original.metadata.len(), 449);
    assert_eq!(round_trip(&original).metadata, original.metadata);
}
