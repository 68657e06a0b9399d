//! The in-memory view of the registry that the request path reads (never the
//! database), and the admin operations that change both. Admin writes go to the
//! database first and then to the cache, one at a time.
//!
//! Every replica loads the registry once at start-up and then follows its changes: each
//! poll reads only what changed since the revision the cache holds (see [`super::store`]
//! for the change sequence and why it cannot miss a late commit), so a poll costs one row
//! plus one per change whether the registry holds a thousand tenants or a hundred
//! thousand. Revocations and disabled tenants reach every replica within a poll (on
//! PostgreSQL within a notification). Lookups are hash-map reads of shared entries; the
//! request path never clones a tenant or a token.
//!
//! Each replica also sends a heartbeat every poll interval from a task of its own; a
//! tenant's rates are divided among the replicas whose heartbeat still counts (DESIGN §8).
//! A heartbeat counts for [`replica_expiry`] of the sender's poll interval, so a long
//! interval or a slow poll never makes the replicas think they are alone.
//!
//! An admin write reads the tenant's current row inside its database transaction, applies
//! only what the caller changes, and writes back onto the version it read (optimistic
//! concurrency): a write another replica made in between is never undone. When the version
//! moved, the write is retried on the new row a bounded number of times, or refused when
//! the caller named the version it expected (`If-Match`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use super::store::{Change, Changes, Store, StoreError};
use super::{validate_tenant, Tenant, TokenRecord};
use crate::codec::write::LabelPolicy;
use crate::config::{Config, Limits, TenancyConfig};
use crate::series::relabel::RelabelRules;
use crate::telemetry::RegistryMetrics;

/// A tenant as the request path needs it: with its label policy, effective limits and
/// backend indices worked out once, when the tenant changes.
#[derive(Debug)]
pub struct TenantEntry {
    pub tenant: Tenant,
    pub policy: LabelPolicy,
    pub limits: Limits,
    /// Indices into the configured backends this tenant writes to: the configured ones
    /// among those it names (every backend when it names none). Empty when every backend
    /// it names is gone from the config; its writes are then refused (DESIGN §9), never
    /// answered 2xx for going nowhere.
    pub backends: Vec<usize>,
    /// Backend names the tenant lists that the config does not have (in the tenant's
    /// order); logged when the tenant is loaded or changes.
    pub unknown_backends: Vec<String>,
    /// The tenant's usage counters (DESIGN §17): the same ones across changes of its
    /// record, so nothing counted is lost when the entry is rebuilt.
    pub usage: Arc<crate::usage::TenantUsage>,
    /// The tenant's `write_relabel_configs`, compiled once (empty when it has none).
    pub relabel: RelabelRules,
}

/// What an admin write expects of the tenant's current version (`If-Match`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// None: the change applies to whatever the database holds now.
    Unconditional,
    /// `If-Match: *`: the tenant must exist, at any version.
    Exists,
    /// The tenant must be at one of these versions (an empty list matches nothing).
    AtVersion(Vec<i64>),
}

impl Precondition {
    pub fn admits(&self, version: i64) -> bool {
        match self {
            Precondition::Unconditional | Precondition::Exists => true,
            Precondition::AtVersion(versions) => versions.contains(&version),
        }
    }

    /// The tenant as found, if it exists and satisfies the precondition. A missing tenant is
    /// 404 without a precondition and 412 with one (RFC 9110 §13.1.1).
    fn check_exists(&self, id: &str, found: Option<Tenant>) -> Result<Tenant, RegistryError> {
        let Some(tenant) = found else {
            return Err(match self {
                Precondition::Unconditional => RegistryError::NotFound(format!("tenant {id:?}")),
                _ => RegistryError::PreconditionFailed(format!(
                    "tenant {id:?} does not exist, so If-Match cannot hold"
                )),
            });
        };
        if self.admits(tenant.version) {
            Ok(tenant)
        } else {
            Err(RegistryError::PreconditionFailed(format!(
                "tenant {id:?} is at version {}, not one If-Match names; GET it and retry",
                tenant.version
            )))
        }
    }
}

