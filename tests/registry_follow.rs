//! The registry at scale (DESIGN §4, §11): replicas follow changes incrementally. On a
//! registry of 5 000 tenants and 10 000 tokens, on SQLite and on PostgreSQL, a poll after
//! N changes reads O(N) rows (counted, not timed), and every change (create, update,
//! disable, delete with its tokens, issue, revoke, prune) reaches the other replica. On
//! PostgreSQL, writers racing on two replicas while a third follows lose no change: the
//! follower ends up with exactly what the database holds. Expired tokens are pruned in
//! batches and followed. Two promgate binaries polling every 6 s (longer than the 5 s a
//! heartbeat used to count) keep counting each other.

mod common;
#[path = "common/registry_fill.rs"]
mod registry_fill;

use std::sync::Arc;

use common::postgres::Postgres;
use promgate::config::Config;
use promgate::tenant::registry::Precondition;
use promgate::tenant::store::Store;
use promgate::tenant::{Registry, Tenant, TenantStatus, TokenRecord};

const TENANTS: usize = 5_000;
const TOKENS_PER_TENANT: usize = 2;

fn config(database_url: &str) -> Config {
    Config::from_toml_str(
        &format!(
            "[storage]\ndatabase_url = \"{database_url}\"\nexpired_token_retention = \"1h\"\n\
             [[backends]]\nname = \"b0\"\nwrite_url = \"http://127.0.0.1:9/api/v1/write\"\n"
        ),
        &Default::default(),
    )
    .expect("config")
}

async fn replica(database_url: &str) -> Registry {
    Registry::load(
        Store::open(database_url).await.expect("store"),
        &config(database_url),
    )
    .await
    .expect("registry")
}

fn new_tenant(id: &str) -> Tenant {
    Tenant {
        id: id.into(),
        label_value: id.into(),
        extra_labels: Default::default(),
        limits: Default::default(),
        identities: vec![format!("spiffe://follow.test/{id}")],
        backends: vec![],
        status: TenantStatus::Active,
        write_relabel_configs: Vec::new(),
        created_at: 1,
        updated_at: 1,
        version: 0,
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn token(id: &str, tenant: &str, expires_at: i64) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        description: "follow test".into(),
        created_at: unix_now(),
        expires_at,
        revoked_at: None,
    }
}

/// Rows `follower` reads for its next poll.
async fn rows_for_poll(follower: &Registry) -> u64 {
    let before = follower.store().rows_read();
    follower.reload().await.expect("poll");
    follower.store().rows_read() - before
}

