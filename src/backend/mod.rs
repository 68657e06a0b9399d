//! Backend clients and the fan-out of one incoming write to a tenant's backends
//! (DESIGN §6 steps 8–9, §9). Each incoming request becomes exactly one request per
//! backend, carrying promgate's own headers only; client headers never pass through.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::config::{BackendConfig, WriteProtocol};
use crate::error::AppError;

pub mod tls;
use crate::telemetry::Metrics;

mod query;
mod split;
pub use query::{QueryAnswer, QueryCall, QueryError};

/// What one backend did with one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// A permanent refusal of these bytes (400, 409, 413, 422): the sender must not retry.
    Rejected {
        message: String,
    },
    /// Transient (429, 5xx, timeout, connection failure): the sender must retry.
    Unavailable {
        message: String,
        retry_after_seconds: Option<u64>,
    },
    /// The backend refused promgate itself (401, 403, 404, redirects…): our configuration.
    Misconfigured {
        message: String,
    },
}

impl Outcome {
    /// The outcome's name in `promgate_backend_requests_total`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Unavailable { .. } => "unavailable",
            Outcome::Misconfigured { .. } => "misconfigured",
        }
    }
}

/// Retry-After promgate sends with a 503 when the backend named none.
pub const DEFAULT_RETRY_AFTER_SECONDS: u64 = 5;
/// How much of a backend's error body is quoted back.
const MAX_QUOTED_ERROR_BYTES: usize = 512;

