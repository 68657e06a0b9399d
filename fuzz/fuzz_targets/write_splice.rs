//! The zero-copy write paths against their prost references on arbitrary decoded bytes
//! (no snappy, so the fuzzer works on protobuf structure directly), the bytes read both
//! as a remote write 1.0 and as a 2.0 request: each pair must accept or refuse alike, and
//! what a fast path writes must decode to exactly its reference's request (and, for 2.0,
//! convert to 1.0 byte for byte alike). The first byte picks the policy, the limits and
//! whether HA pairs are de-duplicated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promgate::codec::oracle::{
    same_answer, same_answer_ha, same_answer_v2, same_answer_v2_ha, tight_limits,
};
use promgate::codec::write::LabelPolicy;
use promgate::config::{ConflictPolicy, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, decoded)) = data.split_first() else { return };
    let on_conflict = if choice & 1 == 0 { ConflictPolicy::Override } else { ConflictPolicy::Reject };
    let extra = match (choice >> 1) & 3 {
        0 => vec![],
        1 => vec![("env".to_string(), "prod".to_string())],
        _ => vec![("Zone".to_string(), "z".to_string()), ("zz".to_string(), "y".to_string())],
    };
    let policy = LabelPolicy::new("tenant_id", "alpha", extra, on_conflict);
    let limits = if choice & 8 == 0 { Limits::default() } else { tight_limits() };
    if let Err(difference) = same_answer(decoded, &policy, &limits, 1_800_000_000_000) {
        panic!("1.0: {difference}");
    }
    if let Err(difference) = same_answer_v2(decoded, &policy, &limits, 1_800_000_000_000) {
        panic!("2.0: {difference}");
    }
    // HA pairs de-duplicated (DESIGN §15) when the fourth bit is set.
    if choice & 16 != 0 {
        if let Err(difference) = same_answer_ha(decoded, &policy, &limits, 1_800_000_000_000) {
            panic!("1.0 with HA: {difference}");
        }
        if let Err(difference) = same_answer_v2_ha(decoded, &policy, &limits, 1_800_000_000_000) {
            panic!("2.0 with HA: {difference}");
        }
    }
});
