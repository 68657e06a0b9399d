//! Decoding, validating and scoping a remote-read request (DESIGN §7 steps 2–3;
//! PROTOCOL.md §4.5). Every query gets `tenant_id="<label_value>"` appended, always,
//! whatever matchers the caller sent on that label: matchers are ANDed, so the result
//! can only narrow to the caller's tenant.

use prost::Message;

use super::ReadError;
use crate::codec::snappy;
use crate::config::Limits;
use crate::proto::{label_matcher, read_request, LabelMatcher, ReadRequest};
use crate::query::guard::check_regex;

/// A matcher value longer than this is refused (SECURITY.md §4: 4 KiB per matcher).
pub const MAX_MATCHER_VALUE_BYTES: usize = 4096;
/// Queries one request may carry.
pub const MAX_QUERIES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseType {
    Samples,
    StreamedXorChunks,
}

impl ResponseType {
    fn wire_value(self) -> i32 {
        match self {
            ResponseType::Samples => read_request::ResponseType::Samples as i32,
            ResponseType::StreamedXorChunks => read_request::ResponseType::StreamedXorChunks as i32,
        }
    }
}

/// Decompresses (under `max_read_request_bytes`) and decodes a `ReadRequest`.
pub fn decode(body: &[u8], limits: &Limits) -> Result<ReadRequest, ReadError> {
    let decoded = snappy::decompress_capped(body, limits.max_read_request_bytes)?;
    ReadRequest::decode(decoded.as_slice())
        .map_err(|err| ReadError::Invalid(format!("protobuf: {err}")))
}