/// How often an unconditional admin write is tried again when another replica changed the
/// tenant between its read and its write.
const MAX_WRITE_ATTEMPTS: usize = 5;

/// The configured backends (indices) among the names a tenant lists (every one when it
/// lists none), and the names it lists that are not configured.
fn resolve_backends(named: &[String], configured: &[String]) -> (Vec<usize>, Vec<String>) {
    let indices = configured
        .iter()
        .enumerate()
        .filter(|(_, name)| named.is_empty() || named.contains(name))
        .map(|(index, _)| index)
        .collect();
    let unknown = named
        .iter()
        .filter(|name| !configured.contains(name))
        .cloned()
        .collect();
    (indices, unknown)
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    /// `If-Match` names a version the tenant is no longer (or never was) at.
    #[error("{0}")]
    PreconditionFailed(String),
    /// Other writers kept changing the tenant for every attempt; the caller may retry.
    #[error("{0}")]
    Contended(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for RegistryError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(message) => RegistryError::Conflict(message),
            other => RegistryError::Store(other),
        }
    }
}

/// Names what was missing when the store found no row.
fn not_found_as(err: StoreError, what: impl FnOnce() -> String) -> RegistryError {
    match err {
        StoreError::NotFound => RegistryError::NotFound(what()),
        other => other.into(),
    }
}

pub struct Registry {
    store: Store,
    /// What tenants' entries are worked out from; replaced by a config reload.
    settings: parking_lot::RwLock<Settings>,
    tenants: DashMap<String, Arc<TenantEntry>>,
    /// Tokens by id (`jti`), revoked ones included so they can be listed.
    tokens: DashMap<Arc<str>, Arc<TokenRecord>>,
    /// Token ids by tenant: listing a tenant's tokens or dropping them with the tenant
    /// never walks every token.
    tokens_by_tenant: DashMap<String, HashSet<Arc<str>>>,
    /// mTLS identity (URI or DNS SAN) → tenant id.
    identities: DashMap<String, String>,
    /// Serialises admin writes and polls so the cache never runs ahead of or behind the
    /// database.
    admin_writes: tokio::sync::Mutex<()>,
    /// The registry revision the cache holds every change up to (see [`super::store`]).
    revision: AtomicI64,
    /// False while the last poll of the database failed: unknown identities then get
    /// 503 (retryable) rather than 401.
    store_healthy: AtomicBool,
    /// This process among the replicas sharing the database.
    replica_id: String,
    /// Replicas whose heartbeat counts now (at least 1: this one).
    live_replicas: AtomicUsize,
    /// Every tenant's usage counters in this process (DESIGN §17).
    usage: Arc<crate::usage::Ledger>,
    /// How long an expired token is kept before it is pruned.
    expired_token_retention: i64,
    metrics: RegistryMetrics,
}

/// How long a replica's heartbeat counts, for replicas that send one every
/// `poll_interval`: three intervals (two heartbeats may be missed, e.g. while the database
/// is slow), and never less than 5 s. A heartbeat that lapsed before the next one is sent
/// would make the other replicas count one replica too few and each take a larger share of
/// every tenant's limit.
pub fn replica_expiry(poll_interval: Duration) -> Duration {
    (poll_interval * 3).max(Duration::from_secs(5))
}

/// How often each replica prunes expired tokens and old tombstones.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Pruning batches in one pass at most (the rest waits for the next pass).
const MAX_PRUNE_BATCHES: usize = 100;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The parts of the config a tenant's entry is worked out from.
struct Settings {
    tenancy: TenancyConfig,
    default_limits: Limits,
    backend_names: Vec<String>,
}

impl Settings {
    fn of(config: &Config) -> Settings {
        Settings {
            tenancy: config.tenancy.clone(),
            default_limits: config.limits.clone(),
            backend_names: config.backend_names().map(str::to_string).collect(),
        }
    }
}

