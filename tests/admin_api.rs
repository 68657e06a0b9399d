//! Admin API (DESIGN §5; SECURITY.md group "Admin API"): authentication on every route,
//! id validation, conflicts (ids, identities, label values), token secrecy and persistence
//! across restarts, ETag / If-Match, and replicas sharing one SQLite file never undoing
//! each other's changes.

mod common;

use common::concurrency::{
    simultaneous_creates_share_no_label_value, simultaneous_patches_keep_both_changes,
    until_every_replica_shows,
};
use common::{backends_toml, label_value, simple_body, Engine, FakeBackend, Relay};
use reqwest::Method;
use serde_json::json;

/// Runs each named case once on SQLite and once on a fresh PostgreSQL: the admin API must
/// behave the same on both registries.
macro_rules! on_both_engines {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Engine::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Engine::Postgres).await;
                }
            )*
        }
    };
}

on_both_engines!(
    every_route_needs_the_admin_token,
    probes_and_metrics_need_no_token_and_openapi_is_served,
    tenant_ids_are_validated_in_bodies_and_paths,
    bodies_are_checked_strictly,
    duplicates_conflict,
    tenant_fields_round_trip_and_apply_to_writes,
    token_ttl_and_description_are_checked,
    admin_token_guessing_is_throttled_per_address,
    changes_and_refused_attempts_are_audited_without_secrets,
    label_values_are_unique_across_tenants,
    etags_and_if_match_guard_tenant_writes,
);

const ROUTES: [(&str, &str); 12] = [
    ("GET", "/admin/v1/audit"),
    ("GET", "/admin/v1/tenants"),
    ("POST", "/admin/v1/tenants"),
    ("GET", "/admin/v1/tenants/alpha"),
    ("PATCH", "/admin/v1/tenants/alpha"),
    ("DELETE", "/admin/v1/tenants/alpha"),
    ("GET", "/admin/v1/tenants/alpha/tokens"),
    ("POST", "/admin/v1/tenants/alpha/tokens"),
    ("DELETE", "/admin/v1/tenants/alpha/tokens/abc"),
    ("GET", "/admin/v1/openapi.json"),
    ("GET", "/admin/v1/usage"),
    ("GET", "/admin/v1/no-such-route"),
];