pub struct BackendClient {
    pub config: BackendConfig,
    http: reqwest::Client,
    /// For remote read: no whole-request timeout (a stream may run long); the wait for
    /// the response head and every pause between body chunks are bounded instead.
    read_http: reqwest::Client,
    /// For the query API: bounded by the tenant's `query_timeout` per request instead.
    query_http: reqwest::Client,
    /// Static headers: promgate's credentials for this backend.
    auth_headers: HeaderMap,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendSetupError {
    #[error("backend {name}: {message}")]
    Invalid { name: String, message: String },
}

impl BackendClient {
    pub fn new(config: BackendConfig) -> Result<BackendClient, BackendSetupError> {
        let invalid = |message: String| BackendSetupError::Invalid {
            name: config.name.clone(),
            message,
        };
        // Read once: both clients share the files as they were at this moment.
        let tls = if tls::is_customised(&config) {
            Some(tls::client_config(&config).map_err(invalid)?)
        } else {
            None
        };
        let builder = || {
            let builder = reqwest::Client::builder()
                .connect_timeout(config.timeout.min(Duration::from_secs(5)))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("promgate/", env!("CARGO_PKG_VERSION")))
                .pool_idle_timeout(Duration::from_secs(90));
            match &tls {
                Some(tls) => builder.use_preconfigured_tls(tls.clone()),
                None => builder,
            }
        };
        let mut auth_headers = HeaderMap::new();
        if let Some(file) = &config.bearer_token_file {
            let token = std::fs::read_to_string(file)
                .map_err(|err| invalid(format!("bearer_token_file: {err}")))?;
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                    invalid("bearer_token_file holds a token that is not a header value".into())
                })?;
            value.set_sensitive(true);
            auth_headers.insert(http::header::AUTHORIZATION, value);
        }
        if let Some(basic) = &config.basic_auth {
            use base64::Engine;
            let password = std::fs::read_to_string(&basic.password_file)
                .map_err(|err| invalid(format!("basic_auth_password_file: {err}")))?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                basic.username,
                password.trim_end_matches(['\r', '\n'])
            ));
            let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                .map_err(|_| invalid("basic auth is not a header value".into()))?;
            value.set_sensitive(true);
            auth_headers.insert(http::header::AUTHORIZATION, value);
        }
        let http = builder()
            .timeout(config.timeout)
            .build()
            .map_err(|err| invalid(err.to_string()))?;
        let read_http = builder()
            .read_timeout(config.timeout)
            .build()
            .map_err(|err| invalid(err.to_string()))?;
        let query_http = builder().build().map_err(|err| invalid(err.to_string()))?;
        Ok(BackendClient {
            config,
            http,
            read_http,
            query_http,
            auth_headers,
        })
    }

    /// Sends one snappy-compressed remote-write 1.0 body for `tenant_id` (in parts when
    /// it is over the backend's caps: [`split`]).
    pub async fn write(&self, tenant_id: &str, body: Bytes, metrics: &Metrics) -> Outcome {
        self.send_write(tenant_id, body, WriteProtocol::V1, metrics)
            .await
            .outcome
    }

    /// Sends one snappy-compressed remote-write 2.0 body for `tenant_id`, holding `sent`.
    /// A 2.0 receiver must say what it wrote: a 2xx without the `…-Written` headers is
    /// a 1.0-only receiver that stored nothing (Prometheus 2.42 and VictoriaMetrics
    /// answer 204 to a 2.0 body), so promgate's configuration is wrong (502); a 2xx that
    /// wrote fewer samples or histograms than sent is refused as a partial write.
    pub async fn write_v2(
        &self,
        tenant_id: &str,
        body: Bytes,
        sent: Written,
        metrics: &Metrics,
    ) -> (Outcome, Written) {
        let sent_write = self
            .send_write(tenant_id, body, WriteProtocol::V2, metrics)
            .await;
        if sent_write.outcome != Outcome::Accepted {
            return (sent_write.outcome, Written::default());
        }
        let Some(written) = sent_write.written else {
            return (
                Outcome::Misconfigured {
                    message: "answered 2xx to a remote write 2.0 request without the \
                              X-Prometheus-Remote-Write-*-Written headers: it does not speak 2.0 \
                              (set protocol = \"1.0\")"
                        .into(),
                },
                Written::default(),
            );
        };
        if written.samples < sent.samples || written.histograms < sent.histograms {
            return (
                Outcome::Rejected {
                    message: format!(
                        "wrote {} of {} samples and {} of {} histograms",
                        written.samples, sent.samples, written.histograms, sent.histograms
                    ),
                },
                written,
            );
        }
        (Outcome::Accepted, written)
    }

    /// One request to the write URL: its outcome, and the response's status and headers
    /// when one came.
    pub(crate) async fn send(
        &self,
        tenant_id: &str,
        body: Bytes,
        protocol: WriteProtocol,
        metrics: &Metrics,
    ) -> (Outcome, Option<(StatusCode, HeaderMap)>) {
        let started = Instant::now();
        let (content_type, version) = match protocol {
            WriteProtocol::V1 => ("application/x-protobuf", "0.1.0"),
            // The exact form without a space: Prometheus' own parser reads
            // `…; proto=…` (with a space) as 1.0.
            WriteProtocol::V2 => (V2_CONTENT_TYPE, "2.0.0"),
        };
        let mut request = self
            .http
            .post(self.config.write_url.clone())
            .headers(self.auth_headers.clone())
            .header(http::header::CONTENT_ENCODING, "snappy")
            .header(http::header::CONTENT_TYPE, content_type)
            .header("X-Prometheus-Remote-Write-Version", version)
            .body(body);
        if let Some(header) = &self.config.tenant_header {
            request = request.header(header.clone(), tenant_id);
        }
        let (outcome, headers) = match request.send().await {
            Ok(response) => {
                let head = (response.status(), response.headers().clone());
                (
                    classify(response, self.config.max_retry_after).await,
                    Some(head),
                )
            }
            Err(err) => (
                Outcome::Unavailable {
                    message: describe_transport_error(&err),
                    retry_after_seconds: None,
                },
                None,
            ),
        };
        metrics.observe_backend(&self.config.name, outcome.name(), started.elapsed());
        (outcome, headers)
    }
}

/// The Content-Type of a remote write 2.0 body, exactly as the specification writes it.
pub const V2_CONTENT_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

/// What a remote write 2.0 receiver says it wrote (the `X-Prometheus-Remote-Write-*-Written`
/// response headers), or what promgate says it wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub samples: u64,
    pub histograms: u64,
    pub exemplars: u64,
}

pub const SAMPLES_WRITTEN: &str = "x-prometheus-remote-write-samples-written";
pub const HISTOGRAMS_WRITTEN: &str = "x-prometheus-remote-write-histograms-written";
pub const EXEMPLARS_WRITTEN: &str = "x-prometheus-remote-write-exemplars-written";

impl Written {
    /// All three headers, or `None` when any is missing or not a number.
    fn from_headers(headers: &HeaderMap) -> Option<Written> {
        let count =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        Some(Written {
            samples: count(SAMPLES_WRITTEN)?,
            histograms: count(HISTOGRAMS_WRITTEN)?,
            exemplars: count(EXEMPLARS_WRITTEN)?,
        })
    }