impl Registry {
    /// Loads every tenant and token from `store` into memory.
    pub async fn load(store: Store, config: &Config) -> Result<Registry, StoreError> {
        let metrics = RegistryMetrics {
            rows_read: store.rows_read_counter(),
            ..RegistryMetrics::default()
        };
        let registry = Registry {
            store,
            settings: parking_lot::RwLock::new(Settings::of(config)),
            tenants: DashMap::new(),
            tokens: DashMap::new(),
            tokens_by_tenant: DashMap::new(),
            identities: DashMap::new(),
            admin_writes: tokio::sync::Mutex::new(()),
            revision: AtomicI64::new(0),
            store_healthy: AtomicBool::new(true),
            replica_id: new_replica_id(),
            live_replicas: AtomicUsize::new(1),
            usage: Arc::new(crate::usage::Ledger::new()),
            expired_token_retention: i64::try_from(
                config.storage.expired_token_retention.as_secs(),
            )
            .unwrap_or(i64::MAX),
            metrics,
        };
        let snapshot = registry.store.snapshot().await?;
        registry.replace_all(snapshot);
        registry.metrics.last_successful_poll.set(unix_now() as f64);
        Ok(registry)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The registry's health metrics (registered by the caller).
    pub fn metrics(&self) -> &RegistryMetrics {
        &self.metrics
    }

    pub fn store_healthy(&self) -> bool {
        self.store_healthy.load(Ordering::Relaxed)
    }

    /// The registry revision the cache holds every change up to.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// Reads what other replicas changed since the last poll and applies it: the database
    /// work is one row plus one per change, whatever the registry's size. Falls back to
    /// reading everything only when the changes cannot be followed (tombstones pruned
    /// while this replica was cut off). On failure the cache stays as it was.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _guard = self.admin_writes.lock().await;
        let started = std::time::Instant::now();
        let result = self.follow().await;
        match &result {
            Ok(()) => {
                self.metrics
                    .poll_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.last_successful_poll.set(unix_now() as f64);
                if !self.store_healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("registry database reachable again");
                }
            }
            Err(err) => {
                self.metrics.poll_errors.inc();
                if self.store_healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %err, "registry database unavailable; serving cached tenants and tokens");
                }
            }
        }
        result
    }

    async fn follow(&self) -> Result<(), StoreError> {
        match self.store.changes_since(self.revision()).await? {
            Changes::Since { revision, changes } => {
                for change in changes {
                    self.apply(change);
                }
                self.revision.store(revision, Ordering::Relaxed);
            }
            Changes::Reload => {
                tracing::warn!(
                    revision = self.revision(),
                    "registry changes cannot be followed from this revision (their tombstones were pruned); reloading every tenant and token"
                );
                self.metrics.full_reloads.inc();
                let snapshot = self.store.snapshot().await?;
                self.replace_all(snapshot);
            }
        }
        self.update_gauges();
        Ok(())
    }

    fn apply(&self, change: Change) {
        match change {
            Change::Tenant(tenant) => {
                if self
                    .tenant(&tenant.id)
                    .is_none_or(|cached| cached.tenant != *tenant)
                {
                    self.cache_tenant(*tenant);
                }
            }
            Change::TenantDeleted(id) => self.forget_tenant(&id),
            Change::Token(token) => self.cache_token(token),
            Change::TokenDeleted(id) => self.forget_token(&id),
        }
    }

    /// Makes the cache hold exactly `snapshot`.
    fn replace_all(&self, snapshot: super::store::Snapshot) {
        let ids: HashSet<&str> = snapshot.tenants.iter().map(|t| t.id.as_str()).collect();
        let gone: Vec<String> = self
            .tenants
            .iter()
            .filter(|entry| !ids.contains(entry.key().as_str()))
            .map(|entry| entry.key().clone())
            .collect();
        for id in gone {
            self.forget_tenant(&id);
        }
        for tenant in snapshot.tenants {
            if self
                .tenant(&tenant.id)
                .is_none_or(|cached| cached.tenant != tenant)
            {
                self.cache_tenant(tenant);
            }
        }
        let token_ids: HashSet<&str> = snapshot.tokens.iter().map(|t| t.id.as_str()).collect();
        let gone: Vec<Arc<str>> = self
            .tokens
            .iter()
            .filter(|entry| !token_ids.contains(entry.key().as_ref()))
            .map(|entry| Arc::clone(entry.key()))
            .collect();
        for id in gone {
            self.forget_token(&id);
        }
        for token in snapshot.tokens {
            self.cache_token(token);
        }
        self.revision.store(snapshot.revision, Ordering::Relaxed);
        self.update_gauges();
    }

    /// Takes a reloaded config's tenancy, default limits and backends: every cached
    /// tenant's entry is worked out again, so new requests see them.
    pub async fn reconfigure(&self, config: &Config) {
        let _guard = self.admin_writes.lock().await;
        *self.settings.write() = Settings::of(config);
        let tenants: Vec<Tenant> = self
            .tenants
            .iter()
            .map(|entry| entry.tenant.clone())
            .collect();
        for tenant in tenants {
            self.cache_tenant(tenant);
        }
    }

    fn update_gauges(&self) {
        self.metrics.revision.set(self.revision());
        self.metrics.tenants.set(gauge_value(self.tenants.len()));
        self.metrics.tokens.set(gauge_value(self.tokens.len()));
    }

    fn cache_token(&self, token: TokenRecord) {
        let id: Arc<str> = match self.tokens.get(token.id.as_str()) {
            Some(existing) if **existing == token => return,
            Some(existing) => Arc::clone(existing.key()),
            None => Arc::from(token.id.as_str()),
        };
        self.tokens_by_tenant
            .entry(token.tenant_id.clone())
            .or_default()
            .insert(Arc::clone(&id));
        self.tokens.insert(id, Arc::new(token));
    }

    fn forget_token(&self, id: &str) {
        if let Some((id, token)) = self.tokens.remove(id) {
            self.tokens_by_tenant
                .remove_if_mut(&token.tenant_id, |_, ids| {
                    ids.remove(&id);
                    ids.is_empty()
                });
        }
    }

    fn forget_tenant(&self, id: &str) {
        if let Some((_, old)) = self.tenants.remove(id) {
            self.forget_identities(&old.tenant);
        }
        if let Some((_, ids)) = self.tokens_by_tenant.remove(id) {
            for token_id in ids {
                self.tokens.remove(&token_id);
            }
        }
    }

    /// Polls the registry every `interval` for as long as the process runs, and on
    /// PostgreSQL also as soon as another replica notifies a change (LISTEN/NOTIFY), so
    /// polling is only the fallback. Sends this replica's heartbeat every `interval` from a
    /// task of its own, so a slow poll never lets it lapse, and prunes expired tokens every
    /// few minutes.
    pub fn spawn_reload(self: &Arc<Self>, interval: Duration) {
        let heartbeats = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let _ = heartbeats.heartbeat(interval).await;
            }
        });
        let registry = Arc::clone(self);
        let wake = Arc::new(tokio::sync::Notify::new());
        let waker = Arc::clone(&wake);
        self.store.spawn_change_listener(move || waker.notify_one());
        tokio::spawn(async move {
            let mut last_prune: Option<std::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = wake.notified() => {}
                }
                let _ = registry.reload().await;
                if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                    last_prune = Some(std::time::Instant::now());
                    if let Err(err) = registry.prune(unix_now()).await {
                        tracing::warn!(error = %err, "pruning expired tokens failed; trying again later");
                    }
                }
            }
        });
    }

    /// Deletes tokens expired for longer than the retention and tombstones older than
    /// [`super::store::TOMBSTONE_RETENTION_SECONDS`] (a batch at a time), as of `now`, and
    /// applies what changed. Every replica follows the deletions like any other change.
    pub async fn prune(&self, now: i64) -> Result<super::store::Pruned, StoreError> {
        let mut total = super::store::Pruned::default();
        let full = u64::try_from(super::store::PRUNE_BATCH).unwrap_or(u64::MAX);
        // A backlog goes in batches, each its own short transaction.
        for _ in 0..MAX_PRUNE_BATCHES {
            let pruned = self
                .store
                .prune(
                    now,
                    now.saturating_sub(self.expired_token_retention),
                    now.saturating_sub(super::store::TOMBSTONE_RETENTION_SECONDS),
                )
                .await?;
            total.tokens += pruned.tokens;
            total.tombstones += pruned.tombstones;
            if pruned.tokens < full && pruned.tombstones < full {
                break;
            }
            tokio::task::yield_now().await;
        }
        if total.tokens > 0 {
            self.metrics.pruned_tokens.inc_by(total.tokens);
            tracing::info!(tokens = total.tokens, "pruned expired tokens");
        }
        if total != super::store::Pruned::default() {
            self.reload().await?;
        }
        Ok(total)
    }

    /// Every tenant's usage counters in this process.
    pub fn usage(&self) -> &Arc<crate::usage::Ledger> {
        &self.usage
    }

    /// This replica's id in the registry (new at every start).
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Replicas sharing a tenant's rate limits right now (at least 1).
    pub fn live_replicas(&self) -> usize {
        self.live_replicas.load(Ordering::Relaxed).max(1)
    }

    async fn heartbeat(&self, poll_interval: Duration) -> Result<(), StoreError> {
        let now = unix_now();
        let expiry = i64::try_from(replica_expiry(poll_interval).as_secs()).unwrap_or(i64::MAX);
        let live = self
            .store
            .heartbeat(&self.replica_id, now, now.saturating_add(expiry))
            .await?;
        let before = self.live_replicas.swap(live, Ordering::Relaxed);
        self.metrics.live_replicas.set(gauge_value(live));
        if before != live {
            tracing::info!(
                replicas = live,
                "live replicas changed; tenant rates are shared among them"
            );
        }
        Ok(())
    }

    /// Takes this replica out of the count (clean shutdown).
    pub async fn leave(&self) {
        let _ = self.store.leave(&self.replica_id).await;
    }

    pub fn tenant(&self, id: &str) -> Option<Arc<TenantEntry>> {
        self.tenants.get(id).map(|entry| Arc::clone(entry.value()))
    }

    pub fn token(&self, id: &str) -> Option<Arc<TokenRecord>> {
        self.tokens.get(id).map(|entry| Arc::clone(entry.value()))
    }

    /// Issued tokens in the cache.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    pub fn tenants(&self) -> Vec<Tenant> {
        let mut tenants: Vec<Tenant> = self
            .tenants
            .iter()
            .map(|entry| entry.tenant.clone())
            .collect();
        tenants.sort_by(|a, b| a.id.cmp(&b.id));
        tenants
    }

    pub fn tokens_of(&self, tenant_id: &str) -> Vec<TokenRecord> {
        let ids: Vec<Arc<str>> = self
            .tokens_by_tenant
            .get(tenant_id)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        let mut tokens: Vec<TokenRecord> = ids
            .iter()
            .filter_map(|id| self.tokens.get(id.as_ref()))
            .map(|entry| TokenRecord::clone(entry.value()))
            .collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        tokens
    }

    /// Creates a tenant at version 1. Conflict when its id, its `label_value` or one of its
    /// identities is taken, as the database holds them (not this replica's cache).
    pub async fn create_tenant(&self, mut tenant: Tenant) -> Result<Tenant, RegistryError> {
        tenant.version = 1;
        self.validate(&tenant, None)?;
        let _guard = self.admin_writes.lock().await;
        let mut write = self.store.begin_write().await?;
        write.insert_tenant(&tenant).await?;
        write.commit().await?;
        self.cache_tenant(tenant.clone());
        self.update_gauges();
        self.store.notify_change().await;
        Ok(tenant)
    }

    /// Applies `change` to the tenant as the database holds it now and writes the result
    /// back onto the version it was computed from; the id and creation time never change.
    /// `change` may run more than once (after another replica's write); it should set
    /// only the fields the caller asked to change.
    pub async fn update_tenant(
        &self,
        id: &str,
        precondition: &Precondition,
        change: impl Fn(&mut Tenant) -> Result<(), RegistryError>,
    ) -> Result<Tenant, RegistryError> {
        let _guard = self.admin_writes.lock().await;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let mut write = self.store.begin_write().await?;
            let current = precondition.check_exists(id, write.tenant(id).await?)?;
            let mut next = current.clone();
            change(&mut next)?;
            next.id = current.id.clone();
            next.created_at = current.created_at;
            next.version = current.version.saturating_add(1);
            self.validate(&next, Some(&current))?;
            if !write.replace_tenant(&next, current.version).await? {
                // Another replica wrote in between: read again (dropping rolls back).
                continue;
            }
            write.commit().await?;
            self.cache_tenant(next.clone());
            self.store.notify_change().await;
            return Ok(next);
        }
        Err(RegistryError::Contended(format!(
            "tenant {id:?} kept changing under concurrent writes; retry"
        )))
    }

    /// Deletes a tenant with its identities and tokens, if it satisfies `precondition`.
    pub async fn delete_tenant(
        &self,
        id: &str,
        precondition: &Precondition,
    ) -> Result<(), RegistryError> {
        let _guard = self.admin_writes.lock().await;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let mut write = self.store.begin_write().await?;
            let current = precondition.check_exists(id, write.tenant(id).await?)?;
            if !write.delete_tenant(id, current.version).await? {
                continue;
            }
            write.commit().await?;
            self.forget_tenant(id);
            self.update_gauges();
            self.store.notify_change().await;
            return Ok(());
        }
        Err(RegistryError::Contended(format!(
            "tenant {id:?} kept changing under concurrent writes; retry"
        )))
    }

    pub async fn add_token(&self, token: TokenRecord) -> Result<(), RegistryError> {
        let _guard = self.admin_writes.lock().await;
        if !self.tenants.contains_key(&token.tenant_id) {
            return Err(RegistryError::NotFound(format!(
                "tenant {:?}",
                token.tenant_id
            )));
        }
        self.store.insert_token(&token).await?;
        self.cache_token(token);
        self.update_gauges();
        self.store.notify_change().await;
        Ok(())
    }

    pub async fn revoke_token(
        &self,
        tenant_id: &str,
        token_id: &str,
        at: i64,
    ) -> Result<(), RegistryError> {
        let _guard = self.admin_writes.lock().await;
        self.store
            .revoke_token(tenant_id, token_id, at)
            .await
            .map_err(|err| {
                not_found_as(err, || {
                    format!("token {token_id:?} of tenant {tenant_id:?}")
                })
            })?;
        if let Some(mut token) = self.tokens.get_mut(token_id) {
            Arc::make_mut(&mut token).revoked_at.get_or_insert(at);
        }
        self.store.notify_change().await;
        Ok(())
    }

    /// The checks that need no other tenant (those the database makes: id, `label_value`
    /// and identities taken). Backend names are checked when they are set or changed, so a
    /// tenant whose backend left the config can still be disabled or relabelled.
    fn validate(&self, tenant: &Tenant, current: Option<&Tenant>) -> Result<(), RegistryError> {
        let backends_changed = current.is_none_or(|current| current.backends != tenant.backends);
        let settings = self.settings.read();
        let names: Vec<&str> = if backends_changed {
            settings.backend_names.iter().map(String::as_str).collect()
        } else {
            tenant.backends.iter().map(String::as_str).collect()
        };
        let mut problems = validate_tenant(tenant, &settings.tenancy.label, &names);
        drop(settings);
        let mut unique = tenant.identities.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != tenant.identities.len() {
            problems.push("identities: listed more than once".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RegistryError::Invalid(problems))
        }
    }

    fn cache_tenant(&self, tenant: Tenant) {
        let settings = self.settings.read();
        let policy = LabelPolicy::new(
            &settings.tenancy.label,
            &tenant.label_value,
            tenant.extra_labels.clone(),
            settings.tenancy.on_conflict,
        );
        let (backends, unknown_backends) =
            resolve_backends(&tenant.backends, &settings.backend_names);
        let limits = settings.default_limits.with(&tenant.limits);
        drop(settings);
        if !unknown_backends.is_empty() {
            if backends.is_empty() {
                tracing::error!(
                    tenant = %tenant.id,
                    unknown_backends = ?unknown_backends,
                    "tenant names only backends that are not configured; its writes are refused with 503 until its backends are changed"
                );
            } else {
                tracing::error!(
                    tenant = %tenant.id,
                    unknown_backends = ?unknown_backends,
                    "tenant names backends that are not configured; its writes go to its other backends only"
                );
            }
        }
        if let Some(old) = self.tenant(&tenant.id) {
            self.forget_identities(&old.tenant);
        }
        for identity in &tenant.identities {
            self.identities.insert(identity.clone(), tenant.id.clone());
        }
        let usage = self.usage.tenant(&tenant.id);
        // Rules were checked when the tenant was written; a record that no longer
        // compiles (written by another version) writes unrelabeled, loudly.
        let relabel = RelabelRules::compile(&tenant.write_relabel_configs).unwrap_or_else(|problems| {
            tracing::error!(
                tenant = %tenant.id,
                problems = ?problems,
                "tenant's write_relabel_configs do not compile; its series are written without relabeling until they are fixed"
            );
            RelabelRules::default()
        });
        let entry = TenantEntry {
            relabel,
            usage,
            limits,
            policy,
            backends,
            unknown_backends,
            tenant,
        };
        self.tenants
            .insert(entry.tenant.id.clone(), Arc::new(entry));
    }

    fn forget_identities(&self, tenant: &Tenant) {
        for identity in &tenant.identities {
            self.identities
                .remove_if(identity, |_, owner| *owner == tenant.id);
        }
    }

    /// The tenant an mTLS identity (URI or DNS SAN) is registered to.
    pub fn tenant_of_identity(&self, identity: &str) -> Option<String> {
        self.identities
            .get(identity)
            .map(|owner| owner.value().clone())
    }
}

