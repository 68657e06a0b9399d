//! Client bytes into OTLP: gzip caps (when the first byte says so), protobuf decoding,
//! translation to remote-write series under the request caps, and the tenant's label
//! enforcement. Never panics; what is accepted stays within the caps, every series
//! carries exactly one tenant label with the tenant's value, and each data point is
//! counted once, accepted or rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promgate::codec::otlp::{self, Caps};
use promgate::codec::write::LabelPolicy;
use promgate::config::{ConflictPolicy, Limits, OtlpConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let decoded;
    let body = if mode & 1 == 1 {
        let Ok(claimed) = otlp::gzip_claimed_len(body, 1 << 20) else {
            return;
        };
        let Ok(inflated) = otlp::gunzip(body, claimed) else {
            return;
        };
        assert!(inflated.len() as u64 <= claimed);
        decoded = inflated;
        &decoded[..]
    } else {
        body
    };
    let Ok(request) = otlp::decode(body) else {
        return;
    };
    let limits = Limits {
        max_series_per_request: 2_000,
        ..Limits::default()
    };
    let caps = Caps {
        max_series: limits.max_series_per_request,
        max_label_bytes: 1 << 20,
    };
    let Ok(translated) = otlp::translate(&request, &OtlpConfig::default(), caps) else {
        return;
    };
    let points = translated.accepted_points() + translated.rejected_points();
    let policy = LabelPolicy::new(
        "tenant_id",
        "alpha",
        [],
        if mode & 2 == 2 {
            ConflictPolicy::Reject
        } else {
            ConflictPolicy::Override
        },
    );
    let Ok(enforced) = otlp::enforce(translated, &policy, &limits, 1_800_000_000_000) else {
        return;
    };
    assert_eq!(enforced.accepted_points + enforced.rejected_points, points);
    assert!(enforced.request.timeseries.len() <= caps.max_series + 64);
    for series in &enforced.request.timeseries {
        let tenants: Vec<&str> = series
            .labels
            .iter()
            .filter(|label| label.name == "tenant_id")
            .map(|label| label.value.as_str())
            .collect();
        assert_eq!(tenants, ["alpha"]);
    }
});