async fn every_route_needs_the_admin_token(engine: Engine) {
    let relay = Relay::start_on(engine, 1000, "").await;
    let tenant_token = relay.tenant_with_token("alpha").await;
    let wrong_admin = format!("{}x", relay.admin_token);
    for (method, path) in ROUTES {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        for credential in [
            None,
            Some(wrong_admin.as_str()),
            Some(tenant_token.as_str()),
            Some(""),
        ] {
            let mut request = relay
                .http
                .request(method.clone(), relay.admin_url(path))
                .json(&json!({"id": "x"}));
            if let Some(credential) = credential {
                request = request.bearer_auth(credential);
            }
            let response = request.send().await.expect("sent");
            assert_eq!(
                response.status(),
                401,
                "{method} {path} with {credential:?}"
            );
            assert!(response
                .headers()
                .get("access-control-allow-origin")
                .is_none());
        }
    }
    // Nothing changed: alpha still exists and has exactly one token.
    let (status, tokens) = relay
        .admin(Method::GET, "/admin/v1/tenants/alpha/tokens", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(tokens["tokens"].as_array().expect("array").len(), 1);
}

async fn probes_and_metrics_need_no_token_and_openapi_is_served(engine: Engine) {
    let relay = Relay::start_on(engine, 1000, "").await;
    for path in ["/-/healthy", "/-/ready", "/metrics"] {
        let response = relay
            .http
            .get(relay.admin_url(path))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{path}");
    }
    let (status, document) = relay
        .admin(Method::GET, "/admin/v1/openapi.json", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.0.3");
}

async fn tenant_ids_are_validated_in_bodies_and_paths(engine: Engine) {
    let relay = Relay::start_on(engine, 1000, "").await;
    let long = "x".repeat(151);
    for bad in [
        "alpha'; DROP TABLE tenants; --",
        "a|b",
        "..",
        ".",
        "",
        long.as_str(),
        "a b",
        "ä",
    ] {
        let (status, body) = relay
            .admin(
                Method::POST,
                "/admin/v1/tenants",
                Some(json!({ "id": bad })),
            )
            .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(
            body["error"].as_str().expect("error").contains("tenant id"),
            "{body}"
        );
    }
    for bad in ["a%7Cb", "a%27%3B%20DROP%20TABLE%20tenants", long.as_str()] {
        let (status, _) = relay
            .admin(Method::GET, &format!("/admin/v1/tenants/{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, body) = relay.admin(Method::GET, "/admin/v1/tenants", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["tenants"], json!([]), "no tenant was created");
    relay.create_tenant(json!({"id": "x".repeat(150)})).await;
}

async fn bodies_are_checked_strictly(engine: Engine) {
    let relay = Relay::start_on(engine, 1000, "").await;
    for (spec, needle) in [
        (json!({"id": "a", "colour": "blue"}), "unknown field"),
        (
            json!({"id": "a", "limits": {"max_requets_bytes": 1}}),
            "unknown field",
        ),
        (
            json!({"id": "a", "limits": {"throttle_status": 418}}),
            "throttle_status",
        ),
        (
            json!({"id": "a", "backends": ["nope"]}),
            "not a configured backend",
        ),
        (
            json!({"id": "a", "extra_labels": {"tenant_id": "x"}}),
            "tenant label",
        ),
        (
            json!({"id": "a", "extra_labels": {"__name__": "x"}}),
            "extra_labels",
        ),
        (json!({"id": "a", "status": "paused"}), "invalid JSON"),
        (json!({"label_value": "a"}), "\"id\" is required"),
    ] {
        let (status, body) = relay
            .admin(Method::POST, "/admin/v1/tenants", Some(spec.clone()))
            .await;
        assert_eq!(status, 400, "{spec}: {body}");
        assert!(
            body["error"].as_str().expect("error").contains(needle),
            "{spec}: {body}"
        );
    }
}

async fn duplicates_conflict(engine: Engine) {
    let relay = Relay::start_on(engine, 1000, "").await;
    relay
        .create_tenant(json!({"id": "alpha", "identities": ["spiffe://example.org/alpha"]}))
        .await;
    let (status, _) = relay
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"id": "alpha"})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, body) = relay
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"id": "beta", "identities": ["spiffe://example.org/alpha"]})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    relay.create_tenant(json!({"id": "beta"})).await;
    let (status, _) = relay
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/beta",
            Some(json!({"identities": ["spiffe://example.org/alpha"]})),
        )
        .await;
    assert_eq!(status, 409);
}

