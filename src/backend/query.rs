//! Query API requests to a backend's `query_url` (DESIGN §13): promgate's own request,
//! written from the scoped parameters (a form POST or a GET), with promgate's
//! credentials and tenant header; the answer read under a size cap, a deadline and the
//! process-wide answer budget.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::StatusCode;

use super::{describe_transport_error, BackendClient, Outcome};
use crate::admission::{AnswerBytes, AnswerHold};
use crate::telemetry::Metrics;

/// A backend's answer to a query API request, whole.
#[derive(Debug)]
pub struct QueryAnswer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Bytes,
    /// The answer's room in the process-wide budget, kept until the tenant's copy is sent.
    pub hold: AnswerHold,
}

/// Why a query got no answer from the backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("backend has no query_url")]
    NoQueryUrl,
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("query did not complete within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("the answer is over the {0}-byte limit; narrow the query")]
    TooLarge(u64),
    #[error("promgate holds as many query answers as it can; retry")]
    Busy,
}

/// One query API request: where, what, and within which bounds.
pub struct QueryCall<'a> {
    pub tenant_id: &'a str,
    /// Under `query_url`, without a leading slash.
    pub path: &'a str,
    pub form_post: bool,
    pub params: &'a [(String, String)],
    pub timeout: Duration,
    pub max_bytes: u64,
    /// Where the answer's bytes are reserved as they arrive.
    pub answer_bytes: &'a AnswerBytes,
}

impl BackendClient {
    /// Sends `call` and reads the answer (any status) under its size cap and deadline.
    pub async fn query(
        &self,
        call: QueryCall<'_>,
        metrics: &Metrics,
    ) -> Result<QueryAnswer, QueryError> {
        let started = Instant::now();
        let answer = tokio::time::timeout(call.timeout, self.query_once(&call))
            .await
            .unwrap_or(Err(QueryError::TimedOut(call.timeout)));
        let outcome = match &answer {
            Ok(answer) => match answer.status.as_u16() {
                200..=299 => Outcome::Accepted,
                401 | 403 | 404 => Outcome::Misconfigured {
                    message: answer.status.to_string(),
                },
                400..=499 => Outcome::Rejected {
                    message: answer.status.to_string(),
                },
                _ => Outcome::Unavailable {
                    message: answer.status.to_string(),
                    retry_after_seconds: None,
                },
            },
            Err(err) => Outcome::Unavailable {
                message: err.to_string(),
                retry_after_seconds: None,
            },
        };
        metrics.observe_backend(&self.config.name, outcome.name(), started.elapsed());
        answer
    }

    async fn query_once(&self, call: &QueryCall<'_>) -> Result<QueryAnswer, QueryError> {
        let root = self
            .config
            .query_url
            .as_ref()
            .ok_or(QueryError::NoQueryUrl)?;
        let url = root
            .join(call.path)
            .map_err(|err| QueryError::Unavailable(format!("query URL: {err}")))?;
        let request = if call.form_post {
            self.query_http.post(url).form(call.params)
        } else {
            self.query_http.get(url).query(call.params)
        };
        let mut request = request
            .headers(self.auth_headers.clone())
            .header(http::header::ACCEPT_ENCODING, "identity");
        if let Some(header) = &self.config.tenant_header {
            request = request.header(header.clone(), call.tenant_id);
        }
        let mut response = request
            .send()
            .await
            .map_err(|err| QueryError::Unavailable(describe_transport_error(&err)))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if response
            .content_length()
            .is_some_and(|length| length > call.max_bytes)
        {
            return Err(QueryError::TooLarge(call.max_bytes));
        }
        let mut hold = AnswerHold::default();
        let mut body = BytesMut::new();
        if let Some(length) = response.content_length() {
            call.answer_bytes
                .hold(&mut hold, length)
                .map_err(|_| QueryError::Busy)?;
            body.reserve(usize::try_from(length).unwrap_or(0));
        }
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| QueryError::Unavailable(describe_transport_error(&err)))?
        {
            let length = (body.len() + chunk.len()) as u64;
            if length > call.max_bytes {
                return Err(QueryError::TooLarge(call.max_bytes));
            }
            call.answer_bytes
                .hold(&mut hold, length)
                .map_err(|_| QueryError::Busy)?;
            body.extend_from_slice(&chunk);
        }
        Ok(QueryAnswer {
            status,
            content_type,
            body: body.freeze(),
            hold,
        })
    }
}
