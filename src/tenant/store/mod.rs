//! The tenant registry in SQL through sqlx's `Any` driver, so callers see one type
//! whichever engine backs it. Only the admin API and start-up touch the database; the
//! request path reads [`super::Registry`]'s cache.
//!
//! Every query binds its parameters (`$1`…); no string is ever spliced into SQL.
//!
//! Admin writes go through [`TenantWrite`], one transaction that reads the current row and
//! writes back only onto the version it read (optimistic concurrency), so replicas sharing
//! the database never undo each other's changes.
//!
//! # Following changes (DESIGN §4, §11)
//!
//! Replicas follow the registry by a change sequence, not by re-reading it. Every write
//! transaction first takes the next *revision* from the single row of `registry_revision`
//! (`UPDATE … SET revision = revision + 1 … RETURNING`), stamps every tenant or token row it
//! writes with it, and leaves a row in `registry_tombstones` for what it deletes (a tenant,
//! a pruned token). [`Store::changes_since`] then reads the current revision and only the
//! rows stamped after the one the replica holds, up to that revision: one row plus one per
//! change, whatever the registry's size.
//!
//! Why a counter row rather than `updated_at > last_seen` or a sequence: a timestamp or a
//! sequence value is taken before the transaction commits, so a transaction that took an
//! earlier value can commit after a later one, and a reader that already moved past the
//! later one would never see it. Taking the counter row locks it until commit, so writers
//! commit strictly in revision order; a reader that sees revision *n* in the counter sees
//! every change up to *n*, even when its later statements run in other snapshots (READ
//! COMMITTED). Registry writes are admin actions and token pruning, so serialising them
//! costs nothing that matters; reads never take the lock. On SQLite writers take the
//! database lock anyway (`BEGIN IMMEDIATE`).
//!
//! Tombstones are removed after [`TOMBSTONE_RETENTION_SECONDS`]; the counter row then
//! records the highest revision removed, and a replica that was behind it (cut off from
//! the database for that long) reloads everything instead.

use std::collections::HashMap;
use std::str::FromStr;

use futures::TryStreamExt;
use prometheus_client::metrics::counter::Counter;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Row};

use super::{Tenant, TenantStatus, TokenRecord};

mod active_series;
mod ha;
mod usage;
pub use active_series::ActiveSeriesRow;
pub use ha::Elected;
pub use usage::{UsageQuery, UsageTotals, USAGE_PRUNE_BATCH};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error("corrupt registry row: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Found at start-up, before the migration that makes `label_value` unique: those
    /// tenants read and write each other's series, and nothing is dropped to fix it.
    #[error(
        "tenants share a label_value, so each reads and writes the others' series: {0}; \
         give all but one of each group a distinct label_value \
         (PATCH /admin/v1/tenants/<id> {{\"label_value\": \"...\"}} through a replica that still runs, \
         or UPDATE tenants SET label_value = ... in the database), then start promgate again"
    )]
    DuplicateLabelValues(String),
    /// A SQLite file that does not exist, where it must not be created.
    #[error("{0} does not exist")]
    Missing(String),
}

/// One admin action, as the audit log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: i64,
    /// A fingerprint of the admin token used (`admin:<8 hex>`), or `unauthenticated`.
    pub actor: String,
    /// Method and route, e.g. `POST /admin/v1/tenants`.
    pub action: String,
    /// The path acted on.
    pub target: String,
    /// The client's address.
    pub source: String,
    /// The HTTP status answered.
    pub result: u16,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Set for PostgreSQL: the URL the change listener connects with.
    postgres_url: Option<String>,
    /// Registry rows (tenants, identities, tokens, tombstones, the revision) read since the
    /// store was opened: what the scale test and `promgate_registry_rows_read_total` count.
    rows_read: Counter,
}

/// How long the heartbeat of a replica that does not say (an older version) counts.
pub const LEGACY_REPLICA_EXPIRY_SECONDS: i64 = 5;

/// Tombstones older than this are removed. A replica cut off from the database for longer
/// reloads the registry in full when it is back.
pub const TOMBSTONE_RETENTION_SECONDS: i64 = 7 * 24 * 3600;

/// Expired tokens and old tombstones removed by one pruning transaction at most, so a
/// backlog never holds the registry's write lock (on SQLite, its one connection) for long.
pub const PRUNE_BATCH: i64 = 1_000;

/// Tenant ids named in one `IN (…)` list when fetching the identities of changed tenants.
const IDS_PER_QUERY: usize = 500;

/// The whole registry as of (at least) `revision`.
#[derive(Debug)]
pub struct Snapshot {
    pub revision: i64,
    pub tenants: Vec<Tenant>,
    pub tokens: Vec<TokenRecord>,
}

