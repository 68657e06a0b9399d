//! The registry's `tenant_usage` table (DESIGN §17): each process's running totals per
//! tenant and UTC day, replaced by each of its flushes, and the report that sums them
//! over processes.

use sqlx::Row;

use super::{Store, StoreError};
use crate::usage::{Figures, UsageRow, ALL_FIELDS};

/// Rows a prune deletes at once, so a long backlog never holds the table for long.
pub const USAGE_PRUNE_BATCH: i64 = 1_000;

/// One process's totals of one tenant's day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageTotals {
    pub tenant_id: String,
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub figures: Figures,
}

/// Which rows a report covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageQuery {
    /// First and last day, both included.
    pub from_day: i64,
    pub to_day: i64,
    pub tenant_id: Option<String>,
}

fn columns() -> String {
    ALL_FIELDS
        .iter()
        .map(|field| field.column())
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Store {
    /// Writes `instance_id`'s totals, each replacing that instance's row of its tenant and
    /// day: writing the same totals twice leaves the same row, so a flush retried after a
    /// failure never counts twice. One transaction for all of them.
    pub async fn upsert_usage(
        &self,
        instance_id: &str,
        updated_at: i64,
        totals: &[UsageTotals],
    ) -> Result<(), StoreError> {
        if totals.is_empty() {
            return Ok(());
        }
        let columns = columns();
        let placeholders = (0..ALL_FIELDS.len())
            .map(|index| format!("${}", index + 5))
            .collect::<Vec<_>>()
            .join(", ");
        let updates = ALL_FIELDS
            .iter()
            .map(|field| format!("{0} = excluded.{0}", field.column()))
            .collect::<Vec<_>>()
            .join(", ");
        let statement = format!(
            "INSERT INTO tenant_usage (tenant_id, day, instance_id, updated_at, {columns}) \
             VALUES ($1, $2, $3, $4, {placeholders}) \
             ON CONFLICT (tenant_id, day, instance_id) DO UPDATE SET updated_at = excluded.updated_at, {updates}"
        );
        let mut tx = if self.is_postgres() {
            self.pool.begin().await?
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        };
        for row in totals {
            let mut query = sqlx::query(&statement)
                .bind(&row.tenant_id)
                .bind(row.day)
                .bind(instance_id)
                .bind(updated_at);
            for field in ALL_FIELDS {
                query = query.bind(to_i64(row.figures.get(field)));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Each tenant's days in `query`, summed over every instance (the peak: the highest),
    /// ordered by day, then tenant; at most `max_rows` of them.
    pub async fn usage_report(
        &self,
        query: &UsageQuery,
        max_rows: usize,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let aggregates = ALL_FIELDS
            .iter()
            .map(|field| {
                let column = field.column();
                if field.is_peak() {
                    format!("MAX({column}) AS {column}")
                } else {
                    // PostgreSQL sums BIGINT into NUMERIC; both databases cast it back.
                    format!("CAST(SUM({column}) AS BIGINT) AS {column}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let tenant_filter = if query.tenant_id.is_some() {
            " AND tenant_id = $4"
        } else {
            ""
        };
        let statement = format!(
            "SELECT tenant_id, day, {aggregates} FROM tenant_usage \
             WHERE day >= $1 AND day <= $2{tenant_filter} \
             GROUP BY tenant_id, day ORDER BY day, tenant_id LIMIT $3"
        );
        let mut select = sqlx::query(&statement)
            .bind(query.from_day)
            .bind(query.to_day)
            .bind(i64::try_from(max_rows).unwrap_or(i64::MAX));
        if let Some(tenant) = &query.tenant_id {
            select = select.bind(tenant);
        }
        let rows = select.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let mut figures = Figures::default();
                for field in ALL_FIELDS {
                    let value: i64 = row.try_get(field.column())?;
                    figures.set(field, u64::try_from(value).unwrap_or(0));
                }
                Ok(UsageRow {
                    tenant: row.try_get("tenant_id")?,
                    day: row.try_get("day")?,
                    figures,
                })
            })
            .collect()
    }

    /// Deletes at most [`USAGE_PRUNE_BATCH`] rows of days before `before_day`; returns how
    /// many (the caller repeats while a whole batch went).
    pub async fn prune_usage(&self, before_day: i64) -> Result<u64, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM tenant_usage WHERE (tenant_id, day, instance_id) IN \
             (SELECT tenant_id, day, instance_id FROM tenant_usage WHERE day < $1 LIMIT $2)",
        )
        .bind(before_day)
        .bind(USAGE_PRUNE_BATCH)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Field;

    fn totals(tenant: &str, day: i64, samples: u64, peak: u64) -> UsageTotals {
        let mut figures = Figures::default();
        figures.set(Field::Samples, samples);
        figures.set(Field::WriteRequests, 1);
        figures.set(Field::PeakActiveSeries, peak);
        UsageTotals {
            tenant_id: tenant.into(),
            day,
            figures,
        }
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("usage.db").display());
        let store = Store::open(&url).await.expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn an_upsert_repeated_counts_once_and_instances_add_up() {
        let (_dir, store) = store().await;
        let first = [totals("a", 100, 10, 5), totals("b", 100, 1, 1)];
        store.upsert_usage("one", 1, &first).await.expect("upsert");
        // The same totals again (a flush retried), then grown totals: replaced, not added.
        store.upsert_usage("one", 2, &first).await.expect("upsert");
        store
            .upsert_usage("one", 3, &[totals("a", 100, 12, 4)])
            .await
            .expect("upsert");
        // Another process (a replica, or this one restarted) adds its own.
        store
            .upsert_usage("two", 3, &[totals("a", 100, 3, 9), totals("a", 101, 7, 2)])
            .await
            .expect("upsert");
        let all = UsageQuery {
            from_day: 0,
            to_day: 1_000,
            tenant_id: None,
        };
        let report = store.usage_report(&all, 100).await.expect("report");
        let found: Vec<(String, i64, u64, u64, u64)> = report
            .iter()
            .map(|row| {
                (
                    row.tenant.clone(),
                    row.day,
                    row.figures.get(Field::Samples),
                    row.figures.get(Field::WriteRequests),
                    row.figures.get(Field::PeakActiveSeries),
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                ("a".into(), 100, 15, 2, 9),
                ("b".into(), 100, 1, 1, 1),
                ("a".into(), 101, 7, 1, 2),
            ]
        );
        let only_a_day_101 = UsageQuery {
            from_day: 101,
            to_day: 101,
            tenant_id: Some("a".into()),
        };
        let report = store
            .usage_report(&only_a_day_101, 100)
            .await
            .expect("report");
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].day, 101);
        let only_b = UsageQuery {
            tenant_id: Some("b".into()),
            ..all.clone()
        };
        assert_eq!(
            store
                .usage_report(&only_b, 100)
                .await
                .expect("report")
                .len(),
            1
        );
        // At most the rows asked for, the first in order.
        let first = store.usage_report(&all, 1).await.expect("report");
        assert_eq!((first.len(), first[0].tenant.as_str()), (1, "a"));
    }

    #[tokio::test]
    async fn prune_deletes_old_days_in_batches() {
        let (_dir, store) = store().await;
        let old: Vec<UsageTotals> = (0..USAGE_PRUNE_BATCH + 5)
            .map(|index| totals(&format!("t{index}"), 10, 1, 1))
            .collect();
        store.upsert_usage("one", 1, &old).await.expect("upsert");
        store
            .upsert_usage("one", 1, &[totals("a", 20, 1, 1)])
            .await
            .expect("upsert");
        assert_eq!(
            store.prune_usage(20).await.expect("prune"),
            USAGE_PRUNE_BATCH as u64
        );
        assert_eq!(store.prune_usage(20).await.expect("prune"), 5);
        assert_eq!(store.prune_usage(20).await.expect("prune"), 0);
        let report = store
            .usage_report(
                &UsageQuery {
                    from_day: 0,
                    to_day: 100,
                    tenant_id: None,
                },
                100,
            )
            .await
            .expect("report");
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].day, 20);
    }
}
