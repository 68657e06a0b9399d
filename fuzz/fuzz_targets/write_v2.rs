//! Client bytes into remote write 2.0 decoding, validation and symbol-table enforcement:
//! an accepted request keeps `""` first, every label reference in range and in pairs,
//! exactly one tenant label per series, and converts to 1.0 without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promgate::codec::{rw2, write::LabelPolicy};
use promgate::config::{ConflictPolicy, Limits};

fuzz_target!(|data: &[u8]| {
    let Ok(mut request) = rw2::decode(data) else { return };
    let policy = LabelPolicy::new("tenant_id", "alpha", [], ConflictPolicy::Override);
    if rw2::validate_and_enforce(&mut request, &policy, &Limits::default(), 1_800_000_000_000)
        .is_err()
    {
        return;
    }
    if request.timeseries.is_empty() {
        return;
    }
    assert_eq!(request.symbols[0], "");
    for series in &request.timeseries {
        assert_eq!(series.labels_refs.len() % 2, 0);
        assert!(series
            .labels_refs
            .iter()
            .all(|&reference| (reference as usize) < request.symbols.len()));
        let tenants = series
            .labels_refs
            .chunks_exact(2)
            .filter(|pair| request.symbols[pair[0] as usize] == "tenant_id")
            .count();
        assert_eq!(tenants, 1);
    }
    let converted = rw2::to_v1(&request, true);
    assert_eq!(converted.timeseries.len(), request.timeseries.len());
});
