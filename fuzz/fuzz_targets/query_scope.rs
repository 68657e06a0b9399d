//! A tenant's PromQL expressions and `match[]` selectors (DESIGN §13): scoping never
//! panics, and whatever it accepts parses again with the tenant matcher on every selector.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promgate::query::promql::{is_scoped, scope_expression, scope_selector, TenantScope};

const SCOPE: TenantScope<'static> = TenantScope {
    label: "tenant_id",
    value: "alpha",
    reject_conflicts: false,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scoped) = scope_expression(text, &SCOPE) {
        assert!(is_scoped(&scoped, &SCOPE), "{text:?} → {scoped:?}");
    }
    if let Ok(scoped) = scope_selector(text, &SCOPE) {
        assert!(is_scoped(&scoped, &SCOPE), "{text:?} → {scoped:?}");
    }
});
