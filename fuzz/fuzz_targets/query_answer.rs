//! A query backend's answers (DESIGN §13): making them the tenant's never panics, and
//! what comes out holds no label set naming another tenant (the federate filter's
//! output passes it again unchanged).
#![no_main]

use libfuzzer_sys::fuzz_target;
use promgate::query::params::Api;
use promgate::query::response::{scope_federate, scope_json, ResponseScope};

fuzz_target!(|data: &[u8]| {
    let scope = ResponseScope {
        label: "tenant_id".into(),
        value: "alpha".into(),
        strip: false,
    };
    for api in [
        Api::Query,
        Api::Series,
        Api::QueryExemplars,
        Api::Labels,
        Api::LabelValues("tenant_id".into()),
    ] {
        if let Ok((body, _)) = scope_json(&api, data, &scope, None) {
            let text = String::from_utf8_lossy(&body);
            assert!(!text.contains(r#""tenant_id":"beta""#), "{text}");
        }
    }
    // What the federate filter keeps is kept again whole: only the tenant's lines.
    let (text, _) = scope_federate(&String::from_utf8_lossy(data), &scope);
    let (again, filtered) = scope_federate(&text, &scope);
    assert_eq!(again, text);
    assert_eq!(filtered.foreign_series, 0);
});
