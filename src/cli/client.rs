//! The admin API over HTTP, as the command line uses it: the admin token as a bearer
//! token, JSON in and out, and an API error turned into its one-line message.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How long one admin call may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Admin answers are small; anything larger is not the admin API.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

pub struct AdminClient {
    base: url::Url,
    token: String,
    http: reqwest::Client,
}

/// One admin answer: its status, `ETag` and JSON body (`Null` when empty).
pub struct Answer {
    pub status: StatusCode,
    pub etag: Option<String>,
    pub body: Value,
}

impl AdminClient {
    /// `admin_url` such as `http://127.0.0.1:9202`; the token is read from `token_file`.
    pub fn new(admin_url: &str, token_file: &Path) -> Result<AdminClient, String> {
        let mut base = url::Url::parse(admin_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .ok_or_else(|| format!("--admin-url {admin_url:?} is not an http(s) URL"))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let token = std::fs::read_to_string(token_file).map_err(|err| {
            format!(
                "cannot read the admin token from {}: {err} (set --admin-token-file or PROMGATE_ADMIN_TOKEN_FILE)",
                token_file.display()
            )
        })?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(format!("{} holds no admin token", token_file.display()));
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("promgate-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("HTTP client: {err}"))?;
        Ok(AdminClient { base, token, http })
    }

    /// Calls `method path` (relative, such as `admin/v1/tenants`) with an optional JSON
    /// body and `If-Match`. A non-2xx answer is an error: the API's own message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, CallError> {
        let url = self
            .base
            .join(path)
            .map_err(|err| CallError::Other(format!("{path}: {err}")))?;
        let mut request = self
            .http
            .request(method, url.clone())
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        if let Some(tag) = if_match {
            request = request.header(reqwest::header::IF_MATCH, tag);
        }
        let mut response = request.send().await.map_err(|err| {
            CallError::Other(format!(
                "cannot reach the admin API at {}: {}",
                self.base,
                describe(&err)
            ))
        })?;
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| CallError::Other(format!("reading the answer: {}", describe(&err))))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_RESPONSE_BYTES {
                return Err(CallError::Other("the admin API answered too much".into()));
            }
        }
        let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(body) => body,
                Err(_) if !status.is_success() => {
                    Value::String(String::from_utf8_lossy(&bytes).trim().to_string())
                }
                Err(err) => {
                    return Err(CallError::Other(format!(
                        "the admin API answered {status} with something that is not JSON: {err}"
                    )))
                }
            }
        };
        if status.is_success() {
            return Ok(Answer { status, etag, body });
        }
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| body.as_str().map(str::to_string))
            .unwrap_or_else(|| status.to_string());
        Err(CallError::Api {
            status,
            message: message.lines().next().unwrap_or_default().to_string(),
        })
    }
}

#[derive(Debug)]
pub enum CallError {
    /// The API refused: its status and one-line message.
    Api { status: StatusCode, message: String },
    /// The API could not be reached or answered nonsense.
    Other(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Api { status, message } => {
                write!(f, "{message} ({})", status.as_u16())
            }
            CallError::Other(message) => f.write_str(message),
        }
    }
}

fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