/// Fills a registry at `url`, starts two replicas on it, and checks what a poll costs and
/// that every kind of change arrives.
async fn follows_incrementally(url: &str) {
    // Migrate first, then fill.
    drop(Store::open(url).await.expect("store"));
    registry_fill::fill(url, TENANTS, TOKENS_PER_TENANT, &[]).await;
    let writer = replica(url).await;
    let follower = replica(url).await;
    assert_eq!(follower.tenants().len(), TENANTS);
    assert_eq!(follower.token_count(), TENANTS * TOKENS_PER_TENANT);

    assert_eq!(rows_for_poll(&follower).await, 1, "no change: one row");

    // One change of each kind.
    let alpha = registry_fill::tenant_id(1);
    let beta = registry_fill::tenant_id(2);
    let gone = registry_fill::tenant_id(3);
    writer
        .create_tenant(new_tenant("newcomer"))
        .await
        .expect("create");
    writer
        .update_tenant(&alpha, &Precondition::Unconditional, |tenant| {
            tenant.status = TenantStatus::Disabled;
            Ok(())
        })
        .await
        .expect("disable");
    writer
        .delete_tenant(&gone, &Precondition::Unconditional)
        .await
        .expect("delete");
    writer
        .add_token(token("fresh", &beta, unix_now() + 3600))
        .await
        .expect("issue");
    writer
        .revoke_token(&beta, &registry_fill::token_id(2, 0), unix_now())
        .await
        .expect("revoke");
    let rows = rows_for_poll(&follower).await;
    // revision + newcomer (+ identity) + alpha (+ identity) + tombstone + 2 tokens = 8.
    assert!(
        rows <= 8,
        "a poll after 5 changes read {rows} rows of a registry of {}",
        TENANTS * (2 + TOKENS_PER_TENANT)
    );
    assert!(follower.tenant("newcomer").is_some());
    assert_eq!(
        follower.tenant_of_identity("spiffe://follow.test/newcomer"),
        Some("newcomer".to_string())
    );
    assert_eq!(
        follower.tenant(&alpha).expect("alpha").tenant.status,
        TenantStatus::Disabled
    );
    assert!(follower.tenant(&gone).is_none());
    assert!(
        follower.token(&registry_fill::token_id(3, 0)).is_none(),
        "a deleted tenant's tokens are gone"
    );
    assert_eq!(
        follower.tenant_of_identity(&registry_fill::identity(3)),
        None
    );
    assert!(follower.token("fresh").is_some());
    assert!(follower
        .token(&registry_fill::token_id(2, 0))
        .expect("revoked token")
        .revoked_at
        .is_some());
    assert_eq!(follower.tokens_of(&beta).len(), TOKENS_PER_TENANT + 1);
    writer.reload().await.expect("poll");
    assert_eq!(follower.revision(), writer.revision());

    // Fifty changes cost about ten times five.
    for n in 100..150 {
        writer
            .update_tenant(
                &registry_fill::tenant_id(n),
                &Precondition::Unconditional,
                |t| {
                    t.label_value = format!("relabelled-{}", t.id);
                    Ok(())
                },
            )
            .await
            .expect("update");
    }
    let rows = rows_for_poll(&follower).await;
    assert!(
        (50..=101).contains(&rows),
        "a poll after 50 changes read {rows} rows"
    );
    assert_eq!(
        follower
            .tenant(&registry_fill::tenant_id(120))
            .expect("tenant")
            .tenant
            .label_value,
        format!("relabelled-{}", registry_fill::tenant_id(120))
    );

    // Expired tokens are pruned after the retention (1 h here) and the pruning is followed.
    let now = unix_now();
    writer
        .add_token(token("expired-long-ago", &beta, now - 7200))
        .await
        .expect("issue");
    writer
        .add_token(token("expired-lately", &beta, now - 60))
        .await
        .expect("issue");
    follower.reload().await.expect("poll");
    assert!(follower.token("expired-long-ago").is_some());
    let pruned = writer.prune(now).await.expect("prune");
    assert_eq!(pruned.tokens, 1);
    assert!(writer.token("expired-long-ago").is_none());
    assert!(rows_for_poll(&follower).await <= 2);
    assert!(
        follower.token("expired-long-ago").is_none(),
        "pruned everywhere"
    );
    assert!(
        follower.token("expired-lately").is_some(),
        "still in its grace period"
    );

    // A restarted replica loads the same registry the follower built up change by change.
    let fresh = replica(url).await;
    assert_eq!(fresh.tenants(), follower.tenants());
    assert_eq!(fresh.token_count(), follower.token_count());
    assert_eq!(fresh.tokens_of(&beta), follower.tokens_of(&beta));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_registry_is_followed_by_its_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    follows_incrementally(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_registry_is_followed_by_its_changes() {
    let postgres = Postgres::start().await;
    follows_incrementally(&postgres.url).await;
}

/// Two replicas write at the same time (creates, updates, deletes, tokens) while a third
/// polls as fast as it can. However the commits interleave, the follower's final state is
/// exactly the database's: no change committed late is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_on_postgres_lose_no_change() {
    let postgres = Postgres::start().await;
    let url = postgres.url.clone();
    let follower = Arc::new(replica(&url).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let polling = {
        let follower = Arc::clone(&follower);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut polls = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                follower.reload().await.expect("poll");
                polls += 1;
            }
            polls
        })
    };
    let mut writers = Vec::new();
    for w in 0..3 {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let registry = replica(&url).await;
            for n in 0..40 {
                let id = format!("w{w}-{n}");
                registry
                    .create_tenant(new_tenant(&id))
                    .await
                    .expect("create");
                registry
                    .add_token(token(&format!("{id}-tok"), &id, unix_now() + 3600))
                    .await
                    .expect("token");
                if n % 3 == 0 {
                    registry
                        .update_tenant(&id, &Precondition::Unconditional, |t| {
                            t.status = TenantStatus::Disabled;
                            Ok(())
                        })
                        .await
                        .expect("update");
                }
                if n % 5 == 0 {
                    registry
                        .delete_tenant(&id, &Precondition::Unconditional)
                        .await
                        .expect("delete");
                }
                if n % 7 == 0 {
                    registry
                        .revoke_token(&format!("w{w}-1"), &format!("w{w}-1-tok"), unix_now())
                        .await
                        .ok();
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let polls = polling.await.expect("follower");
    assert!(
        polls > 3,
        "the follower polled during the writes ({polls} polls)"
    );
    follower.reload().await.expect("last poll");
    let truth = replica(&url).await;
    let summary = |registry: &Registry| -> Vec<(String, i64, TenantStatus)> {
        registry
            .tenants()
            .into_iter()
            .map(|tenant| (tenant.id, tenant.version, tenant.status))
            .collect()
    };
    assert_eq!(summary(&follower), summary(&truth), "follower vs database");
    assert_eq!(follower.tenants(), truth.tenants());
    assert_eq!(follower.token_count(), truth.token_count());
    for tenant in truth.tenants() {
        assert_eq!(follower.tokens_of(&tenant.id), truth.tokens_of(&tenant.id));
    }
    assert_eq!(
        truth.tenants().len(),
        3 * 32,
        "40 created, 8 deleted, per writer"
    );
}

/// A backlog of expired tokens larger than one pruning batch goes in one pass, batch by
/// batch, and a follower drops every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruning_backlog_goes_in_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    drop(Store::open(&url).await.expect("store"));
    let now = unix_now();
    let backlog = 2 * promgate::tenant::store::PRUNE_BATCH as usize + 500;
    let expired: Vec<(String, usize, i64)> = (0..backlog)
        .map(|n| (format!("expired-{n}"), n % 10, now - 86_400 * 60))
        .collect();
    registry_fill::fill(&url, 10, 1, &expired).await;
    let writer = replica(&url).await;
    let follower = replica(&url).await;
    assert_eq!(follower.token_count(), 10 + backlog);
    let pruned = writer.prune(now).await.expect("prune");
    assert_eq!(pruned.tokens, backlog as u64);
    assert_eq!(writer.token_count(), 10);
    follower.reload().await.expect("poll");
    assert_eq!(
        follower.token_count(),
        10,
        "every pruned token is gone on the follower"
    );
}

/// The live replica count of a running promgate, from its `/metrics`.
async fn live_replicas(replica: &common::binary::PromgateBinary) -> f64 {
    let text = replica.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix("promgate_registry_live_replicas "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("promgate_registry_live_replicas in\n{text}"))
}

/// Two replicas polling every 6 s, longer than the 5 s a heartbeat used to count: each
/// keeps counting both, at every moment (were one to count only itself, it would allow
/// every tenant twice its share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_polling_slower_than_five_seconds_keep_counting_each_other() {
    let postgres = Postgres::start().await;
    let backend = common::FakeBackend::start().await;
    let extra = format!(
        "poll_interval = \"6s\"\n{}",
        common::backends_toml(&[&backend])
    );
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let mut replicas = Vec::new();
    for dir in &dirs {
        let secrets = format!(
            "token_file = \"{}\"",
            dir.path().join("admin.token").display()
        );
        let extra = format!(
            "{extra}[auth.tokens]\nsigning_key_file = \"{}\"\n",
            dir.path().join("signing.key").display()
        );
        replicas.push(
            common::binary::PromgateBinary::start_full(
                dir.path(),
                "",
                &secrets,
                &postgres.url,
                &extra,
            )
            .await,
        );
    }
    // The first replica counts the second from its next heartbeat on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while live_replicas(&replicas[0]).await < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first replica never counted the second"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // Three heartbeat periods, sampled every half second on both.
    for _ in 0..36 {
        for (at, replica) in replicas.iter().enumerate() {
            assert_eq!(
                live_replicas(replica).await,
                2.0,
                "replica {at} lost count of the other between heartbeats"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