/// Checks every query and picks the response type from the client's preference order.
pub fn validate(request: &ReadRequest, limits: &Limits) -> Result<ResponseType, ReadError> {
    if request.queries.is_empty() {
        return Err(ReadError::Invalid("read request has no queries".into()));
    }
    if request.queries.len() > MAX_QUERIES {
        return Err(ReadError::Invalid(format!(
            "read request has {} queries, over the limit of {MAX_QUERIES}",
            request.queries.len()
        )));
    }
    let max_range = i64::try_from(limits.max_read_range.as_millis()).unwrap_or(i64::MAX);
    // The request's regex budget: every regex matcher of every query counts.
    let regex_bytes: u64 = request
        .queries
        .iter()
        .flat_map(|query| &query.matchers)
        .filter(|matcher| is_regex(matcher.r#type))
        .map(|matcher| matcher.value.len() as u64)
        .sum();
    if regex_bytes > limits.max_read_regex_bytes {
        return Err(ReadError::Invalid(format!(
            "read request carries {regex_bytes} bytes of regex matchers, over the limit of {}",
            limits.max_read_regex_bytes
        )));
    }
    for (index, query) in request.queries.iter().enumerate() {
        if query.end_timestamp_ms < query.start_timestamp_ms {
            return Err(ReadError::Invalid(format!(
                "query {index}: end is before start"
            )));
        }
        if query
            .end_timestamp_ms
            .saturating_sub(query.start_timestamp_ms)
            > max_range
        {
            return Err(ReadError::Invalid(format!(
                "query {index}: time range is longer than {}",
                humantime::format_duration(limits.max_read_range)
            )));
        }
        for matcher in &query.matchers {
            validate_matcher(matcher)
                .map_err(|why| ReadError::Invalid(format!("query {index}: {why}")))?;
        }
    }
    negotiate(&request.accepted_response_types)
}

fn validate_matcher(matcher: &LabelMatcher) -> Result<(), String> {
    // The raw number: prost's typed getter would turn an unknown type into EQ.
    let kind = label_matcher::Type::try_from(matcher.r#type).map_err(|_| {
        format!(
            "matcher type {} is not one of EQ, NEQ, RE, NRE",
            matcher.r#type
        )
    })?;
    if matcher.name.is_empty() {
        return Err("matcher has an empty label name".into());
    }
    if matcher.value.len() > MAX_MATCHER_VALUE_BYTES {
        return Err(format!(
            "matcher on {:?} is longer than {MAX_MATCHER_VALUE_BYTES} bytes",
            matcher.name
        ));
    }
    if matches!(kind, label_matcher::Type::Re | label_matcher::Type::Nre) {
        check_regex(&matcher.value)
            .map(|_matches_empty| ())
            .map_err(|why| format!("regex matcher on {:?} {why}", matcher.name))?;
    }
    Ok(())
}

fn is_regex(kind: i32) -> bool {
    kind == label_matcher::Type::Re as i32 || kind == label_matcher::Type::Nre as i32
}

/// An empty list means SAMPLES (Prometheus ≤ 2.54); otherwise the first type promgate
/// speaks; unknown values are skipped; none left → 400.
fn negotiate(accepted: &[i32]) -> Result<ResponseType, ReadError> {
    if accepted.is_empty() {
        return Ok(ResponseType::Samples);
    }
    accepted
        .iter()
        .find_map(|&value| match read_request::ResponseType::try_from(value) {
            Ok(read_request::ResponseType::Samples) => Some(ResponseType::Samples),
            Ok(read_request::ResponseType::StreamedXorChunks) => {
                Some(ResponseType::StreamedXorChunks)
            }
            Err(_) => None,
        })
        .ok_or_else(|| {
            ReadError::Invalid(format!(
                "none of the accepted response types {accepted:?} is supported"
            ))
        })
}

/// Appends the tenant matcher to every query and asks the backend for exactly the
/// negotiated response type.
pub fn scope_to_tenant(
    request: &mut ReadRequest,
    label: &str,
    value: &str,
    response_type: ResponseType,
) {
    for query in &mut request.queries {
        query.matchers.push(LabelMatcher {
            r#type: label_matcher::Type::Eq as i32,
            name: label.to_string(),
            value: value.to_string(),
        });
    }
    request.accepted_response_types = vec![response_type.wire_value()];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Query;

    fn matcher(kind: i32, name: &str, value: &str) -> LabelMatcher {
        LabelMatcher {
            r#type: kind,
            name: name.into(),
            value: value.into(),
        }
    }

    fn request(matchers: Vec<LabelMatcher>, accepted: Vec<i32>) -> ReadRequest {
        ReadRequest {
            queries: vec![Query {
                start_timestamp_ms: 0,
                end_timestamp_ms: 3_600_000,
                matchers,
                hints: None,
            }],
            accepted_response_types: accepted,
        }
    }

    #[test]
    fn matcher_types_are_checked_on_the_raw_number() {
        let limits = Limits::default();
        for kind in 0..=3 {
            assert!(validate(&request(vec![matcher(kind, "job", "x")], vec![]), &limits).is_ok());
        }
        for kind in [4, 7, -1] {
            let err = validate(&request(vec![matcher(kind, "job", "x")], vec![]), &limits)
                .expect_err("bad type");
            assert!(err.to_string().contains("matcher type"), "{err}");
        }
    }

    #[test]
    fn regexes_must_compile_and_stay_small() {
        let limits = Limits::default();
        assert!(validate(&request(vec![matcher(2, "job", "a|b.*")], vec![]), &limits).is_ok());
        assert!(validate(
            &request(vec![matcher(2, "job", "(unclosed")], vec![]),
            &limits
        )
        .is_err());
        let huge = "a".repeat(MAX_MATCHER_VALUE_BYTES + 1);
        assert!(validate(&request(vec![matcher(0, "job", &huge)], vec![]), &limits).is_err());
        let explosive = "((a{100}){100}){100}";
        assert!(validate(
            &request(vec![matcher(2, "job", explosive)], vec![]),
            &limits
        )
        .is_err());
        let deep = format!("{}a{}", "(".repeat(200), ")".repeat(200));
        assert!(validate(&request(vec![matcher(3, "job", &deep)], vec![]), &limits).is_err());
        let alternation = (0..300)
            .map(|i| format!("host-{i}"))
            .collect::<Vec<_>>()
            .join("|");
        assert!(
            validate(
                &request(vec![matcher(2, "instance", &alternation)], vec![]),
                &limits
            )
            .is_ok(),
            "a dashboard variable's alternation is fine"
        );
    }

    #[test]
    fn the_regex_budget_counts_every_matcher_of_every_query() {
        let limits = Limits {
            max_read_regex_bytes: 10_000,
            ..Limits::default()
        };
        let pattern = "x".repeat(3000);
        let mut within = request(
            vec![matcher(2, "a", &pattern), matcher(3, "b", &pattern)],
            vec![],
        );
        within.queries.push(within.queries[0].clone());
        assert!(
            validate(&within, &limits).is_err(),
            "4 × 3000 bytes > 10 000"
        );
        within.queries.pop();
        assert!(validate(&within, &limits).is_ok());
        let equality = request(vec![matcher(0, "a", &pattern); 4], vec![]);
        assert!(
            validate(&equality, &limits).is_ok(),
            "only regex matchers count"
        );
    }

    #[test]
    fn time_ranges_are_bounded() {
        let limits = Limits::default();
        let mut backwards = request(vec![], vec![]);
        backwards.queries[0].start_timestamp_ms = 10;
        backwards.queries[0].end_timestamp_ms = 5;
        assert!(validate(&backwards, &limits).is_err());
        let mut long = request(vec![], vec![]);
        long.queries[0].end_timestamp_ms = 800 * 3_600_000;
        assert!(validate(&long, &limits).is_err());
    }

    #[test]
    fn response_type_negotiation() {
        let limits = Limits::default();
        let pick = |accepted| validate(&request(vec![], accepted), &limits);
        assert_eq!(pick(vec![]), Ok(ResponseType::Samples));
        assert_eq!(pick(vec![1, 0]), Ok(ResponseType::StreamedXorChunks));
        assert_eq!(pick(vec![5, 0]), Ok(ResponseType::Samples));
        assert!(pick(vec![5]).is_err());
    }

    #[test]
    fn the_tenant_matcher_is_appended_even_when_the_caller_names_the_label() {
        let mut scoped = request(vec![matcher(2, "tenant_id", ".*")], vec![1, 0]);
        scope_to_tenant(
            &mut scoped,
            "tenant_id",
            "alpha",
            ResponseType::StreamedXorChunks,
        );
        let matchers = &scoped.queries[0].matchers;
        assert_eq!(matchers.len(), 2);
        assert_eq!(matchers[1], matcher(0, "tenant_id", "alpha"));
        assert_eq!(scoped.accepted_response_types, vec![1]);
    }
}