    /// Both counts added: what two parts of one write wrote.
    pub fn plus(self, other: Written) -> Written {
        Written {
            samples: self.samples + other.samples,
            histograms: self.histograms + other.histograms,
            exemplars: self.exemplars + other.exemplars,
        }
    }

    /// What every backend wrote: the least of each count.
    pub fn least(self, other: Written) -> Written {
        Written {
            samples: self.samples.min(other.samples),
            histograms: self.histograms.min(other.histograms),
            exemplars: self.exemplars.min(other.exemplars),
        }
    }

    /// The three response headers.
    pub fn headers(self) -> [(&'static str, HeaderValue); 3] {
        [
            (SAMPLES_WRITTEN, HeaderValue::from(self.samples)),
            (HISTOGRAMS_WRITTEN, HeaderValue::from(self.histograms)),
            (EXEMPLARS_WRITTEN, HeaderValue::from(self.exemplars)),
        ]
    }
}

impl BackendClient {
    /// Sends a snappy-compressed `ReadRequest` for `tenant_id` to this backend's read URL
    /// and returns the response once its head arrived with a 2xx status.
    pub async fn read(
        &self,
        tenant_id: &str,
        body: Bytes,
        metrics: &Metrics,
    ) -> Result<ReadBody, Outcome> {
        let Some(read_url) = self.config.read_url.clone() else {
            return Err(Outcome::Misconfigured {
                message: "no read_url".into(),
            });
        };
        let started = Instant::now();
        let mut request = self
            .read_http
            .post(read_url)
            .headers(self.auth_headers.clone())
            .header(http::header::CONTENT_ENCODING, "snappy")
            .header(http::header::ACCEPT_ENCODING, "snappy")
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header("X-Prometheus-Remote-Read-Version", "0.1.0")
            .body(body);
        if let Some(header) = &self.config.tenant_header {
            request = request.header(header.clone(), tenant_id);
        }
        let result = match tokio::time::timeout(self.config.timeout, request.send()).await {
            Ok(Ok(response)) if response.status().is_success() => Ok(response),
            Ok(Ok(response)) => Err(classify(response, self.config.max_retry_after).await),
            Ok(Err(err)) => Err(Outcome::Unavailable {
                message: describe_transport_error(&err),
                retry_after_seconds: None,
            }),
            Err(_) => Err(Outcome::Unavailable {
                message: "timed out".into(),
                retry_after_seconds: None,
            }),
        };
        let outcome = result.as_ref().err().cloned().unwrap_or(Outcome::Accepted);
        metrics.observe_backend(&self.config.name, outcome.name(), started.elapsed());
        result.map(ReadBody::new)
    }
}

/// A backend's remote-read answer: its head, and its body as it arrives.
pub struct ReadBody {
    pub content_type: String,
    pub content_length: Option<u64>,
    /// Errors name what broke (a reset, a read timeout), never a secret.
    pub chunks: BoxStream<'static, Result<Bytes, String>>,
}

impl ReadBody {
    fn new(response: reqwest::Response) -> ReadBody {
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        ReadBody {
            content_type,
            content_length: response.content_length(),
            chunks: response
                .bytes_stream()
                .map(|chunk| chunk.map_err(|err| describe_transport_error(&err)))
                .boxed(),
        }
    }
}

/// What a backend's non-2xx answer means; its `Retry-After` (seconds) is clamped to
/// `max_retry_after`.
async fn classify(response: reqwest::Response, max_retry_after: Duration) -> Outcome {
    let status = response.status();
    if status.is_success() {
        return Outcome::Accepted;
    }
    let retry_after_seconds = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(|seconds| seconds.min(max_retry_after.as_secs()));
    let message = quoted_body(response).await;
    let message = format!("{status}: {message}");
    match status.as_u16() {
        400 | 409 | 413 | 422 => Outcome::Rejected { message },
        429 | 500..=599 => Outcome::Unavailable {
            message,
            retry_after_seconds,
        },
        _ => Outcome::Misconfigured { message },
    }
}

/// The first line of the body, cut to a few hundred bytes.
async fn quoted_body(response: reqwest::Response) -> String {
    let mut collected = Vec::new();
    let mut response = response;
    while let Ok(Some(chunk)) = response.chunk().await {
        collected.extend_from_slice(&chunk);
        if collected.len() >= MAX_QUOTED_ERROR_BYTES {
            break;
        }
    }
    let text = String::from_utf8_lossy(&collected[..collected.len().min(MAX_QUOTED_ERROR_BYTES)])
        .into_owned();
    text.lines().next().unwrap_or_default().trim().to_string()
}

fn describe_transport_error(err: &reqwest::Error) -> String {
    if let Some(tls) = tls_cause(err) {
        let stage = if err.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        format!("{stage}: {tls}")
    } else if err.is_timeout() {
        "timed out".into()
    } else if err.is_connect() {
        "connection failed".into()
    } else if err.is_body() || err.is_decode() {
        "response body broke off".into()
    } else {
        "request failed".into()
    }
}

/// The TLS error behind a transport error, if one is (a certificate not trusted, a
/// client certificate the backend refused), so the answer and the log say which.
fn tls_cause(err: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = source {
        // io::Error hides what it wraps from `source()`: look inside, however deep.
        let mut inner: &(dyn std::error::Error + 'static) = cause;
        loop {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(format!("TLS: {tls}"));
            }
            match inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(wrapped) => inner = wrapped,
                None => break,
            }
        }
        source = cause.source();
    }
    None
}

