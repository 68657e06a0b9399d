//! Per-request registry lookups at 1 000, 10 000 and 100 000 tenants (two tokens each,
//! so 200 000 tokens at the top): what authentication costs the request path as the
//! registry grows. Each size is a SQLite registry filled in one transaction and loaded
//! the way a replica starts. Measured, per size:
//!
//! - `token_and_tenant`: the registry lookups of an issued token (`jti` → token record,
//!   tenant id → tenant entry), for 1 000 tokens spread over the whole registry;
//! - `identity`: an mTLS SAN → tenant lookup;
//! - `authenticate`: the whole bearer-token authentication of a request (hash, verified
//!   cache, token and tenant lookups, revocation and status checks), tokens already
//!   verified once, as they are after a sender's first request.
//!
//! Run: `cargo bench --bench registry` (filling and loading the 100 000-tenant registry
//! takes some seconds before its figures start).

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use promgate::auth::issuers::Issuers;
use promgate::auth::secrets::load_or_create_signing_key;
use promgate::auth::tokens::TokenSigner;
use promgate::auth::Authenticator;
use promgate::config::Config;
use promgate::tenant::store::Store;
use promgate::tenant::Registry;

#[path = "../tests/common/registry_fill.rs"]
mod registry_fill;

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const TOKENS_PER_TENANT: usize = 2;
/// Tokens requests are made with, spread evenly over the registry.
const SAMPLE: usize = 1_000;

struct Fixture {
    _dir: tempfile::TempDir,
    registry: Arc<Registry>,
    auth: Authenticator,
    /// (token id, tenant id, bearer header) of the sample.
    sample: Vec<(String, String, HeaderMap)>,
}

async fn fixture(tenants: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let config = Config::from_toml_str(
        &format!("[storage]\ndatabase_url = \"{url}\"\n"),
        &Default::default(),
    )
    .expect("config");
    let key = load_or_create_signing_key(&dir.path().join("signing.key")).expect("key");
    let signer = TokenSigner::new(&key).expect("signer");
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let mut issued = Vec::new();
    let mut sample = Vec::new();
    for s in 0..SAMPLE {
        let n = s * tenants / SAMPLE;
        let tenant = registry_fill::tenant_id(n);
        let (jti, token) = signer.issue(&tenant, now, now + 86_400).expect("token");
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        issued.push((jti.clone(), n, now + 86_400));
        sample.push((jti, tenant, headers));
    }
    drop(Store::open(&url).await.expect("store"));
    registry_fill::fill(&url, tenants, TOKENS_PER_TENANT, &issued).await;
    let registry = Arc::new(
        Registry::load(Store::open(&url).await.expect("store"), &config)
            .await
            .expect("registry"),
    );
    let issuers = Issuers::start(&[]).await.expect("no issuers");
    let auth = Authenticator::new(signer, issuers, Arc::clone(&registry));
    for (_, _, headers) in &sample {
        auth.authenticate(headers, None, None)
            .await
            .expect("a sample token authenticates");
    }
    Fixture {
        _dir: dir,
        registry,
        auth,
        sample,
    }
}

fn lookups(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("registry");
    for tenants in SIZES {
        let fixture = runtime.block_on(fixture(tenants));
        assert_eq!(
            fixture.registry.token_count(),
            tenants * TOKENS_PER_TENANT + SAMPLE
        );
        let label = format!("{tenants}_tenants");
        group.bench_function(BenchmarkId::new("token_and_tenant", &label), |b| {
            let mut at = 0usize;
            b.iter(|| {
                at = (at + 1) % SAMPLE;
                let (jti, tenant, _) = &fixture.sample[at];
                let token = fixture.registry.token(jti).expect("token");
                let entry = fixture.registry.tenant(&token.tenant_id).expect("tenant");
                assert!(token.revoked_at.is_none() && entry.tenant.id == *tenant);
            })
        });
        group.bench_function(BenchmarkId::new("identity", &label), |b| {
            let identities: Vec<String> = (0..SAMPLE)
                .map(|s| registry_fill::identity(s * tenants / SAMPLE))
                .collect();
            let mut at = 0usize;
            b.iter(|| {
                at = (at + 1) % SAMPLE;
                fixture
                    .registry
                    .tenant_of_identity(&identities[at])
                    .expect("identity")
            })
        });
        group.bench_function(BenchmarkId::new("authenticate", &label), |b| {
            let mut at = 0usize;
            b.iter(|| {
                at = (at + 1) % SAMPLE;
                let (_, tenant, headers) = &fixture.sample[at];
                let entry =
                    futures::executor::block_on(fixture.auth.authenticate(headers, None, None))
                        .expect("authenticated");
                assert_eq!(entry.tenant.id, *tenant);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = lookups
}
criterion_main!(benches);
