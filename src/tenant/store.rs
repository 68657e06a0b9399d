//! The tenant registry in SQL through sqlx's `Any` driver, so callers see one type
//! whichever engine backs it. Only the admin API and start-up touch the database; the
//! request path reads [`super::Registry`]'s cache.
//!
//! Every query binds its parameters (`$1`…); no string is ever spliced into SQL.
//!
//! Admin writes go through [`TenantWrite`], one transaction that reads the current row and
//! writes back only onto the version it read (optimistic concurrency), so replicas sharing
//! the database never undo each other's changes.

use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Row};

use super::{Tenant, TenantStatus, TokenRecord};

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
        let store = Store { pool, postgres_url };
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
        Ok(Store { pool, postgres_url })
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
    pub async fn begin_write(&self) -> Result<TenantWrite, StoreError> {
        let tx = if self.is_postgres() {
            self.pool.begin().await?
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        };
        Ok(TenantWrite { tx })
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

    /// Records this replica's heartbeat at `now` and returns how many replicas sent one
    /// since `live_since` (this one included). Rows silent for long are removed.
    pub async fn heartbeat(
        &self,
        replica_id: &str,
        now: i64,
        live_since: i64,
    ) -> Result<usize, StoreError> {
        sqlx::query(
            "INSERT INTO replicas (id, heartbeat_at) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(replica_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM replicas WHERE heartbeat_at < $1")
            .bind(now - 3600)
            .execute(&self.pool)
            .await?;
        let live: i64 =
            sqlx::query("SELECT COUNT(*) AS live FROM replicas WHERE heartbeat_at >= $1")
                .bind(live_since)
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

    pub async fn load_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, label_value, extra_labels, limits, backends, status, created_at, updated_at, version \
             FROM tenants ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let identity_rows =
            sqlx::query("SELECT identity, tenant_id FROM tenant_identities ORDER BY identity")
                .fetch_all(&self.pool)
                .await?;
        let mut tenants = rows
            .iter()
            .map(tenant_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        for row in identity_rows {
            let identity: String = row.try_get("identity")?;
            let tenant_id: String = row.try_get("tenant_id")?;
            if let Some(tenant) = tenants.iter_mut().find(|t| t.id == tenant_id) {
                tenant.identities.push(identity);
            }
        }
        Ok(tenants)
    }

    pub async fn load_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, description, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    pub async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, tenant_id, description, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(&token.id)
        .bind(&token.tenant_id)
        .bind(&token.description)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|err| conflict_or(err, || "token id collision".to_string()))?;
        Ok(())
    }

    /// Marks a token revoked; revoking twice keeps the first time.
    pub async fn revoke_token(
        &self,
        tenant_id: &str,
        token_id: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $3) WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(token_id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

/// One admin write to the tenants: a transaction that reads the current rows (never the
/// cache) and writes back only onto the version it read. Dropped without
/// [`TenantWrite::commit`], it rolls back.
pub struct TenantWrite {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl TenantWrite {
    /// The tenant as the database holds it now, with its identities.
    pub async fn tenant(&mut self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query(
            "SELECT id, label_value, extra_labels, limits, backends, status, created_at, updated_at, version \
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
                "INSERT INTO tenants (id, label_value, extra_labels, limits, backends, status, created_at, updated_at, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            ),
            tenant,
        )
        .bind(tenant.created_at)
        .bind(tenant.updated_at)
        .bind(tenant.version)
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
                 updated_at = $7, version = $8 WHERE id = $1 AND version = $9",
            ),
            tenant,
        )
        .bind(tenant.updated_at)
        .bind(tenant.version)
        .bind(expected_version)
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
        Ok(deleted.rows_affected() > 0)
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

/// Binds `$1`…`$6`: id, label_value, extra_labels, limits, backends, status.
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
