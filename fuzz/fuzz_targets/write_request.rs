//! Client bytes into the write path: snappy with caps, decoding, validation and label
//! enforcement. Must never panic; what it accepts carries exactly the tenant's label,
//! byte-sorted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promgate::codec::snappy::decompress_capped;
use promgate::codec::write::{decode, validate_and_enforce, LabelPolicy};
use promgate::config::{ConflictPolicy, Limits};

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = decompress_capped(data, 1 << 20) else { return };
    let Ok(mut request) = decode(&decoded) else { return };
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    if validate_and_enforce(&mut request, &policy, &Limits::default(), 1_800_000_000_000).is_err() {
        return;
    }
    for series in &request.timeseries {
        assert!(series.labels.windows(2).all(|pair| pair[0].name < pair[1].name));
        let tenants: Vec<_> = series.labels.iter().filter(|l| l.name == "tenant_id").collect();
        assert!(tenants.len() == 1 && tenants[0].value == "alpha");
    }
});
