//! The parameters of the Prometheus query API (DESIGN §13): read from the URL and from a
//! form body alike (Grafana POSTs by default), each endpoint's known parameters only, and
//! scoped before anything is forwarded. A parameter given both in the URL and in the body
//! is refused (a proxy and a backend may each read the other copy), as is a single-valued
//! parameter given twice; unknown parameters are dropped. The backend receives a request
//! promgate wrote itself from the scoped values, never the client's text.

use std::collections::HashSet;
use std::time::Duration;

use super::promql::{scope_expression, scope_selector, tenant_selector, ScopeError, TenantScope};

/// The query API endpoints promgate serves (DESIGN §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Api {
    Query,
    QueryRange,
    QueryExemplars,
    Series,
    Labels,
    /// `label/<name>/values`, the name checked.
    LabelValues(String),
    Metadata,
    Federate,
    BuildInfo,
}

/// What promgate does with one parameter of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A PromQL expression: scoped.
    Expression,
    /// Repeated series selectors (`match[]`): each scoped; none → the tenant's selector.
    Selectors,
    /// The evaluation timeout: capped at the tenant's `query_timeout`.
    Timeout,
    /// Forwarded as given (times, steps, limits, flags): nothing in them selects data.
    Plain,
}

impl Api {
    /// The backend path under `query_url`.
    pub fn backend_path(&self) -> String {
        match self {
            Api::Query => "api/v1/query".into(),
            Api::QueryRange => "api/v1/query_range".into(),
            Api::QueryExemplars => "api/v1/query_exemplars".into(),
            Api::Series => "api/v1/series".into(),
            Api::Labels => "api/v1/labels".into(),
            Api::LabelValues(name) => format!("api/v1/label/{name}/values"),
            Api::Metadata => "api/v1/metadata".into(),
            Api::Federate => "federate".into(),
            Api::BuildInfo => "api/v1/status/buildinfo".into(),
        }
    }

    /// A short, fixed name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Api::Query => "query",
            Api::QueryRange => "query_range",
            Api::QueryExemplars => "query_exemplars",
            Api::Series => "series",
            Api::Labels => "labels",
            Api::LabelValues(_) => "label_values",
            Api::Metadata => "metadata",
            Api::Federate => "federate",
            Api::BuildInfo => "buildinfo",
        }
    }

    /// Whether the backend takes this endpoint as a form POST (Prometheus, Mimir, Thanos
    /// and VictoriaMetrics do for these); the others are sent as GET.
    pub fn posts_form(&self) -> bool {
        matches!(
            self,
            Api::Query | Api::QueryRange | Api::QueryExemplars | Api::Series | Api::Labels
        )
    }

    fn parameters(&self) -> &'static [(&'static str, Kind)] {
        use Kind::*;
        match self {
            Api::Query => &[
                ("query", Expression),
                ("time", Plain),
                ("timeout", Timeout),
                ("limit", Plain),
                ("stats", Plain),
                ("lookback_delta", Plain),
            ],
            Api::QueryRange => &[
                ("query", Expression),
                ("start", Plain),
                ("end", Plain),
                ("step", Plain),
                ("timeout", Timeout),
                ("limit", Plain),
                ("stats", Plain),
                ("lookback_delta", Plain),
            ],
            Api::QueryExemplars => &[("query", Expression), ("start", Plain), ("end", Plain)],
            Api::Series | Api::Labels | Api::LabelValues(_) => &[
                ("match[]", Selectors),
                ("start", Plain),
                ("end", Plain),
                ("limit", Plain),
            ],
            Api::Metadata => &[
                ("metric", Plain),
                ("limit", Plain),
                ("limit_per_metric", Plain),
            ],
            Api::Federate => &[("match[]", Selectors)],
            Api::BuildInfo => &[],
        }
    }
}

/// Why the parameters were refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("parameter {0:?} is given both in the URL and in the body; send it once")]
    InBothPlaces(String),
    #[error("parameter {0:?} is given more than once")]
    Repeated(String),
    #[error("parameter {0:?} is required")]
    Missing(&'static str),
    #[error("invalid parameter \"timeout\": {0}")]
    Timeout(String),
    #[error("invalid parameter {name:?}: {error}")]
    Scope {
        name: &'static str,
        error: ScopeError,
    },
}

