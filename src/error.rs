//! The one error type that becomes an HTTP response, and the only place that picks
//! status codes (SECURITY.md §1; DESIGN §6.9). Each module has its own typed errors and
//! converts them into this small closed set. 4xx means a retry can never help; anything
//! transient — a backend down, a budget or deadline exhausted, a body that arrived too
//! slowly or incomplete — is a 5xx with `Retry-After`, so the sender keeps its data and
//! retries. There is deliberately no 408: Prometheus drops a batch answered with it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request can never be accepted as sent.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no credential, or one that does not verify.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: a valid identity that may not write (unknown or disabled tenant).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// 412: a conditional admin write (`If-Match`) whose condition no longer holds.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 413: the body is over `max_request_bytes`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: a Content-Encoding or Content-Type promgate does not speak.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: a well-formed request that cannot be answered as asked (a query whose answer
    /// is over the size cap).
    #[error("{0}")]
    Unprocessable(String),
    /// 429 + Retry-After: the tenant is over one of its limits.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_seconds: u64,
    },
    /// 501: the tenant has no backend that serves this endpoint.
    #[error("{0}")]
    NotImplemented(String),
    /// 502: a backend refused promgate's own credentials or path (our misconfiguration).
    #[error("{0}")]
    BadGateway(String),
    /// 503 + Retry-After: transient; the sender must retry and loses nothing.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_seconds: u64,
    },
    /// 500: a bug or an unexpected failure; the body stays generic.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            AppError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The one-line text a client sees. 5xx from promgate itself stay generic.
    pub(crate) fn public_message(&self) -> String {
        match self {
            AppError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

/// Remote-write endpoints answer in plain text (senders log the first line).
impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), format!("{}\n", self.public_message())).into_response();
        decorate(&self, &mut response);
        response
    }
}

/// The admin API answers errors as `{"error": "..."}`.
pub struct JsonError(pub AppError);

impl From<AppError> for JsonError {
    fn from(err: AppError) -> Self {
        JsonError(err)
    }
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.0.public_message() });
        let mut response = (self.0.status(), Json(body)).into_response();
        decorate(&self.0, &mut response);
        response
    }
}

/// The query API answers errors as Prometheus does (DESIGN §13):
/// `{"status":"error","errorType":…,"error":…}`, so Grafana shows the reason.
pub struct PrometheusError(pub AppError);

impl IntoResponse for PrometheusError {
    fn into_response(self) -> Response {
        let error_type = match self.0.status().as_u16() {
            404 => "not_found",
            422 => "execution",
            429 | 503 => "unavailable",
            504 => "timeout",
            400..=499 => "bad_data",
            _ => "internal",
        };
        let body = serde_json::json!({
            "status": "error",
            "errorType": error_type,
            "error": self.0.public_message(),
        });
        let mut response = (self.0.status(), Json(body)).into_response();
        decorate(&self.0, &mut response);
        response
    }
}

fn decorate(err: &AppError, response: &mut Response) {
    match err {
        AppError::Unauthenticated(_) => {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        AppError::Unavailable {
            retry_after_seconds,
            ..
        }
        | AppError::TooManyRequests {
            retry_after_seconds,
            ..
        } => {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
        }
        _ => {}
    }
}
