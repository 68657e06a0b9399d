//! Tenants: the model and its validation (DESIGN §4), the SQL registry behind it
//! ([`store`]), and the in-memory cache the request path reads ([`registry`]).

pub mod registry;
pub mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{is_legacy_label_name, LimitOverrides};
use crate::series::relabel::{RelabelConfig, RelabelRules};

pub use registry::{Precondition, Registry, TenantEntry};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Disabled,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<TenantStatus> {
        match text {
            "active" => Some(TenantStatus::Active),
            "disabled" => Some(TenantStatus::Disabled),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    pub id: String,
    /// The value of the tenant label on every series (defaults to `id`).
    pub label_value: String,
    /// Further labels enforced on every series, like the tenant label.
    pub extra_labels: BTreeMap<String, String>,
    pub limits: LimitOverrides,
    /// mTLS identities (URI or DNS SANs) that authenticate as this tenant.
    pub identities: Vec<String>,
    /// Backend names this tenant writes to; empty means every configured backend.
    pub backends: Vec<String>,
    pub status: TenantStatus,
    /// Prometheus `relabel_config` rules run over each series the tenant writes, before
    /// its labels are enforced (DESIGN §16); checked by [`validate_tenant`].
    pub write_relabel_configs: Vec<RelabelConfig>,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// Bumped by every change in the database; the admin API's ETag. An update lands only
    /// on the version it was computed from, so concurrent admin writes never undo each other.
    pub version: i64,
}

/// A token promgate issued: metadata only, never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The JWT's `jti`.
    pub id: String,
    pub tenant_id: String,
    pub description: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

const MAX_TENANT_ID_BYTES: usize = 150;

/// `[a-zA-Z0-9_.-]{1,150}`, not `.` or `..` (DESIGN §4, Mimir's tenant-ID rules).
pub fn validate_tenant_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_TENANT_ID_BYTES {
        return Err(format!(
            "tenant id must be 1 to {MAX_TENANT_ID_BYTES} bytes"
        ));
    }
    if id == "." || id == ".." {
        return Err("tenant id may not be \".\" or \"..\"".into());
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "tenant id may only contain [a-zA-Z0-9_.-], not {bad:?}"
        ));
    }
    Ok(())
}

/// Checks the parts of a tenant that do not depend on other tenants.
pub fn validate_tenant(tenant: &Tenant, tenant_label: &str, backend_names: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(problem) = validate_tenant_id(&tenant.id) {
        problems.push(problem);
    }
    if tenant.label_value.is_empty() || tenant.label_value.len() > 2048 {
        problems.push("label_value must be 1 to 2048 bytes".into());
    }
    for (name, value) in &tenant.extra_labels {
        if !is_legacy_label_name(name) || name.starts_with("__") {
            problems.push(format!(
                "extra_labels: {name:?} must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __"
            ));
        } else if name == tenant_label {
            problems.push(format!(
                "extra_labels: {name:?} is the tenant label; set label_value instead"
            ));
        }
        if value.is_empty() || value.len() > 2048 {
            problems.push(format!(
                "extra_labels: the value of {name:?} must be 1 to 2048 bytes"
            ));
        }
    }
    for identity in &tenant.identities {
        if identity.is_empty() || identity.len() > 1024 || identity.chars().any(char::is_control) {
            problems.push(format!("identities: {identity:?} is not a URI or DNS SAN"));
        }
    }
    for backend in &tenant.backends {
        if !backend_names.contains(&backend.as_str()) {
            problems.push(format!("backends: {backend:?} is not a configured backend"));
        }
    }
    if let Err(relabel_problems) = RelabelRules::compile(&tenant.write_relabel_configs) {
        problems.extend(relabel_problems);
    }
    let effective = crate::config::Limits::default().with(&tenant.limits);
    problems.extend(effective.problems());
    problems.extend(effective.ha_label_problems(tenant_label));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_follow_the_design() {
        for good in ["alpha", "team-a.prod_1", "A", &"x".repeat(150)] {
            assert!(validate_tenant_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a|b",
            "a'; DROP TABLE tenants; --",
            "a/b",
            "ü",
            &"x".repeat(151),
        ] {
            assert!(validate_tenant_id(bad).is_err(), "{bad}");
        }
    }
}
