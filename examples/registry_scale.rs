//! The registry scale test (not run in CI; `scripts/registry-scale.sh` runs it at 1 000,
//! 10 000 and 100 000 tenants on SQLite and PostgreSQL and prints the table kept in
//! docs/benchmarks.md). For one database and size it:
//!
//! 1. fills the registry with `--tenants` tenants (one mTLS identity each) and
//!    `--tokens-per-tenant` tokens each, in one transaction;
//! 2. loads it the way a replica starts (`Registry::load`) and reports the time taken and
//!    this process's resident memory before and after;
//! 3. has a second replica make `--changes` changes (updates, a disable, token issues and
//!    revocations, a delete) and reports the rows the first replica's next poll reads, and
//!    the rows a full reload would read, for comparison;
//! 4. times a million token + tenant lookups.
//!
//! Usage: `cargo run --release --example registry_scale -- --database-url URL
//! --tenants N [--tokens-per-tenant 2] [--changes 10]` on an empty database.

use std::time::Instant;

use promgate::config::Config;
use promgate::tenant::registry::Precondition;
use promgate::tenant::store::Store;
use promgate::tenant::{Registry, TenantStatus, TokenRecord};

#[path = "../tests/common/registry_fill.rs"]
mod registry_fill;

struct Args {
    database_url: String,
    tenants: usize,
    tokens_per_tenant: usize,
    changes: usize,
}

fn args() -> Args {
    let mut args = Args {
        database_url: String::new(),
        tenants: 1_000,
        tokens_per_tenant: 2,
        changes: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--database-url" => args.database_url = value,
            "--tenants" => args.tenants = value.parse().expect("--tenants N"),
            "--tokens-per-tenant" => {
                args.tokens_per_tenant = value.parse().expect("--tokens-per-tenant N")
            }
            "--changes" => args.changes = value.parse().expect("--changes N"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!args.database_url.is_empty(), "--database-url is required");
    args
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let url = &args.database_url;
    let config = Config::from_toml_str(
        &format!("[storage]\ndatabase_url = \"{url}\"\n"),
        &Default::default(),
    )
    .expect("config");
    drop(Store::open(url).await.expect("open and migrate"));
    let started = Instant::now();
    registry_fill::fill(url, args.tenants, args.tokens_per_tenant, &[]).await;
    let fill_seconds = started.elapsed().as_secs_f64();

    let rss_before = rss_mib();
    let started = Instant::now();
    let follower = Registry::load(Store::open(url).await.expect("store"), &config)
        .await
        .expect("load");
    let load_seconds = started.elapsed().as_secs_f64();
    let rss_after = rss_mib();

    let rows_full = follower.store().rows_read();
    assert_eq!(follower.tenants().len(), args.tenants);

    let writer = Registry::load(Store::open(url).await.expect("store"), &config)
        .await
        .expect("load");
    follower.reload().await.expect("poll");
    let before = follower.store().rows_read();
    follower.reload().await.expect("poll");
    let idle_rows = follower.store().rows_read() - before;
    for change in 0..args.changes {
        let n = (change * 7919) % args.tenants;
        let tenant = registry_fill::tenant_id(n);
        match change % 5 {
            0 => {
                writer
                    .update_tenant(&tenant, &Precondition::Unconditional, |t| {
                        t.status = TenantStatus::Disabled;
                        Ok(())
                    })
                    .await
                    .expect("disable");
            }
            1 => {
                writer
                    .add_token(TokenRecord {
                        id: format!("scale-{change}"),
                        tenant_id: tenant,
                        description: String::new(),
                        created_at: unix_now(),
                        expires_at: unix_now() + 3600,
                        revoked_at: None,
                    })
                    .await
                    .expect("issue");
            }
            2 if args.tokens_per_tenant > 0 => {
                writer
                    .revoke_token(&tenant, &registry_fill::token_id(n, 0), unix_now())
                    .await
                    .expect("revoke");
            }
            3 => {
                writer
                    .delete_tenant(&tenant, &Precondition::Unconditional)
                    .await
                    .expect("delete");
            }
            _ => {
                writer
                    .update_tenant(&tenant, &Precondition::Unconditional, |t| {
                        t.label_value = format!("{}-relabelled", t.id);
                        Ok(())
                    })
                    .await
                    .expect("relabel");
            }
        }
    }
    let before = follower.store().rows_read();
    let started = Instant::now();
    follower.reload().await.expect("poll");
    let poll_ms = started.elapsed().as_secs_f64() * 1000.0;
    let poll_rows = follower.store().rows_read() - before;

    let ids: Vec<(String, String)> = (0..1000)
        .map(|s| {
            let n = s * args.tenants / 1000;
            (
                registry_fill::token_id(n, args.tokens_per_tenant.saturating_sub(1)),
                registry_fill::tenant_id(n),
            )
        })
        .collect();
    let started = Instant::now();
    let mut found = 0usize;
    for round in 0..1_000_000usize {
        let (token, tenant) = &ids[round % ids.len()];
        let token_found = args.tokens_per_tenant == 0 || follower.token(token).is_some();
        if token_found && follower.tenant(tenant).is_some() {
            found += 1;
        }
    }
    let lookup_ns = started.elapsed().as_nanos() as f64 / 1_000_000.0;
    assert!(found > 0);

    let engine = if url.starts_with("postgres") {
        "postgresql"
    } else {
        "sqlite"
    };
    println!(
        "{{\"engine\":\"{engine}\",\"tenants\":{},\"tokens\":{},\"fill_s\":{fill_seconds:.2},\
         \"load_s\":{load_seconds:.3},\"rss_before_mib\":{rss_before:.1},\"rss_after_mib\":{rss_after:.1},\
         \"full_load_rows\":{rows_full},\"idle_poll_rows\":{idle_rows},\"changes\":{},\
         \"poll_rows\":{poll_rows},\"poll_ms\":{poll_ms:.2},\"lookup_ns\":{lookup_ns:.0}}}",
        args.tenants,
        follower.token_count(),
        args.changes,
    );
}
