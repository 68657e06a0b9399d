//! `GET /admin/v1/tenants/{id}/ha` (DESIGN §15): each of a tenant's HA clusters, its
//! elected replica, when it was elected, when its samples were last received, and how
//! many times the election changed, as the registry holds them.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::config::units::HumanDuration;
use crate::error::{AppError, JsonError};
use crate::series::ha::Election;
use crate::server::SharedState;
use crate::tenant::validate_tenant_id;

/// One cluster as the API shows it.
#[derive(Debug, Serialize)]
struct ClusterView {
    cluster: String,
    elected_replica: String,
    elected_at: String,
    /// When the elected replica's samples were last received (by any relay, as far as
    /// the registry was told: it is refreshed every third of the failover timeout).
    received_at: String,
    changes: i64,
}

impl From<Election> for ClusterView {
    fn from(election: Election) -> ClusterView {
        ClusterView {
            cluster: election.cluster,
            elected_replica: election.replica,
            elected_at: rfc3339_millis(election.elected_at),
            received_at: rfc3339_millis(election.received_at),
            changes: election.changes,
        }
    }
}

#[derive(Debug, Serialize)]
struct HaView {
    tenant: String,
    accept_ha_samples: bool,
    ha_cluster_label: String,
    ha_replica_label: String,
    ha_failover_timeout: HumanDuration,
    ha_max_clusters: u64,
    clusters: Vec<ClusterView>,
}

pub(super) async fn tenant_ha(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Response, JsonError> {
    validate_tenant_id(&id).map_err(AppError::BadRequest)?;
    let entry = state
        .registry
        .tenant(&id)
        .ok_or_else(|| AppError::NotFound(format!("tenant {id:?} not found")))?;
    let elections = state
        .registry
        .store()
        .ha_elections(&id)
        .await
        .map_err(|err| {
            tracing::error!(tenant = %id, error = %err, "cannot read HA elections");
            AppError::Unavailable {
                message: "the registry cannot be read; retry later".into(),
                retry_after_seconds: 1,
            }
        })?;
    let limits = &entry.limits;
    let view = HaView {
        tenant: id,
        accept_ha_samples: limits.accept_ha_samples,
        ha_cluster_label: limits.ha_cluster_label.clone(),
        ha_replica_label: limits.ha_replica_label.clone(),
        ha_failover_timeout: HumanDuration(limits.ha_failover_timeout),
        ha_max_clusters: limits.ha_max_clusters,
        clusters: elections.into_iter().map(ClusterView::from).collect(),
    };
    Ok(Json(view).into_response())
}

fn rfc3339_millis(unix_millis: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_millis).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}