/// The parameters of one request, from the URL's query string and a form body.
pub fn collect(
    url_query: Option<&str>,
    form_body: &[u8],
) -> Result<Vec<(String, String)>, ParamError> {
    let from_url: Vec<(String, String)> =
        url::form_urlencoded::parse(url_query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let from_body: Vec<(String, String)> = url::form_urlencoded::parse(form_body)
        .into_owned()
        .collect();
    let url_names: HashSet<&str> = from_url.iter().map(|(name, _)| name.as_str()).collect();
    if let Some((name, _)) = from_body
        .iter()
        .find(|(name, _)| url_names.contains(name.as_str()))
    {
        return Err(ParamError::InBothPlaces(name.clone()));
    }
    Ok(from_url.into_iter().chain(from_body).collect())
}

/// The parameters to send to the backend: the endpoint's known ones, scoped.
pub fn scope(
    api: &Api,
    given: &[(String, String)],
    tenant: &TenantScope<'_>,
    query_timeout: Duration,
) -> Result<Vec<(String, String)>, ParamError> {
    let mut forward = Vec::new();
    for &(name, kind) in api.parameters() {
        let values: Vec<&str> = given
            .iter()
            .filter(|(given_name, _)| given_name == name)
            .map(|(_, value)| value.as_str())
            .collect();
        if kind != Kind::Selectors && values.len() > 1 {
            return Err(ParamError::Repeated(name.to_string()));
        }
        let scoped = |error| ParamError::Scope { name, error };
        match kind {
            Kind::Expression => {
                let text = values.first().ok_or(ParamError::Missing(name))?;
                let query = scope_expression(text, tenant).map_err(scoped)?;
                forward.push((name.to_string(), query));
            }
            Kind::Selectors => {
                if values.is_empty() {
                    forward.push((name.to_string(), tenant_selector(tenant)));
                }
                for value in values {
                    forward.push((
                        name.to_string(),
                        scope_selector(value, tenant).map_err(scoped)?,
                    ));
                }
            }
            Kind::Timeout => {
                let asked = match values.first() {
                    Some(text) => parse_duration(text).map_err(ParamError::Timeout)?,
                    None => query_timeout,
                };
                let timeout = asked.min(query_timeout);
                // Float seconds: the one form Prometheus, Mimir and VictoriaMetrics all read.
                forward.push((name.to_string(), timeout.as_secs_f64().to_string()));
            }
            Kind::Plain => {
                if let Some(value) = values.first() {
                    forward.push((name.to_string(), (*value).to_string()));
                }
            }
        }
    }
    Ok(forward)
}

/// A Prometheus duration: float seconds (`"30"`, `"1.5"`) or units (`"1m30s"`, `"500ms"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration");
    if let Ok(seconds) = text.parse::<f64>() {
        return if (0.0..1e12).contains(&seconds) {
            Ok(Duration::from_secs_f64(seconds))
        } else {
            Err(invalid())
        };
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total += Duration::from_millis(number.checked_mul(unit_ms).ok_or_else(invalid)?);
    }
    if text.is_empty() {
        return Err(invalid());
    }
    Ok(total)
}

/// A label name as Prometheus' `label/<name>/values` takes it (legacy names; UTF-8
/// names arrive `U__`-escaped, which fits the same pattern).
pub fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHA: TenantScope<'static> = TenantScope {
        label: "tenant_id",
        value: "alpha",
        reject_conflicts: false,
    };
    const MINUTE: Duration = Duration::from_secs(60);

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn url_and_body_are_both_read_but_a_name_in_both_is_refused() {
        let given = collect(Some("query=up&time=1"), b"step=15").expect("valid in this test");
        assert_eq!(
            given,
            pairs(&[("query", "up"), ("time", "1"), ("step", "15")])
        );
        assert_eq!(
            collect(Some("query=up"), b"query=down"),
            Err(ParamError::InBothPlaces("query".into()))
        );
        assert_eq!(
            collect(Some("match%5B%5D=up"), b"match[]=down"),
            Err(ParamError::InBothPlaces("match[]".into()))
        );
    }

    #[test]
    fn only_known_parameters_are_forwarded_and_scoped() {
        let given = pairs(&[
            ("query", "up"),
            ("time", "10"),
            ("tenant", "beta"),
            ("match[]", "x"),
        ]);
        let forward = scope(&Api::Query, &given, &ALPHA, MINUTE).expect("valid in this test");
        assert_eq!(
            forward,
            pairs(&[
                ("query", r#"up{tenant_id="alpha"}"#),
                ("time", "10"),
                ("timeout", "60")
            ])
        );
    }

    #[test]
    fn single_valued_parameters_given_twice_are_refused() {
        let given = pairs(&[("query", "up"), ("query", r#"{tenant_id="beta"}"#)]);
        assert_eq!(
            scope(&Api::Query, &given, &ALPHA, MINUTE),
            Err(ParamError::Repeated("query".into()))
        );
    }

    #[test]
    fn match_selectors_are_scoped_and_default_to_the_tenant() {
        let forward = scope(&Api::Series, &pairs(&[("start", "1")]), &ALPHA, MINUTE)
            .expect("valid in this test");
        assert_eq!(
            forward,
            pairs(&[("match[]", r#"{tenant_id="alpha"}"#), ("start", "1")])
        );
        let given = pairs(&[("match[]", "up"), ("match[]", r#"down{tenant_id="beta"}"#)]);
        let forward = scope(&Api::Labels, &given, &ALPHA, MINUTE).expect("valid in this test");
        assert_eq!(
            forward,
            pairs(&[
                ("match[]", r#"up{tenant_id="alpha"}"#),
                ("match[]", r#"down{tenant_id="alpha"}"#)
            ])
        );
    }

    #[test]
    fn timeout_is_capped() {
        let given = pairs(&[("query", "up"), ("timeout", "5m")]);
        let forward = scope(&Api::Query, &given, &ALPHA, MINUTE).expect("valid in this test");
        assert!(forward.contains(&("timeout".into(), "60".into())));
        let given = pairs(&[("query", "up"), ("timeout", "1.5")]);
        let forward = scope(&Api::Query, &given, &ALPHA, MINUTE).expect("valid in this test");
        assert!(forward.contains(&("timeout".into(), "1.5".into())));
        assert!(scope(
            &Api::Query,
            &pairs(&[("query", "up"), ("timeout", "x")]),
            &ALPHA,
            MINUTE
        )
        .is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("NaN").is_err());
    }

    #[test]
    fn label_names() {
        assert!(valid_label_name("__name__"));
        assert!(valid_label_name("job"));
        assert!(!valid_label_name("../write"));
        assert!(!valid_label_name(""));
        assert!(!valid_label_name("1a"));
    }
}