/// A random id for this process among the registry's replicas.
fn new_replica_id() -> String {
    let mut bytes = [0u8; 8];
    // getrandom only fails when the OS has no entropy source at all; nothing secure
    // can run then.
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn a_tenant_naming_no_backend_writes_to_all() {
        let configured = names(&["b0", "b1"]);
        assert_eq!(resolve_backends(&[], &configured), (vec![0, 1], vec![]));
    }

    #[test]
    fn unknown_backends_are_listed_and_left_out() {
        let configured = names(&["b0", "b1", "b2"]);
        assert_eq!(
            resolve_backends(&names(&["b2", "gone", "b0"]), &configured),
            (vec![0, 2], names(&["gone"]))
        );
    }

    #[test]
    fn a_tenant_whose_backends_are_all_gone_has_none() {
        let configured = names(&["b0"]);
        let (backends, unknown) = resolve_backends(&names(&["old", "older"]), &configured);
        assert!(backends.is_empty(), "never every backend by default");
        assert_eq!(unknown, names(&["old", "older"]));
    }

    #[test]
    fn preconditions_admit_only_what_they_name() {
        assert!(Precondition::Unconditional.admits(7));
        assert!(Precondition::Exists.admits(7));
        assert!(Precondition::AtVersion(vec![3, 7]).admits(7));
        assert!(!Precondition::AtVersion(vec![6]).admits(7));
        assert!(!Precondition::AtVersion(vec![]).admits(1));
        let tenant = Tenant {
            id: "a".into(),
            label_value: "a".into(),
            extra_labels: Default::default(),
            limits: Default::default(),
            identities: vec![],
            backends: vec![],
            status: super::super::TenantStatus::Active,
            write_relabel_configs: Vec::new(),
            created_at: 0,
            updated_at: 0,
            version: 7,
        };
        assert!(matches!(
            Precondition::AtVersion(vec![6]).check_exists("a", Some(tenant.clone())),
            Err(RegistryError::PreconditionFailed(_))
        ));
        assert!(Precondition::Exists.check_exists("a", Some(tenant)).is_ok());
        assert!(matches!(
            Precondition::Exists.check_exists("a", None),
            Err(RegistryError::PreconditionFailed(_))
        ));
        assert!(matches!(
            Precondition::Unconditional.check_exists("a", None),
            Err(RegistryError::NotFound(_))
        ));
    }
}