/// One answer for the sender from every backend's outcome: 2xx only when all accepted.
/// A transient failure anywhere wins (503, nothing is lost: the sender retries the whole
/// request), then our misconfiguration (502), then a permanent refusal (400).
pub fn combine(outcomes: &[(&str, Outcome)]) -> Result<(), AppError> {
    let unavailable = outcomes.iter().find_map(|(name, outcome)| match outcome {
        Outcome::Unavailable {
            message,
            retry_after_seconds,
        } => Some((name, message, retry_after_seconds)),
        _ => None,
    });
    if let Some((name, message, retry_after)) = unavailable {
        return Err(AppError::Unavailable {
            message: format!("backend {name} is unavailable ({message}); retry later"),
            retry_after_seconds: retry_after.unwrap_or(DEFAULT_RETRY_AFTER_SECONDS),
        });
    }
    for (name, outcome) in outcomes {
        if let Outcome::Misconfigured { message } = outcome {
            return Err(AppError::BadGateway(format!(
                "backend {name} refused promgate ({message})"
            )));
        }
    }
    for (name, outcome) in outcomes {
        if let Outcome::Rejected { message } = outcome {
            return Err(AppError::BadRequest(format!(
                "backend {name} rejected the write: {message}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn transient_failures_win_over_permanent_ones() {
        let rejected = Outcome::Rejected {
            message: "400: bad".into(),
        };
        let down = Outcome::Unavailable {
            message: "connection failed".into(),
            retry_after_seconds: Some(7),
        };
        let err = combine(&[("a", rejected.clone()), ("b", down)]).expect_err("fails");
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(matches!(
            err,
            AppError::Unavailable {
                retry_after_seconds: 7,
                ..
            }
        ));
        let err = combine(&[("a", Outcome::Accepted), ("b", rejected)]).expect_err("fails");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let misconfigured = Outcome::Misconfigured {
            message: "401".into(),
        };
        assert_eq!(
            combine(&[("a", misconfigured)])
                .expect_err("fails")
                .status(),
            StatusCode::BAD_GATEWAY
        );
        assert!(combine(&[("a", Outcome::Accepted), ("b", Outcome::Accepted)]).is_ok());
        assert!(combine(&[]).is_ok());
    }

    fn answer(status: u16, retry_after: &str) -> reqwest::Response {
        reqwest::Response::from(
            http::Response::builder()
                .status(status)
                .header(http::header::RETRY_AFTER, retry_after)
                .body("busy")
                .expect("valid in this test"),
        )
    }

    #[tokio::test]
    async fn a_backends_retry_after_is_clamped() {
        let retry_after = |outcome| match outcome {
            Outcome::Unavailable {
                retry_after_seconds,
                ..
            } => retry_after_seconds,
            other => panic!("not transient: {other:?}"),
        };
        let default = crate::config::DEFAULT_MAX_RETRY_AFTER;
        assert_eq!(
            retry_after(classify(answer(503, "86400"), default).await),
            Some(60),
            "a day is clamped to the default maximum"
        );
        assert_eq!(
            retry_after(classify(answer(429, "7"), default).await),
            Some(7)
        );
        assert_eq!(
            retry_after(classify(answer(503, "86400"), Duration::from_secs(5)).await),
            Some(5)
        );
    }
}
