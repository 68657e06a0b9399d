//! The registry's `ha_elections` table (DESIGN §15): one row per (tenant, cluster)
//! holding its elected replica. Rows change by compare-and-swap only: an insert that
//! does nothing when a row exists, a refresh of `received_at` that requires the replica
//! to be still elected, and a switch that requires the row to be exactly the one judged
//! stale (same replica, same `received_at`). The election rules are `series::ha`'s.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Store, StoreError};
use crate::series::ha::{step, Election, Step};

/// The PostgreSQL channel a changed election is announced on (the payload is the tenant).
const CHANNEL: &str = "promgate_ha";

/// What [`Store::ha_elect`] found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Elected {
    /// The cluster's election after the step (`changed` when this call elected a new
    /// replica, or the first one).
    Election { election: Election, changed: bool },
    /// A new cluster, refused: the tenant has `max_clusters` already.
    Refused,
}

impl Store {
    /// `replica` sent samples of `cluster` at `now`: inserts the cluster's first election,
    /// refreshes the elected replica's `received_at`, or fails over to `replica` when the
    /// elected one sent nothing for `timeout_ms` — each by compare-and-swap, so that of
    /// two relays racing, one wins and both read the winner's row.
    pub async fn ha_elect(
        &self,
        tenant: &str,
        cluster: &str,
        replica: &str,
        now: i64,
        timeout_ms: i64,
        max_clusters: u64,
    ) -> Result<Elected, StoreError> {
        let current = self.ha_election(tenant, cluster).await?;
        let changed = match step(current.as_ref(), replica, now, timeout_ms) {
            Step::Insert => {
                let inserted = sqlx::query(
                    "INSERT INTO ha_elections (tenant_id, cluster, replica, received_at, elected_at, changes) \
                     SELECT $1, $2, $3, $4, $4, 0 \
                     WHERE (SELECT COUNT(*) FROM ha_elections WHERE tenant_id = $1) < $5 \
                     ON CONFLICT (tenant_id, cluster) DO NOTHING",
                )
                .bind(tenant)
                .bind(cluster)
                .bind(replica)
                .bind(now)
                .bind(i64::try_from(max_clusters).unwrap_or(i64::MAX))
                .execute(&self.pool)
                .await?;
                inserted.rows_affected() == 1
            }
            Step::Refresh => {
                self.ha_refresh(tenant, cluster, replica, now).await?;
                false
            }
            Step::Switch { from, received_at } => {
                let switched = sqlx::query(
                    "UPDATE ha_elections SET replica = $1, received_at = $2, elected_at = $2, \
                     changes = changes + 1 \
                     WHERE tenant_id = $3 AND cluster = $4 AND replica = $5 AND received_at = $6",
                )
                .bind(replica)
                .bind(now)
                .bind(tenant)
                .bind(cluster)
                .bind(&from)
                .bind(received_at)
                .execute(&self.pool)
                .await?;
                switched.rows_affected() == 1
            }
            Step::Keep => false,
        };
        if changed {
            self.notify_ha(tenant).await;
        }
        Ok(match self.ha_election(tenant, cluster).await? {
            Some(election) => Elected::Election { election, changed },
            None => Elected::Refused,
        })
    }

    /// Moves `replica`'s `received_at` forward to `seen_at`, if it is still elected.
    pub async fn ha_refresh(
        &self,
        tenant: &str,
        cluster: &str,
        replica: &str,
        seen_at: i64,
    ) -> Result<bool, StoreError> {
        let refreshed = sqlx::query(
            "UPDATE ha_elections SET received_at = $1 \
             WHERE tenant_id = $2 AND cluster = $3 AND replica = $4 AND received_at < $1",
        )
        .bind(seen_at)
        .bind(tenant)
        .bind(cluster)
        .bind(replica)
        .execute(&self.pool)
        .await?;
        Ok(refreshed.rows_affected() == 1)
    }

    /// One cluster's election.
    pub async fn ha_election(
        &self,
        tenant: &str,
        cluster: &str,
    ) -> Result<Option<Election>, StoreError> {
        let row = sqlx::query(
            "SELECT cluster, replica, received_at, elected_at, changes FROM ha_elections \
             WHERE tenant_id = $1 AND cluster = $2",
        )
        .bind(tenant)
        .bind(cluster)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(election_from_row).transpose()
    }

