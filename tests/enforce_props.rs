//! Property tests of label enforcement (DESIGN §6 step 7): sorted output, exactly one
//! tenant label, idempotent, a client's tenant label never survives under `override`
//! and always fails under `reject`, samples bit-exact.

use promgate::codec::write::{validate_and_enforce, LabelPolicy};
use promgate::config::{ConflictPolicy, Limits};
use promgate::proto::{Label, Sample, TimeSeries, WriteRequest};
use proptest::prelude::*;
use prost::Message;

const NOW: i64 = 1_800_000_000_000;

fn label_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("__name__".to_string()),
        Just("tenant_id".to_string()),
        Just("Zone".to_string()),
        Just("job".to_string()),
        Just("instance".to_string()),
        "[a-z_]{1,6}",
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("alpha".to_string()),
        Just("beta".to_string()),
        "[a-z0-9]{1,5}"
    ]
}

fn sample() -> impl Strategy<Value = Sample> {
    let value = prop_oneof![
        any::<f64>(),
        Just(f64::from_bits(0x7ff0_0000_0000_0002)),
        Just(f64::from_bits(0x7ff8_0000_0000_0001)),
        Just(-0.0),
    ];
    (value, 0..NOW).prop_map(|(value, timestamp)| Sample { value, timestamp })
}

fn series() -> impl Strategy<Value = TimeSeries> {
    (
        prop::collection::vec((label_name(), label_value()), 0..8),
        prop::collection::vec(sample(), 0..4),
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

fn request() -> impl Strategy<Value = WriteRequest> {
    prop::collection::vec(series(), 1..5).prop_map(|timeseries| WriteRequest {
        timeseries,
        metadata: vec![],
    })
}

fn enforce(request: &mut WriteRequest, on_conflict: ConflictPolicy) -> bool {
    let policy = LabelPolicy::new("tenant_id", "alpha", [], on_conflict);
    validate_and_enforce(request, &policy, &Limits::default(), NOW).is_ok()
}

fn claims_other_tenant(series: &TimeSeries) -> bool {
    series
        .labels
        .iter()
        .any(|label| label.name == "tenant_id" && !label.value.is_empty() && label.value != "alpha")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn override_output_is_sorted_with_exactly_one_tenant_label(original in request()) {
        let mut request = original.clone();
        if enforce(&mut request, ConflictPolicy::Override) {
            for (before, after) in original.timeseries.iter().zip(&request.timeseries) {
                prop_assert!(after.labels.windows(2).all(|pair| pair[0].name.as_bytes() < pair[1].name.as_bytes()));
                let tenants: Vec<_> = after.labels.iter().filter(|l| l.name == "tenant_id").collect();
                prop_assert_eq!(tenants.len(), 1);
                prop_assert_eq!(&tenants[0].value, "alpha");
                for label in before.labels.iter().filter(|l| !l.value.is_empty() && l.name != "tenant_id") {
                    prop_assert!(after.labels.contains(label));
                }
                let bits = |s: &[Sample]| s.iter().map(|x| (x.value.to_bits(), x.timestamp)).collect::<Vec<_>>();
                prop_assert_eq!(bits(&before.samples), bits(&after.samples));
            }
        }
    }

    #[test]
    fn enforcement_is_idempotent(original in request()) {
        let mut once = original;
        if enforce(&mut once, ConflictPolicy::Override) {
            let mut twice = once.clone();
            prop_assert!(enforce(&mut twice, ConflictPolicy::Override));
            // Compared as encoded bytes: NaN != NaN, but their bits must match.
            prop_assert_eq!(once.encode_to_vec(), twice.encode_to_vec());
        }
    }

    #[test]
    fn reject_always_refuses_a_foreign_tenant_label(original in request()) {
        let mut request = original.clone();
        let accepted = enforce(&mut request, ConflictPolicy::Reject);
        if original.timeseries.iter().any(claims_other_tenant) {
            prop_assert!(!accepted);
        }
    }

    #[test]
    fn policies_agree_on_everything_but_foreign_tenant_labels(original in request()) {
        let mut by_override = original.clone();
        let mut by_reject = original.clone();
        let override_ok = enforce(&mut by_override, ConflictPolicy::Override);
        let reject_ok = enforce(&mut by_reject, ConflictPolicy::Reject);
        if !original.timeseries.iter().any(claims_other_tenant) {
            prop_assert_eq!(override_ok, reject_ok);
            if override_ok {
                prop_assert_eq!(by_override.encode_to_vec(), by_reject.encode_to_vec());
            }
        }
    }
}
