//! Secrets published with the source, refused wherever they come from.
//!
//! The sample configuration's ingest and push keys and its admin token are in the
//! repository, and so are the keys the local edge starts with when none is given
//! (`tests/edge.mjs`, `scripts/run-worker.sh`). An origin running with any of them
//! accepts events and admin changes from anyone who has read the source, so it does not
//! start. The sample's values are read from the sample itself, so editing it cannot
//! leave a stale list here.

use std::sync::LazyLock;

use super::env::SAMPLE;

/// What the error says about such a value.
pub const REFUSED: &str = "is a published sample value (allot.example.toml or the local edge's default); \
                           set a secret of your own";

/// The local edge's default keys when `INGEST_KEY` / `PUSH_KEYS` are not set.
const LOCAL_EDGE_DEFAULTS: [&str; 2] = ["dev-ingest-key-not-for-production", "dev-push-key-not-for-production"];

struct Published {
    keys: Vec<String>,
    token_hashes: Vec<String>,
}

static PUBLISHED: LazyLock<Published> = LazyLock::new(|| {
    let sample: toml::Table = SAMPLE.parse().unwrap_or_default();
    let at = |path: &[&str]| -> Vec<toml::Value> {
        let mut value = &toml::Value::Table(sample.clone());
        for p in path {
            match value.get(p) {
                Some(v) => value = v,
                None => return Vec::new(),
            }
        }
        value.as_array().cloned().unwrap_or_default()
    };
    let strings = |values: Vec<toml::Value>| values.into_iter().filter_map(|v| v.as_str().map(String::from));
    let mut keys: Vec<String> =
        strings(at(&["ingest", "keys"])).chain(strings(at(&["publish", "worker", "keys"]))).collect();
    keys.extend(LOCAL_EDGE_DEFAULTS.map(String::from));
    let token_hashes = at(&["admin", "tokens"])
        .iter()
        .filter_map(|t| t.get("sha256")?.as_str().map(str::to_ascii_lowercase))
        .collect();
    Published { keys, token_hashes }
});

/// Whether `key` is an ingest or push key published with the source.
pub fn is_sample_key(key: &str) -> bool {
    PUBLISHED.keys.iter().any(|k| k == key)
}

/// Whether `sha256` (hex) is the hash of the sample's admin token.
pub fn is_sample_token_hash(sha256: &str) -> bool {
    PUBLISHED.token_hashes.contains(&sha256.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_values_are_read_from_the_sample() {
        assert!(is_sample_key("change-me-to-a-long-random-secret"));
        assert!(is_sample_key("dev-push-key-not-for-production"));
        assert!(is_sample_key("dev-ingest-key-not-for-production"));
        assert!(!is_sample_key("a-secret-of-my-own-0123456789"));
        // printf %s manager-token | sha256sum
        assert!(is_sample_token_hash("3983202AFA4411CDA7CAFC94A18AA1F6F620CFDA5E9B0AB52C0F0D53A6BE4315"));
        assert!(!is_sample_token_hash(&"a".repeat(64)));
    }
}
