//! `GET /admin/v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD[&tenant=ID][&format=csv]`
//! (DESIGN §17): each tenant's usage per UTC day, summed over every replica, as JSON rows
//! or CSV with a header line. `to` defaults to today, `from` to the first day of `to`'s
//! month. A bad date, a range backwards or longer than [`MAX_DAYS`], an invalid tenant id,
//! an unknown or repeated parameter is 400: a typo must never turn a one-tenant bill into
//! everyone's. A report of more than [`MAX_ROWS`] rows is 400 too, naming the way out.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::{AppError, JsonError};
use crate::server::SharedState;
use crate::tenant::store::UsageQuery;
use crate::tenant::validate_tenant_id;
use crate::usage::{format_day, parse_day, to_csv, today};

/// Days one report may cover.
pub const MAX_DAYS: i64 = 1_000;
/// Rows one report may hold (about 15 MB of JSON): a larger one is refused with a hint to
/// narrow the range or name a tenant, rather than built in memory.
pub const MAX_ROWS: usize = 40_000;

pub fn routes() -> Router<SharedState> {
    Router::new().route("/v1/usage", get(usage_report))
}

/// How the report is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// The query string read strictly: the days, the tenant and the format.
fn parse_query(query: Option<&str>, today: i64) -> Result<(UsageQuery, Format), AppError> {
    let (mut from, mut to, mut tenant, mut format) = (None, None, None, None);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match name.as_ref() {
            "from" => &mut from,
            "to" => &mut to,
            "tenant" => &mut tenant,
            "format" => &mut format,
            other => {
                return Err(AppError::BadRequest(format!(
                    "unknown parameter {other:?}: use from, to, tenant and format"
                )))
            }
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(AppError::BadRequest(format!(
                "parameter {name} given twice"
            )));
        }
    }
    let day = |name: &str, text: &str| {
        parse_day(text).ok_or_else(|| {
            AppError::BadRequest(format!(
                "{name}={text:?} is not a date: use YYYY-MM-DD (UTC)"
            ))
        })
    };
    let to_day = match &to {
        Some(text) => day("to", text)?,
        None => today,
    };
    let from_day = match &from {
        Some(text) => day("from", text)?,
        None => parse_day(&format!("{}01", &format_day(to_day)[..8])).unwrap_or(to_day),
    };
    if from_day > to_day {
        return Err(AppError::BadRequest(format!(
            "from {} is after to {}",
            format_day(from_day),
            format_day(to_day)
        )));
    }
    if to_day - from_day >= MAX_DAYS {
        return Err(AppError::BadRequest(format!(
            "the range covers {} days; ask for at most {MAX_DAYS} at once",
            to_day - from_day + 1
        )));
    }
    if let Some(tenant) = &tenant {
        validate_tenant_id(tenant)
            .map_err(|problem| AppError::BadRequest(format!("tenant: {problem}")))?;
    }
    let format = match format.as_deref() {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "format={other:?} is not supported: use json or csv"
            )))
        }
    };
    Ok((
        UsageQuery {
            from_day,
            to_day,
            tenant_id: tenant,
        },
        format,
    ))
}

async fn usage_report(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
) -> Result<Response, JsonError> {
    let (query, format) = parse_query(query.as_deref(), today())?;
    let rows = state
        .registry
        .store()
        .usage_report(&query, MAX_ROWS + 1)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "could not read usage from the registry");
            AppError::Unavailable {
                message: "the registry database is unavailable".into(),
                retry_after_seconds: 5,
            }
        })?;
    if rows.len() > MAX_ROWS {
        return Err(AppError::BadRequest(format!(
            "the report holds more than {MAX_ROWS} rows; ask for fewer days or one tenant at a time"
        ))
        .into());
    }
    Ok(match format {
        Format::Json => axum::Json(serde_json::json!({
            "from": format_day(query.from_day),
            "to": format_day(query.to_day),
            "rows": rows.iter().map(|row| row.to_json()).collect::<Vec<_>>(),
        }))
        .into_response(),
        Format::Csv => {
            let mut response = to_csv(&rows).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8; header=present"),
            );
            response
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: i64 = 19_782; // 2024-02-29

    #[test]
    fn days_default_to_the_month_so_far() {
        let (query, format) = parse_query(None, TODAY).expect("valid");
        assert_eq!(
            (format_day(query.from_day), format_day(query.to_day)),
            ("2024-02-01".into(), "2024-02-29".into())
        );
        assert_eq!((format, query.tenant_id), (Format::Json, None));
        let (query, format) = parse_query(
            Some("from=2024-01-30&to=2024-02-02&tenant=team-a&format=csv"),
            TODAY,
        )
        .expect("valid");
        assert_eq!((query.from_day, query.to_day), (TODAY - 30, TODAY - 27));
        assert_eq!(query.tenant_id.as_deref(), Some("team-a"));
        assert_eq!(format, Format::Csv);
    }

    #[test]
    fn bad_queries_are_refused() {
        for bad in [
            "from=2024-02-30",
            "to=yesterday",
            "from=2024-03-01&to=2024-02-01",
            "from=2020-01-01&to=2024-01-01",
            "tenant=a&tenant=b",
            "tenants=a",
            "format=xml",
            "tenant=",
            "tenant=a%7Cb",
        ] {
            let err = parse_query(Some(bad), TODAY).expect_err(bad);
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
