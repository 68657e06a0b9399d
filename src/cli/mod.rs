//! `promgate tenant …`, `promgate token …` and `promgate usage` (DESIGN §2, §17): a small
//! client of the admin
//! API (DESIGN §5), never a second way into the registry database. A readable table by
//! default, the API's JSON with `--output json`; `token issue` prints the secret alone on
//! stdout (so `… > alpha.token` works) and what it is on stderr. Any refusal is the API's
//! one-line message on stderr and exit status 1 (the caller, `main`, exits).

mod client;
mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

pub use client::{AdminClient, CallError};

use crate::usage::UsageRow;

/// Where the admin API is and how to talk to it; accepted anywhere on the line.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The admin listener of a running promgate.
    #[arg(
        long,
        global = true,
        env = "PROMGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:9202",
        help_heading = "Admin client"
    )]
    pub admin_url: String,
    /// The file holding the admin token (`admin.token_file` of that promgate).
    #[arg(
        long,
        global = true,
        env = "PROMGATE_ADMIN_TOKEN_FILE",
        default_value = "promgate-admin.token",
        help_heading = "Admin client"
    )]
    pub admin_token_file: PathBuf,
    /// `table` for people, `json` (the API's own JSON) for scripts, `csv` for
    /// spreadsheets (`usage` only).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = Output::Table,
        help_heading = "Admin client"
    )]
    pub output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Register a tenant (active unless --disabled).
    Create {
        id: String,
        #[command(flatten)]
        fields: CreateFields,
    },
    /// Every tenant.
    List,
    /// One tenant.
    Get { id: String },
    /// Change some of a tenant's fields; the others stay as they are.
    Update {
        id: String,
        #[command(flatten)]
        change: UpdateFields,
    },
    /// Refuse the tenant's requests (403) until it is enabled again.
    Disable { id: String },
    /// Accept the tenant's requests again.
    Enable { id: String },
    /// Delete the tenant with its identities and tokens.
    Delete { id: String },
    /// The tenant's HA clusters: each one's elected replica, when it was elected, when
    /// its samples were last received, and how many times the election changed.
    Ha { id: String },
}

