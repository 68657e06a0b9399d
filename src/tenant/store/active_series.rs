//! The registry's `active_series` table (DESIGN §14): each replica's sketch of each
//! tenant's active series, written by the replica, read by all of them.

use sqlx::Row;

use super::{Store, StoreError};

/// One replica's view of one tenant's active series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveSeriesRow {
    pub tenant_id: String,
    pub replica_id: String,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// The row counts until `updated_at + idle_timeout_ms`.
    pub idle_timeout_ms: i64,
    /// The series the replica holds.
    pub series: i64,
    /// New series the replica allows itself until its next row.
    pub grant: i64,
    /// `series::sketch::Cardinality`, encoded.
    pub sketch: String,
    /// `series::sketch::Members`, encoded; empty when the tenant is far from its limit.
    pub members: String,
}

impl Store {
    /// Writes this replica's rows, each replacing the previous one of its tenant.
    pub async fn publish_active_series(&self, rows: &[ActiveSeriesRow]) -> Result<(), StoreError> {
        for row in rows {
            sqlx::query(
                "INSERT INTO active_series (tenant_id, replica_id, updated_at, idle_timeout_ms, series, grant_series, sketch, members) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (tenant_id, replica_id) DO UPDATE SET updated_at = excluded.updated_at, \
                 idle_timeout_ms = excluded.idle_timeout_ms, series = excluded.series, \
                 grant_series = excluded.grant_series, \
                 sketch = excluded.sketch, members = excluded.members",
            )
            .bind(&row.tenant_id)
            .bind(&row.replica_id)
            .bind(row.updated_at)
            .bind(row.idle_timeout_ms)
            .bind(row.series)
            .bind(row.grant)
            .bind(&row.sketch)
            .bind(&row.members)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Every row still counting at `now` (Unix milliseconds); rows past their time are
    /// removed.
    pub async fn active_series_rows(&self, now: i64) -> Result<Vec<ActiveSeriesRow>, StoreError> {
        sqlx::query("DELETE FROM active_series WHERE updated_at + idle_timeout_ms < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT tenant_id, replica_id, updated_at, idle_timeout_ms, series, grant_series, sketch, members \
             FROM active_series",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ActiveSeriesRow {
                    tenant_id: row.try_get("tenant_id")?,
                    replica_id: row.try_get("replica_id")?,
                    updated_at: row.try_get("updated_at")?,
                    idle_timeout_ms: row.try_get("idle_timeout_ms")?,
                    series: row.try_get("series")?,
                    grant: row.try_get("grant_series")?,
                    sketch: row.try_get("sketch")?,
                    members: row.try_get("members")?,
                })
            })
            .collect()
    }
}
