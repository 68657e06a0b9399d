//! Client bytes into remote-read request decoding and validation; a request that
//! validates is scoped, and then every query carries the tenant matcher.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promgate::config::Limits;
use promgate::read::request;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(mut read_request) = request::decode(data, &limits) else { return };
    let Ok(response_type) = request::validate(&read_request, &limits) else { return };
    request::scope_to_tenant(&mut read_request, "tenant_id", "alpha", response_type);
    for query in &read_request.queries {
        let last = query.matchers.last().expect("the tenant matcher");
        assert!(last.r#type == 0 && last.name == "tenant_id" && last.value == "alpha");
    }
});
