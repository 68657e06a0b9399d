//! The readable output of the admin commands: aligned columns for lists, one field a
//! line for a single tenant. Values come from the server and are printed with control
//! characters replaced, so nothing stored can drive the terminal.

use std::fmt::Write;

use serde_json::Value;

/// Replaces control characters (escape sequences, newlines) with `?`.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Columns separated by two spaces, each as wide as its widest cell.
fn columns(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|name| name.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|name| name.to_string()).collect();
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => clean(text),
        Value::Null => String::new(),
        other => clean(&other.to_string()),
    }
}

/// `name=value, …` of a JSON object; `-` when empty.
fn object(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(name, value)| format!("{}={}", clean(name), text(value)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

/// The items of a JSON array, comma-separated; `empty` when there are none.
fn list(value: &Value, empty: &str) -> String {
    match value.as_array() {
        Some(items) if !items.is_empty() => items.iter().map(text).collect::<Vec<_>>().join(", "),
        _ => empty.into(),
    }
}

/// A tenant's relabel rules in one line: how many, and each one's action.
fn relabel_rules(value: &Value) -> String {
    match value.as_array() {
        Some(rules) if !rules.is_empty() => {
            let actions: Vec<&str> = rules
                .iter()
                .map(|rule| rule["action"].as_str().unwrap_or("replace"))
                .collect();
            format!("{} rule(s): {}", rules.len(), actions.join(", "))
        }
        _ => "-".into(),
    }
}

/// `GET /admin/v1/tenants` as a table.
pub fn tenants(body: &Value) -> String {
    let rows = body["tenants"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|tenant| {
            vec![
                text(&tenant["id"]),
                text(&tenant["status"]),
                text(&tenant["label_value"]),
                list(&tenant["backends"], "(all)"),
                tenant["identities"]
                    .as_array()
                    .map_or(0, Vec::len)
                    .to_string(),
                object(&tenant["limits"]),
                text(&tenant["version"]),
            ]
        })
        .collect();
    columns(
        &[
            "ID",
            "STATUS",
            "LABEL_VALUE",
            "BACKENDS",
            "IDENTITIES",
            "LIMITS",
            "VERSION",
        ],
        rows,
    )
}

/// The usage report as a table: a row per tenant and day, a column per figure.
pub fn usage(rows: &[crate::usage::UsageRow]) -> String {
    let mut header = vec!["TENANT".to_string(), "DAY".to_string()];
    header.extend(
        crate::usage::ALL_FIELDS
            .iter()
            .map(|field| field.column().to_uppercase()),
    );
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let rows = rows
        .iter()
        .map(|row| {
            let mut cells = vec![clean(&row.tenant), crate::usage::format_day(row.day)];
            cells.extend(
                crate::usage::ALL_FIELDS
                    .iter()
                    .map(|field| row.figures.get(*field).to_string()),
            );
            cells
        })
        .collect();
    columns(&header, rows)
}

/// One tenant, a field a line.
pub fn tenant(tenant: &Value) -> String {
    let fields = [
        ("id", text(&tenant["id"])),
        ("status", text(&tenant["status"])),
        ("label_value", text(&tenant["label_value"])),
        ("extra_labels", object(&tenant["extra_labels"])),
        ("limits", object(&tenant["limits"])),
        ("identities", list(&tenant["identities"], "-")),
        ("backends", list(&tenant["backends"], "(all)")),
        ("relabel", relabel_rules(&tenant["write_relabel_configs"])),
        ("created_at", text(&tenant["created_at"])),
        ("updated_at", text(&tenant["updated_at"])),
        ("version", text(&tenant["version"])),
    ];
    let mut out = String::new();
    for (name, value) in fields {
        let _ = writeln!(out, "{:<14}{value}", format!("{name}:"));
    }
    out
}

/// `GET /admin/v1/tenants/{id}/tokens` as a table.
pub fn tokens(body: &Value) -> String {
    let rows = body["tokens"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|token| {
            vec![
                text(&token["id"]),
                text(&token["status"]),
                text(&token["created_at"]),
                text(&token["expires_at"]),
                text(&token["description"]),
            ]
        })
        .collect();
    columns(&["ID", "STATUS", "CREATED", "EXPIRES", "DESCRIPTION"], rows)
}

/// `GET /admin/v1/tenants/{id}/ha` as a table, after a line of the tenant's settings.
pub fn ha(body: &Value) -> String {
    let mut out = format!(
        "accept_ha_samples={} cluster_label={} replica_label={} failover_timeout={} max_clusters={}\n",
        text(&body["accept_ha_samples"]),
        text(&body["ha_cluster_label"]),
        text(&body["ha_replica_label"]),
        text(&body["ha_failover_timeout"]),
        text(&body["ha_max_clusters"]),
    );
    let rows = body["clusters"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|cluster| {
            vec![
                text(&cluster["cluster"]),
                text(&cluster["elected_replica"]),
                text(&cluster["elected_at"]),
                text(&cluster["received_at"]),
                text(&cluster["changes"]),
            ]
        })
        .collect();
    out.push_str(&columns(
        &[
            "CLUSTER",
            "ELECTED_REPLICA",
            "ELECTED_AT",
            "RECEIVED_AT",
            "CHANGES",
        ],
        rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tenants_line_up_and_stored_text_cannot_drive_the_terminal() {
        let body = json!({"tenants": [
            {"id": "alpha", "status": "active", "label_value": "alpha", "backends": [],
             "identities": [], "limits": {"requests_per_second": 5}, "version": 1},
            {"id": "b", "status": "disabled", "label_value": "b\u{1b}[2J", "backends": ["x", "y"],
             "identities": ["spiffe://b"], "limits": {}, "version": 12},
        ]});
        let table = tenants(&body);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("ID     STATUS    LABEL_VALUE"),
            "{table}"
        );
        assert!(lines[1].contains("(all)") && lines[1].contains("requests_per_second=5"));
        assert!(lines[2].contains("b?[2J") && !table.contains('\u{1b}'));
        assert!(lines[2].contains("x, y"));
    }

    #[test]
    fn ha_clusters_line_up() {
        let body = json!({"tenant": "alpha", "accept_ha_samples": true, "ha_cluster_label": "cluster",
        "ha_replica_label": "__replica__", "ha_failover_timeout": "10s", "ha_max_clusters": 100,
        "clusters": [
            {"cluster": "prod", "elected_replica": "r2", "elected_at": "2026-12-08T00:00:00.000Z",
             "received_at": "2026-12-08T00:01:00.000Z", "changes": 1},
            {"cluster": "eu\u{1b}", "elected_replica": "a", "elected_at": "2026-12-08T00:00:00.000Z",
             "received_at": "2026-12-08T00:00:05.000Z", "changes": 0},
        ]});
        let table = ha(&body);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].contains("failover_timeout=10s"), "{table}");
        assert!(
            lines[1].starts_with("CLUSTER  ELECTED_REPLICA  ELECTED_AT"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("prod     r2") && lines[2].ends_with(" 1"),
            "{table}"
        );
        assert!(lines[3].contains("eu?") && !table.contains('\u{1b}'));
    }
}