    /// A tenant's elections, by cluster name.
    pub async fn ha_elections(&self, tenant: &str) -> Result<Vec<Election>, StoreError> {
        let rows = sqlx::query(
            "SELECT cluster, replica, received_at, elected_at, changes FROM ha_elections \
             WHERE tenant_id = $1 ORDER BY cluster",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(election_from_row).collect()
    }

    /// Forgets a tenant's clusters whose elected replica sent nothing since `before`
    /// (a cluster gone for good stops counting against `ha_max_clusters`).
    pub async fn ha_forget_before(&self, tenant: &str, before: i64) -> Result<u64, StoreError> {
        let deleted =
            sqlx::query("DELETE FROM ha_elections WHERE tenant_id = $1 AND received_at < $2")
                .bind(tenant)
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(deleted.rows_affected())
    }

    /// Tells the other relays that `tenant`'s elections changed (PostgreSQL NOTIFY).
    async fn notify_ha(&self, tenant: &str) {
        if self.postgres_url.is_some() {
            if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(tenant)
                .execute(&self.pool)
                .await
            {
                tracing::warn!(error = %err, "could not notify the other replicas of an HA election; they will poll");
            }
        }
    }

    /// Calls `on_change` with the tenant whenever another relay changed an election, for
    /// as long as the process runs. Does nothing on SQLite (one relay).
    pub fn spawn_ha_listener(&self, on_change: impl Fn(&str) + Send + 'static) {
        let Some(url) = self.postgres_url.clone() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if listener.listen(CHANNEL).await.is_ok() {
                            while let Ok(notification) = listener.recv().await {
                                on_change(notification.payload());
                            }
                        }
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "HA election listener cannot connect")
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
}

fn election_from_row(row: &AnyRow) -> Result<Election, StoreError> {
    Ok(Election {
        cluster: row.try_get("cluster")?,
        replica: row.try_get("replica")?,
        received_at: row.try_get("received_at")?,
        elected_at: row.try_get("elected_at")?,
        changes: row.try_get("changes")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("registry.db").display());
        let store = Store::open(&url).await.expect("open");
        (dir, store)
    }

    fn elected(answer: Elected) -> (String, i64, i64, bool) {
        match answer {
            Elected::Election { election, changed } => (
                election.replica,
                election.received_at,
                election.changes,
                changed,
            ),
            Elected::Refused => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn elections_change_by_compare_and_swap() {
        let (_dir, store) = store().await;
        let elect =
            |replica: &'static str, now: i64| store.ha_elect("t", "c", replica, now, 10_000, 2);
        assert_eq!(
            elected(elect("a", 1_000).await.expect("a")),
            ("a".into(), 1_000, 0, true)
        );
        // b is not elected while a is alive; a's sends move received_at.
        assert_eq!(
            elected(elect("b", 2_000).await.expect("b")),
            ("a".into(), 1_000, 0, false)
        );
        assert_eq!(
            elected(elect("a", 5_000).await.expect("a")),
            ("a".into(), 5_000, 0, false)
        );
        assert!(!store.ha_refresh("t", "c", "a", 4_000).await.expect("older"));
        assert_eq!(
            elected(elect("b", 15_000).await.expect("b")),
            ("a".into(), 5_000, 0, false)
        );
        // Silent past the timeout: b is elected, once.
        assert_eq!(
            elected(elect("b", 15_001).await.expect("b")),
            ("b".into(), 15_001, 1, true)
        );
        assert_eq!(
            elected(elect("b", 15_002).await.expect("b")),
            ("b".into(), 15_002, 1, false)
        );
        // a refreshing from a stale view cannot take the election back.
        assert!(!store
            .ha_refresh("t", "c", "a", 16_000)
            .await
            .expect("not elected"));
        // Another replica judging from the same stale view finds b alive.
        assert_eq!(
            elected(elect("x", 15_003).await.expect("x")),
            ("b".into(), 15_002, 1, false)
        );
        // Clusters past max_clusters are refused; other tenants are their own.
        assert!(matches!(
            store
                .ha_elect("t", "d", "a", 16_000, 10_000, 2)
                .await
                .expect("d"),
            Elected::Election { changed: true, .. }
        ));
        assert_eq!(
            store
                .ha_elect("t", "e", "a", 16_000, 10_000, 2)
                .await
                .expect("e"),
            Elected::Refused
        );
        assert!(matches!(
            store
                .ha_elect("u", "e", "a", 16_000, 10_000, 2)
                .await
                .expect("u"),
            Elected::Election { changed: true, .. }
        ));
        let clusters: Vec<String> = store
            .ha_elections("t")
            .await
            .expect("list")
            .into_iter()
            .map(|election| election.cluster)
            .collect();
        assert_eq!(clusters, ["c", "d"]);
        assert_eq!(
            store.ha_forget_before("t", 16_000).await.expect("forget"),
            1
        );
        assert_eq!(store.ha_elections("t").await.expect("list").len(), 1);
    }
}