#[derive(Args, Debug)]
pub struct CreateFields {
    /// The tenant label's value on its series (default: the id).
    #[arg(long)]
    label_value: Option<String>,
    /// A further label enforced on every series, as NAME=VALUE (repeatable).
    #[arg(long = "extra-label", value_name = "NAME=VALUE")]
    extra_labels: Vec<String>,
    /// A limit override, as KEY=VALUE with the keys of `[limits]` (repeatable).
    #[arg(long = "limit", value_name = "KEY=VALUE")]
    limits: Vec<String>,
    /// An mTLS identity (URI or DNS SAN) of this tenant (repeatable).
    #[arg(long = "identity", value_name = "SAN")]
    identities: Vec<String>,
    /// A backend this tenant writes to (repeatable; default: every backend).
    #[arg(long = "backend", value_name = "NAME")]
    backends: Vec<String>,
    /// Create it disabled.
    #[arg(long)]
    disabled: bool,
    /// The tenant's write_relabel_configs: a JSON file holding an array of Prometheus
    /// relabel_config rules (DESIGN §16).
    #[arg(long, value_name = "FILE")]
    relabel_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UpdateFields {
    #[arg(long)]
    label_value: Option<String>,
    /// Add or replace an extra label, as NAME=VALUE (repeatable).
    #[arg(long = "extra-label", value_name = "NAME=VALUE")]
    extra_labels: Vec<String>,
    /// Remove an extra label (repeatable).
    #[arg(long = "remove-extra-label", value_name = "NAME")]
    remove_extra_labels: Vec<String>,
    /// Set a limit override, as KEY=VALUE (repeatable).
    #[arg(long = "limit", value_name = "KEY=VALUE")]
    limits: Vec<String>,
    /// Remove a limit override: the config default applies again (repeatable).
    #[arg(long = "unset-limit", value_name = "KEY")]
    unset_limits: Vec<String>,
    /// Add an mTLS identity (repeatable).
    #[arg(long = "identity", value_name = "SAN")]
    identities: Vec<String>,
    /// Remove an mTLS identity (repeatable).
    #[arg(long = "remove-identity", value_name = "SAN")]
    remove_identities: Vec<String>,
    /// Restrict the tenant to these backends (repeatable; replaces the list).
    #[arg(long = "backend", value_name = "NAME", conflicts_with = "all_backends")]
    backends: Vec<String>,
    /// Let the tenant write to every configured backend.
    #[arg(long)]
    all_backends: bool,
    /// Replace the tenant's write_relabel_configs with the JSON array of rules in FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "clear_relabel")]
    relabel_file: Option<PathBuf>,
    /// Remove every write_relabel_configs rule of the tenant.
    #[arg(long)]
    clear_relabel: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a token: the secret alone on stdout, what it is on stderr.
    Issue {
        tenant: String,
        /// Lifetime such as 30d (default: auth.tokens.default_ttl).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// A tenant's tokens (metadata; secrets are never stored).
    List { tenant: String },
    /// Revoke a token at once, on every replica.
    Revoke { tenant: String, token_id: String },
}

/// `promgate usage`: each tenant's usage per UTC day (DESIGN §17).
#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// First day, YYYY-MM-DD (UTC; default: the first day of --to's month).
    #[arg(long, value_name = "DAY")]
    from: Option<String>,
    /// Last day, included, YYYY-MM-DD (UTC; default: today).
    #[arg(long, value_name = "DAY")]
    to: Option<String>,
}

/// A tenant, token or usage command.
#[derive(Debug)]
pub enum AdminCommand {
    Tenant(TenantCommand),
    Token(TokenCommand),
    Usage(UsageArgs),
}

/// How often `tenant update` reads and writes again when another change landed between.
const UPDATE_ATTEMPTS: usize = 3;

/// Runs one command against the admin API; `Err` is the one line to print.
pub fn run(args: &AdminArgs, command: AdminCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start: {err}"))?;
    runtime.block_on(async {
        if args.output == Output::Csv && !matches!(command, AdminCommand::Usage(_)) {
            return Err("--output csv is for `promgate usage` only".to_string());
        }
        let client = AdminClient::new(&args.admin_url, &args.admin_token_file)?;
        match command {
            AdminCommand::Tenant(command) => tenant(&client, args.output, command).await,
            AdminCommand::Token(command) => token(&client, args.output, command).await,
            AdminCommand::Usage(query) => usage(&client, args.output, &query).await,
        }
        .map_err(|err| err.to_string())
    })
}

async fn tenant(
    client: &AdminClient,
    output: Output,
    command: TenantCommand,
) -> Result<(), CallError> {
    match command {
        TenantCommand::Create { id, fields } => {
            let mut body = Map::new();
            body.insert("id".into(), json!(id));
            if let Some(label_value) = fields.label_value {
                body.insert("label_value".into(), json!(label_value));
            }
            if !fields.extra_labels.is_empty() {
                body.insert(
                    "extra_labels".into(),
                    Value::Object(pairs(&fields.extra_labels, "--extra-label", string_value)?),
                );
            }
            if !fields.limits.is_empty() {
                body.insert(
                    "limits".into(),
                    Value::Object(pairs(&fields.limits, "--limit", limit_value)?),
                );
            }
            if !fields.identities.is_empty() {
                body.insert("identities".into(), json!(fields.identities));
            }
            if !fields.backends.is_empty() {
                body.insert("backends".into(), json!(fields.backends));
            }
            if fields.disabled {
                body.insert("status".into(), json!("disabled"));
            }
            if let Some(path) = &fields.relabel_file {
                body.insert("write_relabel_configs".into(), relabel_rules(path)?);
            }
            let answer = client
                .call(
                    Method::POST,
                    "admin/v1/tenants",
                    Some(&Value::Object(body)),
                    None,
                )
                .await?;
            show_tenant(output, &answer.body);
        }
        TenantCommand::List => {
            let answer = client
                .call(Method::GET, "admin/v1/tenants", None, None)
                .await?;
            match output {
                Output::Json | Output::Csv => print_json(&answer.body),
                Output::Table => print!("{}", table::tenants(&answer.body)),
            }
        }
        TenantCommand::Get { id } => {
            let answer = client
                .call(Method::GET, &tenant_path(&id), None, None)
                .await?;
            show_tenant(output, &answer.body);
        }
        TenantCommand::Ha { id } => {
            let answer = client
                .call(Method::GET, &format!("{}/ha", tenant_path(&id)), None, None)
                .await?;
            match output {
                Output::Json | Output::Csv => print_json(&answer.body),
                Output::Table => print!("{}", table::ha(&answer.body)),
            }
        }
        TenantCommand::Update { id, change } => {
            let updated = update(client, &id, &change).await?;
            show_tenant(output, &updated);
        }
        TenantCommand::Disable { id } => set_status(client, output, &id, "disabled").await?,
        TenantCommand::Enable { id } => set_status(client, output, &id, "active").await?,
        TenantCommand::Delete { id } => {
            client
                .call(Method::DELETE, &tenant_path(&id), None, None)
                .await?;
            match output {
                Output::Json | Output::Csv => print_json(&json!({ "deleted": id })),
                Output::Table => println!("tenant {id} deleted"),
            }
        }
    }
    Ok(())
}

async fn set_status(
    client: &AdminClient,
    output: Output,
    id: &str,
    status: &str,
) -> Result<(), CallError> {
    let answer = client
        .call(
            Method::PATCH,
            &tenant_path(id),
            Some(&json!({ "status": status })),
            None,
        )
        .await?;
    show_tenant(output, &answer.body);
    Ok(())
}

/// Reads the tenant, applies the change to what it holds, and writes back onto that
/// version (`If-Match`), so a change made meanwhile by someone else is never undone.
async fn update(client: &AdminClient, id: &str, change: &UpdateFields) -> Result<Value, CallError> {
    let path = tenant_path(id);
    let mut last_error = None;
    for _ in 0..UPDATE_ATTEMPTS {
        let current = client.call(Method::GET, &path, None, None).await?;
        let body = patch_body(&current.body, change)?;
        match client
            .call(Method::PATCH, &path, Some(&body), current.etag.as_deref())
            .await
        {
            Ok(answer) => return Ok(answer.body),
            Err(CallError::Api {
                status: StatusCode::PRECONDITION_FAILED,
                message,
            }) => {
                last_error = Some(CallError::Api {
                    status: StatusCode::PRECONDITION_FAILED,
                    message,
                })
            }
            Err(err) => return Err(err),
        }
    }
    Err(last_error.unwrap_or_else(|| CallError::Other("tenant kept changing; retry".into())))
}

/// The PATCH body: only the fields the command changes, merged into the current ones.
fn patch_body(current: &Value, change: &UpdateFields) -> Result<Value, CallError> {
    let mut body = Map::new();
    if let Some(label_value) = &change.label_value {
        body.insert("label_value".into(), json!(label_value));
    }
    if !change.extra_labels.is_empty() || !change.remove_extra_labels.is_empty() {
        let mut labels = current["extra_labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        labels.extend(pairs(&change.extra_labels, "--extra-label", string_value)?);
        for name in &change.remove_extra_labels {
            labels.remove(name);
        }
        body.insert("extra_labels".into(), Value::Object(labels));
    }
    if !change.limits.is_empty() || !change.unset_limits.is_empty() {
        let mut limits = current["limits"].as_object().cloned().unwrap_or_default();
        limits.extend(pairs(&change.limits, "--limit", limit_value)?);
        for key in &change.unset_limits {
            limits.remove(key);
        }
        body.insert("limits".into(), Value::Object(limits));
    }
    if !change.identities.is_empty() || !change.remove_identities.is_empty() {
        let mut identities: Vec<String> = current["identities"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        for identity in &change.identities {
            if !identities.contains(identity) {
                identities.push(identity.clone());
            }
        }
        identities.retain(|identity| !change.remove_identities.contains(identity));
        body.insert("identities".into(), json!(identities));
    }
    if change.all_backends {
        body.insert("backends".into(), json!([]));
    } else if !change.backends.is_empty() {
        body.insert("backends".into(), json!(change.backends));
    }
    if change.clear_relabel {
        body.insert("write_relabel_configs".into(), json!([]));
    } else if let Some(path) = &change.relabel_file {
        body.insert("write_relabel_configs".into(), relabel_rules(path)?);
    }
    if body.is_empty() {
        return Err(CallError::Other(
            "nothing to change: give at least one option (see --help)".into(),
        ));
    }
    Ok(Value::Object(body))
}

async fn token(
    client: &AdminClient,
    output: Output,
    command: TokenCommand,
) -> Result<(), CallError> {
    match command {
        TokenCommand::Issue {
            tenant,
            ttl,
            description,
        } => {
            let mut body = Map::new();
            if let Some(ttl) = ttl {
                body.insert("ttl".into(), json!(ttl));
            }
            if let Some(description) = description {
                body.insert("description".into(), json!(description));
            }
            let answer = client
                .call(
                    Method::POST,
                    &format!("{}/tokens", tenant_path(&tenant)),
                    Some(&Value::Object(body)),
                    None,
                )
                .await?;
            match output {
                Output::Json | Output::Csv => print_json(&answer.body),
                Output::Table => {
                    let field = |name: &str| answer.body[name].as_str().unwrap_or_default();
                    eprintln!(
                        "token {} for tenant {} expires {}",
                        table::clean(field("id")),
                        table::clean(field("tenant_id")),
                        table::clean(field("expires_at"))
                    );
                    println!("{}", field("token"));
                }
            }
        }
        TokenCommand::List { tenant } => {
            let answer = client
                .call(
                    Method::GET,
                    &format!("{}/tokens", tenant_path(&tenant)),
                    None,
                    None,
                )
                .await?;
            match output {
                Output::Json | Output::Csv => print_json(&answer.body),
                Output::Table => print!("{}", table::tokens(&answer.body)),
            }
        }
        TokenCommand::Revoke { tenant, token_id } => {
            client
                .call(
                    Method::DELETE,
                    &format!(
                        "{}/tokens/{}",
                        tenant_path(&tenant),
                        path_segment(&token_id)
                    ),
                    None,
                    None,
                )
                .await?;
            match output {
                Output::Json | Output::Csv => {
                    print_json(&json!({ "revoked": token_id, "tenant_id": tenant }))
                }
                Output::Table => println!("token {token_id} of tenant {tenant} revoked"),
            }
        }
    }
    Ok(())
}

/// The usage report, in the API's JSON, as a table, or as the API's CSV (made here from
/// the same rows, by the same code).
async fn usage(client: &AdminClient, output: Output, query: &UsageArgs) -> Result<(), CallError> {
    let mut parameters = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in [
        ("from", &query.from),
        ("to", &query.to),
        ("tenant", &query.tenant),
    ] {
        if let Some(value) = value {
            parameters.append_pair(name, value);
        }
    }
    let parameters = parameters.finish();
    let path = if parameters.is_empty() {
        "admin/v1/usage".to_string()
    } else {
        format!("admin/v1/usage?{parameters}")
    };
    let answer = client.call(Method::GET, &path, None, None).await?;
    let rows = answer.body["rows"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|row| {
            UsageRow::from_json(row).ok_or_else(|| {
                CallError::Other(
                    "the admin API answered a usage row this client cannot read".into(),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    match output {
        Output::Json => print_json(&answer.body),
        Output::Csv => print!("{}", crate::usage::to_csv(&rows)),
        Output::Table => print!("{}", table::usage(&rows)),
    }
    Ok(())
}

/// A rules file is far smaller than this (100 rules at most).
const MAX_RELABEL_FILE_BYTES: u64 = 1 << 20;

/// The JSON array of relabel rules in `path`, sent as it is: the API checks each rule
/// and names the index of a bad one.
fn relabel_rules(path: &std::path::Path) -> Result<Value, CallError> {
    let problem =
        |what: String| CallError::Other(format!("--relabel-file {}: {what}", path.display()));
    let size = std::fs::metadata(path)
        .map_err(|err| problem(err.to_string()))?
        .len();
    if size > MAX_RELABEL_FILE_BYTES {
        return Err(problem(format!(
            "{size} bytes, over the limit of {MAX_RELABEL_FILE_BYTES}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|err| problem(err.to_string()))?;
    let rules: Value = serde_json::from_str(&text).map_err(|err| problem(err.to_string()))?;
    if !rules.is_array() {
        return Err(problem(
            "must hold a JSON array of relabel_config objects".into(),
        ));
    }
    Ok(rules)
}

fn show_tenant(output: Output, tenant: &Value) {
    match output {
        Output::Json | Output::Csv => print_json(tenant),
        Output::Table => print!("{}", table::tenant(tenant)),
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn tenant_path(id: &str) -> String {
    format!("admin/v1/tenants/{}", path_segment(id))
}

/// Percent-encodes everything but unreserved characters: an id can never add a path
/// segment or a query (the API refuses such ids anyway).
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `NAME=VALUE` arguments as a JSON object, the values made by `value`.
fn pairs(
    items: &[String],
    flag: &str,
    value: fn(&str) -> Value,
) -> Result<Map<String, Value>, CallError> {
    let mut map = BTreeMap::new();
    for item in items {
        let Some((name, text)) = item.split_once('=') else {
            return Err(CallError::Other(format!(
                "{flag} {item:?}: write NAME=VALUE"
            )));
        };
        map.insert(name.trim().to_string(), value(text.trim()));
    }
    Ok(map.into_iter().collect())
}

fn string_value(text: &str) -> Value {
    Value::String(text.to_string())
}

/// A limit as the API takes it: counts as numbers, sizes and durations (`32MiB`, `10m`)
/// as strings.
fn limit_value(text: &str) -> Value {
    match text.parse::<u64>() {
        Ok(number) => Value::from(number),
        Err(_) => Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> UpdateFields {
        UpdateFields {
            label_value: None,
            extra_labels: vec![],
            remove_extra_labels: vec![],
            limits: vec![],
            unset_limits: vec![],
            identities: vec![],
            remove_identities: vec![],
            backends: vec![],
            all_backends: false,
            relabel_file: None,
            clear_relabel: false,
        }
    }

    #[test]
    fn an_update_merges_into_what_the_tenant_holds() {
        let current = json!({
            "id": "alpha",
            "extra_labels": {"env": "prod", "team": "a"},
            "limits": {"requests_per_second": 5, "max_future_skew": "10m"},
            "identities": ["spiffe://a"],
            "backends": ["b0"],
        });
        let mut update = change();
        update.extra_labels = vec!["team=b".into()];
        update.remove_extra_labels = vec!["env".into()];
        update.limits = vec![
            "samples_per_second=100".into(),
            "max_request_bytes=4MiB".into(),
        ];
        update.unset_limits = vec!["max_future_skew".into()];
        update.identities = vec!["spiffe://b".into(), "spiffe://a".into()];
        let body = patch_body(&current, &update).expect("body");
        assert_eq!(
            body,
            json!({
                "extra_labels": {"team": "b"},
                "limits": {"requests_per_second": 5, "samples_per_second": 100, "max_request_bytes": "4MiB"},
                "identities": ["spiffe://a", "spiffe://b"],
            })
        );
        let mut update = change();
        update.all_backends = true;
        assert_eq!(
            patch_body(&current, &update).expect("body"),
            json!({"backends": []})
        );
        assert!(
            patch_body(&current, &change()).is_err(),
            "nothing to change"
        );
        let mut update = change();
        update.limits = vec!["requests_per_second".into()];
        assert!(patch_body(&current, &update).is_err(), "KEY=VALUE");
    }

    #[test]
    fn path_segments_cannot_escape() {
        assert_eq!(path_segment("alpha-1.b_c"), "alpha-1.b_c");
        assert_eq!(path_segment("../x?y"), "..%2Fx%3Fy");
    }
}