/// One change to apply, in revision order.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// A tenant created or changed (with its identities).
    Tenant(Box<Tenant>),
    /// A tenant deleted, with its identities and tokens.
    TenantDeleted(String),
    /// A token issued or revoked.
    Token(TokenRecord),
    /// A token pruned after its expiry.
    TokenDeleted(String),
}

/// What changed after a revision.
#[derive(Debug)]
pub enum Changes {
    /// Everything up to `revision`, oldest first.
    Since { revision: i64, changes: Vec<Change> },
    /// The tombstones needed to follow were removed: reload everything.
    Reload,
}

/// What one pruning pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub tokens: u64,
    pub tombstones: u64,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Connects and applies migrations (`sqlite:` or `postgres:` URLs). A SQLite file is
    /// created when missing.
    pub async fn open(database_url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let url = if database_url.starts_with("sqlite:") && !database_url.contains("mode=") {
            let separator = if database_url.contains('?') { '&' } else { '?' };
            format!("{database_url}{separator}mode=rwc")
        } else {
            database_url.to_string()
        };
        let options = AnyConnectOptions::from_str(&url)?;
        // A short acquire timeout: during a database outage, reloads and admin calls fail
        // fast (503) instead of hanging.
        // SQLite: one connection, so within a process transactions take turns; admin
        // writes begin IMMEDIATE (`begin_write`), so another process sharing the file is
        // waited for (busy timeout) rather than met with "database is locked".
        let connections = if url.starts_with("sqlite:") { 1 } else { 4 };
        let pool = AnyPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(1))
            .max_connections(connections)
            .connect_with(options)
            .await?;
        let postgres_url = url.starts_with("postgres").then_some(url);
        let store = Store {
            pool,
            postgres_url,
            rows_read: Counter::default(),
        };
        store.refuse_duplicate_label_values().await?;
        if store.is_postgres() {
            POSTGRES_MIGRATIONS.run(&store.pool).await?;
        } else {
            SQLITE_MIGRATIONS.run(&store.pool).await?;
        }
        Ok(store)
    }

    /// Opens an existing registry to read it, without creating a SQLite file or applying
    /// migrations (`check-config`); gives up after `timeout`.
    pub async fn open_read_only(
        database_url: &str,
        timeout: std::time::Duration,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let url = if database_url.starts_with("sqlite:") {
            let base = database_url
                .split_once('?')
                .map_or(database_url, |(base, _)| base);
            let path = base
                .strip_prefix("sqlite://")
                .or_else(|| base.strip_prefix("sqlite:"))
                .unwrap_or(base);
            if !std::path::Path::new(path).is_file() {
                return Err(StoreError::Missing(path.to_string()));
            }
            format!("{base}?mode=ro")
        } else {
            database_url.to_string()
        };
        let options = AnyConnectOptions::from_str(&url)?;
        // One plain connection first: a pool would retry until its timeout and report only
        // that, where this reports why (refused, unknown host, authentication).
        let probe = tokio::time::timeout(timeout, sqlx::AnyConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))??;
        drop(probe);
        let pool = AnyPoolOptions::new()
            .acquire_timeout(timeout)
            .max_connections(1)
            .connect_with(options);
        let pool = tokio::time::timeout(timeout, pool)
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))??;
        let postgres_url = url.starts_with("postgres").then_some(url);
        Ok(Store {
            pool,
            postgres_url,
            rows_read: Counter::default(),
        })
    }

    fn is_postgres(&self) -> bool {
        self.postgres_url.is_some()
    }

    /// Refuses to go on when tenants share a `label_value` (possible before migration 4
    /// made it unique): the operator decides which tenant keeps it.
    async fn refuse_duplicate_label_values(&self) -> Result<(), StoreError> {
        let exists = if self.is_postgres() {
            "SELECT COUNT(*) AS found FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = 'tenants'"
        } else {
            "SELECT COUNT(*) AS found FROM sqlite_master WHERE type = 'table' AND name = 'tenants'"
        };
        let found: i64 = sqlx::query(exists)
            .fetch_one(&self.pool)
            .await?
            .try_get("found")?;
        if found == 0 {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT label_value, id FROM tenants WHERE label_value IN \
             (SELECT label_value FROM tenants GROUP BY label_value HAVING COUNT(*) > 1) \
             ORDER BY label_value, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for row in &rows {
            let label_value: String = row.try_get("label_value")?;
            let id: String = row.try_get("id")?;
            match groups.last_mut() {
                Some((last, ids)) if *last == label_value => ids.push(id),
                _ => groups.push((label_value, vec![id])),
            }
        }
        if groups.is_empty() {
            return Ok(());
        }
        let described: Vec<String> = groups
            .iter()
            .map(|(label_value, ids)| {
                let ids: Vec<String> = ids.iter().map(|id| format!("{id:?}")).collect();
                format!(
                    "label_value {label_value:?} is used by tenants {}",
                    ids.join(", ")
                )
            })
            .collect();
        Err(StoreError::DuplicateLabelValues(described.join("; ")))
    }

    /// Starts an admin write. On SQLite the transaction takes the write lock at once
    /// (`BEGIN IMMEDIATE`, waiting out another process's writer), so what it reads stays
    /// current until it commits; on PostgreSQL a concurrent writer shows up as a version
    /// that moved ([`TenantWrite::replace_tenant`] answers false).
    ///
    /// Its first statement takes the next registry revision (see the module docs), which
    /// every row it writes is stamped with.
    pub async fn begin_write(&self) -> Result<TenantWrite, StoreError> {
        let mut tx = if self.is_postgres() {
            self.pool.begin().await?
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        };
        let revision: i64 = sqlx::query(
            "UPDATE registry_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get("revision")?;
        Ok(TenantWrite { tx, revision })
    }

    /// Registry rows read since the store was opened.
    pub fn rows_read(&self) -> u64 {
        self.rows_read.get()
    }

    /// The counter of registry rows read (shared: clones count together).
    pub fn rows_read_counter(&self) -> Counter {
        self.rows_read.clone()
    }

    fn count_rows(&self, rows: usize) {
        self.rows_read
            .inc_by(u64::try_from(rows).unwrap_or(u64::MAX));
    }

    /// The registry's current revision and the highest one whose tombstones were removed.
    async fn revision(&self) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT revision, tombstones_pruned_through FROM registry_revision WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        self.count_rows(1);
        Ok((
            row.try_get("revision")?,
            row.try_get("tombstones_pruned_through")?,
        ))
    }

    /// Every tenant and token, with the revision to follow changes from. Rows written
    /// after that revision may be included; following from it applies them again, which
    /// changes nothing.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let (revision, _) = self.revision().await?;
        Ok(Snapshot {
            revision,
            tenants: self.load_tenants().await?,
            tokens: self.load_tokens().await?,
        })
    }

    /// What changed after `after`, up to the current revision: reads one row plus the rows
    /// that changed, never the whole registry.
    pub async fn changes_since(&self, after: i64) -> Result<Changes, StoreError> {
        let (upto, pruned_through) = self.revision().await?;
        if pruned_through > after || upto < after {
            // Tombstones this replica needs are gone, or the database was replaced.
            return Ok(Changes::Reload);
        }
        if upto == after {
            return Ok(Changes::Since {
                revision: upto,
                changes: Vec::new(),
            });
        }
        let tenant_rows = sqlx::query(
            "SELECT id, label_value, extra_labels, limits, backends, status, write_relabel_configs, created_at, updated_at, version, revision \
             FROM tenants WHERE revision > $1 AND revision <= $2",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        let token_rows = sqlx::query(
            "SELECT id, tenant_id, description, created_at, expires_at, revoked_at, revision \
             FROM tokens WHERE revision > $1 AND revision <= $2",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        let tombstone_rows = sqlx::query(
            "SELECT kind, id, revision FROM registry_tombstones WHERE revision > $1 AND revision <= $2",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        self.count_rows(tenant_rows.len() + token_rows.len() + tombstone_rows.len());
        let mut ordered: Vec<(i64, u8, Change)> = Vec::new();
        let mut tenants = Vec::with_capacity(tenant_rows.len());
        for row in &tenant_rows {
            tenants.push((row.try_get::<i64, _>("revision")?, tenant_from_row(row)?));
        }
        let ids: Vec<&str> = tenants
            .iter()
            .map(|(_, tenant)| tenant.id.as_str())
            .collect();
        let mut identities = self.identities_of(&ids).await?;
        for (revision, mut tenant) in tenants {
            if let Some(found) = identities.remove(&tenant.id) {
                tenant.identities = found;
            }
            ordered.push((revision, 1, Change::Tenant(Box::new(tenant))));
        }
        for row in &token_rows {
            ordered.push((
                row.try_get("revision")?,
                2,
                Change::Token(token_from_row(row)?),
            ));
        }
        for row in &tombstone_rows {
            let kind: String = row.try_get("kind")?;
            let id: String = row.try_get("id")?;
            let change = match kind.as_str() {
                "tenant" => Change::TenantDeleted(id),
                "token" => Change::TokenDeleted(id),
                other => return Err(StoreError::Corrupt(format!("tombstone kind {other:?}"))),
            };
            // Within one revision a delete comes first (a tenant deleted and re-created
            // cannot share one, but this keeps the order well defined).
            ordered.push((row.try_get("revision")?, 0, change));
        }
        ordered.sort_by_key(|(revision, rank, _)| (*revision, *rank));
        Ok(Changes::Since {
            revision: upto,
            changes: ordered.into_iter().map(|(_, _, change)| change).collect(),
        })
    }

    /// The identities of the named tenants, by tenant.
    async fn identities_of(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let mut found: HashMap<String, Vec<String>> = HashMap::new();
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT identity, tenant_id FROM tenant_identities WHERE tenant_id IN ({}) ORDER BY identity",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            let rows = query.fetch_all(&self.pool).await?;
            self.count_rows(rows.len());
            for row in rows {
                found
                    .entry(row.try_get("tenant_id")?)
                    .or_default()
                    .push(row.try_get("identity")?);
            }
        }
        Ok(found)
    }

    /// Deletes tokens that expired before `expired_before` and tombstones older than
    /// `tombstones_before`, a bounded batch of each, in one registry write (so replicas
    /// follow the pruning like any change). Opens no write when there is nothing to prune.
    pub async fn prune(
        &self,
        now: i64,
        expired_before: i64,
        tombstones_before: i64,
    ) -> Result<Pruned, StoreError> {
        let due = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM (SELECT 1 AS one FROM tokens WHERE expires_at < $1 LIMIT 1) AS t) AS tokens, \
                    (SELECT COUNT(*) FROM (SELECT 1 AS one FROM registry_tombstones WHERE deleted_at < $2 LIMIT 1) AS d) AS tombstones",
        )
        .bind(expired_before)
        .bind(tombstones_before)
        .fetch_one(&self.pool)
        .await?;
        let (tokens_due, tombstones_due): (i64, i64) =
            (due.try_get("tokens")?, due.try_get("tombstones")?);
        if tokens_due == 0 && tombstones_due == 0 {
            return Ok(Pruned::default());
        }
        let mut write = self.begin_write().await?;
        let mut pruned = Pruned::default();
        if tombstones_due > 0 {
            let old = sqlx::query(
                "SELECT kind, id, revision FROM registry_tombstones WHERE deleted_at < $1 \
                 ORDER BY revision LIMIT $2",
            )
            .bind(tombstones_before)
            .bind(PRUNE_BATCH)
            .fetch_all(&mut *write.tx)
            .await?;
            let mut through = 0i64;
            for row in &old {
                let revision: i64 = row.try_get("revision")?;
                through = through.max(revision);
                sqlx::query("DELETE FROM registry_tombstones WHERE kind = $1 AND id = $2")
                    .bind(row.try_get::<String, _>("kind")?)
                    .bind(row.try_get::<String, _>("id")?)
                    .execute(&mut *write.tx)
                    .await?;
            }
            sqlx::query(
                "UPDATE registry_revision SET tombstones_pruned_through = $1 \
                 WHERE id = 1 AND tombstones_pruned_through < $1",
            )
            .bind(through)
            .execute(&mut *write.tx)
            .await?;
            pruned.tombstones = u64::try_from(old.len()).unwrap_or(0);
        }
        if tokens_due > 0 {
            let expired = sqlx::query(
                "SELECT id FROM tokens WHERE expires_at < $1 ORDER BY expires_at LIMIT $2",
            )
            .bind(expired_before)
            .bind(PRUNE_BATCH)
            .fetch_all(&mut *write.tx)
            .await?;
            for row in &expired {
                let id: String = row.try_get("id")?;
                sqlx::query("DELETE FROM tokens WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *write.tx)
                    .await?;
                write.tombstone("token", &id, now).await?;
            }
            pruned.tokens = u64::try_from(expired.len()).unwrap_or(0);
        }
        write.commit().await?;
        Ok(pruned)
    }

    /// Every tenant's id and backend names, whatever the schema version (`check-config`).
    pub async fn tenant_backends(&self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let rows = sqlx::query("SELECT id, backends FROM tenants ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let backends = from_json("backends", &row.try_get::<String, _>("backends")?)?;
                Ok((id, backends))
            })
            .collect()
    }

    /// Tells the other replicas that the registry changed (PostgreSQL NOTIFY; SQLite has
    /// one replica and nothing to tell).
    pub async fn notify_change(&self) {
        if self.postgres_url.is_some() {
            if let Err(err) = sqlx::query("SELECT pg_notify('promgate_registry', '')")
                .execute(&self.pool)
                .await
            {
                tracing::warn!(error = %err, "could not notify the other replicas; they will poll");
            }
        }
    }

    /// Calls `on_change` whenever another replica notifies a registry change, for as long as
    /// the process runs; reconnects after errors. Does nothing on SQLite.
    pub fn spawn_change_listener(&self, on_change: impl Fn() + Send + 'static) {
        let Some(url) = self.postgres_url.clone() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if listener.listen("promgate_registry").await.is_ok() {
                            while listener.recv().await.is_ok() {
                                on_change();
                            }
                        }
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "registry change listener cannot connect")
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// Records this replica's heartbeat at `now`, counting until `expires_at`, and returns
    /// how many replicas' heartbeats count at `now` (this one included). Each replica says
    /// how long its own heartbeat counts, as it follows that replica's `poll_interval`; rows
    /// of a version that did not say count for [`LEGACY_REPLICA_EXPIRY_SECONDS`]. Rows
    /// silent for an hour are removed.
    pub async fn heartbeat(
        &self,
        replica_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<usize, StoreError> {
        sqlx::query(
            "INSERT INTO replicas (id, heartbeat_at, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at",
        )
        .bind(replica_id)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM replicas WHERE heartbeat_at < $1 AND expires_at < $2")
            .bind(now - 3600)
            .bind(now)
            .execute(&self.pool)
            .await?;
        let live: i64 = sqlx::query(
            "SELECT COUNT(*) AS live FROM replicas \
             WHERE expires_at >= $1 OR (expires_at = 0 AND heartbeat_at >= $2)",
        )
        .bind(now)
        .bind(now - LEGACY_REPLICA_EXPIRY_SECONDS)
        .fetch_one(&self.pool)
        .await?
        .try_get("live")?;
        Ok(usize::try_from(live).unwrap_or(1).max(1))
    }

    pub async fn insert_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit_log (at, actor, action, target, source, result) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(entry.at)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(&entry.source)
            .bind(i64::from(entry.result))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, target, source, result FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    source: row.try_get("source")?,
                    result: u16::try_from(row.try_get::<i64, _>("result")?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Removes this replica's heartbeat (clean shutdown).
    pub async fn leave(&self, replica_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(replica_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every tenant with its identities. Rows are decoded as they arrive, so loading a
    /// large registry never holds every raw row at once.
    pub async fn load_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut tenants = Vec::new();
        let mut rows = sqlx::query(
            "SELECT id, label_value, extra_labels, limits, backends, status, write_relabel_configs, created_at, updated_at, version \
             FROM tenants ORDER BY id",
        )
        .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            tenants.push(tenant_from_row(&row)?);
        }
        drop(rows);
        let index: HashMap<String, usize> = tenants
            .iter()
            .enumerate()
            .map(|(at, tenant)| (tenant.id.clone(), at))
            .collect();
        let mut identities = 0usize;
        let mut rows =
            sqlx::query("SELECT identity, tenant_id FROM tenant_identities ORDER BY identity")
                .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            identities += 1;
            let tenant_id: String = row.try_get("tenant_id")?;
            if let Some(&at) = index.get(&tenant_id) {
                tenants[at].identities.push(row.try_get("identity")?);
            }
        }
        self.count_rows(tenants.len() + identities);
        Ok(tenants)
    }

    /// Every issued token, decoded as the rows arrive.
    pub async fn load_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut tokens = Vec::new();
        let mut rows = sqlx::query(
            "SELECT id, tenant_id, description, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at, id",
        )
        .fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            tokens.push(token_from_row(&row)?);
        }
        self.count_rows(tokens.len());
        Ok(tokens)
    }

    pub async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO tokens (id, tenant_id, description, created_at, expires_at, revoked_at, revision) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6)",
        )
        .bind(&token.id)
        .bind(&token.tenant_id)
        .bind(&token.description)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(write.revision)
        .execute(&mut *write.tx)
        .await
        .map_err(|err| conflict_or(err, || "token id collision".to_string()))?;
        write.commit().await
    }

    /// Marks a token revoked; revoking twice keeps the first time.
    pub async fn revoke_token(
        &self,
        tenant_id: &str,
        token_id: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        let mut write = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $3), revision = $4 \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(token_id)
        .bind(at)
        .bind(write.revision)
        .execute(&mut *write.tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        write.commit().await
    }
}

