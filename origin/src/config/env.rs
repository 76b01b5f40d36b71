//! `ALLOT_*` environment overrides: which variable sets which config key, and how its
//! text becomes a TOML value. Applied to the parsed file before deserialising, so an
//! override goes through exactly the same checks as the file.

use std::collections::HashMap;

use super::ConfigError;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// Comma-separated strings.
    List,
    /// `name:role:sha256` entries, comma-separated.
    Tokens,
}

/// Every environment override: variable, path in the TOML tree, value kind.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("ALLOT_LISTEN", "listen"),
    ("ALLOT_REDIS_URL", "redis.url"),
    ("ALLOT_REDIS_CLUSTER", "redis.cluster"),
    ("ALLOT_REDIS_STREAM_MAX_LEN", "redis.stream_max_len"),
    ("ALLOT_INGEST_KEYS", "ingest.keys"),
    ("ALLOT_INGEST_MAX_SKEW_SECS", "ingest.max_skew_secs"),
    ("ALLOT_INGEST_MAX_SIGNATURE_AGE_SECS", "ingest.max_signature_age_secs"),
    ("ALLOT_INGEST_MAX_BODY_BYTES", "ingest.max_body_bytes"),
    ("ALLOT_INGEST_CATALOGUE_REFRESH_MS", "ingest.catalogue_refresh_ms"),
    ("ALLOT_AGGREGATE_ENABLED", "aggregate.enabled"),
    ("ALLOT_AGGREGATE_CONSUMER", "aggregate.consumer"),
    ("ALLOT_AGGREGATE_BATCH", "aggregate.batch"),
    ("ALLOT_AGGREGATE_CLAIM_MIN_IDLE_MS", "aggregate.claim_min_idle_ms"),
    #[cfg(feature = "failpoints")]
    ("ALLOT_AGGREGATE_FAILPOINT", "aggregate.failpoint"),
    #[cfg(feature = "failpoints")]
    ("ALLOT_CONTROL_FAILPOINT", "control.failpoint"),
    ("ALLOT_CONTROL_LEASE_MS", "control.lease_ms"),
    ("ALLOT_CONTROL_ENABLED", "control.enabled"),
    ("ALLOT_CONTROL_PERIOD_MS", "control.period_ms"),
    ("ALLOT_CONTROL_MIN_SAMPLE_RATE", "control.min_sample_rate"),
    ("ALLOT_PUBLISH_KIND", "publish.kind"),
    ("ALLOT_PUBLISH_WORKER_URL", "publish.worker.url"),
    ("ALLOT_PUBLISH_WORKER_KEYS", "publish.worker.keys"),
    ("ALLOT_PUBLISH_CLOUDFLARE_BASE_URL", "publish.cloudflare.base_url"),
    ("ALLOT_PUBLISH_CLOUDFLARE_ACCOUNT_ID", "publish.cloudflare.account_id"),
    ("ALLOT_PUBLISH_CLOUDFLARE_NAMESPACE_ID", "publish.cloudflare.namespace_id"),
    ("ALLOT_PUBLISH_CLOUDFLARE_API_TOKEN", "publish.cloudflare.api_token"),
    ("ALLOT_ADMIN_TOKENS", "admin.tokens"),
    ("ALLOT_REDIS_ALLOW_UNSAFE", "redis.allow_unsafe"),
    ("ALLOT_HTTP_HEADER_READ_TIMEOUT_MS", "http.header_read_timeout_ms"),
    ("ALLOT_HTTP_REQUEST_TIMEOUT_MS", "http.request_timeout_ms"),
    ("ALLOT_HTTP_MAX_CONNECTIONS", "http.max_connections"),
    ("ALLOT_LOG_LEVEL", "log.level"),
    ("ALLOT_LOG_FORMAT", "log.format"),
];

fn kind_of(path: &str) -> Kind {
    match path {
        "redis.stream_max_len"
        | "ingest.max_skew_secs"
        | "ingest.max_signature_age_secs"
        | "ingest.max_body_bytes"
        | "ingest.catalogue_refresh_ms"
        | "aggregate.claim_min_idle_ms"
        | "aggregate.batch"
        | "control.period_ms"
        | "control.lease_ms"
        | "http.header_read_timeout_ms"
        | "http.request_timeout_ms"
        | "http.max_connections" => Kind::Int,
        "control.min_sample_rate" => Kind::Float,
        "aggregate.enabled" | "control.enabled" | "redis.cluster" | "redis.allow_unsafe" => Kind::Bool,
        "ingest.keys" | "publish.worker.keys" => Kind::List,
        "admin.tokens" => Kind::Tokens,
        _ => Kind::Str,
    }
}

fn env_value(var: &'static str, raw: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    let err = |message: String| ConfigError::Env { var, message };
    Ok(match kind {
        Kind::Str => toml::Value::String(raw.to_string()),
        Kind::Int => toml::Value::Integer(raw.trim().parse().map_err(|_| err("expected an integer".into()))?),
        Kind::Float => toml::Value::Float(raw.trim().parse().map_err(|_| err("expected a number".into()))?),
        Kind::Bool => toml::Value::Boolean(match raw.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(err("expected true or false".into())),
        }),
        Kind::List => toml::Value::Array(
            raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| toml::Value::String(s.into())).collect(),
        ),
        Kind::Tokens => {
            let mut out = Vec::new();
            for entry in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let mut parts = entry.splitn(3, ':');
                let (Some(name), Some(role), Some(sha)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(err(format!("token entries are name:role:sha256 (got {entry:?})")));
                };
                let mut t = toml::Table::new();
                t.insert("name".into(), toml::Value::String(name.into()));
                t.insert("role".into(), toml::Value::String(role.into()));
                t.insert("sha256".into(), toml::Value::String(sha.into()));
                out.push(toml::Value::Table(t));
            }
            toml::Value::Array(out)
        }
    })
}

fn set_path(root: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or(path);
    let mut table = root;
    for p in parts {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(t) = entry else { return };
        table = t;
    }
    table.insert(last.to_string(), value);
}

/// Applies every override present in `env` to the TOML tree.
pub(super) fn apply(root: &mut toml::Table, env: &HashMap<String, String>) -> Result<(), ConfigError> {
    for (var, path) in ENV_OVERRIDES {
        if let Some(raw) = env.get(*var) {
            set_path(root, path, env_value(var, raw, kind_of(path))?);
        }
    }
    Ok(())
}