async fn tenant_fields_round_trip_and_apply_to_writes(engine: Engine) {
    let backend = FakeBackend::start().await;
    let relay = Relay::start_on(engine, 1000, &backends_toml(&[&backend])).await;
    let spec = json!({
        "id": "team-a",
        "label_value": "a",
        "extra_labels": {"env": "prod"},
        "limits": {"max_request_bytes": "1MiB", "samples_per_second": 500},
        "identities": ["spiffe://example.org/team-a"],
        "backends": ["b0"],
    });
    let (status, created) = relay
        .admin(Method::POST, "/admin/v1/tenants", Some(spec))
        .await;
    assert_eq!(status, 201);
    assert_eq!(created["status"], "active");
    assert_eq!(created["limits"]["max_request_bytes"], 1_048_576);
    let (_, fetched) = relay
        .admin(Method::GET, "/admin/v1/tenants/team-a", None)
        .await;
    assert_eq!(fetched, created);
    let (_, token) = relay.issue_token("team-a").await;
    assert_eq!(
        relay
            .write(&token, simple_body(&[("env", "dev")]))
            .await
            .status(),
        204
    );
    let forwarded = backend.requests()[0].write_request();
    assert_eq!(label_value(&forwarded.timeseries[0], "tenant_id"), ["a"]);
    assert_eq!(label_value(&forwarded.timeseries[0], "env"), ["prod"]);
    let (status, patched) = relay
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/team-a",
            Some(json!({"label_value": "b"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        patched["extra_labels"],
        json!({"env": "prod"}),
        "PATCH keeps other fields"
    );
    assert_eq!(relay.write(&token, simple_body(&[])).await.status(), 204);
    let forwarded = backend.requests()[1].write_request();
    assert_eq!(
        label_value(&forwarded.timeseries[0], "tenant_id"),
        ["b"],
        "changes apply at once"
    );
    let (status, _) = relay
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/team-a",
            Some(json!({"id": "other"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = relay
        .admin(Method::GET, "/admin/v1/tenants/ghost", None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn token_secret_is_shown_once_and_never_stored() {
    let mut relay = Relay::start("").await;
    relay.create_tenant(json!({"id": "alpha"})).await;
    let (token_id, secret) = relay.issue_token("alpha").await;
    let signature = secret.rsplit('.').next().expect("jwt").to_string();
    let mut later = String::new();
    for path in [
        "/admin/v1/tenants",
        "/admin/v1/tenants/alpha",
        "/admin/v1/tenants/alpha/tokens",
    ] {
        let (status, body) = relay.admin(Method::GET, path, None).await;
        assert_eq!(status, 200);
        later.push_str(&body.to_string());
    }
    assert!(later.contains(&token_id), "the token is listed by id");
    assert!(
        !later.contains(&signature),
        "the secret never appears again"
    );
    let (_, tokens) = relay
        .admin(Method::GET, "/admin/v1/tenants/alpha/tokens", None)
        .await;
    assert_eq!(tokens["tokens"][0]["status"], "active");
    assert!(tokens["tokens"][0].get("token").is_none());

    let dir = relay.stop().await;
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().contains("promgate.db") {
            let bytes = std::fs::read(&path).expect("db file");
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&signature),
                "{} holds the secret",
                path.display()
            );
            assert!(
                !text.contains(&secret[..40]),
                "{} holds the secret",
                path.display()
            );
        }
    }
    // After a restart the registry comes back from the database: the token still works.
    let backend = FakeBackend::start().await;
    let relay = Relay::start_in(dir, &backends_toml(&[&backend])).await;
    assert_eq!(relay.write(&secret, simple_body(&[])).await.status(), 204);
    let (status, _) = relay
        .admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/alpha/tokens/{token_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, tokens) = relay
        .admin(Method::GET, "/admin/v1/tenants/alpha/tokens", None)
        .await;
    assert_eq!(tokens["tokens"][0]["status"], "revoked");
    let (status, _) = relay
        .admin(
            Method::DELETE,
            "/admin/v1/tenants/alpha/tokens/no-such-token",
            None,
        )
        .await;
    assert_eq!(status, 404);
}

async fn token_ttl_and_description_are_checked(engine: Engine) {
    let relay = Relay::start_on(engine, 1000, "").await;
    relay.create_tenant(json!({"id": "alpha"})).await;
    for body in [
        json!({"ttl": "1s"}),
        json!({"ttl": "later"}),
        json!({"description": "x".repeat(300)}),
    ] {
        let (status, _) = relay
            .admin(
                Method::POST,
                "/admin/v1/tenants/alpha/tokens",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body}");
    }
    let (status, issued) = relay
        .admin(
            Method::POST,
            "/admin/v1/tenants/alpha/tokens",
            Some(json!({"ttl": "30d"})),
        )
        .await;
    assert_eq!(status, 201);
    assert!(issued["expires_at"].as_str().expect("time").ends_with('Z'));
    let (status, _) = relay
        .admin(Method::POST, "/admin/v1/tenants/ghost/tokens", None)
        .await;
    assert_eq!(status, 404);
}

async fn admin_token_guessing_is_throttled_per_address(engine: Engine) {
    let relay = Relay::start_on(engine, 5, "").await;
    for attempt in 0..5 {
        let response = relay
            .http
            .get(relay.admin_url("/admin/v1/tenants"))
            .bearer_auth(format!("guess-{attempt}"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 401, "attempt {attempt}");
    }
    let response = relay
        .http
        .get(relay.admin_url("/admin/v1/tenants"))
        .bearer_auth("guess-6")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 429);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    // The right token is never throttled: someone else's guesses from the operator's
    // address (a bastion, a NAT) must not lock the operator out. Guessing stays throttled.
    let (status, _) = relay.admin(Method::GET, "/admin/v1/tenants", None).await;
    assert_eq!(status, 200);
    // Probes and metrics stay reachable.
    let response = relay
        .http
        .get(relay.admin_url("/-/ready"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
}

async fn changes_and_refused_attempts_are_audited_without_secrets(engine: Engine) {
    let relay = Relay::start_on(engine, 1000, "").await;
    relay.create_tenant(json!({"id": "alpha"})).await;
    let (token_id, secret) = relay.issue_token("alpha").await;
    relay
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/alpha",
            Some(json!({"status": "disabled"})),
        )
        .await;
    relay
        .admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/alpha/tokens/{token_id}"),
            None,
        )
        .await;
    relay.admin(Method::GET, "/admin/v1/tenants", None).await;
    let refused = relay
        .http
        .delete(relay.admin_url("/admin/v1/tenants/alpha"))
        .bearer_auth("guess")
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 401);
    let (status, log) = relay
        .admin(Method::GET, "/admin/v1/audit?limit=10", None)
        .await;
    assert_eq!(status, 200);
    let entries = log["entries"].as_array().expect("entries");
    let actions: Vec<(String, u64)> = entries
        .iter()
        .map(|entry| {
            (
                entry["action"].as_str().expect("action").to_string(),
                entry["result"].as_u64().expect("result"),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("DELETE /admin/v1/tenants/alpha".to_string(), 401),
            (
                format!("DELETE /admin/v1/tenants/alpha/tokens/{token_id}"),
                204
            ),
            ("PATCH /admin/v1/tenants/alpha".to_string(), 200),
            ("POST /admin/v1/tenants/alpha/tokens".to_string(), 201),
            ("POST /admin/v1/tenants".to_string(), 201),
        ],
        "newest first; reads are not audited"
    );
    assert_eq!(entries[0]["actor"], "unauthenticated");
    let actor = entries[1]["actor"].as_str().expect("actor");
    assert!(
        actor.starts_with("admin:") && actor.len() == "admin:".len() + 8,
        "{actor}"
    );
    assert!(
        !relay.admin_token.starts_with(&actor["admin:".len()..]),
        "the actor is a fingerprint, not the token"
    );
    assert_eq!(entries[1]["source"], "127.0.0.1");
    let text = log.to_string();
    assert!(
        !text.contains(&relay.admin_token)
            && !text.contains(secret.rsplit('.').next().expect("jwt"))
    );
}

async fn label_values_are_unique_across_tenants(engine: Engine) {
    let relay = Relay::start_on(engine, 1000, "").await;
    let post = |spec| relay.admin(Method::POST, "/admin/v1/tenants", Some(spec));
    relay.create_tenant(json!({"id": "b"})).await;
    // "b"'s label_value is its id: a tenant asking for it collides.
    let (status, body) = post(json!({"id": "a", "label_value": "b"})).await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(
        error.contains("label_value") && error.contains("\"b\""),
        "{error}"
    );
    relay.create_tenant(json!({"id": "a"})).await;
    // A new tenant's default label_value (its id) collides with another's explicit one.
    relay
        .create_tenant(json!({"id": "x", "label_value": "free"}))
        .await;
    let (status, body) = post(json!({"id": "free"})).await;
    assert_eq!(status, 409, "{body}");
    // PATCH both ways: onto another tenant's default, and onto another's explicit value.
    for (id, taken) in [("a", "b"), ("b", "a"), ("a", "free")] {
        let (status, body) = relay
            .admin(
                Method::PATCH,
                &format!("/admin/v1/tenants/{id}"),
                Some(json!({"label_value": taken})),
            )
            .await;
        assert_eq!(status, 409, "{id} → {taken}: {body}");
        let (_, unchanged) = relay
            .admin(Method::GET, &format!("/admin/v1/tenants/{id}"), None)
            .await;
        assert_eq!(unchanged["label_value"], id, "nothing changed");
        assert_eq!(unchanged["version"], 1, "nothing changed");
    }
    // A tenant may keep its own value, and a freed value may be taken.
    let (status, _) = relay
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/a",
            Some(json!({"label_value": "a", "status": "disabled"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = relay
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/x",
            Some(json!({"label_value": "x"})),
        )
        .await;
    assert_eq!(status, 200);
    relay.create_tenant(json!({"id": "free"})).await;
    let (status, _) = relay
        .admin(Method::DELETE, "/admin/v1/tenants/b", None)
        .await;
    assert_eq!(status, 204);
    relay
        .create_tenant(json!({"id": "c", "label_value": "b"}))
        .await;
}

async fn etags_and_if_match_guard_tenant_writes(engine: Engine) {
    let relay = Relay::start_on(engine, 1000, "").await;
    let path = "/admin/v1/tenants/alpha";
    let etag = |headers: &reqwest::header::HeaderMap| {
        headers
            .get("etag")
            .map(|value| value.to_str().expect("ascii").to_string())
    };
    let (status, created, headers) = relay
        .admin_with_headers(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"id": "alpha"})),
            &[],
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(etag(&headers).as_deref(), Some("\"1\""));
    assert_eq!(created["version"], 1);

    let (status, patched, headers) = relay
        .admin_with_headers(
            Method::PATCH,
            path,
            Some(json!({"extra_labels": {"env": "prod"}})),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    let patched_tag = etag(&headers);
    assert_eq!(patched_tag.as_deref(), Some("\"2\""));
    assert_eq!(patched["version"], 2);
    let (status, fetched, headers) = relay.admin_with_headers(Method::GET, path, None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        etag(&headers),
        patched_tag,
        "GET shows the ETag PATCH returned"
    );
    assert_eq!(fetched, patched);

    // Stale, weak, unknown: 412, JSON error, nothing changed.
    for stale in ["\"1\"", "W/\"2\"", "\"99\"", "\"1\", \"3\""] {
        let (status, body, _) = relay
            .admin_with_headers(
                Method::PATCH,
                path,
                Some(json!({"status": "disabled"})),
                &[("if-match", stale)],
            )
            .await;
        assert_eq!(status, 412, "{stale}: {body}");
        assert!(body["error"].is_string(), "{body}");
        let (_, unchanged) = relay.admin(Method::GET, path, None).await;
        assert_eq!(unchanged, fetched, "{stale}: nothing changed");
    }
    let (status, _, _) = relay
        .admin_with_headers(
            Method::PATCH,
            path,
            Some(json!({"status": "disabled"})),
            &[("if-match", "2")],
        )
        .await;
    assert_eq!(status, 400, "an entity tag is quoted");

    // Current: applied, version bumps.
    let (status, disabled, headers) = relay
        .admin_with_headers(
            Method::PATCH,
            path,
            Some(json!({"status": "disabled"})),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(status, 200, "{disabled}");
    assert_eq!(disabled["status"], "disabled");
    assert_eq!(disabled["version"], 3);
    assert_eq!(etag(&headers).as_deref(), Some("\"3\""));
    assert_eq!(disabled["extra_labels"], json!({"env": "prod"}));
    // One of several tags.
    let (status, _, headers) = relay
        .admin_with_headers(
            Method::PATCH,
            path,
            Some(json!({"status": "active"})),
            &[("if-match", "\"7\", \"3\"")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(etag(&headers).as_deref(), Some("\"4\""));

    // `*` matches any existing tenant, and no missing one.
    let (status, starred, headers) = relay
        .admin_with_headers(
            Method::PATCH,
            path,
            Some(json!({"label_value": "a"})),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(status, 200, "{starred}");
    assert_eq!(etag(&headers).as_deref(), Some("\"5\""));
    let (status, _, _) = relay
        .admin_with_headers(
            Method::PATCH,
            "/admin/v1/tenants/ghost",
            Some(json!({"status": "disabled"})),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(status, 412);
    let (status, _) = relay
        .admin(
            Method::PATCH,
            "/admin/v1/tenants/ghost",
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(status, 404, "without If-Match a missing tenant is 404");

    // DELETE: stale → 412 and the tenant stays; current → 204.
    let (status, body, _) = relay
        .admin_with_headers(Method::DELETE, path, None, &[("if-match", "\"4\"")])
        .await;
    assert_eq!(status, 412, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, _) = relay.admin(Method::GET, path, None).await;
    assert_eq!(status, 200, "still there");
    let (status, _, _) = relay
        .admin_with_headers(Method::DELETE, path, None, &[("if-match", "\"5\"")])
        .await;
    assert_eq!(status, 204);
    let (status, _) = relay.admin(Method::GET, path, None).await;
    assert_eq!(status, 404);
    let (status, _, _) = relay
        .admin_with_headers(Method::DELETE, path, None, &[("if-match", "*")])
        .await;
    assert_eq!(status, 412, "If-Match: * on a deleted tenant");
}

/// Two relays on one SQLite file (two processes sharing it behave the same: each relay has
/// its own connection): concurrent PATCHes through both never lose a change, and of two
/// concurrent creates with one label_value exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_sqlite_file_never_lose_a_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = format!("sqlite://{}/shared.db", dir.path().display());
    let first = Relay::start_on_database(&database_url, "").await;
    let second = Relay::start_on_database(&database_url, "").await;
    let (a, b) = (first.admin_endpoint(), second.admin_endpoint());
    first.create_tenant(json!({"id": "alpha"})).await;
    until_every_replica_shows(&[&a, &b], "alpha", "created", |tenant| {
        tenant["id"] == "alpha"
    })
    .await;
    simultaneous_patches_keep_both_changes(&a, &b, "alpha", 10).await;
    simultaneous_creates_share_no_label_value(&a, &b, 10).await;
}

/// A registry from before label values were unique, holding two tenants with one value:
/// promgate refuses to start and names them; once one is changed, it starts and the
/// database enforces uniqueness from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_shared_label_values_refuses_to_start_until_fixed() {
    use promgate::tenant::store::{Store, StoreError};
    use sqlx::Connection;

    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = format!("sqlite://{}/old.db", dir.path().display());
    drop(Store::open(&database_url).await.expect("fresh registry"));
    // Take the registry back to the schema before migration 4, then share a label value.
    let mut connection = sqlx::SqliteConnection::connect(&database_url)
        .await
        .expect("connect");
    for statement in [
        "DROP INDEX tenants_label_value_unique",
        "ALTER TABLE tenants DROP COLUMN version",
        "DELETE FROM _sqlx_migrations WHERE version = 4",
        "INSERT INTO tenants (id, label_value, extra_labels, limits, backends, status, created_at, updated_at) \
         VALUES ('a', 'b', '{}', '{}', '[]', 'active', 0, 0), ('b', 'b', '{}', '{}', '[]', 'active', 0, 0), \
                ('c', 'c', '{}', '{}', '[]', 'active', 0, 0)",
    ] {
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .expect(statement);
    }
    match Store::open(&database_url).await {
        Err(err @ StoreError::DuplicateLabelValues(_)) => {
            let message = err.to_string();
            assert!(
                message.contains("label_value \"b\" is used by tenants \"a\", \"b\"")
                    && message.contains("PATCH"),
                "{message}"
            );
            assert!(!message.contains("\"c\""), "{message}");
        }
        other => panic!("expected the duplicates to be refused, got {other:?}"),
    }
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tenants")
        .fetch_one(&mut connection)
        .await
        .expect("count");
    assert_eq!(count, 3, "nothing was dropped");
    sqlx::query("UPDATE tenants SET label_value = 'a' WHERE id = 'a'")
        .execute(&mut connection)
        .await
        .expect("fix");
    drop(connection);
    let store = Store::open(&database_url).await.expect("starts once fixed");
    let tenants = store.load_tenants().await.expect("tenants");
    assert_eq!(
        tenants.iter().map(|t| t.version).collect::<Vec<_>>(),
        [1, 1, 1],
        "existing tenants start at version 1"
    );
    let mut connection = sqlx::SqliteConnection::connect(&database_url)
        .await
        .expect("connect");
    let duplicate = sqlx::query("UPDATE tenants SET label_value = 'b' WHERE id = 'a'")
        .execute(&mut connection)
        .await;
    assert!(duplicate.is_err(), "the unique index holds");
}
