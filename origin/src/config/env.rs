//! `ALLOT_*` environment overrides, by one rule: the key `section.key` of the TOML file is
//! the variable `ALLOT_SECTION_KEY` (dots become underscores, upper case), for every key
//! the sample file documents.
//!
//! The sample (`origin/allot.example.toml`, built into the binary) is the schema: a key
//! it shows, set or commented out (`# key = value` lines are documented defaults and
//! optional sections), is a setting, and its sample value says how a variable's text
//! becomes a value: a string, an integer, a number, a boolean, a list of strings
//! (comma-separated) or the admin tokens (`name:role:sha256`, comma-separated). The
//! config's tests hold the sample to the config's types in both directions, so a key
//! cannot be added to one without the other.
//!
//! A variable that names no setting (`ALLOT_REDIS_URI`, `ALLOT_ARCHIVE_BUKET`) is refused
//! rather than ignored: a typo would otherwise leave a production setting at its
//! default. Variables outside the settings' sections (`ALLOT_CACHE`, used by the build
//! scripts) are not the origin's and are left alone. Overrides are applied to the parsed
//! file before deserialising, so they go through exactly the same checks as the file.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use super::ConfigError;

/// The documented sample configuration: the schema of the overrides.
pub const SAMPLE: &str = include_str!("../../allot.example.toml");

/// How a variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// Comma-separated strings.
    List,
    /// `name:role:sha256` entries, comma-separated.
    Tokens,
}

/// One setting: its path in the TOML tree and how its variable's text is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub path: String,
    pub kind: Kind,
}

/// Every setting, by variable name.
pub fn settings() -> &'static BTreeMap<String, Setting> {
    static SETTINGS: LazyLock<BTreeMap<String, Setting>> = LazyLock::new(|| {
        let mut out = BTreeMap::new();
        for (path, kind) in documented(SAMPLE).into_iter().chain(test_hooks()) {
            out.insert(var_of(&path), Setting { path, kind });
        }
        out
    });
    &SETTINGS
}

/// The variable that sets `path`.
pub fn var_of(path: &str) -> String {
    format!("ALLOT_{}", path.replace('.', "_").to_ascii_uppercase())
}

/// The settings that exist only in builds with test hooks.
fn test_hooks() -> Vec<(String, Kind)> {
    let mut hooks = Vec::new();
    if cfg!(feature = "failpoints") {
        hooks.push(("aggregate.failpoint".to_string(), Kind::Str));
        hooks.push(("control.failpoint".to_string(), Kind::Str));
    }
    hooks
}

/// The keys `sample` documents, with the kind of their sample values.
pub fn documented(sample: &str) -> Vec<(String, Kind)> {
    let mut out = Vec::new();
    if let Ok(table) = uncomment(sample).parse::<toml::Table>() {
        walk("", &table, &mut out);
    }
    out
}

/// The sample with its documented keys set: every commented-out line that is itself a
/// TOML table header or a single key (`# [archive]`, `# bucket = "…"`) uncommented.
pub fn uncomment(sample: &str) -> String {
    let mut out = String::with_capacity(sample.len());
    for line in sample.lines() {
        let text = line.trim().strip_prefix('#').map(str::trim);
        let keep = text.filter(|t| {
            let header = t.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            match header {
                Some(h) => !h.is_empty() && h.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.'),
                None => t.parse::<toml::Table>().is_ok_and(|one| one.len() == 1),
            }
        });
        out.push_str(keep.unwrap_or(line));
        out.push('\n');
    }
    out
}

fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<(String, Kind)>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        let kind = match value {
            toml::Value::Table(t) => {
                walk(&format!("{path}."), t, out);
                continue;
            }
            toml::Value::String(_) | toml::Value::Datetime(_) => Kind::Str,
            toml::Value::Integer(_) => Kind::Int,
            toml::Value::Float(_) => Kind::Float,
            toml::Value::Boolean(_) => Kind::Bool,
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) && !items.is_empty() => Kind::Tokens,
            toml::Value::Array(_) => Kind::List,
        };
        out.push((path, kind));
    }
}

/// The first segment of every setting's variable (`ALLOT_REDIS_…`, `ALLOT_LISTEN`):
/// a variable starting with one of them claims to be a setting.
fn claims_a_setting(var: &str) -> bool {
    let Some(rest) = var.strip_prefix("ALLOT_") else { return false };
    settings().values().any(|s| {
        let first = s.path.split('.').next().unwrap_or_default().to_ascii_uppercase();
        rest == first || rest.starts_with(&format!("{first}_"))
    })
}

fn env_value(var: &str, raw: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    let err = |message: String| ConfigError::Env { var: var.to_string(), message };
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

/// Applies every setting's variable present in `env` to the TOML tree, refusing a
/// variable that claims to be a setting and is none. Returns what was applied: the
/// paths, by variable.
pub(super) fn apply(
    root: &mut toml::Table,
    env: &HashMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut applied = BTreeMap::new();
    let mut vars: Vec<(&String, &String)> = env.iter().collect();
    vars.sort();
    for (var, raw) in vars {
        match settings().get(var) {
            Some(s) => {
                set_path(root, &s.path, env_value(var, raw, s.kind)?);
                applied.insert(var.clone(), s.path.clone());
            }
            None if claims_a_setting(var) => {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: "not a setting (ALLOT_<SECTION>_<KEY> for the keys of allot.example.toml; \
                              `allot-origin check-config --list-env` lists them)"
                        .into(),
                });
            }
            None => {}
        }
    }
    Ok(applied)
}
