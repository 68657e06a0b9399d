//! Admin writes through two replicas of one registry at the same moment, whichever way the
//! replicas run (in-process relays on one SQLite file, promgate processes on one
//! PostgreSQL): no change may be lost, and a `label_value` is won by exactly one tenant.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

/// One replica's admin API.
#[derive(Clone)]
pub struct AdminEndpoint {
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl AdminEndpoint {
    pub fn new(url: &str, token: &str) -> AdminEndpoint {
        AdminEndpoint {
            url: url.to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// Status and JSON body (Null when empty).
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn patch(&self, id: &str, body: Value) -> (u16, Value) {
        self.call(
            Method::PATCH,
            &format!("/admin/v1/tenants/{id}"),
            Some(body),
        )
        .await
    }

    pub async fn get(&self, id: &str) -> (u16, Value) {
        self.call(Method::GET, &format!("/admin/v1/tenants/{id}"), None)
            .await
    }
}

/// How long a replica's cache may take to show another replica's change.
const CATCH_UP: Duration = Duration::from_secs(2);

/// Polls `id` through every replica until `holds` is true of what each shows; panics
/// with what they show after `CATCH_UP`.
pub async fn until_every_replica_shows(
    replicas: &[&AdminEndpoint],
    id: &str,
    what: &str,
    holds: impl Fn(&Value) -> bool,
) {
    let started = Instant::now();
    loop {
        let mut shown = Vec::new();
        for replica in replicas {
            shown.push(replica.get(id).await.1);
        }
        if shown.iter().all(&holds) {
            return;
        }
        assert!(
            started.elapsed() < CATCH_UP,
            "{what}: after {CATCH_UP:?} the replicas show {shown:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `rounds` times: tenant `id` is disabled through `first` while `second` changes its
/// extra labels, then relabelled through `first` while `second` re-enables it, each pair
/// sent at the same moment. After each pair both replicas must show both changes, and
/// the version must have moved by exactly two (two writes, neither lost).
pub async fn simultaneous_patches_keep_both_changes(
    first: &AdminEndpoint,
    second: &AdminEndpoint,
    id: &str,
    rounds: usize,
) {
    let both = [first, second];
    for round in 0..rounds {
        let (status, before) = first.get(id).await;
        assert_eq!(status, 200, "{before}");
        let version = before["version"].as_i64().expect("version");
        let marker = format!("round-{round}");

        let (disabled, labelled) = tokio::join!(
            first.patch(id, json!({"status": "disabled"})),
            second.patch(id, json!({"extra_labels": {"round": marker}})),
        );
        assert_eq!(disabled.0, 200, "{}", disabled.1);
        assert_eq!(labelled.0, 200, "{}", labelled.1);
        until_every_replica_shows(
            &both,
            id,
            &format!("round {round}, disable + labels"),
            |t| {
                t["status"] == "disabled"
                    && t["extra_labels"]["round"] == marker.as_str()
                    && t["version"] == version + 2
            },
        )
        .await;

        let label_value = format!("{id}-{round}");
        let (relabelled, enabled) = tokio::join!(
            first.patch(id, json!({"label_value": label_value})),
            second.patch(id, json!({"status": "active"})),
        );
        assert_eq!(relabelled.0, 200, "{}", relabelled.1);
        assert_eq!(enabled.0, 200, "{}", enabled.1);
        until_every_replica_shows(
            &both,
            id,
            &format!("round {round}, relabel + enable"),
            |t| {
                t["status"] == "active"
                    && t["label_value"] == label_value.as_str()
                    && t["extra_labels"]["round"] == marker.as_str()
                    && t["version"] == version + 4
            },
        )
        .await;
    }
}

/// `rounds` times: two tenants created at the same moment, one through each replica,
/// with the same `label_value` (set explicitly, or one tenant's default, its id): exactly
/// one create wins (201), the other is 409.
pub async fn simultaneous_creates_share_no_label_value(
    first: &AdminEndpoint,
    second: &AdminEndpoint,
    rounds: usize,
) {
    for round in 0..rounds {
        let (explicit, default) = (
            (
                json!({"id": format!("x{round}-a"), "label_value": format!("shared-{round}")}),
                json!({"id": format!("x{round}-b"), "label_value": format!("shared-{round}")}),
            ),
            (
                json!({"id": format!("d{round}")}),
                json!({"id": format!("d{round}-other"), "label_value": format!("d{round}")}),
            ),
        );
        for (one, other) in [explicit, default] {
            let (a, b) = tokio::join!(
                first.call(Method::POST, "/admin/v1/tenants", Some(one.clone())),
                second.call(Method::POST, "/admin/v1/tenants", Some(other.clone())),
            );
            let mut statuses = [a.0, b.0];
            statuses.sort_unstable();
            assert_eq!(statuses, [201, 409], "{one} / {other}: {} / {}", a.1, b.1);
            let refused = if a.0 == 409 { &a.1 } else { &b.1 };
            assert!(
                refused["error"]
                    .as_str()
                    .is_some_and(|error| error.contains("label_value")),
                "{refused}"
            );
        }
    }
    let (_, listed) = first.call(Method::GET, "/admin/v1/tenants", None).await;
    let mut label_values: Vec<&str> = listed["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .map(|tenant| tenant["label_value"].as_str().expect("label_value"))
        .collect();
    let count = label_values.len();
    label_values.sort_unstable();
    label_values.dedup();
    assert_eq!(label_values.len(), count, "every label_value once");
}