/// One admin write to the tenants: a transaction that reads the current rows (never the
/// cache) and writes back only onto the version it read. Dropped without
/// [`TenantWrite::commit`], it rolls back.
pub struct TenantWrite {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// The registry revision this write stamps its rows with.
    revision: i64,
}

impl TenantWrite {
    /// Records that `kind` (`tenant` or `token`) `id` was deleted at this write's revision.
    async fn tombstone(&mut self, kind: &str, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO registry_tombstones (kind, id, revision, deleted_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (kind, id) DO UPDATE SET revision = excluded.revision, deleted_at = excluded.deleted_at",
        )
        .bind(kind)
        .bind(id)
        .bind(self.revision)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// The tenant as the database holds it now, with its identities.
    pub async fn tenant(&mut self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query(
            "SELECT id, label_value, extra_labels, limits, backends, status, write_relabel_configs, created_at, updated_at, version \
             FROM tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut tenant = tenant_from_row(&row)?;
        let identities = sqlx::query(
            "SELECT identity FROM tenant_identities WHERE tenant_id = $1 ORDER BY identity",
        )
        .bind(id)
        .fetch_all(&mut *self.tx)
        .await?;
        for row in identities {
            tenant.identities.push(row.try_get("identity")?);
        }
        Ok(Some(tenant))
    }

    /// Inserts a new tenant at version 1 with its identities. Conflict when the id, the
    /// `label_value` or an identity is taken.
    pub async fn insert_tenant(&mut self, tenant: &Tenant) -> Result<(), StoreError> {
        let exists = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(&tenant.id)
            .fetch_optional(&mut *self.tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!(
                "tenant {:?} already exists",
                tenant.id
            )));
        }
        self.refuse_taken_label_value(tenant).await?;
        bind_tenant_columns(
            sqlx::query(
                "INSERT INTO tenants (id, label_value, extra_labels, limits, backends, status, write_relabel_configs, created_at, updated_at, version, revision) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            ),
            tenant,
        )
        .bind(tenant.created_at)
        .bind(tenant.updated_at)
        .bind(tenant.version)
        .bind(self.revision)
        .execute(&mut *self.tx)
        .await
        .map_err(|err| tenant_conflict_or(err, tenant))?;
        insert_identities(&mut self.tx, tenant).await
    }

    /// Writes `tenant` (already at its new version) over the row if that row is still at
    /// `expected_version`, and replaces its identities. False when another writer changed
    /// or deleted the row since it was read: nothing was written.
    pub async fn replace_tenant(
        &mut self,
        tenant: &Tenant,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        self.refuse_taken_label_value(tenant).await?;
        let updated = bind_tenant_columns(
            sqlx::query(
                "UPDATE tenants SET label_value = $2, extra_labels = $3, limits = $4, backends = $5, status = $6, \
                 write_relabel_configs = $7, updated_at = $8, version = $9, revision = $11 WHERE id = $1 AND version = $10",
            ),
            tenant,
        )
        .bind(tenant.updated_at)
        .bind(tenant.version)
        .bind(expected_version)
        .bind(self.revision)
        .execute(&mut *self.tx)
        .await
        .map_err(|err| tenant_conflict_or(err, tenant))?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM tenant_identities WHERE tenant_id = $1")
            .bind(&tenant.id)
            .execute(&mut *self.tx)
            .await?;
        insert_identities(&mut self.tx, tenant).await?;
        Ok(true)
    }

    /// Deletes a tenant with its identities and tokens if it is still at
    /// `expected_version`; false when another writer changed or deleted it since.
    pub async fn delete_tenant(
        &mut self,
        id: &str,
        expected_version: i64,
    ) -> Result<bool, StoreError> {
        for statement in [
            "DELETE FROM tokens WHERE tenant_id = $1",
            "DELETE FROM tenant_identities WHERE tenant_id = $1",
        ] {
            sqlx::query(statement)
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM tenants WHERE id = $1 AND version = $2")
            .bind(id)
            .bind(expected_version)
            .execute(&mut *self.tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        self.tombstone("tenant", id, unix_now()).await?;
        Ok(true)
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Conflict when another tenant already has `tenant`'s `label_value` (the unique index
    /// catches the writer that checks at the same moment).
    async fn refuse_taken_label_value(&mut self, tenant: &Tenant) -> Result<(), StoreError> {
        let owner = sqlx::query("SELECT id FROM tenants WHERE label_value = $1 AND id <> $2")
            .bind(&tenant.label_value)
            .bind(&tenant.id)
            .fetch_optional(&mut *self.tx)
            .await?;
        if let Some(owner) = owner {
            let owner: String = owner.try_get("id")?;
            return Err(StoreError::Conflict(label_value_taken(
                &tenant.label_value,
                &owner,
            )));
        }
        Ok(())
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

fn label_value_taken(label_value: &str, owner: &str) -> String {
    format!("label_value {label_value:?} is already used by tenant {owner:?}; each tenant needs its own")
}

/// A unique violation on `tenants`: the id or, for a writer that raced past the check,
/// the `label_value`.
fn tenant_conflict_or(err: sqlx::Error, tenant: &Tenant) -> StoreError {
    let on_label_value =
        matches!(&err, sqlx::Error::Database(db) if db.message().contains("label_value"));
    conflict_or(err, || {
        if on_label_value {
            format!(
                "label_value {:?} is already used by another tenant; each tenant needs its own",
                tenant.label_value
            )
        } else {
            format!("tenant {:?} already exists", tenant.id)
        }
    })
}

async fn insert_identities(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &Tenant,
) -> Result<(), StoreError> {
    for identity in &tenant.identities {
        let owner = sqlx::query("SELECT tenant_id FROM tenant_identities WHERE identity = $1")
            .bind(identity)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(owner) = owner {
            let owner: String = owner.try_get("tenant_id")?;
            return Err(StoreError::Conflict(format!(
                "identity {identity:?} belongs to tenant {owner:?}"
            )));
        }
        sqlx::query("INSERT INTO tenant_identities (identity, tenant_id) VALUES ($1, $2)")
            .bind(identity)
            .bind(&tenant.id)
            .execute(&mut **tx)
            .await
            .map_err(|err| {
                conflict_or(err, || format!("identity {identity:?} is registered twice"))
            })?;
    }
    Ok(())
}

/// Binds `$1`…`$7`: id, label_value, extra_labels, limits, backends, status,
/// write_relabel_configs.
fn bind_tenant_columns<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    tenant: &'q Tenant,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(&tenant.id)
        .bind(&tenant.label_value)
        .bind(to_json(&tenant.extra_labels))
        .bind(to_json(&tenant.limits))
        .bind(to_json(&tenant.backends))
        .bind(tenant.status.as_str())
        .bind(to_json(&tenant.write_relabel_configs))
}

fn conflict_or(err: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(message()),
        _ => StoreError::Database(err),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Maps, vectors of strings and LimitOverrides always serialise.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

fn from_json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt(format!("{column}: {err}")))
}

fn tenant_from_row(row: &AnyRow) -> Result<Tenant, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Tenant {
        id: row.try_get("id")?,
        label_value: row.try_get("label_value")?,
        extra_labels: from_json("extra_labels", &row.try_get::<String, _>("extra_labels")?)?,
        limits: from_json("limits", &row.try_get::<String, _>("limits")?)?,
        identities: Vec::new(),
        backends: from_json("backends", &row.try_get::<String, _>("backends")?)?,
        status: TenantStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status:?}")))?,
        write_relabel_configs: from_json(
            "write_relabel_configs",
            &row.try_get::<String, _>("write_relabel_configs")?,
        )?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::TenantStatus;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("registry.db").display());
        let store = Store::open(&url).await.expect("store");
        (dir, store)
    }

    fn tenant(id: &str) -> Tenant {
        Tenant {
            id: id.into(),
            label_value: id.into(),
            extra_labels: Default::default(),
            limits: Default::default(),
            identities: vec![format!("spiffe://example.org/{id}")],
            backends: vec![],
            status: TenantStatus::Active,
            write_relabel_configs: Vec::new(),
            created_at: 1,
            updated_at: 1,
            version: 1,
        }
    }

    fn token(id: &str, tenant_id: &str, expires_at: i64) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            tenant_id: tenant_id.into(),
            description: String::new(),
            created_at: 1,
            expires_at,
            revoked_at: None,
        }
    }

    async fn create(store: &Store, tenant: &Tenant) {
        let mut write = store.begin_write().await.expect("begin");
        write.insert_tenant(tenant).await.expect("insert");
        write.commit().await.expect("commit");
    }

    fn since(changes: Changes) -> (i64, Vec<Change>) {
        match changes {
            Changes::Since { revision, changes } => (revision, changes),
            Changes::Reload => panic!("asked to reload"),
        }
    }

    #[tokio::test]
    async fn changes_come_in_revision_order_with_deletes() {
        let (_dir, store) = store().await;
        let start = store.snapshot().await.expect("snapshot").revision;
        let alpha = tenant("alpha");
        create(&store, &alpha).await;
        store
            .insert_token(&token("t1", "alpha", 100))
            .await
            .expect("token");
        store.revoke_token("alpha", "t1", 50).await.expect("revoke");
        let mut write = store.begin_write().await.expect("begin");
        assert!(write.delete_tenant("alpha", 1).await.expect("delete"));
        write.commit().await.expect("commit");
        create(&store, &alpha).await;

        let (revision, changes) = since(store.changes_since(start).await.expect("changes"));
        assert_eq!(revision, start + 5);
        // The token row is gone with its tenant; the re-created tenant comes after the
        // tombstone, so applying in order leaves it in place.
        assert_eq!(
            changes,
            vec![
                Change::TenantDeleted("alpha".into()),
                Change::Tenant(Box::new(alpha))
            ]
        );
        let (same, nothing) = since(store.changes_since(revision).await.expect("changes"));
        assert_eq!((same, nothing), (revision, vec![]));
    }

    #[tokio::test]
    async fn a_poll_reads_one_row_plus_the_changes() {
        let (_dir, store) = store().await;
        for n in 0..200 {
            create(&store, &tenant(&format!("t{n}"))).await;
        }
        let start = store.snapshot().await.expect("snapshot").revision;
        let before = store.rows_read();
        store.changes_since(start).await.expect("changes");
        assert_eq!(
            store.rows_read() - before,
            1,
            "nothing changed: the revision only"
        );
        let mut write = store.begin_write().await.expect("begin");
        let mut changed = write.tenant("t7").await.expect("read").expect("t7");
        changed.status = TenantStatus::Disabled;
        changed.version = 2;
        assert!(write.replace_tenant(&changed, 1).await.expect("replace"));
        write.commit().await.expect("commit");
        store
            .insert_token(&token("x", "t9", 100))
            .await
            .expect("token");
        let before = store.rows_read();
        let (_, changes) = since(store.changes_since(start).await.expect("changes"));
        assert_eq!(changes.len(), 2);
        // revision + tenant + its identity + token.
        assert_eq!(store.rows_read() - before, 4);
        assert!(
            matches!(&changes[0], Change::Tenant(t) if t.status == TenantStatus::Disabled && t.identities.len() == 1)
        );
    }

    #[tokio::test]
    async fn expired_tokens_are_pruned_after_the_grace_and_followed() {
        let (_dir, store) = store().await;
        create(&store, &tenant("alpha")).await;
        store
            .insert_token(&token("old", "alpha", 1_000))
            .await
            .expect("token");
        store
            .insert_token(&token("recent", "alpha", 5_000))
            .await
            .expect("token");
        let start = store.snapshot().await.expect("snapshot").revision;
        // At 6 000 with a grace of 2 000: "old" expired 5 000 s ago, "recent" 1 000 s ago.
        let pruned = store.prune(6_000, 4_000, 0).await.expect("prune");
        assert_eq!(
            pruned,
            Pruned {
                tokens: 1,
                tombstones: 0
            }
        );
        let (revision, changes) = since(store.changes_since(start).await.expect("changes"));
        assert_eq!(changes, vec![Change::TokenDeleted("old".into())]);
        let left: Vec<String> = store
            .load_tokens()
            .await
            .expect("tokens")
            .into_iter()
            .map(|token| token.id)
            .collect();
        assert_eq!(left, vec!["recent".to_string()]);
        assert_eq!(
            store.prune(6_000, 4_000, 0).await.expect("prune"),
            Pruned::default(),
            "nothing left to prune: no write at all"
        );
        assert_eq!(store.revision().await.expect("revision").0, revision);
        // Once the tombstone is pruned too, a replica still behind it must reload.
        let pruned = store.prune(6_000, 0, i64::MAX).await.expect("prune");
        assert_eq!(pruned.tombstones, 1);
        assert!(matches!(
            store.changes_since(start).await.expect("changes"),
            Changes::Reload
        ));
        assert!(matches!(
            store.changes_since(revision + 1).await.expect("changes"),
            Changes::Since { .. }
        ));
    }

    #[tokio::test]
    async fn heartbeats_count_for_as_long_as_their_sender_says() {
        let (_dir, store) = store().await;
        // Two replicas polling every 10 s (heartbeats count for 30 s): at any moment
        // between their heartbeats both count, however long the poll interval.
        let expiry = i64::try_from(
            crate::tenant::registry::replica_expiry(std::time::Duration::from_secs(10)).as_secs(),
        )
        .expect("seconds");
        assert_eq!(
            store
                .heartbeat("a", 1_000, 1_000 + expiry)
                .await
                .expect("hb"),
            1
        );
        assert_eq!(
            store
                .heartbeat("b", 1_003, 1_003 + expiry)
                .await
                .expect("hb"),
            2
        );
        assert_eq!(
            store
                .heartbeat("a", 1_010, 1_010 + expiry)
                .await
                .expect("hb"),
            2
        );
        assert_eq!(
            store
                .heartbeat("a", 1_020, 1_020 + expiry)
                .await
                .expect("hb"),
            2
        );
        // b stopped after 1 003: it no longer counts once its heartbeat expires.
        assert_eq!(
            store
                .heartbeat("a", 1_040, 1_040 + expiry)
                .await
                .expect("hb"),
            1
        );
        // A heartbeat row of an older version (no expiry) counts for 5 s.
        sqlx::query("INSERT INTO replicas (id, heartbeat_at) VALUES ('old', 1040)")
            .execute(&store.pool)
            .await
            .expect("insert");
        assert_eq!(
            store
                .heartbeat("a", 1_044, 1_044 + expiry)
                .await
                .expect("hb"),
            2
        );
        assert_eq!(
            store
                .heartbeat("a", 1_046, 1_046 + expiry)
                .await
                .expect("hb"),
            1
        );
    }
}
