#![allow(dead_code)]

//! Fills a registry database with many tenants and tokens at once, for the scale tests,
//! the registry benchmark and `examples/registry_scale.rs`: plain multi-row INSERTs in
//! one transaction (through the admin API, 100 000 tenants would take minutes of
//! fsyncs), at revision 1 like rows written before incremental follow existed. Run it on
//! a migrated database (open a `Store` first).

use sqlx::any::AnyPoolOptions;
use sqlx::Row;

/// Rows per INSERT statement (well under SQLite's and PostgreSQL's bind limits).
const ROWS_PER_STATEMENT: usize = 200;

/// The id of the `n`th filled tenant.
pub fn tenant_id(n: usize) -> String {
    format!("tenant-{n:06}")
}

/// The id of the `k`th token of the `n`th filled tenant.
pub fn token_id(n: usize, k: usize) -> String {
    format!("tok{n:06}x{k:02}")
}

/// The mTLS identity of the `n`th filled tenant.
pub fn identity(n: usize) -> String {
    format!("spiffe://scale.test/{}", tenant_id(n))
}

/// Inserts `tenants` tenants (one identity each) and `tokens_per_tenant` tokens for each,
/// plus `extra_tokens` as (id, tenant index, expires_at). Token expiry is a year from now.
pub async fn fill(
    database_url: &str,
    tenants: usize,
    tokens_per_tenant: usize,
    extra_tokens: &[(String, usize, i64)],
) {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .expect("connect to the registry database");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut tx = pool.begin().await.expect("begin");
    let ids: Vec<usize> = (0..tenants).collect();
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO tenants (id, label_value, extra_labels, limits, backends, status, created_at, updated_at, version, revision) VALUES ",
        );
        let mut identities =
            String::from("INSERT INTO tenant_identities (identity, tenant_id) VALUES ");
        for at in 0..chunk.len() {
            if at > 0 {
                sql.push_str(", ");
                identities.push_str(", ");
            }
            // $id, $now per row; the JSON columns are constants.
            sql.push_str(&format!(
                "(${a}, ${a}, '{{}}', '{{}}', '[]', 'active', ${b}, ${b}, 1, 1)",
                a = at * 2 + 1,
                b = at * 2 + 2
            ));
            identities.push_str(&format!("(${}, ${})", at * 2 + 1, at * 2 + 2));
        }
        let mut query = sqlx::query(&sql);
        for &n in chunk {
            query = query.bind(tenant_id(n)).bind(now);
        }
        query.execute(&mut *tx).await.expect("insert tenants");
        let mut query = sqlx::query(&identities);
        for &n in chunk {
            query = query.bind(identity(n)).bind(tenant_id(n));
        }
        query.execute(&mut *tx).await.expect("insert identities");
    }
    let mut tokens: Vec<(String, usize, i64)> = Vec::with_capacity(tenants * tokens_per_tenant);
    for n in 0..tenants {
        for k in 0..tokens_per_tenant {
            tokens.push((token_id(n, k), n, now + 365 * 86_400));
        }
    }
    tokens.extend_from_slice(extra_tokens);
    for chunk in tokens.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO tokens (id, tenant_id, description, created_at, expires_at, revoked_at, revision) VALUES ",
        );
        for at in 0..chunk.len() {
            if at > 0 {
                sql.push_str(", ");
            }
            let base = at * 4;
            sql.push_str(&format!(
                "(${}, ${}, '', ${}, ${}, NULL, 1)",
                base + 1,
                base + 2,
                base + 3,
                base + 4
            ));
        }
        let mut query = sqlx::query(&sql);
        for (id, n, expires_at) in chunk {
            query = query
                .bind(id.clone())
                .bind(tenant_id(*n))
                .bind(now)
                .bind(*expires_at);
        }
        query.execute(&mut *tx).await.expect("insert tokens");
    }
    tx.commit().await.expect("commit");
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tenants")
        .fetch_one(&pool)
        .await
        .expect("count")
        .try_get("n")
        .expect("n");
    assert!(count >= tenants as i64, "filled {count} tenants");
    pool.close().await;
}
